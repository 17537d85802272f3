"""`ringmark serve` through a real HTTP client, against a server started here on 127.0.0.1."""

import concurrent.futures
import io
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from conftest import same_result
from PIL import Image

from watermark.cli import main
from watermark.io.keyring import load_keys
from watermark.scale.cluster import free_port

TOKEN = "test-token-0123456789"


@pytest.fixture(scope="module")
def server(ray_local, scale_world):
    from ray import serve

    from watermark.scale.serve import Service, start

    root, images, reference = scale_world
    keys, _ = load_keys([root / "key.json"])
    url = start(keys, service=Service(token=TOKEN, port=free_port(), max_upload_mb=1, max_batch=8), device="cpu")
    client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120)
    yield client, images, reference, keys
    client.close()
    serve.shutdown()


def test_no_cdn_pages_and_the_schema_is_served(server):
    """/docs and /redoc would load Swagger and ReDoc from a CDN (blank offline): off; the OpenAPI
    schema the CLI points to is there."""
    client = server[0]
    assert client.get("/docs").status_code == 404 and client.get("/redoc").status_code == 404
    assert "/v1/verify" in client.get("/openapi.json").json()["paths"]


def upload(*paths: Path):
    return [("files", (p.name, p.read_bytes(), "image/png")) for p in paths]


def test_results_equal_verify_json(server):
    client, images, reference, _ = server
    paths = sorted((images / "wm").glob("*.png")) + sorted((images / "clean").glob("*.png"))
    response = client.post("/v1/verify", files=upload(*paths))
    assert response.status_code == 200
    rows = response.json()["results"]
    assert [r["file"] for r in rows] == [p.name for p in paths]
    for path, row in zip(paths, rows):
        assert same_result(row, reference[str(path)]), (row, reference[str(path)])
    assert sum(r["watermarked"] for r in rows) == 3


def bomb(width: int) -> bytes:
    """A 1-bit PNG of width x 10000 pixels: tens of kB on the wire. Pillow's limit is 89.5 M pixels:
    above twice that it refuses, between once and twice it only warns."""
    out = io.BytesIO()
    Image.new("1", (width, 10000)).save(out, format="PNG")
    return out.getvalue()


@pytest.mark.parametrize("files, status, message", [
    ([("files", ("empty.png", b""))], 400, "empty.png: empty file"),
    ([("files", ("junk.png", b"not an image"))], 422, "junk.png: not an image"),
    ("truncated", 422, "truncated.png: cannot decode image"),
    ("bomb", 422, "bomb.png: too many pixels"),
    ("bomb 1.3x", 422, "bomb.png: too many pixels"),
    ("chunked", 411, "Content-Length"),
    ("oversize", 413, "the limit is 1 MB"),
    ([("other", ("a.png", b"x"))], 400, "no files in the request"),
])
def test_bad_uploads_get_4xx_json_and_the_service_goes_on(server, files, status, message):
    client, images, reference, _ = server
    if files == "truncated":
        files = [("files", ("truncated.png", (images / "wm" / "00000.png").read_bytes()[:400]))]
    elif isinstance(files, str) and files.startswith("bomb"):
        files = [("files", ("bomb.png", bomb(12000 if "1.3x" in files else 20000)))]
    elif files == "chunked":  # a body of unknown length: refused before it is read
        chunks = iter([b"--x\r\n", b"Content-Disposition: form-data; name=\"files\"; filename=\"a.png\"\r\n\r\n",
                       (images / "wm" / "00000.png").read_bytes(), b"\r\n--x--\r\n"])
        response = client.post("/v1/verify", content=chunks,
                               headers={"Content-Type": "multipart/form-data; boundary=x"})
        assert response.status_code == status and message in response.json()["error"], response.text
        files = None
    elif files == "oversize":
        files = [("files", ("big.png", b"\0" * (1 << 20) + b"x"))]
    if files is not None:
        response = client.post("/v1/verify", files=files)
        assert response.status_code == status and message in response.json()["error"], response.text
    good = client.post("/v1/verify", files=upload(images / "wm" / "00001.png"))
    assert good.status_code == 200 and good.json()["results"][0]["watermarked"] is True


def test_not_multipart_is_400(server):
    client = server[0]
    response = client.post("/v1/verify", content=b"\x89PNG", headers={"Content-Type": "image/png"})
    assert response.status_code == 400 and "error" in response.json()


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}])
def test_missing_or_wrong_token_is_401(server, headers):
    client, images, _, _ = server
    with httpx.Client(base_url=client.base_url, headers=headers, timeout=60) as anonymous:
        for response in (anonymous.post("/v1/verify", files=upload(images / "wm" / "00000.png")),
                         anonymous.get("/v1/keys")):
            assert response.status_code == 401 and response.json() == {"error": "missing or wrong bearer token"}
        assert anonymous.get("/healthz").json() == {"status": "ok"}


def test_keys_show_ids_model_and_shape_only(server):
    client, _, _, keys = server
    assert client.get("/v1/keys").json() == {"keys": [{"key_id": keys[0].key_id, "model": "tiny",
                                                       "latent_shape": [4, 32, 32]}]}
    assert "/v1/verify" in client.get("/openapi.json").json()["paths"]


