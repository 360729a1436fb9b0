"""The described thing of a photo as WordNet noun synsets, and the short caption that names it.

A photo's subject words are looked up in WordNet 3.0 within the photo's domain (the first sense,
in WordNet's frequency order, that lies under the domain's root: "Mercury" the planet in the solar
system, "caterpillar" the larva among animals). A name WordNet does not know as a whole is looked
up by its head noun, the last word of an English noun phrase ("Scarlet macaw" -> macaw, "Reims
Cathedral" -> cathedral), after what follows a comma is dropped ("Taj Mahal, Agra, India"). A word
may name its sense explicitly as ``lemma#k`` (WordNet's k-th noun sense) where the first sense
under the root is not the one meant.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from captioner.build.imagenet import WordNet
from captioner.build.photos.record import ANIMAL

CELESTIAL_BODY = "n09239740"
from captioner.core.errors import DatasetError


@dataclass(frozen=True)
class Subject:
    synset: str
    phrase: str  # the words that named it ("Eiffel Tower", "cathedral", "hedgehog")


def resolve(net: WordNet, words: tuple[str, ...], domain: str) -> tuple[Subject, ...]:
    """One subject per word (duplicate synsets dropped); ``DatasetError`` names a word WordNet lacks."""
    found: list[Subject] = []
    for word in words:
        subject = _resolve_one(net, word, domain)
        if subject is None:
            raise DatasetError(f"WordNet has no noun for {word!r} under {net.synset(domain).lemmas[0]!r}.")
        if all(subject.synset != other.synset for other in found):
            found.append(subject)
    return tuple(found)


def _resolve_one(net: WordNet, word: str, domain: str) -> Subject | None:
    lemma, _, sense = word.partition("#")
    if sense:
        senses = net.noun_synsets(lemma)
        return Subject(senses[int(sense) - 1], lemma) if 0 < int(sense) <= len(senses) else None
    phrase = re.sub(r"^(the|a|an)\s+", "", lemma.split(",")[0].strip().rstrip("."), flags=re.IGNORECASE)
    for candidate in (phrase, phrase.split()[-1] if phrase else ""):
        for synset in net.noun_synsets(candidate) if candidate else ():
            if net.is_a(synset, domain):
                return Subject(synset, candidate)
    return None


def caption_for(net: WordNet, subject: Subject) -> str:
    """A short lower-case caption naming the subject: "a polar bear", "the eiffel tower", "scissors"."""
    phrase = subject.phrase
    lemma = net.synset(subject.synset).lemmas[0]
    if net.is_a(subject.synset, CELESTIAL_BODY):
        return f"the {phrase.lower()}" if phrase.lower() in ("sun", "earth", "moon") else phrase.lower()
    if phrase[:1].isupper() and lemma[:1].isupper() and not net.is_a(subject.synset, ANIMAL):
        # A named thing: "the" when its head is a common noun ("the eiffel tower", "the statue of
        # liberty"), its bare name otherwise ("uranus", "mount rushmore").
        head = phrase.split(" of ")[0].split()[-1]
        common = any(head.lower() in net.synset(s).lemmas for s in net.noun_synsets(head))
        return f"the {phrase}".lower() if common else phrase.lower()
    lemmas = net.synset(subject.synset).lemmas
    if not net.lists(phrase) or (phrase.endswith("s") and any(other.startswith("pair of ") for other in lemmas)):
        return phrase.lower()  # "camels", "scissors", "ruins"
    article = "an" if phrase[:1].lower() in "aeiou" else "a"
    return f"{article} {phrase.lower()}"
