"""``efficientdet info``: parameters, multiply-adds and structure of registered or
compound-scaled models (:func:`efficientdet.modeling.profile.info_row`)."""

from __future__ import annotations

import argparse
import json
from typing import Any

NAME = "info"
HELP = "parameters, FLOPs and structure of models"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``efficientdet info``."""
    parser.add_argument("names", nargs="*", metavar="NAME", help="model names (default: all)")
    parser.add_argument("--all", action="store_true", help="every registered model")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--phi", type=float, action="append", help="a compound-scaled model (repeatable)")
    parser.add_argument("--neck", help="neck for --phi models")


def _info_row(name: str) -> dict[str, Any]:
    """The ``info`` row of the registered model ``name``."""
    from ..modeling.profile import info_row
    from ..modeling.registry import get_config

    return info_row(get_config(name))


def run(args: argparse.Namespace) -> int:
    """Print one row per model: a table, or JSON with ``--json``."""
    from ..modeling.registry import list_models

    if args.phi:
        from ..modeling.scaling import info_for_phi

        rows = [info_for_phi(phi, neck=args.neck) for phi in args.phi]
    else:
        names = list_models() if args.all or not args.names else args.names
        rows = [_info_row(n) for n in names]
    if args.json:
        print(json.dumps(rows if len(rows) > 1 else rows[0], indent=2))
        return 0
    header = f"{'model':24s} {'input':>9s} {'params':>8s} {'GMACs':>8s} {'levels':>6s} {'W':>4s} {'D':>2s} {'head':>4s} {'fusion':>7s}  backbone"
    print(header)
    print("-" * len(header))
    for r in rows:
        size = "x".join(str(s) for s in r["image_size"])
        levels = "P{}-P{}".format(*r["levels"])
        print(
            f"{r['name']:24s} {size:>9s} {r['params_m']:>7.2f}M {r['gmacs']:>8.2f} {levels:>6s} "
            f"{r['bifpn_width']:>4d} {r['bifpn_depth']:>2d} {r['head_depth']:>4d} {r['fusion']:>7s}  {r['backbone']}"
        )
    return 0
