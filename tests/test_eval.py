"""`experiments.eval` with nothing but a checkpoint rebuilds model and data from the checkpoint's own config, for
every component; checkpoints of parts loaded from upstream checkpoints stand alone."""

from __future__ import annotations

import shutil

from experiments.core.checkpoints import load_checkpoint, load_submodule
from experiments.core.compose import compose_config
from experiments.core.runner import evaluate, train
from research.encoder import ConformerEncoder
from tests.conftest import MIRROR, TINY_COUNTS, tiny_overrides


def evaluate_checkpoint(ckpt, *extra: str) -> dict[str, float]:
    """What `python -m experiments.eval ckpt_path=<ckpt>` runs: no experiment, no model or data overrides (the
    output folder is Hydra's under the command)."""
    overrides = [
        f"ckpt_path={ckpt}",
        f"paths.output_dir={ckpt.parent.parent / 'eval'}",
        "+trainer.limit_test_batches=1",
    ]
    return evaluate(compose_config([*overrides, *extra], "eval"))


def tiny_luise(data_dir, output_dir, experiment: str, *extra: str) -> list[str]:
    return [
        f"experiment={experiment}",
        f"paths.data_dir={data_dir}",
        f"paths.output_dir={output_dir}",
        f"paths.mirror_dir={MIRROR}",
        f"data.preparers.connected_digits.counts={TINY_COUNTS}",
        "data.batch_size=4",
        "data.num_workers=0",
        "trainer.max_steps=3",
        "++trainer.limit_val_batches=1",
        "callbacks.progress_bar.refresh_rate=0",
        *extra,
    ]


def test_asr_checkpoint_evaluates_from_its_own_config(tiny_data_dir, tmp_path, mlflow_store):
    train(
        compose_config(tiny_overrides(tiny_data_dir, tmp_path / "run", "test=false", "trainer.max_steps=2"))
    )
    metrics = evaluate_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert {"test/wer", "test/cer", "test_heldout/wer"} <= set(metrics)


def test_own_manifest_is_one_override(tiny_data_dir, tmp_path, mlflow_store):
    train(
        compose_config(tiny_overrides(tiny_data_dir, tmp_path / "run", "test=false", "trainer.max_steps=2"))
    )
    mine = tiny_data_dir / "connected_digits" / "val.jsonl"
    metrics = evaluate_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt", f"test_manifest={mine}")
    assert "test/wer" in metrics and not any(name.startswith("test_heldout") for name in metrics)


def test_tokenizer_checkpoint_evaluates_without_its_teacher(tiny_tokenizer_run, mlflow_store):
    state = load_checkpoint(tiny_tokenizer_run["ckpt"])["state_dict"]
    assert any(k.startswith("codec.") for k in state)
    assert not any(k.startswith("teacher.") for k in state)  # the frozen teacher's weights are not stored
    metrics = evaluate_checkpoint(tiny_tokenizer_run["ckpt"])
    assert {"test/mel_distance", "test/si_sdr", "test/bitrate"} <= set(metrics)


def test_luise_and_its_fine_tuning_stand_alone_after_the_upstream_file_is_gone(
    tiny_data_dir, tmp_path, mlflow_store
):
    pretraining = tmp_path / "iter1"
    luise = [
        "model/encoder=tiny",
        "model.quantizer.codebook_size=64",
        "data.train_manifest=[${paths.data_dir}/connected_digits/train.jsonl]",
        "data.crop_seconds=1.0",
    ]
    train(compose_config(tiny_luise(tiny_data_dir, pretraining, "ssl/luise_iter1", *luise)))
    upstream = pretraining / "checkpoints" / "last.ckpt"
    assert {"test/loss", "test/accuracy"} <= set(evaluate_checkpoint(upstream))

    sft = tmp_path / "sft"
    train(
        compose_config(
            tiny_luise(
                tiny_data_dir, sft, "ssl/luise_sft", f"model.net.encoder.ckpt_path={upstream}", "test=false"
            )
        )
    )
    shutil.rmtree(pretraining)  # the fine-tuned checkpoint must not need its upstream file any more
    ckpt = sft / "checkpoints" / "last.ckpt"
    stored = load_checkpoint(ckpt)["voxlab_config"]["model"]["net"]["encoder"]
    assert (
        stored["_target_"] == "research.encoder.ConformerEncoder"
        and stored["spec_augment"]["freq_masks"] == 2
    )
    encoder = load_submodule("net.encoder", ckpt_path=str(ckpt))
    assert isinstance(encoder, ConformerEncoder) and encoder.num_layers == 2
    assert {"test/wer", "test_heldout/wer"} <= set(evaluate_checkpoint(ckpt))
