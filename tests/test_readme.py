"""Every code block of README.md and of the documentation pages (``docs/**/*.md``) runs: ``python``
blocks as they stand, ``console`` blocks command by command (``ringmark`` through the CLI; ``pip``
installs and the test command itself are what CI runs, so they are skipped here), in a fresh
folder. ``text`` blocks are synopses, not commands. A page's test ids name it
(``tutorial.md-python-4``, ``how-to/serve.md-console-0``). A page may show a README section
through a snippet line (``--8<-- "README.md:tour"``): that block runs once, as README's.
A command ending in ``&`` (``ringmark serve``) runs in its own process, ``curl`` against it must
answer JSON without an error, and ``kill %1`` stops it.

The Stable Diffusion examples need a hub checkpoint and a GPU; they run here on the tiny SD-layout
checkpoint built in tests/conftest.py, with the size, device and precision a CPU can use.

A block must also still mean what it shows: what a user reads off ``verify``'s and ``demo``'s
table (each image's verdict and the summary line, and with ``--log`` that the images the block
just generated and logged are ``confirmed``), ``scan``'s summary, ``log list``'s rows and the
server's answer, and what the Python examples print for the images they just watermarked, are
checked, not only that the commands exit 0.
"""

import json
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from watermark.cli import main

ROOT = Path(__file__).parent.parent
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]


def page_name(page: Path) -> str:
    return page.name if page.parent == ROOT else page.relative_to(DOCS).as_posix()


# (page, language, code) of every fenced block, in page order
BLOCKS = [(page, lang, code) for page in PAGES
          for lang, code in re.findall(r"^```(\w*)\n(.*?)^```", page.read_text(), flags=re.S | re.M)]
SKIPPED = ("pip ", "python3 -m pip ", "python3 -m pytest")


def blocks(language):
    """The blocks of one language, each with its page: ``(code, page)`` params named ``page-language-i``
    (i counts the page's blocks of every language)."""
    params = []
    for page in PAGES:
        own = [(lang, code) for p, lang, code in BLOCKS if p == page]
        params += [pytest.param(code, page, id=f"{page_name(page)}-{language}-{i}")
                   for i, (lang, code) in enumerate(own) if lang == language]
    return params


def test_every_block_is_typed():
    untyped = [(page_name(page), lang) for page, lang, _ in BLOCKS if lang not in ("python", "console", "text")]
    assert BLOCKS and not untyped, untyped


def test_the_pages_share_no_block():
    """A command shown twice costs the suite twice: a page shows README's blocks through a snippet."""
    seen = {}
    for page, lang, code in BLOCKS:
        if lang in ("python", "console"):
            assert code not in seen, f"{page_name(page)} repeats a block of {seen[code]}:\n{code}"
            seen[code] = page_name(page)


# hub ids in the pages, and the fixture (tests/conftest.py) whose tiny checkpoint stands in for them
STAND_INS = {"stabilityai/": "sd_folder", "Wan-AI/": "wan_folder"}


def stand_in(code: str) -> str | None:
    """The fixture standing in for the hub checkpoint ``code`` names, if it names one."""
    return next((fixture for hub, fixture in STAND_INS.items() if hub in code), None)


def on_stand_in(code: str, folder: str) -> str:
    """A checkpoint example as it runs here: the tiny checkpoint of the family, on the CPU, in
    float32, at a size (and clip length) a CPU runs in seconds."""
    code = re.sub(r"(stabilityai|Wan-AI)/[\w.-]+", folder, code).replace('"cuda"', '"cpu"')
    code = code.replace("torch.float16", "torch.float32").replace("512", "32").replace("--device cuda", "--device cpu")
    code = code.replace("--dtype float16", "").replace("--dtype bfloat16", "")
    code = code.replace("--size 480", "--size 64").replace("--frames 33", "--frames 5")  # Wan: 64 px, 2 latent frames
    return code.replace("-n 2048", "-n 4 --steps 2")  # calibrate: a few images show the command works


@pytest.mark.parametrize("code, page", blocks("python"))
def test_python_block_runs(code, page, tmp_path, monkeypatch, request, capsys):
    monkeypatch.chdir(tmp_path)
    if stand_in(code):
        code = on_stand_in(code, str(request.getfixturevalue(stand_in(code))))
    exec(compile(code, str(page), "exec"), {})
    # the examples print results for images they have just watermarked with their own key: the
    # first boolean of each printed line (watermarked) is True, unless a defence named on the
    # line overruled it (one_key, or min_consistency, can reject an image of the user's own key)
    for line in capsys.readouterr().out.splitlines():
        words = line.split()
        first = next((w for w in words if w in ("True", "False")), None)
        assert first in (None, "True") or re.search(r"\b(consistency|one key)\b", line), line


ROW = re.compile(r"^(?P<path>\S+)\s+(?P<verdict>WATERMARKED|clean|ERROR|rejected \([\w ]+\))(?P<weak> \(weak\))?"
                 r"(, (?P<provenance>confirmed|unconfirmed))?(\s|$)")
SUMMARY = re.compile(r"^(?P<found>\d+) of (?P<total>\d+) watermarked at alpha = (?P<alpha>[0-9.e-]+)(; .+)?$")


def read_table(stdout: str) -> tuple[dict[str, str], dict[str, str | None], int, int, float]:
    """verify's table as a user reads it: path -> verdict word, path -> provenance word (with --log),
    and the summary line's N of M at alpha."""
    header, *rows, summary = stdout.strip().splitlines()
    assert header.split()[:2] == ["path", "verdict"], header
    total = SUMMARY.match(summary)
    assert total, f"no summary line: {summary!r}"
    verdicts, provenance = {}, {}
    for row in rows:
        match = ROW.match(row)
        assert match, f"not a table row: {row!r}"
        verdicts[match["path"]], provenance[match["path"]] = match["verdict"], match["provenance"]
    return verdicts, provenance, int(total["found"]), int(total["total"]), float(total["alpha"])


