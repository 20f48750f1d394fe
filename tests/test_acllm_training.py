"""The AcLLM SFT stage through experiments.train on tiny parts: the recipe decides what trains, parameter counts
and validation WER reach MLflow, and the loss falls on a batch it sees repeatedly."""

from __future__ import annotations

import torch

from experiments.core import tracking
from experiments.core.checkpoints import load_checkpoint
from experiments.core.runner import train
from tests.conftest import tiny_acllm


def test_lora_recipe_trains_logs_parameter_counts_and_validates(
    tiny_data_dir, tiny_ctc_checkpoint, tiny_llm_dir, tmp_path, mlflow_store, compose_config
):
    metrics = train(
        compose_config(tiny_acllm(tiny_data_dir, tmp_path / "run", tiny_ctc_checkpoint, tiny_llm_dir))
    )
    assert {"train/loss", "val/loss", "val/wer", "val/cer"} <= set(metrics)
    client = tracking.client()
    (run,) = client.search_runs([client.get_experiment_by_name("acllm_digits").experiment_id])
    logged = run.data.metrics
    assert logged["params/encoder/trainable"] == 0 and logged["params/converter/trainable"] > 0
    assert 0 < logged["params/llm/trainable"] < 0.1 * logged["params/llm/total"]
    assert run.data.tags["voxlab.component"] == "acllm"
    exported = {a.path for a in client.list_artifacts(run.info.run_id, "acllm")}
    assert exported == {"acllm/adapter", "acllm/merged"}  # peft's directory and the merged LLM
    assert (tmp_path / "run" / "export" / "adapter" / "adapter_config.json").is_file()
    saved = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")["state_dict"]
    llm_keys = [k for k in saved if k.startswith("model.llm.")]
    assert llm_keys and all(".lora_" in k for k in llm_keys)  # the frozen LLM is rebuilt from its directory
    assert any(k.startswith("model.converter.") for k in saved)
    # evaluated from nothing but its checkpoint, on every test set
    from tests.test_eval import evaluate_checkpoint

    tested = evaluate_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert {"test/wer", "test/cer", "test_heldout/wer"} <= set(tested)


def test_the_loss_falls_on_a_repeated_batch_when_the_llm_trains(
    tiny_data_dir, tiny_ctc_checkpoint, tiny_llm_dir, tmp_path, compose_config
):
    from hydra.utils import instantiate

    from datamodules.audio_datamodule import AudioDataModule
    from tests.conftest import fit_on_batch

    cfg = compose_config(
        tiny_acllm(
            tiny_data_dir,
            tmp_path,
            tiny_ctc_checkpoint,
            tiny_llm_dir,
            "model.optimizer.lr=3e-3",
            "model.scheduler=null",
            "model.recipe=full",
            "model.lora=null",
        )
    )
    module = instantiate(cfg.model)
    data: AudioDataModule = instantiate(cfg.data)
    data.prepare_data()
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    batch = {k: v[:8] if k in ("audio", "audio_lens", "text") else v for k, v in batch.items()}
    history = fit_on_batch(module, batch, 150, ("train/loss",), default_root_dir=tmp_path)
    losses = history.values["train/loss"]
    assert sum(losses[-5:]) / 5 < 0.25 * sum(losses[:5]) / 5
    # the transcript depends on the audio (NeMo #15008: fluent text unrelated to it): zeroed or shuffled audio
    # must cost clearly more than the real audio
    module.eval()
    with torch.no_grad():
        loss = lambda audio: float(module.model(audio, batch["audio_lens"], batch["text"]))  # noqa: E731
        real, zeroed = loss(batch["audio"]), loss(torch.zeros_like(batch["audio"]))
        shuffled = loss(batch["audio"].roll(1, dims=0))
    print(f"real {real:.3f} zeroed {zeroed:.3f} shuffled {shuffled:.3f}")
    assert zeroed > 2 * real and shuffled > 2 * real  # measured: 0.05 / 0.37 / 0.34


