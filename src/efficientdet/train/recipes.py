"""Training recipes as lists of ordinary ``efficientdet train`` options (``section.key=value``)."""

from __future__ import annotations

# The short-budget recipe. The official one (SGD 0.08/64, 300 epochs, everything trained)
# needs days; in ~10 minutes on 2 CPU cores the way to a good detector is to keep the ImageNet
# Lite0 backbone frozen, compute its features once (data.cache_features: the backbone is 85 %
# of the FLOPs), and train the BiFPN and heads with AdamW at a high rate, NHWC on the CPU.
# No flips or scale jitter: digits are not mirror-symmetric, and the cache holds one
# (letterboxed) view of each image. Every key is an ordinary `efficientdet train` option.
DEMO_RECIPE: list[str] = [
    "model.name=tf_efficientdet_lite0",
    "model.pretrained_backbone=true",
    "model.freeze_backbone=-1",
    "data.cache_features=true",
    "data.augment=false",
    "optim.optimizer=adamw",
    "optim.lr=0.01",
    "optim.weight_decay=0.0001",
    "optim.warmup_epochs=0.3",
    "optim.ema_decay=0.999",
    "run.batch_size=16",
    "run.channels_last=true",
    "run.epochs=30",
    "run.eval_every=3",
    "run.save_every_steps=100",
]
