"""The CRPO stage (TangoFlux) for the rectified-flow text-to-audio model: one iteration's training on the preference
pairs the pipeline generated and ranked (`datamodules.preferences`), against a frozen copy of the policy it starts
from (the reference), winner and loser at the same noise and time (`research.rl.crpo`). No condition dropout: the
policy and the reference must score the same conditional model.

Logs train|val/{loss, dpo, accuracy (pairs the policy now prefers as the reward did, relative to the reference),
winner_error, loser_error, reference_winner_error, reference_loser_error} and train/reward_margin (chosen minus
rejected reward of the batch's pairs); at each validation end, samples of the first validation pairs' captions.
Everything else (optimiser, examples, generation) is the SFT module's.
"""

from __future__ import annotations

import copy

import torch

from lit_modules.artifacts import log_audio, log_text
from lit_modules.t2a import FlowMatchingModule
from research.rl.crpo import CRPOOutput, crpo_loss, paired_errors


class CRPOModule(FlowMatchingModule):
    def __init__(self, *, beta: float = 2000.0, winner_weight: float = 1.0, **flow):
        super().__init__(**flow)
        self.save_hyperparameters("beta", "winner_weight")
        # the policy this iteration starts from, frozen; kept in checkpoints so a resumed run has the same one
        self.reference = copy.deepcopy(self.net).requires_grad_(False).eval()

    def train(self, mode: bool = True) -> CRPOModule:
        super().train(mode)
        self.reference.eval()  # no dropout in the reference, ever
        return self

    def pair_loss(self, batch: dict, noise: torch.Tensor, t: torch.Tensor) -> CRPOOutput:
        captions = list(batch["caption"]) * 2  # winners then losers, one condition each
        cond = self.net.condition(captions)
        with torch.no_grad():
            reference_cond = self.reference.condition(captions)
        errors = paired_errors(
            lambda x0, n, tt: self.net.errors(x0, cond, n, tt),
            lambda x0, n, tt: self.reference.errors(x0, reference_cond, n, tt),
            batch["chosen"],
            batch["rejected"],
            noise,
            t,
        )
        return crpo_loss(*errors, beta=self.hparams.beta, winner_weight=self.hparams.winner_weight)

    def log_pairs(self, out: CRPOOutput, prefix: str) -> None:
        values = {
            "loss": out.loss,
            "dpo": out.dpo,
            "accuracy": out.accuracy,
            "winner_error": out.policy_winner.mean(),
            "loser_error": out.policy_loser.mean(),
            "reference_winner_error": out.reference_winner.mean(),
            "reference_loser_error": out.reference_loser.mean(),
        }
        size = len(out.inside)
        for name, value in values.items():
            self.log(
                f"{prefix}/{name}",
                value,
                batch_size=size,
                sync_dist=prefix != "train",
                prog_bar=name == "loss",
            )

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        chosen = batch["chosen"]
        noise = torch.randn_like(chosen)
        t = self.net.sample_times(chosen.shape[0], device=self.device)
        out = self.pair_loss(batch, noise, t)
        self.log_pairs(out, "train")
        margin = (batch["chosen_score"] - batch["rejected_score"]).float().mean()
        self.log("train/reward_margin", margin, batch_size=len(out.inside))
        return out.loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        noise, t = self.fixed_noise_and_times(batch["chosen"], batch_idx)
        self.log_pairs(self.pair_loss(batch, noise, t), "val")
        if self.first_val_batch is None:
            self.first_val_batch = batch

    @torch.no_grad()
    def log_examples(self, batch: dict) -> None:
        captions = list(self.hparams.example_captions or batch["caption"])[: self.hparams.log_examples]
        if not captions:
            return
        seeds = [self.hparams.val_seed + i for i in range(len(captions))]
        audio = self.net.generate(captions, seeds, self.hparams.sample_steps, self.hparams.sample_guidance)
        if not self.trainer.is_global_zero:  # every rank generated (see FlowMatchingModule); rank 0 writes
            return
        for i, wave in enumerate(audio):
            log_audio(self.trainer, f"sample_{i}", wave, self.net.sample_rate)
        lines = (f"sample_{i}\tseed {s}\t{c}" for i, (s, c) in enumerate(zip(seeds, captions, strict=True)))
        log_text(self.trainer, "samples", "\n".join(lines))
