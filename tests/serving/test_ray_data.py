"""caption-dataset on Ray Data, on a real local Ray cluster (2 CPUs, started once for this module and
always shut down), with the bundled model and real photos: the same captions as the single-process
CLI, one output file or a folder of parts, a stopped run resumed with every input once, and a
terminal that shows a progress bar and a summary, not Ray's own output."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from PIL import Image, ImageEnhance, ImageOps

from tests.helpers.paths import EXAMPLES, ROOT
from tests.serving.conftest import driver_env

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]
RAY_NOISE = re.compile(r"Fatal Python error|SIGABRT|Mutex|Traceback|core_worker|raylet|\bE \d|WARNING|INFO")


def test_without_ray_both_commands_say_what_to_install():
    script = ("import sys; sys.modules['ray'] = None\n"  # what an environment without Ray looks like to imports
              "from captioner.cli import main\n"
              "codes = [main(['caption-dataset', 'photos', '--out', 'out']), main(['serve'])]\n"
              "sys.exit(0 if codes == [1, 1] else 3)")
    run = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=driver_env(), capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 2
    assert all(line.startswith("error: ") and "needs the 'ray' extra" in line and "captioner[ray]" in line
               for line in lines), lines


# --- fixtures: photos, the single-process CLI's answers ----------------------------------------

def _variations(image: Image.Image) -> list[Image.Image]:
    width, height = image.size
    return [image, ImageOps.mirror(image), image.rotate(90, expand=True),
            image.crop((width // 8, height // 8, width * 7 // 8, height * 7 // 8)),
            ImageEnhance.Brightness(image).enhance(0.6), image.resize((width // 2, height // 2))]


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> tuple[Path, list[Path], list[Path]]:
    """A folder tree of 40 real photos (the examples, and scikit-image photos with generated
    variations) and 3 broken files: (folder, good files, broken files)."""
    import skimage.data

    root = tmp_path_factory.mktemp("collection")
    good = []
    (root / "examples").mkdir()
    for path in sorted(EXAMPLES.glob("*.jpg")):
        good.append(Path(root / "examples" / path.name))
        good[-1].write_bytes(path.read_bytes())
    for name in ("astronaut", "coffee", "chelsea", "rocket", "camera", "immunohistochemistry", "hubble_deep_field"):
        folder = root / "generated" / name
        folder.mkdir(parents=True)
        for index, image in enumerate(_variations(Image.fromarray(np.asarray(getattr(skimage.data, name)())))):
            if len(good) == 40:
                break
            path = folder / f"{name}-{index}.{'png' if index % 3 == 2 else 'jpg'}"
            image.convert("RGB").save(path)
            good.append(path)
    assert len(good) == 40
    broken = root / "broken"
    broken.mkdir()
    (broken / "notes.jpg").write_text("not a photo, just text\n")
    (broken / "truncated.jpg").write_bytes((EXAMPLES / "rocket.jpg").read_bytes()[:2000])
    (broken / "empty.png").write_bytes(b"")
    return root, good, sorted(broken.iterdir())


@pytest.fixture(scope="module")
def cli_results(photos) -> dict[str, dict]:
    """What the single-process ``caption --json`` command says about every file, by path."""
    _, good, broken = photos
    run = subprocess.run([sys.executable, "-m", "captioner", "caption", "--json", *map(str, good + broken)],
                         cwd=ROOT, env=driver_env(), capture_output=True, text=True, timeout=600)
    assert run.returncode == 1, run.stderr  # 1: some files could not be captioned
    results = [json.loads(line) for line in run.stdout.splitlines()]
    assert len(results) == 43
    return {result["image"]: result for result in results}


def _cli(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "captioner", *args], cwd=ROOT, env=driver_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def _same_as_the_cli(rows: list[dict], cli_results: dict[str, dict]) -> None:
    for row in rows:
        expected = cli_results[row["path"]]
        assert (row["caption"], row["error"]) == (expected.get("caption"), expected.get("error")), row["path"]


# --- caption-dataset --------------------------------------------------------------------------

def test_caption_dataset_matches_the_cli_and_resume_does_no_model_work(cluster, photos, cli_results, tmp_path):
    from captioner.core.inference import load_captioner
    from captioner.serving.ray_data import caption_dataset, read_results

    root, good, broken = photos
    out = tmp_path / "captions"
    run = caption_dataset(root, out, workers=2, batch_size=4, rows_per_part=10)
    assert (run.inputs, run.captioned, run.failed, run.parts, run.workers) == (43, 43, 3, 5, 2)
    assert run.backends == (load_captioner(None, "cpu").backend,)  # the workers' auto chose as this process does
    assert sorted(path.name for path in out.iterdir()) == sorted(path.name for path in out.glob("part-*.parquet"))
    rows = read_results(str(out))
    assert len(rows) == 43
    assert sorted(row["path"] for row in rows) == sorted(str(path) for path in good + broken)
    by_path = {row["path"]: row for row in rows}
    for path in good:
        row, expected = by_path[str(path)], cli_results[str(path)]
        assert row["error"] is None
        assert row["caption"] == expected["caption"], path
        assert [c["caption"] for c in row["candidates"]] == [c["caption"] for c in expected["candidates"]]
        assert row["confidence"] == pytest.approx(expected["confidence"], rel=1e-4) and 0 <= row["confidence"] <= 1
        assert row["calibrated"] is expected["calibrated"] is True  # the bundled model's fitted confidence
        mentions, wanted = row["candidates"][0]["mentions"], expected["candidates"][0]["mentions"]
        assert [m["phrase"] for m in mentions] == [m["phrase"] for m in wanted]
        assert [m["probability"] for m in mentions] == pytest.approx([m["probability"] for m in wanted], rel=1e-4)
        assert row["model"] == expected["model"]
    assert len({by_path[str(path)]["caption"] for path in good}) > 5  # the photos get different captions
    assert {by_path[str(path)]["error"] for path in broken} == {
        "not an image (it is a text file)", "truncated or corrupt image", "empty file"}
    _same_as_the_cli(rows, cli_results)

    parts = {path: path.stat().st_mtime_ns for path in out.iterdir()}
    again = caption_dataset(root, out, resume=True)
    assert (again.skipped, again.captioned, again.parts, again.workers) == (43, 0, 0, 0)
    assert {path: path.stat().st_mtime_ns for path in out.iterdir()} == parts
    with pytest.raises(Exception, match="--resume"):  # an OUT with results is not written over by accident
        caption_dataset(root, out)


def test_a_file_target_is_one_file_in_its_format_and_an_existing_file_is_refused(cluster, photos, cli_results,
                                                                                  tmp_path):
    from captioner.core.errors import CaptionerError
    from captioner.serving.ray_data import caption_dataset, read_results

    root, good, _ = photos
    table = tmp_path / "list.csv"
    table.write_text("path\n" + "".join(f"{path}\n" for path in good[:5]) + f"{root}/examples/missing.jpg\n")
    written = {}
    for name in ("alt-text.jsonl", "alt-text.csv", "alt-text.parquet"):
        run = caption_dataset(table, tmp_path / name, workers=1, rows_per_part=2)
        assert run.file_rows == 6 and run.parts == 3 and f"wrote {tmp_path / name} (6 rows)" in run.summary()
        rows = read_results(str(tmp_path / name))
        assert len(rows) == 6
        _same_as_the_cli([row for row in rows if "missing" not in row["path"]], cli_results)
        written[name] = [(row["path"], row["caption"]) for row in rows]
    assert written["alt-text.jsonl"] == written["alt-text.csv"] == written["alt-text.parquet"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["alt-text.csv", "alt-text.jsonl",
                                                                 "alt-text.parquet", "list.csv"]  # no folders left
    assert (tmp_path / "alt-text.csv").read_text().splitlines()[0].startswith("path,caption,confidence,calibrated,score")
    assert len((tmp_path / "alt-text.jsonl").read_text().splitlines()) == 6

    existing = tmp_path / "alt-text.jsonl"
    before = existing.read_bytes()
    for resume in (False, True):
        with pytest.raises(CaptionerError, match="alt-text.jsonl already exists: choose another name or remove it"):
            caption_dataset(table, existing, resume=resume)
    assert existing.read_bytes() == before
    with pytest.raises(ValueError, match="--format parquet does not match"):
        caption_dataset(table, tmp_path / "x.csv", fmt="parquet")


def test_a_stopped_run_resumed_shows_a_progress_bar_and_a_summary_not_rays_output(photos, cli_results, tmp_path):
    """The command as a user runs it (its own local cluster), stopped with Ctrl-C after a few parts
    and run again with --resume: every input ends up in the file once, and the terminal shows only
    the log file's name, a progress bar and the summary; Ray's lines are in the log file."""
    from captioner.serving.ray_data import read_results

    root, good, broken = photos
    out = tmp_path / "alt-text.jsonl"
    parts = tmp_path / ".alt-text.jsonl.parts"
    args = ["caption-dataset", str(root), "--out", str(out), "--workers", "1", "--batch-size", "1",
            "--rows-per-part", "2"]
    job = _cli(*args, start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while len(list(parts.glob("part-*.jsonl"))) < 3 and job.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        os.killpg(job.pid, signal.SIGINT)  # Ctrl-C in a terminal: the whole process group
        stdout, stderr = job.communicate(timeout=300)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    assert job.returncode == 130, stderr[-3000:]
    assert stderr.rstrip().endswith("interrupted") and not RAY_NOISE.search(stderr + stdout), stderr[-3000:]
    assert not out.exists() and 0 < len(list(parts.glob("part-*.jsonl"))) < 22
    _no_ray_processes_left(job.pid)

    resumed = _cli(*args, "--resume", start_new_session=True)
    stdout, stderr = resumed.communicate(timeout=900)
    assert resumed.returncode == 0, stderr[-3000:]
    assert not RAY_NOISE.search(stderr + stdout), (stderr + stdout)[-3000:]
    log = re.match(r"Ray's messages go to (\S+)\n", stderr)
    assert log and Path(log[1]).is_file() and "Started a local Ray instance" in Path(log[1]).read_text()
    assert re.search(r"captioning: 100%\|\S+\| \d+/\d+", stderr)  # the progress bar, finished
    summary = stdout.strip()
    assert re.fullmatch(rf"captioned \d+ of \d+ images( \([123] could not be read: see the error column\))?; \d+ "
                        rf"done by an earlier run were kept \(\w+ backend\); wrote {re.escape(str(out))} \(43 rows\) "
                        r"in [\d.]+ s", summary), summary
    rows = read_results(str(out))
    assert sorted(row["path"] for row in rows) == sorted(str(path) for path in good + broken)  # each exactly once
    _same_as_the_cli(rows, cli_results)
    assert not parts.exists()
    _no_ray_processes_left(resumed.pid)


def _no_ray_processes_left(session: int) -> None:
    """No process of the command's session (its local cluster) is still running (an exited one that
    its new parent has not reaped yet does not count)."""
    time.sleep(2)
    left = []
    for process in psutil.process_iter(["pid", "cmdline", "status"]):
        try:
            if os.getsid(process.pid) == session and process.info["status"] != psutil.STATUS_ZOMBIE:
                left.append(" ".join(process.info["cmdline"] or [])[:80])
        except (ProcessLookupError, PermissionError):
            continue
    assert not left, left


def test_a_killed_job_resumed_ends_with_every_input_once(cluster, photos, cli_results, tmp_path):
    from captioner.serving.ray_data import caption_dataset, read_results

    root, good, broken = photos
    out = tmp_path / "captions"
    job = _cli("caption-dataset", str(root), "--out", str(out), "--format", "jsonl", "--address", cluster,
               "--workers", "1", "--batch-size", "1", "--rows-per-part", "2", start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while not list(out.glob("part-*.jsonl")) and job.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)  # the driver and anything it started, mid-job
        job.wait()
    assert job.returncode == -signal.SIGKILL, job.stderr.read()[-3000:]
    before = read_results(str(out))
    assert 0 < len(before) < 43, "the job should have been stopped midway"
    assert all(path.name.startswith(("part-", ".tmp-part-")) for path in out.iterdir())

    run = caption_dataset(root, out, resume=True, workers=1)
    assert run.skipped == len(before) and run.captioned == 43 - len(before)
    assert all(path.name.startswith("part-") for path in out.iterdir())  # half-written parts are gone
    rows = read_results(str(out))
    assert sorted(row["path"] for row in rows) == sorted(str(path) for path in good + broken)  # each exactly once
    _same_as_the_cli(rows, cli_results)


def test_a_table_of_paths_and_clear_refusals(cluster, photos, cli_results, tmp_path, capsys):
    from captioner.cli import main
    from captioner.core.errors import CaptionerError
    from captioner.core.options import DecodeOptions
    from captioner.serving.ray_data import caption_dataset, read_results

    root, good, _ = photos
    table = root / "list.csv"
    chosen = good[:3]
    table.write_text("file,note\n" + "".join(f"{path.relative_to(root)},x\n" for path in chosen)
                     + "examples/missing.jpg,gone\n")
    with pytest.raises(CaptionerError, match="no column 'path'.*file"):
        caption_dataset(table, tmp_path / "a")
    with pytest.raises(CaptionerError, match="GPUs"):  # never wait forever for GPUs that are not there
        caption_dataset(table, tmp_path / "b", path_column="file", gpus_per_worker=1)
    with pytest.raises(ValueError, match="beam_size"):
        caption_dataset(table, tmp_path / "c", path_column="file", options=DecodeOptions(beam_size=0))
    with pytest.raises(CaptionerError, match="unknown backend 'tvm'"):
        caption_dataset(table, tmp_path / "e", path_column="file", backend="tvm")
    with pytest.raises(SystemExit):
        main(["caption-dataset", str(table), "--out", str(tmp_path / "f"), "--backend", "tvm"])
    assert "invalid choice: 'tvm'" in capsys.readouterr().err
    assert main(["caption-dataset", str(table), "--out", str(tmp_path / "d.jsonl"), "--path-column", "file",
                 "--workers", "1", "--backend", "torch"]) == 0  # auto would be onnx on these CPU workers
    summary = capsys.readouterr().out.strip()
    assert summary.startswith("captioned 3 of 4 images (1 could not be read: see the error column) (torch backend); "
                              f"wrote {tmp_path / 'd.jsonl'} (4 rows)"), summary
    rows = {row["path"]: row for row in read_results(str(tmp_path / "d.jsonl"))}
    assert sorted(rows) == sorted([*map(str, chosen), str(root / "examples" / "missing.jpg")])
    assert rows[str(root / "examples" / "missing.jpg")]["error"].startswith("file not found")
    assert all(rows[str(path)]["caption"] == cli_results[str(path)]["caption"] for path in chosen)
    assert main(["caption-dataset", str(table), "--out", str(tmp_path / "d.jsonl"), "--path-column", "file"]) == 1
    assert "d.jsonl already exists: choose another name or remove it" in capsys.readouterr().err
