"""Pipelines of `python -m experiments.pipeline <name>`: each module defines `add_arguments(parser)` (light
imports only, so `--help` answers at once) and `run(args)`."""

PIPELINES = {
    "luise": "experiments.core.pipelines.luise",
    "crpo": "experiments.core.pipelines.crpo",
    "speech_llm": "experiments.core.pipelines.speech_llm",
}


def common_overrides(args) -> list[str]:
    """Hydra overrides of every training stage: the data folder, `--common` and the trailing overrides."""
    return [f"paths.data_dir={args.data_dir}", *args.common, *args.overrides]
