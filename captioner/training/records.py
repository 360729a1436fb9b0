"""What the data-set readers share: a captioned image, the report of what was loaded and skipped."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from captioner.core.errors import DatasetError

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


@dataclass
class Entry:
    """An image being collected: its path relative to the image folder (or absolute)."""

    image_id: str
    path: Path
    split: str | None = None
    captions: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.as_posix()


def clean(caption: object) -> str | None:
    """Whitespace-normalised caption, or None when it is not a string."""
    if not isinstance(caption, str):
        return None
    return " ".join(caption.split())


def add_caption(entry: Entry, caption: object, where: str, report: DatasetReport) -> None:
    text = clean(caption)
    if text is None:
        report.skip(SkipReason.BROKEN_LINE, f"{where}: caption is not text")
    elif not text:
        report.skip(SkipReason.EMPTY_CAPTION, where)
    else:
        entry.captions.append(text)


def load_json(path: Path) -> object:
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


def text_lines(path: Path, report: DatasetReport) -> Iterator[tuple[int, str]]:
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
