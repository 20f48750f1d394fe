"""CTC correctness: utterances too short for their transcripts are left out of the loss (and counted), not
trained at zero loss; a batch of bad audio only still trains every parameter (the DDP-safe zero loss)."""

import itertools
from functools import partial

import pytest
import torch
import torch.nn.functional as F

from lit_modules.ctc_asr import CTCASRModule
from research.asr.ctc import ConformerCTC, ctc_loss_skipping_too_short, ctc_too_short
from research.encoder import ConformerEncoder
from research.text import CharVocabulary
from tests.conftest import assert_empty_batch_step_is_a_connected_zero, fit_on_batch


def test_too_short_means_no_alignment_exists():
    """Against torch's own answer (an infinite loss) for every short transcript over "ab" and 1..4 frames."""
    vocab = CharVocabulary()
    log_probs = torch.randn(4, 1, len(vocab)).log_softmax(-1)
    for length, frames in itertools.product(range(1, 5), range(1, 5)):
        for text in map("".join, itertools.product("ab", repeat=length)):
            targets, target_lens = vocab.encode_batch([text])
            infinite = F.ctc_loss(log_probs[:frames], targets, torch.tensor([frames]), target_lens).isinf()
            assert ctc_too_short(targets, target_lens, torch.tensor([frames])).item() == infinite.item(), (
                text,
                frames,
            )


def test_too_short_utterance_leaves_the_loss_of_the_others_unchanged():
    vocab = CharVocabulary()
    torch.manual_seed(0)
    log_probs = torch.randn(3, 12, len(vocab)).log_softmax(-1).requires_grad_()
    lens = torch.tensor([12, 10, 4])
    texts = ["one two", "nine", "seven three"]  # the last has 11 labels for 4 frames
    loss, skipped = ctc_loss_skipping_too_short(log_probs, lens, texts, vocab)
    alone, none_skipped = ctc_loss_skipping_too_short(log_probs[:2], lens[:2], texts[:2], vocab)
    assert skipped.tolist() == [False, False, True] and not none_skipped.any()
    assert torch.isfinite(loss) and torch.allclose(loss, alone)
    loss.backward()
    assert torch.isfinite(log_probs.grad).all() and not log_probs.grad[2].any()
    only_short, all_skipped = ctc_loss_skipping_too_short(log_probs[2:], lens[2:], texts[2:], vocab)
    assert all_skipped.all() and float(only_short.detach()) == 0.0 and only_short.requires_grad


def tiny_module() -> CTCASRModule:
    torch.manual_seed(0)
    encoder = ConformerEncoder(
        d_model=16, num_layers=1, num_heads=2, ffn_dim=32, subsampling_channels=4, dropout=0.0
    )
    return CTCASRModule(net=ConformerCTC(encoder=encoder), optimizer=partial(torch.optim.SGD, lr=0.0))


def digits_batch() -> dict:
    audio = torch.randn(3, 1, 16000, generator=torch.Generator().manual_seed(1)) * 0.1
    return {
        "audio": audio,
        "audio_lens": torch.tensor([16000, 12000, 4000]),  # 26, 19 and 7 encoder frames
        "text": ["one two", "nine", "seven three"],  # the last one too short for its 11 characters
        "id": ["a", "b", "short"],
        "n_skipped": 0,
    }


def test_module_skips_too_short_utterances_and_counts_them():
    batch = digits_batch()
    without = {**batch, "audio": batch["audio"][:2], "audio_lens": batch["audio_lens"][:2]}
    without.update(text=batch["text"][:2], id=batch["id"][:2])
    with pytest.warns(UserWarning, match="too short for their transcripts: short"):
        history = fit_on_batch(tiny_module(), batch, 2, ("train/loss", "train/skipped_too_short"))
    reference = fit_on_batch(tiny_module(), without, 2, ("train/loss", "train/skipped_too_short"))
    assert history.values["train/skipped_too_short"] == [1.0, 2.0]
    assert reference.values["train/skipped_too_short"] == [0.0, 0.0]
    assert history.values["train/loss"] == pytest.approx(reference.values["train/loss"], rel=1e-5)


def test_module_empty_batch_gives_a_zero_loss_reaching_every_trainable_parameter():
    assert_empty_batch_step_is_a_connected_zero(tiny_module())
