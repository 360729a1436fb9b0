"""Caption tables: CSV or JSON Lines of ``image,caption`` rows (``csv`` format), and image folders holding
one (``folder`` format: ``captions.csv`` or ``captions.jsonl`` beside the images)."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

from captioner.core.errors import DatasetError
from captioner.training.records import DatasetReport, Entry, SkipReason, add_caption, text_lines

FOLDER_TABLES = ("captions.csv", "captions.jsonl")


def folder_table(images: Path) -> Path:
    """The caption table inside an image folder (``folder`` format)."""
    found = [images / name for name in FOLDER_TABLES if (images / name).is_file()]
    if not found:
        raise DatasetError(f"{images} holds no captions.csv or captions.jsonl; the folder format needs one, "
                           "with image,caption rows (image paths relative to the folder)")
    if len(found) > 1:
        raise DatasetError(f"{images} holds both captions.csv and captions.jsonl; keep one, or name it with "
                           "--annotations")
    return found[0]


_IMAGE_COLUMNS = ("image", "file_name", "filename")
_CAPTION_COLUMNS = ("caption", "text")


def read_table(path: Path, split: str | None, report: DatasetReport, format: str = "csv") -> dict[str, Entry]:
    """The rows of a ``.csv`` / ``.tsv`` or ``.jsonl`` table, grouped by image."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        rows = list(_jsonl_rows(path, report))
    elif suffix in (".csv", ".tsv", ".txt"):
        rows = list(_csv_rows(path, report, delimiter="\t" if suffix == ".tsv" else ","))
    else:
        raise DatasetError(f"{path}: use a .csv (image,caption) or .jsonl file for format {format!r}.")
    # With split values in the file, ``split`` selects rows; without, it only labels them.
    has_splits = any(row_split is not None for *_, row_split in rows)
    entries: dict[str, Entry] = {}
    for where, image, caption, row_split in rows:
        if split is not None and has_splits and row_split != split:
            continue
        if not image:
            report.skip(SkipReason.BROKEN_LINE, f"{where}: no image")
            continue
        entry = entries.setdefault(image, Entry(image, Path(image), row_split))
        add_caption(entry, caption, where, report)
    return entries


_Row = tuple[str, str, object, str | None]  # where, image, caption, split


def _csv_rows(path: Path, report: DatasetReport, delimiter: str) -> Iterator[_Row]:
    position = {"line": 0}

    def lines() -> Iterator[str]:
        for number, text in text_lines(path, report):
            position["line"] = number
            yield text

    reader = csv.reader(lines(), delimiter=delimiter)
    try:
        header = [name.strip().lower() for name in next(reader)]
    except StopIteration:
        raise DatasetError(f"{path} is empty; expected a header line 'image,caption'.") from None
    except csv.Error as exc:
        raise DatasetError(f"{path} is not CSV: {exc}") from exc
    image_col = next((header.index(c) for c in _IMAGE_COLUMNS if c in header), None)
    caption_col = next((header.index(c) for c in _CAPTION_COLUMNS if c in header), None)
    if image_col is None or caption_col is None:
        raise DatasetError(
            f"{path} needs a header line with columns 'image' and 'caption'; found {','.join(header)!r}."
        )
    split_col = header.index("split") if "split" in header else None
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            report.skip(SkipReason.BROKEN_LINE, f"line {position['line']}: {exc}")
            continue
        where = f"line {position['line']}"
        if not row or not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            report.skip(
                SkipReason.BROKEN_LINE,
                f"{where}: expected {len(header)} fields, found {len(row)} "
                "(quote captions that contain the delimiter)",
            )
            continue
        row_split = row[split_col].strip() or None if split_col is not None else None
        yield where, row[image_col].strip(), row[caption_col], row_split


def _jsonl_rows(path: Path, report: DatasetReport) -> Iterator[_Row]:
    parsed_any = False
    broken = 0
    for number, text in text_lines(path, report):
        if not text.strip():
            continue
        where = f"line {number}"
        try:
            row = json.loads(text)
        except json.JSONDecodeError as exc:
            broken += 1
            report.skip(SkipReason.BROKEN_LINE, f"{where}: invalid JSON ({exc.msg})")
            continue
        if not isinstance(row, dict):
            row = {}
        image = next((row[c] for c in _IMAGE_COLUMNS if c in row), None)
        caption = next((row[c] for c in _CAPTION_COLUMNS if c in row), None)
        if not isinstance(image, str) or caption is None:
            broken += 1
            report.skip(SkipReason.BROKEN_LINE, f"{where}: needs string 'image' and 'caption'")
            continue
        parsed_any = True
        row_split = row.get("split")
        row_split = row_split if isinstance(row_split, str) and row_split else None
        yield where, image.strip(), caption, row_split
    if not parsed_any and broken:
        raise DatasetError(
            f'{path} is not JSON Lines of {{"image": ..., "caption": ...}}: no line could be read.'
        )
