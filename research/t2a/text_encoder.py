"""Caption encoders for text-to-audio: captions -> token states (B, L, D) and a mask (B, L), True on valid tokens.

- `CharTextEncoder` (default): a small character-level transformer trained jointly with the generator. Characters
  need no vocabulary built from the data (the model exists before the data is read) and spell out speaker names
  and digit words exactly; a caption is a few dozen characters.
- `PretrainedTextEncoder`: a transformers encoder (FLAN-T5 as TangoFlux, BERT, ...) loaded from a local directory,
  frozen, with a trainable linear projection to the generator's condition size.

Both are conditioners (see `TextConditioning`): `condition(captions)` gives the generator's `Condition`, and
`inputs_from_batch(batch)` takes the captions of a `captions`-view batch.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from research.t2a.generator import Condition, sinusoidal_embedding

CAPTION_CHARACTERS = " 'abcdefghijklmnopqrstuvwxyz0123456789,.-?!:;"


class TextConditioning:
    """The conditioner interface for captions (list[str])."""

    def inputs_from_batch(self, batch: dict, **_: object) -> list[str]:
        return list(batch["caption"])

    def condition(self, captions: list[str], **_: object) -> Condition:
        states, mask = self(captions)
        return Condition(tokens=states, token_mask=mask)


class CharTextEncoder(TextConditioning, nn.Module):
    """Characters (lower-cased; others map to <unk>) after a <bos> token, which keeps an empty caption one valid
    token long -> embedding + sinusoidal positions -> pre-norm transformer encoder."""

    PAD, BOS, UNK = 0, 1, 2

    def __init__(
        self,
        *,
        d_model: int = 128,
        num_layers: int = 2,
        num_heads: int = 4,
        ffn_dim: int = 512,
        dropout: float = 0.0,
        max_length: int = 128,
        characters: str = CAPTION_CHARACTERS,
    ):
        super().__init__()
        self.characters = characters
        self.index = {c: i + 3 for i, c in enumerate(characters)}
        self.max_length = max_length
        self.out_dim = d_model
        self.embedding = nn.Embedding(len(characters) + 3, d_model, padding_idx=self.PAD)
        layer = nn.TransformerEncoderLayer(
            d_model, num_heads, ffn_dim, dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)

    def tokenize(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L) ids (<bos> first, padded with <pad>, cut at max_length) and (B, L) mask."""
        rows = [
            [self.BOS, *(self.index.get(c, self.UNK) for c in caption.lower())][: self.max_length]
            for caption in captions
        ]
        ids = torch.full((len(rows), max(len(r) for r in rows)), self.PAD, dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
        return ids, ids != self.PAD

    def forward(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        device = self.embedding.weight.device
        ids, mask = (tensor.to(device) for tensor in self.tokenize(captions))
        positions = sinusoidal_embedding(torch.arange(ids.shape[1], device=device), self.out_dim)
        states = self.encoder(self.embedding(ids) + positions, src_key_padding_mask=~mask)
        return self.norm(states) * mask[..., None], mask


class PretrainedTextEncoder(TextConditioning, nn.Module):
    """A frozen transformers text encoder from a local directory (no download: `local_files_only`). For an
    encoder-decoder model (T5) its encoder is used. The last hidden states are projected to `out_dim` by a
    trainable linear layer (None: no projection, out_dim = the model's hidden size). The frozen model stays in
    eval mode (no dropout) whatever mode the enclosing module is set to."""

    def __init__(self, *, model_dir: str | Path, out_dim: int | None = 128, max_length: int = 64):
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        self.model_dir = str(model_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir, local_files_only=True)
        model = AutoModel.from_pretrained(self.model_dir, local_files_only=True)
        if getattr(model.config, "is_encoder_decoder", False):
            model = model.get_encoder()
        self.model = model.eval().requires_grad_(False)
        hidden = model.config.hidden_size if hasattr(model.config, "hidden_size") else model.config.d_model
        self.projection = nn.Linear(hidden, out_dim) if out_dim else nn.Identity()
        self.out_dim = out_dim or hidden
        self.max_length = max_length

    @classmethod
    def from_pretrained(cls, local_dir: str | Path, **kwargs) -> PretrainedTextEncoder:
        return cls(model_dir=local_dir, **kwargs)

    def train(self, mode: bool = True) -> PretrainedTextEncoder:
        super().train(mode)
        self.model.eval()
        return self

    def forward(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        device = self.projection.weight.device if isinstance(self.projection, nn.Linear) else None
        device = device or next(self.model.parameters()).device
        encoded = self.tokenizer(
            list(captions), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(device)
        mask = encoded["attention_mask"].bool()
        with torch.no_grad():
            states = self.model(input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"])
        states = states.last_hidden_state
        empty = ~mask.any(1)
        if empty.any():  # a tokenizer that adds nothing to an empty caption: keep one valid position
            mask = mask.clone()
            mask[empty, 0] = True
        return self.projection(states) * mask[..., None], mask
