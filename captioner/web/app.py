"""The captioner's web demo (Gradio): caption a photo, try the examples, caption a whole folder,
see which model is loaded. UI only: the work is done by the ``captioner`` library.

    python app.py [--model DIR | owner/name[@revision]]      # the checkout's app.py runs main()

``GRADIO_SERVER_NAME`` / ``GRADIO_SERVER_PORT`` choose the address (default 127.0.0.1:7860);
``CAPTIONER_MODEL`` chooses the model when ``--model`` is not given (default: the bundled one);
``CAPTIONER_MAX_BATCH`` the images per shared forward pass when ``--max-batch-size`` is not (default 8).

The app is meant to be public: SECURITY.md lists what a request may carry and the limits below.
"""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: no calls home

import argparse
import html
import sys
import tempfile
from pathlib import Path
from typing import Any

import gradio as gr
from gradio.utils import get_upload_folder
from starlette.middleware import Middleware

from captioner.core.backends.choice import resolve_backend
from captioner.core.devices import select_device
from captioner.core.errors import CaptionerError, ImageError
from captioner.core.explain.overlays import write_overlays
from captioner.core.options import (
    BACKEND_HELP,
    BACKENDS,
    MAX_BEAM_SIZE,
    PRECISION_HELP,
    PRECISIONS,
    DecodeOptions,
    whole_number,
)
from captioner.core.repository.modelcard import summarize_card
from captioner.core.repository.storage import BUNDLED_MODEL_DIR
from captioner.web.batch import caption_inputs, collect_inputs, rows_to_csv, rows_to_json, total_bytes
from captioner.web.batcher import SharedCaptioner, choose_model
from captioner.web.gallery import list_examples
from captioner.web.guards import InFlight, InputRefused, QueueShares, RequestSizeLimit, prune_folder, upload_source
from captioner.web.provenance import hardware_summary, weights_origin
from captioner.web.zerogpu import gpu_wrapper, is_zero_gpu, wrap_captioner



def _examples_dir() -> Path:
    """The example photos: inside the installed package (a wheel ships them as ``captioner/examples``),
    else ``examples/`` of the checkout this package runs from."""
    package = Path(__file__).resolve().parents[1]
    installed = package / "examples"
    return installed if installed.is_dir() else package.parent / "examples"


EXAMPLES_DIR = _examples_dir()
MAX_BATCH_SIZE = 8  # images per shared forward pass (API / caption tab) and per batch-tab pass
CAPTION_CONCURRENCY = 8  # caption calls in flight at once; their model work shares forward passes
QUEUE_SIZE = 64  # waiting requests beyond this are turned away ("queue is full")
CAPTIONS_PER_CLIENT = 16  # one client's caption calls waiting or running at once (a quarter of the queue)
EXPLAINS_PER_CLIENT = 4  # one client's heatmap requests waiting or running at once
BATCHES_PER_CLIENT = 2  # one client's batch jobs waiting or running at once
BATCHES_QUEUED = 8  # batch jobs of all clients together, so batches never fill the shared queue
MAX_UPLOAD = "100mb"  # per file; zips of many photos need room, single images are capped lower by the loader
MAX_BATCH_UPLOAD_BYTES = 500 * 1024 * 1024  # all files of one batch together
DOWNLOAD_MAX_AGE_S = 3600  # batch downloads and heatmap overlays are removed after this
DOWNLOAD_MAX_BYTES = 256 * 1024 * 1024  # and the oldest go first when they hold more than this
DEFAULT_BEAM = 3
# Longest side of the word heatmaps the app computes and of the overlays it and the explain endpoint
# return: the maps are made at the overlays' size, never at the photo's.
OVERLAY_SIDE = 1024
BEAM, GREEDY = "Beam search", "Greedy"

