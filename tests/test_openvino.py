"""OpenVINO export and runner: fp32 detections and raw outputs against eager PyTorch, the
metadata in the IR, NNCF int8, foreign files, the missing-extra message."""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from efficientdet.deploy.calibration import Calibration
from efficientdet.deploy.exported import ExportedDetector
from efficientdet.deploy.runtimes import open_runner
from efficientdet.detection.detector import Detector
from efficientdet.modeling.factory import create_model
from efficientdet.modeling.model import EfficientDet

ov = pytest.importorskip("openvino")
pytest.importorskip("onnxscript")  # the IR is converted from the ONNX export

from efficientdet.deploy.openvino_backend import (  # noqa: E402
    RT_INFO_KEY,
    OpenVinoRunner,
    export_openvino,
    read_openvino_metadata,
)

CLASS_NAMES = [f"class{i}" for i in range(90)]
Detections = list[dict[str, torch.Tensor]]


def spread_scores(model: EfficientDet, std: float = 1.0) -> EfficientDet:
    """Scale the class logits of a fresh network to ``std`` around the -4 prior, so that
    scores are far apart and NMS has work to do (as ``tests/test_export.py`` does)."""
    predict = model.class_net.predict.pointwise
    probe = torch.randn(1, 3, *model.config.image_size, generator=torch.Generator().manual_seed(9))
    model.eval()
    with torch.no_grad():
        nn.init.zeros_(predict.bias)
        class_outputs, _ = model(probe)
        spread = torch.cat([c.flatten() for c in class_outputs]).std()
        predict.weight.mul_(std / spread)
        nn.init.constant_(predict.bias, -4.0)
    return model


def assert_close_detections(got: Detections, expected: Detections, *, px: float = 1.0) -> None:
    """Per image the same number of detections, each expected one matched by its own with
    the same label, every box corner within ``px`` pixels and the score within 1e-3."""
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        count = len(e["scores"])
        assert g["scores"].shape == (count,)
        used = torch.zeros(count, dtype=torch.bool)
        for i in range(count):
            match = (
                ~used
                & (g["labels"] == e["labels"][i])
                & ((g["boxes"] - e["boxes"][i]).abs() <= px).all(dim=1)
                & ((g["scores"] - e["scores"][i]).abs() <= 1e-3)
            )
            assert bool(match.any()), f"detection {i} has no match: {e['boxes'][i].tolist()}"
            used[int(match.nonzero()[0])] = True


@pytest.fixture(scope="module")
def tiny() -> EfficientDet:
    torch.manual_seed(0)
    return spread_scores(create_model("efficientdet_test"))


