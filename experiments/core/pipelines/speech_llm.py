"""Seed-ASR's recipe from audio to an MWER-tuned LLM recognizer on connected digits: LUISE iteration 1 -> probe ->
k-means labels -> iteration 2 -> probe -> text LM pretraining -> AcLLM SFT (LoRA, on the LUISE encoder's best
probed layer) -> context SFT -> MWER, every recognizer stage tested on the same test sets.

    python -m experiments.pipeline speech_llm --out runs/speech_llm
    python -m experiments.pipeline speech_llm --out runs/speech_llm_fast --common debug=fast   # a few steps each

The LUISE stages take the `luise` pipeline's options (`--layer`, `--k`, `--iter1`, `--iter2`, ...); `--lm`,
`--sft`, `--context`, `--mwer` are Hydra overrides of the later stages, `--common` of every training stage. Each
stage is a child MLflow run of one pipeline run and records the hashes of the stages it read; the pipeline run
holds `comparison.md` / `comparison.json` (WER, CER and keyword recall per stage and test set, wall time per stage)
and `comparison.png`. `--name _x` names the recognizer stages and comparison files apart, so that another recipe
(e.g. `--sft model.recipe=seed_asr model.lora=null`, repeated for `--context` and `--mwer`) reuses the pretraining.
"""

from __future__ import annotations

import argparse

from experiments.core.pipelines import common_overrides, luise

STAGES = ("acllm_sft", "context_sft", "mwer")  # names apart from the luise pipeline's CTC "sft"
METRICS = ("wer", "cer", "keyword_recall")
TEST_SETS = ("test", "test_heldout")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    luise.add_pretraining_arguments(parser)
    parser.add_argument(
        "--sft", nargs="*", default=[], help="Hydra overrides for the AcLLM SFT (acllm/digits_lora)"
    )
    parser.add_argument(
        "--lm", nargs="*", default=[], help="Hydra overrides for the text LM (text_lm/sentences)"
    )
    parser.add_argument(
        "--encoder-layer", type=int, help="iteration-2 layer the LLM reads (default: the lowest probe WER)"
    )
    parser.add_argument(
        "--name",
        default="",
        help="suffix of the recognizer stages' names and of the comparison files (e.g. _seed_asr): several "
        "recipes side by side on one pretraining in one --out",
    )
    parser.add_argument("--context", nargs="*", default=[], help="Hydra overrides for context SFT")
    parser.add_argument("--mwer", nargs="*", default=[], help="Hydra overrides for MWER")


def converter_sizes(encoder_ckpt: str, llm_dir) -> list[str]:
    """The converter's input (the LUISE encoder's width) and output (the LM's hidden size)."""
    from transformers import AutoConfig

    from experiments.core.checkpoints import load_checkpoint

    encoder = load_checkpoint(encoder_ckpt)["voxlab_config"]["model"]["encoder"]
    hidden = AutoConfig.from_pretrained(llm_dir).hidden_size
    return [
        f"model.model.converter.input_dim={encoder['d_model']}",
        f"model.model.converter.output_dim={hidden}",
    ]


def comparison(pipeline, name: str = "") -> dict:
    """{"stages": {stage: {test set: {metric: value}}}, "wall_s": {stage: seconds}}: the recognizer stages' test
    metrics and every stage's wall time (as recorded when it ran)."""
    table = {
        stage + name: {
            test_set: {m: pipeline.done[stage + name]["metrics"].get(f"{test_set}/{m}") for m in METRICS}
            for test_set in TEST_SETS
        }
        for stage in STAGES
    }
    return {"stages": table, "wall_s": {name: stage_seconds(r) for name, r in pipeline.done.items()}}


def stage_seconds(record: dict) -> float | None:
    """A stage's wall time: recorded when it ran, else (records written before that was recorded) its MLflow
    run's duration; None when neither is known."""
    if "wall_s" in record:
        return record["wall_s"]
    from experiments.core import tracking

    try:
        info = tracking.client().get_run(record["run_id"]).info
    except Exception:  # the run is gone from this store (another MLFLOW_TRACKING_URI)
        return None
    return (info.end_time - info.start_time) / 1000 if info.end_time else None


