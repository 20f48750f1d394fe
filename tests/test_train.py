"""End-to-end runs of the experiment runner on the tiny connected-digit set, tracked in a private MLflow store."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from torch import nn

from experiments.core.checkpoints import load_checkpoint
from experiments.core.runner import check_training_modes, evaluate, train
from tests.conftest import tiny_overrides


def runs_of(uri: str, experiment: str = "asr_ctc_digits"):
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    return client, (client.search_runs([found.experiment_id]) if found else [])


def test_training_run_is_recorded_in_mlflow(tiny_data_dir, tmp_path, mlflow_store, compose_config):
    cfg = compose_config(tiny_overrides(tiny_data_dir, tmp_path / "run"))
    metrics = train(cfg)
    assert {"train/loss", "val/wer", "test/wer", "test_heldout/wer"} <= set(metrics)

    client, runs = runs_of(mlflow_store)
    assert len(runs) == 1
    run = runs[0]
    assert run.data.params["model/optimizer/lr"] == "0.002"
    assert run.data.params["data/preparers/connected_digits/heldout_speaker"] == "theo"
    assert {"train/loss", "val/wer", "val/cer", "test/wer", "test_heldout/wer", "data/skipped_train"} <= set(
        run.data.metrics
    )
    assert len(client.get_metric_history(run.info.run_id, "train/loss")) == 6
    assert run.data.tags["git.commit"] and run.data.tags["voxlab.component"] == "asr"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "audio", "figures", "text"} <= artifacts
    config_text = client.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path))
    assert "heldout_speaker: theo" in Path(config_text).read_text()
    assert run.data.tags["voxlab.checkpoint_last"].endswith("last.ckpt")


def test_resume_gives_the_same_result_as_an_uninterrupted_run(
    tiny_data_dir, tmp_path, mlflow_store, compose_config
):
    # The LR schedule is pinned to 8 steps so that only the interruption differs between the two runs.
    every_step = [
        "callbacks.model_checkpoint.every_n_train_steps=1",
        "data.batch_size=4",
        "test=false",
        "+model.scheduler.total_steps=8",
    ]
    straight = train(
        compose_config(tiny_overrides(tiny_data_dir, tmp_path / "a", "trainer.max_steps=8", *every_step))
    )
    train(compose_config(tiny_overrides(tiny_data_dir, tmp_path / "b", "trainer.max_steps=5", *every_step)))
    last = tmp_path / "b" / "checkpoints" / "last.ckpt"
    resumed = train(
        compose_config(
            tiny_overrides(
                tiny_data_dir, tmp_path / "b", "trainer.max_steps=8", f"ckpt_path={last}", *every_step
            )
        )
    )
    assert resumed["val/wer"] == straight["val/wer"]
    assert abs(resumed["val/loss"] - straight["val/loss"]) < 1e-5
    weights_a = load_checkpoint(tmp_path / "a/checkpoints/last.ckpt")["state_dict"]
    weights_b = load_checkpoint(last)["state_dict"]
    assert all(torch.allclose(weights_a[k], weights_b[k], atol=1e-6) for k in weights_a)

    client, runs = runs_of(mlflow_store)
    assert len(runs) == 2  # the resumed job continued its MLflow run instead of opening a third
    run_b = load_checkpoint(last)["mlflow_run_id"]
    steps = [m.step for m in client.get_metric_history(run_b, "train/loss")]
    assert sorted(steps) == list(range(1, 9))  # at the global step, 1 after the first optimizer step


def test_training_ends_validated_and_steps_agree_across_metrics_artifacts_and_checkpoints(
    tiny_data_dir, tmp_path, mlflow_store, compose_config
):
    """5 steps, validation every 3: validated at 3 and at the last step; metrics, artifact folders and checkpoint
    names all say 3 and 5 (Lightning alone logs validation at 2 and 4 and never validates step 5)."""
    overrides = ["trainer.max_steps=5", "test=false", "callbacks.model_checkpoint.save_top_k=-1"]
    train(compose_config(tiny_overrides(tiny_data_dir, tmp_path / "run", *overrides)))
    client, (run,) = runs_of(mlflow_store)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/wer")] == [3, 5]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [1, 2, 3, 4, 5]
    folders = [a.path for a in client.list_artifacts(run.info.run_id, "audio")]
    assert folders == ["audio/step_0000003", "audio/step_0000005"]
    checkpoints = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("step*.ckpt"))
    assert checkpoints == ["step0000003.ckpt", "step0000005.ckpt"]


def test_bad_audio_is_skipped_and_counted(tiny_data_dir, tmp_path, mlflow_store, compose_config):
    import json

    source = tiny_data_dir / "connected_digits" / "train.jsonl"
    rows = [json.loads(line) for line in source.read_text().splitlines()]
    (tmp_path / "broken.wav").write_bytes(b"not audio")
    for index, row in enumerate(rows[:3]):
        row["audio_filepath"] = str(tmp_path / ("broken.wav" if index < 2 else "missing.wav"))
    manifest = tmp_path / "train_with_bad.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = compose_config(
        tiny_overrides(tiny_data_dir, tmp_path / "run", f"data.train_manifest={manifest}", "test=false")
    )
    metrics = train(cfg)
    assert metrics["data/skipped_train"] >= 3  # 3 bad rows per epoch, and 6 steps cover at least one epoch


def test_eval_from_run_id_links_to_the_training_run(tiny_data_dir, tmp_path, mlflow_store, compose_config):
    train(compose_config(tiny_overrides(tiny_data_dir, tmp_path / "run", "test=false")))
    client, (training_run,) = runs_of(mlflow_store)
    overrides = [
        o
        for o in tiny_overrides(tiny_data_dir, tmp_path / "eval")
        if not o.startswith(("trainer.max", "callbacks"))
    ]
    metrics = evaluate(
        compose_config([*overrides, f"run_id={training_run.info.run_id}", "task_name=eval"], "eval")
    )
    assert {"test/wer", "test_heldout/wer"} <= set(metrics)
    _, (eval_run,) = runs_of(mlflow_store, "eval")
    assert eval_run.data.tags["voxlab.evaluates_run"] == training_run.info.run_id


def test_training_refuses_a_trainable_part_left_in_eval_mode():
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.1), nn.Linear(2, 2))
    check_training_modes(model)
    model[2].eval()  # as a part loaded for inference, then fine-tuned, would be
    with pytest.raises(ValueError, match="modules in eval mode with trainable parameters: 2"):
        check_training_modes(model)
    model[2].requires_grad_(False)  # a frozen part (a teacher) may stay in eval mode
    check_training_modes(model)
