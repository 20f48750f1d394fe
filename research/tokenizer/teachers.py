"""Semantic teachers for RVQ-1 distillation, behind one interface: `teacher.features(batch)` -> (B, frames, dim),
with `dim` and `frame_rate` attributes; `teacher.features_with_lens(batch)` adds each item's count of valid
frames (B,), so the distillation loss leaves out the frames of padding. Teachers are frozen and never trained by
the codec.

- `HuggingFaceTeacher`: any transformers HuBERT / WavLM / wav2vec2 model directory.
- `EncoderTeacher`: a voxlab speech encoder (the CTC recogniser's, LUISE's), built by whoever loads it.
- `PrecomputedTeacher`: features extracted once (`python -m experiments.teacher_features`) and read by the
  datamodule from the manifest column, cropped together with the audio.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from research.encoder import ConformerEncoder


def select_layer(
    hidden_states: list[torch.Tensor] | tuple[torch.Tensor, ...], layer: int | str
) -> torch.Tensor:
    """`layer` indexes the hidden states (0 = input to the first layer); "avg" is the mean of all of them, as in
    the released SpeechTokenizer (the paper's ablation uses HuBERT layer 9)."""
    return torch.stack(tuple(hidden_states)).mean(0) if layer == "avg" else hidden_states[int(layer)]


def check_layer(layer: int | str, num_layers: int) -> int | str:
    if layer != "avg" and not 0 <= int(layer) <= num_layers:
        raise ValueError(f"layer must be 'avg' or 0..{num_layers}, got {layer!r}")
    return layer if layer == "avg" else int(layer)


class FrozenTeacher(nn.Module):
    dim: int
    frame_rate: float

    def train(self, mode: bool = True) -> FrozenTeacher:
        return super().train(False)  # frozen: dropout stays off whatever the parent module does

    def features(self, batch: dict) -> torch.Tensor:
        return self.features_with_lens(batch)[0]

    def features_with_lens(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, frames, dim) features and the number of valid (non-padding) frames of each item (B,)."""
        with torch.no_grad():
            return self.encode(batch["audio"], batch["audio_lens"])

    def encode(
        self, audio: torch.Tensor, audio_lens: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def forward(self, audio: torch.Tensor, audio_lens: torch.Tensor | None = None) -> torch.Tensor:
        return self.encode(audio, audio_lens)[0]


def full_lengths(audio: torch.Tensor, audio_lens: torch.Tensor | None) -> torch.Tensor:
    if audio_lens is None:
        return torch.full((audio.shape[0],), audio.shape[-1], device=audio.device)
    return audio_lens.to(audio.device)


class HuggingFaceTeacher(FrozenTeacher):
    """Any transformers HuBERT / WavLM / wav2vec2 model directory (`from_pretrained(local_dir)`)."""

    def __init__(self, *, model_dir: str, layer: int | str = "avg", sample_rate: int = 16000):
        super().__init__()
        from transformers import AutoConfig, AutoFeatureExtractor, AutoModel

        config = AutoConfig.from_pretrained(model_dir)
        self.model = AutoModel.from_pretrained(model_dir).eval().requires_grad_(False)
        try:
            self.normalize = bool(AutoFeatureExtractor.from_pretrained(model_dir).do_normalize)
        except OSError:  # a directory without preprocessor_config.json: raw waveform, as HuBERT expects
            self.normalize = False
        self.layer = check_layer(layer, config.num_hidden_layers)
        self.dim = config.hidden_size
        self.frame_rate = sample_rate / math.prod(config.conv_stride)
        # models with layer-norm feature extractors (HuBERT-large, WavLM) were trained with attention masks;
        # group-norm ones (HuBERT-base) were not, and expect zero padding instead (transformers' guidance)
        self.takes_mask = getattr(config, "feat_extract_norm", "group") == "layer"

    @torch.no_grad()
    def encode(
        self, audio: torch.Tensor, audio_lens: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode_with_grad(audio, audio_lens)

    def encode_with_grad(
        self, audio: torch.Tensor, audio_lens: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """As transformers' feature extractor prepares a batch: each item normalised over its own samples (when
        the model's extractor normalises), padding set to zero, an attention mask where the model takes one.
        Valid frame counts follow the model's conv stack. (Gradients flow: an encoder a recipe trains.)"""
        wave = audio.squeeze(1).float()
        lens = full_lengths(audio, audio_lens)
        valid = torch.arange(wave.shape[-1], device=wave.device)[None] < lens[:, None]
        if self.normalize:
            count = lens[:, None].clamp_min(1)
            mean = (wave * valid).sum(-1, keepdim=True) / count
            variance = ((wave - mean) * valid).square().sum(-1, keepdim=True) / count
            wave = (wave - mean) / (variance + 1e-7).sqrt()
        mask = valid.long() if self.takes_mask else None
        output = self.model(wave * valid, attention_mask=mask, output_hidden_states=True)
        features = select_layer(output.hidden_states, self.layer)
        frames = self.model._get_feat_extract_output_lengths(lens)
        return features, frames.clamp(0, features.shape[1])


class EncoderTeacher(FrozenTeacher):
    """A voxlab `ConformerEncoder` (from a CTC recogniser or LUISE checkpoint); layer 0 is the subsampled input
    to the first Conformer layer, layer i the output of layer i."""

    def __init__(self, *, encoder: ConformerEncoder, layer: int | str = "avg"):
        super().__init__()
        self.encoder = encoder.eval().requires_grad_(False)
        self.layer = check_layer(layer, encoder.num_layers)
        self.dim = encoder.d_model
        self.frame_rate = encoder.frame_rate

    @torch.no_grad()
    def encode(
        self, audio: torch.Tensor, audio_lens: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        output = self.encoder(audio, full_lengths(audio, audio_lens), output_layers=True)
        return select_layer(output.layers, self.layer), output.lens


class PrecomputedTeacher(FrozenTeacher):
    """Features stored beside the manifest and loaded into the batch under `field` by the datamodule
    (`array_fields=[field]`)."""

    def __init__(self, *, field: str = "teacher_features", dim: int, frame_rate: float):
        super().__init__()
        self.field, self.dim, self.frame_rate = field, dim, frame_rate

    def features_with_lens(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        if self.field not in batch:
            raise KeyError(
                f"batch has no '{self.field}': add it to the datamodule's array_fields "
                "(features are extracted with `python -m experiments.teacher_features`)"
            )
        features = batch[self.field].float()
        lens = batch.get(f"{self.field}_lens")  # the collate's count of stored frames per item
        if lens is None:
            lens = torch.full((features.shape[0],), features.shape[1])
        return features, lens.to(features.device)
