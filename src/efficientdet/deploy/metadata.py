"""What every exported file says about itself, whatever its format (ONNX, OpenVINO IR, LiteRT).

:class:`ExportMetadata` holds the input size, normalisation, class names, what the graph
returns (decoded detections or the raw head outputs), the in-graph post-processing, the
numeric precision and the anchors. Each format stores the same entries, JSON-encoded, in its
own place: ONNX ``metadata_props``, OpenVINO ``rt_info``, a LiteRT flatbuffer metadata entry.
:func:`build_metadata` makes it from a model's configuration and the export options.

:func:`require_extra` imports one optional runtime and, when it is missing, names the extra
that installs it: the one message every format gives.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .onnx_format import KIND_DETECTIONS, KIND_RAW, PAD_LABEL

if TYPE_CHECKING:
    from ..config import AnchorConfig, ModelConfig

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "INPUT_NAME",
    "PRECISIONS",
    "PREPROCESS_NOTE",
    "ExportMetadata",
    "build_metadata",
    "require_extra",
]

# Every format's metadata carries this name (ONNX files written before the other formats did).
FORMAT_NAME = "efficientdet-onnx"
FORMAT_VERSION = 1
INPUT_NAME = "images"
# Numeric precision of an exported graph's weights and activations.
PRECISIONS = ("fp32", "int8")
PREPROCESS_NOTE = (
    "RGB; letterbox: scale = min(H / h, W / w), bilinear resize with antialias to "
    "(round(h * scale), round(w * scale)) at the top-left; normalise (pixel / 255 - mean) / std "
    "per channel; pad the rest of the H x W input with 0 (after normalisation); NCHW float32. "
    "Boxes map back to the original image as box / scale."
)

# Which extra installs which runtime's module, for require_extra's message.
_EXTRAS = {
    "onnx": "onnx", "onnxscript": "onnx", "onnxruntime": "onnx",
    "openvino": "openvino", "nncf": "openvino",
    "litert_torch": "litert", "ai_edge_litert": "litert", "ai_edge_quantizer": "litert",
}
_EXTRA_CONTENTS = {
    "onnx": "onnx, onnxscript, onnxruntime",
    "openvino": "openvino, nncf",
    "litert": "litert-torch, ai-edge-litert",
}


def require_extra(module: str, what: str = "this") -> Any:
    """Import ``module``, or raise a one-line RuntimeError naming the extra that installs it.

    Args:
        module: e.g. ``"openvino"``, ``"ai_edge_litert.interpreter"``.
        what: the task that needs it, for the message (e.g. ``"OpenVINO export"``).
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:
        extra = _EXTRAS.get(module.split(".")[0], "onnx")
        raise RuntimeError(
            f"{what} needs {module.split('.')[0]!r}, which is not installed: "
            f"pip install 'efficientdet[{extra}]' ({_EXTRA_CONTENTS[extra]})"
        ) from err


