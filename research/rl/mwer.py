"""Minimum word error rate (MWER) training over an N-best list (Prabhavalkar et al., 2018, "Minimum Word Error
Rate Training for Attention-based Sequence-to-Sequence Models")."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class MWEROutput:
    risk: Tensor  # (B,) sum_i p_i (W_i - mean W): the loss to minimise (plus the caller's lambda * CE)
    expected_errors: Tensor  # (B,) sum_i p_i W_i
    posterior: Tensor  # (B, N) renormalised posterior over each row's valid hypotheses; 0 where invalid
    mean_errors: Tensor  # (B,) mean errors over the valid hypotheses (the baseline, constant)


def mwer_risk(logprobs: Tensor, errors: Tensor, valid: Tensor | None = None) -> MWEROutput:
    """MWER risk of the N-best lists of a batch.

    `logprobs` (B, N) are the hypotheses' sequence log-probabilities under the model, `errors` (B, N) their
    word edit distances to the reference (constants), `valid` (B, N) a boolean mask of real hypotheses (rows
    of an N-best list may be padded). The posterior p is the softmax of the log-probabilities over each row's
    valid entries, and risk = sum_i p_i (W_i - W_mean), with W_mean the mean of the valid errors.

    The baseline W_mean does not change the gradient of the expected errors, since sum_i dp_i/ds = 0; it only
    reduces the variance. The softmax normaliser is kept in the graph: detaching it would break that identity
    and give the gradient p_i (W_i - W_mean) instead of p_i (W_i - E[W]).

    Computed in at least float32. Raises ValueError if a row has no valid entry."""
    if logprobs.dim() != 2 or errors.shape != logprobs.shape:
        raise ValueError(
            f"logprobs and errors must both be (B, N), got {tuple(logprobs.shape)} and {tuple(errors.shape)}"
        )
    if valid is None:
        valid = torch.ones_like(logprobs, dtype=torch.bool)
    elif valid.shape != logprobs.shape:
        raise ValueError(f"valid must be {tuple(logprobs.shape)}, got {tuple(valid.shape)}")
    valid = valid.to(device=logprobs.device, dtype=torch.bool)
    if not bool(valid.any(dim=-1).all()):
        raise ValueError("every row of valid needs at least one valid hypothesis")

    dtype = torch.promote_types(logprobs.dtype, torch.float32)
    # -inf before the softmax makes invalid posteriors exactly 0; zeroing their errors keeps NaN or inf padding
    # out of the sums (0 * inf would be NaN).
    scores = logprobs.to(dtype).masked_fill(~valid, float("-inf"))
    errs = errors.detach().to(device=logprobs.device, dtype=dtype).masked_fill(~valid, 0.0)
    posterior = torch.softmax(scores, dim=-1)
    mean_errors = errs.sum(dim=-1) / valid.sum(dim=-1).to(dtype)
    risk = (posterior * (errs - mean_errors.unsqueeze(-1))).sum(dim=-1)
    expected_errors = (posterior * errs).sum(dim=-1)
    return MWEROutput(
        risk=risk, expected_errors=expected_errors, posterior=posterior, mean_errors=mean_errors
    )
