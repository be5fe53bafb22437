"""OpenVINO export (fp32, or int8 calibrated with NNCF) and the OpenVINO runner.

:func:`export_openvino` writes an OpenVINO IR: ``model.xml`` (the graph) with ``model.bin``
(the weights, kept in fp32) beside it. The graph is the ONNX export's
(:func:`~efficientdet.deploy.export.export_onnx`, same arguments) converted by
``openvino.convert_model``: the same detections graph (decoding, TopK and NMS inside) or the
same raw per-level outputs, and the same input ``images: float32[B, 3, H, W]``, letterboxed and
normalised. The file's :class:`~efficientdet.deploy.metadata.ExportMetadata` is stored as JSON
in the IR's ``rt_info`` under :data:`RT_INFO_KEY`; :func:`read_openvino_metadata` reads it.

Why through ONNX rather than ``convert_model`` on the PyTorch module: the NMS operator
(:func:`~efficientdet.deploy.export_graph.class_nms`) has an ONNX translation that becomes
OpenVINO's ``NonMaxSuppression``, which the PyTorch frontend cannot convert; and the ONNX
exporter folds the TF-SAME padding of the ``tf_`` backbones into the convolutions' own pads,
where the PyTorch frontend leaves explicit ``Pad`` nodes. The raw networks run equally fast
either way (D0 and Lite0, fp32 and int8, measured).

With calibration images the network is quantized to int8 after training by NNCF
(``nncf.quantize``; activations per tensor, weights per channel). The post-processing
(everything downstream of the first TopK) and the prediction layers stay float
(:func:`quantize_int8`).

:class:`OpenVinoRunner` is the OpenVINO :class:`~efficientdet.deploy.exported.Runner`: the IR
compiled for the CPU with a latency hint and a thread count.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from .metadata import ExportMetadata, require_extra

if TYPE_CHECKING:  # torch is imported where it is used: `efficientdet --help` stays quick
    from torch import nn

    from .calibration import Calibration

__all__ = [
    "PRECISION_HINTS",
    "RT_INFO_KEY",
    "OpenVinoRunner",
    "export_openvino",
    "read_openvino_metadata",
]

# The IR's rt_info entry holding ExportMetadata.to_json().
RT_INFO_KEY = "efficientdet"
# OpenVINO's INFERENCE_PRECISION_HINT values a runner accepts.
PRECISION_HINTS = ("f32", "bf16")
# rt_info entries convert_model copies from the ONNX file (its metadata_props, the temporary
# file's path): the IR's own entry replaces them.
_CONVERTER_RT_INFO = ("framework", "conversion_parameters")


def _require(module: str) -> Any:
    return require_extra(module, "OpenVINO export and runtime")


# ---- metadata ---------------------------------------------------------------------------------


def _metadata_of(ov_model: Any, source: str) -> ExportMetadata:
    """The :class:`ExportMetadata` in an ``openvino.Model``'s rt_info; ``ValueError`` if none."""
    if not ov_model.has_rt_info(RT_INFO_KEY):
        raise ValueError(
            f"{source}: not an efficientdet export (no {RT_INFO_KEY!r} entry in its rt_info); "
            "export it with `efficientdet export`"
        )
    text = ov_model.get_rt_info(RT_INFO_KEY).astype(str)
    return ExportMetadata.from_json(text, source)


