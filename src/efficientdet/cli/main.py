"""The ``efficientdet`` command line: thin subcommands that parse arguments and call the library."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..deploy.runtime import tune_cpu_allocator
from .options import add_image_size, image_size, positive_int

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
    from ..modeling.profile import info_row
    from ..modeling.registry import get_config

    return info_row(get_config(name))


@command("info")
def _cmd_info(args: argparse.Namespace) -> int:
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


@command("list")
def _cmd_list(args: argparse.Namespace) -> int:
    from ..modeling.registry import list_models

    if not args.pretrained:
        print("\n".join(list_models(args.pattern)))
        return 0
    from ..modeling.pretrained import PRETRAINED, base_url, cache_dir

    names = [n for n in list_models(args.pattern) if n in PRETRAINED]

    def ap(value: float | None) -> str:
        return f"{value:.1f}" if value is not None else "-"

    print(f"{'model':24s} {'size':>9s} {'AP effdet':>9s} {'AP TF':>6s}  cached")
    for name in names:
        row = PRETRAINED[name]
        cached = "yes" if row.cache_path.is_file() else "no"
        print(f"{name:24s} {row.size_mb:>6.1f} MB {ap(row.reference_ap):>9s} {ap(row.official_ap):>6s}  {cached}")
    print(
        "\nAP: COCO val2017 AP[.5:.95] (%) of these weights as published: 'AP effdet' by the "
        "reference port\neffdet (hard NMS), 'AP TF' by the official TensorFlow release "
        f"(soft-NMS); not measured here.\nweights from {base_url()}\ncache {cache_dir()}"
    )
    return 0


# ---- data --------------------------------------------------------------------------------------


@command("check-data")
def _cmd_check_data(args: argparse.Namespace) -> int:
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


@command("demo-data")
def _cmd_demo_data(args: argparse.Namespace) -> int:
    from ..data import write_demo_dataset

    files = write_demo_dataset(
        args.out, seed=args.seed, num_train=args.num_train, num_val=args.num_val,
        image_size=args.image_size,
    )
    print(f"wrote {files.data_yaml}")
    return 0


# ---- training and evaluation ---------------------------------------------------------------------


@command("train")
def _cmd_train(args: argparse.Namespace) -> int:
    if args.nproc and args.nproc > 1:
        from ..train.distributed import launch, parse_nproc

        _, argv = parse_nproc(sys.argv[1:])
        return launch(args.nproc, argv)
    from ..train.distributed import DistContext

    overrides = list(args.set or [])
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
        overrides = [f"data.train={args.data}", f"data.val={args.data}", *overrides]
    config = load_config(args.config, overrides)
    if args.data is not None and config.run.time_budget_minutes is None and dist.is_main:
        log.warning(
            "no --minutes: training runs the configured schedule (%d epochs); "
            "--minutes N plans a recipe that fits N minutes on this machine",
            config.run.epochs,
        )
    return train(config, dist=dist)


@command("eval")
def _cmd_eval(args: argparse.Namespace) -> int:
    from ..data import load_dataset
    from ..detection.detector import Detector
    from ..devices import resolve_device
    from ..inference.evaluate import (
        evaluate_detector,
        format_metrics,
        match_label_space,
        write_eval_outputs,
    )
    from ..inference.loading import load_model

    if args.out and Path(args.out).exists() and not Path(args.out).is_dir():
        raise NotADirectoryError(f"{args.out}: --out exists and is not a folder")
    device = resolve_device(args.device)
    loaded = load_model(
        args.weights, model_name=args.model, pretrained=args.pretrained,
        image_size=image_size(args.image_size),
    )
    # COCO reads its own categories; a pretrained model's 90 names are no class table for VOC/YOLO.
    data = load_dataset(
        args.data, args.split, class_names=None if args.pretrained else loaded.class_names
    )
    label_to_category_id = match_label_space(
        loaded.class_names, loaded.label_to_category_id, loaded.model.config.num_classes, data,
        source=args.weights or f"{args.model} (pretrained)", data_source=args.data,
    )
    detector: Any = Detector(
        loaded.model, nms=args.nms, max_detections=args.max_detections,
        suppressed_labels=loaded.suppressed_labels,
    ).to(device)
    tta = _tta_config(args)
    if tta is not None:
        from ..inference.tta import TTADetector

        detector = TTADetector(detector, tta)
    cfg = loaded.model.config
    result, results = evaluate_detector(
        detector, data, image_size=cfg.image_size, mean=cfg.mean, std=cfg.std,
        batch_size=args.batch_size, device=device, progress=sys.stderr.isatty(),
        label_to_category_id=label_to_category_id,
    )
    print(format_metrics(result))
    if result.error_analysis is not None:
        print(result.error_analysis.summary_line())
    if args.out:
        paths = write_eval_outputs(result, args.out, results, data.samples)
        print(f"wrote {', '.join(str(p) for p in paths.values())}")
    for problem in result.unreadable:
        print(f"  failed: {problem}", file=sys.stderr)
    return 1 if result.unreadable else 0


def _tta_config(args: argparse.Namespace) -> Any:
    """The ``TTAConfig`` of ``--tta`` / ``--tta-scales`` / ``--tta-flip``, or None."""
    if not (args.tta or args.tta_flip or args.tta_scales):
        return None
    from ..inference.tta import DEFAULT_TTA_SCALES, TTAConfig

    return TTAConfig(scales=tuple(args.tta_scales or DEFAULT_TTA_SCALES), flip=args.tta_flip)


def _add_tta_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tta", action="store_true",
                   help="test-time augmentation: run at 0.83, 1.0 and 1.2 of the input size and "
                   "fuse by weighted box fusion")
    p.add_argument("--tta-scales", type=float, nargs="+", metavar="F",
                   help="TTA input-size factors (implies --tta)")
    p.add_argument("--tta-flip", action="store_true",
                   help="TTA also mirrored left-right; only for mirror-symmetric classes (implies --tta)")


# ---- prediction ------------------------------------------------------------------------------


def _read_class_file(path: str) -> list[str]:
    names = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    if not names:
        raise ValueError(f"{path}: no class names (one per line expected)")
    return names


_PREDICT_ARGS_FILE = "predict_args.json"
_NOT_STORED = {"command", "verbose", "resume", "quiet"}


def _predict_args(args: argparse.Namespace) -> argparse.Namespace:
    """The options of the run to continue (``--resume OUT``), or ``args`` checked."""
    if args.resume:
        if args.sources or args.out:
            raise ValueError(
                "--resume OUT continues a run with its own sources and options; give no SOURCE "
                "or --out with it"
            )
        stored = Path(args.resume) / _PREDICT_ARGS_FILE
        try:
            options = json.loads(stored.read_text())
        except FileNotFoundError:
            raise ValueError(
                f"{stored}: no such file; --resume takes the --out folder of an earlier predict run"
            ) from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{stored}: not valid JSON ({e})") from None
        cwd = options.pop("cwd", None)
        if cwd is not None and Path(cwd).resolve() != Path.cwd().resolve():
            raise ValueError(
                f"{stored}: the run was started in {cwd}; resume it from there (its sources are "
                "relative to it)"
            )
        merged = argparse.Namespace(**{**vars(args), **options})
        merged.out = args.resume
        return merged
    if not args.sources or not args.out:
        raise ValueError("predict needs SOURCE ... and --out (or --resume OUT)")
    return args


def _store_predict_args(args: argparse.Namespace) -> None:
    """Write the run's options to ``OUT/predict_args.json`` (what ``--resume OUT`` reads)."""
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out}: the output folder exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    options = {k: v for k, v in vars(args).items() if k not in _NOT_STORED}
    options["cwd"] = str(Path.cwd())
    partial = out / (_PREDICT_ARGS_FILE + ".partial")
    partial.write_text(json.dumps(options, indent=1))
    partial.replace(out / _PREDICT_ARGS_FILE)