CSS = """
#caption-text .caption { font-size: clamp(1.6rem, 3.2vw, 2.5rem); font-weight: 700; line-height: 1.2;
  margin: 0.2em 0 0.1em; }
#caption-text .placeholder { font-size: 1.25rem; opacity: 0.6; margin: 0.4em 0; }
#model-notice { border-left: 4px solid #f59e0b; background: rgba(245, 158, 11, 0.12);
  padding: 0.6rem 1rem; border-radius: 6px; }
"""
# Gradio serves the theme's fonts itself, so the page needs nothing from the internet.
THEME = gr.themes.Soft(primary_hue="orange", secondary_hue="sky")


def image_source(payload: Any) -> str | bytes:
    """The image a caption request carries: a file Gradio stored in its upload folder for this
    request, or the bytes of a ``data:`` URL. Caption and batch events run with ``preprocess=False``
    so that the captioner's loader reports a bad file and ``DecodeOptions`` a bad setting, each with
    its own message; this check stands in for Gradio's upload-folder check, which raw payloads (a
    file dict without ``meta``) would otherwise skip."""
    try:
        return upload_source(payload, get_upload_folder())
    except InputRefused as error:
        raise _user_error(error, "Unusable image") from None


def batch_sources(payload: Any) -> list[str]:
    """The files of a batch request (raw Gradio file payloads), each checked like ``image_source``;
    batches take uploaded files only."""
    payloads = [] if payload is None else payload if isinstance(payload, list) else [payload]
    paths = []
    for item in payloads:
        source = image_source(item)
        if not isinstance(source, str):
            raise gr.Error("Batches take uploaded files only.", title="Batch refused", print_exception=False)
        paths.append(source)
    return paths


def ui_options(search: Any, beam_size: Any, candidates: Any, max_length: Any, default_length: int) -> DecodeOptions:
    """The Caption and Batch tabs' settings, checked (``ValueError`` names the setting). The
    candidates slider may exceed the beam size: the beam size wins, as the slider says."""
    if search not in (BEAM, GREEDY):
        raise ValueError(f"search must be {BEAM!r} or {GREEDY!r}, got {search!r}")
    if search == GREEDY:
        return DecodeOptions(beam_size=1, max_length=max_length).resolved(default_length)
    beam = whole_number("beam_size", beam_size, 2, MAX_BEAM_SIZE, "beam search")
    shown = whole_number("num_candidates", candidates, 1, MAX_BEAM_SIZE)
    return DecodeOptions(beam_size=beam, num_candidates=min(shown, beam), max_length=max_length).resolved(default_length)


def api_options(beam_size: Any, num_candidates: Any, max_length: Any, default_length: int) -> DecodeOptions:
    """The ``caption`` endpoint's settings, checked as sent (``ValueError`` names the setting)."""
    return DecodeOptions(beam_size=DEFAULT_BEAM if beam_size is None else beam_size, num_candidates=num_candidates,
                         max_length=max_length).resolved(default_length)


def _user_error(error: Exception, title: str) -> gr.Error:
    return gr.Error(html.escape(str(error), quote=False), title=title, print_exception=False)


def launch_options() -> dict[str, Any]:
    """Arguments for ``demo.launch`` (Gradio 6 takes theme and CSS here, not in ``gr.Blocks``); the
    request size limits (see ``RequestSizeLimit``) wrap the server."""
    limits = Middleware(RequestSizeLimit, upload_dir=get_upload_folder())
    return {"theme": THEME, "css": CSS, "max_file_size": MAX_UPLOAD, "share": False,
            "app_kwargs": {"middleware": [limits]}}


def validation(inputs: int, problem: str | None) -> list[dict]:
    """A Gradio validator's answer for an event with ``inputs`` inputs: refused with ``problem`` (the
    message is put on its first input), or let in when it is None."""
    return [gr.validate(problem is None if i == 0 else True, problem or "" if i == 0 else "") for i in range(inputs)]


def max_batch_size(value: int | str | None = None) -> int:
    """``value``, else ``$CAPTIONER_MAX_BATCH``, else ``MAX_BATCH_SIZE``, checked (1 turns batching off)."""
    raw = value if value not in (None, "") else os.environ.get("CAPTIONER_MAX_BATCH") or MAX_BATCH_SIZE
    try:
        size = int(raw)
    except ValueError:
        size = 0
    if size < 1:
        raise ValueError(f"The maximum batch size must be a whole number of at least 1, got {raw!r}.")
    return size


