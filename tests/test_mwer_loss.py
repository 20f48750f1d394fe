"""MWER risk over an N-best list and the word error counts it is trained on."""

from __future__ import annotations

import math

import pytest
import torch
from torchmetrics.functional.text import word_error_rate

from research.rl.errors import keyword_counts, word_errors
from research.rl.mwer import mwer_risk

F64 = torch.float64


# ---------------------------------------------------------------- mwer_risk


def test_fixed_three_best_value_and_gradient():
    s = [-1.0, -2.0, -3.0]
    w = [0.0, 1.0, 3.0]
    z = math.exp(-1.0) + math.exp(-2.0) + math.exp(-3.0)
    p = [math.exp(-1.0) / z, math.exp(-2.0) / z, math.exp(-3.0) / z]
    w_mean = (0.0 + 1.0 + 3.0) / 3
    assert w_mean == pytest.approx(4 / 3)
    risk = p[0] * (w[0] - w_mean) + p[1] * (w[1] - w_mean) + p[2] * (w[2] - w_mean)
    expected = p[0] * w[0] + p[1] * w[1] + p[2] * w[2]
    grad = [p[i] * (w[i] - expected) for i in range(3)]

    logprobs = torch.tensor([s], dtype=F64, requires_grad=True)
    out = mwer_risk(logprobs, torch.tensor([w], dtype=F64))
    out.risk.sum().backward()

    torch.testing.assert_close(out.risk, torch.tensor([risk], dtype=F64))
    torch.testing.assert_close(out.expected_errors, torch.tensor([expected], dtype=F64))
    torch.testing.assert_close(out.mean_errors, torch.tensor([w_mean], dtype=F64))
    torch.testing.assert_close(out.posterior.detach(), torch.tensor([p], dtype=F64))
    torch.testing.assert_close(logprobs.grad, torch.tensor([grad], dtype=F64))


def test_baseline_leaves_gradient_unchanged():
    g = torch.Generator().manual_seed(0)
    logprobs = torch.randn(4, 5, dtype=F64, generator=g) * 3
    errors = torch.randint(0, 6, (4, 5), generator=g).to(F64)

    a = logprobs.clone().requires_grad_()
    mwer_risk(a, errors).risk.sum().backward()
    b = logprobs.clone().requires_grad_()
    mwer_risk(b, errors).expected_errors.sum().backward()

    torch.testing.assert_close(a.grad, b.grad)
    # the baseline shifts the value, so the two losses themselves differ
    out = mwer_risk(logprobs, errors)
    assert not torch.allclose(out.risk, out.expected_errors)


def test_gradient_flows_through_normaliser():
    g = torch.Generator().manual_seed(1)
    logprobs = torch.randn(3, 4, dtype=F64, generator=g) * 2
    errors = torch.tensor([[0, 2, 5, 1], [3, 0, 0, 4], [1, 1, 2, 6]], dtype=F64)

    s = logprobs.clone().requires_grad_()
    mwer_risk(s, errors).risk.sum().backward()

    # the defect: normaliser detached, p = exp(s - logsumexp(s).detach())
    t = logprobs.clone().requires_grad_()
    p_detached = torch.exp(t - torch.logsumexp(t, dim=-1, keepdim=True).detach())
    (p_detached * (errors - errors.mean(dim=-1, keepdim=True))).sum().backward()

    torch.testing.assert_close(s.grad.sum(dim=-1), torch.zeros(3, dtype=F64))
    assert (t.grad.sum(dim=-1).abs() > 1e-3).all()
    assert not torch.allclose(s.grad, t.grad, atol=1e-3)


def test_gradcheck_with_padding():
    g = torch.Generator().manual_seed(2)
    logprobs = torch.randn(3, 4, dtype=F64, generator=g, requires_grad=True)
    errors = torch.randint(0, 5, (3, 4), generator=g).to(F64)
    valid = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [0, 1, 0, 1]], dtype=torch.bool)
    assert torch.autograd.gradcheck(lambda x: mwer_risk(x, errors, valid).risk, (logprobs,))


def test_invalid_entries_are_ignored():
    s = torch.tensor([[-1.0, 5.0, -2.0, -3.0]], dtype=F64)
    w = torch.tensor([[0.0, float("nan"), 1.0, 3.0]], dtype=F64)
    valid = torch.tensor([[True, False, True, True]])

    logprobs = s.clone().requires_grad_()
    out = mwer_risk(logprobs, w, valid)
    out.risk.sum().backward()

    assert out.posterior[0, 1].item() == 0.0
    assert logprobs.grad[0, 1].item() == 0.0
    torch.testing.assert_close(out.mean_errors, torch.tensor([4 / 3], dtype=F64))

    # identical to the list without the padded entry
    kept = s[:, [0, 2, 3]].clone().requires_grad_()
    ref = mwer_risk(kept, w[:, [0, 2, 3]])
    ref.risk.sum().backward()
    torch.testing.assert_close(out.risk, ref.risk)
    torch.testing.assert_close(out.expected_errors, ref.expected_errors)
    torch.testing.assert_close(out.posterior[:, [0, 2, 3]], ref.posterior)
    torch.testing.assert_close(logprobs.grad[:, [0, 2, 3]], kept.grad)


