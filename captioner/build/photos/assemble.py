"""Putting the set together: licences checked, subjects looked up, duplicates dropped, files written.

The output folder holds ``photos/`` (each file copied byte for byte as its package ships it),
``manifest.jsonl`` (one photo a line), ``captions_train.json`` and ``captions_heldout.json`` (COCO
captions format, file names relative to ``photos/``) and a ``README.md`` with every photo's author,
licence and source. The held-out share is chosen by a hash of each photo's key, so a photo stays on
its side when the sources grow.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from captioner.build.imagenet import WordNet
from captioner.build.photos.credits import licence_id
from captioner.build.photos.record import Photo
from captioner.build.photos.subjects import Subject, caption_for, resolve
from captioner.core.errors import DatasetError

HELD_OUT_SHARE = 0.2
_SAME_PICTURE_BITS = 4  # difference hashes this close (of 64 bits) are the same picture


@dataclass(frozen=True)
class Entry:
    photo: Photo
    data: bytes
    subjects: tuple[Subject, ...]
    licence: str
    captions: tuple[str, ...]
    split: str
    width: int
    height: int

    @property
    def file(self) -> str:
        return f"{self.photo.key}{self.photo.suffix.lower()}"


@dataclass(frozen=True)
class Built:
    entries: list[Entry]
    left_out: list[tuple[str, str]]  # (source, why)


def assemble(photos: Sequence[Photo], net: WordNet, *, progress: Callable[[str], None] = print) -> Built:
    """Check, describe and deduplicate ``photos`` (earlier photos win over later duplicates)."""
    entries: list[Entry] = []
    left_out: list[tuple[str, str]] = []
    seen_origins: dict[str, str] = {}
    hashes: list[tuple[int, str]] = []
    for photo in photos:
        licence = licence_id(photo.licence_text)
        if licence is None:
            why = (f"its licence is not one the set accepts ({photo.licence_text})" if photo.licence_text
                   else "the package's credits name no licence for this file")
            left_out.append((photo.source, why))
            continue
        origin = (photo.origin or "").rstrip("/").lower()
        if origin and origin in seen_origins:
            left_out.append((photo.source, f"the same original as {seen_origins[origin]}"))
            continue
        data = photo.read()
        try:
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                fingerprint = _difference_hash(image)
        except OSError as exc:
            left_out.append((photo.source, f"not a readable image ({exc})"))
            continue
        twin = next((key for other, key in hashes if bin(other ^ fingerprint).count("1") <= _SAME_PICTURE_BITS), None)
        if twin is not None:
            left_out.append((photo.source, f"the same picture as {twin}"))
            continue
        subjects = resolve(net, photo.subject_words, photo.domain)
        captions = photo.captions or (caption_for(net, subjects[0]),)
        entries.append(Entry(photo, data, subjects, licence, captions, _split(photo.key), width, height))
        hashes.append((fingerprint, photo.key))
        if origin:
            seen_origins[origin] = photo.key
    progress(f"{len(entries)} photos kept, {len(left_out)} left out")
    return Built(entries, left_out)


def _difference_hash(image: Image.Image) -> int:
    pixels = np.asarray(image.convert("L").resize((9, 8), Image.Resampling.BILINEAR), dtype=np.int16)
    bits = 0
    for brighter in (pixels[:, :-1] > pixels[:, 1:]).ravel():
        bits = (bits << 1) | int(brighter)
    return bits


def _split(key: str) -> str:
    fraction = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 16**8
    return "heldout" if fraction < HELD_OUT_SHARE else "train"


def write(built: Built, out: Path, net: WordNet, readme: Callable[[Built], str]) -> None:
    """Write the set to ``out``: into a new folder beside it, then moved into place. An existing
    ``out`` is replaced only when it is a set this builder wrote (it has a ``manifest.jsonl``)."""
    out = out.resolve()
    check_target(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        (staging / "photos").mkdir()
        lines = []
        for entry in built.entries:
            (staging / "photos" / entry.file).write_bytes(entry.data)
            lines.append(json.dumps(_manifest_line(entry, net), ensure_ascii=False))
        (staging / "manifest.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
        for split in ("train", "heldout"):
            coco = _coco([e for e in built.entries if e.split == split], split)
            (staging / f"captions_{split}.json").write_text(json.dumps(coco, indent=1, ensure_ascii=False) + "\n",
                                                             encoding="utf-8")
        (staging / "README.md").write_text(readme(built), encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def check_target(out: Path) -> None:
    """Refuse an ``out`` that exists and is not a set this builder wrote (``DatasetError``)."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "manifest.jsonl").is_file())):
        raise DatasetError(f"{out} exists and is not a photo set this command wrote: choose an empty or new folder.")


def _manifest_line(entry: Entry, net: WordNet) -> dict:
    photo = entry.photo
    return {
        "file": f"photos/{entry.file}", "key": photo.key, "split": entry.split,
        "name": photo.name, "descriptions": list(photo.descriptions), "captions": list(entry.captions),
        "subjects": [{"synset": s.synset, "lemma": net.synset(s.synset).lemmas[0], "named_as": s.phrase,
                      "gloss": net.synset(s.synset).gloss} for s in entry.subjects],
        "subject_from": photo.subject_from, "source": photo.source, "origin": photo.origin,
        "author": photo.author, "licence": entry.licence, "licence_text": photo.licence_text,
        "width": entry.width, "height": entry.height, "sha256": hashlib.sha256(entry.data).hexdigest(),
    }


def _coco(entries: list[Entry], split: str) -> dict:
    images, annotations = [], []
    for number, entry in enumerate(entries, 1):
        images.append({"id": number, "file_name": entry.file, "width": entry.width, "height": entry.height})
        for caption in entry.captions:
            annotations.append({"id": len(annotations) + 1, "image_id": number, "caption": caption})
    return {"info": {"description": f"captioner real-photo set, {split} split"},
            "licenses": [], "images": images, "annotations": annotations}


def licence_counts(built: Built) -> Counter:
    return Counter(entry.licence for entry in built.entries)
