"""Semantic teachers for RVQ-1 distillation, behind one call: audio (B, 1, T) -> features (B, frames, dim) with
`dim` and `frame_rate` attributes. Teachers are frozen and never trained by the codec."""

from __future__ import annotations

import math

import torch
from torch import nn


class HuggingFaceTeacher(nn.Module):
    """Any transformers HuBERT / WavLM / wav2vec2 model directory (`from_pretrained(local_dir)`).

    `layer`: an index into the hidden states (0 = CNN features after projection, i = transformer layer i) or
    "avg", the mean of all hidden states as in the released SpeechTokenizer (the paper's ablation uses layer 9).
    """

    def __init__(self, *, model_dir: str, layer: int | str = "avg", sample_rate: int = 16000):
        super().__init__()
        from transformers import AutoConfig, AutoFeatureExtractor, AutoModel

        config = AutoConfig.from_pretrained(model_dir)
        self.model = AutoModel.from_pretrained(model_dir).eval().requires_grad_(False)
        try:
            self.normalize = bool(AutoFeatureExtractor.from_pretrained(model_dir).do_normalize)
        except OSError:  # a directory without preprocessor_config.json: raw waveform, as HuBERT expects
            self.normalize = False
        if layer != "avg" and not 0 <= int(layer) <= config.num_hidden_layers:
            raise ValueError(f"layer must be 'avg' or 0..{config.num_hidden_layers}, got {layer!r}")
        self.layer = layer
        self.dim = config.hidden_size
        self.frame_rate = sample_rate / math.prod(config.conv_stride)

    def train(self, mode: bool = True) -> HuggingFaceTeacher:
        return super().train(False)  # frozen: dropout stays off whatever the parent module does

    @torch.no_grad()
    def forward(self, audio: torch.Tensor, audio_lens: torch.Tensor | None = None) -> torch.Tensor:
        wave = audio.squeeze(1).float()
        if self.normalize:
            wave = (wave - wave.mean(-1, keepdim=True)) / (wave.std(-1, keepdim=True) + 1e-7)
        hidden = self.model(wave, output_hidden_states=True).hidden_states
        return torch.stack(hidden).mean(0) if self.layer == "avg" else hidden[int(self.layer)]
