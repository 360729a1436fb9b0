"""What the app's events run. Each handler takes the app's shared state (``AppState``) first, then
the event's inputs; ``bind`` gives it to Gradio with the state filled in and ``admission`` makes the
validator that keeps each client to its share of the queue.

Caption, explain and batch events run with ``preprocess=False``: a handler reads its image through
``image_source``, which accepts only files in Gradio's upload folder and ``data:`` URLs, so that the
captioner's loader reports a bad file and ``DecodeOptions`` a bad setting, each with its own message.
Every failure reaches the visitor as a ``gr.Error`` with a message (``user_error``), never as a
traceback or an empty error; the log gets one line without request data for anything unexpected.
"""

from __future__ import annotations

import hashlib
import html
import inspect
import math
import numbers
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
from gradio.utils import get_upload_folder

from captioner.core.errors import CaptionerError, ImageError
from captioner.core.explain.overlays import overlay_png
from captioner.core.options import MAX_BEAM_SIZE, DecodeOptions, whole_number
from captioner.web.batch import caption_inputs, collect_inputs, rows_to_csv, rows_to_json, total_bytes
from captioner.web.batcher import SharedCaptioner
from captioner.web.guards import InputRefused, upload_source
from captioner.web.honesty import caption_details, confidence_text
from captioner.web.outputs import OutputsFull
from captioner.web.state import AppState
from captioner.web.views import (
    ASK_FOR_A_PHOTO,
    candidate_rows,
    caption_heading,
    explain_note,
    placeholder,
    problem,
    top_classes,
    word_colours,
)

BEAM, GREEDY = "Beam search", "Greedy"
SAY_LESS, KEEP_WORDS = "Say less (a general word)", "Keep the model's caption"
WHEN_UNSURE_CHOICES = {SAY_LESS: "generalise", KEEP_WORDS: "keep"}
DEFAULT_BEAM = 3
MAX_PAGE_BEAM = 10  # the page's beam size and candidates sliders go up to this (the API to MAX_BEAM_SIZE)
# Longest side of the word heatmaps the app computes and of the overlays it returns: the maps are made
# at the overlays' size, never at the photo's.
OVERLAY_SIDE = 1024
MAX_EXPLAINED_WORDS = 50  # words of one caption that explain draws (the page's longest caption)
MAX_CAPTION_CHARS = 1000  # a caption sent to explain, in characters
MAX_BATCH_UPLOAD_BYTES = 500 * 1024 * 1024  # all files of one batch together


@dataclass(frozen=True)
class Share:
    """How many requests of one kind a client may have waiting or running, and all clients together."""

    per_client: int
    total: int | None = None


# A client's share of captions and heatmaps is less than their workers (``app.CONCURRENCY``), so that
# one client never holds every worker and another client's request starts at once.
SHARES = {"caption": Share(16), "explain": Share(2),
          "batch": Share(2, total=8)}  # batches in all: they never fill the shared queue

UNEXPECTED = "Something went wrong on the server while answering this request; it has been logged."


# ---- from library errors to what a visitor sees -------------------------------------------------

def user_error(error: Exception, title: str | None = None) -> gr.Error:
    """``error``'s message as a visitor sees it (HTML-escaped), under ``title`` (default: what kind of
    problem it is), with no traceback in the log."""
    if title is None:
        title = ("Image refused" if isinstance(error, InputRefused) else "Unusable image"
                 if isinstance(error, ImageError) else "Server busy" if isinstance(error, OutputsFull)
                 else "Bad request")
    return gr.Error(html.escape(str(error), quote=False), title=title, print_exception=False)


USER_ERRORS = (CaptionerError, ValueError, OutputsFull)  # InputRefused and ImageError are ValueErrors


def bind(handler: Callable, app: AppState) -> Callable:
    """``handler`` with ``app`` filled in, as the function an event runs. Its signature is the
    handler's without ``app``: Gradio reads it for the API's parameter names and for where to put
    ``gr.Request`` and ``gr.Progress``. The request is counted as started (``QueueShares``), runs
    as one of the requests in flight (memory is handed back after the last), and every error it
    raises reaches the visitor with a message."""
    signature = inspect.signature(handler)
    parameters = list(signature.parameters.values())[1:]
    names = [parameter.name for parameter in parameters]
    request_at = names.index("request") if "request" in names else None

    def event(*args: Any) -> Any:
        if request_at is not None and request_at < len(args) and args[request_at] is not None:
            app.shares.started(args[request_at])
        try:
            with app.in_flight:
                return handler(app, *args)
        except gr.Error:
            raise
        except USER_ERRORS as error:
            raise user_error(error) from None
        except Exception as error:
            where = traceback.extract_tb(error.__traceback__)[-1]
            print(f"{handler.__name__} failed: {type(error).__name__} at {Path(where.filename).name}:{where.lineno}",
                  file=sys.stderr)
            raise gr.Error(UNEXPECTED, title="Server error", print_exception=False) from None

    return _signed(event, handler, parameters)


