"""Shared fixtures: a tiny connected-digit set built from the FSDD mirror, a private MLflow store per test,
and Hydra configs shrunk to a model that trains in seconds."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

REPO = Path(__file__).resolve().parents[1]
MIRROR = Path(os.environ.get("VOXLAB_MIRROR", REPO.parent / "shared" / "data"))
TINY_COUNTS = "{train: 48, val: 16, test: 16, test_heldout: 16}"
# a text-to-audio model (model/t2a.yaml) small enough for a test
TINY_T2A = [
    "model.net.generator.d_model=32",
    "model.net.generator.num_layers=1",
    "model.net.generator.num_heads=2",
    "model.net.conditioner.d_model=16",
    "model.net.conditioner.num_layers=1",
    "model.net.conditioner.num_heads=2",
    "model.net.conditioner.ffn_dim=32",
]

TINY_MODEL = [
    "model.net.encoder.d_model=32",
    "model.net.encoder.num_layers=1",
    "model.net.encoder.num_heads=2",
    "model.net.encoder.ffn_dim=64",
    "model.net.encoder.subsampling_channels=8",
    "model.net.encoder.dropout=0.1",
    "model.scheduler.warmup_steps=2",
]


def tiny_overrides(data_dir: Path, output_dir: Path, *extra: str) -> list[str]:
    return [
        "experiment=asr/ctc_digits",
        f"paths.data_dir={data_dir}",
        f"paths.output_dir={output_dir}",
        f"paths.runs_dir={output_dir.parent / 'runs'}",  # Hydra's own run folder: never the user's runs/
        f"paths.mirror_dir={MIRROR}",
        f"data.preparers.connected_digits.counts={TINY_COUNTS}",
        "data.batch_size=8",
        "data.num_workers=0",
        "trainer.max_steps=6",
        "trainer.val_check_interval=3",
        "data.num_buckets=2",
        "trainer.log_every_n_steps=1",
        "callbacks.progress_bar.refresh_rate=0",
        *TINY_MODEL,
        *extra,
    ]


def user_folders() -> dict[str, set[str]]:
    return {name: {p.name for p in (REPO / name).glob("*/*")} for name in ("runs", "mlruns", "mlartifacts")}


@pytest.fixture(scope="session", autouse=True)
def tests_leave_the_users_folders_alone():
    """Fails the session if any test wrote into the repository's runs/, mlruns/ or mlartifacts/."""
    before = user_folders()
    yield
    added = {
        name: sorted(found - before[name]) for name, found in user_folders().items() if found - before[name]
    }
    assert not added, f"tests wrote into the user's folders: {added}"


@pytest.fixture(scope="session")
def mirror() -> Path:
    if not (MIRROR / "fsdd" / "recordings").is_dir():
        pytest.skip(f"FSDD mirror not found at {MIRROR} (set VOXLAB_MIRROR)")
    return MIRROR


@pytest.fixture(scope="session")
def tiny_data_dir(mirror: Path, tmp_path_factory) -> Path:
    """Prepared once per session; configs pointing at it reuse it (the preparer skips finished work)."""
    from datamodules.prepare import prepare_connected_digits

    data_dir = tmp_path_factory.mktemp("data")
    prepare_connected_digits(
        out_dir=data_dir / "connected_digits",
        mirror=str(mirror),
        counts={"train": 48, "val": 16, "test": 16, "test_heldout": 16},
    )
    return data_dir


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch) -> str:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


@pytest.fixture
def compose_config():
    """compose_config(overrides, config_name="train") -> DictConfig, the way the entry points see it."""
    from experiments.core.compose import compose_config

    return compose_config


def run_python_module(module: str, args: list[str], env: dict | None = None, timeout: int = 600):
    """Run `python -m <module> args...` from the repo root, as a user would; fails the test on a non-zero exit."""
    result = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


def execute_notebook(name: str) -> tuple[str, int]:
    """Check notebooks/<name>.ipynb is in sync with its py:percent pair, execute it from the repository root
    (the environment is the caller's) and return (all text outputs, number of images)."""
    import jupytext
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(REPO / "notebooks" / f"{name}.ipynb", as_version=4)
    source = jupytext.read(REPO / "notebooks" / f"{name}.py")
    code = lambda nb: [c.source for c in nb.cells if c.cell_type == "code"]  # noqa: E731
    assert code(notebook) == code(source), f"{name}.ipynb is stale: run `jupytext --sync notebooks/*.py`"
    NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}
    ).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    text = "".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", "")) for o in outputs)
    images = sum("image/png" in o.get("data", {}) for o in outputs)
    return text, images


