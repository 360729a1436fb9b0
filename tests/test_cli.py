"""python -m captioner: output formats, exit codes, clear errors, flags shared by the commands."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from captioner.cli import build_parser, main
from captioner.cli.arguments import decode_options
from tests.helpers.cli import run
from tests.helpers.hub_server import free_port_url
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
    assert proc.returncode == 2 and "argument --beam-size: must be a whole number from 1 to 50, got 0" in proc.stderr
    proc = run("import-legacy", "--out", str(tmp_path / "x"))
    assert proc.returncode == 1 and "--encoder" in proc.stderr


@pytest.mark.slow
def test_cli_does_not_import_gradio(tiny_model_dir, example_photos):
    photo = str(next(iter(example_photos.values())))
    code = ("import sys, runpy; sys.argv=['captioner','caption',%r,'--model',%r]\n"
            "try:\n runpy.run_module('captioner', run_name='__main__')\n"
            "except SystemExit: pass\n"
            "print('GRADIO' if 'gradio' in sys.modules else 'CLEAN', file=sys.stderr)") % (photo, str(tiny_model_dir))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.stderr.strip().endswith("CLEAN"), proc.stderr


# ----------------------------------------------------------------------------- settings, checked first

def test_a_setting_that_is_not_a_number_is_named_in_words():
    proc = run("caption", "photo.jpg", "--beam-size", "abc")
    assert proc.returncode == 2
    assert "argument --beam-size: must be a whole number from 1 to 50, got 'abc'" in proc.stderr
    assert "_positive" not in proc.stderr and "invalid" not in proc.stderr


@pytest.mark.parametrize("settings, message", [
    (["--beam-size", "500"], "argument --beam-size: must be a whole number from 1 to 50, got 500"),
    (["--beam-size", "2", "--num-candidates", "3"], "--num-candidates must be a whole number from 1 to 2 "
                                                     "(at most --beam-size (2)), got 3"),
    (["--no-repeat-ngram", "-1"], "argument --no-repeat-ngram: must be a whole number from 0 to 10, got -1"),
])
def test_settings_are_refused_before_the_model_loads(tmp_path, settings, message):
    """The model does not exist and torch is never imported: the setting is refused first."""
    script = ("import sys\nfrom captioner.cli import main\n"
              "try:\n    main(sys.argv[1:])\nexcept SystemExit as stop:\n    print('exit', stop.code)\n"
              "print('torch loaded' if 'torch' in sys.modules else 'no torch')\n")
    proc = subprocess.run([sys.executable, "-c", script, "caption", str(ROOT / "examples" / "coffee.jpg"),
                           "--model", str(tmp_path / "no-such-model"), *settings],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.stdout.split("\n")[:2] == ["exit 2", "no torch"], proc.stdout + proc.stderr
    assert message in proc.stderr and "no-such-model" not in proc.stderr


def test_explain_into_an_existing_file_is_refused_in_words(tmp_path, example_photos):
    taken = tmp_path / "heatmaps"
    taken.write_text("a file, not a folder")
    with pytest.raises(SystemExit) as stop:
        main(["caption", str(example_photos["coffee"]), "--explain", str(taken), "--model", str(tmp_path / "none")])
    assert stop.value.code == 2
    proc = run("caption", str(example_photos["coffee"]), "--explain", str(taken))
    assert proc.returncode == 2 and f"--explain {taken} is a file: name a folder for the heatmaps" in proc.stderr
    assert "Errno" not in proc.stderr and "Traceback" not in proc.stderr and taken.read_text() == "a file, not a folder"


# ----------------------------------------------------------------------------- folders

@pytest.fixture
def album(tmp_path, example_photos):
    """A folder as people have them: photos in any case of suffix, a subfolder, hidden and other files."""
    folder = tmp_path / "album"
    (folder / "2024" / "summer").mkdir(parents=True)
    (folder / ".thumbnails").mkdir()
    shutil.copy(example_photos["coffee"], folder / "b-coffee.JPG")
    shutil.copy(example_photos["rocket"], folder / "a-rocket.jpg")
    shutil.copy(example_photos["chelsea-the-cat"], folder / "2024" / "summer" / "cat.jpeg")
    shutil.copy(example_photos["camera"], folder / "2024" / "camera.jpg")
    shutil.copy(example_photos["camera"], folder / ".thumbnails" / "camera.jpg")
    shutil.copy(example_photos["camera"], folder / ".hidden.jpg")
    (folder / "notes.txt").write_text("not a photo")
    return folder


def _captioned(capsys, *args) -> list[str]:
    assert main(["caption", *args, "--json", "--backend", "torch", "--device", "cpu", "--beam-size", "1"]) == 0
    return [json.loads(line)["image"] for line in capsys.readouterr().out.splitlines()]


def test_caption_a_folder_gives_its_images_in_sorted_order(album, tiny_model_dir, capsys):
    model = ["--model", str(tiny_model_dir)]
    assert _captioned(capsys, str(album), *model) == [str(album / "a-rocket.jpg"), str(album / "b-coffee.JPG")]
    assert _captioned(capsys, str(album), "-r", *model) == [
        str(album / "2024" / "camera.jpg"), str(album / "2024" / "summer" / "cat.jpeg"),
        str(album / "a-rocket.jpg"), str(album / "b-coffee.JPG")]
    photo = str(album / "2024" / "camera.jpg")
    assert _captioned(capsys, photo, str(album), *model)[0] == photo  # files and folders, in the order given


def test_a_folder_without_images_is_refused_in_words(album, capsys):
    (album / "trip" / "day-1").mkdir(parents=True)
    shutil.copy(album / "a-rocket.jpg", album / "trip" / "day-1" / "rocket.jpg")
    with pytest.raises(SystemExit) as stop:
        main(["caption", str(album / "trip"), "--model", str(album / "none")])
    assert stop.value.code == 2
    error = capsys.readouterr().err
    assert f"the folder {album / 'trip'} holds no images" in error and "-r looks in its subfolders too" in error


# ----------------------------------------------------------------------------- Hub models offline

@pytest.mark.parametrize("where", ["offline mode", "unreachable Hub"])
def test_a_hub_model_that_is_not_cached_names_the_cause_and_the_fix(tmp_path, example_photos, where):
    env = {key: value for key, value in os.environ.items() if not key.startswith("HF_")}
    env["HF_HUB_CACHE"] = str(tmp_path / "hub-cache")
    env.update({"HF_HUB_OFFLINE": "1"} if where == "offline mode" else {"HF_ENDPOINT": free_port_url()})
    proc = subprocess.run([sys.executable, "-m", "captioner", "caption", str(example_photos["coffee"]),
                           "--model", "owner/name@v1", "--backend", "torch"],
                          env=env, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "owner/name@v1" in proc.stderr and "not in the local Hub cache" in proc.stderr, proc.stderr
    assert "missing from the repository" not in proc.stderr
    if where == "offline mode":
        assert "HF_HUB_OFFLINE" in proc.stderr
    else:
        assert "could not be reached" in proc.stderr and "run this once with the Hub reachable" in proc.stderr


# ----------------------------------------------------------------------------- flags shared by the commands

def _commands():
    parser = build_parser()
    [sub] = [action for action in parser._actions if action.choices and "caption" in action.choices]
    return sub.choices


def _flags(command):
    return {option: action for action in command._actions for option in action.option_strings}


@pytest.mark.parametrize("command, flags", [
    ("caption", {"--model", "--device", "--backend", "--beam-size", "--num-candidates", "--max-length",
                 "--no-repeat-ngram"}),
    ("score", {"--model", "--device", "--backend"}),
    ("evaluate", {"--model", "--device", "--backend", "--beam-size", "--max-length", "--no-repeat-ngram"}),
    ("caption-dataset", {"--model", "--backend", "--beam-size", "--num-candidates", "--max-length",
                         "--no-repeat-ngram"}),
    ("serve", {"--model", "--backend"}),
    ("train", {"--device"}),
    ("build-default", {"--device"}),
])
def test_commands_that_run_a_model_take_the_shared_flags(command, flags):
    assert flags <= set(_flags(_commands()[command]))


def test_each_shared_flag_has_one_help_text():
    helps: dict[str, set[str]] = {}
    # deploy-space's --model names what the Space will load, and train's --max-length is a setting of the
    # model it trains (stored in its config.json): neither is a flag of a command that runs a model.
    other_meanings = {("deploy-space", "--model"), ("train", "--max-length")}
    for name, command in _commands().items():
        for option, action in _flags(command).items():
            if (name, option) in other_meanings:
                continue
            if option in ("--model", "--device", "--backend", "--beam-size", "--num-candidates", "--max-length",
                          "--no-repeat-ngram"):
                helps.setdefault(option, set()).add(action.help)
    assert len(helps) == 7 and all(len(texts) == 1 for texts in helps.values()), helps


def test_no_flag_takes_a_name_the_commands_reserve():
    from captioner.cli.arguments import RESERVED

    for name, command in _commands().items():
        clashes = {action.dest for action in command._actions} & set(RESERVED)
        assert not clashes, f"{name}: {clashes}"


def test_decoding_flags_reach_the_options_of_every_command_that_decodes(tmp_path):
    parser = build_parser()
    for argv in (["caption", "x.jpg"], ["caption-dataset", "photos", "--out", "out.jsonl"],
                 ["evaluate", "--format", "coco", "--annotations", "a.json", "--images", "."]):
        options = decode_options(parser.parse_args([*argv, "--no-repeat-ngram", "3", "--beam-size", "4"]))
        assert (options.no_repeat_ngram, options.beam_size) == (3, 4), argv
    assert decode_options(parser.parse_args(["score", "x.jpg", "a cat"])) is None


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
