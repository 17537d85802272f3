"""The evidence figure of one verified image, as PNG bytes: the recovered z_T's spectrum where
the key lives, and the test statistic against its null distribution (Tree-Ring's paper shows the
recovered spectrum; ringmark's test is a Student t, so the figure shows where t falls).

Matplotlib draws it (the ``report`` extra); ``available()`` says whether it is installed.
"""

from __future__ import annotations

import base64
import io

import numpy as np
from scipy import stats


DPI = 72
SIZE = (5.6, 2.2)  # inches: 403 x 158 px, about 15 KB as PNG


def available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def evidence_uri(evidence, detection, alpha: float) -> str:
    """``evidence_png`` as a data URI, for a page that must open offline."""
    return "data:image/png;base64," + base64.b64encode(evidence_png(evidence, detection, alpha)).decode()


def evidence_png(evidence, detection, alpha: float) -> bytes:
    """PNG of ``evidence`` (``pipeline.Evidence``) and ``detection``'s statistic."""
    import matplotlib

    matplotlib.use("Agg")  # no display; set before pyplot is imported, harmless after
    from matplotlib.figure import Figure  # not pyplot: no global figure registry to leak into

    fig = Figure(figsize=SIZE, dpi=DPI)
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.9]})
    _spectrum(left, evidence)
    _statistic(right, detection, alpha)
    fig.tight_layout(pad=0.4)
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=DPI)
    return out.getvalue()


def _spectrum(ax, evidence) -> None:
    """log |F(z_T)| on a window twice the key's radius around zero frequency, the mask circled."""
    s = evidence.spectrum
    h, w = s.shape
    r = evidence.radius
    half = min(h // 2, 2 * r)
    window = s[h // 2 - half : h // 2 + half + 1, w // 2 - half : w // 2 + half + 1]
    ax.imshow(np.log10(window + 1e-6), cmap="magma", extent=(-half - 0.5, half + 0.5, half + 0.5, -half - 0.5))
    ax.add_patch(_circle(r))
    ax.set_xlabel(f"|F(z_T)|, channel {evidence.channel}", fontsize=7)
    ax.set_xticks([])
    ax.set_yticks([])


def _circle(r: int):
    from matplotlib.patches import Circle

    return Circle((0, 0), r + 0.5, fill=False, color="#4fc3f7", lw=1.2)


def _statistic(ax, d, alpha: float) -> None:
    """The null density of the statistic, where this image's falls, and the decision threshold."""
    if not d.df or not np.isfinite(d.statistic):
        ax.text(0.5, 0.5, "F test (zeros key): no t to draw", ha="center", va="center", fontsize=8)
        ax.set_axis_off()
        return
    t_star = float(stats.t.isf(d.correction.threshold(alpha), d.df))  # keys, transforms and looks
    hi = max(6.0, t_star + 2, min(d.statistic, 60) + 2)
    grid = np.linspace(-5, hi, 400)
    ax.fill_between(grid, stats.t.pdf(grid, d.df), color="#bbb", label=f"null: Student t({d.df})")
    ax.axvline(t_star, color="#555", ls="--", lw=1, label=f"threshold at alpha = {alpha:g}")
    shown = min(d.statistic, hi - 0.5)
    ax.axvline(shown, color="#c62828" if d.watermarked else "#1565c0", lw=2,
               label=f"this image: t = {d.statistic:.1f}" + (" (off scale)" if shown < d.statistic else ""))
    ax.set_yticks([])
    ax.set_xlabel("t (best key, best transform)", fontsize=7)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=6.5, loc="upper right", frameon=False)
