"""Speech-quality metrics that torchmetrics lacks offline, as torchmetrics `Metric`s (so they sync across DDP
ranks): speaker similarity with resemblyzer's pretrained speaker encoder, DNSMOS with speechmos' ONNX models,
and codebook usage of a quantizer. Both packages ship their weights, so nothing is downloaded."""

from __future__ import annotations

import functools

import numpy as np
import torch
import torchaudio.functional as AF
from torchmetrics import Metric

QUALITY_RATE = 16000  # resemblyzer and DNSMOS both take 16 kHz audio


def to_16k_numpy(wave: torch.Tensor, sample_rate: int) -> np.ndarray:
    wave = wave.detach().float().reshape(-1).cpu()
    if sample_rate != QUALITY_RATE:
        wave = AF.resample(wave, sample_rate, QUALITY_RATE)
    return wave.clamp(-1, 1).numpy()


def pesq_score(preds: torch.Tensor, target: torch.Tensor, sample_rate: int) -> float | None:
    """PESQ of one clip (wide-band at 16 kHz, narrow-band at 8 kHz), or None when PESQ cannot score it: the pesq
    package raises on clips shorter than 1/4 s or where it detects no speech."""
    from pesq import PesqError
    from torchmetrics.functional.audio import perceptual_evaluation_speech_quality

    try:
        return float(
            perceptual_evaluation_speech_quality(
                preds.float(), target.float(), sample_rate, "wb" if sample_rate == 16000 else "nb"
            )
        )
    except PesqError:
        return None


@functools.cache
def speaker_encoder():
    from resemblyzer import VoiceEncoder

    return VoiceEncoder("cpu", verbose=False)


def speaker_embedding(wave: torch.Tensor, sample_rate: int) -> np.ndarray:
    """L2-normalised 256-d resemblyzer embedding of one utterance (averaged over its 1.6 s partials)."""
    return speaker_encoder().embed_utterance(to_16k_numpy(wave, sample_rate))


class MeanOverClips(Metric):
    """Mean of a per-clip score; subclasses define `score(*waves)`."""

    full_state_update = False

    def __init__(self, sample_rate: int = QUALITY_RATE, **kwargs):
        super().__init__(**kwargs)
        self.sample_rate = sample_rate
        self.add_state("total", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, *waves: torch.Tensor) -> None:
        self.total += float(self.score(*waves))
        self.count += 1

    def compute(self) -> torch.Tensor:
        return (self.total / self.count.clamp_min(1)).float()


class SpeakerSimilarity(MeanOverClips):
    """Cosine similarity of resemblyzer embeddings of two versions of a clip (on FSDD: same speaker about 0.92,
    different speakers about 0.60)."""

    def score(self, preds: torch.Tensor, target: torch.Tensor) -> float:
        return float(speaker_embedding(preds, self.sample_rate) @ speaker_embedding(target, self.sample_rate))


class DNSMOS(MeanOverClips):
    """DNSMOS P.835 overall MOS (1-5) of a clip, no reference needed."""

    def score(self, wave: torch.Tensor) -> float:
        from speechmos import dnsmos

        return float(dnsmos.run(to_16k_numpy(wave, self.sample_rate), QUALITY_RATE)["ovrl_mos"])


class CodebookUsage(Metric):
    """Per-level code histograms of an RVQ -> entropy (bits), perplexity (2^entropy) and the fraction of dead
    (never used) codes. `codes` are (n_q, B, T) with an optional (B, T) mask of valid frames."""

    full_state_update = False

    def __init__(self, codebook_sizes: list[int], **kwargs):
        super().__init__(**kwargs)
        self.sizes = list(codebook_sizes)
        self.add_state("counts", torch.zeros(sum(self.sizes), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, codes: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        offset = 0
        for level, size in enumerate(self.sizes[: codes.shape[0]]):
            used = codes[level] if mask is None else codes[level][mask]
            self.counts[offset : offset + size] += torch.bincount(used.reshape(-1), minlength=size).double()
            offset += size

    def compute(self) -> dict[str, torch.Tensor]:
        result = {}
        for level, counts in enumerate(self.counts.split(self.sizes), start=1):
            probs = counts / counts.sum().clamp_min(1)
            entropy = -(probs[probs > 0] * probs[probs > 0].log2()).sum()
            result[f"level{level}/entropy"] = entropy.float()
            result[f"level{level}/perplexity"] = entropy.exp2().float()
            result[f"level{level}/dead_fraction"] = (counts == 0).double().mean().float()
        return result


class KeywordRecall(Metric):
    """Share of the reference's keyword occurrences that the hypothesis holds (Seed-ASR's context evaluation):
    per keyword, min(count in hypothesis, count in reference) over its count in the reference."""

    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("hits", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, hypotheses: list[str], references: list[str], keywords: list[list[str]]) -> None:
        from research.rl.errors import keyword_counts

        for hypothesis, reference, words in zip(hypotheses, references, keywords, strict=True):
            hits, total = keyword_counts(hypothesis, reference, words)
            self.hits += hits
            self.total += total

    def compute(self) -> torch.Tensor:
        """NaN when no reference held a keyword (recall is undefined, not 0)."""
        return (self.hits / self.total).float() if self.total > 0 else torch.tensor(float("nan"))
