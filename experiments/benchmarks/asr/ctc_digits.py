"""Benchmark: the asr/ctc_digits baseline trained from scratch, WER on seen and held-out speakers, wall time.

    python -m experiments.benchmarks.asr.ctc_digits [hydra overrides...]

Target: <= 10% WER on the connected-digit test set of seen speakers within 15 minutes on a 2-core CPU.
"""

from __future__ import annotations

import json
import sys
import time

from experiments.core.compose import compose_config
from experiments.core.runner import train
from experiments.core.tracking import ROOT

TARGET_WER = 0.10
BUDGET_S = 15 * 60


def main(overrides: list[str]) -> dict:
    output_dir = ROOT / "runs" / "benchmarks" / time.strftime("ctc_digits_%Y-%m-%d_%H-%M-%S")
    cfg = compose_config(["experiment=asr/ctc_digits", f"paths.output_dir={output_dir}", *overrides])
    # data preparation is excluded from the timed training (it is cached after the first run)
    from hydra.utils import instantiate

    instantiate(cfg.data).prepare_data()
    start = time.perf_counter()
    metrics = train(cfg)
    wall = time.perf_counter() - start
    report = {
        "wer_seen": metrics["test/wer"],
        "cer_seen": metrics["test/cer"],
        "wer_heldout": metrics["test_heldout/wer"],
        "cer_heldout": metrics["test_heldout/cer"],
        "wall_s": round(wall, 1),
        "steps": cfg.trainer.max_steps,
    }
    print("\n| test set | WER | CER |\n|---|---|---|")
    print(f"| seen speakers | {report['wer_seen']:.3f} | {report['cer_seen']:.3f} |")
    print(f"| held-out speaker | {report['wer_heldout']:.3f} | {report['cer_heldout']:.3f} |")
    verdict = "meets" if report["wer_seen"] <= TARGET_WER and wall <= BUDGET_S else "misses"
    print(f"wall time {wall / 60:.1f} min for {report['steps']} steps: {verdict} the target")
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "report.json").write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
