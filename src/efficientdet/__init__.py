"""EfficientDet object detection: the paper's model, faithful and fast."""

__version__ = "0.1.0"

from .anchors import Anchors, generate_anchors  # noqa: E402
from .checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from .config import AnchorConfig, ModelConfig  # noqa: E402
from .detector import Detector  # noqa: E402
from .model import EfficientDet  # noqa: E402
from .registry import create_model, get_config, list_models, register_model  # noqa: E402

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
    "load_checkpoint",
    "register_model",
    "save_checkpoint",
]
