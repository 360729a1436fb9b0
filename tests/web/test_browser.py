"""The app in headless Chromium (Debian's, driven by Playwright): what a person sees and clicks.

Screenshots go to test-artifacts/; with CAPTIONER_SCREENSHOTS=1 the README's screenshots in
docs/screenshots/ are refreshed too.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import zipfile
from pathlib import Path

import pytest

from captioner.core.inference import load_captioner
from captioner.core.repository.storage import BUNDLED_MODEL_DIR
from tests.helpers.app import app, make_app_model, serve
from tests.helpers.paths import ROOT

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
    with serve(app.build_app(app_model)) as url:
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


@contextlib.contextmanager
def open_page(browser, url: str, name: str):
    """A fresh page on the app at ``url`` that records any request leaving the machine; its screenshot
    goes to ``test-artifacts/NAME.png`` when it closes."""
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
    page.screenshot(path=ARTIFACTS / f"{name}.png", full_page=True)
    context.close()


@pytest.fixture
def page(browser, url, request):
    with open_page(browser, url, request.node.name) as page:
        yield page


def save_screenshot(page, name: str) -> None:
    if os.environ.get("CAPTIONER_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=SCREENSHOTS / name, full_page=True)


def table_rows(page, selector: str) -> int:
    """Data rows of a gr.Dataframe (its grid counts the header row too)."""
    return int(page.locator(f"{selector} [role=grid]").get_attribute("aria-rowcount")) - 1


def shown_caption(model_dir, photo: Path, **settings) -> str:
    """What the Caption tab should show for ``photo`` (default settings unless given): the caption in
    sentence case, with "…" when it was cut at the maximum length."""
    best = load_captioner(model_dir, "cpu")(photo, **{"beam_size": 3, "num_candidates": 3, **settings}).candidates[0]
    return best.caption[:1].upper() + best.caption[1:] + (" …" if best.cut else "")


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


def test_a_non_image_upload_shows_one_message_and_clears_the_panels(page, tmp_path):
    """After a good caption, a text file named .png: one message in the caption's place, every panel
    emptied, no red "Error" badge, no toast, no broken picture in the photo box."""
    page.locator("#photo input[type=file]").set_input_files(EXAMPLES / "rocket.jpg")
    page.locator("#caption-text .caption").wait_for()
    assert table_rows(page, "#candidates") == 3
    (tmp_path / "notes.png").write_text("this is not a photo")
    page.locator("#photo input[type=file]").set_input_files(tmp_path / "notes.png")
    message = page.locator("#caption-text .problem")
    message.wait_for()
    page.wait_for_timeout(2000)  # anything the emptied photo box sets off has run
    assert "not an image (it is a text file)" in message.inner_text()
    assert page.locator("#caption-text .problem").count() == 1 and page.locator("#caption-text .caption").count() == 0
    assert table_rows(page, "#candidates") == 0 and not re.search(r"\d+%", page.locator("#words").inner_text())
    assert page.locator("span.error").count() == 0  # the status badge Gradio puts on a failed event's outputs
    assert page.locator(".toast-body").count() == 0
    assert page.locator("#photo img").count() == 0  # the box is empty, ready for another photo
    page.locator("#photo input[type=file]").set_input_files(EXAMPLES / "coffee.jpg")
    page.locator("#caption-text .caption").wait_for()
    assert page.locator("#caption-text .problem").count() == 0 and table_rows(page, "#candidates") == 3


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


# ---- the caption's details (sentence case, copying, the table on small screens, the settings' rules) -----

def open_settings(page):
    page.get_by_role("button", name="Decoding settings").click()
    page.locator("#beam-size input[type=number]").wait_for()


def caption_of(page, photo: Path) -> str:
    page.locator("#photo input[type=file]").set_input_files(photo)
    page.locator("#caption-text .caption").wait_for()
    return page.locator("#caption-text .caption").inner_text()


def test_the_caption_is_in_sentence_case_and_the_copy_button_copies_it(browser, url, app_model):
    context = browser.new_context(viewport={"width": 1366, "height": 900}, permissions=["clipboard-read",
                                                                                    "clipboard-write"])
    page = context.new_page()
    page.set_default_timeout(TIMEOUT)
    try:
        page.goto(url)
        shown = caption_of(page, EXAMPLES / "coffee.jpg")
        words = shown.removesuffix(" …").split()
        assert shown == shown_caption(app_model, EXAMPLES / "coffee.jpg")
        assert words[0][0].isupper() and not any(word[0].isupper() for word in words[1:])  # never Title Case
        first_row = page.locator("#candidates [role=gridcell]").nth(1).inner_text()
        assert first_row.strip() == shown  # the table says the same, the same way
        page.locator("#copy-caption").click()
        page.locator("#copy-caption", has_text="Copied").wait_for()
        assert page.evaluate("navigator.clipboard.readText()") == shown
    finally:
        context.close()


@pytest.mark.parametrize("width", [1366, 390])
def test_long_captions_leave_confidence_and_score_on_screen(browser, url, width):
    context = browser.new_context(viewport={"width": width, "height": 900})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT)
    try:
        page.goto(url)
        open_settings(page)
        longest = page.locator("#max-length input[type=number]")
        longest.fill("50")
        longest.blur()
        assert len(caption_of(page, EXAMPLES / "rocket.jpg").split()) > 20  # a long caption
        table = page.locator("#candidates")
        box = table.bounding_box()
        for header in ("Confidence", "Score"):
            cell = table.get_by_text(header, exact=True).first.bounding_box()
            assert cell["x"] >= box["x"] and cell["x"] + cell["width"] <= min(box["x"] + box["width"], width), header
        scroll, visible = table.evaluate("e => [e.querySelector('.table-wrap, table')?.scrollWidth ?? 0, "
                                         "e.querySelector('.table-wrap, table')?.clientWidth ?? 0]")
        assert scroll <= visible + 1  # nothing to scroll sideways to
        assert page.evaluate("document.documentElement.scrollWidth") <= width
        page.screenshot(path=ARTIFACTS / f"long-caption-{width}.png", full_page=True)
    finally:
        context.close()


def test_greedy_search_disables_the_beam_controls(page):
    from playwright.sync_api import expect

    open_settings(page)
    controls = [page.locator(f"{slider} input[type={kind}]") for slider in ("#beam-size", "#candidates-shown")
                for kind in ("number", "range")]
    assert all(control.is_enabled() for control in controls)
    page.get_by_label("Greedy").check()
    for control in controls:
        expect(control).to_be_disabled()
    page.get_by_label("Beam search").check()
    for control in controls:
        expect(control).to_be_enabled()


def test_a_beam_size_typed_beyond_the_slider_is_the_one_shown_and_used(page, app_model):
    open_settings(page)
    caption_of(page, EXAMPLES / "camera.jpg")
    box = page.locator("#beam-size input[type=number]")
    box.fill("50")
    box.blur()  # the slider takes it on leaving the box
    want = shown_caption(app_model, EXAMPLES / "camera.jpg", beam_size=10)
    page.locator("#caption-text .caption", has_text=want).wait_for()
    assert page.locator("#caption-text .caption").inner_text() == want
    assert box.input_value() == "10"


def test_maximum_length_counts_words_and_a_cut_caption_says_so(page, app_model):
    open_settings(page)
    longest = page.locator("#max-length input[type=number]")
    longest.fill("2")
    longest.blur()
    shown = caption_of(page, EXAMPLES / "grace-hopper.jpg")
    best = load_captioner(app_model, "cpu")(EXAMPLES / "grace-hopper.jpg", beam_size=3, max_length=2).candidates[0]
    assert shown == shown_caption(app_model, EXAMPLES / "grace-hopper.jpg", max_length=2)
    words = shown.removesuffix(" …").split()
    assert len(words) == len(best.words) and 1 <= len(words) <= 2
    noted = "Cut at 2 words" in page.locator("#caption-text").inner_text()
    assert noted == best.cut == shown.endswith(" …")
    assert words[-1].lower() not in ("a", "an", "the") or noted  # never ends on an article unless it says it was cut


@pytest.fixture(scope="module")
def bundled_url():
    if not (BUNDLED_MODEL_DIR / "config.json").is_file():
        pytest.skip("no bundled model")
    with serve(app.build_app(BUNDLED_MODEL_DIR)) as url:
        yield url


@pytest.fixture
def bundled_page(browser, bundled_url, request):
    with open_page(browser, bundled_url, request.node.name) as page:
        yield page


def test_the_bundled_models_tab_shows_its_cards_limits(bundled_page):
    bundled_page.get_by_role("tab", name="Model").click()
    panel = bundled_page.locator("#model-panel")
    panel.get_by_text("What it can and cannot say").wait_for()
    text = panel.inner_text()
    assert "cannot describe actions, counts" in text
    assert "does not describe this model's limits" not in text


def test_a_caption_shows_its_confidence_in_words_and_what_the_model_knows(bundled_page):
    photo = EXAMPLES / "chelsea-the-cat.jpg"
    bundled_page.locator("#photo input[type=file]").set_input_files(photo)
    confidence = bundled_page.locator("#caption-text .confidence")
    confidence.wait_for()
    expected = load_captioner(BUNDLED_MODEL_DIR, "cpu")(photo, beam_size=3, num_candidates=3)
    from captioner.web.honesty import confidence_text

    assert confidence.inner_text().startswith(confidence_text(expected.confidence))
    assert re.fullmatch(r"(likely|maybe|unsure) \d+%", confidence_text(expected.confidence))
    knows = bundled_page.locator("#caption-text .knows").inner_text()
    assert "1000 kinds of animals, objects and places" in knows and "cannot describe actions, counts or colours" in knows
    assert "import-legacy --download" in knows
    want = confidence_text(expected.candidates[0].confidence)
    bundled_page.wait_for_function("(want) => document.querySelector('#candidates').innerText.includes(want)", arg=want)
