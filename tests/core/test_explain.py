"""Caption scoring and per-word Grad-CAM heatmaps: agreement with the decoder, geometry, hostile images,
faithfulness (deletion and randomisation tests) and the command line."""

from __future__ import annotations

import io
import json
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from captioner.core.model import search
from captioner.core.model.config import ModelConfig
from captioner.core.errors import ImageError
from captioner.core.explain.gradcam import DEFAULT_HEATMAP_SIDE, Layout, _geometry, _normalised, heatmap_size, visible_mask
from captioner.training.faithfulness import deletion_test, randomised_captioner, rank_correlation
from captioner.core.images.preprocess import build_preprocessor, load_for
from captioner.core.explain.overlays import overlay
from captioner.core.inference import Captioner, load_captioner
from captioner.core.repository.storage import save_model
from captioner.core.model.vocabulary import START_ID
from tests.helpers.models import make_tiny_model
from tests.helpers.cli import run


@pytest.fixture(scope="module")
def bundled():
    return load_captioner(None, "cpu")


@pytest.fixture(scope="module")
def large_photo(tmp_path_factory, example_photos) -> Path:
    """scikit-image's coffee photo upscaled to 2400 x 1600 as a JPEG: its shorter side is over twice
    the bundled model's resize side (256) times two, so the caption path decodes it at reduced size
    (JPEG DCT scaling by 1/2, to 1200 x 800)."""
    path = tmp_path_factory.mktemp("large") / "coffee-2400.jpg"
    with Image.open(example_photos["coffee"]) as photo:
        photo.convert("RGB").resize((2400, 1600), Image.Resampling.BICUBIC).save(path, quality=92)
    return path