class SameBatch(Dataset):
    def __init__(self, batch: dict, length: int):
        self.batch, self.length = batch, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        return self.batch


class History(L.Callback):
    """Values of the named logged metrics after every training batch."""

    def __init__(self, names: tuple[str, ...]):
        self.names = names
        self.values: dict[str, list[float]] = {}

    def on_train_batch_end(self, trainer, *args) -> None:
        for name in self.names:
            if name in trainer.callback_metrics:
                self.values.setdefault(name, []).append(float(trainer.callback_metrics[name]))


def quiet_trainer(history: History, **trainer_args) -> L.Trainer:
    """A Trainer that writes nothing (no logger, checkpoints, progress bar or summary), recording `history`."""
    return L.Trainer(
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[history],
        **trainer_args,
    )


def fit_on_batch(module, batch: dict, max_steps: int, names: tuple[str, ...], **trainer_args) -> History:
    """Train `module` on one batch repeated, recording the named metrics."""
    history = History(names)
    trainer = quiet_trainer(history, max_steps=max_steps, **trainer_args)
    trainer.fit(module, DataLoader(SameBatch(batch, 1000), batch_size=None))
    return history


@pytest.fixture(scope="module")
def speech_batch(mirror) -> dict:
    """Four real FSDD digits (two speakers) at 16 kHz, 0.6 s each."""
    from research.audio import load_audio

    names = ["0_george_5", "3_george_7", "5_jackson_5", "8_jackson_9"]
    waves = [load_audio(mirror / "fsdd" / "recordings" / f"{n}.wav", sample_rate=16000) for n in names]
    audio = torch.zeros(len(waves), 1, 9600)
    for row, wave in enumerate(waves):
        audio[row, :, : min(9600, wave.shape[1])] = wave[:, :9600]
    return {"audio": audio, "audio_lens": torch.full((4,), 9600), "id": names}


def assert_empty_batch_step_is_a_connected_zero(module) -> None:
    """An all-bad-audio batch must give a zero loss whose backward reaches every trainable parameter (with zero
    gradients), so that DDP ranks all take the same step."""
    empty = {"audio": torch.zeros(0, 1, 0), "audio_lens": torch.zeros(0, dtype=torch.long), "n_skipped": 2}
    loss = module.training_step(empty, 0)
    assert loss is not None and float(loss.detach()) == 0.0
    loss.backward()
    trainable = [p for p in module.parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None and not p.grad.any() for p in trainable)


