"""The bundled model: what `make demo` shows, held to the quality bar in its model card."""

import functools

import numpy as np
import pytest
import torch

from captioner.build_default import BuildSettings, agreement, build_default, default_photos, grammar_captions
from captioner.imagenet import imagenet_class_names
from captioner.repository import BUNDLED_MODEL_DIR, load_model
from captioner.service import load_captioner

pytestmark = pytest.mark.skipif(not (BUNDLED_MODEL_DIR / "config.json").is_file(), reason="no bundled model")
needs_wordnet = pytest.mark.skipif(
    not __import__("pathlib").Path("/usr/share/wordnet/data.noun").is_file(), reason="WordNet (wordnet-base) missing")
HELD_OUT_SEED = 12345  # the build used seeds 0-2


@pytest.fixture(scope="module")
def captioner():
    return load_captioner(None, "cpu")


@functools.cache
def held_out(n=2000):
    from captioner.synthetic import generate_pairs

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
    assert greedy_words & set(captioner.caption(example_photos[photo], beam_size=1).caption.split())
    assert beam_words & set(captioner.caption(example_photos[photo], beam_size=3).caption.split())


def _agreements(captioner):
    log_probs, captions = held_out()
    features = torch.from_numpy(np.exp(log_probs))
    greedy, greedy_out = agreement(captioner.model, captioner.vocab, features, captions, 1)
    beam, beam_out = agreement(captioner.model, captioner.vocab, features, captions, 3)
    return greedy, beam, greedy_out, beam_out


@needs_wordnet
def test_agreement_with_the_grammar_does_not_regress(captioner):
    """The shipped model's measured level (about 0.79 greedy, 0.81 beam on the build's test pairs)."""
    greedy, beam, _, _ = _agreements(captioner)
    assert greedy >= 0.75 and beam >= 0.77


@needs_wordnet
@pytest.mark.xfail(strict=True, reason="the shipped decoder does not reach the quality bar yet (see its card)")
def test_agreement_reaches_the_bar_and_the_template(captioner):
    from captioner.synthetic import template_caption

    log_probs, captions = held_out()
    greedy, beam, _, _ = _agreements(captioner)
    template = sum(template_caption(lp) == c for lp, c in zip(log_probs, captions)) / len(captions)
    assert min(greedy, beam) >= 0.85 and max(greedy, beam) >= template


@needs_wordnet
def test_beam_search_does_not_collapse_to_shorter_captions(captioner):
    greedy, beam, greedy_out, beam_out = _agreements(captioner)
    assert beam >= greedy - 0.01
    assert sum(len(c.split()) for c in beam_out) >= 0.98 * sum(len(c.split()) for c in greedy_out)


def _grounded(captioner, path, beam):
    names = imagenet_class_names()
    result = captioner.caption(path, beam_size=beam)
    top = [names.index(label) for label, _ in result.top_classes]
    assert len(result.caption.split()) == len(result.words) > 0
    return result.caption in grammar_captions(top), result


@needs_wordnet
@pytest.mark.parametrize("photo", ["coffee", "chelsea-the-cat", "rocket", "camera", "grace-hopper"])
def test_shipped_photos_name_only_what_the_classifier_sees(captioner, example_photos, photo):
    grounded, result = _grounded(captioner, example_photos[photo], beam=1)
    assert grounded, (result.caption, result.top_classes)


@needs_wordnet
@pytest.mark.xfail(strict=True, reason="flat classifier outputs (textures, microscopy) get invented objects")
def test_every_real_photo_names_only_what_the_classifier_sees(captioner):
    for name, path in default_photos().items():
        for beam in (1, 3):
            grounded, result = _grounded(captioner, path, beam)
            assert grounded, (name, result.caption, result.top_classes)


@needs_wordnet
@pytest.mark.slow
def test_build_default_runs_end_to_end_in_a_reduced_configuration(tmp_path):
    settings = BuildSettings(train_pairs=1500, val_pairs=150, test_pairs=150, epochs=1, batch_size=128,
                             embed_size=32, hidden_size=48)
    photos = dict(list(default_photos().items())[:2])
    report = build_default(tmp_path / "default", settings, photos)
    loaded = load_model(tmp_path / "default")
    assert loaded.config.encoder_output == "class_probs" and len(loaded.vocab) > 100
    card = (tmp_path / "default" / "README.md").read_text()
    assert "No human captions" in card and f"{report.template_agreement:.4f}" in card
    assert len(report.photos) == 2 and 0 <= report.greedy_agreement <= 1
