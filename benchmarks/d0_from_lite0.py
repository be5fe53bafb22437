"""A starting point for training ``tf_efficientdet_d0`` offline: its EfficientNet-B0 backbone
initialised from the ImageNet EfficientNet-Lite0 weights that ship in a package.

No ImageNet B0 weights are reachable without the network. Lite0 is B0 without the
squeeze-excitation blocks and with ReLU6 for swish; every convolution and batch norm has the
same shape in both, so those weights carry over one to one. The squeeze-excitation gates are
opened (reduce and expand weights zero, expand bias 8: every channel multiplied by
sigmoid(8) = 0.9997), so each block starts as Lite0's. The activations differ, so the features
are not Lite0's: the backbone has to be trained with the rest (BN in training mode re-scales
them from the first step). The BiFPN and heads are initialised as usual.

    .venv/bin/python benchmarks/d0_from_lite0.py --out runs/d0-init.safetensors
    efficientdet train --data D --model tf_efficientdet_d0 --set model.init_checkpoint=runs/d0-init.safetensors ...

The benchmarks use it for a D0 trained on generated data (``benchmarks/README.md``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from efficientdet.modeling.backbone import create_backbone
from efficientdet.modeling.checkpoint import save_checkpoint
from efficientdet.modeling.factory import create_model

SE_GATE_BIAS = 8.0  # sigmoid(8) = 0.9997: a squeeze-excitation block that passes its input


def b0_from_lite0(backbone: torch.nn.Module) -> dict[str, int]:
    """Load Lite0's ImageNet weights into a ``tf_efficientnet_b0`` features backbone in place.

    Returns:
        Counts: ``copied`` tensors from Lite0, ``gates`` squeeze-excitation tensors set open.

    Raises:
        RuntimeError: a tensor of the B0 backbone that is neither in Lite0 (same name and
            shape) nor part of a squeeze-excitation block.
    """
    lite, _ = create_backbone("tf_efficientnet_lite0", pretrained=True)
    source = lite.state_dict()
    state = backbone.state_dict()
    counts = {"copied": 0, "gates": 0}
    for key, value in state.items():
        if key in source and source[key].shape == value.shape:
            state[key] = source[key].clone()
            counts["copied"] += 1
        elif ".se.conv_reduce." in key or ".se.conv_expand.weight" in key:
            state[key] = torch.zeros_like(value)
            counts["gates"] += 1
        elif ".se.conv_expand.bias" in key:
            state[key] = torch.full_like(value, SE_GATE_BIAS)
            counts["gates"] += 1
        else:
            raise RuntimeError(f"{key} {tuple(value.shape)}: not in Lite0 and not a gate")
    backbone.load_state_dict(state)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="safetensors file to write")
    parser.add_argument("--model", default="tf_efficientdet_d0")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    model = create_model(args.model, pretrained_backbone=False)
    counts = b0_from_lite0(model.backbone)
    save_checkpoint(model, args.out)
    print(f"wrote {args.out}: {counts['copied']} backbone tensors from Lite0, "
          f"{counts['gates']} squeeze-excitation tensors opened")


if __name__ == "__main__":
    main()
