"""Context in the speech LLM's prompt, teacher-forced sequence log-probabilities, and Seed-ASR's joint beam search:
each checked against a computation by hand or against the decoding it must reduce to."""

from __future__ import annotations

import math

import pytest
import torch

from research.acllm.joint_decoding import JointContextScores
from research.acllm.speech_llm import PromptTemplate
from tests.test_acllm_speech_llm import audio_batch, tiny_speech_llm


def test_the_context_goes_before_the_speech_and_an_empty_one_leaves_the_plain_prompt():
    template = PromptTemplate()
    assert template.around_speech("") == template.around_speech()
    before, after = template.around_speech("seven two, four")
    assert before == "USER: Context: seven two, four\n" and after == template.around_speech()[1]
    with pytest.raises(ValueError, match="no \\{context\\}"):
        PromptTemplate(text="USER: <speech>{instruction}").around_speech("seven")


def test_inputs_hold_each_items_context(tiny_llm_dir):
    model = tiny_speech_llm(tiny_llm_dir)
    speech, lens = torch.randn(2, 4, 32), torch.tensor([4, 4])
    plain = model.inputs(speech, lens, None, left_pad=False)
    mixed = model.inputs(speech, lens, None, left_pad=False, contexts=["seven two", ""])
    context_ids = model.before_speech("seven two")
    assert len(context_ids) > len(model.before_ids)
    embed = model.llm.get_input_embeddings()
    assert torch.equal(mixed.embeds[0, : len(context_ids)], embed(context_ids))
    width = int(plain.attention_mask[1].sum())  # the item without a context is exactly the plain prompt
    assert torch.equal(mixed.embeds[1, :width], plain.embeds[1, :width])
    assert model.over_context([[1] * 500], torch.tensor([4]), ["seven " * 10]) and not model.over_context(
        [[1] * 400], torch.tensor([4])
    )


def test_sequence_logprobs_are_the_summed_token_logprobs_with_gradient(tiny_llm_dir):
    model = tiny_speech_llm(tiny_llm_dir)
    audio, lens = audio_batch()
    speech, speech_lens = model.speech_embeddings(audio, lens)
    targets = [model.transcript_ids("one two"), model.transcript_ids("nine")]
    sums, counts = model.sequence_logprobs(speech, speech_lens, targets, ["three", ""])
    assert counts.tolist() == [len(t) for t in targets]
    for row in range(2):  # by hand: the mean CE of one item alone, times its token count
        alone = model.loss(
            speech[row : row + 1], speech_lens[row : row + 1], [targets[row]], [["three", ""][row]]
        )
        torch.testing.assert_close(sums[row], -alone * len(targets[row]))
    sums.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.converter.parameters())


def test_decoded_scores_equal_teacher_forced_logprobs_of_the_decoded_tokens(tiny_llm_dir):
    model = tiny_speech_llm(tiny_llm_dir)
    audio, lens = audio_batch()
    speech, speech_lens = model.speech_embeddings(audio, lens)
    contexts = ["one two", "five"]
    nbest = model.decode_hypotheses(
        speech, speech_lens, beams=3, nbest=3, max_new_tokens=6, contexts=contexts
    )
    for item, hypotheses in enumerate(nbest):
        for hypothesis in hypotheses:
            ended = len(hypothesis.ids) < 6  # beam search ended it with EOS, whose log-prob the score holds
            target = hypothesis.ids + ([model.tokenizer.eos_token_id] if ended else [])
            forced, _ = model.sequence_logprobs(
                speech[item : item + 1], speech_lens[item : item + 1], [target], [contexts[item]]
            )
            assert forced.item() == pytest.approx(hypothesis.score, abs=1e-4)


