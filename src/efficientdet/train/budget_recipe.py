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
- mosaic, mixup and copy-paste (``data.mosaic_prob``, ...) as :mod:`.budget_rules` proposes;
- the backbone frozen, or its last stages trained at a lower rate (``model.freeze_backbone``,
  ``optim.backbone_lr_factor``) as :mod:`.budget_rules` proposes: the frozen stages' maps
  are still cached, and each step runs the trainable stages on them;
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

import torch

from ..config import ModelConfig
from ..data import DetectionData, MixAugment, load_dataset
from ..detection.anchor_fit import fit_anchors, matched_share
from ..devices import resolve_device
from ..modeling.backbone import create_backbone, tapped_blocks
from ..modeling.pretrained import PRETRAINED
from ..modeling.scaling import config_for_training
from . import budget_rules as rules
from .budget_data import DataSummary, summarize_data
from .budget_data import mirror_asymmetry as mirror_asymmetry  # re-exported
from .budget_speed import BATCH_SIZE, Speed, measure_unfrozen_step, measure_with_reading
from .config import (
    DataSection,
    TrainConfig,
    parse_override,
    read_config_dict,
    train_config_from_dict,
)
from .feature_cache import cache_bytes, frozen_part_bytes
from .loop import TrainResult, train
from .parameters import backbone_stages, first_trainable_block

DEFAULT_MODEL = "tf_efficientdet_lite0"
INPUT_SIZES = (320, 384, 448, 512, 640)
TARGET_MATCHED = 0.90  # the anchors should match this share of the boxes
MIN_BOX_SIDE = 16.0  # px: the smaller boxes should span two cells of P3 (stride 8)
LARGE_INPUT_MINUTES = 20  # inputs of more than twice the model's pixels need this budget,
# or, when the anchors match under CROWDED_MATCHED of the boxes at the largest input below it,
SMALL_OBJECT_MINUTES = 10  # this one (small: AP50 0.458 at 448, 0.542 at 640, 56 % / 79 % matched)
CROWDED_MATCHED = 0.75
ANCHOR_GAIN = 0.05  # fitted anchors are used when they match this much more
CACHE_SHARE = 0.2  # of the budget, at most, spent computing cached views
MAX_VIEWS = 32
MID_RUN_EVAL_MINUTES = 20  # shorter budgets evaluate only at the end
LR = 0.015  # AdamW at batch 8 (0.007: AP50 0.81, 0.01: 0.85, 0.015: 0.87 on a 300-image digit set in 10 min)
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
    view_cost: float  # the plain cached view of every training image
    augmented_view_cost: float  # one augmented view (mosaic, mixup, copy-paste read more images)
    final_eval: float  # the final evaluation, with the error analysis

    def views_seconds(self, views: int) -> float:
        """Computing ``views`` cached views: the plain one, then augmented ones."""
        return 0.0 if views < 1 else self.view_cost + (views - 1) * self.augmented_view_cost

    def train_seconds(self, views: int) -> float:
        """What is left for training steps after ``views`` cached views (0: no cache) and the
        evaluation."""
        return max(0.0, self.seconds - self.views_seconds(views) - 1.2 * self.final_eval)


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
        speed: the machine's timings (default: :func:`~.budget_speed.measure_with_reading`, a
            few seconds).

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
        # the colour jitter the views will have: the user's, else the rule's
        hsv = tuple(float(_user_value(user, key, value if rules.HSV_ON else 0.0))
                    for key, value in zip(rules.HSV_KEYS, rules.HSV, strict=True))
        speed = measure_with_reading(config, train_data, device, hsv=(hsv[0], hsv[1], hsv[2]))
        recipe.speed = speed
    batch = choose("run.batch_size", min(BATCH_SIZE if speed.device == "cpu" else 32, summary.num_images),
                   "small batches: more updates in the same time")
    n = max(1, summary.num_images)
    mix = _mix_proposals(choose.user, summary, config.image_size[0])
    reads = MixAugment(
        mosaic_prob=float(mix["data.mosaic_prob"].value), mixup_prob=float(mix["data.mixup_prob"].value),
        copy_paste_prob=float(mix["data.copy_paste_prob"].value),
    ).expected_reads()
    costs = _Costs(
        seconds=minutes * 60.0,
        step=speed.step * batch / speed.batch_size,
        view_cost=n * (speed.backbone_per_image + speed.read_per_image),
        augmented_view_cost=n * (speed.backbone_per_image + reads * speed.read_per_image),
        final_eval=2 * summary.num_val * speed.full_per_image + 15.0,  # with the error analysis
    )
    frozen = _plan_views(costs, batch, n, _views_fit_memory(config, n, user))
    backbone = _choose_backbone(choose, config, speed, costs, frozen, batch, n, reads, device)
    if backbone.cached:
        views, steps, epochs = _choose_views(choose, recipe, replace(costs, step=backbone.step), backbone.plan)
        augment = int(views) > 1
    else:
        steps, epochs, augment = backbone.plan.steps, backbone.plan.epochs, True
    _choose_augmentation(choose, recipe, summary, augment, mix, cached=backbone.cached)
    _choose_optimizer(choose, batch, steps, n)
    _choose_schedule(choose, minutes, epochs)
    planning = time.perf_counter() - began
    choose("run.time_budget_minutes", round(max(0.1, (costs.seconds - planning - 1.2 * costs.final_eval) / 60), 2),
           f"the budget less this plan ({planning:.0f} s) and the final evaluation (~{costs.final_eval:.0f} s)")
    choose("run.budget_includes_setup", True, "the feature cache counts against the budget" if backbone.cached
           else "the set-up counts against the budget")
    choose("run.channels_last", True, "NHWC: faster convolutions on the CPU")
    if fit is not None and max(fit.base_share, fit.best_share) < TARGET_MATCHED:
        recipe.notes.append(
            f"{100 * (1 - max(fit.base_share, fit.best_share)):.0f}% of the boxes stay unmatched at "
            f"{config.image_size[0]} px (too small for the anchors): on large images, predict --tile helps"
        )
    recipe.choices = choose.choices
    return recipe


