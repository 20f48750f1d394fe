"""CTC recognizer: Conformer encoder + linear head over characters."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from research.encoder import ConformerEncoder
from research.text import CharVocabulary, ctc_greedy_decode


class ConformerCTC(nn.Module):
    def __init__(self, *, encoder: ConformerEncoder, vocab: CharVocabulary | None = None):
        super().__init__()
        self.encoder = encoder
        self.vocab = vocab or CharVocabulary()
        self.head = nn.Linear(encoder.d_model, len(self.vocab))

    def forward(self, audio: torch.Tensor, audio_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """audio (B, 1, T) -> log-probabilities (B, frames, vocab), frame lengths (B,)."""
        out = self.encoder(audio, audio_lens)
        return self.head(out.hidden).float().log_softmax(-1), out.lens

    def loss(self, log_probs: torch.Tensor, lens: torch.Tensor, texts: list[str]) -> torch.Tensor:
        return ctc_loss_on_texts(log_probs, lens, texts, self.vocab)

    @torch.no_grad()
    def transcribe(self, audio: torch.Tensor, audio_lens: torch.Tensor) -> list[str]:
        log_probs, lens = self(audio, audio_lens)
        return ctc_greedy_decode(log_probs, lens, self.vocab)


def ctc_loss_on_texts(
    log_probs: torch.Tensor, lens: torch.Tensor, texts: list[str], vocab: CharVocabulary
) -> torch.Tensor:
    """CTC loss of (B, frames, vocab) log-probabilities against character transcripts."""
    targets, target_lens = vocab.encode_batch(texts)
    return F.ctc_loss(
        log_probs.transpose(0, 1),
        targets.to(log_probs.device),
        lens,
        target_lens.to(log_probs.device),
        blank=vocab.blank,
        zero_infinity=True,
    )