@dataclass(frozen=True)
class ExportMetadata:
    """What an exported file says about itself.

    Attributes:
        format_version: :data:`FORMAT_VERSION` of the writer.
        model_name: registry name of the architecture.
        image_size: ``(H, W)`` the graph takes.
        mean, std: per-channel normalisation in 0..1 pixel units.
        num_classes: C; labels are ``0..C-1``.
        levels: pyramid levels of the raw outputs.
        output: ``"detections"`` (decoding and NMS inside) or ``"raw"`` (the per-level head
            outputs, class levels first; the package decodes them).
        batch: the fixed batch size, or ``None`` for a dynamic batch.
        class_names: names by label, if known.
        label_to_category_id: dataset category id by label, if known.
        score_threshold, pre_nms_top_k, max_detections, iou_threshold: the in-graph
            post-processing (``None`` for raw exports).
        pad_label: class value of padding rows.
        preprocess: how to make the input, in words.
        precision: ``"fp32"`` or ``"int8"`` (post-training quantized with calibration images).
        calibration_images: how many images calibrated an int8 export.
        anchors: the anchor layout ``{"num_scales", "aspect_ratios", "anchor_scale"}`` that
            decodes raw outputs (``None``: the default :class:`~efficientdet.config.AnchorConfig`).
    """

    format_version: int
    model_name: str
    image_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    num_classes: int
    levels: tuple[int, ...]
    output: str
    batch: int | None
    class_names: list[str] | None = None
    label_to_category_id: list[int] | None = None
    score_threshold: float | None = None
    pre_nms_top_k: int | None = None
    max_detections: int | None = None
    iou_threshold: float | None = None
    pad_label: int = PAD_LABEL
    preprocess: str = PREPROCESS_NOTE
    precision: str = "fp32"
    calibration_images: int | None = None
    anchors: dict[str, Any] | None = None

    def to_props(self) -> dict[str, str]:
        """Metadata entries: every value JSON-encoded, plus the format name."""
        props = {"format": json.dumps(FORMAT_NAME)}
        for name in self.__dataclass_fields__:
            props[name] = json.dumps(getattr(self, name))
        return props

    def to_json(self) -> str:
        """All entries as one JSON object of :meth:`to_props` strings (LiteRT, OpenVINO)."""
        return json.dumps(self.to_props(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes, source: str = "export") -> ExportMetadata:
        """Parse :meth:`to_json`'s text; raises ``ValueError``."""
        try:
            props = json.loads(text)
        except ValueError as err:
            raise ValueError(f"{source}: unreadable efficientdet metadata ({err})") from err
        if not isinstance(props, dict):
            raise ValueError(f"{source}: unreadable efficientdet metadata (not an object)")
        return cls.from_props(props, source)

    @classmethod
    def from_props(cls, props: Mapping[str, str], source: str = "ONNX file") -> ExportMetadata:
        """Parse entries written by :meth:`to_props`; raises ``ValueError``."""
        try:
            fmt = json.loads(props.get("format", "null"))
        except ValueError:
            fmt = None
        if fmt != FORMAT_NAME:
            raise ValueError(
                f"{source}: not an efficientdet export (no metadata format {FORMAT_NAME!r}); "
                "export it with `efficientdet export`"
            )
        try:
            values = {k: json.loads(props[k]) for k in cls.__dataclass_fields__ if k in props}
        except ValueError as err:
            raise ValueError(f"{source}: unreadable metadata: {err}") from err
        version = int(values.get("format_version", 0))
        if version > FORMAT_VERSION:
            raise ValueError(
                f"{source}: written by a newer efficientdet (format {version}, this version "
                f"reads up to {FORMAT_VERSION}); upgrade the package"
            )
        for key in ("image_size", "mean", "std", "levels"):
            if key in values:
                values[key] = tuple(values[key])
        try:
            return cls(**values)
        except TypeError as err:
            raise ValueError(f"{source}: incomplete metadata: {err}") from err

    def anchor_config(self) -> AnchorConfig:
        """The :class:`~efficientdet.config.AnchorConfig` that decodes this export's raw outputs."""
        from ..config import AnchorConfig

        if not self.anchors:
            return AnchorConfig()
        values = dict(self.anchors)
        if "aspect_ratios" in values:
            values["aspect_ratios"] = tuple(tuple(r) for r in values["aspect_ratios"])
        return AnchorConfig(**values)


def build_metadata(
    config: ModelConfig,
    image_size: tuple[int, int],
    *,
    with_nms: bool,
    batch: int | None,
    class_names: Sequence[str] | None = None,
    label_to_category_id: Sequence[int] | None = None,
    score_threshold: float = 0.001,
    pre_nms_top_k: int = 5000,
    max_detections: int = 100,
    iou_threshold: float = 0.5,
    precision: str = "fp32",
    calibration_images: int | None = None,
) -> ExportMetadata:
    """The :class:`ExportMetadata` of an export of a network built from ``config``.

    Args:
        config: the network's configuration (``model.config``).
        image_size: ``(H, W)`` of the exported input.
        with_nms: the graph returns decoded detections (else the raw outputs).
        batch: the fixed batch size, or ``None`` for a dynamic one.
        class_names, label_to_category_id: stored as given (``class_names`` must have
            ``config.num_classes`` entries).
        score_threshold, pre_nms_top_k, max_detections, iou_threshold: the in-graph
            post-processing, recorded only when ``with_nms``.
        precision: one of :data:`PRECISIONS`.
        calibration_images: images that calibrated an int8 export.
    """
    if class_names is not None and len(class_names) != config.num_classes:
        raise ValueError(
            f"{len(class_names)} class names for a model with {config.num_classes} classes"
        )
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    anchors = config.anchors
    return ExportMetadata(
        format_version=FORMAT_VERSION,
        model_name=config.name,
        image_size=(int(image_size[0]), int(image_size[1])),
        mean=config.mean,
        std=config.std,
        num_classes=config.num_classes,
        levels=config.levels,
        output=KIND_DETECTIONS if with_nms else KIND_RAW,
        batch=batch,
        class_names=list(class_names) if class_names is not None else None,
        label_to_category_id=(
            [int(i) for i in label_to_category_id] if label_to_category_id is not None else None
        ),
        score_threshold=float(score_threshold) if with_nms else None,
        pre_nms_top_k=int(pre_nms_top_k) if with_nms else None,
        max_detections=int(max_detections) if with_nms else None,
        iou_threshold=float(iou_threshold) if with_nms else None,
        precision=precision,
        calibration_images=calibration_images,
        anchors={
            "num_scales": anchors.num_scales,
            "aspect_ratios": [list(r) for r in anchors.aspect_ratios],
            "anchor_scale": anchors.anchor_scale,
        },
    )
