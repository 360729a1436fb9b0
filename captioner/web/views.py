"""What the page shows for a result, in Markdown and component values: the caption, the words
coloured by probability, the candidates table, the Model tab."""

from __future__ import annotations

import html

from captioner.core.inference import Captioner
from captioner.core.repository.modelcard import summarize_card
from captioner.core.results import CaptionResult
from captioner.web.honesty import confidence_text
from captioner.web.provenance import hardware_summary, weights_origin

ASK_FOR_A_PHOTO = "Drop a photo here, paste one, or pick an example below."
EMPTY_CAPTION = "(the model wrote an empty caption)"


def placeholder(text: str) -> str:
    return f'<p class="placeholder">{html.escape(text)}</p>'


def problem(text: str) -> str:
    """A message in place of the caption (an upload that is not a usable image)."""
    return f'<p class="problem" role="alert">{html.escape(text)}</p>'


def shown_caption(text: str, cut: bool = False) -> str:
    """A caption as the page shows it: in sentence case, with "…" when it was cut at the maximum length."""
    return text[:1].upper() + text[1:] + (" …" if cut else "")


def caption_heading(result: CaptionResult) -> str:
    """The caption, large; a caption cut at the maximum length says so under it."""
    if not result.caption:
        return f'<h2 class="caption">{html.escape(EMPTY_CAPTION)}</h2>'
    best = result.candidates[0]
    heading = f'<h2 class="caption">{html.escape(shown_caption(best.caption, best.cut))}</h2>'
    if best.cut:
        heading += (f'<p class="cut-note">Cut at {len(best.words)} words, the maximum length: the model would have '
                    "gone on. Raise Maximum length in the decoding settings for the whole sentence.</p>")
    return heading


def word_colours(result: CaptionResult) -> tuple[list[tuple[str, str | None]], dict[str, str]]:
    """The caption's words, each labelled with its probability, and a colour per label."""
    words: list[tuple[str, str | None]] = []
    colours = {}
    for index, (word, probability) in enumerate(result.words):
        label = f"{probability:.0%}"
        colours[label] = "#16a34a" if probability >= 0.5 else "#f59e0b" if probability >= 0.2 else "#ef4444"
        words += [(" ", None)] if index else []
        words.append((word, label))
    return words, colours


def candidate_rows(result: CaptionResult) -> list[list]:
    return [[rank, shown_caption(c.caption, c.cut), confidence_text(c.confidence), round(c.score, 2)]
            for rank, c in enumerate(result.candidates, 1)]


def top_classes(result: CaptionResult) -> dict[str, float] | None:
    return {label: p for label, p in result.top_classes} if result.top_classes else None


def explain_note(word: str, probability: float) -> str:
    return (f"**{html.escape(word)}**: probability {probability:.1%} given the photo and the words before it. "
            "Warm colours mark the parts of the photo that raised it most (Grad-CAM).")


CHOOSING_A_MODEL = (
    "### Choosing another model\n"
    "Start the app with `python app.py --model DIR` (a local model folder) or "
    "`--model owner/name[@revision]` (a Hugging Face Hub repo), or set the environment variable "
    "`CAPTIONER_MODEL` to the same. Without either, the bundled model in `models/default/` is used.")

_ENCODER_OUTPUTS = {"features": "pooled features", "class_probs": "ImageNet class probabilities",
                    "class_log_probs": "ImageNet class log-probabilities"}


def model_panel(captioner: Captioner | None, notice: str | None) -> str:
    """The Model tab: where the weights came from, what runs them, and the model card's summary and limits."""
    if captioner is None:
        return f"### No model loaded\n{html.escape(notice or '')}\n\n{CHOOSING_A_MODEL}"
    info = captioner.info
    lines = ["### Loaded model",
             f"- **Source:** `{info['source']}`",
             f"- **Weights:** {weights_origin(info['source'], info['path'])}",
             f"- **Hardware:** {hardware_summary(info['device'])}",
             f"- **Backbone:** {info['backbone']} (the encoder passes on {_ENCODER_OUTPUTS[info['encoder_output']]})",
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
        ("The model card does not describe this model's limits. Treat every caption as a guess: "
         "captioning models repeat the patterns and biases of their training data.")]
    return "\n".join([*lines, *about, *limits, "", CHOOSING_A_MODEL])
