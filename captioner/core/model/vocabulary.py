"""Vocabulary and tokenizer.

The tokenizer is a regular expression, so it needs no downloaded data (the classic
tutorial's ``nltk.word_tokenize`` needs the ``punkt`` models). It lowercases and keeps
runs of letters and digits (with inner apostrophes, as in "man's"); punctuation is dropped,
which is also what the COCO caption evaluation does before scoring.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from captioner.core.errors import ModelFormatError
from captioner.core.model.config import read_json

PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
SPECIAL_TOKENS = (PAD, START, END, UNK)
PAD_ID, START_ID, END_ID, UNK_ID = range(4)

_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")
MAX_VOCAB_FILE_BYTES = 64 * 1024 * 1024


def tokenize(text: str) -> list[str]:
    """Split a caption into lowercase words: ``"A Dog's ball."`` -> ``["a", "dog's", "ball"]``."""
    return _WORD.findall(text.lower())


class Vocabulary:
    """Tokens in index order; the four special tokens come first."""

    def __init__(self, tokens: Sequence[str]):
        tokens = list(tokens)
        if tuple(tokens[:4]) != SPECIAL_TOKENS:
            raise ModelFormatError(f"a vocabulary must start with {list(SPECIAL_TOKENS)}, got {tokens[:4]}")
        if len(set(tokens)) != len(tokens):
            duplicates = sorted({t for t in tokens if tokens.count(t) > 1})[:5]
            raise ModelFormatError(f"the vocabulary repeats tokens: {duplicates}")
        self.tokens = tokens
        self.index = {token: i for i, token in enumerate(tokens)}

    def __len__(self) -> int:
        return len(self.tokens)

    def __contains__(self, word: str) -> bool:
        return word in self.index

    def encode(self, caption: str) -> list[int]:
        """``<start>`` + word ids (``<unk>`` for unknown words) + ``<end>``."""
        return [START_ID, *(self.index.get(w, UNK_ID) for w in tokenize(caption)), END_ID]

    def words(self, ids: Iterable[int]) -> list[str]:
        """The words of a generated sequence: stops at ``<end>``, drops ``<start>`` and ``<pad>``."""
        words = []
        for i in ids:
            if i == END_ID:
                break
            if i not in (PAD_ID, START_ID):
                words.append(self.tokens[i])
        return words

    def decode(self, ids: Iterable[int]) -> str:
        return " ".join(self.words(ids))

    @classmethod
    def build(cls, captions: Iterable[str], min_count: int = 4) -> Vocabulary:
        """Words seen at least ``min_count`` times, most frequent first (ties alphabetical)."""
        counts = Counter(w for caption in captions for w in tokenize(caption))
        kept = sorted((w for w, n in counts.items() if n >= min_count and w not in SPECIAL_TOKENS),
                      key=lambda w: (-counts[w], w))
        return cls([*SPECIAL_TOKENS, *kept])

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.tokens, ensure_ascii=False, indent=0) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path, expected_size: int | None = None) -> Vocabulary:
        path = Path(path)
        tokens = read_json(path, MAX_VOCAB_FILE_BYTES)
        if not isinstance(tokens, list) or not all(isinstance(t, str) and t for t in tokens):
            raise ModelFormatError(f"{path} must be a JSON list of non-empty strings")
        if expected_size is not None and len(tokens) != expected_size:
            raise ModelFormatError(
                f"{path} has {len(tokens)} tokens but config.json says vocab_size={expected_size}")
        return cls(tokens)
