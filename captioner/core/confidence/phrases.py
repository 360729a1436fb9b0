"""What each phrase of a classifier model's captions stands for, and captions read as phrases.

A model whose decoder learnt a grammar over ImageNet classes ships ``caption_phrases.json`` beside
its weights: every noun phrase its captions are made of ("a tabby cat", "a cat", "on a seashore",
"a view of a valley") with the classifier classes it names, its kind (object, person, clothing or
scene), whether it is a general word, and, for a specific phrase, the general one the grammar uses
for its group ("a tabby cat" -> "a cat"). The grammar's sentences are phrases joined by "and", "with" and "wearing"::

    a cup of espresso | a dog and a pirate ship | a dog a cat and a ball
    a person wearing a kimono with a dog on a seashore | a view of a valley

so a caption reads back as its phrases (longest match first) and is written again from them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from captioner.core.errors import ModelFormatError

FILE_NAME = "caption_phrases.json"
FORMAT = "captioner-caption-phrases"
VERSION = 1
KINDS = ("object", "person", "clothing", "scene")
MAX_FILE_BYTES = 4 * 1024 * 1024
_WORD = re.compile(r"[a-z0-9]+")


def words(text: str) -> tuple[str, ...]:
    """Lower-case words, as captions are written and read."""
    return tuple(_WORD.findall(text.lower().replace("'", "")))


@dataclass(frozen=True)
class Phrase:
    text: str
    classes: tuple[int, ...]  # the classifier classes it names
    kind: str
    general: str | None = None  # the general phrase of a specific one ("a cat" for "a tabby cat")
    alone: str | None = None  # a place's phrase as the whole caption ("a view of a valley" for "in a valley")
    is_general: bool = False  # it names a group by its general word ("a cat", "a tool")


@dataclass(frozen=True)
class Reading:
    """A caption as the grammar wrote it: who wears what, the objects, the place."""

    objects: tuple[Phrase, ...]
    wearer: Phrase | None = None  # the person phrase before "wearing"
    garment: Phrase | None = None
    scene: Phrase | None = None

    @property
    def named(self) -> tuple[Phrase, ...]:
        """The phrases that name something the classifier must see, the most prominent first
        (a general "a person" in front of "wearing" is said because of the garment: not counted)."""
        wearer = () if self.wearer is None or self.wearer.general is None else (self.wearer,)
        return (*wearer, *((self.garment,) if self.garment else ()), *self.objects,
                *((self.scene,) if self.scene else ()))


class PhraseTable:
    """The phrases of one model's captions, read from its ``caption_phrases.json``."""

    def __init__(self, phrases: Sequence[Phrase], num_classes: int) -> None:
        self.num_classes = num_classes
        self._by_words = {words(p.text): p for p in phrases}
        self._by_text = {p.text: p for p in phrases}
        self._longest = max((len(w) for w in self._by_words), default=0)

    @classmethod
    def load(cls, path: str | Path) -> PhraseTable:
        """Read and check the file (``ModelFormatError`` names what is wrong)."""
        path = Path(path)
        try:
            if path.stat().st_size > MAX_FILE_BYTES:
                raise ModelFormatError(f"{path} is larger than {MAX_FILE_BYTES // 1024 // 1024} MiB")
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ModelFormatError(f"{path} could not be read: {error}") from None
        return cls.from_dict(data, str(path))

    @classmethod
    def from_dict(cls, data: object, where: str = FILE_NAME) -> PhraseTable:
        if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("version") != VERSION:
            raise ModelFormatError(f"{where} is not a {FORMAT} file of version {VERSION}")
        num_classes = data.get("num_classes")
        entries = data.get("phrases")
        if type(num_classes) is not int or not 1 <= num_classes <= 100_000 or not isinstance(entries, list):
            raise ModelFormatError(f"{where}: needs num_classes (a whole number) and a list of phrases")
        phrases = [_phrase(entry, num_classes, where) for entry in entries]
        texts = {p.text for p in phrases}
        for p in phrases:
            for other in (p.general, p.alone):
                if other is not None and other not in texts:
                    raise ModelFormatError(f"{where}: {p.text!r} refers to {other!r}, which is not a phrase")
        return cls(phrases, num_classes)

    def phrase(self, text: str) -> Phrase | None:
        return self._by_text.get(text)

    def read(self, caption: str) -> Reading | None:
        """The caption's phrases, or ``None`` when it is not a sentence of the grammar."""
        tokens = words(caption)
        parts: list[Phrase | str] = []
        i = 0
        while i < len(tokens):
            if tokens[i] in ("and", "with", "wearing"):
                parts.append(tokens[i])
                i += 1
                continue
            for length in range(min(self._longest, len(tokens) - i), 0, -1):
                found = self._by_words.get(tokens[i : i + length])
                if found is not None:
                    parts.append(found)
                    i += length
                    break
            else:
                return None
        return _structure(parts)

    def write(self, reading: Reading) -> str:
        """The caption of a reading, written as the grammar writes it."""
        objects = list(dict.fromkeys(p.text for p in reading.objects))
        head = ""
        if reading.garment is not None:
            wearer = reading.wearer.text if reading.wearer is not None else "a person"
            head = f"{wearer} wearing {reading.garment.text}"
            if objects:
                head += " with " + join(objects)
        elif objects:
            head = join(objects)
        if reading.scene is None:
            return head
        if not head:
            return reading.scene.alone or reading.scene.text
        return f"{head} {reading.scene.text}"


