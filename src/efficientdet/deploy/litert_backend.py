"""LiteRT (TFLite) export with litert-torch, and a LiteRT runner.

:func:`export_litert` converts the network's raw per-level outputs (``class_P3 .. class_P7``,
``box_P3 .. box_P7``, NCHW, as :class:`~efficientdet.deploy.export_graph.RawExport` returns
them) to a ``.tflite`` flatbuffer at a fixed batch size. litert-torch cannot lower the
package's NMS operator, so decoding and NMS stay outside the graph: the package's own
post-processing runs them (:class:`~efficientdet.deploy.exported.ExportedDetector`).

Given :class:`~efficientdet.deploy.calibration.Calibration` images, the export is
post-training quantized by ai-edge-quantizer on the float flatbuffer: int8 weights (per output
channel) and int8 activations (per tensor, ranges averaged over those images), int8 input; the
head's prediction convolutions and the outputs stay float (:func:`_quantize`).
:class:`LiteRTRunner` quantizes and dequantizes integer inputs and outputs, so callers see
float32.
(litert-torch's own PT2E path fails to convert this network: the quantized output transposes
break the converter's same-scale constraint.)

The file's :class:`~efficientdet.deploy.metadata.ExportMetadata` is one entry of the
flatbuffer's own ``metadata`` list (name :data:`METADATA_NAME`, its buffer the JSON text);
:func:`read_litert_metadata` reads it back without TensorFlow. :class:`LiteRTRunner` runs the
file in the LiteRT interpreter (XNNPACK) and returns the outputs in the export's order.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..config import check_image_size, feature_sizes
from .metadata import INPUT_NAME, ExportMetadata, build_metadata, require_extra
from .onnx_format import KIND_RAW

if TYPE_CHECKING:  # torch and the LiteRT packages are imported where they are used
    from torch import nn

    from .calibration import Calibration

log = logging.getLogger(__name__)

__all__ = ["METADATA_NAME", "LiteRTRunner", "export_litert", "output_names", "read_litert_metadata"]

# Name of the flatbuffer metadata entry that holds ExportMetadata.to_json().
METADATA_NAME = "efficientdet"
# The TFLite flatbuffer's file identifier (bytes 4..8 of the file).
_TFLITE_IDENTIFIER = b"TFL3"


def _require(module: str) -> Any:
    return require_extra(module, "LiteRT export and runtime")


def output_names(levels: Sequence[int]) -> list[str]:
    """The export's output names in order: ``class_P{l}`` for every level, then ``box_P{l}``."""
    return [f"{kind}_P{level}" for kind in ("class", "box") for level in levels]


# ---- metadata --------------------------------------------------------------------------------


def read_litert_metadata(path: str | Path) -> ExportMetadata:
    """The :class:`ExportMetadata` of a ``.tflite`` file written by :func:`export_litert`.

    Reads the flatbuffer's metadata table with the TFLite schema module (no TensorFlow, no
    interpreter).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a TFLite flatbuffer, or one without efficientdet metadata.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such LiteRT file")
    return _metadata_from_bytes(path.read_bytes(), str(path))


def _metadata_from_bytes(content: bytes, source: str) -> ExportMetadata:
    """Parse the :data:`METADATA_NAME` entry of a flatbuffer's ``Model.metadata``."""
    schema = _require("ai_edge_litert.schema_py_generated")

    if len(content) < 8 or content[4:8] != _TFLITE_IDENTIFIER:
        raise ValueError(f"{source}: not a LiteRT (TFLite) flatbuffer")
    try:
        model = schema.Model.GetRootAs(content, 0)
        for i in range(model.MetadataLength()):
            entry = model.Metadata(i)
            if entry.Name() != METADATA_NAME.encode():
                continue
            text = _buffer_bytes(model.Buffers(entry.Buffer()), content)
            return ExportMetadata.from_json(text, source)
    except (IndexError, TypeError, UnicodeDecodeError) as err:  # flatbuffers' own errors
        raise ValueError(f"{source}: unreadable LiteRT flatbuffer ({err})") from err
    raise ValueError(
        f"{source}: not an efficientdet export (no {METADATA_NAME!r} metadata in the "
        "flatbuffer); export it with `efficientdet export`"
    )


def _buffer_bytes(buffer: Any, content: bytes) -> bytes:
    """The bytes of a flatbuffer ``Buffer``: inline data, or an offset into the file."""
    if buffer.Offset() > 1:
        return content[buffer.Offset() : buffer.Offset() + buffer.Size()]
    return buffer.DataAsNumpy().tobytes() if buffer.DataLength() else b""


