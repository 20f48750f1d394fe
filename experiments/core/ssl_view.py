"""Helpers behind notebooks/ssl_layers: a LUISE pipeline folder's (`python -m experiments.pipeline luise --out DIR`,
or the speech_llm pipeline's) layer probes per iteration, the purity of each iteration's targets against the
digit alignment, and a frame-level view of one utterance."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from datamodules.manifest import read_manifest
from experiments.core.luise import alignment_quality, iteration_label_sources
from experiments.core.stages import read_stage
from research.audio import load_audio
from research.ssl.layer_probe import SILENCE, digit_alignment
from research.text import DIGIT_WORDS

ITERATIONS = {1: "probe1", 2: "probe2"}


def probe_table(out: str | Path) -> pd.DataFrame:
    """One row per iteration and layer: the probe's WER/CER and, where measured, cluster purity / PNMI."""
    rows = []
    for iteration, name in ITERATIONS.items():
        rows += [{"iteration": iteration, **row} for row in read_stage(out, name)["rows"]]
    return pd.DataFrame(rows)


def plot_probes(table: pd.DataFrame, metrics: tuple[str, ...] = ("wer", "pnmi")):
    """One panel per metric, layer on x, a line per iteration."""
    import matplotlib.pyplot as plt

    metrics = tuple(m for m in metrics if m in table)
    figure, axes = plt.subplots(1, len(metrics), figsize=(4.5 * len(metrics), 3.2), squeeze=False)
    for axis, metric in zip(axes[0], metrics, strict=True):
        for iteration, rows in table.groupby("iteration"):
            axis.plot(rows["layer"], rows[metric], marker="o", label=f"iteration {iteration}")
        axis.set_xlabel("layer (0 = subsampled input)")
        axis.set_title(f"probe {metric}")
        axis.grid(alpha=0.3)
    axes[0][0].legend()
    figure.tight_layout()
    return figure


def label_purity(out: str | Path, manifest: str | Path, limit: int | None = 100) -> pd.DataFrame:
    """Purity / PNMI of each iteration's targets against the digit alignment of the first `limit` utterances of
    a connected-digit manifest."""
    encoder, sources = iteration_label_sources(read_stage(out, "iter1"), read_stage(out, "labels"))
    rate, sample_rate = encoder.frame_rate, encoder.features.mel.sample_rate
    return pd.DataFrame(
        {"targets": name, **alignment_quality(manifest, compute, rate, sample_rate, limit=limit)}
        for name, compute in sources.items()
    )


@torch.no_grad()
def frame_view(out: str | Path, manifest: str | Path, index: int = 0):
    """One connected-digit utterance frame by frame: its log-mel, the targets of iterations 1 and 2 and the
    digit alignment, on one time axis."""
    import matplotlib.pyplot as plt

    encoder, sources = iteration_label_sources(read_stage(out, "iter1"), read_stage(out, "labels"))
    rows = read_manifest(manifest)
    row = rows.rows[index]
    audio = load_audio(rows.audio_path(index), sample_rate=encoder.features.mel.sample_rate)
    lens = torch.tensor([audio.shape[-1]])
    mel, _ = encoder.features(audio[None], lens)
    targets = {name: compute(audio[None], lens)[0] for name, compute in sources.items()}
    frames = len(next(iter(targets.values())))
    alignment = digit_alignment(row["segments"], frames, encoder.frame_rate)
    seconds = frames / encoder.frame_rate

    figure, axes = plt.subplots(2 + len(targets), 1, figsize=(10, 1.6 * (2 + len(targets))), sharex=True)
    axes[0].imshow(mel[0].T, origin="lower", aspect="auto", extent=(0, seconds, 0, mel.shape[-1]))
    axes[0].set_title(f"{row['text']}: log-mel")
    edges = [i / encoder.frame_rate for i in range(frames + 1)]
    for axis, (name, labels) in zip(axes[1:-1], targets.items(), strict=True):
        axis.stairs(labels, edges, baseline=None)
        axis.set_ylabel("label")
        axis.set_title(name, fontsize=9)
    axes[-1].stairs(alignment.numpy(), edges, baseline=None)
    axes[-1].set_yticks(range(SILENCE + 1), [*DIGIT_WORDS, "(gap)"], fontsize=6)
    axes[-1].set_title("digit alignment")
    axes[-1].set_xlabel("seconds")
    figure.tight_layout()
    return figure
