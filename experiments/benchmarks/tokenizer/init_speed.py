"""Tokenizer at paper size, in one run side by side: codebook initialisation (8 levels x 1,024 codes, dimension
1,024) time against the number of frames and each level's quantization error (mean squared distance to the
nearest code, over the frames' variance), for the RVQ's k-means and, with --old, the plain k-means++ + 50 Lloyd
iterations it replaced (re-implemented here); with --step, also the generator training step against the public
SpeechTokenizer (experiments.benchmarks.tokenizer.speed --generator-step, which says how to make it importable).

Frames are real-ish: a random-weight paper-size SEANet encoder (with BiLSTM, as the codec's) run over FSDD speech
(VOXLAB_MIRROR/fsdd, resampled to 16 kHz, clips concatenated into 8 s pieces), cached under
runs/benchmarks/tokenizer_init/; each level initialises on what the previous levels leave, as in training.

    python -m experiments.benchmarks.tokenizer.init_speed [--old] [--step] [--frames 900 4800 20000] [--quick]
"""

from __future__ import annotations

import argparse
import os
import random
import time
from pathlib import Path

import torch

from research.tokenizer.quantizer import EMACodebook, nearest

SAMPLE_RATE, PIECE_SECONDS, HOP = 16000, 8, 320
CACHE = Path("runs/benchmarks/tokenizer_init/fsdd_frames.pt")


def fsdd_pieces(mirror: Path):
    """8 s pieces of FSDD speech at 16 kHz: clips in a seeded shuffled order, concatenated and cut."""
    from research.audio import load_audio

    clips = sorted((mirror / "fsdd" / "recordings").glob("*.wav"))
    random.Random(0).shuffle(clips)
    buffer, length = [], PIECE_SECONDS * SAMPLE_RATE
    for clip in clips:
        buffer.append(load_audio(clip, sample_rate=SAMPLE_RATE))
        audio = torch.cat(buffer, dim=-1)
        while audio.shape[-1] >= length:
            yield audio[:, :length]
            audio = audio[:, length:]
        buffer = [audio]


@torch.inference_mode()
def speech_frames(count: int, mirror: Path, cache: Path = CACHE) -> torch.Tensor:
    """(count, 1024) encoder frames; the cache grows by whole pieces, so later calls encode only what is new."""
    from research.tokenizer.codec import SpeechTokenizerCodec

    frames = torch.load(cache) if cache.exists() else torch.empty(0, 1024)
    if frames.shape[0] < count:
        torch.manual_seed(0)
        encoder = SpeechTokenizerCodec(semantic_dim=0).encoder.eval()  # paper size, random weights
        per_piece = PIECE_SECONDS * SAMPLE_RATE // HOP
        new = []
        for index, piece in enumerate(fsdd_pieces(mirror)):
            if index < frames.shape[0] // per_piece:
                continue
            new.append(encoder(piece[None])[0].T)
            if frames.shape[0] + len(new) * per_piece >= count:
                break
        frames = torch.cat([frames, *new])
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save(frames, cache)
    if frames.shape[0] < count:
        raise ValueError(f"FSDD gives only {frames.shape[0]} frames")
    return frames[:count]


def old_kmeans(samples: torch.Tensor, k: int, iters: int = 50) -> torch.Tensor:
    """The initialisation this benchmark compares against, as it was: plain k-means++ seeding (one N x D
    difference pass per centroid) and a fixed 50 Lloyd iterations."""
    n = samples.shape[0]
    picks = [int(torch.randint(n, (1,)))]
    nearest_sq = (samples - samples[picks[0]]).pow(2).sum(-1)
    for _ in range(1, k):
        weights = nearest_sq if nearest_sq.sum() > 0 else torch.ones(n)
        picks.append(int(torch.multinomial(weights, 1)))
        nearest_sq = torch.minimum(nearest_sq, (samples - samples[picks[-1]]).pow(2).sum(-1))
    centroids = samples[picks].clone()
    for _ in range(iters):
        assign = nearest(samples, centroids)[0]
        counts = torch.bincount(assign, minlength=k).float()
        sums = torch.zeros_like(centroids).index_add_(0, assign, samples)
        filled = counts > 0
        centroids[filled] = sums[filled] / counts[filled, None]
    return centroids


def new_kmeans(samples: torch.Tensor, k: int) -> torch.Tensor:
    codebook = EMACodebook(dim=samples.shape[1], size=k)  # the RVQ's defaults
    codebook.init_from(samples)
    return codebook.embed


def initialise_levels(frames: torch.Tensor, levels: int, codes: int, init) -> dict:
    """Initialise `levels` codebooks, each on the residual the previous ones leave (as the RVQ's first training
    step does); returns the seconds spent in `init` and each level's mean squared distance to its nearest code,
    as a fraction of the frames' variance (their mean squared distance to their mean)."""
    torch.manual_seed(0)
    variance = float((frames - frames.mean(0)).pow(2).sum(-1).mean())
    residual, seconds, errors = frames, 0.0, []
    for _ in range(levels):
        start = time.perf_counter()
        codebook = init(residual, codes)
        seconds += time.perf_counter() - start
        indices, distances = nearest(residual, codebook)
        errors.append(float(distances.mean()) / variance)
        residual = residual - codebook[indices]
    return {"seconds": seconds, "errors": errors}


def cell(result: dict | None, key: str, level: int = 0) -> str:
    if result is None:
        return "-"
    return f"{result['seconds']:.1f}" if key == "seconds" else f"{result['errors'][level]:.3g}"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[900, 4800, 20000])
    parser.add_argument("--levels", type=int, default=8)
    parser.add_argument("--codes", type=int, default=1024)
    parser.add_argument("--old", action="store_true", help="also the old k-means (about 12 min at 2 threads)")
    parser.add_argument(
        "--step", action="store_true", help="also the generator step against the public model"
    )
    parser.add_argument("--rounds", type=int, default=2, help="--step: alternating rounds of 3 steps")
    parser.add_argument("--quick", action="store_true", help="900 and 2,400 frames, 2 levels, 1 step round")
    parser.add_argument(
        "--mirror", type=Path, default=Path(os.environ.get("VOXLAB_MIRROR", "../shared/data"))
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.frames, args.levels, args.rounds = [900, 2400], 2, 1
    last = args.levels - 1
    print(
        f"codebook initialisation, {args.levels} levels x {args.codes} codes, dimension 1024, "
        f"{torch.get_num_threads()} threads; error: mean squared distance to the nearest code / frame variance"
    )
    print(
        f"| frames | init new (s) | init old (s) | level-1 error new | old | level-{args.levels} error new | old |"
        "\n|---|---|---|---|---|---|---|"
    )
    results = {}
    for count in args.frames:
        frames = speech_frames(count, args.mirror)
        new = initialise_levels(frames, args.levels, args.codes, new_kmeans)
        old = initialise_levels(frames, args.levels, args.codes, old_kmeans) if args.old else None
        results[count] = {"new": new, "old": old}
        print(
            f"| {count:,} | {cell(new, 'seconds')} | {cell(old, 'seconds')} | {cell(new, 'errors')} | "
            f"{cell(old, 'errors')} | {cell(new, 'errors', last)} | {cell(old, 'errors', last)} |",
            flush=True,
        )
    if args.step:
        from experiments.benchmarks.tokenizer.speed import generator_step_comparison

        results["step"] = generator_step_comparison(args.rounds, steps=1 if args.quick else 3)
    return results


if __name__ == "__main__":
    main()
