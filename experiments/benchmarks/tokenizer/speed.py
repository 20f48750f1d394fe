"""Speed and memory of the tokenizer, as ratios measured side by side in one run (the machine is shared):

1. encode and decode real-time factor of SpeechTokenizer against encodec's EncodecModel and DAC at comparable
   size (random weights: timing does not depend on them);
2. training-step time of the LightningModule against a plain PyTorch loop over the same modules and losses
   (target: Lightning overhead <= 5%), each arm in its own process, alternating, with its peak memory.

    python -m experiments.benchmarks.tokenizer.speed [--size cpu|paper] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from functools import partial

import torch

from experiments.benchmarks.timing import (
    alternate_arms,
    best_of,
    lightning_step_times,
    peak_rss_mb,
    random_audio_batch,
)

SIZES = {
    # SpeechTokenizer sizes; EnCodec gets the same SEANet (unidirectional LSTM) and RVQ, DAC the same widths
    "paper": {"n_filters": 64, "dimension": 1024, "codebook_sizes": (1024,) * 8},
    "cpu": {"n_filters": 8, "dimension": 64, "lstm_layers": 1, "codebook_sizes": (256,) * 8},
}


def params_m(module: torch.nn.Module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6


def codecs(size: str) -> dict:
    """name -> (model, sample rate, encode fn, decode fn)."""
    import dac
    from encodec import EncodecModel
    from encodec.modules import SEANetDecoder, SEANetEncoder
    from encodec.quantization import ResidualVectorQuantizer

    from research.tokenizer.codec import SpeechTokenizerCodec

    ours = SpeechTokenizerCodec(**SIZES[size], semantic_dim=768).eval()
    config = SIZES[size]
    seanet = {
        "n_filters": config["n_filters"],
        "dimension": config["dimension"],
        "ratios": [8, 5, 4, 2],
        "lstm": config.get("lstm_layers", 2),
    }
    quantizer = ResidualVectorQuantizer(
        dimension=config["dimension"], n_q=8, bins=config["codebook_sizes"][0]
    )
    encodec = EncodecModel(
        SEANetEncoder(**seanet),
        SEANetDecoder(**seanet),
        quantizer,
        target_bandwidths=[4.0],
        sample_rate=16000,
        channels=1,
    ).eval()
    width = 64 if size == "paper" else 8
    descript = dac.DAC(
        encoder_dim=width,
        encoder_rates=[2, 4, 5, 8],
        decoder_dim=24 * width,
        decoder_rates=[8, 5, 4, 2],
        n_codebooks=8,
        codebook_size=1024,
        sample_rate=16000,
    ).eval()
    return {
        "speechtokenizer": (ours, 16000, lambda x: ours.encode(x), lambda c: ours.decode(c)),
        "encodec": (encodec, 16000, lambda x: encodec.encode(x), lambda c: encodec.decode(c)),
        "dac": (
            descript,
            16000,
            lambda x: descript.encode(x)[1],
            lambda c: descript.decode(descript.quantizer.from_codes(c)[0]),
        ),
    }


@torch.inference_mode()
def real_time_factors(size: str, seconds: float, repeats: int) -> dict:
    results = {}
    for name, (model, rate, encode, decode) in codecs(size).items():
        audio = torch.randn(1, 1, int(seconds * rate)) * 0.1
        codes = encode(audio)
        encode_s = best_of(lambda: encode(audio), repeats)  # noqa: B023 (called right here)
        decode_s = best_of(lambda: decode(codes), repeats)  # noqa: B023
        results[name] = {
            "params_m": round(params_m(model), 1),
            "encode_rtf": encode_s / seconds,
            "decode_rtf": decode_s / seconds,
        }
    return results


def build_module(size: str):
    from lit_modules.tokenizer import SpeechTokenizerModule
    from research.tokenizer.codec import SpeechTokenizerCodec
    from research.tokenizer.discriminators import CodecDiscriminator

    torch.manual_seed(0)
    adam = partial(torch.optim.Adam, lr=1e-4, betas=(0.9, 0.99))
    return SpeechTokenizerModule(
        codec=SpeechTokenizerCodec(**SIZES[size], semantic_dim=768),
        discriminator=CodecDiscriminator(
            periods=(), msd_rates=(), stft_filters=8, stft_n_ffts=(1024, 512, 256)
        ),
        teacher=None,
        loss_weights={"distillation": 0.0},
        generator_optimizer=adam,
        discriminator_optimizer=adam,
    )


def plain_steps(module, batch: dict, steps: int) -> list[float]:
    from research.tokenizer.losses import lsgan_discriminator_loss

    generator_opt, discriminator_opt = module.configure_optimizers()
    module.train()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        output = module.codec(batch["audio"])
        fake = module.discriminator(output.audio.detach())
        discriminator_loss = lsgan_discriminator_loss(module.discriminator(batch["audio"]), fake)
        discriminator_opt.zero_grad(set_to_none=True)
        discriminator_loss.backward()
        discriminator_opt.step()
        losses = module.generator_losses(batch, output)
        generator_opt.zero_grad(set_to_none=True)
        losses["total"].backward()
        generator_opt.step()
        module.generator_steps += 1
        times.append(time.perf_counter() - start)
    return times


def run_arm(arm: str, size: str, steps: int, seconds: float, batch: int) -> dict:
    module = build_module(size)
    data = random_audio_batch(seconds, batch)
    times = (
        lightning_step_times(module, data, steps, optimizers=2)
        if arm == "lightning"
        else plain_steps(module, data, steps)
    )
    warm = times[3:]  # the first steps include k-means initialisation and allocator warm-up
    return {
        "arm": arm,
        "step_s": statistics.median(warm),
        "peak_rss_mb": peak_rss_mb(),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="cpu")
    parser.add_argument("--rounds", type=int, default=3, help="alternating Lightning / plain rounds")
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--crop-seconds", type=float, default=1.0)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rtf-seconds", type=float, default=10.0)
    parser.add_argument("--arm", help=argparse.SUPPRESS)  # internal: run one training arm in this process
    args = parser.parse_args(argv)
    if args.arm:
        print(json.dumps(run_arm(args.arm, args.size, args.steps, args.crop_seconds, args.batch)))
        return {}

    rtf = real_time_factors(args.size, args.rtf_seconds, repeats=3)
    print(
        f"\n| codec ({args.size} size, random weights) | params (M) | encode RTF | decode RTF | encode vs ours | decode vs ours |"
    )
    print("|---|---|---|---|---|---|")
    ours = rtf["speechtokenizer"]
    for name, r in rtf.items():
        print(
            f"| {name} | {r['params_m']} | {r['encode_rtf']:.4f} | {r['decode_rtf']:.4f} | {r['encode_rtf'] / ours['encode_rtf']:.2f}x | {r['decode_rtf'] / ours['decode_rtf']:.2f}x |"
        )

    arms = alternate_arms(
        "experiments.benchmarks.tokenizer.speed",
        ["lightning", "plain"],
        args.rounds,
        [
            "--size",
            args.size,
            "--steps",
            str(args.steps),
            "--crop-seconds",
            str(args.crop_seconds),
            "--batch",
            str(args.batch),
        ],
    )
    step = {arm: statistics.median(r["step_s"] for r in runs) for arm, runs in arms.items()}
    rss = {arm: max(r["peak_rss_mb"] for r in runs) for arm, runs in arms.items()}
    overhead = step["lightning"] / step["plain"] - 1
    print(
        f"\ntraining step ({args.size} size, batch {args.batch} x {args.crop_seconds:g} s, G + D, median of {args.rounds} alternating rounds):"
    )
    print("| loop | step (s) | peak RSS (MB) |\n|---|---|---|")
    for arm in arms:
        print(f"| {arm} | {step[arm]:.3f} | {rss[arm]:.0f} |")
    print(f"Lightning overhead: {overhead * 100:+.1f}% (target <= 5%)")
    return {"rtf": rtf, "step_s": step, "peak_rss_mb": rss, "lightning_overhead": overhead}


if __name__ == "__main__":
    main()
