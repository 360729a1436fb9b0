"""Training on a small rendered data set: it learns, it is reproducible, it resumes, the CLI works.

The images are rendered shapes (tests/shapes_data.py) encoded by the real EfficientNet-Lite0
with its packaged ImageNet weights, frozen, at a 96 px crop; its outputs are cached once per module.
"""

from __future__ import annotations

import json
import re

import pytest
import torch
import yaml
from huggingface_hub.repocard import REGEX_YAML_BLOCK

from captioner.core.errors import CaptionerError
from captioner.core.inference import Captioner
from captioner.core.model.encoders import load_pretrained_weights
from captioner.core.model.network import ShowAndTell
from captioner.core.model.vocabulary import Vocabulary
from captioner.core.repository.storage import MODEL_FILES, load_model
from captioner.training.checkpoint import CHECKPOINT, read_checkpoint
from captioner.training.config import CardInfo, TrainConfig
from captioner.training.evaluate import evaluate_captioner
from captioner.training.evaluation import METRICS, score_captions
from captioner.training.features import extract_features
from captioner.training.fit import fit_decoder
from captioner.training.job import build_config, train_captioner
from captioner.training.validate import most_common_caption
from tests.helpers.cli import run
from tests.helpers.shapes import make_shapes, write_csv

IMAGE_SIZE = 96
SMALL = {"embed_size": 64, "hidden_size": 64}


# Most tests share a training run of the module: all are slow, so that test-fast runs none of them.
pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """288 images: 192 train, 48 val, 48 test (one of each of the 48 scenes in val and in test)."""
    items = make_shapes(tmp_path_factory.mktemp("shapes") / "images")
    return {split: [i for i in items if i.split == split] for split in ("train", "val", "test")}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("feature-cache")


@pytest.fixture(scope="module")
def data(shapes, cache_dir):
    """Vocabulary and cached backbone outputs of every split."""
    vocab = Vocabulary.build([c for i in shapes["train"] for c in i.captions])
    model = new_model(vocab)
    features = {}
    for split, items in shapes.items():
        found = extract_features(model, [i.image_path for i in items], cache_dir, progress=False)
        assert found.kept == list(range(len(items)))
        features[split] = (found.features, [i.captions for i in items])
    return vocab, features


def new_model(vocab: Vocabulary, seed: int = 0) -> ShowAndTell:
    torch.manual_seed(seed)
    model = ShowAndTell(build_config(len(vocab), image_size=IMAGE_SIZE, **SMALL))
    load_pretrained_weights(model.encoder.backbone, "efficientnet-lite0")
    return model


def fit(data, out_dir, epochs, seed=0, resume=False, **options):
    vocab, features = data
    model = new_model(vocab, seed)
    config = TrainConfig(epochs=epochs, batch_size=16, lr=5e-3, lr_schedule="constant", seed=seed, device="cpu",
                         resume=resume, progress=False, **options)
    result = fit_decoder(model, vocab, *features["train"], *features["val"], out_dir, config)
    return model, result


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("trained") / "model"
    card = CardInfo(data="Rendered shapes with template captions.", datasets=("rendered-shapes",), license="mit")
    model, result = fit(data, out, epochs=8, card=card)
    return out, result


def test_training_lowers_the_validation_loss(trained):
    _, result = trained
    losses = [e.val_loss for e in result.history]
    assert [e.epoch for e in result.history] == list(range(1, 9))
    assert losses[-1] < losses[0] < result.initial_val_loss
    assert losses[-1] < 0.5 * result.initial_val_loss
    assert all(e.scores["CIDEr"] is not None and e.captions_per_s > 0 for e in result.history)


def test_trained_model_beats_the_constant_caption_baseline_on_held_out_images(trained, shapes):
    out, _ = trained
    captioner = Captioner(load_model(out), torch.device("cpu"))
    evaluation = evaluate_captioner(captioner, shapes["test"], beam_sizes=(1, 3), use_java=False, progress=False)
    references = {i.image_id: i.captions for i in shapes["test"]}
    baseline_caption = most_common_caption([i.captions for i in shapes["train"]])
    baseline = score_captions(references, {key: baseline_caption for key in references}, use_java=False)
    for decoding in ("greedy", "beam-3"):
        scores = evaluation.decodings[decoding]
        assert scores["BLEU-4"] > baseline["BLEU-4"] + 0.1, (decoding, scores, baseline)
        assert scores["CIDEr"] > baseline["CIDEr"] + 0.5, (decoding, scores, baseline)
    # colour and shape are what a pooled CNN feature keeps; the captions name them right
    right = sum(all(word in evaluation.captions["greedy"][i.image_id] for word in i.captions[0].split()[1:3])
                for i in shapes["test"])
    assert right >= 0.75 * len(shapes["test"])


