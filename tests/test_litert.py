"""LiteRT export: fp32 detections against eager PyTorch through ExportedDetector, the output
order, the flatbuffer metadata, int8, refusals and the missing-extra message.

Conversion is slow (~45 s for the tiny model on 2 cores): the default tests convert the tiny
model twice (module fixtures, fp32 at batch 2 and int8 at batch 1); Lite0 and D0 are slow tests.
"""

from __future__ import annotations

import re
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from efficientdet.deploy import litert_backend
from efficientdet.deploy.calibration import Calibration, calibration_images
from efficientdet.deploy.export_graph import RawExport
from efficientdet.deploy.exported import ExportedDetector
from efficientdet.deploy.litert_backend import (
    METADATA_NAME,
    LiteRTRunner,
    embed_metadata,
    export_litert,
    output_names,
    read_litert_metadata,
)
from efficientdet.deploy.runtimes import load_exported
from efficientdet.detection.boxes import box_iou
from efficientdet.detection.detector import Detector
from efficientdet.detection.transform import preprocess_batch
from efficientdet.modeling.factory import create_model
from efficientdet.modeling.model import EfficientDet

pytest.importorskip("litert_torch")
pytest.importorskip("ai_edge_litert.interpreter")

CLASS_NAMES = [f"class{i}" for i in range(90)]


def spread_scores(model: EfficientDet, std: float = 1.0) -> EfficientDet:
    """Class logits of a fresh network spread to ``std`` around the -4 prior (see
    ``tests/test_export.py``): scores far apart, so NMS and the ranking have work to do."""
    predict = model.class_net.predict.pointwise
    probe = torch.randn(1, 3, *model.config.image_size, generator=torch.Generator().manual_seed(9))
    assert predict.bias is not None
    model.eval()
    with torch.no_grad():
        torch.nn.init.zeros_(predict.bias)
        class_outputs, _ = model(probe)
        spread = torch.cat([c.flatten() for c in class_outputs]).std()
        predict.weight.mul_(std / spread)
        torch.nn.init.constant_(predict.bias, -4.0)
    return model


def demo_batch(demo, model: EfficientDet, count: int) -> torch.Tensor:
    """``count`` demo images as network inputs ``Tensor[count, 3, H, W]`` of the model's size."""
    paths = sorted(p for p in demo.root.rglob("*") if p.suffix in (".png", ".jpg"))[:count]
    assert len(paths) == count
    batch, _ = preprocess_batch(paths, model.config.image_size, model.config.mean, model.config.std)
    return batch


