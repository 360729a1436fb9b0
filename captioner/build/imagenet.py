"""The 1000 ImageNet-1k classes and what WordNet 3.0 knows about them.

The class names come from ``captioner.core.imagenet_classes``. The rest (synset ids, lemmas, hypernym chains) is for building training data: the
synset ids come from timm's data files and the hierarchy from Debian's ``wordnet-base``
database, read directly from ``data.noun`` (nltk's reader does not accept that layout).

ImageNet's synset ids are WordNet 3.0 noun offsets (``n`` + 8 digits), and in ``data.noun``
a synset's offset is the byte position of its line, so one synset is one seek and one line.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from captioner.core.errors import DatasetError
from captioner.core.model.imagenet_classes import imagenet_class_names

WORDNET_DIR = Path("/usr/share/wordnet")
ENTITY = "n00001740"  # the root of WordNet's noun hierarchy

# Index -> synset id pairs that must hold if the names and the ids are in the same order.
_ORDER_CHECKS = {0: "n01440764", 281: "n02123045", 285: "n02124075", 967: "n07920052"}


@functools.cache
def imagenet_synset_ids() -> tuple[str, ...]:
    """WordNet synset ids of the 1000 classes, in the same order as ``imagenet_class_names``."""
    # Located through the import system without importing timm (which would import torch).
    spec = importlib.util.find_spec("timm")
    try:
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError("timm")
        folder = Path(next(iter(spec.submodule_search_locations)))
        text = (folder / "data" / "_info" / "imagenet_synsets.txt").read_text()
    except OSError as exc:
        raise DatasetError(
            "The ImageNet synset list (timm/data/_info/imagenet_synsets.txt) is missing: "
            "install the development requirements (pip install timm)."
        ) from exc
    ids = tuple(text.split())
    if len(ids) != 1000 or any(ids[i] != sid for i, sid in _ORDER_CHECKS.items()):
        raise DatasetError("timm's imagenet_synsets.txt is not the ImageNet-1k list in the expected order.")
    return ids


@dataclass(frozen=True)
class Synset:
    """One noun synset of WordNet 3.0."""

    id: str  # "n" + 8-digit offset, as ImageNet spells it
    lemmas: tuple[str, ...]  # underscores replaced by spaces, WordNet's order
    hypernyms: tuple[str, ...]  # "@" and "@i" pointers, in file order
    gloss: str


class WordNet:
    """A reader for WordNet 3.0's noun database (``data.noun``)."""

    def __init__(self, directory: str | os.PathLike[str] = WORDNET_DIR) -> None:
        self.path = Path(directory) / "data.noun"
        if not self.path.is_file():
            raise DatasetError(
                f"The WordNet 3.0 noun database {self.path} is missing: "
                "install it with `apt-get install wordnet-base`."
            )
        self._data = self.path.read_bytes()
        self._cache: dict[str, Synset] = {}
        self._index: dict[str, tuple[str, ...]] | None = None
        self._exceptions: dict[str, tuple[str, ...]] | None = None

    def synset(self, synset_id: str) -> Synset:
        """The synset with this id (``n02123045``)."""
        found = self._cache.get(synset_id)
        if found is None:
            found = self._cache[synset_id] = self._parse(synset_id)
        return found

    def _parse(self, synset_id: str) -> Synset:
        offset = int(synset_id[1:]) if synset_id[:1] == "n" and synset_id[1:].isdigit() else -1
        end = self._data.find(b"\n", offset)
        line = self._data[offset:end].decode("utf-8") if offset >= 0 else ""
        head, _, gloss = line.partition(" | ")
        fields = head.split()
        if len(fields) < 4 or fields[0] != synset_id[1:] or fields[2] != "n":
            raise DatasetError(f"{self.path} has no noun synset {synset_id}: is it WordNet 3.0?")
        w_cnt = int(fields[3], 16)
        lemmas = tuple(fields[4 + 2 * k].replace("_", " ") for k in range(w_cnt))
        pos = 4 + 2 * w_cnt
        p_cnt = int(fields[pos])
        hypernyms = []
        for k in range(p_cnt):
            symbol, target, target_pos = fields[pos + 1 + 4 * k : pos + 4 + 4 * k]
            if symbol in ("@", "@i") and target_pos == "n":
                hypernyms.append("n" + target)
        return Synset(synset_id, lemmas, tuple(hypernyms), gloss.strip())

    def noun_synsets(self, word: str) -> tuple[str, ...]:
        """Ids of the noun synsets ``word`` names, most frequent sense first (``index.noun``).

        A word WordNet lists only in another form is looked up as its base form the way WordNet's
        own ``morphy`` does for nouns: the irregular plurals of ``noun.exc``, then ``-s``/``-es``/
        ``-ies`` endings.
        """
        index = self._noun_index()
        key = word.strip().lower().replace(" ", "_")
        for form in (key, *self._base_forms(key)):
            if form in index:
                return index[form]
        return ()

    def lists(self, word: str) -> bool:
        """Whether ``word`` is itself a noun lemma of WordNet (no base form looked for)."""
        return word.strip().lower().replace(" ", "_") in self._noun_index()

    def _base_forms(self, word: str) -> list[str]:
        forms = list(self._noun_exceptions().get(word, ()))
        for suffix, replacement in (("ies", "y"), ("ses", "s"), ("xes", "x"), ("ches", "ch"), ("shes", "sh"),
                                    ("s", "")):
            if word.endswith(suffix) and len(word) > len(suffix) + 1:
                forms.append(word[: -len(suffix)] + replacement)
        return forms

    def _noun_index(self) -> dict[str, tuple[str, ...]]:
        if self._index is None:
            index = {}
            for line in (self.path.parent / "index.noun").read_text(encoding="utf-8").splitlines():
                if line.startswith(" "):
                    continue  # the licence at the top of the file
                fields = line.split()
                synset_count = int(fields[2])
                index[fields[0]] = tuple("n" + offset for offset in fields[-synset_count:])
            self._index = index
        return self._index

    def _noun_exceptions(self) -> dict[str, tuple[str, ...]]:
        if self._exceptions is None:
            path = self.path.parent / "noun.exc"
            lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
            self._exceptions = {fields[0]: tuple(fields[1:]) for fields in map(str.split, lines) if len(fields) > 1}
        return self._exceptions

    def is_a(self, synset_id: str, ancestor_id: str) -> bool:
        """Whether ``ancestor_id`` is ``synset_id`` or one of its ancestors (any hypernym path)."""
        return ancestor_id in self.ancestors(synset_id)

    def hypernym_chain(self, synset_id: str) -> list[str]:
        """Ids from ``synset_id``'s parent up to ``entity``, following the first hypernym."""
        chain = []
        current = self.synset(synset_id)
        while current.hypernyms:
            chain.append(current.hypernyms[0])
            current = self.synset(current.hypernyms[0])
        return chain

    def ancestors(self, synset_id: str) -> dict[str, int]:
        """Every ancestor over all hypernym paths (the synset itself at 0) with its least depth."""
        depth = {synset_id: 0}
        frontier = [synset_id]
        while frontier:
            following = []
            for sid in frontier:
                for parent in self.synset(sid).hypernyms:
                    if parent not in depth:
                        depth[parent] = depth[sid] + 1
                        following.append(parent)
            frontier = following
        return depth


