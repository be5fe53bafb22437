"""``efficientdet scaling-study``: compound scaling against one dimension at matched FLOPs
(:func:`efficientdet.studies.scaling_study.run_study`)."""

from __future__ import annotations

import argparse
import os
import sys

from ..modeling.scaling import BACKBONE_LADDERS, DEFAULT_BASE
from ..studies.scaling_study import DIMENSIONS, StudySettings, markdown_table, run_study
from .options import add_batch_size, add_out

NAME = "scaling-study"
HELP = "compound vs single-dimension scaling at matched FLOPs"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``efficientdet scaling-study``."""
    parser.add_argument("--phis", type=float, nargs="+", default=[1.0, 2.0], metavar="PHI",
                        help="compound points to match (the phi=0 baseline is always included)")
    parser.add_argument("--base", default=DEFAULT_BASE, help="registered model that is the phi=0 point")
    parser.add_argument("--neck", help="feature network (default: the base's)")
    parser.add_argument("--backbone", help="timm backbone kept fixed (default: the base's ladder)")
    parser.add_argument("--backbone-ladder", choices=sorted(BACKBONE_LADDERS))
    parser.add_argument("--num-classes", type=int, default=90, help="class count (training uses the data's)")
    parser.add_argument("--dimensions", nargs="+", choices=DIMENSIONS, default=list(DIMENSIONS))
    parser.add_argument("--image-scale", type=float, default=1.0,
                        help="scale the baseline input and the 128 px step (0.5: D0 at 256 px)")
    parser.add_argument("--resolution-step", type=int, default=32, help="px per resolution-only step")
    parser.add_argument("--tolerance", type=float, default=0.05, help="flag FLOP matches further off")
    add_batch_size(parser, "latency batch", default=1)
    parser.add_argument("--repeats", type=int, default=3, help="timed forward passes (0: no latency)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=max(1, min(2, os.cpu_count() or 1)))
    parser.add_argument("--train-steps", type=int, default=0, help="train each configuration N steps and report AP")
    parser.add_argument("--train-batch-size", type=int, default=4)
    parser.add_argument("--data", help="data.yaml with train/val splits (default: write a small demo set)")
    parser.add_argument("--demo-train", type=int, default=64)
    parser.add_argument("--demo-val", type=int, default=32)
    parser.add_argument("--train-set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="training override on top of the demo recipe, repeatable")
    parser.add_argument("--pretrained-backbone", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, default=1,
                        help="trainings per configuration (seeds SEED..SEED+N-1); finished ones are "
                             "recorded, so the same command resumes")
    add_out(parser, "output folder", default="runs/scaling-study")


def run(args: argparse.Namespace) -> int:
    """Run the study of ``args`` and print where its files are."""
    settings = StudySettings(
        phis=tuple(args.phis), base=args.base, neck=args.neck, backbone=args.backbone,
        backbone_ladder=args.backbone_ladder, num_classes=args.num_classes,
        dimensions=tuple(args.dimensions), image_scale=args.image_scale,
        resolution_search_step=args.resolution_step, tolerance=args.tolerance,
        latency_batch=args.batch_size, latency_repeats=args.repeats, latency_warmup=args.warmup,
        threads=args.threads, train_steps=args.train_steps, train_batch_size=args.train_batch_size,
        data=args.data, demo_train=args.demo_train, demo_val=args.demo_val,
        pretrained_backbone=args.pretrained_backbone, seed=args.seed, seeds=args.seeds,
        train_overrides=tuple(args.train_set),
    )
    command = "efficientdet " + " ".join(sys.argv[1:]) if sys.argv[1:] else None
    result = run_study(settings, args.out, command=command)
    print(markdown_table(result.rows))
    print(f"wrote {', '.join(str(p) for p in result.files.values())}")
    return 0
