"""Run a pipeline of stages: `python -m experiments.pipeline <name> --out DIR [options] [overrides]`.

Every stage is a child MLflow run of one pipeline run; a stage whose settings and inputs are unchanged and
whose outputs exist is skipped, so an interrupted or failed pipeline resumes where it stopped. Pipelines:
`luise` (iteration 1 -> probe -> labels -> iteration 2 -> probe -> SFT), `crpo` (text-to-audio SFT -> reward ->
iterations of generate, score, pair and train), `speech_llm` (LUISE -> labels -> text LM -> AcLLM SFT -> context
SFT -> MWER). `<name> --help` lists its options;
trailing Hydra overrides apply to every training stage.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from experiments.core.cli import ROOT, run_command
from experiments.core.pipelines import PIPELINES


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.pipeline", description=__doc__.split("\n")[0]
    )
    names = parser.add_subparsers(dest="pipeline", required=True)
    for name, module in PIPELINES.items():
        sub = names.add_parser(name, help=importlib.import_module(module).__doc__.split("\n")[0])
        sub.add_argument("--out", type=Path, default=ROOT / "runs" / f"{name}_pipeline", help="stage records")
        importlib.import_module(module).add_arguments(sub)
        sub.add_argument("overrides", nargs="*", help="Hydra overrides for every training stage")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from experiments.core.stages import Pipeline

    with Pipeline(args.pipeline, args.out) as pipeline:
        importlib.import_module(PIPELINES[args.pipeline]).run(pipeline, args)
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))
