"""Content Credentials (C2PA): ``embed --c2pa`` signs a manifest into every PNG that another C2PA
reader validates; ``verify`` reads and judges them (valid, invalid and why, absent) and says when
they claim a watermark that does not fire; a copy whose metadata was stripped gets its signed
manifest back through the watermark and the generation log (``--credentials-out``)."""

from __future__ import annotations

import io
import json
import sqlite3
import stat
import subprocess
import sys

import pytest
from click.testing import CliRunner
from PIL import Image

from watermark.bench.attacks import with_manifest_of
from watermark.cli import main

pytest.importorskip("c2pa")


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def signed(tmp_path_factory):
    """A test chain, a key, 3 watermarked and 1 clean image signed and logged."""
    tmp = tmp_path_factory.mktemp("c2pa")
    assert run("c2pa", "test-chain", "-o", tmp / "creds").exit_code == 0
    assert run("keygen", "-o", tmp / "key.json", "--seed", 11, "-q").exit_code == 0
    sign = ["--c2pa", "--c2pa-cert", tmp / "creds" / "chain.pem", "--c2pa-key", tmp / "creds" / "signer.key"]
    for out, extra in (("wm", []), ("clean", ["--no-watermark"])):
        n = 3 if out == "wm" else 1
        result = run("embed", "--key", tmp / "key.json", "-o", tmp / out, "-n", n, "--steps", 10, "--seed", 40,
                     "--log", tmp / "gen.sqlite", "-q", *sign, *extra)
        assert result.exit_code == 0, result.output
    return tmp


def rows(*args) -> dict:
    result = run("verify", *args, "--json", "-q")
    assert result.exit_code in (0, 1), result.output
    return {json.loads(line)["path"]: json.loads(line) for line in result.stdout.splitlines()}


def test_the_test_chain_says_it_is_untrusted_and_its_key_is_owner_only(signed):
    from cryptography import x509

    chain = x509.load_pem_x509_certificates((signed / "creds" / "chain.pem").read_bytes())
    assert len(chain) == 2 and all("UNTRUSTED" in c.subject.rfc4514_string() for c in chain)
    assert stat.S_IMODE((signed / "creds" / "signer.key").stat().st_mode) == 0o600
    again = run("c2pa", "test-chain", "-o", signed / "creds")
    assert again.exit_code == 2 and "exists" in again.output and "Traceback" not in again.output


READER = """
import json, sys, c2pa
out = []
for path in sys.argv[1:]:
    with c2pa.Reader(path) as r:
        failures = [f["code"] for f in (r.get_validation_results() or {}).get("activeManifest", {}).get("failure", [])]
        out.append({"state": r.get_validation_state(), "failures": failures, "manifest": r.get_active_manifest()})
print(json.dumps(out))
"""


def test_every_embedded_image_carries_a_manifest_another_c2pa_reader_validates(signed):
    """Read in a separate process by c2pa-python's own Reader, as any C2PA tool would: the signature
    and hard binding hold (the only failure is the untrusted test root), made by a trained model,
    claim generator ringmark, the watermark's key id as the soft binding, the logged image id."""
    manifest = [json.loads(line) for line in (signed / "wm" / "manifest.jsonl").read_text().splitlines()]
    files = [str(signed / "wm" / r["file"]) for r in manifest]
    out = json.loads(subprocess.run([sys.executable, "-c", READER, *files], capture_output=True, text=True,
                                    check=True).stdout)
    assert len(out) == 3
    for row, read in zip(manifest, out):
        assert row["c2pa"] is True
        assert read["state"] in ("Valid", "Trusted") or set(read["failures"]) == {"signingCredential.untrusted"}, read
        m = read["manifest"]
        assert m["claim_generator_info"][0]["name"] == "ringmark"
        labels = {a["label"]: a["data"] for a in m["assertions"]}
        action = labels["c2pa.actions.v2"]["actions"][0]
        assert action["action"] == "c2pa.created" and action["digitalSourceType"].endswith("trainedAlgorithmicMedia")
        assert labels["org.ringmark.generation"] == {"image_id": row["image_id"], "key_id": row["key_id"], "model": "tiny"}
        import base64

        assert base64.b64decode(labels["c2pa.soft-binding"]["blocks"][0]["value"]).decode() == row["key_id"]
        assert "UNTRUSTED" in m["signature_info"]["issuer"]