@command("predict")
def _cmd_predict(args: argparse.Namespace) -> int:
    from ..deploy.backends import build_predictor
    from ..inference.predict import iter_sources, parse_shard, run_prediction

    resume = bool(args.resume)
    args = _predict_args(args)
    shard = parse_shard(args.shard) if args.shard else None
    predictor = build_predictor(
        args.weights, backend=args.backend, model_name=args.model, pretrained=args.pretrained,
        image_size=image_size(args.image_size), nms=args.nms, max_detections=args.max_detections,
        score_threshold=min(args.score_threshold, 0.001) if args.all_scores else args.score_threshold,
        device=args.device, optimize=args.optimize, tta=_tta_config(args),
    )
    class_names = _read_class_file(args.classes) if args.classes else predictor.class_names
    if class_names is not None and len(class_names) != predictor.num_classes:
        raise ValueError(
            f"{len(class_names)} class names for a model with {predictor.num_classes} classes"
        )
    predict_fn: Any = predictor.predict_fn
    if args.tile:
        from ..inference.tiling import tiled_predict_fn

        predict_fn = tiled_predict_fn(
            predict_fn, tile=args.tile, overlap=args.overlap, merge=args.tile_merge,
            max_detections=args.max_detections, batch_size=args.batch_size,
        )
    if not resume:  # only once the weights are accepted: a refusal writes nothing
        _store_predict_args(args)
    report = run_prediction(
        predict_fn, iter_sources(args.sources), args.out, class_names=class_names,
        label_to_category_id=predictor.label_to_category_id, score_threshold=args.score_threshold,
        batch_size=args.batch_size, progress=not args.quiet, resume=resume, shard=shard,
        pictures=not args.no_pictures,
    )
    print(report.summary())
    for failure in report.failures:
        print(f"  failed: {failure.path}: {failure.reason}", file=sys.stderr)
    return 0 if report.ok else 1


