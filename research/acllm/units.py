"""SpeechGPT's input: discrete speech units (the tokenizer's RVQ-1 codes, LUISE's k-means labels) read from a
manifest column and added to the LLM's vocabulary as tokens `<unit_i>`, in place of encoder and converter. The
new embedding rows train through peft's `trainable_token_indices` beside LoRA (only those rows: the text
vocabulary stays the LLM's own)."""

from __future__ import annotations

import torch
from torch.nn.utils.rnn import pad_sequence

from research.acllm.speech_llm import PromptTemplate, SpeechLLM


def merge_repeats(units: torch.Tensor, lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) units -> each item's runs of one unit collapsed to one (SpeechGPT's deduplication), re-padded."""
    merged = [
        torch.unique_consecutive(row[:length]) for row, length in zip(units, lens.tolist(), strict=True)
    ]
    return pad_sequence(merged, batch_first=True), torch.tensor(
        [len(row) for row in merged], device=lens.device
    )


class UnitSpeechLLM(SpeechLLM):
    def __init__(
        self,
        *,
        num_units: int,
        llm_dir: str,
        field: str = "units",
        level: int = 0,
        merge_repeated: bool = True,
        template: PromptTemplate | None = None,
        tokens_per_second: float = 20.0,
        max_audio_seconds: float | None = None,
    ):
        super().__init__(
            encoder=None,
            converter=None,
            llm_dir=llm_dir,
            template=template,
            tokens_per_second=tokens_per_second,
            max_audio_seconds=max_audio_seconds,
        )
        self.num_units, self.field, self.level, self.merge_repeated = num_units, field, level, merge_repeated
        self.first_unit = len(self.tokenizer)
        self.tokenizer.add_tokens([f"<unit_{i}>" for i in range(num_units)], special_tokens=True)
        self.add_unit_rows()
        self.suppressed_ids = self.unit_token_ids

    @property
    def unit_token_ids(self) -> list[int]:
        return list(range(self.first_unit, self.first_unit + self.num_units))

    def add_unit_rows(self) -> None:
        """New rows start at the mean text embedding, not at random: the frozen base rows are rebuilt on every
        load (checkpoints leave them out), so they must come out the same each time."""
        self.llm.resize_token_embeddings(len(self.tokenizer), mean_resizing=False)
        with torch.no_grad():
            for table in {self.llm.get_input_embeddings().weight, self.llm.get_output_embeddings().weight}:
                table[self.first_unit :] = table[: self.first_unit].mean(0)

    def embed_speech(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's unit column (B, T) or (B, T, levels) -> embeddings of its unit tokens and lengths."""
        if self.field not in batch:
            raise KeyError(f"the batch has no '{self.field}' column: add it to the datamodule's array_fields")
        units, lens = batch[self.field].long(), batch[f"{self.field}_lens"]
        units = units[..., self.level] if units.dim() == 3 else units
        valid = torch.arange(units.shape[1], device=units.device)[None] < lens[:, None]
        if ((units < 0) | (units >= self.num_units))[valid].any():
            found = int(units[valid].max())
            raise ValueError(
                f"a unit id {found} is outside the {self.num_units} units this model was built for"
            )
        if self.merge_repeated:
            units, lens = merge_repeats(units, lens)
        return self.llm.get_input_embeddings()(units + self.first_unit), lens
