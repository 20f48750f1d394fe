"""Transcribe a manifest with a trained audio-conditioned LLM (checkpoint or MLflow run id):

    python -m experiments.transcribe --run-id RUN --manifest data/connected_digits/test.jsonl --out test_hyp.jsonl
    python -m experiments.transcribe --ckpt last.ckpt --manifest M --out OUT.jsonl --beam 4 --nbest 4
    python -m experiments.transcribe --run-id RUN --manifest M --out OUT.jsonl --context-column context \
        --context-weight 1.0      # Seed-ASR's joint search over the prompt with and without each row's context

Writes the manifest with columns `hyp` (1-best) and `nbest` (a list of {"text", "score"}: sequence
log-probabilities), and prints WER/CER when the manifest has transcripts, and keyword recall with a context
column (keywords: the row's `keywords` list, else the context's words that the transcript holds). Unreadable rows
are named and left out; the exit status is 2 when any was.
"""

from __future__ import annotations

import argparse
import sys

from experiments.core.cli import UserError, add_checkpoint_source, run_command


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.transcribe", description=__doc__.split("\n")[0]
    )
    add_checkpoint_source(parser, "an audio-conditioned LLM training run")
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--out", required=True, help="manifest to write, with hyp and nbest columns")
    parser.add_argument("--beam", type=int, default=1, help="beam size (1: greedy)")
    parser.add_argument("--nbest", type=int, default=1, help="hypotheses kept per row (<= --beam)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--context-column", help="manifest column whose text goes into each row's prompt")
    parser.add_argument(
        "--context-weight",
        type=float,
        help="alpha of the joint search (0: context-free; omitted: the context prompt alone)",
    )
    parser.add_argument(
        "--prune-top-k",
        type=int,
        default=5,
        help="joint search: tokens outside the context-free model's top k are pruned (0: none)",
    )
    args = parser.parse_args(argv)
    if args.nbest > args.beam:
        parser.error(f"--nbest ({args.nbest}) cannot exceed --beam ({args.beam})")
    if args.context_weight is not None and not args.context_column:
        parser.error("--context-weight needs --context-column")
    if args.context_weight is not None and args.context_weight < 0:
        parser.error(f"--context-weight must be >= 0, got {args.context_weight}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from experiments.core.checkpoints import load_module, resolve_checkpoint
    from experiments.core.transcripts import transcribe_manifest

    module = load_module(resolve_checkpoint(args.ckpt, args.run_id))
    if not hasattr(module, "model") or not hasattr(module.model, "transcribe"):
        raise UserError("that checkpoint is not an audio-conditioned LLM (experiment=acllm/...)")
    if module.model.encoder is None:  # the unit variant reads a manifest column, not audio
        raise UserError(
            "a unit-input model reads its units from the data: use experiments.eval run_id=... instead"
        )
    result = transcribe_manifest(
        module.model,
        args.manifest,
        args.out,
        sample_rate=module.hparams.sample_rate,
        beams=args.beam,
        nbest=args.nbest,
        batch_size=args.batch_size,
        context_column=args.context_column,
        context_weight=args.context_weight,
        prune_top_k=args.prune_top_k or None,
    )
    print(f"{result.transcribed} transcribed, {len(result.failed)} failed -> {result.out}")
    if result.wer is not None:
        print(f"WER {result.wer:.4f}  CER {result.cer:.4f}")
    if result.keyword_recall is not None:
        print(f"keyword recall {result.keyword_recall:.4f}")
    for path, reason in result.failed:
        print(f"FAILED {path}: {reason}", file=sys.stderr)
    return 2 if result.failed else 0


if __name__ == "__main__":
    sys.exit(run_command(main))