def admission(handler: Callable, app: AppState, kind: str) -> Callable:
    """The validator of an event that runs ``handler``: it runs when a request asks to join the queue
    and refuses it (the message shows on the first input) when its client already has its share of
    ``kind`` requests (``SHARES``) waiting or running."""
    share = SHARES[kind]
    parameters = list(inspect.signature(handler).parameters.values())[1:]
    names = [parameter.name for parameter in parameters]
    inputs = len([p for p in parameters if p.name != "request" and not isinstance(p.default, gr.Progress)])

    def validate(*args: Any) -> list[dict]:
        problem = app.shares.admit(kind, args[names.index("request")], share.per_client, share.total)
        return [gr.validate(problem is None, problem or "")] + [gr.validate(True, "")] * (inputs - 1)

    return _signed(validate, handler, parameters)


def _signed(function: Callable, handler: Callable, parameters: list[inspect.Parameter]) -> Callable:
    function.__name__ = function.__qualname__ = handler.__name__
    function.__doc__ = handler.__doc__
    function.__signature__ = inspect.signature(handler).replace(parameters=parameters)
    function.__annotations__ = {name: hint for name, hint in handler.__annotations__.items()
                                if name in {parameter.name for parameter in parameters}}
    return function


# ---- inputs ---------------------------------------------------------------------------------------

def image_source(payload: Any) -> str | bytes:
    """The image a request carries: a file Gradio stored in its upload folder for this request, or
    the bytes of a ``data:`` URL. Raises ``InputRefused`` for anything else."""
    return upload_source(payload, get_upload_folder())


def require_model(app: AppState) -> SharedCaptioner:
    if app.shared is None:
        raise gr.Error(html.escape(app.choice.notice or "No model is available."), title="No model",
                       print_exception=False)
    return app.shared


def ui_options(search: Any, beam_size: Any, candidates: Any, max_length: Any, default_length: int,
               when_unsure: Any = SAY_LESS) -> DecodeOptions:
    """The Caption and Batch tabs' settings, checked (``ValueError`` names the setting). The
    candidates slider may exceed the beam size: the beam size wins, as the slider says."""
    if search not in (BEAM, GREEDY):
        raise ValueError(f"search must be {BEAM!r} or {GREEDY!r}, got {search!r}")
    if when_unsure not in WHEN_UNSURE_CHOICES:
        raise ValueError(f"when unsure must be {SAY_LESS!r} or {KEEP_WORDS!r}, got {when_unsure!r}")
    unsure = WHEN_UNSURE_CHOICES[when_unsure]
    if search == GREEDY:
        return DecodeOptions(beam_size=1, max_length=max_length, when_unsure=unsure).resolved(default_length)
    beam = whole_number("beam_size", beam_size, 2, MAX_BEAM_SIZE, "beam search")
    shown = whole_number("num_candidates", candidates, 1, MAX_BEAM_SIZE)
    return DecodeOptions(beam_size=beam, num_candidates=min(shown, beam), max_length=max_length,
                         when_unsure=unsure).resolved(default_length)


def page_max_length(default_length: int) -> int:
    """The top of the Caption tab's Maximum length slider."""
    return max(MAX_EXPLAINED_WORDS, default_length)


def on_slider(name: str, value: Any, low: int, high: int) -> int:
    """A slider's value as the slider can hold it: a whole number (``ValueError`` names the setting
    otherwise) moved into ``[low, high]``, for a number typed into its box beyond its ends."""
    try:
        return whole_number(name, value, low, high)
    except ValueError:
        if isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value) \
                and float(value).is_integer():
            return min(max(int(value), low), high)
        raise


def api_options(beam_size: Any, num_candidates: Any, max_length: Any, default_length: int,
                when_unsure: Any = None) -> DecodeOptions:
    """The ``caption`` endpoint's settings, checked as sent (``ValueError`` names the setting)."""
    return DecodeOptions(beam_size=DEFAULT_BEAM if beam_size is None else beam_size, num_candidates=num_candidates,
                         max_length=max_length,
                         when_unsure=DecodeOptions.when_unsure if when_unsure in (None, "") else when_unsure
                         ).resolved(default_length)


