"""EfficientDet object detection: the paper's model, faithful and fast.

The public names load their modules on first use, so ``import efficientdet.data`` (or the
command line's ``--help``) does not pay for importing timm and torchvision.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "AnchorConfig": "config",
    "ModelConfig": "config",
    "Anchors": "detection.anchors",
    "generate_anchors": "detection.anchors",
    "load_checkpoint": "modeling.checkpoint",
    "save_checkpoint": "modeling.checkpoint",
    "Detector": "detection.detector",
    "EfficientDet": "modeling.model",
    "create_model": "modeling.factory",
    "get_config": "modeling.registry",
    "list_models": "modeling.registry",
    "register_model": "modeling.registry",
    "load_trained": "inference.loading",
    "load_pretrained": "inference.loading",
    "pretrained_detector": "inference.loading",
    "list_pretrained": "modeling.pretrained",
    "tune_cpu_allocator": "deploy.runtime",
    "compound_config": "modeling.scaling",
    "train_in_budget": "train.budget_recipe",
    "Tracker": "inference.tracking",
    "track": "inference.track_frames",
}

if TYPE_CHECKING:
    from .config import AnchorConfig, ModelConfig
    from .deploy.runtime import tune_cpu_allocator
    from .detection.anchors import Anchors, generate_anchors
    from .detection.detector import Detector
    from .inference.loading import load_pretrained, load_trained, pretrained_detector
    from .inference.track_frames import track
    from .inference.tracking import Tracker
    from .modeling.checkpoint import load_checkpoint, save_checkpoint
    from .modeling.factory import create_model
    from .modeling.model import EfficientDet
    from .modeling.pretrained import list_pretrained
    from .modeling.registry import get_config, list_models, register_model
    from .modeling.scaling import compound_config
    from .train.budget_recipe import train_in_budget


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'efficientdet' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = [
    "AnchorConfig",
    "Anchors",
    "Detector",
    "EfficientDet",
    "ModelConfig",
    "Tracker",
    "__version__",
    "compound_config",
    "create_model",
    "generate_anchors",
    "get_config",
    "list_models",
    "list_pretrained",
    "load_checkpoint",
    "load_pretrained",
    "load_trained",
    "pretrained_detector",
    "register_model",
    "save_checkpoint",
    "track",
    "train_in_budget",
    "tune_cpu_allocator",
]
