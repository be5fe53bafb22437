"""A short-budget training recipe chosen from the data and the machine
(``efficientdet train --data my.yaml --minutes 10``).

The official recipe (300 epochs, everything trained) needs days; a user with a few hundred
images and a CPU has minutes. :func:`plan_budget_recipe` looks at the training set (how many
images, how large the boxes are at the model's input, whether the classes look the same
mirrored) and times the model on this machine (the frozen backbone per image, a training step
of the rest), then picks the options that fit the budget:

- the ImageNet Lite0 backbone frozen and its features cached: a step then costs the BiFPN,
  heads and loss only (the backbone is 85 % of Lite0's multiply-adds); with the published COCO
  detector in the local cache, fine-tuning starts from it instead;
- the input size: the smallest of :data:`INPUT_SIZES` at which the smaller boxes span 16 px
  and the anchors match 90 % of them; anchors fitted to the boxes (as ``check-data
  --fit-anchors`` does) when they match 5 % more boxes than the model's own;
- how many augmented versions of each image to cache (``data.cache_views``): as many as a
  fifth of the budget computes, but no more than the epochs the rest of it trains;
- left-right flips only when the class-average crops look the same mirrored;
- the learning-rate warm-up and the EMA horizon from the steps that fit.

Every choice is an ordinary ``section.key=value`` option; a key the user set (``--config`` or
``--set``) is kept and the rest of the plan adapts to it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import ModelConfig
from ..data import DetectionData, DetectionDataset, build_transform, load_dataset
from ..detection.anchor_fit import fit_anchors, matched_share
from ..devices import resolve_device, time_calls
from ..modeling.backbone import create_backbone
from ..modeling.model import EfficientDet
from ..modeling.pretrained import PRETRAINED
from ..modeling.scaling import config_for_training
from .config import (
    DataSection,
    TrainConfig,
    parse_override,
    read_config_dict,
    train_config_from_dict,
)
from .feature_cache import cache_bytes, inference_backbone
from .loop import TrainResult, train

DEFAULT_MODEL = "tf_efficientdet_lite0"
INPUT_SIZES = (320, 384, 448, 512, 640)
TARGET_MATCHED = 0.90  # the anchors should match this share of the boxes
MIN_BOX_SIDE = 16.0  # px: the smaller boxes should span two cells of P3 (stride 8)
LARGE_INPUT_MINUTES = 20  # inputs of more than twice the model's pixels need this budget
ANCHOR_GAIN = 0.05  # fitted anchors are used when they match this much more
CACHE_SHARE = 0.2  # of the budget, at most, spent computing cached views
MAX_VIEWS = 32
MID_RUN_EVAL_MINUTES = 20  # shorter budgets evaluate only at the end
BATCH_SIZE = 8  # on a CPU: twice the updates of 16 for the same images a second
LR = 0.015  # AdamW at batch 8 (0.007: AP50 0.81, 0.01: 0.85, 0.015: 0.87 on a 300-image digit set in 10 min)
FLIP_RATIO = 1.5  # a class is asymmetric when mirrored halves differ this much more
SCALE_RANGE = (0.8, 1.25)  # scale jitter of the augmented views


@dataclass(frozen=True)
class Choice:
    """One option of the recipe: ``key=value`` and why."""

    key: str
    value: Any
    reason: str
    user: bool = False  # the user's value, kept

    def option(self) -> str:
        value = self.value
        if isinstance(value, bool):
            text = str(value).lower()
        elif isinstance(value, tuple):
            text = str([list(v) if isinstance(v, tuple) else v for v in value]).replace(" ", "")
        else:
            text = str(value)
        return f"{self.key}={text}"


@dataclass(frozen=True)
class Speed:
    """Seconds this machine takes, measured by :func:`measure_speed`.

    Attributes:
        backbone_per_image: the frozen backbone (BN folded, as the cache runs it), one image.
        step: one training step of the neck and heads on cached maps at ``batch_size``.
        full_per_image: the whole network in evaluation, one image.
    """

    backbone_per_image: float
    step: float
    full_per_image: float
    batch_size: int
    threads: int
    device: str


@dataclass(frozen=True)
class DataSummary:
    """What the plan needs to know about a training set.

    Attributes:
        num_images, num_boxes, num_classes: counts of the training split.
        num_val: validation images (0 when there is no validation split).
        boxes: every box ``Tensor[N, 4]`` xyxy scaled to a ``1 x 1`` letterboxed input
            (multiply by the input side for pixels).
        asymmetric: class names whose average crop does not look the same mirrored.
        symmetric_known: classes with enough boxes to tell.
    """

    num_images: int
    num_boxes: int
    num_classes: int
    num_val: int
    boxes: torch.Tensor
    asymmetric: tuple[str, ...] = ()
    symmetric_known: int = 0

    def boxes_at(self, side: int) -> torch.Tensor:
        return self.boxes * side

    def median_side(self, side: int) -> float:
        return self.side_quantile(side, 0.5)

    def side_quantile(self, side: int, q: float) -> float:
        """The ``q`` quantile of the box sides ``sqrt(w h)`` in pixels of a ``side`` input."""
        if not len(self.boxes):
            return 0.0
        wh = (self.boxes[:, 2:] - self.boxes[:, :2]) * side
        return float(torch.quantile((wh[:, 0] * wh[:, 1]).sqrt(), q))


@dataclass
class BudgetRecipe:
    """A planned recipe: its choices, in order, and what they were based on."""

    minutes: float
    data: DataSummary
    speed: Speed | None
    choices: list[Choice] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def overrides(self) -> list[str]:
        """The recipe as ``section.key=value`` options (the user's kept values included)."""
        return [c.option() for c in self.choices]

    def value(self, key: str) -> Any:
        for c in self.choices:
            if c.key == key:
                return c.value
        raise KeyError(key)

    def describe(self) -> str:
        """The short block ``efficientdet train --minutes`` prints before training."""
        d = self.data
        speed = self.speed
        machine = (
            f"{speed.device} ({speed.threads} threads)" if speed is not None else "this machine"
        )
        lines = [
            f"budget recipe: {d.num_images} training images, {d.num_boxes} boxes, "
            f"{d.num_classes} classes; {self.minutes:g} min on {machine}",
        ]
        width = max(len(c.option()) for c in self.choices) if self.choices else 0
        for c in self.choices:
            tag = "  (yours)" if c.user else ""
            lines.append(f"  {c.option():<{width}}  {c.reason}{tag}")
        lines += [f"  note: {n}" for n in self.notes]
        lines.append("  any line can be changed with --set section.key=value")
        return "\n".join(lines)


def _letterbox_boxes(data: DetectionData) -> torch.Tensor:
    """Every box of ``data`` as xyxy of a ``1 x 1`` letterboxed input."""
    parts = []
    for s in data.samples:
        if s.num_boxes:
            parts.append(s.boxes.float() / max(s.height, s.width))
    return torch.cat(parts) if parts else torch.zeros(0, 4)


def mirror_asymmetry(
    data: DetectionData, *, max_images: int = 150, max_crops: int = 80, side: int = 24, seed: int = 0
) -> dict[int, float]:
    """How differently each class looks mirrored, from its average crop.

    The crops of a class (edge strength of the grey crop, ``side x side``, each normalised
    to zero mean and unit variance) are split into two random halves with means ``A`` and ``B``. If mirrored
    objects of the class are as likely as the originals (cars facing either way), the mirror
    image of ``B`` is another draw of ``B`` and ``|A - flip(B)|`` is about ``|A - B|``; for
    digits, letters or signs it is much larger.

    Returns:
        label -> ``|A - flip(B)| / |A - B|`` for classes with at least 8 crops.
    """
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(data.samples))[:max_images]
    crops: dict[int, list[np.ndarray]] = {}
    for index in order:
        sample = data.samples[int(index)]
        if not sample.num_boxes:
            continue
        labels = sample.labels.tolist()
        if all(len(crops.get(label, ())) >= max_crops for label in labels):
            continue
        try:
            image = sample.load_image().convert("L")
        except OSError:
            continue
        for box, label in zip(sample.boxes.tolist(), labels, strict=True):
            if len(crops.setdefault(label, [])) >= max_crops:
                continue
            x0, y0, x1, y1 = (int(round(v)) for v in box)
            if x1 - x0 < 4 or y1 - y0 < 4:
                continue
            pixels = np.asarray(image.crop((x0, y0, x1, y1)).resize((side, side)), dtype=np.float32)
            # Edge strength, not brightness: the same shape drawn dark on light or light on
            # dark must not average away.
            gy, gx = np.gradient(pixels)
            edges = np.hypot(gx, gy)
            spread = float(edges.std())
            if spread < 1e-3:
                continue
            crops[label].append((edges - edges.mean()) / spread)
    ratios = {}
    for label, items in crops.items():
        if len(items) < 8:
            continue
        stack = np.stack(items)[rng.permutation(len(items))]
        half = len(stack) // 2
        a, b = stack[:half].mean(axis=0), stack[half : 2 * half].mean(axis=0)
        same = float(np.linalg.norm(a - b))
        mirrored = float(np.linalg.norm(a - b[:, ::-1]))
        ratios[label] = mirrored / max(same, 1e-6)
    return ratios


