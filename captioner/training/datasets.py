"""Readers for caption data sets in the layouts people actually have on disk.

Every reader returns ``(items, report)``: the usable images with their captions, and a
``DatasetReport`` that counts what was loaded and what was skipped and why. A broken line,
an empty caption or a missing image file is counted and skipped, never fatal; only an
annotations file that cannot be read at all, or that has the wrong shape for the chosen
format, raises ``DatasetError``.

Formats (``FORMATS``):

- ``coco``: ``captions_train2014.json`` (``images`` with ``id``/``file_name``,
  ``annotations`` with ``image_id``/``caption``); file names are relative to the image folder.
- ``karpathy``: ``dataset_coco.json`` / ``dataset_flickr8k.json`` (``images`` with
  ``filename``, optional ``filepath``, ``split``, ``sentences`` with ``raw``/``tokens``);
  ``restval`` counts as ``train``.
- ``flickr8k``: ``Flickr8k.token.txt`` lines ``IMAGE.jpg#N<TAB>caption``, optionally with a
  split list such as ``Flickr_8k.trainImages.txt`` (one file name per line).
- ``csv``: a ``.csv`` file with header ``image,caption`` (optional ``split`` column) or a
  ``.jsonl`` file of ``{"image": ..., "caption": ...}`` objects; rows of one image are grouped.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from captioner.core.errors import DatasetError

FORMATS = ("coco", "karpathy", "flickr8k", "csv")
KARPATHY_SPLITS = ("train", "val", "test")
MAX_EXAMPLES = 5


@dataclass(frozen=True)
class CaptionedImage:
    """One image and its reference captions."""

    image_path: Path
    captions: list[str]
    split: str | None
    image_id: str


class SkipReason:
    """Why an item of a data set was left out: the keys of ``DatasetReport.skipped``."""

    MISSING_IMAGE = "missing image file"
    BROKEN_LINE = "broken line or row"
    EMPTY_CAPTION = "empty caption"
    UNKNOWN_IMAGE = "caption for unknown image id"
    NO_CAPTIONS = "image without captions"
    DUPLICATE_IMAGE = "duplicate image id"
    NOT_IN_DATA = "split list entry not in annotations"


@dataclass
class DatasetReport:
    """What a reader loaded and what it skipped (count and a few examples per reason)."""

    format: str
    annotations: Path
    split: str | None = None
    images: int = 0
    captions: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def skip(self, reason: str, example: str, count: int = 1) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + count
        shown = self.examples.setdefault(reason, [])
        if len(shown) < MAX_EXAMPLES:
            shown.append(example)

    @property
    def total_skipped(self) -> int:
        return sum(self.skipped.values())

    def summary(self) -> str:
        where = f"{self.format} data in {self.annotations}"
        if self.split:
            where += f", split {self.split}"
        lines = [f"Loaded {self.images} images with {self.captions} captions ({where})."]
        if self.skipped:
            lines.append(f"Skipped {self.total_skipped} items:")
            for reason, count in self.skipped.items():
                examples = "; ".join(self.examples.get(reason, []))
                lines.append(f"  {reason}: {count} (e.g. {examples})")
        return "\n".join(lines)


def read_dataset(
    format: str,
    annotations: Path,
    images: Path,
    split: str | None = None,
    split_file: Path | None = None,
) -> tuple[list[CaptionedImage], DatasetReport]:
    """Read a caption data set; see the module docstring for the formats.

    ``split`` selects a split where the data carries one (karpathy, a csv ``split`` column) and
    otherwise labels the items; ``split_file`` (one image file name per line) keeps only the
    images it lists, in any format.
    """
    if format not in FORMATS:
        raise DatasetError(f"Unknown data set format {format!r}; choose one of {', '.join(FORMATS)}.")
    annotations, images = Path(annotations), Path(images)
    if not annotations.is_file():
        raise DatasetError(f"Annotations file not found: {annotations}")
    if not images.is_dir():
        raise DatasetError(f"Image folder not found: {images}")
    if format == "flickr8k" and split is not None and split_file is None:
        split_file = _find_flickr_split_file(annotations.parent, split)
    report = DatasetReport(format=format, annotations=annotations, split=split)
    if format == "coco":
        grouped = _read_coco(annotations, report)
    elif format == "karpathy":
        grouped = _read_karpathy(annotations, split, report)
    elif format == "flickr8k":
        grouped = _read_flickr8k(annotations, report)
    else:
        grouped = _read_table(annotations, split, report)

    if split_file is not None:
        grouped = _apply_split_file(grouped, Path(split_file), report)
        if split is None:
            split = _split_from_file_name(Path(split_file))
            report.split = split

    items = []
    for entry in grouped.values():
        path = entry.path if entry.path.is_absolute() else images / entry.path
        if not entry.captions:
            report.skip(SkipReason.NO_CAPTIONS, entry.name)
        elif not path.is_file():
            report.skip(SkipReason.MISSING_IMAGE, str(path))
        else:
            items.append(CaptionedImage(path, entry.captions, entry.split or split, entry.image_id))
    report.images = len(items)
    report.captions = sum(len(item.captions) for item in items)
    return items, report


def split_holdout(
    items: list[CaptionedImage], fraction: float, seed: int = 0
) -> tuple[list[CaptionedImage], list[CaptionedImage]]:
    """Carve a validation set out of ``items``: returns ``(train, val)``.

    Membership depends only on each image id and the seed (a hash, not the list order), so the
    same images are held out on every run and on every machine. Items keep their order; their
    ``split`` becomes ``"train"`` or ``"val"``.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"The hold-out fraction must be between 0 and 1, got {fraction}.")
    if len(items) < 2:
        raise DatasetError("At least 2 images are needed to hold some out for validation.")
    count = min(len(items) - 1, max(1, round(len(items) * fraction)))

    def rank(index: int) -> bytes:
        return hashlib.sha256(f"{seed}\0{items[index].image_id}".encode()).digest()

    held = set(sorted(range(len(items)), key=rank)[:count])
    train = [replace(item, split="train") for i, item in enumerate(items) if i not in held]
    val = [replace(item, split="val") for i, item in enumerate(items) if i in held]
    return train, val


