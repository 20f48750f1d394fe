"""Research validity of LUISE at CPU size: does pretraining help, and do iteration-2 labels carry more content?

    python -m experiments.benchmarks.ssl.luise_validity [--pretrain-steps 2000] [--iter2-steps 1000] [--sft-steps 600]
        [--layer L] [--iter2-lr 5e-4] [--iter2-init iter1|fresh] [--sft-seeds 1 2]

Runs the LUISE pipeline (`python -m experiments.pipeline luise`, resumable: an interrupted benchmark picks up where it
stopped) on LibriSpeech excerpts + connected FSDD digits: iteration 1 (random-projection labels), per-layer probe,
k-means labels from the best layer (highest PNMI), iteration 2 (from iteration 1 at a quarter of the LR), probe,
then CTC fine-tuning (top 2 encoder layers re-initialised) on a seeded 10% of the connected-digit training
utterances, and the same encoder from random initialisation at equal fine-tuning steps (`--sft-seeds`: both arms
again per extra seed, with mean, spread and the paired difference). Reports:
1. WER after fine-tuning, pretrained vs random initialisation (seen speakers; held-out speaker) -> pretrained lower;
2. the per-layer probe table of each iteration;
3. purity / PNMI of the labels against the digit alignment of the connected-digit test set: iteration-1
   random-projection labels (as trained, and at the same label count as the k-means) vs the iteration-2 k-means
   labels -> iteration 2 higher.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from experiments.core import tracking
from experiments.core.luise import alignment_quality, iteration_label_sources
from experiments.core.pipelines.luise import sft_seeds
from experiments.core.stages import read_stage as stage
from experiments.core.tracking import ROOT
from experiments.pipeline import main as run_pipeline
from research.ssl.layer_probe import best_layer, format_table


def validation_wer(run_id: str) -> dict[int, float]:
    """{step: val/wer} of a fine-tuning run, from MLflow."""
    history = tracking.client().get_metric_history(run_id, "val/wer")
    return {m.step + 1: m.value for m in history}


def label_quality(out: Path, data_dir: Path, seed: int) -> list[dict]:
    """One row per label source, scored on the seen-speaker connected-digit test set."""
    encoder, sources = iteration_label_sources(
        stage(out, "iter1"), stage(out, "labels"), same_count_seed=seed
    )
    test = data_dir / "connected_digits" / "test.jsonl"
    rate, sample_rate = encoder.frame_rate, encoder.features.mel.sample_rate
    return [
        {"labels": name, **alignment_quality(test, compute, rate, sample_rate)}
        for name, compute in sources.items()
    ]


def mean_sd(values: list[float]) -> str:
    """A table cell "mean ± sd" (just the value when there is one)."""
    values = torch.tensor(values)
    return f"{values.mean():.3f} ± {values.std():.3f}" if len(values) > 1 else f"{values.mean():.3f}"


def add_pretraining_arguments(parser: argparse.ArgumentParser) -> None:
    """The pretraining settings (iteration 1, probe, labels, iteration 2) shared by the LUISE benchmarks, so they
    resume each other's pretraining stages from the same `--out`."""
    parser.add_argument("--pretrain-steps", type=int, default=2000, help="steps of iteration 1")
    parser.add_argument("--iter2-steps", type=int, default=1000, help="steps of iteration 2")
    parser.add_argument(
        "--iter2-lr",
        type=float,
        default=5e-4,
        help="peak LR of iteration 2 (from iteration 1; before the SFT eval-mode fix: WER 0.176 at 2e-3, 0.160 at 5e-4)",
    )
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument(
        "--layer", type=int, help="iteration-1 layer for k-means (default: chosen by the pipeline)"
    )
    parser.add_argument(
        "--iter2-init",
        choices=["iter1", "fresh"],
        default="iter1",
        help="iteration 2 starts from iteration 1 or anew",
    )
    parser.add_argument("--probe-steps", type=int, default=200)
    parser.add_argument("--probe-train-limit", type=int, default=200)
    parser.add_argument("--data-dir", type=Path, default=ROOT / "data")
    parser.add_argument(
        "--seed", type=int, default=12345, help="the training seed (the quantizer's seed too)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "benchmarks" / "luise_validity")


def pretraining_arguments(args: argparse.Namespace) -> list[str]:
    """`python -m experiments.pipeline` arguments of the pretraining stages (no SFT)."""

    def pretrain(steps: int) -> list[str]:
        return [f"trainer.max_steps={steps}", f"trainer.val_check_interval={max(1, steps // 2)}"]

    return [
        "luise",
        "--out",
        str(args.out),
        "--k",
        str(args.k),
        "--data-dir",
        str(args.data_dir),
        "--probe-steps",
        str(args.probe_steps),
        "--probe-train-limit",
        str(args.probe_train_limit),
        *(["--iter2-init-from-iter1"] if args.iter2_init == "iter1" else []),
        *(["--layer", str(args.layer)] if args.layer is not None else []),
        "--common",
        f"seed={args.seed}",
        *("--iter1", *pretrain(args.pretrain_steps)),
        *("--iter2", *pretrain(args.iter2_steps), f"model.optimizer.lr={args.iter2_lr}"),
    ]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_pretraining_arguments(parser)
    parser.add_argument("--sft-steps", type=int, default=600, help="CTC fine-tuning steps of both arms")
    parser.add_argument("--sft-fraction", type=float, default=0.1)
    parser.add_argument("--sft-overrides", nargs="*", default=[], help="Hydra overrides for both SFT arms")
    parser.add_argument(
        "--sft-seeds",
        nargs="*",
        type=int,
        default=[],
        help="fine-tune both arms again with these seeds (about 13 min each) and report mean and spread",
    )
    args = parser.parse_args(argv)
    start = time.perf_counter()
    run_pipeline(
        [
            *pretraining_arguments(args),
            "--sft",
            f"data.train_fraction={args.sft_fraction}",
            f"trainer.max_steps={args.sft_steps}",
            # validate every 10 epochs (of 15 steps at 10%), not every epoch: a third of the SFT time otherwise
            "trainer.check_val_every_n_epoch=10",
            *args.sft_overrides,
            "--sft-baseline",
            "--sft-seeds",
            *map(str, args.sft_seeds),
        ]
    )
    pipeline_s = time.perf_counter() - start
    quality = label_quality(args.out, args.data_dir, args.seed)

    arms = (("pretrained", "sft"), ("random init", "sft_scratch"))
    seeds = [args.seed, *args.sft_seeds]
    stages = {
        arm: {
            seed: stage(args.out, f"{name}{suffix}")
            for seed, (suffix, _) in zip(seeds, sft_seeds(args.sft_seeds), strict=True)
        }
        for arm, name in arms
    }
    runs = {arm: {seed: s["metrics"] for seed, s in by_seed.items()} for arm, by_seed in stages.items()}
    sft = {arm: by_seed[args.seed] for arm, by_seed in runs.items()}
    lines = [
        f"\nCTC fine-tuning on {args.sft_fraction:.0%} of the connected-digit training data, {args.sft_steps} steps:",
        "| encoder | seed | WER seen | CER seen | WER held-out | CER held-out |",
        "|---|---|---|---|---|---|",
    ]
    columns = ("test/wer", "test/cer", "test_heldout/wer", "test_heldout/cer")
    for arm, by_seed in runs.items():
        for seed, m in by_seed.items():
            lines.append(f"| {arm} | {seed} | " + " | ".join(f"{m[c]:.3f}" for c in columns) + " |")
        if len(seeds) > 1:
            cells = " | ".join(mean_sd([m[c] for m in by_seed.values()]) for c in columns)
            lines.append(f"| **{arm}** | mean ± sd | {cells} |")
    if len(seeds) > 1:
        # same seed = same training subset, head initialisation and batch order in both arms: compare in pairs
        differences = {
            c: [runs["pretrained"][seed][c] - runs["random init"][seed][c] for seed in seeds] for c in columns
        }
        cells = " | ".join(mean_sd(values) for values in differences.values())
        lines.append(f"| pretrained − random | mean ± sd | {cells} |")
        wins = sum(d < 0 for d in differences["test/wer"])
        lines.append(f"\npretrained lower seen-speaker WER in {wins} of {len(seeds)} seeds")
    curves = {
        arm: {seed: validation_wer(s["run_id"]) for seed, s in by_seed.items()}
        for arm, by_seed in stages.items()
    }
    # validation runs every 10 epochs, whose length in steps depends on the seed's subset: align by count
    series = {arm: [sorted(c.items()) for c in by_seed.values()] for arm, by_seed in curves.items()}
    every_run = [run for runs_of_arm in series.values() for run in runs_of_arm]
    lines += [
        f"\nValidation WER (seen speakers) during fine-tuning, mean ± sd over {len(seeds)} seed(s):",
        "| step (mean) | " + " | ".join(curves) + " |",
        "|---" * (len(curves) + 1) + "|",
    ]
    for index in range(min(map(len, every_run))):
        step = sum(run[index][0] for run in every_run) / len(every_run)
        cells = " | ".join(mean_sd([run[index][1] for run in runs_of_arm]) for runs_of_arm in series.values())
        lines.append(f"| {step:.0f} | {cells} |")
    for number in (1, 2):
        probe = stage(args.out, f"probe{number}")
        lines += [
            f"\nIteration {number} layer probe (best layer {best_layer(probe['rows'])}):",
            format_table(probe["rows"]),
        ]
    lines += [
        "\nLabels against the digit alignment (connected-digit test set, seen speakers):",
        "| labels | cluster purity | digit purity | PNMI |",
        "|---|---|---|---|",
    ]
    for row in quality:
        lines.append(
            f"| {row['labels']} | {row['cluster_purity']:.3f} | {row['reference_purity']:.3f} | {row['pnmi']:.3f} |"
        )
    wall = time.perf_counter() - start
    lines.append(
        f"\nwall {wall / 60:.1f} min (pipeline {pipeline_s / 60:.1f} min; stages already done are skipped)"
    )
    report = "\n".join(lines)
    print(report)
    result = {
        "sft": sft,
        "sft_by_seed": runs,
        "validation_wer": {arm: by_seed[args.seed] for arm, by_seed in curves.items()},
        "validation_wer_by_seed": curves,
        "label_quality": quality,
        "wall_s": round(wall, 1),
        "table": report,
    }
    (args.out / "report.json").write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
