"""LUISE as one pipeline: iteration 1 -> layer probe -> k-means labels -> iteration 2 -> probe -> SFT.

    python -m experiments.luise_pipeline --out runs/luise                        # the CPU recipe
    python -m experiments.luise_pipeline --out runs/luise --layer 3 --k 100 --iter2-init-from-iter1 \\
        --common trainer.max_steps=500 --sft data.train_fraction=0.1 --sft-baseline

Every stage becomes an MLflow run nested under one pipeline run (training stages through `experiments.train`,
tagged `voxlab.pipeline_stage`). A stage is skipped when `<out>/stages/<name>.json` records the same config hash
(its own settings plus those of the stages it reads) and its outputs still exist, so an interrupted pipeline
resumes where it stopped and a changed setting reruns only what depends on it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from hydra import compose, initialize_config_module
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from experiments import tracking
from experiments.checkpoints import load_submodule
from experiments.luise import (
    best_layer,
    config_hash,
    format_table,
    kmeans_labels,
    log_probe_to_mlflow,
    probe_layers,
)
from experiments.train import resumed_run_id, train


class Pipeline:
    def __init__(self, out: Path, parent_run_id: str):
        self.out, self.parent = out, parent_run_id
        (out / "stages").mkdir(parents=True, exist_ok=True)
        self.done: dict[str, dict] = {}

    def stage(
        self,
        name: str,
        settings: dict,
        run: Callable[[], dict],
        outputs: Callable[[dict], list[Path]],
        reads: tuple[str, ...] = (),
    ):
        """Run `run` (returns the stage record) unless a record with the same hash exists with its outputs. The
        hash covers `settings` and the hashes of the stages it `reads`, so a change reruns only what depends on it."""
        record_path = self.out / "stages" / f"{name}.json"
        digest = config_hash({"settings": settings, "upstream": {k: self.done[k]["hash"] for k in reads}})
        if record_path.is_file():
            record = json.loads(record_path.read_text())
            if record["hash"] == digest and all(Path(p).exists() for p in outputs(record)):
                print(f"[{name}] done already (hash {digest}), skipped")
                self.done[name] = record
                return record
        print(f"[{name}] running (hash {digest})")
        record = {**run(), "hash": digest}
        record_path.write_text(json.dumps(record, indent=2))
        self.done[name] = record
        return record

    def train_stage(self, name: str, overrides: list[str], reads: tuple[str, ...] = ()) -> dict:
        output_dir = self.out / name
        with initialize_config_module(config_module="experiments.configs", version_base="1.3"):
            cfg = compose("train", overrides=[*overrides, f"paths.output_dir={output_dir}"])
        settings = OmegaConf.to_container(cfg, resolve=False)  # the whole composed config, before the tags
        cfg.tags = {"mlflow.parentRunId": self.parent, f"{tracking.TAG_PREFIX}pipeline_stage": name}

        def run() -> dict:
            # a rerun's checkpoints would be saved beside the stale ones as last-v1.ckpt, and last.ckpt read back
            shutil.rmtree(output_dir / "checkpoints", ignore_errors=True)
            metrics = train(cfg)
            ckpt = output_dir / "checkpoints" / "last.ckpt"
            return {"ckpt": str(ckpt), "run_id": resumed_run_id(str(ckpt)), "metrics": metrics}

        return self.stage(name, settings, run, lambda record: [Path(record["ckpt"])], reads)


def probe_stage(pipeline: Pipeline, name: str, trained_stage: str, args) -> dict:
    trained = pipeline.done[trained_stage]
    settings = {
        "steps": args.probe_steps,
        "train_limit": args.probe_train_limit,
        "clusters": args.probe_clusters,
        "hidden": args.probe_hidden,
    }

    def run() -> dict:
        encoder = load_submodule("encoder", ckpt_path=trained["ckpt"])
        rows = probe_layers(
            encoder,
            args.digits / "train.jsonl",
            args.digits / "val.jsonl",
            train_limit=args.probe_train_limit,
            steps=args.probe_steps,
            clusters=args.probe_clusters,
            hidden=args.probe_hidden,
        )
        print(format_table(rows))
        if trained.get("run_id"):
            log_probe_to_mlflow(trained["run_id"], rows)
        return {"rows": rows}  # the best layer is derived from the rows where needed, so it follows the rule

    return pipeline.stage(name, settings, run, lambda record: [], reads=(trained_stage,))


def sft_seeds(extra: list[int]) -> list[tuple[str, list[str]]]:
    """(stage-name suffix, overrides) of each SFT repetition: the configured seed, then one per extra seed (which
    also draws another training subset, so a spread over seeds covers data, initialisation and order)."""
    return [("", []), *((f"_seed{seed}", [f"seed={seed}"]) for seed in extra)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.luise_pipeline", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--out", type=Path, default=tracking.ROOT / "runs" / "luise_pipeline")
    parser.add_argument(
        "--layer", type=int, help="iteration-1 layer for k-means (default: the probe's best layer)"
    )
    parser.add_argument("--k", type=int, default=100, help="k-means clusters = iteration-2 labels")
    parser.add_argument("--iter2-init-from-iter1", action="store_true", help="else iteration 2 starts fresh")
    parser.add_argument("--probe-steps", type=int, default=300)
    parser.add_argument("--probe-train-limit", type=int, default=300)
    parser.add_argument("--probe-clusters", type=int, default=50)
    parser.add_argument("--probe-hidden", type=int, default=128, help="probe BiLSTM size (0: a linear probe)")
    parser.add_argument("--data-dir", type=Path, default=tracking.ROOT / "data")
    parser.add_argument(
        "--label-manifests", nargs="*", type=Path, help="default: LibriSpeech excerpts, digits train and val"
    )
    parser.add_argument("--common", nargs="*", default=[], help="Hydra overrides for every training stage")
    parser.add_argument("--iter1", nargs="*", default=[], help="Hydra overrides for iteration 1")
    parser.add_argument("--iter2", nargs="*", default=[], help="Hydra overrides for iteration 2")
    parser.add_argument(
        "--sft", nargs="*", default=None, help="Hydra overrides for SFT (SFT runs when given)"
    )
    parser.add_argument(
        "--sft-baseline", action="store_true", help="also fine-tune the encoder from random initialisation"
    )
    parser.add_argument(
        "--sft-seeds", nargs="*", type=int, default=[], help="repeat SFT (and its baseline) with these seeds"
    )
    args = parser.parse_args(argv)
    args.digits = args.data_dir / "connected_digits"
    common = [f"paths.data_dir={args.data_dir}", *args.common]

    client = MlflowClient(tracking.tracking_uri())
    experiment = client.get_experiment_by_name("luise") or client.get_experiment(
        client.create_experiment("luise")
    )
    parent = client.create_run(
        experiment.experiment_id,
        run_name=f"pipeline {args.out.name}",
        tags={f"{tracking.TAG_PREFIX}role": "pipeline", f"{tracking.TAG_PREFIX}pipeline_dir": str(args.out)},
    )
    pipeline = Pipeline(args.out, parent.info.run_id)

    iter1 = pipeline.train_stage("iter1", ["experiment=ssl/luise_iter1", *common, *args.iter1])
    probe1 = probe_stage(pipeline, "probe1", "iter1", args)
    layer = args.layer if args.layer is not None else best_layer(probe1["rows"])
    manifests = args.label_manifests or [
        args.data_dir / "librispeech_unlabeled" / "all.jsonl",
        args.digits / "train.jsonl",
        args.digits / "val.jsonl",
    ]
    # the dump keeps labels it finds (resumable): a folder per setting, or another layer's labels would be reused
    labels_dir = args.out / "labels" / config_hash({"iter1": iter1["hash"], "layer": layer, "k": args.k})

    def make_labels() -> dict:
        encoder = load_submodule("encoder", ckpt_path=iter1["ckpt"])
        centroids, written = kmeans_labels(encoder, manifests, layer, args.k, labels_dir)
        return {
            "layer": layer,
            "labels_dir": str(labels_dir),
            "centroids": str(centroids),
            "manifests": {k: str(v) for k, v in written.items()},
        }

    labels = pipeline.stage(
        "labels",
        {"layer": layer, "k": args.k},
        make_labels,
        lambda r: [Path(r["centroids"]), *map(Path, r["manifests"].values())],
        reads=("iter1",) if args.layer is not None else ("iter1", "probe1"),
    )
    # the encoder's config node is replaced, not merged into (Hydra's struct mode refuses new keys)
    init = (
        [
            "~model.encoder",
            f"+model.encoder={{_target_: experiments.checkpoints.load_submodule, key: encoder, ckpt_path: {iter1['ckpt']}, train: true}}",
        ]
        if args.iter2_init_from_iter1
        else []
    )
    iter2_overrides = [
        "experiment=ssl/luise_iter2",
        f"labels_dir={labels['labels_dir']}",
        f"model.num_labels={args.k}",
        *init,
        *common,
        *args.iter2,
    ]
    iter2 = pipeline.train_stage(
        "iter2", iter2_overrides, reads=("labels", "iter1") if args.iter2_init_from_iter1 else ("labels",)
    )
    probe_stage(pipeline, "probe2", "iter2", args)
    if args.sft is not None:
        for suffix, reseed in sft_seeds(args.sft_seeds):
            sft = [*common, *args.sft, *reseed]
            pipeline.train_stage(
                f"sft{suffix}",
                ["experiment=ssl/luise_sft", f"model.net.encoder.ckpt_path={iter2['ckpt']}", *sft],
                reads=("iter2",),
            )
            if args.sft_baseline:
                # the same encoder and data from random initialisation, with the CTC baseline's recipe
                pipeline.train_stage(
                    f"sft_scratch{suffix}", ["experiment=asr/ctc_digits", "task_name=luise", *sft]
                )
    client.log_dict(parent.info.run_id, pipeline.done, "stages.json")
    client.set_terminated(parent.info.run_id)
    print(f"pipeline run {parent.info.run_id}: stages {', '.join(pipeline.done)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
