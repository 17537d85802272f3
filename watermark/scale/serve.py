"""``ringmark serve``: the HTTP verifier, a FastAPI app deployed with Ray Serve.

Each replica loads the model once (``Verifier``, as ``verify`` does); concurrent requests are
batched by Ray Serve (``@serve.batch``), requests beyond the queue limit get Ray Serve's 503, and
replicas spread over the cluster's CPUs or GPUs.

- ``POST /v1/verify``: images as multipart files (field ``files``, repeatable) -> ``{"results":
  [...]}``, one object per file with the fields of ``verify --json`` (``file`` instead of
  ``path``). A bad upload gets a 4xx ``{"error": ...}``: 413 too large, 411 no Content-Length,
  400 empty or malformed, 422 not a usable image (not an image, truncated, a decompression bomb,
  too small).
- ``GET /v1/keys``: key ids, model and latent shape; nothing else of a key leaves the server.
- ``GET /healthz``: no token needed.
- ``GET /``: a page to drop images on and see each one's verdict and evidence figure as it comes
  back (``page.html``: no external scripts or fonts; the token, when needed, is typed into it and
  kept in the page's memory). It calls ``POST /v1/verify?evidence=true``, which adds to each
  result an ``evidence`` object (the figure as a PNG data URI, ``io.figures``); without that parameter the API answers as above.

An open verifier is an oracle for stripping watermarks: a bearer token is required unless the
server listens on loopback only (``check_exposure``), and tokens are compared in constant time.
"""

# no `from __future__ import annotations`: FastAPI reads the route signatures at runtime
import asyncio
import hmac
import logging
from dataclasses import asdict, dataclass, field
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
import ray
from ray import serve
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from .. import __version__
from ..io import figures
from ..io.images import ImageError, decode_image
from ..io.genlog import located
from ..io.nullfile import resolve_nulls
from ..models import default_recovery
from ..pipeline import Decision, Recovery, check_key_set
from ..verifier import Verifier
from .cluster import check_exposure, check_port, cluster_address, connect, default_gpus

APP = "ringmark"  # the Serve application's name
PAGE = resources.files(__package__).joinpath("page.html").read_text(encoding="utf-8")
FIELD = "files"
MAX_FILES = 64  # per request
UPLOAD_SCHEMA = {  # multipart is parsed by hand (after the token check), so FastAPI is told its shape
    "required": True,
    "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": [FIELD],
        "properties": {FIELD: {"type": "array", "items": {"type": "string", "format": "binary"}}}}}},
}

log = logging.getLogger("ringmark.serve")  # in a replica: Ray Serve's replica log
app = FastAPI(title="ringmark", version=__version__, docs_url=None, redoc_url=None,  # their pages load from a CDN:
              # blank offline; the schema stays at /openapi.json
              description="Verify images for ringmark watermarks. Send `Authorization: Bearer TOKEN` "
                          "unless the server listens on loopback only.")


