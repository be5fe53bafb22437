"""``efficientdet predict``: detect objects in images, folders, globs, videos and live streams
(:func:`efficientdet.inference.predict.run_prediction`), resumable from its output folder;
``--track`` follows the objects with ids, counts them crossing lines and inside zones."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..inference.tracking import DEFAULT_TRACKER, TRACK_SCORE_THRESHOLD, TRACKER_NAMES
from ..inference.visualize_tracks import DEFAULT_TRAIL
from .options import (
    DEVICE_ONNX_HELP,
    PRETRAINED_HELP,
    WEIGHTS_HELP,
    add_backend,
    add_batch_size,
    add_device,
    add_image_size,
    add_model,
    add_out,
    add_tta_arguments,
    image_size,
    positive_int,
    read_class_names,
    tta_config,
)

NAME = "predict"
HELP = "detect (and track) objects in images, folders, globs, videos and live streams"
DEFAULT_SCORE_THRESHOLD = 0.3

_PREDICT_ARGS_FILE = "predict_args.json"
_NOT_STORED = {"command", "verbose", "resume", "quiet"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``efficientdet predict``."""
    p = parser
    p.add_argument("sources", nargs="*", metavar="SOURCE",
                   help="image files, folders, globs (** recurses), videos, live streams "
                   "(rtsp://, http://, ... URLs; a camera index such as 0); read lazily, in "
                   "sorted order per folder")
    p.add_argument("--weights", help=WEIGHTS_HELP)
    add_model(p)
    p.add_argument("--pretrained", action="store_true", help=PRETRAINED_HELP)
    p.add_argument("--classes", help="text file with one class name per line")
    add_out(p, "output folder: pictures, predictions.jsonl (written as it goes), "
            "predictions.json (at the end)")
    p.add_argument("--resume", metavar="OUT",
                   help="continue the run in OUT (killed or stopped) with its sources and options")
    p.add_argument("--shard", metavar="I/N",
                   help="only inputs I, I+N, I+2N, ... of the input order (0 <= I < N); run N "
                   "copies, each with its own --out, for the whole set")
    p.add_argument("--score-threshold", type=float, default=None,
                   help=f"draw and keep detections above this (default {DEFAULT_SCORE_THRESHOLD}; "
                   f"{TRACK_SCORE_THRESHOLD} with --track, where they go to the tracker)")
    p.add_argument("--all-scores", action="store_true", help="write every detection to the JSON (evaluation)")
    p.add_argument("--max-detections", type=int, default=100)
    p.add_argument("--nms", choices=["hard", "soft"], default="hard")
    add_batch_size(p, default=4)
    add_device(p, DEVICE_ONNX_HELP)
    add_image_size(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--no-pictures", action="store_true",
                   help="write only the records (predictions.jsonl, predictions.json): no "
                   "annotated pictures or videos")
    add_backend(p)
    p.add_argument("--optimize", action="store_true",
                   help="PyTorch: fold BN, channels-last (same detections, faster on CPU)")
    p.add_argument("--tile", type=positive_int, metavar="SIZE",
                   help="also run on overlapping SIZE x SIZE tiles (image pixels) and merge: "
                   "large images with small objects")
    p.add_argument("--overlap", type=float, default=0.2, help="tile overlap, a fraction of SIZE")
    p.add_argument("--tile-merge", choices=["nms", "wbf"], default="nms",
                   help="merge tiles by class-aware NMS or weighted box fusion")
    add_tta_arguments(p)
    _add_tracking_arguments(p)


