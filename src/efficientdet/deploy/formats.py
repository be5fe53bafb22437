"""One entry for every export format: ``efficientdet export --format onnx | openvino | litert``.

:func:`export_model` writes a model in one format and precision and returns the file's
:class:`~efficientdet.deploy.metadata.ExportMetadata`. Each format keeps what its runtime can
hold: ONNX and OpenVINO take decoding and NMS inside the graph (or the raw outputs with
``with_nms=False``); LiteRT takes the raw outputs only, and the package's own post-processing
decodes them (:class:`~efficientdet.deploy.exported.ExportedDetector`), so every format gives
its detections through the same ``predict``, ``eval`` and ``serve`` code.

int8 (``calibration`` given) is post-training quantization calibrated on the user's images:
ONNX Runtime static quantization, NNCF for OpenVINO, full-integer quantization for LiteRT.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from torch import nn

    from .calibration import Calibration
    from .metadata import ExportMetadata

__all__ = ["FORMATS", "FORMAT_SUFFIX", "export_model", "format_for", "holds_nms"]

FORMATS = ("onnx", "openvino", "litert")
# The file each format writes (OpenVINO's weights go to a .bin beside the .xml).
FORMAT_SUFFIX = {"onnx": ".onnx", "openvino": ".xml", "litert": ".tflite"}


def holds_nms(fmt: str) -> bool:
    """Whether ``fmt``'s graphs can hold decoding and NMS (LiteRT's cannot)."""
    return fmt in ("onnx", "openvino")


def format_for(path: str | Path, fmt: str | None = None, default: str | None = None) -> str:
    """The format to write ``path`` in: ``fmt``, else the one its suffix names, else
    ``default`` (when given).

    Raises:
        ValueError: an unknown ``fmt``, a suffix that names no format when neither ``fmt``
            nor ``default`` is given, or a suffix that is not ``fmt``'s.
    """
    suffix = Path(path).suffix.lower()
    by_suffix = next((name for name, ext in FORMAT_SUFFIX.items() if ext == suffix), None)
    if fmt is None:
        if by_suffix is None and default is not None:
            return default
        if by_suffix is None:
            known = ", ".join(f"{ext} ({name})" for name, ext in FORMAT_SUFFIX.items())
            raise ValueError(f"{path}: give --format, or a file name ending in {known}")
        return by_suffix
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
    if by_suffix != fmt:
        raise ValueError(f"{path}: --format {fmt} writes a {FORMAT_SUFFIX[fmt]} file")
    return fmt


def export_model(
    model: nn.Module,
    path: str | Path,
    *,
    fmt: str = "onnx",
    image_size: tuple[int, int] | None = None,
    batch: int | Literal["dynamic"] = 1,
    with_nms: bool | None = None,
    score_threshold: float = 0.001,
    pre_nms_top_k: int = 5000,
    max_detections: int = 100,
    iou_threshold: float = 0.5,
    class_names: Sequence[str] | None = None,
    label_to_category_id: Sequence[int] | None = None,
    calibration: Calibration | None = None,
) -> ExportMetadata:
    """Write ``model`` in format ``fmt``; int8 when ``calibration`` is given.

    Args:
        model: an :class:`~efficientdet.modeling.model.EfficientDet` (``model.config`` a
            ``ModelConfig``), exported in evaluation mode.
        path: the file to write (``.onnx``, ``.xml`` or ``.tflite``).
        fmt: one of :data:`FORMATS`.
        image_size: ``(H, W)`` of the input, default the model's.
        batch: a fixed batch size, or ``"dynamic"`` (ONNX and OpenVINO only).
        with_nms: decoding and NMS inside the graph; default True where the format holds
            them (:func:`holds_nms`), False for LiteRT (True there is refused).
        score_threshold, pre_nms_top_k, max_detections, iou_threshold: the in-graph
            post-processing (graphs with NMS).
        class_names, label_to_category_id: stored in the file's metadata.
        calibration: images for post-training int8 quantization.

    Returns:
        The :class:`~efficientdet.deploy.metadata.ExportMetadata` written with the file.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
    nms = holds_nms(fmt) if with_nms is None else with_nms
    if nms and not holds_nms(fmt):
        raise ValueError(
            f"--format {fmt} cannot hold NMS in its graph; it exports the raw outputs (--raw) "
            "and the package decodes them"
        )
    if fmt == "litert":
        if batch == "dynamic":
            raise ValueError("--format litert takes a fixed --batch-size (LiteRT graphs have static shapes)")
        from .litert_backend import export_litert

        return export_litert(
            model, path, image_size=image_size, batch=batch, class_names=class_names,
            label_to_category_id=label_to_category_id, calibration=calibration,
        )
    if fmt == "openvino":
        from .openvino_backend import export_openvino

        return export_openvino(
            model, path, image_size=image_size, batch=batch, with_nms=nms,
            score_threshold=score_threshold, pre_nms_top_k=pre_nms_top_k,
            max_detections=max_detections, iou_threshold=iou_threshold, class_names=class_names,
            label_to_category_id=label_to_category_id, calibration=calibration,
        )
    if calibration is not None:
        from .onnx_quantize import export_onnx_int8

        return export_onnx_int8(
            model, path, calibration=calibration, image_size=image_size, batch=batch,
            with_nms=nms, score_threshold=score_threshold, pre_nms_top_k=pre_nms_top_k,
            max_detections=max_detections, iou_threshold=iou_threshold, class_names=class_names,
            label_to_category_id=label_to_category_id,
        )
    from .export import export_onnx

    return export_onnx(
        model, path, image_size=image_size, batch=batch, with_nms=nms,
        score_threshold=score_threshold, pre_nms_top_k=pre_nms_top_k,
        max_detections=max_detections, iou_threshold=iou_threshold, class_names=class_names,
        label_to_category_id=label_to_category_id,
    )