@dataclass(frozen=True)
class Service:
    """Where the service listens, who may call it, and its limits: checked once, handed to each
    replica by name. The token never appears in a repr."""

    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = field(default=None, repr=False)
    replicas: int = 1
    max_batch: int = 8  # images of concurrent requests verified together
    batch_wait_ms: float = 20.0  # how long a batch waits to fill
    max_upload_mb: float = 20.0  # largest request body
    max_queued: int = 64  # requests waiting (per Serve proxy) before Ray Serve answers 503
    cpus_per_replica: int = 1  # torch threads per replica
    gpus_per_replica: float | None = None  # None: 1 when the cluster has GPUs and the device allows

    def __post_init__(self):
        for name in ("replicas", "max_batch", "max_queued", "cpus_per_replica"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not 1 <= self.port <= 65535:
            raise ValueError(f"port must be in 1..65535, got {self.port}")
        if self.max_upload_mb <= 0 or self.batch_wait_ms < 0:
            raise ValueError("max_upload_mb must be positive and batch_wait_ms non-negative")
        check_exposure(self.host, self.token)

    @property
    def url(self) -> str:
        return f"http://{'[' + self.host + ']' if ':' in self.host else self.host}:{self.port}"


class UploadProblem(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@app.exception_handler(UploadProblem)
async def upload_problem(request: Request, e: UploadProblem):
    return JSONResponse({"error": str(e)}, status_code=e.status)


@app.exception_handler(HTTPException)
async def http_problem(request: Request, e: HTTPException):
    return JSONResponse({"error": e.detail}, status_code=e.status_code, headers=e.headers)


@app.exception_handler(Exception)
async def internal_error(request: Request, e: Exception):
    # the client gets the error's kind only; the operator's log gets the traceback
    log.error("internal error on %s %s", request.method, request.url.path, exc_info=e)
    return JSONResponse({"error": f"internal error ({type(e).__name__}); the service goes on"}, status_code=500)


@app.exception_handler(RequestValidationError)
async def invalid_request(request: Request, e: RequestValidationError):
    return JSONResponse({"error": "malformed request"}, status_code=400)


@serve.deployment
@serve.ingress(app)
class VerifyService:
    """One replica: the keys, the model and the settings, then requests -> rows."""

    def __init__(self, keys, recovery: Recovery, decision: Decision, service: Service, *, device: str, dtype: str,
                 null="none", generation_log: str | None = None):
        import torch

        torch.set_num_threads(service.cpus_per_replica)
        self.verifier = Verifier(keys, recovery, decision, device=device, dtype=dtype, null=null, log=generation_log)
        self.token = None if service.token is None else service.token.encode()
        self.max_bytes = int(service.max_upload_mb * 2**20)
        self.detect.set_max_batch_size(service.max_batch)
        self.detect.set_batch_wait_timeout_s(service.batch_wait_ms / 1000)

    def authorize(self, request: Request) -> None:
        if self.token is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self.token):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.02)
    async def detect(self, items: list) -> list:
        """Ray Serve gathers the images of concurrent requests into one ``Verifier.run``; it runs
        in a thread so the replica keeps accepting requests meanwhile."""
        return await asyncio.get_running_loop().run_in_executor(None, self.verifier.run, items)

    async def uploads(self, request: Request) -> list[tuple[str, bytes]]:
        length = request.headers.get("content-length")
        if length is None or not length.isdigit():  # a chunked body would be spooled whole before any check
            raise UploadProblem(411, "send the upload with a Content-Length")
        if int(length) > self.max_bytes:
            raise UploadProblem(413, f"request is {int(length) / 2**20:.1f} MB; the limit is "
                                     f"{self.max_bytes / 2**20:g} MB")
        try:
            form = await request.form(max_files=MAX_FILES, max_fields=MAX_FILES)
        except HTTPException as e:  # starlette's own limits
            raise UploadProblem(e.status_code, str(e.detail)) from None
        except Exception as e:  # a body that is not multipart
            raise UploadProblem(400, f"expected a multipart/form-data body with field {FIELD!r} "
                                     f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
        try:
            files = [f for f in form.getlist(FIELD) if isinstance(f, UploadFile)]
            if not files:
                raise UploadProblem(400, f"no files in the request (multipart field {FIELD!r})")
            out = []
            for i, f in enumerate(files):
                name = f.filename or f"upload {i}"
                data = await f.read()  # within Content-Length, checked above
                if not data:
                    raise UploadProblem(400, f"{name}: empty file")
                out.append((name, data))
            return out
        finally:
            await form.close()  # the spooled temporary files

    @app.post("/v1/verify", openapi_extra={"requestBody": UPLOAD_SCHEMA})
    async def verify(self, request: Request) -> dict:
        """Verify one or several images; one result per file, in order."""
        self.authorize(request)
        items, loop = [], asyncio.get_running_loop()
        for name, data in await self.uploads(request):
            try:  # decoding (and resizing) a large image is work: off the event loop
                items.append((name, await loop.run_in_executor(None, decode_image, data, self.verifier.size)))
            except ImageError as e:
                raise UploadProblem(422, f"{name}: {e}") from None
        if request.query_params.get("evidence", "").lower() in ("1", "true", "yes"):
            pairs = await loop.run_in_executor(None, self.verifier.verify, items, None, "all")
            return {"results": [{**self.answer(row), "evidence": self.evidence(d)} for row, d in pairs]}
        rows = await asyncio.gather(*(self.detect(item) for item in items))
        return {"results": [self.answer(row) for row in rows]}

    @staticmethod
    def answer(row) -> dict:
        d = asdict(row)
        return {"file": d.pop("path"), **d}

    def evidence(self, d) -> dict:
        """What the page shows beyond the row: the figure, when matplotlib is here."""
        figure = figures.evidence_uri(d.evidence, d, self.verifier.alpha) if figures.available() else None
        return {"figure": figure}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page(self) -> HTMLResponse:
        """The verifier's page (no data in it: a token is asked for by its requests, not here)."""
        return HTMLResponse(PAGE)

    @app.get("/v1/keys")
    async def keys(self, request: Request) -> dict:
        """The keys this server tests: ids, model and latent shape only."""
        self.authorize(request)
        return {"keys": [{"key_id": k.key_id, "model": k.model, "latent_shape": list(k.latent_shape)}
                         for k in self.verifier.keys]}

    @app.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok"}


def start(keys, recovery: Recovery = Recovery(), decision: Decision = Decision(), service: Service = Service(), *,
          device: str = "auto", dtype: str = "float32", address: str | None = None, log_level: str = "error",
          null="auto", key_files: list = (), generation_log: str | None = None) -> str:
    """Deploy the service on Ray Serve (joining ``address`` or starting a local Ray) and return its
    URL; it serves until ``serve.shutdown()`` or the end of this process. ``log_level``: Ray's and
    Ray Serve's logging on stderr (``choices.RAY_LOG_LEVELS``; the access log from "info")."""
    check_key_set(keys)
    null = resolve_nulls(null, keys[0].model, recovery.for_model(default_recovery(keys[0].model)).looks(),
                         tuple(keys[0].latent_shape), key_files)  # found here, shipped to the replicas
    generation_log = located(generation_log)  # every replica opens it (PostgreSQL for replicas on many machines)
    if not (cluster_address(address) or ray.is_initialized()):  # the proxy will run here
        check_port(service.host, service.port)
    connect(address, log_level=log_level)
    for name in ("ray", "ray.serve"):  # what Ray and Serve log in this (the driver's) process
        logging.getLogger(name).setLevel(log_level.upper())
    logging_config = {"log_level": log_level.upper(), "enable_access_log": log_level in ("info", "debug")}
    gpus = default_gpus(ray.cluster_resources(), device) if service.gpus_per_replica is None else service.gpus_per_replica
    if APP in serve.status().applications:
        raise ValueError(f"this Ray cluster already serves an app named {APP!r}; stop it first")
    serve.start(http_options={"host": service.host, "port": service.port},  # ignored where Serve already runs
                logging_config=logging_config)
    deployment = VerifyService.options(
        num_replicas=service.replicas, max_ongoing_requests=2 * service.max_batch,
        max_queued_requests=service.max_queued,
        ray_actor_options={"num_cpus": service.cpus_per_replica, "num_gpus": gpus}, logging_config=logging_config,
    ).bind(keys, recovery, decision, service, device=device, dtype=dtype, null=null, generation_log=generation_log)
    serve.run(deployment, name=APP, route_prefix="/")
    return service.url
