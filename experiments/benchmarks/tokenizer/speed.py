"""Speed and memory of the tokenizer, as ratios measured side by side in one run (the machine is shared):

1. encode and decode real-time factor of SpeechTokenizer against encodec's EncodecModel and DAC at comparable
   size (random weights: timing does not depend on them);
2. training-step time of the LightningModule against a plain PyTorch loop over the same modules and losses
   (target: Lightning overhead <= 5%), each arm in its own process, alternating, with its peak memory;
3. with --generator-step instead: the paper-size generator training step (2 x 3 s, no discriminator, no teacher)
   against the public SpeechTokenizer's architecture rebuilt from its published base config with random weights
   (goal: <= 0.8x its time), in the same alternating processes. That arm imports the `speechtokenizer` package,
   which the project does not depend on; install it outside the repo and put it on PYTHONPATH:
       pip install --no-deps --target /tmp/st_pkgs speechtokenizer beartype lion-pytorch

    python -m experiments.benchmarks.tokenizer.speed [--size cpu|paper] [--rounds 3]
    PYTHONPATH=/tmp/st_pkgs python -m experiments.benchmarks.tokenizer.speed --generator-step [--rounds 2]
"""

from __future__ import annotations

import argparse
import importlib.util
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


# The public SpeechTokenizer's base config (its repository's config/spt_base_cfg.json): the same settings as
# SIZES["paper"]; its trainer's generator losses are 500 x waveform L1, mel L1 at n_fft 1024/512/256/128 (hop 240
# and window likewise halved, 80 mels) weighted 45/1/1/1, and 10 x commitment.
PUBLIC_CONFIG = {
    "n_filters": 64,
    "strides": [8, 5, 4, 2],
    "dimension": 1024,
    "semantic_dimension": 768,
    "bidirectional": True,
    "dilation_base": 2,
    "residual_kernel_size": 3,
    "n_residual_layers": 1,
    "lstm_layers": 2,
    "activation": "ELU",
    "codebook_size": 1024,
    "n_q": 8,
    "sample_rate": 16000,
}
GENERATOR_ARMS = ("ours_generator", "public_generator")


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


def ours_generator_step(data: dict):
    from lit_modules.tokenizer import SpeechTokenizerModule
    from research.tokenizer.codec import SpeechTokenizerCodec

    module = SpeechTokenizerModule(
        codec=SpeechTokenizerCodec(**SIZES["paper"], semantic_dim=768),
        teacher=None,
        loss_weights={"distillation": 0.0},
        generator_optimizer=partial(torch.optim.Adam, lr=1e-4, betas=(0.9, 0.99)),
    ).train()
    (optimizer,) = module.configure_optimizers()

    def step() -> None:
        loss = module.generator_losses(data, module.codec(data["audio"]))["total"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        module.generator_steps += 1

    return module.codec, step


def public_generator_step(data: dict):
    from speechtokenizer import SpeechTokenizer
    from speechtokenizer.trainer.loss import mel_loss, recon_loss

    model = SpeechTokenizer(PUBLIC_CONFIG).train()
    # Its k-means init takes minutes on a CPU (an N x codes x dim tensor): start its codebooks from random
    # encoder frames instead, counted live (EMA size 3 > its dead-code threshold 2) for the timed steps.
    with torch.no_grad():
        residual = model.encoder(data["audio"]).transpose(1, 2).reshape(-1, PUBLIC_CONFIG["dimension"])
        for layer in model.quantizer.vq.layers:
            book = layer._codebook
            book.embed.copy_(residual[torch.randint(len(residual), (book.codebook_size,))])
            book.cluster_size.fill_(3.0)
            book.embed_avg.copy_(book.embed * 3.0)
            book.inited.fill_(1.0)
            residual = residual - book.embed[torch.cdist(residual, book.embed).argmin(-1)]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.9, 0.99))
    scales = [
        {"n_fft": 1024 // m, "hop_size": 240 // m, "win_size": 1024 // m, "num_mels": 80}
        for m in (1, 2, 4, 8)
    ]

    def step() -> None:
        x = data["audio"]
        x_hat, commitment, _ = model(x)
        mel = sum(
            w * mel_loss(x, x_hat, sample_rate=16000, fmin=0, fmax=None, **scale)
            for w, scale in zip((45, 1, 1, 1), scales, strict=True)
        )
        loss = 500 * recon_loss(x, x_hat) + mel + 10 * commitment
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return model, step


def generator_arm(arm: str, steps: int, seconds: float, batch: int) -> dict:
    torch.manual_seed(0)
    data = random_audio_batch(seconds, batch)
    model, step = (ours_generator_step if arm == "ours_generator" else public_generator_step)(data)
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    # the first step includes our k-means initialisation and allocator warm-up
    return {
        "arm": arm,
        "params_m": params_m(model),
        "step_s": statistics.median(times[1:]),
        "peak_rss_mb": peak_rss_mb(),
    }


def generator_step_comparison(rounds: int, steps: int, seconds: float = 3.0, batch: int = 2) -> dict:
    """Paper-size generator step, ours against the public model (when its package imports), alternating."""
    arms = [
        arm
        for arm in GENERATOR_ARMS
        if arm == "ours_generator" or importlib.util.find_spec("speechtokenizer")
    ]
    if len(arms) == 1:
        print(
            "public SpeechTokenizer arm skipped: the `speechtokenizer` package is not importable (see --help)"
        )
    results = alternate_arms(
        "experiments.benchmarks.tokenizer.speed",
        arms,
        rounds,
        ["--steps", str(steps), "--crop-seconds", str(seconds), "--batch", str(batch)],
    )
    step = {arm: statistics.median(r["step_s"] for r in runs) for arm, runs in results.items()}
    rss = {arm: max(r["peak_rss_mb"] for r in runs) for arm, runs in results.items()}
    print(
        f"\ngenerator training step, paper size, batch {batch} x {seconds:g} s, no discriminator, "
        f"{torch.get_num_threads()} threads, median of {steps} steps x {rounds} alternating rounds:"
    )
    print("| model | params (M) | step (s) | peak RSS (MB) |\n|---|---|---|---|")
    for arm, runs in results.items():
        print(f"| {arm} | {runs[0]['params_m']:.1f} | {step[arm]:.2f} | {rss[arm]:.0f} |")
    if "public_generator" in step:
        ratio = step["ours_generator"] / step["public_generator"]
        print(f"ours / public step time: {ratio:.2f}x (goal <= 0.8x)")
    return {"step_s": step, "peak_rss_mb": rss}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="cpu")
    parser.add_argument("--rounds", type=int, default=3, help="alternating Lightning / plain rounds")
    parser.add_argument("--steps", type=int, help="timed steps per arm (default 15; --generator-step: 3)")
    parser.add_argument("--crop-seconds", type=float, default=1.0)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rtf-seconds", type=float, default=10.0)
    parser.add_argument(
        "--generator-step",
        action="store_true",
        help="only the paper-size generator step against the public model",
    )
    parser.add_argument("--arm", help=argparse.SUPPRESS)  # internal: run one training arm in this process
    args = parser.parse_args(argv)
    args.steps = args.steps or (3 if args.generator_step else 15)
    if args.arm in GENERATOR_ARMS:
        print(json.dumps(generator_arm(args.arm, args.steps, args.crop_seconds, args.batch)))
        return {}
    if args.generator_step:
        return generator_step_comparison(args.rounds, args.steps)
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
