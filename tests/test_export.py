"""ONNX export: detections and raw outputs in ONNX Runtime against eager PyTorch, metadata,
dynamic batch, the ONNX Runtime backend and the export command."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch import nn

from efficientdet.cli import export as export_cli
from efficientdet.cli import serve as serve_cli
from efficientdet.cli.main import build_parser, main
from efficientdet.deploy.backends import build_predictor, resolve_backend
from efficientdet.deploy.export import (
    OnnxMetadata,
    export_onnx,
    read_onnx_metadata,
)
from efficientdet.deploy.export_graph import (
    PAD_LABEL,
    DetectionExport,
    class_nms,
    padded_detections,
)
from efficientdet.deploy.onnx_backend import OnnxDetector, onnx_providers
from efficientdet.detection.anchors import generate_anchors
from efficientdet.detection.detector import Detector
from efficientdet.detection.postprocess import PostprocessConfig, postprocess
from efficientdet.detection.transform import preprocess_batch
from efficientdet.inference.predict import run_prediction
from efficientdet.modeling.checkpoint import save_checkpoint
from efficientdet.modeling.factory import create_model
from efficientdet.modeling.model import EfficientDet
from efficientdet.modeling.pretrained import coco_label_space, unused_labels
from efficientdet.modeling.registry import get_config, list_models

ort = pytest.importorskip("onnxruntime")

CLASS_NAMES = [f"class{i}" for i in range(90)]


def spread_scores(model: EfficientDet, std: float = 1.0) -> EfficientDet:
    """Scale the class logits of a freshly initialised network to a standard deviation of
    ``std`` around the -4 prior (they are all within ~1e-6 of the prior otherwise, D0's
    especially), so scores are far apart, not saturated, and NMS has real work to do."""
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


def assert_same_detections(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    """The same detections: equal count, and each expected one has its own match with the same
    class, box within 1e-3 relative and score within 1e-4. Order is not compared: two float
    implementations may swap detections whose scores differ by rounding error."""
    count = len(expected["scores"])
    assert got["scores"].shape == (count,) and got["boxes"].shape == (count, 4)
    assert bool((got["scores"][:-1] >= got["scores"][1:]).all())  # best first
    labels, boxes, scores = got["labels"].long(), got["boxes"].float(), got["scores"].float()
    used = torch.zeros(count, dtype=torch.bool)
    for i in range(count):
        box = expected["boxes"][i].float()
        match = (
            ~used
            & (labels == int(expected["labels"][i]))
            & ((boxes - box).abs() <= 1e-3 * (1 + box.abs())).all(dim=1)
            & ((scores - float(expected["scores"][i])).abs() <= 1e-4)
        )
        assert bool(match.any()), f"expected detection {i} has no match: {box.tolist()}"
        used[int(match.nonzero()[0])] = True


def run_session(path: Path, images: torch.Tensor) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"images": images.numpy()})


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[EfficientDet, Path, Path]:
    """The tiny model, its checkpoint, and its export by the command (dynamic batch, NMS)."""
    torch.manual_seed(0)
    model = spread_scores(create_model("efficientdet_test"))
    folder = tmp_path_factory.mktemp("tiny")
    weights = save_checkpoint(
        model, folder / "tiny.safetensors",
        metadata={"class_names": CLASS_NAMES, "label_to_category_id": list(range(1, 91))},
    )
    onnx_path = folder / "tiny.onnx"
    parser = argparse.ArgumentParser()
    export_cli.add_arguments(parser)
    args = parser.parse_args(
        ["--weights", str(weights), "--out", str(onnx_path), "--batch", "dynamic"]
    )
    assert export_cli.run(args) == 0
    return model, weights, onnx_path


@pytest.fixture(scope="module")
def tf_same(tmp_path_factory: pytest.TempPathFactory) -> tuple[EfficientDet, Path]:
    """A tiny model with a TF-SAME-padded backbone at a size that is not a multiple of the
    strides (asymmetric, input-dependent padding), exported raw with a fixed batch of 2."""
    torch.manual_seed(1)
    config = replace(
        get_config("efficientdet_test"), name="tf_same_test",
        backbone="tf_mobilenetv3_small_minimal_100", padding="same", image_size=(100, 140),
    )
    model = spread_scores(EfficientDet(config))
    path = tmp_path_factory.mktemp("tf_same") / "raw.onnx"
    meta = export_onnx(model, path, batch=2, with_nms=False)
    assert meta.output == "raw" and meta.batch == 2
    return model, path


# ---- in-graph post-processing, in PyTorch --------------------------------------------------


def random_outputs(batch: int, size: tuple[int, int], num_classes: int, seed: int = 0):
    config = get_config("efficientdet_test", num_classes=num_classes, image_size=size)
    generator = torch.Generator().manual_seed(seed)
    a = config.anchors.num_anchors
    class_outputs, box_outputs = [], []
    for level in config.levels:
        h, w = -(-size[0] // 2**level), -(-size[1] // 2**level)
        class_outputs.append(torch.randn(batch, a * num_classes, h, w, generator=generator) * 2 - 4)
        box_outputs.append(torch.randn(batch, a * 4, h, w, generator=generator) * 0.5)
    anchors = generate_anchors(size, config.min_level, config.max_level, config.anchors)
    return class_outputs, box_outputs, anchors


def test_class_nms_is_nms_per_image_and_class_with_a_cap() -> None:
    generator = torch.Generator().manual_seed(0)
    corners = torch.rand(2, 300, 2, generator=generator) * 100
    boxes = torch.cat([corners, corners + 5 + 30 * torch.rand(2, 300, 2, generator=generator)], -1)
    scores = torch.rand(2, 300, generator=generator)
    labels = torch.randint(0, 4, (2, 300), generator=generator)
    selected = class_nms(boxes, scores, labels, 4, 0.5, 0.2, 7)
    assert selected.dtype == torch.int64 and selected.shape[1] == 3
    got = {tuple(row) for row in selected.tolist()}
    expected = set()
    for b in range(2):
        for c in range(4):
            index = torch.nonzero((labels[b] == c) & (scores[b] > 0.2)).squeeze(1)
            keep = torchvision.ops.nms(boxes[b, index], scores[b, index], 0.5)[:7]
            expected |= {(b, c, i) for i in index[keep].tolist()}
    assert got == expected and len(got) < 2 * 4 * 7 + 1


@pytest.mark.parametrize("num_classes", [1, 7, 90])
def test_padded_detections_equal_postprocess(num_classes: int) -> None:
    size = (96, 160)
    class_outputs, box_outputs, anchors = random_outputs(3, size, num_classes)
    config = PostprocessConfig(score_threshold=0.05, pre_nms_top_k=1000, max_detections=50)
    expected = postprocess(class_outputs, box_outputs, anchors, num_classes, size, config)
    rows = padded_detections(
        class_outputs, box_outputs, anchors, num_classes, size,
        score_threshold=0.05, pre_nms_top_k=1000, max_detections=50,
    )
    assert rows.shape == (3, 50, 6)
    for image_rows, exp in zip(rows, expected, strict=True):
        valid = image_rows[:, 5] >= 0
        count = int(valid.sum())
        assert count == len(exp["scores"]) > 0
        assert bool(valid[:count].all())  # real rows first, then padding
        got = {"boxes": image_rows[:count, :4], "scores": image_rows[:count, 4],
               "labels": image_rows[:count, 5].long()}
        assert_same_detections(got, exp)


def test_padding_rows_are_zero_with_pad_label() -> None:
    size = (64, 64)
    class_outputs, box_outputs, anchors = random_outputs(2, size, 3)
    # Nothing above the threshold: every row is padding.
    rows = padded_detections(class_outputs, box_outputs, anchors, 3, size, score_threshold=0.9999)
    assert rows.shape == (2, 100, 6)
    assert torch.equal(rows[..., :5], torch.zeros(2, 100, 5))
    assert torch.equal(rows[..., 5], torch.full((2, 100), float(PAD_LABEL)))
    # Fewer candidates than rows: padded up to max_detections.
    rows = padded_detections(
        class_outputs, box_outputs, anchors, 3, size, pre_nms_top_k=10, max_detections=20
    )
    assert rows.shape == (2, 20, 6)
    assert bool((rows[:, 10:, 5] == PAD_LABEL).all()) and bool((rows[:, 10:, 4] == 0).all())
    assert bool((rows[:, :1, 5] >= 0).all())


# ---- detections in ONNX Runtime --------------------------------------------------------------


def test_export_matches_detector_with_dynamic_batch(tiny) -> None:
    model, _, path = tiny
    detector = Detector(model).eval()
    for batch in (1, 3):
        images = torch.randn(batch, 3, 128, 128)
        (rows,) = run_session(path, images)
        assert rows.shape == (batch, 100, 6)
        with torch.no_grad():
            expected = detector.detect(images)
        for image_rows, exp in zip(torch.from_numpy(rows), expected, strict=True):
            count = len(exp["scores"])
            assert count > 0
            got = {"boxes": image_rows[:count, :4], "scores": image_rows[:count, 4],
                   "labels": image_rows[:count, 5].long()}
            assert_same_detections(got, exp)
            padding = image_rows[count:]
            assert bool((padding[:, 5] == PAD_LABEL).all()) and bool((padding[:, :5] == 0).all())


def test_metadata_round_trips(tiny) -> None:
    model, _, path = tiny
    meta = read_onnx_metadata(path)
    config = model.config
    assert meta == OnnxMetadata(
        format_version=1, model_name="efficientdet_test", image_size=(128, 128),
        mean=config.mean, std=config.std, num_classes=90, levels=(3, 4, 5, 6, 7),
        output="detections", batch=None, class_names=CLASS_NAMES,
        label_to_category_id=list(range(1, 91)), score_threshold=0.001, pre_nms_top_k=5000,
        max_detections=100, iou_threshold=0.5,
        anchors={"num_scales": 3, "aspect_ratios": [[1.0, 1.0], [1.4, 0.7], [0.7, 1.4]],
                 "anchor_scale": 4.0},
    )
    assert OnnxMetadata.from_props(meta.to_props()) == meta
    assert OnnxMetadata.from_json(meta.to_json()) == meta
    assert meta.anchor_config() == config.anchors


def test_read_metadata_rejects_foreign_files(tmp_path) -> None:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    path = tmp_path / "other.onnx"
    onnx.save(helper.make_model(graph), str(path))
    with pytest.raises(ValueError, match="not an efficientdet export"):
        read_onnx_metadata(path)
    (tmp_path / "junk.onnx").write_bytes(b"not a protobuf at all \xff\xfe")
    with pytest.raises(ValueError):
        read_onnx_metadata(tmp_path / "junk.onnx")
    with pytest.raises(FileNotFoundError):
        read_onnx_metadata(tmp_path / "missing.onnx")


def test_onnx_detector_predict_matches_detector_predict(tiny) -> None:
    model, _, path = tiny
    rng = np.random.default_rng(0)
    images = [
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        for h, w in [(200, 300), (90, 64), (128, 128)]
    ]
    expected = Detector(model).eval().predict(images)
    onnx_detector = OnnxDetector(path)
    got = onnx_detector.predict(images)
    for g, e in zip(got, expected, strict=True):
        assert_same_detections(g, e)
    # A higher threshold and fewer detections apply on top of the file's.
    strict = OnnxDetector(path, score_threshold=0.5, max_detections=5).predict(images)
    for s, e in zip(strict, expected, strict=True):
        keep = e["scores"] > 0.5
        assert len(s["scores"]) == min(5, int(keep.sum()))
        torch.testing.assert_close(s["scores"], e["scores"][keep][:5], rtol=0, atol=1e-4)


def test_the_export_graph_suppresses_unused_labels_as_the_detector_does(
    unused_slot_model: EfficientDet,
) -> None:
    names, _ = coco_label_space()
    unused = unused_labels(names)
    images = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(4))
    graph = DetectionExport(unused_slot_model, (128, 128), score_threshold=0.5, suppressed_labels=unused)
    detector = Detector(unused_slot_model, score_threshold=0.5, suppressed_labels=unused).eval()
    with torch.no_grad():
        rows = graph(images)
        expected = detector(images)
        plain = Detector(unused_slot_model, score_threshold=0.5).eval()(images)
    for image_rows, want, before in zip(rows, expected, plain, strict=True):
        assert set(before["labels"].tolist()) <= set(unused)  # what the head favours
        assert len(want["labels"]) > 0 and not set(want["labels"].tolist()) & set(unused)
        real = image_rows[image_rows[:, 5] != PAD_LABEL]
        # Equal scores (every anchor's logits are the bias): compare labels and scores.
        assert real[:, 5].long().tolist() == want["labels"].tolist()
        torch.testing.assert_close(real[:, 4], want["scores"])


def test_onnx_detector_drops_rows_its_class_names_call_unused(
    tiny, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, _, path = tiny  # its graph suppresses nothing: class0..class89
    names, _ = coco_label_space()
    unused = unused_labels(names)
    rng = np.random.default_rng(5)
    images = [Image.fromarray(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)) for _ in range(3)]
    everything = OnnxDetector(path).predict(images)
    assert set(torch.cat([d["labels"] for d in everything]).tolist()) & set(unused)
    from_props = OnnxMetadata.from_props

    def coco_named(props: dict[str, str], source: str) -> OnnxMetadata:
        return replace(from_props(props, source), class_names=names)

    monkeypatch.setattr(OnnxMetadata, "from_props", staticmethod(coco_named))
    detector = OnnxDetector(path)
    assert detector.suppressed_labels == unused
    for got, full in zip(detector.predict(images), everything, strict=True):
        keep = ~torch.isin(full["labels"], torch.tensor(unused))
        assert got["labels"].tolist() == full["labels"][keep].tolist()
        torch.testing.assert_close(got["scores"], full["scores"][keep])


@pytest.mark.slow
def test_an_onnx_export_with_coco_names_never_gives_the_unused_ids(
    unused_slot_model: EfficientDet, tmp_path: Path
) -> None:
    names, ids = coco_label_space()
    unused = unused_labels(names)
    rng = np.random.default_rng(4)
    images = [Image.fromarray(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)) for _ in range(2)]
    path = tmp_path / "coco.onnx"
    export_onnx(unused_slot_model, path, class_names=names, label_to_category_id=ids,
                score_threshold=0.5)
    detector = OnnxDetector(path)
    expected = Detector(unused_slot_model, score_threshold=0.5, suppressed_labels=unused).eval()
    batch, _ = preprocess_batch(images, detector.image_size, detector.metadata.mean, detector.metadata.std)
    assert not set(detector.run(batch.numpy())[..., 5].astype(int).ravel().tolist()) & set(unused)
    for got, want in zip(detector.predict(images), expected.predict(images), strict=True):
        assert len(want["labels"]) > 0  # suppressed inside the graph as in the Detector:
        assert got["labels"].tolist() == want["labels"].tolist()
        torch.testing.assert_close(got["scores"], want["scores"], rtol=0, atol=1e-4)


def test_predict_files_are_the_same_for_both_backends(tiny, tmp_path) -> None:
    _, weights, path = tiny
    rng = np.random.default_rng(1)
    sources = []
    for i, (h, w) in enumerate([(150, 120), (64, 256)]):
        source = tmp_path / f"im{i}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(source)
        sources.append(source)
    records = {}
    for backend, file in (("pytorch", weights), ("onnxruntime", path)):
        predictor = build_predictor(file, score_threshold=0.001)
        assert resolve_backend(file) == backend
        assert predictor.class_names == CLASS_NAMES
        assert predictor.label_to_category_id == list(range(1, 91))
        report = run_prediction(
            predictor.predict_fn, sources, tmp_path / backend, class_names=predictor.class_names,
            label_to_category_id=predictor.label_to_category_id, score_threshold=0.3,
            progress=False,
        )
        assert report.ok and report.detections > 0
        assert report.predictions_path is not None
        records[backend] = json.loads(report.predictions_path.read_text())
    torch_records, onnx_records = records["pytorch"], records["onnxruntime"]
    assert len(torch_records) == len(onnx_records)
    unmatched = list(onnx_records)
    for a in torch_records:  # order may differ where scores differ by rounding only
        match = next(
            b for b in unmatched
            if (a["image_id"], a["category_id"], a["file_name"])
            == (b["image_id"], b["category_id"], b["file_name"])
            and a["bbox"] == pytest.approx(b["bbox"], abs=0.011)  # written rounded to 0.01
            and a["score"] == pytest.approx(b["score"], abs=2e-5)
        )
        unmatched.remove(match)


def test_fixed_batch_file_runs_in_padded_chunks(tmp_path) -> None:
    """A file exported for batch 2 takes 3 images as a chunk of 2 and a padded chunk of 1.
    The graph here stands in for a detector: every row of image i is its mean pixel value."""
    import onnx
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("ReduceMean", ["images"], ["mean"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Reshape", ["mean", "shape"], ["column"]),
        helper.make_node("Expand", ["column", "out_shape"], ["detections"]),
    ]
    graph = helper.make_graph(
        nodes, "chunks",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [2, 3, 8, 8])],
        [helper.make_tensor_value_info("detections", TensorProto.FLOAT, [2, 4, 6])],
        initializer=[
            helper.make_tensor("shape", TensorProto.INT64, [3], [2, 1, 1]),
            helper.make_tensor("out_shape", TensorProto.INT64, [3], [2, 4, 6]),
        ],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    meta = OnnxMetadata(
        format_version=1, model_name="stand-in", image_size=(8, 8), mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0), num_classes=9, levels=(3,), output="detections", batch=2,
        score_threshold=0.001, pre_nms_top_k=10, max_detections=4, iou_threshold=0.5,
    )
    for key, value in meta.to_props().items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(tmp_path / "chunks.onnx"))
    detector = OnnxDetector(tmp_path / "chunks.onnx")
    images = torch.arange(1.0, 4.0).view(3, 1, 1, 1).expand(3, 3, 8, 8).contiguous()
    (rows,) = detector.run(images.numpy())
    assert rows.shape == (3, 4, 6)
    assert rows[:, 0, 0].tolist() == [1.0, 2.0, 3.0]
    detections = detector.detect(images)
    assert [d["labels"].tolist() for d in detections] == [[1] * 4, [2] * 4, [3] * 4]


def test_build_predictor_rejects_what_an_export_cannot_do(tiny) -> None:
    _, _, path = tiny
    with pytest.raises(ValueError, match="soft"):
        build_predictor(path, nms="soft")
    with pytest.raises(ValueError, match="exported for 128x128"):
        build_predictor(path, image_size=(256, 256))
    with pytest.raises(ValueError, match="not 'tf_efficientdet_d0'"):
        build_predictor(path, model_name="tf_efficientdet_d0")
    with pytest.raises(ValueError, match="backend"):
        build_predictor(path, backend="tensorrt")


CPU_EP, CUDA_EP, TENSORRT_EP = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"
ORT_GPU = [TENSORRT_EP, CUDA_EP, CPU_EP]  # what onnxruntime-gpu built with TensorRT offers
ORT_CPU = ["AzureExecutionProvider", CPU_EP]  # what the plain onnxruntime package offers


def offer(monkeypatch: pytest.MonkeyPatch, providers: list[str], *, torch_gpu: bool) -> None:
    """Pretend onnxruntime offers ``providers`` and PyTorch does (not) see a GPU."""
    monkeypatch.setattr(ort, "get_available_providers", lambda: list(providers))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: torch_gpu)


def test_cpu_device_runs_only_the_cpu_provider(monkeypatch) -> None:
    offer(monkeypatch, ORT_GPU, torch_gpu=True)
    assert onnx_providers("cpu") == [CPU_EP]
    assert onnx_providers(torch.device("cpu")) == [CPU_EP]


def test_cuda_device_puts_tensorrt_then_cuda_on_that_gpu_before_the_cpu(monkeypatch) -> None:
    offer(monkeypatch, ORT_GPU, torch_gpu=True)
    monkeypatch.setenv("TORCH_HOME", "/tmp/torch-home")
    engines = str(Path(torch.hub.get_dir()) / "tensorrt")  # built engines are kept there
    assert onnx_providers("cuda:1") == [
        (TENSORRT_EP, {"device_id": 1, "trt_engine_cache_enable": True,
                       "trt_engine_cache_path": engines}),
        (CUDA_EP, {"device_id": 1}), CPU_EP,
    ]
    offer(monkeypatch, [CUDA_EP, CPU_EP], torch_gpu=True)  # no TensorRT in this build
    assert onnx_providers("cuda") == [(CUDA_EP, {"device_id": 0}), CPU_EP]
    # Asked for by name, CUDA is onnxruntime's to give: a CPU-only PyTorch does not matter.
    offer(monkeypatch, [CUDA_EP, CPU_EP], torch_gpu=False)
    assert onnx_providers(torch.device("cuda", 2)) == [(CUDA_EP, {"device_id": 2}), CPU_EP]


def test_auto_takes_cuda_when_pytorch_sees_a_gpu_and_onnxruntime_has_it(monkeypatch) -> None:
    offer(monkeypatch, [CUDA_EP, CPU_EP], torch_gpu=True)
    assert onnx_providers("auto") == [(CUDA_EP, {"device_id": 0}), CPU_EP]
    offer(monkeypatch, [CUDA_EP, CPU_EP], torch_gpu=False)
    assert onnx_providers("auto") == [CPU_EP]
    offer(monkeypatch, ORT_CPU, torch_gpu=True)
    assert onnx_providers() == [CPU_EP]


def test_cuda_with_cpu_onnxruntime_names_the_package_in_one_line(monkeypatch) -> None:
    offer(monkeypatch, ORT_CPU, torch_gpu=True)
    with pytest.raises(ValueError, match="pip install onnxruntime-gpu in place of onnxruntime") as caught:
        onnx_providers("cuda:0")
    assert str(caught.value).startswith(f"--device cuda:0: onnxruntime {ort.__version__} has no {CUDA_EP}")
    assert "\n" not in str(caught.value)
    with pytest.raises(ValueError, match="--device gpu: not one of auto, cpu, cuda, cuda:N"):
        onnx_providers("gpu")


def test_a_session_that_falls_back_to_the_cpu_is_refused_when_cuda_was_asked_for(
    tiny, monkeypatch, caplog
) -> None:
    """This onnxruntime has no CUDA provider, so a session asked for it runs on the CPU, as
    onnxruntime-gpu's does when its CUDA libraries are missing."""
    if CUDA_EP in ort.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    _, _, path = tiny
    offer(monkeypatch, [CUDA_EP, CPU_EP], torch_gpu=True)
    with pytest.raises(ValueError, match=f"could not start {CUDA_EP} and runs on {CPU_EP}"):
        OnnxDetector(path, device="cuda")
    detector = OnnxDetector(path, device="auto")  # auto: a warning, and the CPU
    assert detector.session.get_providers() == [CPU_EP]
    assert f"could not start {CUDA_EP}" in caplog.text