def _add_tracking_arguments(p: argparse.ArgumentParser) -> None:
    """``--track`` and its options, counting, MOT output and live-stream options."""
    g = p.add_argument_group("tracking (pip install 'efficientdet[track]')")
    g.add_argument("--track", action="store_true",
                   help="follow objects through each video, stream and folder of frames: "
                   "records get track_id, pictures show each id in its colour with a trail")
    g.add_argument("--tracker", choices=TRACKER_NAMES, default=DEFAULT_TRACKER,
                   help=f"the tracker (default {DEFAULT_TRACKER})")
    g.add_argument("--track-activation", type=float, metavar="SCORE",
                   help="smallest score that starts a track (bytetrack, sort)")
    g.add_argument("--track-high", type=float, metavar="SCORE",
                   help="boxes scoring at least this are matched first (bytetrack, ocsort)")
    g.add_argument("--track-iou", type=float, metavar="IOU",
                   help="smallest IoU between a track and a box to match them")
    g.add_argument("--track-buffer", type=int, metavar="FRAMES",
                   help="frames (at 30 fps) a lost track is kept to pick it up again")
    g.add_argument("--track-min-frames", type=positive_int, metavar="N",
                   help="frames in a row a new track must be seen before it gets an id")
    g.add_argument("--trail", type=int, default=DEFAULT_TRAIL, metavar="N",
                   help=f"positions drawn behind each tracked object (default {DEFAULT_TRAIL}; 0: none)")
    g.add_argument("--count-line", action="append", metavar="X1,Y1,X2,Y2",
                   help="count tracked objects crossing this line, by direction (in: from its "
                   "left to its right looking from X1,Y1 to X2,Y2); repeatable; implies --track")
    g.add_argument("--zone", action="append", metavar="X1,Y1,X2,Y2,X3,Y3,...",
                   help="count tracked objects inside this polygon in each frame; repeatable; "
                   "implies --track")
    g.add_argument("--mot", metavar="PATH",
                   help="write the tracks in the MOT Challenge format: a .txt file, or a folder "
                   "with one file per sequence; implies --track")
    g.add_argument("--duration", type=float, metavar="SECONDS",
                   help="live streams: stop reading each after this long (default: until it "
                   "ends or Ctrl-C)")


def _tracking_config(args: argparse.Namespace) -> Any:
    """The :class:`TrackingConfig` the options ask for; None without tracking."""
    if not (args.track or args.count_line or args.zone or args.mot):
        return None
    from ..inference.counting import parse_line, parse_zone
    from ..inference.track_session import TrackingConfig
    from ..inference.tracking import TrackerOptions, import_trackers

    try:
        import_trackers()
    except ImportError as e:
        raise RuntimeError(str(e)) from None
    if args.trail < 0:
        raise ValueError(f"--trail must be >= 0, got {args.trail}")
    options = TrackerOptions(
        args.tracker, activation_threshold=args.track_activation, high_threshold=args.track_high,
        iou_threshold=args.track_iou, lost_buffer=args.track_buffer,
        min_frames=args.track_min_frames,
    )
    return TrackingConfig(
        options, lines=tuple(parse_line(t) for t in args.count_line or ()),
        zones=tuple(parse_zone(t) for t in args.zone or ()), trail=args.trail,
    )


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


def run(args: argparse.Namespace) -> int:
    """Predict over the sources and print the summary; 1 when some inputs failed."""
    from ..deploy.backends import build_predictor
    from ..inference.live import LiveOptions
    from ..inference.predict import iter_sources, parse_shard, run_prediction

    resume = bool(args.resume)
    args = _predict_args(args)
    shard = parse_shard(args.shard) if args.shard else None
    tracking = _tracking_config(args)
    live = LiveOptions(duration=args.duration)
    threshold = args.score_threshold
    if threshold is None:
        threshold = TRACK_SCORE_THRESHOLD if tracking is not None else DEFAULT_SCORE_THRESHOLD
    predictor = build_predictor(
        args.weights, backend=args.backend, model_name=args.model, pretrained=args.pretrained,
        image_size=image_size(args.image_size), nms=args.nms, max_detections=args.max_detections,
        score_threshold=min(threshold, 0.001) if args.all_scores else threshold,
        device=args.device, optimize=args.optimize, tta=tta_config(args),
    )
    class_names = read_class_names(args.classes) if args.classes else predictor.class_names
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
        predict_fn, iter_sources(args.sources, exclude=args.out), args.out, class_names=class_names,
        label_to_category_id=predictor.label_to_category_id, score_threshold=threshold,
        batch_size=args.batch_size, progress=not args.quiet, resume=resume, shard=shard,
        pictures=not args.no_pictures, tracking=tracking, live=live, mot=args.mot,
    )
    print(report.summary())
    for path in report.mot_paths:
        print(f"  tracks (MOT): {path}")
    for failure in report.failures:
        print(f"  failed: {failure.path}: {failure.reason}", file=sys.stderr)
    return 0 if report.ok else 1
