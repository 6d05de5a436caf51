"""The web page in a real headless Chromium (Debian's, driven by Playwright): upload an
image, watch it go through, see the four images and the class table."""

from __future__ import annotations

import shutil

import pytest

from tests.conftest import ROOT
from tests.integration.procs import scene_png

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
SHOTS = ROOT / "test-output"


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def test_upload_watch_and_see_the_explanation(stack, browser, tmp_path):
    image = tmp_path / "scene.png"
    image.write_bytes(scene_png(700, size=(240, 180)))
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    statuses: list[str] = []
    page.on("console", lambda m: statuses.append(f"console {m.type}: {m.text}"))
    page.goto(stack.url + "/")
    page.wait_for_function("document.querySelectorAll('#model option').length > 0")
    assert "shapes" in page.inner_text("#model")
    assert not page.is_visible("#keyrow")  # keys are off here: no key field
    page.select_option("#method", "gradcam++")
    page.set_input_files("#file", str(image))
    page.click("#go")
    page.wait_for_selector("#results:not([hidden])", timeout=60_000)
    page.wait_for_function(
        "['original','mask','heatmap','overlay'].every(n => { const i = document.getElementById('img-' + n);"
        " return i.complete && i.naturalWidth > 0; })",
        timeout=30_000,
    )
    sizes = page.evaluate(
        "['mask','heatmap','overlay'].map(n => [document.getElementById('img-' + n).naturalWidth,"
        " document.getElementById('img-' + n).naturalHeight])"
    )
    assert sizes == [[240, 180]] * 3
    assert page.inner_text("#status") == "Done"
    rows = page.locator("#classes tbody tr")
    assert rows.count() >= 2 and "background" in page.inner_text("#classes")
    assert "gradcam++" in page.inner_text("#explained")
    assert page.locator("#legend .swatch").count() == rows.count()
    SHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SHOTS / "web-result.png"), full_page=True)
    page.close()


def test_a_bad_file_is_explained_in_words(stack, browser, tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("this is not an image")
    page = browser.new_page()
    page.goto(stack.url + "/")
    page.wait_for_function("document.querySelectorAll('#model option').length > 0")
    page.set_input_files("#file", str(bad))
    page.click("#go")
    page.wait_for_function("document.getElementById('status').classList.contains('error')", timeout=20_000)
    assert page.inner_text("#status") == "Not accepted"
    assert "not an image" in page.inner_text("#detail")
    SHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SHOTS / "web-error.png"))
    page.close()


def test_the_page_follows_a_job_through_a_gateway_restart(browser, redis_url, prefix, tmp_path):
    """The stopped gateway ends the page's stream; the page long-polls, says it is reconnecting
    while nothing answers, and shows the result that the next gateway reports."""
    import signal

    from tests.integration.procs import Procs

    image = tmp_path / "scene.png"
    image.write_bytes(scene_png(701, size=(120, 90)))
    procs = Procs({"SEGCAM_REDIS_URL": redis_url, "SEGCAM_KEY_PREFIX": prefix}, tmp_path)
    page = browser.new_page()
    try:
        first = procs.api()  # no worker yet: the job waits in the queue
        port = procs.api_port
        page.goto(procs.url + "/")
        page.wait_for_function("document.querySelectorAll('#model option').length > 0")
        page.set_input_files("#file", str(image))
        page.click("#go")
        page.wait_for_function("document.getElementById('status').textContent === 'Queued'", timeout=20_000)
        # Why it does not move: no worker serves its model (the job's `workers` is 0).
        page.wait_for_function(
            "document.getElementById('detail').textContent.includes('no worker serves shapes yet')", timeout=10_000
        )
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=15)
        page.wait_for_function("document.getElementById('status').textContent === 'Reconnecting'", timeout=20_000)
        procs.api(port)
        procs.worker("web@local")
        page.wait_for_selector("#results:not([hidden])", timeout=90_000)
        assert page.inner_text("#status") == "Done"
    finally:
        page.close()
        procs.close()
