"""`TextToAudio`: representation + conditioner + DiT velocity model, with what the training stages need.

    x0, mask = model.encode(audio, audio_lens)           # (B, C, T), (B, T)
    cond = model.condition(captions)                     # or codes, for the token-to-mel decoder
    errors = model.errors(x0, cond, noise, t, mask)      # (B,) per-sample flow-matching errors
    audio = model.generate(captions, seeds=[1, 2, 3])    # (B, 1, samples), per-sample seeds

SFT (lit_modules.t2a) minimises `errors(...).mean()` with `drop=model.drop_mask(B)` (condition dropout); CRPO
compares a policy's `errors` with a frozen deepcopy's on shared noise and times, with no condition dropout
(`errors` never drops a condition unless told).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from research.t2a.flow import flow_matching_errors, sample_times
from research.t2a.generator import Condition, DiT
from research.t2a.representation import FixedLengthRepresentation
from research.t2a.sampler import euler_sample, initial_noise


class TextToAudio(nn.Module):
    """`generator` is a DiT, or a callable (a Hydra partial of DiT) called with in_channels and cond_dim from the
    representation and the conditioner. `conditioner` is a text encoder (inputs: captions) or a
    `CodeConditioner` (inputs: codes (B, code frames)). `steps` and `guidance` are the sampling defaults;
    `time_mean`, `time_std` the logit-normal timestep distribution."""

    def __init__(
        self,
        *,
        representation: FixedLengthRepresentation,
        conditioner: nn.Module,
        generator: DiT | Callable[..., DiT],
        time_mean: float = 0.0,
        time_std: float = 1.0,
        steps: int = 25,
        guidance: float = 4.5,
    ):
        super().__init__()
        self.representation = representation
        self.conditioner = conditioner
        if not isinstance(generator, nn.Module):
            generator = generator(in_channels=representation.channels, cond_dim=conditioner.out_dim)
        if generator.in_channels != representation.channels:
            raise ValueError(
                f"the generator has {generator.in_channels} channels, the representation {representation.channels}"
            )
        self.generator = generator
        self.time_mean, self.time_std = time_mean, time_std
        self.steps, self.guidance = steps, guidance

    @property
    def sample_rate(self) -> int:
        return self.representation.sample_rate

    @property
    def shape(self) -> tuple[int, int]:
        """(C, T) of one sample's representation."""
        return self.representation.channels, self.representation.frames

    # --- data -> representation and condition -----------------------------------------------------------------
    def encode(self, audio: torch.Tensor, audio_lens: torch.Tensor | None = None):
        """audio (B, 1, T'), lengths (B,) -> x0 (B, C, T), mask (B, T) of the frames the loss covers."""
        return self.representation.encode(audio, audio_lens)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T) -> audio (B, 1, samples)."""
        return self.representation.decode(x)

    def conditioning_inputs(self, batch: dict) -> Any:
        """What `condition` takes, from a batch: its captions, or its RVQ-1 codes for the token-to-mel decoder."""
        return self.conditioner.inputs_from_batch(batch, samples=self.representation.samples)

    def condition(self, inputs: list[str] | torch.Tensor) -> Condition:
        """Captions (list[str]) or codes (B, code frames) -> the generator's Condition for B samples."""
        rep = self.representation
        return self.conditioner.condition(inputs, frames=rep.frames, hop_length=rep.hop_length)

    # --- flow matching -----------------------------------------------------------------------------------------
    def velocity(
        self, x: torch.Tensor, t: torch.Tensor, cond: Condition, drop: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.generator(x, t, cond, drop)

    def errors(
        self,
        x0: torch.Tensor,
        cond: Condition,
        noise: torch.Tensor,
        t: torch.Tensor,
        mask: torch.Tensor | None = None,
        drop: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B,) per-sample mean squared velocity error on the given noise and times (see
        `research.t2a.flow.flow_matching_errors`); `drop` (B,) bool trains those samples on the null condition."""
        return flow_matching_errors(lambda x, tt, c: self.generator(x, tt, c, drop), x0, cond, noise, t, mask)

    def sample_times(self, batch: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        return sample_times(batch, generator, mean=self.time_mean, std=self.time_std, device=device)

    def drop_mask(self, batch: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        """(batch,) bool: which samples train on the null condition (probability `generator.cond_dropout`)."""
        return self.generator.drop_mask(batch, device=device, generator=generator)

    # --- sampling ----------------------------------------------------------------------------------------------
    def initial_noise(self, seeds: Sequence[int], device=None) -> torch.Tensor:
        """(B, C, T) noise, sample i's from its own generator seeded with seeds[i]."""
        device = device if device is not None else next(self.generator.parameters()).device
        return initial_noise(self.shape, seeds, device=device)

    @torch.no_grad()
    def sample(
        self,
        inputs: list[str] | torch.Tensor,
        seeds: Sequence[int],
        steps: int | None = None,
        guidance: float | None = None,
        cond: Condition | None = None,
    ) -> torch.Tensor:
        """Euler sampling from per-sample seeded noise -> representations (B, C, T). `inputs` are captions (or
        codes); `cond` instead reuses a condition computed already."""
        cond = self.condition(inputs) if cond is None else cond
        if len(seeds) != cond.batch_size:
            raise ValueError(f"{len(seeds)} seeds for {cond.batch_size} samples: give one seed per sample")
        noise = self.initial_noise(seeds)
        everyone = torch.ones(cond.batch_size, dtype=torch.bool, device=noise.device)

        def velocity(x: torch.Tensor, t: torch.Tensor, unconditional: bool) -> torch.Tensor:
            return self.generator(x, t, cond, everyone if unconditional else None)

        return euler_sample(
            velocity,
            noise,
            steps=self.steps if steps is None else steps,
            guidance=self.guidance if guidance is None else guidance,
        )

    @torch.no_grad()
    def generate(
        self,
        inputs: list[str] | torch.Tensor,
        seeds: Sequence[int],
        steps: int | None = None,
        guidance: float | None = None,
    ) -> torch.Tensor:
        """Captions (or codes) -> audio (B, 1, samples)."""
        return self.decode(self.sample(inputs, seeds, steps, guidance))