# --------------------------------------------------------------------------- internals


@dataclass
class _Entry:
    """An image being collected: its path relative to the image folder (or absolute)."""

    image_id: str
    path: Path
    split: str | None = None
    captions: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.as_posix()


def _clean(caption: object) -> str | None:
    """Whitespace-normalised caption, or None when it is not a string."""
    if not isinstance(caption, str):
        return None
    return " ".join(caption.split())


def _add_caption(entry: _Entry, caption: object, where: str, report: DatasetReport) -> None:
    text = _clean(caption)
    if text is None:
        report.skip(SkipReason.BROKEN_LINE, f"{where}: caption is not text")
    elif not text:
        report.skip(SkipReason.EMPTY_CAPTION, where)
    else:
        entry.captions.append(text)


def _load_json(path: Path) -> object:
    try:
        with path.open("rb") as handle:
            return json.load(handle)
    except OSError as exc:
        raise DatasetError(f"Cannot read annotations file {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path} is not UTF-8 text: {exc.reason}") from exc
    except json.JSONDecodeError as exc:
        raise DatasetError(
            f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})."
        ) from exc


def _shape_hint(data: object) -> str:
    if isinstance(data, dict):
        images = data.get("images")
        if "annotations" in data:
            return " It looks like COCO captions; use format 'coco'."
        if isinstance(images, list) and images and isinstance(images[0], dict):
            if "sentences" in images[0]:
                return " It looks like a Karpathy split file; use format 'karpathy'."
    return ""


