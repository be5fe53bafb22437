"""``create_model``: build a network from a registered name or from a configuration.

The registry (:mod:`efficientdet.modeling.registry`) is data, names to configurations; this
module is where a configuration becomes a network and where published or saved weights are
loaded into it. Keeping the two apart is what lets ``modeling/pretrained.py`` read the
registry (the size of each model's weights) without an import cycle.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from ..config import AnchorConfig, ModelConfig
from .checkpoint import load_checkpoint
from .model import EfficientDet
from .pretrained import fetch_weights
from .registry import get_config


def resolve_config(
    name_or_config: str | ModelConfig, *, num_classes: int | None = None, **overrides: Any
) -> ModelConfig:
    """The configuration ``create_model`` builds.

    Args:
        name_or_config: a registered name (:func:`~efficientdet.modeling.registry.list_models`)
            or a :class:`ModelConfig` (e.g. from :func:`~efficientdet.modeling.scaling.compound_config`).
        num_classes: classes C; None keeps the configuration's (90 for a registered name).
        overrides: any :class:`ModelConfig` field; ``anchors`` may be a dict of
            :class:`AnchorConfig` fields.

    Raises:
        TypeError: ``name_or_config`` is neither a string nor a :class:`ModelConfig`.
        ValueError: an unknown name (with close matches) or an invalid field value.
    """
    if num_classes is not None:
        overrides["num_classes"] = num_classes
    if isinstance(name_or_config, str):
        return get_config(name_or_config, **overrides)
    if not isinstance(name_or_config, ModelConfig):
        raise TypeError(
            "create_model takes a registered model name (see efficientdet.list_models()) or a "
            f"ModelConfig, got {type(name_or_config).__name__}"
        )
    if isinstance(overrides.get("anchors"), dict):
        overrides["anchors"] = AnchorConfig(**overrides["anchors"])
    return replace(name_or_config, **overrides) if overrides else name_or_config


def create_model(
    name: str | ModelConfig,
    *,
    num_classes: int | None = None,
    pretrained: bool = False,
    pretrained_backbone: bool = False,
    checkpoint: str | Path | None = None,
    **overrides: Any,
) -> EfficientDet:
    """Build a detector network.

    Args:
        name: one of :func:`~efficientdet.modeling.registry.list_models`, or a
            :class:`ModelConfig` to build as it is (``create_model(compound_config(1.5))``).
        num_classes: classes C; the class head has ``A * C`` outputs per location. None keeps
            the configuration's: 90 (COCO) for a registered name.
        pretrained: load the published COCO weights of the registered model ``name``
            (downloaded once into the torch.hub cache; see :mod:`efficientdet.modeling.pretrained`).
            With another ``num_classes`` everything but the class prediction layer loads: the
            start for fine-tuning.
        pretrained_backbone: start the backbone from ImageNet weights (ignored with
            ``pretrained``, whose weights include the backbone).
        checkpoint: weights to load (this project's safetensors or an ``effdet`` state dict).
            With a different class count, everything but the class prediction layer loads.
        overrides: any :class:`ModelConfig` field, e.g. ``image_size=(384, 640)``.

    Raises:
        ValueError: both ``pretrained`` and ``checkpoint``; ``pretrained`` for a model without
            published weights; an unknown name or a bad field value.
        TypeError: ``name`` is neither a string nor a :class:`ModelConfig`.
    """
    if pretrained and checkpoint is not None:
        raise ValueError("give either pretrained=True or checkpoint=..., not both")
    config = resolve_config(name, num_classes=num_classes, **overrides)
    if pretrained:
        checkpoint = fetch_weights(config.name)
        pretrained_backbone = False
    model = EfficientDet(config, pretrained_backbone=pretrained_backbone)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    return model
