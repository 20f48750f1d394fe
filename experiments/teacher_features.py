"""Extract a semantic teacher's features once, beside a manifest, for `model/teacher=precomputed`:

    python -m experiments.teacher_features --manifest data/librispeech_unlabeled/all.jsonl --hf-model /models/hubert-base --layer avg
    python -m experiments.teacher_features --manifest ... --run-id <CTC or LUISE run> --layer 3

Writes `<manifest dir>/teacher_features/<id>.npy` (float16, (frames, dim)) and `<stem>_teacher_features.jsonl`
with the columns the datamodule reads (`array_fields=[teacher_features]`), then prints the overrides to train
with. Resumable: utterances already extracted are kept.
"""

from __future__ import annotations

import argparse
import math
import sys

from experiments.core.cli import add_checkpoint_source, run_command


def feature_batch(teacher, sample_rate: int):
    """Teacher features per utterance, (frames, dim) float16, trimmed to its length."""
    import numpy as np

    def compute(audio, lens) -> list:
        features = teacher.features({"audio": audio, "audio_lens": lens})
        frames = [min(features.shape[1], math.ceil(int(n) / sample_rate * teacher.frame_rate)) for n in lens]
        return [features[i, :f].numpy().astype(np.float16) for i, f in enumerate(frames)]

    return compute


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.teacher_features", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--manifest", required=True)
    source = add_checkpoint_source(parser, "a speech encoder's training run (CTC recogniser, LUISE)")
    source.add_argument("--hf-model", help="transformers HuBERT / WavLM / wav2vec2 directory")
    parser.add_argument("--layer", default="avg", help="hidden-state index or 'avg'")
    parser.add_argument("--column", default="teacher_features")
    parser.add_argument("--sample-rate", type=int, default=16000)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    from experiments.core.checkpoints import encoder_teacher, resolve_checkpoint
    from experiments.core.dumps import checkpoint_source, dump_per_utterance
    from research.tokenizer.teachers import HuggingFaceTeacher

    layer = args.layer if args.layer == "avg" else int(args.layer)
    if args.hf_model:
        teacher = HuggingFaceTeacher(model_dir=args.hf_model, layer=layer, sample_rate=args.sample_rate)
        source = checkpoint_source(args.hf_model, layer=layer, sample_rate=args.sample_rate)
    else:
        checkpoint = resolve_checkpoint(args.ckpt, args.run_id)
        teacher = encoder_teacher(ckpt_path=str(checkpoint), layer=layer)
        source = checkpoint_source(checkpoint, layer=layer, sample_rate=args.sample_rate)
    result = dump_per_utterance(
        args.manifest,
        column=args.column,
        compute=feature_batch(teacher, args.sample_rate),
        rate=teacher.frame_rate,
        sample_rate=args.sample_rate,
        batch_size=args.batch_size,
        overwrite=args.overwrite,
        desc="teacher features",
        made_by=source,
    )
    print(
        f"{result.written} extracted, {result.reused} already there, {len(result.failed)} failed -> {result.out_dir}"
    )
    print(
        f"train with: model/teacher=precomputed model.teacher.dim={teacher.dim} "
        f"model.teacher.frame_rate={teacher.frame_rate} data.train_manifest={result.manifest}"
    )
    return 2 if result.failed else 0


if __name__ == "__main__":
    sys.exit(run_command(main))
