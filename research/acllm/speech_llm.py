"""The speech LLM: a speech encoder's frames, spliced and projected by the converter, placed into a causal LM's
input embeddings by one prompt template that training and decoding share; the loss covers the transcript tokens
only. The LLM is any transformers causal LM directory (`AutoModelForCausalLM.from_pretrained(dir)`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, LogitsProcessorList

from research.acllm.converter import Converter
from research.acllm.joint_decoding import JointContextScores
from research.digest import file_digest
from research.encoder import ConformerEncoder
from research.tokenizer.teachers import HuggingFaceTeacher, check_layer, select_layer

IGNORE = -100  # label of positions that carry no loss (prompt, speech, padding)


@dataclass(frozen=True)
class PromptTemplate:
    """SLAM-LLM's template by default. Training appends the transcript and EOS after it; decoding continues from
    it: one template object serves both, so they cannot drift apart (the refusals and loops users report)."""

    text: str = "USER: {context}<speech>{instruction}\n ASSISTANT:"
    instruction: str = "Transcribe speech to text."
    speech: str = "<speech>"
    # Seed-ASR's context SFT: a context (hotwords, dialogue history) goes before the speech; without one the
    # prompt is exactly the context-free template
    context_format: str = "Context: {context}\n"

    def around_speech(self, context: str = "") -> tuple[str, str]:
        """(text before the speech embeddings, text after them), with `context` filled in when not empty."""
        if context and "{context}" not in self.text:
            raise ValueError(f"a context was given but the template has no {{context}}: {self.text!r}")
        filled = self.text.replace("{instruction}", self.instruction).replace(
            "{context}", self.context_format.replace("{context}", context) if context else ""
        )
        if filled.count(self.speech) != 1:
            raise ValueError(f"the template must hold {self.speech!r} exactly once: {self.text!r}")
        before, after = filled.split(self.speech)
        return before, after


class SpeechEncoder(nn.Module):
    """A voxlab speech encoder (CTC recogniser's or LUISE's) read at one layer: `layer=None` is its output."""

    def __init__(self, *, encoder: ConformerEncoder, layer: int | str | None = None):
        super().__init__()
        self.encoder = encoder
        self.layer = None if layer is None else check_layer(layer, encoder.num_layers)
        self.dim = encoder.d_model
        if isinstance(self.layer, int):  # layers above the one read would get no gradient (DDP refuses that)
            del encoder.conformer.conformer_layers[self.layer :]

    def forward(self, audio: torch.Tensor, lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.encoder(audio, lens, output_layers=self.layer is not None)
        frames = out.hidden if self.layer is None else select_layer(out.layers, self.layer)
        return frames, out.lens


class HuggingFaceSpeechEncoder(nn.Module):
    """A transformers HuBERT / WavLM / wav2vec2 directory read at one layer (`layer=None`: its last). It runs
    without dropout, as the distillation teacher does, also under a recipe that trains it."""

    def __init__(self, *, model_dir: str, layer: int | str | None = None, sample_rate: int = 16000):
        super().__init__()
        if not (Path(model_dir) / "config.json").is_file():
            raise FileNotFoundError(f"no transformers speech encoder in {model_dir} (config.json missing)")
        from transformers import AutoConfig

        last = AutoConfig.from_pretrained(model_dir).num_hidden_layers
        self.model = HuggingFaceTeacher(
            model_dir=model_dir, layer=last if layer is None else layer, sample_rate=sample_rate
        )
        self.dim = self.model.dim
        # only SpecAugment in training mode reads it, and this encoder always runs in eval mode: as a trainable
        # parameter without a gradient it would stop DDP
        if getattr(self.model.model, "masked_spec_embed", None) is not None:
            self.model.model.masked_spec_embed = None

    def forward(self, audio: torch.Tensor, lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.encode_with_grad(audio, lens)


class Hypothesis(NamedTuple):
    text: str
    score: float  # sequence log-probability, EOS included when it was generated
    ids: list[int]  # generated tokens before EOS
    ended: bool  # EOS was generated (else the length bound cut the hypothesis)


@dataclass
class LLMInputs:
    embeds: torch.Tensor  # (B, L, d_llm)
    attention_mask: torch.Tensor  # (B, L)
    labels: torch.Tensor | None  # (B, L), IGNORE outside the transcript tokens


class SpeechLLM(nn.Module):
    def __init__(
        self,
        *,
        encoder: nn.Module,
        converter: Converter,
        llm_dir: str,
        template: PromptTemplate | None = None,
        tokens_per_second: float = 20.0,
        max_audio_seconds: float | None = None,
    ):
        super().__init__()
        if not (Path(llm_dir) / "config.json").is_file():
            raise FileNotFoundError(
                f"no transformers causal LM in {llm_dir} (config.json missing): set model.model.llm_dir to a "
                "directory written by save_pretrained (e.g. a text_lm run's hf/ folder)"
            )
        self.encoder, self.converter = encoder, converter
        self.llm_dir = str(llm_dir)
        # checkpoints leave the frozen LLM out: the digest tells a reload whether the directory still holds it
        self.llm_digest = file_digest(llm_dir)
        self.max_audio_seconds = max_audio_seconds
        self.suppressed_ids: list[int] = []  # tokens decoding never emits (the unit variant's units)
        # fp32 weights whatever the directory stores (Qwen2.5 saves bf16): the trainer's precision decides the
        # compute, and AdamW never updates bf16 weights without a master copy. from_pretrained gives eval mode.
        self.llm = AutoModelForCausalLM.from_pretrained(llm_dir, dtype=torch.float32).train()
        self.tokenizer = AutoTokenizer.from_pretrained(llm_dir)
        if self.tokenizer.eos_token_id is None:
            raise ValueError(f"the tokenizer in {llm_dir} has no EOS token: transcripts could not end")
        self.template = template or PromptTemplate()
        self.tokens_per_second = tokens_per_second
        before, after = self.template.around_speech()
        self.register_buffer("before_ids", torch.tensor(self.prompt_start(before)), persistent=False)
        self.register_buffer("after_ids", torch.tensor(self.token_ids(after)), persistent=False)

    def token_ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def prompt_start(self, before: str) -> list[int]:
        bos = [self.tokenizer.bos_token_id] if self.tokenizer.bos_token_id is not None else []
        return bos + self.token_ids(before)

    def before_speech(self, context: str | None) -> torch.Tensor:
        """Token ids of the prompt before the speech, with the context when there is one."""
        if not context:
            return self.before_ids
        ids = self.prompt_start(self.template.around_speech(context)[0])
        return torch.tensor(ids, dtype=torch.long, device=self.before_ids.device)

    def transcript_ids(self, text: str) -> list[int]:
        return [*self.token_ids(text), self.tokenizer.eos_token_id]

    def speech_embeddings(self, audio: torch.Tensor, lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        frames, frame_lens = self.encoder(audio, lens)
        return self.converter(frames, frame_lens)

    def embed_speech(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L, d_llm) speech embeddings and their lengths from a datamodule batch."""
        return self.speech_embeddings(batch["audio"], batch["audio_lens"])

    def inputs(
        self,
        speech: torch.Tensor,
        speech_lens: torch.Tensor,
        targets: list[list[int]] | None,
        *,
        left_pad: bool,
        contexts: list[str] | None = None,
    ) -> LLMInputs:
        """Per item: template before the speech (with the item's context, if any), its valid speech embeddings,
        template after, then (training) the transcript tokens + EOS; padded on the right for training, on the
        left for generation."""
        embed = self.llm.get_input_embeddings()
        after = embed(self.after_ids)
        rows, labels = [], []
        for index, length in enumerate(speech_lens.tolist()):
            before = embed(self.before_speech(contexts[index] if contexts else None))
            target = torch.tensor(targets[index] if targets else [], dtype=torch.long, device=speech.device)
            rows.append(torch.cat([before, speech[index, :length].to(before.dtype), after, embed(target)]))
            prompt = len(before) + length + len(after)
            labels.append(torch.cat([torch.full((prompt,), IGNORE, device=speech.device), target]))
        width = max(len(row) for row in rows)
        embeds = speech.new_zeros(len(rows), width, after.shape[-1], dtype=after.dtype)
        mask = torch.zeros(len(rows), width, dtype=torch.long, device=speech.device)
        padded_labels = torch.full((len(rows), width), IGNORE, dtype=torch.long, device=speech.device)
        for index, (row, label) in enumerate(zip(rows, labels, strict=True)):
            span = slice(width - len(row), width) if left_pad else slice(0, len(row))
            embeds[index, span], mask[index, span], padded_labels[index, span] = row, 1, label
        return LLMInputs(embeds, mask, padded_labels if targets else None)

    def forward(self, audio: torch.Tensor, lens: torch.Tensor, texts: list[str]) -> torch.Tensor:
        """Mean cross-entropy over the transcript tokens (and EOS) of the batch."""
        speech, speech_lens = self.speech_embeddings(audio, lens)
        return self.loss(speech, speech_lens, [self.transcript_ids(t) for t in texts])

    def loss(
        self,
        speech: torch.Tensor,
        speech_lens: torch.Tensor,
        targets: list[list[int]],
        contexts: list[str] | None = None,
    ) -> torch.Tensor:
        batch = self.inputs(speech, speech_lens, targets, left_pad=False, contexts=contexts)
        return self.llm(
            inputs_embeds=batch.embeds, attention_mask=batch.attention_mask, labels=batch.labels
        ).loss

    def sequence_logprobs(
        self,
        speech: torch.Tensor,
        speech_lens: torch.Tensor,
        targets: list[list[int]],
        contexts: list[str] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced log P(target | speech, context) per row, summed over its tokens (EOS included), with
        gradient, and each row's token count: MWER scores its N-best with these."""
        batch = self.inputs(speech, speech_lens, targets, left_pad=False, contexts=contexts)
        logits = self.llm(inputs_embeds=batch.embeds, attention_mask=batch.attention_mask).logits
        labels = batch.labels[:, 1:]  # the token at position p is predicted at p - 1
        scored = labels != IGNORE
        # log-softmax only at the scored positions: a (B, L, vocab) log-softmax is large for a 150k vocabulary
        token_logprobs = logits[:, :-1][scored].float().log_softmax(-1).gather(-1, labels[scored][:, None])
        rows = scored.nonzero()[:, 0]
        sums = token_logprobs.new_zeros(len(targets)).index_add(0, rows, token_logprobs[:, 0])
        return sums, scored.sum(-1)

    @property
    def context_length(self) -> int | None:
        return getattr(self.llm.config, "max_position_embeddings", None)

    def unusable_input(self, texts: list[str], audio_seconds: list[float]) -> dict[int, str]:
        """{item: why} for items to leave out before encoding: an empty transcript, or audio longer than
        `max_audio_seconds` (never encoded, so it cannot exhaust memory)."""
        reasons = {}
        for index, (text, seconds) in enumerate(zip(texts, audio_seconds, strict=True)):
            if not text.strip():
                reasons[index] = "empty transcript"
            elif self.max_audio_seconds and seconds > self.max_audio_seconds:
                reasons[index] = f"{seconds:.1f} s of audio, over max_audio_seconds={self.max_audio_seconds}"
        return reasons

    def over_context(
        self, targets: list[list[int]], speech_lens: torch.Tensor, contexts: list[str] | None = None
    ) -> dict[int, str]:
        """{item: why} for items whose prompt (with its context) + speech + transcript exceed the LLM's
        context."""
        reasons = {}
        for index, (target, frames) in enumerate(zip(targets, speech_lens.tolist(), strict=True)):
            before = self.before_speech(contexts[index] if contexts else None)
            prompt = len(before) + len(self.after_ids)
            length = prompt + frames + len(target)
            if self.context_length and length > self.context_length:
                reasons[index] = (
                    f"{length} positions (prompt {prompt}, speech {frames}, transcript {len(target)}) exceed "
                    f"the LLM's context of {self.context_length}"
                )
        return reasons

    def max_new_tokens(self, lens: torch.Tensor, sample_rate: int) -> int:
        """Bounded by the audio: `tokens_per_second` of the longest item, plus room for EOS."""
        return math.ceil(float(lens.max()) / sample_rate * self.tokens_per_second) + 2

    @torch.no_grad()
    def transcribe(
        self,
        audio: torch.Tensor,
        lens: torch.Tensor,
        *,
        sample_rate: int = 16000,
        beams: int = 1,
        nbest: int = 1,
        max_new_tokens: int | None = None,
        contexts: list[str] | None = None,
        context_weight: float | None = None,
        prune_top_k: int | None = None,
    ) -> list[list[tuple[str, float]]]:
        """Per item, the `nbest` hypotheses with their sequence log-probabilities (sum over tokens, EOS
        included), best first. The length bound defaults to the longest item's (`max_new_tokens`). With
        `contexts`, see `decode`."""
        speech, speech_lens = self.speech_embeddings(audio, lens)
        bound = max_new_tokens or self.max_new_tokens(lens, sample_rate)
        return self.decode(
            speech,
            speech_lens,
            beams=beams,
            nbest=nbest,
            max_new_tokens=bound,
            contexts=contexts,
            context_weight=context_weight,
            prune_top_k=prune_top_k,
        )

    def decode(
        self, speech: torch.Tensor, speech_lens: torch.Tensor, **options
    ) -> list[list[tuple[str, float]]]:
        """N-best (text, score) per item: `decode_hypotheses` without the token ids."""
        return [
            [(h.text, h.score) for h in item]
            for item in self.decode_hypotheses(speech, speech_lens, **options)
        ]

    @torch.no_grad()
    def decode_hypotheses(
        self,
        speech: torch.Tensor,
        speech_lens: torch.Tensor,
        *,
        beams: int,
        nbest: int,
        max_new_tokens: int,
        contexts: list[str] | None = None,
        context_weight: float | None = None,
        prune_top_k: int | None = None,
    ) -> list[list[Hypothesis]]:
        """N-best from speech embeddings: greedy for beams = 1, else beam search, both with transformers'
        generate and its KV cache, batched over left-padded prompts (positions follow the attention mask, so an
        item decodes the same in any batch). With `contexts` the prompt holds each item's context; with a
        `context_weight` too, the search is Seed-ASR's joint one (`JointContextScores`, pruned to the
        context-free model's `prune_top_k` tokens), and scores are joint log-probabilities."""
        if nbest > beams:
            raise ValueError(f"nbest ({nbest}) cannot exceed beams ({beams})")
        if context_weight is not None and not contexts:
            raise ValueError("context_weight needs contexts (the joint search mixes both prompts)")
        if context_weight is not None and prune_top_k is not None and beams > prune_top_k:
            # fewer live candidates than beams: transformers fills the beam with -1e9 placeholders
            raise ValueError(f"prune_top_k ({prune_top_k}) must be >= beams ({beams})")
        batch = self.inputs(speech, speech_lens, None, left_pad=True, contexts=contexts)
        processors = LogitsProcessorList()
        if context_weight is not None:
            free = self.inputs(speech, speech_lens, None, left_pad=True)
            processors.append(
                JointContextScores(
                    self.llm,
                    free.embeds,
                    free.attention_mask,
                    context_weight=context_weight,
                    prune_top_k=prune_top_k,
                    beams=beams,
                )
            )
        out = self.llm.generate(
            inputs_embeds=batch.embeds,
            attention_mask=batch.attention_mask,
            generation_config=self.generation_config(beams, nbest, max_new_tokens),
            logits_processor=processors,
        )
        # greedy hands the processors raw logits: normalise them (the joint processor already returns log-probs)
        step_scores = self.llm.compute_transition_scores(
            out.sequences,
            out.scores,
            getattr(out, "beam_indices", None),
            normalize_logits=beams == 1 and context_weight is None,
        )
        ended = self.generated_mask(out.sequences)
        scores = step_scores.masked_fill(~ended, 0).sum(-1)
        tokens = out.sequences.masked_fill(~ended, self.pad_token_id)
        texts = self.tokenizer.batch_decode(tokens, skip_special_tokens=True)
        eos = self.tokenizer.eos_token_id
        rows = tokens.tolist()
        hypotheses = [
            Hypothesis(text.strip(), float(score), row[: row.index(eos)] if eos in row else row, eos in row)
            for text, score, row in zip(texts, scores, rows, strict=True)
        ]
        # a pruned search can have fewer live candidates than beams: transformers fills the beam with copies
        # scored -1e9, whose transition scores do not show it; they are left out (an item may get fewer than nbest)
        beam_scores = getattr(out, "sequences_scores", None)
        live = [True] * len(hypotheses) if beam_scores is None else (beam_scores > -1e8).tolist()
        return [
            sorted(
                (h for h, ok in zip(hypotheses[i : i + nbest], live[i : i + nbest], strict=True) if ok),
                key=lambda h: -h.score,
            )
            for i in range(0, len(hypotheses), nbest)
        ]

    def generation_config(self, beams: int, nbest: int, max_new_tokens: int) -> GenerationConfig:
        # explicit: settings a model directory ships (repetition penalty, sampling) would change the hypotheses
        # and make the scores something other than the model's log-probabilities
        return GenerationConfig(
            max_new_tokens=max_new_tokens,
            num_beams=beams,
            num_return_sequences=nbest,
            do_sample=False,
            repetition_penalty=1.0,
            no_repeat_ngram_size=0,
            min_new_tokens=0,
            length_penalty=0.0,  # beam scores as plain sums of log-probabilities
            early_stopping=True,
            eos_token_id=self.tokenizer.eos_token_id,
            pad_token_id=self.pad_token_id,
            bos_token_id=self.tokenizer.bos_token_id,
            suppress_tokens=self.suppressed_ids or None,
            output_scores=True,
            return_dict_in_generate=True,
        )

    @property
    def pad_token_id(self) -> int:
        """The tokenizer's pad token, else EOS (generate needs one; id 0 is a valid pad)."""
        pad = self.tokenizer.pad_token_id
        return self.tokenizer.eos_token_id if pad is None else pad

    def generated_mask(self, sequences: torch.Tensor) -> torch.Tensor:
        """True for generated tokens up to and including the first EOS (what follows it is padding)."""
        eos = sequences == self.tokenizer.eos_token_id
        after_eos = (eos.long().cumsum(-1) - eos.long()) > 0
        return ~after_eos
