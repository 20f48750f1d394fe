"""Where LUISE pretraining pays: CTC fine-tuning on 1%, 3%, 10% and 30% of the connected-digit training labels,
pretrained against random initialisation, several seeds; and an ablation of the fine-tuning recipe at 10%.

    python -m experiments.benchmarks.ssl.label_fraction [--fractions 0.01 0.03 0.1 0.3] [--seeds 1 2]
        [--sft-steps 400] [--val-every 100] [--workers 2] [--threads 1] [--no-ablation]

Pretraining is the LUISE validity benchmark's (same options, same `--out`: either benchmark resumes the other's
pretraining stages). Every fine-tuning run has the same number of steps at every fraction and keeps its best
validation checkpoint (validation every `--val-every` steps), which is what is tested: early stopping by
validation WER. A seed draws the training subset, the head's initialisation and the batch order, the same in both
arms. Fine-tuning runs go to `--workers` processes of `--threads` threads each (stages of the pipeline `luise`,
named `sft_f<fraction>[_seed<s>]`, `sft_scratch_f<fraction>...`, `sft_<ablation>...`), so an interrupted
benchmark resumes. Reports a table and a figure of WER against label fraction (mean ± sd, seen speakers and the
held-out speaker), the ablation table, and logs both to one MLflow run (experiment `luise`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from experiments.benchmarks.ssl.luise_validity import (
    add_pretraining_arguments,
    mean_sd,
    pretraining_arguments,
)
from experiments.core import tracking
from experiments.core.pipelines.luise import sft_seeds
from experiments.core.stages import Pipeline
from experiments.core.stages import read_stage as stage
from experiments.core.tracking import ROOT
from experiments.pipeline import main as run_pipeline

TRAIN_UTTERANCES = 3000  # connected-digit training set (data/connected_digits.yaml counts)
COLUMNS = ("test/wer", "test_heldout/wer", "test/cer", "test_heldout/cer")


def ablations(steps: int) -> dict[str, list[str]]:
    """Fine-tuning recipes of the ablation (pretrained encoder, `--ablation-fraction` of the labels); the
    default recipe is that fraction's run. The tri-stage schedule is wav2vec 2.0's: 10% warm-up, 40% hold, 50%
    exponential decay, the encoder frozen for the first quarter."""
    tri_stage = [
        "++model.scheduler.name=tri_stage",
        f"model.scheduler.warmup_steps={steps // 10}",
        f"++model.scheduler.hold_steps={steps * 4 // 10}",
        "~model.scheduler.min_ratio",
        f"model.freeze_encoder_steps={steps // 4}",
    ]
    return {
        "keep_all_layers": ["model.reset_encoder_layers=0"],
        "layer_decay": ["model.encoder_layer_decay=0.75"],
        "tri_stage_frozen": tri_stage,
        "published": ["model.reset_encoder_layers=0", "model.encoder_layer_decay=0.75", *tri_stage],
    }


def chosen_ablations(args: argparse.Namespace) -> dict[str, list[str]]:
    recipes = ablations(args.sft_steps)
    return {name: recipes[name] for name in args.ablations or recipes}


def fraction_name(fraction: float) -> str:
    return f"_f{fraction:g}"


def sft_arguments(args: argparse.Namespace, fraction: float) -> list[str]:
    return [
        f"data.train_fraction={fraction}",
        f"trainer.max_steps={args.sft_steps}",
        # validation by steps across epochs: an epoch is 2 steps at 1% and 45 at 30%
        "trainer.check_val_every_n_epoch=null",
        f"trainer.val_check_interval={args.val_every}",
    ]


def jobs(args: argparse.Namespace) -> dict[str, list[str]]:
    """name -> pipeline arguments of one process (its stages run one after another)."""
    pretraining, seeds = pretraining_arguments(args), [str(s) for s in args.seeds]
    found = {
        f"fraction{fraction_name(f)}": [
            *pretraining,
            "--sft",
            *sft_arguments(args, f),
            "--sft-baseline",
            "--sft-name",
            fraction_name(f),
            "--sft-seeds",
            *seeds,
        ]
        for f in args.fractions
    }
    if args.ablation:
        for name, overrides in chosen_ablations(args).items():
            found[name] = [
                *pretraining,
                "--sft",
                *sft_arguments(args, args.ablation_fraction),
                *overrides,
                "--sft-name",
                f"_{name}",
            ]
    return found


def run_job(name: str, arguments: list[str], args: argparse.Namespace) -> None:
    log = args.out / "logs" / f"{name}.log"
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    with log.open("a") as stream:
        done = subprocess.run(
            [sys.executable, "-m", "experiments.pipeline", *arguments],
            cwd=ROOT,
            env=env,
            stdout=stream,
            stderr=subprocess.STDOUT,
        )
    if done.returncode:
        raise RuntimeError(f"{name} failed (exit {done.returncode}); see {log}")


def metrics_of(out: Path, name: str, seeds: list[int]) -> list[dict]:
    return [stage(out, f"{name}{suffix}")["metrics"] for suffix, _ in sft_seeds(seeds)]


def fraction_table(results: dict, args: argparse.Namespace) -> str:
    lines = [
        f"| labels | utterances | encoder | {' | '.join(COLUMNS)} | pretrained lower (seen) |",
        "|---" * (len(COLUMNS) + 4) + "|",
    ]
    for fraction, arms in results.items():
        count = max(1, round(TRAIN_UTTERANCES * fraction))
        wins = sum(
            p["test/wer"] < r["test/wer"]
            for p, r in zip(arms["pretrained"], arms["random init"], strict=True)
        )
        for arm, runs in arms.items():
            cells = " | ".join(mean_sd([m[c] for m in runs]) for c in COLUMNS)
            tail = f"{wins} of {len(runs)}" if arm == "pretrained" else ""
            lines.append(f"| {fraction:.0%} | {count} | {arm} | {cells} | {tail} |")
        differences = " | ".join(
            mean_sd([p[c] - r[c] for p, r in zip(arms["pretrained"], arms["random init"], strict=True)])
            for c in COLUMNS
        )
        lines.append(f"| {fraction:.0%} | {count} | pretrained − random | {differences} | |")
    return "\n".join(lines)


def ablation_table(out: Path, args: argparse.Namespace) -> str:
    default = stage(out, f"sft{fraction_name(args.ablation_fraction)}")["metrics"]
    scratch = stage(out, f"sft_scratch{fraction_name(args.ablation_fraction)}")["metrics"]
    rows = {"default (top 2 layers re-initialised, warm-up + cosine)": default}
    rows |= {
        f"{name}: {' '.join(overrides)}": stage(out, f"sft_{name}")["metrics"]
        for name, overrides in chosen_ablations(args).items()
    }
    rows["random initialisation"] = scratch
    lines = [f"| recipe | {' | '.join(COLUMNS)} |", "|---" * (len(COLUMNS) + 1) + "|"]
    for name, m in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{m[c]:.3f}" for c in COLUMNS) + " |")
    return "\n".join(lines)


def figure(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fractions = list(results)
    panels = (("test/wer", "seen speakers"), ("test_heldout/wer", "held-out speaker"))
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for axis, (column, title) in zip(axes, panels, strict=True):
        for arm, marker in (("pretrained", "o-"), ("random init", "s--")):
            values = [torch.tensor([m[column] for m in results[f][arm]]) for f in fractions]
            axis.errorbar(
                [100 * f for f in fractions],
                [v.mean().item() for v in values],
                yerr=[v.std().item() if len(v) > 1 else 0.0 for v in values],
                fmt=marker,
                capsize=4,
                label=arm,
            )
        axis.set(xscale="log", xlabel="labelled training data (%)", title=title)
        axis.set_xticks([100 * f for f in fractions], [f"{100 * f:g}" for f in fractions])
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("WER after fine-tuning (mean ± sd over seeds)")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_pretraining_arguments(parser)
    parser.add_argument("--fractions", nargs="+", type=float, default=[0.01, 0.03, 0.1, 0.3])
    parser.add_argument("--seeds", nargs="*", type=int, default=[1, 2], help="seeds besides --seed")
    parser.add_argument("--sft-steps", type=int, default=400, help="fine-tuning steps at every fraction")
    parser.add_argument("--val-every", type=int, default=100, help="validation interval in steps")
    parser.add_argument("--ablation-fraction", type=float, default=0.1)
    parser.add_argument("--no-ablation", dest="ablation", action="store_false")
    parser.add_argument(
        "--ablations",
        nargs="*",
        choices=list(ablations(400)),
        help="the recipes of the ablation (default: all)",
    )
    parser.add_argument("--workers", type=int, default=2, help="fine-tuning processes at once")
    parser.add_argument("--threads", type=int, default=1, help="threads per fine-tuning process")
    args = parser.parse_args(argv)
    if args.ablation and args.ablation_fraction not in args.fractions:
        parser.error("--ablation-fraction must be one of --fractions (its default recipe is that run)")
    start = time.perf_counter()
    run_pipeline(pretraining_arguments(args))  # once, before the processes that share it
    (args.out / "logs").mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(args.workers) as pool:
        futures = [pool.submit(run_job, name, a, args) for name, a in jobs(args).items()]
        for future in futures:
            future.result()
    results = {
        f: {
            "pretrained": metrics_of(args.out, f"sft{fraction_name(f)}", args.seeds),
            "random init": metrics_of(args.out, f"sft_scratch{fraction_name(f)}", args.seeds),
        }
        for f in sorted(args.fractions)
    }
    seeds = [args.seed, *args.seeds]
    report = (
        f"CTC fine-tuning of the LUISE iteration-2 encoder (S) against random initialisation, {args.sft_steps} "
        f"steps at every fraction, best of validations every {args.val_every} steps, seeds {seeds}:\n\n"
        f"{fraction_table(results, args)}\n"
    )
    if args.ablation:
        report += (
            f"\nFine-tuning recipe at {args.ablation_fraction:.0%} of the labels (pretrained encoder, seed "
            f"{args.seed}):\n\n{ablation_table(args.out, args)}\n"
        )
    report += f"\nWall time {(time.perf_counter() - start) / 60:.1f} min (stages done earlier are skipped).\n"
    plot = args.out / "label_fraction.png"
    figure(results, plot)
    (args.out / "label_fraction.json").write_text(
        json.dumps({str(f): r for f, r in results.items()}, indent=2)
    )
    with Pipeline("luise_label_fraction", args.out, experiment="luise") as pipeline:
        pipeline.publish(report, "label_fraction.md")
        tracking.client().log_artifact(pipeline.run_id, str(plot))
    print(report)
    return report


if __name__ == "__main__":
    main()
