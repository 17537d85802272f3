"""``verify --report``: one self-contained HTML file an investigator can attach. Per image: a
thumbnail, the verdict, p-value and alpha, the key id (never the key), the transform the search
undid (where a key was found), and for the watermarked and weak ones a figure of the recovered
spectrum and the test statistic against its null (``io.figures``); a summary at the top, the
settings, the command and the version at the bottom. Images and figures are inlined as data URIs:
the file opens offline.

Bounded for large folders: thumbnails are THUMB px JPEGs (about 2-4 KB each) and at most
MAX_FIGURES figures are drawn (the smallest p-values first), so 1,000 images stay under 10 MB.
Jinja2 renders the page (the ``report`` extra).
"""

from __future__ import annotations

import base64
import io
import os
import sys
import time
from pathlib import Path

from PIL import Image

from .. import __version__
from . import figures

THUMB = 96  # px, the longer side
MAX_FIGURES = 200  # figures drawn per report: the watermarked and weak images with the smallest p
TEMPLATE = "report.html.j2"


class ReportError(Exception):
    """The report cannot be made (a missing extra); one line."""


def check_available() -> None:
    """Raise ReportError unless Jinja2 and matplotlib are installed (before any verification runs)."""
    try:
        import jinja2  # noqa: F401
    except ImportError:
        raise ReportError("--report needs Jinja2 and matplotlib: pip install 'ringmark[report]'") from None
    if not figures.available():
        raise ReportError("--report needs Jinja2 and matplotlib: pip install 'ringmark[report]'")


def thumbnail(path: str) -> str | None:
    """A data URI of the image at ``path`` shrunk to THUMB px (JPEG), or None if it cannot be read."""
    try:
        with Image.open(path) as im:
            im.draft("RGB", (THUMB, THUMB))  # JPEG: decode at a fraction of the size
            im = im.convert("RGB")
            im.thumbnail((THUMB, THUMB))
            out = io.BytesIO()
            im.save(out, format="JPEG", quality=80)
    except Exception:  # the row already carries the read error; the report goes on
        return None
    return "data:image/jpeg;base64," + base64.b64encode(out.getvalue()).decode()


def verdict(r) -> str:
    """The word the report and the CLI's table use for one row."""
    if r.error is not None:
        return "error"
    if r.rejected_by is not None:
        return f"rejected ({r.rejected_by})"
    word = "watermarked" if r.watermarked else "clean"
    word = f"{word} (weak)" if r.weak else word
    provenance = getattr(r, "provenance", None)
    return f"{word}, {provenance}" if provenance not in (None, "unchecked") else word


def drawn(results: list, detections: list) -> list[int]:
    """The images the report draws a figure for: the watermarked, weak or rejected ones with
    evidence, the MAX_FIGURES smallest p-values first."""
    return sorted((i for i, (r, d) in enumerate(zip(results, detections))
                   if d is not None and d.evidence is not None and (r.watermarked or r.weak or r.rejected_by)),
                  key=lambda i: results[i].p_value)[:MAX_FIGURES]


def rows(results: list, detections: list, log=None) -> list[dict]:
    """The template's rows: each result, its thumbnail, for the ``drawn`` images their figure, and for a checked provenance the logged generation that matched best (``logged``)."""
    drawn_ = set(drawn(results, detections))
    out = []
    for i, (r, d) in enumerate(zip(results, detections)):
        out.append({"r": r, "verdict": verdict(r), "thumb": thumbnail(r.path),
                    "figure": figures.evidence_uri(d.evidence, d, r.alpha) if i in drawn_ else None,
                    "logged": logged(log, getattr(r, "provenance_image_id", None))})
    return out


def logged(log, image_id: str | None) -> dict | None:
    """The logged generation ``image_id`` as the report shows it: its row, and its thumbnail when
    the file it was written to is still there with the logged SHA-256 (else why not)."""
    if log is None or image_id is None:
        return None
    g = log.get(image_id)
    if g is None:
        return None
    from hashlib import sha256

    path = Path(g.file)
    if not path.is_file():
        return {"g": g, "thumb": None, "why": f"not at {g.file} any more"}
    if sha256(path.read_bytes()).hexdigest() != g.sha256:
        return {"g": g, "thumb": None, "why": f"{g.file} has changed since it was logged"}
    return {"g": g, "thumb": thumbnail(str(path)), "why": None}


def settings(results: list) -> dict:
    """What every row was verified with (the rows share it)."""
    r = next((r for r in results if r.error is None), results[0] if results else None)
    if r is None:
        return {}
    return {"inversion": r.inversion + (f", {r.iterations} iterations" if r.iterations else ""),
            "DDIM inversion steps": f"{r.ddim_steps}" + (" (exact)" if r.exact else ""),
            "alpha": f"{r.alpha:g}", "keys tested": r.keys_tested, "null model": r.null_model or "none"}


def write_report(path: str | os.PathLike, results: list, detections: list, *, model: str,
                 command: str | None = None, log=None) -> Path:
    """Render the report of ``results`` (with their ``detections``, None for errors) to ``path``.
    ``log``: the generation log the results were checked against (``verify --log``)."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("watermark.io", "templates"),
                             autoescape=jinja2.select_autoescape(["html", "j2"]), trim_blocks=True,
                             lstrip_blocks=True)
    ok = [r for r in results if r.error is None]
    summary = {"images": len(results), "watermarked": sum(bool(r.watermarked) for r in ok),
               "weak": sum(bool(r.weak) for r in ok), "rejected": sum(r.rejected_by is not None for r in ok),
               "errors": len(results) - len(ok), "alpha": results[0].alpha if results else None}
    html = env.get_template(TEMPLATE).render(
        rows=rows(results, detections, log), summary=summary, settings={"model": model, **settings(results)},
        command=command or "ringmark " + " ".join(sys.argv[1:]), version=__version__,
        made=time.strftime("%Y-%m-%d %H:%M:%S %Z"), max_figures=figures_bound(results))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(html, encoding="utf-8")
    os.replace(tmp, path)  # whole or not at all
    return path


def figures_bound(results: list) -> int | None:
    """MAX_FIGURES when the report holds more candidates than it draws, else None."""
    candidates = sum(bool(r.watermarked or r.weak or r.rejected_by) for r in results if r.error is None)
    return MAX_FIGURES if candidates > MAX_FIGURES else None
