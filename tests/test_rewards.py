"""Rewards for CRPO and the CLAP model behind them: InfoNCE and retrieval against hand computations, rewards that
score deterministically whatever mode their holder is in, the recogniser reward as -CTC loss of the prompt, the
configs that load them from checkpoints, LAION-CLAP's errors, and a few training steps of the CLAP module."""

from __future__ import annotations

import math
import sys

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torch import nn

from datamodules.audio_datamodule import AudioDataModule
from datamodules.manifest import read_manifest, write_manifest
from experiments.core.compose import compose_config
from lit_modules.clap import ClapModule
from research.asr.ctc import ConformerCTC
from research.encoder import ConformerEncoder
from research.rl.clap import (
    CaptionEncoder,
    ClapModel,
    WordBagEncoder,
    caption_groups,
    clap_loss,
    masked_mean_std,
    retrieval,
)
from research.rl.rewards import ClapReward, LaionClapReward, RecognizerReward, Reward
from tests.conftest import History, fit_on_batch, quiet_trainer

TINY_ENCODER = {
    "_target_": "research.encoder.ConformerEncoder",
    "d_model": 16,
    "num_layers": 1,
    "num_heads": 2,
    "ffn_dim": 32,
    "subsampling_channels": 4,
    "dropout": 0.3,
}
TINY_CLAP = {
    "_target_": "research.rl.clap.ClapModel",
    "audio_encoder": TINY_ENCODER,
    "text_encoder": {"_target_": "research.rl.clap.WordBagEncoder", "d_model": 16, "buckets": 64},
    "embed_dim": 8,
    "text_projection": "linear",
}
TINY_CTC = {"_target_": "research.asr.ctc.ConformerCTC", "encoder": TINY_ENCODER}
PROMPTS = [
    {"caption": "george, a man with a Greek accent, says seven", "text": "seven"},
    {"caption": "lucas, a man with a German accent, says one", "text": "one"},
    {"caption": "george, a man with a Greek accent, says seven", "text": "seven"},
]


def tiny_clap(seed: int = 0) -> ClapModel:
    torch.manual_seed(seed)
    return instantiate(TINY_CLAP, _convert_="all")


def noise(batch: int = 3, samples: int = 8000, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    audio = 0.3 * torch.randn(batch, 1, samples, generator=generator)
    lens = torch.tensor([samples, samples * 3 // 4, samples // 2])[:batch]
    return audio, lens


def save_voxlab_checkpoint(path, key: str, config: dict, module: nn.Module) -> None:
    """What experiments.train writes, as far as load_submodule reads it: the model config and the weights."""
    torch.save(
        {
            "voxlab_config": {"model": {key: config}},
            "state_dict": {f"{key}.{name}": value for name, value in module.state_dict().items()},
        },
        path,
    )


# --- InfoNCE and retrieval --------------------------------------------------------------------------------------
SIMILARITY = [[0.9, 0.1, 0.2], [0.3, 0.8, -0.1], [0.5, 0.0, 0.7]]


def hand_cross_entropy(logits: list[float], target: int) -> float:
    kept = [x for x in logits if x is not None]  # None: masked out
    return -(logits[target] - math.log(sum(math.exp(x) for x in kept)))


def test_info_nce_matches_a_hand_computation_with_duplicates_masked():
    scale = 10.0
    logits = torch.tensor(SIMILARITY, dtype=torch.float64) * scale
    s = [[scale * x for x in row] for row in SIMILARITY]
    columns = [[s[r][c] for r in range(3)] for c in range(3)]
    # no duplicates: plain symmetric InfoNCE
    a2t = sum(hand_cross_entropy(s[i], i) for i in range(3)) / 3
    t2a = sum(hand_cross_entropy(columns[i], i) for i in range(3)) / 3
    assert clap_loss(logits).item() == pytest.approx(0.5 * (a2t + t2a), rel=1e-9)
    # clips 0 and 2 share a caption: pairs (0, 2) and (2, 0) leave the negatives
    masked = [row[:] for row in s]
    masked[0][2] = masked[2][0] = None
    masked_columns = [[masked[r][c] for r in range(3)] for c in range(3)]
    a2t = sum(hand_cross_entropy(masked[i], i) for i in range(3)) / 3
    t2a = sum(hand_cross_entropy(masked_columns[i], i) for i in range(3)) / 3
    groups = caption_groups(["a", "b", "a"])
    assert groups.tolist() == [0, 1, 0]
    assert clap_loss(logits, groups).item() == pytest.approx(0.5 * (a2t + t2a), rel=1e-9)
    assert clap_loss(logits, groups).item() < clap_loss(logits).item()  # the masked entries were negatives


def test_logits_are_the_scaled_cosines():
    model = tiny_clap().eval()
    audio, lens = noise()
    captions = [p["caption"] for p in PROMPTS]
    out = model(audio, lens, captions)
    assert torch.allclose(out.audio.norm(dim=-1), torch.ones(3))
    assert torch.allclose(out.text.norm(dim=-1), torch.ones(3))
    assert model.logit_scale.item() == pytest.approx(1 / 0.07, rel=1e-5)
    cosines = F.cosine_similarity(out.audio[:, None], out.text[None], dim=-1)
    assert torch.allclose(model.logits(out.audio, out.text), cosines / 0.07, atol=1e-5)


def test_retrieval_by_hand():
    audio = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [-1.0, 0.0]])
    captions = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-0.8, 0.6]])
    candidates = ["g7", "l1", "g1"]
    result = retrieval(
        audio,
        ["g7", "l1", "g1", "g1"],
        candidates,
        captions,
        clip_speakers=["g", "l", "g", "g"],
        clip_texts=["7", "1", "1", "1"],
        candidate_speakers=["g", "l", "g"],
        candidate_texts=["7", "1", "1"],
    )
    # chosen captions: g7, l1, l1 (0.8 > 0.6 > 0.0), g1 (0.8 > 0 > -1)
    assert result.a2t == pytest.approx(3 / 4)
    assert result.speaker == pytest.approx(3 / 4) and result.text == pytest.approx(4 / 4)
    # best clip per caption: g7 -> clip 0 (g7), l1 -> clip 1 (l1), g1 -> clip 3 (g1)
    assert result.t2a == pytest.approx(1.0) and result.count == 4


