"""Confidence: caption phrases, the rules, the measurements and fits, and the model's own rule."""

import json
import math

import numpy as np
import pytest

from captioner.core.confidence import NOTHING_RECOGNISED, UNCALIBRATED, ClassMassRule, TemperatureRule, rule_for
from captioner.core.confidence.measure import (
    auroc,
    expected_calibration_error,
    fit_logistic,
    fit_temperature,
    reliability,
    risk_coverage,
)
from captioner.core.confidence.phrases import FILE_NAME, FORMAT, PhraseTable
from captioner.core.errors import ModelFormatError
from captioner.core.options import DecodeOptions
from captioner.core.results import Candidate

# A small grammar: 6 classes. 0, 1: tabby / tiger cat ("a cat"); 2: pirate ship; 3: kimono; 4: seashore;
# 5: a person class (groom).
PHRASES = {
    "format": FORMAT, "version": 1, "num_classes": 6,
    "phrases": [
        {"text": "a tabby cat", "classes": [0], "kind": "object", "general": "a cat"},
        {"text": "a tiger cat", "classes": [1], "kind": "object", "general": "a cat"},
        {"text": "a cat", "classes": [0, 1], "kind": "object", "is_general": True},
        {"text": "a pirate ship", "classes": [2], "kind": "object"},
        {"text": "a kimono", "classes": [3], "kind": "clothing"},
        {"text": "a person", "classes": [5], "kind": "person", "is_general": True},
        {"text": "a groom", "classes": [5], "kind": "person", "general": "a person"},
        {"text": "on a seashore", "classes": [4], "kind": "scene", "alone": "a seashore"},
        {"text": "a seashore", "classes": [4], "kind": "scene"},
    ],
}


def table() -> PhraseTable:
    return PhraseTable.from_dict(json.loads(json.dumps(PHRASES)))


def rule(specific_below=0.5, nothing_below=0.2) -> ClassMassRule:
    return ClassMassRule(table(), slope=1.0, intercept=0.0, general=0.0, specific_below=specific_below,
                         nothing_below=nothing_below)


def candidate(caption: str, score: float = -0.05) -> Candidate:
    return Candidate(caption, score, tuple((w, 0.9) for w in caption.split()))


@pytest.mark.parametrize("caption, named, written", [
    ("a tabby cat", ["a tabby cat"], "a tabby cat"),
    ("a tabby cat and a pirate ship", ["a tabby cat", "a pirate ship"], "a tabby cat and a pirate ship"),
    ("a person wearing a kimono", ["a kimono"], "a person wearing a kimono"),
    ("a groom wearing a kimono with a tabby cat on a seashore", ["a groom", "a kimono", "a tabby cat", "on a seashore"],
     "a groom wearing a kimono with a tabby cat on a seashore"),
    ("a seashore", ["a seashore"], "a seashore"),
    ("a tabby cat a pirate ship and a cat", ["a tabby cat", "a pirate ship", "a cat"],
     "a tabby cat a pirate ship and a cat"),
])
def test_grammar_captions_read_as_their_phrases_and_write_back(caption, named, written):
    reading = table().read(caption)
    assert [p.text for p in reading.named] == named
    assert table().write(reading) == written


@pytest.mark.parametrize("caption", ["a dog", "a tabby cat and", "wearing a kimono", "a kimono wearing a groom",
                                     "on a seashore a tabby cat", ""])
def test_captions_outside_the_grammar_are_not_read(caption):
    assert table().read(caption) is None


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(format="other"), "is not a"),
    (lambda d: d["phrases"][0].update(classes=[6]), "class indices below 6"),
    (lambda d: d["phrases"][0].update(classes=[True]), "class indices"),
    (lambda d: d["phrases"][0].update(kind="animal"), "kind"),
    (lambda d: d["phrases"][0].update(general="a dog"), "not a phrase"),
    (lambda d: d.update(num_classes=10**9), "num_classes"),
    (lambda d: d["phrases"][0].update(is_general="yes"), "is_general"),
])
def test_a_damaged_phrase_file_is_refused_with_what_is_wrong(change, message):
    data = json.loads(json.dumps(PHRASES))
    change(data)
    with pytest.raises(ModelFormatError, match=message):
        PhraseTable.from_dict(data)