def markdown(result: dict) -> str:
    def value(v) -> str:
        return "–" if v is None or v != v else f"{v:.3f}"

    header = " | ".join(f"{m} {t}" for t in TEST_SETS for m in METRICS)
    lines = [f"| stage | {header} |", "|---" * (len(TEST_SETS) * len(METRICS) + 1) + "|"]
    for stage, sets in result["stages"].items():
        cells = " | ".join(value(sets[t][m]) for t in TEST_SETS for m in METRICS)
        lines.append(f"| {stage} | {cells} |")
    lines += ["", "| stage | wall time (s) |", "|---|---|"]
    lines += [
        f"| {stage} | {'–' if seconds is None else f'{seconds:.0f}'} |"
        for stage, seconds in result["wall_s"].items()
    ]
    return "\n".join(lines) + "\n"


def figure(result: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(METRICS), figsize=(4 * len(METRICS), 3.5))
    stages = list(result["stages"])
    for axis, metric in zip(axes, METRICS, strict=True):
        for offset, test_set in enumerate(TEST_SETS):
            values = [result["stages"][s][test_set][metric] for s in stages]
            values = [float("nan") if v is None else v for v in values]
            axis.bar([i + 0.4 * offset for i in range(len(stages))], values, width=0.4, label=test_set)
        axis.set_xticks([i + 0.2 for i in range(len(stages))], stages)
        axis.set_title(metric)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(pipeline, args: argparse.Namespace) -> None:
    from experiments.core import tracking
    from experiments.core.stages import hf_dir
    from research.ssl.layer_probe import best_layer

    luise.pretrain(pipeline, args)
    # the encoder stays frozen under LoRA: the LLM reads the layer from which the probe transcribes best
    layer_from_probe = args.encoder_layer is None
    layer = best_layer(pipeline.done["probe2"]["rows"], by="wer") if layer_from_probe else args.encoder_layer
    common = common_overrides(args)
    lm = pipeline.train_stage("text_lm", ["experiment=text_lm/sentences", *common, *args.lm])
    pipeline.train_stage(
        f"acllm_sft{args.name}",
        [
            "experiment=acllm/digits_lora",
            "model.model.encoder.encoder.key=encoder",  # a LUISE run holds the encoder at the top level
            f"model.model.encoder.encoder.ckpt_path={pipeline.done['iter2']['ckpt']}",
            f"model.model.encoder.layer={layer}",
            f"model.model.llm_dir={hf_dir(lm)}",
            *converter_sizes(pipeline.done["iter2"]["ckpt"], hf_dir(lm)),
            *common,
            *args.sft,
        ],
        reads=("iter2", "text_lm", "probe2") if layer_from_probe else ("iter2", "text_lm"),
    )
    for stage, experiment, start, extra in (
        ("context_sft", "acllm/digits_context", "acllm_sft", args.context),
        # MWER's tests decode with the joint search as context SFT's do (acllm/digits_context), so the rows compare
        ("mwer", "rl/mwer_digits", "context_sft", ["model.context_weight=1.0", *args.mwer]),
    ):
        ckpt = pipeline.done[start + args.name]["ckpt"]
        pipeline.train_stage(
            stage + args.name,
            [f"experiment={experiment}", f"init.ckpt_path={ckpt}", *common, *extra],
            reads=(start + args.name,),
        )
    result = comparison(pipeline, args.name)
    pipeline.publish(markdown(result), f"comparison{args.name}.md")
    tracking.client().log_dict(pipeline.run_id, result, f"comparison{args.name}.json")
    figure(result, args.out / f"comparison{args.name}.png")
    tracking.client().log_artifact(pipeline.run_id, str(args.out / f"comparison{args.name}.png"))
