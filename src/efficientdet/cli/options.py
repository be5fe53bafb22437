"""Options shared by several commands, parsed and checked the same way everywhere.

The options a user reaches for first are spelt the same on every command that has the
concept: ``--out``, ``--model``, ``--epochs``, ``--batch-size``, ``--device`` and
``--image-size``. Each is defined here once; a command passes only its own help text and
default.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

MODEL_HELP = "architecture, when the weights file does not record it"

PRETRAINED_HELP = (
    "use the published COCO weights of --model (downloaded once into $TORCH_HOME/hub/"
    "checkpoints) instead of --weights"
)

DEVICE_HELP = "auto (CUDA when PyTorch sees a GPU), cpu, cuda or cuda:N"

DEVICE_ONNX_HELP = (
    "auto (CUDA when PyTorch sees a GPU), cpu, cuda or cuda:N; for an .onnx file, ONNX "
    "Runtime's TensorRT / CUDA providers (onnxruntime-gpu) or its CPU one"
)


def positive_int(text: str) -> int:
    """argparse type: a positive integer, refused with a clear message otherwise."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def add_out(
    parser: argparse.ArgumentParser,
    help_text: str,
    *,
    required: bool = False,
    default: str | Path | None = None,
    kind: Callable[[str], Any] | None = None,
    metavar: str | None = None,
) -> None:
    """``--out``: the file or folder a command writes (``kind``, if given, converts the text)."""
    options: dict[str, Any] = {"required": required, "default": default, "metavar": metavar}
    if kind is not None:
        options["type"] = kind
    parser.add_argument("--out", help=help_text, **options)


def add_model(
    parser: argparse.ArgumentParser, help_text: str = MODEL_HELP, *, default: str | None = None
) -> None:
    """``--model NAME``: a registered architecture (see ``efficientdet list``)."""
    parser.add_argument("--model", default=default, help=help_text)


def add_epochs(parser: argparse.ArgumentParser, help_text: str) -> None:
    """``--epochs N``: passes over the training set (None when not given)."""
    parser.add_argument("--epochs", type=positive_int, metavar="N", help=help_text)


def add_batch_size(
    parser: argparse.ArgumentParser,
    help_text: str | None = None,
    *,
    default: Any = None,
    kind: Callable[[str], Any] = int,
    aliases: tuple[str, ...] = (),
) -> None:
    """``--batch-size N``: images per model call or per training step (``aliases``: older
    spellings that keep working)."""
    parser.add_argument(
        "--batch-size", *aliases, dest="batch_size", type=kind, default=default, help=help_text
    )


def add_device(
    parser: argparse.ArgumentParser, help_text: str = DEVICE_HELP, *, default: str | None = "auto"
) -> None:
    """``--device``: auto, cpu, cuda or cuda:N (resolved by :func:`efficientdet.devices.resolve_device`)."""
    parser.add_argument("--device", default=default, help=help_text)


def add_image_size(parser: argparse.ArgumentParser, help_text: str = "H [W] of the network input") -> None:
    """``--image-size H [W]``: positive sides, read back with :func:`image_size`."""
    parser.add_argument("--image-size", type=positive_int, nargs="+", metavar="SIDE", help=help_text)


def image_size(value: list[int] | None) -> tuple[int, int] | None:
    """``(H, W)`` from ``--image-size`` (one side means a square), or None when not given."""
    if not value:
        return None
    if len(value) > 2:
        raise ValueError(f"--image-size takes H or H W, got {len(value)} values")
    return (value[0], value[0]) if len(value) == 1 else (value[0], value[1])


def add_tta_arguments(parser: argparse.ArgumentParser) -> None:
    """``--tta``, ``--tta-scales``, ``--tta-flip`` (read back with :func:`tta_config`)."""
    parser.add_argument("--tta", action="store_true",
                        help="test-time augmentation: run at 0.83, 1.0 and 1.2 of the input size "
                        "and fuse by weighted box fusion")
    parser.add_argument("--tta-scales", type=float, nargs="+", metavar="F",
                        help="TTA input-size factors (implies --tta)")
    parser.add_argument("--tta-flip", action="store_true",
                        help="TTA also mirrored left-right; only for mirror-symmetric classes "
                        "(implies --tta)")


def tta_config(args: argparse.Namespace) -> Any:
    """The ``TTAConfig`` of ``--tta`` / ``--tta-scales`` / ``--tta-flip``, or None."""
    if not (args.tta or args.tta_flip or args.tta_scales):
        return None
    from ..inference.tta import DEFAULT_TTA_SCALES, TTAConfig

    return TTAConfig(scales=tuple(args.tta_scales or DEFAULT_TTA_SCALES), flip=args.tta_flip)


def read_class_names(path: str) -> list[str]:
    """One class name per non-empty line of the text file ``path``; an empty file raises."""
    names = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    if not names:
        raise ValueError(f"{path}: no class names (one per line expected)")
    return names


WEIGHTS_HELP = (
    "trained checkpoint (.safetensors), effdet state dict, or an export: .onnx (ONNX Runtime), "
    ".xml (OpenVINO), .tflite (LiteRT)"
)
BACKEND_CHOICES = ("auto", "pytorch", "onnxruntime", "openvino", "litert")


def add_backend(parser: argparse.ArgumentParser) -> None:
    """``--backend``: which runtime runs ``--weights`` (default by the file's suffix)."""
    parser.add_argument(
        "--backend", choices=BACKEND_CHOICES, default="auto",
        help="auto: by --weights' suffix (.onnx ONNX Runtime, .xml OpenVINO, .tflite LiteRT), "
        "PyTorch otherwise",
    )
