"""Research evidence for Seed-ASR's later AcLLM stages on connected digits (the task where the CPU-size AcLLM reads
the audio), every comparison from one starting checkpoint at equal steps, over several seeds:

    python -m experiments.benchmarks.rl.mwer_evidence [--seeds 1 2 3] [--steps 150] [--rl-steps 60] [--llm-dir DIR]
    python -m experiments.benchmarks.rl.mwer_evidence --report        # tables of the stages finished so far

Stages (resumable, `experiments.core.stages`):
1. upstream: the CTC digit recogniser (the speech encoder), the text LM (`--llm-dir` reuses one), AcLLM SFT
   (`acllm/digits_lora`): the common start;
2. per seed, from SFT: context SFT (`acllm/digits_context`) against the same steps of plain SFT;
3. per seed, from that seed's context-SFT model (Seed-ASR initialises RL there): MWER (`rl/mwer_digits`), MWER with
   keyword errors weighted 3x, and the same steps of continued context SFT (cross-entropy only).
Evaluation (`experiments.core.transcripts`, the transcribe command's code) on the first `--eval-count` utterances
of test (seen speakers) and test_heldout: contexts built once per test set with the training recipe's builder,
holding a run of the spoken digits ("keyword contexts") or distractors only; decoded without context, with the
context prompt alone (no pruning: the hallucination baseline) and with the joint search (alpha, top-k pruning).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

from experiments.benchmarks.acllm.evidence import cell
from experiments.core.stages import Pipeline, hf_dir
from experiments.core.tracking import ROOT

TEST_SETS = {"test": "test.jsonl", "test_heldout": "test_heldout.jsonl"}
CONTEXT_ARMS = ("sft_more", "context_sft")
# every RL arm: rl/mwer_digits' rate and batches, so that equal steps see equal data
RL_COMMON = ["model.optimizer.lr=3e-4", "data.batch_size=8", "data.max_batch_seconds=24"]
RL_ARMS = {
    "ce_more": ["experiment=acllm/digits_context", *RL_COMMON],
    "mwer": ["experiment=rl/mwer_digits", *RL_COMMON],
    "mwer_weighted": ["experiment=rl/mwer_digits", "model.keyword_weight=3.0", *RL_COMMON],
}
LABELS = {
    "sft_more": "plain SFT, same steps",
    "context_sft": "context SFT",
    "ce_more": "continued context SFT (CE only)",
    "mwer": "MWER (4-best, plain WER)",
    "mwer_weighted": "MWER, keyword errors x3",
}


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


def continued(pipeline, name: str, start: str, overrides: list[str], steps: int, seed: int, args) -> dict:
    """A stage that starts from the checkpoint of stage `start`, trains `steps` and skips its own test pass."""
    return pipeline.train_stage(
        name,
        [
            *overrides,
            f"init.ckpt_path={pipeline.done[start]['ckpt']}",
            f"seed={seed}",
            f"trainer.max_steps={steps}",
            f"trainer.val_check_interval={steps}",
            f"model.scheduler.warmup_steps={max(1, steps // 10)}",
            "test=false",
            *args.common,
        ],
        reads=[start],
    )


def context_manifests(out: Path, data_dir: Path, count: int) -> dict[str, Path]:
    """Per test set and context kind (experiments.core.transcripts.CONTEXT_KINDS), its first `count` rows with
    a `context` and `keywords` column."""
    from datamodules.manifest import read_manifest, write_manifest
    from experiments.core.transcripts import CONTEXT_KINDS, with_contexts

    manifests = {}
    for name, file in TEST_SETS.items():
        source = read_manifest(data_dir / file)
        rows = [{**row, "audio_filepath": str(source.audio_path(i))} for i, row in enumerate(source.rows)]
        for kind in CONTEXT_KINDS:
            manifests[f"{name}/{kind}"] = out / "eval_manifests" / f"{name}_{kind}.jsonl"
            manifests[f"{name}/{kind}"].parent.mkdir(parents=True, exist_ok=True)
            write_manifest(manifests[f"{name}/{kind}"], with_contexts(rows, kind, count))
    return manifests


def expected_wer(rows: list[dict]) -> float:
    """Mean over utterances of the N-best's WER weighted by the renormalised posterior (what MWER optimises)."""
    from torchmetrics.functional.text import word_error_rate

    from research.text import CharVocabulary

    normalize = CharVocabulary().normalize
    values = []
    for row in rows:
        scores = [h["score"] for h in row["nbest"]]
        top = max(scores)
        weights = [math.exp(s - top) for s in scores]
        wers = [float(word_error_rate(normalize(h["text"]), normalize(row["text"]))) for h in row["nbest"]]
        values.append(sum(w * e for w, e in zip(weights, wers, strict=True)) / sum(weights))
    return statistics.mean(values)


