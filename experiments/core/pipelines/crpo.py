"""CRPO (TangoFlux): text-to-audio SFT -> reward model -> per iteration: generate N samples per training caption
with the current policy, score them, keep best vs worst, train against the previous policy (frozen).

    python -m experiments.pipeline crpo --out runs/crpo --iterations 3               # the online loop
    python -m experiments.pipeline crpo --out runs/crpo_static --mode static         # baselines: static | random |
    python -m experiments.pipeline crpo --out runs/crpo --reward recognizer          #   sft_only; other rewards
    python -m experiments.pipeline crpo --out runs/crpo_fast debug=fast              # a few steps per stage

Stages: `sft` (experiment=t2a/flow_digits; or `--policy-ckpt`), `reward` (the reward model's training; or
`--reward-ckpt`), then `generate<k>` and `train<k>` (experiment=rl/crpo_digits) for k = 1..K. Modes (equal
training steps in every mode): crpo (ranked pairs, generated anew each iteration), static (iteration 1's pairs
reused every iteration), random (generated anew, two samples at random: no ranking), sft_only (flow matching on
the real data instead of preference pairs). Generation settings (samples per caption, rounds, sampler steps,
guidance, seeds) and the reward are the `crpo` and `reward` nodes of the CRPO config (`--crpo` overrides).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from experiments.core.cli import data_dir
from experiments.core.pipelines import common_overrides

MODES = ("crpo", "static", "random", "sft_only")
# reward -> (experiment that trains its model, config key of that model's run id); None: nothing to train
REWARD_TRAINING = {
    "clap": ("reward/clap_digits", "reward.model.run_id"),
    "recognizer": ("asr/ctc_digits", "reward.recognizer.run_id"),
    "laion_clap": None,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--mode", choices=MODES, default="crpo")
    parser.add_argument("--reward", choices=sorted(REWARD_TRAINING), default="clap")
    parser.add_argument("--policy-ckpt", help="start from this text-to-audio checkpoint (no SFT stage)")
    parser.add_argument("--reward-ckpt", help="the reward model's checkpoint (no reward training stage)")
    parser.add_argument("--data-dir", type=Path, default=data_dir())
    parser.add_argument("--common", nargs="*", default=[], help="Hydra overrides for every training stage")
    parser.add_argument("--sft", nargs="*", default=[], help="Hydra overrides for the SFT stage")
    parser.add_argument(
        "--reward-train", nargs="*", default=[], help="Hydra overrides for the reward's training"
    )
    parser.add_argument(
        "--crpo", nargs="*", default=[], help="Hydra overrides for generation and CRPO training"
    )


def reward_overrides(pipeline, args) -> list[str]:
    """Selects the reward config and points it at its trained model."""
    chosen = [f"reward={args.reward}"]
    training = REWARD_TRAINING[args.reward]
    if training is None:
        return chosen
    key = training[1]
    if args.reward_ckpt:
        return [*chosen, f"{key.replace('run_id', 'ckpt_path')}={args.reward_ckpt}"]
    return [*chosen, f"{key}={pipeline.done['reward']['run_id']}"]


def rows_of(candidates, pairs, folder: Path, sample_rate: int) -> list[dict]:
    """Manifest rows of the pairs (chosen audio as the row's audio) with both latents and wavs written beside."""
    import torch

    from research.audio import write_audio

    rows = []
    folder.mkdir(parents=True, exist_ok=True)
    for p in pairs.has_pair.nonzero().flatten().tolist():
        prompt, win, lose = candidates.prompts[p], int(pairs.chosen[p]), int(pairs.rejected[p])
        name = f"{p:05d}"
        paths = {}
        for side, index in (("chosen", win), ("rejected", lose)):
            torch.save(candidates.latents[p, index].clone(), folder / f"{name}_{side}.pt")
            write_audio(folder / f"{name}_{side}.wav", candidates.audio[p, index, 0], sample_rate)
            paths[side] = f"{folder.name}/{name}_{side}"
        audio = candidates.audio[p, win]
        rows.append(
            {
                "id": f"{folder.name}_{name}",
                "audio_filepath": str(folder / f"{name}_chosen.wav"),  # made relative by write_manifest
                "duration": round(audio.shape[-1] / sample_rate, 4),
                "sample_rate": sample_rate,
                **{k: v for k, v in prompt.items() if v is not None},
                "chosen_latent": f"{paths['chosen']}.pt",
                "rejected_latent": f"{paths['rejected']}.pt",
                "rejected_audio": f"{paths['rejected']}.wav",
                "chosen_score": float(candidates.scores[p, win]),
                "rejected_score": float(candidates.scores[p, lose]),
                "scores": [round(float(s), 6) for s in candidates.scores[p]],
                "seeds": candidates.seeds[p],
            }
        )
    return rows


def preference_set(policy, reward, crpo, iteration: int, split: str, manifest: str, folder: Path) -> dict:
    """Generate, score and pair one split's prompts; write `<folder>/<split>.jsonl`; return its statistics."""
    import torch

    from datamodules.manifest import write_manifest
    from datamodules.prepare.fsdd_captions import caption_prompts
    from research.rl.crpo import generate_candidates, preference_pairs, sample_seed

    prompts = caption_prompts(manifest)[: crpo.prompt_limit]
    rounds = crpo.rounds if split == "train" else 1
    prompts = [prompt for prompt in prompts for _ in range(rounds)]  # a caption's rounds: pairs of their own
    seeds = [
        [sample_seed(crpo.seed, iteration, p["caption"], i % rounds, j) for j in range(crpo.samples)]
        for i, p in enumerate(prompts)
    ]
    candidates = generate_candidates(
        policy,
        reward,
        prompts,
        seeds,
        steps=crpo.sampler_steps,
        guidance=crpo.guidance,
        batch_size=crpo.batch_size,
        progress=f"iteration {iteration} {split}: generating and scoring",
    )
    generator = torch.Generator().manual_seed(sample_seed(crpo.seed, iteration, split, 0, 0))
    pairs = preference_pairs(candidates.scores, mode=crpo.pairs, generator=generator)
    rows = rows_of(candidates, pairs, folder / split, policy.sample_rate)
    path = write_manifest(folder / f"{split}.jsonl", rows)
    valid = candidates.scores[~torch.isnan(candidates.scores)]
    margins = pairs.margins[pairs.has_pair]
    stats = {
        "reward_mean": float(valid.mean()) if len(valid) else float("nan"),
        "reward_min": float(valid.min()) if len(valid) else float("nan"),
        "reward_max": float(valid.max()) if len(valid) else float("nan"),
        "margin_mean": float(margins.mean()) if len(margins) else float("nan"),
        "pairs": len(rows),
        "nan_scores": pairs.nan_scores,
        "tied_prompts": pairs.tied_prompts,
    }
    return {"manifest": str(path), "stats": stats, "candidates": candidates, "pairs": pairs}


def log_generation(
    run_id: str, iteration: int, results: dict[str, dict], sample_rate: int, examples: int = 3
):
    """Reward statistics per split as metrics (step = iteration), a few chosen/rejected pairs as audio."""
    import tempfile

    from experiments.core import tracking
    from research.audio import write_audio

    client = tracking.client()
    for split, result in results.items():
        for name, value in result["stats"].items():
            client.log_metric(run_id, f"{split}/{name}", float(value), step=iteration)
    train = results["train"]
    with tempfile.TemporaryDirectory() as folder:
        lines = []
        for p in train["pairs"].has_pair.nonzero().flatten().tolist()[:examples]:
            for side in ("chosen", "rejected"):
                index = int(getattr(train["pairs"], side)[p])
                path = Path(folder) / f"pair{p}_{side}.wav"
                write_audio(path, train["candidates"].audio[p, index, 0], sample_rate)
                score = float(train["candidates"].scores[p, index])
                lines.append(f"{path.name}\t{score:.4f}\t{train['candidates'].prompts[p]['caption']}")
        (Path(folder) / "pairs.tsv").write_text("\n".join(lines) + "\n")
        client.log_artifacts(run_id, folder, "examples")


def generate_stage(pipeline, iteration: int, policy_stage: str, cfg, args) -> dict:
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from experiments.core.checkpoints import load_submodule

    crpo = cfg.crpo
    policy_ckpt = pipeline.done[policy_stage]["ckpt"]
    settings = {
        "iteration": iteration,
        # the generation batch size changes no output
        "crpo": {k: v for k, v in OmegaConf.to_container(crpo, resolve=True).items() if k != "batch_size"},
        "reward": OmegaConf.to_container(cfg.reward, resolve=True),
    }

    def run(run_id: str) -> dict:
        policy = load_submodule("net", ckpt_path=policy_ckpt)
        reward = instantiate(cfg.reward)
        folder = args.out / f"iteration{iteration}"
        results = {
            split: preference_set(policy, reward, crpo, iteration, split, manifest, folder)
            for split, manifest in (("train", crpo.prompts), ("val", crpo.val_prompts))
        }
        log_generation(run_id, iteration, results, policy.sample_rate)
        return {
            "manifest": results["train"]["manifest"],
            "val_manifest": results["val"]["manifest"],
            "stats": {split: r["stats"] for split, r in results.items()},
        }

    reads = (policy_stage, *(("reward",) if "reward" in pipeline.done else ()))
    return pipeline.stage(
        f"generate{iteration}",
        settings=settings,
        run=run,
        outputs=lambda record: [record["manifest"], record["val_manifest"]],
        reads=reads,
    )


def start_from(ckpt: str) -> list[str]:
    """Overrides that rebuild the text-to-audio model from a checkpoint to train on (SFT's config node replaced:
    Hydra's struct mode refuses new keys)."""
    return [
        "~model.net",
        f"+model.net={{_target_: experiments.core.checkpoints.load_submodule, key: net, ckpt_path: {ckpt}, "
        "train: true}",
    ]


def run(pipeline, args: argparse.Namespace) -> None:
    from experiments.core.compose import compose_config
    from experiments.core.stages import external_record

    common = common_overrides(args)
    # checkpoints given from outside are identified by content: one retrained in place reruns what reads it
    if args.policy_ckpt:
        pipeline.done["sft"] = external_record(args.policy_ckpt)
    else:
        pipeline.train_stage("sft", ["experiment=t2a/flow_digits", *common, *args.sft])
    training = REWARD_TRAINING[args.reward]
    if args.reward_ckpt:
        pipeline.done["reward"] = external_record(args.reward_ckpt)
    elif training and args.mode != "sft_only":
        pipeline.train_stage("reward", [f"experiment={training[0]}", *common, *args.reward_train])
    crpo_overrides = [
        "experiment=rl/crpo_digits",
        *common,
        *(reward_overrides(pipeline, args) if args.mode != "sft_only" else []),
        *args.crpo,
        *(["crpo.pairs=random"] if args.mode == "random" else []),
    ]
    cfg = compose_config([*crpo_overrides, "data.train_manifest=unused"])
    previous = "sft"
    for k in range(1, args.iterations + 1):
        ckpt = pipeline.done[previous]["ckpt"]
        if args.mode == "sft_only":  # the same steps, learning rate and schedule, on the real data
            overrides = [
                "experiment=t2a/flow_digits",
                *common,
                *args.sft,
                *start_from(ckpt),
                f"trainer.max_steps={cfg.trainer.max_steps}",
                f"trainer.val_check_interval={cfg.trainer.val_check_interval}",
                f"model.optimizer.lr={cfg.model.optimizer.lr}",
                f"model.scheduler.warmup_steps={cfg.model.scheduler.warmup_steps}",
                f"model.scheduler.min_ratio={cfg.model.scheduler.min_ratio}",
            ]
            pipeline.train_stage(f"train{k}", overrides, reads=(previous,))
        else:
            source = 1 if args.mode == "static" else k
            if source == k:
                generate_stage(pipeline, k, previous, cfg, args)
            pairs = pipeline.done[f"generate{source}"]
            overrides = [
                *crpo_overrides,
                f"model.net.ckpt_path={ckpt}",
                f"data.train_manifest={pairs['manifest']}",
                f"data.val_manifest={pairs['val_manifest']}",
            ]
            pipeline.train_stage(f"train{k}", overrides, reads=(previous, f"generate{source}"))
        previous = f"train{k}"
