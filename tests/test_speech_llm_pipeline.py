"""The speech_llm pipeline end to end on tiny parts: LUISE -> labels -> iteration 2 -> text LM -> AcLLM SFT on the
LUISE encoder -> context SFT -> MWER, each stage fed by its upstream's output (hashes recorded), one comparison."""

from __future__ import annotations

import json

import torch

from experiments.core.checkpoints import load_checkpoint
from research.ssl.layer_probe import best_layer
from tests.conftest import MIRROR, TINY_COUNTS
from tests.test_text_lm import TINY_LM, generated_sentences, write_spoken_sentences

DIGITS = [
    f"paths.mirror_dir={MIRROR}",
    f"data.preparers.connected_digits.counts={TINY_COUNTS}",
    "data.batch_size=4",
    "data.num_workers=0",
]


def test_speech_llm_pipeline_chains_every_stage(tiny_data_dir, mlflow_store, tmp_path, monkeypatch):
    from experiments.core import tracking
    from experiments.pipeline import main as run_pipeline

    if not (tiny_data_dir / "spoken_sentences" / "lm_corpus.txt").is_file():
        sentences = generated_sentences()
        write_spoken_sentences(tiny_data_dir / "spoken_sentences", sentences[:54], sentences[54:66])
    digits = tiny_data_dir / "connected_digits"
    out = tmp_path / "speech_llm"
    args = [
        "speech_llm", "--out", str(out), "--data-dir", str(tiny_data_dir), "--k", "4",
        "--probe-steps", "2", "--probe-train-limit", "8", "--probe-clusters", "4",
        "--label-manifests", str(digits / "train.jsonl"), str(digits / "val.jsonl"),
        "--common", "debug=fast", "callbacks.progress_bar.refresh_rate=0",
        "--iter1", "model/encoder=tiny", "model.quantizer.codebook_size=64", "~data.preparers.librispeech",
        "data.crop_seconds=1.0", "data.train_manifest=[${paths.data_dir}/connected_digits/train.jsonl]", *DIGITS,
        "--iter2", "model/encoder=tiny", "~data.preparers.librispeech", "data.crop_seconds=1.0",
        "data.train_manifest=[${labels_dir}/connected_digits/train_kmeans_labels.jsonl]", *DIGITS,
        "--lm", *(f"model.lm.{k}={v}" for k, v in TINY_LM.items()), "data.vocab_size=300", "data.batch_size=8",
        "data.val_fraction=0.1",
        "--sft", "model.lora.rank=4", "model.model.tokens_per_second=4", *DIGITS,
        "--context", "model.lora.rank=4", *DIGITS,  # later stages must keep the SFT's LoRA (else refused)
        "--mwer", "model.lora.rank=4", "model.nbest=2", *DIGITS,
    ]  # fmt: skip
    assert run_pipeline(args) == 0
    done = {p.stem: json.loads(p.read_text()) for p in (out / "stages").glob("*.json")}
    assert {
        "iter1",
        "probe1",
        "labels",
        "iter2",
        "probe2",
        "text_lm",
        "acllm_sft",
        "context_sft",
        "mwer",
    } <= set(done)
    # each stage consumed its upstream's output: the weights it started from are the upstream's, bit for bit
    # (LoRA keeps the encoder frozen: the SFT's encoder is iteration 2's, bit for bit)
    iter2 = load_checkpoint(done["iter2"]["ckpt"])["state_dict"]
    sft = load_checkpoint(done["acllm_sft"]["ckpt"])["state_dict"]
    encoder = {k[len("encoder.") :]: v for k, v in iter2.items() if k.startswith("encoder.")}
    # the LLM reads the iteration-2 layer from which the probe transcribed best; the layers above it are dropped
    sft_config = load_checkpoint(done["acllm_sft"]["ckpt"])["voxlab_config"]
    layer = sft_config["model"]["model"]["encoder"]["layer"]
    assert layer == best_layer(done["probe2"]["rows"], by="wer")
    kept = {k: v for k, v in encoder.items() if f"model.encoder.encoder.{k}" in sft}
    assert kept and all(torch.equal(sft[f"model.encoder.encoder.{k}"], v) for k, v in kept.items())
    layers_kept = {int(k.split(".")[2]) for k in kept if k.startswith("conformer.conformer_layers.")}
    assert layers_kept == set(
        range(layer)
    )  # layer 0 is the subsampled input, layer i the i-th block's output
    context = load_checkpoint(done["context_sft"]["ckpt"])
    assert context["voxlab_config"]["init"]["ckpt_path"] == done["acllm_sft"]["ckpt"]
    mwer = load_checkpoint(done["mwer"]["ckpt"])
    assert mwer["voxlab_config"]["init"]["ckpt_path"] == done["context_sft"]["ckpt"]
    # MWER is tested with the joint search, as context SFT is
    assert (
        mwer["voxlab_config"]["model"]["context_weight"]
        == context["voxlab_config"]["model"]["context_weight"]
    )
    # the records name the hashes they read: a changed upstream reruns the stages below it
    records = {
        name: json.loads((out / "stages" / f"{name}.json").read_text()) for name in ("acllm_sft", "mwer")
    }
    assert all(len(r["hash"]) == 12 and r["wall_s"] >= 0 for r in records.values())
    client = tracking.client()
    parent = next(
        r
        for r in client.search_runs([e.experiment_id for e in client.search_experiments()])
        if r.data.tags.get("voxlab.pipeline") == "speech_llm"
    )
    logged = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"comparison.md", "comparison.json", "comparison.png"} <= logged
    table = (out / "comparison.md").read_text()
    assert all(f"| {stage} |" in table for stage in ("acllm_sft", "context_sft", "mwer"))
    check_notebooks(out, tiny_data_dir, monkeypatch)