def test_masked_pooling_ignores_padding():
    x = torch.tensor([[[1.0], [3.0], [100.0]]])
    mean, std = masked_mean_std(x, torch.tensor([2]))
    assert mean.item() == pytest.approx(2.0) and std.item() == pytest.approx(1.0, rel=1e-4)


def test_text_encoders_are_order_and_batch_consistent():
    bag = WordBagEncoder(d_model=8, buckets=32)
    one, two = bag(["says seven george"]), bag(["george says seven", "another caption"])
    assert torch.allclose(one[0], two[0])  # a bag of words: order-free, independent of the batch
    chars = CaptionEncoder(d_model=8, num_layers=1, num_heads=2, ffn_dim=16, dropout=0.0).eval()
    alone, batched = chars(["george says seven"]), chars(["george says seven", "a much longer caption here"])
    assert torch.allclose(alone[0], batched[0], atol=1e-5)  # padding does not leak into the pooled vector


# --- ClapReward -------------------------------------------------------------------------------------------------
def test_clap_reward_is_the_cosine_of_the_embeddings_by_hand():
    model = tiny_clap()
    reward = ClapReward(model=model)
    audio, lens = noise()
    scores = reward(audio, lens, PROMPTS)
    assert scores.shape == (3,) and scores.dtype == torch.float32 and not scores.requires_grad
    with torch.no_grad():  # the same parts, unnormalised, and torch's cosine
        hidden = model.audio_encoder(audio, lens)
        pooled = torch.cat(masked_mean_std(hidden.hidden, hidden.lens), -1)
        audio_vectors = model.audio_proj(pooled)
        text_vectors = model.text_proj(model.text_encoder([p["caption"] for p in PROMPTS]))
    assert torch.allclose(scores, F.cosine_similarity(audio_vectors, text_vectors, dim=-1), atol=1e-6)
    assert torch.all(scores.abs() <= 1 + 1e-6)


def test_clap_reward_is_deterministic_in_a_training_holder():
    reward = ClapReward(model=tiny_clap())  # dropout 0.3 in the audio encoder
    audio, lens = noise()
    first = reward(audio, lens, PROMPTS)
    holder = nn.ModuleDict({"reward": reward, "policy": nn.Linear(2, 2)}).train()
    assert holder.policy.training and not reward.training and not reward.model.audio_encoder.training
    assert torch.equal(reward(audio, lens, PROMPTS), first)
    nn.Module.train(reward.model)  # even a mode set around its override: the reward resets it before scoring
    assert torch.equal(reward(audio, lens, PROMPTS), first)
    assert not any(p.requires_grad for p in reward.parameters())
    # the test can fail: in train mode the model's dropout would change the embeddings
    model = reward.model.train()
    assert not torch.equal(model.encode_audio(audio, lens), model.eval().encode_audio(audio, lens))


