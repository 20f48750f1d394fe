"""Rewards for text-to-audio RL (CRPO): one interface, deterministic scores.

    reward(audio (B, 1, T) float in [-1, 1] at 16 kHz, audio_lens (B,), prompts [{"caption", "text"?, ...}] * B)
        -> (B,) float scores, higher is better

A reward is frozen (no trainable parameters) and always in eval mode (its `train()` keeps it in eval, whatever
the module holding it does), scores without gradient, and crops nothing at random: the same input gives bitwise
the same scores. TangoFlux's LAION-CLAP scores varied between runs; these do not.

- `ClapReward`: cosine of the normalised audio and caption embeddings of a CLAP model trained here
  (research/rl/clap.py, `experiment=reward/clap_digits`).
- `LaionClapReward`: the same with a LAION-CLAP checkpoint at a local path (the optional `laion_clap` package,
  `pip install "voxlab[clap]"`; it pins numpy < 2 and its text branch calls `from_pretrained("roberta-base")`, so
  it builds only where that model is in the Hugging Face cache or the hub is reachable).
- `RecognizerReward`: intelligibility, the CTC recogniser's log-probability of the prompt's words (`text`).

Configs: `experiments/configs/reward/{clap,laion_clap,recognizer}.yaml` build them with Hydra (`_target_`), the
trained parts loaded from a checkpoint or MLflow run by `experiments.core.checkpoints.load_submodule`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
import torchaudio.functional as AF
from torch import nn

from research.asr.ctc import ConformerCTC, ctc_too_short
from research.rl.clap import ClapModel

Prompts = Sequence[Mapping[str, object]]


class Reward(nn.Module):
    """Base class: checks the inputs, freezes the weights, keeps eval mode and disables gradients; subclasses
    implement `score(audio, audio_lens, prompts) -> (B,)`."""

    sample_rate = 16000

    def __init__(self) -> None:
        super().__init__()
        self.train(False)

    def train(self, mode: bool = True) -> Reward:
        """Always eval: dropout, SpecAugment and batch statistics never act in a reward."""
        return super().train(False)

    def freeze(self) -> Reward:
        self.requires_grad_(False)
        return self.train(False)

    def forward(self, audio: torch.Tensor, audio_lens: torch.Tensor, prompts: Prompts) -> torch.Tensor:
        if audio.dim() != 3 or audio.shape[1] != 1:
            raise ValueError(f"audio must be (B, 1, T), got {tuple(audio.shape)}")
        if audio_lens.shape != (audio.shape[0],) or len(prompts) != audio.shape[0]:
            raise ValueError(
                f"{audio.shape[0]} clips, {tuple(audio_lens.shape)} lengths and {len(prompts)} prompts differ"
            )
        self.train(False)  # again: a holder may have set `training` directly
        with torch.no_grad():
            scores = self.score(audio.float(), audio_lens.long(), prompts)
        return scores.float().reshape(audio.shape[0])

    def score(self, audio: torch.Tensor, audio_lens: torch.Tensor, prompts: Prompts) -> torch.Tensor:
        raise NotImplementedError


def prompt_field(prompts: Prompts, field: str) -> list[str]:
    missing = [i for i, prompt in enumerate(prompts) if prompt.get(field) is None]
    if missing:
        raise KeyError(f"prompt(s) {missing} have no '{field}', which this reward scores against")
    return [str(prompt[field]) for prompt in prompts]


def crop_first(audio: torch.Tensor, audio_lens: torch.Tensor, seconds: float | None, sample_rate: int):
    """A fixed crop, the first `seconds` of each clip (no crop when None)."""
    if seconds is None:
        return audio, audio_lens
    samples = int(seconds * sample_rate)
    return audio[..., :samples], audio_lens.clamp_max(samples)


class ClapReward(Reward):
    """Cosine between the normalised embeddings of the audio and of the prompt's `caption` under a ClapModel.
    `max_seconds` scores the first seconds of each clip only (a fixed crop)."""

    def __init__(self, *, model: ClapModel, max_seconds: float | None = None):
        super().__init__()
        if model.sample_rate != self.sample_rate:
            raise ValueError(
                f"the CLAP model reads {model.sample_rate} Hz audio, rewards get {self.sample_rate}"
            )
        self.model = model
        self.max_seconds = max_seconds
        self.freeze()

    def score(self, audio: torch.Tensor, audio_lens: torch.Tensor, prompts: Prompts) -> torch.Tensor:
        audio, audio_lens = crop_first(audio, audio_lens, self.max_seconds, self.sample_rate)
        audio_embeddings = self.model.encode_audio(audio, audio_lens)
        text_embeddings = self.model.encode_text(prompt_field(prompts, "caption"))
        return (audio_embeddings * text_embeddings.to(audio_embeddings.device)).sum(-1)


class RecognizerReward(Reward):
    """Intelligibility: log P(text | audio) under a CTC recogniser, i.e. minus the CTC loss of the prompt's `text`
    (the digit word) summed over all alignments; `length_normalize` divides it by the number of characters.
    Audio too short for any alignment of its text scores `unalignable_score`."""

    def __init__(
        self,
        *,
        recognizer: ConformerCTC,
        length_normalize: bool = True,
        field: str = "text",
        unalignable_score: float = -1.0e4,
    ):
        super().__init__()
        self.recognizer = recognizer
        self.length_normalize = length_normalize
        self.field = field
        self.unalignable_score = unalignable_score
        self.freeze()

    def score(self, audio: torch.Tensor, audio_lens: torch.Tensor, prompts: Prompts) -> torch.Tensor:
        log_probs, lens = self.recognizer(audio, audio_lens)
        vocab = self.recognizer.vocab
        targets, target_lens = vocab.encode_batch(prompt_field(prompts, self.field))
        targets, target_lens = targets.to(log_probs.device), target_lens.to(log_probs.device)
        losses = F.ctc_loss(
            log_probs.transpose(0, 1),
            targets,
            lens,
            target_lens,
            blank=vocab.blank,
            reduction="none",
            zero_infinity=False,
        )
        scores = -losses
        if self.length_normalize:
            scores = scores / target_lens.clamp_min(1)
        unalignable = ctc_too_short(targets, target_lens, lens) | ~torch.isfinite(scores)
        return scores.masked_fill(unalignable, self.unalignable_score)


LAION_SAMPLE_RATE = 48000
LAION_MAX_SAMPLES = 480000  # 10 s: LAION-CLAP crops longer audio at random, so it gets the first 10 s only


class LaionClapReward(Reward):
    """Cosine of LAION-CLAP's normalised audio and caption embeddings, from a checkpoint file at a local path
    (e.g. 630k-audioset-best.pt with `amodel="HTSAT-tiny"`). The audio is resampled to 48 kHz, quantised to 16
    bits as LAION-CLAP's examples do and cut to its first 10 s, so that LAION-CLAP's random crop never acts.

    Needs the optional `laion_clap` package (`pip install "voxlab[clap]"`, which pins numpy < 2: use a separate
    environment) and, for its text branch, `roberta-base` in the Hugging Face cache."""

    def __init__(
        self, *, checkpoint: str | Path, amodel: str = "HTSAT-tiny", enable_fusion: bool = False, device=None
    ):
        super().__init__()
        checkpoint = Path(checkpoint).expanduser()
        if not checkpoint.is_file():
            raise FileNotFoundError(
                f"LAION-CLAP checkpoint not found: {checkpoint} (set reward.checkpoint to a local .pt file)"
            )
        try:
            import laion_clap
        except ImportError as error:
            raise ImportError(
                "LaionClapReward needs the optional package laion_clap: pip install 'voxlab[clap]' "
                "(laion-clap; it pins numpy<2, so use an environment of its own)"
            ) from error
        try:
            clap = laion_clap.CLAP_Module(enable_fusion=enable_fusion, amodel=amodel, device=device or "cpu")
        # RobertaTokenizer.from_pretrained("roberta-base") without the hub or a local cache
        except OSError as error:
            raise RuntimeError(
                "LAION-CLAP could not build its text branch ('roberta-base' from the Hugging Face hub); put it "
                f"in the local Hugging Face cache (HF_HOME) first: {error}"
            ) from error
        clap.load_ckpt(str(checkpoint), verbose=False)
        self.clap = clap
        self.freeze()

    def score(self, audio: torch.Tensor, audio_lens: torch.Tensor, prompts: Prompts) -> torch.Tensor:
        captions = prompt_field(prompts, "caption")
        embeddings = []
        for wave, length in zip(audio[:, 0], audio_lens.tolist(), strict=True):
            wave = AF.resample(wave[:length], self.sample_rate, LAION_SAMPLE_RATE)[:LAION_MAX_SAMPLES]
            wave = (wave.clamp(-1, 1) * 32767).round() / 32767  # LAION-CLAP's int16 quantisation
            embeddings.append(self.clap.get_audio_embedding_from_data(x=wave[None], use_tensor=True))
        audio_embeddings = F.normalize(torch.cat(embeddings).float(), dim=-1)
        text_embeddings = F.normalize(self.clap.get_text_embedding(captions, use_tensor=True).float(), dim=-1)
        return (audio_embeddings * text_embeddings.to(audio_embeddings.device)).sum(-1)