def test_the_joint_score_mixes_both_prompts_probabilities_by_hand(tiny_llm_dir):
    model = tiny_speech_llm(tiny_llm_dir)
    speech, lens = torch.randn(1, 3, 32), torch.tensor([3])
    free = model.inputs(speech, lens, None, left_pad=True)
    context = model.inputs(speech, lens, None, left_pad=True, contexts=["eight"])
    generated = torch.tensor([[model.token_ids(" one")[0]]])
    with torch.no_grad():

        def next_logprobs(prompt):
            embeds = torch.cat([prompt.embeds, model.llm.get_input_embeddings()(generated)], 1)
            return model.llm(inputs_embeds=embeds).logits[0, -1].log_softmax(-1)

        p_free, p_context = next_logprobs(free).exp(), next_logprobs(context).exp()
        alpha = 3.0
        joint = JointContextScores(
            model.llm, free.embeds, free.attention_mask, context_weight=alpha, prune_top_k=None, beams=1
        )(generated, p_context.log()[None])
        expected = (alpha / (1 + alpha) * p_context + 1 / (1 + alpha) * p_free).log()
        torch.testing.assert_close(joint[0], expected, atol=1e-5, rtol=1e-5)
        pruned = JointContextScores(
            model.llm, free.embeds, free.attention_mask, context_weight=alpha, prune_top_k=2, beams=1
        )(generated, p_context.log()[None])
    kept = torch.isfinite(pruned[0]).nonzero()[:, 0]
    assert set(kept.tolist()) == set(p_free.topk(2).indices.tolist())  # the context-free model's top 2 only


def test_joint_search_reduces_to_context_free_decoding_at_alpha_zero_and_with_top1_pruning(tiny_llm_dir):
    model = tiny_speech_llm(tiny_llm_dir)
    audio, lens = audio_batch()
    speech, speech_lens = model.speech_embeddings(audio, lens)
    options = {"max_new_tokens": 5}
    free = model.decode(speech, speech_lens, beams=2, nbest=2, **options)
    contexts = ["one one one", "two"]
    alpha_zero = model.decode(
        speech, speech_lens, beams=2, nbest=2, contexts=contexts, context_weight=0.0, **options
    )
    assert [[t for t, _ in item] for item in alpha_zero] == [[t for t, _ in item] for item in free]
    for got, want in zip(alpha_zero, free, strict=True):
        assert [s for _, s in got] == pytest.approx([s for _, s in want], abs=1e-4)
    greedy_free = model.decode(speech, speech_lens, beams=1, nbest=1, **options)
    top1 = model.decode(
        speech,
        speech_lens,
        beams=1,
        nbest=1,
        contexts=contexts,
        context_weight=100.0,
        prune_top_k=1,
        **options,
    )
    assert [item[0][0] for item in top1] == [item[0][0] for item in greedy_free]
    with pytest.raises(ValueError, match="needs contexts"):
        model.decode(speech, speech_lens, beams=1, nbest=1, context_weight=1.0, **options)
    with pytest.raises(
        ValueError, match="must be >= beams"
    ):  # else transformers pads the beam with -1e9 rows
        model.decode(
            speech,
            speech_lens,
            beams=4,
            nbest=1,
            contexts=contexts,
            context_weight=1.0,
            prune_top_k=2,
            **options,
        )
    assert math.isfinite(top1[0][0][1])


def test_the_joint_search_keeps_suppressed_tokens_out_and_scores_greedy_as_beam_search(tiny_llm_dir):
    model = tiny_speech_llm(tiny_llm_dir)
    audio, lens = audio_batch()
    speech, speech_lens = model.speech_embeddings(audio, lens)
    contexts, options = ["one two", "five"], {"max_new_tokens": 5, "context_weight": 1.0, "prune_top_k": 3}
    greedy = model.decode_hypotheses(speech, speech_lens, beams=1, nbest=1, contexts=contexts, **options)
    model.suppressed_ids = sorted({i for item in greedy for h in item for i in h.ids})
    again = model.decode_hypotheses(speech, speech_lens, beams=2, nbest=2, contexts=contexts, **options)
    assert not {i for item in again for h in item for i in h.ids} & set(model.suppressed_ids)
    model.suppressed_ids = []
    beam = model.decode_hypotheses(speech, speech_lens, beams=3, nbest=3, contexts=contexts, **options)
    for item in range(2):  # the joint score of the same tokens does not depend on the search that found them
        found = [h for h in beam[item] if h.ids == greedy[item][0].ids]
        if found:
            assert found[0].score == pytest.approx(greedy[item][0].score, abs=1e-4)
