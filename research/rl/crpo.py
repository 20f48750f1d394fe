"""CLAP-Ranked Preference Optimization (CRPO, TangoFlux; Hung et al. 2024) for a rectified-flow generator.

Per prompt, N samples of the current policy are scored by a reward; the best becomes the chosen (winner) and the
worst the rejected (loser) sample. The policy is trained with Diffusion-DPO adapted to flow matching against a
frozen reference copy, winner and loser evaluated at the same noise and time:

    l = per-sample flow-matching error of the policy, r = of the reference,
    inside = -beta / 2 * ((l_w - l_l) - (r_w - r_l)),   loss = -logsigmoid(inside).mean() + l_w.mean().

The l_w term keeps the winner's error from rising: the DPO term alone only asks the winner to improve relative to
the loser, and both errors can grow together.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

# (x0, noise, t) -> per-sample flow-matching error (B,); the caller binds its model, condition and mask
ErrorFn = Callable[[Tensor, Tensor, Tensor], Tensor]


@dataclass
class PreferencePairs:
    chosen: Tensor  # (P,) sample index of each prompt's winner (-1 where the prompt has no pair)
    rejected: Tensor  # (P,) of its loser
    has_pair: Tensor  # (P,) bool
    nan_scores: int  # samples left out of ranking because their reward was NaN
    tied_prompts: int  # prompts whose valid samples all scored the same (or fewer than two were valid)
    margins: Tensor  # (P,) chosen minus rejected reward (NaN without a pair)


def preference_pairs(
    scores: Tensor, *, mode: str = "ranked", generator: torch.Generator | None = None
) -> PreferencePairs:
    """Winner and loser per prompt from rewards `scores` (P prompts, N samples).

    mode "ranked": winner = argmax, loser = argmin of the valid (non-NaN) scores, as CRPO. Mode "random": two
    distinct valid samples at random, the first the winner (the random-pairs baseline: online data, no ranking).
    NaN scores are left out (counted); a prompt with fewer than two valid samples, or (ranked) whose valid scores
    all tie, yields no pair (counted)."""
    if scores.dim() != 2:
        raise ValueError(f"scores must be (prompts, samples), got {tuple(scores.shape)}")
    if mode not in ("ranked", "random"):
        raise ValueError(f"mode must be 'ranked' or 'random', got {mode!r}")
    scores = scores.detach().float().cpu()
    valid = ~torch.isnan(scores)
    chosen = torch.full((scores.shape[0],), -1, dtype=torch.long)
    rejected = chosen.clone()
    margins = torch.full((scores.shape[0],), float("nan"))
    tied = 0
    for prompt, (row, ok) in enumerate(zip(scores, valid, strict=True)):
        indices = ok.nonzero().flatten()
        values = row[indices]
        if len(indices) < 2 or (mode == "ranked" and bool((values == values[0]).all())):
            tied += 1
            continue
        if mode == "ranked":
            win, lose = indices[values.argmax()], indices[values.argmin()]
        else:
            pick = torch.randperm(len(indices), generator=generator)[:2]
            win, lose = indices[pick[0]], indices[pick[1]]
        chosen[prompt], rejected[prompt] = win, lose
        margins[prompt] = row[win] - row[lose]
    return PreferencePairs(
        chosen=chosen,
        rejected=rejected,
        has_pair=chosen >= 0,
        nan_scores=int((~valid).sum()),
        tied_prompts=tied,
        margins=margins,
    )


@dataclass
class CRPOOutput:
    loss: Tensor  # scalar: DPO term + winner error
    dpo: Tensor  # scalar: -logsigmoid(inside).mean()
    inside: Tensor  # (B,) -beta/2 ((l_w - l_l) - (r_w - r_l))
    policy_winner: Tensor  # (B,) l_w
    policy_loser: Tensor  # (B,) l_l
    reference_winner: Tensor  # (B,) r_w
    reference_loser: Tensor  # (B,) r_l

    @property
    def accuracy(self) -> Tensor:
        """Share of pairs the policy ranks as the reward did (relative to the reference): inside > 0."""
        return (self.inside > 0).float().mean()


def crpo_loss(
    policy_winner: Tensor,
    policy_loser: Tensor,
    reference_winner: Tensor,
    reference_loser: Tensor,
    *,
    beta: float = 2000.0,
    winner_weight: float = 1.0,
) -> CRPOOutput:
    """The CRPO loss from per-sample flow-matching errors (B,) of policy and reference on winners and losers that
    shared noise and time. The reference errors are constants (detached here whatever the caller passed)."""
    shapes = {tuple(x.shape) for x in (policy_winner, policy_loser, reference_winner, reference_loser)}
    if len(shapes) != 1 or len(next(iter(shapes))) != 1:
        raise ValueError(f"the four errors must be (B,) of one shape, got {sorted(shapes)}")
    reference_winner, reference_loser = reference_winner.detach(), reference_loser.detach()
    inside = -0.5 * beta * ((policy_winner - policy_loser) - (reference_winner - reference_loser))
    dpo = -F.logsigmoid(inside).mean()
    return CRPOOutput(
        loss=dpo + winner_weight * policy_winner.mean(),
        dpo=dpo,
        inside=inside,
        policy_winner=policy_winner,
        policy_loser=policy_loser,
        reference_winner=reference_winner,
        reference_loser=reference_loser,
    )


def paired_errors(
    policy: ErrorFn,
    reference: ErrorFn,
    winner: Tensor,
    loser: Tensor,
    noise: Tensor,
    t: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(l_w, l_l, r_w, r_l): winner and loser at the same `noise` and `t` (one draw per pair), the policy with
    gradient in one forward over both, the reference without."""
    both, noise2, t2 = torch.cat([winner, loser]), torch.cat([noise, noise]), torch.cat([t, t])
    policy_w, policy_l = policy(both, noise2, t2).chunk(2)
    with torch.no_grad():
        reference_w, reference_l = reference(both, noise2, t2).chunk(2)
    return policy_w, policy_l, reference_w, reference_l


