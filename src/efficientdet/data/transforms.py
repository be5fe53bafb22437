"""Training augmentation (the official recipe) and the evaluation letterbox.

Evaluation goes through :func:`efficientdet.detection.transform.letterbox`, the one letterbox
that ``predict``, ``Detector.predict`` and the ONNX backend use, so ``eval`` measures exactly
what they detect. Training's augmentation does the same four steps with random parameters, on
torchvision ``tv_tensors`` so pixels and boxes move together:

1. optional horizontal flip;
2. resize by one factor ``scale`` keeping the aspect ratio. Evaluation: the letterbox factor
   ``min(H / h, W / w)``. Training (scale jitter): ``min(H * s / h, W * s / w)`` with ``s``
   uniform in ``scale_range`` (official: 0.1-2.0);
3. crop a window of the input size ``H x W`` at ``offset`` (training: uniform over the part
   of the resized image that does not fit; evaluation: ``(0, 0)``), padding on the right and
   bottom where the resized image is smaller, so the image sits at the top-left;
4. normalise with ``mean``/``std`` (on 0..1 pixel values). The padding is 0 after
   normalisation, i.e. the mean colour.

Training can also jitter the colours of the cropped pixels before step 4 (``hsv``, off by
default as in the official recipe; the ultralytics-style hue, saturation and value jitter):
a hue shift, a saturation factor and a brightness factor, each drawn uniformly per image.

Boxes are clipped to the visible image and dropped when narrower or shorter than
``min_size`` pixels afterwards (this drops boxes wholly outside the crop). Evaluation's boxes
map back to original pixels with
:func:`efficientdet.detection.transform.scale_boxes_to_original` (``b / scale``, clipped).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from ..config import IMAGENET_MEAN, IMAGENET_STD
from ..detection.transform import LetterboxInfo, letterbox, scale_boxes_to_original


def as_size(size: int | Sequence[int]) -> tuple[int, int]:
    """``(H, W)`` from an int (square) or a pair."""
    if isinstance(size, int):
        pair = (size, size)
    else:
        if len(size) != 2:
            raise ValueError(f"input size must be an int or (height, width), got {size!r}")
        pair = (int(size[0]), int(size[1]))
    if min(pair) <= 0:
        raise ValueError(f"input size must be positive, got {pair}")
    return pair


@dataclass(frozen=True)
class TransformOutput:
    """What a transform returns for one image.

    Attributes:
        image: ``Tensor[3, H, W]`` float32, normalised.
        boxes: ``Tensor[N, 4]`` float32 xyxy in network-input pixels.
        labels: ``Tensor[N]`` int64.
        indices: ``Tensor[N]`` int64, position of each kept box in the input boxes.
        scale: network pixels per original pixel.
        offset: ``(x, y)`` of the crop window in the resized image (0, 0 for evaluation).
        flipped: whether the image was mirrored left-right.
        original_size: ``(h, w)`` of the input image.
    """

    image: Tensor
    boxes: Tensor
    labels: Tensor
    indices: Tensor
    scale: float
    offset: tuple[int, int]
    flipped: bool
    original_size: tuple[int, int]


def augmented_to_original(boxes: Tensor, out: TransformOutput) -> Tensor:
    """Undo one transform's geometry on ``Tensor[N, 4]`` xyxy boxes in its network pixels: add
    the crop offset back, then :func:`~efficientdet.detection.transform.scale_boxes_to_original`
    (divide by the scale, clip), then mirror if the image was flipped."""
    shift = boxes.new_tensor([out.offset[0], out.offset[1], out.offset[0], out.offset[1]])
    info = LetterboxInfo(out.scale, out.original_size, (int(out.image.shape[-2]), int(out.image.shape[-1])))
    back = scale_boxes_to_original(boxes + shift, info)
    if out.flipped:
        width = out.original_size[1]
        back = torch.stack([width - back[:, 2], back[:, 1], width - back[:, 0], back[:, 3]], dim=1)
    return back


class _ResizeCropPad:
    """Flip, resize, crop/pad and normalise with given parameters (shared by both transforms)."""

    def __init__(
        self,
        input_size: int | Sequence[int],
        *,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        min_size: float = 1.0,
    ) -> None:
        self.input_size = as_size(input_size)
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"mean and std need 3 values with std > 0, got {mean}, {std}")
        self.mean = [float(m) for m in mean]
        self.std = [float(s) for s in std]
        self.min_size = float(min_size)

    def letterbox_scale(self, size: tuple[int, int]) -> float:
        """The factor that fits an ``(h, w)`` image inside the input size."""
        return min(self.input_size[0] / size[0], self.input_size[1] / size[1])

    def apply(
        self,
        image: Image.Image | Tensor,
        boxes: Tensor,
        labels: Tensor,
        *,
        scale: float,
        offset: tuple[int, int],
        flip: bool,
        colour: tuple[float, float, float] | None = None,
    ) -> TransformOutput:
        """Run the four steps with fixed parameters; ``offset`` is ``(x, y)``; ``colour``:
        ``(hue shift in turns, saturation factor, brightness factor)`` applied after the crop."""
        pixels = F.pil_to_tensor(image) if isinstance(image, Image.Image) else image
        if pixels.ndim != 3 or pixels.shape[0] != 3:
            raise ValueError(f"expected an RGB image [3, h, w], got shape {tuple(pixels.shape)}")
        h, w = int(pixels.shape[-2]), int(pixels.shape[-1])
        img = tv_tensors.Image(pixels)
        bb = tv_tensors.BoundingBoxes(
            boxes.reshape(-1, 4).to(torch.float32), format="XYXY", canvas_size=(h, w)
        )
        if flip:
            img, bb = F.horizontal_flip(img), F.horizontal_flip(bb)
        new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
        if (new_h, new_w) != (h, w):
            img = F.resize(img, [new_h, new_w], antialias=True)
            bb = F.resize(bb, [new_h, new_w])
        out_h, out_w = self.input_size
        left, top = offset
        # Crop first (only the output is normalised); the crop pads right/bottom.
        img = F.crop(img, top, left, out_h, out_w)
        bb = F.crop(bb, top, left, out_h, out_w)
        if colour is not None:
            hue, saturation, value = colour
            img = F.adjust_brightness(F.adjust_saturation(F.adjust_hue(img, hue), saturation), value)
        img = F.normalize(F.to_dtype(img, torch.float32, scale=True), self.mean, self.std)
        visible_w, visible_h = min(out_w, new_w - left), min(out_h, new_h - top)
        img[:, visible_h:, :] = 0.0  # padding = the mean colour
        img[:, :, visible_w:] = 0.0
        # Clip boxes to the visible image, not to the padding.
        limits = torch.tensor([visible_w, visible_h, visible_w, visible_h], dtype=torch.float32)
        xyxy = torch.minimum(bb.as_subclass(Tensor).clamp(min=0.0), limits)
        sizes = xyxy[:, 2:] - xyxy[:, :2]
        keep = (sizes >= self.min_size).all(dim=1)
        indices = torch.nonzero(keep).reshape(-1)
        return TransformOutput(
            image=img.as_subclass(Tensor).contiguous(),
            boxes=xyxy[keep],
            labels=labels.reshape(-1)[keep].to(torch.int64),
            indices=indices,
            scale=float(scale),
            offset=(int(left), int(top)),
            flipped=bool(flip),
            original_size=(h, w),
        )


class EvalTransform(_ResizeCropPad):
    """Letterbox: fit the longer side, image at the top-left, pad right/bottom, normalise.

    Args:
        input_size: ``H`` (square) or ``(H, W)`` of the network input.
        mean, std: per-channel normalisation on 0..1 pixel values.
        min_size: boxes narrower or shorter than this after resizing are dropped.
    """

    def __call__(
        self,
        image: Image.Image | Tensor,
        boxes: Tensor,
        labels: Tensor,
        generator: torch.Generator | None = None,
    ) -> TransformOutput:
        """Transform a PIL image or ``Tensor[3, h, w]`` uint8 with ``boxes`` ``Tensor[N, 4]``.

        ``generator`` is accepted for a common signature and unused.
        """
        if isinstance(image, Tensor):
            if image.ndim != 3 or image.shape[0] != 3:
                raise ValueError(f"expected an RGB image [3, h, w], got shape {tuple(image.shape)}")
            picture = F.to_pil_image(image)
        else:
            picture = image
        pixels, info = letterbox(picture, self.input_size, self.mean, self.std)
        visible_h, visible_w = info.resized_size
        limits = torch.tensor([visible_w, visible_h, visible_w, visible_h], dtype=torch.float32)
        # Boxes follow the pixels: each axis was resized to a whole number of pixels.
        height, width = info.original_size
        sx, sy = visible_w / width, visible_h / height
        scaled = boxes.reshape(-1, 4).to(torch.float32) * torch.tensor([sx, sy, sx, sy])
        xyxy = torch.minimum(scaled.clamp(min=0.0), limits)
        keep = ((xyxy[:, 2:] - xyxy[:, :2]) >= self.min_size).all(dim=1)
        return TransformOutput(
            image=pixels,
            boxes=xyxy[keep],
            labels=labels.reshape(-1)[keep].to(torch.int64),
            indices=torch.nonzero(keep).reshape(-1),
            scale=float(info.scale),
            offset=(0, 0),
            flipped=False,
            original_size=info.original_size,
        )


class TrainTransform(_ResizeCropPad):
    """The official augmentation: flip, scale jitter, random crop/pad to the input size.

    Args:
        input_size: ``H`` (square) or ``(H, W)`` of the network input.
        mean, std: per-channel normalisation on 0..1 pixel values.
        hflip_prob: probability of a left-right flip (0 switches it off).
        scale_range: ``(low, high)`` of the jitter factor ``s``; ``(1.0, 1.0)`` switches
            jitter off, which with no flip gives exactly the evaluation letterbox.
        min_size: boxes narrower or shorter than this after cropping are dropped.
        hsv: ``(h, s, v)`` colour jitter: a hue shift uniform in ``[-h, h]`` turns of the
            colour wheel, saturation and brightness factors uniform in ``[1 - s, 1 + s]`` and
            ``[1 - v, 1 + v]``; ``(0, 0, 0)`` (the default) switches it off and draws nothing.
    """

    def __init__(
        self,
        input_size: int | Sequence[int],
        *,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        hflip_prob: float = 0.5,
        scale_range: tuple[float, float] = (0.1, 2.0),
        min_size: float = 1.0,
        hsv: tuple[float, float, float] = (0.0, 0.0, 0.0),
    ) -> None:
        super().__init__(input_size, mean=mean, std=std, min_size=min_size)
        if not 0.0 <= hflip_prob <= 1.0:
            raise ValueError(f"hflip_prob must be in [0, 1], got {hflip_prob}")
        h, s, v = (float(x) for x in hsv)
        if not hsv_in_range((h, s, v)):
            raise ValueError(f"hsv must be (h, s, v) with h in [0, 0.5], s and v in [0, 1], got {hsv}")
        self.hsv = (h, s, v)
        low, high = scale_range
        if not 0.0 < low <= high:
            raise ValueError(f"scale_range must satisfy 0 < low <= high, got {scale_range}")
        self.hflip_prob = float(hflip_prob)
        self.scale_range = (float(low), float(high))

    def __call__(
        self,
        image: Image.Image | Tensor,
        boxes: Tensor,
        labels: Tensor,
        generator: torch.Generator | None = None,
    ) -> TransformOutput:
        """Augment a PIL image or ``Tensor[3, h, w]`` uint8 with ``boxes`` ``Tensor[N, 4]``.

        Randomness comes from ``generator`` (the global torch RNG when None).
        """
        size = (image.height, image.width) if isinstance(image, Image.Image) else image.shape[-2:]
        h, w = int(size[0]), int(size[1])
        draws = torch.rand(4, generator=generator).tolist()
        flip = draws[0] < self.hflip_prob
        low, high = self.scale_range
        jitter = low + (high - low) * draws[1]
        out_h, out_w = self.input_size
        scale = min(out_h * jitter / h, out_w * jitter / w)
        new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
        left = int(draws[2] * max(0, new_w - out_w))
        top = int(draws[3] * max(0, new_h - out_h))
        colour = None
        if any(self.hsv):  # drawn after the geometry's, so its draws stay as they were
            u = (2 * torch.rand(3, generator=generator) - 1).tolist()
            hue, sat, val = self.hsv
            colour = (hue * u[0], 1.0 + sat * u[1], 1.0 + val * u[2])
        return self.apply(image, boxes, labels, scale=scale, offset=(left, top), flip=flip, colour=colour)


def hsv_in_range(hsv: tuple[float, float, float]) -> bool:
    """Whether colour jitter ``(h, s, v)`` is one :class:`TrainTransform` takes: ``h`` in
    ``[0, 0.5]`` turns, ``s`` and ``v`` in ``[0, 1]``."""
    h, s, v = hsv
    return 0.0 <= h <= 0.5 and 0.0 <= s <= 1.0 and 0.0 <= v <= 1.0


def build_transform(
    input_size: int | Sequence[int],
    *,
    train: bool,
    augment: bool = True,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    hflip_prob: float = 0.5,
    scale_range: tuple[float, float] = (0.1, 2.0),
    min_size: float = 1.0,
    hsv: tuple[float, float, float] = (0.0, 0.0, 0.0),
) -> EvalTransform | TrainTransform:
    """The training transform when ``train and augment``, else the evaluation letterbox."""
    if train and augment:
        return TrainTransform(
            input_size,
            mean=mean,
            std=std,
            hflip_prob=hflip_prob,
            scale_range=scale_range,
            min_size=min_size,
            hsv=hsv,
        )
    return EvalTransform(input_size, mean=mean, std=std, min_size=min_size)
