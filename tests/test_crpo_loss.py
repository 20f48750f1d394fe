"""CRPO: the DPO loss for flow matching against hand computation, shared noise and time, pair selection."""

from __future__ import annotations

import math

import pytest
import torch

from research.rl.crpo import crpo_loss, paired_errors, preference_pairs


def logsigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def test_crpo_loss_by_hand():
    l_w, l_l = torch.tensor([0.30, 0.50]), torch.tensor([0.40, 0.45])
    r_w, r_l = torch.tensor([0.35, 0.50]), torch.tensor([0.35, 0.50])
    out = crpo_loss(l_w, l_l, r_w, r_l, beta=20.0)
    # pair 1: (0.30 - 0.40) - (0.35 - 0.35) = -0.10 -> inside = -10 * -0.10 = 1.0
    # pair 2: (0.50 - 0.45) - (0.50 - 0.50) = 0.05 -> inside = -10 * 0.05 = -0.5
    assert out.inside.tolist() == pytest.approx([1.0, -0.5])
    dpo = -(logsigmoid(1.0) + logsigmoid(-0.5)) / 2
    assert out.dpo.item() == pytest.approx(dpo)
    assert out.loss.item() == pytest.approx(dpo + (0.30 + 0.50) / 2)
    assert out.accuracy.item() == 0.5


def test_crpo_gradient_by_hand_and_reference_gets_none():
    l_w = torch.tensor([0.2], requires_grad=True)
    l_l = torch.tensor([0.3], requires_grad=True)
    r_w = torch.tensor([0.25], requires_grad=True)
    r_l = torch.tensor([0.25], requires_grad=True)
    beta = 4.0
    crpo_loss(l_w, l_l, r_w, r_l, beta=beta).loss.backward()
    inside = -0.5 * beta * ((0.2 - 0.3) - 0.0)  # 0.2
    sig = 1 / (1 + math.exp(-inside))
    # d(-logsigmoid(inside))/d inside = -(1 - sigmoid(inside)); d inside / d l_w = -beta/2, / d l_l = +beta/2
    assert l_w.grad.item() == pytest.approx((1 - sig) * beta / 2 + 1.0)  # + the winner term
    assert l_l.grad.item() == pytest.approx(-(1 - sig) * beta / 2)
    assert r_w.grad is None and r_l.grad is None


def test_dpo_term_alone_lets_both_errors_rise_the_winner_term_does_not():
    """Raising both errors by the same amount leaves the DPO term unchanged; only l_w.mean() sees it."""
    base = crpo_loss(torch.tensor([0.2]), torch.tensor([0.3]), torch.tensor([0.25]), torch.tensor([0.25]))
    worse = crpo_loss(torch.tensor([0.7]), torch.tensor([0.8]), torch.tensor([0.25]), torch.tensor([0.25]))
    assert worse.dpo.item() == pytest.approx(base.dpo.item())
    assert worse.loss.item() == pytest.approx(base.loss.item() + 0.5)


def test_crpo_loss_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="one shape"):
        crpo_loss(torch.zeros(2), torch.zeros(3), torch.zeros(2), torch.zeros(2))


def test_paired_errors_share_noise_and_time_and_reference_has_no_gradient():
    seen = []
    weight = torch.tensor(2.0, requires_grad=True)
    frozen = torch.tensor(3.0, requires_grad=True)

    def errors(scale):
        def fn(x0, noise, t):
            seen.append((x0.clone(), noise.clone(), t.clone()))
            target = noise - x0
            x_t = (1 - t)[:, None] * x0 + t[:, None] * noise
            return ((scale * x_t - target) ** 2).mean(dim=-1)

        return fn

    winner, loser = torch.randn(3, 4), torch.randn(3, 4)
    noise, t = torch.randn(3, 4), torch.rand(3)
    l_w, l_l, r_w, r_l = paired_errors(errors(weight), errors(frozen), winner, loser, noise, t)
    (x0, n, tt), _ = seen
    assert torch.equal(x0, torch.cat([winner, loser]))
    assert torch.equal(n[:3], n[3:]) and torch.equal(n[:3], noise)  # the same noise for winner and loser
    assert torch.equal(tt[:3], tt[3:]) and torch.equal(tt[:3], t)
    expected_w = ((2.0 * ((1 - t)[:, None] * winner + t[:, None] * noise) - (noise - winner)) ** 2).mean(-1)
    assert torch.allclose(l_w, expected_w)
    assert l_w.requires_grad and not r_w.requires_grad and not r_l.requires_grad
    crpo_loss(l_w, l_l, r_w, r_l).loss.backward()
    assert weight.grad is not None and frozen.grad is None


