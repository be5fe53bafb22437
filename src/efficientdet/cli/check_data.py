"""``efficientdet check-data``: validate a dataset before a long run
(:func:`efficientdet.data.check_dataset`) and measure how well a model's anchors fit its boxes
(:mod:`efficientdet.detection.anchor_fit`)."""

from __future__ import annotations

import argparse

from .options import add_image_size, add_model, image_size

NAME = "check-data"
HELP = "validate a dataset before a long run"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``efficientdet check-data``."""
    parser.add_argument(
        "--data", required=True,
        help="COCO .json, data.yaml, or a dataset folder as Roboflow, CVAT, Label Studio, "
        "Ultralytics or supervision export it",
    )
    parser.add_argument("--split", default="train")
    add_model(parser, "the model whose input size, pyramid and anchors the boxes are checked against",
              default="tf_efficientdet_d0")
    add_image_size(parser, "H [W] of the network input (default: the model's)")
    parser.add_argument("--no-decode", action="store_true", help="check image headers only (faster)")
    parser.add_argument("--fit-anchors", action="store_true",
                        help="search anchor scale and aspect ratios for the most matched boxes and "
                        "print the training override")


def run(args: argparse.Namespace) -> int:
    """Print the report and the anchor fit; 1 when the report has a fatal problem."""
    from ..data import check_dataset, format_report
    from ..detection.anchor_fit import fit_anchors, format_anchor_fit, matched_share
    from ..modeling.registry import get_config

    config = get_config(args.model)
    size = image_size(args.image_size) or config.image_size
    anchors = config.anchors
    # A path: an annotation file that cannot be read becomes a fatal problem in the report.
    report = check_dataset(
        args.data, split=args.split, input_size=size, decode_images=not args.no_decode,
        min_level=config.min_level, max_level=config.max_level, anchor_scale=anchors.anchor_scale,
    )
    print(format_report(report))
    if len(report.boxes):
        levels = (config.min_level, config.max_level)
        if args.fit_anchors:
            print(format_anchor_fit(fit_anchors(report.boxes, size, *levels, anchors)))
        else:
            share = matched_share(report.boxes, size, *levels, anchors)
            print(
                f"  anchors of {args.model} at input {size[0]}x{size[1]}: "
                f"{100 * (1 - share):.1f}% of the boxes are matched by no anchor at IoU 0.5 "
                "(--fit-anchors searches better ones)"
            )
    return 1 if report.fatal else 0
