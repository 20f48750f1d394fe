"""Speed, memory and FLOPs of the audio-conditioned LLM, as ratios measured side by side in one run (the machine is
shared and noisy: absolute times are printed, only the ratios are claims):

1. Lightning overhead: AcLLMModule's training step under a Trainer against a plain PyTorch loop over the same
   model, batch and AdamW step (goal <= 1.05), CPU-config scale, recipe lora, alternating in one process;
2. LoRA (r 8, q/v) against full fine-tuning on a ~90 M-parameter Llama-style LLM: step time and peak memory, each
   arm in its own fresh process, and the trainable fraction under LoRA;
3. batched against one-by-one decoding (SpeechLLM.transcribe, greedy and beam 4): utterances per second, and
   whether the hypotheses are identical both ways;
4. FLOPs per training step counted by FlopCounterMode over one real step, and MFU against the dense fp32 matmul
   peak measured on this machine (nominal CPU peaks are not readable here).

Random weights throughout: timing does not depend on them.

    python -m experiments.benchmarks.acllm.speed [--quick] [--device cuda] [--threads N]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import random
import statistics
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from experiments.benchmarks.timing import (
    alternate_arms,
    best_of,
    lightning_step_times,
    peak_rss_mb,
    random_audio_batch,
)
from experiments.core.cli import ROOT

WARMUP_STEPS = 2  # first-call and allocator warm-up
LORA = {"rank": 8, "alpha": 32, "dropout": 0.05, "target_modules": ["q_proj", "v_proj"]}  # model/acllm.yaml
SCHEDULER = {"warmup_steps": 1000, "min_ratio": 0.05}  # model/acllm.yaml
OUTPUT = ROOT / "runs" / "benchmarks" / "acllm_speed.json"
MODULE = "experiments.benchmarks.acllm.speed"  # what each isolated arm runs as


@dataclass(frozen=True)
class LMSize:
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int


@dataclass(frozen=True)
class Scale:
    small_lm: LMSize  # sections 1 and 3: the CPU config scale
    large_lm: LMSize  # section 2
    vocab_size: int
    batch: int  # section 1
    seconds: float
    steps: int
    rounds: int
    large_batch: int  # section 2
    large_steps: int
    large_rounds: int
    utterances: int  # section 3
    utterance_seconds: tuple[float, float]
    matmul_size: int  # section 4's peak


# Llama's 8/3 x d SwiGLU width (2048 at d 768) makes a block as big as GPT-2 small's: 12 layers ~ 85 M + embeddings
DEFAULT = Scale(
    small_lm=LMSize(256, 4, 4, 1024),
    large_lm=LMSize(768, 12, 12, 2048),
    vocab_size=2000,
    batch=8,
    seconds=3.0,
    steps=12,
    rounds=5,
    large_batch=2,
    large_steps=5,
    large_rounds=1,
    utterances=16,
    utterance_seconds=(1.0, 3.0),
    matmul_size=2048,
)
QUICK = Scale(
    small_lm=LMSize(64, 2, 2, 128),
    large_lm=LMSize(128, 2, 2, 256),
    vocab_size=400,
    batch=2,
    seconds=1.0,
    steps=4,
    rounds=1,
    large_batch=1,
    large_steps=3,
    large_rounds=1,
    utterances=4,
    utterance_seconds=(0.5, 1.0),
    matmul_size=512,
)


def quiet_libraries() -> None:
    """One Trainer and one from_pretrained per round: their banners, progress bars and deprecation notes would
    bury the tables."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    for message in ("does not have many workers", "val_dataloader", "LeafSpec", "is_gradient_checkpointing"):
        warnings.filterwarnings("ignore", f".*{message}.*")


# ---------------------------------------------------------------- models and data


def pseudo_words(count: int, seed: int = 0) -> list[str]:
    """Seeded syllable words: enough distinct text for a BPE vocabulary of a few thousand merges."""
    rng = random.Random(seed)
    syllables = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
    return ["".join(rng.choices(syllables, k=rng.randint(1, 4))) for _ in range(count)]


