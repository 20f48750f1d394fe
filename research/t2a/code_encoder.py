"""Conditioning on discrete speech tokens instead of text: the flow-matching token-to-mel decoder of CosyVoice and
Baichuan-Audio. The SpeechTokenizer's RVQ level-1 codes (content) are embedded, contextualised by residual
convolutions at the code rate, then aligned to the generated representation's frames, which the generator adds
to its input (`DiT(frame_conditioning=True)`): the flow then only has to supply what RVQ-1 leaves out (timbre,
detail), as CosyVoice's flow decoder does from its supervised semantic tokens.

Codes come from the batch (`codes` (B, frames, n_q), written by `experiments.tokenize` and read with
`data.array_fields=[codes]`) or, when absent, from encoding the batch's audio with the frozen codec.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from research.features import lengths_to_mask
from research.t2a.generator import Condition


class ResidualConv(nn.Module):
    def __init__(self, dim: int, kernel_size: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.conv = nn.Conv1d(dim, dim, kernel_size, padding=kernel_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, D)
        y = self.conv(rearrange(self.norm(x), "b t d -> b d t"))
        return x + F.gelu(rearrange(y, "b d t -> b t d"))


class CodeConditioner(nn.Module):
    """RVQ codes of level `level` (0 = RVQ-1) -> frame states (B, frames, d_model) aligned to the generator.

    `codec` (a frozen `SpeechTokenizerCodec`) gives the codebook size and code hop and encodes audio when the
    batch carries no codes; without a codec give `codebook_size` and `code_hop_length`. Id `codebook_size` marks
    the code frames after a clip's end."""

    def __init__(
        self,
        *,
        codec: nn.Module | None = None,
        codebook_size: int | None = None,
        code_hop_length: int | None = None,
        level: int = 0,
        d_model: int = 128,
        num_layers: int = 2,
        kernel_size: int = 5,
        codes_field: str = "codes",
    ):
        super().__init__()
        self.codec = None if codec is None else codec.eval().requires_grad_(False)
        if codec is not None:
            codebook_size = codec.quantizer.codebook_sizes[level]
            code_hop_length = codec.hop_length
        if codebook_size is None or code_hop_length is None:
            raise ValueError("give a codec, or codebook_size and code_hop_length")
        self.codebook_size, self.code_hop_length = int(codebook_size), int(code_hop_length)
        self.pad_id = self.codebook_size
        self.level = level
        self.codes_field = codes_field
        self.out_dim = d_model
        self.embedding = nn.Embedding(self.codebook_size + 1, d_model)
        self.code_layers = nn.Sequential(*(ResidualConv(d_model, kernel_size) for _ in range(num_layers)))
        self.frame_layer = ResidualConv(d_model, 3)  # smooths the repeated states after alignment
        self.norm = nn.LayerNorm(d_model)

    def train(self, mode: bool = True) -> CodeConditioner:
        super().train(mode)
        if self.codec is not None:
            self.codec.eval()
        return self

    def code_frames(self, samples: int) -> int:
        return -(-samples // self.code_hop_length)

    @torch.no_grad()
    def inputs_from_batch(self, batch: dict, *, samples: int) -> torch.Tensor:
        """(B, code frames of a `samples` window) long codes, the pad id past each clip's end."""
        count = self.code_frames(samples)
        audio_lens = batch["audio_lens"].clamp_max(samples)
        if self.codes_field in batch:
            codes = batch[self.codes_field][..., self.level].long()[:, :count]
            lens = batch.get(f"{self.codes_field}_lens", torch.full_like(audio_lens, codes.shape[1]))
        elif self.codec is not None:
            audio = batch["audio"][..., :samples].float()
            audio = audio * lengths_to_mask(audio_lens, audio.shape[-1])[:, None, :]
            audio = F.pad(audio, (0, count * self.code_hop_length - audio.shape[-1]))
            codes = self.codec.encode(audio, self.level + 1)[self.level].long()
            lens = -(-audio_lens // self.code_hop_length)
        else:
            raise ValueError(
                f"the batch has no '{self.codes_field}' and there is no codec to encode its audio"
            )
        codes = F.pad(codes, (0, count - codes.shape[1]), value=self.pad_id)
        valid = lengths_to_mask(lens.to(codes.device).clamp_max(count), count)
        return torch.where(valid, codes, torch.full_like(codes, self.pad_id))

    def alignment(self, code_count: int, frames: int, hop_length: int, device=None) -> torch.Tensor:
        """(frames,) the code frame under each generated frame: frame j (starting or centred at sample
        j * hop_length) reads code frame floor(j * hop_length / code_hop), the last one past the end."""
        index = torch.arange(frames, device=device) * hop_length // self.code_hop_length
        return index.clamp_max(code_count - 1)

    def condition(self, codes: torch.Tensor, *, frames: int, hop_length: int) -> Condition:
        device = self.embedding.weight.device
        states = self.code_layers(self.embedding(codes.to(device)))
        states = states[:, self.alignment(codes.shape[1], frames, hop_length, device)]
        return Condition(frames=self.norm(self.frame_layer(states)))
