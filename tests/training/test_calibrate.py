"""The end of train: the kept model's confidence temperature, fitted on its validation split."""

import json
import math

import pytest
import torch
from PIL import Image, ImageOps

from captioner.core.confidence import TemperatureRule
from captioner.core.inference import Captioner, load_captioner
from captioner.core.pipeline import Pipeline
from captioner.core.repository.storage import load_model, save_model
from captioner.training.calibrate import MIN_IMAGES, calibrate_confidence, content_words, is_right
from captioner.training.records import CaptionedImage
from tests.helpers.models import make_tiny_model
from tests.helpers.odd_images import odd_images


def test_a_caption_is_right_when_it_shares_a_content_word_with_a_reference():
    assert content_words("A dog and two cats on the grass") == {"dog", "cat", "grass"}
    assert content_words("puppies") == {"puppy"} and content_words("glass") == {"glass"}
    assert is_right("a small dog", ["dogs playing in a park", "a pet"])
    assert not is_right("a cat on a table", ["a dog in the park"])
    assert not is_right("a the of", ["a the of"])


@pytest.fixture(scope="module")
def model_and_images(tmp_path_factory, example_photos):
    """A small model, and 24 validation images whose references make every other caption right."""
    folder = tmp_path_factory.mktemp("calibrate")
    model, vocab = make_tiny_model(seed=3)
    out = save_model(model, vocab, folder / "model")
    paths = []
    sources = [Image.open(p).convert("RGB") for p in example_photos.values()] + list(odd_images().values())
    for index in range(MIN_IMAGES + 4):
        image = sources[index % len(sources)]
        image = [image, ImageOps.mirror(image), image.rotate(90, expand=True)][index // len(sources) % 3]
        paths.append(folder / f"{index}.png")
        image.save(paths[-1])
    captions = [r.caption for r in load_captioner(out, "cpu")(paths, when_unsure="keep")]
    items = [CaptionedImage(path, [caption if index % 2 else "zzz qqq"], "val", str(index))
             for index, (path, caption) in enumerate(zip(paths, captions))]
    return out, items


@pytest.mark.slow
def test_the_temperature_is_fitted_stored_and_used(model_and_images, example_photos, one_thread):
    out, items = model_and_images
    said = []
    fitted = calibrate_confidence(load_model(out), items, None, out, said.append)
    assert fitted is not None and fitted["validation"]["right"] == pytest.approx(0.5, abs=0.05)
    assert said[0].startswith(f"confidence: temperature {fitted['temperature']:.3f} fitted on {len(items)} validation")
    stored = json.loads((out / "config.json").read_text())["extra"]["confidence"]
    assert stored == fitted and stored["rule"] == "temperature"
    captioner = Captioner(load_model(out), torch.device("cpu"))  # not load_captioner's, cached before the fit
    assert captioner.confidence == TemperatureRule(stored["temperature"])
    result = captioner(example_photos["coffee"])
    assert result.calibrated and 0 <= result.confidence <= 1
    assert result.confidence == pytest.approx(min(1.0, math.exp(result.candidates[0].score / stored["temperature"])))
    # Half the captions right: the fitted confidence averages near a half on them.
    scores = [r.candidates[0].score for r in captioner([i.image_path for i in items], when_unsure="keep")]
    assert sum(TemperatureRule(stored["temperature"]).confidence(s) for s in scores) / len(scores) == pytest.approx(
        0.5, abs=0.15)


@pytest.mark.slow
def test_the_cached_features_give_the_same_fit_as_the_images(model_and_images, one_thread):
    out, items = model_and_images
    loaded = load_model(out)
    pipeline = Pipeline(loaded, torch.device("cpu"))
    features = pipeline.features(pipeline.load_all([item.image_path for item in items]))
    assert calibrate_confidence(loaded, items, None, out, lambda text: None) == \
        calibrate_confidence(loaded, items, features, out, lambda text: None)


def test_too_few_validation_images_leave_the_model_uncalibrated(tmp_path, example_photos, one_thread):
    model, vocab = make_tiny_model()
    model.config.extra["confidence"] = {"rule": "temperature", "temperature": 2.0}  # as a starting model's might be
    out = save_model(model, vocab, tmp_path / "model")
    items = [CaptionedImage(example_photos["coffee"], ["a cup"], "val", str(i)) for i in range(5)]
    said = []
    assert calibrate_confidence(load_model(out), items, None, out, said.append) is None
    assert said == [f"confidence: not calibrated (5 validation images (at least {MIN_IMAGES} are needed)); "
                    "the model reports calibrated: false"]
    assert "confidence" not in json.loads((out / "config.json").read_text())["extra"]
    assert not load_captioner(out, "cpu")(example_photos["coffee"]).calibrated
