"""Rectified-flow text-to-audio (TangoFlux at CPU size): flow matching, Euler sampling with classifier-free
guidance and per-sample seeds, a DiT velocity model, caption and code conditioners, mel and codec-latent
representations, and `TextToAudio`, which bundles them for the SFT and CRPO stages."""

from research.t2a.code_encoder import CodeConditioner
from research.t2a.flow import (
    flow_matching_errors,
    flow_matching_loss,
    interpolate,
    sample_times,
    velocity_target,
)
from research.t2a.generator import Condition, DiT
from research.t2a.model import TextToAudio
from research.t2a.representation import CodecLatentRepresentation, MelRepresentation
from research.t2a.sampler import euler_sample, initial_noise
from research.t2a.text_encoder import CharTextEncoder, PretrainedTextEncoder

__all__ = [
    "CharTextEncoder",
    "CodeConditioner",
    "CodecLatentRepresentation",
    "Condition",
    "DiT",
    "MelRepresentation",
    "PretrainedTextEncoder",
    "TextToAudio",
    "euler_sample",
    "flow_matching_errors",
    "flow_matching_loss",
    "initial_noise",
    "interpolate",
    "sample_times",
    "velocity_target",
]
