"""Held-out judges of generated speech, none of them a reward: did the sample say the prompted digit (a CTC
recognizer trained apart), in the prompted voice (nearest speaker centroid of resemblyzer embeddings of real
audio), and how far is the generated set from real audio (Fréchet distance between embedding distributions, which
catches a generator that pleases its reward with sounds unlike speech)?"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from research.asr.ctc import ConformerCTC
from research.metrics import speaker_embedding


def frechet_distance(x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor) -> float:
    """||mu_x - mu_y||^2 + tr(S_x + S_y - 2 (S_x^1/2 S_y S_x^1/2)^1/2) of two sets of row vectors (float64).

    The trace of the matrix square root is taken from the eigenvalues of the symmetric S_x^1/2 S_y S_x^1/2,
    clipped at 0 (rounding makes tiny ones negative)."""
    x, y = (torch.as_tensor(np.asarray(a), dtype=torch.float64) for a in (x, y))
    if x.dim() != 2 or y.dim() != 2 or x.shape[1] != y.shape[1] or min(len(x), len(y)) < 2:
        raise ValueError(f"need two sets of >= 2 vectors of one size, got {tuple(x.shape)}, {tuple(y.shape)}")
    mean_x, mean_y = x.mean(0), y.mean(0)
    cov_x, cov_y = torch.cov(x.T), torch.cov(y.T)
    values, vectors = torch.linalg.eigh(cov_x)
    root_x = vectors @ torch.diag(values.clamp(min=0).sqrt()) @ vectors.T
    middle = root_x @ cov_y @ root_x
    trace_root = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    distance = (mean_x - mean_y).square().sum() + cov_x.trace() + cov_y.trace() - 2 * trace_root
    return float(distance)


def speaker_embeddings(audio: torch.Tensor, audio_lens: torch.Tensor, sample_rate: int) -> np.ndarray:
    """(B, 256) L2-normalised resemblyzer embeddings of a batch (B, 1, T)."""
    return np.stack(
        [speaker_embedding(wave[0, : int(n)], sample_rate) for wave, n in zip(audio, audio_lens, strict=True)]
    )


class SpeakerJudge:
    """Nearest speaker centroid (cosine) among the centroids of real utterances' embeddings."""

    def __init__(self, embeddings: np.ndarray, speakers: Sequence[str]):
        self.names = sorted(set(speakers))
        labels = np.array(speakers)
        centroids = np.stack([embeddings[labels == name].mean(0) for name in self.names])
        self.centroids = centroids / np.linalg.norm(centroids, axis=1, keepdims=True)

    def predict(self, embeddings: np.ndarray) -> list[str]:
        return [self.names[i] for i in (embeddings @ self.centroids.T).argmax(1)]

    def accuracy(self, embeddings: np.ndarray, speakers: Sequence[str]) -> float:
        return float(np.mean([p == s for p, s in zip(self.predict(embeddings), speakers, strict=True)]))


class DigitJudge:
    """Share of samples whose greedy CTC transcript is exactly the prompted text."""

    def __init__(self, recognizer: ConformerCTC):
        self.recognizer = recognizer.eval()

    @torch.no_grad()
    def transcribe(self, audio: torch.Tensor, audio_lens: torch.Tensor) -> list[str]:
        return self.recognizer.transcribe(audio, audio_lens)

    def accuracy(self, audio: torch.Tensor, audio_lens: torch.Tensor, texts: Sequence[str]) -> float:
        said = self.transcribe(audio, audio_lens)
        return float(np.mean([s.strip() == t.strip() for s, t in zip(said, texts, strict=True)]))
