"""The speech LLM on a tiny Llama-style LM and a tiny Conformer: prompt assembly, the transcript-only loss by hand,
and N-best decoding (scores against teacher forcing, batched against one by one)."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from research.acllm.converter import Converter
from research.acllm.speech_llm import IGNORE, PromptTemplate, SpeechEncoder, SpeechLLM
from research.encoder import ConformerEncoder


def tiny_speech_llm(llm_dir, **kwargs) -> SpeechLLM:
    torch.manual_seed(0)
    encoder = ConformerEncoder(d_model=16, num_layers=2, num_heads=2, ffn_dim=32, subsampling_channels=4)
    return SpeechLLM(
        encoder=SpeechEncoder(encoder=encoder, layer=1),
        converter=Converter(input_dim=16, output_dim=32, splice=4),
        llm_dir=str(llm_dir),
        **kwargs,
    ).eval()


def audio_batch(lengths=(16000, 9000)) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    audio = torch.zeros(len(lengths), 1, max(lengths))
    for row, n in enumerate(lengths):
        audio[row, 0, :n] = torch.randn(n, generator=generator) * 0.1
    return audio, torch.tensor(lengths)


def test_template_splits_around_the_speech_once():
    assert PromptTemplate().around_speech() == ("USER: ", "Transcribe speech to text.\n ASSISTANT:")
    with pytest.raises(ValueError, match="exactly once"):
        PromptTemplate(text="USER: {instruction}").around_speech()


def test_a_missing_llm_directory_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "none")):
        tiny_speech_llm(tmp_path / "none")


def test_only_transcript_tokens_carry_labels_and_padding_sides(tiny_llm_dir):
    model = tiny_speech_llm(tiny_llm_dir)
    speech = torch.randn(2, 5, 32)
    targets = [model.transcript_ids("one two"), model.transcript_ids("nine")]
    batch = model.inputs(speech, torch.tensor([5, 3]), targets, left_pad=False)
    prompt = len(model.before_ids) + len(model.after_ids)
    for row, (frames, target) in enumerate(zip([5, 3], targets, strict=True)):
        labelled = batch.labels[row][batch.labels[row] != IGNORE]
        assert labelled.tolist() == target and target[-1] == model.tokenizer.eos_token_id
        assert int(batch.attention_mask[row].sum()) == prompt + frames + len(target)
        assert batch.labels[row, prompt + frames : prompt + frames + len(target)].tolist() == target
    embedded_speech = batch.embeds[1, len(model.before_ids) : len(model.before_ids) + 3]
    assert torch.equal(embedded_speech, speech[1, :3])  # the item's valid speech frames, in order
    left = model.inputs(speech, torch.tensor([5, 3]), None, left_pad=True)
    assert (
        left.labels is None
        and left.attention_mask[1, :2].tolist() == [0, 0]
        and left.attention_mask[:, -1].all()
    )


def test_loss_is_the_mean_cross_entropy_of_transcript_tokens_by_hand(tiny_llm_dir):
    model = tiny_speech_llm(tiny_llm_dir)
    audio, lens = audio_batch()
    texts = ["seven one", "zero"]
    loss = model(audio, lens, texts)
    speech, speech_lens = model.speech_embeddings(audio, lens)
    total, count = 0.0, 0
    for row, text in enumerate(texts):
        target = model.transcript_ids(text)
        alone = model.inputs(speech[row : row + 1], speech_lens[row : row + 1], [target], left_pad=False)
        logits = model.llm(inputs_embeds=alone.embeds).logits[0]
        start = alone.embeds.shape[1] - len(target)  # the transcript is predicted from the position before it
        total += F.cross_entropy(logits[start - 1 : -1], torch.tensor(target), reduction="sum")
        count += len(target)
    assert torch.allclose(loss, total / count, atol=1e-5)
    loss.backward()
    assert model.converter.project.weight.grad.abs().sum() > 0  # the audio path is trained through the LLM


@pytest.mark.parametrize("beams", [1, 3])
def test_nbest_scores_are_teacher_forced_log_probabilities_and_batching_changes_nothing(tiny_llm_dir, beams):
    """Decoding from given speech embeddings: an item's N-best is the same alone and left-padded in a batch
    (that the encoder's frames are too is tests/test_ctc.py's)."""
    model = tiny_speech_llm(tiny_llm_dir)
    torch.manual_seed(3)
    speech, speech_lens = torch.randn(2, 7, 32) * 3, torch.tensor([7, 4])
    nbest, bound = min(beams, 2), 6
    batched = model.decode(speech, speech_lens, beams=beams, nbest=nbest, max_new_tokens=bound)
    assert len(batched) == 2 and all(len(item) == nbest for item in batched)
    for row in range(2):
        one = (speech[row : row + 1, : speech_lens[row]], speech_lens[row : row + 1])
        alone = model.decode(*one, beams=beams, nbest=nbest, max_new_tokens=bound)
        assert [h[0] for h in alone[0]] == [h[0] for h in batched[row]]
        assert [h[1] for h in alone[0]] == pytest.approx([h[1] for h in batched[row]], abs=1e-3)
        scores = [h[1] for h in batched[row]]
        assert scores == sorted(scores, reverse=True)
    # the best hypothesis' score is the sum of its tokens' log-probabilities under teacher forcing
    text, score = batched[1][0]
    eos = model.tokenizer.eos_token_id
    prompt = model.inputs(speech[1:, :4], speech_lens[1:], None, left_pad=False).embeds
    generated = model.llm.generate(
        inputs_embeds=prompt, max_new_tokens=bound, num_beams=beams, do_sample=False, length_penalty=0.0,
        eos_token_id=eos, pad_token_id=eos,
    )[0].tolist()  # fmt: skip
    generated = generated[: generated.index(eos) + 1] if eos in generated else generated
    assert len(generated) <= bound
    embeds = torch.cat([prompt[0], model.llm.get_input_embeddings()(torch.tensor(generated))])
    log_probs = model.llm(inputs_embeds=embeds[None]).logits[0].log_softmax(-1)
    forced = sum(float(log_probs[prompt.shape[1] - 1 + i, token]) for i, token in enumerate(generated))
    assert model.tokenizer.decode(generated, skip_special_tokens=True).strip() == text
    assert score == pytest.approx(forced, abs=1e-3)


def test_transcription_is_bounded_by_the_longest_item_of_the_batch(tiny_llm_dir):
    model = tiny_speech_llm(tiny_llm_dir, tokens_per_second=4.0)
    audio, lens = audio_batch((16000, 8000))
    generate, configs = model.llm.generate, []

    def recording(**kwargs):
        configs.append(kwargs["generation_config"])
        return generate(**kwargs)

    model.llm.generate = recording
    model.transcribe(audio, lens, beams=2, nbest=2)
    (config,) = configs
    assert config.max_new_tokens == 4 * 1 + 2  # 4 tokens per second of the 1 s item, plus room for EOS
    # settings a model directory ships (Qwen2.5-Instruct: repetition penalty 1.05) never change the decoding
    plain = model.transcribe(audio, lens, beams=2, nbest=2)
    model.llm.generation_config.repetition_penalty = 3.0
    model.llm.generation_config.no_repeat_ngram_size = 1
    assert model.transcribe(audio, lens, beams=2, nbest=2) == plain


def test_nbest_cannot_exceed_beams(tiny_llm_dir):
    model = tiny_speech_llm(tiny_llm_dir)
    with pytest.raises(ValueError, match="nbest"):
        model.transcribe(*audio_batch(), beams=2, nbest=3)


@pytest.mark.parametrize(
    ("recipe", "trains"),
    [
        ("converter_only", {"converter"}),
        ("seed_asr", {"encoder", "converter"}),
        ("full", {"encoder", "converter", "llm"}),
    ],
)
def test_recipes_train_exactly_their_parts(tiny_llm_dir, recipe, trains):
    from research.acllm.trainable import set_trainable

    model = tiny_speech_llm(tiny_llm_dir)
    counts = set_trainable(model, recipe)
    assert {part for part, count in counts.items() if count["trainable"]} == trains
    assert all(count["trainable"] in (0, count["total"]) for count in counts.values())


def test_lora_trains_adapters_and_converter_only_and_starts_as_the_base_model(tiny_llm_dir):
    from research.acllm.trainable import apply_lora, set_trainable

    model = tiny_speech_llm(tiny_llm_dir)
    audio, lens = audio_batch()
    before = model(audio, lens, ["one two", "three"])
    apply_lora(model, rank=4, alpha=8, dropout=0.0)
    counts = set_trainable(model, "lora")
    assert torch.allclose(model(audio, lens, ["one two", "three"]), before)  # LoRA B starts at zero
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(name.startswith("converter.") or ".lora_" in name for name in trainable)
    assert any("q_proj.lora_A" in name for name in trainable) and any(
        "v_proj.lora_B" in name for name in trainable
    )
    assert (
        counts["encoder"]["trainable"] == 0 and 0 < counts["llm"]["trainable"] < 0.1 * counts["llm"]["total"]
    )
    model(audio, lens, ["one two", "three"]).backward()
    assert all(p.grad is None for name, p in model.named_parameters() if not p.requires_grad)


def test_a_pattern_that_matches_nothing_is_refused(tiny_llm_dir):
    from research.acllm.trainable import set_trainable

    with pytest.raises(ValueError, match="nothing would train"):
        set_trainable(tiny_speech_llm(tiny_llm_dir), [r"^decoder\."])
