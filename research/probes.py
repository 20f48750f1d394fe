"""Small probes that ask what a representation knows: small classifiers trained on frozen features."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from torchmetrics.functional.text import char_error_rate, word_error_rate

from research.asr.ctc import ctc_loss_on_texts
from research.text import CharVocabulary, ctc_greedy_decode


def segment_frames(start: float, end: float, frame_rate: float) -> slice:
    """Frames that overlap a time segment [start, end) in seconds."""
    return slice(math.floor(start * frame_rate), math.ceil(end * frame_rate))


def bag_of_codes(codes: torch.Tensor, size: int) -> torch.Tensor:
    """Normalised histogram (size,) of the codes of one segment: an order-free summary of discrete tokens."""
    return torch.bincount(codes.reshape(-1), minlength=size).float() / max(1, codes.numel())


def train_statistics(frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and std of the training features: probes standardise with them, so that their fixed
    budget does not depend on the features' scale."""
    return frames.mean(0), frames.std(0).clamp_min(1e-6)


def linear_probe_accuracy(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    *,
    steps: int = 500,
    lr: float = 0.05,
    weight_decay: float = 1e-4,
    seed: int = 0,
) -> float:
    """Accuracy on the test set of a softmax-regression probe fitted (full batch, Adam) on the train set; features
    are standardised with train statistics so the probe's budget does not depend on their scale."""
    generator = torch.Generator().manual_seed(seed)
    mean, std = train_statistics(train_x)
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    classes = int(max(train_y.max(), test_y.max())) + 1
    weight = (torch.randn(train_x.shape[1], classes, generator=generator) * 0.01).requires_grad_()
    bias = torch.zeros(classes, requires_grad=True)
    optimizer = torch.optim.Adam([weight, bias], lr=lr, weight_decay=weight_decay)
    for _ in range(steps):
        optimizer.zero_grad()
        F.cross_entropy(train_x @ weight + bias, train_y).backward()
        optimizer.step()
    with torch.no_grad():
        return float(((test_x @ weight + bias).argmax(-1) == test_y).float().mean())


def cluster_quality(clusters: torch.Tensor, references: torch.Tensor) -> dict[str, float]:
    """HuBERT's label-quality scores over aligned frames (two int tensors of equal length): cluster purity (frames
    right when each cluster is read as its most frequent reference label), reference purity (the converse) and
    PNMI = I(reference; cluster) / H(reference), the share of the reference's uncertainty the clusters remove."""
    clusters, references = clusters.flatten().long(), references.flatten().long()
    joint = torch.zeros(int(references.max()) + 1, int(clusters.max()) + 1, dtype=torch.float64)
    joint.index_put_(
        (references, clusters), torch.ones_like(references, dtype=torch.float64), accumulate=True
    )
    joint /= joint.sum()
    p_ref, p_cluster = joint.sum(1), joint.sum(0)
    nonzero = joint > 0
    mutual = (joint[nonzero] * (joint / (p_ref[:, None] * p_cluster[None, :]))[nonzero].log()).sum()
    entropy = -(p_ref[p_ref > 0] * p_ref[p_ref > 0].log()).sum()
    return {
        "cluster_purity": float(joint.max(0).values.sum()),
        "reference_purity": float(joint.max(1).values.sum()),
        "pnmi": float(mutual / entropy) if entropy > 0 else 0.0,
    }


class CTCProbeHead(nn.Module):
    """The small head of the per-layer CTC probe: a one-layer BiLSTM over the frozen frames, then characters (a
    smaller SUPERB ASR head: a linear head alone reads no digit word from any layer of a CPU-size encoder);
    `hidden=0` leaves the linear head."""

    def __init__(self, dim: int, vocab_size: int, hidden: int = 128):
        super().__init__()
        self.rnn = nn.LSTM(dim, hidden, batch_first=True, bidirectional=True) if hidden else None
        self.out = nn.Linear(2 * hidden if hidden else dim, vocab_size)

    def forward(self, feats: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        if self.rnn is not None:
            packed = pack_padded_sequence(feats, lens.cpu(), batch_first=True, enforce_sorted=False)
            feats = pad_packed_sequence(self.rnn(packed)[0], batch_first=True, total_length=feats.shape[1])[0]
        return self.out(feats).log_softmax(-1)


def ctc_probe_error_rates(
    train: list[tuple[torch.Tensor, str]],
    test: list[tuple[torch.Tensor, str]],
    *,
    steps: int = 300,
    hidden: int = 128,
    lr: float = 3e-3,
    batch_size: int = 32,
    seed: int = 0,
) -> dict[str, float]:
    """WER and CER on `test` of a small CTC head over characters (`CTCProbeHead`) trained for a fixed number of
    steps on frozen features ((frames, dim) per utterance with its transcript), standardised with train
    statistics: Seed-ASR's per-layer CTC probe."""
    vocab = CharVocabulary()
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        head = CTCProbeHead(train[0][0].shape[1], len(vocab), hidden)
    optimizer = torch.optim.Adam(head.parameters(), lr=lr)
    mean, std = train_statistics(torch.cat([f.float() for f, _ in train]))

    def padded(items):
        feats = torch.nn.utils.rnn.pad_sequence(
            [(f.float() - mean) / std for f, _ in items], batch_first=True
        )
        return feats, torch.tensor([len(f) for f, _ in items]), [t for _, t in items]

    for _ in range(steps):
        picks = torch.randint(len(train), (min(batch_size, len(train)),), generator=generator)
        feats, lens, texts = padded([train[i] for i in picks])
        loss = ctc_loss_on_texts(head(feats, lens), lens, texts, vocab)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        feats, lens, texts = padded(test)
        hypotheses = ctc_greedy_decode(head(feats, lens), lens, vocab)
    references = [vocab.normalize(t) for t in texts]
    return {
        "wer": float(word_error_rate(hypotheses, references)),
        "cer": float(char_error_rate(hypotheses, references)),
    }