def _read_coco(path: Path, report: DatasetReport) -> dict[str, _Entry]:
    data = _load_json(path)
    if not (
        isinstance(data, dict)
        and isinstance(data.get("images"), list)
        and isinstance(data.get("annotations"), list)
    ):
        raise DatasetError(
            f"{path} is not COCO captions JSON: expected an object with lists 'images' "
            f"(id, file_name) and 'annotations' (image_id, caption).{_shape_hint(data)}"
        )
    entries: dict[str, _Entry] = {}
    for index, image in enumerate(data["images"]):
        where = f"images[{index}]"
        if not (isinstance(image, dict) and "id" in image and isinstance(image.get("file_name"), str)):
            report.skip(SkipReason.BROKEN_LINE, f"{where}: needs 'id' and 'file_name'")
            continue
        image_id = str(image["id"])
        if image_id in entries:
            report.skip(SkipReason.DUPLICATE_IMAGE, f"{where}: id {image_id}")
            continue
        entries[image_id] = _Entry(image_id, Path(image["file_name"]))
    for index, annotation in enumerate(data["annotations"]):
        where = f"annotations[{index}]"
        if not (isinstance(annotation, dict) and "image_id" in annotation and "caption" in annotation):
            report.skip(SkipReason.BROKEN_LINE, f"{where}: needs 'image_id' and 'caption'")
            continue
        entry = entries.get(str(annotation["image_id"]))
        if entry is None:
            report.skip(SkipReason.UNKNOWN_IMAGE, f"{where}: image_id {annotation['image_id']}")
            continue
        _add_caption(entry, annotation["caption"], where, report)
    return entries


def _check_karpathy_split(split: str | None) -> str | None:
    if split is None:
        return None
    wanted = "train" if split == "restval" else split
    if wanted not in KARPATHY_SPLITS:
        raise DatasetError(
            f"Unknown split {split!r} for Karpathy data; choose one of {', '.join(KARPATHY_SPLITS)}."
        )
    return wanted


def _read_karpathy(path: Path, split: str | None, report: DatasetReport) -> dict[str, _Entry]:
    wanted = _check_karpathy_split(split)
    data = _load_json(path)
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list) or "annotations" in data:
        raise DatasetError(
            f"{path} is not a Karpathy split file: expected an object with a list 'images' of "
            f"{{filename, split, sentences}}.{_shape_hint(data)}"
        )
    entries: dict[str, _Entry] = {}
    for index, image in enumerate(images):
        where = f"images[{index}]"
        if not (
            isinstance(image, dict)
            and isinstance(image.get("filename"), str)
            and isinstance(image.get("sentences"), list)
        ):
            report.skip(SkipReason.BROKEN_LINE, f"{where}: needs 'filename' and 'sentences'")
            continue
        image_split = image.get("split") if isinstance(image.get("split"), str) else None
        image_split = "train" if image_split == "restval" else image_split
        if wanted is not None and image_split != wanted:
            continue
        folder = image.get("filepath")
        relative = Path(folder if isinstance(folder, str) else "", image["filename"])
        image_id = str(image.get("cocoid", image.get("imgid", relative.as_posix())))
        if image_id in entries:
            report.skip(SkipReason.DUPLICATE_IMAGE, f"{where}: id {image_id}")
            continue
        entry = entries[image_id] = _Entry(image_id, relative, image_split)
        for number, sentence in enumerate(image["sentences"]):
            caption = None
            if isinstance(sentence, dict):
                caption = sentence.get("raw")
                tokens = sentence.get("tokens")
                if caption is None and isinstance(tokens, list):
                    caption = " ".join(map(str, tokens))
            _add_caption(entry, caption, f"{where}.sentences[{number}]", report)
    return entries


