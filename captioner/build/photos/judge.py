"""Whether a caption is right about a photo of the set, by WordNet 3.0.

A caption is right when one of its nouns is the described thing, a kind of it, or a near or
basic-level generalisation of it: any sense of the noun is the subject synset, lies below it,
or lies above it at most ``NEAR`` steps or at one of the basic-level categories the bundled model's
grammar uses (``lexicon.GENERAL_WORDS``: "a bird" for a seagull, "a dog" for a terrier). The
caption's nouns are its longest runs of words that WordNet lists as a noun ("football helmet",
"cup", "espresso"), function words left out.
"""

from __future__ import annotations

import functools
import re

from captioner.build.imagenet import WordNet
from captioner.build.lexicon import GENERAL_WORDS

NEAR = 2
MAX_NOUN_WORDS = 4
_FUNCTION_WORDS = frozenset("a an the of and with on in by near wearing view at to from its their his her".split())


class CaptionJudge:
    def __init__(self, net: WordNet) -> None:
        self.net = net
        self.basic_level = frozenset(sid for _, synsets in GENERAL_WORDS for sid in synsets)

    def nouns(self, caption: str) -> list[str]:
        """The caption's nouns, longest match first, left to right."""
        words = re.findall(r"[a-z0-9'-]+", caption.lower())
        found, i = [], 0
        while i < len(words):
            for length in range(min(MAX_NOUN_WORDS, len(words) - i), 0, -1):
                phrase = " ".join(words[i : i + length])
                if (length > 1 or phrase not in _FUNCTION_WORDS) and self.net.noun_synsets(phrase):
                    found.append(phrase)
                    i += length
                    break
            else:
                i += 1
        return found

    def is_right(self, caption: str, subjects: tuple[str, ...] | list[str]) -> bool:
        return any(self.names(noun, subject) for noun in self.nouns(caption) for subject in subjects)

    def names(self, noun: str, subject: str) -> bool:
        """Whether ``noun`` (any of its senses) names ``subject``: itself, a kind of it, or a near or
        basic-level generalisation of it."""
        above = self._ancestors(subject)
        for sense in self.net.noun_synsets(noun):
            if subject in self._ancestors(sense):
                return True  # the thing itself or a kind of it
            if sense in above and (above[sense] <= NEAR or sense in self.basic_level):
                return True
        return False

    @functools.lru_cache(maxsize=None)  # noqa: B019 - one judge per run, a few thousand synsets
    def _ancestors(self, synset: str) -> dict[str, int]:
        return self.net.ancestors(synset)
