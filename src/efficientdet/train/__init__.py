"""Training: configuration, the loop, checkpoints and resume, EMA, distributed data parallel."""

from .config import (
    DataSection,
    ModelSection,
    OptimSection,
    RunSection,
    TrainConfig,
    config_from_dict,
    load_config,
    save_config,
)
from .loop import (
    BEST_WEIGHTS,
    LAST_WEIGHTS,
    STATE_FILE,
    EpochSampler,
    Trainer,
    TrainingError,
    TrainResult,
    train,
)

__all__ = [
    "BEST_WEIGHTS",
    "LAST_WEIGHTS",
    "STATE_FILE",
    "DataSection",
    "EpochSampler",
    "ModelSection",
    "OptimSection",
    "RunSection",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "TrainingError",
    "config_from_dict",
    "load_config",
    "save_config",
    "train",
]