def test_clap_reward_crops_a_fixed_start():
    reward = ClapReward(model=tiny_clap(), max_seconds=0.25)
    audio, lens = noise()
    cropped = ClapReward(model=tiny_clap())(audio[..., :4000], lens.clamp_max(4000), PROMPTS)
    assert torch.equal(reward(audio, lens, PROMPTS), cropped)


def test_rewards_check_their_inputs():
    reward = ClapReward(model=tiny_clap())
    audio, lens = noise()
    with pytest.raises(ValueError, match="prompts"):
        reward(audio, lens, PROMPTS[:2])
    with pytest.raises(ValueError, match=r"\(B, 1, T\)"):
        reward(audio[:, 0], lens, PROMPTS)
    with pytest.raises(KeyError, match="caption"):
        reward(audio, lens, [{"text": "one"}] * 3)


def test_clap_reward_config_loads_the_model_from_a_checkpoint(tmp_path):
    model = tiny_clap(seed=3)
    ckpt = tmp_path / "clap.ckpt"
    save_voxlab_checkpoint(ckpt, "model", TINY_CLAP, model)
    cfg = compose_config(["+reward=clap", f"reward.model.ckpt_path={ckpt}"])
    reward = instantiate(cfg.reward)
    assert isinstance(reward, ClapReward)
    audio, lens = noise()
    assert torch.equal(reward(audio, lens, PROMPTS), ClapReward(model=model)(audio, lens, PROMPTS))


# --- RecognizerReward -------------------------------------------------------------------------------------------
@pytest.fixture
def recognizer_and_reward(tmp_path) -> tuple[ConformerCTC, RecognizerReward]:
    torch.manual_seed(5)
    recognizer = ConformerCTC(
        encoder=ConformerEncoder(**{k: v for k, v in TINY_ENCODER.items() if k != "_target_"})
    )
    ckpt = tmp_path / "ctc.ckpt"
    save_voxlab_checkpoint(ckpt, "net", TINY_CTC, recognizer)
    cfg = compose_config(["+reward=recognizer", f"reward.recognizer.ckpt_path={ckpt}"])
    reward = instantiate(cfg.reward)
    assert isinstance(reward, RecognizerReward) and reward.length_normalize
    return recognizer.eval(), reward


def test_recognizer_reward_is_minus_the_ctc_loss_of_the_prompt_text(recognizer_and_reward):
    recognizer, reward = recognizer_and_reward
    audio, lens = noise()
    scores = reward(audio, lens, PROMPTS)
    with torch.no_grad():
        log_probs, frames = recognizer(audio, lens)
    expected = []
    for item, prompt in enumerate(PROMPTS):
        target = torch.tensor([recognizer.vocab.encode(prompt["text"])])
        loss = F.ctc_loss(
            log_probs[item : item + 1, : frames[item]].transpose(0, 1),
            target,
            frames[item : item + 1],
            torch.tensor([target.shape[1]]),
            reduction="sum",
        )
        expected.append(-loss.item() / len(prompt["text"]))
    assert scores.tolist() == pytest.approx(expected, rel=1e-5)
    assert scores[0] != pytest.approx(scores[2])  # same text, other audio
    reward.length_normalize = False
    assert reward(audio, lens, PROMPTS).tolist() == pytest.approx(
        [e * len(p["text"]) for e, p in zip(expected, PROMPTS, strict=True)], rel=1e-5
    )
    assert torch.equal(reward(audio, lens, PROMPTS), reward(audio, lens, PROMPTS))


def test_recognizer_reward_floors_audio_too_short_for_its_text(recognizer_and_reward):
    _, reward = recognizer_and_reward
    audio, lens = noise(batch=2)
    lens = torch.tensor([8000, 480])  # 30 ms: 1 encoder frame, too few for "seven"
    scores = reward(audio, lens, PROMPTS[:2])
    assert scores[1] == reward.unalignable_score and scores[0] > reward.unalignable_score
    with pytest.raises(KeyError, match="text"):
        reward(audio, lens, [{"caption": "x"}] * 2)


# --- LAION-CLAP -------------------------------------------------------------------------------------------------
def test_laion_clap_reward_names_a_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        LaionClapReward(checkpoint=tmp_path / "missing.pt")