def test_predict_and_serve_pass_the_device_to_onnx_runtime(tiny, monkeypatch, tmp_path, capsys) -> None:
    _, _, path = tiny
    offer(monkeypatch, ORT_CPU, torch_gpu=True)
    with pytest.raises(ValueError, match="onnxruntime-gpu"):
        build_predictor(path, device="cuda")
    assert build_predictor(path, device="auto").num_classes == 90  # CPU, as offered
    image = tmp_path / "image.png"
    Image.new("RGB", (32, 24)).save(image)
    out = tmp_path / "out"
    assert main(["predict", str(image), "--weights", str(path), "--device", "cuda", "--out", str(out)]) == 2
    assert "pip install onnxruntime-gpu" in capsys.readouterr().err
    assert not out.exists()  # refused before anything was written
    serve_args = build_parser().parse_args(["serve", "--weights", str(path), "--device", "cuda:1"])
    with pytest.raises(ValueError, match="--device cuda:1: onnxruntime .* pip install onnxruntime-gpu"):
        serve_cli.run(serve_args)


def test_export_arguments() -> None:
    parser = argparse.ArgumentParser()
    export_cli.add_arguments(parser)
    args = parser.parse_args(["--weights", "w", "--out", "m.onnx", "--raw", "--image-size", "320"])
    assert args.with_nms is False and args.batch_size == 1 and args.image_size == [320]
    assert parser.parse_args(["--weights", "w", "--out", "o", "--batch", "4"]).batch_size == 4
    # --batch-size, as on every other command; --batch kept.
    assert parser.parse_args(["--weights", "w", "--out", "o", "--batch-size", "dynamic"]).batch_size == "dynamic"
    # No choice given: the format's own (NMS inside for ONNX and OpenVINO, raw for LiteRT).
    assert parser.parse_args(["--weights", "w", "--out", "o"]).with_nms is None
    assert parser.parse_args(["--weights", "w", "--out", "o", "--with-nms"]).with_nms is True
    with pytest.raises(SystemExit):
        parser.parse_args(["--weights", "w", "--out", "o", "--batch", "0"])
    with pytest.raises(SystemExit):
        parser.parse_args(["--weights", "w", "--out", "o", "--raw", "--with-nms"])


