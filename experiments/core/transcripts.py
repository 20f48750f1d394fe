"""Transcribe a manifest with a trained audio-conditioned LLM: 1-best and N-best per row, WER/CER when the
manifest has transcripts, keyword recall with a context column; batched by duration with a progress bar;
unreadable rows are named and skipped."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torchmetrics.functional.text import char_error_rate, word_error_rate
from tqdm import tqdm

from datamodules.manifest import read_manifest, write_manifest
from experiments.core.dumps import load_batch
from research.metrics import KeywordRecall
from research.text import CharVocabulary


@dataclass
class TranscriptionResult:
    out: Path
    transcribed: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (audio path, reason)
    wer: float | None = None
    cer: float | None = None
    keyword_recall: float | None = None


@torch.no_grad()
def transcribe_manifest(
    speech_llm,
    manifest_path: str | Path,
    out: str | Path,
    *,
    sample_rate: int = 16000,
    beams: int = 1,
    nbest: int = 1,
    batch_size: int = 8,
    context_column: str | None = None,
    context_weight: float | None = None,
    prune_top_k: int | None = 5,
) -> TranscriptionResult:
    """Write `out`: the manifest's rows (audio paths absolute) with `hyp` (1-best) and `nbest` ([{text, score}]).
    With `context_column`, each row's context goes into its prompt (`SpeechLLM.decode`)."""
    manifest = read_manifest(manifest_path, required=(context_column,) if context_column else ())
    order = sorted(range(len(manifest)), key=lambda i: manifest.rows[i]["duration"])
    result, rows = TranscriptionResult(out=Path(out)), {}
    for start in tqdm(range(0, len(order), batch_size), desc="transcribing", unit="batch"):
        indices, audio, lens = load_batch(
            manifest, order[start : start + batch_size], sample_rate, result.failed
        )
        if not indices:
            continue
        contexts = (
            [context_text(manifest.rows[i][context_column]) for i in indices] if context_column else None
        )
        hypotheses = speech_llm.transcribe(
            audio,
            lens,
            sample_rate=sample_rate,
            beams=beams,
            nbest=nbest,
            contexts=contexts,
            context_weight=context_weight,
            prune_top_k=prune_top_k,
        )
        for index, item in zip(indices, hypotheses, strict=True):
            rows[index] = {
                **manifest.rows[index],
                "audio_filepath": str(manifest.audio_path(index)),
                "hyp": item[0][0],
                "nbest": [{"text": text, "score": score} for text, score in item],
            }
    ordered = [rows[i] for i in sorted(rows)]
    write_manifest(result.out, ordered)
    result.transcribed = len(ordered)
    scored = [row for row in ordered if row.get("text")]
    if scored:
        normalize = CharVocabulary().normalize
        hyps, refs = [normalize(r["hyp"]) for r in scored], [normalize(r["text"]) for r in scored]
        result.wer, result.cer = float(word_error_rate(hyps, refs)), float(char_error_rate(hyps, refs))
        if context_column or any("keywords" in row for row in scored):
            recall = KeywordRecall()
            keywords = [row_keywords(row, context_column, normalize) for row in scored]
            recall.update(hyps, refs, keywords)
            result.keyword_recall = float(recall.compute())
    return result


def context_text(value: str | list[str]) -> str:
    """A context column's text (a list, such as a contact list, joined)."""
    return ", ".join(value) if isinstance(value, list) else str(value or "")


def row_keywords(row: dict, context_column: str | None, normalize) -> list[str]:
    """The row's `keywords`, else the words of its context that its transcript holds."""
    if "keywords" in row or not context_column:
        keywords = row.get("keywords") or []
        return normalize(keywords if isinstance(keywords, str) else " ".join(keywords)).split()
    said = set(normalize(row["text"]).split())
    return [word for word in normalize(context_text(row[context_column])).split() if word in said]


# contexts of the evaluation: "keyword" holds a run of the spoken words among 3 distractors (the training
# builder's draw), "distractor" only runs that were not said, "oracle" the true run alone (does the model read
# its context at all?)
CONTEXT_KINDS = ("keyword", "distractor", "oracle")
DISTRACTOR_TRIES = 50  # draws of a distractor-only context that shares no word with the transcript


def unsaid_context(builder, rows: list[dict], index: int) -> str:
    """Distractor entries that share no word with the transcript (with ten digit words, a random run of another
    utterance often holds a spoken digit, which would not test hallucination); up to `builder.distractors`."""
    said, entries = set(rows[index]["text"].split()), []
    for attempt in range(DISTRACTOR_TRIES):
        context, _ = builder(rows, index, np.random.default_rng([7, index, attempt]))
        entries += [e for e in context.split(builder.separator) if e and not set(e.split()) & said]
        entries = list(dict.fromkeys(entries))
        if len(entries) >= builder.distractors:
            break
    return builder.separator.join(entries[: builder.distractors])


def with_contexts(rows: list[dict], kind: str, count: int) -> list[dict]:
    """The first `count` rows with a `context` and `keywords` column of one of CONTEXT_KINDS, drawn from the
    rows' transcripts (all of them, not only the first `count`), seeded by row index: the same rows give the same
    contexts on every call."""
    from datamodules.context import ContextBuilder

    if kind not in CONTEXT_KINDS:
        raise ValueError(f"unknown context kind '{kind}', expected one of {list(CONTEXT_KINDS)}")
    builder = ContextBuilder(mode="hotwords", p_true=0.0 if kind == "distractor" else 1.0, ngram=(1, 3))
    builder.bind(rows)
    written = []
    for index, row in enumerate(rows[:count]):
        if kind == "distractor":
            context, keywords = unsaid_context(builder, rows, index), []
        else:
            context, keywords = builder(rows, index, np.random.default_rng([7, index]))
            context = " ".join(keywords) if kind == "oracle" else context
        written.append({**row, "context": context, "keywords": keywords})
    return written
