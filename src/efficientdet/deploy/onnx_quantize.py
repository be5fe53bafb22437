"""ONNX int8: ONNX Runtime static quantization of an fp32 export, calibrated on the user's images.

:func:`quantize_onnx` turns a file written by :func:`~efficientdet.deploy.export.export_onnx`
(decoding and NMS inside, or the raw outputs) into an int8 one with the same inputs, outputs
and metadata (``precision: "int8"`` and the number of calibration images). Only the network is
quantized; the post-processing (decoding, TopK, NonMaxSuppression, the gathers) stays in float.
:func:`export_onnx_int8` exports and quantizes in one step.

How the graph is quantized (:class:`QuantSettings`' defaults):

- ``onnxruntime.quantization.quant_pre_process`` first folds the batch norms into the
  convolutions and constant-folds the graph, so each convolution quantizes as one
  ``QLinearConv``.
- The squeeze-excitation pooling, ``ReduceMean`` over H and W, becomes the equivalent
  ``GlobalAveragePool``, which ONNX Runtime runs in int8 (a float ``ReduceMean`` between int8
  layers costs a dequantization of the full feature map and a slow reduction in NHWC).
- QDQ format, uint8 activations, int8 weights with a scale per output channel, MinMax ranges:
  every operator of the network that ONNX Runtime has an int8 kernel for is quantized
  (convolutions, additions, multiplications, sigmoids, pooling, resizing), so the feature
  maps stay int8 from the input to the head's outputs.
- The weights use 7 of their 8 bits (``reduce_range``). On x86 CPUs without VNNI (AVX2, or
  AVX-512 without VNNI) ONNX Runtime multiplies uint8 activations by int8 weights with an
  instruction that adds pairs of products in 16 bits and saturates; with 7-bit weights the
  pairs fit. Measured on an AVX2 CPU, a Lite0 trained on the digit scenes (AP 0.646 in
  fp32): int8 AP 0.564 with 8-bit weights, 0.634 with 7-bit ones. On VNNI CPUs the 8th bit
  would be exact, but a file is exported once and run anywhere.
- The head's prediction convolutions (class logits and box deltas) stay float: their
  8-bit rounding went straight into the scores and boxes (AP 0.542 with them int8, 0.564
  float, 8-bit weights on the same model).

Measured on 2 threads of an AVX-512 VNNI CPU (no AMX), with NMS in the graph, int8 against
fp32 in ONNX Runtime: Lite0 320 about 1.5x and D0 512 about 1.35x faster. Quantizing the
convolutions alone gains little on Lite0 (1.1x) and is slower than fp32 on D0 (0.75x): the
dequantize / quantize pairs around each float operator between them cost more than the
int8 convolutions save. Per-tensor weights and QOperator are no faster and per-tensor is
less accurate; int8 (``"s8"``) activations are slower than fp32 on x86.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .export import _set_metadata, _write_proto, export_onnx, read_onnx_metadata
from .metadata import INPUT_NAME, ExportMetadata, require_extra

if TYPE_CHECKING:
    from torch import nn

    from .calibration import Calibration

log = logging.getLogger(__name__)

__all__ = [
    "QUANTIZED_OPS",
    "QuantSettings",
    "export_onnx_int8",
    "head_outputs",
    "network_nodes",
    "quantize_onnx",
]

# Operators of the network quantized to int8 (those with ONNX Runtime int8 kernels).
QUANTIZED_OPS = (
    "Conv", "Add", "Mul", "Sigmoid", "Clip", "Relu", "MaxPool", "AveragePool",
    "GlobalAveragePool", "Resize", "Concat",
)


def _require(module: str) -> Any:
    return require_extra(module, "ONNX int8 quantization")


@dataclass(frozen=True)
class QuantSettings:
    """How :func:`quantize_onnx` quantizes. The defaults are the fastest accurate choice
    measured (module docstring); the others are there to compare.

    Attributes:
        ops: operator types quantized in the network.
        qdq: QDQ format (quantize / dequantize pairs that ONNX Runtime fuses into int8
            kernels), else QOperator (the int8 operators written out).
        per_channel: int8 weights with one scale per output channel (else one per tensor).
        activations: ``"u8"`` (asymmetric uint8) or ``"s8"`` (int8) activations.
        method: ``"minmax"``, ``"entropy"`` or ``"percentile"`` calibration ranges.
        float_head: the head's prediction convolutions (the class and box outputs) stay
            float, so the logits and box deltas are not rounded to 8 bits.
        reduce_range: 7-bit weights, exact on x86 CPUs without VNNI (module docstring).
        global_pool: squeeze-excitation ``ReduceMean`` as int8 ``GlobalAveragePool``.
        extra_options: ``onnxruntime.quantization.quantize_static``'s ``extra_options``.
    """

    ops: tuple[str, ...] = QUANTIZED_OPS
    qdq: bool = True
    per_channel: bool = True
    activations: str = "u8"
    method: str = "minmax"
    float_head: bool = True
    reduce_range: bool = True
    global_pool: bool = True
    extra_options: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if self.activations not in ("u8", "s8"):
            raise ValueError(f"activations {self.activations!r} is not 'u8' or 's8'")
        if self.method not in _METHODS:
            raise ValueError(f"calibration method {self.method!r} is not one of {', '.join(_METHODS)}")


# Calibration method name -> its member of onnxruntime.quantization.CalibrationMethod.
_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}


def quantize_onnx(
    source: str | Path,
    out: str | Path,
    calibration: Calibration,
    *,
    settings: QuantSettings | None = None,
) -> ExportMetadata:
    """Write an int8 copy of an fp32 ONNX export, calibrated on ``calibration``'s images.

    Args:
        source: an fp32 ``.onnx`` file written by :func:`~efficientdet.deploy.export.export_onnx`
            (with NMS inside or raw outputs, fixed or dynamic batch).
        out: the int8 ``.onnx`` file to write (atomically; it may not be ``source``).
        calibration: ``float32[1, 3, H, W]`` network inputs of the file's size
            (:func:`~efficientdet.deploy.calibration.calibration_images`).
        settings: how to quantize (default :class:`QuantSettings`'s defaults).

    Returns:
        The metadata written into ``out``: ``source``'s with ``precision="int8"`` and
        ``calibration_images=len(calibration)``.

    Raises:
        ValueError: ``source`` is not an efficientdet export, is already int8, or the
            calibration images are missing or of another size.
        RuntimeError: onnx or onnxruntime is not installed (naming the extra).
    """
    onnx = _require("onnx")
    quantization = _require("onnxruntime.quantization")

    settings = settings or QuantSettings()
    source, out = Path(source), Path(out)
    metadata = read_onnx_metadata(source)
    if metadata.precision != "fp32":
        raise ValueError(f"{source}: already {metadata.precision}; quantize the fp32 export")
    if out.resolve() == source.resolve():
        raise ValueError(f"{out}: write the int8 file next to the fp32 one, not over it")
    batches = _calibration_batches(calibration, metadata)
    log.info("calibrating int8 on %d images: %s", len(calibration), calibration.source)
    types, formats = quantization.QuantType, quantization.QuantFormat
    with tempfile.TemporaryDirectory(prefix="efficientdet-int8-") as tmp:
        prepared, quantized = Path(tmp) / "prepared.onnx", Path(tmp) / "int8.onnx"
        quantization.quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        model = onnx.load(str(prepared))
        keep_float = _prepare(model, settings)
        onnx.save_model(model, str(prepared))
        quantization.quantize_static(
            str(prepared), str(quantized), _Reader(batches, quantization.CalibrationDataReader),
            quant_format=formats.QDQ if settings.qdq else formats.QOperator,
            op_types_to_quantize=list(settings.ops),
            per_channel=settings.per_channel,
            reduce_range=settings.reduce_range,
            activation_type=types.QUInt8 if settings.activations == "u8" else types.QInt8,
            weight_type=types.QInt8,
            nodes_to_exclude=keep_float,
            calibrate_method=getattr(quantization.CalibrationMethod, _METHODS[settings.method]),
            extra_options=dict(settings.extra_options),
        )
        proto = onnx.load(str(quantized))
    int8 = replace(metadata, precision="int8", calibration_images=len(calibration))
    _set_metadata(proto, int8)
    _write_proto(proto, out)
    return int8


def export_onnx_int8(
    model: nn.Module,
    path: str | Path,
    *,
    calibration: Calibration,
    settings: QuantSettings | None = None,
    **export_options: Any,
) -> ExportMetadata:
    """Export ``model`` to ONNX and quantize it to int8 (:func:`quantize_onnx`).

    Args:
        model: what :func:`~efficientdet.deploy.export.export_onnx` takes.
        path: the int8 ``.onnx`` file to write.
        calibration: network inputs of the export's size, ``float32[1, 3, H, W]`` each.
        settings: :func:`quantize_onnx`'s.
        export_options: :func:`~efficientdet.deploy.export.export_onnx`'s keyword arguments
            (``image_size``, ``batch``, ``with_nms``, thresholds, class names, ...).

    Returns:
        The int8 file's metadata.
    """
    with tempfile.TemporaryDirectory(prefix="efficientdet-fp32-") as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        export_onnx(model, fp32, **export_options)
        return quantize_onnx(fp32, path, calibration, settings=settings)


def _prepare(model: Any, settings: QuantSettings) -> list[str]:
    """Rewrite the pre-processed ``model`` for quantization, in place, and return the names of
    the nodes that stay float: the post-processing (and the head's predictions with
    ``settings.float_head``)."""
    network = network_nodes(model)
    if settings.global_pool:
        pooled = pooling_as_global_average(model, network)
        log.debug("%d ReduceMean as GlobalAveragePool", pooled)
    keep_float = [node.name for node in model.graph.node if node.name not in network]
    if settings.float_head:
        keep_float += head_outputs(model, network)
    return keep_float


def _calibration_batches(calibration: Calibration, metadata: ExportMetadata) -> list[np.ndarray]:
    """``calibration``'s images as the file's input batches: one image each for a dynamic
    batch, else groups of the fixed batch size (the last one completed from the first images).

    Returns:
        ``float32[B, 3, H, W]`` arrays.
    """
    if len(calibration) == 0:
        raise ValueError(f"no calibration images ({calibration.source})")
    expected = (3, *metadata.image_size)
    images: list[np.ndarray] = []
    for batch in calibration.batches:
        array = np.asarray(batch, dtype=np.float32)
        if array.ndim != 4 or tuple(array.shape[1:]) != expected:
            raise ValueError(
                f"calibration images are {tuple(array.shape)}, the export takes "
                f"[B, {expected[0]}, {expected[1]}, {expected[2]}] ({calibration.source})"
            )
        images.extend(array)
    size = metadata.batch or 1
    count = -(-len(images) // size) * size
    padded = [images[i % len(images)] for i in range(count)]
    return [np.ascontiguousarray(np.stack(padded[i : i + size])) for i in range(0, count, size)]


def _Reader(batches: list[np.ndarray], base: type) -> Any:
    """An ``onnxruntime.quantization.CalibrationDataReader`` over ``batches`` (the class is
    made here: its base comes from the optional onnxruntime)."""

    class BatchReader(base):
        def __init__(self) -> None:
            self._batches: Iterator[np.ndarray] = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._batches, None)
            return None if batch is None else {INPUT_NAME: batch}

    return BatchReader()


def network_nodes(model: Any) -> set[str]:
    """Names of the nodes of the network in an exported graph: every convolution and all
    that it depends on. What the last convolutions (the head's predictions) feed, the
    decoding, TopK and NonMaxSuppression of a graph with NMS inside, is not in it.

    Args:
        model: an ``onnx.ModelProto``.
    """
    producer = {output: node for node in model.graph.node for output in node.output}
    found: set[str] = set()
    pending = [node for node in model.graph.node if node.op_type == "Conv"]
    while pending:
        node = pending.pop()
        if node.name in found:
            continue
        found.add(node.name)
        pending.extend(producer[name] for name in node.input if name in producer)
    return found


def head_outputs(model: Any, network: set[str] | None = None) -> list[str]:
    """Names of the network's last convolutions, the head's class and box predictions: those
    whose output no other node of the network reads.

    Args:
        model: an ``onnx.ModelProto``.
        network: :func:`network_nodes` of ``model`` (computed when not given).
    """
    network = network_nodes(model) if network is None else network
    read = {name for node in model.graph.node if node.name in network for name in node.input}
    return [
        node.name for node in model.graph.node
        if node.op_type == "Conv" and node.name in network and node.output[0] not in read
    ]


def pooling_as_global_average(model: Any, among: set[str] | None = None) -> int:
    """Replace each ``ReduceMean`` over the spatial axes of an NCHW tensor (keeping them) by
    the equivalent ``GlobalAveragePool``, in place.

    Args:
        model: an ``onnx.ModelProto``.
        among: replace only these nodes (by name); default all.

    Returns:
        The number of nodes replaced.
    """
    onnx = _require("onnx")

    constants = {init.name: init for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            constants[node.output[0]] = node.attribute[0].t
    ranks = _tensor_ranks(model)
    replaced = 0
    for index, node in enumerate(model.graph.node):
        if node.op_type != "ReduceMean" or ranks.get(node.input[0]) != 4:
            continue
        if among is not None and node.name not in among:
            continue
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        axes = attributes.get("axes")
        if axes is None and len(node.input) > 1 and node.input[1] in constants:
            axes = onnx.numpy_helper.to_array(constants[node.input[1]]).ravel().tolist()
        if axes is None or sorted(int(a) % 4 for a in axes) != [2, 3]:
            continue
        if attributes.get("keepdims", 1) != 1:
            continue
        pool = onnx.helper.make_node(
            "GlobalAveragePool", [node.input[0]], list(node.output), name=node.name
        )
        model.graph.node[index].CopyFrom(pool)
        replaced += 1
    used = {name for node in model.graph.node for name in node.input}
    used |= {value.name for value in model.graph.output}
    unused = [init for init in model.graph.initializer if init.name not in used]
    for init in unused:  # the axes of the replaced nodes
        model.graph.initializer.remove(init)
    return replaced


def _tensor_ranks(model: Any) -> dict[str, int]:
    """Rank of each tensor whose shape the graph records (inferred by ONNX shape inference)."""
    onnx = _require("onnx")

    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    ranks = {}
    for value in [*graph.input, *graph.value_info, *graph.output]:
        if value.type.HasField("tensor_type") and value.type.tensor_type.HasField("shape"):
            ranks[value.name] = len(value.type.tensor_type.shape.dim)
    return ranks
