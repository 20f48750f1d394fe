"""Does CRPO raise the judged quality per iteration (TangoFlux), at CPU size on captioned FSDD digits?

    python -m experiments.benchmarks.t2a.crpo_evidence [--seeds 1 2 3] [--iterations 3]
        [--arms crpo static random sft_only] [--eval-samples 8] [--workers 2] [--crpo OVERRIDES ...]

Shared stages (`<out>/shared`, the `crpo` pipeline with no iteration): the text-to-audio SFT model
(experiment=t2a/flow_digits) and the CLAP reward (experiment=reward/clap_digits); then a CTC recognizer trained
apart from any reward (experiment=asr/ctc_digits) as a judge. Each arm is the `crpo` pipeline from the same SFT
model and reward, per seed (the seed draws generation seeds and training order), equal training steps per
iteration: crpo (ranked, online), static (iteration 1's pairs every iteration), random (online, unranked pairs),
sft_only (flow matching on the real data). Arms run in `--workers` processes.

Every policy (SFT and each arm, seed and iteration) generates `--eval-samples` samples for each test caption
(speaker-digit pairings never trained on) and each of as many training captions, with the same seeds for every
policy, and is scored by:
- the reward (CLAP cosine) — what CRPO optimises;
- held-out judges that are not the reward: digit accuracy (the judge recognizer's greedy transcript is the
  prompted digit), prompted-speaker accuracy (nearest resemblyzer centroid of real training clips) and the
  Fréchet distance between resemblyzer embeddings of the generated and of real clips of the same captions (reward
  hacking shows as a rising distance).
The real clips of the same captions are scored by the same judges as the ceiling. Reports mean ± sd over seeds
per arm and iteration, writes `<out>/evidence.md` and logs it to the MLflow run of the benchmark.
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

from experiments.benchmarks.ssl.luise_validity import mean_sd
from experiments.core.stages import Pipeline, file_identity, read_stage
from experiments.core.tracking import ROOT
from experiments.pipeline import main as run_pipeline

ARMS = ("crpo", "static", "random", "sft_only")
JUDGES = ("reward", "digit_accuracy", "speaker_accuracy", "frechet")
UNSEEN_BY_JUDGE = 10  # FSDD recordings 0-4 (test) and 5-9 (val) never reach connected-digit training
SETS = ("test", "train")


def shared_arguments(args: argparse.Namespace) -> list[str]:
    shared = ["--common", *args.shared] if args.shared else []
    return ["crpo", "--out", str(args.out / "shared"), "--data-dir", str(args.data_dir), *shared]


def arm_arguments(args: argparse.Namespace, arm: str, seed: int, shared: dict) -> list[str]:
    return [
        "crpo",
        "--out", str(args.out / f"{arm}_seed{seed}"),
        "--data-dir", str(args.data_dir),
        "--mode", arm,
        "--iterations", str(args.iterations),
        "--policy-ckpt", shared["sft"]["ckpt"],
        "--reward-ckpt", best_checkpoint(shared["reward"]),
        "--common", f"seed={seed}", *args.common,
        "--crpo", f"crpo.seed={seed}", f"crpo.rounds={args.rounds}", f"crpo.sampler_steps={args.sampler_steps}",
        f"crpo.guidance={args.guidance}", f"trainer.max_steps={args.train_steps}",
        f"trainer.val_check_interval={args.train_steps}", *args.crpo,
    ]  # fmt: skip


def best_checkpoint(record: dict) -> str:
    """A training stage's best validation checkpoint (what the reward configs load: `which: best`)."""
    from experiments.core.tracking import checkpoint_from_run

    return str(checkpoint_from_run(record["run_id"], "best"))


def run_arm(args: argparse.Namespace, arm: str, seed: int, shared: dict) -> None:
    log = args.out / "logs" / f"{arm}_seed{seed}.log"
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    with log.open("a") as stream:
        command = [sys.executable, "-m", "experiments.pipeline", *arm_arguments(args, arm, seed, shared)]
        done = subprocess.run(command, cwd=ROOT, env=env, stdout=stream, stderr=subprocess.STDOUT)
    if done.returncode:
        raise RuntimeError(f"{arm} seed {seed} failed (exit {done.returncode}); see {log}")


def evaluation_prompts(args: argparse.Namespace) -> dict[str, list[dict]]:
    from datamodules.prepare.fsdd_captions import caption_prompts

    folder = args.data_dir / "fsdd_captions"
    test = caption_prompts(folder / "test.jsonl")
    return {"test": test, "train": caption_prompts(folder / "train.jsonl")[: len(test)]}


