"""Research validity of semantic distillation: the same CPU-size tokenizer trained with and without a teacher
(same seed, data and steps), compared on held-out connected digits.

    python -m experiments.benchmarks.tokenizer.distillation --teacher-run <asr/ctc_digits MLflow run id>
    python -m experiments.benchmarks.tokenizer.distillation --hf-model /models/hubert-base   # any HuBERT dir

Without a teacher argument it first trains the CTC digit recogniser for --teacher-steps. Reported per test set
(seen speakers; held-out speaker 'theo'):
1. digit identity from RVQ-1 tokens: a linear probe on the bag of RVQ-1 codes of each digit segment (segments
   from the connected-digit construction; probe fitted on the validation utterances) -> distilled higher;
2. speaker similarity (resemblyzer) of RVQ-1-only resynthesis to its source -> distilled lower;
3. full-RVQ reconstruction: mel distance and PESQ -> distilled within 10% of undistilled.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from tqdm import tqdm

from datamodules.manifest import read_manifest
from experiments.core.compose import compose_config
from experiments.core.runner import train
from experiments.core.tokens import load_codec
from experiments.core.tracking import ROOT
from research.audio import load_audio
from research.metrics import SpeakerSimilarity, pesq_score
from research.probes import bag_of_codes, linear_probe_accuracy, segment_frames
from research.text import DIGIT_WORDS
from research.tokenizer.losses import MultiScaleMelLoss

ARMS = {"distilled": [], "undistilled": ["model/teacher=none"]}


def train_teacher(steps: int, output_dir) -> str:
    cfg = compose_config(
        ["experiment=asr/ctc_digits", f"trainer.max_steps={steps}", f"paths.output_dir={output_dir}"]
    )
    train(cfg)
    return str(output_dir / "checkpoints" / "last.ckpt")


def segment_tokens(codec, manifest_path, limit: int | None = None):
    """(bag-of-RVQ-1-codes per digit segment, digit labels) over a connected-digit manifest."""
    manifest = read_manifest(manifest_path)
    features, labels = [], []
    size = codec.quantizer.codebook_sizes[0]
    for index in range(min(limit or len(manifest), len(manifest))):
        wave = load_audio(manifest.audio_path(index), sample_rate=codec.sample_rate)
        rvq1 = codec.encode(wave[None], 1)[0, 0]
        for start, end, word in manifest.rows[index]["segments"]:
            features.append(bag_of_codes(rvq1[segment_frames(start, end, codec.frame_rate)], size))
            labels.append(DIGIT_WORDS.index(word))
    return torch.stack(features), torch.tensor(labels)


def reconstruction_and_speaker(codec, manifest_path, limit: int) -> dict[str, float]:
    manifest = read_manifest(manifest_path)
    mel = MultiScaleMelLoss(sample_rate=codec.sample_rate)
    speaker_full, speaker_rvq1 = SpeakerSimilarity(codec.sample_rate), SpeakerSimilarity(codec.sample_rate)
    mel_distances, pesqs = [], []
    for index in tqdm(range(min(limit, len(manifest))), desc="quality", leave=False):
        wave = load_audio(manifest.audio_path(index), sample_rate=codec.sample_rate)[None]
        full, rvq1 = codec.resynthesize(wave), codec.resynthesize(wave, 1)
        mel_distances.append(float(mel.distance(full, wave)))
        pesq = pesq_score(full[0, 0], wave[0, 0], codec.sample_rate)
        if pesq is not None:  # PESQ finds no speech in a few short clips
            pesqs.append(pesq)
        speaker_full.update(full, wave)
        speaker_rvq1.update(rvq1, wave)
    return {
        "mel_distance": sum(mel_distances) / len(mel_distances),
        "pesq": sum(pesqs) / len(pesqs),
        "speaker_sim_full": float(speaker_full.compute()),
        "speaker_sim_rvq1": float(speaker_rvq1.compute()),
    }


def evaluate_arm(ckpt: str, data_dir, quality_clips: int) -> dict[str, dict[str, float]]:
    codec = load_codec(ckpt=ckpt)
    digits = data_dir / "connected_digits"
    train_x, train_y = segment_tokens(codec, digits / "val.jsonl")
    results = {}
    for name, manifest in {"seen": digits / "test.jsonl", "heldout": digits / "test_heldout.jsonl"}.items():
        test_x, test_y = segment_tokens(codec, manifest)
        results[name] = {
            "probe_accuracy": linear_probe_accuracy(train_x, train_y, test_x, test_y),
            **reconstruction_and_speaker(codec, manifest, quality_clips),
        }
    return results


def print_table(results: dict) -> str:
    lines = [
        "| test set | arm | RVQ-1 digit probe acc | RVQ-1 speaker sim | full speaker sim | mel distance | PESQ |",
        "|---|---|---|---|---|---|---|",
    ]
    for test_set in ("seen", "heldout"):
        for arm, by_set in results.items():
            r = by_set[test_set]
            lines.append(
                f"| {test_set} | {arm} | {r['probe_accuracy']:.3f} | {r['speaker_sim_rvq1']:.3f} | "
                f"{r['speaker_sim_full']:.3f} | {r['mel_distance']:.3f} | {r['pesq']:.2f} |"
            )
    table = "\n".join(lines)
    print("\n" + table)
    return table


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    teacher = parser.add_mutually_exclusive_group()
    teacher.add_argument("--teacher-run", help="MLflow run id of an asr/ctc_digits run")
    teacher.add_argument("--teacher-ckpt", help="its checkpoint")
    teacher.add_argument("--hf-model", help="a HuBERT / WavLM directory instead of the CTC encoder")
    parser.add_argument("--teacher-steps", type=int, default=600, help="CTC steps when no teacher is given")
    parser.add_argument("--layer", default="3", help="teacher layer (CTC encoder: 0-4; HuBERT: 0-12 or avg)")
    parser.add_argument("--generator-steps", type=int, default=2000, help="training steps per arm")
    parser.add_argument(
        "--quality-clips", type=int, default=100, help="utterances per test set for PESQ etc."
    )
    parser.add_argument(
        "--out", help="output folder; arms whose checkpoint is already there are not retrained"
    )
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for both arms")
    args = parser.parse_args(argv)
    out = (
        Path(args.out)
        if args.out
        else ROOT / "runs" / "benchmarks" / time.strftime("tokenizer_distillation_%Y-%m-%d_%H-%M-%S")
    )
    start = time.perf_counter()
    if args.hf_model:
        teacher = [
            "model/teacher=hubert",
            f"model.teacher.model_dir={args.hf_model}",
            f"model.teacher.layer={args.layer}",
        ]
    else:
        source = f"model.teacher.run_id={args.teacher_run}" if args.teacher_run else None
        if source is None:
            ckpt = args.teacher_ckpt or train_teacher(args.teacher_steps, out / "teacher")
            source = f"model.teacher.ckpt_path={ckpt}"
        teacher = [source, f"model.teacher.layer={args.layer}"]
    common = [
        "experiment=tokenizer/cpu",
        "data.crop_seconds=1.0",
        # Reconstruction-only (no discriminator): the GAN triples the step time on this CPU, and the question is
        # what distillation puts into RVQ-1, which both arms share every other setting for.
        "model.discriminator=null",
        f"trainer.max_steps={args.generator_steps}",
        f"trainer.val_check_interval={args.generator_steps // 2}",  # validates at the last batch: last.ckpt is final
        "test=false",
        "task_name=bench_tokenizer_distillation",
        *args.overrides,
    ]
    results, runs = {}, {}
    for arm, extra in ARMS.items():
        cfg = compose_config(
            [*common, *(teacher if arm == "distilled" else []), *extra, f"paths.output_dir={out / arm}"]
        )
        ckpt = out / arm / "checkpoints" / "last.ckpt"
        arm_start = time.perf_counter()
        if not ckpt.is_file():
            train(cfg)
            runs[arm] = {"train_s": round(time.perf_counter() - arm_start, 1)}
        eval_start = time.perf_counter()
        results[arm] = evaluate_arm(str(ckpt), Path(cfg.paths.data_dir), args.quality_clips)
        runs.setdefault(arm, {})["eval_s"] = round(time.perf_counter() - eval_start, 1)
    table = print_table(results)
    wall = time.perf_counter() - start
    print(f"\nteacher: {' '.join(teacher)}; wall {wall / 60:.1f} min; {json.dumps(runs)}")
    out.mkdir(parents=True, exist_ok=True)
    report = {"results": results, "runs": runs, "teacher": teacher, "wall_s": round(wall, 1), "table": table}
    (out / "report.json").write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
