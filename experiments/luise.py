"""LUISE between iterations: probe every layer of a trained encoder, then write k-means labels of one layer.

    python -m experiments.luise probe  --run-id <luise run>            # per-layer CTC probe + purity/PNMI table
    python -m experiments.luise labels --run-id <luise run> --layer 3  # k-means labels beside the manifests

`probe` logs its table, a plot and `probe/*` metrics (step = layer) to the encoder's MLflow run when given a run id,
and names the best layer (highest PNMI, else lowest probe WER). `labels` fits k-means on a sample of that layer's
frames and writes `<out-dir>/<manifest folder>/<stem>_kmeans_labels.jsonl` per manifest (resumable, progress bar),
then prints the overrides of `experiment=ssl/luise_iter2`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from experiments.core.cli import add_checkpoint_source, data_dir, run_command
from experiments.core.pipelines.luise import label_manifests

DATA = data_dir()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m experiments.luise", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    probe = commands.add_parser("probe", help="CTC probe and cluster quality of every layer")
    labels = commands.add_parser("labels", help="k-means labels of one layer for iteration 2")
    for command in (probe, labels):
        add_checkpoint_source(command, "a LUISE (or CTC: --key net.encoder) training run")
        command.add_argument("--key", default="encoder", help="the encoder's key in the model config")
        command.add_argument("--seed", type=int, default=0)
    probe.add_argument("--train-manifest", default=str(DATA / "connected_digits" / "train.jsonl"))
    probe.add_argument("--test-manifest", default=str(DATA / "connected_digits" / "val.jsonl"))
    probe.add_argument("--train-limit", type=int, default=300)
    probe.add_argument("--test-limit", type=int, default=100)
    probe.add_argument("--steps", type=int, default=300)
    probe.add_argument("--clusters", type=int, default=50)
    probe.add_argument("--hidden", type=int, default=128, help="probe BiLSTM size (0: a linear probe)")
    labels.add_argument("--layer", type=int, required=True)
    labels.add_argument("--k", type=int, default=100)
    labels.add_argument("--manifests", nargs="+", default=[str(m) for m in label_manifests(DATA)])
    labels.add_argument("--fit-utterances", type=int, default=300)
    labels.add_argument("--out-dir", help="default: data/luise_labels/<hash of source, layer, k, seed>")
    labels.add_argument("--batch-size", type=int, default=8)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from experiments.core.checkpoints import load_submodule, resolve_checkpoint
    from experiments.core.dumps import checkpoint_source
    from experiments.core.luise import kmeans_labels, probe_and_report
    from experiments.core.stages import config_hash

    checkpoint = resolve_checkpoint(args.ckpt, args.run_id)
    encoder = load_submodule(args.key, ckpt_path=str(checkpoint))
    if args.command == "probe":
        probe_and_report(
            encoder,
            args.train_manifest,
            args.test_manifest,
            run_id=args.run_id,
            train_limit=args.train_limit,
            test_limit=args.test_limit,
            steps=args.steps,
            clusters=args.clusters,
            hidden=args.hidden,
            seed=args.seed,
        )
        return 0
    source = checkpoint_source(checkpoint, key=args.key)
    out_dir = Path(
        args.out_dir or DATA / "luise_labels" / config_hash([source, args.layer, args.k, args.seed])
    )
    kmeans_labels(
        encoder,
        args.manifests,
        args.layer,
        args.k,
        out_dir,
        fit_utterances=args.fit_utterances,
        seed=args.seed,
        batch_size=args.batch_size,
        source=source,
    )
    print(f"train with: experiment=ssl/luise_iter2 labels_dir={out_dir} model.num_labels={args.k}")
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))
