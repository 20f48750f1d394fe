"""The text LM stage on a generated corpus of a few dozen sentences: the saved transformers directory is the trained
LM (same logits) and plugs into the AcLLM; the corpus is checked against the evaluation manifests; the loss falls
and validation perplexity is logged; the experiment runs end to end into MLflow."""

from __future__ import annotations

import json
import math
import random
import re
from functools import partial
from pathlib import Path

import lightning as L
import pytest
import torch
from mlflow.tracking import MlflowClient
from transformers import AutoModelForCausalLM, AutoTokenizer

from datamodules.text_datamodule import TextDataModule, split_held_out
from experiments.core.checkpoints import load_module
from experiments.core.runner import train
from lit_modules.text_lm import TextLMModule
from research.acllm.text_lm import new_causal_lm, train_tokenizer
from tests.conftest import History

SUBJECTS = ("the cat", "a dog", "my friend", "the old man", "her sister", "the teacher")
VERBS = ("sees", "likes", "finds", "calls", "helps")
OBJECTS = ("the ball", "a letter", "the garden", "his book", "the river", "a song")
EVALUATION_SPLITS = ("val", "test", "test_heldout")
TINY_LM = {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64}


def generated_sentences() -> list[str]:
    sentences = [f"{s} {v} {o}" for s in SUBJECTS for v in VERBS for o in OBJECTS]
    random.Random(0).shuffle(sentences)
    return sentences


def write_spoken_sentences(folder: Path, corpus: list[str], evaluation: list[str]) -> Path:
    """lm_corpus.txt and val/test/test_heldout manifests (no audio: only their text is read), as the preparer
    lays them out; returns the corpus path."""
    folder.mkdir(parents=True, exist_ok=True)
    for number, split in enumerate(EVALUATION_SPLITS):
        rows = [
            {"id": f"{split}{i}", "audio_filepath": f"{split}{i}.flac", "duration": 2.0, "sample_rate": 16000}
            | {"text": text.capitalize() + "."}  # normalised before comparison, as the corpus is
            for i, text in enumerate(evaluation[number::3])
        ]
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (folder / "lm_corpus.txt").write_text("".join(f"{s}\n" for s in corpus))
    return folder / "lm_corpus.txt"


def manifests(folder: Path) -> list[str]:
    return [str(folder / f"{split}.jsonl") for split in EVALUATION_SPLITS]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """<data_dir>/spoken_sentences with 54 corpus sentences and 12 evaluation sentences."""
    sentences = generated_sentences()
    data_dir = tmp_path_factory.mktemp("text_data")
    write_spoken_sentences(data_dir / "spoken_sentences", sentences[:54], sentences[54:66])
    return data_dir


def text_datamodule(folder: Path, **kwargs) -> TextDataModule:
    settings = {"vocab_size": 300, "batch_size": 8, "val_fraction": 0.1, "seed": 0} | kwargs
    return TextDataModule(
        corpus=str(folder / "lm_corpus.txt"), exclude_manifests=manifests(folder), **settings
    )


@pytest.fixture(scope="module")
def fitted(data_dir, tmp_path_factory) -> dict:
    """A tiny LM fitted for 40 steps with a plain Trainer: {"module", "datamodule", "trainer", "losses"}."""
    L.seed_everything(0)
    datamodule = text_datamodule(data_dir / "spoken_sentences")
    module = TextLMModule(
        lm=partial(new_causal_lm, **TINY_LM),
        optimizer=partial(torch.optim.AdamW, lr=3e-3),
        scheduler={"warmup_steps": 5},
    )
    history = History(("train/loss",))
    trainer = L.Trainer(
        max_steps=40,
        val_check_interval=20,
        check_val_every_n_epoch=None,
        default_root_dir=tmp_path_factory.mktemp("text_lm_run"),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[history],
        log_every_n_steps=1,
    )
    trainer.fit(module, datamodule=datamodule)
    return {"module": module.eval(), "datamodule": datamodule, "trainer": trainer, "losses": history.values}


def test_loss_falls_and_validation_perplexity_is_exp_of_the_token_mean_loss(fitted):
    losses = fitted["losses"]["train/loss"]
    assert len(losses) == 40
    assert sum(losses[-5:]) / 5 < 0.75 * sum(losses[:5]) / 5  # measured: 5.6 -> 3.7
    metrics = fitted["trainer"].callback_metrics
    assert math.isclose(float(metrics["val/perplexity"]), math.exp(float(metrics["val/loss"])), rel_tol=1e-4)


