"""ONNX export: the network with decoding and NMS inside the graph, or its raw outputs.

The exported graph takes ``images: float32[B, 3, H, W]``, already letterboxed and normalised
(:mod:`efficientdet.detection.transform`), and by default returns ``detections: float32[B, D, 6]``
with ``D = max_detections`` rows per image ``(x1, y1, x2, y2, score, class)`` in network-input
pixels, best first. Rows past an image's last detection are padding: all zeros except
``class = -1`` (:data:`PAD_LABEL`), so ``score > 0`` (or ``class >= 0``) marks the real ones.

Pre-processing stays outside the graph and is described in the file's ``metadata_props``
(input size, mean, std, class names, model name, format version); :func:`read_onnx_metadata`
reads them back. ``with_nms=False`` exports the raw per-level head outputs instead
(``class_P3 .. class_P7``, ``box_P3 .. box_P7``).

Export uses the ``torch.export`` based exporter (``torch.onnx.export(dynamo=True)``): the
TF-SAME padding of the ``tf_`` backbones is computed from static spatial sizes, so it becomes
constants; only the batch may be dynamic.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ..config import check_image_size
from ..modeling.pretrained import unused_labels
from .metadata import (
    FORMAT_NAME,
    FORMAT_VERSION,
    INPUT_NAME,
    PREPROCESS_NOTE,
    ExportMetadata,
    build_metadata,
    require_extra,
)
from .onnx_format import DETECTIONS_TENSOR, KIND_DETECTIONS, KIND_RAW, PAD_LABEL

if TYPE_CHECKING:  # torch is imported where it is used: `efficientdet --help` stays quick
    from torch import nn

    from ..config import ModelConfig

log = logging.getLogger(__name__)

__all__ = [
    "DETECTIONS_TENSOR",
    "KIND_DETECTIONS",
    "KIND_RAW",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "INPUT_NAME",
    "PAD_LABEL",
    "ExportMetadata",
    "OnnxMetadata",
    "export_onnx",
    "read_onnx_metadata",
]

DEFAULT_OPSET = 18
# The ONNX file's metadata is every format's (the name is older than the other formats).
OnnxMetadata = ExportMetadata

BatchSpec = int | Literal["dynamic"]


def require(module: str) -> Any:
    """Import one of the ONNX extras, or raise a RuntimeError saying how to install them."""
    return require_extra(module, "ONNX export and ONNX Runtime")


def read_onnx_metadata(path: str | Path) -> OnnxMetadata:
    """The :class:`OnnxMetadata` of an exported file (reads the graph, not the weights)."""
    onnx = require("onnx")

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such ONNX file")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # protobuf raises its own DecodeError
        raise ValueError(f"{path}: not a readable ONNX file ({err})") from err
    props = {p.key: p.value for p in proto.metadata_props}
    return OnnxMetadata.from_props(props, str(path))


# ---- export ----------------------------------------------------------------------------------


def _check_batch(batch: BatchSpec) -> int | None:
    if batch == "dynamic":
        return None
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be a positive integer or 'dynamic', got {batch!r}")
    return batch


def export_onnx(
    model: nn.Module,
    path: str | Path,
    *,
    image_size: tuple[int, int] | None = None,
    batch: BatchSpec = 1,
    with_nms: bool = True,
    score_threshold: float = 0.001,
    pre_nms_top_k: int = 5000,
    max_detections: int = 100,
    iou_threshold: float = 0.5,
    class_names: Sequence[str] | None = None,
    label_to_category_id: Sequence[int] | None = None,
    opset: int = DEFAULT_OPSET,
) -> OnnxMetadata:
    """Write ``model`` as an ONNX file.

    Args:
        model: an :class:`~efficientdet.modeling.model.EfficientDet` (anything returning per-level
            ``(class_outputs, box_outputs)`` with a ``ModelConfig`` as ``model.config``). It is
            exported in evaluation mode; its mode is restored afterwards.
        path: the ``.onnx`` file to write (weights inside the file).
        image_size: ``(H, W)`` of the input, default ``model.config.image_size``.
        batch: a fixed batch size, or ``"dynamic"``.
        with_nms: ``True``: output ``detections: float32[B, max_detections, 6]`` rows
            ``(x1, y1, x2, y2, score, class)`` in input pixels, padding rows 0 with class
            :data:`PAD_LABEL`. ``False``: the raw outputs ``class_P{l}: [B, A * C, H_l, W_l]``
            and ``box_P{l}: [B, A * 4, H_l, W_l]`` per level.
        score_threshold: candidates at or below this score are dropped before NMS.
        pre_nms_top_k: (anchor, class) candidates per image kept before NMS.
        max_detections: rows per image.
        iou_threshold: class-aware NMS IoU threshold.
        class_names: names by label, stored in the metadata; labels named ``N/A`` (COCO's
            unused ids) are never detected.
        label_to_category_id: dataset category id by label, stored in the metadata.
        opset: ONNX opset (NonMaxSuppression needs >= 11; the exporter targets >= 18).

    Returns:
        The :class:`OnnxMetadata` written into the file.
    """
    from .export_graph import DetectionExport, RawExport, model_config

    require("onnx")
    require("onnxscript")

    config = model_config(model)
    size_hw = _input_size(image_size, config)
    fixed_batch = _check_batch(batch)
    wrapper: nn.Module
    if with_nms:
        wrapper = DetectionExport(
            model,
            size_hw,
            score_threshold=score_threshold,
            pre_nms_top_k=pre_nms_top_k,
            max_detections=max_detections,
            iou_threshold=iou_threshold,
            suppressed_labels=unused_labels(class_names),
        )
        output_names = [DETECTIONS_TENSOR]
    else:
        wrapper = RawExport(model)
        output_names = [f"{kind}_P{lv}" for kind in ("class", "box") for lv in config.levels]
    metadata = build_metadata(
        config, size_hw, with_nms=with_nms, batch=fixed_batch, class_names=class_names,
        label_to_category_id=label_to_category_id, score_threshold=score_threshold,
        pre_nms_top_k=pre_nms_top_k, max_detections=max_detections, iou_threshold=iou_threshold,
    )
    proto = _trace_to_onnx(model, wrapper, size_hw, fixed_batch, output_names, opset)
    _set_metadata(proto, metadata)
    _write_proto(proto, Path(path))
    return metadata


def _input_size(image_size: tuple[int, int] | None, config: ModelConfig) -> tuple[int, int]:
    """The checked ``(H, W)`` of the exported input: ``image_size``, default the model's."""
    size = tuple(int(s) for s in (image_size or config.image_size))
    if len(size) != 2:
        raise ValueError(f"image_size must be (H, W), got {image_size!r}")
    size_hw = (size[0], size[1])
    check_image_size(size_hw, config.max_level)
    return size_hw