def test_transcribe_writes_hyp_and_nbest_and_names_unreadable_rows(
    tiny_data_dir, tiny_ctc_checkpoint, tiny_llm_dir, tmp_path, mlflow_store, compose_config
):
    import json

    from datamodules.manifest import read_manifest
    from experiments import transcribe
    from experiments.core.checkpoints import load_module

    train(compose_config(tiny_acllm(tiny_data_dir, tmp_path / "run", tiny_ctc_checkpoint, tiny_llm_dir)))
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    source = read_manifest(tiny_data_dir / "connected_digits" / "val.jsonl")
    rows = [{**row, "audio_filepath": str(source.audio_path(i))} for i, row in enumerate(source.rows[:5])]
    (tmp_path / "broken.wav").write_bytes(b"not audio")
    rows[2] = {**rows[2], "audio_filepath": str(tmp_path / "broken.wav")}
    manifest = tmp_path / "in.jsonl"
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "out.jsonl"
    args = [
        "--ckpt",
        str(ckpt),
        "--manifest",
        str(manifest),
        "--out",
        str(out),
        "--beam",
        "2",
        "--nbest",
        "2",
    ]
    status = transcribe.main(
        [*args, "--batch-size", "1"]
    )  # each row bounded by its own length, as alone below
    assert status == 2  # one unreadable row: named, the others transcribed
    transcribed = read_manifest(out)
    written = transcribed.rows
    assert [row["id"] for row in written] == [rows[i]["id"] for i in (0, 1, 3, 4)]
    assert all(len(row["nbest"]) == 2 and row["hyp"] == row["nbest"][0]["text"] for row in written)
    assert all(row["nbest"][0]["score"] >= row["nbest"][1]["score"] for row in written)
    # the same hypotheses as the model decoding that audio itself
    model = load_module(ckpt).model
    from research.audio import load_audio

    wave = load_audio(transcribed.audio_path(0), sample_rate=16000)
    alone = model.transcribe(wave[None], torch.tensor([wave.shape[-1]]), beams=2, nbest=2)
    assert [h[0] for h in alone[0]] == [h["text"] for h in written[0]["nbest"]]


def test_a_recipe_and_lora_settings_that_disagree_are_refused(
    tiny_data_dir, tiny_ctc_checkpoint, tiny_llm_dir, tmp_path, compose_config
):
    import pytest
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    for extra in (["model.recipe=full"], ["model.lora=null"]):
        cfg = compose_config(tiny_acllm(tiny_data_dir, tmp_path, tiny_ctc_checkpoint, tiny_llm_dir, *extra))
        with pytest.raises(InstantiationException, match="the lora recipe needs LoRA settings"):
            instantiate(cfg.model)


def test_a_saved_and_reloaded_lora_model_gives_identical_hypotheses(
    tiny_data_dir, tiny_ctc_checkpoint, tiny_llm_dir, tmp_path, compose_config
):
    """Adapters and converter are what the checkpoint stores; the frozen LLM comes back from its directory."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from experiments.core.checkpoints import load_module

    cfg = compose_config(tiny_acllm(tiny_data_dir, tmp_path, tiny_ctc_checkpoint, tiny_llm_dir))
    module = instantiate(cfg.model).eval()
    with torch.no_grad():  # adapters that do something (LoRA B starts at zero)
        for name, parameter in module.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    audio, lens = torch.randn(2, 1, 16000) * 0.1, torch.tensor([16000, 12000])
    before = module.model.transcribe(audio, lens, beams=2, nbest=2)
    checkpoint = {
        "state_dict": module.state_dict(),
        "voxlab_config": {"model": OmegaConf.to_container(cfg, resolve=True)["model"]},
    }
    module.on_save_checkpoint(checkpoint)
    assert not any(k.startswith("model.llm.") and ".lora_" not in k for k in checkpoint["state_dict"])
    torch.save(checkpoint, tmp_path / "saved.ckpt")
    reloaded = load_module(tmp_path / "saved.ckpt")
    after = reloaded.model.transcribe(audio, lens, beams=2, nbest=2)
    assert [[h[0] for h in item] for item in after] == [[h[0] for h in item] for item in before]
    assert [[h[1] for h in item] for item in after] == [[h[1] for h in item] for item in before]
    del checkpoint["state_dict"][
        "model.llm.base_model.model.model.layers.0.self_attn.q_proj.lora_B.default.weight"
    ]
    torch.save(checkpoint, tmp_path / "broken.ckpt")
    import pytest

    with pytest.raises(RuntimeError, match="lora_B"):  # a missing adapter is never silently refilled
        load_module(tmp_path / "broken.ckpt")
