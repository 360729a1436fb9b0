"""The captioner's web demo (Gradio): caption a photo, try the examples, caption a whole folder, see
which model is loaded. The page's layout and what each event runs; the handlers are in ``handlers``,
what they share in ``state``, the limits of a public server in ``guards``.

    python app.py [--model DIR | owner/name[@revision]]      # the checkout's app.py: see web/main.py

The app is meant to be public: SECURITY.md lists what a request may carry and the limits it meets.
"""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: no calls home

import html
from typing import Any, NamedTuple

import gradio as gr
from gradio.utils import get_upload_folder
from starlette.middleware import Middleware

from captioner.core.options import DecodeOptions
from captioner.core.repository.modelcard import summarize_card
from captioner.core.repository.storage import BUNDLED_MODEL_DIR
from captioner.web.file_guard import FileInputGuard
from captioner.web.guards import RequestSizeLimit
from captioner.web.handlers import (
    BEAM,
    DEFAULT_BEAM,
    GREEDY,
    KEEP_WORDS,
    MAX_PAGE_BEAM,
    OVERLAY_SIDE,
    SAY_LESS,
    admission,
    beam_controls,
    bind,
    caption_api,
    caption_batch,
    caption_photo,
    clear_photo,
    explain_api,
    explain_word,
    page_max_length,
    show_example,
    ui_options,
    word_choices,
)
from captioner.web.honesty import CONFIDENCE_NOTE
from captioner.web.state import EXAMPLES_DIR, AppState, load_state
from captioner.web.views import ASK_FOR_A_PHOTO, model_panel, placeholder

__all__ = ["OVERLAY_SIDE", "CaptionApp", "build_app", "build_demo", "launch_options"]

# Requests of each kind running at once. Caption calls mostly wait for a shared forward pass (the
# decode memory budget bounds their images), so there are more of them than any client's share.
CONCURRENCY = {"caption": 24, "explain": 3, "batch": 1}  # batch jobs have their own worker
QUEUE_SIZE = 64  # waiting requests beyond this are turned away ("queue is full")
MAX_UPLOAD = "100mb"  # per file; zips of many photos need room, single images are capped lower by the loader
UPLOADS_MAX_AGE_S = 3600  # Gradio removes uploads after this

CSS = """
#caption-text .caption { font-size: clamp(1.6rem, 3.2vw, 2.5rem); font-weight: 700; line-height: 1.2;
  margin: 0.2em 0 0.1em; }
#caption-text .placeholder { font-size: 1.25rem; opacity: 0.6; margin: 0.4em 0; }
#caption-text .problem { font-size: 1.25rem; color: #b91c1c; margin: 0.4em 0; }
#caption-text .cut-note { opacity: 0.75; margin: 0.2em 0; }
#copy-caption { align-self: flex-start; }
#model-notice { border-left: 4px solid #f59e0b; background: rgba(245, 158, 11, 0.12);
  padding: 0.6rem 1rem; border-radius: 6px; }
"""
# The Copy caption button: the caption as shown, to the clipboard (a textarea where the page is not a
# secure context, as on a LAN address, and the clipboard API is missing).
COPY_CAPTION = """() => {
  const text = document.querySelector('#caption-text .caption')?.innerText ?? '';
  const button = document.querySelector('#copy-caption');
  const done = () => { if (button) { button.textContent = 'Copied'; setTimeout(() => { button.textContent = 'Copy caption'; }, 1500); } };
  if (navigator.clipboard && window.isSecureContext) { navigator.clipboard.writeText(text).then(done); return; }
  const area = Object.assign(document.createElement('textarea'), {value: text});
  document.body.appendChild(area); area.select(); document.execCommand('copy'); area.remove(); done();
}"""
# Gradio serves the theme's fonts itself, so the page needs nothing from the internet.
THEME = gr.themes.Soft(primary_hue="orange", secondary_hue="sky")


class CaptionApp(NamedTuple):
    """A built app: the page to launch and the state its handlers share (``state.close()`` after)."""

    demo: gr.Blocks
    state: AppState


def queued(handler, app: AppState, kind: str) -> dict[str, Any]:
    """An event's function and queue settings: ``kind``'s workers, and its per-client share."""
    return {"fn": bind(handler, app), "concurrency_id": kind, "concurrency_limit": CONCURRENCY[kind],
            "validator": admission(handler, app, kind)}


