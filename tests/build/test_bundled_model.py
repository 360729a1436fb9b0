"""The bundled model: what `make demo` shows, held to the quality bar in its model card."""

import functools

import numpy as np
import pytest
import torch

from captioner.build.pipeline import (
    LAST_LR_SHARE,
    QUALITY_BAR,
    BuildSettings,
    agreement,
    build_default,
    default_photos,
    grammar_captions,
    learning_rate,
)
from captioner.core.inference import load_captioner
from captioner.core.model.imagenet_classes import imagenet_class_names
from captioner.core.repository.storage import BUNDLED_MODEL_DIR, load_model

pytestmark = pytest.mark.skipif(not (BUNDLED_MODEL_DIR / "config.json").is_file(), reason="no bundled model")
needs_wordnet = pytest.mark.skipif(
    not __import__("pathlib").Path("/usr/share/wordnet/data.noun").is_file(), reason="WordNet (wordnet-base) missing")
HELD_OUT_SEED = 12345  # the build used seeds 0-2


@pytest.fixture(scope="module")
def captioner():
    return load_captioner(None, "cpu")


@functools.cache
def held_out(n=2000):
    from captioner.build.synthetic import generate_pairs

    return generate_pairs(n, HELD_OUT_SEED)


def test_no_source_means_the_bundled_model(captioner, monkeypatch):
    monkeypatch.delenv("CAPTIONER_MODEL", raising=False)
    assert captioner.loaded.path == BUNDLED_MODEL_DIR
    assert captioner.config.backbone == "efficientnet-lite0" and captioner.config.emits_classes
    assert (BUNDLED_MODEL_DIR / "model.safetensors").stat().st_size < 25 * 2**20


@pytest.mark.parametrize("photo, greedy_words, beam_words", [
    ("coffee", {"espresso", "cup"}, {"espresso", "cup"}),
    ("chelsea-the-cat", {"cat"}, {"cat"}),
    ("rocket", {"missile"}, {"missile"}),
    ("camera", {"tripod"}, {"tripod"}),
])
def test_example_photos_get_the_expected_objects(captioner, example_photos, photo, greedy_words, beam_words):
    assert greedy_words & set(captioner(example_photos[photo], beam_size=1).caption.split())
    assert beam_words & set(captioner(example_photos[photo], beam_size=3).caption.split())


@pytest.fixture(scope="module")
def agreements(captioner):
    """Greedy and beam-3 agreement with the grammar on held-out pairs, and the captions."""
    log_probs, captions = held_out()
    features = torch.from_numpy(np.exp(log_probs))
    greedy, greedy_out = agreement(captioner.model, captioner.vocab, features, captions, 1)
    beam, beam_out = agreement(captioner.model, captioner.vocab, features, captions, 3)
    return greedy, beam, greedy_out, beam_out


@needs_wordnet
def test_agreement_with_the_grammar_reaches_the_bar(agreements):
    greedy, beam, _, _ = agreements
    assert min(greedy, beam) >= QUALITY_BAR


@needs_wordnet
def test_beam_search_does_not_collapse_to_shorter_captions(agreements):
    greedy, beam, greedy_out, beam_out = agreements
    assert beam >= greedy - 0.01
    assert sum(len(c.split()) for c in beam_out) >= 0.98 * sum(len(c.split()) for c in greedy_out)


def _grounded(captioner, path, beam):
    names = imagenet_class_names()
    result = captioner(path, beam_size=beam)
    top = [names.index(label) for label, _ in result.top_classes]
    assert len(result.caption.split()) == len(result.words) > 0
    return result.caption in grammar_captions(top), result


@needs_wordnet
def test_every_real_photo_names_only_what_the_classifier_sees(captioner):
    photos = default_photos()
    assert len(photos) >= 10  # the shipped examples and scikit-image's photos
    for name, path in photos.items():
        for beam in (1, 3):
            grounded, result = _grounded(captioner, path, beam)
            assert grounded, (name, result.caption, result.top_classes)


def test_learning_rate_decays_along_a_cosine():
    settings = BuildSettings(lr=1e-3, epochs=5)
    rates = [learning_rate(settings, epoch) for epoch in range(1, 6)]
    assert rates[0] == pytest.approx(1e-3) and rates[-1] == pytest.approx(1e-3 * LAST_LR_SHARE)
    assert rates[2] == pytest.approx(1e-3 * (1 + LAST_LR_SHARE) / 2)
    assert all(a > b for a, b in zip(rates, rates[1:]))
    assert learning_rate(BuildSettings(lr=1e-3, epochs=1), 1) == pytest.approx(1e-3)


@needs_wordnet
@pytest.mark.slow
def test_build_default_runs_end_to_end_in_a_reduced_configuration(tmp_path):
    from captioner.training.checkpoint import read_checkpoint

    settings = BuildSettings(train_pairs=1500, val_pairs=150, test_pairs=150, epochs=2, batch_size=128,
                             embed_size=32, hidden_size=48)
    photos = dict(list(default_photos().items())[:2])
    report = build_default(tmp_path / "default", settings, photos)
    loaded = load_model(tmp_path / "default")
    assert loaded.config.encoder_output == "class_probs" and len(loaded.vocab) > 1000
    card = (tmp_path / "default" / "README.md").read_text()
    assert "No human captions" in card and f"{report.template_agreement:.4f}" in card
    assert "shown for information" in card
    assert "3,000\ngenerated pairs (1,500 fresh ones per epoch)" in card
    assert len(report.photos) == 2 and 0 <= report.greedy_agreement <= 1
    history = read_checkpoint(tmp_path / ".default-training")["history"]
    assert [e["epoch"] for e in history] == [1, 2]
    assert history[1]["val_loss"] < history[0]["val_loss"]  # the second epoch, on new pairs, still learns

    # --resume after the last epoch trains nothing more and measures again.
    again = build_default(tmp_path / "default", BuildSettings(**{**settings.__dict__, "resume": True}), photos)
    assert again.greedy_agreement == report.greedy_agreement
    assert len(read_checkpoint(tmp_path / ".default-training")["history"]) == 2


def test_the_model_card_verdict_names_each_shortfall():
    from captioner.build.pipeline import PhotoCheck, QualityReport, _verdict

    photo = PhotoCheck("coffee", "a cup of espresso", "a cup of espresso", [("espresso", 0.9)], grounded=True)
    assert _verdict(QualityReport(0.999, 0.999, 0.998, 1.0, [photo])) == "The quality bar is met."
    short = _verdict(QualityReport(0.80, 0.90, 0.998, 1.0, [photo, PhotoCheck("x", "a dog", "a dog", [], False)]))
    assert "1 of the real photos" in short and "bar of" not in short
    assert "template" not in short  # the template's agreement is information, not a bar
    assert f"bar of {QUALITY_BAR}" in _verdict(QualityReport(0.80, 0.82, 0.998, 1.0, [photo]))
