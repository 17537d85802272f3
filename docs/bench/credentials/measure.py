"""Content Credentials through the path users run (issue 37's targets), on ``tiny``:

- embedded images whose C2PA manifest validates (test chain; untrusted root only);
- copies stripped of metadata (PNG -> JPEG 80 -> resized to 0.75 of the side, and a screenshot-like
  PNG re-save at 0.9 of the side) whose signed manifest comes back through ``verify --log
  --credentials-out``, over those the key detects;
- tampered copies (one pixel changed, or the manifest moved onto another generation's pixels)
  whose credentials verify as valid (target 0);
- the cost of signing at embed: ``Signer.sign`` per image, and embed's wall time with and without
  ``c2pa=`` (same seeds; medians of ``--repeats``).

Images are fresh (seeds from ``--seed``), under a fresh key: nothing here was tuned on them.

    python docs/bench/credentials/measure.py -n 100 -o docs/bench/credentials/tiny.json
"""

import argparse
import io
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from watermark import api
from watermark.bench.attacks import with_manifest_of
from watermark.io import credentials


def stripped(src: Path, dst: Path, how: str) -> None:
    im = Image.open(src).convert("RGB")
    if how == "jpeg80_resize75":
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=80)
        im = Image.open(buf).resize((im.width * 3 // 4,) * 2, Image.Resampling.BICUBIC)
        im.save(dst.with_suffix(".jpg"), quality=95)
    elif how == "png_resave90":
        im.resize((im.width * 9 // 10,) * 2, Image.Resampling.BILINEAR).save(dst.with_suffix(".png"))
    else:
        raise ValueError(how)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=100)
    parser.add_argument("--seed", type=int, default=6_100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", choices=("cost", "rest"), help="one part (to time the cost on idle cores)")
    parser.add_argument("-o", "--output")
    args = parser.parse_args()
    res = {"n": args.n, "model": "tiny", "first_seed": args.seed}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cert, pem = credentials.test_chain(tmp / "creds")
        signer = credentials.Signer(cert, pem)
        key = api.keygen(tmp / "key.json", seed=args.seed % 100_000)

        # cost: embed with and without signing, same images (the model loaded before either)
        api.embed(key, tmp / "warm", n=2, steps=10)
        if args.only == "rest":
            args.repeats = 0
        walls = {"without": [], "with": []}
        for r in range(args.repeats):
            for name, c2pa in (("without", None), ("with", signer)):
                t0 = time.perf_counter()
                api.embed(key, tmp / f"cost-{name}", n=8, seed=args.seed, force=True, c2pa=c2pa)
                walls[name].append((time.perf_counter() - t0) / 8)
        sign = []
        for f in sorted((tmp / "cost-without").glob("*.png")) if args.repeats else []:
            t0 = time.perf_counter()
            signer.sign(f, credentials.manifest(title=f.name, model="tiny", key_id=key.key_id, image_id=f.stem,
                                                version="bench"))
            sign.append(time.perf_counter() - t0)
        med = {k: statistics.median(v) for k, v in walls.items() if v}
        res["cost"] = None if not sign else {"sign_ms_median": 1000 * statistics.median(sign), "sign_ms_max": 1000 * max(sign),
                       "embed_s_per_image": med, "embed_overhead_ms": 1000 * (med["with"] - med["without"])}

        if args.only != "cost":
            # the images: fresh seeds, signed and logged
            made = api.embed(key, tmp / "wm", n=args.n, seed=args.seed, log=tmp / "gen.sqlite", c2pa=signer)
            files = [tmp / "wm" / g.file for g in made]
            valid = [credentials.read(f, "PNG") for f in files]
            res["embedded_valid"] = sum(c.status in ("valid", "trusted") for c in valid) / len(valid)

            # stripped copies: recovered through watermark + log
            res["stripped"] = {}
            for how in ("jpeg80_resize75", "png_resave90"):
                folder = tmp / how
                folder.mkdir()
                for f in files:
                    stripped(f, folder / f.stem, how)
                rows = api.verify([str(folder)], [key], log=tmp / "gen.sqlite", credentials_out=tmp / f"rec-{how}")
                detected = [r for r in rows if r.watermarked]
                recovered = [r for r in detected if r.credentials_recovered]
                right = [r for r in recovered if r.credentials_recovered == made[int(Path(r.path).stem)].image_id]
                res["stripped"][how] = {
                    "images": len(rows), "metadata_left": sum(r.credentials != "absent" for r in rows),
                    "detected": len(detected), "confirmed": sum(r.provenance == "confirmed" for r in detected),
                    "recovered": len(recovered), "recovered_right_image": len(right),
                    "recovered_over_detected": len(recovered) / max(1, len(detected)),
                    "files_written": len(list((tmp / f"rec-{how}").glob("*.c2pa"))) if (tmp / f"rec-{how}").exists() else 0}

            # tampered copies: never valid
            (tmp / "tampered").mkdir()
            for i, f in enumerate(files):
                im = Image.open(f).convert("RGB")
                im.putpixel((i % im.width, 7), tuple((v + 1) % 256 for v in im.getpixel((i % im.width, 7))))
                (tmp / "tampered" / f"pixel-{i:05d}.png").write_bytes(with_manifest_of(f.read_bytes(), im))
                other = Image.open(files[(i + 1) % len(files)]).convert("RGB")
                (tmp / "tampered" / f"moved-{i:05d}.png").write_bytes(with_manifest_of(f.read_bytes(), other))
            rows = api.verify([str(tmp / "tampered")], [key])
            res["tampered"] = {kind: {"images": sum(Path(r.path).name.startswith(kind) for r in rows),
                                      "credentials_valid": sum(Path(r.path).name.startswith(kind)
                                                               and r.credentials in ("valid", "trusted") for r in rows),
                                      "key_fired": sum(Path(r.path).name.startswith(kind) and bool(r.watermarked)
                                                       for r in rows)}
                               for kind in ("pixel", "moved")}
    res["machine"] = f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"
    res["command"] = "python " + " ".join(sys.argv)
    print(json.dumps(res, indent=1))
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
