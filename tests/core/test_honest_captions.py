"""The bundled model's confidence and saying less, through the library as users call it."""

import shutil

import pytest

from captioner.core.confidence import NOTHING_RECOGNISED, ClassMassRule
from captioner.core.confidence.phrases import FILE_NAME
from captioner.core.inference import load_captioner
from captioner.core.repository.storage import BUNDLED_MODEL_DIR
from tests.helpers.odd_images import odd_images

pytestmark = pytest.mark.skipif(not (BUNDLED_MODEL_DIR / FILE_NAME).is_file(), reason="no bundled model")
RESULT_KEYS = {"image", "caption", "confidence", "calibrated", "candidates", "words", "top_classes", "model"}
CANDIDATE_KEYS = {"caption", "confidence", "calibrated", "score", "decoded", "words", "mentions", "cut"}


@pytest.fixture(scope="module")
def bundled():
    return load_captioner(None, "cpu", "torch")


def test_every_caption_and_candidate_has_a_calibrated_confidence(bundled, example_photos, one_thread):
    assert isinstance(bundled.confidence, ClassMassRule)
    for result in bundled(list(example_photos.values()), errors="return"):
        data = result.to_dict()
        assert set(data) == RESULT_KEYS
        assert data["calibrated"] is True and 0 <= data["confidence"] <= 1
        assert data["confidence"] == data["candidates"][0]["confidence"]
        for candidate in data["candidates"]:
            assert set(candidate) == CANDIDATE_KEYS and candidate["calibrated"] is True
            assert 0 <= candidate["confidence"] <= 1
            assert all(0 <= m["probability"] <= 1 for m in candidate["mentions"])
            assert [w["word"] for w in candidate["words"]] == candidate["decoded"].split()  # the decoder's own words


def test_a_clear_photo_is_likely_and_what_the_classifier_does_not_know_is_not(bundled, example_photos, one_thread):
    cat = bundled(example_photos["chelsea-the-cat"])
    assert cat.caption == "a cat" and cat.confidence > 0.7
    for name, image in odd_images().items():
        result = bundled(image)
        assert result.caption == NOTHING_RECOGNISED or result.confidence < 0.3, name
        kept = bundled(image, when_unsure="keep")
        assert kept.caption != NOTHING_RECOGNISED and kept.confidence < 0.3, name
        assert kept.confidence == pytest.approx(result.confidence)  # the same claim, said or declined


def test_keep_gives_the_decoders_caption_and_generalise_may_say_less(bundled, example_photos, one_thread):
    said_less = 0
    for path in example_photos.values():
        kept = bundled(path, when_unsure="keep")
        said = bundled(path)
        assert all(c.decoded is None for c in kept.candidates)
        assert said.candidates[0].score == kept.candidates[0].score  # the decoder's number is unchanged
        if said.caption != kept.caption:
            said_less += 1
            assert said.candidates[0].decoded == kept.caption
    assert said_less >= 1  # e.g. the rocket: "a missile" the classifier is unsure of, "a weapon" it is surer of


def test_a_model_without_its_phrase_file_falls_back_and_says_it_is_not_calibrated(tmp_path, example_photos, one_thread):
    copy = tmp_path / "model"
    shutil.copytree(BUNDLED_MODEL_DIR, copy)
    (copy / FILE_NAME).unlink()
    result = load_captioner(copy, "cpu", "torch")(example_photos["chelsea-the-cat"])
    assert result.confidence is None and result.calibrated is False
    assert result.to_dict()["confidence"] is None and result.to_dict()["candidates"][0]["calibrated"] is False


def test_a_model_with_no_fit_is_not_calibrated(tiny_model_dir, example_photos, one_thread):
    result = load_captioner(tiny_model_dir, "cpu")(example_photos["coffee"])
    assert result.confidence is None and not result.calibrated
    assert all(c["confidence"] is None and c["mentions"] == [] for c in result.to_dict()["candidates"])