def evaluate(ckpt: str, conditions: dict[str, dict], out: Path) -> dict[str, float]:
    """{condition/metric: value} for each decoding condition {manifest, context, weight, beams}."""
    from datamodules.manifest import read_manifest
    from experiments.core.checkpoints import load_module
    from experiments.core.transcripts import transcribe_manifest

    model, results = load_module(ckpt).model, {}
    for name, condition in conditions.items():
        beams = condition.get("beams", 1)
        result = transcribe_manifest(
            model,
            condition["manifest"],
            out / f"{name.replace('/', '_')}.jsonl",
            beams=beams,
            nbest=beams,
            batch_size=16,
            context_column="context" if condition.get("context") else None,
            context_weight=condition.get("weight"),
            prune_top_k=condition.get("prune_top_k"),
        )
        results[f"{name}/wer"] = result.wer
        if result.keyword_recall is not None:
            results[f"{name}/keyword_recall"] = result.keyword_recall
        if beams > 1:
            results[f"{name}/expected_wer"] = expected_wer(read_manifest(result.out).rows)
    return results


def context_conditions(manifests: dict[str, Path], args, contexts: bool) -> dict[str, dict]:
    conditions = {}
    for name in TEST_SETS:
        conditions[f"{name}/none"] = {"manifest": manifests[f"{name}/keyword"]}
        if not contexts:
            continue
        for kind in ("keyword", "distractor", "oracle"):
            manifest = manifests[f"{name}/{kind}"]
            conditions[f"{name}/{kind}_plain"] = {"manifest": manifest, "context": True}
            conditions[f"{name}/{kind}_joint"] = {
                "manifest": manifest,
                "context": True,
                "weight": args.context_weight,
                "prune_top_k": args.prune_top_k,
            }
    return conditions


def rl_conditions(manifests: dict[str, Path]) -> dict[str, dict]:
    conditions = {}
    for name in TEST_SETS:
        conditions[f"{name}/none_4best"] = {"manifest": manifests[f"{name}/keyword"], "beams": 4}
        conditions[f"{name}/keyword_plain"] = {"manifest": manifests[f"{name}/keyword"], "context": True}
    return conditions


def scored_stage(pipeline, name: str, conditions: dict, args) -> dict:
    """The stage `name`'s checkpoint decoded under `conditions` (its own resumable stage)."""
    from research.digest import file_digest

    ckpt = pipeline.done[name]["ckpt"]
    described = {k: {**v, "manifest": file_digest(v["manifest"])} for k, v in conditions.items()}
    settings = {"conditions": described}
    return pipeline.stage(
        f"eval_{name}",
        settings={**settings, "count": args.eval_count},
        run=lambda child: {"metrics": evaluate(ckpt, conditions, args.out / f"eval_{name}")},
        reads=[name],
    )