def check_notebooks(out, data_dir, monkeypatch) -> None:
    """notebooks/ssl_layers and notebooks/speech_llm on this pipeline's folder and MLflow runs."""
    from tests.conftest import execute_notebook

    monkeypatch.setenv("VOXLAB_LUISE_DIR", str(out))
    monkeypatch.setenv("VOXLAB_SPEECH_LLM_DIR", str(out))
    monkeypatch.setenv("VOXLAB_DATA", str(data_dir))
    text, images = execute_notebook("ssl_layers")
    assert "iteration 2: k-means of iteration-1 layer" in text and "pnmi" in text
    assert images == 2  # the probes per layer and the frame-level view
    text, images = execute_notebook("speech_llm")
    assert "hypothesis: " in text and "log_prob" in text and "oracle" in text
    assert "acllm/digits_lora" in text  # the recipe table found the SFT run
    assert images == 1  # WER per stage
    from experiments.core.speech_llm_view import recipe_comparison

    recipes = recipe_comparison()  # SFT and context SFT, apart (MWER is an RL stage)
    assert list(recipes["recipe"]) == ["lora"] * 2 and list(recipes["runs"]) == [1, 1]
    assert set(recipes["experiment"]) == {"acllm/digits_lora", "acllm/digits_context"}


def test_stage_seconds_falls_back_to_the_mlflow_run(mlflow_store):
    from experiments.core import tracking
    from experiments.core.pipelines.speech_llm import markdown, stage_seconds

    client = tracking.client()
    run = client.create_run(tracking.experiment_id("stage_seconds"))
    client.set_terminated(run.info.run_id, end_time=run.info.start_time + 90_500)
    assert stage_seconds({"wall_s": 12.5, "run_id": run.info.run_id}) == 12.5
    assert stage_seconds({"run_id": run.info.run_id}) == 90.5  # a record from before wall times were recorded
    assert stage_seconds({"run_id": "0" * 32}) is None
    table = markdown({"stages": {}, "wall_s": {"iter1": None, "sft": 90.5}})
    assert "| iter1 | – |" in table and "| sft | 90 |" in table
