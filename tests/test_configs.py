"""Every experiment config composes and builds its model, datamodule and trainer, so no config rots unnoticed.
Upstream parts come from tiny checkpoints and a tiny HuBERT directory the tests make themselves."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from datamodules.audio_datamodule import AudioDataModule
from datamodules.preferences import PreferenceDataModule
from datamodules.text_datamodule import TextDataModule
from experiments.core.checkpoints import load_checkpoint
from experiments.core.cli import experiment_names
from experiments.core.compose import compose_config
from lit_modules.text_lm import TextLMModule
from research.acllm.text_lm import train_tokenizer
from research.encoder import ConformerEncoder
from tests.conftest import TINY_T2A

CPU_TRAINER = [
    "trainer.accelerator=cpu",
    "trainer.devices=1",
    "trainer.precision=32-true",
    "++trainer.strategy=auto",
]


def upstream_overrides(name: str, ctc_ckpt, hubert_dir, llm_dir, acllm_ckpt) -> list[str]:
    """What each experiment needs from outside: a teacher, an encoder to fine-tune, an LLM directory, the AcLLM
    run a later stage starts from."""
    encoder_teacher = [
        f"model.teacher.ckpt_path={ctc_ckpt}",
        "model.teacher.layer=1",
        "model.codec.semantic_dim=32",
    ]
    acllm = [
        f"model.model.encoder.encoder.ckpt_path={ctc_ckpt}",
        f"model.model.llm_dir={llm_dir}",
        "model.model.converter.input_dim=32",
        "model.model.converter.output_dim=32",
    ]
    sentences = ["converter_only", "full", "lora", "seed_asr", "two_step"]
    return {
        "acllm/digits_lora": acllm,
        **{f"acllm/sentences_{recipe}": acllm for recipe in sentences},
        "acllm/paper": acllm,  # the GPU config, built here on the CPU with the tiny LM the tests save
        "acllm/units_lora": [f"model.model.llm_dir={llm_dir}"],
        **{
            name: [f"init.ckpt_path={acllm_ckpt}", "model.lora.rank=4"]
            for name in (
                "acllm/digits_context",
                "acllm/sentences_context",
                "rl/mwer_digits",
                "rl/mwer_sentences",
                "rl/mwer_sentences_weighted",
            )
        },
        "tokenizer/cpu": encoder_teacher,
        "tokenizer/baichuan": encoder_teacher,
        "tokenizer/split_rvq": encoder_teacher,
        "tokenizer/paper": [f"model.teacher.model_dir={hubert_dir}", "model.codec.semantic_dim=32"],
        "ssl/luise_sft": [
            f"model.net.encoder.ckpt_path={ctc_ckpt}",
            "model.net.encoder.key=net.encoder",
            "model.reset_encoder_layers=1",
        ],
    }.get(name, [])


def test_the_list_of_experiments_is_the_documented_one():
    assert experiment_names() == [
        "acllm/digits_context",
        "acllm/digits_lora",
        "acllm/paper",
        "acllm/sentences_context",
        "acllm/sentences_converter_only",
        "acllm/sentences_full",
        "acllm/sentences_lora",
        "acllm/sentences_seed_asr",
        "acllm/sentences_two_step",
        "acllm/units_lora",
        "asr/ctc_digits",
        "asr/ctc_sentences",
        "reward/clap_digits",
        "rl/crpo_digits",
        "rl/mwer_digits",
        "rl/mwer_sentences",
        "rl/mwer_sentences_weighted",
        "ssl/luise_iter1",
        "ssl/luise_iter2",
        "ssl/luise_sft",
        "t2a/flow_digits",
        "t2a/paper",
        "t2a/tokens_to_mel",
        "text_lm/sentences",
        "tokenizer/baichuan",
        "tokenizer/cpu",
        "tokenizer/no_distill",
        "tokenizer/paper",
        "tokenizer/split_rvq",
    ]


@pytest.fixture(scope="session")
def tiny_codec_checkpoint(tmp_path_factory):
    """A tiny randomly initialised SpeechTokenizer codec checkpoint: the tokenizer the t2a experiments load."""
    from tests.test_t2a import write_tiny_codec_checkpoint

    return write_tiny_codec_checkpoint(tmp_path_factory.mktemp("codec") / "tokenizer.ckpt")


@pytest.fixture(scope="session")
def tiny_t2a_checkpoint(tmp_path_factory):
    """A tiny text-to-audio model (experiment=t2a/flow_digits) saved as experiments.train would: CRPO's policy."""
    overrides = ["experiment=t2a/flow_digits", *TINY_T2A]
    model = compose_config(overrides).model
    net = instantiate(model.net)
    path = tmp_path_factory.mktemp("t2a") / "t2a.ckpt"
    state = {f"net.{key}": value for key, value in net.state_dict().items()}
    config = {"model": OmegaConf.to_container(model, resolve=True)}
    torch.save({"voxlab_config": config, "state_dict": state}, path)
    return path


