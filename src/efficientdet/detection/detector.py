"""The detector: a network plus anchors, loss and post-processing (torchvision ``RetinaNet`` style).

``Detector(model)`` wraps any network that returns raw per-level outputs
``(class_outputs, box_outputs)`` and carries a :class:`~efficientdet.config.ModelConfig` as
``model.config``. In training mode ``detector(images, targets)`` returns the losses; in
evaluation mode ``detector(images)`` returns detections in input pixels; ``predict`` goes
from image files (or arrays, PIL images) to detections in original pixels.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from ..config import ModelConfig, check_image_size, feature_sizes
from ..modeling.backbone import run_trainable_part
from .anchors import Anchors
from .loss import LossConfig, build_targets, compute_loss
from .postprocess import PostprocessConfig, postprocess
from .transform import ImageSource, as_sources, preprocess_batch, scale_boxes_to_original

Target = Mapping[str, Tensor]
Detections = list[dict[str, Tensor]]


class BackboneFeatures(NamedTuple):
    """A batch given by its backbone feature maps instead of its pixels (a frozen backbone's
    cached output); the detector runs the rest of the network on them.

    Attributes:
        maps: the backbone's ``Tensor[B, C_l, H_l, W_l]``, finest level first, as
            ``model.backbone(images)`` returns them for ``images`` of ``image_size``; with a
            ``boundary``, only the levels the frozen blocks produce.
        image_size: ``(H, W)`` of the network input the maps were computed from.
        boundary: when the backbone's last blocks train, the input of the first of them
            (``backbone.blocks[first_trainable]``); the detector runs them on it for the
            remaining levels (:func:`~efficientdet.modeling.backbone.run_trainable_part`).
        first_trainable: that block's index in ``backbone.blocks``.
    """

    maps: list[Tensor]
    image_size: tuple[int, int]
    boundary: Tensor | None = None
    first_trainable: int = 0

    @property
    def batch_size(self) -> int:
        return int((self.maps[0] if self.maps else self.boundary_tensor).shape[0])

    @property
    def boundary_tensor(self) -> Tensor:
        if self.boundary is None:
            raise ValueError("these backbone features have no boundary")
        return self.boundary


def _input_size(images: Tensor | BackboneFeatures) -> tuple[int, int]:
    """``(H, W)`` of the network input a batch stands for; a ValueError for a non-image tensor."""
    if isinstance(images, BackboneFeatures):
        return images.image_size
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be Tensor[B, 3, H, W], got shape {tuple(images.shape)}")
    return (int(images.shape[-2]), int(images.shape[-1]))


def predict_images(detector: nn.Module, images: ImageSource | Sequence[ImageSource]) -> Detections:
    """Letterbox ``images`` for ``detector.config``, run ``detector(batch)`` in evaluation mode
    on the device of its weights (its previous mode restored), and map the boxes back to each
    image's original pixels: the ``predict`` of :class:`Detector` and of the wrappers that
    share its interface (test-time augmentation)."""
    sources = as_sources(images)
    if not sources:
        return []
    config: ModelConfig = detector.config  # type: ignore[assignment]
    batch, infos = preprocess_batch(sources, config.image_size, config.mean, config.std)
    param = next(detector.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = detector.training
    # Switching modes walks every module (~3 ms for D0): only when something trains.
    switch = any(module.training for module in detector.modules())
    if switch:
        detector.eval()
    try:
        detections = detector(batch.to(device))
    finally:
        if switch:
            detector.train(was_training)
    for det, info in zip(detections, infos, strict=True):
        det["boxes"] = scale_boxes_to_original(det["boxes"], info)
    return detections


class Detector(nn.Module):
    """EfficientDet training and inference around a raw network.

    Args:
        model: ``model(images: Tensor[B, 3, H, W])`` returns ``(class_outputs, box_outputs)``,
            one ``Tensor[B, A * C, H_l, W_l]`` and one ``Tensor[B, A * 4, H_l, W_l]`` per
            level ``min_level..max_level``; ``model.config`` is its ``ModelConfig``.
        score_threshold: detections with a score at or below this are dropped.
        pre_nms_top_k: (anchor, class) candidates per image kept before NMS.
        max_detections: detections per image.
        nms: ``"hard"`` (class-aware NMS) or ``"soft"`` (class-aware Gaussian soft-NMS).
        iou_threshold: hard-NMS IoU threshold.
        soft_nms_sigma: soft-NMS decays scores by ``exp(-iou**2 / sigma)``.
        loss_config: loss and matching settings, the official recipe by default.
        channels_last: give the network its input in channels-last (NHWC) memory. ``None``
            (default) does so for CPU inference (evaluation mode), where oneDNN's convolutions
            then skip a layout conversion per layer: 0.6-0.75x the NCHW time for D0 at 512 on
            a 2-core CPU, same outputs within float tolerance. Weights may stay NCHW.
        class_names: the name of each label ``0..C-1``, kept as ``detector.class_names`` for
            the caller (``efficientdet.pretrained_detector`` sets COCO's); not used inside.
        suppressed_labels: labels never to detect, class slots with no class behind them (the
            ten unused COCO ids of the published 90-way heads, which
            :mod:`efficientdet.inference.loading` gives as ``LoadedModel.suppressed_labels``):
            their scores never enter the top-k or NMS.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        score_threshold: float = 0.001,
        pre_nms_top_k: int = 5000,
        max_detections: int = 100,
        nms: str = "hard",
        iou_threshold: float = 0.5,
        soft_nms_sigma: float = 0.5,
        loss_config: LossConfig | None = None,
        channels_last: bool | None = None,
        class_names: Sequence[str] | None = None,
        suppressed_labels: Sequence[int] = (),
    ) -> None:
        super().__init__()
        config = getattr(model, "config", None)
        if not isinstance(config, ModelConfig):
            raise ValueError(
                f"model.config must be a ModelConfig, got {type(config).__name__}; build the "
                "network with efficientdet.create_model or give it a config attribute"
            )
        self.model = model
        suppressed = tuple(sorted({int(label) for label in suppressed_labels}))
        if suppressed and (suppressed[0] < 0 or suppressed[-1] >= config.num_classes):
            raise ValueError(
                f"suppressed_labels {list(suppressed)} are not all labels of a model with "
                f"{config.num_classes} classes (0..{config.num_classes - 1})"
            )
        self.postprocess_config = PostprocessConfig(
            score_threshold=score_threshold,
            pre_nms_top_k=pre_nms_top_k,
            max_detections=max_detections,
            nms=nms,
            iou_threshold=iou_threshold,
            soft_nms_sigma=soft_nms_sigma,
            suppressed_labels=suppressed,
        )
        self.loss_config = loss_config if loss_config is not None else LossConfig()
        self.matcher = self.loss_config.matcher()
        self.anchors = Anchors(config.min_level, config.max_level, config.anchors)
        self.channels_last = channels_last
        if class_names is not None and len(class_names) != config.num_classes:
            raise ValueError(
                f"{len(class_names)} class names for a model with {config.num_classes} classes"
            )
        self.class_names = list(class_names) if class_names is not None else None
        # Data-parallel training sets this to a sum over processes (see compute_loss).
        self.positives_reducer: Callable[[Tensor], Tensor] | None = None

    @property
    def config(self) -> ModelConfig:
        """The wrapped network's configuration (read live: fine-tuning may change classes)."""
        config: ModelConfig = self.model.config  # type: ignore[assignment]
        return config

    def forward(
        self, images: Tensor | BackboneFeatures, targets: Sequence[Target] | None = None
    ) -> dict[str, Tensor] | Detections:
        """Losses in training mode, detections in evaluation mode.

        Args:
            images: ``Tensor[B, 3, H, W]`` normalised network inputs; any size, sides that are
                multiples of ``2 ** max_level`` keep anchor strides exact. Or the batch's
                :class:`BackboneFeatures` (a frozen backbone's cached maps).
            targets: training only, per image ``{"boxes": Tensor[M, 4] xyxy input pixels,
                "labels": Tensor[M] int64 in 0..C-1}``; ``M`` may be 0.

        Returns:
            Training: ``{"loss", "class_loss", "box_loss"}`` scalars. Evaluation: per image
            ``{"boxes": Tensor[K, 4] xyxy input pixels, "scores": Tensor[K],
            "labels": Tensor[K] int64}``.
        """
        if self.training:
            if targets is None:
                raise ValueError(
                    "in training mode the detector needs targets: detector(images, targets); "
                    "call detector.eval() to get detections"
                )
            return self.loss(images, targets)
        return self.detect(images)

    def _run_model(
        self, images: Tensor | BackboneFeatures
    ) -> tuple[list[Tensor], list[Tensor], Tensor]:
        config = self.config
        size = _input_size(images)
        check_image_size(size, config.max_level)
        if isinstance(images, BackboneFeatures):
            device = (images.maps[0] if images.maps else images.boundary_tensor).device
            forward_features = getattr(self.model, "forward_features", None)
            if not callable(forward_features):
                raise ValueError(
                    f"{type(self.model).__name__} has no forward_features(maps); give it images"
                )
            maps = list(images.maps)
            if images.boundary is not None:
                backbone = self.model.get_submodule("backbone")
                maps += run_trainable_part(backbone, images.boundary, images.first_trainable)
            class_outputs, box_outputs = forward_features(maps)
        else:
            device = images.device
            if self._use_channels_last(images):
                images = images.contiguous(memory_format=torch.channels_last)
            class_outputs, box_outputs = self.model(images)
        class_outputs, box_outputs = list(class_outputs), list(box_outputs)
        if len(class_outputs) != config.num_levels or len(box_outputs) != config.num_levels:
            raise ValueError(
                f"model returned {len(class_outputs)} class and {len(box_outputs)} box levels, "
                f"expected {config.num_levels} (P{config.min_level}-P{config.max_level})"
            )
        grids = feature_sizes(size, config.max_level)
        for level, cls_out, box_out in zip(config.levels, class_outputs, box_outputs, strict=True):
            if cls_out.shape[-2:] != grids[level] or box_out.shape[-2:] != grids[level]:
                raise ValueError(
                    f"P{level} outputs are {tuple(cls_out.shape[-2:])} (class) and "
                    f"{tuple(box_out.shape[-2:])} (box) for a {size} input; the anchors expect "
                    f"{grids[level]} (each level ceil(side / 2) of the one below)"
                )
        anchors = self.anchors(size, device=device)
        return class_outputs, box_outputs, anchors

    def _use_channels_last(self, images: Tensor) -> bool:
        if self.channels_last is not None:
            return self.channels_last
        return images.device.type == "cpu" and not self.training

    def loss(
        self, images: Tensor | BackboneFeatures, targets: Sequence[Target]
    ) -> dict[str, Tensor]:
        """Training losses for a batch, whatever the module's mode.

        Args:
            images: ``Tensor[B, 3, H, W]``, or the batch's :class:`BackboneFeatures`.
            targets: ``B`` dicts ``{"boxes": Tensor[M, 4] xyxy input pixels,
                "labels": Tensor[M] int64 in 0..C-1}``.

        Returns:
            ``{"loss", "class_loss", "box_loss"}`` scalar tensors.
        """
        self._check_targets(images, targets)
        class_outputs, box_outputs, anchors = self._run_model(images)
        device_type = class_outputs[0].device.type
        # Matching and the loss in float32 under mixed precision: only the network runs in
        # bf16 / fp16 (the loss casts its inputs up, and nothing in it is cast back down).
        with torch.autocast(device_type, enabled=False):
            return self._loss_fp32(class_outputs, box_outputs, anchors, targets)

    def _loss_fp32(
        self, class_outputs: list[Tensor], box_outputs: list[Tensor], anchors: Tensor,
        targets: Sequence[Target],
    ) -> dict[str, Tensor]:
        cls_targets, box_targets = build_targets(anchors, targets, self.matcher)
        return compute_loss(
            class_outputs,
            box_outputs,
            cls_targets,
            box_targets,
            self.config.num_classes,
            self.loss_config,
            positives_reducer=self.positives_reducer,
        )

    def detect(self, images: Tensor | BackboneFeatures) -> Detections:
        """Detections for a batch of network inputs, in input pixels, whatever the mode.

        Gradients are tracked as usual; wrap the call in ``torch.no_grad()`` for inference.

        Args:
            images: ``Tensor[B, 3, H, W]``, or the batch's :class:`BackboneFeatures`.

        Returns:
            Per image ``{"boxes": Tensor[K, 4] xyxy, "scores": Tensor[K],
            "labels": Tensor[K] int64 in 0..C-1}``, ``K <= max_detections``, best first.
        """
        class_outputs, box_outputs, anchors = self._run_model(images)
        size = _input_size(images)
        return postprocess(
            class_outputs,
            box_outputs,
            anchors,
            self.config.num_classes,
            size,
            self.postprocess_config,
        )

    @torch.no_grad()
    def predict(self, images: ImageSource | Sequence[ImageSource]) -> Detections:
        """Detect objects in images given as files, ``PIL`` images, arrays or tensors.

        Each image is loaded, letterboxed to ``config.image_size`` and normalised
        (:mod:`efficientdet.detection.transform`); detections are mapped back to its original pixels.
        The detector runs in evaluation mode and its previous mode is restored afterwards.

        Args:
            images: one image source, a list/tuple of them, or a ``Tensor[B, C, H, W]`` batch
                of images (uint8 or float in 0..1, not normalised).

        Returns:
            One dict per image ``{"boxes": Tensor[K, 4] xyxy original pixels,
            "scores": Tensor[K], "labels": Tensor[K] int64}``.
        """
        return predict_images(self, images)

    def _check_targets(self, images: Tensor | BackboneFeatures, targets: Sequence[Target]) -> None:
        """Raise a ValueError naming the image and field of the first malformed target."""
        count = images.batch_size if isinstance(images, BackboneFeatures) else images.shape[0]
        if len(targets) != count:
            raise ValueError(f"got {count} images but {len(targets)} targets")
        num_classes = self.config.num_classes
        for i, target in enumerate(targets):
            if "boxes" not in target or "labels" not in target:
                raise ValueError(f"target {i} needs 'boxes' and 'labels', got {sorted(target)}")
            boxes, labels = target["boxes"], target["labels"]
            if boxes.dim() != 2 or boxes.shape[-1] != 4:
                raise ValueError(
                    f"target {i}: boxes must be Tensor[M, 4] xyxy, got shape {tuple(boxes.shape)}"
                )
            if labels.shape != boxes.shape[:1]:
                raise ValueError(
                    f"target {i}: labels must be Tensor[{boxes.shape[0]}], got shape "
                    f"{tuple(labels.shape)}"
                )
            if labels.is_floating_point() or labels.is_complex():
                raise ValueError(f"target {i}: labels must be integers, got {labels.dtype}")
            if boxes.shape[0] == 0:
                continue
            if not bool(torch.isfinite(boxes).all()):
                raise ValueError(f"target {i}: boxes contain NaN or inf")
            if bool((boxes[:, 2:] < boxes[:, :2]).any()):
                bad = int((boxes[:, 2:] < boxes[:, :2]).any(dim=1).nonzero()[0])
                raise ValueError(
                    f"target {i}: box {bad} = {boxes[bad].tolist()} is not xyxy with "
                    "x2 >= x1 and y2 >= y1"
                )
            low, high = int(labels.min()), int(labels.max())
            if low < 0 or high >= num_classes:
                raise ValueError(
                    f"target {i}: labels must be in 0..{num_classes - 1}, got values {low}..{high}"
                )
