"""Every export format through the same commands: ``export --format``, ``eval`` and ``predict``
on the exported file, the raw-output decoding, calibration images, and the choices refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")

from efficientdet.cli.main import main  # noqa: E402
from efficientdet.data import load_dataset  # noqa: E402
from efficientdet.deploy.calibration import calibration_images  # noqa: E402
from efficientdet.deploy.exported import ExportedDetector, runtime_for  # noqa: E402
from efficientdet.deploy.formats import export_model, format_for  # noqa: E402
from efficientdet.deploy.runtimes import load_exported, open_runner  # noqa: E402
from efficientdet.detection.detector import Detector  # noqa: E402
from efficientdet.modeling.checkpoint import save_checkpoint  # noqa: E402
from efficientdet.modeling.factory import create_model  # noqa: E402


@pytest.fixture(scope="module")
def trained_like(tiny_demo, tmp_path_factory: pytest.TempPathFactory):
    """The tiny network with the demo's classes, confident enough to detect, and its checkpoint."""
    data = load_dataset(tiny_demo.data_yaml, "val")
    torch.manual_seed(0)
    model = create_model("efficientdet_test", num_classes=data.num_classes).eval()
    with torch.no_grad():
        model.class_net.predict.pointwise.bias.fill_(-1.0)
    folder = tmp_path_factory.mktemp("formats")
    weights = save_checkpoint(
        model, folder / "tiny.safetensors",
        metadata={"class_names": data.class_names, "label_to_category_id": data.label_to_category_id},
    )
    return model, weights, folder


@pytest.fixture(scope="module")
def exports(trained_like) -> dict[str, Path]:
    """``efficientdet export`` of the checkpoint: with NMS inside and raw, dynamic batch."""
    _, weights, folder = trained_like
    files = {"--with-nms": folder / "nms.onnx", "--raw": folder / "raw.onnx"}
    for layout, path in files.items():
        assert main(["export", "--weights", str(weights), "--out", str(path), layout,
                     "--batch-size", "dynamic"]) == 0
    return files


@pytest.fixture(scope="module")
def pytorch_eval(trained_like, tiny_demo) -> tuple[dict, list[dict]]:
    _, weights, folder = trained_like
    return _eval(weights, tiny_demo.data_yaml, folder / "eval-pytorch")


def _eval(weights: Path, data_yaml: Path, out: Path) -> tuple[dict, list[dict]]:
    """``eval``'s metrics and its COCO detections (sorted) for ``weights``."""
    assert main(["eval", "--weights", str(weights), "--data", str(data_yaml), "--device", "cpu",
                 "--out", str(out)]) == 0
    detections = json.loads((out / "detections.json").read_text())
    detections.sort(key=lambda d: (d["image_id"], -d["score"]))
    return json.loads((out / "metrics.json").read_text())["metrics"], detections


@pytest.mark.parametrize("layout", ["--with-nms", "--raw"])
def test_eval_of_an_onnx_export_matches_pytorch(
    exports, pytorch_eval, tiny_demo, tmp_path, layout
) -> None:
    exported = exports[layout]
    reference, expected = pytorch_eval
    got, found = _eval(exported, tiny_demo.data_yaml, tmp_path / "onnx")
    assert reference["AP50"] > 0 and len(expected) > 100  # not two empty results
    for key in ("AP", "AP50", "AP75", "AR100"):
        assert got[key] == pytest.approx(reference[key], abs=1e-4), key
    # The same detections, image by image: the export runs the same network and selection.
    assert len(found) == len(expected)
    top = [(d["image_id"], d["category_id"]) for d in expected[:50]]
    assert [(d["image_id"], d["category_id"]) for d in found[:50]] == top
    assert np.allclose([d["bbox"] for d in found[:50]], [d["bbox"] for d in expected[:50]], atol=1.0)


