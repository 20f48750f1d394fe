"""A small CLAP (contrastive language-audio pretraining) model trained here: the reward model of CRPO.

Audio: a voxlab speech encoder (the Conformer of research/encoder.py over log-mel), pooled over its valid frames
(mean, or mean and standard deviation). Text: the mean of hashed word embeddings of the caption (`WordBagEncoder`,
the default: additive, so unheard pairings of known words embed from trained parts) or a character-level
Transformer (`CaptionEncoder`). Each side is projected to a shared space and L2-normalised; similarities are
cosines, scaled by a learnable inverse temperature for the symmetric InfoNCE loss (CLIP, CLAP). No Lightning.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from research.features import lengths_to_mask
from research.text import CharVocabulary


def masked_mean_std(x: torch.Tensor, lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation of (B, T, D) over each item's first `lens` steps -> (B, D) each."""
    mask = lengths_to_mask(lens.to(x.device), x.shape[1]).unsqueeze(-1).to(x.dtype)
    count = mask.sum(1).clamp_min(1)
    mean = (x * mask).sum(1) / count
    var = (((x - mean[:, None]) * mask) ** 2).sum(1) / count
    return mean, (var + 1e-5).sqrt()


class CaptionEncoder(nn.Module):
    """Characters of a caption (CharVocabulary: lower-cased letters, apostrophe, space; punctuation dropped) ->
    learned character and position embeddings -> Transformer encoder -> mean over the characters: (B, d_model)."""

    def __init__(
        self,
        *,
        d_model: int = 128,
        num_layers: int = 2,
        num_heads: int = 4,
        ffn_dim: int = 256,
        dropout: float = 0.1,
        max_chars: int = 160,
    ):
        super().__init__()
        self.vocab = CharVocabulary()
        self.d_model = d_model
        self.max_chars = max_chars
        self.embed = nn.Embedding(len(self.vocab), d_model, padding_idx=self.vocab.blank)  # blank pads
        self.position = nn.Embedding(max_chars, d_model)
        layer = nn.TransformerEncoderLayer(
            d_model, num_heads, ffn_dim, dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.transformer = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)

    def tokenize(self, captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L) character ids (0 = padding) and (B,) lengths, each caption cut to `max_chars`."""
        ids, lens = self.vocab.encode_batch(list(captions))
        lens = lens.clamp(1, self.max_chars)  # an empty caption keeps one (padding) position to pool
        device = self.position.weight.device
        return ids[:, : self.max_chars].to(device), lens.to(device)

    def forward(self, captions: Sequence[str]) -> torch.Tensor:
        ids, lens = self.tokenize(captions)
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = self.embed(ids) + self.position(positions)[None]
        x = self.transformer(x, src_key_padding_mask=~lengths_to_mask(lens, ids.shape[1]))
        return masked_mean_std(self.norm(x), lens)[0]


class WordBagEncoder(nn.Module):
    """Words of a caption (CharVocabulary-normalised, split at spaces) -> embeddings of hashed words (CRC-32 of
    the word modulo `buckets`, stable across runs and machines) -> their mean: (B, d_model). Order-free and
    additive: an unheard pairing of known words (a known speaker saying a known digit) is embedded as the mean of
    vectors that were all trained, which the Transformer's attention over the whole caption does not promise."""

    def __init__(self, *, d_model: int = 128, buckets: int = 4096):
        super().__init__()
        self.vocab = CharVocabulary()
        self.d_model = d_model
        self.buckets = buckets
        self.embed = nn.EmbeddingBag(buckets, d_model, mode="mean")

    def word_ids(self, caption: str) -> list[int]:
        return [zlib.crc32(word.encode()) % self.buckets for word in self.vocab.normalize(caption).split()]

    def forward(self, captions: Sequence[str]) -> torch.Tensor:
        ids = [self.word_ids(c) or [0] for c in captions]  # an empty caption reads as bucket 0
        offsets = torch.tensor([0, *[len(i) for i in ids[:-1]]]).cumsum(0)
        flat = torch.tensor([i for word_ids in ids for i in word_ids])
        device = self.embed.weight.device
        return self.embed(flat.to(device), offsets.to(device))


@dataclass
class ClapOutput:
    audio: torch.Tensor  # (B, E) L2-normalised audio embeddings
    text: torch.Tensor  # (B, E) L2-normalised caption embeddings
    logit_scale: torch.Tensor  # () inverse temperature


