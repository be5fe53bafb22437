"""``efficientdet list``: registered model names, or those with published COCO weights
(:data:`efficientdet.modeling.pretrained.PRETRAINED`) with their size and reference AP."""

from __future__ import annotations

import argparse

NAME = "list"
HELP = "list registered model names"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``efficientdet list``."""
    parser.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. 'tf_*'")
    parser.add_argument("--pretrained", action="store_true",
                        help="only models with published COCO weights: file size and reference AP")


def _ap(value: float | None) -> str:
    return f"{value:.1f}" if value is not None else "-"


def run(args: argparse.Namespace) -> int:
    """Print the names matching ``args.pattern`` (a table of weights with ``--pretrained``)."""
    from ..modeling.registry import list_models

    if not args.pretrained:
        print("\n".join(list_models(args.pattern)))
        return 0
    from ..modeling.pretrained import PRETRAINED, base_url, cache_dir

    names = [n for n in list_models(args.pattern) if n in PRETRAINED]
    print(f"{'model':24s} {'size':>9s} {'AP effdet':>9s} {'AP TF':>6s}  cached")
    for name in names:
        row = PRETRAINED[name]
        cached = "yes" if row.cache_path.is_file() else "no"
        print(f"{name:24s} {row.size_mb:>6.1f} MB {_ap(row.reference_ap):>9s} {_ap(row.official_ap):>6s}  {cached}")
    print(
        "\nAP: COCO val2017 AP[.5:.95] (%) of these weights as published: 'AP effdet' by the "
        "reference port\neffdet (hard NMS), 'AP TF' by the official TensorFlow release "
        f"(soft-NMS); not measured here.\nweights from {base_url()}\ncache {cache_dir()}"
    )
    return 0
