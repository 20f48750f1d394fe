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
from research.text import CharVocabulary


def recognizer(out: str | Path, stage: str = "mwer"):
    """(SpeechLLM in eval mode, its sample rate) of one recognizer stage of a speech_llm pipeline folder."""
    module = load_module(read_stage(out, stage)["ckpt"])
    return module.model, module.hparams.sample_rate


def test_rows(manifest: str | Path, count: int) -> list[dict]:
    """The first `count` rows of a manifest, audio paths absolute (the rows are written elsewhere)."""
    source = read_manifest(manifest)
    return [{**row, "audio_filepath": str(source.audio_path(i))} for i, row in enumerate(source.rows[:count])]


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


def context_effect(
    model, sample_rate: int, rows: list[dict], context_weight: float | None = None
) -> pd.DataFrame:
    """Per utterance, greedy hypotheses without a context and with each kind of context (CONTEXT_KINDS), their WER
    and whether every keyword of the context was recognised. `context_weight` decodes with the joint search."""
    table = []
    plain = transcribe_rows(model, sample_rate, rows)
    table += [{"context kind": "none", "context": "", "keywords": [], **row} for row in plain]
    for kind in CONTEXT_KINDS:
        decoded = transcribe_rows(
            model,
            sample_rate,
            with_contexts(rows, kind, len(rows)),
            context_column="context",
            context_weight=context_weight,
        )
        table += [{"context kind": kind, **row} for row in decoded]
    return pd.DataFrame(
        {
            "utterance": index % len(rows),
            "context kind": row["context kind"],
            "context": row["context"],
            "reference": row["text"],
            "hypothesis": row["hyp"],
            "wer": utterance_wer(row["hyp"], row["text"]),
            "keywords recognised": all(k in row["hyp"].split() for k in row["keywords"]),
        }
        for index, row in enumerate(table)
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
        raise LookupError(f"no finished speech_llm pipeline run in MLflow wrote into {folder}")
    metrics = pd.DataFrame(
        {"stage": stage, "test set": test_set, **values}
        for stage, sets in result["stages"].items()
        for test_set, values in sets.items()
    )
    wall = pd.DataFrame({"stage": k, "wall_s": v} for k, v in result["wall_s"].items())
    return metrics, wall


def recipe_comparison(component: str = "acllm") -> pd.DataFrame:
    """Every finished AcLLM run in MLflow (config `component`, in any MLflow experiment: pipelines log their stages
    under their own) with test WERs, by experiment config and recipe (converter_only / seed_asr / lora / full):
    mean test WERs, trained LLM parameters and run count."""
    client = tracking.client()
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        filter_string=f"params.component = '{component}' and attributes.status = 'FINISHED'",
    )
    rows = [
        {
            "experiment": run.data.params.get("experiment_name"),
            "recipe": run.data.params.get("model/recipe"),
            "wer test": run.data.metrics["test/wer"],
            "wer test_heldout": run.data.metrics.get("test_heldout/wer"),
            "LLM params trained": run.data.metrics.get("params/llm/trainable"),
        }
        for run in runs
        if "test/wer" in run.data.metrics
    ]
    if not rows:
        raise LookupError(f"no finished {component} run logged test/wer at {tracking.tracking_uri()}")
    table = pd.DataFrame(rows).groupby(["experiment", "recipe"], dropna=False)
    return table.mean().join(table.size().rename("runs")).reset_index()