def embed_metadata(content: bytes, metadata: ExportMetadata) -> bytes:
    """``content`` (a TFLite flatbuffer) with ``metadata`` as its :data:`METADATA_NAME`
    entry, replacing one already there; the rest of the model is unchanged.

    Uses the TFLite schema's object API (``ModelT``) through ai_edge_litert's
    ``flatbuffer_utils``, which also resolves buffers stored past the flatbuffer.
    """
    schema = _require("ai_edge_litert.schema_py_generated")
    flatbuffer_utils = _require("ai_edge_litert.tools.flatbuffer_utils")

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(content))
    for buffer in model.buffers:
        # Buffers read from past the flatbuffer are byte slices, which Pack copies one byte
        # at a time; as arrays they are copied whole.
        if buffer.data is not None and not isinstance(buffer.data, np.ndarray):
            buffer.data = np.frombuffer(bytes(buffer.data), dtype=np.uint8)
    text = np.frombuffer(metadata.to_json().encode(), dtype=np.uint8)
    names = [_text(entry.name) for entry in (model.metadata or [])]
    if METADATA_NAME in names:  # an export written again: replace its entry's text
        model.buffers[model.metadata[names.index(METADATA_NAME)].buffer].data = text
    else:
        buffer = schema.BufferT()
        buffer.data = text
        model.buffers.append(buffer)
        entry = schema.MetadataT()
        entry.name = METADATA_NAME
        entry.buffer = len(model.buffers) - 1
        model.metadata = [*(model.metadata or []), entry]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _text(name: str | bytes | None) -> str:
    return name.decode() if isinstance(name, bytes) else (name or "")


# ---- export ----------------------------------------------------------------------------------


def export_litert(
    model: nn.Module,
    path: str | Path,
    *,
    image_size: tuple[int, int] | None = None,
    batch: int = 1,
    class_names: Sequence[str] | None = None,
    label_to_category_id: Sequence[int] | None = None,
    calibration: Calibration | None = None,
) -> ExportMetadata:
    """Write ``model``'s raw outputs as a LiteRT ``.tflite`` file.

    Args:
        model: an :class:`~efficientdet.modeling.model.EfficientDet` (anything returning
            per-level ``(class_outputs, box_outputs)`` with a ``ModelConfig`` as
            ``model.config``). A copy of it is converted, in evaluation mode, on the CPU.
        path: the ``.tflite`` file to write (written whole or not at all).
        image_size: ``(H, W)`` of the input, default ``model.config.image_size``.
        batch: the fixed batch size of the graph (a runner takes exactly that many images).
        class_names, label_to_category_id: stored in the metadata.
        calibration: images that calibrate an int8 export (int8 weights and activations,
            the prediction layers and outputs float); ``None``: an fp32 export.

    The graph takes ``images: float32[batch, 3, H, W]`` (letterboxed and normalised) and
    returns ``class_P{l}: float32[batch, A * C, H_l, W_l]`` for every level, then
    ``box_P{l}: float32[batch, A * 4, H_l, W_l]`` (:func:`output_names`).

    Returns:
        The :class:`ExportMetadata` written into the file.

    Raises:
        ValueError: a bad size or batch, or an empty calibration.
        RuntimeError: litert-torch (or ai-edge-quantizer, for int8) is not installed.
    """
    from ..modeling.checkpoint import atomic_write
    from .export_graph import model_config

    _require("litert_torch")
    if calibration is not None:
        _require("ai_edge_quantizer")
        if len(calibration) == 0:
            raise ValueError("calibration has no images")
    config = model_config(model)
    size_hw = _input_size(image_size, config.image_size, config.max_level)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be a positive integer, got {batch!r}")
    metadata = build_metadata(
        config, size_hw, with_nms=False, batch=batch, class_names=class_names,
        label_to_category_id=label_to_category_id,
        precision="fp32" if calibration is None else "int8",
        calibration_images=None if calibration is None else len(calibration),
    )
    content = _convert(model, size_hw, batch, output_names(config.levels))
    if calibration is not None:
        content = _quantize(content, calibration, batch)
    content = embed_metadata(content, metadata)
    atomic_write(Path(path), lambda tmp: Path(tmp).write_bytes(content))
    return metadata


