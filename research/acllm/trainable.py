"""Which parts of a speech LLM train: NeMo-style regular expressions over parameter names, recipes that name
them, and peft LoRA on the LLM. A recipe lists the patterns whose parameters train; everything else is frozen."""

from __future__ import annotations

import re
from collections import Counter

from torch import nn

RECIPES = {
    "converter_only": [r"^converter\."],  # SLAM-LLM's LibriSpeech recipe: encoder and LLM frozen
    "seed_asr": [r"^encoder\.", r"^converter\."],  # Seed-ASR's SFT: LLM frozen
    "lora": [r"^converter\.", r"\.lora_"],  # converter and LoRA adapters (NeMo keeps `lora_` trainable)
    "full": [r".*"],
}


def apply_lora(
    model: nn.Module,
    *,
    rank: int = 8,
    alpha: int = 32,
    dropout: float = 0.05,
    target_modules: tuple[str, ...] = ("q_proj", "v_proj"),
) -> None:
    """Wrap `model.llm` in peft LoRA adapters (SLAM-LLM's defaults: r 8, alpha 32, q_proj/v_proj, dropout 0.05)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=list(target_modules),
        task_type="CAUSAL_LM",
    )
    model.llm = get_peft_model(model.llm, config)


def set_trainable(model: nn.Module, patterns: list[str] | str) -> dict[str, dict[str, int]]:
    """Train exactly the parameters whose names match one of `patterns` (a list, or a recipe name); returns
    {part: {"trainable": n, "total": n}} per top-level part (encoder, converter, llm)."""
    patterns = RECIPES[patterns] if isinstance(patterns, str) else patterns
    compiled = [re.compile(p) for p in patterns]
    counts: dict[str, Counter] = {}
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(any(p.search(name) for p in compiled))
        part = counts.setdefault(name.split(".")[0], Counter())
        part["total"] += parameter.numel()
        part["trainable"] += parameter.numel() if parameter.requires_grad else 0
    if not any(part["trainable"] for part in counts.values()):
        raise ValueError(f"no parameter matches {patterns}: nothing would train")
    return {name: dict(part) for name, part in counts.items()}