def tables(records: dict[str, list[dict]], args) -> str:
    """The context table and the RL table from the evaluation records of each arm (one per seed)."""

    def column(arm: str, metric: str) -> str:
        return cell([r["metrics"].get(metric) for r in records.get(arm, [])])

    lines = [
        f"Context (test sets' first {args.eval_count} utterances; keyword contexts hold a run of the spoken "
        "digits among 3 distractors; joint search alpha "
        f"{args.context_weight}, top-{args.prune_top_k} pruning):",
        "",
        "| arm, decoding | seeds | keyword recall test | keyword recall heldout | recall, true run alone, test | "
        "WER keyword ctx test | WER distractor ctx test | WER distractor ctx heldout | WER no ctx test |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    rows = [("sft_more", "none", "no context")]
    rows += [
        ("context_sft", kind, label)
        for kind, label in (("plain", "context prompt alone"), ("joint", "joint"))
    ]
    for arm, kind, label in rows:
        if kind == "none":
            recall = [column(arm, f"{s}/none/keyword_recall") for s in TEST_SETS] + ["–"]
            wers = [
                column(arm, "test/none/wer"),
                column(arm, "test/none/wer"),
                column(arm, "test_heldout/none/wer"),
            ]
        else:
            recall = [column(arm, f"{s}/keyword_{kind}/keyword_recall") for s in TEST_SETS]
            recall.append(column(arm, f"test/oracle_{kind}/keyword_recall"))
            wers = [
                column(arm, f"test/keyword_{kind}/wer"),
                column(arm, f"test/distractor_{kind}/wer"),
                column(arm, f"test_heldout/distractor_{kind}/wer"),
            ]
        seeds = len(records.get(arm, []))
        lines.append(
            f"| {LABELS[arm]}, {label} | {seeds} | {' | '.join(recall)} | {' | '.join(wers)} | "
            f"{column(arm, 'test/none/wer')} |"
        )
    lines += [
        "",
        f"RL ({args.rl_steps} steps from each seed's context-SFT model; expected WER over the 4-best, 1-best = "
        "the beam's best; keyword error rate = 1 - recall with keyword contexts):",
        "",
        "| arm | seeds | expected WER 4-best test | expected WER heldout | 1-best WER test | 1-best WER heldout | "
        "keyword error rate test | keyword error rate heldout |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for arm in RL_ARMS:
        keyword_errors = [
            cell([1 - r["metrics"][f"{s}/keyword_plain/keyword_recall"] for r in records.get(arm, [])])
            for s in TEST_SETS
        ]
        lines.append(
            f"| {LABELS[arm]} | {len(records.get(arm, []))} | {column(arm, 'test/none_4best/expected_wer')} | "
            f"{column(arm, 'test_heldout/none_4best/expected_wer')} | {column(arm, 'test/none_4best/wer')} | "
            f"{column(arm, 'test_heldout/none_4best/wer')} | {' | '.join(keyword_errors)} |"
        )
    return "\n".join(lines)


def finished(out: Path, seeds: list[int]) -> dict[str, list[dict]]:
    records = {}
    for arm in [*CONTEXT_ARMS, *RL_ARMS]:
        for seed in seeds:
            path = out / "stages" / f"eval_{arm}_seed{seed}.json"
            if path.is_file():
                records.setdefault(arm, []).append(json.loads(path.read_text()))
    return records


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--steps", type=int, default=150, help="context SFT / plain SFT steps after SFT")
    parser.add_argument(
        "--rl-steps", type=int, default=60, help="MWER / continued CE steps after context SFT"
    )
    parser.add_argument("--ctc-steps", type=int, default=600)
    parser.add_argument("--lm-steps", type=int, default=1000)
    parser.add_argument("--sft-steps", type=int, default=600)
    parser.add_argument("--eval-count", type=int, default=100, help="utterances of each test set decoded")
    parser.add_argument("--context-weight", type=float, default=1.0)
    parser.add_argument("--prune-top-k", type=int, default=5)
    parser.add_argument(
        "--llm-dir", type=Path, help="a transformers LM directory instead of the text LM stage"
    )
    parser.add_argument("--upstream-seed", type=int, default=12345)
    parser.add_argument("--common", nargs="*", default=[], help="Hydra overrides for every training stage")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "benchmarks" / "mwer_evidence")
    parser.add_argument("--report", action="store_true", help="only tabulate the stages already finished")
    args = parser.parse_args(argv)
    if args.report:
        report = tables(finished(args.out, args.seeds), args)
        print(report)
        return report
    start = time.perf_counter()
    with Pipeline("mwer_evidence", args.out) as pipeline:
        upstream(pipeline, args)
        manifests = context_manifests(args.out, ROOT / "data" / "connected_digits", args.eval_count)
        records: dict[str, list[dict]] = {}
        for seed in args.seeds:  # seed by seed: an interrupted run has every arm at some seeds
            plain = continued(
                pipeline,
                f"sft_more_seed{seed}",
                "sft",
                ["experiment=acllm/digits_context", "data.context=null"],
                args.steps,
                seed,
                args,
            )
            context = continued(
                pipeline,
                f"context_sft_seed{seed}",
                "sft",
                ["experiment=acllm/digits_context"],
                args.steps,
                seed,
                args,
            )
            del plain, context
            for arm, contexts in (("sft_more", False), ("context_sft", True)):
                conditions = context_conditions(manifests, args, contexts)
                records.setdefault(arm, []).append(
                    scored_stage(pipeline, f"{arm}_seed{seed}", conditions, args)
                )
            for arm, overrides in RL_ARMS.items():
                continued(
                    pipeline,
                    f"{arm}_seed{seed}",
                    f"context_sft_seed{seed}",
                    overrides,
                    args.rl_steps,
                    seed,
                    args,
                )
                records.setdefault(arm, []).append(
                    scored_stage(pipeline, f"{arm}_seed{seed}", rl_conditions(manifests), args)
                )
        report = f"{tables(records, args)}\n\nWall time {(time.perf_counter() - start) / 60:.1f} min.\n"
        pipeline.publish(report, "evidence.md")
    print(report)
    return report


if __name__ == "__main__":
    main()
