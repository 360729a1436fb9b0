"""Training on a small real caption set with the defaults, fine-tuning from a model, resuming.

The data are hand-written captions (``tests/data``, COCO format) of the photos in ``examples/``
and of scikit-image's bundled photos, referenced through an image folder of two symbolic links.
The backbone is the real EfficientNet-Lite0 with its packaged ImageNet weights; its outputs are
cached once for the module.
"""

from __future__ import annotations

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
from captioner.training.finetune import init_from
from captioner.training.loop import GREEDY, read_checkpoint, train_captioner
from captioner.training.schedule import Schedule
from tests.helpers.paths import EXAMPLES, ROOT

DATA = ROOT / "tests" / "data"
SPECIAL = ("<pad>", "<start>", "<end>", "<unk>")

pytestmark = pytest.mark.usefixtures("one_thread")


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
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("features")


def run_cli(*args, cache: Path):
    return subprocess.run([sys.executable, "-m", "captioner", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1", "CAPTIONER_CACHE":
                                                      str(cache.parent / "cache-root")})


@pytest.fixture(scope="module")
def defaults(images, tmp_path_factory):
    """``train`` with every setting left to its default."""
    out = tmp_path_factory.mktemp("defaults") / "model"
    proc = run_cli("train", "--format", "coco", "--annotations", DATA / "captions_train.json", "--val-annotations",
                   DATA / "captions_val.json", "--images", images, "--out", out, cache=out.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc.stdout, out.parent / "cache-root" / "features"


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
    result = train_captioner(val, val, tmp_path / "tuned", init_from=source, new_words="report", epochs=1,
                             cache_dir=cache, device="cpu", progress=False, report=lines.append)
    assert result.initial_val_loss == pytest.approx(total / count, rel=1e-5)
    assert lines[0].startswith(f"initialised from {source}") and "read as <unk>" in lines[0]
    assert result.history[0].val_loss != result.initial_val_loss
    assert load_model(tmp_path / "tuned").vocab.tokens == loaded.vocab.tokens

    # new words: appended, the shared rows kept, the new ones starting as the mean of the known words
    tuned = init_from(source, [c for i in val for c in i.captions], new_words="add")
    size = len(loaded.vocab)
    assert tuned.vocab.tokens[:size] == loaded.vocab.tokens and tuned.added == tuned.vocab.tokens[size:]
    assert tuned.added and not tuned.left_out and tuned.coverage == 1.0
    for name in ("decoder.embed.weight", "decoder.linear.weight", "decoder.linear.bias"):
        old, new = loaded.model.state_dict()[name], tuned.model.state_dict()[name]
        assert torch.equal(new[:size], old)
    embed = tuned.model.decoder.embed.weight
    assert torch.allclose(embed[size:], loaded.model.decoder.embed.weight[4:].mean(0).expand(len(tuned.added), -1))
    assert (tuned.model.decoder.linear.bias[size:] == loaded.model.decoder.linear.bias[4:].min()).all()


def test_resume_after_an_interruption_ends_with_the_same_model(defaults, items, tmp_path):
    _, _, cache = defaults
    train, val = items
    settings = dict(max_epochs=7, patience=3, seed=5, embed_size=64, hidden_size=64, cache_dir=cache, device="cpu",
                    progress=False)
    whole = train_captioner(train, val, tmp_path / "whole", **settings)

    def interrupt(stats):
        if stats.epoch == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_captioner(train, val, tmp_path / "resumed", on_epoch=interrupt, **settings)
    assert read_checkpoint(tmp_path / "resumed")["epoch"] == 3
    resumed = train_captioner(train, val, tmp_path / "resumed", resume=True, **settings)
    assert [e.train_loss for e in resumed.history] == [e.train_loss for e in whole.history]
    assert resumed.best_epoch == whole.best_epoch and resumed.stopped_early == whole.stopped_early
    for name in ("whole", "resumed"):
        assert read_checkpoint(tmp_path / name)["epoch"] == whole.history[-1].epoch
    a, b = (load_model(tmp_path / name).model.state_dict() for name in ("whole", "resumed"))
    assert all(torch.equal(a[key], b[key]) for key in a)
    last_a, last_b = (read_checkpoint(tmp_path / name)["model"] for name in ("whole", "resumed"))
    assert all(torch.equal(last_a[key], last_b[key]) for key in last_a)


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