def test_a_file_that_is_not_json_or_too_large_is_refused(tmp_path):
    (tmp_path / FILE_NAME).write_text("{not json")
    with pytest.raises(ModelFormatError, match="could not be read"):
        PhraseTable.load(tmp_path / FILE_NAME)
    (tmp_path / FILE_NAME).write_bytes(b" " * (5 * 1024 * 1024))
    with pytest.raises(ModelFormatError, match="larger than"):
        PhraseTable.load(tmp_path / FILE_NAME)


def probabilities(**mass) -> np.ndarray:
    p = np.zeros(6)
    for index, name in enumerate(("tabby", "tiger", "ship", "kimono", "shore", "groom")):
        p[index] = mass.get(name, 0.0)
    return p


def test_confidence_follows_the_mass_behind_what_is_named():
    r = rule(specific_below=0.0, nothing_below=0.0)
    sure, = r.assess([candidate("a tabby cat")], probabilities(tabby=0.9), "keep")
    unsure, = r.assess([candidate("a tabby cat")], probabilities(tabby=0.1, ship=0.8), "keep")
    assert 0 <= unsure.confidence < sure.confidence <= 1
    assert sure.confidence == pytest.approx(0.9)  # slope 1, intercept 0: the mass itself
    assert sure.calibrated and sure.mentions == (("a tabby cat", 0.9),)
    assert sure.score == -0.05 and sure.decoded is None  # the decoder's numbers stay


def test_an_unlikely_extra_thing_shows_as_unlikely():
    (given,) = rule(specific_below=0.0, nothing_below=0.0).assess(
        [candidate("a tabby cat and a pirate ship")], probabilities(tabby=0.8, ship=0.01), "keep")
    assert dict(given.mentions) == {"a tabby cat": 0.8, "a pirate ship": 0.01}


def test_unsure_specific_phrases_become_their_general_word():
    p = probabilities(tabby=0.3, tiger=0.3)
    (kept,) = rule().assess([candidate("a tabby cat")], p, "keep")
    (said,) = rule().assess([candidate("a tabby cat")], p, "generalise")
    assert kept.caption == "a tabby cat" and kept.confidence == pytest.approx(0.3)
    assert said.caption == "a cat" and said.confidence == pytest.approx(0.6)
    assert said.decoded == "a tabby cat" and said.to_dict()["decoded"] == "a tabby cat"
    # Sure enough of the specific one: it stays.
    (sure,) = rule().assess([candidate("a tabby cat")], probabilities(tabby=0.7, tiger=0.2), "generalise")
    assert sure.caption == "a tabby cat"


def test_when_nothing_is_recognised_it_says_so():
    flat = probabilities(tabby=0.04, ship=0.05, shore=0.03)
    (said,) = rule().assess([candidate("a pirate ship")], flat, "generalise")
    assert said.caption == NOTHING_RECOGNISED and said.decoded == "a pirate ship"
    assert said.confidence == pytest.approx(0.05) and said.mentions == ()
    (kept,) = rule().assess([candidate("a pirate ship")], flat, "keep")
    assert kept.caption == "a pirate ship"


def test_candidates_that_end_up_alike_are_given_once():
    p = probabilities(tabby=0.3, tiger=0.3)
    said = rule().assess([candidate("a tabby cat"), candidate("a tiger cat")], p, "generalise")
    assert [c.caption for c in said] == ["a cat"]


def test_captions_outside_the_grammar_go_to_the_next_rule():
    with_fallback = ClassMassRule(table(), 1.0, 0.0, 0.0, 0.5, 0.2, fallback=TemperatureRule(2.0))
    (given,) = with_fallback.assess([candidate("a red bicycle", score=-0.5)], probabilities(tabby=0.9), "generalise")
    assert given.caption == "a red bicycle" and given.confidence == pytest.approx(math.exp(-0.25))
    (none,) = rule().assess([candidate("a red bicycle")], probabilities(), "generalise")
    assert none.confidence is None and not none.calibrated


def test_temperature_and_uncalibrated_rules():
    (scaled,) = TemperatureRule(0.5).assess([candidate("x", score=-0.1)], None, "generalise")
    assert scaled.confidence == pytest.approx(math.exp(-0.2))
    (plain,) = UNCALIBRATED.assess([candidate("x", score=-0.1)], None, "generalise")
    assert plain.confidence is None
    assert plain.to_dict()["calibrated"] is False and plain.to_dict()["confidence"] is None


