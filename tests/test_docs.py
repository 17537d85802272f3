"""The documentation site builds: ``mkdocs build --strict`` (mkdocs.yml makes every broken link,
missing anchor and unrecognised link a warning, so strict fails on it; the Python reference is
generated from the docstrings, the command-line reference from the click commands), and every page
the nav lists exists. The code blocks of the pages run in tests/test_readme.py."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent

pytest.importorskip("mkdocs", reason="mkdocs is not installed (the docs extra: pip install -e '.[docs]')")


def nav_pages(nav) -> list[str]:
    """The page paths of a mkdocs nav: a list of strings and one-key mappings, nested."""
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, dict):
        return [page for value in nav.values() for page in nav_pages(value)]
    return [page for item in nav for page in nav_pages(item)]


def config() -> dict:
    from mkdocs.config import load_config

    return load_config(str(ROOT / "mkdocs.yml"))


def test_every_page_in_the_nav_exists():
    cfg = config()
    pages = nav_pages(cfg["nav"])
    assert len(pages) >= 17, pages  # home, tutorial, 7 how-tos, 5 concepts, 2 references, benchmarks
    missing = [page for page in pages if not (Path(cfg["docs_dir"]) / page).is_file()]
    assert not missing, missing


def test_the_site_builds_strict(tmp_path):
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
                           "-d", str(tmp_path / "site")], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-5000:]
    site = tmp_path / "site"
    # the generated references hold what they are generated from: every subcommand, nested groups
    # included, and the public Python names
    cli = (site / "reference" / "cli.html").read_text()
    for command in ("ringmark-verify", "ringmark-serve", "ringmark-scan", "ringmark-calibrate", "ringmark-bench-detect",
                    "ringmark-log-list", "ringmark-log-rebuild", "ringmark-c2pa-show", "ringmark-c2pa-test-chain"):
        assert f'id="{command}"' in cli, command
    python = (site / "reference" / "python.html").read_text()
    for name in ("watermark.api.verify", "watermark.pipeline.detect", "watermark.verifier.Verifier",
                 "inversion.fixed_point.fixed_point", "inversion.ddim_invert", "watermark.io.credentials.Signer"):
        assert f'id="{name}"' in python, name
    # offline: no page asks a CDN for a script, a stylesheet or a font
    for page in site.rglob("*.html"):
        text = page.read_text()
        for host in ("unpkg.com", "cdn.jsdelivr.net", "fonts.googleapis.com", "fonts.gstatic.com"):
            assert host not in text, (page.relative_to(site), host)