def summarize_data(train: DetectionData, val: DetectionData | None) -> DataSummary:
    """Counts, box sizes and mirror symmetry of a training split."""
    ratios = mirror_asymmetry(train)
    asymmetric = tuple(train.class_names[k] for k, r in sorted(ratios.items()) if r > FLIP_RATIO)
    return DataSummary(
        num_images=len(train.samples),
        num_boxes=sum(s.num_boxes for s in train.samples),
        num_classes=train.num_classes,
        num_val=len(val.samples) if val is not None else 0,
        boxes=_letterbox_boxes(train),
        asymmetric=asymmetric,
        symmetric_known=len(ratios),
    )


@torch.no_grad()
def _time(fn: Any, device: torch.device, repeats: int = 3) -> float:
    """Seconds of the fastest of ``repeats`` calls of ``fn()`` on ``device``, after one warm-up."""
    return min(time_calls(fn, repeats=repeats, warmup=1, device=device))


def measure_speed(config: ModelConfig, *, batch_size: int = BATCH_SIZE, device: str = "cpu") -> Speed:
    """Time the network of ``config`` (random weights) on this machine: the cached-backbone
    forward per image, one training step of the rest at ``batch_size``, and the whole network
    per image in evaluation. Takes a few seconds."""
    dev = torch.device(device)
    model = EfficientDet(config, pretrained_backbone=False).to(dev)
    model.to(memory_format=torch.channels_last)
    h, w = config.image_size
    images = torch.randn(4, 3, h, w, device=dev).contiguous(memory_format=torch.channels_last)
    backbone = inference_backbone(model.backbone, config.image_size).to(dev)
    per_image = _time(lambda: backbone(images), dev) / len(images)
    model.eval()
    full = _time(lambda: model(images), dev) / len(images)
    with torch.no_grad():
        maps = [m.repeat(math.ceil(batch_size / len(images)), 1, 1, 1)[:batch_size] for m in backbone(images)]
    model.train()
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)

    def step() -> None:
        with torch.enable_grad():
            classes, boxes = model.forward_features(maps)
            loss = sum(c.float().square().mean() for c in classes) + sum(b.float().square().mean() for b in boxes)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[union-attr]
            optimizer.step()

    # Anchor matching, the focal loss and the EMA add about a quarter to the bare step.
    step_time = 1.25 * _time(step, dev, repeats=2)
    return Speed(per_image, step_time, full, batch_size, torch.get_num_threads(), dev.type)