def test_the_rule_follows_the_model_files(tmp_path):
    (tmp_path / FILE_NAME).write_text(json.dumps(PHRASES))
    settings = {"rule": "class_mass", "calibration": {"slope": 0.7, "intercept": -0.3, "general": 1.0},
                "specific_below": 0.4, "nothing_below": 0.3, "temperature": 2.0}
    found = rule_for({"confidence": settings}, tmp_path, emits_classes=True)
    assert isinstance(found, ClassMassRule) and found.slope == 0.7 and found.general == 1.0
    assert isinstance(found.fallback, TemperatureRule)
    # Without its phrase file (or a classifier) a model falls back to the next rule.
    (tmp_path / FILE_NAME).unlink()
    assert isinstance(rule_for({"confidence": settings}, tmp_path, emits_classes=True), TemperatureRule)
    assert rule_for({}, tmp_path, emits_classes=True) is UNCALIBRATED
    assert rule_for({"confidence": {"rule": "temperature", "temperature": 1.5}}, None, False) == TemperatureRule(1.5)


@pytest.mark.parametrize("settings, message", [
    ({"rule": "temperature", "temperature": -1}, "temperature"),
    ({"rule": "temperature", "temperature": "hot"}, "temperature"),
    ({"rule": "class_mass", "calibration": {"slope": float("nan"), "intercept": 0}}, "slope"),
    ({"rule": "class_mass", "calibration": "x"}, "calibration"),
    ({"rule": "class_mass", "calibration": {"slope": 1, "intercept": 0}, "nothing_below": 2}, "nothing_below"),
])
def test_a_broken_confidence_setting_is_refused(tmp_path, settings, message):
    (tmp_path / FILE_NAME).write_text(json.dumps(PHRASES))
    with pytest.raises(ModelFormatError, match=message):
        rule_for({"confidence": settings}, tmp_path, emits_classes=True)


def test_when_unsure_is_checked_like_every_decoding_setting():
    assert DecodeOptions().resolved(16).when_unsure == "generalise"
    assert DecodeOptions(when_unsure="keep").resolved(16).when_unsure == "keep"
    for bad in ("maybe", "", None, 1):
        with pytest.raises(ValueError, match="when_unsure must be one of generalise, keep"):
            DecodeOptions(when_unsure=bad).resolved(16)


def test_calibration_error_and_ranking_measure_what_they_say():
    rng = np.random.default_rng(0)
    confidence = rng.random(20000)
    calibrated = rng.random(20000) < confidence
    assert expected_calibration_error(confidence, calibrated) < 0.02
    assert expected_calibration_error(np.full(1000, 0.9), np.zeros(1000, bool)) == pytest.approx(0.9)
    assert auroc([0.9, 0.8, 0.2, 0.1], [True, True, False, False]) == 1.0
    assert auroc([0.1, 0.2, 0.8, 0.9], [True, True, False, False]) == 0.0
    assert auroc([0.5, 0.5], [True, False]) == 0.5
    assert auroc(confidence, calibrated) == pytest.approx(5 / 6, abs=0.01)  # 4 * (1/3 - 1/8), uniform confidence
    rows = risk_coverage([0.9, 0.8, 0.3, 0.2], [True, False, False, False], [1.0, 0.5, 0.25])
    assert rows == [(1.0, 0.75, 0.2), (0.5, 0.5, 0.8), (0.25, 0.0, 0.9)]
    assert reliability([0.05, 0.95, 0.95], [False, True, False]) == [(0.05, 0.05, 0.0, 1), (0.95, 0.95, 0.5, 2)]
    with pytest.raises(ValueError):
        expected_calibration_error([1.5], [True])


def test_the_fits_recover_known_parameters():
    rng = np.random.default_rng(1)
    x = rng.normal(size=20000)
    right = rng.random(20000) < 1 / (1 + np.exp(-(1.5 * x - 0.5)))
    slope, intercept = fit_logistic(x, right)
    assert slope == pytest.approx(1.5, abs=0.08) and intercept == pytest.approx(-0.5, abs=0.06)
    scores = -rng.gamma(2.0, 0.3, size=20000)
    right = rng.random(20000) < np.exp(scores / 0.4)
    assert fit_temperature(scores, right) == pytest.approx(0.4, rel=0.05)
