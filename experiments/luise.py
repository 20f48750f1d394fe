"""LUISE between iterations: probe every layer of a trained encoder, then write k-means labels of one layer.

    python -m experiments.luise probe  --run-id <luise run>            # per-layer CTC probe + purity/PNMI table
    python -m experiments.luise labels --run-id <luise run> --layer 3  # k-means labels beside the manifests

`probe` logs its table, a plot and `probe/*` metrics (step = layer) to the encoder's MLflow run when given a run id,
and names the best layer (highest PNMI, else lowest probe WER). `labels` fits k-means on a sample of that layer's
frames and writes `<out-dir>/<manifest folder>/<stem>_kmeans_labels.jsonl` per manifest (resumable, progress bar),
then prints the overrides of `experiment=ssl/luise_iter2`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from datamodules.collate import pad_stack
from datamodules.manifest import Manifest, read_manifest
from datamodules.prepare.fsdd import DIGIT_WORDS
from experiments.checkpoints import load_submodule
from experiments.dump import dump_per_utterance
from research.audio import load_audio
from research.encoder import SUBSAMPLING, ConformerEncoder
from research.probes import cluster_quality, ctc_probe_error_rates, segment_frames
from research.ssl.targets import RandomProjectionQuantizer, stack_frames
from research.tokenizer.quantizer import kmeans, nearest_codes

SILENCE = len(DIGIT_WORDS)  # reference label of frames between digits


@torch.no_grad()
def layer_states(
    encoder: ConformerEncoder,
    manifest: Manifest,
    *,
    indices: list[int] | None = None,
    limit: int | None = None,
    batch_size: int = 8,
    desc: str = "",
) -> Iterator[tuple[dict, list[torch.Tensor]]]:
    """(row, [every layer's (frames, dim) states]) per utterance: the given rows, else the first `limit`."""
    rate = encoder.features.mel.sample_rate
    indices = indices if indices is not None else list(range(min(limit or len(manifest), len(manifest))))
    for start in tqdm(range(0, len(indices), batch_size), desc=desc or "encoding", unit="batch", leave=False):
        chunk = indices[start : start + batch_size]
        audio, lens = pad_stack([load_audio(manifest.audio_path(i), sample_rate=rate)[0] for i in chunk])
        out = encoder(audio[:, None], lens, output_layers=True)
        for row, (index, frames) in enumerate(zip(chunk, out.lens.tolist(), strict=True)):
            yield manifest.rows[index], [layer[row, :frames] for layer in out.layers]


def digit_alignment(segments: list, frames: int, frame_rate: float) -> torch.Tensor:
    """Reference label per frame from the connected-digit construction: the digit's index, or SILENCE."""
    labels = torch.full((frames,), SILENCE, dtype=torch.long)
    for start, end, word in segments:
        labels[segment_frames(start, end, frame_rate)] = DIGIT_WORDS.index(word)
    return labels


def probe_layers(
    encoder: ConformerEncoder,
    train_manifest: str | Path,
    test_manifest: str | Path,
    *,
    train_limit: int = 300,
    test_limit: int = 100,
    steps: int = 300,
    clusters: int = 50,
    hidden: int = 128,
    seed: int = 0,
) -> list[dict]:
    """One row per layer (0 = the subsampled input): CTC probe WER/CER on `test_manifest`, and, where rows carry
    digit `segments`, cluster purity / PNMI of a k-means of that layer's frames against the digit alignment."""
    encoder = encoder.eval()
    train = list(layer_states(encoder, read_manifest(train_manifest), limit=train_limit, desc="probe train"))
    test = list(layer_states(encoder, read_manifest(test_manifest), limit=test_limit, desc="probe test"))
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
                [digit_alignment(r["segments"], len(states[layer]), encoder.frame_rate) for r, states in test]
            )
            row.update(cluster_quality(assigned, reference))
        rows.append(row)
    return rows


def best_layer(rows: list[dict]) -> int:
    """Highest PNMI where the rows have it (HuBERT picks its k-means layer so: the clusters are the next labels,
    and the probe's BiLSTM reads layer 0 as well as any), else lowest probe WER; ties go to the deeper layer.
    Measured at CPU size (before the SFT eval-mode fix): layer-3 labels (PNMI 0.311) fine-tuned to WER 0.176,
    layer-0 ones (best probe) 0.203."""
    if all("pnmi" in r for r in rows):
        return max(rows, key=lambda r: (r["pnmi"], r["layer"]))["layer"]
    return max(rows, key=lambda r: (-r["wer"], r["layer"]))["layer"]


def format_table(rows: list[dict]) -> str:
    keys = [k for k in ("layer", "wer", "cer", "cluster_purity", "pnmi") if k in rows[0]]
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for row in rows:
        lines.append("| " + " | ".join(f"{row[k]:.3f}" if k != "layer" else str(row[k]) for k in keys) + " |")
    return "\n".join(lines)


def log_probe_to_mlflow(run_id: str, rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    for row in rows:
        for key, value in row.items():
            if key != "layer":
                client.log_metric(run_id, f"probe/{key}", value, step=row["layer"])
    client.log_dict(run_id, {"rows": rows, "best_layer": best_layer(rows)}, "layer_probe.json")
    client.log_text(run_id, format_table(rows), "layer_probe.md")
    figure, axis = plt.subplots(figsize=(6, 3.5))
    layers = [r["layer"] for r in rows]
    for key in ("wer", "cer", "pnmi", "cluster_purity"):
        if key in rows[0]:
            axis.plot(layers, [r[key] for r in rows], marker="o", label=key)
    axis.set_xlabel("layer (0 = subsampled input)")
    axis.legend()
    axis.set_title("LUISE layer probe")
    figure.tight_layout()
    client.log_figure(run_id, figure, "layer_probe.png")
    plt.close(figure)


# --- k-means labels ----------------------------------------------------------------------------------------------
def config_hash(settings: object) -> str:
    """Short, stable digest of JSON-able settings: names label folders and pipeline stage records."""
    return hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:12]


def fit_kmeans(
    encoder: ConformerEncoder,
    manifests: list[str | Path],
    layer: int,
    k: int,
    *,
    utterances: int = 300,
    frames: int = 50000,
    iters: int = 30,
    seed: int = 0,
) -> torch.Tensor:
    """Centroids (k, dim) of `layer`'s states over a seeded sample of utterances from all manifests."""
    parts = [read_manifest(path) for path in manifests]
    pairs = [(part, index) for part in parts for index in range(len(part))]
    sample = random.Random(seed).sample(pairs, min(utterances, len(pairs)))
    states = []
    for part in parts:
        chosen = sorted(index for owner, index in sample if owner is part)
        states += [s[layer] for _, s in layer_states(encoder, part, indices=chosen, desc="k-means sample")]
    states = torch.cat(states)
    generator = torch.Generator().manual_seed(seed)
    states = states[torch.randperm(len(states), generator=generator)[:frames]]
    centroids, _ = kmeans(states, k, iters=iters, generator=generator)
    return centroids


def label_batch(encoder: ConformerEncoder, layer: int, centroids: torch.Tensor):
    @torch.no_grad()
    def compute(audio: torch.Tensor, lens: torch.Tensor) -> list[np.ndarray]:
        out = encoder(audio, lens, output_layers=True)
        states = out.layers[layer]
        return [
            nearest_codes(states[i, :n], centroids).numpy().astype(np.int16)
            for i, n in enumerate(out.lens.tolist())
        ]

    return compute


def random_projection_labels(encoder: ConformerEncoder, quantizer: RandomProjectionQuantizer):
    """Iteration-1 targets as a batch function (label_batch's signature): the quantizer's first codebook over the
    encoder's clean log-mel, one label per 40 ms frame."""

    @torch.no_grad()
    def compute(audio: torch.Tensor, lens: torch.Tensor) -> list[np.ndarray]:
        feats, feat_lens = encoder.features(audio, lens)
        labels = quantizer(stack_frames(feats, SUBSAMPLING))[..., 0]
        frames = (-(-feat_lens // SUBSAMPLING)).tolist()
        return [labels[i, :n].numpy().astype(np.int16) for i, n in enumerate(frames)]

    return compute


def alignment_quality(
    manifest_path: str | Path, compute, frame_rate: float, sample_rate: int, limit: int | None = None
) -> dict[str, float]:
    """Purity / PNMI of per-frame labels (`compute`: a label_batch-style function) against the digit alignment of
    a connected-digit manifest."""
    manifest = read_manifest(manifest_path)
    assigned, reference = [], []
    for index in tqdm(range(min(limit or len(manifest), len(manifest))), desc="label quality", leave=False):
        audio = load_audio(manifest.audio_path(index), sample_rate=sample_rate)
        labels = torch.from_numpy(compute(audio[None], torch.tensor([audio.shape[-1]]))[0]).long()
        assigned.append(labels)
        reference.append(digit_alignment(manifest.rows[index]["segments"], len(labels), frame_rate))
    return cluster_quality(torch.cat(assigned), torch.cat(reference))


def write_labels(
    encoder: ConformerEncoder,
    manifests: list[str | Path],
    layer: int,
    centroids: torch.Tensor,
    out_dir: Path,
    *,
    batch_size: int = 8,
) -> dict[str, Path]:
    """Labels of every utterance of every manifest; returns {manifest path: labelled manifest path}."""
    written = {}
    for path in manifests:
        path = Path(path)
        folder = out_dir / path.parent.name
        result = dump_per_utterance(
            path,
            column="kmeans_labels",
            compute=label_batch(encoder, layer, centroids),
            rate=encoder.frame_rate,
            sample_rate=encoder.features.mel.sample_rate,
            out_dir=folder / "kmeans_labels",
            out_manifest=folder / f"{path.stem}_kmeans_labels.jsonl",
            batch_size=batch_size,
            desc=f"labels {path.parent.name}/{path.name}",
        )
        if result.failed:
            print(f"{len(result.failed)} utterances of {path} could not be read", file=sys.stderr)
        written[str(path)] = result.manifest
    return written


def kmeans_labels(
    encoder: ConformerEncoder,
    manifests: list[str | Path],
    layer: int,
    k: int,
    out_dir: Path,
    *,
    fit_utterances: int = 300,
    seed: int = 0,
    batch_size: int = 8,
) -> tuple[Path, dict[str, Path]]:
    """Fit k-means on `layer` and label every manifest into `out_dir` (centroids.pt + write_labels' folders).
    Resumable: the dump keeps the labels it finds, so `out_dir` must be named by everything that changes them
    (source encoder, layer, k, seed); a resumed run reads the saved centroids back.
    Returns (centroids path, {manifest path: labelled manifest path})."""
    centroids_path = out_dir / "centroids.pt"
    if centroids_path.is_file():
        centroids = torch.load(centroids_path)
    else:
        centroids = fit_kmeans(encoder, manifests, layer, k, utterances=fit_utterances, seed=seed)
        out_dir.mkdir(parents=True, exist_ok=True)
        torch.save(centroids, centroids_path)
    return centroids_path, write_labels(encoder, manifests, layer, centroids, out_dir, batch_size=batch_size)


# --- command line ------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.luise", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("probe", "labels"):
        command = commands.add_parser(name)
        source = command.add_mutually_exclusive_group(required=True)
        source.add_argument("--run-id", help="MLflow run id of a LUISE (or CTC: --key net.encoder) run")
        source.add_argument("--ckpt", help="its checkpoint")
        command.add_argument("--key", default="encoder", help="the encoder's key in the model config")
        command.add_argument("--seed", type=int, default=0)
    probe, labels = commands.choices["probe"], commands.choices["labels"]
    data = Path("data")
    probe.add_argument("--train-manifest", default=str(data / "connected_digits" / "train.jsonl"))
    probe.add_argument("--test-manifest", default=str(data / "connected_digits" / "val.jsonl"))
    probe.add_argument("--train-limit", type=int, default=300)
    probe.add_argument("--test-limit", type=int, default=100)
    probe.add_argument("--steps", type=int, default=300)
    probe.add_argument("--clusters", type=int, default=50)
    probe.add_argument("--hidden", type=int, default=128, help="probe BiLSTM size (0: a linear probe)")
    labels.add_argument("--layer", type=int, required=True)
    labels.add_argument("--k", type=int, default=100)
    labels.add_argument(
        "--manifests",
        nargs="+",
        default=[
            str(data / "librispeech_unlabeled" / "all.jsonl"),
            str(data / "connected_digits" / "train.jsonl"),
            str(data / "connected_digits" / "val.jsonl"),
        ],
    )
    labels.add_argument("--fit-utterances", type=int, default=300)
    labels.add_argument("--out-dir", help="default: data/luise_labels/<hash of source, layer, k, seed>")
    labels.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args(argv)
    encoder = load_submodule(args.key, ckpt_path=args.ckpt, run_id=args.run_id)
    if args.command == "probe":
        rows = probe_layers(
            encoder,
            args.train_manifest,
            args.test_manifest,
            train_limit=args.train_limit,
            test_limit=args.test_limit,
            steps=args.steps,
            clusters=args.clusters,
            hidden=args.hidden,
            seed=args.seed,
        )
        print(format_table(rows))
        print(f"best layer: {best_layer(rows)}")
        if args.run_id:
            log_probe_to_mlflow(args.run_id, rows)
        return 0
    source = args.run_id or str(Path(args.ckpt).resolve())
    out_dir = Path(
        args.out_dir or data / "luise_labels" / config_hash([source, args.layer, args.k, args.seed])
    )
    kmeans_labels(
        encoder,
        args.manifests,
        args.layer,
        args.k,
        out_dir,
        fit_utterances=args.fit_utterances,
        seed=args.seed,
        batch_size=args.batch_size,
    )
    print(f"train with: experiment=ssl/luise_iter2 labels_dir={out_dir} model.num_labels={args.k}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
