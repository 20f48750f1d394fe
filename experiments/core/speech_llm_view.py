"""Helpers behind notebooks/speech_llm: transcribe with a stage of the speech_llm pipeline (`python -m
experiments.pipeline speech_llm --out DIR`), its N-best lists with scores and WERs, the effect of a context, the
pipeline's comparison of its stages and the AcLLM recipes (converter-only / LoRA / full), read from MLflow."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pandas as pd
from torchmetrics.functional.text import word_error_rate

from datamodules.manifest import read_manifest, write_manifest
from experiments.core import tracking
from experiments.core.checkpoints import load_module
from experiments.core.stages import read_stage
from experiments.core.transcripts import CONTEXT_KINDS, transcribe_manifest, with_contexts
from research.rl.errors import keyword_counts
from research.text import CharVocabulary


def recognizer(out: str | Path, stage: str = "mwer"):
    """(SpeechLLM in eval mode, its sample rate) of one recognizer stage of a speech_llm pipeline folder."""
    module = load_module(read_stage(out, stage)["ckpt"])
    return module.model, module.hparams.sample_rate


def manifest_rows(manifest: str | Path) -> list[dict]:
    """A manifest's rows with absolute audio paths (the rows are written elsewhere)."""
    source = read_manifest(manifest)
    return [{**row, "audio_filepath": str(source.audio_path(i))} for i, row in enumerate(source.rows)]


def transcribe_rows(model, sample_rate: int, rows: list[dict], **decoding) -> list[dict]:
    """experiments.core.transcripts.transcribe_manifest over rows in memory: the rows with `hyp` and `nbest`."""
    with tempfile.TemporaryDirectory(prefix="voxlab_") as folder:
        write_manifest(Path(folder) / "rows.jsonl", rows)
        result = transcribe_manifest(
            model,
            Path(folder) / "rows.jsonl",
            Path(folder) / "hyp.jsonl",
            sample_rate=sample_rate,
            **decoding,
        )
        if result.failed:
            raise RuntimeError(f"could not read {result.failed}")
        decoded = read_manifest(result.out).rows
    return [{**row, "hyp": d["hyp"], "nbest": d["nbest"]} for row, d in zip(rows, decoded, strict=True)]


def utterance_wer(hypothesis: str, reference: str) -> float:
    normalize = CharVocabulary().normalize
    return float(word_error_rate(normalize(hypothesis), normalize(reference)))


def nbest_table(model, sample_rate: int, rows: list[dict], beams: int = 4) -> pd.DataFrame:
    """Beam search's N-best (N = beams) per utterance: rank, hypothesis, sequence log-probability and WER."""
    decoded = transcribe_rows(model, sample_rate, rows, beams=beams, nbest=beams)
    return pd.DataFrame(
        {
            "utterance": index,
            "reference": row["text"],
            "rank": rank,
            "hypothesis": item["text"],
            "log_prob": item["score"],
            "wer": utterance_wer(item["text"], row["text"]),
        }
        for index, row in enumerate(decoded)
        for rank, item in enumerate(row["nbest"])
    )


def keyword_recall(hypothesis: str, reference: str, keywords: list[str]) -> float:
    """Share of the keywords' occurrences in the reference that the hypothesis holds; NaN without keywords."""
    normalize = CharVocabulary().normalize
    hits, total = keyword_counts(normalize(hypothesis), normalize(reference), keywords)
    return hits / total if total else float("nan")


def context_effect(
    model, sample_rate: int, rows: list[dict], count: int, context_weight: float | None = None
) -> pd.DataFrame:
    """For the first `count` rows, greedy hypotheses without a context and with each kind of context
    (CONTEXT_KINDS, drawn from all `rows` as the benchmark draws them), their WER and the recall of the keyword
    context's keywords (the spoken run; without context too). `context_weight` decodes with the joint search."""
    keywords = [row["keywords"] for row in with_contexts(rows, "keyword", count)]
    table = {"none": [{**row, "context": ""} for row in transcribe_rows(model, sample_rate, rows[:count])]}
    for kind in CONTEXT_KINDS:
        table[kind] = transcribe_rows(
            model,
            sample_rate,
            with_contexts(rows, kind, count),
            context_column="context",
            context_weight=context_weight,
        )
    return pd.DataFrame(
        {
            "utterance": index,
            "context kind": kind,
            "context": row["context"],
            "reference": row["text"],
            "hypothesis": row["hyp"],
            "wer": utterance_wer(row["hyp"], row["text"]),
            "keyword recall": keyword_recall(row["hyp"], row["text"], keywords[index]),
        }
        for kind, decoded in table.items()
        for index, row in enumerate(decoded)
    )


def pipeline_comparison(out: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(metrics per stage and test set, wall time per stage) from the comparison.json of the latest speech_llm
    pipeline run in MLflow that wrote into `out`."""
    client = tracking.client()
    experiments = [e.experiment_id for e in client.search_experiments()]
    tag = f"tags.{tracking.TAG_PREFIX}"
    folder = str(Path(out).resolve())
    runs = client.search_runs(
        experiments,
        filter_string=f"{tag}pipeline = 'speech_llm' and {tag}pipeline_dir = '{folder}'",
        order_by=["attributes.start_time DESC"],
    )
    for run in runs:
        if any(a.path == "comparison.json" for a in client.list_artifacts(run.info.run_id)):
            local = client.download_artifacts(run.info.run_id, "comparison.json", tempfile.mkdtemp())
            result = json.loads(Path(local).read_text())
            break
    else:
        raise LookupError(f"no speech_llm pipeline run in MLflow that wrote into {folder} holds a comparison")
    metrics = pd.DataFrame(
        {"stage": stage, "test set": test_set, **values}
        for stage, sets in result["stages"].items()
        for test_set, values in sets.items()
    )
    wall = pd.DataFrame({"stage": k, "wall_s": v} for k, v in result["wall_s"].items())
    return metrics, wall


def recipe_comparison(component: str = "acllm") -> pd.DataFrame:
    """Every finished AcLLM run in MLflow (config `component`, in any MLflow experiment: pipelines log their stages
    under their own) with test WERs, grouped by what sets them apart: experiment config, recipe, LLM directory
    (a pretrained and a random-weight LM share the rest), encoder layer and steps; mean WERs, trained LLM
    parameters and run count per group."""
    client = tracking.client()
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        filter_string=f"params.component = '{component}' and attributes.status = 'FINISHED'",
    )
    settings = {
        "experiment": "experiment_name",
        "recipe": "model/recipe",
        "LLM": "model/model/llm_dir",
        "encoder layer": "model/model/encoder/layer",
        "steps": "trainer/max_steps",
    }
    rows = [
        {
            **{name: run.data.params.get(param, "") for name, param in settings.items()},
            "wer test": run.data.metrics["test/wer"],
            "wer test_heldout": run.data.metrics.get("test_heldout/wer"),
            "LLM params trained": run.data.metrics.get("params/llm/trainable"),
        }
        for run in runs
        if "test/wer" in run.data.metrics
    ]
    if not rows:
        raise LookupError(f"no finished {component} run logged test/wer at {tracking.tracking_uri()}")
    table = pd.DataFrame(rows)
    table["LLM"] = table["LLM"].map(lambda path: "/".join(Path(path).parts[-3:]))  # enough to tell them apart
    groups = table.groupby(list(settings))
    return groups.mean().join(groups.size().rename("runs")).reset_index()