def test_output_is_a_model_directory_with_a_model_card(trained):
    out, result = trained
    assert {p.name for p in out.iterdir()} >= {*MODEL_FILES, CHECKPOINT}
    card = (out / "README.md").read_text()
    match = REGEX_YAML_BLOCK.search(card)
    meta = yaml.safe_load(match.group(2))
    assert meta["library_name"] == "captioner" and meta["pipeline_tag"] == "image-to-text"
    assert meta["license"] == "mit" and meta["datasets"] == ["rendered-shapes"]
    best = result.best
    assert "Rendered shapes with template captions." in card
    assert f"epochs: 8; best epoch: {best.epoch}" in card
    assert f"| CIDEr | {best.scores['CIDEr']:.4f} |" in card
    assert len(re.findall(r"^\| \d", card, re.M)) == 8  # one history row per epoch
    state = read_checkpoint(out)  # torch.load(weights_only=True)
    assert state["epoch"] == 8 and state["best_epoch"] == best.epoch
    assert not any(k.startswith("encoder.backbone.") for k in state["model"])  # frozen: stored as a fingerprint


def test_the_same_seed_gives_the_same_model_and_another_seed_does_not(data, tmp_path):
    first, run1 = fit(data, tmp_path / "a", epochs=2, metric=None)
    second, run2 = fit(data, tmp_path / "b", epochs=2, metric=None)
    other, run3 = fit(data, tmp_path / "c", epochs=2, seed=1, metric=None)
    assert [e.train_loss for e in run1.history] == [e.train_loss for e in run2.history]
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))
    assert not torch.equal(first.decoder.linear.weight, other.decoder.linear.weight)
    assert run3.history[-1].train_loss != run1.history[-1].train_loss


def test_resume_continues_from_the_last_checkpoint(data, tmp_path):
    straight, whole = fit(data, tmp_path / "straight", epochs=3)
    _, part = fit(data, tmp_path / "resumed", epochs=1)
    assert [e.epoch for e in part.history] == [1]
    resumed, rest = fit(data, tmp_path / "resumed", epochs=3, resume=True, seed=123)  # the seed lives in the state
    assert [e.epoch for e in rest.history] == [1, 2, 3]
    assert rest.history[0] == part.history[0] and rest.initial_val_loss == part.initial_val_loss
    assert [e.train_loss for e in rest.history] == [e.train_loss for e in whole.history]
    assert all(torch.equal(a, b) for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()))
    assert rest.best_epoch == whole.best_epoch
    best_a, best_b = load_model(tmp_path / "straight"), load_model(tmp_path / "resumed")
    assert torch.equal(best_a.model.decoder.linear.weight, best_b.model.decoder.linear.weight)

    with pytest.raises(CaptionerError, match="resume"):  # a fresh run must not overwrite a run in progress
        fit(data, tmp_path / "resumed", epochs=4)
    with pytest.raises(CaptionerError, match="nothing to resume"):
        fit(data, tmp_path / "nothing", epochs=2, resume=True)


def test_fine_tuning_the_backbone_trains_it_without_a_feature_cache(shapes, tmp_path):
    items = shapes["train"][:12]
    cache = tmp_path / "cache"
    config = TrainConfig(from_scratch=True, train_backbone=True, epochs=1, batch_size=12, image_size=48,
                         min_word_count=1, cache_dir=str(cache), metric=None, device="cpu", progress=False, **SMALL)
    result = train_captioner(items, shapes["val"][:6], tmp_path / "out", config)
    assert not cache.exists()
    trained = load_model(tmp_path / "out")
    pretrained = new_model(Vocabulary.build([c for i in items for c in i.captions], min_count=1))
    changed = [not torch.equal(a, b) for a, b in zip(trained.model.encoder.backbone.parameters(),
                                                    pretrained.encoder.backbone.parameters())]
    assert sum(changed) > len(changed) // 2
    assert result.history[0].val_loss < result.initial_val_loss
    assert "encoder.backbone.net._fc.weight" in read_checkpoint(tmp_path / "out")["model"]


def run_cli(*args):
    return run(*args)


