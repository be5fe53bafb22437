"""The budget recipe's rules for the augmentations that combine images, colour jitter and
training part of the backbone, kept apart from the plan's arithmetic so that they can be tuned
on the dataset families (``benchmarks/budget_recipe_study.py``) and read in one place.

Each rule takes what the plan knows (the boxes, the images, the epochs that fit) and returns
the value it proposes with the reason the plan prints. The constants below are the rules'
settings. Measured on the families at 10 minutes (README, "On families of datasets unlike the
demo's"), none of these paid: mosaic + mixup + copy-paste (clutter AP50 0.410 vs 0.411,
small 0.450 vs 0.458 at 448), colour jitter (clutter 0.389), the last two backbone stages training
on the cached maps (clutter 0.242: a step costs 0.53 s instead of 0.30, 865 steps instead of
1,470). So the probabilities are 0, :data:`HSV_ON` is False and :data:`UNFREEZE_EPOCHS` is
infinite, and the plan chooses what it chose before these options existed;
``--set data.mosaic_prob=0.5``, ``--set model.freeze_backbone=6`` and the like try them in a
run, and the rest of the plan adapts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

# Mosaic, mixup and copy-paste: the probability the plan gives each where its rule allows it
# (0: off).
MOSAIC_PROB = 0.0
MIXUP_PROB = 0.0
COPY_PASTE_PROB = 0.0
# Mosaic shows about a quarter of each image: objects with a median side above this share of
# the input would mostly be cut by the tiles.
MOSAIC_MAX_MEDIAN_SHARE = 0.25
# Above this many boxes an image, pasted objects mostly hide others.
COPY_PASTE_MAX_BOXES = 12.0

# Training the last backbone stages: when the frozen backbone's plan trains more epochs than
# UNFREEZE_EPOCHS (the heads would have converged long before), the last UNFREEZE_STAGES
# stages train instead, at BACKBONE_LR_FACTOR of the rate, provided the slower steps still
# fit MIN_UNFROZEN_EPOCHS.
UNFREEZE_EPOCHS = math.inf
UNFREEZE_STAGES = 1
MIN_UNFROZEN_EPOCHS = 10.0
BACKBONE_LR_FACTOR = 0.1

MIX_KEYS = ("data.mosaic_prob", "data.mixup_prob", "data.copy_paste_prob")

# Colour jitter of the augmented views (hue shift, saturation and brightness factors; the
# values ultralytics trains with), and whether the plan turns it on.
HSV = (0.015, 0.7, 0.4)
HSV_ON = False
HSV_KEYS = ("data.hsv_h", "data.hsv_s", "data.hsv_v")


@dataclass(frozen=True)
class Proposal:
    """A value a rule proposes for one option, and why."""

    value: Any
    reason: str


def mix_rules(*, median_share: float, boxes_per_image: float) -> dict[str, Proposal]:
    """Mosaic, mixup and copy-paste probabilities for an augmented training set.

    Args:
        median_share: the median box side ``sqrt(w h)`` as a share of the input side.
        boxes_per_image: the training set's boxes per image.
    """
    if not MOSAIC_PROB:
        mosaic = Proposal(0.0, "no mosaic (data.mosaic_prob=0.5: 4 images in one)")
    elif median_share > MOSAIC_MAX_MEDIAN_SHARE:
        mosaic = Proposal(0.0, f"no mosaic: the median object spans {100 * median_share:.0f}% of the input, "
                               "the tiles would cut most")
    else:
        mosaic = Proposal(MOSAIC_PROB, f"mosaic: 4 images in one, more objects and backgrounds a view "
                                       f"(median object {100 * median_share:.0f}% of the input)")
    mixup = (
        Proposal(MIXUP_PROB, "mixup: two images blended, both sets of boxes kept")
        if MIXUP_PROB else Proposal(0.0, "no mixup (data.mixup_prob=0.2: two images blended)")
    )
    if not COPY_PASTE_PROB:
        paste = Proposal(0.0, "no copy-paste (data.copy_paste_prob=0.3: objects of other images pasted in)")
    elif boxes_per_image > COPY_PASTE_MAX_BOXES:
        paste = Proposal(0.0, f"no copy-paste: {boxes_per_image:.0f} boxes an image, pasted ones would hide them")
    else:
        paste = Proposal(COPY_PASTE_PROB, "copy-paste: objects of other images pasted in, new backgrounds for them")
    return dict(zip(MIX_KEYS, (mosaic, mixup, paste), strict=True))


def unfreeze_rule(*, stages: int, frozen_epochs: float, unfrozen_epochs: float | None) -> Proposal:
    """``model.freeze_backbone``: -1 (all frozen, features cached) or the leading stages to
    freeze so that the last :data:`UNFREEZE_STAGES` of ``stages`` train.

    Args:
        stages: the backbone's stages (the stem counts as one).
        frozen_epochs: the epochs the budget trains with the backbone frozen and cached.
        unfrozen_epochs: the epochs it trains with the last stages trainable (None: not
            measured, because the frozen plan is short of :data:`UNFREEZE_EPOCHS`).
    """
    if frozen_epochs < UNFREEZE_EPOCHS or unfrozen_epochs is None:
        return Proposal(-1, "backbone frozen: a step trains the BiFPN and heads only")
    if unfrozen_epochs < MIN_UNFROZEN_EPOCHS:
        return Proposal(-1, f"backbone frozen: with its last stage(s) training only {unfrozen_epochs:.0f} "
                            "epochs would fit")
    keep = max(0, stages - UNFREEZE_STAGES)
    return Proposal(keep, f"the last {stages - keep} backbone stage(s) train: {frozen_epochs:.0f} epochs "
                          f"of the heads alone would fit, {unfrozen_epochs:.0f} with them")


def colour_rule() -> dict[str, Proposal]:
    """``data.hsv_h``, ``hsv_s``, ``hsv_v`` for an augmented training set."""
    h, sat, val = HSV
    if not HSV_ON:
        first = Proposal(0.0, f"no colour jitter (data.hsv_h={h:g} data.hsv_s={sat:g} data.hsv_v={val:g}: "
                              "hue, saturation and brightness)")
        return {HSV_KEYS[0]: first, HSV_KEYS[1]: Proposal(0.0, ""), HSV_KEYS[2]: Proposal(0.0, "")}
    first = Proposal(h, f"colour jitter: hue within {100 * h:g}% of the wheel, saturation x{1 - sat:g}-{1 + sat:g}, "
                        f"brightness x{1 - val:g}-{1 + val:g}: objects in colours training did not show")
    return {HSV_KEYS[0]: first, HSV_KEYS[1]: Proposal(sat, ""), HSV_KEYS[2]: Proposal(val, "")}