# ---- the demo ----------------------------------------------------------------------------------


@command("demo")
def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    result = run_demo(args.out, data_dir=args.data_dir, minutes=args.minutes, extra=args.set or [])
    m = result.metrics
    print(
        f"demo finished in {result.minutes:.1f} min: validation AP {m['AP']:.3f}, AP50 {m['AP50']:.3f}\n"
        f"report: {result.report}"
    )
    return 0


# ---- research commands -------------------------------------------------------------------------


@command("ablate")
def _cmd_ablate(args: argparse.Namespace) -> int:
    from .ablate import cmd_ablate

    return cmd_ablate(args)


@command("create")
def _cmd_create(args: argparse.Namespace) -> int:
    from .create import cmd_create

    return cmd_create(args)


@command("scaling-study")
def _cmd_scaling_study(args: argparse.Namespace) -> int:
    from .scaling_study import cmd_scaling_study

    return cmd_scaling_study(args)


@command("serve")
def _cmd_serve(args: argparse.Namespace) -> int:
    from .serve import cmd_serve

    return cmd_serve(args)


@command("export")
def _cmd_export(args: argparse.Namespace) -> int:
    from .export import cmd_export

    return cmd_export(args)


# ---- parser ------------------------------------------------------------------------------------


_PRETRAINED_HELP = (
    "use the published COCO weights of --model (downloaded once into $TORCH_HOME/hub/"
    "checkpoints) instead of --weights"
)


