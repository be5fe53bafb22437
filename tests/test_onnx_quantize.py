"""ONNX int8: static quantization of the tiny model's export with calibration images, its
metadata, its detections against fp32's, and what stays float (the post-processing)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from efficientdet.deploy import onnx_quantize
from efficientdet.deploy.calibration import Calibration, calibration_images
from efficientdet.deploy.export import export_onnx, read_onnx_metadata
from efficientdet.deploy.onnx_backend import OnnxDetector, OnnxRunner
from efficientdet.deploy.onnx_quantize import (
    QUANTIZED_OPS,
    QuantSettings,
    export_onnx_int8,
    head_outputs,
    network_nodes,
    pooling_as_global_average,
    quantize_onnx,
)
from efficientdet.modeling.factory import create_model
from efficientdet.modeling.model import EfficientDet
from test_export import spread_scores

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime.quantization")

# Operators of the graph's decoding and NMS, which must stay float.
POSTPROCESS_OPS = {"TopK", "NonMaxSuppression", "GatherND", "GatherElements", "Exp", "OneHot"}
QDQ_OPS = {"QuantizeLinear", "DequantizeLinear"}


@pytest.fixture(scope="module")
def tiny() -> EfficientDet:
    torch.manual_seed(0)
    return spread_scores(create_model("efficientdet_test"))


@pytest.fixture(scope="module")
def images(tiny: EfficientDet, tiny_demo) -> tuple[Calibration, np.ndarray]:
    """8 calibration images of the demo's train split; the 8 val images as one batch."""
    config = tiny.config
    calibration = calibration_images(
        tiny_demo.data_yaml, config.image_size, config.mean, config.std, count=8
    )
    val = calibration_images(
        tiny_demo.data_yaml, config.image_size, config.mean, config.std, split="val", count=8
    )
    return calibration, np.concatenate(val.batches)


@pytest.fixture(scope="module")
def exports(
    tiny: EfficientDet, images: tuple[Calibration, np.ndarray], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path]:
    """The tiny model's fp32 export (NMS inside, dynamic batch) and its int8 copy."""
    folder = tmp_path_factory.mktemp("int8")
    fp32, int8 = folder / "fp32.onnx", folder / "int8.onnx"
    export_onnx(tiny, fp32, batch="dynamic", class_names=[f"c{i}" for i in range(90)])
    meta = quantize_onnx(fp32, int8, images[0])
    assert meta.precision == "int8" and meta.calibration_images == 8
    return fp32, int8


