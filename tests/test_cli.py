"""python -m captioner: output formats, exit codes, clear errors."""

import json
import subprocess
import sys

import pytest

from tests.helpers.cli import run
from tests.helpers.paths import ROOT


def test_caption_json_lines(tiny_model_dir, example_photos, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really")
    photos = [str(p) for p in list(example_photos.values())[:2]]
    proc = run("caption", *photos, str(bad), "--model", str(tiny_model_dir), "--json", "--beam-size", "2")
    assert proc.returncode == 1  # one image failed
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [line["image"] for line in lines] == [*photos, str(bad)]
    for line in lines[:2]:
        assert isinstance(line["caption"], str) and line["model"] == str(tiny_model_dir)
        assert len(line["candidates"]) == 2
        assert all({"caption", "score"} <= set(c) for c in line["candidates"])
    assert "truncated or corrupt" in lines[2]["error"]
    assert "broken.jpg" in proc.stderr and "Traceback" not in proc.stderr


def test_plain_output_and_greedy(tiny_model_dir, example_photos):
    photo = str(next(iter(example_photos.values())))
    proc = run("caption", photo, "--model", str(tiny_model_dir), "--beam-size", "1", "--max-length", "5")
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.strip().split()) <= 5


def test_missing_model_and_bad_arguments(tmp_path, example_photos):
    photo = str(next(iter(example_photos.values())))
    proc = run("caption", photo, "--model", str(tmp_path / "nowhere"))
    assert proc.returncode == 1 and "nowhere" in proc.stderr and "Traceback" not in proc.stderr
    proc = run("caption", photo, "--beam-size", "0")
    assert proc.returncode == 2 and "must be at least 1" in proc.stderr
    proc = run("import-legacy", "--out", str(tmp_path / "x"))
    assert proc.returncode == 1 and "--encoder" in proc.stderr


def test_cli_does_not_import_gradio(tiny_model_dir, example_photos):
    photo = str(next(iter(example_photos.values())))
    code = ("import sys, runpy; sys.argv=['captioner','caption',%r,'--model',%r]\n"
            "try:\n runpy.run_module('captioner', run_name='__main__')\n"
            "except SystemExit: pass\n"
            "print('GRADIO' if 'gradio' in sys.modules else 'CLEAN', file=sys.stderr)") % (photo, str(tiny_model_dir))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.stderr.strip().endswith("CLEAN"), proc.stderr


def test_json_confidence_is_the_librarys_and_when_unsure_is_an_option(example_photos, tmp_path):
    from captioner.core.inference import load_captioner
    from tests.helpers.odd_images import odd_images

    blank = tmp_path / "blank.png"
    odd_images()["blank"].save(blank)
    photos = [str(example_photos["chelsea-the-cat"]), str(example_photos["rocket"]), str(blank)]
    library = load_captioner(None, "cpu", "torch")
    for flags, mode in (((), "generalise"), (("--when-unsure", "keep"), "keep")):
        proc = run("caption", *photos, "--json", "--backend", "torch", *flags)
        assert proc.returncode == 0, proc.stderr
        for line, photo in zip(map(json.loads, proc.stdout.splitlines()), photos):
            expected = library(photo, when_unsure=mode).to_dict()
            assert line["caption"] == expected["caption"] and line["calibrated"] is True
            assert line["confidence"] == pytest.approx(expected["confidence"], abs=1e-6)
            assert 0 <= line["confidence"] <= 1
            assert [c["confidence"] for c in line["candidates"]] == pytest.approx(
                [c["confidence"] for c in expected["candidates"]], abs=1e-6)
    proc = run("caption", photos[0], "--when-unsure", "maybe")
    assert proc.returncode == 2 and "invalid choice: 'maybe'" in proc.stderr
