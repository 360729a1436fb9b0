"""load_captioner: caching, devices, batches, results."""

import threading

import pytest
import torch
from PIL import Image

from captioner.core.errors import ImageError
from captioner.core.inference import load_captioner
from captioner.core.options import DecodeOptions
from captioner.core.results import CaptionResult
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
    batch = captioner(paths, beam_size=3, num_candidates=3)
    assert isinstance(batch, list) and len(batch) == 3
    for path, result in zip(paths, batch):
        alone = captioner(path, beam_size=3, num_candidates=3)
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
    from_path = captioner(path, beam_size=1)
    assert captioner(image, beam_size=1).caption == from_path.caption
    assert captioner(np.asarray(image.convert("RGB")), beam_size=1).caption == from_path.caption
    assert len(from_path.candidates) == 1


def test_class_log_prob_encoders_report_top_classes(tmp_path):
    from captioner.core.model.encoders import load_pretrained_weights
    from captioner.core.repository.storage import save_model
    from tests.helpers.models import make_tiny_model
    import skimage.data

    model, vocab = make_tiny_model(encoder_output="class_log_probs")
    load_pretrained_weights(model.encoder.backbone, "efficientnet-lite0")
    captioner = load_captioner(save_model(model, vocab, tmp_path / "m"), "cpu")
    result = captioner(skimage.data.coffee())
    labels = [label for label, _ in result.top_classes]
    assert len(labels) == 5 and labels[0] in ("espresso", "cup")
    probs = [p for _, p in result.top_classes]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001
    assert result.to_dict()["top_classes"][0]["label"] == labels[0]


def test_bad_inputs(tiny_model_dir, tmp_path):
    captioner = load_captioner(tiny_model_dir, "cpu")
    (tmp_path / "x.jpg").write_text("hello")
    with pytest.raises(ImageError, match="not an image"):
        captioner(tmp_path / "x.jpg")
    with pytest.raises(ValueError, match="beam_size"):
        captioner(torch.zeros(4, 4, 3).numpy(), beam_size=0)
    assert captioner([]) == []


# ----------------------------------------------------------------------------- the public API

def test_one_image_gives_one_result_and_a_list_gives_a_list_named_after_the_paths(tiny_model_dir, example_photos):
    captioner = load_captioner(tiny_model_dir, "cpu")
    paths = list(example_photos.values())[:3]
    one = captioner(paths[0], beam_size=2)
    assert isinstance(one, CaptionResult) and one.image == str(paths[0]) and one.candidates
    many = captioner(paths, DecodeOptions(beam_size=2), batch_size=2)
    assert [r.image for r in many] == [str(p) for p in paths] and many[0].caption == one.caption
    assert captioner(tuple(paths[:1]), beam_size=2) == [one]
    assert captioner(paths[:2], beam_size=2, names=["a", None])[0].image == "a"
    assert captioner(Image.open(paths[0]), beam_size=2).image is None  # no path: no name
    with pytest.raises(TypeError, match="either a DecodeOptions or its fields"):
        captioner(paths[0], DecodeOptions(), beam_size=2)
    with pytest.raises(ValueError, match="errors must be"):
        captioner(paths[0], errors="ignore")


def test_errors_raise_names_the_first_bad_image_and_return_keeps_the_order(tiny_model_dir, example_photos, tmp_path):
    captioner = load_captioner(tiny_model_dir, "cpu")
    good = list(example_photos.values())[:2]
    (tmp_path / "notes.jpg").write_text("hello")
    (tmp_path / "empty.png").write_bytes(b"")
    images = [good[0], tmp_path / "notes.jpg", good[1], tmp_path / "empty.png"]
    with pytest.raises(ImageError, match=r"image 2 of 4 \(.*notes\.jpg\): .*not an image"):
        captioner(images)
    results = captioner(images, errors="return", batch_size=3)
    assert [r.image for r in results] == [str(p) for p in images]
    assert [r.error is None for r in results] == [True, False, True, False]
    assert "not an image" in results[1].error and results[1].candidates == ()
    assert results[2].caption == captioner(good[1]).caption  # the bad image cost the others nothing
    single = captioner(tmp_path / "notes.jpg", errors="return")
    assert single.error and single.image == str(tmp_path / "notes.jpg")
    with pytest.raises(ImageError, match="^(?!image 1 of).*not an image"):  # one image: the reason alone
        captioner(tmp_path / "notes.jpg")