def assert_same_detections(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    """Equal counts; every expected detection has its own match with the same label, a box
    within 1 px and a score within 1e-4 (order not compared: near-equal scores may swap)."""
    count = len(expected["scores"])
    assert got["scores"].shape == (count,), (len(got["scores"]), count)
    used = torch.zeros(count, dtype=torch.bool)
    for i in range(count):
        match = (
            ~used
            & (got["labels"] == expected["labels"][i])
            & ((got["boxes"] - expected["boxes"][i]).abs() <= 1.0).all(dim=1)
            & ((got["scores"] - expected["scores"][i]).abs() <= 1e-4)
        )
        assert bool(match.any()), f"detection {i} has no match: {expected['boxes'][i].tolist()}"
        used[int(match.nonzero()[0])] = True


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[EfficientDet, Path]:
    """The tiny model (90 classes, 128 px) and its fp32 LiteRT export at a fixed batch of 2."""
    torch.manual_seed(0)
    model = spread_scores(create_model("efficientdet_test"))
    path = tmp_path_factory.mktemp("litert") / "tiny.tflite"
    meta = export_litert(
        model, path, batch=2, class_names=CLASS_NAMES, label_to_category_id=range(1, 91)
    )
    assert meta.output == "raw" and meta.batch == 2 and meta.precision == "fp32"
    return model, path


@pytest.fixture(scope="module")
def tiny_int8(tiny, tiny_demo, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Calibration]:
    """The tiny model exported int8 at a batch of 2, calibrated on 7 demo images
    (the last calibration batch filled up)."""
    model, _ = tiny
    calibration = calibration_images(
        tiny_demo.data_yaml, (128, 128), model.config.mean, model.config.std, count=7
    )
    path = tmp_path_factory.mktemp("litert_int8") / "tiny_int8.tflite"
    meta = export_litert(model, path, batch=2, class_names=CLASS_NAMES, calibration=calibration)
    assert meta.precision == "int8" and meta.calibration_images == 7 and meta.batch == 2
    return path, calibration


# ---- fp32 ------------------------------------------------------------------------------------


def test_fp32_detections_equal_eager_pytorch(tiny, tiny_demo) -> None:
    model, path = tiny
    images = demo_batch(tiny_demo, model, 3)  # 3 images: chunks of 2, one padded
    expected = Detector(model).eval().detect(images)
    detector = ExportedDetector(LiteRTRunner(path, threads=1))
    got = detector.detect(images)
    assert len(got) == 3 and detector.runtime == "litert"
    for g, e in zip(got, expected, strict=True):
        assert len(e["scores"]) > 10  # NMS had work to do
        assert_same_detections(g, e)


def test_outputs_come_back_in_the_export_order(tiny) -> None:
    model, path = tiny
    images = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = RawExport(model.eval())(images)
    runner = LiteRTRunner(path)
    got = runner(images.numpy())
    assert len(got) == len(expected) == 10
    for g, e in zip(got, expected, strict=True):
        assert g.dtype == np.float32 and g.shape == tuple(e.shape)  # NCHW
        np.testing.assert_allclose(g, e.numpy(), rtol=1e-4, atol=1e-4)
    # The interpreter lists the outputs in another order (by name): the runner maps them.
    listed = list(runner.interpreter.get_signature_runner().get_output_details())
    assert listed != output_names(model.config.levels)


def test_output_order_by_name_or_number() -> None:
    from efficientdet.deploy.metadata import build_metadata

    config = create_model("efficientdet_test").config
    meta = replace(build_metadata(config, (128, 128), with_nms=False, batch=1), levels=(3, 4, 5, 6, 7, 8))
    names = output_names(meta.levels)  # 12 outputs: "output_10" sorts before "output_2"
    by_name = {name: {"index": i} for i, name in sorted(enumerate(names), key=lambda p: p[1])}
    assert list(by_name) != names
    assert [d["index"] for d in litert_backend._ordered_outputs(by_name, meta, "x")] == list(range(12))
    numbered = {f"output_{i}": {"index": i} for i in sorted(range(12), key=str)}
    assert list(numbered)[2] == "output_10"
    assert [d["index"] for d in litert_backend._ordered_outputs(numbered, meta, "x")] == list(range(12))
    with pytest.raises(ValueError, match="expected class_P3"):
        litert_backend._ordered_outputs({"a": {"index": 0}}, meta, "x")


def test_metadata_round_trip(tiny) -> None:
    model, path = tiny
    meta = read_litert_metadata(path)
    assert meta.model_name == "efficientdet_test" and meta.image_size == (128, 128)
    assert meta.class_names == CLASS_NAMES and meta.label_to_category_id == list(range(1, 91))
    assert meta.output == "raw" and meta.batch == 2 and meta.levels == model.config.levels
    assert meta.anchor_config() == model.config.anchors
    # Written again, the entry is replaced, not doubled; the other entries stay.
    content = embed_metadata(path.read_bytes(), replace(meta, class_names=None))
    from ai_edge_litert import schema_py_generated as schema

    entries = schema.Model.GetRootAs(content, 0)
    names = [entries.Metadata(i).Name() for i in range(entries.MetadataLength())]
    assert names.count(METADATA_NAME.encode()) == 1 and b"min_runtime_version" in names
    assert litert_backend._metadata_from_bytes(content, "x").class_names is None


def test_load_exported_picks_litert_by_suffix(tiny) -> None:
    model, path = tiny
    detector = load_exported(path, threads=1, score_threshold=0.3)
    assert detector.runtime == "litert" and detector.class_names == CLASS_NAMES
    image = (np.random.default_rng(0).random((90, 150, 3)) * 255).astype(np.uint8)
    got = detector.predict(image)
    expected = Detector(model, score_threshold=0.3).eval().predict(image)
    assert_same_detections(got[0], expected[0])


# ---- refusals --------------------------------------------------------------------------------


def test_a_foreign_tflite_is_refused(tiny, tmp_path: Path) -> None:
    from ai_edge_litert.tools import flatbuffer_utils

    _, path = tiny
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(path.read_bytes()))
    model.metadata = [m for m in model.metadata if m.name != METADATA_NAME.encode()]
    foreign = tmp_path / "foreign.tflite"
    foreign.write_bytes(bytes(flatbuffer_utils.convert_object_to_bytearray(model)))
    with pytest.raises(ValueError, match="not an efficientdet export"):
        read_litert_metadata(foreign)
    with pytest.raises(ValueError, match="not an efficientdet export"):
        LiteRTRunner(foreign)
    garbage = tmp_path / "garbage.tflite"
    garbage.write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="not a LiteRT"):
        LiteRTRunner(garbage)
    with pytest.raises(FileNotFoundError):
        LiteRTRunner(tmp_path / "missing.tflite")


