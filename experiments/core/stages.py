"""A resumable pipeline of stages, each a child MLflow run of one pipeline run.

A stage declares what it reads (earlier stages) and writes (its record's outputs). Its hash covers its own
settings and the hashes of the stages it reads; a stage whose record in `<out>/stages/<name>.json` has the same
hash and whose outputs exist is skipped, so a changed setting reruns only what depends on it. When a stage
raises, its run and the pipeline's run are marked FAILED and no record is written: the next invocation skips
what was done and resumes at that stage.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from experiments.core import tracking

PIPELINE_STAGE_TAG = f"{tracking.TAG_PREFIX}pipeline_stage"


def config_hash(settings: object) -> str:
    """Short, stable digest of JSON-able settings: names label folders and stage records."""
    return hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:12]


def file_identity(path: str | Path) -> str:
    """A file's identity for a stage hash: its resolved path, size and modification time, so a file rewritten in
    place (a retrained checkpoint at the same path) counts as changed."""
    stat = Path(path).resolve().stat()
    return f"{Path(path).resolve()}|{stat.st_size}|{stat.st_mtime_ns}"


def read_stage(out: str | Path, name: str) -> dict:
    """The record of a finished stage of the pipeline in `out`."""
    path = Path(out) / "stages" / f"{name}.json"
    if not path.is_file():
        raise FileNotFoundError(f"no stage '{name}' has finished in {out} (no {path})")
    return json.loads(path.read_text())


def hf_dir(record: dict) -> Path:
    """A text LM training stage's transformers directory (`hf/` in its run folder, beside `checkpoints/`)."""
    from lit_modules.text_lm import EXPORT_FOLDER

    return Path(record["ckpt"]).parent.parent / EXPORT_FOLDER


def external_record(path: str | Path) -> dict:
    """The record of an input given from outside the pipeline (a checkpoint), for stages that read it."""
    return {"ckpt": str(path), "hash": config_hash(file_identity(path)), "run_id": None}


class Pipeline:
    """`with Pipeline("luise", out) as pipeline: pipeline.stage(...)`; the records of finished stages are in
    `pipeline.done` (name -> record, each with its `hash` and `run_id`)."""

    def __init__(self, name: str, out: str | Path, *, experiment: str | None = None):
        self.name, self.out = name, Path(out)
        self.experiment = experiment or name
        self.done: dict[str, dict] = {}
        self.run_id: str | None = None

    def __enter__(self) -> Pipeline:
        (self.out / "stages").mkdir(parents=True, exist_ok=True)
        run = tracking.client().create_run(
            tracking.experiment_id(self.experiment),
            run_name=f"pipeline {self.name} {self.out.name}",
            tags={
                f"{tracking.TAG_PREFIX}role": "pipeline",
                f"{tracking.TAG_PREFIX}pipeline": self.name,
                f"{tracking.TAG_PREFIX}pipeline_dir": str(self.out.resolve()),
                **tracking.git_state(),
            },
        )
        self.run_id = run.info.run_id
        return self

    def __exit__(self, error_type, error, traceback) -> None:
        client = tracking.client()
        client.log_dict(self.run_id, self.done, "stages.json")
        client.set_terminated(self.run_id, "FAILED" if error_type else "FINISHED")
        print(
            f"pipeline run {self.run_id}: {'FAILED' if error_type else 'done'}; stages {', '.join(self.done)}"
        )

    def publish(self, text: str, name: str) -> None:
        """A report of the pipeline: `<out>/<name>` and an artifact of its MLflow run."""
        (self.out / name).write_text(text)
        tracking.client().log_text(self.run_id, text, name)

    def digest(self, settings: Any, reads: Iterable[str]) -> str:
        return config_hash({"settings": settings, "upstream": {k: self.done[k]["hash"] for k in reads}})

    def stage(
        self,
        name: str,
        *,
        settings: Any,
        run: Callable[[str], dict],
        outputs: Callable[[dict], Iterable[str | Path]] = lambda record: (),
        reads: Iterable[str] = (),
    ) -> dict:
        """Run `run(child_run_id)` (returns the stage's record) unless a record with the same hash exists and
        its `outputs` are all there."""
        record_path = self.out / "stages" / f"{name}.json"
        digest = self.digest(settings, reads)
        if record_path.is_file():
            record = json.loads(record_path.read_text())
            if record.get("hash") == digest and all(Path(p).exists() for p in outputs(record)):
                print(f"[{name}] done already (hash {digest}), skipped")
                self.done[name] = record
                return record
        print(f"[{name}] running (hash {digest})")
        client = tracking.client()
        child = client.create_run(
            tracking.experiment_id(self.experiment),
            run_name=name,
            tags={"mlflow.parentRunId": self.run_id, PIPELINE_STAGE_TAG: name},
        ).info.run_id
        start = time.perf_counter()
        try:
            record = {**run(child), "hash": digest, "run_id": child}
            record["wall_s"] = round(time.perf_counter() - start, 1)
        except BaseException:
            client.set_terminated(child, "FAILED")
            raise
        client.log_dict(child, record, "stage.json")
        client.set_terminated(child, "FINISHED")
        record_path.write_text(json.dumps(record, indent=2, default=str))
        self.done[name] = record
        return record

    def train_stage(self, name: str, overrides: list[str], reads: Iterable[str] = ()) -> dict:
        """A training stage: `experiments.train` on the composed config, logged into the stage's run; its
        settings are the whole composed config, its output the last checkpoint."""
        from experiments.core.compose import compose_config
        from experiments.core.runner import train

        output_dir = self.out / name
        cfg = compose_config([*overrides, f"paths.output_dir={output_dir}"])
        settings = OmegaConf.to_container(cfg, resolve=False)

        reads = tuple(reads)
        started, last = output_dir / "stage_hash", output_dir / "checkpoints" / "last.ckpt"

        def run(child: str) -> dict:
            cfg.mlflow_run_id = child
            digest = self.digest(settings, reads)
            if started.is_file() and started.read_text() == digest and last.is_file():
                cfg.ckpt_path = str(last)  # the same stage stopped part-way: resume it exactly
            else:  # new settings: a rerun's checkpoints would land beside stale ones as last-v1.ckpt
                shutil.rmtree(output_dir / "checkpoints", ignore_errors=True)
                output_dir.mkdir(parents=True, exist_ok=True)
                started.write_text(digest)
            metrics = train(cfg)
            return {"ckpt": str(output_dir / "checkpoints" / "last.ckpt"), "metrics": metrics}

        return self.stage(
            name, settings=settings, run=run, outputs=lambda record: [record["ckpt"]], reads=reads
        )