def test_verify_reads_the_credentials_and_says_when_they_do_not_hold(signed, tmp_path):
    wm, clean = signed / "wm" / "00000.png", signed / "clean" / "00000.png"
    moved = tmp_path / "moved.png"  # the watermarked image's manifest on the clean image's pixels
    moved.write_bytes(with_manifest_of(wm.read_bytes(), Image.open(clean).convert("RGB")))
    touched = tmp_path / "touched.png"  # one pixel changed, the manifest kept
    im = Image.open(wm).convert("RGB")
    im.putpixel((3, 3), tuple((v + 1) % 256 for v in im.getpixel((3, 3))))
    touched.write_bytes(with_manifest_of(wm.read_bytes(), im))
    plain = tmp_path / "plain.png"
    Image.open(wm).save(plain)  # Pillow drops the C2PA chunk
    found = rows(wm, clean, moved, touched, plain, "--key", signed / "key.json")
    assert found[str(wm)]["credentials"] == "valid" and "ringmark test signer" in found[str(wm)]["credentials_signer"]
    assert found[str(wm)]["credentials_generator"].startswith("ringmark") and found[str(wm)]["warning"] is None
    assert found[str(clean)]["credentials"] == "valid" and not found[str(clean)]["watermarked"]
    for path in (moved, touched):
        r = found[str(path)]
        assert r["credentials"] == "invalid" and "pixels changed since signing" in r["credentials_why"], r
    assert not found[str(moved)]["watermarked"] and "does not fire" in found[str(moved)]["warning"]
    assert found[str(touched)]["watermarked"]  # one pixel: the key still fires, the hard binding does not hold
    assert found[str(plain)]["credentials"] == "absent"
    table = run("verify", wm, moved, "--key", signed / "key.json", "--report", tmp_path / "report.html").stdout
    assert "credentials valid" in table and "credentials invalid (the pixels changed since signing" in table
    html = (tmp_path / "report.html").read_text()
    assert "Content Credentials valid, by ringmark" in html and "Content Credentials invalid (the pixels changed" in html


def test_stripped_credentials_come_back_through_the_watermark_and_the_log(signed, tmp_path):
    """PNG -> JPEG 80 -> resized: no metadata left; the key fires, the log confirms the generation
    and gives back the manifest signed into it, which validates (its hard binding is to the PNG)."""
    from watermark.io.credentials import read_detached
    from watermark.io.genlog import GenerationLog

    manifest = [json.loads(line) for line in (signed / "wm" / "manifest.jsonl").read_text().splitlines()]
    (tmp_path / "in").mkdir()
    for r in manifest:
        im = Image.open(signed / "wm" / r["file"]).convert("RGB")
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=80)
        Image.open(buf).resize((200, 200), Image.Resampling.BICUBIC).save(tmp_path / "in" / (r["file"][:-4] + ".jpg"))
    out = tmp_path / "recovered"
    found = rows(tmp_path / "in", "--key", signed / "key.json", "--log", signed / "gen.sqlite", "--credentials-out", out)
    log = GenerationLog.open(signed / "gen.sqlite", create=False)
    detected = [r for r in found.values() if r["watermarked"]]
    assert len(detected) >= 2, found
    for r in detected:
        assert r["credentials"] == "absent" and r["provenance"] == "confirmed"
        image_id = r["credentials_recovered"]
        assert image_id == r["provenance_image_id"]
        stored = (out / f"{image_id}.c2pa").read_bytes()
        assert stored == log.manifest(image_id)
        original = next(signed / "wm" / m["file"] for m in manifest if m["image_id"] == image_id)
        assert read_detached(stored, original.read_bytes(), "png").status == "valid"  # with the PNG it was signed into
    shown = run("c2pa", "show", *sorted(out.glob("*.c2pa")))
    assert shown.exit_code == 0, shown.output
    assert {json.loads(line)["image_id"] for line in shown.stdout.splitlines()} == {r["credentials_recovered"]
                                                                                    for r in detected}
    # the folder's files are the user's now: other content there is kept, with a warning, unless --force
    victim = out / f"{detected[0]['credentials_recovered']}.c2pa"
    victim.write_bytes(b"mine")
    again = run("verify", tmp_path / "in", "--key", signed / "key.json", "--log", signed / "gen.sqlite",
                "--credentials-out", out, "-q")
    assert victim.read_bytes() == b"mine"
    warned = run("verify", tmp_path / "in", "--key", signed / "key.json", "--log", signed / "gen.sqlite",
                 "--credentials-out", out)
    assert "exists with other content" in warned.stderr and again.exit_code == 0
    assert run("verify", tmp_path / "in", "--key", signed / "key.json", "--log", signed / "gen.sqlite",
               "--credentials-out", out, "--force", "-q").exit_code == 0
    assert victim.read_bytes() == log.manifest(detected[0]["credentials_recovered"])


