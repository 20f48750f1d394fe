"""The AcLLM against bad input and mismatched parts: unusable items are named and skipped (the loss is that of the
others), adapters export as peft directories and refuse a foreign base, a checkpoint refuses an LLM directory
whose content changed, the converter can train first, and a transformers speech encoder plugs in."""

from __future__ import annotations

import shutil
from functools import partial

import pytest
import torch

from lit_modules.acllm import AcLLMModule
from research.acllm.converter import Converter
from research.acllm.speech_llm import HuggingFaceSpeechEncoder, SpeechLLM
from research.acllm.trainable import load_adapter, save_adapter
from tests.test_acllm_speech_llm import audio_batch, tiny_speech_llm

LORA = {"rank": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}


def module(llm_dir, **kwargs) -> AcLLMModule:
    return AcLLMModule(
        model=tiny_speech_llm(llm_dir), optimizer=partial(torch.optim.AdamW, lr=1e-2), **kwargs
    )


def batch(texts: list[str], lengths=(16000, 9000, 12000)) -> dict:
    audio, lens = audio_batch(lengths)
    return {"audio": audio, "audio_lens": lens, "text": texts, "id": [f"utt{i}" for i in range(len(texts))]}


def test_an_empty_transcript_is_named_skipped_and_left_out_of_the_loss(tiny_llm_dir, caplog):
    lit = module(tiny_llm_dir, recipe="full")
    data = batch(["one two", "", "nine"])
    with caplog.at_level("WARNING"):
        items = lit.usable_items(data)
    assert items.kept == [0, 2] and "skipping utt1: empty transcript" in caplog.text
    keep = torch.tensor([0, 2])
    expected = lit.model(data["audio"][keep], data["audio_lens"][keep], ["one two", "nine"])
    assert torch.allclose(lit.model.loss(items.speech, items.speech_lens, items.targets), expected)


def test_items_longer_than_the_context_or_the_audio_limit_are_skipped_with_the_reason(tiny_llm_dir):
    lit = module(tiny_llm_dir, recipe="full")
    model = lit.model
    speech_lens = model.converter.output_lengths(torch.tensor([25, 25]))  # 1 s at 40 ms -> 7 speech tokens
    targets = [model.transcript_ids("one"), model.transcript_ids(" ".join(["seven"] * 600))]
    reasons = model.over_context(targets, speech_lens)
    assert list(reasons) == [1] and "exceed the LLM's context of 512" in reasons[1]
    model.max_audio_seconds = 0.5
    reasons = model.unusable_input(["one", "one", ""], [0.4, 0.9, 0.1])
    assert reasons == {1: "0.9 s of audio, over max_audio_seconds=0.5", 2: "empty transcript"}


def test_over_long_audio_is_never_encoded(tiny_llm_dir):
    lit = module(tiny_llm_dir, recipe="full")
    lit.model.max_audio_seconds = 0.8
    encoded = []
    encoder_forward = lit.model.encoder.forward
    lit.model.encoder.forward = lambda audio, lens: (
        encoded.append(lens.tolist()) or encoder_forward(audio, lens)
    )
    items = lit.usable_items(batch(["one", "two", "three"]))
    assert items.kept == [1, 2] and encoded == [[9000, 12000]]  # the 1 s item never reached the encoder


def test_a_batch_with_nothing_usable_takes_a_zero_step_connected_to_the_trainable_parameters(tiny_llm_dir):
    lit = module(tiny_llm_dir, recipe="converter_only", lora=None)
    lit.log = lambda *args, **kwargs: None
    loss = lit.training_step(batch(["", " "], lengths=(9000, 9000)), 0)
    loss.backward()
    assert loss.item() == 0 and lit.skipped_in_training == 2
    assert all(p.grad is not None for p in lit.model.converter.parameters())


