"""Build a ready network from a weights file: the architecture comes from the file's header
(this project's checkpoints) or from a model name (other state dicts)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .checkpoint import (
    CheckpointError,
    convert_effdet_state_dict,
    is_effdet_state_dict,
    load_state_dict_checked,
    read_checkpoint,
)
from .model import EfficientDet
from .registry import get_config


@dataclass
class LoadedModel:
    model: EfficientDet
    class_names: list[str] | None = None
    label_to_category_id: list[int] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


def load_trained(
    path: str | Path,
    *,
    model_name: str | None = None,
    image_size: tuple[int, int] | None = None,
) -> LoadedModel:
    """The network stored in ``path`` with its class names.

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
    return LoadedModel(model.eval(), names, ids, meta)