def test_raw_export_decodes_like_the_detector(trained_like, exports) -> None:
    model, _, _ = trained_like
    path = exports["--raw"]
    meta = load_exported(path).metadata
    assert meta.output == "raw" and meta.anchors is not None
    batch = torch.randn(3, 3, 128, 128)
    expected = Detector(model, score_threshold=0.001).eval().detect(batch)
    got = load_exported(path, score_threshold=0.001).detect(batch)
    for want, have in zip(expected, got, strict=True):
        assert have["labels"].tolist() == want["labels"].tolist()
        torch.testing.assert_close(have["boxes"], want["boxes"], atol=1e-3, rtol=0)
        torch.testing.assert_close(have["scores"], want["scores"], atol=1e-5, rtol=0)


def test_soft_nms_needs_a_raw_export(exports) -> None:
    nms_path, raw_path = exports["--with-nms"], exports["--raw"]
    with pytest.raises(ValueError, match="--raw"):
        load_exported(nms_path, nms="soft")
    soft = load_exported(raw_path, nms="soft")
    assert isinstance(soft, ExportedDetector) and soft.postprocess_config.nms == "soft"


def test_pytorch_runs_single_threaded_beside_the_runtime(exports) -> None:
    """While an exported detector letterboxes, runs its graph and decodes, PyTorch has one
    thread (its spinning workers took the cores from the runtime's); after, as before."""
    seen: list[int] = []
    detector = load_exported(exports["--raw"])
    runner = detector.runner

    def spy(batch: np.ndarray) -> list[np.ndarray]:
        seen.append(torch.get_num_threads())
        return runner(batch)

    detector.runner = spy  # type: ignore[assignment]
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        detector.predict([np.zeros((60, 80, 3), np.uint8)])
        detector.detect(torch.zeros(1, 3, 128, 128))
        assert seen == [1, 1] and torch.get_num_threads() == 2
        unchanged = load_exported(exports["--raw"], torch_threads=None)
        unchanged.runner = spy  # type: ignore[assignment]
        unchanged.detect(torch.zeros(1, 3, 128, 128))
        assert seen == [1, 1, 2]
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ValueError, match="torch_threads"):
        load_exported(exports["--raw"], torch_threads=0)


def test_predict_runs_an_export_like_pytorch(trained_like, exports, tiny_demo, tmp_path) -> None:
    _, weights, _ = trained_like
    exported = exports["--with-nms"]
    images = str(tiny_demo.root / "val")
    records = {}
    for name, file in (("pytorch", weights), ("onnx", exported)):
        out = tmp_path / name
        assert main(["predict", images, "--weights", str(file), "--out", str(out),
                     "--device", "cpu", "--no-pictures", "--quiet"]) == 0
        lines = (out / "predictions.jsonl").read_text().splitlines()
        records[name] = [json.loads(line) for line in lines]
    assert len(records["onnx"]) == len(records["pytorch"]) > 0
    for want, have in zip(records["pytorch"], records["onnx"], strict=True):
        assert [d["label"] for d in have["detections"]] == [d["label"] for d in want["detections"]]
        for a, b in zip(want["detections"], have["detections"], strict=True):
            assert np.allclose(a["box"], b["box"], atol=1.0)


def test_format_comes_from_the_suffix_or_must_match_it() -> None:
    assert format_for("m.onnx") == "onnx"
    assert format_for("m.XML") == "openvino"
    assert format_for("m.tflite") == "litert"
    assert format_for("m.tflite", "litert") == "litert"
    with pytest.raises(ValueError, match="writes a .xml file"):
        format_for("m.onnx", "openvino")
    with pytest.raises(ValueError, match="give --format"):
        format_for("model")
    assert format_for("model", default="onnx") == "onnx"  # the command's default
    assert format_for("m.xml", default="onnx") == "openvino"
    with pytest.raises(ValueError, match="not one of"):
        format_for("m.onnx", "tensorrt")
    assert runtime_for("a/b.tflite") == "litert" and runtime_for("x.safetensors") is None


