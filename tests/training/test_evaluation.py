"""Caption metrics against values worked out by hand, with and without Java."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import pytest

from captioner.training.evaluation import (
    METEOR_NEEDS_JAVA,
    METRICS,
    _tokenize,
    find_java,
    format_scores,
    ptb_tokenize,
    score_captions,
)

JAVA = find_java()
needs_java = pytest.mark.skipif(JAVA is None, reason="java is not installed")

SENTENCE = "A man riding a wave on top of a surfboard."

# Two images, two references each; the predictions are scored by hand below.
HAND_REFS = {
    "img1": ["The cat is on the mat.", "There is a cat on the mat."],
    "img2": ["A dog runs in the park.", "A brown dog is running."],
}
HAND_PREDS = {"img1": "The cat the cat on the mat.", "img2": "A dog runs."}
# After PTB tokenisation (lower case, '.' dropped):
#  img1 hyp "the cat the cat on the mat" (7 words); refs of 6 and 7 words -> closest ref length 7.
#    unigrams: the x3 (clip to 2, ref 1 has two), cat x2 (clip 1), on 1, mat 1  -> 5 correct of 7
#    bigrams : the-cat x2 (clip 1), cat-the 0, cat-on 1, on-the 1, the-mat 1   -> 4 correct of 6
#  img2 hyp "a dog runs" (3 words); refs of 6 and 5 words -> closest ref length 5.
#    unigrams 3 of 3, bigrams (a-dog, dog-runs) 2 of 2.
#  Corpus (pycocoevalcap sums counts over images): p1 = 8/10, p2 = 6/8,
#    hyp length 10 < ref length 7 + 5 = 12 -> brevity penalty exp(1 - 12/10).
HAND_BP = math.exp(1 - 12 / 10)
HAND_BLEU1 = 8 / 10 * HAND_BP  # 0.654985
HAND_BLEU2 = math.sqrt(8 / 10 * 6 / 8) * HAND_BP  # 0.634186
# ROUGE-L (beta = 1.2, best precision and best recall over the refs, mean over images):
#   img1: LCS with ref 1 "the cat on the mat" = 5 -> P 5/7, R 5/6; ref 2: 4 -> P 4/7, R 4/7
#   img2: LCS with ref 1 = 3 -> P 1, R 3/6; ref 2 "a dog" = 2 -> P 2/3, R 2/5


def rouge_f(p: float, r: float) -> float:
    return (1 + 1.2**2) * p * r / (r + 1.2**2 * p)


HAND_ROUGE = (rouge_f(5 / 7, 5 / 6) + rouge_f(1, 3 / 6)) / 2  # 0.704459


def java_children() -> list[int]:
    """Process ids of java processes whose parent is this test process (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        parent = int(stat[stat.rindex(")") + 2 :].split()[1])
        if parent == os.getpid() and "java" in name:
            found.append(int(entry.name))
    return found


@pytest.fixture(scope="module")
def java_single_image() -> dict[str, float | None]:
    """The one METEOR (java) run of this module: a single image, prediction = its reference."""
    if JAVA is None:
        pytest.skip("java is not installed")
    return score_captions({"only": [SENTENCE, "A surfer rides a big wave."]}, {"only": SENTENCE})


# ------------------------------------------------------------------------------ known values


def test_identical_prediction_scores_one() -> None:
    scores = score_captions({"only": [SENTENCE]}, {"only": SENTENCE}, use_java=False)
    assert list(scores) == list(METRICS)
    for n in range(1, 5):
        assert scores[f"BLEU-{n}"] == pytest.approx(1.0, abs=1e-6)
    assert scores["ROUGE-L"] == pytest.approx(1.0)
    assert scores["CIDEr"] == 0.0  # IDF from one image is log(1/1) = 0 for every n-gram
    assert scores["METEOR"] is None


def test_hand_computed_bleu_and_rouge() -> None:
    scores = score_captions(HAND_REFS, HAND_PREDS, use_java=False)
    assert scores["BLEU-1"] == pytest.approx(HAND_BLEU1, abs=1e-3)
    assert scores["BLEU-2"] == pytest.approx(HAND_BLEU2, abs=1e-3)
    assert scores["ROUGE-L"] == pytest.approx(HAND_ROUGE, abs=1e-3)
    assert scores["BLEU-4"] < scores["BLEU-3"] < scores["BLEU-2"]


def test_cider_ranks_correct_captions_above_a_constant_one() -> None:
    refs = {
        "bus": ["A red bus driving down a city street.", "A double decker bus on the road."],
        "cat": ["A cat sleeping on a laptop keyboard.", "A grey cat lying on a computer."],
        "pizza": ["A pizza with cheese and tomatoes on a plate.", "A plate holding a cheese pizza."],
        "surf": ["A man riding a wave on a surfboard.", "A surfer on a big wave in the ocean."],
    }
    correct = {
        "bus": "A red bus on a city street.",
        "cat": "A cat lying on a laptop.",
        "pizza": "A cheese pizza on a plate.",
        "surf": "A man riding a wave on a surfboard.",
    }
    constant = {key: "A man standing on a street." for key in refs}
    good = score_captions(refs, correct, use_java=False)
    bad = score_captions(refs, constant, use_java=False)
    assert good["CIDEr"] > 1.0
    assert bad["CIDEr"] < 0.5 * good["CIDEr"]
    assert bad["BLEU-4"] < good["BLEU-4"]
    assert bad["ROUGE-L"] < good["ROUGE-L"]


def test_empty_or_punctuation_only_predictions_score_zero() -> None:
    refs = {"a": ["A dog on the grass."], "b": ["Two birds in a tree."]}
    scores = score_captions(refs, {"a": "", "b": "?!."}, use_java=False)
    assert scores["BLEU-1"] == pytest.approx(0.0, abs=1e-6)
    assert scores["ROUGE-L"] == 0.0 and scores["CIDEr"] == 0.0


# ---------------------------------------------------------------------------------- METEOR


@needs_java
@pytest.mark.slow
def test_meteor_with_java_on_a_single_image(java_single_image: dict[str, float | None]) -> None:
    meteor = java_single_image["METEOR"]
    assert isinstance(meteor, float) and 0.9 < meteor <= 1.0
    assert java_single_image["BLEU-4"] == pytest.approx(1.0, abs=1e-6)
    assert java_single_image["ROUGE-L"] == pytest.approx(1.0)
    shown = format_scores(java_single_image)
    assert "METEOR " in shown and "n/a" not in shown


@needs_java
@pytest.mark.slow
def test_meteor_process_is_closed_after_scoring(java_single_image: dict[str, float | None]) -> None:
    if not Path("/proc/self/stat").exists():
        pytest.skip("needs /proc to list child processes")
    assert java_single_image["METEOR"] is not None
    assert java_children() == []


@needs_java
@pytest.mark.slow
def test_meteor_process_scores_as_pycocoevalcaps_meteor() -> None:
    """The explicit wrapper speaks the jar's protocol as pycocoevalcap's own Meteor does: same score."""
    from pycocoevalcap.meteor.meteor import Meteor

    from captioner.training.evaluation import MeteorProcess

    gts = {"a": ["a cat on a mat", "the cat sits on the mat"], "b": ["a dog runs in the park", "a brown dog"],
           "c": ["two birds on a wire"]}
    res = {"a": ["a cat on the mat"], "b": ["a dog in a park"], "c": ["a bird"]}
    reference = Meteor()
    try:
        expected, _ = reference.compute_score(gts, res)
    finally:
        del reference
    with MeteorProcess(JAVA, timeout_s=120) as meteor:
        assert meteor.compute_score(gts, res) == pytest.approx(expected, abs=1e-12)
        process = meteor.process
    assert process.poll() is not None  # closed on leaving the block


def test_without_java_on_path_meteor_is_none_and_tokens_fall_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no java
    assert find_java() is None
    with caplog.at_level(logging.WARNING, logger="captioner.training.evaluation"):
        scores = score_captions(HAND_REFS, HAND_PREDS)
    assert scores["METEOR"] is None
    assert METEOR_NEEDS_JAVA in caplog.text
    assert scores["BLEU-1"] == pytest.approx(HAND_BLEU1, abs=1e-3)
    assert scores["ROUGE-L"] == pytest.approx(HAND_ROUGE, abs=1e-3)
    assert "METEOR  n/a (needs Java)" in format_scores(scores)


def test_a_broken_java_falls_back_instead_of_hanging(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    fake = tmp_path / "java"
    fake.write_text("#!/bin/sh\necho 'Error: could not start the JVM' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="captioner.training.evaluation"):
        scores = score_captions(HAND_REFS, HAND_PREDS)
    assert scores["METEOR"] is None
    assert "METEOR failed" in caplog.text and "Python tokeniser" in caplog.text
    assert scores["BLEU-2"] == pytest.approx(HAND_BLEU2, abs=1e-3)


# ---------------------------------------------------------------------------- tokenisation


CAPTIONS = [
    "A man riding a wave on top of a surfboard.",
    'The dog\'s toy isn\'t here, it\'s "red" (and blue)!',
    "A black-and-white photo of a cat... on a couch; yes?",
    "Two people -- a man & a woman -- at 3:30 p.m. with $5.50 and 1,000 birds.",
    "Mr. Smith's café in the U.K. with a 10% discount.",
    "People at the bar-b-q, can't won't don't gonna cannot.",
    "Dogs' toys; the cats' bowls.",
    "A cat sitting on a laptop,while a dog watches.",
    "the dog\u2019s toy \u201chi\u201d wait\u2026 ok \u2014 yes",
    "A group of people standing around a table with food on it .",
    "",
    "a dog runs\nacross\rthe field",
]


def test_python_tokeniser_known_outputs() -> None:
    assert ptb_tokenize(CAPTIONS[1]) == "the dog 's toy is n't here it 's red -lrb- and blue -rrb-"
    assert ptb_tokenize(CAPTIONS[3]) == (
        "two people a man & a woman at 3:30 p.m. with $ 5.50 and 1,000 birds"
    )
    assert ptb_tokenize(CAPTIONS[5]) == "people at the bar-b-q ca n't wo n't do n't gon na can not"
    assert ptb_tokenize(CAPTIONS[11]) == "a dog runs across the field"
    assert ptb_tokenize("") == ""


@needs_java
def test_python_tokeniser_matches_the_java_one() -> None:
    assert _tokenize(CAPTIONS, JAVA) == [ptb_tokenize(caption) for caption in CAPTIONS]


@needs_java
def test_java_tokenisation_matches_pycocoevalcap() -> None:
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    sample = [caption for caption in CAPTIONS if "\r" not in caption and caption]  # as COCO data is
    try:
        reference = PTBTokenizer().tokenize({"x": [{"caption": c} for c in sample]})["x"]
    except PermissionError:
        pytest.skip("pycocoevalcap writes a temporary file into its read-only package folder")
    assert _tokenize(sample, JAVA) == reference


# ------------------------------------------------------------------------- format and input


def test_format_scores_lines() -> None:
    text = format_scores({"BLEU-1": 0.65498, "METEOR": None, "CIDEr": 1.0})
    assert text.splitlines() == ["BLEU-1 0.6550", "METEOR n/a (needs Java)", "CIDEr  1.0000"]


@pytest.mark.parametrize(
    "refs, preds, message",
    [
        ({}, {}, "no images"),
        ({"a": ["x"]}, {"b": "x"}, "same images"),
        ({"a": ["x"], "b": ["y"]}, {"a": "x"}, "1 without a prediction"),
        ({"a": []}, {"a": "x"}, "non-empty list"),
        ({"a": "a caption, not a list"}, {"a": "x"}, "non-empty list"),
    ],
)
def test_bad_inputs_raise(refs: dict, preds: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        score_captions(refs, preds, use_java=False)
