"""Batch captioning: files and zip archives in, rows and CSV / JSON out; bad files become rows."""

from __future__ import annotations

import csv
import io
import json
import zipfile

import pytest

from captioner.core.options import DecodeOptions
from captioner.core.results import Candidate, CaptionResult, failed
from captioner.web.batch import caption_inputs, collect_inputs, rows_to_csv, rows_to_json
from captioner.core.errors import ImageError
from captioner.core.images.decode import MAX_IMAGE_BYTES
from captioner.core.inference import load_captioner


def test_files_and_zip_members_become_one_row_each(tiny_model_dir, example_photos, tmp_path):
    archive = tmp_path / "album.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(example_photos["camera"], "holiday/camera.jpg")
        zf.write(example_photos["coffee"], "../../outside.jpg")  # only a label: nothing is extracted
        zf.writestr("notes.txt", "not a photo")
        zf.writestr("__MACOSX/holiday/._camera.jpg", b"\x00\x05")  # archiver junk is skipped
        zf.writestr(".DS_Store", b"\x00")
        zf.writestr("holiday/", b"")
    (tmp_path / "broken.jpg").write_bytes(example_photos["coffee"].read_bytes()[:2000])
    inputs = collect_inputs([example_photos["chelsea-the-cat"], archive, tmp_path / "broken.jpg"])
    assert [item.name for item in inputs] == ["chelsea-the-cat.jpg", "album.zip/holiday/camera.jpg",
                                              "album.zip/../../outside.jpg", "album.zip/notes.txt", "broken.jpg"]
    assert not (tmp_path.parent / "outside.jpg").exists()

    captioner = load_captioner(tiny_model_dir, "cpu")
    seen = []
    rows = caption_inputs(captioner, inputs, DecodeOptions(beam_size=2, num_candidates=1), batch_size=2,
                          progress=lambda d, t: seen.append((d, t)))
    assert seen == [(0, 5), (2, 5), (4, 5), (5, 5)]
    assert [row.image for row in rows] == [item.name for item in inputs]
    for row, photo in zip(rows[:3], ["chelsea-the-cat", "camera", "coffee"]):
        want = captioner(example_photos[photo], beam_size=2, num_candidates=1)
        assert (row.caption, row.error) == (want.caption, None)
        assert row.score == pytest.approx(want.candidates[0].score, abs=1e-5) and 0 < row.confidence <= 1
    assert "not an image" in rows[3].error and rows[3].score is None
    assert "truncated or corrupt" in rows[4].error


def test_zip_bombs_and_oversized_batches_are_refused(tmp_path):
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(3):
            zf.writestr(f"zeros{i}.bmp", b"\x00" * (2 * 1024 * 1024))  # 6 MB unpacked from a few KB
    assert bomb.stat().st_size < 100_000
    with pytest.raises(ImageError, match="unpacks to more than"):
        collect_inputs([bomb], max_unpacked_bytes=5 * 1024 * 1024)
    with pytest.raises(ImageError, match="too many files"):
        collect_inputs([bomb], max_files=2)
    photos = [tmp_path / f"{i}.jpg" for i in range(3)]
    with pytest.raises(ImageError, match="too many files"):
        collect_inputs(photos, max_files=2)


def test_members_are_read_with_a_limit_and_damaged_archives_become_rows(tmp_path):
    big = tmp_path / "big.zip"
    with zipfile.ZipFile(big, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("huge.bmp", b"\x00" * (MAX_IMAGE_BYTES + 1))
        zf.writestr("small.bmp", b"\x00" * 100)
    huge, small = collect_inputs([big])
    assert "too large" in huge.error
    with pytest.raises(ImageError, match="too large"):
        small.read(max_bytes=50)
    (tmp_path / "fake.zip").write_text("not a zip")
    [fake] = collect_inputs([tmp_path / "fake.zip"])
    assert "not a readable zip" in fake.error
    with pytest.raises(ImageError, match="not a readable zip"):
        fake.read()
    with pytest.raises(ImageError, match="cannot read"):
        collect_inputs([tmp_path / "gone.jpg"])[0].read()


def test_csv_and_json_exports(tmp_path):
    rows = [CaptionResult("a cat on a table", (Candidate("a cat on a table", -0.5, (("a", 0.5),)),), image="cat.jpg"),
            failed("=cmd|' /C calc'!A0.jpg", "not an image")]
    table = list(csv.DictReader(io.StringIO(rows_to_csv(rows))))
    assert table[0] == {"file": "cat.jpg", "caption": "a cat on a table", "confidence": "0.606531",
                        "score": "-0.5", "error": ""}
    assert table[1]["file"].startswith("'=") and table[1]["error"] == "not an image"  # no spreadsheet formulas
    records = json.loads(rows_to_json(rows))
    assert records[0]["candidates"][0]["confidence"] == pytest.approx(0.606531)
    assert records[0]["image"] == "cat.jpg" and records[0]["caption"] == "a cat on a table"
    assert records[1] == {"image": "=cmd|' /C calc'!A0.jpg", "error": "not an image", "model": ""}