def build_demo(source: str | os.PathLike | None = None, *, bundled: str | os.PathLike | None = BUNDLED_MODEL_DIR,
               examples_dir: str | os.PathLike = EXAMPLES_DIR, batch_size: int | None = None,
               backend: str | None = None, precision: str | None = None) -> gr.Blocks:
    """The app for ``source`` (None: ``$CAPTIONER_MODEL``, else the ``bundled`` model). When that
    model cannot be loaded, the bundled one is shown instead; when none can, the app still starts
    and says why. ``batch_size``: images per forward pass (None: see ``max_batch_size``). ``backend``:
    auto, torch or onnx (None: ``$CAPTIONER_BACKEND``, else auto); ``precision``: auto, fp32 or int8, the onnx
    backend's encoder (None: ``$CAPTIONER_PRECISION``, else auto)."""
    batch_size = max_batch_size(batch_size)
    if backend is None and not os.environ.get("CAPTIONER_BACKEND") and is_zero_gpu():
        backend = "torch"  # ZeroGPU: forward passes go to the GPU inside spaces.GPU, not to ONNX Runtime on CPU
    choice = choose_model(source, bundled=bundled, backend=backend, precision=precision)
    captioner = choice.captioner
    # On ZeroGPU every forward pass runs inside spaces.GPU (CUDA exists only there); elsewhere as is.
    on_gpu = gpu_wrapper()
    shared = SharedCaptioner(captioner, max_batch_size=batch_size, run_forward=on_gpu) if captioner else None
    explain_on_device = on_gpu(captioner.explain) if captioner else None  # word heatmaps, likewise
    config = captioner.config if captioner else None
    default_length = config.max_length if config else 20
    shows_classes = bool(config and config.emits_classes)
    examples = list_examples(examples_dir)
    downloads = tempfile.TemporaryDirectory(prefix="captioner-app-")  # removed when the demo is collected
    in_flight = InFlight()  # memory is handed back when the last request in flight ends

    def scratch_folder() -> str:
        """A new folder for a request's files (downloads, overlays); old ones are pruned first."""
        prune_folder(downloads.name, max_age_s=DOWNLOAD_MAX_AGE_S, max_bytes=DOWNLOAD_MAX_BYTES)
        return tempfile.mkdtemp(dir=downloads.name)

    if shared is not None and examples and not is_zero_gpu():  # so that clicking an example answers at once
        # (not on ZeroGPU: there each pass asks for a GPU, which is for visitors' requests)
        problems = shared.warm(examples, ui_options(BEAM, DEFAULT_BEAM, DEFAULT_BEAM, default_length, default_length))
        for path, problem in zip(examples, problems):
            if problem:
                print(f"Example {path.name} left out of the gallery: {problem}", file=sys.stderr)
        examples = [path for path, problem in zip(examples, problems) if not problem]

    def require_model() -> SharedCaptioner:
        if shared is None:
            raise gr.Error(html.escape(choice.notice or "No model is loaded."), title="No model",
                           print_exception=False)
        return shared

    def caption_photo(upload, search, beam_size, candidates, max_length, request: gr.Request):
        shares.started(request)
        if not upload:
            return _placeholder("Drop a photo here, paste one, or pick an example below."), [], [], None, ""
        model = require_model()
        try:
            options = ui_options(search, beam_size, candidates, max_length, default_length)
        except ValueError as error:
            raise _user_error(error, "Bad decoding settings") from None
        source = image_source(upload)
        try:
            with in_flight:
                result = model.caption(source, options)
        except ImageError as error:
            raise _user_error(error, "Unusable image") from None
        except ValueError as error:
            raise _user_error(error, "Bad decoding settings") from None
        caption = _title_case(result.caption) if result.caption else "(the model wrote an empty caption)"
        words: list[tuple[str, str | None]] = []
        colours = {}
        for index, (word, probability) in enumerate(result.words):
            label = f"{probability:.0%}"
            colours[label] = "#16a34a" if probability >= 0.5 else "#f59e0b" if probability >= 0.2 else "#ef4444"
            words += [(" ", None)] if index else []
            words.append((word, label))
        table = [[rank, _title_case(c.caption), f"{c.confidence:.1%}", round(c.score, 4)]
                 for rank, c in enumerate(result.candidates, 1)]
        classes = {label: p for label, p in result.top_classes} if result.top_classes else None
        return (f'<h2 class="caption">{html.escape(caption)}</h2>',
                gr.HighlightedText(value=words, color_map=colours), table, classes, result.caption)

    def word_choices(caption: str):
        """The word picker for a new caption (nothing picked, no map shown)."""
        words = caption.split()
        return (gr.Radio(choices=[(word, index) for index, word in enumerate(words)], value=None,
                         visible=bool(words)), gr.Image(value=None, visible=False), "", None)

    def explain_word(upload, index, caption, explained, request: gr.Request):
        """The picked word's heatmap over the photo. The first pick of a caption explains all its words
        at once (one backward pass); later picks reuse those overlays."""
        shares.started(request)
        if index is None or not upload or not caption:
            return gr.Image(value=None, visible=False), "", explained
        key = [upload.get("path") or upload.get("url"), caption]
        if not explained or explained["key"] != key:
            require_model()
            source = image_source(upload)
            try:
                with in_flight:
                    explanation = explain_on_device(source, caption, heatmap_side=OVERLAY_SIDE)
            except (ImageError, ValueError) as error:
                raise _user_error(error, "Cannot explain this caption") from None
            paths = write_overlays(explanation, scratch_folder(), "word", max_side=OVERLAY_SIDE)
            explained = {"key": key, "paths": [str(path) for path in paths],
                         "words": [(word.word, word.probability) for word in explanation.words]}
        try:
            index = whole_number("word", index, 0, len(explained["words"]) - 1)
        except ValueError as error:
            raise _user_error(error, "Cannot explain this caption") from None
        word, probability = explained["words"][index]
        note = (f"**{html.escape(word)}**: probability {probability:.1%} given the photo and the words before it. "
                "Warm colours mark the parts of the photo that raised it most (Grad-CAM).")
        return gr.Image(value=explained["paths"][index], visible=True), note, explained

    def explain_api(image, caption, beam_size, max_length, request: gr.Request):
        """Per-word heatmaps of a caption (empty: the model's own). Returns {caption, words: [{word,
        probability}], model} and one PNG overlay per word (the word as its caption), at most
        OVERLAY_SIDE pixels on the longer side."""
        shares.started(request)
        model = require_model()
        try:
            options = api_options(beam_size, None, max_length, default_length)
            if caption is not None and not isinstance(caption, str):
                raise ValueError(f"caption must be text, got {caption!r}")
        except ValueError as error:
            raise _user_error(error, "Bad request") from None
        source = image_source(image)
        try:
            with in_flight:
                explanation = explain_on_device(source, caption or None, beam_size=options.beam_size,
                                                max_length=options.max_length, heatmap_side=OVERLAY_SIDE)
        except (ImageError, ValueError) as error:
            raise _user_error(error, "Bad request") from None
        paths = write_overlays(explanation, scratch_folder(), "word", max_side=OVERLAY_SIDE)
        data = {**explanation.to_dict(), "model": model.captioner.loaded.source}
        return data, [(str(path), word.word) for path, word in zip(paths, explanation.words)]

    def caption_api(image, beam_size=None, num_candidates=None, max_length=None, request: gr.Request = None) -> dict:
        """Caption one image. Returns {caption, candidates: [{caption, score, confidence, words}],
        words: [{word, probability}], top_classes: [{label, probability}] | null, model}.
        beam_size 1 is greedy decoding; num_candidates is how many captions to return, at most
        beam_size (default: beam_size); score is the mean log-probability per word. Bad settings are
        refused with a message naming them."""
        shares.started(request)
        model = require_model()
        try:
            options = api_options(beam_size, num_candidates, max_length, default_length)
        except ValueError as error:
            raise _user_error(error, "Bad request") from None
        source = image_source(image)
        try:
            with in_flight:
                result = model.caption(source, options)
        except (ImageError, ValueError) as error:
            raise _user_error(error, "Bad request") from None
        return result.to_dict()

    def caption_batch(files, search, beam_size, max_length, request: gr.Request, progress=gr.Progress()):
        shares.started(request)
        model = wrap_captioner(require_model().captioner, on_gpu)
        try:
            options = ui_options(search, beam_size, 1, max_length, default_length)
        except ValueError as error:
            raise _user_error(error, "Bad decoding settings") from None
        paths = batch_sources(files)
        if not paths:
            raise gr.Error("Add some images or a .zip archive first.", title="Nothing to caption",
                           print_exception=False)
        try:
            size = total_bytes(paths)
            if size > MAX_BATCH_UPLOAD_BYTES:
                raise ImageError(f"the files add up to {size / 2**20:.0f} MB (limit "
                                 f"{MAX_BATCH_UPLOAD_BYTES / 2**20:.0f} MB per batch); split them into smaller batches")
            inputs = collect_inputs(paths)
        except ImageError as error:
            raise _user_error(error, "Batch refused") from None
        try:
            with in_flight:
                rows = caption_inputs(model, inputs, options, batch_size=batch_size,
                                      progress=lambda done, total: progress((done, total), desc="Captioning",
                                                                            unit="images"))
        except ValueError as error:
            raise _user_error(error, "Bad decoding settings") from None
        folder = Path(scratch_folder())
        csv_path, json_path = folder / "alt-text.csv", folder / "alt-text.json"
        csv_path.write_text(rows_to_csv(rows), encoding="utf-8")
        json_path.write_text(rows_to_json(rows), encoding="utf-8")
        table = [[row.image, row.caption, "" if row.confidence is None else f"{row.confidence:.1%}", row.error or ""]
                 for row in rows]
        failed = sum(1 for row in rows if row.error)
        summary = f"Captioned {len(rows) - failed} of {len(rows)} files" + (
            f"; {failed} could not be read (see the Error column)." if failed else ".")
        return (table, summary, gr.DownloadButton(value=str(csv_path), visible=True),
                gr.DownloadButton(value=str(json_path), visible=True))

    # Validators run when a request joins the queue: they refuse it before it takes a place there.
    def guard_photo(upload, search, beam_size, candidates, max_length, request: gr.Request):
        return validation(5, shares.admit("caption", request, CAPTIONS_PER_CLIENT))

    def guard_api(image, beam_size, num_candidates, max_length, request: gr.Request):
        return validation(4, shares.admit("caption", request, CAPTIONS_PER_CLIENT))

    def guard_explain_word(upload, index, caption, explained, request: gr.Request):
        return validation(4, shares.admit("explain", request, EXPLAINS_PER_CLIENT))

    def guard_explain_api(image, caption, beam_size, max_length, request: gr.Request):
        return validation(4, shares.admit("explain", request, EXPLAINS_PER_CLIENT))

    def guard_batch(files, search, beam_size, max_length, request: gr.Request):
        return validation(4, shares.admit("batch", request, BATCHES_PER_CLIENT, BATCHES_QUEUED))

    with gr.Blocks(title="Show and Tell: image captioner", analytics_enabled=False,
                   delete_cache=(900, 3600)) as demo:  # uploads live an hour
        shares = QueueShares(demo)
        demo.downloads = downloads  # keep the folder alive as long as the app
        gr.Markdown("# Show and Tell: image captioner\n"
                    "A pretrained CNN looks at the photo; an LSTM writes a sentence about it, word by word. "
                    "Drop a photo, paste one, take one with the webcam, or click an example.")
        notice = (choice.notice or "") + (" The Model tab says how to choose a model." if captioner is None else "")
        gr.Markdown(html.escape(notice), elem_id="model-notice", visible=bool(choice.notice))
        with gr.Tabs():
            with gr.Tab("Caption", id="caption"):
                with gr.Row(equal_height=False):
                    with gr.Column(scale=5):
                        photo = gr.Image(type="filepath", sources=["upload", "clipboard", "webcam"], label="Photo",
                                         elem_id="photo", height=380)  # read through image_source
                        run = gr.Button("Caption", variant="primary")
                        with gr.Accordion("Decoding settings", open=False):
                            search = gr.Radio([BEAM, GREEDY], value=BEAM, label="Search",
                                              info="Greedy takes the likeliest word at each step; beam search "
                                                   "keeps several partial sentences and picks the best whole one.")
                            beam_size = gr.Slider(2, 10, value=DEFAULT_BEAM, step=1, label="Beam size")
                            candidates = gr.Slider(1, 10, value=DEFAULT_BEAM, step=1, label="Candidates to show",
                                                   info="At most the beam size.")
                            max_length = gr.Slider(2, max(50, default_length), value=default_length, step=1,
                                                   label="Maximum length (words)")
                    with gr.Column(scale=6):
                        caption_view = gr.Markdown(_placeholder("Drop a photo here, paste one, or pick an example "
                                                                "below."), elem_id="caption-text")
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
                                                       interactive=False, wrap=True, label="Beam candidates",
                                                       elem_id="candidates")
                        classes_view = gr.Label(num_top_classes=5, label="What the encoder sees (ImageNet classes)",
                                                visible=shows_classes, elem_id="top-classes")
                if examples:
                    gr.Examples([[str(path)] for path in examples], inputs=[photo], examples_per_page=24,
                                cache_examples=False,  # remembered by SharedCaptioner instead (see warm above)
                                label="Examples: click one to caption it", elem_id="examples")
                gr.Markdown("Confidence is the geometric mean of the words' probabilities (exp of the "
                            "score, the mean log-probability per word). Add your own photos to "
                            "`examples/` to see them here.")
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
                gr.Markdown(_model_panel(captioner, choice.notice), elem_id="model-panel")
                if captioner and captioner.loaded.card:
                    with gr.Accordion("Full model card", open=False):
                        gr.Markdown(summarize_card(captioner.loaded.card).body)

        with gr.Row(visible=False):  # the inputs and output of the API-only `caption` endpoint
            api_image = gr.Image(type="filepath", label="image")
            api_beam = gr.Number(DEFAULT_BEAM, precision=0, label="beam_size")
            api_candidates = gr.Number(None, precision=0, label="num_candidates")  # None: as many as beam_size
            api_length = gr.Number(default_length, precision=0, label="max_length")
            api_result = gr.JSON(label="result")
            api_trigger = gr.Button()
            api_caption = gr.Textbox("", label="caption")
            api_explanation = gr.JSON(label="explanation")
            api_overlays = gr.Gallery(label="overlays", type="filepath")
            api_explain = gr.Button()

        controls = [search, beam_size, candidates, max_length]
        gr.on([photo.change, run.click, search.change, beam_size.release, candidates.release, max_length.release],
              caption_photo, [photo, *controls],
              [caption_view, words_view, candidates_view, classes_view, shown_caption],
              preprocess=False, api_visibility="private", concurrency_limit=CAPTION_CONCURRENCY,
              concurrency_id="caption", validator=guard_photo).success(word_choices, shown_caption,
                                                [explain_words, explain_view, explain_note, explained],
                                                api_visibility="private")
        explain_words.input(explain_word, [photo, explain_words, shown_caption, explained],
                            [explain_view, explain_note, explained], preprocess=False, api_visibility="private",
                            concurrency_limit=2, concurrency_id="explain", validator=guard_explain_word)
        api_explain.click(explain_api, [api_image, api_caption, api_beam, api_length],
                          [api_explanation, api_overlays], api_name="explain", preprocess=False,
                          concurrency_limit=2, concurrency_id="explain", validator=guard_explain_api)
        # Not batch=True: Gradio fails a whole batch when one request fails. Each call decodes its
        # own image (so a bad one fails alone) and SharedCaptioner merges the model work instead.
        api_trigger.click(caption_api, [api_image, api_beam, api_candidates, api_length], api_result,
                          api_name="caption", preprocess=False, concurrency_limit=CAPTION_CONCURRENCY,
                          concurrency_id="caption", validator=guard_api)
        run_batch.click(caption_batch, [files, search, beam_size, max_length],
                        [batch_table, batch_summary, csv_button, json_button], api_visibility="private",
                        preprocess=False, concurrency_limit=1, concurrency_id="batch", validator=guard_batch)
    demo.queue(max_size=QUEUE_SIZE, default_concurrency_limit=2)
    demo.shared_captioner = shared  # for tests and monitoring
    return demo


