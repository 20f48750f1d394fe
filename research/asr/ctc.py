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

    def loss_and_skipped(
        self, log_probs: torch.Tensor, lens: torch.Tensor, texts: list[str]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss over the utterances long enough for their transcripts, and the (B,) mask of those skipped."""
        return ctc_loss_skipping_too_short(log_probs, lens, texts, self.vocab)

    @torch.no_grad()
    def transcribe(self, audio: torch.Tensor, audio_lens: torch.Tensor) -> list[str]:
        log_probs, lens = self(audio, audio_lens)
        return ctc_greedy_decode(log_probs, lens, self.vocab)


def ctc_too_short(targets: torch.Tensor, target_lens: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
    """(B,) True where no CTC alignment exists: fewer frames than labels plus the blanks that must separate
    repeated labels ("oo" needs 3 frames)."""
    inside = torch.arange(targets.shape[1] - 1, device=targets.device)[None] < (target_lens[:, None] - 1)
    repeats = ((targets[:, 1:] == targets[:, :-1]) & inside).sum(1)
    return lens.to(targets.device) < target_lens + repeats


def ctc_loss_skipping_too_short(
    log_probs: torch.Tensor, lens: torch.Tensor, texts: list[str], vocab: CharVocabulary
) -> tuple[torch.Tensor, torch.Tensor]:
    """CTC loss of (B, frames, vocab) log-probabilities against character transcripts, averaged (per label, then
    over utterances, as torch's "mean") over the utterances that have an alignment; also returns the (B,) bool
    mask of the utterances skipped as too short for their transcripts. Their loss is infinite: torch's
    `zero_infinity` would count them as zero-loss items and dilute the mean, so they are left out instead, and
    the loss equals that of the batch without them. With none left, the loss is a zero that keeps the graph."""
    targets, target_lens = vocab.encode_batch(texts)
    targets, target_lens = targets.to(log_probs.device), target_lens.to(log_probs.device)
    skipped = ctc_too_short(targets, target_lens, lens)
    keep = ~skipped
    if not keep.any():
        return log_probs.sum() * 0.0, skipped
    losses = F.ctc_loss(
        log_probs[keep].transpose(0, 1),
        targets[keep],
        lens[keep.to(lens.device)],
        target_lens[keep],
        blank=vocab.blank,
        reduction="none",
        zero_infinity=True,  # a guard only: the utterances without an alignment were removed above
    )
    return (losses / target_lens[keep].clamp_min(1)).mean(), skipped


def ctc_loss_on_texts(
    log_probs: torch.Tensor, lens: torch.Tensor, texts: list[str], vocab: CharVocabulary
) -> torch.Tensor:
    """CTC loss of (B, frames, vocab) log-probabilities against character transcripts; utterances too short for
    their transcripts are left out (see `ctc_loss_skipping_too_short`)."""
    return ctc_loss_skipping_too_short(log_probs, lens, texts, vocab)[0]
