"""The app in headless Chromium (Debian's, driven by Playwright): what a person sees and clicks.

Screenshots go to test-artifacts/; with CAPTIONER_SCREENSHOTS=1 the README's screenshots in
docs/screenshots/ are refreshed too.
"""

from __future__ import annotations

import csv
import json
import os
import re
import zipfile
from pathlib import Path

import pytest

from tests.helpers.app import app, make_app_model, serve
from tests.helpers.paths import ROOT
from captioner.core.repository.storage import BUNDLED_MODEL_DIR
from captioner.core.inference import load_captioner

pytestmark = [pytest.mark.browser,  # Gradio 6.31 calls a pandas option that pandas 3 deprecates:
              pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),
              pytest.mark.filterwarnings("ignore:The copy keyword is deprecated")]

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts"
SCREENSHOTS = ROOT / "docs" / "screenshots"
EXAMPLES = ROOT / "examples"
TIMEOUT = 60_000  # ms; generous for two busy CPU cores


def _unavailable(reason: str):
    if os.environ.get("CI") == "true":
        pytest.fail(f"browser tests cannot run in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def app_model(tmp_path_factory):
    """The small test model; for README screenshots (CAPTIONER_SCREENSHOTS=1), the bundled model."""
    if os.environ.get("CAPTIONER_SCREENSHOTS") == "1":
        if not (BUNDLED_MODEL_DIR / "config.json").is_file():
            pytest.fail(f"CAPTIONER_SCREENSHOTS=1 shows the bundled model, and {BUNDLED_MODEL_DIR} holds none")
        return BUNDLED_MODEL_DIR
    return make_app_model(tmp_path_factory.getbasetemp() / "app-model")


@pytest.fixture(scope="module")
def url(app_model):
    with serve(app.build_demo(app_model)) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        _unavailable(f"{CHROMIUM} is missing (Debian package chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright Python package is not installed")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser, url, request):
    """A fresh page on the app that records any request leaving the machine."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT)
    page.outside_requests = []
    page.on("request", lambda r: page.outside_requests.append(r.url)
            if not r.url.startswith(("http://127.0.0.1", "data:", "blob:")) else None)
    page.goto(url)
    page.get_by_role("tab", name="Caption").wait_for()
    yield page
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / f"{request.node.name}.png", full_page=True)
    context.close()


def save_screenshot(page, name: str) -> None:
    if os.environ.get("CAPTIONER_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=SCREENSHOTS / name, full_page=True)


def table_rows(page, selector: str) -> int:
    """Data rows of a gr.Dataframe (its grid counts the header row too)."""
    return int(page.locator(f"{selector} [role=grid]").get_attribute("aria-rowcount")) - 1


def shown_caption(model_dir, photo: Path) -> str:
    """What the Caption tab should show for ``photo`` with the default settings."""
    caption = load_captioner(model_dir, "cpu")(photo, beam_size=3, num_candidates=3).caption
    return " ".join(word[:1].upper() + word[1:] for word in caption.split())


def test_uploading_a_photo_shows_its_caption(page, app_model):
    page.locator("#photo input[type=file]").set_input_files(EXAMPLES / "coffee.jpg")
    caption = page.locator("#caption-text .caption")
    caption.wait_for()
    want = shown_caption(app_model, EXAMPLES / "coffee.jpg")
    assert want and caption.inner_text() == want
    assert table_rows(page, "#candidates") == 3
    assert re.search(r"\d+%", page.locator("#words").inner_text())
    if load_captioner(app_model, "cpu").config.emits_classes:
        assert "espresso" in page.locator("#top-classes").inner_text()
    assert page.outside_requests == []  # fonts and scripts come from the app itself: works offline
    page.wait_for_timeout(500)  # let the image finish fading in
    save_screenshot(page, "caption.png")


def test_clicking_an_example_shows_its_caption(page, app_model):
    page.locator("#examples button", has=page.locator("img[src$='/chelsea-the-cat.jpg']")).click()
    want = shown_caption(app_model, EXAMPLES / "chelsea-the-cat.jpg")
    page.locator("#caption-text .caption", has_text=want).wait_for()
    assert page.locator("#caption-text .caption").inner_text() == want


def test_a_bad_upload_shows_the_loader_message(page, tmp_path):
    (tmp_path / "notes.png").write_text("this is not a photo")
    page.locator("#photo input[type=file]").set_input_files(tmp_path / "notes.png")
    page.get_by_text("not an image (it is a text file)").first.wait_for()
    page.locator("#photo input[type=file]").set_input_files(EXAMPLES / "rocket.jpg")  # still serving
    page.locator("#caption-text .caption").wait_for()


def test_batch_tab_offers_a_csv_with_one_row_per_image(page, app_model, tmp_path):
    archive = tmp_path / "album.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(EXAMPLES / "camera.jpg", "album/camera.jpg")
        zf.write(EXAMPLES / "rocket.jpg", "album/rocket.jpg")
    (tmp_path / "broken.jpg").write_bytes((EXAMPLES / "coffee.jpg").read_bytes()[:1500])
    page.get_by_role("tab", name="Batch").click()
    page.locator("#batch-files input[type=file]").set_input_files(
        [EXAMPLES / "coffee.jpg", EXAMPLES / "grace-hopper.jpg", archive, tmp_path / "broken.jpg"])
    page.locator("#batch-files a[download='broken.jpg']").wait_for()  # uploaded
    page.locator("#batch-run").click()
    page.locator("#download-csv").wait_for(state="visible")

    with page.expect_download() as download:
        page.locator("#download-csv").click()
    rows = list(csv.DictReader(open(download.value.path(), encoding="utf-8")))
    assert [row["file"] for row in rows] == ["coffee.jpg", "grace-hopper.jpg", "album.zip/album/camera.jpg",
                                             "album.zip/album/rocket.jpg", "broken.jpg"]
    captioner = load_captioner(app_model, "cpu")
    for row, photo in zip(rows[:4], ["coffee", "grace-hopper", "camera", "rocket"]):
        assert row["caption"] == captioner(EXAMPLES / f"{photo}.jpg", beam_size=3).caption
        assert row["error"] == "" and 0 < float(row["confidence"]) <= 1
    assert "truncated or corrupt" in rows[4]["error"] and rows[4]["caption"] == ""

    with page.expect_download() as download:
        page.locator("#download-json").click()
    assert [record["image"] for record in json.loads(Path(download.value.path()).read_text())] == \
        [row["file"] for row in rows]
    assert table_rows(page, "#batch-table") == 5
    save_screenshot(page, "batch.png")


def test_model_tab_describes_the_model(page, app_model):
    page.get_by_role("tab", name="Model").click()
    panel = page.locator("#model-panel")
    panel.get_by_text("efficientnet-lite0", exact=False).first.wait_for()
    assert str(app_model) in panel.inner_text() and "CAPTIONER_MODEL" in panel.inner_text()
    save_screenshot(page, "model.png")