def _input_size(
    image_size: tuple[int, int] | None, default: tuple[int, int], max_level: int
) -> tuple[int, int]:
    """The checked ``(H, W)`` of the exported input: ``image_size``, else ``default``."""
    size = tuple(int(s) for s in (image_size or default))
    if len(size) != 2:
        raise ValueError(f"image_size must be (H, W), got {image_size!r}")
    check_image_size((size[0], size[1]), max_level)
    return size[0], size[1]


def _convert(model: nn.Module, size_hw: tuple[int, int], batch: int, names: list[str]) -> bytes:
    """The fp32 flatbuffer of ``model``'s raw outputs, named ``names``, for
    ``images: float32[batch, 3, H, W]`` (litert-torch, on a CPU copy in evaluation mode)."""
    import copy

    import torch

    from .export_graph import RawExport

    litert_torch = _require("litert_torch")

    class NamedOutputs(torch.nn.Module):
        """:class:`RawExport` with its outputs in a dict: the file's output names."""

        def __init__(self, network: nn.Module) -> None:
            super().__init__()
            self.raw = RawExport(network)

        def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
            return dict(zip(names, self.raw(images), strict=True))

    network = copy.deepcopy(model).cpu().eval()
    sample = torch.zeros(batch, 3, *size_hw)
    with torch.no_grad():
        converted = litert_torch.convert(
            NamedOutputs(network).eval(), sample_args=(), sample_kwargs={INPUT_NAME: sample}
        )
    return bytes(converted.model_content())


#: The ai-edge-quantizer scope of the ops in a timm squeeze-excitation block (litert-torch
#: names each op after the modules it comes from): the pooling, both 1x1 convolutions, the
#: sigmoid gate and the product with the gated feature map.
SQUEEZE_EXCITE_SCOPE = r".*\.SqueezeExcite_.*"


def _quantize(content: bytes, calibration: Calibration, batch: int, *, float_head: bool = True) -> bytes:
    """Int8 ``content``: ai-edge-quantizer's static int8 recipe (per-channel int8 weights with
    MSE-chosen clipping, int8 activations per tensor with ranges averaged over
    ``calibration``'s images), fed ``batch`` at a time (the last batch filled up with the
    first images).

    With ``float_head`` the head's prediction convolutions (:func:`head_scopes`: the class
    logits and box deltas) and what follows them stay float, so the scores and boxes are not
    rounded to 8 bits. Measured on a Lite0 trained on the digit scenes (AP 0.646 in fp32,
    300 calibration images, an AVX2 CPU), int8 AP:

    - min / max ranges over all images, everything int8: 0.611 (the previous default);
    - the same with the prediction layers float: 0.615;
    - ranges averaged over the images (ai-edge-quantizer's moving average), prediction
      layers float: 0.633; with MSE weight clipping besides: 0.635 (these defaults).

    The averaged ranges clip the rare large activations of the feature maps; with the
    prediction layers int8 they clipped box deltas too (up to 4.3 off), which is why the
    prediction layers stay float.

    The squeeze-excitation blocks of the D0-D7 backbones (:data:`SQUEEZE_EXCITE_SCOPE`; the
    Lite backbones have none) stay float too: with them int8, a D0 trained on generated
    photo-like objects (512 px, AP 0.7305 in fp32, 100 calibration images) lost everything
    (int8 AP 0.000, with min / max ranges as well), and with them float it gave 0.697. The
    rest of the backbone is not the cause: the neck or the early blocks float left AP at 0.0.
    """
    import os

    calibrator = _require("ai_edge_quantizer.calibrator")
    quantizer = _require("ai_edge_quantizer.quantizer")
    recipe = _require("ai_edge_quantizer.recipe")
    recipe_manager = _require("ai_edge_quantizer.recipe_manager")
    algorithm_manager = _require("ai_edge_quantizer.algorithm_manager")

    images = np.concatenate(calibration.batches).astype(np.float32, copy=False)
    short = -len(images) % batch
    if short:
        images = np.concatenate([images, np.resize(images, (short, *images.shape[1:]))])
    inputs = [{INPUT_NAME: images[i : i + batch]} for i in range(0, len(images), batch)]
    log.info("calibrating the int8 LiteRT export on %s", calibration.source)
    recipe_int8 = recipe.static_wi8_ai8(algorithm_key=algorithm_manager.AlgorithmName.MSE)
    if float_head:
        recipe_int8 += [
            {"regex": f"^{re.escape(scope)}$", "operation": "*", "algorithm_key": "no_quantize"}
            for scope in head_scopes(content)
        ]
    recipe_int8 += [{"regex": SQUEEZE_EXCITE_SCOPE, "operation": "*", "algorithm_key": "no_quantize"}]
    manager = recipe_manager.RecipeManager()
    manager.load_quantization_recipe(recipe_int8)
    ranges = calibrator.Calibrator(content, num_threads=os.cpu_count() or 1)
    ranges.calibrate({_signature_key(content): inputs}, manager)
    engine = quantizer.Quantizer(bytearray(content), recipe_int8)
    result = engine.quantize(ranges.get_model_qsvs(), enable_progress_report=False)
    return bytes(result.quantized_model)


