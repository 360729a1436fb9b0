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
- ``folder``: an image folder holding ``captions.csv`` or ``captions.jsonl`` as for ``csv``
  (image paths relative to the folder; several rows per image allowed).

When none of the images named is in the image folder, ``require_images`` says how many are
missing, names a few and the folder looked in.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import replace
from pathlib import Path

from captioner.core.errors import DatasetError
from captioner.training.records import (CaptionedImage, DatasetReport, Entry, SkipReason, add_caption, load_json,
                                        text_lines)
from captioner.training.tables import folder_table, read_table

__all__ = ["FORMATS", "CaptionedImage", "DatasetReport", "SkipReason", "read_dataset", "require_images",
           "split_holdout"]

FORMATS = ("coco", "karpathy", "flickr8k", "csv", "folder")
KARPATHY_SPLITS = ("train", "val", "test")


def read_dataset(
    format: str,
    annotations: Path | None,
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
    images = Path(images)
    if not images.is_dir():
        raise DatasetError(f"Image folder not found: {images}")
    if annotations is None and format != "folder":
        raise DatasetError(f"format {format!r} needs an annotations file")
    annotations = Path(annotations) if annotations is not None else folder_table(images)
    if not annotations.is_file():
        raise DatasetError(f"Annotations file not found: {annotations}")
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
        grouped = read_table(annotations, split, report, format)

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


def require_images(items: list[CaptionedImage], report: DatasetReport, images: Path) -> None:
    """``DatasetError`` when none of the images the data names is in ``images``: how many, a few, the folder."""
    missing = report.skipped.get(SkipReason.MISSING_IMAGE, 0)
    if not items and missing:
        folder = Path(images)
        names = [Path(path).relative_to(folder).as_posix() if Path(path).is_relative_to(folder) else path
                 for path in report.examples[SkipReason.MISSING_IMAGE][:3]]
        raise DatasetError(f"none of the {missing} images that {report.annotations.name} names is in the image "
                           f"folder {folder.resolve()} (e.g. {', '.join(names)}); check --images: the file names "
                           "in the captions are relative to it")


HOLDOUT_IMAGES = 50  # a validation metric needs some dozens of images to choose an epoch well


def holdout_fraction(count: int) -> float:
    """The share of ``count`` images to hold out: about ``HOLDOUT_IMAGES`` of them, between 5% and 20%."""
    return min(0.2, max(0.05, HOLDOUT_IMAGES / max(count, 1)))


def split_holdout(
    items: list[CaptionedImage], fraction: float, seed: int = 0, report: DatasetReport | None = None
) -> tuple[list[CaptionedImage], list[CaptionedImage]]:
    """Carve a validation set out of ``items``: returns ``(train, val)``.

    Membership depends only on each image id and the seed (a hash, not the list order), so the
    same images are held out on every run and on every machine. Items keep their order; their
    ``split`` becomes ``"train"`` or ``"val"``.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"The hold-out fraction must be between 0 and 1, got {fraction}.")
    if len(items) < 2:
        missing = report.skipped.get(SkipReason.MISSING_IMAGE, 0) if report is not None else 0
        why = (f"; {missing} more are missing from the image folder (e.g. "
               f"{', '.join(report.examples[SkipReason.MISSING_IMAGE][:3])})" if missing else "")
        raise DatasetError(f"At least 2 images are needed to hold some out for validation; {len(items)} "
                           f"found{why}.")
    count = min(len(items) - 1, max(1, round(len(items) * fraction)))

    def rank(index: int) -> bytes:
        return hashlib.sha256(f"{seed}\0{items[index].image_id}".encode()).digest()

    held = set(sorted(range(len(items)), key=rank)[:count])
    train = [replace(item, split="train") for i, item in enumerate(items) if i not in held]
    val = [replace(item, split="val") for i, item in enumerate(items) if i in held]
    return train, val


# --------------------------------------------------------------------------- internals


def _shape_hint(data: object) -> str:
    if isinstance(data, dict):
        images = data.get("images")
        if "annotations" in data:
            return " It looks like COCO captions; use format 'coco'."
        if isinstance(images, list) and images and isinstance(images[0], dict):
            if "sentences" in images[0]:
                return " It looks like a Karpathy split file; use format 'karpathy'."
    return ""


def _read_coco(path: Path, report: DatasetReport) -> dict[str, Entry]:
    data = load_json(path)
    if not (
        isinstance(data, dict)
        and isinstance(data.get("images"), list)
        and isinstance(data.get("annotations"), list)
    ):
        raise DatasetError(
            f"{path} is not COCO captions JSON: expected an object with lists 'images' "
            f"(id, file_name) and 'annotations' (image_id, caption).{_shape_hint(data)}"
        )
    entries: dict[str, Entry] = {}
    for index, image in enumerate(data["images"]):
        where = f"images[{index}]"
        if not (isinstance(image, dict) and "id" in image and isinstance(image.get("file_name"), str)):
            report.skip(SkipReason.BROKEN_LINE, f"{where}: needs 'id' and 'file_name'")
            continue
        image_id = str(image["id"])
        if image_id in entries:
            report.skip(SkipReason.DUPLICATE_IMAGE, f"{where}: id {image_id}")
            continue
        entries[image_id] = Entry(image_id, Path(image["file_name"]))
    for index, annotation in enumerate(data["annotations"]):
        where = f"annotations[{index}]"
        if not (isinstance(annotation, dict) and "image_id" in annotation and "caption" in annotation):
            report.skip(SkipReason.BROKEN_LINE, f"{where}: needs 'image_id' and 'caption'")
            continue
        entry = entries.get(str(annotation["image_id"]))
        if entry is None:
            report.skip(SkipReason.UNKNOWN_IMAGE, f"{where}: image_id {annotation['image_id']}")
            continue
        add_caption(entry, annotation["caption"], where, report)
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


def _read_karpathy(path: Path, split: str | None, report: DatasetReport) -> dict[str, Entry]:
    wanted = _check_karpathy_split(split)
    data = load_json(path)
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list) or "annotations" in data:
        raise DatasetError(
            f"{path} is not a Karpathy split file: expected an object with a list 'images' of "
            f"{{filename, split, sentences}}.{_shape_hint(data)}"
        )
    entries: dict[str, Entry] = {}
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
        entry = entries[image_id] = Entry(image_id, relative, image_split)
        for number, sentence in enumerate(image["sentences"]):
            caption = None
            if isinstance(sentence, dict):
                caption = sentence.get("raw")
                tokens = sentence.get("tokens")
                if caption is None and isinstance(tokens, list):
                    caption = " ".join(map(str, tokens))
            add_caption(entry, caption, f"{where}.sentences[{number}]", report)
    return entries


_FLICKR_LINE = re.compile(r"^(?P<image>[^\t]+?)(?:#(?P<number>\d+))?\t(?P<caption>.*)$")


def _read_flickr8k(path: Path, report: DatasetReport) -> dict[str, Entry]:
    entries: dict[str, Entry] = {}
    parsed_any = False
    for number, line in text_lines(path, report):
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        match = _FLICKR_LINE.match(line)
        if match is None:
            report.skip(SkipReason.BROKEN_LINE, f"line {number}: expected IMAGE#N<TAB>caption")
            continue
        parsed_any = True
        name = match["image"].strip()
        entry = entries.setdefault(name, Entry(name, Path(name)))
        add_caption(entry, match["caption"], f"line {number}", report)
    if not parsed_any and report.skipped:
        raise DatasetError(
            f"{path} is not a Flickr8k token file: no line has the form IMAGE.jpg#N<TAB>caption."
        )
    return entries


def _read_split_file(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DatasetError(f"Split list not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"Cannot read split list {path}: {exc}") from exc
    return [line.strip() for line in text.splitlines() if line.strip()]


def _apply_split_file(
    grouped: dict[str, Entry], path: Path, report: DatasetReport
) -> dict[str, Entry]:
    """Keep the entries the split list names, matched by relative path or by file name."""
    by_name: dict[str, list[str]] = {}
    for key, entry in grouped.items():
        by_name.setdefault(entry.name, []).append(key)
        if entry.path.name != entry.name:
            by_name.setdefault(entry.path.name, []).append(key)
    kept: dict[str, Entry] = {}
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
