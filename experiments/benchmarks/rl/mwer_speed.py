"""Cost of an MWER step against a cross-entropy step of the same AcLLM on the same batch, measured side by side in
one run (the machine is shared and noisy: only the ratios are claims), and the MWER step split into its N-best
decoding (beam search with the current policy) and the rest (teacher-forced scoring of N + 1 sequences per
utterance, the risk, backward and the optimizer step):

    python -m experiments.benchmarks.rl.mwer_speed --ckpt <AcLLM checkpoint> [--steps 6] [--nbest 4] [--threads 1]

The checkpoint is any AcLLM run (e.g. the SFT stage of `experiments.benchmarks.rl.mwer_evidence`); the batch is
8 utterances of the connected-digit validation set with contexts, as `rl/mwer_digits` trains.
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

from experiments.benchmarks.timing import best_of, lightning_step_times
from experiments.core.cli import ROOT

OUTPUT = ROOT / "runs" / "benchmarks" / "mwer_speed.json"


def build(experiment: str, ckpt: str, nbest: int):
    from hydra.utils import instantiate

    import experiments.core.cli  # noqa: F401  (registers the config resolvers)
    from experiments.core.compose import compose_config

    overrides = [
        f"experiment={experiment}",
        f"init.ckpt_path={ckpt}",
        "data.num_workers=0",
        "data.batch_size=8",
    ]
    if experiment.startswith("rl/"):
        overrides.append(f"model.nbest={nbest}")
    cfg = compose_config(overrides)
    return instantiate(cfg.model), cfg


def validation_batch(cfg) -> dict:
    from hydra.utils import instantiate

    data = instantiate(cfg.data)
    data.prepare_data()
    data.setup("validate")
    return next(iter(data.val_dataloader()))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt", required=True, help="an AcLLM checkpoint (the start of the MWER stage)")
    parser.add_argument("--steps", type=int, default=6, help="timed training steps per arm (after 1 warm-up)")
    parser.add_argument("--nbest", type=int, default=4)
    parser.add_argument(
        "--threads", type=int, default=1, help="intra-op threads (1: steadier on a shared CPU)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    mwer, cfg = build("rl/mwer_digits", args.ckpt, args.nbest)
    ce, _ = build("acllm/digits_context", args.ckpt, args.nbest)
    batch = validation_batch(cfg)
    times = {"ce": [], "mwer": []}
    for _ in range(2):  # alternating rounds: noise hits both arms
        for name, module in (("ce", ce), ("mwer", mwer)):
            times[name] += lightning_step_times(module, batch, args.steps + 1)[1:]
    mwer.eval()
    items = mwer.usable_items(batch)
    lens = batch["audio_lens"][torch.tensor(items.kept)]
    decode = best_of(lambda: mwer.decode(items, lens, beams=args.nbest, nbest=args.nbest, joint=False), 3)
    step = {name: statistics.median(values) for name, values in times.items()}
    result = {
        "batch": len(batch["text"]),
        "nbest": args.nbest,
        "threads": args.threads,
        "ce_step_s": step["ce"],
        "mwer_step_s": step["mwer"],
        "mwer_over_ce": step["mwer"] / step["ce"],
        "nbest_decoding_s": decode,
        "decoding_share_of_mwer_step": decode / step["mwer"],
        "rest_of_mwer_step_over_ce": (step["mwer"] - decode) / step["ce"],
    }
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
