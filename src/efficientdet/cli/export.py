"""``efficientdet export``: a trained or pretrained detector to ONNX
(:func:`efficientdet.deploy.export.export_onnx`)."""

from __future__ import annotations

import argparse

from ..deploy.export import DEFAULT_OPSET, BatchSpec, export_onnx
from .options import add_batch_size, add_image_size, add_model, add_out, image_size

NAME = "export"
HELP = "export to ONNX (decoding and NMS inside unless --raw)"


def _parse_batch(text: str) -> BatchSpec:
    if text == "dynamic":
        return "dynamic"
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--batch-size takes 'dynamic' or a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"--batch-size must be at least 1, got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``efficientdet export``."""
    parser.add_argument("--weights", help="trained checkpoint (.safetensors) or effdet state dict")
    add_model(parser)
    parser.add_argument("--pretrained", action="store_true",
                        help="the published COCO weights of --model instead of --weights")
    parser.add_argument("--format", choices=["onnx"], default="onnx", help="export format")
    add_out(parser, "file to write, e.g. model.onnx", required=True)
    add_image_size(parser)
    add_batch_size(parser, "'dynamic' or a fixed batch size (default 1)", default=1,
                   kind=_parse_batch, aliases=("--batch",))
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


def run(args: argparse.Namespace) -> int:
    """Export the model of ``args`` and print what was written."""
    from ..inference.loading import load_model

    loaded = load_model(
        args.weights, model_name=args.model, pretrained=args.pretrained,
        image_size=image_size(args.image_size),
    )
    metadata = export_onnx(
        loaded.model,
        args.out,
        batch=args.batch_size,
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