def test_laion_clap_reward_names_the_missing_package(tmp_path, monkeypatch):
    ckpt = tmp_path / "630k.pt"
    ckpt.write_bytes(b"")
    monkeypatch.setitem(sys.modules, "laion_clap", None)  # as if not installed
    with pytest.raises(ImportError, match=r"voxlab\[clap\]"):
        LaionClapReward(checkpoint=ckpt)


def test_laion_clap_reward_scores_deterministically():
    pytest.importorskip(
        "laion_clap", reason="laion_clap is not installed (optional extra voxlab[clap]; it pins numpy<2)"
    )
    pytest.skip(
        "LAION-CLAP's text branch loads roberta-base from the Hugging Face hub and its weights are a download: "
        "neither can be built offline here"
    )


# --- ClapModule -------------------------------------------------------------------------------------------------
def test_base_reward_is_abstract():
    with pytest.raises(NotImplementedError):
        Reward()(torch.zeros(1, 1, 10), torch.tensor([10]), [{"caption": "x"}])


@pytest.fixture(scope="module")
def tiny_captions(mirror, tmp_path_factory):
    """A few clips of 2 speakers x 4 digits from the prepared captions: train, val (other captions), test_seen."""
    from datamodules.prepare import prepare_fsdd_captions

    root = tmp_path_factory.mktemp("clap_data")
    paths = prepare_fsdd_captions(out_dir=root / "full", mirror=str(mirror))
    keep = lambda r, n: r["speaker"] in ("george", "lucas") and r["index"] < n  # noqa: E731
    out = {}
    for split, count in (("train", 8), ("val", 2), ("test_seen", 2)):
        manifest = read_manifest(paths[split])
        rows = [
            {**r, "audio_filepath": str(manifest.resolve(r["audio_filepath"]))}
            for r in manifest.rows
            if keep(r, count if split == "test_seen" else count + 5)
        ]
        out[split] = str(write_manifest(root / f"{split}.jsonl", rows))
    return out


def tiny_module(lr: float = 3e-3) -> ClapModule:
    """A small CLAP that learns within a few dozen steps (the tiny one above, without dropout, a little wider)."""
    from functools import partial

    torch.manual_seed(0)
    encoder = {**TINY_ENCODER, "d_model": 32, "subsampling_channels": 8, "ffn_dim": 64, "dropout": 0.0}
    model = instantiate({**TINY_CLAP, "audio_encoder": encoder}, _convert_="all")
    return ClapModule(model=model, optimizer=partial(torch.optim.AdamW, lr=lr), scheduler={})


def test_clap_module_loss_falls_on_a_batch(tiny_captions):
    data = AudioDataModule(
        train_manifest=tiny_captions["train"], view="captions", batch_size=16, num_buckets=1
    )
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    assert len(set(batch["caption"])) < len(batch["caption"])  # duplicates in the batch
    history = fit_on_batch(tiny_module(), batch, max_steps=30, names=("train/loss",))
    losses = history.values["train/loss"]
    shown = str([round(x, 2) for x in losses])
    assert len(losses) == 30 and sum(losses[-3:]) / 3 < 0.6 * sum(losses[:3]) / 3, shown


def test_clap_module_logs_retrieval(tiny_captions, tmp_path):
    data = AudioDataModule(
        train_manifest=tiny_captions["train"],
        val_manifest=tiny_captions["val"],
        test_manifests={"test": tiny_captions["val"], "seen": tiny_captions["test_seen"]},
        view="captions",
        batch_size=8,
        num_buckets=2,
    )
    history = History(("train/loss",))
    trainer = quiet_trainer(
        history, max_steps=4, val_check_interval=2, check_val_every_n_epoch=None, default_root_dir=tmp_path
    )
    module = tiny_module()
    trainer.fit(module, datamodule=data)
    metrics = trainer.callback_metrics
    val_captions = {r["caption"] for r in read_manifest(tiny_captions["val"]).rows}
    assert metrics["val/captions"] == len(val_captions) == 2 * 2  # george and lucas, 2 val digits each
    for name in ("a2t", "t2a", "speaker", "words", "a2t_all", "speaker_all", "words_all"):
        assert 0 <= float(metrics[f"val/retrieval_{name}"]) <= 1, name
    trainer.test(module, datamodule=data)
    logged = set(trainer.callback_metrics)
    assert {"test/retrieval_a2t", "test_seen/retrieval_a2t", "test_seen/loss"} <= logged
    assert "test_seen/retrieval_a2t_all" not in logged  # its captions are the train captions: nothing to add
