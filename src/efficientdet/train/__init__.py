"""Training: configuration, the loop, checkpoints and resume, EMA, distributed data parallel."""

from .budget_recipe import BudgetRecipe, budget_config, plan_budget_recipe, train_in_budget
from .config import (
    DataSection,
    ModelSection,
    OptimSection,
    RunSection,
    TrainConfig,
    load_config,
    save_config,
    train_config_from_dict,
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
    "BudgetRecipe",
    "budget_config",
    "plan_budget_recipe",
    "train_in_budget",
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
    "train_config_from_dict",
    "load_config",
    "save_config",
    "train",
]
