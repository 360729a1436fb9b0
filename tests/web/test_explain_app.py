"""Word heatmaps in the real app: the `explain` API endpoint (gradio_client) and picking a word in
headless Chromium (Debian's, driven by Playwright)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from tests.helpers.app import app, serve
from tests.helpers.paths import ROOT
from captioner.core.inference import load_captioner

EXAMPLES = ROOT / "examples"
CHROMIUM = Path("/usr/bin/chromium")
TIMEOUT = 60_000  # ms; generous for two busy CPU cores
pytestmark = [pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),  # inside Gradio 6.31, with pandas 3
              pytest.mark.filterwarnings("ignore:The copy keyword is deprecated")]


@pytest.fixture(scope="module")
def url(app_model):
    with serve(app.build_app(app_model)) as url:
        yield url


@pytest.mark.slow
def test_explain_endpoint_returns_one_overlay_per_word(url, app_model):
    client = Client(url, verbose=False)
    photo = EXAMPLES / "coffee.jpg"
    data, overlays = client.predict(handle_file(photo), api_name="/explain")
    expected = load_captioner(app_model, "cpu").explain(photo)
    assert data["caption"] == expected.caption and expected.words
    assert [w["word"] for w in data["words"]] == [w.word for w in expected.words] == data["caption"].split()
    assert np.allclose([w["probability"] for w in data["words"]], [w.probability for w in expected.words], atol=1e-6)
    assert [o["caption"] for o in overlays] == [w.word for w in expected.words]
    original = Image.open(photo).size
    for overlay in overlays:
        with Image.open(overlay["image"]) as image:
            assert image.format == "PNG"
            assert max(image.size) <= app.OVERLAY_SIDE
            assert abs(image.width / image.height - original[0] / original[1]) < 0.01

    data, overlays = client.predict(handle_file(photo), caption="A cup of espresso.", beam_size=1,
                                    api_name="/explain")
    assert [w["word"] for w in data["words"]] == ["a", "cup", "of", "espresso"] and len(overlays) == 4
    with pytest.raises(AppError, match="no words"):
        client.predict(handle_file(photo), caption="?!", api_name="/explain")


@pytest.mark.slow
def test_explain_endpoint_on_a_large_photo_agrees_with_the_caption_endpoint(url, tmp_path):
    """A photo that captioning decodes at reduced size (3000 x 2000: by 1/2) is explained from the same
    pixels: the same caption and word probabilities; its overlays are at most OVERLAY_SIDE pixels."""
    photo = tmp_path / "coffee-3000.jpg"
    with Image.open(EXAMPLES / "coffee.jpg") as image:
        image.convert("RGB").resize((3000, 2000), Image.Resampling.BICUBIC).save(photo, quality=92)
    client = Client(url, verbose=False)
    captioned = client.predict(handle_file(photo), beam_size=3, api_name="/caption")
    data, overlays = client.predict(handle_file(photo), beam_size=3, api_name="/explain")
    assert data["caption"] == captioned["caption"]
    assert [w["word"] for w in data["words"]] == [w["word"] for w in captioned["words"]]
    assert np.allclose([w["probability"] for w in data["words"]], [w["probability"] for w in captioned["words"]],
                       atol=1e-5, rtol=0)
    for overlay in overlays:
        with Image.open(overlay["image"]) as image:
            assert image.size == (app.OVERLAY_SIDE, round(app.OVERLAY_SIDE * 2 / 3))


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing (Debian package chromium)") if os.environ.get("CI") == "true" else \
            pytest.skip(f"{CHROMIUM} is missing (Debian package chromium)")
    playwright_api = pytest.importorskip("playwright.sync_api")
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"])
        yield browser
        browser.close()


@pytest.mark.browser
def test_picking_a_word_shows_its_heatmap(browser, url, app_model):
    context = browser.new_context(viewport={"width": 1280, "height": 1100})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT)
    try:
        page.goto(url)
        page.locator("#photo input[type=file]").set_input_files(EXAMPLES / "chelsea-the-cat.jpg")
        page.locator("#caption-text .caption").wait_for()
        words = load_captioner(app_model, "cpu")(EXAMPLES / "chelsea-the-cat.jpg", beam_size=3).caption.split()
        picker = page.locator("#explain-words")
        picker.wait_for(state="visible")
        assert page.locator("#explain-image").count() == 0 or not page.locator("#explain-image").is_visible()
        word = words[-1]
        picker.locator("label").nth(len(words) - 1).click()
        page.locator("#explain-image img").wait_for(state="visible")
        note = page.locator("#explain-note")
        note.get_by_text("probability", exact=False).wait_for()
        assert word in note.inner_text() and "%" in note.inner_text()
        shown = page.locator("#explain-image img").get_attribute("src")
        assert shown and "word." in shown  # an overlay file written for this caption

        picker.locator("label").nth(0).click()  # another word: its own overlay
        page.wait_for_function("s => !document.querySelector('#explain-image img').src.includes(s)",
                               arg=shown.rsplit("/", 1)[-1])
        assert words[0] in note.inner_text()
        (ROOT / "test-artifacts").mkdir(exist_ok=True)
        page.screenshot(path=ROOT / "test-artifacts" / "explain-word.png", full_page=True)
        if os.environ.get("CAPTIONER_SCREENSHOTS") == "1":
            page.screenshot(path=ROOT / "docs" / "screenshots" / "explain.png", full_page=True)
    finally:
        context.close()
