"""Text context for contextual ASR (Seed-ASR's context SFT): each utterance may get a context string for the LLM
prompt, and the keywords of its transcript that the context holds.

Modes:

- "hotwords" (SLAM-LLM's recipe): with probability `p_true` a random n-gram of the utterance's own transcript,
  plus `distractors` n-grams of other rows' transcripts, shuffled and joined. With `ngram=(99, 99)` every entry is
  a whole transcript (digit strings: a short list of which one may be the spoken one).
- "previous": the transcript of the previous row (manifest order) by the same speaker.
- "column": a manifest column (e.g. a contact list), with its keywords from another column when present.

`p_context` is the probability that an utterance gets any context (Seed-ASR mixes context triples with plain
pairs). Every random choice comes from the generator passed in, so the dataset decides what is reproducible.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

MODES = ("hotwords", "previous", "column")
MAX_BOUND = 8  # rows lists kept precomputed
REDRAWS = 5  # tries for a distractor that differs from the true n-gram and the other entries
PUNCTUATION = string.punctuation + "“”‘’"


def words_of(text: Any) -> list[str]:
    return text.split() if isinstance(text, str) else []


@dataclass(kw_only=True)
class ContextBuilder:
    mode: str = "hotwords"
    p_context: float = 1.0
    p_true: float = 0.5
    ngram: Sequence[int] = (1, 4)
    distractors: int = 3
    separator: str = ", "
    column: str = "context"
    keywords_column: str = "keywords"
    text_field: str = "text"
    speaker_field: str = "speaker"

    # id(rows) -> (rows, words of each transcript, each row's previous row by speaker); one builder may serve the
    # train, validation and test sets of a datamodule, so each rows list keeps its own entry.
    _bound: dict[int, tuple[list, list[list[str]], list[int | None]]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown context mode '{self.mode}', expected one of {list(MODES)}")
        for name in ("p_context", "p_true"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        ngram = tuple(self.ngram)  # Hydra passes a ListConfig
        if len(ngram) != 2:
            raise ValueError(f"ngram must be a pair (lo, hi), got {list(ngram)}")
        lo, hi = (int(n) for n in ngram)
        if lo < 1 or lo > hi:
            raise ValueError(f"ngram must satisfy 1 <= lo <= hi, got ({lo}, {hi})")
        self.ngram = (lo, hi)
        if self.distractors < 0:
            raise ValueError(f"distractors must be >= 0, got {self.distractors}")
        self.distractors = int(self.distractors)

    def bind(self, rows: list[dict[str, Any]]) -> None:
        """Precompute, once per rows list, the words of every transcript and each row's previous row by speaker
        (rows are not expected to change once bound)."""
        self.tables(rows)

    def tables(self, rows: list[dict[str, Any]]) -> tuple[list[list[str]], list[int | None]]:
        cached = self._bound.get(id(rows))
        if cached is not None and cached[0] is rows:
            return cached[1], cached[2]
        words = [words_of(row.get(self.text_field)) for row in rows]
        previous: list[int | None] = []
        last: dict[Any, int] = {}
        for index, row in enumerate(rows):
            speaker = row.get(self.speaker_field)
            previous.append(last.get(speaker) if speaker is not None else None)
            if speaker is not None:
                last[speaker] = index
        if len(self._bound) >= MAX_BOUND:
            self._bound.pop(next(iter(self._bound)))
        self._bound[id(rows)] = (rows, words, previous)
        return words, previous

    def __call__(
        self, rows: list[dict[str, Any]], index: int, rng: np.random.Generator
    ) -> tuple[str, list[str]]:
        """-> (context, keywords) of row `index`; ("", []) when it gets no context."""
        words, previous = self.tables(rows)
        if rng.random() >= self.p_context:
            return "", []
        if self.mode == "hotwords":
            return self.hotwords(words, index, rng)
        if self.mode == "previous":
            before = previous[index]
            return (" ".join(words[before]) if before is not None else ""), []
        return self.from_column(rows[index], words[index])

    def draw_ngram(self, words: list[str], rng: np.random.Generator) -> tuple[str, ...] | None:
        if not words:
            return None
        lo, hi = self.ngram
        n = min(int(rng.integers(lo, hi + 1)), len(words))
        start = int(rng.integers(0, len(words) - n + 1))
        return tuple(words[start : start + n])

    def hotwords(self, words: list[list[str]], index: int, rng: np.random.Generator) -> tuple[str, list[str]]:
        true = self.draw_ngram(words[index], rng)
        include = rng.random() < self.p_true and true is not None
        entries = [true] if include else []
        others = len(words) - 1
        for _ in range(self.distractors if others > 0 else 0):
            for _ in range(REDRAWS):
                other = int(rng.integers(0, others))
                other += other >= index  # never the row itself
                candidate = self.draw_ngram(words[other], rng)
                if candidate is not None and candidate != true and candidate not in entries:
                    entries.append(candidate)
                    break
        order = rng.permutation(len(entries))
        context = self.separator.join(" ".join(entries[i]) for i in order)
        return context, (list(true) if include else [])

    def from_column(self, row: dict[str, Any], transcript: list[str]) -> tuple[str, list[str]]:
        value = row.get(self.column)
        if value is None:
            entries: list[str] = []
        elif isinstance(value, str):
            entries = [value]
        else:
            entries = [str(entry) for entry in value]
        context = self.separator.join(entries)
        given = row.get(self.keywords_column)
        if given is not None:
            return context, [given] if isinstance(given, str) else [str(word) for word in given]
        spoken = {word.strip(PUNCTUATION).casefold() for word in transcript}
        keywords: list[str] = []
        for entry in entries:
            for word in entry.split():
                word = word.strip(PUNCTUATION)
                if word and word.casefold() in spoken and word not in keywords:
                    keywords.append(word)
        return context, keywords