def build_app(source: str | os.PathLike | None = None, *, bundled: str | os.PathLike | None = BUNDLED_MODEL_DIR,
              examples_dir: str | os.PathLike = EXAMPLES_DIR, batch_size: int | None = None,
              backend: str | None = None, precision: str | None = None, fallback: bool = True) -> CaptionApp:
    """The app for ``source`` (None: ``$CAPTIONER_MODEL``, else the ``bundled`` model). When that
    model cannot be loaded, the bundled one is shown instead if ``fallback``; when none is, the page
    still comes up and says why. ``batch_size``: images per forward pass (None: ``$CAPTIONER_MAX_BATCH``,
    else 8). ``backend``: auto, torch or onnx (None: ``$CAPTIONER_BACKEND``, else auto); ``precision``:
    auto, fp32 or int8, the onnx backend's encoder (None: ``$CAPTIONER_PRECISION``, else auto)."""
    app = load_state(source, bundled=bundled, examples_dir=examples_dir, batch_size=batch_size, backend=backend,
                     precision=precision, fallback=fallback)
    length = app.default_length
    app.warm_examples(ui_options(BEAM, DEFAULT_BEAM, DEFAULT_BEAM, length, length))  # examples answer at once
    captioner, notice = app.captioner, app.choice.notice

    with gr.Blocks(title="Show and Tell: image captioner", analytics_enabled=False,
                   delete_cache=(900, UPLOADS_MAX_AGE_S)) as demo:
        gr.Markdown("# Show and Tell: image captioner\n"
                    "A pretrained CNN looks at the photo; an LSTM writes a sentence about it, word by word. "
                    "Drop a photo, paste one, take one with the webcam, or click an example.")
        gr.Markdown(html.escape((notice or "") + (" The Model tab says how to choose a model." if not captioner else "")),
                    elem_id="model-notice", visible=bool(notice))
        with gr.Tabs():
            with gr.Tab("Caption", id="caption"):
                with gr.Row(equal_height=False):
                    with gr.Column(scale=5):
                        photo = gr.Image(type="filepath", sources=["upload", "clipboard", "webcam"], label="Photo",
                                         elem_id="photo", height=380)
                        run = gr.Button("Caption", variant="primary")
                        with gr.Accordion("Decoding settings", open=False):
                            search = gr.Radio([BEAM, GREEDY], value=BEAM, label="Search",
                                              info="Greedy takes the likeliest word at each step; beam search "
                                                   "keeps several partial sentences and picks the best whole one.")
                            beam_size = gr.Slider(2, MAX_PAGE_BEAM, value=DEFAULT_BEAM, step=1, label="Beam size",
                                                  elem_id="beam-size")
                            candidates = gr.Slider(1, MAX_PAGE_BEAM, value=DEFAULT_BEAM, step=1,
                                                   label="Candidates to show", info="At most the beam size.",
                                                   elem_id="candidates-shown")
                            max_length = gr.Slider(2, page_max_length(length), value=length, step=1,
                                                   label="Maximum length (words)", elem_id="max-length")
                            when_unsure = gr.Radio([SAY_LESS, KEEP_WORDS], value=SAY_LESS, label="When unsure",
                                                   elem_id="when-unsure",
                                                   info="Say less: a general word (\"a bird\") when the model is "
                                                        "unsure of the specific one, and \"nothing the model "
                                                        "recognises\" when it recognises nothing.")
                    with gr.Column(scale=6):
                        caption_view = gr.Markdown(placeholder(ASK_FOR_A_PHOTO), elem_id="caption-text")
                        copy = gr.Button("Copy caption", size="sm", variant="secondary", visible=False,
                                         elem_id="copy-caption")
                        words_view = gr.HighlightedText(label="How sure the model is of each word",
                                                        show_legend=False, elem_id="words")
                        explain_words = gr.Radio([], label="Where did a word come from? Pick one to see its "
                                                 "heatmap", visible=False, elem_id="explain-words")
                        explain_note = gr.Markdown(elem_id="explain-note")
                        explain_view = gr.Image(label="Heatmap of the picked word", interactive=False,
                                                visible=False, elem_id="explain-image", height=380)
                        shown_caption, explained = gr.State(""), gr.State(None)
                        candidates_view = gr.Dataframe(headers=["#", "Candidate", "Confidence", "Score"],
                                                       datatype=["number", "str", "str", "number"],
                                                       column_widths=["9%", "45%", "27%", "19%"],
                                                       interactive=False, wrap=True, label="Beam candidates",
                                                       elem_id="candidates")
                        classes_view = gr.Label(num_top_classes=5, label="What the encoder sees (ImageNet classes)",
                                                visible=bool(captioner and captioner.config.emits_classes),
                                                elem_id="top-classes")
                if app.examples:
                    gallery = gr.Dataset(components=[photo], samples=[[str(path)] for path in app.examples],
                                         type="index", samples_per_page=24, label="Examples: click one to caption it",
                                         elem_id="examples")
                gr.Markdown(CONFIDENCE_NOTE, elem_id="confidence-note")
            with gr.Tab("Batch", id="batch"):
                gr.Markdown("Caption many photos at once, for alt text: upload images or `.zip` archives. "
                            "The decoding settings of the Caption tab apply.")
                files = gr.File(file_count="multiple", file_types=["image", ".zip"],
                                label="Images or .zip archives", elem_id="batch-files")
                run_batch = gr.Button("Caption all", variant="primary", elem_id="batch-run")
                batch_summary = gr.Markdown(elem_id="batch-summary")
                batch_table = gr.Dataframe(headers=["File", "Caption", "Confidence", "Error"], interactive=False,
                                           wrap=True, label="Results", elem_id="batch-table")
                with gr.Row():
                    csv_button = gr.DownloadButton("Download CSV", visible=False, elem_id="download-csv")
                    json_button = gr.DownloadButton("Download JSON", visible=False, elem_id="download-json")
            with gr.Tab("Model", id="model"):
                gr.Markdown(model_panel(captioner, notice), elem_id="model-panel")
                if captioner and captioner.loaded.card:
                    with gr.Accordion("Full model card", open=False):
                        gr.Markdown(summarize_card(captioner.loaded.card).body)

        with gr.Row(visible=False):  # the inputs and outputs of the API-only endpoints
            api_image = gr.Image(type="filepath", label="image")
            api_beam = gr.Number(DEFAULT_BEAM, precision=0, label="beam_size")
            api_candidates = gr.Number(None, precision=0, label="num_candidates")  # None: as many as beam_size
            api_length = gr.Number(length, precision=0, label="max_length")
            api_unsure = gr.Textbox(DecodeOptions.when_unsure, label="when_unsure")
            api_result = gr.JSON(label="result")
            api_caption_button = gr.Button()
            api_caption = gr.Textbox("", label="caption")
            api_explanation = gr.JSON(label="explanation")
            api_overlays = gr.Gallery(label="overlays", type="filepath")
            api_explain_button = gr.Button()

        # What each event runs. Caption, explain and batch events read their files themselves
        # (preprocess=False, see handlers) and are refused before they join the queue when their
        # client has its share waiting or running (the validator).
        controls = [search, beam_size, candidates, max_length, when_unsure]
        panels = [caption_view, words_view, candidates_view, classes_view, shown_caption, copy]
        gr.on([photo.change, run.click, search.change, beam_size.release, candidates.release, max_length.release,
               when_unsure.change],
              inputs=[photo, *controls], outputs=[*panels, photo, beam_size, candidates, max_length],
              preprocess=False, api_visibility="private",
              **queued(caption_photo, app, "caption"),
              ).success(word_choices, shown_caption, [explain_words, explain_view, explain_note, explained],
                        api_visibility="private")
        copy.click(None, js=COPY_CAPTION)
        search.change(beam_controls, search, [beam_size, candidates], queue=False, api_visibility="private")
        photo.clear(clear_photo, None, panels, queue=False, api_visibility="private").then(
            word_choices, shown_caption, [explain_words, explain_view, explain_note, explained], queue=False,
            api_visibility="private")
        explain_words.input(inputs=[photo, explain_words, shown_caption, explained],
                            outputs=[explain_view, explain_note, explained], preprocess=False, api_visibility="private",
                            **queued(explain_word, app, "explain"))
        if app.examples:
            gallery.click(bind(show_example, app), gallery, photo, queue=False, show_progress="hidden",
                          api_visibility="private")
        # Not batch=True: Gradio fails a whole batch when one request fails. Each call decodes its
        # own image (so a bad one fails alone) and SharedCaptioner merges the model work instead.
        api_caption_button.click(inputs=[api_image, api_beam, api_candidates, api_length, api_unsure], outputs=api_result,
                                 api_name="caption", preprocess=False, **queued(caption_api, app, "caption"))
        api_explain_button.click(inputs=[api_image, api_caption, api_beam, api_length],
                                 outputs=[api_explanation, api_overlays], api_name="explain", preprocess=False,
                                 **queued(explain_api, app, "explain"))
        run_batch.click(inputs=[files, search, beam_size, max_length, when_unsure],
                        outputs=[batch_table, batch_summary, csv_button, json_button], api_visibility="private",
                        preprocess=False, **queued(caption_batch, app, "batch"))
    demo.queue(max_size=QUEUE_SIZE, default_concurrency_limit=2)
    app.shares.watch(demo)
    return CaptionApp(demo, app)


def build_demo(source: str | os.PathLike | None = None, **settings: Any) -> gr.Blocks:
    """The page of ``build_app(source, **settings)``, for ``gradio app.py`` and mounting under a server."""
    return build_app(source, **settings).demo


def launch_options() -> dict[str, Any]:
    """Arguments for ``demo.launch`` or ``gr.mount_gradio_app`` (Gradio 6 takes theme and CSS here, not
    in ``gr.Blocks``). The request limits wrap the app, outermost first: body sizes
    (``RequestSizeLimit``), then the files a request names (``FileInputGuard``)."""
    uploads = get_upload_folder()
    middleware = [Middleware(RequestSizeLimit, upload_dir=uploads), Middleware(FileInputGuard, upload_dir=uploads)]
    return {"theme": THEME, "css": CSS, "max_file_size": MAX_UPLOAD, "share": False,
            "app_kwargs": {"middleware": middleware}}


def __getattr__(name: str) -> Any:
    """``demo``, built on first use, so that importing this module loads no model (``gradio app.py``
    and Hugging Face Spaces look for ``demo``)."""
    if name == "demo":
        globals()["demo"] = build_demo()
        return globals()["demo"]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