def test_ranked_pairs_pick_argmax_and_argmin():
    scores = torch.tensor([[0.1, 0.5, 0.3], [0.9, 0.2, 0.4]])
    pairs = preference_pairs(scores)
    assert pairs.chosen.tolist() == [1, 0] and pairs.rejected.tolist() == [0, 1]
    assert pairs.margins.tolist() == pytest.approx([0.4, 0.7])
    assert pairs.has_pair.all() and pairs.nan_scores == 0 and pairs.tied_prompts == 0


def test_nan_reward_is_left_out_of_ranking_and_counted():
    scores = torch.tensor([[float("nan"), 0.5, 0.3, 0.1], [0.2, float("nan"), float("nan"), 0.4]])
    pairs = preference_pairs(scores)
    assert pairs.chosen.tolist() == [1, 3] and pairs.rejected.tolist() == [3, 0]
    assert pairs.nan_scores == 3


def test_prompt_whose_samples_tie_or_lack_valid_scores_yields_no_pair():
    nan = float("nan")
    scores = torch.tensor([[0.3, 0.3, 0.3], [nan, 0.2, nan], [0.1, 0.4, 0.4]])
    pairs = preference_pairs(scores)
    assert pairs.has_pair.tolist() == [False, False, True]
    assert pairs.chosen[:2].tolist() == [-1, -1] and pairs.tied_prompts == 2 and pairs.nan_scores == 2
    assert math.isnan(pairs.margins[0].item())


def test_random_pairs_are_distinct_valid_and_seeded():
    scores = torch.tensor([[0.1, float("nan"), 0.3, 0.2, 0.5]] * 50)
    pairs = preference_pairs(scores, mode="random", generator=torch.Generator().manual_seed(0))
    assert pairs.has_pair.all()
    assert (pairs.chosen != pairs.rejected).all()
    assert not ((pairs.chosen == 1) | (pairs.rejected == 1)).any()
    # not ranked: the chosen sample is sometimes the worse one
    assert (pairs.margins < 0).any() and (pairs.margins > 0).any()
    again = preference_pairs(scores, mode="random", generator=torch.Generator().manual_seed(0))
    assert torch.equal(pairs.chosen, again.chosen)
    # random pairs of tied samples are still pairs (no ranking to be undecided about)
    assert preference_pairs(torch.ones(1, 3), mode="random").has_pair.all()


def test_preference_pairs_rejects_bad_input():
    with pytest.raises(ValueError, match="prompts, samples"):
        preference_pairs(torch.zeros(5))
    with pytest.raises(ValueError, match="mode"):
        preference_pairs(torch.zeros(2, 2), mode="best")


def test_crpo_module_keeps_its_reference_frozen_in_eval_and_out_of_the_optimizer():
    from functools import partial

    from lit_modules.crpo import CRPOModule
    from tests.test_t2a import tiny_model

    module = CRPOModule(
        net=tiny_model(cond_dropout=0.5), optimizer=partial(torch.optim.SGD, lr=0.1), beta=10.0
    )
    module.train()
    assert module.net.training and not module.reference.training
    assert not any(p.requires_grad for p in module.reference.parameters())
    optimizer = module.optimizer_factory([p for p in module.parameters() if p.requires_grad])
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert not in_optimizer & {id(p) for p in module.reference.parameters()}
    shape = module.net.shape
    batch = {
        "caption": [
            "george, a man with a Greek accent, says one",
            "theo, a man with an American accent, says two",
        ],
        "chosen": torch.randn(2, *shape),
        "rejected": torch.randn(2, *shape),
    }
    noise, t = torch.randn(2, *shape), torch.rand(2)
    out = module.pair_loss(batch, noise, t)
    # no condition dropout (p 0.5 here): the same errors on every call, and policy = reference at the start
    assert torch.equal(out.policy_winner, module.pair_loss(batch, noise, t).policy_winner)
    assert torch.allclose(out.policy_winner, out.reference_winner) and torch.allclose(
        out.inside, torch.zeros(2)
    )
    out.loss.backward()
    assert all(p.grad is None for p in module.reference.parameters())
