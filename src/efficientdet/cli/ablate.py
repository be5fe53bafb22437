"""``efficientdet ablate``: its options, and the call of :func:`efficientdet.studies.ablation.run_ablation`
they make (with the short training of :mod:`efficientdet.studies.short_train` when asked to train)."""

from __future__ import annotations

import argparse
import functools
from pathlib import Path
from typing import Any

from ..config import FUSION_METHODS
from ..modeling.necks import NECKS
from ..studies import ablation
from ..studies.ablation import ABLATION_NECKS, FUSION_COMPARISON
from ..studies.repeats import bound_settings
from .options import add_out

NAME = "ablate"
HELP = "compare the feature networks (necks)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``efficientdet ablate``."""
    parser.add_argument(
        "--necks", nargs="+", default=list(ABLATION_NECKS), choices=sorted(NECKS), metavar="NECK",
        help=f"necks to compare (default: all: {' '.join(ABLATION_NECKS)})",
    )
    parser.add_argument(
        "--fusions", nargs="+", default=list(FUSION_COMPARISON), choices=FUSION_METHODS,
        metavar="FUSION",
        help="fusion methods compared on BiFPN (default: fast softmax sum)",
    )
    parser.add_argument(
        "--train-steps", type=int, default=0, metavar="N",
        help="also train each detector N steps (demo recipe, Lite0 size) and report validation AP",
    )
    parser.add_argument("--seeds", type=int, default=1, metavar="N",
                        help="trainings per neck with seeds 0..N-1: AP as mean and spread (default: 1); "
                             "finished ones are recorded, so running the same command again resumes")
    parser.add_argument("--train-batch", type=int, metavar="N",
                        help="images per training step (default: the demo recipe's)")
    parser.add_argument("--data", type=Path, metavar="YAML",
                        help="data.yaml with train and val splits to train on "
                             "(default: the demo data, written to OUT/demo_data)")
    parser.add_argument("--demo-train", type=int, metavar="N",
                        help="training images of the demo data (default: the demo's)")
    parser.add_argument("--demo-val", type=int, metavar="N",
                        help="validation images of the demo data (default: the demo's)")
    parser.add_argument("--train-set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="training override on top of the demo recipe, repeatable")
    add_out(parser, "output directory (default: runs/ablation)", default=Path("runs/ablation"),
            kind=Path, metavar="DIR")
    parser.add_argument("--runs", type=int, default=5, metavar="N",
                        help="timed runs per model; median and fastest reported (default: 5)")
    parser.add_argument("--no-latency", action="store_true", help="skip the CPU timing")


def _training_options(args: argparse.Namespace) -> list[str]:
    """The training options of ``args`` as command-line words (for the record)."""
    if not args.train_steps:
        return []
    words = ["--train-steps", str(args.train_steps), "--seeds", str(args.seeds)]
    for option, value in (
        ("--train-batch", args.train_batch), ("--data", args.data),
        ("--demo-train", args.demo_train), ("--demo-val", args.demo_val),
    ):
        if value is not None:
            words += [option, str(value)]
    for override in args.train_set:
        words += ["--train-set", override]
    return words


def short_train_fn(args: argparse.Namespace) -> functools.partial[Any]:
    """:func:`efficientdet.studies.short_train.short_train` on ``args.data`` (or the demo data, written
    once to ``args.out / "demo_data"``) with the batch and overrides of ``args``."""
    from ..studies.short_train import demo_data, short_train

    data = args.data
    if data is None:
        sizes = {"num_train": args.demo_train, "num_val": args.demo_val}
        data = demo_data(args.out / "demo_data", **{k: v for k, v in sizes.items() if v is not None})
    return functools.partial(
        short_train, data=data, batch_size=args.train_batch, overrides=args.train_set
    )


def run(args: argparse.Namespace) -> int:
    """Run :func:`run_ablation` from parsed ``efficientdet ablate`` arguments."""
    command = " ".join(
        ["efficientdet ablate", "--necks", *args.necks, "--fusions", *args.fusions]
        + _training_options(args)
        + ["--out", str(args.out), "--runs", str(args.runs)]
        + (["--no-latency"] if args.no_latency else [])
    )
    train_fn = short_train_fn(args) if args.train_steps > 0 else None
    # Settings read from the module at call time (tests shrink them).
    ablation.run_ablation(
        args.necks,
        out_dir=args.out,
        train_steps=args.train_steps,
        cost_settings=ablation.DEFAULT_COST_SETTINGS,
        latency_setting=None if args.no_latency else ablation.DEFAULT_LATENCY_SETTING,
        latency_runs=args.runs,
        fusions=args.fusions,
        train_fn=train_fn,
        train_setting=ablation.DEFAULT_TRAIN_SETTING,
        seeds=args.seeds,
        training=None if train_fn is None else bound_settings(train_fn),
        command=command,
    )
    return 0
