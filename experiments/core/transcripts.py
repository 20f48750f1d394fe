"""Transcribe a manifest with a trained audio-conditioned LLM: 1-best and N-best per row, WER/CER when the
manifest has transcripts; batched by duration with a progress bar; unreadable rows are named and skipped."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torchmetrics.functional.text import char_error_rate, word_error_rate
from tqdm import tqdm

from datamodules.manifest import read_manifest, write_manifest
from experiments.core.dumps import load_batch
from research.text import CharVocabulary


@dataclass
class TranscriptionResult:
    out: Path
    transcribed: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (audio path, reason)
    wer: float | None = None
    cer: float | None = None


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
) -> TranscriptionResult:
    """Write `out`: the manifest's rows (audio paths absolute) with `hyp` (1-best) and `nbest` ([{text, score}])."""
    manifest = read_manifest(manifest_path)
    order = sorted(range(len(manifest)), key=lambda i: manifest.rows[i]["duration"])
    result, rows = TranscriptionResult(out=Path(out)), {}
    for start in tqdm(range(0, len(order), batch_size), desc="transcribing", unit="batch"):
        indices, audio, lens = load_batch(
            manifest, order[start : start + batch_size], sample_rate, result.failed
        )
        if not indices:
            continue
        hypotheses = speech_llm.transcribe(audio, lens, sample_rate=sample_rate, beams=beams, nbest=nbest)
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
    return result