def explainable(caption: Any, options: DecodeOptions) -> str | None:
    """``caption`` (None or empty: the model's own, decoded with ``options``) if explain may draw it:
    at most ``MAX_EXPLAINED_WORDS`` words. Raises ``ValueError`` before any work otherwise."""
    if caption is not None and not isinstance(caption, str):
        raise ValueError(f"caption must be text, got {caption!r}")
    if not caption:
        whole_number("max_length", options.max_length, 2, MAX_EXPLAINED_WORDS,
                      f"explain draws at most {MAX_EXPLAINED_WORDS} words")
        return None
    words = len(caption[:MAX_CAPTION_CHARS + 1].split())
    if len(caption) > MAX_CAPTION_CHARS or words > MAX_EXPLAINED_WORDS:
        raise ValueError(f"the caption is too long to explain: explain draws at most {MAX_EXPLAINED_WORDS} words "
                         f"and {MAX_CAPTION_CHARS} characters")
    return caption


# ---- the Caption tab ------------------------------------------------------------------------------

def caption_photo(app: AppState, upload: Any, search: Any, beam_size: Any, candidates: Any, max_length: Any,
                  when_unsure: Any, request: gr.Request) -> tuple:
    """The caption, its words, the candidates and the encoder's classes for the photo in the box, and the
    sliders' settings as used: a number typed into a slider's box beyond its ends is moved to the end,
    and the box shows what was used.

    A file that is not a usable image gets one message in the caption's place, every panel cleared
    and the photo box emptied (no broken picture); that emptying, like any change to an empty box,
    leaves the panels as they are (``clear_photo`` resets them when the visitor clears the box)."""
    settings = (on_slider("beam_size", beam_size, 2, MAX_PAGE_BEAM),
                on_slider("num_candidates", candidates, 1, MAX_PAGE_BEAM),
                on_slider("max_length", max_length, 2, page_max_length(app.default_length)))
    sliders = tuple(gr.Slider(value=value) for value in settings)
    if not upload:
        return (gr.skip(),) * 7 + sliders
    model = require_model(app)
    options = ui_options(search, *settings, app.default_length, when_unsure)
    source = image_source(upload)
    try:
        result = model.caption(source, options)
    except ImageError as error:
        cleared = problem(f"This file cannot be captioned: {error}."), [], [], None, "", gr.Button(visible=False)
        return (*cleared, None, *sliders)
    words, colours = word_colours(result)
    details = caption_details(result, model.captioner.config.emits_classes)
    return (f"{caption_heading(result)}\n{details}", gr.HighlightedText(value=words, color_map=colours), candidate_rows(result),
            top_classes(result), result.caption, gr.Button(visible=bool(result.caption)), gr.skip(), *sliders)


def clear_photo() -> tuple:
    """The panels as they are before any photo (the visitor cleared the photo box)."""
    return placeholder(ASK_FOR_A_PHOTO), [], [], None, "", gr.Button(visible=False)


def beam_controls(search: str) -> tuple:
    """The beam size and candidates sliders, usable in beam search only (greedy keeps one caption)."""
    return gr.Slider(interactive=search == BEAM), gr.Slider(interactive=search == BEAM)


def word_choices(caption: str) -> tuple:
    """The word picker for a new caption (nothing picked, no map shown)."""
    words = caption.split()
    return (gr.Radio(choices=[(word, index) for index, word in enumerate(words)], value=None, visible=bool(words)),
            gr.Image(value=None, visible=False), "", None)


def explain_word(app: AppState, upload: Any, index: Any, caption: str, explained: dict | None,
                 request: gr.Request) -> tuple:
    """The picked word's heatmap over the photo: only that word's overlay is drawn, once per caption;
    ``explained`` (the session's state) remembers the caption's words and the overlays drawn."""
    if index is None or not upload or not caption:
        return gr.Image(value=None, visible=False), "", explained
    source = image_source(upload)
    key = [source if isinstance(source, str) else hashlib.blake2b(source, digest_size=16).hexdigest(), caption]
    if not explained or explained.get("key") != key:
        explained = {"key": key, "words": None, "paths": {}}
    if explained["words"] is not None:
        index = whole_number("word", index, 0, len(explained["words"]) - 1)
    path = explained["paths"].get(index)
    if path is None or not Path(path).is_file():
        require_model(app)
        explanation = app.explain(source, explainable(caption, DecodeOptions()), heatmap_side=OVERLAY_SIDE)
        explained["words"] = [(word.word, word.probability) for word in explanation.words]
        index = whole_number("word", index, 0, len(explanation.words) - 1)
        drawn = overlay_png(explanation.image, explanation.words[index].heatmap, max_side=OVERLAY_SIDE)
        path = str(app.outputs.write(app.outputs.new_request(), f"word.{index + 1:02d}.png", drawn))
        explained["paths"][index] = path
    word, probability = explained["words"][index]
    return gr.Image(value=path, visible=True), explain_note(word, probability), explained


