"""EfficientDet: backbone -> extra pyramid levels -> neck -> class/box heads."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from torch import Tensor, nn

from ..config import ModelConfig
from .backbone import create_backbone
from .head import CLASS_PRIOR_PROBABILITY, HeadNet
from .layers import INIT_VARIANCE_SCALING, ConvBn, MaxPoolDown
from .necks import build_neck


class ExtraLevel(nn.Module):
    """A level above the backbone's: 1x1 conv + BN to the pyramid width when the channel count
    differs (P6 from P5), then max-pool 3/2. P7 (and P8) are max-pools of the level below."""

    def __init__(self, in_channels: int, width: int, config: ModelConfig) -> None:
        super().__init__()
        self.proj = (
            ConvBn(
                in_channels, width, 1, bias=config.redundant_bias,
                bn_eps=config.bn_eps, bn_momentum=config.bn_momentum,
            )
            if in_channels != width
            else nn.Identity()
        )
        self.pool = MaxPoolDown(2, config.padding)

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(self.proj(x))


class EfficientDet(nn.Module):
    """The detection network. ``forward(images: Tensor[B, 3, H, W])`` returns
    ``(class_outputs, box_outputs)``: one ``Tensor[B, A * num_classes, H_l, W_l]`` and one
    ``Tensor[B, A * 4, H_l, W_l]`` per level (``H_l = H / 2**l``), box deltas per anchor in
    the official ``(dy, dx, dh, dw)`` order. Class logits are raw (no sigmoid).
    """

    def __init__(self, config: ModelConfig, *, pretrained_backbone: bool = False) -> None:
        super().__init__()
        self.config = config
        self.backbone, info = create_backbone(
            config.backbone, pretrained=pretrained_backbone, drop_path_rate=config.backbone_drop_path
        )
        self.feature_info = info
        first_level = info.strides[0].bit_length() - 1
        if first_level != config.min_level:
            raise ValueError(
                f"backbone taps start at stride {info.strides[0]} (P{first_level}), "
                f"but min_level is {config.min_level}"
            )
        num_backbone = len(info.channels)
        channels = list(info.channels)
        self.extra_levels = nn.ModuleList()
        for _ in range(config.num_levels - num_backbone):
            self.extra_levels.append(ExtraLevel(channels[-1], config.fpn_channels, config))
            channels.append(config.fpn_channels)
        self.neck = build_neck(config, channels)
        num_anchors = config.anchors.num_anchors
        head_kwargs: dict[str, Any] = dict(
            act=config.act,
            redundant_bias=config.redundant_bias,
            bn_eps=config.bn_eps,
            bn_momentum=config.bn_momentum,
        )
        self.class_net = HeadNet(
            config.fpn_channels, num_anchors * config.num_classes, config.head_repeats,
            config.num_levels, prior_probability=CLASS_PRIOR_PROBABILITY, **head_kwargs,
        )
        self.box_net = HeadNet(
            config.fpn_channels, num_anchors * 4, config.head_repeats, config.num_levels,
            **head_kwargs,
        )

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    def forward(self, images: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images as Tensor[B, 3, H, W], got shape {tuple(images.shape)}")
        return self.forward_features(list(self.backbone(images)))

    def forward_features(self, features: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Everything after the backbone: extra levels, neck and heads.

        Args:
            features: the backbone's maps, ``Tensor[B, C_l, H_l, W_l]`` for its levels
                (``feature_info`` order, finest first), e.g. from a cache of a frozen backbone.

        Returns:
            ``(class_outputs, box_outputs)`` as :meth:`forward`.
        """
        features = list(features)
        for extra in self.extra_levels:
            features.append(extra(features[-1]))
        features = self.neck(features)
        return self.class_net(features), self.box_net(features)

    def reset_class_head(self, num_classes: int) -> None:
        """Replace the class prediction layer for ``num_classes`` (fine-tuning)."""
        self.config = replace(self.config, num_classes=num_classes)
        old = self.class_net.predict
        width = old.depthwise.in_channels
        new = type(old)(
            width, self.config.anchors.num_anchors * num_classes, 3, bias=True, norm=False,
            init=INIT_VARIANCE_SCALING,
            bias_init=-math.log((1 - CLASS_PRIOR_PROBABILITY) / CLASS_PRIOR_PROBABILITY),
        )
        new.depthwise.load_state_dict(old.depthwise.state_dict())
        self.class_net.predict = new.to(old.pointwise.weight.device)
