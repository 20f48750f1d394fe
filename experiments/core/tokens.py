"""Tokens of a trained tokenizer: load its codec, encode manifests or files to per-utterance codes and decode them
(behind `experiments.tokenize`), and the exploration helpers of notebooks/explore_tokens (codes per level,
codebook usage, RVQ-1 tokens against the words of a connected-digit utterance, resynthesis)."""

from __future__ import annotations

import mlflow
import numpy as np
import torch

from datamodules.manifest import read_manifest
from experiments.core.checkpoints import load_submodule
from experiments.core.dumps import DumpResult, dump_per_utterance, manifest_of_files
from experiments.core.tracking import TAG_PREFIX, tracking_uri
from research.audio import load_audio
from research.metrics import CodebookUsage
from research.probes import segment_frames
from research.tokenizer.codec import SpeechTokenizerCodec


def load_codec(ckpt: str | None = None, run_id: str | None = None) -> SpeechTokenizerCodec:
    return load_submodule("codec", ckpt_path=ckpt, run_id=run_id)


def encode_batch(codec: SpeechTokenizerCodec, n_q: int | None):
    def compute(audio: torch.Tensor, lens: torch.Tensor) -> list[np.ndarray]:
        codes = codec.encode(audio, n_q)  # (n_q, B, frames)
        frames = [codec.frames(int(n)) for n in lens]
        return [codes[:, i, :f].T.numpy().astype(np.int16) for i, f in enumerate(frames)]

    return compute


def encode(
    codec: SpeechTokenizerCodec,
    *,
    manifest: str | None = None,
    audio: list[str] | None = None,
    out_dir: str | None = None,
    out_manifest: str | None = None,
    column: str = "codes",
    n_q: int | None = None,
    batch_size: int = 8,
    overwrite: bool = False,
    source: dict | None = None,
) -> DumpResult:
    if bool(manifest) == bool(audio):
        raise ValueError("give either a manifest or audio files")
    if audio and not out_dir:
        raise ValueError("encoding audio files needs an output folder (--out-dir)")
    return dump_per_utterance(
        manifest or manifest_of_files(audio),
        column=column,
        compute=encode_batch(codec, n_q),
        rate=codec.frame_rate,
        sample_rate=codec.sample_rate,
        out_dir=out_dir,
        out_manifest=out_manifest,
        batch_size=batch_size,
        overwrite=overwrite,
        desc="encoding",
        made_by=source,
    )


def decode_file(codec: SpeechTokenizerCodec, codes_path: str, levels: int | None = None) -> torch.Tensor:
    codes = np.load(codes_path)
    if codes.ndim != 2 or codes.shape[1] > codec.n_q:
        raise ValueError(
            f"{codes_path}: expected (frames, n_q <= {codec.n_q}) codes, got shape {codes.shape}"
        )
    codes = torch.from_numpy(codes.astype(np.int64)).T[:levels, None, :]  # (n, 1, frames)
    return codec.decode(codes)[0]


def latest_tokenizer_run() -> str:
    """Run id of the newest finished tokenizer run in the tracking store."""
    mlflow.set_tracking_uri(tracking_uri())
    runs = mlflow.search_runs(
        search_all_experiments=True,
        filter_string=f"tags.`{TAG_PREFIX}component` = 'tokenizer' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if runs.empty:
        raise LookupError(
            f"no finished tokenizer run at {tracking_uri()}: train one (experiment=tokenizer/cpu)"
        )
    return str(runs.run_id[0])


def pick_utterances(manifest_path: str, count: int = 2) -> list[dict]:
    """The first `count` utterances of different speakers, with absolute audio paths."""
    manifest = read_manifest(manifest_path)
    chosen, speakers = [], set()
    for index, row in enumerate(manifest.rows):
        if row.get("speaker") not in speakers:
            speakers.add(row.get("speaker"))
            chosen.append({**row, "audio_filepath": str(manifest.audio_path(index))})
        if len(chosen) == count:
            break
    return chosen


def encode_utterance(codec: SpeechTokenizerCodec, row: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (audio (1, 1, T), codes (n_q, T_frames))."""
    wave = load_audio(row["audio_filepath"], sample_rate=codec.sample_rate)[None]
    return wave, codec.encode(wave)[:, 0]


def resynthesis_by_levels(
    codec: SpeechTokenizerCodec, wave: torch.Tensor, levels=(1, 2, 4, 8)
) -> dict[int, np.ndarray]:
    return {k: codec.resynthesize(wave, k)[0, 0].numpy() for k in levels if k <= codec.n_q}


def code_heatmap(codes: torch.Tensor, frame_rate: float, title: str = ""):
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(10, 0.35 * codes.shape[0] + 1.2))
    seconds = codes.shape[1] / frame_rate
    image = axis.imshow(
        codes.numpy(),
        aspect="auto",
        interpolation="nearest",
        cmap="tab20",
        extent=(0, seconds, codes.shape[0] + 0.5, 0.5),
    )
    axis.set_yticks(range(1, codes.shape[0] + 1), [f"RVQ-{i}" for i in range(1, codes.shape[0] + 1)])
    axis.set_xlabel("seconds")
    axis.set_title(title or "code index per level")
    figure.colorbar(image, ax=axis, label="code")
    figure.tight_layout()
    return figure


def codebook_usage(codec: SpeechTokenizerCodec, codes: list[torch.Tensor]) -> dict[str, float]:
    """Per-level entropy / perplexity / dead fraction over a list of (n_q, T) code arrays."""
    usage = CodebookUsage(codec.quantizer.codebook_sizes)
    for utterance in codes:
        usage.update(utterance[:, None, :])
    return {name: float(value) for name, value in usage.compute().items()}


def usage_figure(usage: dict[str, float], sizes: list[int]):
    import matplotlib.pyplot as plt

    levels = range(1, len(sizes) + 1)
    perplexity = [usage[f"level{i}/perplexity"] for i in levels]
    figure, axis = plt.subplots(figsize=(6, 3))
    axis.bar(levels, perplexity, label="perplexity")
    axis.plot(levels, sizes, "k_", markersize=20, label="codebook size")
    axis.set_yscale("log")
    axis.set_xlabel("RVQ level")
    axis.legend()
    figure.tight_layout()
    return figure


def rvq1_alignment_figure(codes: torch.Tensor, segments: list, frame_rate: float, title: str = ""):
    """RVQ-1 code per frame with the digit words of the utterance as shaded spans: content tokens should change
    at word boundaries and repeat for repeated words."""
    import matplotlib.pyplot as plt

    rvq1 = codes[0].numpy()
    times = np.arange(len(rvq1)) / frame_rate
    figure, axis = plt.subplots(figsize=(10, 3))
    axis.step(times, rvq1, where="post", lw=0.8)
    for number, (start, end, word) in enumerate(segments):
        axis.axvspan(start, end, color=f"C{number % 10}", alpha=0.15)
        axis.text((start + end) / 2, axis.get_ylim()[1], word, ha="center", va="bottom", fontsize=9)
    axis.set_xlabel("seconds")
    axis.set_ylabel("RVQ-1 code")
    axis.set_title(title, pad=18)
    figure.tight_layout()
    return figure


def segment_code_overlap(
    codes: torch.Tensor, segments: list, frame_rate: float
) -> list[tuple[str, list[int]]]:
    """The most frequent RVQ-1 codes of each word segment (a text view of the alignment)."""
    rows = []
    for start, end, word in segments:
        span = codes[0, segment_frames(start, end, frame_rate)]
        values, counts = torch.unique(span, return_counts=True)
        rows.append((word, values[counts.argsort(descending=True)][:5].tolist()))
    return rows
