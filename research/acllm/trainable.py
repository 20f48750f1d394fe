"""Which parts of a speech LLM train: NeMo-style regular expressions over parameter names, recipes that name
them, and peft LoRA on the LLM. A recipe lists the patterns whose parameters train; everything else is frozen."""

from __future__ import annotations

import copy
import json
import re
from collections import Counter
from pathlib import Path

from torch import nn

BASE_RECORD = (
    "voxlab_base.json"  # beside peft's files: the digest of the LLM directory the adapter was trained on
)

RECIPES = {
    "converter_only": [r"^converter\."],  # SLAM-LLM's LibriSpeech recipe: encoder and LLM frozen
    "seed_asr": [r"^encoder\.", r"^converter\."],  # Seed-ASR's SFT: LLM frozen
    # converter, LoRA adapters (NeMo keeps `lora_` trainable) and new token rows (the unit variant's)
    "lora": [r"^converter\.", r"\.lora_", r"\.trainable_tokens_"],
    "full": [r".*"],
}


def apply_lora(
    model: nn.Module,
    *,
    rank: int = 8,
    alpha: int = 32,
    dropout: float = 0.05,
    target_modules: tuple[str, ...] = ("q_proj", "v_proj"),
    trainable_tokens: list[int] | None = None,
) -> None:
    """Wrap `model.llm` in peft LoRA adapters (SLAM-LLM's defaults: r 8, alpha 32, q_proj/v_proj, dropout 0.05);
    `trainable_tokens`: input-embedding rows that train too (peft's trainable_token_indices)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=list(target_modules),
        task_type="CAUSAL_LM",
        trainable_token_indices=trainable_tokens,
    )
    model.llm = get_peft_model(model.llm, config)


def save_adapter(model: nn.Module, folder: str | Path) -> dict[str, Path]:
    """`adapter/`: peft's adapter directory (`PeftModel.from_pretrained(base, dir)`), with the digest of its
    base LLM; `merged/`: the LLM with the adapter folded in, and its tokenizer (`AutoModelForCausalLM`)."""
    folder = Path(folder)
    adapter, merged = folder / "adapter", folder / "merged"
    model.llm.save_pretrained(adapter)
    record = {"llm_dir": model.llm_dir, "llm_digest": model.llm_digest}
    (adapter / BASE_RECORD).write_text(json.dumps(record, indent=2))
    copy.deepcopy(model.llm).merge_and_unload().save_pretrained(merged)
    model.tokenizer.save_pretrained(merged)
    return {"adapter": adapter, "merged": merged}


def load_adapter(model: nn.Module, adapter_dir: str | Path) -> None:
    """Wrap `model.llm` in the trainable adapter saved in `adapter_dir`, refusing one trained on another base:
    a recorded digest that differs, or weights whose shapes do not fit."""
    from peft import PeftModel

    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise FileNotFoundError(f"no peft adapter in {adapter_dir} (adapter_config.json missing)")
    record = adapter_dir / BASE_RECORD
    if record.is_file() and json.loads(record.read_text())["llm_digest"] != model.llm_digest:
        base = json.loads(record.read_text())["llm_dir"]
        raise ValueError(
            f"the adapter in {adapter_dir} was trained on the LLM in {base}, whose content differs from "
            f"the LLM in {model.llm_dir}"
        )
    try:
        model.llm = PeftModel.from_pretrained(model.llm, str(adapter_dir), is_trainable=True)
    except (RuntimeError, ValueError, KeyError) as error:
        first_line = str(error).strip().splitlines()[0]
        raise ValueError(
            f"the adapter in {adapter_dir} does not fit the LLM in {model.llm_dir}: {first_line}"
        ) from error


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
