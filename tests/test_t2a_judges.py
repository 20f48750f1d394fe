"""Judges of generated speech: the Fréchet distance by hand, nearest-centroid speakers, exact-digit accuracy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from research.t2a.judges import DigitJudge, SpeakerJudge, frechet_distance


def test_frechet_distance_of_diagonal_gaussians_by_hand():
    rng = np.random.default_rng(0)
    # exact sample moments: +-1 patterns give mean 0 and a diagonal covariance
    signs = np.array([[1, 1], [1, -1], [-1, 1], [-1, -1]], dtype=float)
    x = signs * [1.0, 2.0] + [0.0, 0.0]
    y = signs * [3.0, 0.5] + [1.0, -2.0]
    var_x, var_y = np.var(x, axis=0, ddof=1), np.var(y, axis=0, ddof=1)
    by_hand = 1.0**2 + 2.0**2 + np.sum((np.sqrt(var_x) - np.sqrt(var_y)) ** 2)
    assert frechet_distance(x, y) == pytest.approx(by_hand)
    z = rng.normal(size=(50, 3))
    assert frechet_distance(z, z) == pytest.approx(0.0, abs=1e-9)
    assert frechet_distance(z, z + 1.0) == pytest.approx(3.0)  # a shift adds its squared length only


def test_frechet_distance_rejects_mismatched_sets():
    with pytest.raises(ValueError, match="two sets"):
        frechet_distance(np.zeros((5, 3)), np.zeros((5, 4)))


def test_speaker_judge_picks_the_nearest_centroid():
    embeddings = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    judge = SpeakerJudge(embeddings, ["a", "a", "b", "b"])
    assert judge.predict(np.array([[0.8, 0.2], [0.3, 0.7]])) == ["a", "b"]
    assert judge.accuracy(np.array([[0.8, 0.2], [0.3, 0.7]]), ["a", "a"]) == 0.5


def test_digit_judge_counts_exact_transcripts():
    class Fixed(torch.nn.Module):
        def transcribe(self, audio, audio_lens):
            return ["seven", "one two", "three "]

    judge = DigitJudge(Fixed())
    assert judge.accuracy(
        torch.zeros(3, 1, 8), torch.full((3,), 8), ["seven", "one", "three"]
    ) == pytest.approx(2 / 3)