def check_meaning(args: list[str], result, stand_in: bool) -> None:
    """What the user looks at in a command's output says what its page says it does."""
    command = args[1]
    if command in ("verify", "demo") and "--json" not in args:
        verdicts, provenance, found, total, alpha = read_table(result.stdout)
        assert alpha == 0.01 and total == len(verdicts), result.stdout
        assert found == sum(v == "WATERMARKED" for v in verdicts.values()), result.stdout  # the line agrees
        assert result.exit_code == (0 if found else 1) or command == "demo", result.stdout
        if "--log" in args and not stand_in:  # the block logged the images it has just generated
            marked = [path for path, v in verdicts.items() if v == "WATERMARKED"]
            assert marked and all(provenance[path] == "confirmed" for path in marked), result.stdout
        if "--report" in args:  # the report says what the table says, with a figure per watermarked image
            html = Path(args[args.index("--report") + 1]).read_text()
            assert html.count('<tr class="result"') == total and f"<b>{found}</b>watermarked" in html, html[:2000]
            assert html.count('<tr class="figure">') >= found
        if command == "demo":  # "a key, 4 watermarked and 4 clean images, all 8 verified"
            marked = [v for path, v in verdicts.items() if path.startswith("watermarked/")]
            clean = [v for path, v in verdicts.items() if path.startswith("clean/")]
            assert total == 8 and marked == ["WATERMARKED"] * 4, f"watermarked images not found:\n{result.stdout}"
            # a clean image is flagged with probability about alpha, but the demo draws a fresh key
            # each run and under the geometric search a few keys are liberal (BENCHMARKS, issue 22):
            # a CI run saw 2 of 4 clean images at p 0.0019 and 0.0022. Three or more of the 4 has
            # probability 4e-6 at alpha and 5e-4 even for a key flagging 5 %: the line still fails
            # when the demo stops telling clean from watermarked.
            assert len(clean) == 4 and sum(v == "WATERMARKED" for v in clean) <= 2, result.stdout
    if command == "scan" and not stand_in:  # the block scans the images it has just watermarked
        summary = json.loads(result.stdout.strip().splitlines()[-1])
        assert summary["errors"] == 0 and summary["watermarked"] == summary["images"] > 0, summary
    if command == "log" and args[2] == "list":  # one JSON line per image the block logged, no fingerprint
        rows = [json.loads(line) for line in result.stdout.splitlines()]
        assert rows and all(r["image_id"] and r["sha256"] and "fingerprint" not in r for r in rows), result.stdout


def commands(code):
    for line in code.replace("\\\n", " ").splitlines():
        for part in line.split("&&"):
            part = part.strip()
            if part and not part.startswith(SKIPPED):
                yield part


def start_background(command: str) -> subprocess.Popen:
    args = shlex.split(command)
    assert args[0] == "ringmark", command
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own local Ray, as a user's
    return subprocess.Popen([sys.executable, "-m", "watermark", *args[1:]], env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def stop(process: subprocess.Popen) -> None:
    """Ctrl-C, as a user stops the server; then the process group (its Ray) goes too."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def curl(command: str, server: subprocess.Popen | None) -> None:
    done = subprocess.run(shlex.split(command), capture_output=True, text=True, timeout=300)
    problem = None if server is None or server.poll() is None else server.stderr.read()[-2000:]
    assert done.returncode == 0, (command, done.stderr, problem)
    answer = json.loads(done.stdout)
    assert "error" not in answer, (command, answer)
    if "/v1/verify" in command:  # the block uploads images it has just watermarked
        assert answer["results"] and all(r["watermarked"] for r in answer["results"]), (command, answer)


@pytest.mark.parametrize("code, page", blocks("console"))
def test_console_block_runs(code, page, tmp_path, monkeypatch, request):
    monkeypatch.chdir(tmp_path)
    fixture = stand_in(code)  # no hub here: a tiny checkpoint of the family stands in, on the CPU
    folder = str(request.getfixturevalue(fixture)) if fixture else None
    stand_in_used = fixture is not None
    ran, background = 0, []
    try:
        for command in commands(code):
            ran += 1
            if command.endswith("&"):
                background.append(start_background(command[:-1]))
            elif command.startswith("curl "):
                curl(command, background[-1] if background else None)
            elif command == "kill %1":
                server = background.pop(0)
                stop(server)
                # what the user saw of it on stderr: ringmark's own lines, not Ray's logs (serve
                # --ray-log-level is "error" by default), and a clean Ctrl-C
                said = [line for line in server.stderr.read().splitlines() if line.strip()]
                noise = [line for line in said if not line.startswith("ringmark")]
                assert not noise, said
            else:
                if stand_in_used:
                    command = on_stand_in(command, folder).replace("ringmark embed", "ringmark embed --steps 2")
                args = shlex.split(command)
                assert args[0] == "ringmark", command
                result = CliRunner().invoke(main, args[1:], env={**os.environ})
                # verify exits 1 when no image is watermarked: only right on the random stand-in model
                expected = (0, 1) if stand_in_used and args[1] == "verify" else (0,)
                assert result.exit_code in expected, (page_name(page), command, result.output, result.stderr)
                if "--json" in args:  # what a user stores: one JSON object per image, with its p-value
                    rows = [json.loads(line) for line in result.stdout.splitlines()]
                    assert rows and all("p_value" in r for r in rows), result.stdout
                check_meaning(args, result, stand_in_used)
    finally:
        for process in background:
            stop(process)
    assert ran or all(part.strip().startswith(SKIPPED) for part in code.split("&&")), code