def write_llm_dir(folder: Path, size: LMSize, vocab_size: int) -> Path:
    """A throwaway tokenizer and a random Llama-style LM saved as the directory SpeechLLM loads."""
    from research.acllm.text_lm import new_causal_lm, train_tokenizer

    words = pseudo_words(4 * vocab_size)
    sentences = [" ".join(words[i : i + 12]) for i in range(0, len(words), 12)]
    tokenizer = train_tokenizer(
        ["USER: Transcribe speech to text.\n ASSISTANT:", *sentences], vocab_size=vocab_size
    )
    torch.manual_seed(0)
    model = new_causal_lm(tokenizer, **asdict(size))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def build_module(llm_dir: str, recipe: str):
    """AcLLMModule as model/acllm.yaml builds it, on a fresh default ConformerEncoder (d_model 144, 4 layers)."""
    from lit_modules.acllm import AcLLMModule
    from research.acllm.converter import Converter
    from research.acllm.speech_llm import SpeechEncoder, SpeechLLM
    from research.encoder import ConformerEncoder

    torch.manual_seed(0)
    hidden = json.loads((Path(llm_dir) / "config.json").read_text())["hidden_size"]
    encoder = ConformerEncoder()
    model = SpeechLLM(
        encoder=SpeechEncoder(encoder=encoder),
        converter=Converter(input_dim=encoder.d_model, output_dim=hidden, splice=4),
        llm_dir=llm_dir,
    )
    return AcLLMModule(
        model=model,
        optimizer=partial(torch.optim.AdamW, lr=1e-4, betas=(0.9, 0.98), weight_decay=0.0),
        scheduler=SCHEDULER,
        recipe=recipe,
        lora=LORA if recipe == "lora" else None,
    )


def training_batch(seconds: float, batch: int, device: str = "cpu") -> dict:
    data = random_audio_batch(seconds, batch)
    words = pseudo_words(6 * batch, seed=1)
    data["text"] = [" ".join(words[i : i + 6]) for i in range(0, len(words), 6)]  # short transcripts
    return {key: value.to(device) if torch.is_tensor(value) else value for key, value in data.items()}


# ---------------------------------------------------------------- training steps


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def plain_trainer(module, steps: int):
    """The plain loop's state: the module's optimizer and schedule, and its parts' modes at epoch start (a frozen
    part runs as at inference; the hook only sets modes, so calling it here is what Lightning would do)."""
    from lit_modules.optim import warmup_cosine

    optimizer = module.optimizer_factory([p for p in module.parameters() if p.requires_grad])
    schedule = warmup_cosine(optimizer, total_steps=steps, **SCHEDULER)
    module.train()
    module.on_train_epoch_start()
    return optimizer, schedule


def plain_step(module, batch: dict, optimizer, schedule) -> None:
    loss = module.model(batch["audio"], batch["audio_lens"], batch["text"])
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    schedule.step()


def plain_step_times(module, batch: dict, steps: int, device: str = "cpu") -> list[float]:
    optimizer, schedule = plain_trainer(module, steps)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        plain_step(module, batch, optimizer, schedule)
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def warm_median(times: list[float]) -> float:
    return statistics.median(times[WARMUP_STEPS:] or times)


# ---------------------------------------------------------------- FLOPs