def _read_seconds(data: DetectionData, config: ModelConfig, count: int = 8) -> float:
    """Seconds to read, decode and augment one training image (as the feature cache does),
    timed on up to ``count`` of them."""
    transform = build_transform(
        config.image_size, train=True, augment=True, mean=config.mean, std=config.std
    )
    dataset = DetectionDataset(data, transform, on_unreadable="substitute")
    items = min(count, len(dataset))
    if items == 0:
        return 0.0

    def read_all() -> None:
        for i in range(items):
            dataset[(i, 1)]

    return time_calls(read_all, repeats=1, warmup=0)[0] / items


_MISSING = object()


def _user_value(user: Mapping[str, Any], key: str, default: Any = _MISSING) -> Any:
    """The user's value of ``section.key``, or ``default`` when they did not set it."""
    section, name = key.split(".")
    values = user.get(section) or {}
    return values.get(name, default)


def _coco_weights_cached(name: str) -> bool:
    entry = PRETRAINED.get(name)
    return entry is not None and entry.cache_path.is_file()


@dataclass
class _Chooser:
    """The plan's choices in order: ``choose(key, value, reason)`` records the user's value
    of ``key`` where they set it (and returns it), else ``value``."""

    user: Mapping[str, Any]
    choices: list[Choice] = field(default_factory=list)

    def __call__(self, key: str, value: Any, reason: str) -> Any:
        given = _user_value(self.user, key)
        if given is not _MISSING:
            self.choices.append(Choice(key, given, reason="", user=True))
            return given
        self.choices.append(Choice(key, value, reason))
        return value