@pytest.fixture(scope="module")
def resnet_dir(tmp_path_factory, example_photos):
    """A small random decoder on a randomly initialised ResNet-152 that emits pooled features; its
    BatchNorm statistics are measured on the example photos, so that its activations stay in range."""
    model, vocab = make_tiny_model(backbone="resnet152", end_bias=-2.0)
    preprocess = build_preprocessor(256, 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    batch = torch.stack([preprocess(Image.open(p).convert("RGB")) for p in example_photos.values()])
    backbone = model.encoder.backbone
    for module in backbone.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # a plain average over the batch
    with torch.no_grad():
        backbone.train()(batch)
    backbone.eval()
    return save_model(model, vocab, tmp_path_factory.mktemp("models") / "resnet")


def stepped_probabilities(captioner: Captioner, image, caption: str) -> list[float]:
    """The decoder's own step-by-step probabilities (``Decoder.step``, as generation runs it) of each
    word of ``caption`` and of ``<end>``, fed ``<start>`` and the words before it."""
    model = captioner.model
    ids = captioner.vocab.encode(caption)
    with torch.inference_mode():
        inputs = model.encoder.project(captioner.pipeline.features(captioner.pipeline.prepare(image)[None]))
        state, probabilities = None, []
        for position, token in enumerate(ids):
            log_probs, state = model.decoder.step(inputs, state)
            if position:
                probabilities.append(log_probs[0, token].exp().item())
            inputs = model.decoder.embed(torch.tensor([token]))
    return probabilities


@pytest.mark.slow
def test_score_agrees_with_the_decoders_greedy_probabilities(bundled, example_photos):
    photos = list(example_photos.values())
    for photo in photos:
        result = bundled(photo, beam_size=1, when_unsure="keep")  # the decoder's own words
        with torch.inference_mode():
            hypothesis = search.greedy(bundled.model.steps, bundled.model.encoder.project(
                bundled.pipeline.features(bundled.pipeline.prepare(photo)[None])), bundled.config.max_length)[0]
        assert hypothesis.tokens[0] == START_ID  # the model writes <start> first, as it was trained to
        scores = bundled.score(photo, result.caption)
        assert [s.word for s in scores] == [*result.caption.split(), "<end>"]
        greedy = [math.exp(lp) for lp in hypothesis.token_log_probs[1:]]  # the words, then <end>
        assert np.allclose([s.probability for s in scores], greedy, atol=1e-5, rtol=0)
        assert all(s.known for s in scores)
    batched = bundled.score(photos, "a cat on a table")  # one pass for all photos
    for photo, scores in zip(photos, batched):
        assert np.allclose([s.probability for s in scores],
                           stepped_probabilities(bundled, photo, "a cat on a table"), atol=1e-5, rtol=0)


@pytest.mark.slow
def test_score_for_a_pooled_features_resnet_and_unknown_words(resnet_dir, example_photos):
    captioner = load_captioner(resnet_dir, "cpu")
    photo = example_photos["coffee"]
    scores = captioner.score(photo, "A cup of zzyzx espresso!")
    assert [s.word for s in scores] == ["a", "cup", "of", "zzyzx", "espresso", "<end>"]
    assert [s.known for s in scores] == [True, True, True, False, True, True]
    assert np.allclose([s.probability for s in scores], stepped_probabilities(captioner, photo, "a cup of zzyzx espresso"),
                       atol=1e-5, rtol=0)


@pytest.mark.slow
def test_score_refuses_bad_captions_and_images(bundled, example_photos, tmp_path):
    with pytest.raises(ValueError, match="no words"):
        bundled.score(example_photos["coffee"], " ... !")
    with pytest.raises(ValueError, match="at most"):
        bundled.score(example_photos["coffee"], "cat " * 500)
    (tmp_path / "notes.png").write_text("not a photo")
    with pytest.raises(ImageError, match=r"image 2 of 2 \(.*notes\.png\): not an image"):
        bundled.score([example_photos["coffee"], tmp_path / "notes.png"], "a cup")


def _check_maps(explanation, size, heatmap_side=DEFAULT_HEATMAP_SIDE):
    """Every map is float32 in [0, 1], shaped as the decoded image (of ``size``) bounded by ``heatmap_side``."""
    assert explanation.image.size == size
    width, height = heatmap_size(size, heatmap_side)
    assert explanation.words
    for word in explanation.words:
        heatmap = word.heatmap
        assert heatmap.shape == (height, width) and heatmap.dtype == np.float32
        assert not np.isnan(heatmap).any() and heatmap.min() >= 0 and heatmap.max() <= 1
        assert 0 < word.probability <= 1


def _png(array: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode).save(buffer, format="PNG")
    return buffer.getvalue()


def hostile_images() -> dict[str, tuple[bytes, tuple[int, int]]]:
    rng = np.random.default_rng(0)
    ramp16 = (np.linspace(0, 65535, 90 * 70).reshape(70, 90)).astype(np.uint16)
    rgba = rng.integers(0, 256, (50, 80, 4), dtype=np.uint8)
    rgba[:, :40, 3] = 0  # half transparent
    return {"1x1": (_png(np.array([[[200, 30, 30]]], np.uint8)), (1, 1)),
            "wide strip": (_png(rng.integers(0, 256, (6, 3000, 3), dtype=np.uint8)), (3000, 6)),
            "tall strip": (_png(rng.integers(0, 256, (1500, 7, 3), dtype=np.uint8)), (7, 1500)),
            "16-bit": (_png(ramp16), (90, 70)),
            "rgba": (_png(rgba), (80, 50))}


@pytest.mark.parametrize("name", list(hostile_images()))
def test_heatmaps_of_hostile_images_have_the_bounded_original_size(bundled, name):
    data, size = hostile_images()[name]
    assert Image.open(io.BytesIO(data)).size == size
    _check_maps(bundled.explain(data, "a cat on a table"), size)  # the strips' maps: 1024 pixels long
    _check_maps(bundled.explain(data, "a cat on a table", heatmap_side=None), size, None)
    own = bundled.explain(data)  # the model's own caption
    if own.words:
        _check_maps(own, size)


def test_a_long_caption_gets_the_probabilities_score_gives(bundled, example_photos):
    """``explain`` takes each word's log-probability at its own step only (``own_word_log_probs``), rows
    cut to different lengths; for a long caption that is still ``score``'s teacher-forced probability."""
    caption = " ".join(["a", "cat", "sitting", "on", "a", "table", "next", "to", "cup", "of", "coffee"] * 6)
    explanation = bundled.explain(example_photos["chelsea-the-cat"], caption, heatmap_side=32)
    scores = bundled.score(example_photos["chelsea-the-cat"], caption)
    assert [w.word for w in explanation.words] == caption.split() and len(explanation.words) == 66
    assert np.allclose([w.probability for w in explanation.words], [s.probability for s in scores[:-1]],
                       atol=1e-5, rtol=0)
    assert explanation.words[-1].heatmap.shape == (21, 32)


def test_an_explanation_holds_grids_and_makes_each_map_when_asked(bundled, large_photo):
    """66 maps of 1024 x 683 would be 185 MB; the explanation holds 66 grids of 7 x 7 and makes a map on
    access, the same each time."""
    caption = " ".join(["a", "cup", "of", "coffee", "on", "a", "table", "next", "to", "a", "spoon"] * 6)
    explanation = bundled.explain(large_photo, caption)
    assert len(pickle.dumps(explanation.words)) < 1024 * 1024
    word = explanation.words[3]
    assert word.grid.shape == (7, 7) and word.grid.max() == pytest.approx(1)
    assert word.heatmap.shape == (683, 1024) and np.array_equal(word.heatmap, word.heatmap)
    assert word.heatmap is not word.heatmap  # a new array each time: holding it is the caller's choice


def test_heatmap_size():
    assert heatmap_size((3000, 6), 1024) == (1024, 2)
    assert heatmap_size((7, 1500), 1024) == (5, 1024)
    assert heatmap_size((1200, 800), 300) == (300, 200)
    assert heatmap_size((10000, 1), 100) == (100, 1)  # never 0 pixels
    assert heatmap_size((600, 400), 1024) == heatmap_size((600, 400), 600) == (600, 400)
    assert heatmap_size((6000, 4000), None) == (6000, 4000)


@pytest.mark.parametrize("side", [0, -5, True, 2.5, "512"])
def test_a_bad_heatmap_side_is_refused_before_any_work(bundled, side, tmp_path):
    with pytest.raises(ValueError, match="heatmap_side"):
        bundled.explain(tmp_path / "missing.jpg", "a cat", heatmap_side=side)  # not ImageError: checked first


def test_a_large_photo_is_explained_from_the_pixels_the_caption_path_uses(bundled, large_photo):
    """The photo is decoded as ``caption`` and ``score`` decode it (reduced), so the caption and each
    word's probability are theirs; its maps are 1024 pixels on the longer side by default."""
    decoded = load_for(large_photo, bundled.pipeline.preprocess)
    assert decoded.size == (1200, 800)  # reduced: 2400 x 1600 in the file
    result = bundled(large_photo, beam_size=3)
    explanation = bundled.explain(large_photo)
    assert explanation.caption == result.caption and explanation.words
    assert explanation.image.size == decoded.size
    assert np.array_equal(np.asarray(explanation.image), np.asarray(decoded))
    scores = bundled.score(large_photo, explanation.caption)
    assert np.allclose([w.probability for w in explanation.words], [s.probability for s in scores[:-1]],
                       atol=1e-5, rtol=0)
    assert np.allclose([w.probability for w in explanation.words], [p for _, p in result.words], atol=1e-5, rtol=0)
    _check_maps(explanation, (1200, 800))
    assert explanation.words[0].heatmap.shape == (683, 1024)
    with Image.open(large_photo) as photo:  # an opened image: reduced after decoding (by 3), as captioning does
        photo.load()
        again = bundled.explain(photo, explanation.caption, heatmap_side=256)
        _check_maps(again, load_for(photo, bundled.pipeline.preprocess).size, 256)
        scores = bundled.score(photo, explanation.caption)
    assert again.image.size == (800, 534) and again.words[0].heatmap.shape == (171, 256)
    assert np.allclose([w.probability for w in again.words], [s.probability for s in scores[:-1]], atol=1e-5, rtol=0)


def test_a_bounded_map_is_the_full_map_downsampled(bundled, large_photo):
    """A map bounded to 150 pixels equals the decoded-size map (1200 x 800) averaged over 8 x 8 blocks.

    Both sample one bilinear interpolation of the encoder's 7 x 7 grid: ``sum_ij g_ij r_i(y) c_j(x)``,
    hat functions ``r``, ``c`` with slopes of +-1/cell and kinks at cell centres (a cell spans 100
    pixels here: the 224-pixel crop of 256 covers 700 of the 800 rows). A block's mean of that sum is
    ``sum_ij g_ij mean(r_i) mean(c_j)``, and a linear piece's mean is its value at the block's centre,
    where the bounded map samples it; so they differ only in blocks a kink crosses. Along one axis the
    map's slope changes there by at most 2/cell (values in [0, 1]), which moves a block's mean by at
    most that times width/8: 8 / (4 * 100) = 0.02. Both axes, plus their product term (at most
    0.04 * 0.04): 0.042. Blocks that straddle the edge of the region the model sees (the map drops to 0
    there) are left out; blocks wholly outside it are 0 in both."""
    caption = "a cup of coffee on a table"
    full = bundled.explain(large_photo, caption, heatmap_side=None)
    bounded = bundled.explain(large_photo, caption, heatmap_side=150)
    assert full.words[0].heatmap.shape == (800, 1200) and bounded.words[0].heatmap.shape == (100, 150)
    seen = visible_mask((1200, 800), bundled.config).reshape(100, 8, 150, 8).mean((1, 3))
    visible = visible_mask((1200, 800), bundled.config, (100, 150))  # the mask on the bounded maps' grid
    assert visible[seen == 1].all() and not visible[seen == 0].any()
    differences = []
    for big, small in zip(full.words, bounded.words):
        assert big.probability == pytest.approx(small.probability, abs=1e-6)
        averaged = big.heatmap.reshape(100, 8, 150, 8).mean((1, 3))
        assert (small.heatmap[seen == 0] == 0).all()
        differences.append(np.abs(averaged - small.heatmap)[seen == 1].max())
    assert sum(w.heatmap.max() > 0.5 for w in full.words) >= 3
    assert max(differences) <= 0.042, differences  # 0.026 measured


def test_an_overlay_is_drawn_at_its_heatmaps_size(bundled, large_photo):
    explanation = bundled.explain(large_photo, "a cup of coffee", heatmap_side=300)
    heatmap = explanation.words[1].heatmap
    assert overlay(explanation.image, heatmap).size == (300, 200)
    assert overlay(explanation.image, heatmap, max_side=150).size == (150, 100)
    with pytest.raises(ValueError, match="the heatmap is 300 x 199"):
        overlay(explanation.image, heatmap[:-1])
    full = bundled.explain(large_photo, "a cup of coffee", heatmap_side=None).words[1].heatmap
    assert overlay(explanation.image, full, max_side=1024).size == (1024, 683)


@pytest.mark.slow
def test_heatmaps_of_photos_for_every_kind_of_encoder(bundled, resnet_dir, tiny_model_dir, example_photos):
    """Class probabilities (the bundled EfficientNet-Lite0: the gradient passes the classifier head),
    pooled features (ResNet-152, EfficientNet-Lite0)."""
    for captioner in (bundled, load_captioner(resnet_dir, "cpu"), load_captioner(tiny_model_dir, "cpu")):
        for photo in (example_photos["chelsea-the-cat"], example_photos["grace-hopper"]):
            explanation = captioner.explain(photo, "a cat sits on a table")
            _check_maps(explanation, Image.open(photo).size)
            assert [w.word for w in explanation.words] == "a cat sits on a table".split()
            scores = captioner.score(photo, "a cat sits on a table")
            assert np.allclose([w.probability for w in explanation.words], [s.probability for s in scores[:-1]],
                               atol=1e-5, rtol=0)
            assert sum(w.heatmap.max() > 0 for w in explanation.words) >= 3  # maps with something in them
    own = bundled.explain(example_photos["coffee"])
    assert own.caption == bundled(example_photos["coffee"], beam_size=3).caption
    assert len(own.words) == len(own.caption.split())


def test_the_map_sits_where_preprocessing_took_the_pixels_from():
    """A map that equals the model's input itself (a horizontal ramp) is laid back onto the original
    image where those input pixels came from: the crop's window for shorter_side, the whole image for
    squash, the middle of a very elongated image."""
    for resize_mode, size in (("shorter_side", (600, 400)), ("shorter_side", (300, 900)),
                              ("squash", (640, 200)), ("shorter_side", (3000, 60))):
        config = ModelConfig(backbone="efficientnet-lite0", vocab_size=10, resize_mode=resize_mode,
                             mean=(0, 0, 0), std=(1, 1, 1))
        width, height = size
        ramp = np.tile(np.linspace(0, 1, width, dtype=np.float32), (height, 1))
        image = Image.fromarray(np.rint(np.repeat(ramp[..., None], 3, 2) * 255).astype(np.uint8))
        seen = build_preprocessor(config.resize, config.image_size, config.mean, config.std,
                                  resize_mode=resize_mode)(image)[0].numpy()  # what the model gets
        back = Layout(size, _geometry(size, config), seen.shape).resample(_normalised(seen))
        visible = visible_mask(size, config)
        expected = ramp / ramp[visible].max()
        inner = visible & np.roll(visible, 3, 1) & np.roll(visible, -3, 1)  # away from the window's edges
        assert np.abs(back - expected)[inner].max() < 0.02, (resize_mode, size)
        assert (back[~visible] == 0).all()
        if resize_mode == "squash":
            assert visible.all()
        else:
            columns = np.flatnonzero(visible.any(0))
            assert abs((columns[0] + columns[-1]) / 2 - width / 2) <= 1  # centred


@pytest.mark.slow
def test_deletion_test_passes_on_the_shipped_examples(bundled, example_photos):
    """Replacing a word's 20% most heated pixels lowers its probability more than 20% random pixels:
    on average and on most photos."""
    heated, random, passed = [], [], 0
    for photo in example_photos.values():
        deletions = deletion_test(bundled, bundled.explain(photo), fraction=0.2, seed=0)
        heated += [d.heat_drop for d in deletions]
        random += [d.random_drop for d in deletions]
        passed += np.mean([d.heat_drop for d in deletions]) > np.mean([d.random_drop for d in deletions])
    assert np.mean(heated) > np.mean(random)
    assert passed > len(example_photos) / 2


@pytest.mark.slow
def test_maps_change_when_the_last_block_is_randomised(bundled, example_photos):
    randomised = randomised_captioner(None, "cpu", seed=0)
    assert not torch.equal(randomised.model.encoder.backbone.net._conv_head.weight,
                           bundled.model.encoder.backbone.net._conv_head.weight)
    own, shuffled = [], []
    for photo in example_photos.values():
        explanation = bundled.explain(photo)
        image = explanation.image
        visible = visible_mask(image.size, bundled.config)
        pixels = np.asarray(image, np.float32) + np.random.default_rng(0).normal(0, 3, (image.height, image.width, 3))
        again = bundled.explain(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), explanation.caption)
        other = randomised.explain(photo, explanation.caption)
        own += [rank_correlation(a.heatmap, b.heatmap, visible) for a, b in zip(explanation.words, again.words)]
        shuffled += [rank_correlation(a.heatmap, b.heatmap, visible) for a, b in zip(explanation.words, other.words)]
    own_mean, shuffled_mean = np.nanmean(own), np.nanmean(shuffled)
    assert own_mean > 0.5 and shuffled_mean < own_mean - 0.3, (own_mean, shuffled_mean)