@pytest.fixture(scope="module")
def raw_export(tiny: EfficientDet, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model's raw export with a fixed batch of 3."""
    path = tmp_path_factory.mktemp("raw") / "raw.onnx"
    export_onnx(tiny, path, with_nms=False, batch=3)
    return path


def test_int8_metadata_is_the_fp32_one_with_precision_and_calibration(
    exports: tuple[Path, Path],
) -> None:
    fp32, int8 = (read_onnx_metadata(path) for path in exports)
    assert fp32.precision == "fp32" and fp32.calibration_images is None
    assert int8.precision == "int8" and int8.calibration_images == 8
    assert replace(int8, precision="fp32", calibration_images=None) == fp32
    assert exports[1].stat().st_size < exports[0].stat().st_size / 2


def test_int8_detections_are_close_to_fp32(
    exports: tuple[Path, Path], images: tuple[Calibration, np.ndarray]
) -> None:
    """Of each image's 10 best fp32 detections at least 8 are found in int8 (same class,
    IoU above 0.8) with a score within 0.15 (measured: 9 of 10 or better, 0.11 at most)."""
    batch = torch.from_numpy(images[1])
    expected = OnnxDetector(exports[0]).detect(batch)
    got = OnnxDetector(exports[1]).detect(batch)
    assert len(got) == len(expected) == 8
    for mine, theirs in zip(got, expected, strict=True):
        assert len(mine["scores"]) > 10
        best = {key: value[:10] for key, value in theirs.items()}
        same = (best["labels"][:, None] == mine["labels"][None]) & (
            box_iou(best["boxes"], mine["boxes"]) > 0.8
        )
        found = same.any(dim=1)
        assert int(found.sum()) >= 8
        gap = (best["scores"][:, None] - mine["scores"][None]).abs()
        closest = torch.where(same, gap, torch.full_like(gap, 1.0)).min(dim=1).values
        assert float(closest[found].max()) <= 0.15


def test_network_is_int8_and_postprocessing_float(exports: tuple[Path, Path]) -> None:
    """Every convolution but the ten prediction ones reads int8 weights and inputs; no node
    of the decoding and NMS reads or feeds a quantized tensor; they are all still there."""
    fp32, int8 = (onnx.load(str(path)) for path in exports)
    graph = int8.graph
    producer = {out: node for node in graph.node for out in node.output}
    heads = set(head_outputs(int8))
    convs = [node for node in graph.node if node.op_type == "Conv" and node.name not in heads]
    assert convs and len(heads) == 10
    for conv in convs:
        assert all(producer[name].op_type == "DequantizeLinear" for name in conv.input[:2])
    network = network_nodes(int8)
    post = [n for n in graph.node if n.name not in network and n.op_type not in QDQ_OPS]
    assert {n.op_type for n in post} >= POSTPROCESS_OPS
    post_outputs = {out for node in post for out in node.output}
    quantize_inputs = {node.input[0] for node in graph.node if node.op_type == "QuantizeLinear"}
    assert not post_outputs & quantize_inputs
    for node in post:
        assert not node.op_type.startswith("QLinear")
        for name in node.input:
            assert not (name in producer and producer[name].op_type == "DequantizeLinear")
    counts = [
        {op: sum(node.op_type == op for node in model.graph.node) for op in POSTPROCESS_OPS}
        for model in (fp32, int8)
    ]
    assert counts[0] == counts[1]


def test_head_outputs_are_the_graph_outputs_of_a_raw_export(raw_export: Path) -> None:
    model = onnx.load(str(raw_export))
    heads = head_outputs(model)
    produced = {node.output[0] for node in model.graph.node if node.name in heads}
    assert produced == {out.name for out in model.graph.output}
    assert len(network_nodes(model)) == len(model.graph.node)


def test_squeeze_excitation_mean_becomes_global_average_pool() -> None:
    helper = onnx.helper
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4, 5, 6])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)
    z = helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, None)
    axes = onnx.numpy_helper.from_array(np.array([-2, -1], dtype=np.int64), "axes")
    channel = onnx.numpy_helper.from_array(np.array([1], dtype=np.int64), "channel")
    nodes = [
        helper.make_node("ReduceMean", ["x", "axes"], ["y"], name="spatial", keepdims=1),
        helper.make_node("ReduceMean", ["x", "channel"], ["z"], name="channels", keepdims=1),
    ]
    graph = helper.make_graph(nodes, "g", [x], [y, z], initializer=[axes, channel])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    array = np.random.default_rng(0).standard_normal((1, 4, 5, 6)).astype(np.float32)
    import onnxruntime as ort

    before = ort.InferenceSession(model.SerializeToString()).run(None, {"x": array})
    assert pooling_as_global_average(model) == 1
    assert [n.op_type for n in model.graph.node] == ["GlobalAveragePool", "ReduceMean"]
    after = ort.InferenceSession(model.SerializeToString()).run(None, {"x": array})
    for old, new in zip(before, after, strict=True):
        np.testing.assert_allclose(new, old, rtol=1e-6, atol=1e-6)


def test_fixed_batch_raw_export_quantizes(
    raw_export: Path, images: tuple[Calibration, np.ndarray], tmp_path: Path
) -> None:
    """A raw export with a fixed batch of 3 calibrates on groups of 3 images (8 images: the
    last group completed from the first) and its outputs stay close to fp32's."""
    fp32, int8 = raw_export, tmp_path / "raw8.onnx"
    meta = quantize_onnx(fp32, int8, images[0])
    assert (meta.output, meta.batch, meta.precision) == ("raw", 3, "int8")
    batch = images[1][:3]
    expected, got = OnnxRunner(fp32)(batch), OnnxRunner(int8)(batch)
    assert len(got) == len(expected) == 10
    # class and box outputs of P3-P5 (most anchors): RMS error under 0.2 of their spread
    # (measured 0.04-0.17 on this random-weight model)
    for level in (0, 1, 2, 5, 6, 7):
        error = np.sqrt(np.mean((got[level] - expected[level]) ** 2))
        assert error < 0.2 * float(np.std(expected[level]))