@dataclass(frozen=True)
class _Costs:
    """Seconds of the parts of a run, for the budget arithmetic."""

    seconds: float  # the whole budget
    step: float  # one training step at the chosen batch size
    view_cost: float  # one cached view of every training image
    final_eval: float  # the final evaluation, with the error analysis

    def train_seconds(self, views: int) -> float:
        """What is left for training steps after ``views`` cached views and the evaluation."""
        return max(0.0, self.seconds - views * self.view_cost - 1.2 * self.final_eval)


def plan_budget_recipe(
    data: str | Path,
    minutes: float,
    *,
    user: Mapping[str, Any] | None = None,
    device: str = "auto",
    speed: Speed | None = None,
) -> BudgetRecipe:
    """Choose the training options for ``data`` and a budget of ``minutes`` on this machine.

    Args:
        data: the dataset (any format :func:`efficientdet.data.load_dataset` reads) with a
            ``train`` split and, for the evaluations, a ``val`` split.
        minutes: wall-clock minutes for the whole run: feature cache, training, evaluations.
        user: the user's own options as ``{section: {key: value}}`` (a ``--config`` file with
            its ``--set`` overrides); those keys are kept, and the plan adapts to them.
        device: ``auto``, ``cpu`` or ``cuda[:i]``.
        speed: the machine's timings (default: :func:`measure_speed`, a few seconds).

    Returns:
        A :class:`BudgetRecipe`; ``recipe.overrides`` are ``efficientdet train`` options.
    """
    began = time.perf_counter()
    if not minutes > 0:
        raise ValueError(f"the budget must be a positive number of minutes, got {minutes}")
    user = user or {}
    train_data = load_dataset(data, "train")
    try:
        val_data: DetectionData | None = load_dataset(data, "val")
    except (OSError, ValueError):  # no validation split
        val_data = None
    summary = summarize_data(train_data, val_data)
    recipe = BudgetRecipe(minutes=minutes, data=summary, speed=speed)
    choose = _Chooser(user)

    device = str(resolve_device(device))
    name = _choose_weights(choose)
    config, fit = _choose_input(choose, summary, name, minutes)
    if speed is None:
        speed = _measure_with_reading(config, train_data, device)
        recipe.speed = speed
    batch = choose("run.batch_size", min(BATCH_SIZE if speed.device == "cpu" else 32, summary.num_images),
                   "small batches: more updates in the same time")
    n = max(1, summary.num_images)
    costs = _Costs(
        seconds=minutes * 60.0,
        step=speed.step * batch / speed.batch_size,
        view_cost=n * speed.backbone_per_image,
        final_eval=2 * summary.num_val * speed.full_per_image + 15.0,  # with the error analysis
    )
    views, steps, epochs = _choose_views(
        choose, recipe, costs, batch, n, _views_fit_memory(config, n, user)
    )
    _choose_augmentation(choose, summary, int(views) > 1)
    _choose_optimizer(choose, batch, steps, n)
    _choose_schedule(choose, minutes, epochs)
    planning = time.perf_counter() - began
    choose("run.time_budget_minutes", round(max(0.1, (costs.seconds - planning - 1.2 * costs.final_eval) / 60), 2),
           f"the budget less this plan ({planning:.0f} s) and the final evaluation (~{costs.final_eval:.0f} s)")
    choose("run.budget_includes_setup", True, "the feature cache counts against the budget")
    choose("run.channels_last", True, "NHWC: faster convolutions on the CPU")
    if fit is not None and max(fit.base_share, fit.best_share) < TARGET_MATCHED:
        recipe.notes.append(
            f"{100 * (1 - max(fit.base_share, fit.best_share)):.0f}% of the boxes stay unmatched at "
            f"{config.image_size[0]} px (too small for the anchors): on large images, predict --tile helps"
        )
    recipe.choices = choose.choices
    return recipe