def test_converter_first_steps_leave_everything_else_untouched(tiny_llm_dir, tmp_path):
    from tests.conftest import fit_on_batch

    lit = module(tiny_llm_dir, recipe="lora", lora=LORA, converter_first_steps=3)
    lora_before = {n: p.detach().clone() for n, p in lit.named_parameters() if "lora_" in n}
    converter_before = lit.model.converter.project.weight.detach().clone()
    data = batch(["one two", "three", "nine"])
    fit_on_batch(lit, data, 3, (), default_root_dir=tmp_path)
    assert all(torch.equal(p, lora_before[n]) for n, p in lit.named_parameters() if "lora_" in n)
    assert not torch.equal(lit.model.converter.project.weight, converter_before)
    lit.hparams.converter_first_steps = 0
    fit_on_batch(lit, data, 2, (), default_root_dir=tmp_path)
    assert any(not torch.equal(p, lora_before[n]) for n, p in lit.named_parameters() if "lora_B" in n)


def other_llm_dir(tiny_llm_dir, tmp_path, *, hidden_size: int, seed: int):
    from transformers import AutoTokenizer

    from research.acllm.text_lm import new_causal_lm

    tokenizer = AutoTokenizer.from_pretrained(tiny_llm_dir)
    torch.manual_seed(seed)
    llm = new_causal_lm(tokenizer, hidden_size=hidden_size, num_layers=2, num_heads=2, intermediate_size=64)
    folder = tmp_path / f"llm_{hidden_size}_{seed}"
    llm.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def lora_model(llm_dir) -> SpeechLLM:
    from research.acllm.trainable import apply_lora

    model = tiny_speech_llm(llm_dir)
    apply_lora(model, **LORA)
    with torch.no_grad():  # a trained adapter: B is no longer zero
        for name, parameter in model.llm.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    return model.eval()