def test_export_onnx_int8_exports_then_quantizes(
    tiny: EfficientDet,
    exports: tuple[Path, Path],
    images: tuple[Calibration, np.ndarray],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """export_onnx_int8 hands the model and the export options to export_onnx (here the fp32
    file already exported, to spare a second trace), quantizes what it wrote and leaves no
    fp32 file behind."""
    calls: list[tuple[object, Path, dict[str, object]]] = []

    def export(model: EfficientDet, path: Path, **options: object) -> object:
        calls.append((model, Path(path), options))
        Path(path).write_bytes(exports[0].read_bytes())
        return read_onnx_metadata(path)

    monkeypatch.setattr(onnx_quantize, "export_onnx", export)
    out = tmp_path / "int8.onnx"
    meta = export_onnx_int8(tiny, out, calibration=images[0], batch="dynamic", max_detections=50)
    assert meta == read_onnx_metadata(out) == read_onnx_metadata(exports[1])
    [(model, fp32, options)] = calls
    assert model is tiny and options == {"batch": "dynamic", "max_detections": 50}
    assert not fp32.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["int8.onnx"]


def float_convolutions(path: Path) -> list[Any]:
    """The convolutions of an ONNX file whose weights are not dequantized int8."""
    model = onnx.load(str(path))
    producer = {name: node for node in model.graph.node for name in node.output}
    return [
        node for node in model.graph.node
        if node.op_type == "Conv"
        and (node.input[1] not in producer or producer[node.input[1]].op_type != "DequantizeLinear")
    ]


def test_float_head_keeps_the_predictions_float(
    raw_export: Path, images: tuple[Calibration, np.ndarray], tmp_path: Path
) -> None:
    """By default (``float_head``) the ten prediction convolutions read float weights and
    write the graph's outputs unrounded; every other convolution is int8. Without it, all
    are int8."""
    out = tmp_path / "head.onnx"
    quantize_onnx(raw_export, out, images[0])
    float_convs = float_convolutions(out)
    assert len(float_convs) == 10
    outputs = {value.name for value in onnx.load(str(out)).graph.output}
    assert {node.output[0] for node in float_convs} == outputs
    quantize_onnx(raw_export, out, images[0], settings=QuantSettings(float_head=False))
    assert float_convolutions(out) == []
    with pytest.raises(ValueError, match="activations"):
        QuantSettings(activations="u4")
    with pytest.raises(ValueError, match="calibration method"):
        QuantSettings(method="kl")


def int8_weights(path: Path) -> np.ndarray:
    """Every int8 weight value of an ONNX file's convolutions, flattened."""
    model = onnx.load(str(path))
    initializers = {init.name: init for init in model.graph.initializer}
    producer = {name: node for node in model.graph.node for name in node.output}
    values = []
    for node in model.graph.node:
        if node.op_type == "Conv" and node.input[1] in producer:
            quantized = producer[node.input[1]].input[0]
            if quantized in initializers:
                values.append(onnx.numpy_helper.to_array(initializers[quantized]).ravel())
    assert values
    return np.concatenate(values)


def test_weights_use_seven_bits_unless_asked(
    raw_export: Path, images: tuple[Calibration, np.ndarray], tmp_path: Path
) -> None:
    """``reduce_range`` (the default) keeps every weight in [-64, 64], so that uint8 x int8
    products summed in pairs fit the 16 bits of x86's non-VNNI instruction; without it the
    largest weight of each channel takes the full [-127, 127]."""
    out = tmp_path / "seven.onnx"
    quantize_onnx(raw_export, out, images[0])
    weights = int8_weights(out)
    assert weights.dtype == np.int8 and int(np.abs(weights.astype(np.int32)).max()) == 64
    quantize_onnx(raw_export, out, images[0], settings=QuantSettings(reduce_range=False))
    assert int(np.abs(int8_weights(out).astype(np.int32)).max()) == 127


def test_refuses_what_it_cannot_quantize(
    exports: tuple[Path, Path], images: tuple[Calibration, np.ndarray], tmp_path: Path
) -> None:
    plain = onnx.load(str(exports[0]))
    del plain.metadata_props[:]
    foreign = tmp_path / "foreign.onnx"
    onnx.save_model(plain, str(foreign))
    calibration = images[0]
    with pytest.raises(ValueError, match="not an efficientdet export"):
        quantize_onnx(foreign, tmp_path / "out.onnx", calibration)
    with pytest.raises(ValueError, match="already int8"):
        quantize_onnx(exports[1], tmp_path / "out.onnx", calibration)
    with pytest.raises(ValueError, match="not over it"):
        quantize_onnx(exports[0], exports[0], calibration)
    wrong = Calibration([np.zeros((1, 3, 64, 64), np.float32)], "64 px")
    with pytest.raises(ValueError, match="calibration images are"):
        quantize_onnx(exports[0], tmp_path / "out.onnx", wrong)
    with pytest.raises(ValueError, match="no calibration images"):
        quantize_onnx(exports[0], tmp_path / "out.onnx", Calibration([], "none"))
    assert not (tmp_path / "out.onnx").exists()
    assert "Conv" in QUANTIZED_OPS