class ClapModel(nn.Module):
    """Audio and caption embeddings in one space. `encode_audio` / `encode_text` give L2-normalised (B, E)
    embeddings; `similarity` their cosines; `logits` the cosines times the learnable inverse temperature
    (`logit_scale`, initialised to 1 / `init_temperature` and capped at `max_logit_scale`, as CLIP)."""

    def __init__(
        self,
        *,
        audio_encoder: nn.Module,
        text_encoder: nn.Module,
        embed_dim: int = 128,
        pooling: str = "mean_std",
        text_projection: str = "mlp",
        init_temperature: float = 0.07,
        max_logit_scale: float = 100.0,
    ):
        super().__init__()
        if pooling not in ("mean", "mean_std"):
            raise ValueError(f"pooling must be 'mean' or 'mean_std', got {pooling!r}")
        self.audio_encoder = audio_encoder
        self.text_encoder = text_encoder
        self.pooling = pooling
        audio_dim = audio_encoder.d_model * (2 if pooling == "mean_std" else 1)
        self.audio_proj = nn.Sequential(nn.LayerNorm(audio_dim), nn.Linear(audio_dim, embed_dim))
        if text_projection not in ("linear", "mlp"):
            raise ValueError(f"text_projection must be 'linear' or 'mlp', got {text_projection!r}")
        text_dim = text_encoder.d_model
        self.text_proj = (
            nn.Linear(text_dim, embed_dim)
            if text_projection == "linear"
            else nn.Sequential(nn.Linear(text_dim, text_dim), nn.GELU(), nn.Linear(text_dim, embed_dim))
        )
        self.log_logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature)))
        self.max_logit_scale = max_logit_scale

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.log_logit_scale.clamp(max=math.log(self.max_logit_scale)).exp()

    @property
    def sample_rate(self) -> int:
        """The rate the audio encoder reads (a voxlab ConformerEncoder's log-mel front end; else 16 kHz)."""
        features = getattr(self.audio_encoder, "features", None)
        return int(features.mel.sample_rate) if features is not None else 16000

    def encode_audio(self, audio: torch.Tensor, audio_lens: torch.Tensor) -> torch.Tensor:
        """audio (B, 1, T) in [-1, 1] at `sample_rate`, lengths (B,) -> (B, E) unit vectors."""
        out = self.audio_encoder(audio, audio_lens)
        mean, std = masked_mean_std(out.hidden, out.lens)
        pooled = torch.cat([mean, std], -1) if self.pooling == "mean_std" else mean
        return F.normalize(self.audio_proj(pooled).float(), dim=-1)

    def encode_text(self, captions: Sequence[str]) -> torch.Tensor:
        """captions (B strings) -> (B, E) unit vectors."""
        return F.normalize(self.text_proj(self.text_encoder(captions)).float(), dim=-1)

    @staticmethod
    def similarity(audio_embeddings: torch.Tensor, text_embeddings: torch.Tensor) -> torch.Tensor:
        """(A, E) x (C, E) unit vectors -> (A, C) cosines."""
        return audio_embeddings @ text_embeddings.T

    def logits(self, audio_embeddings: torch.Tensor, text_embeddings: torch.Tensor) -> torch.Tensor:
        return self.logit_scale * self.similarity(audio_embeddings, text_embeddings)

    def forward(self, audio: torch.Tensor, audio_lens: torch.Tensor, captions: Sequence[str]) -> ClapOutput:
        return ClapOutput(self.encode_audio(audio, audio_lens), self.encode_text(captions), self.logit_scale)


def caption_groups(captions: Sequence[str]) -> torch.Tensor:
    """(B,) ids, equal where the captions are equal (in order of first appearance)."""
    index: dict[str, int] = {}
    return torch.tensor([index.setdefault(c, len(index)) for c in captions], dtype=torch.long)


def clap_loss(logits: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE over (B, B) logits (row i: audio i against the captions of the batch; the diagonal
    holds the matching pairs): the mean of the audio->text and text->audio cross-entropies of the diagonal.
    Captions repeat within a batch (FSDD has 50 clips of each): with `groups` (B,) given, every off-diagonal pair
    with the same group is masked out of the negatives (logit -inf), so a clip is never pushed away from its own
    caption written in another row, nor a caption from another clip of itself; the diagonal stays the one
    positive of each row and column."""
    size = logits.shape[0]
    if logits.shape != (size, size):
        raise ValueError(f"expected square logits, got {tuple(logits.shape)}")
    if groups is not None:
        groups = groups.to(logits.device)
        duplicate = (groups[:, None] == groups[None, :]) & ~torch.eye(
            size, dtype=torch.bool, device=logits.device
        )
        logits = logits.masked_fill(duplicate, float("-inf"))
    target = torch.arange(size, device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(rearrange(logits, "a t -> t a"), target))


@dataclass
class Retrieval:
    a2t: float  # share of clips whose most similar candidate caption is their own
    t2a: float  # share of the clips' captions whose most similar clip carries that caption
    speaker: float  # share of clips whose most similar caption names their speaker (NaN when not given)
    text: float  # share of clips whose most similar caption says their words, the digit (NaN when not given)
    count: int  # clips


def retrieval(
    audio_embeddings: torch.Tensor,
    clip_captions: Sequence[str],
    candidates: Sequence[str],
    caption_embeddings: torch.Tensor,
    *,
    clip_speakers: Sequence[str | None] | None = None,
    clip_texts: Sequence[str | None] | None = None,
    candidate_speakers: Sequence[str | None] | None = None,
    candidate_texts: Sequence[str | None] | None = None,
) -> Retrieval:
    """Top-1 retrieval between clips (N, E) and candidate captions (C, E): audio->text classifies each clip
    among all candidates; text->audio, for each candidate that some clip carries, takes the most similar clip.
    Speaker and text accuracy score the audio->text choice by its speaker and words alone."""
    similarity = ClapModel.similarity(audio_embeddings.float(), caption_embeddings.float())
    chosen = similarity.argmax(1).tolist()
    truth = list(clip_captions)
    a2t = sum(candidates[c] == t for c, t in zip(chosen, truth, strict=True)) / max(1, len(truth))
    carried = [i for i, caption in enumerate(candidates) if caption in set(truth)]
    best_clip = similarity[:, carried].argmax(0).tolist() if carried else []
    t2a_hits = sum(truth[j] == candidates[i] for i, j in zip(carried, best_clip, strict=True))
    t2a = t2a_hits / max(1, len(carried))

    def attribute(clip_values, candidate_values) -> float:
        if clip_values is None or candidate_values is None:
            return float("nan")
        hits = [
            clip_values[n] is not None and candidate_values[c] == clip_values[n] for n, c in enumerate(chosen)
        ]
        return sum(hits) / max(1, len(hits))

    return Retrieval(
        a2t=a2t,
        t2a=t2a,
        speaker=attribute(clip_speakers, candidate_speakers),
        text=attribute(clip_texts, candidate_texts),
        count=len(truth),
    )