def test_export_refuses_what_a_format_cannot_hold(trained_like, tmp_path, capsys) -> None:
    model, weights, _ = trained_like
    with pytest.raises(ValueError, match="cannot hold NMS"):
        export_model(model, tmp_path / "m.tflite", fmt="litert", with_nms=True)
    with pytest.raises(ValueError, match="fixed --batch-size"):
        export_model(model, tmp_path / "m.tflite", fmt="litert", batch="dynamic")
    assert main(["export", "--weights", str(weights), "--out", str(tmp_path / "m.onnx"),
                 "--int8"]) == 2
    assert "--int8 needs --calibration" in capsys.readouterr().err
    assert main(["export", "--weights", str(weights), "--out", str(tmp_path / "m.onnx"),
                 "--format", "openvino"]) == 2
    assert "writes a .xml file" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


def test_open_runner_names_what_it_cannot_run(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"not an exported file \(expected .onnx"):
        open_runner(tmp_path / "weights.safetensors")
    with pytest.raises(ValueError, match="runtime 'tensorrt'"):
        open_runner(tmp_path / "m.onnx", "tensorrt")
    with pytest.raises(ValueError, match="runs on the CPU"):
        open_runner(tmp_path / "m.xml", device="cuda")
    with pytest.raises(ValueError, match="precision hint"):
        open_runner(tmp_path / "m.onnx", precision="bf16")


def test_calibration_images_are_letterboxed_inputs(tiny_demo, tmp_path) -> None:
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    calib = calibration_images(tiny_demo.data_yaml, (64, 96), mean, std, count=5, seed=1)
    assert len(calib) == 5 and "train, 5 of 24" in calib.source
    assert all(b.shape == (1, 3, 64, 96) and b.dtype == np.float32 for b in calib.batches)
    again = calibration_images(tiny_demo.data_yaml, (64, 96), mean, std, count=5, seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(calib.batches, again.batches, strict=True))
    everything = calibration_images(tiny_demo.data_yaml, (64, 96), mean, std, count=1000)
    assert len(everything) == 24
    # A plain folder of images calibrates too (no labels needed).
    folder = tiny_demo.root / "val"
    assert len(calibration_images(folder, (64, 64), mean, std, count=3)) == 3
    with pytest.raises(ValueError, match="at least 1"):
        calibration_images(tiny_demo.data_yaml, (64, 64), mean, std, count=0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        calibration_images(tmp_path / "empty", (64, 64), mean, std)


def test_int8_export_from_the_command_line(trained_like, tiny_demo, tmp_path, capsys) -> None:
    _, weights, _ = trained_like
    path = tmp_path / "int8.onnx"
    assert main(["export", "--weights", str(weights), "--out", str(path), "--int8",
                 "--calibration", str(tiny_demo.data_yaml), "--calibration-images", "6"]) == 0
    printed = capsys.readouterr().out
    assert "calibrating int8 on" in printed and "(train, 6 of 24 images)" in printed
    assert "(onnx, int8)" in printed
    detector = load_exported(path)
    assert detector.metadata.precision == "int8" and detector.metadata.calibration_images == 6
    metrics, found = _eval(path, tiny_demo.data_yaml, tmp_path / "eval")
    assert len(found) > 100 and metrics["AP50"] >= 0


@pytest.mark.parametrize(("name", "runtime"), [("m.xml", "openvino"), ("m.tflite", "litert")])
def test_eval_and_predict_of_openvino_and_litert_exports(
    trained_like, pytorch_eval, tiny_demo, tmp_path, name, runtime
) -> None:
    pytest.importorskip("openvino" if runtime == "openvino" else "ai_edge_litert")
    if runtime == "litert":
        pytest.importorskip("litert_torch")
    _, weights, _ = trained_like
    path = tmp_path / name
    assert main(["export", "--weights", str(weights), "--out", str(path)]) == 0  # format by suffix
    assert load_exported(path).runtime == runtime
    reference, expected = pytorch_eval
    got, found = _eval(path, tiny_demo.data_yaml, tmp_path / "eval")
    assert got["AP"] == pytest.approx(reference["AP"], abs=1e-3)
    assert got["AP50"] == pytest.approx(reference["AP50"], abs=1e-3)
    assert abs(len(found) - len(expected)) <= len(expected) // 100
    out = tmp_path / "predict"
    assert main(["predict", str(tiny_demo.root / "val"), "--weights", str(path), "--out", str(out),
                 "--device", "cpu", "--no-pictures", "--quiet"]) == 0
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 8
