"""The int8 encoder: made from calibration photos, checked against fp32 captions on others, chosen by precision."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from captioner.core import inference
from captioner.core.backends.agreement import MIN_PHOTOS, NEEDED, Agreement, card_section, with_card_section
from captioner.core.backends.calibration import CalibrationError, photo_sets, split_photos
from captioner.core.backends.choice import onnxruntime_available, requested_precision, resolve_backend
from captioner.core.backends.int8 import export_int8_to_repo
from captioner.core.backends.onnx_export import SHIPPED_EXPORT, SHIPPED_INT8, BackendUnavailable, verify_shipped
from captioner.core.errors import CaptionerError
from captioner.core.inference import Captioner, load_captioner
from captioner.core.repository.storage import BUNDLED_MODEL_DIR, load_model, save_model
from tests.helpers.int8 import ship_passing_int8
from tests.helpers.models import make_tiny_model
from tests.helpers.paths import ROOT
from tests.helpers.photos import write_flat_pictures, write_real_photos

needs_exporter = pytest.mark.skipif(not onnxruntime_available(), reason="onnxruntime is not installed")
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def real_photos(tmp_path_factory) -> Path:
    return write_real_photos(tmp_path_factory.mktemp("real-photos"))


@pytest.fixture
def onnx_cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("CAPTIONER_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("CAPTIONER_CALIBRATION", raising=False)
    monkeypatch.delenv("CAPTIONER_PRECISION", raising=False)
    return tmp_path / "cache" / "onnx"


def int8_warnings(caught) -> list[str]:
    return [str(w.message) for w in caught if "int8" in str(w.message)]


@needs_exporter
@pytest.mark.slow
def test_a_badly_calibrated_encoder_fails_its_check_and_auto_uses_fp32(real_photos, tmp_path, onnx_cache,
                                                                     example_photos, one_thread):
    model_dir = Path(shutil.copytree(BUNDLED_MODEL_DIR, tmp_path / "model"))
    photos = photo_sets(write_flat_pictures(tmp_path / "flat"), check=real_photos)
    assert len(photos.check) >= MIN_PHOTOS
    written, agreement = export_int8_to_repo(model_dir, photos)
    assert model_dir / SHIPPED_INT8 in written and model_dir / "README.md" in written
    assert agreement.photos == len(photos.check) and agreement.verdict == "failed"
    assert min(agreement.greedy, agreement.beam) < NEEDED * agreement.photos
    assert verify_shipped(load_model(model_dir, CPU)) == [SHIPPED_EXPORT, Path("onnx/decoder_step.onnx"), SHIPPED_INT8]

    import onnx

    recorded = {p.key: p.value for p in onnx.load(str(model_dir / SHIPPED_INT8)).metadata_props}
    assert recorded["precision"] == "int8" and recorded["agreement"] == "failed"
    assert Agreement.from_metadata(recorded) == agreement
    assert recorded["calibration_photos"] == "24"
    card = (model_dir / "README.md").read_text()
    assert card.startswith((BUNDLED_MODEL_DIR / "README.md").read_text().rstrip("\n"))
    assert f"| greedy | {agreement.greedy} of {agreement.photos} (" in card and "Verdict: failed" in card

    reference = Captioner(load_model(model_dir, CPU), CPU, "onnx", "fp32")
    with pytest.warns(UserWarning) as caught:
        auto = Captioner(load_model(model_dir, CPU), CPU, "onnx", "auto")
    [line] = int8_warnings(caught)
    assert line == f"{model_dir / SHIPPED_INT8}: {agreement.line()}"
    assert re.search(r"int8 encoder failed its check \(identical captions on \d+ held-out photos: greedy \d+\.\d%, "
                     r"beam 3 \d+\.\d%; at least 98% needed\): refused: the fp32 encoder is used$", line)
    assert (auto.precision, auto.pipeline.onnx.origin, auto.info["precision"]) == ("fp32", "shipped", "fp32")
    assert auto.pipeline.onnx.path == model_dir / SHIPPED_EXPORT and auto.pipeline.onnx.precision_note == line
    photo = example_photos["coffee"]
    assert auto(photo).candidates[0].score == pytest.approx(reference(photo).candidates[0].score,
                                                                    abs=1e-6)

    with pytest.warns(UserWarning, match="used as asked"):
        forced = Captioner(load_model(model_dir, CPU), CPU, "onnx", "int8")
    assert (forced.precision, forced.pipeline.onnx.path) == ("int8", model_dir / SHIPPED_INT8)
    assert forced(photo).caption  # the int8 graph runs


@pytest.mark.slow
@needs_exporter
def test_auto_uses_an_int8_encoder_whose_check_passed(tiny_model_copy, real_photos, onnx_cache, tmp_path, one_thread):
    ship_passing_int8(tiny_model_copy, real_photos)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        auto = Captioner(load_model(tiny_model_copy, CPU), CPU, "onnx", "auto")
    onnx = auto.pipeline.onnx
    assert (auto.precision, onnx.origin, onnx.path) == ("int8", "shipped", tiny_model_copy / SHIPPED_INT8)
    fp32 = Captioner(load_model(tiny_model_copy, CPU), CPU, "onnx", "fp32")
    assert fp32.pipeline.onnx.path == tiny_model_copy / SHIPPED_EXPORT
    assert Captioner(load_model(tiny_model_copy, CPU), CPU, "torch", "auto").precision == "fp32"

    other = save_model(*make_tiny_model(seed=4), tmp_path / "other")  # other weights, the first one's graphs
    shutil.copytree(tiny_model_copy / "onnx", other / "onnx")
    with pytest.warns(UserWarning, match=r"refusing .*encoder_model_int8\.onnx: its recorded weights_sha256 do not "
                                         r"match"):
        refused = Captioner(load_model(other, CPU), CPU, "onnx", "auto")
    assert refused.precision == "fp32"
    assert refused.pipeline.onnx.precision_note.startswith("this model has no int8 encoder")


@needs_exporter
def test_without_an_int8_encoder_auto_is_quiet_and_int8_says_how_to_make_one(tiny_model_dir, onnx_cache, one_thread):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert Captioner(load_model(tiny_model_dir, CPU), CPU, "onnx", "auto").precision == "fp32"
    with pytest.warns(UserWarning) as caught:
        captioner = Captioner(load_model(tiny_model_dir, CPU), CPU, "onnx", "int8")
    assert captioner.precision == "fp32"
    assert int8_warnings(caught) == [
        "this model has no int8 encoder: make one with `python -m captioner export-onnx DIR --int8 --calibration "
        "PHOTOS`, or set CAPTIONER_CALIBRATION to a folder of photos; the fp32 encoder is used"]


def cache_entries(cache: Path) -> list[Path]:
    return sorted(cache.glob("efficientnet-lite0-int8-*.onnx"))


def intact(path: Path) -> bool:
    return hashlib.sha256(path.read_bytes()).hexdigest() == path.stem.rsplit("-", 1)[1]


@needs_exporter
@pytest.mark.slow
def test_the_cached_int8_encoder_is_made_from_the_calibration_folder_and_rebuilt_when_damaged(
        tiny_model_dir, real_photos, onnx_cache, monkeypatch, example_photos, one_thread):
    monkeypatch.setenv("CAPTIONER_CALIBRATION", str(real_photos))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tiny random model's verdict is whatever it is
        first = Captioner(load_model(tiny_model_dir, CPU), CPU, "onnx", "int8")
    [path] = cache_entries(onnx_cache)
    assert (first.precision, first.pipeline.onnx.origin, first.pipeline.onnx.path) == ("int8", "exported", path)
    assert intact(path)
    photo = example_photos["coffee"]
    expected = first(photo)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = Captioner(load_model(tiny_model_dir, CPU), CPU, "onnx", "int8")
    assert (again.pipeline.onnx.origin, again.pipeline.onnx.path) == ("cache", path)

    path.write_bytes(path.read_bytes()[:-64] + bytes(64))  # same size, last bytes zeroed
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rebuilt = Captioner(load_model(tiny_model_dir, CPU), CPU, "onnx", "int8")
    [path] = cache_entries(onnx_cache)
    assert (rebuilt.precision, rebuilt.pipeline.onnx.origin) == ("int8", "exported") and intact(path)
    assert rebuilt(photo).caption == expected.caption  # the same photos make the same graph

    monkeypatch.delenv("CAPTIONER_CALIBRATION")  # the entry stays in use without the folder
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert Captioner(load_model(tiny_model_dir, CPU), CPU, "onnx", "int8").pipeline.onnx.origin == "cache"


def test_the_precision_choice(monkeypatch):
    monkeypatch.delenv("CAPTIONER_PRECISION", raising=False)
    assert requested_precision() == "auto" and requested_precision(" INT8 ") == "int8"
    monkeypatch.setenv("CAPTIONER_PRECISION", "fp32")
    assert requested_precision() == "fp32" and requested_precision("int8") == "int8"
    monkeypatch.setenv("CAPTIONER_PRECISION", "fp16")
    with pytest.raises(CaptionerError, match="unknown precision 'fp16': use one of auto, fp32, int8"):
        requested_precision()
    monkeypatch.delenv("CAPTIONER_PRECISION")
    with pytest.raises(BackendUnavailable, match="--precision int8 runs on the onnx backend"):
        resolve_backend("torch", CPU, "int8")
    with pytest.raises(BackendUnavailable, match=r"int8 runs on the CPU \(the onnx backend\), not cuda"):
        resolve_backend("auto", torch.device("cuda"), "int8")
    assert resolve_backend("auto", torch.device("cuda"), "auto") == "torch"
    if onnxruntime_available():
        assert resolve_backend("auto", CPU, "int8") == "onnx"


@needs_exporter
def test_load_captioner_keeps_one_captioner_per_precision(tiny_model_dir, onnx_cache, monkeypatch, one_thread):
    inference._cache.clear()
    try:
        auto = load_captioner(tiny_model_dir, "cpu")
        assert auto.precision == "fp32" and load_captioner(tiny_model_dir, "cpu", "onnx", "auto") is auto
        fp32 = load_captioner(tiny_model_dir, "cpu", precision="fp32")
        assert fp32 is not auto and fp32.precision == "fp32"
        monkeypatch.setenv("CAPTIONER_PRECISION", "fp32")
        assert load_captioner(tiny_model_dir, "cpu") is fp32
    finally:
        inference._cache.clear()


def test_a_forged_agreement_counts_as_no_check():
    good = Agreement(60, 60, 59)
    assert good.verdict == "passed" and Agreement.from_metadata(good.to_metadata()) == good
    assert Agreement(49, 49, 49).verdict == "unchecked" and Agreement(60, 58, 60).verdict == "failed"
    for forged in ({**good.to_metadata(), "agreement_greedy": "61"}, {**good.to_metadata(), "agreement": "failed"},
                   {**Agreement(60, 50, 60).to_metadata(), "agreement": "passed"},
                   {key: value for key, value in good.to_metadata().items() if key != "agreement_beam3"}):
        assert Agreement.from_metadata(forged) is None


def test_the_model_card_gets_one_int8_section():
    card = "---\nlicense: mit\n---\n\n# A model\n\n## Training\n\nSome text.\n"
    first = with_card_section(card, card_section(Agreement(80, 70, 71), "40 real photos"))
    assert first.startswith(card) and first.count("## Int8 encoder (ONNX Runtime)") == 1
    assert "| greedy | 70 of 80 (87.5%) |" in first and "Verdict: failed" in first
    middle = with_card_section(first, card_section(Agreement(80, 80, 80), "40 real photos"))
    assert middle.count("## Int8 encoder (ONNX Runtime)") == 1 and "Verdict: passed" in middle
    assert "Verdict: failed" not in middle and middle.startswith(card)
    inside = card.replace("## Training", "## Int8 encoder (ONNX Runtime)\n\nold\n\n## Training")
    replaced = with_card_section(inside, card_section(Agreement(80, 80, 80), "40 real photos"))
    assert "old" not in replaced and replaced.index("Verdict: passed") < replaced.index("## Training")


def test_calibration_photos_are_split_by_content(tmp_path, real_photos):
    photos = sorted(real_photos.iterdir())
    calibration, check = split_photos(photos)
    assert not {p.read_bytes() for p in calibration} & {p.read_bytes() for p in check}
    assert 0.3 < len(check) / len(photos) < 0.7
    renamed = tmp_path / "renamed"
    renamed.mkdir()
    for index, path in enumerate(reversed(photos)):  # other names, other order, and a duplicate
        shutil.copy(path, renamed / f"x{index:03d}{path.suffix}")
    shutil.copy(photos[0], renamed / ".hidden.jpg")
    shutil.copy(photos[0], renamed / "again.jpg")
    again = split_photos(sorted(renamed.iterdir()))
    assert [sorted(p.read_bytes() for p in side) for side in again] == \
        [sorted(p.read_bytes() for p in side) for side in (calibration, check)]
    with pytest.raises(CalibrationError, match="no photo folder"):
        photo_sets(tmp_path / "nowhere")
    few = tmp_path / "few"
    few.mkdir()
    for path in photos[:10]:
        shutil.copy(path, few / path.name)
    with pytest.raises(CalibrationError, match=r"calibration photos in .*few: an int8 encoder needs at least 20"):
        photo_sets(few)


def _cli(*args: str) -> subprocess.CompletedProcess:
    import os

    env = {key: value for key, value in os.environ.items()
           if key not in ("CAPTIONER_CALIBRATION", "CAPTIONER_PRECISION")}
    return subprocess.run([sys.executable, "-m", "captioner", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=1200, env={**env, "OMP_NUM_THREADS": "1"})


@pytest.mark.slow
def test_export_onnx_int8_refuses_bad_photo_folders_in_one_line_before_any_work(tiny_model_copy, tmp_path):
    before = sorted(path.name for path in tiny_model_copy.iterdir())
    nowhere = tmp_path / "nowhere"
    for args, message in (
            (["--calibration", str(tmp_path)], "error: --calibration and --check choose the photos of the int8 "
                                               "encoder: add --int8"),
            (["--int8"], "error: --int8 needs photos: --calibration DIR (a folder of 100 or more photos like those "
                         "the model will caption), or set CAPTIONER_CALIBRATION"),
            (["--int8", "--calibration", str(nowhere)], f"error: no photo folder {str(nowhere)!r}"),
            (["--int8", "--calibration", str(tmp_path)], f"error: 0 calibration photos in {tmp_path}: an int8 encoder "
                                                         "needs at least 20 (about 100 or more calibrate it well)")):
        done = _cli("export-onnx", str(tiny_model_copy), *args)
        assert (done.returncode, done.stdout, done.stderr.splitlines()) == (1, "", [message])
    assert sorted(path.name for path in tiny_model_copy.iterdir()) == before


@needs_exporter
@pytest.mark.slow
def test_export_onnx_int8_writes_the_graph_the_card_and_one_verdict_line(tiny_model_copy, real_photos, tmp_path):
    flat = write_flat_pictures(tmp_path / "flat")
    done = _cli("export-onnx", str(tiny_model_copy), "--int8", "--calibration", str(flat), "--check", str(real_photos))
    assert done.returncode == 0, done.stderr
    *wrote, verdict = done.stdout.splitlines()
    names = ("encoder_model.onnx", "decoder_step.onnx", "encoder_model_int8.onnx")
    assert [line.split(" (")[0] for line in wrote] == [f"wrote {tiny_model_copy / 'onnx' / name}" for name in names] + [
        f"wrote {tiny_model_copy / 'README.md'}"]
    assert re.fullmatch(r"int8 encoder (passed|failed) its check \(identical captions on \d+ held-out photos: "
                        r"greedy \d+\.\d%, beam 3 \d+\.\d%; at least 98% needed\).*", verdict), verdict
    assert done.stderr.splitlines()[:2] == ["calibrating the int8 encoder on 24 photos",
                                            f"checking its captions on {len(list(real_photos.iterdir()))} other photos"]
    assert "## Int8 encoder (ONNX Runtime)" in (tiny_model_copy / "README.md").read_text()