def head_scopes(content: bytes) -> list[str]:
    """The ai-edge-quantizer scopes of the ops that make the graph's outputs: from each output
    back through the layout ops (transpose, reshape) to the convolution that computes it.

    A scope is an op's output tensor names, each followed by ``;`` (how ai-edge-quantizer
    names the ops its recipes match).
    """
    schema = _require("ai_edge_litert.schema_py_generated")

    model = schema.Model.GetRootAs(content, 0)
    graph = model.Subgraphs(0)
    codes = [model.OperatorCodes(i) for i in range(model.OperatorCodesLength())]
    operator = schema.BuiltinOperator
    layout = {operator.TRANSPOSE, operator.RESHAPE}
    convolutions = {operator.CONV_2D, operator.DEPTHWISE_CONV_2D}
    producer: dict[int, Any] = {}
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        for j in range(op.OutputsLength()):
            producer[op.Outputs(j)] = op

    def code(op: Any) -> int:
        entry = codes[op.OpcodeIndex()]
        return max(entry.BuiltinCode(), entry.DeprecatedBuiltinCode())

    def scope(op: Any) -> str:
        names = [_text(graph.Tensors(op.Outputs(j)).Name()) for j in range(op.OutputsLength())]
        return "".join(f"{name};" for name in names)

    scopes: list[str] = []
    for k in range(graph.OutputsLength()):
        op = producer.get(graph.Outputs(k))
        while op is not None and code(op) in layout:
            scopes.append(scope(op))
            op = producer.get(op.Inputs(0))
        if op is None or code(op) not in convolutions:
            raise ValueError("an output of the converted graph does not come from a convolution")
        scopes.append(scope(op))
    return list(dict.fromkeys(scopes))


def _signature_key(content: bytes) -> str:
    """The key of a flatbuffer's only signature (litert-torch's ``serving_default``)."""
    schema = _require("ai_edge_litert.schema_py_generated")

    model = schema.Model.GetRootAs(content, 0)
    keys = [_text(model.SignatureDefs(i).SignatureKey()) for i in range(model.SignatureDefsLength())]
    if len(keys) != 1:
        raise ValueError(f"expected one signature in the converted model, found {keys}")
    return keys[0]


# ---- runtime ---------------------------------------------------------------------------------