def test_bad_settings_are_refused_before_any_image_is_read(tiny_model_dir, tmp_path):
    captioner = load_captioner(tiny_model_dir, "cpu")
    with pytest.raises(ValueError, match="beam_size"):
        captioner([tmp_path / "missing.jpg"], beam_size=500)
    with pytest.raises(ValueError, match="batch_size"):
        captioner([tmp_path / "missing.jpg"], batch_size=0)


def test_the_old_names_still_work_and_say_what_replaces_them(tiny_model_dir, example_photos, tmp_path):
    captioner = load_captioner(tiny_model_dir, "cpu")
    photo = next(iter(example_photos.values()))
    with pytest.warns(DeprecationWarning, match=r"call the captioner, captioner\(images"):
        assert captioner.caption(photo, beam_size=1).caption == captioner(photo, beam_size=1).caption
    (tmp_path / "x.jpg").write_text("hello")
    with pytest.warns(DeprecationWarning, match='errors="return"'):
        rows = captioner.caption_many([photo, tmp_path / "x.jpg"], DecodeOptions(beam_size=1))
    assert rows[0].caption and rows[1].error


def test_decode_options_are_keyword_only():
    with pytest.raises(TypeError):
        DecodeOptions(3)  # noqa
    assert DecodeOptions(beam_size=3) == DecodeOptions()


def test_the_cache_is_keyed_by_where_the_model_is(tiny_model_dir, tmp_path, monkeypatch):
    first = load_captioner(tiny_model_dir, "cpu", "torch")
    monkeypatch.chdir(tiny_model_dir.parent)
    assert load_captioner(tiny_model_dir.name, "cpu", "torch") is first  # relative spelling
    assert load_captioner(tiny_model_dir / ".." / tiny_model_dir.name, "cpu", "torch") is first
    link = tmp_path / "link"
    link.symlink_to(tiny_model_dir)
    assert load_captioner(link, "cpu", "torch") is first
    monkeypatch.setenv("CAPTIONER_MODEL", str(tiny_model_dir))  # read at call time
    assert load_captioner(None, "cpu", "torch") is first
    monkeypatch.delenv("CAPTIONER_MODEL")
    fresh = load_captioner(tiny_model_dir, "cpu", "torch", cache=False)
    assert fresh is not first and load_captioner(tiny_model_dir, "cpu", "torch") is first


def test_hub_ids_key_the_cache_with_their_revision(tiny_model_dir):
    from captioner.core.repository.storage import locate

    assert locate("someone/model").key == locate("someone/model@main").key == "hub:someone/model@main"
    assert locate("someone/model@v1").key != locate("someone/model").key
    assert locate(tiny_model_dir).key == f"dir:{tiny_model_dir.resolve()}"


@pytest.mark.slow
def test_import_captioner_is_light_and_exports_the_api():
    import subprocess
    import sys

    script = ("import sys, captioner\nprint('torch' in sys.modules)\n"
              "from captioner import load_captioner, Captioner, CaptionResult, DecodeOptions, ImageError\n"
              "print('torch' in sys.modules, Captioner.__module__, sorted(captioner.__all__)[:3])\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == "False"
    assert out[1].startswith("True captioner.core.inference")


def test_with_forward_runs_every_forward_pass_inside_the_wrapper(tiny_model_dir, example_photos):
    captioner = load_captioner(tiny_model_dir, "cpu")
    passes = []

    def wrap(forward):
        def inside(pixels, options):
            passes.append(len(pixels))
            return forward(pixels, options)
        return inside

    wrapped = captioner.with_forward(wrap)
    photos = list(example_photos.values())[:3]
    assert [r.caption for r in wrapped(photos, batch_size=2)] == [r.caption for r in captioner(photos)]
    assert passes == [2, 1]
    wrapped.pipeline.caption_batch(wrapped.pipeline.prepare(photos[0])[None], DecodeOptions())
    assert passes == [2, 1, 1] and wrapped.model is captioner.model
    captioner(photos[0])
    assert passes == [2, 1, 1]  # the cached captioner itself is unchanged
