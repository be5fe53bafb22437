"""Inference speed-ups that keep the outputs: BN folding, channels-last memory, torch.compile.

:func:`optimize_for_inference` returns a new network (the original is left untouched) whose
outputs equal the original's to float tolerance:

* **BN folding.** Every BatchNorm whose only input is the output of one convolution is folded
  into that convolution (``w' = w * s``, ``b' = (b - mean) * s + beta`` with
  ``s = gamma / sqrt(var + eps)``) and removed; timm's ``BatchNormAct2d`` leaves its activation
  behind. The pairs are found by watching one forward pass, so any backbone and neck works. The
  class and box heads share each conv across levels but keep one BN per level; with
  ``unshare_heads=True`` each level gets its own copy of the (small) head convs, which then
  fold too.
* **Channels-last.** Weights and the input in NHWC, which oneDNN's convolutions take without
  reordering.
* **torch.compile** (optional, slow to warm up).

A probe forward at a small input compares the result with the original (``check=True``).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor, nn

from ..config import ModelConfig
from .head import HeadNet

__all__ = [
    "FoldReport",
    "InferenceModel",
    "UnsharedHeadNet",
    "find_conv_bn_pairs",
    "fold_batchnorms",
    "fold_conv_bn_",
    "optimize_for_inference",
    "unshare_heads",
]

# Probe-check tolerance: folding reassociates float32 arithmetic, nothing more.
CHECK_RTOL = 1e-3
CHECK_ATOL = 1e-3


@dataclass
class FoldReport:
    """What :func:`fold_batchnorms` did: ``folded`` ``(conv, bn)`` name pairs, and the BNs it
    left (``unfolded``) because their input was not a single convolution's own output."""

    folded: list[tuple[str, str]]
    unfolded: list[str]


