"""``ktune``: the command line.

    ktune run EXP.yaml [--num-samples N] [--storage PATH] [--address ADDR] [--no-export]
    ktune export EXPERIMENT_DIR [--out DIR] [--force]
    ktune predict EXPORT_DIR TEXT [TEXT ...] [--json]

A mistake in the input (experiment file, data files, arguments, directories) prints one
line ``ktune: error: ...`` naming the key or file, and exits with code 2 before any work
starts.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Sequence

import ktune
from ktune.errors import KtuneUserError

__all__ = ["main", "build_parser"]

EXIT_USAGE = 2


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ktune",
        description="Tune Keras text classifiers with Optuna inside Ray Tune.",
    )
    parser.add_argument("--version", action="version", version=f"ktune {ktune.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the search an experiment file describes")
    run.add_argument("experiment", help="the experiment YAML file")
    run.add_argument("--num-samples", type=_positive_int, help="override search.num_samples")
    run.add_argument("--storage", help="override storage (results go to <storage>/<name>)")
    run.add_argument("--address", help="Ray address to join (auto, ray://host:10001)")
    run.add_argument("--no-export", action="store_true", help="skip the export at the end")

    exp = sub.add_parser("export", help="export the best trial of an experiment")
    exp.add_argument("experiment_dir", help="the experiment directory, <storage>/<name>")
    exp.add_argument("--out", help="target folder (default: EXPERIMENT_DIR/export)")
    exp.add_argument("--force", action="store_true", help="replace an existing export")

    pred = sub.add_parser("predict", help="classify texts with an exported SavedModel")
    pred.add_argument("export_dir", help="a folder written by ktune export")
    pred.add_argument("texts", nargs="+", metavar="TEXT", help="texts to classify")
    pred.add_argument("--json", action="store_true", help="print JSON lines with all scores")
    return parser


def _cmd_run(args: argparse.Namespace) -> int:
    from ktune.config import load_config
    from ktune.experiment import run_experiment

    cfg = load_config(
        args.experiment, num_samples=args.num_samples, storage=args.storage, address=args.address
    )
    run_experiment(cfg, export=False if args.no_export else None)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from ktune.experiment import read_experiment

    exp_dir = Path(args.experiment_dir)
    read_experiment(exp_dir)  # one clear line before TensorFlow loads
    out = Path(args.out) if args.out else exp_dir / "export"
    if out.exists() and not args.force:
        raise ktune.ExperimentError(f"{out}: export target already exists (use --force to replace it)")
    from ktune.export import export_best

    print(f"exported: {export_best(exp_dir, out, force=args.force)}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    d = Path(args.export_dir)
    if not (d / "saved_model.pb").is_file():
        raise ktune.ExperimentError(f"{d}: not a SavedModel export (no saved_model.pb)")
    from ktune.export import predict

    for row in predict(d, args.texts):
        if args.json:
            print(json.dumps(row, ensure_ascii=False))
        else:
            print(f"{row['label']}\t{row['score']:.4f}\t{row['text']}")
    return 0


_COMMANDS = {"run": _cmd_run, "export": _cmd_export, "predict": _cmd_predict}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("ktune: %(message)s"))
    logger = logging.getLogger("ktune")
    if not logger.handlers:
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        return _COMMANDS[args.command](args)
    except KtuneUserError as e:
        print(f"ktune: error: {e}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
