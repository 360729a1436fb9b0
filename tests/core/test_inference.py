"""load_captioner: caching, devices, batches, results."""

import threading

import pytest
import torch
from PIL import Image

from captioner.core.errors import ImageError
from captioner.core.inference import load_captioner
from captioner.core.devices import select_device


def test_cached_per_source_and_device(tiny_model_dir):
    first = load_captioner(tiny_model_dir, "cpu")
    assert load_captioner(tiny_model_dir, "cpu") is first
    assert load_captioner(str(tiny_model_dir), torch.device("cpu")) is first


def test_loading_from_many_threads_gives_one_captioner(tiny_model_copy):
    found = []
    threads = [threading.Thread(target=lambda: found.append(load_captioner(tiny_model_copy, "cpu")))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(c) for c in found}) == 1


def test_device_selection(monkeypatch):
    monkeypatch.setenv("CAPTIONER_DEVICE", "cpu")
    assert select_device() == torch.device("cpu")
    monkeypatch.delenv("CAPTIONER_DEVICE")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert select_device().type in (expected, "mps")
    assert select_device("cpu") == torch.device("cpu")


def test_batch_equals_single_and_results_are_complete(tiny_model_dir, example_photos):
    captioner = load_captioner(tiny_model_dir, "cpu")
    paths = list(example_photos.values())[:3]
    batch = captioner.caption(paths, beam_size=3, num_candidates=3)
    assert isinstance(batch, list) and len(batch) == 3
    for path, result in zip(paths, batch):
        alone = captioner.caption(path, beam_size=3, num_candidates=3)
        assert alone.caption == result.caption
        assert [c.caption for c in alone.candidates] == [c.caption for c in result.candidates]
        assert len(result.candidates) == 3
        assert [w for w, _ in result.words] == result.caption.split()
        assert all(0 < p <= 1 for _, p in result.words)
        for text in [result.caption] + [c.caption for c in result.candidates]:
            assert not {"<start>", "<end>", "<pad>"} & set(text.split())
        assert result.top_classes is None  # the fixture's encoder emits pooled features


def test_accepts_pil_and_arrays_and_greedy(tiny_model_dir, example_photos):
    captioner = load_captioner(tiny_model_dir, "cpu")
    path = next(iter(example_photos.values()))
    image = Image.open(path)
    import numpy as np
    from_path = captioner.caption(path, beam_size=1)
    assert captioner.caption(image, beam_size=1).caption == from_path.caption
    assert captioner.caption(np.asarray(image.convert("RGB")), beam_size=1).caption == from_path.caption
    assert len(from_path.candidates) == 1


def test_class_log_prob_encoders_report_top_classes(tmp_path):
    from captioner.core.model.encoders import load_pretrained_weights
    from captioner.core.repository.storage import save_model
    from tests.helpers.models import make_tiny_model
    import skimage.data

    model, vocab = make_tiny_model(encoder_output="class_log_probs")
    load_pretrained_weights(model.encoder.backbone, "efficientnet-lite0")
    captioner = load_captioner(save_model(model, vocab, tmp_path / "m"), "cpu")
    result = captioner.caption(skimage.data.coffee())
    labels = [label for label, _ in result.top_classes]
    assert len(labels) == 5 and labels[0] in ("espresso", "cup")
    probs = [p for _, p in result.top_classes]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001
    assert result.to_dict()["top_classes"][0]["label"] == labels[0]


def test_bad_inputs(tiny_model_dir, tmp_path):
    captioner = load_captioner(tiny_model_dir, "cpu")
    (tmp_path / "x.jpg").write_text("hello")
    with pytest.raises(ImageError, match="not an image"):
        captioner.caption(tmp_path / "x.jpg")
    with pytest.raises(ValueError, match="beam_size"):
        captioner.caption(torch.zeros(4, 4, 3).numpy(), beam_size=0)
    assert captioner.caption([]) == []
