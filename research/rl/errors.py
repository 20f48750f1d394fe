"""Word-level error counts for sequence-level training and evaluation: a word edit distance in which edits
of keywords may cost more, and keyword hit counts for keyword recall. Pure Python."""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection


def _words(text: str | list[str]) -> list[str]:
    return text.split() if isinstance(text, str) else list(text)


def word_errors(
    hypothesis: str | list[str],
    reference: str | list[str],
    keywords: Collection[str] = (),
    keyword_weight: float = 1.0,
) -> float:
    """Minimum cost of turning `reference` into `hypothesis` with word substitutions, deletions and insertions.

    Each edit costs 1, or `keyword_weight` when it touches a keyword: deleting a reference keyword, inserting a
    keyword, or a substitution whose reference or hypothesis word is a keyword. With no keywords, or a weight
    of 1, this is the word edit distance (the numerator of WER). Strings are split on whitespace."""
    if not keyword_weight > 0:  # also rejects NaN
        raise ValueError(f"keyword_weight must be > 0, got {keyword_weight}")
    hyp, ref = _words(hypothesis), _words(reference)
    keywords = frozenset(keywords)

    def cost(word: str) -> float:
        return keyword_weight if word in keywords else 1.0

    def substitution(r: str, h: str) -> float:
        if r == h:
            return 0.0
        return keyword_weight if r in keywords or h in keywords else 1.0

    # prev[j]: cost of aligning the reference words seen so far with the first j hypothesis words.
    prev = [0.0]
    for h in hyp:
        prev.append(prev[-1] + cost(h))
    for r in ref:
        row = [prev[0] + cost(r)]
        for j, h in enumerate(hyp, start=1):
            row.append(min(prev[j - 1] + substitution(r, h), prev[j] + cost(r), row[j - 1] + cost(h)))
        prev = row
    return prev[-1]


def keyword_counts(
    hypothesis: str | list[str], reference: str | list[str], keywords: Collection[str]
) -> tuple[int, int]:
    """(hits, total) for keyword recall: total counts every keyword occurrence in the reference, hits sums
    min(count in hypothesis, count in reference) over the distinct keywords. Words are compared exactly."""
    keywords = frozenset(keywords)
    hyp = Counter(w for w in _words(hypothesis) if w in keywords)
    ref = Counter(w for w in _words(reference) if w in keywords)
    hits = sum(min(n, hyp[w]) for w, n in ref.items())
    return hits, sum(ref.values())