_DEVICE_HELP = (
    "auto (CUDA when PyTorch sees a GPU), cpu, cuda or cuda:N; for an .onnx file, ONNX "
    "Runtime's TensorRT / CUDA providers (onnxruntime-gpu) or its CPU one"
)


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

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
    p.add_argument("--phi", type=float, action="append", help="a compound-scaled model (repeatable)")
    p.add_argument("--neck", help="neck for --phi models")

    from .ablate import add_ablate_arguments
    from .create import add_create_arguments
    from .export import add_export_arguments
    from .scaling_study import add_scaling_study_arguments
    from .serve import add_serve_arguments

    add_ablate_arguments(sub.add_parser("ablate", help="compare the feature networks (necks)"))
    add_export_arguments(
        sub.add_parser("export", help="export to ONNX (decoding and NMS inside unless --raw)")
    )
    add_create_arguments(
        sub.add_parser("create", help="build a compound-scaled model (any phi) and save it")
    )
    add_serve_arguments(
        sub.add_parser("serve", help="HTTP API (POST /predict) and web UI for a detector")
    )
    add_scaling_study_arguments(
        sub.add_parser("scaling-study", help="compound vs single-dimension scaling at matched FLOPs")
    )

    p = sub.add_parser("list", help="list registered model names")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. 'tf_*'")
    p.add_argument("--pretrained", action="store_true",
                   help="only models with published COCO weights: file size and reference AP")

    p = sub.add_parser("check-data", help="validate a dataset before a long run")
    p.add_argument(
        "--data", required=True,
        help="COCO .json, data.yaml, or a dataset folder as Roboflow, CVAT, Label Studio, "
        "Ultralytics or supervision export it",
    )
    p.add_argument("--split", default="train")
    p.add_argument("--model", default="tf_efficientdet_d0",
                   help="the model whose input size, pyramid and anchors the boxes are checked against")
    add_image_size(p, "H [W] of the network input (default: the model's)")
    p.add_argument("--no-decode", action="store_true", help="check image headers only (faster)")
    p.add_argument("--fit-anchors", action="store_true",
                   help="search anchor scale and aspect ratios for the most matched boxes and "
                   "print the training override")

    p = sub.add_parser("demo-data", help="write the bundled digit-scenes dataset (COCO format)")
    p.add_argument("--out", default="data/digit-scenes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-train", type=int, default=1600)
    p.add_argument("--num-val", type=int, default=250)
    p.add_argument("--image-size", type=positive_int, default=320)

    p = sub.add_parser("train", help="train on a dataset (YAML config + --set overrides)")
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

    p = sub.add_parser("predict", help="detect objects in images, folders, globs and videos")
    p.add_argument("sources", nargs="*", metavar="SOURCE",
                   help="image files, folders, globs (** recurses), videos; read lazily, in "
                   "sorted order per folder")
    p.add_argument("--weights", help="trained checkpoint (.safetensors), effdet state dict or .onnx export")
    p.add_argument("--model", help="architecture, when the weights file does not record it")
    p.add_argument("--pretrained", action="store_true", help=_PRETRAINED_HELP)
    p.add_argument("--classes", help="text file with one class name per line")
    p.add_argument("--out", help="output folder: pictures, predictions.jsonl (written as it goes), "
                   "predictions.json (at the end)")
    p.add_argument("--resume", metavar="OUT",
                   help="continue the run in OUT (killed or stopped) with its sources and options")
    p.add_argument("--shard", metavar="I/N",
                   help="only inputs I, I+N, I+2N, ... of the input order (0 <= I < N); run N "
                   "copies, each with its own --out, for the whole set")
    p.add_argument("--score-threshold", type=float, default=0.3, help="draw and keep detections above this")
    p.add_argument("--all-scores", action="store_true", help="write every detection to the JSON (evaluation)")
    p.add_argument("--max-detections", type=int, default=100)
    p.add_argument("--nms", choices=["hard", "soft"], default="hard")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--device", default="auto", help=_DEVICE_HELP)
    add_image_size(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--no-pictures", action="store_true",
                   help="write only the records (predictions.jsonl, predictions.json): no "
                   "annotated pictures or videos")
    p.add_argument("--backend", choices=["auto", "pytorch", "onnxruntime"], default="auto",
                   help="auto: ONNX Runtime for .onnx weights, PyTorch otherwise")
    p.add_argument("--optimize", action="store_true",
                   help="PyTorch: fold BN, channels-last (same detections, faster on CPU)")
    p.add_argument("--tile", type=positive_int, metavar="SIZE",
                   help="also run on overlapping SIZE x SIZE tiles (image pixels) and merge: "
                   "large images with small objects")
    p.add_argument("--overlap", type=float, default=0.2, help="tile overlap, a fraction of SIZE")
    p.add_argument("--tile-merge", choices=["nms", "wbf"], default="nms",
                   help="merge tiles by class-aware NMS or weighted box fusion")
    _add_tta_arguments(p)

    p = sub.add_parser("demo", help="the main job: train Lite0 on the bundled data and report")
    p.add_argument("--out", default="runs/demo", help="run folder with the report")
    p.add_argument("--data-dir", default="data/digit-scenes", help="where the demo data is written")
    p.add_argument("--minutes", type=float, default=10.5, help="training time budget")
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="recipe override")

    p = sub.add_parser("eval", help="COCO metrics of trained weights on a dataset")
    p.add_argument("--weights", help="trained checkpoint (.safetensors) or effdet state dict")
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="val")
    p.add_argument("--model", help="architecture, when the weights file does not record it")
    p.add_argument("--pretrained", action="store_true", help=_PRETRAINED_HELP)
    p.add_argument("--out", help="folder for metrics.json, detections.json, report.md and the error "
                   "analysis (confusion matrix, PR curves, F1-best thresholds, error galleries)")
    add_image_size(p)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="auto",
                   help="auto (CUDA when PyTorch sees a GPU), cpu, cuda or cuda:N")
    p.add_argument("--nms", choices=["hard", "soft"], default="hard")
    p.add_argument("--max-detections", type=int, default=100)
    _add_tta_arguments(p)
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
        tune_cpu_allocator()
        return _COMMANDS[args.command](args)
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
