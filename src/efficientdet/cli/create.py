"""``efficientdet create``: build a compound-scaled model (any phi) and save it with its
configuration (:func:`efficientdet.modeling.scaling.create_compound_model`)."""

from __future__ import annotations

import argparse
from typing import Any

from ..modeling.scaling import BACKBONE_LADDERS, DEFAULT_BASE, create_compound_model
from .options import add_image_size, add_out, image_size, read_class_names

NAME = "create"
HELP = "build a compound-scaled model (any phi) and save it"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``efficientdet create`` (a compound-scaled model saved with its config)."""
    parser.add_argument("--phi", type=float, required=True, help="compound coefficient, >= 0 (e.g. 2.5)")
    parser.add_argument("--base", default=DEFAULT_BASE, help="registered model that is the phi=0 point")
    parser.add_argument("--neck", help="feature network (default: the base's, bifpn)")
    parser.add_argument("--backbone", help="timm backbone kept fixed at every phi (default: the base's ladder)")
    parser.add_argument(
        "--backbone-ladder", help=f"climb this family with phi: {', '.join(BACKBONE_LADDERS)}"
    )
    parser.add_argument("--fusion", help="fusion method override (fast, softmax, sum, ...)")
    parser.add_argument("--num-classes", type=int, default=90)
    parser.add_argument("--class-names", help="text file with one class name per line (stored in the file)")
    add_image_size(parser, "H [W] override")
    parser.add_argument("--pretrained-backbone", action="store_true", help="ImageNet backbone weights (needs timm's hub)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random initialisation")
    add_out(parser, "output .safetensors file", required=True)


def run(args: argparse.Namespace) -> int:
    """Build the compound-scaled model of ``args`` and save it with its configuration."""
    import torch

    from ..modeling.checkpoint import save_checkpoint
    from ..modeling.profile import count_parameters

    overrides: dict[str, Any] = {}
    if args.fusion:
        overrides["fusion"] = args.fusion
    size = image_size(args.image_size)
    if size is not None:
        overrides["image_size"] = size
    class_names = read_class_names(args.class_names) if args.class_names else None
    num_classes = args.num_classes
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names for --num-classes {num_classes}")
    torch.manual_seed(args.seed)
    model = create_compound_model(
        args.phi, base=args.base, neck=args.neck, backbone=args.backbone,
        backbone_ladder=args.backbone_ladder, num_classes=num_classes,
        pretrained_backbone=args.pretrained_backbone, **overrides,
    )
    metadata: dict[str, Any] = {
        "phi": args.phi,
        "base": args.base,
        "pretrained_backbone": bool(args.pretrained_backbone),
        "created_by": "efficientdet create",
    }
    if class_names is not None:
        metadata["class_names"] = class_names
    path = save_checkpoint(model, args.out, metadata=metadata)
    cfg = model.config
    print(
        f"{cfg.name}: {cfg.backbone}, W={cfg.fpn_channels}, D={cfg.fpn_repeats}, "
        f"head={cfg.head_repeats}, input={cfg.image_size[0]}x{cfg.image_size[1]}, "
        f"neck={cfg.neck}, {count_parameters(model) / 1e6:.2f}M parameters"
    )
    print(f"wrote {path}")
    return 0
