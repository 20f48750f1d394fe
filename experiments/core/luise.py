"""LUISE between iterations, over manifests: encode utterances layer by layer, probe every layer, fit k-means on
one layer and write its labels beside the manifests. The model logic is in research.ssl.layer_probe and
research.ssl.labels; this module reads manifests and audio, writes dumps and logs to MLflow."""

from __future__ import annotations

import hashlib
import json
import random
import sys
from collections.abc import Iterator
from pathlib import Path

import torch
from tqdm import tqdm

from datamodules.collate import pad_stack
from datamodules.manifest import Manifest, read_manifest
from experiments.core import tracking
from experiments.core.dumps import dump_per_utterance
from research.audio import load_audio
from research.encoder import ConformerEncoder
from research.probes import cluster_quality
from research.ssl.labels import kmeans_label_batch, random_projection_labels
from research.ssl.layer_probe import best_layer, digit_alignment, format_table, probe_layers
from research.ssl.targets import RandomProjectionQuantizer
from research.tokenizer.quantizer import kmeans


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


def probe_manifests(
    encoder: ConformerEncoder,
    train_manifest: str | Path,
    test_manifest: str | Path,
    *,
    train_limit: int = 300,
    test_limit: int = 100,
    **probe_settings,
) -> list[dict]:
    """research.ssl.layer_probe.probe_layers on the first utterances of two manifests."""
    encoder = encoder.eval()
    train = list(layer_states(encoder, read_manifest(train_manifest), limit=train_limit, desc="probe train"))
    test = list(layer_states(encoder, read_manifest(test_manifest), limit=test_limit, desc="probe test"))
    return probe_layers(train, test, frame_rate=encoder.frame_rate, **probe_settings)


def probe_and_report(
    encoder: ConformerEncoder, train_manifest, test_manifest, *, run_id=None, **settings
) -> list:
    """probe_manifests, its table printed with the best layer, and logged to `run_id` when given."""
    rows = probe_manifests(encoder, train_manifest, test_manifest, **settings)
    print(format_table(rows))
    print(f"best layer: {best_layer(rows)}")
    if run_id:
        log_probe_to_mlflow(run_id, rows)
    return rows


def log_probe_to_mlflow(run_id: str, rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    client = tracking.client()
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


def alignment_quality(
    manifest_path: str | Path, compute, frame_rate: float, sample_rate: int, limit: int | None = None
) -> dict[str, float]:
    """Purity / PNMI of per-frame labels (`compute`: a batch function of research.ssl.labels) against the digit
    alignment of a connected-digit manifest."""
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
    source: dict | None = None,
) -> dict[str, Path]:
    """Labels of every utterance of every manifest; returns {manifest path: labelled manifest path}. `source`
    (the encoder's checkpoint and settings) is recorded with the labels: labels from another source are redone."""
    written = {}
    for path in manifests:
        path = Path(path)
        folder = out_dir / path.parent.name
        result = dump_per_utterance(
            path,
            column="kmeans_labels",
            compute=kmeans_label_batch(encoder, layer, centroids),
            rate=encoder.frame_rate,
            sample_rate=encoder.features.mel.sample_rate,
            out_dir=folder / "kmeans_labels",
            out_manifest=folder / f"{path.stem}_kmeans_labels.jsonl",
            batch_size=batch_size,
            desc=f"labels {path.parent.name}/{path.name}",
            made_by=source,
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
    source: dict | None = None,
) -> tuple[Path, dict[str, Path]]:
    """Fit k-means on `layer` and label every manifest into `out_dir` (centroids.pt + write_labels' folders).
    Resumable: a resumed run reads the saved centroids back and keeps the labels it finds when they were made
    by the same source and settings. Returns (centroids path, {manifest path: labelled manifest path})."""
    centroids_path, record = out_dir / "centroids.pt", out_dir / "centroids.json"
    settings = json.loads(
        json.dumps({"layer": layer, "k": k, "seed": seed, "fit": fit_utterances, **(source or {})})
    )
    if centroids_path.is_file() and record.is_file() and json.loads(record.read_text()) == settings:
        centroids = torch.load(centroids_path, weights_only=True)
    else:
        centroids = fit_kmeans(encoder, manifests, layer, k, utterances=fit_utterances, seed=seed)
        out_dir.mkdir(parents=True, exist_ok=True)
        torch.save(centroids, centroids_path)
        record.write_text(json.dumps(settings, indent=2))
    settings["centroids_sha1"] = hashlib.sha1(centroids.numpy().tobytes()).hexdigest()
    written = write_labels(
        encoder, manifests, layer, centroids, out_dir, batch_size=batch_size, source=settings
    )
    return centroids_path, written


def iteration_label_sources(
    iter1: dict, labels: dict, *, same_count_seed: int | None = None
) -> tuple[ConformerEncoder, dict]:
    """(iteration-1 encoder, {name: batch label function}) of a LUISE pipeline's `iter1` and `labels` stage
    records: iteration 1's random-projection targets as trained and iteration 2's k-means targets; with
    `same_count_seed`, also random-projection targets with as many codes as k-means clusters."""
    from experiments.core.checkpoints import load_submodule

    encoder = load_submodule("encoder", ckpt_path=iter1["ckpt"]).eval()
    trained = load_submodule("quantizer", ckpt_path=iter1["ckpt"])
    centroids = torch.load(labels["centroids"], weights_only=True)
    k = len(centroids)
    sources = {
        f"iteration 1: random projection ({trained.codebook_size} codes, as trained)": random_projection_labels(
            encoder, trained
        )
    }
    if same_count_seed is not None:
        same_count = RandomProjectionQuantizer(
            input_dim=trained.projection.shape[1], codebook_size=k, seed=same_count_seed
        )
        sources[f"iteration 1: random projection ({k} codes)"] = random_projection_labels(encoder, same_count)
    layer = labels["layer"]
    sources[f"iteration 2: k-means of iteration-1 layer {layer} ({k} clusters)"] = kmeans_label_batch(
        encoder, layer, centroids
    )
    return encoder, sources
