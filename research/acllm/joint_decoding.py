"""Seed-ASR's joint beam search for context decoding, as a transformers LogitsProcessor: the search runs on the
context-conditioned prompt, and at every step each candidate token is scored by

    P_joint(y_t | ...) = alpha / (1 + alpha) * P(y_t | x, c, y_<t) + 1 / (1 + alpha) * P(y_t | x, y_<t)

after the tokens that the context-free model P(y_t | x, y_<t) finds acoustically implausible (outside its top k)
were pruned (plain context decoding copies context words that were never said), renormalised over the tokens
left. alpha = 0 is context-free decoding, a large alpha context decoding with pruning only."""

from __future__ import annotations

import math

import torch
from transformers import LogitsProcessor


class JointContextScores(LogitsProcessor):
    """transformers has one prompt per sequence; the context-free prompt's next-token distribution is computed
    here, by running the LLM on that prompt and the tokens generated so far (no cache: beam search reorders its
    hypotheses between steps, and the processor only sees their tokens)."""

    def __init__(
        self,
        llm: torch.nn.Module,
        free_embeds: torch.Tensor,
        free_mask: torch.Tensor,
        *,
        context_weight: float,
        prune_top_k: int | None,
        beams: int,
    ):
        if context_weight < 0:
            raise ValueError(f"context_weight must be >= 0, got {context_weight}")
        if prune_top_k is not None and prune_top_k < 1:
            raise ValueError(f"prune_top_k must be >= 1 (or None: no pruning), got {prune_top_k}")
        self.llm, self.prune_top_k = llm, prune_top_k
        self.free_embeds = free_embeds.repeat_interleave(
            beams, 0
        )  # rows follow generate's (item, beam) order
        self.free_mask = free_mask.repeat_interleave(beams, 0)
        self.log_weights = (
            -math.inf if context_weight == 0 else math.log(context_weight / (1 + context_weight)),
            math.log(1 / (1 + context_weight)),
        )

    def free_logprobs(self, generated: torch.Tensor) -> torch.Tensor:
        """log P(y_t | x, y_<t) of the context-free prompt, (rows, vocab)."""
        embeds = torch.cat([self.free_embeds, self.llm.get_input_embeddings()(generated)], 1)
        mask = torch.cat([self.free_mask, torch.ones_like(generated)], 1)
        # left padding: positions follow the mask, as in generate
        positions = (mask.cumsum(-1) - 1).clamp_min(0)
        logits = self.llm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).logits[:, -1]
        return logits.float().log_softmax(-1)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        context = scores.float().log_softmax(-1)  # greedy hands raw logits, beam search log-probabilities
        free = self.free_logprobs(input_ids)
        joint = torch.logaddexp(context + self.log_weights[0], free + self.log_weights[1])
        excluded = context == -math.inf  # what earlier processors suppressed (a unit model's units) stays out
        if self.prune_top_k is not None:
            candidates = free.masked_fill(excluded, -math.inf)
            top = candidates.topk(min(self.prune_top_k, free.shape[-1]), -1).indices
            excluded = excluded | ~torch.zeros_like(excluded).scatter(-1, top, True)
        # renormalised over what is left: greedy and beam search then report the same scores
        return joint.masked_fill(excluded, -math.inf).log_softmax(-1).to(scores.dtype)
