"""The two pages people look at, in a real browser: the `verify --report` file and the page
`ringmark serve` answers at `/`. Headless Chromium from the system's packages (Debian's chromium
and chromium-driver, which `.ci/run` installs), driven by Selenium.

RINGMARK_SCREENSHOTS=DIR keeps a screenshot of each page there (docs/img holds the README's).
"""

import base64
import os
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from watermark.cli import main

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                                reason="needs Debian's chromium and chromium-driver (.ci/run installs them)")
TOKEN = "browser-token-0123456789"
WAIT = 120  # seconds: a verification on 2 loaded CPU cores


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # as this machine's probe starts it: no sandbox (root), and none of Chromium's own network
    # traffic, which the closed network here refuses
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=1100,1300"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def console_errors(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def screenshot(driver, name: str) -> None:
    folder = os.environ.get("RINGMARK_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(folder) / name))


def wait_for(driver, condition, what: str):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT, poll_frequency=0.2).until(lambda d: condition(d), message=what)


def test_the_report_opens_offline_and_shows_the_evidence(browser, scale_world, tmp_path):
    from selenium.webdriver.common.by import By

    root, images, reference = scale_world
    report = tmp_path / "report.html"
    result = CliRunner().invoke(main, ["verify", str(images), "--key", str(root / "key.json"), "--report", str(report),
                                       "-q"])
    assert result.exit_code == 2, result.output  # the unreadable files
    html = report.read_text()
    assert "http://" not in html and "https://" not in html and "<script" not in html  # nothing to fetch
    browser.get(report.as_uri())
    assert console_errors(browser) == []
    rows = {r.find_element(By.CSS_SELECTOR, ".path").text: r for r in browser.find_elements(By.CSS_SELECTOR, "tr.result")}
    assert len(rows) == len(reference) == 9
    for path, row in reference.items():
        shown = rows[path]
        verdict = shown.find_element(By.CSS_SELECTOR, ".verdict").text
        if row["error"]:
            assert verdict == "error" and row["error"] in shown.text
        else:
            assert verdict.startswith("watermarked" if row["watermarked"] else "clean"), (path, verdict)
            assert row["key_id"] in shown.text and f"{row['p_value']:.3g}" in shown.text
    figures = browser.find_elements(By.CSS_SELECTOR, "tr.figure img")
    assert len(figures) >= 3 and all(f.get_property("naturalWidth") > 100 for f in figures)  # decoded, not broken
    summary = browser.find_element(By.ID, "summary").text
    assert "9\nimages" in summary and "3\nwatermarked" in summary and "3\nerrors" in summary
    screenshot(browser, "report.png")


@pytest.fixture(scope="module")
def page(ray_local, scale_world):
    from ray import serve

    from watermark.io.keyring import load_keys
    from watermark.scale.cluster import free_port
    from watermark.scale.serve import Service, start

    root, images, reference = scale_world
    keys, _ = load_keys([root / "key.json"])
    url = start(keys, service=Service(token=TOKEN, port=free_port()), device="cpu")
    yield url
    serve.shutdown()


def choose(driver, path: Path) -> None:
    from selenium.webdriver.common.by import By

    driver.find_element(By.ID, "files").send_keys(str(path))


def newest_card(driver, done: bool = True):
    """The card of the last file sent, once its answer is in."""
    from selenium.webdriver.common.by import By

    def ready(d):
        cards = d.find_elements(By.CSS_SELECTOR, ".card")
        if not cards:
            return None
        verdict = cards[0].find_element(By.CSS_SELECTOR, ".verdict").text
        return cards[0] if verdict != "verifying…" else None

    return wait_for(driver, ready, "an answer on the page")


def test_the_serve_page_verifies_dropped_images_with_the_token(browser, page, scale_world):
    from selenium.webdriver.common.by import By

    root, images, reference = scale_world
    browser.get(page + "/")
    assert browser.title == "ringmark verifier" and console_errors(browser) == []
    token = browser.find_element(By.ID, "token")

    token.send_keys("wrong-token")
    choose(browser, images / "wm" / "00000.png")
    card = newest_card(browser)
    assert card.find_element(By.CSS_SELECTOR, ".verdict").text == "error 401"
    assert "missing or wrong bearer token" in card.text

    token.clear()
    token.send_keys(TOKEN)
    choose(browser, images / "wm" / "00000.png")
    card = newest_card(browser)
    expected = reference[str(images / "wm" / "00000.png")]
    assert card.find_element(By.CSS_SELECTOR, ".verdict").text == "watermarked"
    assert card.find_element(By.CSS_SELECTOR, ".key-id").text == expected["key_id"]
    shown = re.search(r"p-value (\S+) at alpha", card.text)  # the page writes 3 significant digits
    assert shown and abs(float(shown.group(1)) / expected["p_value"] - 1) < 0.01, (card.text, expected["p_value"])
    figure = card.find_element(By.CSS_SELECTOR, "img.figure")
    wait_for(browser, lambda d: figure.get_property("naturalWidth") > 100, "the evidence figure decoded")

    choose(browser, images / "bad" / "junk.png")
    card = newest_card(browser)
    assert card.find_element(By.CSS_SELECTOR, ".verdict").text == "error 422"
    assert "junk.png" in card.text and "not an image" in card.text

    # a drop: the page's drop handler with a File, as a drag from the desktop delivers it
    data = base64.b64encode((images / "clean" / "00000.png").read_bytes()).decode()
    browser.execute_script("""
        const bytes = Uint8Array.from(atob(arguments[0]), c => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], "dropped.png", {type: "image/png"}));
        document.getElementById("drop").dispatchEvent(new DragEvent("drop", {dataTransfer: transfer, bubbles: true}));
    """, data)
    card = newest_card(browser)
    assert "dropped.png" in card.text
    assert card.find_element(By.CSS_SELECTOR, ".verdict").text.startswith("clean")
    screenshot(browser, "serve.png")
    # the only console errors are the two refused requests the page itself reported
    errors = console_errors(browser)
    assert len(errors) == 2 and all("Failed to load resource" in e for e in errors), errors
    assert any("401" in e for e in errors) and any("422" in e for e in errors), errors
