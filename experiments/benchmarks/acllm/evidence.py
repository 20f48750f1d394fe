"""Research evidence for the audio-conditioned LLM on the synthetic spoken sentences (test: seen voices, test_heldout:
unseen voices), every arm at equal steps, over several seeds:

    python -m experiments.benchmarks.acllm.evidence [--seeds 1 2 3] [--steps 300] [--ctc-steps 400] [--lm-steps 1000]
    python -m experiments.benchmarks.acllm.evidence --report     # the table of the stages finished so far

Stages (resumable: `experiments.core.stages`; an interrupted run picks up at the stage it stopped in):
1. the CTC character recogniser on the sentences (`asr/ctc_sentences`): the speech encoder of every arm, and the
   baseline "the encoder's own CTC head";
2. the text LM pretrained on the sentences' corpus (`text_lm/sentences`), and the same architecture and tokenizer
   with random weights (is the LLM's text prior what helps?);
3. per seed: LoRA on the pretrained LM, converter only, full fine-tuning, and LoRA on the random LM.
The table (WER mean ± sd over seeds, trainable parameters) goes to stdout, `<out>/evidence.md` and the pipeline's
MLflow run.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from experiments.core import tracking
from experiments.core.stages import Pipeline, hf_dir
from experiments.core.tracking import ROOT

ARMS = {
    "lora": ("acllm/sentences_lora", "text_lm"),
    "converter_only": ("acllm/sentences_converter_only", "text_lm"),
    "full": ("acllm/sentences_full", "text_lm"),
    "lora_random_lm": ("acllm/sentences_lora", "random_lm"),
}
LABELS = {
    "ctc_head": "the encoder's own CTC head",
    "lora": "LoRA (r 8, q/v) on the text-pretrained LM",
    "converter_only": "converter only (encoder and LM frozen)",
    "full": "full fine-tuning (encoder, converter, LM)",
    "lora_random_lm": "LoRA on the same LM, random weights",
}
TEST_SETS = ("test/wer", "test_heldout/wer", "test/cer", "test_heldout/cer")


def save_random_lm(pretrained_dir: Path, out: Path, seed: int) -> dict:
    """The pretrained LM's architecture and tokenizer with fresh random weights."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(pretrained_dir)).save_pretrained(out)
    AutoTokenizer.from_pretrained(pretrained_dir).save_pretrained(out)
    return {"llm_dir": str(out)}


def upstream(pipeline: Pipeline, args: argparse.Namespace) -> dict[str, Path]:
    common = [f"seed={args.upstream_seed}", *args.common]
    ctc = pipeline.train_stage(
        "ctc",
        ["experiment=asr/ctc_sentences", f"trainer.max_steps={args.ctc_steps}", *common],
    )
    lm = pipeline.train_stage(
        "text_lm", ["experiment=text_lm/sentences", f"trainer.max_steps={args.lm_steps}", *common]
    )
    random_lm = pipeline.stage(
        "random_lm",
        settings={"seed": args.upstream_seed},
        run=lambda child: save_random_lm(hf_dir(lm), args.out / "random_lm", args.upstream_seed),
        outputs=lambda record: [record["llm_dir"]],
        reads=["text_lm"],
    )
    return {"ctc": Path(ctc["ckpt"]), "text_lm": hf_dir(lm), "random_lm": Path(random_lm["llm_dir"])}


