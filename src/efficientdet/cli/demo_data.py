"""``efficientdet demo-data``: write the bundled digit-scenes dataset in COCO format
(:func:`efficientdet.data.write_demo_dataset`)."""

from __future__ import annotations

import argparse

from .options import add_out, positive_int

NAME = "demo-data"
HELP = "write the bundled digit-scenes dataset (COCO format)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``efficientdet demo-data``."""
    add_out(parser, "folder to write (default: data/digit-scenes)", default="data/digit-scenes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-train", type=int, default=1600)
    parser.add_argument("--num-val", type=int, default=250)
    parser.add_argument("--image-size", type=positive_int, default=320,
                        help="the longer image side in pixels (default: 320)")


def run(args: argparse.Namespace) -> int:
    """Write the dataset and print where its ``data.yaml`` is."""
    from ..data import write_demo_dataset

    files = write_demo_dataset(
        args.out, seed=args.seed, num_train=args.num_train, num_val=args.num_val,
        image_size=args.image_size,
    )
    print(f"wrote {files.data_yaml}")
    return 0