def test_command_line_train_resume_and_evaluate(shapes, data, cache_dir, tmp_path):
    images = shapes["train"][0].image_path.parent
    annotations = write_csv(shapes["train"] + shapes["val"] + shapes["test"], tmp_path / "captions.csv")
    with open(annotations, "a") as file:
        file.write("missing.png,a picture that is not there,train\n")
    shards = sorted(cache_dir.rglob("*.safetensors"))
    out = tmp_path / "model"
    common = ["--format", "csv", "--annotations", annotations, "--images", images, "--out", out,
              "--batch-size", 16, "--lr", 5e-3, "--image-size", IMAGE_SIZE, "--embed-size", 64, "--hidden-size", 64,
              "--cache-dir", cache_dir, "--device", "cpu", "--dataset-name", "rendered-shapes"]
    train = run_cli("train", *common, "--epochs", 1)
    assert train.returncode == 0, train.stderr
    assert train.stdout.startswith("training from scratch: the bundled model's encoder does not fit what was asked "
                                   "(image-size 224, not 96, embed-size 256, not 64, hidden-size 256, not 64)")
    assert "Loaded 288 images" in train.stdout and "missing image file: 1" in train.stdout
    assert "Training on 192 images; validating on 48 (the data's own validation split)" in train.stdout
    assert "best epoch 1 of 1" in train.stdout and f"wrote {out}" in train.stdout
    assert sorted(cache_dir.rglob("*.safetensors")) == shards  # every image came from the cache
    # The end of train calibrates the confidence on the validation split, or says why it could not.
    fitted = json.loads((out / "config.json").read_text())["extra"].get("confidence")
    if fitted is None:
        assert "confidence: not calibrated (all 48 validation captions were" in train.stdout
    else:
        assert fitted["rule"] == "temperature" and 0 < fitted["temperature"] < 1000
        assert f"confidence: temperature {fitted['temperature']:.3f} fitted on 48 validation images" in train.stdout

    resumed = run_cli("train", *common, "--epochs", 2, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "of 2:" in resumed.stdout and "epoch 2/2" in resumed.stderr and "epoch 1/" not in resumed.stderr
    card = (out / "README.md").read_text()
    assert "epochs: 2" in card and "rendered-shapes" in card

    report = tmp_path / "eval.json"
    evaluate = run_cli("evaluate", "--model", out, "--format", "csv", "--annotations", annotations, "--images",
                       images, "--beam-size", 2, "--compare-greedy", "--no-java", "--json-out", report)
    assert evaluate.returncode == 0, evaluate.stderr
    lines = evaluate.stdout.splitlines()
    assert lines[0] == "# beam-2 (48 images)" and "# greedy (48 images)" in lines
    for name in METRICS:
        assert sum(line.split()[0] == name for line in lines) == 2
    bleu4 = float(next(line.split()[1] for line in lines if line.startswith("BLEU-4")))
    assert 0 < bleu4 <= 1
    saved = json.loads(report.read_text())
    assert saved["scores"]["beam-2"]["BLEU-4"] == pytest.approx(bleu4, abs=1e-4)
    assert len(saved["images"]) == 48 and saved["data"]["split"] == "test" and saved["model"] == str(out)
    first = saved["images"][0]
    assert set(first["captions"]) == {"beam-2", "greedy"} and len(first["references"]) == 3

    bad = run_cli("train", *common, "--epochs", 3)  # the checkpoint is there: refuse to start over
    assert bad.returncode == 1 and "--resume" in bad.stderr and "Traceback" not in bad.stderr


def data_args(tmp_path, fmt, annotations, **extra):
    import argparse

    values = {"format": fmt, "annotations": str(annotations), "images": str(tmp_path), "split_file": None,
              "val_annotations": None, "val_images": None, "val_fraction": 0.25, "seed": 0}
    return argparse.Namespace(**{**values, **extra})


def test_validation_images_come_from_the_data_split_or_a_hold_out(tmp_path):
    from captioner.cli.training import _training_data

    names = [f"{i}.jpg" for i in range(8)]
    for name in names:
        (tmp_path / name).write_bytes(b"\xff\xd8\xff not decoded here")
    splits = ["train"] * 4 + ["restval", "val", "val", "test"]
    karpathy = tmp_path / "dataset_flickr8k.json"
    karpathy.write_text(json.dumps({"images": [{"filename": n, "split": s, "imgid": i, "sentences": [{"raw": "a dog"}]}
                                               for i, (n, s) in enumerate(zip(names, splits))]}))
    train, val, _, how = _training_data(data_args(tmp_path, "karpathy", karpathy))
    assert [i.image_path.name for i in train] == names[:5] and [i.image_path.name for i in val] == names[5:7]
    assert how == "the data's own validation split"

    tokens = tmp_path / "Flickr8k.token.txt"
    tokens.write_text("".join(f"{n}#0\ta dog runs\n" for n in names))
    (tmp_path / "Flickr_8k.trainImages.txt").write_text("\n".join(names[:6]))
    (tmp_path / "Flickr_8k.devImages.txt").write_text("\n".join(names[6:7]))
    train, val, reports, _ = _training_data(data_args(tmp_path, "flickr8k", tokens))
    assert len(train) == 6 and [i.image_path.name for i in val] == ["6.jpg"] and len(reports) == 2

    coco = tmp_path / "captions_train2014.json"
    coco.write_text(json.dumps({"images": [{"id": i, "file_name": n} for i, n in enumerate(names)],
                                "annotations": [{"image_id": i, "caption": "a cat"} for i in range(8)]}))
    train, val, _, how = _training_data(data_args(tmp_path, "coco", coco))
    assert len(train) == 6 and len(val) == 2 and "held-out 0.25" in how
    assert not {i.image_id for i in train} & {i.image_id for i in val}

    val_coco = tmp_path / "captions_val2014.json"
    val_coco.write_text(json.dumps({"images": [{"id": 1, "file_name": names[0]}],
                                    "annotations": [{"image_id": 1, "caption": "a cat"}]}))
    train, val, reports, how = _training_data(data_args(tmp_path, "coco", coco, val_annotations=val_coco))
    assert len(train) == 8 and len(val) == 1 and len(reports) == 2 and "captions_val2014.json" in how