class Judges:
    """The reward, the digit and speaker judges and the real clips' embeddings, built once."""

    def __init__(self, args: argparse.Namespace, shared: dict, judge_ckpt: str):
        from hydra.utils import instantiate
        from omegaconf import OmegaConf

        from datamodules.manifest import read_manifest
        from experiments.core.checkpoints import load_submodule
        from research.t2a.judges import DigitJudge, SpeakerJudge, speaker_embeddings

        self.reward_ckpt = best_checkpoint(shared["reward"])
        reward = OmegaConf.load(ROOT / "experiments/configs/reward/clap.yaml")
        reward.model.ckpt_path = self.reward_ckpt
        self.reward = instantiate(reward, _convert_="all")
        self.digits = DigitJudge(load_submodule("net", ckpt_path=judge_ckpt))
        self.prompts = evaluation_prompts(args)
        folder = args.data_dir / "fsdd_captions"
        # real clips of the evaluated captions: what the judges score on real speech, and the Fréchet reference
        self.real: dict[str, dict] = {}
        for name, manifest in (("test", "test.jsonl"), ("train", "test_seen.jsonl")):
            wanted = {p["caption"] for p in self.prompts[name]}
            base = read_manifest(folder / manifest)
            # FSDD recordings 0-9 of a caption: the judge recognizer's connected digits never contain them
            chosen = [
                i for i, r in enumerate(base.rows) if r["caption"] in wanted and r["index"] < UNSEEN_BY_JUDGE
            ]
            rows = [base.rows[i] for i in chosen]
            audio, lens = load_rows(base, chosen)
            self.real[name] = {
                "rows": rows,
                "audio": audio,
                "lens": lens,
                "embeddings": speaker_embeddings(audio, lens, 16000),
            }
        train = read_manifest(folder / "train.jsonl")
        per_speaker: dict[str, list[int]] = {}
        for i, row in enumerate(train.rows):
            per_speaker.setdefault(row["speaker"], []).append(i)
        centroid_clips = [
            i for clips in per_speaker.values() for i in clips[:: max(1, len(clips) // 30)][:30]
        ]
        audio, lens = load_rows(train, centroid_clips)
        self.speakers = SpeakerJudge(
            speaker_embeddings(audio, lens, 16000), [train.rows[i]["speaker"] for i in centroid_clips]
        )

    def score(self, audio: torch.Tensor, lens: torch.Tensor, prompts: list[dict], name: str) -> dict:
        from research.t2a.judges import frechet_distance, speaker_embeddings

        with torch.no_grad():
            reward = self.reward(audio, lens, prompts)
        embeddings = speaker_embeddings(audio, lens, 16000)
        return {
            "reward": float(reward.mean()),
            "digit_accuracy": self.digits.accuracy(audio, lens, [p["text"] for p in prompts]),
            "speaker_accuracy": self.speakers.accuracy(embeddings, [p["speaker"] for p in prompts]),
            "frechet": frechet_distance(embeddings, self.real[name]["embeddings"]),
        }

    def real_scores(self) -> dict:
        return {
            name: self.score(real["audio"], real["lens"], real["rows"], name)
            for name, real in self.real.items()
        }


def load_rows(manifest, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of a manifest as a zero-padded batch (B, 1, T) and lengths, at 16 kHz; every one must be readable."""
    from experiments.core.dumps import load_batch

    failures: list[tuple[str, str]] = []
    _, audio, lens = load_batch(manifest, indices, 16000, failures)
    if failures:
        raise RuntimeError(f"unreadable clips: {failures}")
    return audio, lens


def evaluate_stage(pipeline: Pipeline, name: str, ckpt: str, judges: Judges, args) -> dict:
    """Judge one policy: the same seeds for every policy, so differences are the weights'."""
    from experiments.core.checkpoints import load_submodule
    from research.rl.crpo import sample_seed

    settings = {  # checkpoints by content: one retrained in place is judged again
        "policy": file_identity(ckpt),
        "reward": file_identity(judges.reward_ckpt),
        "samples": args.eval_samples,
        "steps": args.sampler_steps,
        "guidance": args.guidance,
    }

    def run(run_id: str) -> dict:
        policy = load_submodule("net", ckpt_path=ckpt)
        scores = {}
        for set_name, prompts in judges.prompts.items():
            repeated = [p for p in prompts for _ in range(args.eval_samples)]
            seeds = [
                sample_seed(0, 0, p["caption"], 0, j % args.eval_samples) for j, p in enumerate(repeated)
            ]
            audio = torch.cat(
                [
                    policy.generate(
                        [p["caption"] for p in repeated[i : i + 64]],
                        seeds[i : i + 64],
                        args.sampler_steps,
                        args.guidance,
                    )
                    for i in range(0, len(repeated), 64)
                ]
            )
            lens = torch.full((len(audio),), audio.shape[-1])
            scores[set_name] = judges.score(audio, lens, repeated, set_name)
        return {"scores": scores}

    return pipeline.stage(f"eval_{name}", settings=settings, run=run, reads=("judge",))


def table(results: dict, real: dict, args) -> str:
    lines = []
    for set_name, title in (
        ("test", "test captions (pairings never trained on)"),
        ("train", "training captions"),
    ):
        lines += [
            f"\n{title}, {args.eval_samples} samples per caption, mean ± sd over seeds {args.seeds}:\n",
            "| arm | iteration | CLAP reward | digit accuracy | speaker accuracy | Fréchet distance |",
            "|---|---|---|---|---|---|",
        ]
        r = real[set_name]
        lines.append(
            f"| real clips | – | {r['reward']:.3f} | {r['digit_accuracy']:.3f} | {r['speaker_accuracy']:.3f} | 0 |"
        )
        sft = results["sft"][set_name]
        lines.append("| SFT | 0 | " + " | ".join(f"{sft[j]:.3f}" for j in JUDGES) + " |")
        for arm in args.arms:
            for k in range(1, args.iterations + 1):
                runs = [results[f"{arm}_seed{s}_it{k}"][set_name] for s in args.seeds]
                cells = " | ".join(mean_sd([run[j] for run in runs]) for j in JUDGES)
                lines.append(f"| {arm} | {k} | {cells} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument("--eval-samples", type=int, default=4, help="samples per evaluated caption")
    parser.add_argument(
        "--rounds", type=int, default=2, help="candidate sets per training caption and iteration"
    )
    parser.add_argument(
        "--sampler-steps", type=int, default=10, help="Euler steps (candidates and evaluation)"
    )
    parser.add_argument(
        "--guidance",
        type=float,
        default=2.0,
        help="guidance scale (candidates and evaluation); at CPU size 4.5 (TangoFlux) over-saturates the samples",
    )
    parser.add_argument("--train-steps", type=int, default=60, help="CRPO (or SFT) steps per iteration")
    parser.add_argument(
        "--judge-steps",
        type=int,
        default=1500,
        help="training steps of the judge recognizer (the CTC baseline's)",
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--shared", nargs="*", default=[], help="Hydra overrides for the SFT and reward stages"
    )
    parser.add_argument("--common", nargs="*", default=[], help="Hydra overrides for every arm's training")
    parser.add_argument("--crpo", nargs="*", default=[], help="Hydra overrides for generation and CRPO")
    parser.add_argument("--data-dir", type=Path, default=ROOT / "data")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "benchmarks" / "crpo_evidence")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    run_pipeline([*shared_arguments(args), "--iterations", "0"])
    (args.out / "logs").mkdir(parents=True, exist_ok=True)
    shared = {name: read_stage(args.out / "shared", name) for name in ("sft", "reward")}
    jobs = [(arm, seed) for seed in args.seeds for arm in args.arms]
    with Pipeline("crpo_evidence", args.out / "judged", experiment="crpo") as pipeline:
        with ThreadPoolExecutor(args.workers) as pool:
            futures = [pool.submit(run_arm, args, arm, seed, shared) for arm, seed in jobs]
            judge = pipeline.train_stage(  # meanwhile, in this process
                "judge",
                [
                    "experiment=asr/ctc_digits",
                    "task_name=crpo_judge",
                    f"paths.data_dir={args.data_dir}",
                    *args.shared,
                    f"trainer.max_steps={args.judge_steps}",
                ],
            )
            judges = Judges(args, shared, best_checkpoint(judge))
            results = {"sft": evaluate_stage(pipeline, "sft", shared["sft"]["ckpt"], judges, args)["scores"]}
            for future, (arm, seed) in zip(futures, jobs, strict=True):
                future.result()
                arm_stages = args.out / f"{arm}_seed{seed}" / "stages"
                for k in range(1, args.iterations + 1):
                    ckpt = json.loads((arm_stages / f"train{k}.json").read_text())["ckpt"]
                    name = f"{arm}_seed{seed}_it{k}"
                    results[name] = evaluate_stage(pipeline, name, ckpt, judges, args)["scores"]
        real = judges.real_scores()
        report = (
            f"{table(results, real, args)}\n\nWall time {(time.perf_counter() - start) / 60:.1f} min "
            "(stages done earlier are skipped).\n"
        )
        pipeline.publish(report, "evidence.md")
        (args.out / "evidence.json").write_text(json.dumps({"results": results, "real": real}, indent=2))
    print(report)
    return report


if __name__ == "__main__":
    main()