@dataclass(frozen=True)
class ImageNetClass:
    """One ImageNet-1k class with its WordNet knowledge."""

    index: int
    synset_id: str
    name: str  # torchvision's display name
    lemmas: tuple[str, ...]
    gloss: str
    hypernyms: tuple[str, ...]  # first-hypernym chain, parent first, ending at entity
    ancestors: Mapping[str, int]  # all ancestors (self included) -> least number of steps


@functools.cache
def wordnet(directory: str = str(WORDNET_DIR)) -> WordNet:
    """A shared reader (the database is read once)."""
    return WordNet(directory)


@functools.cache
def imagenet_classes(directory: str = str(WORDNET_DIR)) -> tuple[ImageNetClass, ...]:
    """The 1000 classes in the classifiers' order, each with lemmas and hypernyms from WordNet."""
    net = wordnet(directory)
    classes = []
    for index, (name, sid) in enumerate(zip(imagenet_class_names(), imagenet_synset_ids(), strict=True)):
        synset = net.synset(sid)
        classes.append(
            ImageNetClass(
                index=index,
                synset_id=sid,
                name=name,
                lemmas=synset.lemmas,
                gloss=synset.gloss,
                hypernyms=tuple(net.hypernym_chain(sid)),
                ancestors=MappingProxyType(net.ancestors(sid)),
            )
        )
    return tuple(classes)