@pytest.mark.slow  # a load test (47 s); the queue's limit is test_full_queue_answers_503_and_the_service_goes_on
def test_load_32_clients_64_requests(server):
    """Zero errors, and every answer equal to the sequential one, within a time limit."""
    client, images, reference, _ = server
    paths = sorted((images / "wm").glob("*.png")) + sorted((images / "clean").glob("*.png"))[:1]
    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        futures = [pool.submit(client.post, "/v1/verify", files=upload(paths[i % len(paths)])) for i in range(64)]
        done, late = concurrent.futures.wait(futures, timeout=300)  # the time limit: 8x what 2 cores need
        for f in late:
            f.cancel()
        assert not late, f"{len(late)} of 64 requests unanswered after 300 s"
    responses = [f.result() for f in futures]
    seconds = time.perf_counter() - t0
    assert [r.status_code for r in responses] == [200] * 64
    for i, response in enumerate(responses):
        assert same_result(response.json()["results"][0], reference[str(paths[i % len(paths)])])
    print(f"64 requests from 32 clients in {seconds:.1f}s")


def test_full_queue_answers_503_and_the_service_goes_on(server, scale_world):
    """A second app with a queue of 2 and batches of 1: a burst of 24 gets 503s, never a crash."""
    from ray import serve

    from watermark.pipeline import Decision, Recovery
    from watermark.scale.serve import Service, VerifyService

    client, images, _, keys = server
    tight = VerifyService.options(num_replicas=1, max_ongoing_requests=1, max_queued_requests=2,
                                  ray_actor_options={"num_cpus": 1}).bind(
        keys, Recovery(), Decision(), Service(max_batch=1, batch_wait_ms=0.0), device="cpu", dtype="float32")
    serve.run(tight, name="tight", route_prefix="/tight")
    try:
        with concurrent.futures.ThreadPoolExecutor(24) as pool:
            codes = list(pool.map(lambda i: client.post("/tight/v1/verify",
                                                        files=upload(images / "wm" / "00000.png")).status_code,
                                  range(24)))
        assert set(codes) == {200, 503} and codes.count(503) >= 10, codes
        assert client.post("/tight/v1/verify", files=upload(images / "wm" / "00000.png")).status_code == 200
    finally:
        serve.delete("tight")


def test_cli_refuses_an_open_server_without_a_token(tmp_path, monkeypatch):
    monkeypatch.delenv("RINGMARK_TOKEN", raising=False)
    result = CliRunner().invoke(main, ["serve", "--key", str(tmp_path / "k.json"), "--host", "0.0.0.0"])
    assert result.exit_code == 2 and "reachable from other machines: give a token" in result.stderr
    (tmp_path / "token").write_text("\n")
    result = CliRunner().invoke(main, ["serve", "--key", str(tmp_path / "k.json"), "--token-file",
                                       str(tmp_path / "token")])
    assert result.exit_code == 2 and "the token file is empty" in result.stderr
    from watermark.scale.cluster import check_exposure

    with pytest.raises(ValueError, match="the token is empty"):  # the Python API too
        check_exposure("127.0.0.1", " ")


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def test_ctrl_c_while_serve_starts_ends_cleanly(tmp_path):
    """A Ctrl-C that lands while `serve` is still starting (here: as soon as Ray's first process
    exists; on CI one landed while Serve deployed) stops it cleanly: exit 0, no "Aborted!"."""
    assert CliRunner().invoke(main, ["keygen", "-o", str(tmp_path / "key.json")]).exit_code == 0
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    server = subprocess.Popen([sys.executable, "-m", "watermark", "serve", "--key", str(tmp_path / "key.json"),
                               "--port", str(free_port())], env=env, start_new_session=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not children(server.pid) and server.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.poll() is None and children(server.pid), "serve started no Ray"
        server.send_signal(signal.SIGINT)
        out, err = server.communicate(timeout=120)
    finally:
        try:
            os.killpg(server.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        server.wait()
    assert server.returncode == 0 and "Aborted" not in err and "Traceback" not in err, err[-2000:]


def test_a_port_in_use_is_a_one_line_error():
    from watermark.scale.cluster import check_port

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(ValueError, match=f"cannot listen on 127.0.0.1:{taken.getsockname()[1]}"):
            check_port("127.0.0.1", taken.getsockname()[1])
    check_port("127.0.0.1", free_port())


def test_an_internal_error_is_json_500_and_logged(caplog):
    """Whatever breaks inside a request answers JSON 500 with the error's kind only, and the
    traceback goes to the service's log, not nowhere (issue 22)."""
    from fastapi.testclient import TestClient

    from watermark.scale.serve import app

    @app.get("/test-broken")
    async def broken():
        raise KeyError("secret detail")

    try:
        with caplog.at_level("ERROR", logger="ringmark.serve"):
            response = TestClient(app, raise_server_exceptions=False).get("/test-broken")
        assert response.status_code == 500
        assert response.json() == {"error": "internal error (KeyError); the service goes on"}
        record = next(r for r in caplog.records if r.name == "ringmark.serve")
        assert "/test-broken" in record.getMessage() and record.exc_info[0] is KeyError
    finally:
        app.router.routes[:] = [r for r in app.router.routes if getattr(r, "path", None) != "/test-broken"]