def t2a_overrides(name: str, codec_ckpt, text_encoder_dir, t2a_ckpt=None) -> list[str]:
    """The tokenizer (codes, latents), text encoder directory (paper) and policy (CRPO) the text-to-audio
    experiments load."""
    return {
        "rl/crpo_digits": [f"model.net.ckpt_path={t2a_ckpt}", "data.train_manifest=pairs.jsonl"],
        "t2a/tokens_to_mel": [f"tokenizer.ckpt_path={codec_ckpt}"],
        "t2a/paper": [
            f"tokenizer.ckpt_path={codec_ckpt}",
            f"model.net.conditioner.model_dir={text_encoder_dir}",
            "model.net.representation.seconds=1.0",
        ],
    }.get(name, [])


@pytest.mark.parametrize("name", experiment_names())
def test_every_experiment_builds_model_data_and_trainer(
    name,
    tiny_ctc_checkpoint,
    tiny_hubert_dir,
    tiny_llm_dir,
    tiny_acllm_checkpoint,
    tiny_codec_checkpoint,
    tiny_t2a_checkpoint,
    tmp_path,
):
    overrides = [
        f"experiment={name}",
        f"paths.output_dir={tmp_path}",
        *upstream_overrides(name, tiny_ctc_checkpoint, tiny_hubert_dir, tiny_llm_dir, tiny_acllm_checkpoint),
        *t2a_overrides(name, tiny_codec_checkpoint, tiny_llm_dir, tiny_t2a_checkpoint),
    ]
    cfg = compose_config(overrides)
    assert cfg.experiment_name == name and cfg.component == name.split("/")[0]
    model = instantiate(cfg.model)
    assert isinstance(model, L.LightningModule)
    if isinstance(model, TextLMModule):  # sized by the tokenizer its datamodule trains: built at setup
        model.build(train_tokenizer(["a few words of text"], vocab_size=300))
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) > 0
    datamodule = instantiate(cfg.data)
    assert isinstance(datamodule, AudioDataModule | TextDataModule | PreferenceDataModule)
    trainer = instantiate(compose_config([*overrides, *CPU_TRAINER]).trainer, logger=False)
    assert trainer.max_steps > 0
    if name == "ssl/luise_sft":  # the fine-tuned encoder is the upstream one, with its weights
        upstream = load_checkpoint(tiny_ctc_checkpoint)["state_dict"]
        encoder = model.net.encoder
        assert isinstance(encoder, ConformerEncoder) and encoder.training
        assert torch.equal(encoder.subsampling.proj.weight, upstream["net.encoder.subsampling.proj.weight"])


@pytest.mark.parametrize(
    "recipe, trains",
    [
        ("converter_only", {"converter"}),
        ("seed_asr", {"encoder", "converter"}),
        ("lora", {"converter", "llm"}),
        ("full", {"encoder", "converter", "llm"}),
    ],
)
def test_the_sentence_recipes_differ_only_in_what_trains(
    recipe, trains, tiny_ctc_checkpoint, tiny_hubert_dir, tiny_llm_dir, tmp_path
):
    name = f"acllm/sentences_{recipe}"
    overrides = upstream_overrides(name, tiny_ctc_checkpoint, tiny_hubert_dir, tiny_llm_dir, None)
    cfg = compose_config([f"experiment={name}", f"paths.output_dir={tmp_path}", *overrides])
    base = compose_config(["experiment=acllm/sentences_lora", f"paths.output_dir={tmp_path}", *overrides])
    assert (
        cfg.trainer == base.trainer and cfg.data == base.data and cfg.model.optimizer == base.model.optimizer
    )
    model = instantiate(cfg.model)
    assert {part for part, count in model.parameter_counts.items() if count["trainable"]} == trains


def test_the_paper_config_takes_a_transformers_encoder_directory(tiny_hubert_dir, tiny_llm_dir, tmp_path):
    from research.acllm.speech_llm import HuggingFaceSpeechEncoder

    cfg = compose_config(
        [
            "experiment=acllm/paper",
            f"paths.output_dir={tmp_path}",
            "model/speech_encoder@model.model.encoder=huggingface",
            f"model.model.encoder.model_dir={tiny_hubert_dir}",
            f"model.model.llm_dir={tiny_llm_dir}",
            "model.model.converter.input_dim=32",
            "model.model.converter.output_dim=32",
        ]
    )
    assert cfg.trainer.strategy == "ddp" and cfg.trainer.precision == "bf16-mixed"
    model = instantiate(cfg.model)
    assert isinstance(model.model.encoder, HuggingFaceSpeechEncoder) and model.hparams.beams == 4
    assert (
        0 < model.parameter_counts["llm"]["trainable"] < 0.1 * model.parameter_counts["llm"]["total"]
    )  # LoRA
