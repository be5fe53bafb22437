"""``efficientdet eval``: COCO metrics and the error analysis of trained or pretrained weights
on a dataset (:func:`efficientdet.inference.evaluate.evaluate_detector`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, NamedTuple

from .options import (
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
    tta_config,
)

NAME = "eval"
HELP = "COCO metrics of trained weights on a dataset"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``efficientdet eval``."""
    parser.add_argument("--weights", help=WEIGHTS_HELP)
    add_backend(parser)
    parser.add_argument("--data", required=True)
    parser.add_argument("--split", default="val")
    add_model(parser)
    parser.add_argument("--pretrained", action="store_true", help=PRETRAINED_HELP)
    add_out(parser, "folder for metrics.json, detections.json, report.md and the error "
            "analysis (confusion matrix, PR curves, F1-best thresholds, error galleries)")
    add_image_size(parser)
    add_batch_size(parser, default=8)
    add_device(parser)
    parser.add_argument("--nms", choices=["hard", "soft"], default="hard")
    parser.add_argument("--max-detections", type=int, default=100)
    add_tta_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Evaluate, print the metrics and write the outputs; 1 when some images were unreadable."""
    from ..data import load_dataset
    from ..inference.evaluate import (
        evaluate_detector,
        format_metrics,
        match_label_space,
        write_eval_outputs,
    )

    if args.out and Path(args.out).exists() and not Path(args.out).is_dir():
        raise NotADirectoryError(f"{args.out}: --out exists and is not a folder")
    subject = _exported(args) if _is_export(args) else _pytorch(args)
    # COCO reads its own categories; a pretrained model's 90 names are no class table for VOC/YOLO.
    data = load_dataset(
        args.data, args.split, class_names=None if args.pretrained else subject.class_names
    )
    label_to_category_id = match_label_space(
        subject.class_names, subject.label_to_category_id, subject.num_classes, data,
        source=args.weights or f"{args.model} (pretrained)", data_source=args.data,
    )
    result, results = evaluate_detector(
        subject.detect, data, image_size=subject.image_size, mean=subject.mean, std=subject.std,
        batch_size=args.batch_size, device=subject.device, progress=sys.stderr.isatty(),
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


class _Subject(NamedTuple):
    """What ``eval`` runs: a detector of normalised batches and what it says about itself."""

    detect: Any  # nn.Module or Callable[[Tensor], detections]
    class_names: list[str] | None
    label_to_category_id: list[int] | None
    num_classes: int
    image_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    device: Any


def _is_export(args: argparse.Namespace) -> bool:
    from ..deploy.backends import resolve_backend

    return not args.pretrained and resolve_backend(args.weights or "", args.backend) != "pytorch"


def _exported(args: argparse.Namespace) -> _Subject:
    """An exported file (ONNX, OpenVINO, LiteRT) in its runtime, loaded and checked as
    ``predict`` loads it (:func:`~efficientdet.deploy.backends.build_predictor`)."""
    from ..deploy.backends import build_predictor
    from ..inference.predictor import LetterboxPredictor

    predictor = build_predictor(
        args.weights, backend=args.backend, image_size=image_size(args.image_size),
        score_threshold=0.001, max_detections=args.max_detections, nms=args.nms,
        device=args.device, tta=tta_config(args),
    )
    letterbox = predictor.predict_fn
    if not isinstance(letterbox, LetterboxPredictor):  # build_predictor's contract for exports
        raise TypeError(f"an export's predictor is a LetterboxPredictor, got {type(letterbox)}")
    return _Subject(
        letterbox.detect, predictor.class_names, predictor.label_to_category_id,
        predictor.num_classes, letterbox.image_size, letterbox.mean, letterbox.std, "cpu",
    )


def _pytorch(args: argparse.Namespace) -> _Subject:
    """Trained or pretrained weights in PyTorch, with test-time augmentation if asked."""
    from ..detection.detector import Detector
    from ..devices import resolve_device
    from ..inference.loading import load_model

    device = resolve_device(args.device)
    loaded = load_model(
        args.weights, model_name=args.model, pretrained=args.pretrained,
        image_size=image_size(args.image_size),
    )
    detector: Any = Detector(
        loaded.model, nms=args.nms, max_detections=args.max_detections,
        suppressed_labels=loaded.suppressed_labels,
    ).to(device)
    tta = tta_config(args)
    if tta is not None:
        from ..inference.tta import TTADetector

        detector = TTADetector(detector, tta)
    cfg = loaded.model.config
    return _Subject(
        detector, loaded.class_names, loaded.label_to_category_id, cfg.num_classes,
        cfg.image_size, cfg.mean, cfg.std, device,
    )