def _placeholder(text: str) -> str:
    return f'<p class="placeholder">{html.escape(text)}</p>'


def _title_case(text: str) -> str:
    """The classic demo's title case, without ``str.title``'s ``It'S``."""
    return " ".join(word[:1].upper() + word[1:] for word in text.split())


def _model_panel(captioner, notice: str | None) -> str:
    choose = ("### Choosing another model\n"
              "Start the app with `python app.py --model DIR` (a local model folder) or "
              "`--model owner/name[@revision]` (a Hugging Face Hub repo), or set the environment variable "
              "`CAPTIONER_MODEL` to the same. Without either, the bundled model in `models/default/` is used.")
    if captioner is None:
        return f"### No model loaded\n{html.escape(notice or '')}\n\n{choose}"
    info = captioner.info
    encoder = {"features": "pooled features", "class_probs": "ImageNet class probabilities",
               "class_log_probs": "ImageNet class log-probabilities"}[info["encoder_output"]]
    lines = ["### Loaded model",
             f"- **Source:** `{info['source']}`",
             f"- **Weights:** {weights_origin(info['source'], info['path'])}",
             f"- **Hardware:** {hardware_summary(info['device'])}",
             f"- **Backbone:** {info['backbone']} (the encoder passes on {encoder})",
             f"- **Vocabulary:** {info['vocab_size']:,} tokens",
             f"- **Device:** {info['device']} ({info['backend']} backend"
             f"{', int8 encoder' if info.get('precision') == 'int8' else ''})"]
    card = summarize_card(captioner.loaded.card)
    about = ["", "### About this model (from its model card)"]
    if card.title:
        about.append(f"**{card.title}**\n")
    about.append(card.summary or "The model card has no summary.")
    if card.metadata.get("license"):
        about.append(f"\nLicence: `{card.metadata['license']}`")
    limits = ["", "### Known limits"]
    limits += [f"**{heading}**\n\n{text}\n" for heading, text in card.limits] or [
        "The model card does not describe this model's limits. Treat every caption as a guess: "
        "captioning models repeat the patterns and biases of their training data."]
    return "\n".join([*lines, *about, *limits, "", choose])