def join(phrases: Sequence[str]) -> str:
    """The grammar's list: "a", "a and b", "a b and c"."""
    if len(phrases) <= 2:
        return " and ".join(phrases)
    return " ".join(phrases[:-1]) + " and " + phrases[-1]


def _structure(parts: list[Phrase | str]) -> Reading | None:
    if not parts or isinstance(parts[0], str) or isinstance(parts[-1], str):
        return None
    wearer = garment = None
    if "wearing" in parts:
        at = parts.index("wearing")
        if at != 1 or not isinstance(parts[0], Phrase) or parts[0].kind != "person" or len(parts) < 3:
            return None
        wearer, garment = parts[0], parts[2]
        if not isinstance(garment, Phrase) or garment.kind != "clothing":
            return None
        parts = parts[3:]
        if parts and parts[0] != "with" and not (isinstance(parts[0], Phrase) and parts[0].kind == "scene"):
            return None
        parts = parts[1:] if parts and parts[0] == "with" else parts
    phrases = [p for p in parts if isinstance(p, Phrase)]
    scene = phrases[-1] if phrases and phrases[-1].kind == "scene" else None
    objects = tuple(p for p in phrases if p is not scene)
    if any(p.kind == "scene" for p in objects) or not (objects or garment or scene):
        return None
    return Reading(objects, wearer, garment, scene)


def _phrase(entry: object, num_classes: int, where: str) -> Phrase:
    if not isinstance(entry, dict) or not isinstance(entry.get("text"), str) or not entry["text"]:
        raise ModelFormatError(f"{where}: each phrase needs a text")
    text = entry["text"]
    classes = entry.get("classes")
    if (not isinstance(classes, list) or not classes
            or not all(type(c) is int and 0 <= c < num_classes for c in classes)):
        raise ModelFormatError(f"{where}: {text!r} needs a list of class indices below {num_classes}")
    if entry.get("kind") not in KINDS:
        raise ModelFormatError(f"{where}: {text!r} has kind {entry.get('kind')!r}; kinds are {KINDS}")
    for name in ("general", "alone"):
        if entry.get(name) is not None and not isinstance(entry[name], str):
            raise ModelFormatError(f"{where}: {text!r}: {name} must be a phrase")
    if not isinstance(entry.get("is_general", False), bool):
        raise ModelFormatError(f"{where}: {text!r}: is_general must be true or false")
    return Phrase(text, tuple(classes), entry["kind"], entry.get("general"), entry.get("alone"),
                  entry.get("is_general", False))
