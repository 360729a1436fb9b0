"""Training on a small real caption set: fine-tuning the bundled model (the default), from scratch, resuming.

The data are hand-written captions (``tests/data``, COCO format) of the photos in ``examples/``
and of scikit-image's bundled photos, referenced through an image folder of two symbolic links.
The backbone is the real EfficientNet-Lite0 with its packaged ImageNet weights; its outputs are
cached once for the module.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from captioner.core.inference import Captioner
from captioner.core.captions import caption_features
from captioner.core.model.network import packed_targets
from captioner.core.options import DecodeOptions
from captioner.core.repository.storage import load_model
from captioner.training.datasets import read_dataset
from captioner.training.evaluation import score_captions
from captioner.training.features import extract_features
from captioner.training.checkpoint import read_checkpoint
from captioner.training.config import TrainConfig
from captioner.training.finetune import add_new_words, choose_start, related_words
from captioner.training.job import train_captioner
from captioner.training.schedule import Schedule
from captioner.training.validate import GREEDY
from tests.helpers.paths import EXAMPLES, ROOT

DATA = ROOT / "tests" / "data"
SPECIAL = ("<pad>", "<start>", "<end>", "<unk>")

# Most tests share a training run of the module: all are slow, so that test-fast runs none of them.
pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    import skimage

    folder = tmp_path_factory.mktemp("photos")
    (folder / "examples").symlink_to(EXAMPLES)
    (folder / "skimage").symlink_to(Path(os.path.dirname(skimage.__file__)) / "data")
    return folder


@pytest.fixture(scope="module")
def items(images):
    train, _ = read_dataset("coco", DATA / "captions_train.json", images)
    val, _ = read_dataset("coco", DATA / "captions_val.json", images)
    assert len(train) == len(val) == 17 and all(len(i.captions) == 2 for i in train)
    return train, val


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory) -> Path:
    """``CAPTIONER_CACHE`` of every run of the module: each image is encoded once per encoder output."""
    return tmp_path_factory.mktemp("cache-root")


def run_cli(*args, cache_root: Path):
    return subprocess.run([sys.executable, "-m", "captioner", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1",
                                                      "CAPTIONER_CACHE": str(cache_root)})


DATA_ARGS = ("--format", "coco", "--annotations", DATA / "captions_train.json", "--val-annotations",
             DATA / "captions_val.json")


@pytest.fixture(scope="module")
def defaults(images, cache_root, tmp_path_factory):
    """``train --from-scratch`` with every other setting left to its default."""
    out = tmp_path_factory.mktemp("defaults") / "model"
    proc = run_cli("train", *DATA_ARGS, "--images", images, "--out", out, "--from-scratch", cache_root=cache_root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc.stdout, cache_root / "features"


@pytest.fixture(scope="module")
def finetuned(images, cache_root, tmp_path_factory):
    """``train`` with no setting about where to start: it fine-tunes the bundled model. At the default
    learning rate 34 captions take many epochs to move it; 0.005 does in 12."""
    out = tmp_path_factory.mktemp("finetuned") / "model"
    proc = run_cli("train", *DATA_ARGS, "--images", images, "--out", out, "--max-epochs", 12, "--lr", 0.005,
                   cache_root=cache_root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc.stdout, cache_root / "features"


def test_defaults_report_the_vocabulary_and_steps_they_chose(defaults):
    _, stdout, _ = defaults
    vocabulary = next(line for line in stdout.splitlines() if line.startswith("vocabulary:"))
    assert "words seen at least 1 time(s)" in vocabulary and "chosen:" in vocabulary
    assert "cover 100.0% of the training caption tokens" in vocabulary
    steps = next(line for line in stdout.splitlines() if line.startswith("steps:"))
    assert "batch size 8 (chosen:" in steps and "5 steps per epoch" in steps and "early stopping after" in steps
    assert "warm-up over 10 steps" in stdout
    assert "warning" not in stdout


def test_defaults_stop_on_a_plateau_and_keep_the_best_epoch(defaults, items):
    out, stdout, cache = defaults
    state = read_checkpoint(out)
    history, best = state["history"], state["best_epoch"]
    patience = state["schedule"]["patience"]
    assert state["schedule"]["stopped"] and history[-1]["epoch"] == best + patience < 200
    assert f"best epoch {best} of {history[-1]['epoch']} (stopped early" in stdout
    eligible = [e for e in history if e["valid_captions"] >= 0.9]
    assert max(e["scores"]["CIDEr"] for e in eligible) == next(e for e in history if e["epoch"] == best)["scores"][
        "CIDEr"]
    # the saved model is that epoch's: its validation captions score what that epoch scored
    loaded = load_model(out)
    _, val = items
    found = extract_features(loaded.model, [i.image_path for i in val], cache, progress=False)
    results = caption_features(loaded.model, loaded.vocab, found.features, GREEDY)
    scores = score_captions({str(k): i.captions for k, i in enumerate(val)},
                            {str(k): r.caption for k, r in enumerate(results)}, use_java=False)
    assert scores["CIDEr"] == pytest.approx(history[best - 1]["scores"]["CIDEr"], abs=1e-9)
    card = (out / "README.md").read_text()
    assert (out / "training.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "](training.png)" in card and f"best epoch: {best}" in card and "stopped early" in card


def test_defaults_fit_the_training_captions_without_special_tokens(defaults, items):
    out, _, _ = defaults
    train, _ = items
    captioner = Captioner(load_model(out), torch.device("cpu"))
    references = {i.image_id: i.captions for i in train}
    for options in (DecodeOptions(beam_size=1), DecodeOptions(beam_size=3, no_repeat_ngram=0)):
        results = captioner([i.image_path for i in train], options, errors="return")
        for result in results:
            assert result.error is None and result.candidates
            for candidate in result.candidates:
                assert candidate.caption and not set(candidate.caption.split()) & set(SPECIAL), candidate.caption
        greedy = {i.image_id: r.caption for i, r in zip(train, results)}
    fitted = score_captions(references, greedy, use_java=False)["CIDEr"]
    constant = max(score_captions(references, {key: caption for key in references}, use_java=False)["CIDEr"]
                   for caption in {c for i in train for c in i.captions})
    assert fitted > max(4 * constant, constant + 1.0), (fitted, constant)


def test_fine_tuning_is_the_default_and_from_scratch_is_not(defaults, finetuned):
    _, scratch, _ = defaults
    _, tuned, _ = finetuned
    assert tuned.splitlines()[0].startswith("fine-tuning the bundled model (efficientnet-lite0, class probs, ")
    assert "a trained model fits this encoder" in tuned.splitlines()[0]
    assert scratch.splitlines()[0] == ("training from scratch (as asked): a new decoder and projection on the "
                                       "ImageNet backbone")
    assert "(the defaults for fine-tuning)" in tuned and "(the defaults for training from scratch)" in scratch


def test_fine_tuning_compares_with_the_start_and_the_best_constant_caption(finetuned, items):
    out, stdout, cache = finetuned
    state = read_checkpoint(out)
    base = state["baselines"]
    assert base["start"] == "the bundled model" and base["start_score"] is not None
    assert base["constant_caption"] and base["constant_score"] > 0
    # the best constant caption is the best of the training captions, scored as the validation metric is
    train, val = items
    references = {str(k): i.captions for k, i in enumerate(val)}
    constant = max(score_captions(references, {key: caption.lower() for key in references}, use_java=False)["CIDEr"]
                   for caption in {c for i in train for c in i.captions})
    assert base["constant_score"] == pytest.approx(constant, abs=1e-9)
    # zero-shot: the bundled model's greedy captions of the validation photos, before any training
    bundled = load_model(None)
    found = extract_features(bundled.model, [i.image_path for i in val], cache, progress=False)
    results = caption_features(bundled.model, bundled.vocab, found.features, GREEDY)
    zero_shot = score_captions(references, {str(k): r.caption for k, r in enumerate(results)}, use_java=False)
    assert base["start_score"] == pytest.approx(zero_shot["CIDEr"], abs=1e-9)
    card = (out / "README.md").read_text()
    assert "## Compared on the validation images (CIDEr, greedy decoding)" in card
    assert f"| the starting model, not trained (zero-shot) | {base['start_score']:.4f} |" in card
    assert f"the best constant caption ({base['constant_caption']!r})" in card
    verdict = next(line for line in stdout.splitlines() if line.startswith("best epoch") and "zero-shot" in line)
    assert f"starting model (zero-shot) {base['start_score']:.4f}" in verdict
    assert f"best constant caption ({base['constant_caption']!r}) {base['constant_score']:.4f}" in verdict


def test_new_words_become_captionable(finetuned, items):
    out, stdout, _ = finetuned
    bundled, tuned = load_model(None), load_model(out)
    added = set(tuned.vocab.tokens[len(bundled.vocab):])
    assert added and "added" in next(line for line in stdout.splitlines() if line.startswith("vocabulary:"))
    train, _ = items
    captioner = Captioner(tuned, torch.device("cpu"))
    said = {w for r in captioner([i.image_path for i in train], DecodeOptions(beam_size=1), errors="return")
            for w in r.caption.split()}
    assert said & added, (said, sorted(added)[:20])


def test_new_words_start_from_the_words_they_are_made_of():
    bundled = load_model(None)
    start = choose_start(TrainConfig())
    add_new_words(start, ["two tabby-cats and a hens", "a qwzx"], new_words="add")
    size = len(bundled.vocab)
    assert start.vocab.tokens[:size] == bundled.vocab.tokens and start.added == start.vocab.tokens[size:]
    assert set(start.added) >= {"qwzx", "hens"}
    assert related_words("hens", bundled.vocab) == ["hen"] and related_words("qwzx", bundled.vocab) == []
    old, new = bundled.model.state_dict(), start.model.state_dict()
    for name in ("decoder.embed.weight", "decoder.linear.weight", "decoder.linear.bias"):
        assert torch.equal(new[name][:size], old[name])
    index = start.vocab.index
    for name in ("decoder.embed.weight", "decoder.linear.weight"):
        assert torch.allclose(new[name][index["hens"]], old[name][bundled.vocab.index["hen"]])
        assert torch.allclose(new[name][index["qwzx"]], old[name][4:].mean(0))
    bias = new["decoder.linear.bias"]
    assert bias[index["qwzx"]] == pytest.approx(old["decoder.linear.bias"][4:].mean().item(), abs=1e-5)
    assert bias[index["hens"]] == pytest.approx(old["decoder.linear.bias"][bundled.vocab.index["hen"]].item() - 1)
    # the model starts out saying what the source said
    found = torch.randn(6, 1000).softmax(1)
    before = [r.caption for r in caption_features(bundled.model, bundled.vocab, found, GREEDY)]
    after = [r.caption for r in caption_features(start.model.eval(), start.vocab, found, GREEDY)]
    assert before == after


def test_init_from_a_model_continues_from_its_weights(defaults, items, tmp_path):
    source, _, cache = defaults
    train, val = items
    loaded = load_model(source)
    # the first validation loss of the new run is the source model's loss on that data
    found = extract_features(loaded.model, [i.image_path for i in val], cache, progress=False)
    with torch.no_grad():
        embeddings = loaded.model.encoder.project(found.features)
        total, count = 0.0, 0
        for row, item in enumerate(val):
            for caption in item.captions:
                ids = torch.tensor([loaded.vocab.encode(caption)])
                logits = loaded.model.decoder(embeddings[row:row + 1], ids, [ids.shape[1]])
                total += torch.nn.functional.cross_entropy(logits, packed_targets(ids, [ids.shape[1]]),
                                                           reduction="sum").item()
                count += ids.shape[1]
    lines = []
    config = TrainConfig(init_from=str(source), new_words="report", epochs=1, cache_dir=str(cache), device="cpu",
                         progress=False)
    result = train_captioner(val, val, tmp_path / "tuned", config, report=lines.append)
    assert result.initial_val_loss == pytest.approx(total / count, rel=1e-5)
    assert lines[0].startswith(f"fine-tuning {source}") and "as asked with --init-from" in lines[0]
    assert "read as <unk>" in lines[1]
    assert result.history[0].val_loss != result.initial_val_loss
    assert load_model(tmp_path / "tuned").vocab.tokens == loaded.vocab.tokens


def test_a_run_that_does_not_beat_its_start_keeps_the_start_and_says_so(items, cache_root, tmp_path):
    train, val = items
    nonsense = [dataclasses.replace(i, captions=["qwzx blorf", "blorf qwzx"]) for i in train]
    lines = []
    config = TrainConfig(epochs=2, batch_size=8, lr=5e-3, cache_dir=str(cache_root / "features"), device="cpu",
                         progress=False)
    result = train_captioner(nonsense, val, tmp_path / "kept", config, report=lines.append)
    assert result.kept_start and result.best_epoch == 0 and len(result.history) == 2
    assert all(e.scores["CIDEr"] < result.baselines.start_score for e in result.history)
    [verdict] = [line for line in lines if line.startswith("training did not beat the starting model (CIDEr ")]
    assert verdict.endswith("so the starting model was kept")
    bundled, kept = load_model(None), load_model(tmp_path / "kept")
    size = len(bundled.vocab)
    for name, tensor in bundled.model.state_dict().items():
        stored = kept.model.state_dict()[name]
        assert torch.equal(stored[:size] if stored.shape != tensor.shape else stored, tensor), name
    card = (tmp_path / "kept" / "README.md").read_text()
    assert "Kept: the starting model (no epoch beat it)." in card and "](training.png)" in card
    assert read_checkpoint(tmp_path / "kept")["epoch"] == 2  # the last epoch stays resumable

    # asked to keep what training gives: the better epoch of the two
    trained = train_captioner(nonsense, val, tmp_path / "trained",
                              dataclasses.replace(config, keep_better_start=False), report=lines.append)
    assert trained.best_epoch in (1, 2) and not trained.kept_start


def test_schedule_warms_up_halves_on_plateaus_and_stops():
    schedule = Schedule(warmup_steps=4, lr_schedule="plateau", patience=4)
    factors = []
    for _ in range(5):
        factors.append(schedule.factor())
        schedule.stepped()
    assert factors == [0.25, 0.5, 0.75, 1.0, 1.0]
    for improved in (True, False, False):
        schedule.epoch_done(improved)
    assert schedule.scale == 0.5 and not schedule.stopped
    schedule.epoch_done(True)
    assert schedule.stale == 0 and schedule.scale == 0.5
    for _ in range(4):
        schedule.epoch_done(False)
    assert schedule.stopped and schedule.scale == 0.125


def test_a_missing_train_extra_is_named_before_any_work(images, tmp_path):
    code = ("import sys; sys.modules['pycocoevalcap'] = None; from captioner.cli import main; "
            "sys.exit(main(sys.argv[1:]))")
    proc = subprocess.run([sys.executable, "-c", code, "train", "--format", "coco", "--annotations",
                           str(DATA / "captions_train.json"), "--images", str(images), "--out", str(tmp_path / "m")],
                          capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={**os.environ, "CAPTIONER_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.strip().count("\n") == 0 and "'train' extra" in proc.stderr and "pycocoevalcap" in proc.stderr
    assert not (tmp_path / "cache").exists() and not (tmp_path / "m").exists()


def test_the_caption_set_is_plain_coco(images):
    for name in ("captions_train.json", "captions_val.json"):
        data = json.loads((DATA / name).read_text())
        assert {"images", "annotations"} <= set(data)
        for image in data["images"]:
            assert (images / image["file_name"]).is_file(), image["file_name"]


def test_the_vocabulary_threshold_keeps_the_words_and_warns_about_unk(items):
    from captioner.training.plan import choose_vocabulary

    train, val = items
    texts = [c for i in train for c in i.captions]
    chosen = choose_vocabulary(texts, [c for i in val for c in i.captions])
    assert chosen.min_count == 1 and chosen.coverage == 1.0 and chosen.warning is None
    assert 0.5 < chosen.val_coverage < 1.0
    tutorial = choose_vocabulary(texts, min_count=4)  # the tutorial's threshold on 34 captions
    assert tutorial.why == "as asked" and tutorial.coverage < 0.7
    assert "<unk> would stand for" in tutorial.warning and "--min-word-count" in tutorial.warning
    # many captions: rare words are a small share, so a higher threshold keeps 97% of the tokens
    many = texts * 10 + ["a zebra", "a quokka"]
    bigger = choose_vocabulary(many)
    assert bigger.min_count == 5 and "zebra" not in bigger.vocab and bigger.coverage >= 0.97


def test_the_batch_size_gives_enough_steps_per_epoch():
    from captioner.training.plan import choose_batch_size, plan_steps

    assert choose_batch_size(34)[0] == 8 and choose_batch_size(5)[0] == 5
    assert choose_batch_size(400_000)[0] == 128 and choose_batch_size(1000)[0] == 32
    assert choose_batch_size(1000, 128) == (128, "as asked")
    plan = plan_steps(1000, batch_size=None, epochs=None, max_epochs=None, patience=None, warmup_steps=None,
                      lr=1e-3, lr_schedule="plateau", metric="CIDEr")
    assert (plan.steps_per_epoch, plan.patience, plan.max_epochs, plan.warmup_steps) == (32, 10, 200, 64)
    fixed = plan_steps(400_000, batch_size=128, epochs=5, max_epochs=None, patience=None, warmup_steps=0, lr=1e-3,
                       lr_schedule="constant", metric="CIDEr")
    assert fixed.patience is None and fixed.max_epochs == 5 and "no early stopping" in fixed.report()


def test_train_with_the_wrong_image_folder_names_the_real_cause(tmp_path, cache_root):
    wrong = tmp_path / "photos"
    wrong.mkdir()
    proc = run_cli("train", *DATA_ARGS, "--images", wrong, "--out", tmp_path / "m", cache_root=cache_root)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    message = proc.stderr.strip()
    assert message.startswith("error: none of the 17 images that captions_train.json names is in the image folder "
                              f"{wrong.resolve()} (e.g. examples/"), message
    assert "check --images" in message and "At least 2 images" not in message
    assert not (tmp_path / "m").exists()


def test_the_trained_model_card_reads_right(defaults):
    import importlib
    import re

    import yaml
    from huggingface_hub.repocard import REGEX_YAML_BLOCK

    from captioner.training.card import model_card
    from captioner.training.config import CardInfo

    out, _, _ = defaults
    card = (out / "README.md").read_text()
    assert "An efficientnet-lite0 encoder (features) and an LSTM decoder" in card and "A efficientnet" not in card
    meta = yaml.safe_load(REGEX_YAML_BLOCK.search(card).group(2))
    assert meta["license"] == "unknown" and "## Licence" in card and "train --license" in card
    cited = set(re.findall(r"`(captioner(?:\.\w+)+)`", card))
    assert cited, "the card names the function that computed its scores"
    for name in cited:  # every function the card cites exists
        module, _, attribute = name.rpartition(".")
        assert hasattr(importlib.import_module(module), attribute), name
    # a licence asked for is the card's; a resnet152 model is "a resnet152"
    loaded = load_model(out)
    state = read_checkpoint(out)
    from captioner.training.results import Baselines, EpochStats, TrainingResult

    history = [EpochStats(**e) for e in state["history"]]
    run = TrainingResult(history, state["initial_val_loss"], state["best_epoch"], "CIDEr", out,
                         baselines=Baselines(**state["baselines"]))
    config = dataclasses.replace(loaded.config, backbone="resnet152")
    other = model_card(config, loaded.vocab, run, CardInfo(license="cc-by-4.0"))
    assert yaml.safe_load(REGEX_YAML_BLOCK.search(other).group(2))["license"] == "cc-by-4.0"
    assert "A resnet152 encoder" in other and "## Licence" not in other
