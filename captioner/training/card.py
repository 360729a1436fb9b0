"""The trained model's card (``README.md`` with Hub metadata) and ``training.png``, written atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from captioner.core.files import write_atomic
from captioner.core.model.config import ModelConfig
from captioner.core.model.vocabulary import Vocabulary
from captioner.core.repository.modelcard import build_card
from captioner.training.config import UNKNOWN_LICENSE, CardInfo
from captioner.training.plot import PLOT_FILE, plot_history
from captioner.training.results import TrainingResult

SCORER = "captioner.training.evaluation.score_captions"  # named in the card: it computed the scores shown


def with_article(word: str) -> str:
    """``"an efficientnet-lite0"``, ``"a resnet152"``: the English article for how the word starts."""
    return f"{'an' if word[:1].lower() in 'aeiou' else 'a'} {word}"


def model_card(config: ModelConfig, vocab: Vocabulary, result: TrainingResult, info: CardInfo,
               settings: dict[str, Any] | None = None, plot: str | None = None) -> str:
    """README.md with Hub metadata: the data, where training started, the settings, the scores."""
    best, base = result.best, result.baselines
    epochs = result.history[-1].epoch if result.history else 0
    metric = result.metric
    start = (f"Fine-tuned from {base.start}: its encoder, encoder output and vocabulary are kept"
             if base.start else "Trained from scratch: only the encoder's backbone starts from ImageNet weights")
    lines = [
        f"# Show-and-Tell captioner ({config.backbone} + LSTM)", "",
        f"{with_article(config.backbone).capitalize()} encoder ({config.encoder_output.replace('_', ' ')}) and an "
        f"LSTM decoder ({config.hidden_size} units, {config.num_layers} layer(s), embeddings of "
        f"{config.embed_size}), vocabulary of {len(vocab)} tokens, trained with `python -m captioner train`.", "",
        "## Training data", "", info.data, "",
        "## Training", "", f"{start}.", "",
        f"- epochs: {epochs}; best epoch: {result.best_epoch}"
        + (" (none beat the starting model, which was kept)" if result.kept_start else "")
        + f" (chosen by {metric or 'validation loss'} on the validation set"
        f"{', among epochs whose captions end properly' if metric else ''})"
        + ("; stopped early: no better score for the patience allowed" if result.stopped_early else ""),
        f"- validation loss before training: {result.initial_val_loss:.4f}",
    ]
    lines += [f"- {name.replace('_', ' ')}: {value}" for name, value in (settings or {}).items()]
    lines += [f"- {line}" for text in result.plan for line in text.splitlines()]
    if plot:
        lines += ["", f"![Training history: losses and validation {metric or 'loss'} per epoch, the kept "
                      f"epoch marked]({plot})"]
    lines += _comparison(result)
    if best is not None:
        lines += ["", "## Validation scores (best epoch, greedy decoding)", "", f"Validation loss {best.val_loss:.4f}."]
        if best.scores:
            lines += [f"Computed by `{SCORER}` with the Python tokeniser (so no METEOR); run "
                      "`python -m captioner evaluate` for the full set and for beam search.", "",
                      "| metric | value |", "|---|---|"]
            lines += [f"| {name} | {value:.4f} |" for name, value in best.scores.items() if value is not None]
    lines += _history(result)
    lines += ["", "## Limits", "", info.limits, ""]
    if info.license == UNKNOWN_LICENSE:
        lines += ["## Licence", "", "Not stated. The terms of the training images and captions decide what may be "
                  "done with weights learnt from them; name the licence with `train --license`.", ""]
    return build_card("\n".join(lines), license=info.license, datasets=list(info.datasets) or None,
                      base_model=base.start_hub_id, tags=["image-captioning", "show-and-tell"])


def _comparison(result: TrainingResult) -> list[str]:
    """The kept model beside the starting model (zero-shot) and the best constant caption."""
    base, metric = result.baselines, result.metric
    if not metric or (base.start_score is None and base.constant_score is None):
        return []
    best = result.best
    rows = []
    if base.constant_score is not None:
        rows.append(f"| the best constant caption ({base.constant_caption!r}) | {base.constant_score:.4f} |")
    if base.start_score is not None:
        rows.append(f"| the starting model, not trained (zero-shot) | {base.start_score:.4f} |")
    if best is not None and best.scores.get(metric) is not None:
        rows.append(f"| best epoch ({best.epoch}) | {best.scores[metric]:.4f} |")
    kept = "the starting model (no epoch beat it)" if result.kept_start else f"epoch {result.best_epoch}"
    return ["", f"## Compared on the validation images ({metric}, greedy decoding)", "",
            f"| model | {metric} |", "|---|---|", *rows, "", f"Kept: {kept}."]


def _history(result: TrainingResult) -> list[str]:
    if not result.history:
        return []
    metric = result.metric
    lines = ["", "## History", "", f"| epoch | train loss | val loss |{f' {metric} |' if metric else ''} seconds |",
             f"|---|---|---|{'---|' if metric else ''}---|"]
    for e in result.history:
        value = e.scores.get(metric) if metric else None
        shown = f" {value:.4f} |" if value is not None else (" n/a |" if metric else "")
        lines.append(f"| {e.epoch}{' (best)' if e.best else ''} | {e.train_loss:.4f} | {e.val_loss:.4f} |"
                     f"{shown} {e.seconds:.1f} |")
    return lines


def write_final_card(out_dir: Path, config: ModelConfig, vocab: Vocabulary, result: TrainingResult,
                     info: CardInfo, settings: dict[str, Any] | None) -> None:
    """``training.png`` and the card that shows it, once the run is over."""
    plot_history(result, out_dir / PLOT_FILE)
    card = model_card(config, vocab, result, info, settings, plot=PLOT_FILE)
    write_atomic(out_dir / "README.md", card.encode("utf-8"))
