"""The CRPO loop end to end with `debug=fast` and tiny models: stages, preference sets, MLflow logging, resume,
and the baselines (static pairs reused, random pairs, flow matching only)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from datamodules.manifest import read_manifest
from tests.conftest import MIRROR, TINY_T2A

TINY_CLAP = [
    "model.model.audio_encoder.d_model=16",
    "model.model.audio_encoder.num_layers=1",
    "model.model.audio_encoder.num_heads=2",
    "model.model.audio_encoder.ffn_dim=32",
    "model.model.audio_encoder.subsampling_channels=8",
    "model.model.text_encoder.d_model=16",
    "model.model.text_encoder.buckets=64",
    "model.model.embed_dim=8",
]
GENERATION = [
    "crpo.prompt_limit=2",
    "crpo.rounds=2",
    "crpo.samples=3",
    "crpo.sampler_steps=2",
    "crpo.batch_size=6",
    "data.batch_size=2",
]


def stages(out: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in (out / "stages").glob("*.json")}


@pytest.fixture(scope="module")
def captions_dir(tmp_path_factory) -> Path:
    from datamodules.prepare import prepare_fsdd_captions

    data_dir = tmp_path_factory.mktemp("data")
    prepare_fsdd_captions(out_dir=data_dir / "fsdd_captions", mirror=str(MIRROR))
    return data_dir


def run_crpo(out: Path, data_dir: Path, *options: str) -> int:
    from experiments.pipeline import main as run_pipeline

    common = [
        "debug=fast",
        "data.num_workers=0",
        "trainer.limit_val_batches=1",
        "callbacks.progress_bar.refresh_rate=0",
    ]
    return run_pipeline(
        [
            "crpo",
            "--out", str(out), "--data-dir", str(data_dir), "--iterations", "2", *options,
            "--common", *common,
            "--sft", *TINY_T2A, "data.batch_size=4",
            "--reward-train", *TINY_CLAP, "data.batch_size=4",
            "--crpo", *GENERATION,
        ]
    )  # fmt: skip


def check_notebook(out: Path, tmp_path: Path, monkeypatch) -> None:
    """notebooks/crpo on this run, with judged results in the evidence benchmark's layout."""
    from tests.conftest import execute_notebook

    judges = {"reward": 0.1, "digit_accuracy": 0.5, "speaker_accuracy": 0.4, "frechet": 0.3}
    results = {
        name: {"test": judges, "train": judges} for name in ("sft", "crpo_seed1_it1", "crpo_seed2_it1")
    }
    evidence = tmp_path / "evidence.json"
    evidence.write_text(json.dumps({"results": results, "real": {}}))
    monkeypatch.setenv("VOXLAB_CRPO_DIR", str(out))
    monkeypatch.setenv("VOXLAB_CRPO_EVIDENCE", str(evidence))
    text, images = execute_notebook("crpo")
    assert "iteration 2: chosen" in text and "digit_accuracy" in text
    assert images == 2  # the reward box plot and the judges


def test_crpo_loop_generates_ranks_trains_and_resumes(
    captions_dir, mlflow_store, tmp_path, capsys, monkeypatch
):
    from experiments.core import tracking

    out = tmp_path / "crpo"
    assert run_crpo(out, captions_dir) == 0
    done = stages(out)
    assert set(done) == {"sft", "reward", "generate1", "train1", "generate2", "train2"}
    # 2 captions x 2 rounds: up to 4 training pairs, best vs worst of 3 candidates each
    pairs = read_manifest(done["generate1"]["manifest"])
    assert 1 <= len(pairs) <= 4
    for row in pairs.rows:
        # the candidates' scores are stored rounded to 6 decimals
        assert row["chosen_score"] == pytest.approx(max(row["scores"]), abs=1e-6)
        assert row["rejected_score"] == pytest.approx(min(row["scores"]), abs=1e-6)
        assert len(set(row["seeds"])) == 3
        chosen = torch.load(pairs.resolve(row["chosen_latent"]), weights_only=True)
        assert chosen.shape == torch.load(pairs.resolve(row["rejected_latent"]), weights_only=True).shape
        assert pairs.resolve(row["audio_filepath"]).is_file()
    # each iteration generates anew from its own policy, with its own seeds
    second = read_manifest(done["generate2"]["manifest"])
    assert pairs.rows[0]["seeds"] != second.rows[0]["seeds"]
    client = tracking.client()
    generate = client.get_run(done["generate1"]["run_id"])
    assert {"train/reward_mean", "train/margin_mean", "val/pairs", "train/tied_prompts"} <= set(
        generate.data.metrics
    )
    assert generate.data.metrics["train/margin_mean"] >= 0
    assert any(a.path == "examples" for a in client.list_artifacts(generate.info.run_id))
    trained = client.get_run(done["train1"]["run_id"]).data.metrics
    assert {"train/winner_error", "train/loser_error", "train/dpo", "val/accuracy"} <= set(trained)
    # iteration 2 starts from iteration 1's policy: its reference is iteration 1's trained weights
    reference = torch.load(done["train2"]["ckpt"], weights_only=False)["state_dict"]
    policy1 = torch.load(done["train1"]["ckpt"], weights_only=False)["state_dict"]
    name = next(k for k in policy1 if k.startswith("net.generator."))
    assert torch.equal(reference[name.replace("net.", "reference.", 1)], policy1[name])
    capsys.readouterr()
    assert run_crpo(out, captions_dir) == 0
    assert capsys.readouterr().out.count("skipped") == 6
    check_notebook(out, tmp_path, monkeypatch)

    # baselines from the same SFT policy and reward
    start = ["--policy-ckpt", done["sft"]["ckpt"], "--reward-ckpt", done["reward"]["ckpt"]]
    static = tmp_path / "static"
    assert run_crpo(static, captions_dir, *start, "--mode", "static") == 0
    assert set(stages(static)) == {"generate1", "train1", "train2"}
    cfg = torch.load(stages(static)["train2"]["ckpt"], weights_only=False)["voxlab_config"]
    assert cfg["data"]["train_manifest"] == stages(static)["generate1"]["manifest"]
    random_pairs = tmp_path / "random"
    assert run_crpo(random_pairs, captions_dir, *start, "--mode", "random", "--iterations", "1") == 0
    rows = read_manifest(stages(random_pairs)["generate1"]["manifest"]).rows
    assert all(
        round(r["chosen_score"], 6) in r["scores"] and r["chosen_latent"] != r["rejected_latent"]
        for r in rows
    )
    sft_only = tmp_path / "sft_only"
    assert run_crpo(sft_only, captions_dir, *start, "--mode", "sft_only", "--iterations", "1") == 0
    assert set(stages(sft_only)) == {"train1"}
