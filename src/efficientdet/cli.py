"""The ``efficientdet`` command line: thin subcommands that parse arguments and call the library."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

log = logging.getLogger("efficientdet")

Command = Callable[[argparse.Namespace], int]
_COMMANDS: dict[str, Command] = {}


def command(name: str) -> Callable[[Command], Command]:
    def register(fn: Command) -> Command:
        _COMMANDS[name] = fn
        return fn

    return register


# ---- info / list -----------------------------------------------------------------------------


def _info_row(name: str) -> dict[str, Any]:
    from .profile import profile_config
    from .registry import get_config

    config = get_config(name)
    profile = profile_config(config)
    return {
        "name": name,
        "backbone": config.backbone,
        "params": profile.params,
        "params_m": round(profile.params_m, 3),
        "multiply_adds": profile.multiply_adds,
        "gmacs": round(profile.gmacs, 2),
        "image_size": list(config.image_size),
        "levels": [config.min_level, config.max_level],
        "bifpn_width": config.fpn_channels,
        "bifpn_depth": config.fpn_repeats,
        "head_depth": config.head_repeats,
        "neck": config.neck,
        "fusion": config.fusion,
        "activation": config.act,
        "padding": config.padding,
        "anchor_scale": config.anchors.anchor_scale,
        "num_classes": config.num_classes,
    }


@command("info")
def _cmd_info(args: argparse.Namespace) -> int:
    from .registry import list_models

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


@command("list")
def _cmd_list(args: argparse.Namespace) -> int:
    from .registry import list_models

    print("\n".join(list_models(args.pattern)))
    return 0


# ---- parser ------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="efficientdet",
        description="EfficientDet object detection: models, training, evaluation, prediction, export.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="more log output")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("info", help="parameters, FLOPs and structure of models")
    p.add_argument("names", nargs="*", metavar="NAME", help="model names (default: all)")
    p.add_argument("--all", action="store_true", help="every registered model")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("list", help="list registered model names")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. 'tf_*'")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s: %(message)s"
    )
    if not args.command:
        parser.print_help()
        return 2
    try:
        return _COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, PermissionError, RuntimeError) as err:
        if args.verbose:
            raise
        print(f"efficientdet {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
