"""Command line for the preparers, e.g. `python -m datamodules.prepare connected-digits --out data/connected_digits`."""

from __future__ import annotations

import argparse
import logging

from datamodules.prepare import (
    prepare_connected_digits,
    prepare_folder,
    prepare_fsdd,
    prepare_fsdd_captions,
    prepare_librispeech,
    prepare_spoken_sentences,
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m datamodules.prepare")
    sub = parser.add_subparsers(dest="dataset", required=True)
    for name in ("fsdd", "fsdd-captions", "connected-digits"):
        p = sub.add_parser(name)
        p.add_argument("--out", required=True, help="output folder for manifests (and generated audio)")
        p.add_argument("--mirror", help="folder holding fsdd/ (default: $VOXLAB_MIRROR)")
        p.add_argument("--download", action="store_true", help="fetch the pinned upstream snapshot")
    sub.choices["connected-digits"].add_argument("--heldout-speaker", default="theo")
    sub.choices["connected-digits"].add_argument("--seed", type=int, default=1234)
    p = sub.add_parser("spoken-sentences", help="English fortune sentences synthesised with espeak-ng")
    p.add_argument("--out", required=True, help="output folder for manifests, audio and lm_corpus.txt")
    p.add_argument("--hours", type=float, default=1.0, help="hours of train audio")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--noise-fraction", type=float, default=0.5, help="share of utterances given noise")
    p.add_argument(
        "--noise-snr", type=float, nargs=2, default=(5.0, 25.0), metavar=("LOW", "HIGH"), help="dB"
    )
    p = sub.add_parser("librispeech")
    p.add_argument("--root", required=True)
    p.add_argument("--out", required=True, help="manifest path (.jsonl)")
    p = sub.add_parser("folder")
    p.add_argument("--root", required=True)
    p.add_argument("--out", required=True, help="manifest path (.jsonl)")
    p.add_argument("--transcripts", help="TSV of path<TAB>text")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)

    if args.dataset == "fsdd":
        result = prepare_fsdd(out_dir=args.out, mirror=args.mirror, download=args.download)
    elif args.dataset == "fsdd-captions":
        result = prepare_fsdd_captions(out_dir=args.out, mirror=args.mirror, download=args.download)
    elif args.dataset == "connected-digits":
        result = prepare_connected_digits(
            out_dir=args.out,
            mirror=args.mirror,
            download=args.download,
            heldout_speaker=args.heldout_speaker,
            seed=args.seed,
        )
    elif args.dataset == "spoken-sentences":
        result = prepare_spoken_sentences(
            args.out,
            hours=args.hours,
            seed=args.seed,
            noise_fraction=args.noise_fraction,
            noise_snr_db=tuple(args.noise_snr),
        )
    elif args.dataset == "librispeech":
        result = prepare_librispeech(root=args.root, out_path=args.out)
    else:
        result = prepare_folder(root=args.root, out_path=args.out, transcripts=args.transcripts)
    print(result)


if __name__ == "__main__":
    main()