def fold_conv_bn_(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Fold an evaluation-mode ``bn`` into the preceding ``conv`` in place (conv gains a bias).

    ``bn(conv(x)) == conv'(x)`` afterwards, computed in float64 and stored in the conv's dtype.
    """
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("cannot fold a BatchNorm without running statistics")
    if conv.out_channels != bn.num_features:
        raise ValueError(
            f"conv has {conv.out_channels} output channels, BatchNorm {bn.num_features} features"
        )
    with torch.no_grad():
        weight = conv.weight.double()
        mean = bn.running_mean.double()
        scale = torch.rsqrt(bn.running_var.double() + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight.double()
        bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(mean)
        new_bias = (bias - mean) * scale
        if bn.bias is not None:
            new_bias = new_bias + bn.bias.double()
        conv.weight.copy_((weight * scale.view(-1, 1, 1, 1)).to(conv.weight.dtype))
        if conv.bias is None:
            conv.bias = nn.Parameter(new_bias.to(conv.weight.dtype), requires_grad=False)
        else:
            conv.bias.copy_(new_bias.to(conv.bias.dtype))


def _bn_replacement(bn: nn.BatchNorm2d) -> nn.Module | None:
    """What stays of ``bn`` once folded: nothing, or timm ``BatchNormAct2d``'s drop + act.

    The synchronised forms of both (``nn.SyncBatchNorm``, timm ``SyncBatchNormAct``, what
    data-parallel training on GPUs converts them to) compute the same in evaluation mode and
    fold the same way. ``None`` for BatchNorm subclasses whose forward is not known.
    """
    if type(bn) in (nn.BatchNorm2d, nn.SyncBatchNorm):
        return nn.Identity()
    try:
        from timm.layers import BatchNormAct2d, SyncBatchNormAct
    except ImportError:  # pragma: no cover - timm is a dependency
        return None
    if type(bn) in (BatchNormAct2d, SyncBatchNormAct):
        drop = cast(nn.Module, bn.drop)
        act = cast(nn.Module, bn.act)
        return act if isinstance(drop, nn.Identity) else nn.Sequential(drop, act)
    return None


def _probe_input(model: nn.Module, size: tuple[int, int] | None) -> Tensor:
    config = getattr(model, "config", None)
    if size is None:
        side = config.size_divisor if isinstance(config, ModelConfig) else 64
        size = (side, side)
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    generator = torch.Generator().manual_seed(0)
    return torch.randn(1, 3, *size, generator=generator).to(device=device, dtype=dtype)


def find_conv_bn_pairs(
    model: nn.Module, probe_size: tuple[int, int] | None = None
) -> tuple[list[tuple[str, str]], list[str]]:
    """Conv -> BN pairs that can be folded, found by watching one forward pass.

    A pair qualifies when every call of the BN took, as its input, the output tensor of one
    call of the conv, and every call of that conv fed that BN (so a conv shared between levels
    with one BN per level does not qualify). Only ``nn.Conv2d`` (and subclasses such as timm's
    ``Conv2dSame``) with ``padding_mode="zeros"`` and BNs :func:`fold_batchnorms` knows how to
    remove are considered.

    Args:
        model: the network, called as ``model(Tensor[1, 3, H, W])``.
        probe_size: ``(H, W)`` of the probe input (default ``2 ** max_level`` square).

    Returns:
        ``(pairs, unfolded)``: ``(conv name, bn name)`` pairs in call order, and the names of
        the BNs that ran but do not qualify.
    """
    names = {m: n for n, m in model.named_modules()}
    outputs: dict[int, tuple[nn.Module, Tensor]] = {}  # keeps tensors alive: ids stay unique
    conv_calls: dict[nn.Module, int] = {}
    bn_sources: dict[nn.Module, list[nn.Module | None]] = {}

    def conv_hook(module: nn.Module, args: Any, output: Any) -> None:
        conv_calls[module] = conv_calls.get(module, 0) + 1
        if isinstance(output, Tensor):
            outputs[id(output)] = (module, output)

    def bn_hook(module: nn.Module, args: Any) -> None:
        source = outputs.get(id(args[0])) if args and isinstance(args[0], Tensor) else None
        bn_sources.setdefault(module, []).append(source[0] if source else None)

    handles = []
    for module in model.modules():
        if isinstance(module, nn.Conv2d) and module.padding_mode == "zeros":
            handles.append(module.register_forward_hook(conv_hook))
        elif isinstance(module, (nn.BatchNorm2d, nn.SyncBatchNorm)):
            handles.append(module.register_forward_pre_hook(bn_hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(_probe_input(model, probe_size))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()

    consumers: dict[nn.Module, set[nn.Module]] = {}
    for bn, sources in bn_sources.items():
        for conv in sources:
            if conv is not None:
                consumers.setdefault(conv, set()).add(bn)
    pairs, unfolded = [], []
    for bn, sources in bn_sources.items():
        conv = sources[0]
        ok = (
            conv is not None
            and all(s is conv for s in sources)
            and consumers[conv] == {bn}
            and conv_calls[conv] == len(sources)
            and _bn_replacement(cast(nn.BatchNorm2d, bn)) is not None
            and cast(nn.BatchNorm2d, bn).running_var is not None
        )
        if ok:
            pairs.append((names[cast(nn.Module, conv)], names[bn]))
        else:
            unfolded.append(names[bn])
    return pairs, unfolded


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    parent._modules[attr] = module


def fold_batchnorms(model: nn.Module, probe_size: tuple[int, int] | None = None) -> FoldReport:
    """Fold every foldable conv -> BN pair of ``model`` in place (see :func:`find_conv_bn_pairs`).

    The folded BNs are replaced by ``nn.Identity`` (timm ``BatchNormAct2d``: by its
    activation). Only valid for inference: the model no longer trains like the original.
    """
    pairs, unfolded = find_conv_bn_pairs(model, probe_size)
    for conv_name, bn_name in pairs:
        conv = cast(nn.Conv2d, model.get_submodule(conv_name))
        bn = cast(nn.BatchNorm2d, model.get_submodule(bn_name))
        replacement = _bn_replacement(bn)
        assert replacement is not None  # checked by find_conv_bn_pairs
        fold_conv_bn_(conv, bn)
        _set_submodule(model, bn_name, replacement)
    return FoldReport(folded=pairs, unfolded=unfolded)


class UnsharedHeadNet(nn.Module):
    """A :class:`~efficientdet.modeling.head.HeadNet` with its own copy of the repeated convs for each
    level, so that each level's BN can fold into its copy. Same inputs and outputs.

    ``convs[level][repeat]`` is the conv for a level, ``norms[level][repeat]`` its BN (an
    ``nn.Identity`` once folded); ``predict`` stays shared (it has no BN).
    """

    def __init__(self, head: HeadNet) -> None:
        super().__init__()
        num_levels = len(head.norms)
        self.convs = nn.ModuleList(
            nn.ModuleList(copy.deepcopy(conv) for conv in head.convs) for _ in range(num_levels)
        )
        self.norms = copy.deepcopy(head.norms)
        self.act = head.act
        self.predict = head.predict

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        outputs = []
        for x, convs, norms in zip(features, self.convs, self.norms, strict=True):
            for conv, norm in zip(
                cast(nn.ModuleList, convs), cast(nn.ModuleList, norms), strict=True
            ):
                x = self.act(norm(conv(x)))
            outputs.append(self.predict(x))
        return outputs


def _heads(model: nn.Module) -> Iterator[tuple[str, HeadNet]]:
    for name, module in model.named_modules():
        if isinstance(module, HeadNet):
            yield name, module


def unshare_heads(model: nn.Module) -> int:
    """Replace every ``HeadNet`` in ``model`` by an :class:`UnsharedHeadNet`, in place.

    Returns the number of heads replaced.
    """
    heads = list(_heads(model))
    for name, head in heads:
        _set_submodule(model, name, UnsharedHeadNet(head))
    return len(heads)


class InferenceModel(nn.Module):
    """An optimised network: optional channels-last input conversion, then ``net``.

    Keeps the wrapped network's ``config`` so :class:`~efficientdet.detection.detector.Detector` and the
    exporters take it like the original. ``forward(images: Tensor[B, 3, H, W])`` returns the
    per-level ``(class_outputs, box_outputs)`` of the original.
    """

    _compiled: nn.Module | None

    def __init__(self, net: nn.Module, *, channels_last: bool, compiled: nn.Module | None = None) -> None:
        super().__init__()
        self.net = net
        self.channels_last = channels_last
        # Held outside the module tree so state_dict() and parameters() are those of ``net``.
        object.__setattr__(self, "_compiled", compiled)

    @property
    def config(self) -> ModelConfig:
        config = getattr(self.net, "config", None)
        if not isinstance(config, ModelConfig):
            raise AttributeError("the wrapped network has no ModelConfig")
        return config

    def forward(self, images: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        runner = self._compiled if self._compiled is not None else self.net
        class_outputs, box_outputs = runner(images)
        return list(class_outputs), list(box_outputs)


def _max_difference(a: tuple[list[Tensor], list[Tensor]], b: tuple[list[Tensor], list[Tensor]]) -> float:
    worst = 0.0
    for x, y in zip([*a[0], *a[1]], [*b[0], *b[1]], strict=True):
        scale = CHECK_ATOL + CHECK_RTOL * float(y.abs().max())
        worst = max(worst, float((x.float() - y.float()).abs().max()) / scale)
    return worst


def optimize_for_inference(
    model: nn.Module,
    *,
    fold_bn: bool = True,
    unshare_head_convs: bool = True,
    channels_last: bool = True,
    compile: bool = False,
    check: bool = True,
    probe_size: tuple[int, int] | None = None,
) -> InferenceModel:
    """A faster copy of ``model`` for inference; ``model`` itself is not changed.

    Args:
        model: a network returning per-level ``(class_outputs, box_outputs)``, typically an
            :class:`~efficientdet.modeling.model.EfficientDet`. Its ``config`` carries over.
        fold_bn: fold BatchNorms into the convolutions before them.
        unshare_head_convs: give each level its own copy of the head convs so their per-level BNs
            fold too (only with ``fold_bn``).
        channels_last: NHWC weights and input (faster with oneDNN on CPU; see
            ``benchmarks/README.md``).
        compile: wrap the network in ``torch.compile`` (first calls are slow; needs a C++
            compiler on CPU).
        check: run both networks on a probe input and raise ``RuntimeError`` if any output
            differs by more than ``1e-3 * (1 + max |output|)``.
        probe_size: ``(H, W)`` of the probe input (default ``2 ** max_level`` square).

    Returns:
        An :class:`InferenceModel` in evaluation mode: ``forward(images: Tensor[B, 3, H, W])``
        gives the same ``(class_outputs, box_outputs)`` as ``model`` to float tolerance.
    """
    was_training = model.training
    net = copy.deepcopy(model).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    if fold_bn:
        if unshare_head_convs:
            unshare_heads(net)
        fold_batchnorms(net, probe_size)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    optimized = InferenceModel(net, channels_last=channels_last).eval()
    if check:  # before compiling: the probe size would cost a compilation of its own
        probe = _probe_input(model, probe_size)
        model.eval()
        try:
            with torch.no_grad():
                expected = model(probe)
                got = optimized(probe)
        finally:
            model.train(was_training)
        ratio = _max_difference(got, expected)
        if not math.isfinite(ratio) or ratio > 1.0:
            raise RuntimeError(
                f"the optimised network's outputs differ from the original's by {ratio:.2f}x the "
                "tolerance on a probe input; optimise with fold_bn=False, or report the model"
            )
    if compile:
        object.__setattr__(optimized, "_compiled", torch.compile(net))
    return optimized
