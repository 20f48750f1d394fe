"""The generic stage pipeline on toy stages: skip, rerun on a changed upstream setting, failure, resume."""

from __future__ import annotations

import json

import pytest

from experiments.core import tracking
from experiments.core.stages import Pipeline


class Toy:
    """Three toy stages: `first` (setting `value`) writes a file; `reader` reads `first`; `independent` reads
    nothing. `fail` names a stage that raises."""

    def __init__(self, out):
        self.out, self.ran = out, []

    def run(self, value: int = 1, fail: str | None = None) -> Pipeline:
        with Pipeline("toy", self.out) as pipeline:
            for name, settings, reads in (
                ("first", {"value": value}, ()),
                ("reader", {}, ("first",)),
                ("independent", {}, ()),
            ):
                pipeline.stage(
                    name,
                    settings=settings,
                    run=lambda run_id, name=name: self.work(name, fail),
                    outputs=lambda record: [record["file"]],
                    reads=reads,
                )
        return pipeline

    def work(self, name: str, fail: str | None) -> dict:
        if name == fail:
            raise RuntimeError(f"{name} broke")
        self.ran.append(name)
        path = self.out / f"{name}.txt"
        path.write_text(name)
        return {"file": str(path)}


def statuses(pipeline_run_id: str) -> tuple[str, dict[str, str]]:
    client = tracking.client()
    parent = client.get_run(pipeline_run_id)
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{pipeline_run_id}'"
    )
    return parent.info.status, {r.data.tags["voxlab.pipeline_stage"]: r.info.status for r in children}


def test_done_stages_are_skipped_and_a_changed_setting_reruns_what_reads_it(mlflow_store, tmp_path):
    toy = Toy(tmp_path)
    pipeline = toy.run()
    assert toy.ran == ["first", "reader", "independent"]
    assert statuses(pipeline.run_id) == (
        "FINISHED",
        {"first": "FINISHED", "reader": "FINISHED", "independent": "FINISHED"},
    )
    record = json.loads((tmp_path / "stages" / "reader.json").read_text())
    assert record["run_id"] == pipeline.done["reader"]["run_id"] and len(record["hash"]) == 12
    toy.run()
    assert toy.ran == ["first", "reader", "independent"]  # nothing reran
    toy.run(value=2)
    assert toy.ran[3:] == ["first", "reader"]  # the independent stage reads nothing that changed
    (tmp_path / "independent.txt").unlink()
    toy.run(value=2)
    assert toy.ran[5:] == ["independent"]  # a missing output reruns its stage


def test_a_failed_stage_marks_both_runs_failed_and_the_next_run_resumes_there(mlflow_store, tmp_path):
    toy = Toy(tmp_path)
    with pytest.raises(RuntimeError, match="reader broke"):
        toy.run(fail="reader")
    client = tracking.client()
    pipeline_run = client.search_runs(
        [tracking.experiment_id("toy")], filter_string="tags.`voxlab.role` = 'pipeline'"
    )[0]
    assert statuses(pipeline_run.info.run_id) == ("FAILED", {"first": "FINISHED", "reader": "FAILED"})
    assert not (tmp_path / "stages" / "reader.json").exists()
    toy.run()
    assert toy.ran == ["first", "reader", "independent"]  # first is not redone; reader resumes


def test_pipeline_writes_no_mlruns_folder_in_the_working_directory(mlflow_store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Toy(tmp_path / "out").run()
    assert not (tmp_path / "mlruns").exists()


def test_a_training_stage_stopped_part_way_resumes_from_its_last_checkpoint(
    tiny_data_dir, mlflow_store, tmp_path
):
    from experiments.core.checkpoints import load_checkpoint
    from tests.conftest import tiny_overrides

    overrides = [
        o for o in tiny_overrides(tiny_data_dir, tmp_path / "unused", "test=false") if "output_dir" not in o
    ]
    with Pipeline("toy", tmp_path) as pipeline:
        first = pipeline.train_stage("fit", [*overrides, "trainer.max_steps=2"])
    assert load_checkpoint(first["ckpt"])["global_step"] == 2
    (tmp_path / "stages" / "fit.json").unlink()  # as if the stage had died after its checkpoint
    with Pipeline("toy", tmp_path) as pipeline:
        again = pipeline.train_stage("fit", [*overrides, "trainer.max_steps=2"])
    resumed = tracking.client().get_run(again["run_id"])
    assert resumed.data.tags["voxlab.resumed_from"] == first["run_id"]  # continued, not started over
    with Pipeline("toy", tmp_path) as pipeline:  # a changed setting starts the stage afresh
        changed = pipeline.train_stage("fit", [*overrides, "trainer.max_steps=3"])
    assert "voxlab.resumed_from" not in tracking.client().get_run(changed["run_id"]).data.tags
    assert load_checkpoint(changed["ckpt"])["global_step"] == 3
