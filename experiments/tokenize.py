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

import numpy as np
import torch

from experiments.checkpoints import load_submodule
from experiments.dump import DumpResult, dump_per_utterance, manifest_of_files
from research.audio import BadAudioError, load_audio, write_audio
from research.tokenizer.codec import SpeechTokenizerCodec


def load_codec(ckpt: str | None = None, run_id: str | None = None) -> SpeechTokenizerCodec:
    return load_submodule("codec", ckpt_path=ckpt, run_id=run_id)


def encode_batch(codec: SpeechTokenizerCodec, n_q: int | None):
    def compute(audio: torch.Tensor, lens: torch.Tensor) -> list[np.ndarray]:
        codes = codec.encode(audio, n_q)  # (n_q, B, frames)
        frames = [codec.frames(int(n)) for n in lens]
        return [codes[:, i, :f].T.numpy().astype(np.int16) for i, f in enumerate(frames)]

    return compute


def encode(
    codec: SpeechTokenizerCodec,
    *,
    manifest: str | None = None,
    audio: list[str] | None = None,
    out_dir: str | None = None,
    out_manifest: str | None = None,
    column: str = "codes",
    n_q: int | None = None,
    batch_size: int = 8,
    overwrite: bool = False,
) -> DumpResult:
    if bool(manifest) == bool(audio):
        raise ValueError("give either a manifest or audio files")
    if audio and not out_dir:
        raise ValueError("encoding audio files needs an output folder (--out-dir)")
    return dump_per_utterance(
        manifest or manifest_of_files(audio),
        column=column,
        compute=encode_batch(codec, n_q),
        rate=codec.frame_rate,
        sample_rate=codec.sample_rate,
        out_dir=out_dir,
        out_manifest=out_manifest,
        batch_size=batch_size,
        overwrite=overwrite,
        desc="encoding",
    )


def decode_file(codec: SpeechTokenizerCodec, codes_path: str, levels: int | None = None) -> torch.Tensor:
    codes = np.load(codes_path)
    if codes.ndim != 2 or codes.shape[1] > codec.n_q:
        raise ValueError(
            f"{codes_path}: expected (frames, n_q <= {codec.n_q}) codes, got shape {codes.shape}"
        )
    codes = torch.from_numpy(codes.astype(np.int64)).T[:levels, None, :]  # (n, 1, frames)
    return codec.decode(codes)[0]


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
        source = command.add_mutually_exclusive_group(required=True)
        source.add_argument("--ckpt", help="tokenizer checkpoint written by experiments.train")
        source.add_argument("--run-id", help="MLflow run id of a tokenizer training run")
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
    codec = load_codec(args.ckpt, args.run_id)
    rate = codec.sample_rate
    try:
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
            )
            print(
                f"{result.written} encoded, {result.reused} already there, {len(result.failed)} failed -> {result.out_dir}"
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
    except BadAudioError as error:
        print(f"FAILED {error}", file=sys.stderr)
        return 2
    print(f"wrote {write_audio(Path(args.out), wave, rate)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
