"""CRPO speed: sampler throughput, one iteration's time split into generation, scoring and training, and
Lightning's overhead on a CRPO step against a plain PyTorch loop, measured side by side in one process.

    python -m experiments.benchmarks.t2a.crpo_speed [--policy CKPT] [--reward CKPT] [--candidates 50]
        [--steps 20] [--rounds 3] [--threads 1]

Defaults read the SFT model and the CLAP reward of the CRPO evidence benchmark (`runs/benchmarks/crpo_evidence`).
Throughput: samples per second of Euler sampling at 10 and 25 steps (guidance on: two model calls a step), of
Griffin-Lim decoding and of the reward. Training: the same CRPO steps (batch of pairs from the generated
candidates, policy + frozen reference) through a Lightning Trainer and through a plain loop (forward, backward,
AdamW step), alternated `--rounds` times; the median per-step times and their ratio (target: Lightning <= 1.05).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from functools import partial
from pathlib import Path

import torch

from experiments.benchmarks.timing import lightning_step_times
from experiments.core.stages import read_stage
from experiments.core.tracking import ROOT

# the evidence benchmark's SFT and reward stages
EVIDENCE = ROOT / "runs" / "benchmarks" / "crpo_evidence" / "shared"


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def crpo_module(policy_state: dict, policy_ckpt: str, lr: float):
    from experiments.core.checkpoints import load_submodule
    from lit_modules.crpo import CRPOModule

    net = load_submodule("net", ckpt_path=policy_ckpt, train=True)
    net.load_state_dict(policy_state)
    return CRPOModule(net=net, optimizer=partial(torch.optim.AdamW, lr=lr), log_examples=0)


def plain_step_times(module, batch: dict, steps: int) -> list[float]:
    """Seconds per step of the same CRPO update written as a plain PyTorch loop."""
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-4)
    module.train()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        noise = torch.randn_like(batch["chosen"])
        t = module.net.sample_times(batch["chosen"].shape[0])
        loss = module.pair_loss(batch, noise, t).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return times


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--policy", help="text-to-audio checkpoint (default: the evidence benchmark's SFT)")
    parser.add_argument("--reward", help="CLAP checkpoint (default: the evidence benchmark's reward)")
    parser.add_argument("--candidates", type=int, default=50, help="samples generated at once")
    parser.add_argument("--steps", type=int, default=20, help="training steps per measurement")
    parser.add_argument("--batch", type=int, default=16, help="pairs per training step")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "benchmarks" / "crpo_speed.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from datamodules.preferences import collate_pairs
    from datamodules.prepare.fsdd_captions import caption_prompts
    from experiments.benchmarks.t2a.crpo_evidence import best_checkpoint
    from experiments.core.checkpoints import load_submodule
    from experiments.core.cli import data_dir

    policy_ckpt = args.policy or read_stage(EVIDENCE, "sft")["ckpt"]
    reward_ckpt = args.reward or best_checkpoint(read_stage(EVIDENCE, "reward"))
    policy = load_submodule("net", ckpt_path=policy_ckpt)
    reward_cfg = OmegaConf.load(ROOT / "experiments/configs/reward/clap.yaml")
    reward_cfg.model.ckpt_path = reward_ckpt
    reward = instantiate(reward_cfg, _convert_="all")
    prompts = caption_prompts(data_dir() / "fsdd_captions" / "train.jsonl")
    prompts = [prompts[i % len(prompts)] for i in range(args.candidates)]
    captions, seeds = [p["caption"] for p in prompts], list(range(args.candidates))

    result: dict = {"threads": args.threads, "candidates": args.candidates}
    lines = [f"{args.threads} thread(s), {args.candidates} candidates at once:"]
    for steps in (10, 25):
        seconds, latents = timed(lambda s=steps: policy.sample(captions, seeds, s, 4.5))
        result[f"sample_{steps}_steps_per_s"] = args.candidates / seconds
        lines.append(
            f"- Euler sampling, {steps} steps, guidance 4.5: {args.candidates / seconds:.1f} samples/s"
        )
    decode_s, audio = timed(lambda: policy.decode(latents))
    lens = torch.full((len(audio),), audio.shape[-1])
    score_s, scores = timed(lambda: reward(audio, lens, prompts))
    result |= {"decode_per_s": args.candidates / decode_s, "score_per_s": args.candidates / score_s}
    lines += [
        f"- Griffin-Lim decoding: {args.candidates / decode_s:.1f} samples/s",
        f"- CLAP reward: {args.candidates / score_s:.1f} samples/s",
    ]

    pairs = [
        {
            "id": str(i),
            "caption": captions[2 * i],
            "chosen": latents[2 * i],
            "rejected": latents[2 * i + 1],
            "chosen_score": float(scores[2 * i]),
            "rejected_score": float(scores[2 * i + 1]),
        }
        for i in range(args.candidates // 2)
    ]
    state = {k: v.clone() for k, v in policy.state_dict().items()}
    batch = collate_pairs((pairs * args.batch)[: args.batch])  # the same batch in both arms
    times: dict[str, list[float]] = {"lightning": [], "plain": []}
    for _ in range(args.rounds):
        for arm, run in (("plain", plain_step_times), ("lightning", lightning_step_times)):
            per_step = run(crpo_module(state, policy_ckpt, 1e-4), batch, args.steps)
            times[arm].append(statistics.median(per_step))
    step = {arm: statistics.median(values) for arm, values in times.items()}
    ratio = step["lightning"] / step["plain"]
    result |= {"step_s": step, "lightning_over_plain": ratio}
    lines += [
        f"- CRPO step ({args.batch} pairs, policy + reference): Lightning {step['lightning']:.3f} s, plain loop "
        f"{step['plain']:.3f} s: ratio {ratio:.3f} (median step of {args.rounds} alternating rounds of {args.steps} steps)",
    ]
    # one iteration of the evidence benchmark's settings, from these rates
    candidates, train_steps = 36 * 2 * 5 + 12 * 5, 60
    generate = candidates / result["sample_10_steps_per_s"] + candidates / result["decode_per_s"]
    score = candidates / result["score_per_s"]
    train = train_steps * step["lightning"]
    total = generate + score + train
    result["iteration_split_s"] = {"generation": generate, "scoring": score, "training": train}
    lines.append(
        f"- one evidence iteration ({candidates} candidates at 10 steps, {train_steps} training steps): "
        f"generation {generate:.0f} s ({generate / total:.0%}), scoring {score:.0f} s ({score / total:.0%}), "
        f"training {train:.0f} s ({train / total:.0%})"
    )
    report = "\n".join(lines)
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({**result, "report": report}, indent=2))
    return result


if __name__ == "__main__":
    main()
