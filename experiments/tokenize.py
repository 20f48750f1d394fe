"""Speech tokenizer tool: audio <-> codes with a trained SpeechTokenizer (checkpoint path or MLflow run id).

    python -m experiments.tokenize encode  --run-id RUN --manifest data/x/test.jsonl      # codes + manifest column
    python -m experiments.tokenize encode  --ckpt last.ckpt --audio a.wav b.wav --out-dir codes/
    python -m experiments.tokenize decode  --ckpt last.ckpt --codes codes/a.npy --out a.wav [--levels 1]
    python -m experiments.tokenize resynth --ckpt last.ckpt --audio a.wav --levels 1 --out a_rvq1.wav
    python -m experiments.tokenize convert --ckpt last.ckpt --content a.wav --voice b.wav --out a_as_b.wav

Codes are saved per utterance as int16 arrays of shape (frames, n_q) at the codec's frame rate (time first, like
every frame-aligned array, so the datamodule can crop them with the audio: `array_fields=[codes]`).
Unreadable inputs are reported by name and skipped; the exit status is 2 when any input failed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from experiments.core.cli import UserError, add_checkpoint_source, run_command


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.tokenize", description=__doc__.split("\n")[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text in [
        ("encode", "audio files or a manifest -> codes per utterance"),
        ("decode", "a codes file -> audio"),
        ("resynth", "audio -> codes (first k levels) -> audio"),
        ("convert", "voice conversion: RVQ-1 of --content with RVQ-2..n of --voice"),
    ]:
        command = commands.add_parser(name, help=help_text)
        add_checkpoint_source(command, "a tokenizer training run")
        if name == "encode":
            command.add_argument("--manifest", help="encode every row; writes <stem>_codes.jsonl beside it")
            command.add_argument("--audio", nargs="+", help="audio files (codes go to --out-dir)")
            command.add_argument(
                "--out-dir", help="folder for the .npy codes (default: <manifest dir>/codes)"
            )
            command.add_argument("--out-manifest", help="manifest to write (default: <stem>_codes.jsonl)")
            command.add_argument("--column", default="codes")
            command.add_argument("--batch-size", type=int, default=8)
            command.add_argument(
                "--overwrite", action="store_true", help="re-encode files that already exist"
            )
        if name == "decode":
            command.add_argument("--codes", required=True, help="a (frames, n_q) .npy file")
        if name == "resynth":
            command.add_argument("--audio", required=True)
        if name == "convert":
            command.add_argument("--content", required=True)
            command.add_argument("--voice", required=True)
        if name != "encode":
            command.add_argument("--out", required=True, help="output wav")
        command.add_argument("--levels", type=int, help="use only the first k RVQ levels")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.command == "encode" and bool(args.manifest) == bool(args.audio):
        raise UserError("give either --manifest or --audio")
    if args.command == "encode" and args.audio and not args.out_dir:
        raise UserError("encoding audio files needs an output folder (--out-dir)")
    from experiments.core.checkpoints import resolve_checkpoint
    from experiments.core.dumps import checkpoint_source
    from experiments.core.tokens import decode_file, encode, load_codec
    from research.audio import load_audio, write_audio

    checkpoint = resolve_checkpoint(args.ckpt, args.run_id)
    codec = load_codec(ckpt=str(checkpoint))
    rate = codec.sample_rate
    if args.command == "encode":
        result = encode(
            codec,
            manifest=args.manifest,
            audio=args.audio,
            out_dir=args.out_dir,
            out_manifest=args.out_manifest,
            column=args.column,
            n_q=args.levels,
            batch_size=args.batch_size,
            overwrite=args.overwrite,
            source=checkpoint_source(checkpoint, levels=args.levels),
        )
        print(
            f"{result.written} encoded, {result.reused} kept, {len(result.failed)} failed -> {result.out_dir}"
        )
        if result.manifest:
            print(f"manifest: {result.manifest}")
        for path, reason in result.failed:
            print(f"FAILED {path}: {reason}", file=sys.stderr)
        return 2 if result.failed else 0
    if args.command == "decode":
        wave = decode_file(codec, args.codes, args.levels)
    elif args.command == "resynth":
        wave = codec.resynthesize(load_audio(args.audio, sample_rate=rate)[None], args.levels)[0]
    else:
        content, voice = (load_audio(p, sample_rate=rate)[None] for p in (args.content, args.voice))
        wave = codec.convert_voice(content, voice)[0]
    print(f"wrote {write_audio(Path(args.out), wave, rate)}")
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))