def test_an_exported_adapter_and_merged_llm_reproduce_the_trained_llm(tiny_llm_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = lora_model(tiny_llm_dir)
    exported = save_adapter(model, tmp_path / "export")
    ids = torch.tensor([model.transcript_ids("one two three")])
    expected = model.llm(input_ids=ids).logits
    base = AutoModelForCausalLM.from_pretrained(tiny_llm_dir)
    assert not torch.allclose(base(input_ids=ids).logits, expected, atol=1e-3)  # the adapter matters
    reloaded = PeftModel.from_pretrained(base, exported["adapter"]).eval()
    merged = AutoModelForCausalLM.from_pretrained(exported["merged"]).eval()
    assert torch.allclose(reloaded(input_ids=ids).logits, expected, atol=1e-5)
    assert torch.allclose(merged(input_ids=ids).logits, expected, atol=1e-4)
    continued = tiny_speech_llm(tiny_llm_dir)
    load_adapter(continued, exported["adapter"])
    assert torch.allclose(continued.llm(input_ids=ids).logits, expected, atol=1e-5)
    assert any(p.requires_grad for n, p in continued.llm.named_parameters() if "lora_" in n)


def test_an_adapter_for_another_base_is_refused(tiny_llm_dir, tmp_path):
    exported = save_adapter(lora_model(tiny_llm_dir), tmp_path / "export")
    same_shape = other_llm_dir(tiny_llm_dir, tmp_path, hidden_size=32, seed=7)
    with pytest.raises(ValueError, match="whose content differs from the LLM in"):
        load_adapter(tiny_speech_llm(same_shape), exported["adapter"])
    (exported["adapter"] / "voxlab_base.json").unlink()  # a plain peft directory: shapes still checked
    wider = other_llm_dir(tiny_llm_dir, tmp_path, hidden_size=48, seed=7)
    with pytest.raises(ValueError, match=f"does not fit the LLM in {wider}"):
        load_adapter(tiny_speech_llm(wider), exported["adapter"])
    with pytest.raises(FileNotFoundError, match="adapter_config.json missing"):
        load_adapter(tiny_speech_llm(tiny_llm_dir), tmp_path)


def test_a_checkpoint_refuses_an_llm_directory_whose_content_changed(tiny_llm_dir, tmp_path):
    llm_dir = tmp_path / "llm"
    shutil.copytree(tiny_llm_dir, llm_dir)
    lit = module(llm_dir, recipe="lora", lora=LORA)
    checkpoint = {"state_dict": lit.state_dict()}
    lit.on_save_checkpoint(checkpoint)
    module(llm_dir, recipe="lora", lora=LORA).on_load_checkpoint(dict(checkpoint))  # unchanged: loads
    replacement = other_llm_dir(tiny_llm_dir, tmp_path, hidden_size=32, seed=3)
    shutil.copy(replacement / "model.safetensors", llm_dir / "model.safetensors")
    with pytest.raises(ValueError, match="now holds a different model"):
        module(llm_dir, recipe="lora", lora=LORA).on_load_checkpoint(checkpoint)


def test_a_transformers_speech_encoder_feeds_the_llm_and_trains_under_seed_asr(tiny_hubert_dir, tiny_llm_dir):
    from research.acllm.trainable import set_trainable

    encoder = HuggingFaceSpeechEncoder(model_dir=str(tiny_hubert_dir), layer=None)
    model = SpeechLLM(
        encoder=encoder,
        converter=Converter(input_dim=encoder.dim, output_dim=32, splice=2),
        llm_dir=str(tiny_llm_dir),
    )
    set_trainable(model, "seed_asr")
    audio, lens = audio_batch()
    frames, frame_lens = encoder(audio, lens)
    assert frames.shape[-1] == 32 and frame_lens.tolist() == [
        49,
        27,
    ]  # (n - 400) // 320 + 1: HuBERT's conv stack
    model(audio, lens, ["one", "two"]).backward()
    assert encoder.model.model.encoder.layers[-1].attention.q_proj.weight.grad is not None
    with pytest.raises(FileNotFoundError, match="no transformers speech encoder"):
        HuggingFaceSpeechEncoder(model_dir=str(tiny_llm_dir / "none"))


def test_decoding_continues_exactly_the_prompt_that_training_used(tiny_llm_dir):
    """SLAM-LLM #113 / FunASR #2407: a decode prompt unlike the training one gives refusals and loops."""
    model = tiny_speech_llm(tiny_llm_dir)
    speech, lens = torch.randn(1, 4, 32), torch.tensor([4])
    target = model.transcript_ids("one two")
    trained = model.inputs(speech, lens, [target], left_pad=False)
    decoded = model.inputs(speech, lens, None, left_pad=True)
    prompt = decoded.embeds.shape[1]
    assert torch.equal(trained.embeds[0, :prompt], decoded.embeds[0])
    assert trained.labels[0, :prompt].eq(-100).all() and trained.labels[0, prompt:].tolist() == target


def test_under_full_training_every_trainable_parameter_gets_a_gradient(tiny_llm_dir, tiny_hubert_dir):
    """DDP (find_unused_parameters off) stops at a trainable parameter the loss never reaches: layers above
    the one read, or HuBERT's SpecAugment embedding in an encoder that runs in eval mode."""
    from research.acllm.trainable import set_trainable

    voxlab = tiny_speech_llm(tiny_llm_dir)  # reads layer 1 of 2: the layer above is dropped
    assert voxlab.encoder.encoder.num_layers == 1
    hubert = HuggingFaceSpeechEncoder(model_dir=str(tiny_hubert_dir))
    hf = SpeechLLM(
        encoder=hubert,
        converter=Converter(input_dim=hubert.dim, output_dim=32, splice=2),
        llm_dir=str(tiny_llm_dir),
    )
    audio, lens = audio_batch()
    for model in (voxlab, hf):
        set_trainable(model, "full")
        model.train()(audio, lens, ["one", "two"]).backward()
        missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
        assert not missing
