"""The ``efficientdet`` command line: thin subcommands that parse arguments and call the library.

Every command is a module of this package with ``NAME``, a one-line ``HELP``,
``add_arguments(parser)`` and ``run(args) -> int``. :data:`COMMANDS` lists them in the order a
user meets them, which is the order ``efficientdet --help`` shows: the demo (the first thing to
run), the workflow (train, eval, predict, export, serve), the data tools, then the studies and
the model inspection.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from types import ModuleType

from ..deploy.runtime import tune_cpu_allocator
from . import (
    ablate,
    benchmark,
    check_data,
    create,
    demo,
    demo_data,
    evaluate,
    export,
    info,
    list_models,
    predict,
    scaling_study,
    serve,
    train,
)

# The order of ``efficientdet --help``.
COMMANDS: tuple[ModuleType, ...] = (
    demo,
    train,
    evaluate,
    predict,
    export,
    benchmark,
    serve,
    check_data,
    demo_data,
    ablate,
    scaling_study,
    info,
    list_models,
    create,
)

_BY_NAME: dict[str, ModuleType] = {module.NAME: module for module in COMMANDS}


def build_parser() -> argparse.ArgumentParser:
    """The ``efficientdet`` parser: global options and one subparser per command module."""
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="efficientdet",
        description="EfficientDet object detection: models, training, evaluation, prediction, export.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="more log output")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS:
        module.add_arguments(sub.add_parser(module.NAME, help=module.HELP))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``efficientdet`` with ``argv`` (default: ``sys.argv[1:]``) and return the exit status.

    Expected failures (bad input, missing files, a refused option) print one line
    ``efficientdet COMMAND: error: ...`` and return 2 (``-v`` shows the traceback instead);
    Ctrl-C returns 130.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s: %(message)s"
    )
    if not args.command:
        parser.print_help()
        return 2
    try:
        tune_cpu_allocator()
        return int(_BY_NAME[args.command].run(args))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, RuntimeError) as err:
        if args.verbose:
            raise
        print(f"efficientdet {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
