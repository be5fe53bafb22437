"""Build a ready network from a weights file (the architecture comes from the file's header,
this project's checkpoints, or from a model name, other state dicts) or from the model zoo's
published COCO weights."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..detection.detector import Detector
from ..modeling.checkpoint import (
    CheckpointError,
    convert_effdet_state_dict,
    is_effdet_state_dict,
    load_state_dict_checked,
    read_checkpoint,
)
from ..modeling.model import EfficientDet
from ..modeling.pretrained import coco_label_space, fetch_weights, unused_labels
from ..modeling.registry import get_config


@dataclass
class LoadedModel:
    """A network in evaluation mode with what its weights say about their labels.

    ``suppressed_labels`` are the labels a detector built on it must never report: class slots
    with no class behind them, those named ``N/A`` (COCO's ten unused ids in the published
    90-way heads; :func:`efficientdet.modeling.pretrained.unused_labels`). Give them to
    ``Detector(model, suppressed_labels=loaded.suppressed_labels)``.
    """

    model: EfficientDet
    class_names: list[str] | None = None
    label_to_category_id: list[int] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    suppressed_labels: tuple[int, ...] = ()


def load_pretrained(
    name: str, *, image_size: tuple[int, int] | None = None, progress: bool = True
) -> LoadedModel:
    """``name`` with its published COCO weights (downloaded once, then from the cache) and
    COCO's label space: 90 class names and the category ids 1..90 they stand for, with the
    ten unused ids (named ``N/A``) as ``suppressed_labels``.

    Raises:
        ValueError: ``name`` has no published weights.
        WeightsDownloadError: the weights could not be fetched or verified (one line).
    """
    path = fetch_weights(name, progress=progress)
    loaded = load_trained(path, model_name=name, image_size=image_size)
    names, ids = coco_label_space()
    loaded.class_names, loaded.label_to_category_id = names, ids
    loaded.suppressed_labels = unused_labels(names)
    loaded.metadata = {**loaded.metadata, "pretrained": name, "weights": str(path)}
    return loaded


def load_model(
    weights: str | Path | None = None,
    *,
    model_name: str | None = None,
    pretrained: bool = False,
    image_size: tuple[int, int] | None = None,
) -> LoadedModel:
    """A weights file (:func:`load_trained`) or, with ``pretrained``, the published COCO
    weights of ``model_name`` (:func:`load_pretrained`): what ``predict``, ``eval`` and
    ``export`` load from ``--weights FILE`` or ``--model NAME --pretrained``."""
    if pretrained:
        if weights is not None:
            raise ValueError("give a weights file or pretrained weights, not both")
        if model_name is None:
            raise ValueError(
                "pretrained weights need a model name (--model NAME; see "
                "`efficientdet list --pretrained`)"
            )
        return load_pretrained(model_name, image_size=image_size)
    if weights is None:
        raise ValueError("no weights: give --weights FILE, or --model NAME --pretrained")
    return load_trained(weights, model_name=model_name, image_size=image_size)


def pretrained_detector(name: str, **detector_options: Any) -> Detector:
    """A ready COCO :class:`~efficientdet.detection.detector.Detector` for ``name``:
    ``pretrained_detector("tf_efficientdet_d0").predict("photo.jpg")`` gives boxes in the
    photo's pixels, and ``detector.class_names[label]`` names each label ("person", ...);
    COCO's unused ids (``N/A``) are never detected.

    ``detector_options`` go to :class:`~efficientdet.detection.detector.Detector` (``score_threshold``,
    ``nms``, ``max_detections``, ...).
    """
    loaded = load_pretrained(name)
    return Detector(
        loaded.model, class_names=loaded.class_names,
        suppressed_labels=loaded.suppressed_labels, **detector_options,
    ).eval()


def load_trained(
    path: str | Path,
    *,
    model_name: str | None = None,
    image_size: tuple[int, int] | None = None,
) -> LoadedModel:
    """The network stored in ``path`` with its class names (labels named ``N/A`` become
    ``suppressed_labels``).

    Args:
        path: this project's ``.safetensors`` checkpoint (architecture in its header), or an
            ``effdet`` / plain state dict, which needs ``model_name``.
        model_name: registry name; overrides what the header says about the architecture
            family, keeping the file's class count.
        image_size: run at another input size than the one trained at.
    """
    ckpt = read_checkpoint(path)
    state = ckpt.state_dict
    if model_name is not None:
        head = state.get("class_net.predict.pointwise.weight", state.get("class_net.predict.conv_pw.weight"))
        base = ckpt.config or get_config(model_name)
        num_anchors = base.anchors.num_anchors
        num_classes = int(head.shape[0]) // num_anchors if head is not None else base.num_classes
        config = replace(get_config(model_name), num_classes=num_classes)
        if ckpt.config is not None and ckpt.config.name == model_name:
            config = ckpt.config
    elif ckpt.config is not None:
        config = ckpt.config
    else:
        raise CheckpointError(
            f"{path}: the file does not record its architecture; name it with --model "
            "(see `efficientdet list`)"
        )
    if image_size is not None:
        config = replace(config, image_size=(int(image_size[0]), int(image_size[1])))
    model = EfficientDet(config)
    if is_effdet_state_dict(state):
        state = convert_effdet_state_dict(state, model)
    load_state_dict_checked(model, state, source=str(path))
    meta = ckpt.metadata
    names = meta.get("class_names")
    ids = meta.get("label_to_category_id")
    for key, value, kind in (("class_names", names, str), ("label_to_category_id", ids, int)):
        if value is not None and not (
            isinstance(value, list) and all(type(v) is kind for v in value)
        ):
            raise CheckpointError(
                f"{path}: '{key}' in the header must be a list of {kind.__name__}, got {value!r:.80}"
            )
    return LoadedModel(model.eval(), names, ids, meta, suppressed_labels=unused_labels(names))