class LiteRTRunner:
    """A ``.tflite`` export loaded in the LiteRT interpreter (an
    :class:`~efficientdet.deploy.exported.Runner`).

    Args:
        path: the ``.tflite`` file written by :func:`export_litert`.
        threads: CPU threads of the interpreter (default ``torch.get_num_threads()``).

    The interpreter runs the graph with its default XNNPACK delegate. Outputs come back in the
    export's order (``class_P3 .. class_P7, box_P3 .. box_P7``), found by their signature
    names, whatever order the interpreter lists them in. A graph with integer input or
    outputs (a quantizer that left them int8) is fed and read through their quantization
    parameters, so callers always see float32.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not an efficientdet LiteRT export, or one the interpreter cannot load.
        RuntimeError: ai-edge-litert is not installed.
    """

    runtime = "litert"

    def __init__(self, path: str | Path, *, threads: int | None = None) -> None:
        import torch

        interpreter = _require("ai_edge_litert.interpreter")

        self.path = Path(path)
        self.metadata = read_litert_metadata(self.path)
        if self.metadata.output != KIND_RAW:
            raise ValueError(f"{self.path}: output {self.metadata.output!r}; LiteRT exports are raw")
        try:
            self.interpreter = interpreter.Interpreter(
                model_path=str(self.path),
                num_threads=threads if threads is not None else torch.get_num_threads(),
            )
            self.interpreter.allocate_tensors()
        except (RuntimeError, ValueError) as err:
            raise ValueError(f"{self.path}: the LiteRT interpreter cannot load it ({err})") from err
        signature = self.interpreter.get_signature_runner()
        inputs = list(signature.get_input_details().values())
        if len(inputs) != 1:
            raise ValueError(f"{self.path}: {len(inputs)} inputs, expected one (images)")
        self._input = _TensorIO(inputs[0])
        expected = _expected_shapes(self.metadata)
        if tuple(self._input.shape) != expected[0]:
            raise ValueError(
                f"{self.path}: input shape {tuple(self._input.shape)}, its metadata says {expected[0]}"
            )
        self._outputs = [
            _TensorIO(detail)
            for detail in _ordered_outputs(signature.get_output_details(), self.metadata, str(self.path))
        ]
        for io, shape in zip(self._outputs, expected[1:], strict=True):
            if tuple(io.shape) != shape:
                raise ValueError(f"{self.path}: output shape {tuple(io.shape)}, expected {shape}")

    def __call__(self, batch: np.ndarray) -> list[np.ndarray]:
        """The graph's outputs for ``batch: float32[B, 3, H, W]`` (``B`` the file's batch):
        ``class_P{l}: float32[B, A * C, H_l, W_l]`` per level, then ``box_P{l}:
        float32[B, A * 4, H_l, W_l]``."""
        batch = np.asarray(batch, dtype=np.float32)
        if batch.shape != tuple(self._input.shape):
            raise ValueError(
                f"{self.path} takes float32{list(self._input.shape)}, got {list(batch.shape)}"
            )
        self.interpreter.set_tensor(self._input.index, self._input.to_tensor(batch))
        self.interpreter.invoke()
        return [io.from_tensor(self.interpreter.get_tensor(io.index)) for io in self._outputs]


class _TensorIO:
    """One input or output of the interpreter: its index, shape, and the conversion between
    float32 and its type (identity for float32; affine for int8 / uint8)."""

    def __init__(self, detail: dict[str, Any]) -> None:
        self.index = int(detail["index"])
        self.shape = tuple(int(s) for s in detail["shape"])
        self.dtype = np.dtype(detail["dtype"])
        scale, zero_point = detail.get("quantization", (0.0, 0))
        self.scale, self.zero_point = float(scale), int(zero_point)
        if self.dtype != np.float32 and (self.dtype.kind not in "iu" or self.scale == 0.0):
            raise ValueError(f"tensor {detail.get('name')!r} is {self.dtype}, not float32 or quantized")

    def to_tensor(self, values: np.ndarray) -> np.ndarray:
        """float32 ``values`` as this tensor's type (quantized with its scale and zero point)."""
        if self.dtype == np.float32:
            return np.ascontiguousarray(values)
        info = np.iinfo(self.dtype)
        q = np.rint(values / self.scale) + self.zero_point
        return np.clip(q, info.min, info.max).astype(self.dtype)

    def from_tensor(self, values: np.ndarray) -> np.ndarray:
        """This tensor's ``values`` as float32 (dequantized)."""
        if self.dtype == np.float32:
            return values
        return ((values.astype(np.float32) - self.zero_point) * self.scale).astype(np.float32)


def _expected_shapes(meta: ExportMetadata) -> list[tuple[int, ...]]:
    """The input shape then every output's, in the export's order, from the metadata."""
    batch = meta.batch if meta.batch is not None else 1
    anchors = meta.anchor_config().num_anchors
    sizes = feature_sizes(meta.image_size, meta.levels[-1])
    shapes: list[tuple[int, ...]] = [(batch, 3, *meta.image_size)]
    for channels in (anchors * meta.num_classes, anchors * 4):
        shapes += [(batch, channels, *sizes[level]) for level in meta.levels]
    return shapes


def _ordered_outputs(
    details: dict[str, dict[str, Any]], meta: ExportMetadata, source: str
) -> list[dict[str, Any]]:
    """The signature's output details in the export's order: by name (``class_P3`` ..), or,
    for outputs named ``output_<i>`` (a converter that dropped the names), by ``i``."""
    names = output_names(meta.levels)
    if set(details) == set(names):
        return [details[name] for name in names]
    numbered = {int(m.group(1)): d for key, d in details.items() if (m := re.fullmatch(r"output_(\d+)", key))}
    if len(numbered) == len(details) == len(names) and set(numbered) == set(range(len(names))):
        return [numbered[i] for i in range(len(names))]
    raise ValueError(f"{source}: outputs {sorted(details)}, expected {', '.join(names)}")