def _cpu_sdpa_flops(query, key, value, *args, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def _cpu_sdpa_backward_flops(grad_out, query, key, value, *args, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


# FlopCounterMode knows the CUDA attention kernels but not the CPU one transformers' sdpa path calls
CPU_ATTENTION_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward_flops,
}


def llm_width(model, batch: dict) -> int:
    """Padded LLM sequence length of the batch: prompt + speech embeddings + transcript + EOS."""
    with torch.no_grad():
        _, speech_lens = model.embed_speech(batch)
    prompt = len(model.before_ids) + len(model.after_ids)
    targets = [len(model.transcript_ids(text)) for text in batch["text"]]
    return max(prompt + int(s) + t for s, t in zip(speech_lens, targets, strict=True))


def analytic_llm_flops(config, batch: int, width: int, llm_trains: bool) -> float:
    """Forward: 2 x matmul weights x tokens (the tied LM head multiplies too) + attention's two T x T products per
    layer. Backward: 2 x forward when the weights train; 1 x forward when frozen (LoRA), since the activation
    gradients must still reach the converter below the LLM. LoRA's own rank-8 products are left out (tiny)."""
    d, inter = config.hidden_size, config.intermediate_size
    weights = config.num_hidden_layers * (4 * d * d + 3 * d * inter) + d * config.vocab_size
    forward = 2 * weights * batch * width + config.num_hidden_layers * 4 * batch * width**2 * d
    return forward * (3 if llm_trains else 2)


def step_flops(module, batch: dict) -> dict:
    """FLOPs of one real training step (forward, backward, AdamW; the optimizer's element-wise work is not
    counted), and of the LLM's share beside the analytic estimate."""
    optimizer, schedule = plain_trainer(module, steps=1)
    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS) as counter:
        plain_step(module, batch, optimizer, schedule)
    llm_trains = module.parameter_counts["llm"]["trainable"] == module.parameter_counts["llm"]["total"]
    config = module.model.llm.config
    analytic = analytic_llm_flops(config, len(batch["text"]), llm_width(module.model, batch), llm_trains)
    return {
        "total": counter.get_total_flops(),
        "llm": llm_flops(module.model, batch),
        "llm_analytic": analytic,
    }


def llm_flops(model, batch: dict) -> int:
    """The LLM's forward and backward alone, from speech embeddings that need gradients as the converter's do.
    Counted apart because the counter's per-module split files the encoder's backward under the LLM: it tracks
    positional inputs only, and the LLM takes `inputs_embeds=` by keyword."""
    with torch.no_grad():
        speech, speech_lens = model.embed_speech(batch)
    targets = [model.transcript_ids(text) for text in batch["text"]]
    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS) as counter:
        model.loss(speech.requires_grad_(), speech_lens, targets).backward()
    return counter.get_total_flops()


def matmul_peak_flops(size: int, device: str, repeats: int = 5) -> float:
    """Achievable dense fp32 peak: best-of `torch.mm` of two size x size matrices (2 n^3 FLOPs)."""
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)

    def matmul():
        torch.mm(a, b)
        synchronize(device)

    matmul()
    return 2 * size**3 / best_of(matmul, repeats)


# ---------------------------------------------------------------- section 1: Lightning overhead


def lightning_overhead(llm_dir: str, scale: Scale) -> dict:
    """Fresh modules, Lightning and plain alternating `rounds` times in this process (noise hits both)."""
    data = training_batch(scale.seconds, scale.batch)
    medians: dict[str, list[float]] = {"lightning": [], "plain": []}
    for _ in range(scale.rounds):
        module = build_module(llm_dir, "lora")
        # Lightning's default_root_dir is the working directory, where a LoRA fit ends by exporting its adapter
        with tempfile.TemporaryDirectory() as scratch, contextlib.chdir(scratch):
            medians["lightning"].append(warm_median(lightning_step_times(module, data, scale.steps)))
        module = build_module(llm_dir, "lora")
        medians["plain"].append(warm_median(plain_step_times(module, data, scale.steps)))
    step_s = {arm: statistics.median(values) for arm, values in medians.items()}
    return {
        "step_s": step_s,
        "ratio": step_s["lightning"] / step_s["plain"],
        "flops": step_flops(build_module(llm_dir, "lora"), data),
        "per_round": medians,
    }


