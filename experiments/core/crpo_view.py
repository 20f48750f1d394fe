"""Helpers behind notebooks/crpo: read a CRPO pipeline's output folder (`python -m experiments.pipeline crpo
--out DIR`) — per-iteration statistics, every candidate's reward, the chosen and rejected samples of a prompt —
and the judged results of the evidence benchmark."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from datamodules.manifest import read_manifest
from experiments.core.stages import read_stage


def iterations(out: str | Path) -> list[int]:
    """The iterations whose preference sets exist (static mode generates only the first)."""
    found = (int(p.stem.removeprefix("generate")) for p in (Path(out) / "stages").glob("generate*.json"))
    return sorted(found)


def iteration_stats(out: str | Path) -> pd.DataFrame:
    """One row per iteration and split: reward mean/min/max, chosen - rejected margin, pairs, NaN and ties; and
    the training stage's final winner/loser errors where it ran."""
    out, rows = Path(out), []
    for k in iterations(out):
        generated = read_stage(out, f"generate{k}")
        trained_path = out / "stages" / f"train{k}.json"
        trained = json.loads(trained_path.read_text())["metrics"] if trained_path.is_file() else {}
        for split, stats in generated["stats"].items():
            losses = {m: trained.get(f"train/{m}") for m in ("winner_error", "loser_error", "accuracy")}
            rows.append({"iteration": k, "split": split, **stats, **(losses if split == "train" else {})})
    return pd.DataFrame(rows)


def candidate_scores(out: str | Path, split: str = "train") -> pd.DataFrame:
    """Every candidate's reward: columns iteration, caption, sample, score, chosen, rejected."""
    rows = []
    for k in iterations(out):
        manifest = read_manifest(Path(out) / f"iteration{k}" / f"{split}.jsonl")
        for row in manifest.rows:
            scores = row["scores"]
            best, worst = max(scores), min(scores)
            for j, score in enumerate(scores):
                rows.append(
                    {
                        "iteration": k,
                        "caption": row["caption"],
                        "sample": j,
                        "score": score,
                        "chosen": score == best,
                        "rejected": score == worst,
                    }
                )
    return pd.DataFrame(rows)


def pairs(out: str | Path, iteration: int, split: str = "train") -> list[dict]:
    """The iteration's pairs with absolute paths of the chosen and rejected wavs."""
    manifest = read_manifest(Path(out) / f"iteration{iteration}" / f"{split}.jsonl")
    return [
        {
            "caption": row["caption"],
            "chosen": manifest.resolve(row["audio_filepath"]),
            "rejected": manifest.resolve(row["rejected_audio"]),
            "chosen_score": row["chosen_score"],
            "rejected_score": row["rejected_score"],
        }
        for row in manifest.rows
    ]


def plot_rewards(scores: pd.DataFrame):
    """Box plot of the candidates' rewards per iteration, chosen and rejected means marked."""
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 3.5))
    ks = sorted(scores["iteration"].unique())
    axis.boxplot([scores[scores.iteration == k]["score"] for k in ks], positions=ks, widths=0.5)
    for flag, marker, label in (("chosen", "^", "chosen (mean)"), ("rejected", "v", "rejected (mean)")):
        means = [scores[(scores.iteration == k) & scores[flag]]["score"].mean() for k in ks]
        axis.plot(ks, means, marker, label=label)
    axis.set(xlabel="iteration", ylabel="reward", title="rewards of every candidate")
    axis.legend()
    figure.tight_layout()
    return figure


def judged(evidence: str | Path) -> pd.DataFrame:
    """The evidence benchmark's judged results (`evidence.json`) as rows: arm, seed, iteration, set, judges."""
    results = json.loads(Path(evidence).read_text())["results"]
    rows = []
    for name, sets in results.items():
        if name == "sft":
            arm, seed, k = "sft", None, 0
        else:
            arm_seed, it = name.rsplit("_it", 1)
            arm, seed = arm_seed.rsplit("_seed", 1)
            k = int(it)
        for set_name, scores in sets.items():
            rows.append({"arm": arm, "seed": seed, "iteration": k, "set": set_name, **scores})
    return pd.DataFrame(rows)


def plot_judges(table: pd.DataFrame, judges: tuple[str, ...], set_name: str = "test"):
    """Each judge against the iteration, one line per arm (mean over seeds), SFT at iteration 0."""
    import matplotlib.pyplot as plt

    table = table[table["set"] == set_name]
    figure, axes = plt.subplots(1, len(judges), figsize=(4 * len(judges), 3.2))
    sft = table[table.arm == "sft"]
    for axis, judge in zip(axes, judges, strict=True):
        for arm in sorted(set(table.arm) - {"sft"}):
            means = table[table.arm == arm].groupby("iteration")[judge].mean()
            means = pd.concat([sft[judge].rename(None).set_axis([0]), means])
            axis.plot(means.index, means.values, "o-", label=arm)
        axis.set(title=judge, xlabel="iteration")
    axes[0].legend()
    figure.tight_layout()
    return figure
