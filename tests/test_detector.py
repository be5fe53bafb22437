"""The Detector wrapper: training and evaluation modes, validation, predict()."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from efficientdet.config import ModelConfig, feature_sizes
from efficientdet.detection.anchors import generate_anchors
from efficientdet.detection.boxes import box_iou, encode
from efficientdet.detection.detector import Detector


def fake_config(image_size=(128, 128), num_classes=3) -> ModelConfig:
    return ModelConfig(
        name="fake",
        backbone="none",
        image_size=image_size,
        fpn_channels=8,
        fpn_repeats=1,
        head_repeats=1,
        num_classes=num_classes,
    )


class FakeModel(nn.Module):
    """Obeys the network contract: per level, pool the image to the level's grid
    (``ceil(side / 2**level)``) and predict with 1x1 convs."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        a = config.anchors.num_anchors
        self.cls = nn.Conv2d(3, a * config.num_classes, 1)
        self.box = nn.Conv2d(3, a * 4, 1)

    def forward(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        grids = feature_sizes(tuple(images.shape[-2:]), self.config.max_level)
        feats = [F.adaptive_avg_pool2d(images, grids[level]) for level in self.config.levels]
        return [self.cls(f) for f in feats], [0.1 * self.box(f) for f in feats]


class PlantedModel(nn.Module):
    """Predicts fixed boxes (input pixels) whatever the image: background everywhere else."""

    def __init__(self, config: ModelConfig, boxes: torch.Tensor, labels: list[int]) -> None:
        super().__init__()
        self.config = config
        self.scale = nn.Parameter(torch.ones(()))
        anchors = generate_anchors(
            config.image_size, config.min_level, config.max_level, config.anchors
        )
        cls = torch.full((anchors.shape[0], config.num_classes), -10.0)
        deltas = torch.zeros(anchors.shape[0], 4)
        for box, label in zip(boxes, labels, strict=True):
            n = int(box_iou(box[None], anchors).argmax())
            cls[n, label] = 5.0
            deltas[n] = encode(box, anchors[n])
        self.cls_levels, self.box_levels = [], []
        start, a = 0, config.anchors.num_anchors
        for level in config.levels:
            h, w = config.image_size[0] // 2**level, config.image_size[1] // 2**level
            n = h * w * a
            self.cls_levels.append(cls[start : start + n].reshape(h, w, -1).permute(2, 0, 1))
            self.box_levels.append(deltas[start : start + n].reshape(h, w, -1).permute(2, 0, 1))
            start += n

    def forward(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        b = images.shape[0]
        return (
            [self.scale * c.expand(b, -1, -1, -1) for c in self.cls_levels],
            [self.scale * d.expand(b, -1, -1, -1) for d in self.box_levels],
        )


def make_targets() -> list[dict[str, torch.Tensor]]:
    return [
        {
            "boxes": torch.tensor([[10.0, 20.0, 70.0, 90.0], [64.0, 0.0, 128.0, 40.0]]),
            "labels": torch.tensor([0, 2]),
        },
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
    ]


def test_training_mode_returns_losses_with_gradients() -> None:
    torch.manual_seed(0)
    detector = Detector(FakeModel(fake_config())).train()
    images = torch.randn(2, 3, 128, 128)
    out = detector(images, make_targets())
    assert set(out) == {"loss", "class_loss", "box_loss"}
    assert all(torch.isfinite(v) for v in out.values())
    out["loss"].backward()
    for name, p in detector.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_images_without_boxes_give_zero_box_loss() -> None:
    torch.manual_seed(1)
    detector = Detector(FakeModel(fake_config())).train()
    empty = make_targets()[1]
    out = detector(torch.randn(2, 3, 128, 128), [empty, empty])
    assert out["box_loss"].item() == 0.0 and torch.isfinite(out["class_loss"])


def test_eval_mode_returns_detections_for_a_non_square_input() -> None:
    torch.manual_seed(2)
    detector = Detector(FakeModel(fake_config((128, 256))), max_detections=20).eval()
    with torch.no_grad():
        dets = detector(torch.randn(3, 3, 128, 256))
    assert len(dets) == 3
    for det in dets:
        assert set(det) == {"boxes", "scores", "labels"}
        k = det["boxes"].shape[0]
        assert 0 < k <= 20 and det["scores"].shape == (k,) and det["labels"].dtype == torch.int64
        assert (det["boxes"][:, 0::2] >= 0).all() and (det["boxes"][:, 0::2] <= 256).all()
        assert (det["boxes"][:, 1::2] >= 0).all() and (det["boxes"][:, 1::2] <= 128).all()
    # The loss is also available outside training mode (validation loss).
    losses = detector.loss(torch.randn(2, 3, 128, 256), make_targets())
    assert torch.isfinite(losses["loss"])


def test_soft_nms_detector_finds_planted_boxes() -> None:
    config = fake_config((128, 256))
    boxes = torch.tensor([[30.0, 20.0, 90.0, 100.0], [150.0, 40.0, 230.0, 120.0]])
    detector = Detector(PlantedModel(config, boxes, [1, 2]), nms="soft").eval()
    (det,) = detector(torch.zeros(1, 3, 128, 256))
    assert sorted(det["labels"].tolist()) == [1, 2]
    order = det["labels"].argsort()
    torch.testing.assert_close(det["boxes"][order], boxes, rtol=0, atol=1e-3)


def test_predict_maps_boxes_to_original_pixels_and_restores_mode() -> None:
    config = fake_config((128, 256))
    # A 60 x 150 (H x W) image is letterboxed with scale 256 / 150 into the 128 x 256 input.
    scale = 256 / 150
    original = torch.tensor([[10.0, 5.0, 70.0, 50.0], [80.0, 20.0, 140.0, 55.0]])
    detector = Detector(PlantedModel(config, original * scale, [0, 2])).train()
    image = np.zeros((60, 150, 3), dtype=np.uint8)
    dets = detector.predict([image, torch.zeros(3, 60, 150)])
    assert detector.training
    assert len(dets) == 2
    for det in dets:
        order = det["labels"].argsort()
        assert det["labels"][order].tolist() == [0, 2]
        torch.testing.assert_close(det["boxes"][order], original, rtol=0, atol=1e-2)
    (single,) = detector.predict(image)
    torch.testing.assert_close(single["boxes"], dets[0]["boxes"])


def test_suppressed_labels_are_never_detected_and_must_be_labels() -> None:
    config = fake_config((128, 256))
    boxes = torch.tensor([[30.0, 20.0, 90.0, 100.0], [150.0, 40.0, 230.0, 120.0]])
    model = PlantedModel(config, boxes, [1, 2])
    for nms in ("hard", "soft"):
        detector = Detector(model, nms=nms, suppressed_labels=[2, 2]).eval()
        assert detector.postprocess_config.suppressed_labels == (2,)
        with torch.no_grad():
            (det,) = detector(torch.zeros(1, 3, 128, 256))
        assert det["labels"].tolist() == [1]
        torch.testing.assert_close(det["boxes"], boxes[:1], rtol=0, atol=1e-3)
    with pytest.raises(ValueError, match=r"suppressed_labels \[3\] are not all labels of a model with 3"):
        Detector(model, suppressed_labels=[3])


def test_invalid_options_and_inputs_raise() -> None:
    model = FakeModel(fake_config())
    with pytest.raises(ValueError, match="'hard', 'soft'"):
        Detector(model, nms="gaussian")
    with pytest.raises(ValueError, match="ModelConfig"):
        Detector(nn.Conv2d(3, 3, 1))
    detector = Detector(model).train()
    images = torch.randn(2, 3, 128, 128)
    with pytest.raises(ValueError, match="needs targets"):
        detector(images)
    bad_label = make_targets()
    bad_label[0]["labels"] = torch.tensor([0, 3])
    with pytest.raises(ValueError, match="labels must be in 0..2"):
        detector(images, bad_label)
    bad_box = make_targets()
    bad_box[0]["boxes"] = torch.tensor([[10.0, 20.0, 5.0, 90.0], [0.0, 0.0, 1.0, 1.0]])
    with pytest.raises(ValueError, match="target 0: box 0"):
        detector(images, bad_box)
    with pytest.raises(ValueError, match="2 images but 1 targets"):
        detector(images, make_targets()[:1])
    with pytest.raises(ValueError, match="images must be"):
        detector.eval()(torch.randn(3, 128, 128))


def test_inputs_that_are_not_multiples_of_the_largest_stride() -> None:
    torch.manual_seed(4)
    detector = Detector(FakeModel(fake_config((100, 150)))).train()
    images = torch.randn(2, 3, 100, 150)
    assert torch.isfinite(detector(images, make_targets())["loss"])
    with torch.no_grad():
        (det, _) = detector.eval()(images)
    assert (det["boxes"][:, 0::2] <= 150).all() and (det["boxes"][:, 1::2] <= 100).all()


def test_outputs_that_do_not_fit_the_anchors_raise() -> None:
    class FloorModel(FakeModel):  # pools with floor: 100 px -> 12 cells at P3, anchors want 13
        def forward(self, images):
            feats = [F.avg_pool2d(images, 2**level) for level in (3, 4, 5, 6)]
            feats.append(feats[-1][..., :1, :1])
            return [self.cls(f) for f in feats], [self.box(f) for f in feats]

    detector = Detector(FloorModel(fake_config())).eval()
    with pytest.raises(ValueError, match="P3 outputs are \\(12, 16\\)"):
        detector(torch.randn(1, 3, 100, 128))


def test_with_the_registered_tiny_model() -> None:
    from efficientdet.modeling.factory import create_model

    torch.manual_seed(3)
    detector = Detector(create_model("efficientdet_test", num_classes=4)).train()
    out = detector(torch.randn(2, 3, 128, 128), make_targets())
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    detector.eval()
    with torch.no_grad():
        dets = detector(torch.randn(1, 3, 128, 128))
    assert len(dets) == 1 and dets[0]["boxes"].shape[1] == 4
    assert dets[0]["labels"].max() < 4


class LayoutProbe(nn.Module):
    """Wraps a network and records the memory layout of each input it gets."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.config, self.seen = model, model.config, []

    def forward(self, images: torch.Tensor):
        self.seen.append(images.is_contiguous(memory_format=torch.channels_last))
        return self.model(images)


def test_cpu_inference_feeds_channels_last_with_the_same_detections() -> None:
    from efficientdet.modeling.factory import create_model

    torch.manual_seed(5)
    model = create_model("efficientdet_test", num_classes=4).eval()
    with torch.no_grad():  # the prediction convs start at zero: give the scores some spread
        for param in model.parameters():
            param.add_(torch.randn_like(param), alpha=0.1)
    probe = LayoutProbe(model)
    images = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        nhwc = Detector(probe, max_detections=20).eval()(images)
        nchw = Detector(probe, max_detections=20, channels_last=False).eval()(images)
    assert probe.seen == [True, False]
    for a, b in zip(nhwc, nchw, strict=True):
        assert torch.equal(a["labels"], b["labels"]) and a["boxes"].shape[0] > 0
        torch.testing.assert_close(a["boxes"], b["boxes"], rtol=1e-4, atol=1e-3)
        torch.testing.assert_close(a["scores"], b["scores"], rtol=1e-4, atol=1e-5)
    # Training keeps the caller's layout (run.channels_last decides there).
    probe.seen.clear()
    Detector(probe).train()(images, make_targets())
    assert probe.seen == [False]