@pytest.fixture(scope="module")
def nms_ir(tiny: EfficientDet, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with NMS inside, dynamic batch, class names and category ids."""
    path = tmp_path_factory.mktemp("ov") / "tiny.xml"
    export_openvino(
        tiny, path, batch="dynamic", class_names=CLASS_NAMES,
        label_to_category_id=list(range(1, 91)),
    )
    return path


def test_detections_match_eager_pytorch_with_a_dynamic_batch(tiny, nms_ir) -> None:
    detector = ExportedDetector(OpenVinoRunner(nms_ir, precision="f32"))
    eager = Detector(tiny).eval()
    for batch in (1, 3):
        images = torch.randn(batch, 3, 128, 128)
        with torch.no_grad():
            expected = eager.detect(images)
        assert all(len(e["scores"]) > 0 for e in expected)
        assert_close_detections(detector.detect(images), expected)


def test_predict_matches_eager_predict(tiny, nms_ir) -> None:
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(200, 300), (90, 64)]]
    detector = ExportedDetector(open_runner(nms_ir, precision="f32"))
    assert detector.runtime == "openvino"
    assert_close_detections(detector.predict(images), Detector(tiny).eval().predict(images))


def test_raw_fixed_batch_outputs_match_the_network_and_decode_alike(tiny, tmp_path) -> None:
    path = tmp_path / "raw.xml"
    meta = export_openvino(tiny, path, batch=2, with_nms=False)
    assert (meta.output, meta.batch, meta.precision) == ("raw", 2, "fp32")
    runner = OpenVinoRunner(path, precision="f32", threads=1)
    images = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        class_outputs, box_outputs = tiny(images)
    outputs = runner(images.numpy())
    assert len(outputs) == 10
    for got, exp in zip(outputs, [*class_outputs, *box_outputs], strict=True):
        torch.testing.assert_close(torch.from_numpy(got), exp, rtol=1e-3, atol=1e-4)
    # Three images: a chunk of 2 and a padded chunk of 1, decoded by the package.
    three = torch.randn(3, 3, 128, 128)
    with torch.no_grad():
        expected = Detector(tiny).eval().detect(three)
    assert_close_detections(ExportedDetector(runner).detect(three), expected)


def test_metadata_round_trips_through_rt_info(tiny, nms_ir) -> None:
    meta = read_openvino_metadata(nms_ir)
    assert meta == OpenVinoRunner(nms_ir).metadata
    assert (meta.model_name, meta.image_size, meta.output, meta.batch) == (
        "efficientdet_test", (128, 128), "detections", None,
    )
    assert meta.class_names == CLASS_NAMES and meta.label_to_category_id == list(range(1, 91))
    assert (meta.precision, meta.calibration_images) == ("fp32", None)
    assert meta.mean == tiny.config.mean and meta.anchor_config() == tiny.config.anchors
    rt_info = ov.Core().read_model(str(nms_ir)).get_rt_info()
    # Only the IR's own entry: not the copy of the ONNX metadata the converter makes.
    assert RT_INFO_KEY in rt_info and "framework" not in rt_info
    assert sorted(p.name for p in nms_ir.parent.iterdir()) == ["tiny.bin", "tiny.xml"]


def test_int8_export_gives_sane_detections(tiny, tmp_path) -> None:
    generator = torch.Generator().manual_seed(3)
    batches = [torch.randn(1, 3, 128, 128, generator=generator).numpy() for _ in range(4)]
    path = tmp_path / "int8.xml"
    meta = export_openvino(tiny, path, calibration=Calibration(batches, "random"))
    assert (meta.precision, meta.calibration_images) == ("int8", 4)
    assert read_openvino_metadata(path) == meta
    fake_quantize = [
        op for op in ov.Core().read_model(str(path)).get_ordered_ops()
        if op.get_type_name() == "FakeQuantize"
    ]
    assert len(fake_quantize) > 20  # the network's convolutions are quantized
    images = torch.from_numpy(np.concatenate(batches[:2]))
    detector = ExportedDetector(OpenVinoRunner(path, precision="f32"))
    with torch.no_grad():
        expected = Detector(tiny).eval().detect(images)
    for got, exp in zip(detector.detect(images), expected, strict=True):
        assert len(got["scores"]) > 0
        # The best detections of the quantized graph are the float graph's, near enough.
        best = got["boxes"][:5]
        ious = _box_iou(best, exp["boxes"][:50])
        assert bool((ious.max(dim=1).values > 0.5).all())
        torch.testing.assert_close(got["scores"][:5], exp["scores"][:5], rtol=0, atol=0.05)


def _box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of ``a: [N, 4]`` and ``b: [M, 4]`` xyxy boxes, ``[N, M]``."""
    import torchvision

    return torchvision.ops.box_iou(a, b)


def test_an_ir_without_efficientdet_metadata_is_refused(tmp_path) -> None:
    from openvino import opset13 as ops

    x = ops.parameter([1, 3, 8, 8], np.float32, name="images")
    foreign = ov.Model([ops.relu(x)], [x], "other")
    ov.save_model(foreign, str(tmp_path / "other.xml"))
    with pytest.raises(ValueError, match="not an efficientdet export"):
        OpenVinoRunner(tmp_path / "other.xml")
    with pytest.raises(ValueError, match="not an efficientdet export"):
        read_openvino_metadata(tmp_path / "other.xml")
    (tmp_path / "junk.xml").write_text("<net> not really")
    (tmp_path / "junk.bin").write_bytes(b"")
    with pytest.raises(ValueError, match="cannot read"):
        read_openvino_metadata(tmp_path / "junk.xml")
    with pytest.raises(FileNotFoundError):
        OpenVinoRunner(tmp_path / "missing.xml")


def test_a_failed_export_leaves_no_file(tiny, tmp_path, monkeypatch) -> None:
    from efficientdet.deploy import export

    def half_written(model, path, **kwargs):
        Path(path).write_bytes(b"half an ONNX file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export, "export_onnx", half_written)
    with pytest.raises(OSError, match="No space left"):
        export_openvino(tiny, tmp_path / "out" / "model.xml")
    assert list((tmp_path / "out").iterdir()) == []
    with pytest.raises(ValueError, match=r"\.xml"):
        export_openvino(tiny, tmp_path / "model.onnx")


def test_unknown_precision_hint_is_refused(nms_ir) -> None:
    with pytest.raises(ValueError, match="f32, bf16"):
        OpenVinoRunner(nms_ir, precision="fp64")


def test_missing_openvino_names_the_extra(tiny, tmp_path, monkeypatch) -> None:
    real_import = importlib.import_module

    def no_openvino(name: str, package: str | None = None):
        if name.split(".")[0] in ("openvino", "nncf"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, package)

    monkeypatch.setattr(importlib, "import_module", no_openvino)
    with pytest.raises(RuntimeError, match=r"efficientdet\[openvino\]"):
        export_openvino(tiny, tmp_path / "model.xml")
    with pytest.raises(RuntimeError, match=r"efficientdet\[openvino\].*openvino, nncf"):
        OpenVinoRunner(tmp_path / "model.xml")



def test_calibration_images_are_grouped_into_the_fixed_batch() -> None:
    from efficientdet.deploy.openvino_backend import _calibration_inputs

    batches = [np.full((1, 3, 4, 4), i, dtype=np.float32) for i in range(5)]
    calibration = Calibration(batches, "numbered")
    assert [b.shape for b in _calibration_inputs(calibration, None)] == [(1, 3, 4, 4)] * 5
    groups = _calibration_inputs(calibration, 2)
    # Every image once, the last group filled from the first images.
    assert [g[:, 0, 0, 0].tolist() for g in groups] == [[0, 1], [2, 3], [4, 0]]


# ---- full-size models (slow) -------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(("name", "int8_overlap"), [
    ("tf_efficientdet_lite0", 0.8),
    # Random D0's class logits, spread to score apart, turn its int8 rounding into other
    # top detections: only sanity is checked here (the trained model's AP is the real check).
    ("tf_efficientdet_d0", None),
])
def test_full_size_export_matches_eager(name: str, int8_overlap: float | None, tmp_path) -> None:
    """fp32 detections (NMS in the graph) equal eager PyTorch's; int8 ones overlap them."""
    torch.manual_seed(0)
    model = spread_scores(create_model(name, num_classes=10))
    size = model.config.image_size
    generator = torch.Generator().manual_seed(5)
    images = torch.randn(2, 3, *size, generator=generator)
    with torch.no_grad():
        expected = Detector(model).eval().detect(images)
    export_openvino(model, tmp_path / "fp32.xml")
    detector = ExportedDetector(OpenVinoRunner(tmp_path / "fp32.xml", precision="f32"))
    assert_close_detections(detector.detect(images), expected)

    batches = [torch.randn(1, 3, *size, generator=generator).numpy() for _ in range(8)]
    meta = export_openvino(model, tmp_path / "int8.xml", calibration=Calibration(batches, "random"))
    assert meta.precision == "int8"
    quantized = ExportedDetector(OpenVinoRunner(tmp_path / "int8.xml")).detect(images)
    for got, exp in zip(quantized, expected, strict=True):
        assert len(got["scores"]) == 100
        assert bool(((got["scores"] > 0) & (got["scores"] <= 1)).all())
        assert bool(((got["labels"] >= 0) & (got["labels"] < 10)).all())
        if int8_overlap is not None:
            ious = _box_iou(got["boxes"][:10], exp["boxes"][:100])
            assert float((ious.max(dim=1).values > 0.5).float().mean()) >= int8_overlap


