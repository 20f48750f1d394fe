"""The MWER stage (Prabhavalkar et al. 2018, as Seed-ASR's RL stage) for the audio-conditioned LLM: each step
decodes an N-best list per utterance with the current policy (beam search, eval mode, no gradient), scores every
hypothesis' sequence log-probability with gradient (teacher forcing, the reference in the same forward pass),
renormalises them over the N-best and minimises the expected word errors minus the N-best mean, plus
`ce_weight` x the reference's cross-entropy. Errors on keywords (the batch's `keywords`: the words of its context
that were said, or a keyword column) cost `keyword_weight` (Seed-ASR's weighted WER). Starts from an AcLLM run
(`init_checkpoint`); everything else (recipe, LoRA, validation, export) is the AcLLM module's."""

from __future__ import annotations

import torch

from lit_modules.acllm import AcLLMModule, UsableItems
from lit_modules.steps import all_skipped, empty_batch_loss
from research.acllm.speech_llm import Hypothesis
from research.rl.errors import word_errors
from research.rl.mwer import mwer_risk


class MWERModule(AcLLMModule):
    def __init__(self, *, nbest: int = 4, ce_weight: float = 0.01, keyword_weight: float = 1.0, **acllm):
        if nbest < 2:
            raise ValueError(f"MWER needs an N-best list of at least 2 hypotheses, got nbest={nbest}")
        super().__init__(**acllm)
        self.save_hyperparameters("nbest", "ce_weight", "keyword_weight")

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        items = None if all_skipped(batch) else self.usable_items(batch)
        self.count_skipped(batch, items)
        if items is None:
            return empty_batch_loss(self)
        nbest = self.hparams.nbest
        audio_lens = batch["audio_lens"][torch.tensor(items.kept, device=batch["audio_lens"].device)]
        with self.decoding_modes():
            hypotheses = self.decode(items, audio_lens, beams=nbest, nbest=nbest, joint=False)
        logprobs, valid, reference_ce = self.score(items, hypotheses)
        references = [self.normalize(batch["text"][i]).split() for i in items.kept]
        keywords = [self.keywords(batch, i) for i in items.kept]
        errors, plain = (
            self.errors(hypotheses, references, keywords, weight)
            for weight in (self.hparams.keyword_weight, 1.0)
        )
        risk = mwer_risk(logprobs, errors.to(logprobs.device), valid)
        loss = risk.risk.mean() + self.hparams.ce_weight * reference_ce
        self.log_step(
            risk.posterior, plain.to(logprobs.device), valid, references, risk.risk, reference_ce, loss
        )
        return loss

    def score(
        self, items: UsableItems, hypotheses: list[list[Hypothesis]]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, N) sequence log-probabilities of the hypotheses with gradient, their validity (beam search may
        return fewer than N), and the mean token cross-entropy of the references, from one forward pass."""
        nbest, eos = self.hparams.nbest, self.model.tokenizer.eos_token_id
        rows, targets, valid = [], [], []
        for item, item_hypotheses in enumerate(hypotheses):
            padded = list(item_hypotheses) + [None] * (nbest - len(item_hypotheses))
            for hypothesis in padded:
                rows.append(item)
                # EOS only where the decoder generated it: a hypothesis the length bound cut keeps its own score
                ended = hypothesis is not None and hypothesis.ended
                targets.append(
                    [*hypothesis.ids, *([eos] if ended else [])] if hypothesis else items.targets[item]
                )
                valid.append(hypothesis is not None)
            rows.append(item)
            targets.append(items.targets[item])
        index = torch.tensor(rows, device=items.speech.device)
        contexts = [items.contexts[i] for i in rows] if items.contexts else None
        sums, counts = self.model.sequence_logprobs(
            items.speech[index], items.speech_lens[index], targets, contexts
        )
        sums, counts = sums.view(len(hypotheses), nbest + 1), counts.view(len(hypotheses), nbest + 1)
        reference_ce = -sums[:, -1].sum() / counts[:, -1].sum()
        valid_mask = torch.tensor(valid, device=sums.device).view(len(hypotheses), nbest)
        return sums[:, :-1], valid_mask, reference_ce

    def errors(self, hypotheses, references, keywords, weight: float) -> torch.Tensor:
        """(B, N) word errors of each hypothesis (0 where beam search returned fewer than N)."""
        table = torch.zeros(len(hypotheses), self.hparams.nbest, dtype=torch.float64)
        for item, item_hypotheses in enumerate(hypotheses):
            for rank, hypothesis in enumerate(item_hypotheses):
                words = self.normalize(hypothesis.text).split()
                table[item, rank] = word_errors(words, references[item], keywords[item], weight)
        return table

    def log_step(self, posterior, errors, valid, references, risk, reference_ce, loss) -> None:
        """The optimised quantity (expected WER under the renormalised N-best) and the N-best's WER spread."""
        size = len(references)
        words = torch.tensor([max(1, len(r)) for r in references], device=errors.device, dtype=errors.dtype)
        wer = errors / words[:, None]
        counted = valid.to(wer.dtype)
        logged = {
            "train/loss": loss,
            "train/mwer_risk": risk.mean(),
            "train/reference_ce": reference_ce,
            "train/expected_wer": (posterior.detach().to(wer.dtype) * wer).sum(-1).mean(),
            "train/nbest_wer_best": wer.masked_fill(~valid, float("inf")).min(-1).values.mean(),
            "train/nbest_wer_mean": ((wer * counted).sum(-1) / counted.sum(-1)).mean(),
            "train/nbest_wer_top": wer[:, 0].mean(),  # the hypothesis beam search ranks first
            "train/nbest_size": counted.sum(-1).mean(),
        }
        for name, value in logged.items():
            self.log(name, value.float(), prog_bar=name == "train/loss", batch_size=size)
