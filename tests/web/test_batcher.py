"""SharedCaptioner (concurrent single-image calls sharing forward passes) and choose_model."""

from __future__ import annotations

import dataclasses
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from captioner.core.errors import ImageError
from captioner.core.options import DecodeOptions
from captioner.web.batcher import SharedCaptioner, choose_model
from captioner.core.inference import load_captioner


@pytest.fixture
def shared(tiny_model_dir):
    shared = SharedCaptioner(load_captioner(tiny_model_dir, "cpu"), max_batch_size=4)
    yield shared
    shared.close()


def test_results_match_the_captioner_and_repeats_come_from_memory(shared, example_photos):
    photo = example_photos["coffee"]
    result = shared.caption(photo, DecodeOptions(beam_size=3))
    want = shared.captioner(photo, beam_size=3, num_candidates=3)
    assert result.caption == want.caption
    assert [c.score for c in result.candidates] == pytest.approx([c.score for c in want.candidates], abs=1e-5)
    assert shared.forward_passes == 1
    again = shared.caption(photo.read_bytes(), DecodeOptions(beam_size=3, num_candidates=3))  # same pixels
    assert again.caption == result.caption and shared.forward_passes == 1
    with pytest.raises(dataclasses.FrozenInstanceError):  # shared between callers, so immutable
        again.caption = "changed"
    assert isinstance(again.candidates, tuple) and isinstance(again.candidates[0].words, tuple)
    shared.caption(photo, DecodeOptions(beam_size=1))  # other options: the model runs again
    assert shared.forward_passes == 2


def test_calls_waiting_together_share_one_forward_pass(shared, example_photos):
    """The worker is held inside its first pass while seven more calls queue up; they then run as
    two passes of at most max_batch_size=4, each result the one its own image gets alone."""
    captioner = shared.captioner
    pipeline = captioner.pipeline
    original = pipeline.caption_batch
    release, entered = threading.Event(), threading.Event()

    def held(*args, **kwargs):
        entered.set()
        release.wait(30)
        return original(*args, **kwargs)

    pipeline.caption_batch = held
    photos = list(example_photos.values())
    images = [photos[i % len(photos)] for i in range(8)]
    options = [DecodeOptions(beam_size=2, max_length=4 + i) if i == 0 else DecodeOptions(beam_size=2, max_length=6)
               for i in range(8)]
    try:
        with ThreadPoolExecutor(8) as pool:
            first = pool.submit(shared.caption, images[0], options[0])
            assert entered.wait(30)
            rest = [pool.submit(shared.caption, image, option) for image, option in zip(images[1:], options[1:])]
            deadline = time.monotonic() + 30
            while shared.pending < 7 and time.monotonic() < deadline:
                time.sleep(0.01)
            release.set()
            results = [first.result(), *(future.result() for future in rest)]
    finally:
        del pipeline.caption_batch
    assert shared.batch_sizes == [1, 4, 3]
    for image, option, result in zip(images, options, results):
        alone = captioner(image, beam_size=2, num_candidates=2, max_length=option.max_length)
        assert result.caption == alone.caption


def test_a_bad_image_fails_only_its_own_call(shared, example_photos, tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 50)
    with ThreadPoolExecutor(4) as pool:
        good = [pool.submit(shared.caption, photo) for photo in list(example_photos.values())[:3]]
        bad = pool.submit(shared.caption, tmp_path / "bad.jpg")
        with pytest.raises(ImageError, match="truncated or corrupt"):
            bad.result()
        assert all(future.result().candidates for future in good)
    with pytest.raises(ValueError, match="beam_size"):
        shared.caption(example_photos["coffee"], DecodeOptions(beam_size=0))
    with pytest.raises(ValueError, match="num_candidates"):
        shared.caption(example_photos["coffee"], DecodeOptions(num_candidates=-1))
    assert shared.caption(example_photos["coffee"]).candidates  # the worker survived the errors


def test_warm_fills_the_memory_and_reports_bad_files(shared, example_photos, tmp_path):
    (tmp_path / "notes.png").write_text("hello")
    problems = shared.warm([*example_photos.values(), tmp_path / "notes.png"])
    assert problems[:-1] == [None] * len(example_photos) and "not an image" in problems[-1]
    passes = shared.forward_passes
    for photo in example_photos.values():
        shared.caption(photo)
    assert shared.forward_passes == passes


def test_choose_model(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.delenv("CAPTIONER_MODEL", raising=False)
    chosen = choose_model(tiny_model_dir, "cpu", bundled=None)
    assert chosen.captioner is not None and chosen.notice is None

    missing = choose_model(tmp_path / "nope", "cpu", bundled=None)
    assert missing.captioner is None and missing.notice.startswith("No model is available") and "nope" in missing.notice

    monkeypatch.setenv("CAPTIONER_MODEL", str(tmp_path / "typo"))
    fallen_back = choose_model(None, "cpu", bundled=tiny_model_dir)
    assert fallen_back.captioner.info["path"] == str(tiny_model_dir)
    assert "typo" in fallen_back.notice and "bundled model is shown instead" in fallen_back.notice

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{")
    neither = choose_model(tmp_path / "typo", "cpu", bundled=broken)
    assert neither.captioner is None and "could not be loaded either" in neither.notice

    monkeypatch.delenv("CAPTIONER_MODEL")
    no_bundled = choose_model(None, "cpu", bundled=tmp_path / "no-bundled-model")
    assert no_bundled.captioner is None and "bundled model is missing" in no_bundled.notice
    assert "CAPTIONER_MODEL" in no_bundled.notice

    bundled_only = choose_model(None, "cpu", bundled=tiny_model_dir)
    assert bundled_only.captioner.info["path"] == str(tiny_model_dir) and bundled_only.notice is None