def print_lightning_overhead(result: dict, scale: Scale) -> None:
    print(
        f"\n## 1. Lightning overhead (CPU scale, recipe lora, batch {scale.batch} x {scale.seconds:g} s, "
        f"median of {scale.steps - WARMUP_STEPS} steps x {scale.rounds} alternating rounds)"
    )
    print("| loop | step (ms) | steps/s |\n|---|---|---|")
    for arm, seconds in result["step_s"].items():
        print(f"| {arm} | {seconds * 1e3:.1f} | {1 / seconds:.2f} |")
    rounds = ", ".join(
        f"{light / plain:.3f}" for light, plain in zip(*result["per_round"].values(), strict=True)
    )
    print(f"Lightning / plain step time: {result['ratio']:.3f} (goal <= 1.05); per round: {rounds}")


# ---------------------------------------------------------------- section 2: LoRA against full fine-tuning


def run_arm(recipe: str, llm_dir: str, steps: int, seconds: float, batch: int, device: str) -> dict:
    """One recipe's training steps (plain loop) in this process: its step time, FLOPs and peak memory."""
    module = build_module(llm_dir, recipe).to(device)
    data = training_batch(seconds, batch, device)
    # from_pretrained maps the weights file and its pages count once touched: touch them before the baseline
    with torch.no_grad():
        module.model(data["audio"], data["audio_lens"], data["text"])
    loaded_mb = memory_mb(device, peak=False)
    step_s = warm_median(plain_step_times(module, data, steps, device))
    peak_mb = memory_mb(device, peak=True)
    return {
        "recipe": recipe,
        "step_s": step_s,
        "peak_mb": peak_mb,
        "training_mb": peak_mb - loaded_mb,  # gradients, optimizer state, saved activations
        "counts": module.parameter_counts,
        "flops": step_flops(module, data),
    }


def memory_mb(device: str, peak: bool) -> float:
    """This process's peak RSS so far on CPU; on CUDA, memory allocated now or at its peak."""
    if device.startswith("cuda"):
        return (torch.cuda.max_memory_allocated() if peak else torch.cuda.memory_allocated()) / 2**20
    return peak_rss_mb()


def lora_against_full(llm_dir: str, scale: Scale, device: str, threads: int, isolate: bool) -> dict:
    """Each recipe in its own fresh process (`isolate`), so each peak is its own; in-process for --quick."""
    arguments = (llm_dir, scale.large_steps, scale.seconds, scale.large_batch, device)
    if isolate:
        options = ["--llm-dir", llm_dir, "--steps", str(scale.large_steps), "--seconds", str(scale.seconds)]
        options += ["--batch", str(scale.large_batch), "--device", device, "--threads", str(threads)]
        runs = alternate_arms(MODULE, ["lora", "full"], scale.large_rounds, options)
    else:
        runs = {recipe: [run_arm(recipe, *arguments)] for recipe in ("lora", "full")}
    arms = {
        recipe: {
            **results[0],
            "step_s": statistics.median(r["step_s"] for r in results),
            "peak_mb": max(r["peak_mb"] for r in results),
        }
        for recipe, results in runs.items()
    }
    lora, full = arms["lora"], arms["full"]
    return {
        "arms": arms,
        "isolated": isolate,
        "llm_params": full["counts"]["llm"]["total"],
        "step_ratio": full["step_s"] / lora["step_s"],
        "peak_ratio": full["peak_mb"] / lora["peak_mb"],
        "training_mb_ratio": full["training_mb"] / max(lora["training_mb"], 1.0),
        "lora_llm_fraction": lora["counts"]["llm"]["trainable"] / lora["counts"]["llm"]["total"],
        "lora_model_fraction": trainable_fraction(lora["counts"]),
    }


def trainable_fraction(counts: dict) -> float:
    return sum(c["trainable"] for c in counts.values()) / sum(c["total"] for c in counts.values())