def sample_seed(seed: int, iteration: int, caption: str, round_: int, sample: int) -> int:
    """The seed of one candidate: stable across runs and processes (not Python's salted hash), different for every
    prompt, round, sample and iteration, independent of the order in which prompts are generated."""
    key = f"{seed}/{iteration}/{caption}/{round_}/{sample}".encode()
    return int.from_bytes(hashlib.sha1(key).digest()[:4], "big") & 0x7FFFFFFF


@dataclass
class Candidates:
    """N candidates for each of P prompts: `latents` (P, N, C, T), `audio` (P, N, 1, samples), `scores` (P, N),
    `seeds` (P, N)."""

    prompts: list[Mapping]
    latents: Tensor
    audio: Tensor
    scores: Tensor
    seeds: list[list[int]]


@torch.no_grad()
def generate_candidates(
    policy: nn.Module,
    reward: Callable[[Tensor, Tensor, Sequence[Mapping]], Tensor],
    prompts: Sequence[Mapping],
    seeds: Sequence[Sequence[int]],
    *,
    steps: int | None = None,
    guidance: float | None = None,
    batch_size: int = 50,
    progress: str | None = None,
) -> Candidates:
    """Generate one sample per seed of each prompt (`seeds[p]`, N each) with a `TextToAudio` policy in eval mode,
    decode it and score it with `reward(audio, audio_lens, prompts)` (a batch at a time)."""
    samples = len(seeds[0])
    if len(seeds) != len(prompts) or any(len(row) != samples for row in seeds):
        raise ValueError("give N seeds for each prompt")
    flat = [(p, s) for p, row in enumerate(seeds) for s in row]
    was_training = policy.training
    policy.eval()
    latents, audio, scores = [], [], []
    chunks = range(0, len(flat), batch_size)
    for start in tqdm(chunks, desc=progress, disable=progress is None):
        chunk = flat[start : start + batch_size]
        chunk_prompts = [prompts[p] for p, _ in chunk]
        x = policy.sample(
            [prompt["caption"] for prompt in chunk_prompts], [s for _, s in chunk], steps, guidance
        )
        wave = policy.decode(x)
        lens = torch.full((len(chunk),), wave.shape[-1], dtype=torch.long, device=wave.device)
        latents.append(x.cpu())
        audio.append(wave.cpu())
        scores.append(reward(wave, lens, chunk_prompts).float().cpu())
    policy.train(was_training)
    shape = (len(prompts), samples)
    return Candidates(
        prompts=list(prompts),
        latents=torch.cat(latents).reshape(*shape, *latents[0].shape[1:]),
        audio=torch.cat(audio).reshape(*shape, *audio[0].shape[1:]),
        scores=torch.cat(scores).reshape(shape),
        seeds=[list(row) for row in seeds],
    )
