"""``efficientdet train``: train on a dataset from a YAML configuration and ``--set``
overrides (:func:`efficientdet.train.train`), plan a recipe for ``--minutes N``, resume a run,
or launch ``--nproc N`` data-parallel processes.

``--out``, ``--model``, ``--epochs``, ``--batch-size``, ``--device`` and ``--image-size`` are
shorthands for the ``--set`` keys in :data:`SHORTHANDS`. Naming a key both ways is refused
(which of the two was meant cannot be told). With ``--resume`` they are overrides of the run's
saved configuration, as ``--set`` is, except ``--out``: a resumed run stays in RUN_DIR.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from .options import (
    add_batch_size,
    add_device,
    add_epochs,
    add_image_size,
    add_model,
    add_out,
    image_size,
    positive_int,
)

log = logging.getLogger("efficientdet")

NAME = "train"
HELP = "train on a dataset (YAML config + --set overrides)"

# Option dest -> the configuration key it is short for.
SHORTHANDS: dict[str, str] = {
    "out": "run.out_dir",
    "model": "model.name",
    "epochs": "run.epochs",
    "batch_size": "run.batch_size",
    "device": "run.device",
    "image_size": "model.image_size",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``efficientdet train``."""
    p = parser
    p.add_argument("--config", help="YAML file with model/data/optim/run sections")
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override, repeatable")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run where it stopped")
    p.add_argument("--nproc", type=int, default=0, help="launch N processes with torchrun (DDP)")
    p.add_argument("--data", metavar="PATH",
                   help="dataset (data.yaml, COCO json or a folder) for data.train and data.val")
    p.add_argument("--minutes", type=float, metavar="N",
                   help="plan a recipe for --data that fits N minutes on this machine (frozen, "
                        "cached backbone; views, input size, flips, schedule chosen and printed; "
                        "--config and --set values are kept)")
    add_out(p, "run folder (--set run.out_dir)", metavar="DIR")
    add_model(p, "architecture, e.g. tf_efficientdet_lite0 (--set model.name)")
    add_epochs(p, "training epochs (--set run.epochs)")
    add_batch_size(p, "images per step and process (--set run.batch_size)", kind=positive_int)
    add_device(p, "auto, cpu, cuda or cuda:N (--set run.device)", default=None)
    add_image_size(p, "H [W] of the network input (--set model.image_size)")


def train_overrides(args: argparse.Namespace) -> list[str]:
    """The ``section.key=value`` overrides of ``args``: the shorthands given, then ``--set``.

    Raises:
        ValueError: a key given both as a shorthand and by ``--set``, or ``--out`` with
            ``--resume``.
    """
    from ..train.config import parse_override

    given = list(args.set or [])
    set_keys = {".".join(parse_override(text)[0]) for text in given}
    shorthands: list[str] = []
    for dest, key in SHORTHANDS.items():
        value = getattr(args, dest)
        if value is None:
            continue
        option = "--" + dest.replace("_", "-")
        if dest == "out" and args.resume:
            raise ValueError(f"--resume continues the run in its own folder ({args.resume}); "
                             "--out names the folder of a new run")
        if key in set_keys:
            raise ValueError(f"{option} and --set {key}=... both set {key}; give one of them")
        if dest == "image_size":
            value = list(image_size(value) or ())
        # JSON is YAML: a string stays a string ('--out yes' is no boolean).
        shorthands.append(f"{key}={json.dumps(value)}")
    return [*shorthands, *given]


def run(args: argparse.Namespace) -> int:
    """Train (or resume, or launch ``--nproc`` processes) and print how the run ended."""
    if args.nproc and args.nproc > 1:
        from ..train.distributed import launch, parse_nproc

        _, argv = parse_nproc(sys.argv[1:])
        return launch(args.nproc, argv)
    from ..train.distributed import DistContext

    overrides = train_overrides(args)
    if args.resume and (args.minutes is not None or args.data is not None):
        raise ValueError("--resume continues a run with its own recipe; --data and --minutes "
                         "are for a new run")
    if args.minutes is not None and args.data is None:
        raise ValueError("--minutes plans a recipe for a dataset: give --data PATH")
    # Under torchrun: the process group first, so that one process plans for all.
    dist = DistContext.from_environment(
        _train_device(str(Path(args.resume) / "config.yaml") if args.resume else args.config, overrides)
    )
    try:
        result = _train_in(dist, args, overrides)
    finally:
        dist.close()
    if dist.is_main:
        print(f"{result.status}: {result.step}/{result.total_steps} steps in {result.seconds / 60:.1f} min; run folder {result.run_dir}")
        if result.status != "finished":
            print(f"resume with: efficientdet train --resume {result.run_dir}")
        if result.metrics:
            print(f"validation AP {result.metrics['AP']:.4f}  AP50 {result.metrics['AP50']:.4f}")
    # A stop by SIGTERM / SIGINT saved the run: a scheduler's requeue resumes it. Exit 0.
    return 0


def _train_device(config_path: str | None, overrides: list[str]) -> Any:
    """``run.device`` of a configuration file (a run folder's on resume) and overrides."""
    from ..devices import resolve_device
    from ..train.config import read_config_dict

    path = config_path if config_path is None or Path(config_path).is_file() else None
    run = read_config_dict(path, overrides).get("run") or {}
    return resolve_device(str(run.get("device", "auto")))


def _train_in(dist: Any, args: argparse.Namespace, overrides: list[str]) -> Any:
    from ..train import Trainer, load_config, train

    if args.resume:
        if overrides:
            return Trainer.resume(args.resume, overrides=overrides, dist=dist).fit()
        return train(None, resume=args.resume, dist=dist)
    if args.minutes is not None:
        from ..train.budget_recipe import budget_config

        # One plan, made and timed on rank 0 while the others wait, then used by every rank.
        plan = (
            budget_config(args.data, args.minutes, config_path=args.config, overrides=overrides)
            if dist.is_main else None
        )
        config, recipe = dist.broadcast(plan)
        if dist.is_main:
            print(recipe.describe(), flush=True)
        return train(config, dist=dist)
    if args.data is not None:
        data = json.dumps(str(args.data))  # a path, whatever YAML would make of it
        overrides = [f"data.train={data}", f"data.val={data}", *overrides]
    config = load_config(args.config, overrides)
    if args.data is not None and config.run.time_budget_minutes is None and dist.is_main:
        log.warning(
            "no --minutes: training runs the configured schedule (%d epochs); "
            "--minutes N plans a recipe that fits N minutes on this machine",
            config.run.epochs,
        )
    return train(config, dist=dist)
