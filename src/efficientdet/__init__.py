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
    "Anchors": "anchors",
    "generate_anchors": "anchors",
    "load_checkpoint": "checkpoint",
    "save_checkpoint": "checkpoint",
    "Detector": "detector",
    "EfficientDet": "model",
    "create_model": "registry",
    "get_config": "registry",
    "list_models": "registry",
    "register_model": "registry",
    "load_trained": "loading",
    "load_pretrained": "loading",
    "pretrained_detector": "loading",
    "list_pretrained": "pretrained",
    "tune_cpu_allocator": "runtime",
}

if TYPE_CHECKING:
    from .anchors import Anchors, generate_anchors
    from .checkpoint import load_checkpoint, save_checkpoint
    from .config import AnchorConfig, ModelConfig
    from .detector import Detector
    from .loading import load_pretrained, load_trained, pretrained_detector
    from .model import EfficientDet
    from .pretrained import list_pretrained
    from .registry import create_model, get_config, list_models, register_model
    from .runtime import tune_cpu_allocator


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
    "__version__",
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
    "tune_cpu_allocator",
]