def __getattr__(name: str) -> Any:
    """``app.demo``, built on first use, so that importing ``app`` loads no model
    (``gradio app.py`` and Hugging Face Spaces look for ``demo``)."""
    if name == "demo":
        globals()["demo"] = build_demo()
        return globals()["demo"]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the captioner web demo.")
    parser.add_argument("--model", help="model directory or Hub id owner/name[@revision] "
                                        "(default: $CAPTIONER_MODEL, else the bundled model)")
    parser.add_argument("--max-batch-size", type=int, metavar="N",
                        help="concurrent requests' images per shared forward pass; 1 turns batching off "
                             f"(default: $CAPTIONER_MAX_BATCH, else {MAX_BATCH_SIZE})")
    parser.add_argument("--backend", choices=BACKENDS, default=None, help=BACKEND_HELP)
    parser.add_argument("--precision", choices=PRECISIONS, default=None, help=PRECISION_HELP)
    args = parser.parse_args(argv)
    try:
        batch_size = max_batch_size(args.max_batch_size)
        # e.g. onnx without onnxruntime, or int8 with the torch backend: say so and stop
        resolve_backend(args.backend, select_device(), args.precision)
    except (ValueError, CaptionerError) as error:
        parser.error(str(error))
    build_demo(args.model, batch_size=batch_size, backend=args.backend, precision=args.precision).launch(
        **launch_options())


if __name__ == "__main__":
    main()