def _choose_weights(choose: _Chooser) -> str:
    """The model, where its weights come from and the frozen, cached backbone; returns the
    model's name."""
    name = choose("model.name", DEFAULT_MODEL, "the smallest EfficientDet; its ImageNet backbone ships offline")
    coco = _coco_weights_cached(name)
    if coco:
        choose("model.pretrained", True, "the COCO detector is in the local cache: fine-tune it")
    else:
        choose("model.pretrained_backbone", True, "ImageNet backbone (no COCO detector in the cache)")
    choose("model.freeze_backbone", -1, "backbone frozen: a step trains the BiFPN and heads only")
    choose("data.cache_features", True, "frozen backbone's maps computed once, not every step")
    return name


def _choose_input(
    choose: _Chooser, summary: DataSummary, name: str, minutes: float
) -> tuple[ModelConfig, Any]:
    """The input size (see :func:`_choose_input_size`, unless the user set one) and the
    anchors, fitted when they match :data:`ANCHOR_GAIN` more of the boxes; returns the
    model's configuration at that size and the anchor fit."""
    base = config_for_training(name, None, max(1, summary.num_classes))
    user_size = _user_value(choose.user, "model.image_size")
    if user_size is _MISSING:
        size, size_reason, fit = _choose_input_size(summary, base, minutes)
        side = choose("model.image_size", size, size_reason)
    else:
        side = choose("model.image_size", user_size, "")
        side = int(side if isinstance(side, int) else side[0])
        fit = fit_anchors(summary.boxes_at(side), (side, side), base.min_level, base.max_level, base.anchors)
    if fit is not None and fit.best_share >= fit.base_share + ANCHOR_GAIN:
        choose("model.anchor_scale", fit.best.anchor_scale,
               f"fitted anchors match {100 * fit.best_share:.0f}% of the boxes, the model's "
               f"{100 * fit.base_share:.0f}%")
        choose("model.aspect_ratios", tuple(fit.best.aspect_ratios), "fitted to the boxes' shapes")
    return replace(base, image_size=(side, side)), fit


def _measure_with_reading(config: ModelConfig, train_data: DetectionData, device: str) -> Speed:
    """:func:`measure_speed` with the cost of reading an image added to the backbone's: a
    cached view also reads, decodes and augments each image in the main process."""
    speed = measure_speed(config, device=device)
    return replace(speed, backbone_per_image=speed.backbone_per_image + _read_seconds(train_data, config))


