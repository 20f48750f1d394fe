"""Research evidence for Seed-ASR's later AcLLM stages on connected digits (the one task where the CPU-size AcLLM
reads the audio), every arm from the same SFT checkpoint at equal steps, over several seeds:

    python -m experiments.benchmarks.rl.mwer_evidence [--seeds 1 2 3] [--steps 150] [--llm-dir DIR]
    python -m experiments.benchmarks.rl.mwer_evidence --report

Stages (resumable, `experiments.core.stages`):
1. upstream: the CTC digit recogniser (the speech encoder), the text LM (`--llm-dir` reuses one), the AcLLM SFT
   (`acllm/digits_lora`): the common starting checkpoint;
"""

from __future__ import annotations

import argparse
from pathlib import Path

from experiments.core.stages import Pipeline
from experiments.core.tracking import ROOT


def hf_dir(record: dict) -> Path:
    return Path(record["ckpt"]).parent.parent / "hf"


def upstream(pipeline: Pipeline, args: argparse.Namespace) -> dict[str, Path]:
    common = [f"seed={args.upstream_seed}", *args.common]
    ctc = pipeline.train_stage(
        "ctc", ["experiment=asr/ctc_digits", f"trainer.max_steps={args.ctc_steps}", *common]
    )
    if args.llm_dir:
        llm_dir, reads = args.llm_dir.resolve(), ["ctc"]
    else:
        lm = pipeline.train_stage(
            "text_lm", ["experiment=text_lm/sentences", f"trainer.max_steps={args.lm_steps}", *common]
        )
        llm_dir, reads = hf_dir(lm), ["ctc", "text_lm"]
    sft = pipeline.train_stage(
        "sft",
        [
            "experiment=acllm/digits_lora",
            f"model.model.encoder.encoder.ckpt_path={ctc['ckpt']}",
            f"model.model.llm_dir={llm_dir}",
            "model.model.converter.output_dim=256",
            f"trainer.max_steps={args.sft_steps}",
            *common,
        ],
        reads=reads,
    )
    return {"ctc": Path(ctc["ckpt"]), "llm_dir": llm_dir, "sft": Path(sft["ckpt"])}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--steps", type=int, default=150, help="steps of every arm after SFT")
    parser.add_argument("--ctc-steps", type=int, default=600)
    parser.add_argument("--lm-steps", type=int, default=1000)
    parser.add_argument("--sft-steps", type=int, default=600)
    parser.add_argument(
        "--llm-dir", type=Path, help="a transformers LM directory instead of the text LM stage"
    )
    parser.add_argument("--upstream-seed", type=int, default=12345)
    parser.add_argument("--common", nargs="*", default=[], help="Hydra overrides for every training stage")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "benchmarks" / "mwer_evidence")
    args = parser.parse_args(argv)
    with Pipeline("mwer_evidence", args.out) as pipeline:
        upstream(pipeline, args)


if __name__ == "__main__":
    main()
