"""Captioning many files at once (alt text for a folder): uploaded images and zip archives in,
one row per image out, as a table or as CSV / JSON files.

Zip archives are read in memory, member by member: nothing is extracted to disk, so member
names (``../../etc/passwd``) are only labels. The number of members and the total size they
unpack to are capped, and each member is read with a byte limit, so a zip bomb costs no more
than the limits allow. Decoding is bounded too: every image, loose or zipped, is held to the
loader's pixel cap, and the images of one batch together to ``MAX_BATCH_PIXELS`` (read from
their headers before decoding). A file that cannot be read or captioned becomes a row with an
error; it never stops the batch.
"""

from __future__ import annotations

import csv
import io
import json
import os
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from captioner.core.errors import ImageError
from captioner.core.files import spreadsheet_safe
from captioner.core.images.decode import MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS, image_size
from captioner.core.inference import Captioner
from captioner.core.options import DecodeOptions
from captioner.core.results import CaptionResult

MAX_FILES = 1000  # images per batch, loose files and zip members together
MAX_UNPACKED_BYTES = 1024 * 1024 * 1024  # what all zip members may unpack to, together
MAX_BATCH_PIXELS = 1_000_000_000  # what the images of one batch may hold together (20 images at the 50 MP cap)
_SKIPPED_NAMES = {"thumbs.db", "desktop.ini"}  # files that operating systems add to folders


@dataclass(frozen=True)
class BatchInput:
    """One image to caption: a file, or a member of a zip archive (never extracted)."""

    name: str  # shown in the table and the downloads
    path: Path  # the file, or the archive holding the member
    member: str | None = None
    error: str | None = None  # refused before reading (the row says why)

    def read(self, max_bytes: int = MAX_IMAGE_BYTES) -> bytes:
        """The file's bytes. Raises ``ImageError`` when it cannot be read or exceeds ``max_bytes``."""
        if self.error:
            raise ImageError(self.error)
        try:
            if self.member is None:
                with open(self.path, "rb") as handle:
                    data = handle.read(max_bytes + 1)
            else:
                with zipfile.ZipFile(self.path) as archive, archive.open(self.member) as handle:
                    data = handle.read(max_bytes + 1)
        except (OSError, zipfile.BadZipFile, RuntimeError, NotImplementedError, EOFError) as error:
            # RuntimeError: encrypted member; NotImplementedError: unsupported compression
            raise ImageError(f"cannot read this file: {error}") from error
        if len(data) > max_bytes:
            raise ImageError(f"file too large (limit {max_bytes // (1024 * 1024)} MB)")
        return data


def collect_inputs(paths: Iterable[str | os.PathLike], *, max_files: int = MAX_FILES,
                   max_unpacked_bytes: int = MAX_UNPACKED_BYTES) -> list[BatchInput]:
    """Expand uploaded files into images to caption: a zip archive gives its members.

    Raises ``ImageError`` when the batch holds more than ``max_files`` images or its archives
    unpack to more than ``max_unpacked_bytes`` (a likely zip bomb): such a batch is refused whole.
    """
    inputs: list[BatchInput] = []
    unpacked = 0
    for path in map(Path, paths):
        if path.suffix.lower() == ".zip":
            try:
                with zipfile.ZipFile(path) as archive:
                    members = [info for info in archive.infolist() if _is_content(info)]
            except (OSError, zipfile.BadZipFile) as error:
                inputs.append(BatchInput(path.name, path, error=f"not a readable zip archive: {error}"))
                continue
            if len(inputs) + len(members) > max_files:
                raise ImageError(f"too many files: {path.name} holds {len(members)} (limit {max_files} per batch)")
            unpacked += sum(info.file_size for info in members)
            if unpacked > max_unpacked_bytes:
                raise ImageError(f"{path.name} unpacks to more than {max_unpacked_bytes // (1024 * 1024)} MB; "
                                 "split it into smaller archives")
            inputs.extend(BatchInput(f"{path.name}/{info.filename}", path, info.filename,
                                     error=_member_error(info)) for info in members)
        else:
            inputs.append(BatchInput(path.name, path))
        if len(inputs) > max_files:
            raise ImageError(f"too many files (limit {max_files} per batch)")
    return inputs


