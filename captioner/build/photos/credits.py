"""Who made a photo and under which licence, as the packages state it, and which licences the set accepts.

GCompris puts a ``README`` beside its pictures: blocks separated by blank lines, each with
``Copyright:`` (the author), ``License:``, ``Source:`` (the original) and ``Files:``, sometimes a
``Comment:`` saying what the picture is based on ("based on a photo by Cnyborg, license CC-BY-SA 3.0,
source at https://..."). Values may continue on indented lines, and a few blocks list their files
without a ``Files:`` key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_KEYS = {"copyright": "copyright", "license": "license", "licence": "license", "source": "source",
         "files": "files", "comment": "comment", "comments": "comment"}
_FILE = re.compile(r"^[\w./-]+\.(?:webp|jpe?g|png|svg|ogg|wav|gif)$", re.IGNORECASE)
_BASED_ON = re.compile(r"based on (?:a photo|an original image) by (?P<author>.+?), licen[cs]e (?P<licence>.+?), "
                       r"(?:original )?source at (?P<url>\S+)", re.IGNORECASE)


@dataclass(frozen=True)
class Credit:
    author: str
    licence_text: str  # as the package writes it
    origin: str | None = None  # where the original photo is
    note: str | None = None  # the package's comment (edits made, what it is based on)

    @property
    def based_on_photo(self) -> bool:
        """Whether the package says this picture is a photo or made from one (not a painting or a drawing)."""
        return self.note is not None and _BASED_ON.search(self.note) is not None


def parse_credits(text: str) -> dict[str, Credit]:
    """Each file a GCompris ``README`` names (path relative to the README's folder) with its credit."""
    credits: dict[str, Credit] = {}
    for block in re.split(r"\n\s*\n", text):
        fields: dict[str, list[str]] = {}
        key = None
        for raw in block.splitlines():
            line = raw.strip()
            head, colon, rest = line.partition(":")
            if colon and head.lower() in _KEYS and not line.lower().startswith(("http:", "https:")):
                key = _KEYS[head.lower()]
                fields.setdefault(key, [])
                line = rest.strip()
            if not line:
                continue
            if _FILE.match(line) and key in (None, "files", "license", "copyright", "source"):
                fields.setdefault("files", []).append(line)
            elif key is not None:
                fields[key].append(line)
        files = fields.get("files", [])
        if not files:
            continue
        credit = _credit(fields)
        for name in files:
            credits[name] = credit
    return credits


def _credit(fields: dict[str, list[str]]) -> Credit:
    authors = [re.sub(r"^copyright\s+", "", line, flags=re.IGNORECASE) for line in fields.get("copyright", [])]
    note = " ".join(fields.get("comment", [])) or None
    origin = " ".join(fields.get("source", [])) or None
    based = _BASED_ON.search(note or "")
    if based is not None:
        # A derivative: the photographer first, then who made the package's version.
        authors = [f"{based['author']} (photo)", *authors]
        origin = origin or based["url"]
    if origin is None and note is not None:
        mentioned = re.search(r"source at (\S+)", note)
        origin = mentioned.group(1) if mentioned else None
    return Credit(author="; ".join(authors) or "unknown", licence_text=" ".join(fields.get("license", [])),
                  origin=origin, note=note)


# Licences that let anyone use, adapt and share a photo (with attribution and share-alike where they
# say so). Anything else (non-commercial, no-derivatives, unknown, none stated) is left out.
_FREE = (
    (re.compile(r"^public[ -]domain$|^pd$"), lambda m: "public-domain"),
    (re.compile(r"^cc0(?:[- ]1\.0)?$"), lambda m: "CC0-1.0"),
    # Museums' and collections' statement for works they publish without restrictions.
    (re.compile(r"^no known copyright restrictions\.?$"), lambda m: "no-known-copyright-restrictions"),
    (re.compile(r"^cc[- ]by(?P<sa>[- ]sa)?[- ]?(?P<v>[1-4]\.[05])$"),
     lambda m: f"CC-BY{'-SA' if m['sa'] else ''}-{m['v']}"),
    (re.compile(r"^gplv?[- ]?(?P<v>[23])(?:\.0)?(?P<plus>\+)?$"),
     lambda m: f"GPL-{m['v']}.0{'-or-later' if m['plus'] else '-only'}"),
    (re.compile(r"^gfdl(?:-niv)?-(?P<v>1\.[23])(?P<plus>\+)?$"),
     lambda m: f"GFDL-{m['v']}{'-or-later' if m['plus'] else '-only'}"),
)


def licence_id(text: str) -> str | None:
    """The SPDX-style id of a licence the set accepts, or ``None`` for any other (or no) licence."""
    key = " ".join(re.sub(r"\(.*?\)", "", text).strip().lower().split())
    if "nc" in re.split(r"[- ]", key) or "nd" in re.split(r"[- ]", key):
        return None
    for pattern, name in _FREE:
        match = pattern.match(key)
        if match:
            return name(match)
    return None
