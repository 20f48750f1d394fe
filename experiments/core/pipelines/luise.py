"""LUISE: iteration 1 -> layer probe -> k-means labels -> iteration 2 -> probe -> SFT (optional, per seed, with
a random-initialisation baseline).

    python -m experiments.pipeline luise --out runs/luise                        # the CPU recipe
    python -m experiments.pipeline luise --out runs/luise --layer 3 --k 100 --iter2-init-from-iter1 \\
        --sft data.train_fraction=0.1 --sft-baseline trainer.max_steps=500
"""

from __future__ import annotations

import argparse
from pathlib import Path

from experiments.core.cli import data_dir
from experiments.core.pipelines import common_overrides

LABEL_MANIFESTS = (
    "librispeech_unlabeled/all.jsonl",
    "connected_digits/train.jsonl",
    "connected_digits/val.jsonl",
)


def label_manifests(data: Path) -> list[Path]:
    """The manifests labelled for iteration 2 by default: the pretraining audio and the digit sets."""
    return [data / name for name in LABEL_MANIFESTS]


def add_pretraining_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the pretraining stages (iteration 1, probe, labels, iteration 2, probe)."""
    parser.add_argument(
        "--layer", type=int, help="iteration-1 layer for k-means (default: the probe's best layer)"
    )
    parser.add_argument("--k", type=int, default=100, help="k-means clusters = iteration-2 labels")
    parser.add_argument("--iter2-init-from-iter1", action="store_true", help="else iteration 2 starts fresh")
    parser.add_argument("--probe-steps", type=int, default=300)
    parser.add_argument("--probe-train-limit", type=int, default=300)
    parser.add_argument("--probe-clusters", type=int, default=50)
    parser.add_argument("--probe-hidden", type=int, default=128, help="probe BiLSTM size (0: a linear probe)")
    parser.add_argument("--data-dir", type=Path, default=data_dir())
    parser.add_argument(
        "--label-manifests", nargs="*", type=Path, help="default: LibriSpeech excerpts, digits train and val"
    )
    parser.add_argument("--common", nargs="*", default=[], help="Hydra overrides for every training stage")
    parser.add_argument("--iter1", nargs="*", default=[], help="Hydra overrides for iteration 1")
    parser.add_argument("--iter2", nargs="*", default=[], help="Hydra overrides for iteration 2")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_pretraining_arguments(parser)
    parser.add_argument(
        "--sft", nargs="*", default=None, help="Hydra overrides for SFT (SFT runs when given)"
    )
    parser.add_argument(
        "--sft-baseline", action="store_true", help="also fine-tune the encoder from random initialisation"
    )
    parser.add_argument(
        "--sft-seeds", nargs="*", type=int, default=[], help="repeat SFT (and its baseline) with these seeds"
    )
    parser.add_argument(
        "--sft-name",
        default="",
        help="suffix of the SFT stages' names (e.g. _f0.01): several SFT settings side by side in one --out",
    )


def sft_seeds(extra: list[int]) -> list[tuple[str, list[str]]]:
    """(stage-name suffix, overrides) of each SFT repetition: the configured seed, then one per extra seed (which
    also draws another training subset, so a spread over seeds covers data, initialisation and order)."""
    return [("", []), *((f"_seed{seed}", [f"seed={seed}"]) for seed in extra)]


def probe_stage(pipeline, name: str, trained_stage: str, args) -> dict:
    from experiments.core.checkpoints import load_submodule
    from experiments.core.luise import probe_and_report

    trained = pipeline.done[trained_stage]
    settings = {
        "steps": args.probe_steps,
        "train_limit": args.probe_train_limit,
        "clusters": args.probe_clusters,
        "hidden": args.probe_hidden,
    }

    def run(run_id: str) -> dict:
        encoder = load_submodule("encoder", ckpt_path=trained["ckpt"])
        rows = probe_and_report(
            encoder,
            args.digits / "train.jsonl",
            args.digits / "val.jsonl",
            run_id=run_id,
            train_limit=args.probe_train_limit,
            steps=args.probe_steps,
            clusters=args.probe_clusters,
            hidden=args.probe_hidden,
        )
        return {"rows": rows}  # the best layer is derived from the rows where needed, so it follows the rule

    return pipeline.stage(name, settings=settings, run=run, reads=(trained_stage,))


def labels_stage(pipeline, args) -> dict:
    from experiments.core.checkpoints import load_submodule
    from experiments.core.dumps import checkpoint_source
    from experiments.core.luise import kmeans_labels
    from experiments.core.stages import config_hash
    from research.ssl.layer_probe import best_layer

    iter1 = pipeline.done["iter1"]
    layer = args.layer if args.layer is not None else best_layer(pipeline.done["probe1"]["rows"])
    manifests = args.label_manifests or label_manifests(args.data_dir)
    # a folder per setting: labels of another layer or k are never mixed in
    labels_dir = args.out / "labels" / config_hash({"iter1": iter1["hash"], "layer": layer, "k": args.k})

    def run(run_id: str) -> dict:
        encoder = load_submodule("encoder", ckpt_path=iter1["ckpt"])
        source = checkpoint_source(iter1["ckpt"], key="encoder")
        centroids, written = kmeans_labels(encoder, manifests, layer, args.k, labels_dir, source=source)
        return {
            "layer": layer,
            "labels_dir": str(labels_dir),
            "centroids": str(centroids),
            "manifests": {k: str(v) for k, v in written.items()},
        }

    return pipeline.stage(
        "labels",
        settings={"layer": layer, "k": args.k, "manifests": [str(m) for m in manifests]},
        run=run,
        outputs=lambda r: [r["centroids"], *r["manifests"].values()],
        reads=("iter1",) if args.layer is not None else ("iter1", "probe1"),
    )


def pretrain(pipeline, args: argparse.Namespace) -> None:
    """Iteration 1 -> probe -> labels -> iteration 2 -> probe (records in `pipeline.done`)."""
    args.digits = args.data_dir / "connected_digits"
    common = common_overrides(args)
    iter1 = pipeline.train_stage("iter1", ["experiment=ssl/luise_iter1", *common, *args.iter1])
    probe_stage(pipeline, "probe1", "iter1", args)
    labels = labels_stage(pipeline, args)
    # the encoder's config node is replaced, not merged into (Hydra's struct mode refuses new keys)
    init = (
        [
            "~model.encoder",
            "+model.encoder={_target_: experiments.core.checkpoints.load_submodule, key: encoder, "
            f"ckpt_path: {iter1['ckpt']}, train: true}}",
        ]
        if args.iter2_init_from_iter1
        else []
    )
    pipeline.train_stage(
        "iter2",
        [
            "experiment=ssl/luise_iter2",
            f"labels_dir={labels['labels_dir']}",
            f"model.num_labels={args.k}",
            *init,
            *common,
            *args.iter2,
        ],
        reads=("labels", "iter1") if args.iter2_init_from_iter1 else ("labels",),
    )
    probe_stage(pipeline, "probe2", "iter2", args)


def run(pipeline, args: argparse.Namespace) -> None:
    pretrain(pipeline, args)
    if args.sft is None:
        return
    iter2 = pipeline.done["iter2"]
    common = common_overrides(args)
    for suffix, reseed in sft_seeds(args.sft_seeds):
        sft = [*common, *args.sft, *reseed]
        pipeline.train_stage(
            f"sft{args.sft_name}{suffix}",
            ["experiment=ssl/luise_sft", f"model.net.encoder.ckpt_path={iter2['ckpt']}", *sft],
            reads=("iter2",),
        )
        if (
            args.sft_baseline
        ):  # the same encoder and data from random initialisation, the CTC baseline's recipe
            pipeline.train_stage(
                f"sft_scratch{args.sft_name}{suffix}", ["experiment=asr/ctc_digits", "task_name=luise", *sft]
            )
