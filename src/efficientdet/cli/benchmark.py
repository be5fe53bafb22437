"""``efficientdet benchmark``: export a model to every available format and precision, then
print and write size, latency, throughput and AP of each
(:func:`efficientdet.deploy.benchmark.run_benchmark`)."""

from __future__ import annotations

import argparse
import platform
import shlex
import sys
from pathlib import Path
from typing import Any

from ..deploy.calibration import DEFAULT_CALIBRATION_IMAGES
from .options import (
    PRETRAINED_HELP,
    WEIGHTS_HELP,
    add_device,
    add_image_size,
    add_model,
    add_out,
    image_size,
    positive_int,
)

NAME = "benchmark"
HELP = "compare formats and precisions: size, latency, throughput, AP"

FORMATS = ("pytorch", "onnx", "openvino", "litert")
PRECISIONS = ("fp32", "bf16", "int8")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``efficientdet benchmark``."""
    parser.add_argument("--weights", help=WEIGHTS_HELP.split(", or an export")[0])
    add_model(parser)
    parser.add_argument("--pretrained", action="store_true", help=PRETRAINED_HELP)
    parser.add_argument("--data", help="dataset: AP on its --split, int8 calibrated on its train "
                        "split, timing on its images (without it: no AP, no int8, a generated image)")
    parser.add_argument("--split", default="val", help="the split scored (default %(default)s)")
    parser.add_argument("--formats", nargs="+", choices=FORMATS, default=list(FORMATS),
                        help="formats to run (default all; those whose runtime is not installed "
                        "are reported and skipped)")
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=list(PRECISIONS))
    parser.add_argument("--calibration-images", type=positive_int,
                        default=DEFAULT_CALIBRATION_IMAGES, metavar="N",
                        help="train images that calibrate int8 (default %(default)s)")
    parser.add_argument("--repeats", type=positive_int, default=10,
                        help="timed rounds at batch 1 (a third at batch 8)")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="CPU threads of every runtime (default: PyTorch's)")
    add_device(parser, default="cpu")
    add_image_size(parser)
    add_out(parser, "folder for the exports and benchmark.md / .csv / .json / .png",
            default="runs/benchmark")


def run(args: argparse.Namespace) -> int:
    """Run the benchmark, print the table and write the report."""
    import torch

    from ..deploy.benchmark import (
        fastest_within,
        format_table,
        plan_variants,
        run_benchmark,
        write_report,
    )
    from ..inference.loading import load_model

    threads = args.threads or torch.get_num_threads()
    loaded = load_model(
        args.weights, model_name=args.model, pretrained=args.pretrained,
        image_size=image_size(args.image_size),
    )
    variants, skipped = plan_variants(args.formats, args.precisions, device=args.device)
    data, calibration, label_map, images = _inputs(args, loaded)
    if calibration is None and "int8" in args.precisions:
        skipped.extend(_without_int8(variants))
        variants = [v for v in variants if v.precision != "int8"]
    out = Path(args.out)
    rows = run_benchmark(
        loaded, out / "exports", variants, images=images, data=data, calibration=calibration,
        label_to_category_id=label_map, repeats=args.repeats, threads=threads, device=args.device,
    ) + skipped
    header = _header(args, loaded, threads, data)
    paths = write_report(rows, out, header)
    print("\n".join(header))
    print(format_table(rows))
    best = fastest_within(rows)
    if best is not None:
        print(f"fastest within 0.01 AP of pytorch fp32: {best.variant} ({best.latency_ms} ms)")
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return 0


def _without_int8(variants: list[Any]) -> list[Any]:
    from ..deploy.benchmark import BenchmarkRow

    return [BenchmarkRow(v.name, v.fmt, v.precision, note="int8 needs --data (calibration images)")
            for v in variants if v.precision == "int8"]


def _inputs(args: argparse.Namespace, loaded: Any) -> tuple[Any, Any, Any, list[Any]]:
    """The scored split, the int8 calibration, the label map, and the images timed on."""
    if not args.data:
        return None, None, None, [_generated_image()]
    from ..data import load_dataset
    from ..deploy.calibration import calibration_images
    from ..inference.evaluate import match_label_space

    data = load_dataset(args.data, args.split, class_names=loaded.class_names)
    label_map = match_label_space(
        loaded.class_names, loaded.label_to_category_id, loaded.model.config.num_classes, data,
        source=args.weights or f"{args.model} (pretrained)", data_source=args.data,
    )
    cfg = loaded.model.config
    calibration = None
    if "int8" in args.precisions:
        calibration = calibration_images(
            args.data, cfg.image_size, cfg.mean, cfg.std, count=args.calibration_images
        )
    images = [sample.load_image() for sample in data.samples[:8]]
    return data, calibration, label_map, images


def _generated_image() -> Any:
    """A 640x480 image of coloured rectangles on noise, the same every run."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    for _ in range(12):
        y, x = rng.integers(0, 400), rng.integers(0, 560)
        pixels[y : y + 80, x : x + 80] = rng.integers(0, 256, 3, dtype=np.uint8)
    return Image.fromarray(pixels)


def _header(args: argparse.Namespace, loaded: Any, threads: int, data: Any) -> list[str]:
    """Lines that say what was measured, where and how."""
    import torch

    from ..deploy.benchmark import CALLS_PER_TURN, PAUSE_S

    cfg = loaded.model.config
    versions = [f"torch {torch.__version__}"]
    for module in ("onnxruntime", "openvino", "ai_edge_litert"):
        version = _version(module)
        if version:
            versions.append(f"{module} {version}")
    scored = f"{len(data.samples)} {args.split} images of {args.data}" if data is not None else "no AP (no --data)"
    return [
        f"# benchmark: {cfg.name} at {cfg.image_size[0]}x{cfg.image_size[1]}",
        "",
        f"- command: `efficientdet benchmark {shlex.join(sys.argv[2:]) if len(sys.argv) > 2 else ''}`".rstrip(),
        f"- machine: {_cpu_name()}, {threads} threads, device {args.device}; {', '.join(versions)}",
        f"- timing: end to end (letterbox, network, post-processing, boxes to image pixels), "
        f"median of {args.repeats} interleaved rounds at batch 1, of {max(3, args.repeats // 3)} at batch 8; "
        f"each round a turn per variant after a {PAUSE_S} s pause: one untimed call, the median "
        f"of {CALLS_PER_TURN - 1} timed ones",
        f"- accuracy: {scored}, score threshold 0.001, 100 detections per image",
    ]


def _version(module: str) -> str | None:
    import importlib.metadata

    names = {"ai_edge_litert": "ai-edge-litert", "openvino": "openvino", "onnxruntime": "onnxruntime"}
    try:
        return importlib.metadata.version(names[module])
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