def train_arm(pipeline: Pipeline, arm: str, seed: int, parts: dict[str, Path], args) -> dict:
    experiment, llm = ARMS[arm]
    interval = max(1, args.steps // 2)
    overrides = [
        f"experiment={experiment}",
        f"model.model.encoder.encoder.ckpt_path={parts['ctc']}",
        f"model.model.llm_dir={parts[llm]}",
        f"seed={seed}",
        f"trainer.max_steps={args.steps}",
        f"trainer.val_check_interval={interval}",
        f"model.scheduler.warmup_steps={max(1, args.steps // 10)}",
        *args.common,
    ]
    return pipeline.train_stage(f"{arm}_seed{seed}{args.suffix}", overrides, reads=["ctc", llm])


def trainable_parameters(run_id: str) -> tuple[float, float]:
    """(trainable, total) parameters of the run's LLM (logged when training starts)."""
    metrics = tracking.client().get_run(run_id).data.metrics
    return metrics.get("params/llm/trainable", 0.0), metrics.get("params/llm/total", 0.0)


def audio_dependence(ckpt: str, manifest: Path, count: int = 96, batch_size: int = 16) -> dict[str, float]:
    """Mean teacher-forced loss on `count` test utterances with their audio, with zeroed audio and with the audio
    of another utterance: equal losses mean the model writes its LM's prior, whatever was said."""
    import torch

    from datamodules.manifest import read_manifest
    from experiments.core.checkpoints import load_module
    from experiments.core.dumps import load_batch

    module, rows = load_module(ckpt), read_manifest(manifest)
    losses = {"real": [], "zeroed": [], "shuffled": []}
    with torch.no_grad():
        for start in range(0, min(count, len(rows)), batch_size):
            indices, audio, lens = load_batch(rows, list(range(start, start + batch_size)), 16000, [])
            texts = [rows.rows[i]["text"] for i in indices]
            losses["real"].append(float(module.model(audio, lens, texts)))
            losses["zeroed"].append(float(module.model(torch.zeros_like(audio), lens, texts)))
            losses["shuffled"].append(float(module.model(audio.roll(1, 0), lens.roll(1, 0), texts)))
    return {name: statistics.mean(values) for name, values in losses.items()}


def cell(values: list[float | None]) -> str:
    """mean ± sd of the values given (None: not measured)."""
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def table(results: dict[str, list[dict]]) -> str:
    lines = [
        "| arm | seeds | WER test (seen voices) | WER test_heldout (unseen voices) | CER test | CER test_heldout "
        "| LLM params trained |",
        "|---|---|---|---|---|---|---|",
    ]
    for arm, records in results.items():
        scores = [cell([r["metrics"][name] for r in records if name in r["metrics"]]) for name in TEST_SETS]
        params = records[0].get("params")
        share = f"{params[0] / 1e6:.3f} M of {params[1] / 1e6:.2f} M" if params and params[1] else "–"
        lines.append(f"| {LABELS[arm]} | {len(records)} | {' | '.join(scores)} | {share} |")
    return "\n".join(lines)


def finished(out: Path, seeds: list[int], arms: list[str], suffix: str = "") -> dict[str, list[dict]]:
    """The results of the stages already done, from their records (`--report`: no training)."""
    import json

    def record(name: str) -> dict | None:
        path = out / "stages" / f"{name}.json"
        return json.loads(path.read_text()) if path.is_file() else None

    results = {"ctc_head": [r for r in [record("ctc")] if r]}
    for arm in arms:
        records = [r for r in (record(f"{arm}_seed{seed}{suffix}") for seed in seeds) if r]
        results[arm] = [{**r, "params": trainable_parameters(r["run_id"])} for r in records]
    return {arm: records for arm, records in results.items() if records}


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    parser.add_argument("--steps", type=int, default=300, help="AcLLM training steps of every arm")
    parser.add_argument("--ctc-steps", type=int, default=400)
    parser.add_argument("--lm-steps", type=int, default=1000)
    parser.add_argument("--upstream-seed", type=int, default=12345)
    parser.add_argument("--common", nargs="*", default=[], help="Hydra overrides for every training stage")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "benchmarks" / "acllm_evidence")
    parser.add_argument("--suffix", default="", help="appended to the arms' stage names (e.g. a longer run)")
    parser.add_argument("--report", action="store_true", help="only tabulate the stages already finished")
    parser.add_argument(
        "--audio-check",
        action="store_true",
        help="with --report: test loss with real, zeroed, shuffled audio",
    )
    args = parser.parse_args(argv)
    if args.report:
        results = finished(args.out, args.seeds, args.arms, args.suffix)
        report = table(results)
        if args.audio_check:
            test = ROOT / "data" / "spoken_sentences" / "test.jsonl"
            lines = ["", "| arm, first seed | loss, real audio | zeroed audio | another utterance's audio |"]
            lines.append("|---|---|---|---|")
            for arm, records in results.items():
                if arm != "ctc_head":
                    losses = audio_dependence(records[0]["ckpt"], test)
                    lines.append(
                        f"| {LABELS[arm]} | " + " | ".join(f"{v:.3f}" for v in losses.values()) + " |"
                    )
            report += "\n".join(lines)
        print(report)
        return report
    start = time.perf_counter()
    with Pipeline("acllm_evidence", args.out) as pipeline:
        parts = upstream(pipeline, args)
        results: dict[str, list[dict]] = {"ctc_head": [pipeline.done["ctc"]]}
        for seed in args.seeds:  # seed by seed: an interrupted benchmark still has every arm at some seeds
            for arm in args.arms:
                record = train_arm(pipeline, arm, seed, parts, args)
                results.setdefault(arm, []).append(
                    {**record, "params": trainable_parameters(record["run_id"])}
                )
        report = (
            f"{table(results)}\n\nAcLLM arms: {args.steps} steps each, seeds {args.seeds}; encoder: CTC "
            f"recogniser ({args.ctc_steps} steps); LM: text_lm/sentences ({args.lm_steps} steps). Wall time "
            f"{(time.perf_counter() - start) / 60:.1f} min.\n"
        )
        pipeline.publish(report, "evidence.md")
    print(report)
    return report


if __name__ == "__main__":
    main()