def test_export_validates_arguments(tmp_path) -> None:
    model = create_model("efficientdet_test")
    with pytest.raises(ValueError, match="batch"):
        export_onnx(model, tmp_path / "m.onnx", batch=0)
    with pytest.raises(ValueError, match="class names"):
        export_onnx(model, tmp_path / "m.onnx", class_names=["a", "b"])
    with pytest.raises(ValueError, match="ModelConfig"):
        export_onnx(torch.nn.Conv2d(3, 3, 1), tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


# ---- raw outputs -------------------------------------------------------------------------


def test_raw_export_matches_model_outputs_with_tf_same_padding(tf_same) -> None:
    model, path = tf_same
    meta = read_onnx_metadata(path)
    assert (meta.image_size, meta.output, meta.score_threshold) == ((100, 140), "raw", None)
    images = torch.randn(2, 3, 100, 140)
    outputs = run_session(path, images)
    with torch.no_grad():
        class_outputs, box_outputs = model(images)
    expected = [*class_outputs, *box_outputs]
    assert len(outputs) == len(expected) == 10
    for got, exp in zip(outputs, expected, strict=True):
        torch.testing.assert_close(torch.from_numpy(got), exp, rtol=1e-4, atol=1e-4)


# ---- full-size models (slow) -------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tf_efficientdet_d0", "tf_efficientdet_lite0", "efficientdet_d0"])
def test_full_size_export_matches_detector(name: str, tmp_path) -> None:
    torch.manual_seed(0)
    model = spread_scores(create_model(name))
    path = tmp_path / f"{name}.onnx"
    export_onnx(model, path)
    size = model.config.image_size
    images = torch.randn(1, 3, *size)
    (rows,) = run_session(path, images)
    with torch.no_grad():
        (expected,) = Detector(model).eval().detect(images)
    count = len(expected["scores"])
    assert count > 0
    got = {"boxes": torch.from_numpy(rows[0, :count, :4]),
           "scores": torch.from_numpy(rows[0, :count, 4]),
           "labels": torch.from_numpy(rows[0, :count, 5]).long()}
    assert_same_detections(got, expected)


@pytest.mark.slow
@pytest.mark.parametrize("name", list_models())
def test_every_model_name_exports_raw(name: str, tmp_path) -> None:
    """Every registered architecture traces (TF-SAME padding, P8, sum fusion, Lite), checked
    at 256 px to keep the big ones affordable."""
    torch.manual_seed(0)
    model = create_model(name, image_size=(256, 256)).eval()
    path = tmp_path / f"{name}.onnx"
    export_onnx(model, path, with_nms=False)
    images = torch.randn(1, 3, 256, 256)
    outputs = run_session(path, images)
    with torch.no_grad():
        class_outputs, box_outputs = model(images)
    for got, exp in zip(outputs, [*class_outputs, *box_outputs], strict=True):
        torch.testing.assert_close(torch.from_numpy(got), exp, rtol=1e-3, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("neck", ["fpn", "pafpn", "fcfpn", "nasfpn", "efm", "bfp", "mlfpn", "asff"])
def test_every_neck_exports(neck: str, tmp_path) -> None:
    torch.manual_seed(0)
    model = spread_scores(create_model("efficientdet_test", neck=neck))
    path = tmp_path / f"{neck}.onnx"
    export_onnx(model, path, batch=2)
    images = torch.randn(2, 3, 128, 128)
    (rows,) = run_session(path, images)
    with torch.no_grad():
        expected = Detector(model).eval().detect(images)
    for image_rows, exp in zip(torch.from_numpy(rows), expected, strict=True):
        count = len(exp["scores"])
        got = {"boxes": image_rows[:count, :4], "scores": image_rows[:count, 4],
               "labels": image_rows[:count, 5].long()}
        assert_same_detections(got, exp)