def test_int8_leaves_the_prediction_layers_and_post_processing_float(tiny, tmp_path) -> None:
    from efficientdet.deploy.openvino_backend import postprocess_nodes, prediction_convolutions

    path = tmp_path / "raw_int8.xml"
    batches = [np.random.default_rng(i).standard_normal((1, 3, 128, 128), dtype=np.float32)
               for i in range(2)]
    export_openvino(tiny, path, with_nms=False, calibration=Calibration(batches, "random"))
    quantized = ov.Core().read_model(str(path))
    predictions = prediction_convolutions(quantized)
    assert len(predictions) == 2 * len(tiny.config.levels)  # class and box, every level
    for op in quantized.get_ordered_ops():
        if op.get_type_name() != "Convolution":
            continue
        fed_by = {port.get_source_output().get_node().get_type_name() for port in op.inputs()}
        assert ("FakeQuantize" in fed_by) == (op.get_friendly_name() not in predictions)
    assert postprocess_nodes(quantized) == []  # a raw graph has none


@pytest.mark.parametrize(
    ("backbone", "act", "preset"),
    [("test_efficientnet", "swish", "MIXED"), ("tf_efficientnet_lite0", "relu6", "PERFORMANCE")],
)
def test_int8_ranges_are_asymmetric_after_swish_only(
    backbone, act, preset, tmp_path, monkeypatch
) -> None:
    import nncf

    from efficientdet.deploy import openvino_backend

    torch.manual_seed(0)
    model = create_model("efficientdet_test", backbone=backbone, act=act)
    converted = []
    real_quantize = nncf.quantize

    def spy(ov_model, *args, **kwargs):
        converted.append((openvino_backend.signed_activations(ov_model), kwargs["preset"]))
        return real_quantize(ov_model, *args, **kwargs)

    monkeypatch.setattr(nncf, "quantize", spy)
    batches = [np.random.default_rng(i).standard_normal((1, 3, 128, 128), dtype=np.float32)
               for i in range(2)]
    export_openvino(model, tmp_path / "m.xml", with_nms=False,
                    calibration=Calibration(batches, "random"))
    [(signed, used)] = converted
    assert signed == (["Swish"] if act == "swish" else [])
    assert used == getattr(nncf.QuantizationPreset, preset)