def _read_ir(core: Any, path: Path) -> Any:
    """``core.read_model`` of an ``.xml`` file, with a ``ValueError`` for an unreadable one."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such OpenVINO IR file")
    if not path.with_suffix(".bin").is_file():
        raise FileNotFoundError(f"{path}: its weights {path.with_suffix('.bin').name} are missing")
    try:
        return core.read_model(str(path))
    except RuntimeError as err:  # OpenVINO raises RuntimeError for files it cannot parse
        raise ValueError(f"{path}: OpenVINO cannot read the file ({err})") from err


def read_openvino_metadata(path: str | Path) -> ExportMetadata:
    """The :class:`ExportMetadata` of an OpenVINO IR written by :func:`export_openvino`.

    Args:
        path: the ``.xml`` file (its ``.bin`` beside it).

    Raises:
        FileNotFoundError: no such file, or its ``.bin`` missing.
        ValueError: not an IR, or an IR without efficientdet metadata.
    """
    ov = _require("openvino")
    path = Path(path)
    return _metadata_of(_read_ir(ov.Core(), path), str(path))


# ---- export -----------------------------------------------------------------------------------


def export_openvino(
    model: nn.Module,
    path: str | Path,
    *,
    image_size: tuple[int, int] | None = None,
    batch: int | Literal["dynamic"] = 1,
    with_nms: bool = True,
    score_threshold: float = 0.001,
    pre_nms_top_k: int = 5000,
    max_detections: int = 100,
    iou_threshold: float = 0.5,
    class_names: Sequence[str] | None = None,
    label_to_category_id: Sequence[int] | None = None,
    calibration: Calibration | None = None,
) -> ExportMetadata:
    """Write ``model`` as an OpenVINO IR (``path`` and the ``.bin`` beside it).

    Args:
        model: an :class:`~efficientdet.modeling.model.EfficientDet` (``model.config`` a
            ``ModelConfig``); exported in evaluation mode, its mode restored afterwards.
        path: the ``.xml`` file to write. Nothing is left behind when the export fails.
        image_size, batch, with_nms, score_threshold, pre_nms_top_k, max_detections,
        iou_threshold, class_names, label_to_category_id: as for
            :func:`~efficientdet.deploy.export.export_onnx`: input ``float32[B, 3, H, W]``,
            output ``detections float32[B, max_detections, 6]`` or the raw
            ``class_P3 .. class_P7, box_P3 .. box_P7`` ``[B, A * C | A * 4, H_l, W_l]``.
        calibration: images that calibrate a post-training int8 quantization (NNCF); without
            them the weights and activations stay fp32.

    Returns:
        The :class:`ExportMetadata` stored in the file (``precision`` ``"int8"`` and
        ``calibration_images`` when calibrated).

    Raises:
        ValueError: a path not ending in ``.xml``, empty calibration, or export arguments
            ``export_onnx`` refuses.
        RuntimeError: ``openvino`` (or ``nncf``, to calibrate) is not installed.
    """
    from .export import export_onnx

    ov = _require("openvino")
    if calibration is not None:
        _require("nncf")
        if len(calibration) == 0:
            raise ValueError("calibration has no images")
    path = Path(path)
    if path.suffix.lower() != ".xml":
        raise ValueError(f"{path}: an OpenVINO IR is an .xml file (its weights in a .bin beside it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{path.stem}.", dir=path.parent) as staging:
        staged = Path(staging) / path.name
        metadata = export_onnx(
            model, staged.with_suffix(".onnx"), image_size=image_size, batch=batch,
            with_nms=with_nms, score_threshold=score_threshold, pre_nms_top_k=pre_nms_top_k,
            max_detections=max_detections, iou_threshold=iou_threshold, class_names=class_names,
            label_to_category_id=label_to_category_id,
        )
        ov_model = ov.convert_model(str(staged.with_suffix(".onnx")))
        if calibration is not None:
            ov_model = quantize_int8(ov_model, calibration, metadata.batch)
            metadata = dataclasses.replace(
                metadata, precision="int8", calibration_images=len(calibration)
            )
        rt_info = ov_model.get_rt_info()
        for key in _CONVERTER_RT_INFO:
            if key in rt_info:
                del rt_info[key]
        ov_model.set_rt_info(metadata.to_json(), RT_INFO_KEY)
        ov.save_model(ov_model, str(staged), compress_to_fp16=False)
        os.replace(staged.with_suffix(".bin"), path.with_suffix(".bin"))
        os.replace(staged, path)
    return metadata


def _calibration_inputs(calibration: Calibration, batch: int | None) -> list[np.ndarray]:
    """The calibration images as the graph's inputs: one image each for a dynamic batch,
    groups of ``batch`` (the last one filled from the first images) for a fixed one."""
    images = [np.ascontiguousarray(b, dtype=np.float32) for b in calibration.batches]
    if batch is None or batch == 1:
        return images
    flat = np.concatenate(images)
    groups = []
    for start in range(0, len(flat), batch):
        group = flat[start : start + batch]
        if len(group) < batch:
            group = np.concatenate([group, np.resize(flat, (batch - len(group), *flat.shape[1:]))])
        groups.append(group)
    return groups


#: OpenVINO operations whose outputs can be negative as well as positive (unlike ReLU,
#: ReLU6 = ``Clamp``, or a sigmoid gate): their inputs want asymmetric int8 ranges.
SIGNED_ACTIVATIONS = frozenset({"Swish", "HSwish", "Mish", "Gelu", "Elu", "SoftPlus", "SoftSign"})


def signed_activations(ov_model: Any) -> list[str]:
    """The types in :data:`SIGNED_ACTIVATIONS` that ``ov_model`` uses, sorted (empty for
    the ReLU6 Lite models, ``["Swish"]`` for D0-D7)."""
    return sorted({op.get_type_name() for op in ov_model.get_ordered_ops()} & SIGNED_ACTIVATIONS)


def postprocess_nodes(ov_model: Any) -> list[str]:
    """Friendly names of the nodes of ``ov_model`` downstream of its first ``TopK``: the
    in-graph selection, decoding and NMS (none in a raw export)."""
    downstream: set[str] = set()
    for op in ov_model.get_ordered_ops():  # topological order
        name = op.get_friendly_name()
        if op.get_type_name() == "TopK" or any(
            port.get_source_output().get_node().get_friendly_name() in downstream
            for port in op.inputs()
        ):
            downstream.add(name)
    return sorted(downstream)


def prediction_convolutions(ov_model: Any, postprocess: Sequence[str] = ()) -> list[str]:
    """Friendly names of the convolutions of ``ov_model`` whose outputs reach a graph output
    or the ``postprocess`` nodes through no other convolution: the class and box prediction
    layers of every level."""
    convolutions = ("Convolution", "GroupConvolution")
    tail = set(postprocess)  # nodes between a prediction layer and the outputs, and after
    found = []
    for op in reversed(ov_model.get_ordered_ops()):  # consumers before their producers
        name = op.get_friendly_name()
        consumers = [t.get_node().get_friendly_name() for o in op.outputs() for t in o.get_target_inputs()]
        reaches_tail = any(consumer in tail for consumer in consumers)
        if op.get_type_name() == "Result" or (op.get_type_name() not in convolutions and reaches_tail):
            tail.add(name)
        elif op.get_type_name() == "Convolution" and reaches_tail:
            found.append(name)
    return sorted(found)


def quantize_int8(ov_model: Any, calibration: Calibration, batch: int | None) -> Any:
    """``ov_model`` quantized to int8 by NNCF post-training quantization.

    Statistics come from every calibration image (``subset_size`` = their number), with
    NNCF's defaults for a CNN on the CPU (symmetric per-tensor activations, per-channel
    weights, fast bias correction), except that every layer's weights use 7 of their 8 bits
    (NNCF's overflow fix for all layers, not only the first): the int8 instruction of x86
    CPUs without VNNI adds pairs of products in 16 bits and saturates on full-range weights.
    On an AVX2 CPU, the digits Lite0 below: AP loss 0.0053 with the fix on the first layer
    only, 0.0040 with it everywhere. Left float: the post-processing
    (:func:`postprocess_nodes`) and the prediction layers (:func:`prediction_convolutions`),
    whose rounding goes straight into the scores and boxes. Measured on a Lite0 trained on
    the digits demo data (320 px, 200 validation images, AP 0.645 in fp32), that halves the
    int8 AP loss (0.0092 to 0.0046) at no measurable speed cost; full bias correction gains
    0.002 more for four times the export time.

    Activations are quantized symmetrically (NNCF's PERFORMANCE preset) after ReLU-family
    activations, which are never negative, and asymmetrically (its MIXED preset) when the
    graph has an activation with a negative tail (:func:`signed_activations`: swish, GELU,
    ...): a symmetric range spends half its levels on values that swish bounds at -0.28.
    Measured on a D0 (swish) trained on generated photo-like objects (512 px, 200
    validation images, AP 0.7305 in fp32, 100 calibration images): int8 AP 0.7141 with the
    symmetric preset, 0.7218 with MIXED. On the ReLU6 Lite0 above MIXED gains only 0.001
    for slower convolutions, so it is not used there.

    Args:
        ov_model: an ``openvino.Model`` taking ``float32[batch, 3, H, W]``.
        calibration: its inputs (:class:`~efficientdet.deploy.calibration.Calibration`).
        batch: the graph's fixed batch size, ``None`` for a dynamic one.
    """
    nncf = _require("nncf")

    inputs = _calibration_inputs(calibration, batch)
    postprocess = postprocess_nodes(ov_model)
    ignored = nncf.IgnoredScope(
        names=postprocess + prediction_convolutions(ov_model, postprocess), validate=False
    )
    # NNCF logs a line for every node it leaves out (hundreds): only its warnings show.
    nncf_log = logging.getLogger("nncf")
    level = nncf_log.level
    nncf_log.setLevel(max(level, logging.WARNING))
    try:
        return nncf.quantize(
            ov_model,
            nncf.Dataset(inputs),
            subset_size=len(inputs),
            ignored_scope=ignored,
            preset=(
                nncf.QuantizationPreset.MIXED
                if signed_activations(ov_model)
                else nncf.QuantizationPreset.PERFORMANCE
            ),
            advanced_parameters=nncf.AdvancedQuantizationParameters(
                overflow_fix=nncf.OverflowFix.ENABLE
            ),
        )
    finally:
        nncf_log.setLevel(level)


# ---- runtime ----------------------------------------------------------------------------------


class OpenVinoRunner:
    """An OpenVINO IR compiled for the CPU (an :class:`~efficientdet.deploy.exported.Runner`).

    Args:
        path: the ``.xml`` file (its ``.bin`` beside it) written by :func:`export_openvino`.
        threads: inference threads (default ``torch.get_num_threads()``).
        precision: ``INFERENCE_PRECISION_HINT``: ``"f32"``, ``"bf16"``, or ``None`` for the
            plugin's default (bf16 on CPUs with AVX512-BF16 or AMX, else f32). The int8 parts
            of a quantized file run in int8 whatever the hint.

    Raises:
        FileNotFoundError: no such file (or its ``.bin``).
        ValueError: an unreadable IR, one without efficientdet metadata, or an unknown precision.
        RuntimeError: ``openvino`` is not installed.
    """

    runtime = "openvino"

    def __init__(
        self, path: str | Path, *, threads: int | None = None, precision: str | None = None
    ) -> None:
        ov = _require("openvino")
        import torch

        if precision is not None and precision not in PRECISION_HINTS:
            raise ValueError(
                f"precision {precision!r} is not one of {', '.join(PRECISION_HINTS)} (or the "
                "plugin's default)"
            )
        self.path = Path(path)
        core = ov.Core()
        ov_model = _read_ir(core, self.path)
        self.metadata = _metadata_of(ov_model, str(self.path))
        config: dict[str, Any] = {
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": int(threads if threads is not None else torch.get_num_threads()),
        }
        if precision is not None:
            config["INFERENCE_PRECISION_HINT"] = precision
        self.compiled = core.compile_model(ov_model, "CPU", config)
        self.request = self.compiled.create_infer_request()
        # What the plugin runs the float parts in ("f32", "bf16").
        self.precision = self.compiled.get_property("INFERENCE_PRECISION_HINT").to_string()

    def __call__(self, batch: np.ndarray) -> list[np.ndarray]:
        """The graph's outputs for ``batch: float32[B, 3, H, W]``, in the export's order."""
        results = self.request.infer({0: np.ascontiguousarray(batch, dtype=np.float32)})
        return [np.asarray(results[output]) for output in self.compiled.outputs]
