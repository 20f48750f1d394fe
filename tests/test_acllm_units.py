"""The unit-input variant (SpeechGPT): units become LLM tokens whose rows alone train beside LoRA; the text
vocabulary is untouched, decoding never emits a unit, and a reloaded model decodes the same."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from lit_modules.acllm import AcLLMModule
from research.acllm.units import UnitSpeechLLM, merge_repeats

LORA = {"rank": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}


def unit_module(llm_dir, seed: int = 0, **kwargs) -> AcLLMModule:
    torch.manual_seed(seed)
    model = UnitSpeechLLM(num_units=12, llm_dir=str(llm_dir), field="codes", tokens_per_second=4, **kwargs)
    return AcLLMModule(model=model, optimizer=partial(torch.optim.AdamW, lr=3e-2), recipe="lora", lora=LORA)


def unit_batch() -> dict:
    codes = torch.tensor(
        [[[3, 9], [3, 1], [5, 1], [5, 2], [7, 0]], [[11, 4], [2, 4], [2, 4], [0, 0], [0, 0]]]
    )
    return {
        "codes": codes,
        "codes_lens": torch.tensor([5, 3]),
        "audio": torch.zeros(2, 1, 16000),
        "audio_lens": torch.tensor([16000, 12000]),
        "text": ["three five seven", "nine two"],
        "id": ["a", "b"],
    }


def test_merge_repeats_collapses_runs_within_each_item_only():
    units, lens = merge_repeats(torch.tensor([[4, 4, 1, 1, 4, 0], [2, 2, 2, 9, 9, 9]]), torch.tensor([5, 3]))
    assert lens.tolist() == [3, 1] and units.tolist() == [[4, 1, 4], [2, 0, 0]]


def test_units_become_tokens_read_at_the_chosen_level(tiny_llm_dir):
    model = unit_module(tiny_llm_dir).model
    text_vocabulary = model.first_unit
    assert len(model.tokenizer) == text_vocabulary + 12
    assert model.tokenizer.convert_tokens_to_ids("<unit_3>") == text_vocabulary + 3
    embeddings, lens = model.embed_speech(unit_batch())
    table = model.llm.get_input_embeddings()
    assert lens.tolist() == [3, 2]  # level 0: 3 3 5 5 7 -> 3 5 7; 11 2 2 -> 11 2
    expected = table(torch.tensor([3, 5, 7]) + text_vocabulary)
    assert torch.equal(embeddings[0], expected)
    bad = {**unit_batch(), "codes": unit_batch()["codes"] + 12}
    with pytest.raises(ValueError, match="outside the 12 units"):
        model.embed_speech(bad)
    with pytest.raises(KeyError, match="add it to the datamodule's array_fields"):
        model.embed_speech({"audio": None})


def test_only_unit_rows_and_adapters_train_and_the_loss_falls(tiny_llm_dir, tmp_path):
    from tests.conftest import fit_on_batch

    lit = unit_module(tiny_llm_dir)
    trainable = [name for name, p in lit.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n or ".trainable_tokens_" in n for n in trainable)
    table = lit.model.llm.get_input_embeddings()
    text_ids = torch.arange(lit.model.first_unit)
    text_rows = table(text_ids).detach().clone()
    unit_ids = torch.tensor(lit.model.unit_token_ids)
    unit_rows = table(unit_ids).detach().clone()
    history = fit_on_batch(lit, unit_batch(), 25, ("train/loss",), default_root_dir=tmp_path)
    losses = history.values["train/loss"]
    assert losses[-1] < losses[0] - 0.2  # measured 5.76 -> 5.34 (q/v adapters of a 2-layer LM move slowly)
    assert torch.equal(table(text_ids), text_rows)  # the text vocabulary is the LLM's own
    assert not torch.equal(table(unit_ids), unit_rows)
    decoded = []  # the token ids decoding produced (units would vanish from the text: special tokens)
    batch_decode = lit.model.tokenizer.batch_decode
    lit.model.tokenizer.batch_decode = lambda ids, **kw: decoded.append(ids) or batch_decode(ids, **kw)
    for beams in (1, 2):
        lit.model.decode(*lit.model.embed_speech(unit_batch()), beams=beams, nbest=1, max_new_tokens=6)
    assert len(decoded) == 2 and all(int(ids.max()) < lit.model.first_unit for ids in decoded)


def test_a_reloaded_unit_model_decodes_identically(tiny_llm_dir, tmp_path):
    from tests.conftest import fit_on_batch

    lit = unit_module(tiny_llm_dir)
    fit_on_batch(lit, unit_batch(), 10, (), default_root_dir=tmp_path)
    lit.eval()
    checkpoint = {"state_dict": lit.state_dict()}
    lit.on_save_checkpoint(checkpoint)
    assert not any("embed_tokens.token_adapter.base_layer" in k for k in checkpoint["state_dict"])
    reloaded = unit_module(tiny_llm_dir, seed=123)  # another seed: the new rows must not depend on it
    reloaded.on_load_checkpoint(checkpoint)
    reloaded.load_state_dict(checkpoint["state_dict"])
    reloaded.eval()
    speech = lit.model.embed_speech(unit_batch())
    again = reloaded.model.embed_speech(unit_batch())
    assert torch.equal(speech[0], again[0])
    decode = partial(lit.model.decode, beams=2, nbest=2, max_new_tokens=6)
    assert decode(*speech) == reloaded.model.decode(*again, beams=2, nbest=2, max_new_tokens=6)