def show_example(app: AppState, index: Any) -> str:
    """The example photo at ``index`` of the gallery, for the photo box."""
    return str(app.examples[whole_number("example", index, 0, len(app.examples) - 1)])


# ---- the API ----------------------------------------------------------------------------------------

def caption_api(app: AppState, image: Any, beam_size: Any = None, num_candidates: Any = None, max_length: Any = None,
                when_unsure: Any = None, request: gr.Request = None) -> dict:
    """Caption one image. Returns {caption, confidence, calibrated, candidates: [{caption,
    confidence, calibrated, score, decoded, words, mentions, cut}], words: [{word, probability}],
    top_classes: [{label, probability}] | null, model}. confidence is a calibrated probability
    that the caption is right (null, with calibrated false, for a model without a fit).
    beam_size 1 is greedy decoding; num_candidates is how many captions to return, at most
    beam_size (default: beam_size); score is the decoder's mean log-probability per word;
    when_unsure is generalise (default: a general word when unsure) or keep. Bad settings are
    refused with a message naming them."""
    model = require_model(app)
    options = api_options(beam_size, num_candidates, max_length, app.default_length, when_unsure)
    return model.caption(image_source(image), options).to_dict()


def explain_api(app: AppState, image: Any, caption: Any, beam_size: Any, max_length: Any,
                request: gr.Request) -> tuple:
    """Per-word heatmaps of a caption (empty: the model's own). Returns {caption, words: [{word,
    probability}], model} and one PNG overlay per word (the word as its caption), at most
    OVERLAY_SIDE pixels on the longer side; a caption of at most MAX_EXPLAINED_WORDS words."""
    model = require_model(app)
    options = api_options(beam_size, None, max_length, app.default_length)
    caption = explainable(caption, options)
    explanation = app.explain(image_source(image), caption, beam_size=options.beam_size,
                              max_length=options.max_length, heatmap_side=OVERLAY_SIDE)
    folder = app.outputs.new_request()
    overlays = []
    for number, word in enumerate(explanation.words, 1):
        drawn = overlay_png(explanation.image, word.heatmap, max_side=OVERLAY_SIDE)
        overlays.append((str(app.outputs.write(folder, f"word.{number:02d}.png", drawn)), word.word))
    return {**explanation.to_dict(), "model": model.captioner.loaded.source}, overlays


# ---- the Batch tab ----------------------------------------------------------------------------------

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


def caption_batch(app: AppState, files: Any, search: Any, beam_size: Any, max_length: Any, when_unsure: Any,
                  request: gr.Request, progress: gr.Progress = gr.Progress()) -> tuple:
    """A table of captions for every image uploaded (zip archives give their members), and the
    same as CSV and JSON downloads."""
    model = require_model(app)
    options = ui_options(search, beam_size, 1, max_length, app.default_length, when_unsure)
    paths = batch_sources(files)
    if not paths:
        raise gr.Error("Add some images or a .zip archive first.", title="Nothing to caption", print_exception=False)
    size = total_bytes(paths)
    if size > MAX_BATCH_UPLOAD_BYTES:
        raise user_error(ImageError(f"the files add up to {size / 2**20:.0f} MB (limit {MAX_BATCH_UPLOAD_BYTES / 2**20:.0f} "
                                    "MB per batch); split them into smaller batches"), "Batch refused")
    try:
        inputs = collect_inputs(paths)
    except ImageError as error:
        raise user_error(error, "Batch refused") from None
    rows = caption_inputs(model.captioner, inputs, options, batch_size=app.batch_size,  # its passes on the device
                          progress=lambda done, total: progress((done, total), desc="Captioning", unit="images"))
    folder = app.outputs.new_request()
    csv_path = app.outputs.write(folder, "alt-text.csv", rows_to_csv(rows).encode("utf-8"))
    json_path = app.outputs.write(folder, "alt-text.json", rows_to_json(rows).encode("utf-8"))
    table = [[row.image, row.caption, "" if row.error else confidence_text(row.confidence), row.error or ""]
             for row in rows]
    failed = sum(1 for row in rows if row.error)
    summary = f"Captioned {len(rows) - failed} of {len(rows)} files" + (
        f"; {failed} could not be read (see the Error column)." if failed else ".")
    return (table, summary, gr.DownloadButton(value=str(csv_path), visible=True),
            gr.DownloadButton(value=str(json_path), visible=True))