def test_row_without_valid_entry_raises():
    valid = torch.tensor([[True, False], [False, False]])
    with pytest.raises(ValueError, match="at least one valid"):
        mwer_risk(torch.zeros(2, 2), torch.zeros(2, 2), valid)


def test_errors_are_constants():
    logprobs = torch.randn(2, 3, requires_grad=True)
    errors = torch.rand(2, 3, requires_grad=True)
    mwer_risk(logprobs, errors).risk.sum().backward()
    assert errors.grad is None
    assert logprobs.grad is not None


# ---------------------------------------------------------------- word_errors


@pytest.mark.parametrize(
    ("hyp", "ref", "n"),
    [
        ("the cat sat", "the cat sat", 0),
        ("the big cat sat", "the cat sat", 1),  # insertion
        ("the sat", "the cat sat", 1),  # deletion
        ("the dog sat", "the cat sat", 1),  # substitution
        ("a the dog sat down", "the cat sat", 3),  # insertion, substitution, insertion
        ("", "the cat sat", 3),
        ("the cat sat", "", 3),
        ("", "", 0),
    ],
)
def test_word_errors_plain(hyp, ref, n):
    assert word_errors(hyp, ref) == n
    assert word_errors(hyp.split(), ref.split()) == n


@pytest.mark.parametrize(
    ("hyp", "ref"),
    [
        ("he went to the the store today", "he went to the store"),
        ("set an alarm for seven", "set the alarm at seven thirty"),
        ("b a c d e", "a b c e f"),
    ],
)
def test_word_errors_match_torchmetrics(hyp, ref):
    expected = word_error_rate(hyp, ref).item() * len(ref.split())
    assert word_errors(hyp, ref) == pytest.approx(expected)
    assert word_errors(hyp, ref, keywords={"the", "seven", "c"}, keyword_weight=1.0) == pytest.approx(
        expected
    )


@pytest.mark.parametrize(
    ("hyp", "ref", "cost"),
    [
        ("call jon now", "call john now", 3.0),  # reference keyword substituted
        ("call john now", "call jon now", 3.0),  # hypothesis word of a substitution is a keyword
        ("call now", "call john now", 3.0),  # keyword deleted
        ("call john now", "call now", 3.0),  # keyword inserted
        ("call john later", "call john now", 1.0),  # non-keyword error
        ("call john", "call john now", 1.0),
        ("call john now", "call john now", 0.0),
    ],
)
def test_word_errors_keyword_costs(hyp, ref, cost):
    assert word_errors(hyp, ref, keywords={"john"}, keyword_weight=3) == pytest.approx(cost)


def test_word_errors_weight_below_one():
    # a substitution touching a keyword costs the weight even when that is below 1
    assert word_errors("call john now", "call bob now", keywords={"john"}, keyword_weight=0.5) == 0.5
    assert word_errors("call now", "call john now", keywords={"john"}, keyword_weight=0.5) == 0.5


def test_word_errors_weighted_mixed():
    ref = "please call john smith now"
    hyp = "please cal john now at"
    # call->cal (keyword, 2) + smith deleted (keyword, 2) + "at" inserted (1); no alignment avoids the two
    # keyword edits, and sharing them with "at" would need crossing alignments.
    assert word_errors(hyp, ref, keywords={"call", "smith"}, keyword_weight=2.0) == pytest.approx(5.0)
    # call->cal (0.5) + smith deleted or substituted (0.5) + "at" inserted or substituted (1)
    assert word_errors(hyp, ref, keywords={"call", "smith"}, keyword_weight=0.5) == pytest.approx(2.0)
    assert word_errors(hyp, ref) == 3


def test_word_errors_weight_avoids_keyword_edits():
    # plain: 3 edits, several optimal alignments; weighted: the one that matches "john" still costs 3
    ref, hyp = "a b john c", "a x b c john"
    assert word_errors(hyp, ref) == 3
    assert word_errors(hyp, ref, keywords={"john"}, keyword_weight=10.0) == pytest.approx(3.0)


@pytest.mark.parametrize("weight", [0.0, -1.0, float("nan")])
def test_word_errors_rejects_bad_weight(weight):
    with pytest.raises(ValueError, match="keyword_weight"):
        word_errors("a", "b", keywords={"a"}, keyword_weight=weight)


# ---------------------------------------------------------------- keyword_counts


def test_keyword_counts():
    ref = "john called john and mary"
    hyp = "john called mary mary bob"
    keywords = {"john", "mary", "bob"}
    # total: john x2 + mary x1; hits: min(1, 2) for john + min(2, 1) for mary; bob is not in the reference
    assert keyword_counts(hyp, ref, keywords) == (2, 3)
    assert keyword_counts(ref, ref, keywords) == (3, 3)
    assert keyword_counts("", ref, keywords) == (0, 3)
    assert keyword_counts(hyp, "and then", keywords) == (0, 0)
    assert keyword_counts(hyp.split(), ref.split(), keywords) == (2, 3)