def test_runner_refuses_a_batch_of_another_size(tiny) -> None:
    _, path = tiny
    with pytest.raises(ValueError, match=r"takes float32\[2, 3, 128, 128\]"):
        LiteRTRunner(path)(np.zeros((1, 3, 128, 128), np.float32))


def test_a_failed_export_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object) -> bytes:
        raise RuntimeError("converter crashed")

    monkeypatch.setattr(litert_backend, "_convert", broken)
    with pytest.raises(RuntimeError, match="converter crashed"):
        export_litert(create_model("efficientdet_test"), tmp_path / "out.tflite")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="batch"):
        export_litert(create_model("efficientdet_test"), tmp_path / "out.tflite", batch=0)


@pytest.mark.parametrize(
    ("module", "call"),
    [
        ("litert_torch", lambda p: export_litert(create_model("efficientdet_test"), p)),
        ("ai_edge_litert", LiteRTRunner),
    ],
)
def test_missing_extra_names_it(module: str, call, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m == module or m.startswith(module + ".")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, module, None)  # `import module` raises ImportError
    (tmp_path / "x.tflite").write_bytes(b"")
    with pytest.raises(RuntimeError, match=r"pip install 'efficientdet\[litert\]'"):
        call(tmp_path / "x.tflite")


# ---- int8 ------------------------------------------------------------------------------------


def assert_close_int8(
    model: EfficientDet, path: Path, images: torch.Tensor, *, logits: float = 0.1, top: int = 10
) -> None:
    """An int8 export's raw outputs near eager PyTorch's (logits within ``logits`` times the
    range int8 covers, which includes 0), and most of the ``top`` best eager detections per
    image found again (same class, IoU > 0.5)."""
    runner = LiteRTRunner(path, threads=2)
    with torch.no_grad():
        expected = RawExport(model.eval())(images)
    got = ExportedDetector(runner).run(images.numpy())
    levels = len(model.config.levels)
    for i, (g, e) in enumerate(zip(got, expected, strict=True)):
        assert g.dtype == np.float32 and g.shape == tuple(e.shape)
        error = float(np.abs(g - e.numpy()).max())
        if i < levels:
            assert error < logits * (max(float(e.max()), 0.0) - min(float(e.min()), 0.0))
        else:  # box deltas (near 0 in a fresh network): a fraction of a pixel per anchor
            assert error < 0.01
    fp32 = Detector(model, score_threshold=0.05).eval().detect(images)
    int8 = ExportedDetector(runner, score_threshold=0.05).detect(images)
    for q, f in zip(int8, fp32, strict=True):
        assert len(f["scores"]) >= top
        iou = box_iou(f["boxes"][:top], q["boxes"]) * (f["labels"][:top, None] == q["labels"][None])
        assert int((iou.max(dim=1).values > 0.5).sum()) >= 0.7 * top


def test_int8_export_gives_close_detections(tiny, tiny_int8, tiny_demo) -> None:
    model, fp32_path = tiny
    path, _ = tiny_int8
    assert path.stat().st_size < 0.8 * fp32_path.stat().st_size
    assert read_litert_metadata(path).class_names == CLASS_NAMES
    assert_close_int8(model, path, demo_batch(tiny_demo, model, 3))