def test_c2pa_inputs_that_cannot_be_used_are_one_line_errors(signed, tmp_path):
    key = signed / "key.json"
    assert run("c2pa", "test-chain", "-o", tmp_path / "other").exit_code == 0
    for args, words in (
        (["--c2pa"], "--c2pa needs the signing certificate"),
        (["--c2pa", "--c2pa-cert", signed / "creds" / "chain.pem", "--c2pa-key", key], "not an unencrypted PEM private key"),
        (["--c2pa", "--c2pa-cert", tmp_path / "none.pem", "--c2pa-key", signed / "creds" / "signer.key"], "cannot read"),
        (["--c2pa-cert", signed / "creds" / "chain.pem"], "only with --c2pa"),
        (["--c2pa", "--c2pa-cert", tmp_path / "other" / "chain.pem", "--c2pa-key", signed / "creds" / "signer.key"],
         "not the private key of"),
        (["--c2pa", "--c2pa-cert", key, "--c2pa-key", signed / "creds" / "signer.key"], "not a PEM certificate chain"),
    ):
        result = run("embed", "--key", key, "-o", tmp_path / "out", "-n", 1, "--steps", 2, *args)
        assert result.exit_code == 2 and words in result.output and "Traceback" not in result.output, result.output
        assert not (tmp_path / "out").exists()
    result = run("verify", signed / "wm", "--key", key, "--credentials-out", tmp_path / "c")
    assert result.exit_code == 2 and "needs --log" in result.output
    (tmp_path / "junk.png").write_bytes(b"not an image")
    shown = run("c2pa", "show", tmp_path / "junk.png", signed / "wm" / "00000.png")
    assert shown.exit_code == 2 and len(shown.stdout.splitlines()) == 1 and "Traceback" not in shown.output


def test_a_log_made_before_credentials_gains_the_column_and_exports_keep_the_manifests(signed, tmp_path):
    from watermark.io.genlog import GenerationLog

    old = tmp_path / "old.sqlite"
    with sqlite3.connect(old) as db:  # the table as ringmark made it before --c2pa
        db.execute("CREATE TABLE generations (row INTEGER PRIMARY KEY AUTOINCREMENT, image_id VARCHAR(64) NOT NULL "
                   "UNIQUE, key_id VARCHAR(64), model TEXT NOT NULL, seed BIGINT NOT NULL, prompt TEXT NOT NULL, "
                   "steps INTEGER NOT NULL, guidance FLOAT, created VARCHAR(32) NOT NULL, file TEXT NOT NULL, "
                   "sha256 VARCHAR(64) NOT NULL, fingerprint BLOB, fingerprint_kind VARCHAR(64))")
        db.execute("INSERT INTO generations (image_id, model, seed, prompt, steps, created, file, sha256) "
                   "VALUES ('old1', 'tiny', 1, '', 10, '2026-01-01', 'a.png', 'x')")
    log = GenerationLog.open(old)
    assert log.get("old1").c2pa is None and not log.has_manifest("old1")
    assert run("log", "export", signed / "gen.sqlite", tmp_path / "all.jsonl").exit_code == 0
    assert log.import_(tmp_path / "all.jsonl") == 4
    source = GenerationLog.open(signed / "gen.sqlite", create=False)
    for g in source.rows():
        assert g.c2pa and log.manifest(g.image_id) == g.c2pa


def test_credentials_that_chain_to_a_root_in_the_trust_file_are_trusted(signed, tmp_path, monkeypatch):
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    root = x509.load_pem_x509_certificates((signed / "creds" / "chain.pem").read_bytes())[1]
    (tmp_path / "roots.pem").write_bytes(root.public_bytes(Encoding.PEM))
    monkeypatch.setenv("RINGMARK_C2PA_TRUST", str(tmp_path / "roots.pem"))
    wm = signed / "wm" / "00001.png"
    assert rows(wm, "--key", signed / "key.json")[str(wm)]["credentials"] == "trusted"
    monkeypatch.setenv("RINGMARK_C2PA_TRUST", str(signed / "key.json"))
    result = run("verify", wm, "--key", signed / "key.json")
    assert result.exit_code == 2 and "must name a PEM file" in result.output and "Traceback" not in result.output


def test_rebuilding_a_log_from_a_signed_folder_keeps_each_manifest(signed, tmp_path):
    from watermark.io.genlog import GenerationLog

    result = run("log", "rebuild", tmp_path / "rebuilt.sqlite", signed / "wm")
    assert result.exit_code == 0, result.output
    rebuilt, source = GenerationLog.open(tmp_path / "rebuilt.sqlite", create=False), GenerationLog.open(signed / "gen.sqlite")
    wm = [g for g in source.rows() if g.key_id]
    assert len(wm) == 3 and all(rebuilt.manifest(g.image_id) == g.c2pa for g in wm)