def _choose_weights(choose: _Chooser) -> str:
    """The model and where its weights come from; returns the model's name."""
    name = choose("model.name", DEFAULT_MODEL, "the smallest EfficientDet; its ImageNet backbone ships offline")
    coco = _coco_weights_cached(name)
    if coco:
        choose("model.pretrained", True, "the COCO detector is in the local cache: fine-tune it")
    else:
        choose("model.pretrained_backbone", True, "ImageNet backbone (no COCO detector in the cache)")
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


def _views_fit_memory(config: ModelConfig, n: int, user: Mapping[str, Any], first_trainable: int | None = None) -> int:
    """How many cached views of ``n`` images fit in ``data.cache_max_gb`` (at least 1): of
    the whole frozen backbone's maps, or of what its blocks before ``first_trainable``
    compute."""
    with torch.device("meta"):  # shapes only: nothing allocated or computed
        backbone, info = create_backbone(config.backbone)
        per_view_bytes = (
            cache_bytes(info.channels, info.strides, config.image_size, n) if first_trainable is None
            else frozen_part_bytes(backbone, config.image_size, first_trainable, n)
        )
    max_gb = float(_user_value(user, "data.cache_max_gb", DataSection().cache_max_gb))
    return max(1, int(max_gb * 2**30 // max(1, per_view_bytes)))


@dataclass(frozen=True)
class _CachedPlan:
    """The frozen backbone's plan: cached views, and the steps and epochs that fit after them."""

    views: int
    steps: int
    epochs: float


def _plan_views(costs: _Costs, batch: int, n: int, views_fit_memory: int) -> _CachedPlan:
    """The cached views of each image: as many as :data:`CACHE_SHARE` of the budget computes
    and memory holds, but no more than the epochs the rest trains."""
    step = costs.step
    views = 1
    while views < MAX_VIEWS and views < views_fit_memory:
        nxt = views + 1
        epochs_after = costs.train_seconds(nxt) / step * batch / n
        if costs.views_seconds(nxt) > CACHE_SHARE * costs.seconds or epochs_after < nxt:
            break
        views = nxt
    steps = max(1, int(costs.train_seconds(views) / step))
    return _CachedPlan(views, steps, steps * batch / n)


def _choose_views(
    choose: _Chooser, recipe: BudgetRecipe, costs: _Costs, plan: _CachedPlan
) -> tuple[int, int, float]:
    """The frozen backbone's cache and its views (:func:`_plan_views`); returns the views and
    the steps and epochs that fit after them (a note when hardly any steps do)."""
    choose("data.cache_features", True, "frozen backbone's maps computed once, not every step")
    step, views, steps, epochs = costs.step, plan.views, plan.steps, plan.epochs
    if costs.train_seconds(views) < 10 * step:
        recipe.notes.append(
            f"the budget leaves time for {steps} step(s) of {step:.2f} s after the feature "
            f"cache ({costs.view_cost:.0f} s a view) and the final evaluation: give more minutes"
        )
    views = choose(
        "data.cache_views", views,
        f"1 plain + {views - 1} augmented version(s) of each image, {costs.views_seconds(views):.0f} s "
        f"to compute; about {epochs:.0f} epochs of {step:.2f} s steps fit",
    )
    return views, steps, epochs


def _backbone_layout(config: ModelConfig) -> tuple[int, bool]:
    """The stages of ``config``'s backbone that ``model.freeze_backbone`` counts, and whether
    it can be run in parts (its last stages training on cached maps)."""
    with torch.device("meta"):
        backbone, _ = create_backbone(config.backbone)
    return len(backbone_stages(backbone)), tapped_blocks(backbone) is not None


@dataclass(frozen=True)
class _BackbonePlan:
    """How the backbone trains: ``trainable`` last stages (0: all frozen), from cached maps or
    on the fly, and the views, steps and epochs that fit."""

    trainable: int
    cached: bool
    plan: _CachedPlan
    step: float  # seconds a step at the run's batch size


def _choose_backbone(
    choose: _Chooser, config: ModelConfig, speed: Speed, costs: _Costs, frozen: _CachedPlan,
    batch: int, n: int, reads: float, device: str,
) -> _BackbonePlan:
    """``model.freeze_backbone`` (:func:`~.budget_rules.unfreeze_rule`, or the user's). With
    the whole backbone frozen its maps are cached (the ``frozen`` plan); with its last stages
    training, the frozen stages' maps are cached and each step runs the trainable ones at
    ``optim.backbone_lr_factor`` of the rate (on the fly, without a cache, when nothing is
    frozen or the backbone cannot be run in parts). Times a step of the partly trainable
    network only when the choice needs it."""
    stages, splittable = _backbone_layout(config)
    given = _user_value(choose.user, "model.freeze_backbone")
    may_cache = _user_value(choose.user, "data.cache_features", True) is not False

    def fit_trainable(trainable: int) -> _BackbonePlan:
        cached = may_cache and splittable and trainable < stages
        step = speed.unfrozen_step
        if step is None:
            step = measure_unfrozen_step(config, trainable, batch_size=speed.batch_size, device=device,
                                         cached=cached)
        step = step * batch / speed.batch_size
        if cached:
            first = first_trainable_block(stages - trainable)
            memory = _views_fit_memory(config, n, choose.user, first)
            return _BackbonePlan(trainable, True, _plan_views(replace(costs, step=step), batch, n, memory), step)
        # Reading and augmenting on the fly shares the machine with the steps.
        per_step = step + batch * reads * speed.read_per_image
        steps = max(1, int(costs.train_seconds(0) / per_step))
        return _BackbonePlan(trainable, False, _CachedPlan(0, steps, steps * batch / n), per_step)

    probe = None
    if given is _MISSING:
        probe = fit_trainable(rules.UNFREEZE_STAGES) if frozen.epochs >= rules.UNFREEZE_EPOCHS else None
        proposal = rules.unfreeze_rule(
            stages=stages, frozen_epochs=frozen.epochs, unfrozen_epochs=probe.plan.epochs if probe else None
        )
        freeze = int(choose("model.freeze_backbone", proposal.value, proposal.reason))
    else:
        freeze = int(choose("model.freeze_backbone", given, ""))
    if freeze < 0 or freeze >= stages:
        return _BackbonePlan(0, True, frozen, costs.step)
    chosen = probe if probe is not None and probe.trainable == stages - freeze else fit_trainable(stages - freeze)
    choose("optim.backbone_lr_factor", rules.BACKBONE_LR_FACTOR,
           f"the backbone learns at {rules.BACKBONE_LR_FACTOR:g} of the rate: its ImageNet features move slowly")
    if not chosen.cached:
        choose("data.cache_features", False, f"the last {chosen.trainable} backbone stage(s) train: their "
               f"maps change every step; about {chosen.plan.epochs:.0f} epochs of {chosen.step:.2f} s steps fit")
    return chosen


def _mix_proposals(user: Mapping[str, Any], summary: DataSummary, side: int) -> dict[str, rules.Proposal]:
    """Mosaic, mixup and copy-paste (:func:`~.budget_rules.mix_rules`), each replaced by the
    user's value where they set one."""
    proposals = rules.mix_rules(
        median_share=summary.median_side(side) / side,
        boxes_per_image=summary.num_boxes / max(1, summary.num_images),
    )
    for key in proposals:
        given = _user_value(user, key)
        if given is not _MISSING:
            proposals[key] = rules.Proposal(float(given), "yours")
    return proposals


def _choose_augmentation(
    choose: _Chooser, recipe: BudgetRecipe, summary: DataSummary, augment: bool,
    mix: Mapping[str, rules.Proposal], *, cached: bool,
) -> None:
    """Augmentation when there is more than one cached view or none: flips unless half the
    classes look different mirrored, mild scale jitter, and the images combined as ``mix``
    proposes."""
    asked = [key for key in (*mix, *rules.HSV_KEYS) if float(_user_value(choose.user, key, 0.0)) > 0]
    if asked and not augment:  # the user's mosaic / mixup / copy-paste / colour jitter need augmentation on
        recipe.notes.append(f"{', '.join(asked)} change nothing with one cached view: give more "
                            "minutes or set data.cache_views")
        augment = True
    where = "augmentation lives in the cached views" if cached else "augmented on the fly, a new draw every epoch"
    choose("data.augment", augment, where if augment else "one view: no room for augmented copies")
    if not augment:
        return
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
    for key, proposal in rules.colour_rule().items():
        choose(key, proposal.value, proposal.reason)
    for key, proposal in mix.items():
        choose(key, proposal.value, proposal.reason)


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
    :data:`LARGE_INPUT_MINUTES`, or :data:`SMALL_OBJECT_MINUTES` when the anchors match
    under :data:`CROWDED_MATCHED` of the boxes at the largest size below them)."""
    base_side = base.image_size[0]
    levels = (base.min_level, base.max_level)
    sizes = [s for s in INPUT_SIZES if s >= base_side]
    large = minutes >= LARGE_INPUT_MINUTES
    chosen = None
    for side in sizes:
        if side * side > 2 * base_side * base_side and not large:
            if chosen is None or minutes < SMALL_OBJECT_MINUTES or chosen[1] >= CROWDED_MATCHED:
                break
            large = True  # tiny boxes: a larger input pays even in a short budget
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
