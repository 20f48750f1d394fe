"""Which layer of a speech encoder to take labels from (Seed-ASR fig. 5, HuBERT): per layer, a CTC probe's
WER/CER and, where digit alignments exist, the purity / PNMI of a k-means of the layer's frames."""

from __future__ import annotations

import torch
from tqdm import tqdm

from research.probes import cluster_quality, ctc_probe_error_rates, segment_frames
from research.text import DIGIT_WORDS
from research.tokenizer.quantizer import kmeans, nearest_codes

SILENCE = len(DIGIT_WORDS)  # reference label of frames between digits

# One utterance as the probe sees it: its manifest row (text, optional digit `segments`) and every layer's
# (frames, dim) states.
Utterance = tuple[dict, list[torch.Tensor]]


def digit_alignment(segments: list, frames: int, frame_rate: float) -> torch.Tensor:
    """Reference label per frame from the connected-digit construction: the digit's index, or SILENCE."""
    labels = torch.full((frames,), SILENCE, dtype=torch.long)
    for start, end, word in segments:
        labels[segment_frames(start, end, frame_rate)] = DIGIT_WORDS.index(word)
    return labels


def probe_layers(
    train: list[Utterance],
    test: list[Utterance],
    *,
    frame_rate: float,
    steps: int = 300,
    clusters: int = 50,
    hidden: int = 128,
    seed: int = 0,
) -> list[dict]:
    """One row per layer (0 = the subsampled input): CTC probe WER/CER on `test`, and, where test rows carry
    digit `segments`, cluster purity / PNMI of a k-means of that layer's frames against the digit alignment."""
    aligned = all("segments" in row for row, _ in test)
    rows = []
    for layer in tqdm(range(len(train[0][1])), desc="probing layers", unit="layer"):
        row = {"layer": layer}
        row.update(
            ctc_probe_error_rates(
                [(states[layer], r["text"]) for r, states in train],
                [(states[layer], r["text"]) for r, states in test],
                steps=steps,
                hidden=hidden,
                seed=seed,
            )
        )
        if aligned:
            generator = torch.Generator().manual_seed(seed)
            fit_frames = torch.cat([states[layer] for _, states in train])
            centroids, _ = kmeans(fit_frames, clusters, iters=20, generator=generator)
            assigned = torch.cat([nearest_codes(states[layer], centroids) for _, states in test])
            reference = torch.cat(
                [digit_alignment(r["segments"], len(states[layer]), frame_rate) for r, states in test]
            )
            row.update(cluster_quality(assigned, reference))
        rows.append(row)
    return rows


def best_layer(rows: list[dict], by: str | None = None) -> int:
    """Highest PNMI where the rows have it (HuBERT picks its k-means layer so: the clusters are the next labels,
    and the probe's BiLSTM reads layer 0 as well as any), else (or with by="wer") lowest probe WER; ties go to the
    deeper layer.
    Measured at CPU size (before the SFT eval-mode fix): layer-3 labels (PNMI 0.311) fine-tuned to WER 0.176,
    layer-0 ones (best probe) 0.203."""
    if by not in (None, "pnmi", "wer"):
        raise ValueError(f"best_layer: by must be 'pnmi' or 'wer', got {by!r}")
    if by == "pnmi" and not all("pnmi" in r for r in rows):
        raise ValueError("best_layer: by='pnmi' needs every row's PNMI (probes of digit-aligned data)")
    if by != "wer" and all("pnmi" in r for r in rows):
        return max(rows, key=lambda r: (r["pnmi"], r["layer"]))["layer"]
    return max(rows, key=lambda r: (-r["wer"], r["layer"]))["layer"]


def format_table(rows: list[dict]) -> str:
    keys = [k for k in ("layer", "wer", "cer", "cluster_purity", "pnmi") if k in rows[0]]
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for row in rows:
        lines.append("| " + " | ".join(f"{row[k]:.3f}" if k != "layer" else str(row[k]) for k in keys) + " |")
    return "\n".join(lines)