def _trace_to_onnx(
    model: nn.Module,
    wrapper: nn.Module,
    size_hw: tuple[int, int],
    fixed_batch: int | None,
    output_names: list[str],
    opset: int,
) -> Any:
    """The ONNX ``ModelProto`` of ``wrapper``, traced by ``torch.onnx.export(dynamo=True)``
    with ``model`` in evaluation mode (its mode restored afterwards)."""
    import torch

    from .export_graph import onnx_translations

    # A dynamic batch is traced with 2 images: torch.export specialises a size of 1.
    example_batch = fixed_batch if fixed_batch is not None else 2
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    images = torch.zeros(example_batch, 3, *size_hw, device=device)
    dynamic_shapes = None
    if fixed_batch is None:
        dynamic_shapes = {"images": {0: torch.export.Dim("batch", min=1, max=1024)}}
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore", category=UserWarning)
            warnings.simplefilter("ignore", category=FutureWarning)
            program = torch.onnx.export(
                wrapper,
                (images,),
                input_names=[INPUT_NAME],
                output_names=output_names,
                opset_version=opset,
                dynamo=True,
                dynamic_shapes=dynamic_shapes,
                custom_translation_table=onnx_translations(),
                external_data=False,
                verbose=False,
            )
    finally:
        model.train(was_training)
    if program is None:
        raise RuntimeError("torch.onnx.export returned no program")
    return program.model_proto


def _set_metadata(proto: Any, metadata: OnnxMetadata) -> None:
    del proto.metadata_props[:]
    for key, value in metadata.to_props().items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "efficientdet"
    if metadata.output == KIND_DETECTIONS:
        proto.doc_string = (
            f"{metadata.model_name}: {INPUT_NAME} float32[B, 3, {metadata.image_size[0]}, "
            f"{metadata.image_size[1]}] -> {DETECTIONS_TENSOR} float32[B, "
            f"{metadata.max_detections}, 6] rows (x1, y1, x2, y2, score, class) in input pixels; "
            f"padding rows 0 with class {PAD_LABEL}. Input: {PREPROCESS_NOTE}"
        )
    else:
        proto.doc_string = (
            f"{metadata.model_name}: raw head outputs per level P{metadata.levels[0]}-"
            f"P{metadata.levels[-1]}. Input: {PREPROCESS_NOTE}"
        )


def _write_proto(proto: Any, path: Path) -> None:
    onnx = require("onnx")

    from ..modeling.checkpoint import atomic_write

    atomic_write(path, lambda tmp: onnx.save_model(proto, tmp))
