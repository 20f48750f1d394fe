"""Speed and memory of LUISE pretraining, as ratios measured side by side in one run (the machine is shared):

1. training throughput (40 ms encoder frames per second) of the LightningModule against a plain PyTorch loop over
   the same modules, masking and loss (target: Lightning overhead <= 5%), each arm in its own process,
   alternating, with its peak memory;
2. k-means label dump throughput (seconds of audio labelled per second) at batch size 1 and batched.

    python -m experiments.benchmarks.ssl.luise_speed [--encoder s] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from hydra.utils import instantiate

from experiments.benchmarks.timing import (
    alternate_arms,
    lightning_step_times,
    peak_rss_mb,
    random_audio_batch,
)
from experiments.core.compose import compose_config
from experiments.core.tracking import ROOT
from lit_modules.optim import warmup_cosine

WARMUP_STEPS = 3  # allocator warm-up and first-call overheads


def build_module(encoder: str):
    """Iteration-1 LUISE exactly as `experiment=ssl/luise_iter1` builds it."""
    cfg = compose_config(["experiment=ssl/luise_iter1", f"model/encoder={encoder}"])
    torch.manual_seed(0)
    return instantiate(cfg.model, _convert_="all"), cfg.model.scheduler


def plain_step_times(module, batch: dict, steps: int, scheduler: dict) -> list[float]:
    optimizer = module.optimizer_factory(module.parameters())
    schedule = warmup_cosine(
        optimizer, warmup_steps=scheduler["warmup_steps"], total_steps=steps, min_ratio=scheduler["min_ratio"]
    )
    module.train()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        loss = module.masked_step(batch)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        times.append(time.perf_counter() - start)
    return times


def run_arm(arm: str, encoder: str, steps: int, seconds: float, batch: int) -> dict:
    module, scheduler = build_module(encoder)
    data = random_audio_batch(seconds, batch)
    times = (
        lightning_step_times(module, data, steps)
        if arm == "lightning"
        else plain_step_times(module, data, steps, scheduler)
    )
    step_s = statistics.median(times[WARMUP_STEPS:])
    frames = batch * int(seconds * module.encoder.frame_rate)
    return {"arm": arm, "step_s": step_s, "frames_per_s": frames / step_s, "peak_rss_mb": peak_rss_mb()}


def dump_rates(encoder_size: str, manifest: Path, k: int, batch_sizes: list[int]) -> dict[int, float]:
    """Seconds of audio labelled per second by `write_labels` (random encoder and centroids: timing only)."""
    from datamodules.manifest import read_manifest
    from experiments.core.luise import write_labels

    module, _ = build_module(encoder_size)
    encoder = module.encoder.eval()
    centroids = torch.randn(k, encoder.d_model, generator=torch.Generator().manual_seed(0))
    audio_seconds = sum(read_manifest(manifest).durations)
    rates = {}
    for batch_size in batch_sizes:
        with tempfile.TemporaryDirectory() as out_dir:
            start = time.perf_counter()
            write_labels(encoder, [manifest], 2, centroids, Path(out_dir), batch_size=batch_size)
            rates[batch_size] = audio_seconds / (time.perf_counter() - start)
    return rates


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--encoder", default="s", help="model/encoder size: tiny, s, m, l")
    parser.add_argument("--rounds", type=int, default=3, help="alternating Lightning / plain rounds")
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--crop-seconds", type=float, default=4.0)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument(
        "--dump-manifest", type=Path, default=ROOT / "data" / "connected_digits" / "val.jsonl"
    )
    parser.add_argument("--arm", help=argparse.SUPPRESS)  # internal: run one training arm in this process
    args = parser.parse_args(argv)
    if args.arm:
        print(json.dumps(run_arm(args.arm, args.encoder, args.steps, args.crop_seconds, args.batch)))
        return {}

    arms = alternate_arms(
        "experiments.benchmarks.ssl.luise_speed",
        ["lightning", "plain"],
        args.rounds,
        ["--encoder", args.encoder, "--steps", str(args.steps), "--crop-seconds", str(args.crop_seconds)]
        + ["--batch", str(args.batch)],
    )
    fps = {arm: statistics.median(r["frames_per_s"] for r in runs) for arm, runs in arms.items()}
    rss = {arm: max(r["peak_rss_mb"] for r in runs) for arm, runs in arms.items()}
    overhead = fps["plain"] / fps["lightning"] - 1
    print(
        f"\nLUISE pretraining (encoder {args.encoder}, batch {args.batch} x {args.crop_seconds:g} s, "
        f"median of {args.rounds} alternating rounds):"
    )
    print("| loop | frames/s (40 ms) | peak RSS (MB) |\n|---|---|---|")
    for arm in arms:
        print(f"| {arm} | {fps[arm]:.0f} | {rss[arm]:.0f} |")
    print(f"Lightning overhead: {overhead * 100:+.1f}% (target <= 5%)")

    rates = dump_rates(args.encoder, args.dump_manifest, k=100, batch_sizes=[1, 8])
    print(
        f"\nk-means label dump ({args.dump_manifest.parent.name}/{args.dump_manifest.name}, layer 2, k=100):"
    )
    print("| batch size | audio s per s | vs batch 1 |\n|---|---|---|")
    for batch_size, rate in rates.items():
        print(f"| {batch_size} | {rate:.1f} | {rate / rates[1]:.2f}x |")
    return {"frames_per_s": fps, "peak_rss_mb": rss, "lightning_overhead": overhead, "dump_rates": rates}


if __name__ == "__main__":
    main()
