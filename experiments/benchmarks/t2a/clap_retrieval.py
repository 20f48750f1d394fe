"""Benchmark: the CLAP reward model (`experiment=reward/clap_digits`) trained from scratch, top-1 retrieval on
FSDD captions, wall time.

    python -m experiments.benchmarks.t2a.clap_retrieval [hydra overrides...]

Val and test captions are (speaker, digit) pairings never heard in training, so retrieval there measures
composition; `seen` holds the training captions on recordings left out of training. The best checkpoint (by
val/retrieval_a2t) is scored on val, test and seen. Columns: `caption` = audio->text top-1 among the set's
captions, `speaker` / `digit` = whether that choice names the right speaker / says the right digit, `t2a` =
text->audio top-1, `caption (all)` = audio->text with the 36 training captions added to the candidates.
"""

from __future__ import annotations

import json
import sys
import time

from experiments.core.compose import compose_config
from experiments.core.runner import train
from experiments.core.tracking import ROOT

SETS = {"val": "test_val", "test": "test", "seen": "test_seen"}


def main(overrides: list[str]) -> dict:
    output_dir = ROOT / "runs" / "benchmarks" / time.strftime("clap_retrieval_%Y-%m-%d_%H-%M-%S")
    cfg = compose_config(
        [
            "experiment=reward/clap_digits",
            f"paths.output_dir={output_dir}",
            "+data.test_manifests.val=${paths.data_dir}/fsdd_captions/val.jsonl",  # val, at the best checkpoint
            *overrides,
        ]
    )
    from hydra.utils import instantiate

    instantiate(cfg.data).prepare_data()  # data preparation is not timed (cached after the first run)
    start = time.perf_counter()
    metrics = train(cfg)
    wall = time.perf_counter() - start
    report: dict = {"wall_s": round(wall, 1), "steps": cfg.trainer.max_steps}
    print(
        "\n| set | captions | caption | speaker | digit | t2a | caption (all) |\n|---|---|---|---|---|---|---|"
    )
    for name, prefix in SETS.items():

        def get(key: str, prefix: str = prefix) -> float:
            return metrics.get(f"{prefix}/{key}", float("nan"))

        row = {
            "captions": int(get("captions")),
            "caption": get("retrieval_a2t"),
            "speaker": get("retrieval_speaker"),
            "digit": get("retrieval_words"),
            "t2a": get("retrieval_t2a"),
            "caption_all": get("retrieval_a2t_all"),
        }
        report[name] = row
        cells = " | ".join(f"{row[k]:.3f}" for k in ("caption", "speaker", "digit", "t2a", "caption_all"))
        print(f"| {name} | {row['captions']} | {cells} |")
    print(
        f"wall time {wall / 60:.1f} min for {report['steps']} steps (training, validation and the test pass)"
    )
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "report.json").write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