def _text_lines(path: Path, report: DatasetReport) -> Iterator[tuple[int, str]]:
    """(line number, text) for each line; lines that are not UTF-8 are counted as broken."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"Cannot read annotations file {path}: {exc.strerror or exc}") from exc
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    for number, raw in enumerate(data.splitlines(keepends=True), start=1):
        try:
            yield number, raw.decode("utf-8")
        except UnicodeDecodeError:
            report.skip(SkipReason.BROKEN_LINE, f"line {number}: not UTF-8 text")


_FLICKR_LINE = re.compile(r"^(?P<image>[^\t]+?)(?:#(?P<number>\d+))?\t(?P<caption>.*)$")


def _read_flickr8k(path: Path, report: DatasetReport) -> dict[str, _Entry]:
    entries: dict[str, _Entry] = {}
    parsed_any = False
    for number, line in _text_lines(path, report):
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        match = _FLICKR_LINE.match(line)
        if match is None:
            report.skip(SkipReason.BROKEN_LINE, f"line {number}: expected IMAGE#N<TAB>caption")
            continue
        parsed_any = True
        name = match["image"].strip()
        entry = entries.setdefault(name, _Entry(name, Path(name)))
        _add_caption(entry, match["caption"], f"line {number}", report)
    if not parsed_any and report.skipped:
        raise DatasetError(
            f"{path} is not a Flickr8k token file: no line has the form IMAGE.jpg#N<TAB>caption."
        )
    return entries


_IMAGE_COLUMNS = ("image", "file_name", "filename")
_CAPTION_COLUMNS = ("caption", "text")


def _read_table(path: Path, split: str | None, report: DatasetReport) -> dict[str, _Entry]:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        rows = list(_jsonl_rows(path, report))
    elif suffix in (".csv", ".tsv", ".txt"):
        rows = list(_csv_rows(path, report, delimiter="\t" if suffix == ".tsv" else ","))
    else:
        raise DatasetError(f"{path}: use a .csv (image,caption) or .jsonl file for format 'csv'.")
    # With split values in the file, ``split`` selects rows; without, it only labels them.
    has_splits = any(row_split is not None for *_, row_split in rows)
    entries: dict[str, _Entry] = {}
    for where, image, caption, row_split in rows:
        if split is not None and has_splits and row_split != split:
            continue
        if not image:
            report.skip(SkipReason.BROKEN_LINE, f"{where}: no image")
            continue
        entry = entries.setdefault(image, _Entry(image, Path(image), row_split))
        _add_caption(entry, caption, where, report)
    return entries


_Row = tuple[str, str, object, str | None]  # where, image, caption, split


def _csv_rows(path: Path, report: DatasetReport, delimiter: str) -> Iterator[_Row]:
    position = {"line": 0}

    def lines() -> Iterator[str]:
        for number, text in _text_lines(path, report):
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
    for number, text in _text_lines(path, report):
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


def _read_split_file(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DatasetError(f"Split list not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"Cannot read split list {path}: {exc}") from exc
    return [line.strip() for line in text.splitlines() if line.strip()]


def _apply_split_file(
    grouped: dict[str, _Entry], path: Path, report: DatasetReport
) -> dict[str, _Entry]:
    """Keep the entries the split list names, matched by relative path or by file name."""
    by_name: dict[str, list[str]] = {}
    for key, entry in grouped.items():
        by_name.setdefault(entry.name, []).append(key)
        if entry.path.name != entry.name:
            by_name.setdefault(entry.path.name, []).append(key)
    kept: dict[str, _Entry] = {}
    for name in _read_split_file(path):
        keys = by_name.get(name) or by_name.get(Path(name).name)
        if not keys:
            report.skip(SkipReason.NOT_IN_DATA, f"{name} (listed in {path.name})")
            continue
        for key in keys:
            kept[key] = grouped[key]
    return kept


_FLICKR_SPLIT_MARKERS = {"train": ("train",), "val": ("dev", "val"), "test": ("test",)}


def _find_flickr_split_file(folder: Path, split: str) -> Path:
    """The standard split list next to the token file, e.g. ``Flickr_8k.devImages.txt`` for val."""
    markers = _FLICKR_SPLIT_MARKERS.get(split)
    if markers is None:
        raise DatasetError(f"Unknown split {split!r} for Flickr8k; choose one of train, val, test.")
    for marker in markers:
        found = sorted(folder.glob(f"*{marker}Images.txt"))
        if found:
            return found[0]
    raise DatasetError(
        f"No split list for {split!r} next to the token file in {folder} "
        f"(such as Flickr_8k.{markers[0]}Images.txt); pass the split list file."
    )


def _split_from_file_name(path: Path) -> str | None:
    """``Flickr_8k.trainImages.txt`` -> train, ``...devImages.txt`` -> val, ``...testImages`` -> test."""
    name = path.name.lower()
    for marker, split in (("train", "train"), ("dev", "val"), ("val", "val"), ("test", "test")):
        if marker in name:
            return split
    return None