def print_lora_against_full(result: dict, scale: Scale) -> None:
    where = (
        "each arm in its own process" if result["isolated"] else "both arms in one process: memory no claim"
    )
    print(
        f"\n## 2. LoRA (r 8, q/v) against full fine-tuning (LLM {result['llm_params']:,} parameters, batch "
        f"{scale.large_batch} x {scale.seconds:g} s, plain loop, {where})"
    )
    print(
        "| recipe | trainable | trainable % | step (s) | peak RSS (MB) | added by training (MB) |\n"
        "|---|---|---|---|---|---|"
    )
    for recipe, arm in result["arms"].items():
        trainable = sum(c["trainable"] for c in arm["counts"].values())
        print(
            f"| {recipe} | {trainable:,} | {trainable_fraction(arm['counts']) * 100:.2f} | {arm['step_s']:.3f} "
            f"| {arm['peak_mb']:.0f} | {arm['training_mb']:.0f} |"
        )
    print(
        f"full / LoRA: step time {result['step_ratio']:.2f}, peak memory {result['peak_ratio']:.2f}, memory "
        f"added by training {result['training_mb_ratio']:.1f}; LoRA trains {result['lora_llm_fraction'] * 100:.3f} "
        "% of the LLM's parameters (adapters included)"
    )


# ---------------------------------------------------------------- section 3: batched decoding


