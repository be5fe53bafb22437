"""``efficientdet export``: a trained or pretrained detector to ONNX
(:func:`efficientdet.deploy.export.export_onnx`)."""

from __future__ import annotations

import argparse

from ..deploy.export import DEFAULT_OPSET, BatchSpec, export_onnx
from .options import add_image_size, image_size


def _parse_batch(text: str) -> BatchSpec:
    if text == "dynamic":
        return "dynamic"
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--batch takes 'dynamic' or a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"--batch must be at least 1, got {value}")
    return value


def add_export_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``efficientdet export`` options to ``parser`` (a subcommand's parser)."""
    parser.add_argument("--weights", help="trained checkpoint (.safetensors) or effdet state dict")
    parser.add_argument("--model", help="architecture, when the weights file does not record it")
    parser.add_argument("--pretrained", action="store_true",
                        help="the published COCO weights of --model instead of --weights")
    parser.add_argument("--format", choices=["onnx"], default="onnx", help="export format")
    parser.add_argument("--out", required=True, help="file to write, e.g. model.onnx")
    add_image_size(parser)
    parser.add_argument("--batch", type=_parse_batch, default=1, help="'dynamic' or a fixed batch size (default 1)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--with-nms", dest="with_nms", action="store_true", default=True,
                       help="decoding and NMS inside the graph: detections [B, max_det, 6] (default)")
    group.add_argument("--raw", dest="with_nms", action="store_false",
                       help="export the raw per-level head outputs instead")
    parser.add_argument("--score-threshold", type=float, default=0.001,
                        help="in-graph score threshold (default 0.001, the evaluation setting)")
    parser.add_argument("--max-detections", type=int, default=100)
    parser.add_argument("--iou-threshold", type=float, default=0.5)
    parser.add_argument("--pre-nms-top-k", type=int, default=5000)
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    return parser


def cmd_export(args: argparse.Namespace) -> int:
    """Run ``efficientdet export`` with arguments from :func:`add_export_arguments`."""
    from ..inference.loading import load_model

    loaded = load_model(
        args.weights, model_name=args.model, pretrained=args.pretrained,
        image_size=image_size(args.image_size),
    )
    metadata = export_onnx(
        loaded.model,
        args.out,
        batch=args.batch,
        with_nms=args.with_nms,
        score_threshold=args.score_threshold,
        pre_nms_top_k=args.pre_nms_top_k,
        max_detections=args.max_detections,
        iou_threshold=args.iou_threshold,
        class_names=loaded.class_names,
        label_to_category_id=loaded.label_to_category_id,
        opset=args.opset,
    )
    batch = "dynamic" if metadata.batch is None else metadata.batch
    print(
        f"wrote {args.out}: {metadata.model_name} at {metadata.image_size[0]}x"
        f"{metadata.image_size[1]}, batch {batch}, output {metadata.output}"
    )
    return 0
