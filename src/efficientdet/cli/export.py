"""``efficientdet export``: a trained or pretrained detector to ONNX, OpenVINO IR or LiteRT,
in fp32 or calibrated int8 (:func:`efficientdet.deploy.formats.export_model`)."""

from __future__ import annotations

import argparse

from ..deploy.calibration import DEFAULT_CALIBRATION_IMAGES
from ..deploy.export import BatchSpec
from .options import add_batch_size, add_image_size, add_model, add_out, image_size

NAME = "export"
HELP = "export to ONNX, OpenVINO or LiteRT, fp32 or calibrated int8"


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
    parser.add_argument("--format", choices=["onnx", "openvino", "litert"], default=None,
                        help="onnx (.onnx), openvino (.xml + .bin) or litert (.tflite); default "
                        "from --out's suffix")
    add_out(parser, "file to write: model.onnx, model.xml or model.tflite", required=True)
    add_image_size(parser)
    add_batch_size(parser, "'dynamic' or a fixed batch size (default 1)", default=1,
                   kind=_parse_batch, aliases=("--batch",))
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--with-nms", dest="with_nms", action="store_true", default=None,
                       help="decoding and NMS inside the graph: detections [B, max_det, 6] "
                       "(default for onnx and openvino)")
    group.add_argument("--raw", dest="with_nms", action="store_false",
                       help="the raw per-level head outputs, decoded by the package (litert's "
                       "only choice)")
    parser.add_argument("--int8", action="store_true",
                        help="post-training int8 quantization calibrated on --calibration's images")
    parser.add_argument("--calibration", metavar="DATA",
                        help="dataset (data.yaml, COCO json, VOC/YOLO folder) or image folder "
                        "whose images calibrate --int8")
    parser.add_argument("--calibration-images", type=int, default=DEFAULT_CALIBRATION_IMAGES,
                        metavar="N", help="images taken from it (default %(default)s)")
    parser.add_argument("--calibration-split", default="train",
                        help="its split (default %(default)s)")
    parser.add_argument("--score-threshold", type=float, default=0.001,
                        help="in-graph score threshold (default 0.001, the evaluation setting)")
    parser.add_argument("--max-detections", type=int, default=100)
    parser.add_argument("--iou-threshold", type=float, default=0.5)
    parser.add_argument("--pre-nms-top-k", type=int, default=5000)


def run(args: argparse.Namespace) -> int:
    """Export the model of ``args`` and print what was written."""
    from ..deploy.formats import export_model, format_for
    from ..inference.loading import load_model

    fmt = format_for(args.out, args.format, default="onnx")
    if args.int8 != bool(args.calibration):
        raise ValueError("--int8 needs --calibration DATA (the images that calibrate it), "
                         "and --calibration is for --int8")
    loaded = load_model(
        args.weights, model_name=args.model, pretrained=args.pretrained,
        image_size=image_size(args.image_size),
    )
    config = loaded.model.config
    calibration = None
    if args.int8:
        from ..deploy.calibration import calibration_images

        calibration = calibration_images(
            args.calibration, config.image_size, config.mean, config.std,
            split=args.calibration_split, count=args.calibration_images,
        )
        print(f"calibrating int8 on {calibration.source}")
    metadata = export_model(
        loaded.model, args.out, fmt=fmt, batch=args.batch_size, with_nms=args.with_nms,
        score_threshold=args.score_threshold, pre_nms_top_k=args.pre_nms_top_k,
        max_detections=args.max_detections, iou_threshold=args.iou_threshold,
        class_names=loaded.class_names, label_to_category_id=loaded.label_to_category_id,
        calibration=calibration,
    )
    batch = "dynamic" if metadata.batch is None else metadata.batch
    print(
        f"wrote {args.out} ({fmt}, {metadata.precision}): {metadata.model_name} at "
        f"{metadata.image_size[0]}x{metadata.image_size[1]}, batch {batch}, output {metadata.output}"
    )
    return 0

