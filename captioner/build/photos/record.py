"""One photo of the set as its sources describe it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

# WordNet roots a described thing must be under (the first sense under it is taken).
ANIMAL = "n00015388"
ARTIFACT = "n00021939"
NATURAL_OBJECT = "n00019128"  # planets, the sun, coins of nature: galaxies, gravel
PHYSICAL_ENTITY = "n00001930"  # anything concrete (people, tissue, places)


@dataclass(frozen=True)
class Photo:
    key: str  # unique; the photo's file name in the set without its suffix
    suffix: str  # the file's own suffix (the bytes are copied as shipped)
    read: Callable[[], bytes]
    name: str  # what the source calls the photo ("Polar bear", "claw hammer", "Eilean Donan castle")
    descriptions: tuple[str, ...]  # the source's own sentences about the photo, verbatim
    captions: tuple[str, ...]  # hand-written captions, where the project has them
    subject_words: tuple[str, ...]  # WordNet nouns of what is described (one or a few)
    subject_from: str  # "name" (looked up as the source names it), "curated" or "captions"
    domain: str  # WordNet root the described thing is under
    source: str  # the package and the file inside it
    origin: str | None  # where the original photo is published
    author: str
    licence_text: str  # as the source states it
