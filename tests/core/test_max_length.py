"""``max_length`` counts caption words, in the library, the command line and the app, and a caption that
would have gone on says it was cut (``Candidate.cut``)."""

from __future__ import annotations

import json

import pytest

from captioner.core.inference import load_captioner
from captioner.core.options import DecodeOptions, decode_steps
from captioner.core.repository.storage import save_model
from tests.helpers.cli import run
from tests.helpers.models import make_tiny_model
from tests.helpers.paths import EXAMPLES


@pytest.fixture(scope="module")
def talkative(tmp_path_factory):
    """A model that never wants to stop: every caption runs to the maximum length."""
    model, vocab = make_tiny_model(end_bias=-30.0)
    return save_model(model, vocab, tmp_path_factory.mktemp("talkative") / "model")


@pytest.fixture(scope="module")
def terse(tmp_path_factory):
    """A model that stops after its first word whenever it may."""
    model, vocab = make_tiny_model(end_bias=30.0)
    return save_model(model, vocab, tmp_path_factory.mktemp("terse") / "model")


def test_decode_steps_are_start_the_words_and_one_to_learn_if_it_ends():
    assert decode_steps(2) == 4 and decode_steps(20) == 22


@pytest.mark.parametrize("beam", [1, 3])
@pytest.mark.parametrize("words", [2, 4, 7])
def test_a_caption_that_would_go_on_has_exactly_max_length_words_and_says_it_was_cut(talkative, words, beam,
                                                                                    one_thread):
    result = load_captioner(talkative, "cpu")(EXAMPLES / "coffee.jpg", beam_size=beam, max_length=words)
    assert result.candidates
    for candidate in result.candidates:
        assert len(candidate.caption.split()) == words == len(candidate.words)
        assert candidate.cut and candidate.to_dict()["cut"] is True


def test_a_caption_that_ends_by_itself_is_not_cut(terse, one_thread):
    for beam in (1, 3):
        result = load_captioner(terse, "cpu")(EXAMPLES / "coffee.jpg", beam_size=beam, max_length=2)
        assert len(result.caption.split()) == 1 and not result.candidates[0].cut


def test_default_length_is_the_models_in_words(talkative, one_thread):
    captioner = load_captioner(talkative, "cpu")
    result = captioner(EXAMPLES / "coffee.jpg", DecodeOptions(beam_size=1))
    assert len(result.caption.split()) == captioner.config.max_length and result.candidates[0].cut


def test_the_command_line_max_length_is_in_words(talkative):
    done = run("caption", "--json", "--model", talkative, "--device", "cpu", "--max-length", "4",
               EXAMPLES / "coffee.jpg")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert len(result["caption"].split()) == 4 and result["candidates"][0]["cut"] is True


def test_the_best_caption_does_not_depend_on_how_many_candidates_are_kept(tiny_model_dir, talkative, one_thread):
    for model in (tiny_model_dir, talkative):
        captioner = load_captioner(model, "cpu")
        for words in (3, 6, 12):
            one = captioner(EXAMPLES / "rocket.jpg", beam_size=4, num_candidates=1, max_length=words)
            four = captioner(EXAMPLES / "rocket.jpg", beam_size=4, num_candidates=4, max_length=words)
            assert one.caption == four.caption and one.candidates[0] == four.candidates[0]
