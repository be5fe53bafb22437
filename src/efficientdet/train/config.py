"""Training configuration: typed sections, read from YAML with ``--set a.b=value`` overrides.

Every option has a default from the official recipe (docs/model-reference.md, section 4); the resolved
configuration is saved next to the run's outputs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..config import normalize_aspect_ratios
from ..data.mix import MixAugment
from ..data.transforms import hsv_in_range

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "constant")
AMP_MODES = ("none", "bf16", "fp16")
LOGGERS = ("csv", "tensorboard", "mlflow")


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not one of {', '.join(map(repr, choices))}")


@dataclass(frozen=True)
class ModelSection:
    """Which network, where its weights start, what is frozen."""

    name: str = "tf_efficientdet_d0"
    # A whole model configuration (efficientdet.config.model_config_to_dict) to build instead of
    # the registered `name`'s, e.g. from a study; the class count still comes from the data.
    config: dict[str, Any] | None = None
    pretrained: bool = False  # start from the published COCO detector (efficientdet list --pretrained)
    pretrained_backbone: bool = True
    init_checkpoint: str | None = None  # detector weights file to fine-tune from
    image_size: tuple[int, int] | None = None  # None: the model's own
    phi: float | None = None  # compound scaling: build compound_config(phi) with `name` as phi=0
    neck: str | None = None
    fusion: str | None = None
    fpn_channels: int | None = None
    fpn_repeats: int | None = None
    # Anchors (None: the model's own). `efficientdet check-data --fit-anchors` prints a fitted
    # pair; aspect ratios as [w, h] multiplier pairs or scalars w / h.
    anchor_scale: float | None = None
    aspect_ratios: tuple[Any, ...] | None = None
    num_scales: int | None = None
    freeze_backbone: int = 0  # leading backbone stages to freeze (stem counts as one); -1: all
    freeze_bn: bool = False  # keep every BN in eval mode (running statistics fixed)
    grad_checkpointing: bool = False

    def __post_init__(self) -> None:
        if self.anchor_scale is not None and not self.anchor_scale > 0:
            raise ValueError(f"model.anchor_scale must be positive, got {self.anchor_scale}")
        if self.num_scales is not None and self.num_scales < 1:
            raise ValueError(f"model.num_scales must be >= 1, got {self.num_scales}")
        if self.aspect_ratios is not None:
            if not isinstance(self.aspect_ratios, (list, tuple)):
                raise ValueError(
                    f"model.aspect_ratios must be a list of [w, h] pairs, got {self.aspect_ratios!r}"
                )
            try:
                pairs = normalize_aspect_ratios(tuple(self.aspect_ratios))
            except (TypeError, ValueError) as err:
                raise ValueError(f"model.aspect_ratios: {err}") from err
            object.__setattr__(self, "aspect_ratios", pairs)

    def anchor_overrides(self) -> dict[str, Any]:
        """The :class:`~efficientdet.config.AnchorConfig` fields this section sets."""
        names = ("anchor_scale", "aspect_ratios", "num_scales")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}


@dataclass(frozen=True)
class DataSection:
    train: str = ""
    val: str = ""
    augment: bool = True
    hflip_prob: float = 0.5
    scale_min: float = 0.1
    scale_max: float = 2.0
    # Colour jitter of the augmented images (0 = off, the official recipe): hue shift in
    # [-hsv_h, hsv_h] turns, saturation and brightness factors in [1 - x, 1 + x].
    hsv_h: float = 0.0
    hsv_s: float = 0.0
    hsv_v: float = 0.0
    num_workers: int | None = None  # loader processes per training process; None: from the CPU count
    # Compute a frozen backbone's maps once (model.freeze_backbone=-1; with k >= 1 the maps of
    # its first k stages, the rest train on them); see efficientdet.train.feature_cache.
    # cache_views: 1 plain + (views - 1) augmented copies.
    cache_features: bool = False
    cache_views: int = 1
    cache_max_gb: float = 8.0
    # Augmentations that combine images (efficientdet.data.mix), applied to the augmented
    # cached views or on the fly; probabilities per training item, 0 = off.
    mosaic_prob: float = 0.0
    mixup_prob: float = 0.0
    copy_paste_prob: float = 0.0
    mixup_alpha: float = 32.0  # the mixup weight ~ Beta(alpha, alpha)

    @property
    def hsv(self) -> tuple[float, float, float]:
        """``(hsv_h, hsv_s, hsv_v)``, as :class:`~efficientdet.data.TrainTransform` takes it."""
        return (self.hsv_h, self.hsv_s, self.hsv_v)

    def __post_init__(self) -> None:
        if not hsv_in_range(self.hsv):
            raise ValueError(
                f"data.hsv_h must be in [0, 0.5], data.hsv_s and data.hsv_v in [0, 1]; got {self.hsv}"
            )
        if self.num_workers is not None and self.num_workers < 0:
            raise ValueError(f"data.num_workers must be >= 0 (or null: from the CPU count), got {self.num_workers}")
        if self.cache_views < 1:
            raise ValueError(f"data.cache_views must be >= 1, got {self.cache_views}")
        if self.cache_views > 1 and not self.augment:
            raise ValueError("data.cache_views > 1 needs data.augment=true (the views would be identical)")
        try:
            mix = self.mix_augment()
        except ValueError as err:
            raise ValueError(f"data.{err}") from err
        if mix.active and not self.augment:
            raise ValueError(
                "data.mosaic_prob, data.mixup_prob and data.copy_paste_prob need data.augment=true"
            )
        if any(self.hsv) and not self.augment:
            raise ValueError("data.hsv_h, data.hsv_s and data.hsv_v need data.augment=true")

    def mix_augment(self) -> MixAugment:
        """Mosaic, mixup and copy-paste as this section sets them (inactive when all are 0)."""
        return MixAugment(
            mosaic_prob=self.mosaic_prob, mixup_prob=self.mixup_prob,
            copy_paste_prob=self.copy_paste_prob, mixup_alpha=self.mixup_alpha,
        )


@dataclass(frozen=True)
class OptimSection:
    optimizer: str = "sgd"
    lr: float | None = None  # None: 0.08 per 64 images for SGD, 1e-3 per 16 images for AdamW
    momentum: float = 0.9
    weight_decay: float = 4e-5  # not applied to BN parameters and biases
    warmup_epochs: float = 1.0
    warmup_factor: float = 0.1  # first lr = warmup_factor * lr (0.008 / 0.08 officially)
    schedule: str = "cosine"
    min_lr_factor: float = 0.0
    clip_grad: float = 10.0
    ema_decay: float = 0.9998  # 0 disables the EMA
    ema_warmup: bool = True  # decay ramps up as (1 + step) / (10 + step) for short runs
    # The backbone's trainable stages (model.freeze_backbone) learn at this multiple of the
    # learning rate; the neck and heads at the rate itself.
    backbone_lr_factor: float = 1.0

    def __post_init__(self) -> None:
        _choice("optim.optimizer", self.optimizer, OPTIMIZERS)
        _choice("optim.schedule", self.schedule, SCHEDULES)
        if self.lr is not None and self.lr <= 0:
            raise ValueError(f"optim.lr must be positive, got {self.lr}")
        if not self.backbone_lr_factor > 0:
            raise ValueError(f"optim.backbone_lr_factor must be positive, got {self.backbone_lr_factor}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"optim.ema_decay must be in [0, 1), got {self.ema_decay}")

    def base_lr(self, batch_size: int) -> float:
        """The learning rate, scaled by the global batch size when not given."""
        if self.lr is not None:
            return self.lr
        if self.optimizer == "sgd":
            return 0.08 * batch_size / 64
        return 1e-3 * batch_size / 16


@dataclass(frozen=True)
class RunSection:
    out_dir: str = "runs/train"
    epochs: int = 300
    max_steps: int | None = None  # stop after this many optimizer steps (overrides epochs)
    time_budget_minutes: float | None = None  # fit the schedule into this wall-clock budget
    budget_includes_setup: bool = False  # the feature cache's time counts against the budget
    batch_size: int = 8  # per process
    seed: int = 0
    device: str = "auto"
    amp: str = "none"
    channels_last: bool = False  # NHWC memory for the network and its inputs (faster on CPU)
    eval_every: int = 1  # epochs; 0: only at the end
    eval_batch_size: int = 8
    save_every_steps: int = 200
    log_every: int = 10
    max_nonfinite: int = 5  # consecutive non-finite losses before the run stops
    progress: bool = True
    # Where metrics go: csv (steps.csv, epochs.csv and the curves), tensorboard (when
    # installed), mlflow (pip install 'efficientdet[mlflow]'; see train/mlflow_logger.py).
    loggers: tuple[str, ...] = ("csv", "tensorboard")
    mlflow_tracking_uri: str | None = None  # None: an SQLite store in the run folder
    mlflow_experiment: str = "efficientdet"

    def __post_init__(self) -> None:
        _choice("run.amp", self.amp, AMP_MODES)
        loggers = (self.loggers,) if isinstance(self.loggers, str) else tuple(self.loggers)
        unknown = [name for name in loggers if name not in LOGGERS]
        if unknown:
            raise ValueError(
                f"run.loggers: {', '.join(map(repr, unknown))} not one of {', '.join(map(repr, LOGGERS))}"
            )
        object.__setattr__(self, "loggers", tuple(dict.fromkeys(loggers)))
        if self.batch_size < 1:
            raise ValueError(f"run.batch_size must be >= 1, got {self.batch_size}")


@dataclass(frozen=True)
class TrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    run: RunSection = field(default_factory=RunSection)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _image_size(value: Any, key: str) -> tuple[int, int]:
    """``H`` or ``[H, W]`` of positive integers -> ``(H, W)``; anything else raises naming ``key``."""
    sides = [value, value] if not isinstance(value, (list, tuple)) else list(value)
    if len(sides) != 2 or not all(
        isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sides
    ):
        raise ValueError(f"{key} must be a positive integer or [height, width], got {value!r}")
    return (sides[0], sides[1])


_SECTIONS = {"model": ModelSection, "data": DataSection, "optim": OptimSection, "run": RunSection}


def train_config_from_dict(data: dict[str, Any] | None) -> TrainConfig:
    """Build a :class:`TrainConfig`; unknown sections or keys raise naming the valid ones."""
    data = data or {}
    unknown = sorted(set(data) - set(_SECTIONS))
    if unknown:
        raise ValueError(f"unknown config section(s) {unknown}; valid: {sorted(_SECTIONS)}")
    sections = {}
    for name, cls in _SECTIONS.items():
        values = dict(data.get(name) or {})
        valid = {f.name for f in dataclasses.fields(cls)}
        bad = sorted(set(values) - valid)
        if bad:
            raise ValueError(f"unknown key(s) {[f'{name}.{b}' for b in bad]}; valid: {sorted(valid)}")
        if values.get("image_size") is not None:
            values["image_size"] = _image_size(values["image_size"], f"{name}.image_size")
        sections[name] = cls(**values)
    return TrainConfig(**sections)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"optim.lr=0.01"`` -> ``(["optim", "lr"], 0.01)``; the value is read as YAML."""
    if "=" not in text:
        raise ValueError(f"override {text!r} must look like section.key=value")
    key, value = text.split("=", 1)
    path = key.strip().split(".")
    if len(path) != 2 or not all(path):
        raise ValueError(f"override key {key!r} must be section.key, e.g. optim.lr")
    return path, yaml.safe_load(value)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML training configuration and apply ``section.key=value`` overrides."""
    return train_config_from_dict(read_config_dict(path, overrides))


def read_config_dict(path: str | Path | None = None, overrides: list[str] | None = None) -> dict[str, Any]:
    """The options a YAML file and ``section.key=value`` overrides set, as
    ``{section: {key: value}}`` (only what they name; nothing is checked yet)."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such configuration file")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ValueError(f"{path}: not valid YAML: {err}") from err
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping of sections, got {type(data).__name__}")
    for text in overrides or []:
        (section, key), value = parse_override(text)
        data.setdefault(section, {})
        if not isinstance(data[section], dict):
            raise ValueError(f"section {section!r} is not a mapping")
        data[section][key] = value
    return data


def save_config(config: TrainConfig, path: str | Path) -> None:
    def plain(value: Any) -> Any:
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    Path(path).write_text(yaml.safe_dump(plain(config.to_dict()), sort_keys=False))