def _views_fit_memory(config: ModelConfig, n: int, user: Mapping[str, Any]) -> int:
    """How many cached views of ``n`` images fit in ``data.cache_max_gb`` (at least 1)."""
    with torch.device("meta"):  # channels and strides only: nothing allocated
        _, info = create_backbone(config.backbone)
    per_view_bytes = cache_bytes(info.channels, info.strides, config.image_size, n)
    max_gb = float(_user_value(user, "data.cache_max_gb", DataSection().cache_max_gb))
    return max(1, int(max_gb * 2**30 // max(1, per_view_bytes)))


def _choose_views(
    choose: _Chooser, recipe: BudgetRecipe, costs: _Costs, batch: int, n: int, views_fit_memory: int
) -> tuple[int, int, float]:
    """The cached views of each image: as many as :data:`CACHE_SHARE` of the budget computes
    and memory holds, but no more than the epochs the rest trains. Returns the views and
    the steps and epochs that fit after them (a note when hardly any steps do)."""
    step = costs.step
    views = 1
    while views < MAX_VIEWS and views < views_fit_memory:
        nxt = views + 1
        epochs_after = costs.train_seconds(nxt) / step * batch / n
        if nxt * costs.view_cost > CACHE_SHARE * costs.seconds or epochs_after < nxt:
            break
        views = nxt
    steps = max(1, int(costs.train_seconds(views) / step))
    epochs = steps * batch / n
    if costs.train_seconds(views) < 10 * step:
        recipe.notes.append(
            f"the budget leaves time for {steps} step(s) of {step:.2f} s after the feature "
            f"cache ({costs.view_cost:.0f} s a view) and the final evaluation: give more minutes"
        )
    views = choose(
        "data.cache_views", views,
        f"1 plain + {views - 1} augmented version(s) of each image, {costs.view_cost * views:.0f} s "
        f"to compute; about {epochs:.0f} epochs of {step:.2f} s steps fit",
    )
    return views, steps, epochs


def _choose_augmentation(choose: _Chooser, summary: DataSummary, augment: bool) -> None:
    """Augmentation when there is more than one view: flips unless half the classes look
    different mirrored, and mild scale jitter."""
    choose("data.augment", augment, "augmentation lives in the cached views" if augment
           else "one view: no room for augmented copies")
    if augment:
        asym = summary.asymmetric
        known = summary.symmetric_known
        flip = 0.0 if known and len(asym) * 2 >= known else 0.5
        reason = (
            f"no flips: {len(asym)} of {known} classes look different mirrored ({', '.join(asym[:4])}"
            f"{', ...' if len(asym) > 4 else ''})" if flip == 0.0
            else f"flips: {known - len(asym)} of {known} classes look the same mirrored"
            if known else "flips (too few boxes per class to tell mirror symmetry)"
        )
        choose("data.hflip_prob", flip, reason)
        choose("data.scale_min", SCALE_RANGE[0], "mild scale jitter and shifts: views stay like the originals")
        choose("data.scale_max", SCALE_RANGE[1], "")


def _choose_optimizer(choose: _Chooser, batch: int, steps: int, n: int) -> None:
    """AdamW with the learning rate scaled to the batch, the warm-up and the EMA horizon
    from the ``steps`` that fit."""
    choose("optim.optimizer", "adamw", "AdamW: fast progress in few steps")
    choose("optim.lr", round(LR * math.sqrt(batch / BATCH_SIZE), 5), "")
    choose("optim.weight_decay", 1e-4, "")
    warmup_steps = min(50, max(10, steps // 20))
    choose("optim.warmup_epochs", round(warmup_steps * batch / n, 3), f"{warmup_steps} warm-up steps")
    horizon = max(20, steps // 10)
    choose("optim.ema_decay", round(1 - 1 / horizon, 5), f"EMA over the last ~{horizon} steps")


def _choose_schedule(choose: _Chooser, minutes: float, epochs: float) -> None:
    """How often to evaluate, and an upper bound of the epochs (the budget sets the steps)."""
    if minutes < MID_RUN_EVAL_MINUTES:
        # An evaluation costs as much as a hundred steps or more; in a short run the steps are
        # worth more than a choice of checkpoint (the schedule decays to zero, EMA on).
        choose("run.eval_every", 0, "one evaluation, at the end: the time goes to steps")
    else:
        eval_every = max(1, math.ceil(epochs / 3))
        choose("run.eval_every", eval_every, f"about {max(1, int(epochs // eval_every))} "
               "evaluations (the best is kept)")
    choose("run.epochs", max(1, math.ceil(epochs * 2)), "an upper bound: the budget sets the steps")


def _choose_input_size(
    summary: DataSummary, base: ModelConfig, minutes: float
) -> tuple[int, str, Any]:
    """The smallest input of :data:`INPUT_SIZES` (from the model's own) at which the smaller
    boxes (the 10th percentile of ``sqrt(w h)``) are :data:`MIN_BOX_SIDE` pixels or more and
    the anchors, fitted or not, match :data:`TARGET_MATCHED` of the boxes; otherwise the
    largest the budget allows (sizes above twice the model's pixels need
    :data:`LARGE_INPUT_MINUTES`)."""
    base_side = base.image_size[0]
    levels = (base.min_level, base.max_level)
    allowed = [
        s for s in INPUT_SIZES
        if s >= base_side and (s * s <= 2 * base_side * base_side or minutes >= LARGE_INPUT_MINUTES)
    ]
    chosen = None
    for side in allowed:
        fit = fit_anchors(summary.boxes_at(side), (side, side), *levels, base.anchors)
        share = max(fit.base_share, fit.best_share)
        chosen = (side, share, fit)
        if share >= TARGET_MATCHED and summary.side_quantile(side, 0.1) >= MIN_BOX_SIDE:
            break
    assert chosen is not None
    side, share, fit = chosen
    small = summary.side_quantile(side, 0.1)
    if side == base_side:
        reason = (
            f"the model's own: boxes of {small:.0f} px (10th percentile) to "
            f"{summary.median_side(side):.0f} px (median), anchors match {100 * share:.0f}%"
        )
    else:
        at_base = matched_share(summary.boxes_at(base_side), (base_side, base_side), *levels, base.anchors)
        reason = (
            f"small boxes: {summary.side_quantile(base_side, 0.1):.0f} px (10th percentile) at "
            f"{base_side}, {small:.0f} px here; anchors match {100 * share:.0f}% here, "
            f"the model's {100 * at_base:.0f}% at {base_side}"
        )
    return side, reason, fit


def budget_config(
    data: str | Path,
    minutes: float,
    *,
    config_path: str | Path | None = None,
    overrides: list[str] | None = None,
    device: str = "auto",
    speed: Speed | None = None,
) -> tuple[TrainConfig, BudgetRecipe]:
    """The training configuration of ``efficientdet train --data DATA --minutes N``.

    ``data`` becomes ``data.train`` and ``data.val`` unless the user names them; the recipe
    of :func:`plan_budget_recipe` fills every key that ``config_path`` and ``overrides``
    leave open.

    Returns:
        ``(config, recipe)``: the checked configuration and the plan behind it (print
        ``recipe.describe()``).
    """
    user = read_config_dict(config_path, overrides)
    run = user.get("run") or {}
    recipe = plan_budget_recipe(
        data, minutes, user=user, device=str(run.get("device", device)), speed=speed
    )
    given = user.setdefault("data", {})
    given.setdefault("train", str(data))
    if recipe.data.num_val:
        given.setdefault("val", str(data))
    elif "val" not in given:
        recipe.notes.append(f"{data} has no validation split: the run ends without an evaluation")
    merged: dict[str, Any] = {}
    for option in recipe.overrides:
        (section, key), value = parse_override(option)
        merged.setdefault(section, {})[key] = value
    for section, values in user.items():
        merged.setdefault(section, {}).update(values or {})
    return train_config_from_dict(merged), recipe


def train_in_budget(
    data: str | Path,
    minutes: float,
    *,
    overrides: list[str] | None = None,
    config_path: str | Path | None = None,
    echo: Any = print,
) -> TrainResult:
    """Plan the recipe for ``data`` and ``minutes`` (:func:`budget_config`), print it with
    ``echo`` (``None``: silent) and train; the Python form of ``efficientdet train --data DATA
    --minutes N``. ``overrides`` are ``section.key=value`` options, e.g. ``run.out_dir=...``.

    Returns:
        The :class:`~efficientdet.train.TrainResult` (run folder, steps, final metrics).
    """
    config, recipe = budget_config(data, minutes, config_path=config_path, overrides=overrides)
    if echo is not None:
        echo(recipe.describe())
    return train(config)