def sine(seconds: float, sample_rate: int, freq: float = 440.0, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    wave = 0.5 * np.sin(2 * np.pi * freq * t).astype(np.float32)
    return np.stack([wave] * channels, axis=1) if channels > 1 else wave


TINY_TOKENIZER = [
    "experiment=tokenizer/cpu",
    "model.codec.n_filters=4",
    "model.codec.dimension=32",
    "model.codec.codebook_sizes=[64,64,64,64]",
    "model.codec.quantizer.kmeans_iters=5",
    "model.discriminator.stft_filters=4",
    "model.discriminator.stft_n_ffts=[512,256]",
    "model.adversarial_start_step=2",
    "model.quality_clips=2",
    "model.teacher.layer=1",
    "model.codec.semantic_dim=32",  # d_model of the tiny CTC teacher
    "data.crop_seconds=1.0",
    "data.batch_size=4",
    "data.num_workers=0",
    "data.train_manifest=[${paths.data_dir}/connected_digits/train.jsonl]",
    "trainer.max_steps=10",
    "trainer.val_check_interval=5",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "trainer.log_every_n_steps=1",
    "callbacks.progress_bar.refresh_rate=0",
]


def tiny_tokenizer_overrides(data_dir: Path, output_dir: Path, teacher_ckpt: Path, *extra: str) -> list[str]:
    return [
        *TINY_TOKENIZER,
        f"paths.data_dir={data_dir}",
        f"paths.output_dir={output_dir}",
        f"paths.runs_dir={output_dir.parent / 'runs'}",
        f"paths.mirror_dir={MIRROR}",
        f"data.preparers.connected_digits.counts={TINY_COUNTS}",
        f"model.teacher.ckpt_path={teacher_ckpt}",
        *extra,
    ]


@pytest.fixture(scope="session")
def tiny_hubert_dir(tmp_path_factory) -> Path:
    """A randomly initialised 2-layer HuBERT saved with save_pretrained, standing in for hubert-base."""
    from transformers import HubertConfig, HubertModel

    config = HubertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(16, 16, 16, 16, 16, 16, 16),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
    )
    folder = tmp_path_factory.mktemp("hubert")
    torch.manual_seed(0)
    HubertModel(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_llm_dir(tmp_path_factory) -> Path:
    """A 2-layer Llama-style LM with a BPE tokenizer over digit words, saved as a transformers directory."""
    from research.acllm.text_lm import new_causal_lm, train_tokenizer
    from research.text import DIGIT_WORDS

    words = " ".join(DIGIT_WORDS)
    tokenizer = train_tokenizer(
        [words, f"USER: Transcribe speech to text.\n ASSISTANT: {words}"], vocab_size=300
    )
    torch.manual_seed(0)
    model = new_causal_lm(tokenizer, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
    folder = tmp_path_factory.mktemp("llm")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_ctc_checkpoint(tiny_data_dir, tmp_path_factory) -> Path:
    """A 4-step CTC digit recogniser: the semantic teacher of the tiny tokenizer runs."""
    from experiments.core.compose import compose_config
    from experiments.core.runner import train

    out = tmp_path_factory.mktemp("ctc_teacher")
    train(
        compose_config(tiny_overrides(tiny_data_dir, out, "trainer.max_steps=4", "test=false", "logger=none"))
    )
    return out / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="session")
def tiny_tokenizer_run(tiny_data_dir, tiny_ctc_checkpoint, tmp_path_factory) -> dict:
    """A tiny distilled tokenizer trained through experiments.train into its own MLflow store (session-wide, the
    tokenize tool and the notebook use it): {"uri", "run_id", "ckpt", "data_dir", "metrics"}."""
    from mlflow.tracking import MlflowClient

    from experiments.core.compose import compose_config
    from experiments.core.runner import train

    root = tmp_path_factory.mktemp("tokenizer")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        cfg = compose_config(tiny_tokenizer_overrides(tiny_data_dir, root / "run", tiny_ctc_checkpoint))
        metrics = train(cfg)
    finally:
        if previous is None:
            os.environ.pop("MLFLOW_TRACKING_URI")
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("tokenizer_cpu")
    (run,) = client.search_runs([experiment.experiment_id])
    return {
        "uri": uri,
        "run_id": run.info.run_id,
        "ckpt": root / "run" / "checkpoints" / "last.ckpt",
        "data_dir": tiny_data_dir,
        "metrics": metrics,
    }


def tiny_acllm(tiny_data_dir, output_dir, ctc_ckpt, llm_dir, *extra: str) -> list[str]:
    overrides = [
        o for o in tiny_overrides(tiny_data_dir, output_dir) if not o.startswith(("model.", "experiment="))
    ]
    return [
        "experiment=acllm/digits_lora",
        *overrides,
        f"model.model.encoder.encoder.ckpt_path={ctc_ckpt}",
        f"model.model.llm_dir={llm_dir}",
        "model.model.converter.input_dim=32",
        "model.model.converter.output_dim=32",
        "model.model.tokens_per_second=4",
        "model.lora.rank=4",
        "model.scheduler.warmup_steps=2",
        "test=false",
        *extra,
    ]


@pytest.fixture(scope="session")
def tiny_acllm_checkpoint(tiny_data_dir, tiny_ctc_checkpoint, tiny_llm_dir, tmp_path_factory) -> Path:
    """A tiny AcLLM SFT run (LoRA rank 4, 6 steps): where context SFT and MWER start."""
    from experiments.core.compose import compose_config
    from experiments.core.runner import train

    out = tmp_path_factory.mktemp("acllm_sft")
    train(compose_config(tiny_acllm(tiny_data_dir, out, tiny_ctc_checkpoint, tiny_llm_dir, "logger=none")))
    return out / "checkpoints" / "last.ckpt"
