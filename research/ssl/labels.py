"""Per-frame LUISE targets as batch functions (audio (B, 1, T), lens (B,) -> one int16 array per utterance):
k-means labels of an encoder layer (iteration k+1) and random-projection labels (iteration 1)."""

from __future__ import annotations

import numpy as np
import torch

from research.encoder import SUBSAMPLING, ConformerEncoder
from research.ssl.targets import RandomProjectionQuantizer, stack_frames
from research.tokenizer.quantizer import nearest_codes


def kmeans_label_batch(encoder: ConformerEncoder, layer: int, centroids: torch.Tensor):
    @torch.no_grad()
    def compute(audio: torch.Tensor, lens: torch.Tensor) -> list[np.ndarray]:
        out = encoder(audio, lens, output_layers=True)
        states = out.layers[layer]
        return [
            nearest_codes(states[i, :n], centroids).numpy().astype(np.int16)
            for i, n in enumerate(out.lens.tolist())
        ]

    return compute


def random_projection_labels(encoder: ConformerEncoder, quantizer: RandomProjectionQuantizer):
    """Iteration-1 targets: the quantizer's first codebook over the encoder's clean log-mel, one label per 40 ms
    frame."""

    @torch.no_grad()
    def compute(audio: torch.Tensor, lens: torch.Tensor) -> list[np.ndarray]:
        feats, feat_lens = encoder.features(audio, lens)
        labels = quantizer(stack_frames(feats, SUBSAMPLING))[..., 0]
        frames = (-(-feat_lens // SUBSAMPLING)).tolist()
        return [labels[i, :n].numpy().astype(np.int16) for i, n in enumerate(frames)]

    return compute