def utterances(scale: Scale, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-padded noise clips of evenly spread lengths, in shuffled order."""
    low, high = scale.utterance_seconds
    lengths = [
        int(16000 * (low + (high - low) * i / max(1, scale.utterances - 1))) for i in range(scale.utterances)
    ]
    random.Random(0).shuffle(lengths)
    generator = torch.Generator().manual_seed(2)
    audio = torch.zeros(len(lengths), 1, max(lengths))
    for row, length in enumerate(lengths):
        audio[row, 0, :length] = torch.randn(length, generator=generator) * 0.1
    return audio.to(device), torch.tensor(lengths, device=device)


def decoding_throughput(llm_dir: str, scale: Scale, device: str) -> dict:
    """transcribe over all utterances at once and one by one (each cut to its length), with one length bound for
    both (the longest item's), so both do the same decoding work and can be compared hypothesis by hypothesis."""
    model = build_module(llm_dir, "lora").model.eval().to(device)
    audio, lens = utterances(scale, device)
    bound = model.max_new_tokens(lens, 16000)
    modes = {
        name: batched_against_single(
            partial(model.transcribe, beams=beams, max_new_tokens=bound), audio, lens
        )
        for name, beams in (("greedy", 1), ("beam 4", 4))
    }
    return {
        "utterances": len(lens),
        "max_new_tokens": bound,
        "modes": modes,
        **same_llm_decoding(model, audio, lens, bound),
    }


def batched_against_single(transcribe, audio: torch.Tensor, lens: torch.Tensor) -> dict:
    hypotheses = {}

    def batched():
        hypotheses["batched"] = [item[0][0] for item in transcribe(audio, lens)]

    def one_by_one():
        items = [transcribe(audio[i : i + 1, :, : lens[i]], lens[i : i + 1])[0] for i in range(len(lens))]
        hypotheses["single"] = [item[0][0] for item in items]

    batched_s, single_s = best_of(batched, 1), best_of(one_by_one, 1)  # seconds-long runs: once each
    return {
        "batched_utt_per_s": len(lens) / batched_s,
        "single_utt_per_s": len(lens) / single_s,
        "speedup": single_s / batched_s,
        "identical": sum(a == b for a, b in zip(hypotheses["batched"], hypotheses["single"], strict=True)),
    }


@torch.no_grad()
def same_llm_decoding(model, audio: torch.Tensor, lens: torch.Tensor, bound: int) -> dict:
    """The LLM's part alone: each utterance's speech embeddings computed once, decoded left-padded in one batch
    and one by one. This is what left padding with attention-mask positions promises to keep identical; the
    encoder's own dependence on the batch (measured here too) is outside that promise."""
    embedded = [
        model.speech_embeddings(audio[i : i + 1, :, : lens[i]], lens[i : i + 1]) for i in range(len(lens))
    ]
    width = max(int(n) for _, n in embedded)
    speech = torch.zeros(len(lens), width, embedded[0][0].shape[-1], device=audio.device)
    for row, (frames, n) in enumerate(embedded):
        speech[row, : int(n)] = frames[0, : int(n)]
    speech_lens = torch.cat([n for _, n in embedded])
    identical = {}
    for name, beams in (("greedy", 1), ("beam 4", 4)):
        decode = partial(model.decode, beams=beams, nbest=1, max_new_tokens=bound)
        batched = decode(speech, speech_lens)
        alone = [decode(frames, n)[0] for frames, n in embedded]
        identical[name] = sum(a[0][0] == b[0][0] for a, b in zip(batched, alone, strict=True))
    # how far the encoder's batched embeddings drift from each utterance's own, on valid frames
    batched_speech, _ = model.speech_embeddings(audio, lens)
    drift = max(
        float((batched_speech[row, : int(n)] - frames[0, : int(n)]).abs().max())
        for row, (frames, n) in enumerate(embedded)
    )
    return {"llm_identical": identical, "speech_drift": drift, "speech_scale": float(speech.abs().max())}


def print_decoding(result: dict) -> None:
    count = result["utterances"]
    print(
        f"\n## 3. Batched against one-by-one decoding (transcribe, {count} utterances of varied length, "
        f"max_new_tokens {result['max_new_tokens']} for both)"
    )
    print(
        f"| search | batch {count} (utt/s) | batch 1 (utt/s) | batched / one-by-one | identical from audio "
        "| identical from the same speech embeddings |\n|---|---|---|---|---|---|"
    )
    for name, mode in result["modes"].items():
        print(
            f"| {name} | {mode['batched_utt_per_s']:.2f} | {mode['single_utt_per_s']:.2f} | {mode['speedup']:.2f}x "
            f"| {mode['identical']}/{count} | {result['llm_identical'][name]}/{count} |"
        )
    print(
        f"Speech embeddings, batched against alone: max |difference| {result['speech_drift']:.2g} "
        f"(max |value| {result['speech_scale']:.2g}): the encoder, not the LLM's padding, is batch-dependent"
    )


# ---------------------------------------------------------------- section 4: FLOPs and MFU


def mfu_rows(overhead: dict, recipes: dict, peaks: dict) -> list[dict]:
    rows = [
        ("1. Lightning, CPU scale, lora", overhead["flops"], overhead["step_s"]["lightning"], peaks["cpu"])
    ]
    for recipe, arm in recipes["arms"].items():
        label = f"2. plain, {recipes['llm_params'] / 1e6:.1f} M-param LLM, {recipe}"
        rows.append((label, arm["flops"], arm["step_s"], peaks["device"]))
    return [
        {
            "step": name,
            "gflop": flops["total"] / 1e9,
            "llm_gflop": flops["llm"] / 1e9,
            "llm_analytic_gflop": flops["llm_analytic"] / 1e9,
            "step_s": step_s,
            "gflop_per_s": flops["total"] / step_s / 1e9,
            "mfu": flops["total"] / step_s / peak,
        }
        for name, flops, step_s, peak in rows
    ]


def print_mfu(rows: list[dict], peaks: dict, device: str, size: int) -> None:
    print(
        f"\n## 4. FLOPs per training step (FlopCounterMode over one real step) and MFU\n"
        f"Achievable peak: CPU {peaks['cpu'] / 1e9:.1f} GFLOP/s (intra-op threads: {torch.get_num_threads()}), "
        f"best-of-5 fp32 torch.mm {size}x{size}"
        + (
            f"; {device_name(device)} {peaks['device'] / 1e12:.1f} TFLOP/s, same matmul"
            if device != "cpu"
            else ""
        )
    )
    print(
        "| step | GFLOP/step | LLM fwd+bwd GFLOP (counted / analytic) | step (s) | GFLOP/s | MFU |\n|---|---|---|---|---|---|"
    )
    for row in rows:
        print(
            f"| {row['step']} | {row['gflop']:.2f} | {row['llm_gflop']:.2f} / {row['llm_analytic_gflop']:.2f} | "
            f"{row['step_s']:.3f} | {row['gflop_per_s']:.1f} | {row['mfu'] * 100:.1f}% |"
        )


def device_name(device: str) -> str:
    return torch.cuda.get_device_name(device) if device.startswith("cuda") else "CPU"


# ---------------------------------------------------------------- main


def print_summary(results: dict) -> None:
    overhead, recipes, decoding = results["lightning_overhead"], results["lora_vs_full"], results["decoding"]
    modes = decoding["modes"]
    count = decoding["utterances"]
    mfu = ", ".join(f"{row['mfu'] * 100:.1f}%" for row in results["mfu"])
    print(
        "\n## Summary (ratios are the claims; absolute times depend on the shared machine)\n"
        f"Lightning / plain step time:         {overhead['ratio']:.3f} (goal <= 1.05)\n"
        f"full / LoRA step time:               {recipes['step_ratio']:.2f}\n"
        f"full / LoRA peak memory:             {recipes['peak_ratio']:.2f} "
        f"(added by training: {recipes['training_mb_ratio']:.1f})\n"
        f"LoRA trainable fraction:             {recipes['lora_llm_fraction'] * 100:.3f} % of the LLM, "
        f"{recipes['lora_model_fraction'] * 100:.2f} % of the model\n"
        f"batched / one-by-one, greedy:        {modes['greedy']['speedup']:.2f}x\n"
        f"batched / one-by-one, beam 4:        {modes['beam 4']['speedup']:.2f}x\n"
        f"identical hypotheses (audio):        greedy {modes['greedy']['identical']}/{count}, "
        f"beam 4 {modes['beam 4']['identical']}/{count}\n"
        f"identical hypotheses (embeddings):   greedy {decoding['llm_identical']['greedy']}/{count}, "
        f"beam 4 {decoding['llm_identical']['beam 4']}/{count}\n"
        f"MFU (Lightning lora, LoRA, full):    {mfu}"
    )


def resolve_device(requested: str) -> str:
    if requested.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device: running on CPU")
        return "cpu"
    return requested


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny everything: a smoke run")
    parser.add_argument(
        "--device", default="cpu", help="sections 2-4 (section 1's Lightning helper is CPU-only)"
    )
    # one intra-op thread by default: on a shared 2-core machine an OpenMP team whose other thread is descheduled
    # waits at every barrier: 2-thread steps ran 3-20x slower than 1-thread ones, which held within ~20%
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    parser.add_argument("--arm", help=argparse.SUPPRESS)  # internal: one section-2 arm, in this process
    parser.add_argument("--llm-dir", help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.arm:
        arm = run_arm(args.arm, args.llm_dir, args.steps, args.seconds, args.batch, args.device)
        print(json.dumps(arm))
        return arm

    quiet_libraries()
    scale, device = QUICK if args.quick else DEFAULT, resolve_device(args.device)
    with tempfile.TemporaryDirectory() as scratch:
        small = str(write_llm_dir(Path(scratch) / "small", scale.small_lm, scale.vocab_size))
        large = str(write_llm_dir(Path(scratch) / "large", scale.large_lm, scale.vocab_size))
        overhead = lightning_overhead(small, scale)
        print_lightning_overhead(overhead, scale)
        recipes = lora_against_full(large, scale, device, args.threads, isolate=not args.quick)
        print_lora_against_full(recipes, scale)
        decoding = decoding_throughput(small, scale, device)
        print_decoding(decoding)
    peaks = {"cpu": matmul_peak_flops(scale.matmul_size, "cpu")}
    peaks["device"] = matmul_peak_flops(scale.matmul_size, device) if device != "cpu" else peaks["cpu"]
    rows = mfu_rows(overhead, recipes, peaks)
    print_mfu(rows, peaks, device, scale.matmul_size)
    results = {
        "scale": asdict(scale),
        "device": device_name(device),
        "lightning_overhead": overhead,
        "lora_vs_full": recipes,
        "decoding": decoding,
        "peak_flops": peaks,
        "mfu": rows,
    }
    print_summary(results)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2))
    print(f"\nwritten to {args.output}")
    return results


if __name__ == "__main__":
    main()