def prediction_weight_types(content: bytes) -> tuple[set[int], set[int], set[int]]:
    """The tensor types of the weights of the convolutions that make the graph's outputs, of
    the squeeze-excitation convolutions, and of every other convolution's weights (TFLite
    ``TensorType`` values)."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(content, 0)
    graph = model.Subgraphs(0)
    ops = [graph.Operators(i) for i in range(graph.OperatorsLength())]
    code = {i: max(model.OperatorCodes(i).BuiltinCode(), model.OperatorCodes(i).DeprecatedBuiltinCode())
            for i in range(model.OperatorCodesLength())}
    conv = schema.BuiltinOperator.CONV_2D
    producer = {op.Outputs(j): op for op in ops for j in range(op.OutputsLength())}
    heads = []
    for k in range(graph.OutputsLength()):
        op = producer[graph.Outputs(k)]
        while code[op.OpcodeIndex()] != conv:
            op = producer[op.Inputs(0)]
        heads.append(op.Inputs(1))
    scope = lambda op: "".join(  # noqa: E731
        graph.Tensors(op.Outputs(j)).Name().decode() + ";" for j in range(op.OutputsLength())
    )
    convs = [op for op in ops if code[op.OpcodeIndex()] == conv and op.Inputs(1) not in heads]
    gates = [op.Inputs(1) for op in convs if re.fullmatch(litert_backend.SQUEEZE_EXCITE_SCOPE, scope(op))]
    others = [op.Inputs(1) for op in convs if op.Inputs(1) not in gates]
    weight_type = lambda index: graph.Tensors(index).Type()  # noqa: E731
    return tuple({weight_type(i) for i in group} for group in (heads, gates, others))  # type: ignore[return-value]


def test_head_scopes_name_each_output_path(tiny) -> None:
    """Per output: its transpose to NHWC and the convolution before it, one scope each."""
    model, path = tiny
    scopes = litert_backend.head_scopes(path.read_bytes())
    names = output_names(model.config.levels)
    assert len(scopes) == 2 * len(names) and all(scope.endswith(";") for scope in scopes)
    transposes = [s for s in scopes if any(f"_{name}_" in s for name in names)]
    assert len(transposes) == len(names)
    assert all("predict" in s for s in scopes if s not in transposes)  # the head's predict layers


def test_int8_keeps_the_prediction_convolutions_float(tiny, tiny_int8) -> None:
    """The default int8 export leaves the class and box prediction layers (and the outputs)
    and the squeeze-excitation blocks float and quantizes the rest; ``float_head=False``
    quantizes the prediction layers too."""
    from ai_edge_litert.schema_py_generated import TensorType

    path, calibration = tiny_int8
    heads, gates, others = prediction_weight_types(path.read_bytes())
    assert heads == {TensorType.FLOAT32} and others == {TensorType.INT8}
    assert gates == {TensorType.FLOAT32}  # the backbone's squeeze-excitation blocks
    runner = LiteRTRunner(path)  # the outputs are the float convolutions', not requantized
    assert {io.dtype for io in runner._outputs} == {np.dtype(np.float32)}
    _, fp32_path = tiny
    all_int8 = litert_backend._quantize(fp32_path.read_bytes(), calibration, 2, float_head=False)
    heads, gates, others = prediction_weight_types(all_int8)
    assert heads == {TensorType.INT8} and others == {TensorType.INT8}
    assert gates == {TensorType.FLOAT32}


# ---- Lite0 and D0 ----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tf_efficientdet_lite0", "tf_efficientdet_d0"])
def test_published_architectures(name: str, tmp_path: Path) -> None:
    """Lite0 at 320 px (pyramid sides 40, 20, 10, 5, 3: odd upsampling) and D0 at 512 px:
    fp32 detections equal eager PyTorch's; int8 ones close.

    Inputs are unit normal noise, what :func:`spread_scores` spreads the scores for (demo
    images saturate a fresh D0's scores at 1.0, and NMS among equal scores may keep either).
    """
    torch.manual_seed(0)
    model = spread_scores(create_model(name, num_classes=10))
    noise = torch.Generator().manual_seed(5)
    images = torch.randn(2, 3, *model.config.image_size, generator=noise)
    path = tmp_path / "fp32.tflite"
    export_litert(model, path)
    detector = ExportedDetector(LiteRTRunner(path, threads=2))
    for got, expected in zip(detector.detect(images), Detector(model).eval().detect(images), strict=True):
        assert len(expected["scores"]) == 100
        assert_same_detections(got, expected)
    batches = [torch.randn(1, 3, *model.config.image_size, generator=noise).numpy() for _ in range(16)]
    export_litert(model, tmp_path / "int8.tflite", calibration=Calibration(batches, "noise"))
    # A fresh network's activations are far from a trained one's: logits within 25%.
    assert_close_int8(model, tmp_path / "int8.tflite", images, logits=0.25)