def _is_content(info: zipfile.ZipInfo) -> bool:
    """Skip folders and the hidden files that archivers and operating systems add."""
    parts = PurePosixPath(info.filename.replace("\\", "/")).parts
    return not (info.is_dir() or not parts or parts[0] == "__MACOSX" or parts[-1].startswith(".")
                or parts[-1].lower() in _SKIPPED_NAMES)


def _member_error(info: zipfile.ZipInfo) -> str | None:
    if info.file_size > MAX_IMAGE_BYTES:
        return f"file too large: {info.file_size // (1024 * 1024)} MB (limit {MAX_IMAGE_BYTES // (1024 * 1024)} MB)"
    if info.flag_bits & 0x1:
        return "the file is encrypted"
    return None


def total_bytes(paths: Iterable[str | os.PathLike]) -> int:
    """The size of the files at ``paths`` together (as stored: zip archives count compressed)."""
    total = 0
    for path in paths:
        try:
            total += os.path.getsize(path)
        except OSError:
            pass  # collect_inputs reports it
    return total


def caption_inputs(captioner: Captioner, inputs: Sequence[BatchInput], options: DecodeOptions | None = None, *,
                   batch_size: int = 8, progress: Callable[[int, int], None] | None = None,
                   max_pixels: int = MAX_BATCH_PIXELS) -> list[CaptionResult]:
    """Caption every input, ``batch_size`` images per forward pass; one result per input, in order,
    named after the input. Unreadable inputs become results with an error, and so do the images
    beyond ``max_pixels`` in all (counted from their headers, before decoding).

    ``progress(done, total)`` is called before the first pass and after each one.
    """
    options = options or DecodeOptions(num_candidates=1)
    results: list[CaptionResult] = []
    total = len(inputs)
    used = 0
    if progress:
        progress(0, total)
    for start in range(0, total, batch_size):
        chunk = inputs[start:start + batch_size]
        entries: list[bytes | ImageError] = []
        for item in chunk:
            try:
                blob = item.read()
                width, height = image_size(blob) or (0, 0)
                pixels = width * height if width * height <= MAX_IMAGE_PIXELS else 0  # else the loader refuses it
                if used + pixels > max_pixels:
                    raise ImageError(f"this batch's images exceed {max_pixels / 1e6:g} megapixels together; "
                                     "caption this file in another batch")
                used += pixels
                entries.append(blob)
            except ImageError as error:
                entries.append(error)
        results += captioner.pipeline.caption_each(entries, options, names=[item.name for item in chunk],
                                                   batch_size=batch_size)
        if progress:
            progress(min(start + batch_size, total), total)
    return results


_CSV_FIELDS = ("file", "caption", "confidence", "score", "error")


def _record(result: CaptionResult) -> dict:
    return {"file": result.image, "caption": result.caption,
            "confidence": None if result.confidence is None else round(result.confidence, 6),
            "score": result.score, "error": result.error or ""}


def rows_to_csv(results: Iterable[CaptionResult]) -> str:
    """CSV text with a header (file, caption, confidence, score, error); cells that a spreadsheet would
    run as formulas are quoted with ``'``."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=_CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for result in results:
        writer.writerow({key: spreadsheet_safe(value) for key, value in _record(result).items()})
    return out.getvalue()


def rows_to_json(results: Iterable[CaptionResult]) -> str:
    """A JSON array of the library's result objects (``CaptionResult.to_dict``), one per input."""
    return json.dumps([result.to_dict() for result in results], indent=2, ensure_ascii=False) + "\n"