def test_rank_correlation():
    rng = np.random.default_rng(0)
    a = rng.random((40, 30))
    assert rank_correlation(a, a) == pytest.approx(1.0)
    assert rank_correlation(a, a ** 3) == pytest.approx(1.0)  # ranks only
    assert rank_correlation(a, -a) == pytest.approx(-1.0)
    assert abs(rank_correlation(a, rng.random((40, 30)))) < 0.1
    assert math.isnan(rank_correlation(a, np.zeros_like(a)))


# --- command line -------------------------------------------------------------------------------

def test_cli_score_plain_and_json(tiny_model_dir, example_photos):
    photo = str(example_photos["coffee"])
    proc = run("score", photo, "A cup of zzyzx.", "--model", str(tiny_model_dir))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert [line.split("\t")[0] for line in lines[:5]] == ["a", "cup", "of", "zzyzx", "<end>"]
    assert "not in the vocabulary" in lines[3] and lines[-1].startswith("log-probability")
    proc = run("score", photo, "a cup of espresso", "--model", str(tiny_model_dir), "--json")
    data = json.loads(proc.stdout)
    expected = load_captioner(tiny_model_dir, "cpu").score(photo, "a cup of espresso")
    assert [w["word"] for w in data["words"]] == [s.word for s in expected]
    assert np.allclose([w["probability"] for w in data["words"]], [s.probability for s in expected], atol=1e-6)
    assert data["log_probability"] == pytest.approx(sum(math.log(s.probability) for s in expected), abs=1e-4)
    proc = run("score", photo, "?!", "--model", str(tiny_model_dir))
    assert proc.returncode == 1 and "no words" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_cli_caption_explain_writes_one_overlay_per_word(example_photos, large_photo, tmp_path):
    """Overlays have the photo's size as decoded for captioning, at most 1024 pixels on the longer side:
    the 2400 x 1600 JPEG is decoded at 1200 x 800, and its overlays are 1024 x 683."""
    model, vocab = make_tiny_model(end_bias=-2.0)  # captions of several words
    model_dir = save_model(model, vocab, tmp_path / "model")
    photos = [str(example_photos["coffee"]), str(example_photos["rocket"]), str(large_photo)]
    sizes = [Image.open(photos[0]).size, Image.open(photos[1]).size, (1024, 683)]
    proc = run("caption", *photos, "--model", str(model_dir), "--json", "--explain", str(tmp_path / "maps"))
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    for line, photo, size in zip(lines, photos, sizes):
        words = line["caption"].split()
        assert words and [o["word"] for o in line["overlays"]] == words
        for number, (drawn, word) in enumerate(zip(line["overlays"], words), 1):
            path = tmp_path / "maps" / f"{Path(photo).stem}.{number:02d}-{word}.png"
            assert drawn["path"] == str(path)
            assert Image.open(path).size == size
    assert sorted(p.name for p in (tmp_path / "maps").iterdir()) == sorted(
        Path(o["path"]).name for line in lines for o in line["overlays"])