def test_the_saved_directory_is_the_trained_lm_and_its_tokenizer(fitted):
    folder = Path(fitted["trainer"].default_root_dir) / "hf"
    loaded = AutoModelForCausalLM.from_pretrained(folder).eval()
    batch = next(iter(fitted["datamodule"].val_dataloader()))
    with torch.no_grad():
        trained = fitted["module"](batch)
        reloaded = loaded(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert torch.allclose(trained, reloaded, atol=1e-5)

    tokenizer = AutoTokenizer.from_pretrained(folder)
    sentence = "the old man finds a letter"
    ids = tokenizer(sentence, add_special_tokens=False).input_ids
    assert tokenizer.decode(ids) == sentence and len(ids) < len(sentence)  # BPE merged some bytes
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == ("<s>", "</s>", "<pad>")


def test_batches_are_bos_sentence_eos_with_padding_left_out_of_the_loss(fitted):
    tokenizer = fitted["module"].tokenizer
    batch = next(iter(fitted["datamodule"].val_dataloader()))
    lengths = batch["attention_mask"].sum(1)
    for row, length in enumerate(lengths.tolist()):
        ids = batch["input_ids"][row]
        assert ids[0] == tokenizer.bos_token_id and ids[length - 1] == tokenizer.eos_token_id
        assert (batch["labels"][row, length:] == -100).all() and (
            batch["labels"][row, :length] == ids[:length]
        ).all()


def test_the_saved_directory_plugs_into_the_speech_llm(fitted):
    from research.acllm.converter import Converter
    from research.acllm.speech_llm import SpeechEncoder, SpeechLLM
    from research.encoder import ConformerEncoder

    encoder = ConformerEncoder(d_model=16, num_layers=2, num_heads=2, ffn_dim=32, subsampling_channels=4)
    model = SpeechLLM(
        encoder=SpeechEncoder(encoder=encoder),
        converter=Converter(input_dim=16, output_dim=TINY_LM["hidden_size"], splice=4),
        llm_dir=str(Path(fitted["trainer"].default_root_dir) / "hf"),
    )
    loss = model(
        torch.randn(2, 1, 16000) * 0.1, torch.tensor([16000, 12000]), ["the cat sees a song", "a dog"]
    )
    assert torch.isfinite(loss)


def test_a_corpus_holding_an_evaluation_sentence_is_refused(tmp_path):
    sentences = generated_sentences()
    leaked = sentences[60]
    folder = tmp_path / "spoken_sentences"
    corpus = write_spoken_sentences(folder, [*sentences[:40], leaked], sentences[54:66])
    with pytest.raises(ValueError, match=f"{re.escape(str(corpus))}.*'{leaked}'"):
        text_datamodule(folder).setup("fit")


def test_a_missing_corpus_says_how_to_make_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m datamodules.prepare spoken-sentences --out"):
        text_datamodule(tmp_path / "spoken_sentences").setup("fit")


def test_the_validation_split_holds_every_copy_and_depends_on_its_own_seed_only():
    sentences = [*generated_sentences()[:50], *generated_sentences()[:10]]  # ten sentences twice
    train_part, val_part = split_held_out(sentences, 0.2, seed=3)
    assert len(val_part) == 10 and not set(val_part) & set(train_part)
    assert len(train_part) + len(val_part) + sum(s in val_part for s in sentences[50:]) == len(sentences)
    assert split_held_out(sentences, 0.2, seed=3) == (train_part, val_part)


def tiny_text_lm(data_dir: Path, output_dir: Path, *extra: str) -> list[str]:
    return [
        "experiment=text_lm/sentences",
        f"paths.data_dir={data_dir}",
        f"paths.output_dir={output_dir}",
        f"paths.runs_dir={output_dir.parent / 'runs'}",
        *(f"model.lm.{key}={value}" for key, value in TINY_LM.items()),
        "model.scheduler.warmup_steps=2",
        "data.vocab_size=300",
        "data.batch_size=8",
        "data.val_fraction=0.1",
        "trainer.max_steps=6",
        "trainer.val_check_interval=3",
        "trainer.log_every_n_steps=1",
        "callbacks.progress_bar.refresh_rate=0",
        *extra,
    ]


def test_the_experiment_trains_tests_and_logs_the_directory_to_mlflow(
    data_dir, tmp_path, mlflow_store, compose_config
):
    metrics = train(compose_config(tiny_text_lm(data_dir, tmp_path / "run")))
    assert {"train/loss", "val/loss", "val/perplexity", "test/perplexity", "test_heldout/perplexity"} <= set(
        metrics
    )

    folder = tmp_path / "run" / "hf"
    client = MlflowClient(mlflow_store)
    (run,) = client.search_runs([client.get_experiment_by_name("text_lm_sentences").experiment_id])
    assert run.data.tags["voxlab.text_lm_dir"] == str(folder.resolve())
    assert run.data.tags["voxlab.component"] == "text_lm" and "val/perplexity" in run.data.metrics
    logged = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "text_lm")}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= logged

    # the directory holds the best checkpoint's LM, which that checkpoint rebuilds without the corpus
    module = load_module(run.data.tags["voxlab.checkpoint_best"])
    input_ids = torch.tensor([[module.tokenizer.bos_token_id, 10, 11, 12]])
    expected = AutoModelForCausalLM.from_pretrained(folder).eval()(input_ids=input_ids).logits
    assert torch.allclose(module.lm(input_ids=input_ids).logits, expected, atol=1e-5)


def test_a_checkpoint_of_another_tokenizer_is_refused(fitted):
    other = train_tokenizer(["some other text entirely", "with other merges"], vocab_size=280)
    with pytest.raises(ValueError, match="tokenizer differs"):
        fitted["module"].on_load_checkpoint({"tokenizer": other.backend_tokenizer.to_str()})
