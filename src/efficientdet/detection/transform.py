"""Inference pre-processing: read anything image-like, letterbox it, map boxes back.

The pipeline is ``load_image`` (any source -> 8-bit RGB ``PIL.Image``) followed by
``letterbox`` (resize keeping aspect ratio, normalise, pad) and, after the detector ran,
``scale_boxes_to_original`` (input pixels -> original pixels).

Conversion policy of :func:`load_image`, the same for files, ``PIL`` images, arrays and
tensors:

* EXIF orientation is applied, so the image is upright as a viewer shows it.
* Animated image files (GIF, APNG, WebP, multi-page TIFF) give their first frame; a
  ``PIL.Image`` passed in gives the frame it is on (it is not seeked).
* Grayscale, bilevel, palette, CMYK (naive conversion, no ICC profile), YCbCr, LAB and HSV
  become RGB.
* Alpha is composited on black: ``rgb * alpha / 255``. Fully transparent pixels become
  black whatever colour they hide (dropping alpha would show those hidden colours, often
  garbage left by the editor that saved the file).
* 16-bit data (``uint16`` arrays, ``I;16`` images) maps its full range 0..65535 to 0..255;
  32-bit integer data in 0..255 is kept, in 0..65535 is treated as 16-bit, anything else is
  stretched from its minimum to its maximum.
* Floating-point data is taken to be in 0..1 when its maximum is at most 1, in 0..255
  otherwise; it is clipped to that range and NaN/inf become 0.
* Arrays are ``HxW``, ``HxWx1``, ``HxWx3`` (RGB, not BGR) or ``HxWx4`` (RGBA); tensors are
  ``[H,W]``, ``[1,H,W]``, ``[3,H,W]`` or ``[4,H,W]``, channels first, uint8 or float 0..1.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = [
    "ImageReadError",
    "ImageSource",
    "ImageTooLargeError",
    "LetterboxInfo",
    "letterbox",
    "load_image",
    "load_image_bytes",
    "preprocess_batch",
    "scale_boxes_to_original",
    "as_sources",
]

ImageSource = str | Path | Image.Image | np.ndarray | torch.Tensor

# What Pillow's decoders raise on damaged data besides ``OSError`` ("image file is
# truncated", "broken data stream"): the PNG and TIFF plugins raise SyntaxError, some
# header parsers struct.error, IndexError or EOFError, the zlib-backed ones zlib.error.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error, zlib.error)
# Reading EXIF tags has also raised these on malformed files (Pillow 8-11); the training
# side's twin is efficientdet.data.sample (the data package does not import this module).
_EXIF_ERRORS = (*_DECODE_ERRORS, KeyError, TypeError, ZeroDivisionError)

_UINT16_MAX = 65535


class ImageReadError(ValueError):
    """An input could not be turned into an RGB image; the message names it and says why.

    Attributes:
        source: the file name (or ``<numpy array>``, ``<tensor>``, ``<PIL image>``).
        reason: the problem, without the name.
    """

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason

    def __reduce__(self) -> tuple[type[ImageReadError], tuple[str, str]]:
        return type(self), (self.source, self.reason)


@dataclass
class LetterboxInfo:
    """How :func:`letterbox` placed an image in the network input.

    Attributes:
        scale: input pixels per original pixel (the same on both axes).
        original_size: ``(H, W)`` of the image before resizing.
        input_size: ``(H, W)`` of the padded network input.
    """

    scale: float
    original_size: tuple[int, int]
    input_size: tuple[int, int]

    def __post_init__(self) -> None:
        if not self.scale > 0:
            raise ValueError(f"letterbox scale must be positive, got {self.scale}")

    @property
    def resized_size(self) -> tuple[int, int]:
        """``(H, W)`` of the image content inside the input, the rest being padding."""
        return _resized_size(self.original_size, self.scale, self.input_size)


def _resized_size(
    original_size: tuple[int, int], scale: float, input_size: tuple[int, int]
) -> tuple[int, int]:
    h, w = original_size
    new_h = min(input_size[0], max(1, round(h * scale)))
    new_w = min(input_size[1], max(1, round(w * scale)))
    return new_h, new_w


def load_image(source: ImageSource) -> Image.Image:
    """Read ``source`` into an upright 8-bit RGB image; see the module docstring for the rules.

    Args:
        source: a path to an image file, a ``PIL.Image``, a numpy array ``[H,W]``,
            ``[H,W,1]``, ``[H,W,3]`` or ``[H,W,4]`` or a tensor ``[H,W]``, ``[1,H,W]``,
            ``[3,H,W]`` or ``[4,H,W]``.

    Returns:
        A new ``PIL.Image`` in mode ``RGB``, independent of any open file.

    Raises:
        ImageReadError: the file is missing, empty, not an image, truncated or corrupt, above
            Pillow's decompression-bomb limit, or the array has a shape that is not an image.
    """
    if isinstance(source, (str, Path)):
        return _load_file(Path(source))
    if isinstance(source, Image.Image):
        return _pil_to_rgb(_upright_frame(source, "<PIL image>"), "<PIL image>")
    if isinstance(source, torch.Tensor):
        return _tensor_to_rgb(source)
    if isinstance(source, np.ndarray):
        return _array_to_rgb(source, "<numpy array>")
    raise TypeError(
        f"cannot read an image from {type(source).__name__}; expected a path, PIL.Image, "
        "numpy array or torch.Tensor"
    )


def _load_file(path: Path) -> Image.Image:
    name = str(path)
    if not path.exists():
        raise ImageReadError(name, "no such file")
    if path.is_dir():
        raise ImageReadError(name, "is a folder, not an image file")
    try:
        if path.stat().st_size == 0:
            raise ImageReadError(name, "file is empty (0 bytes)")
    except PermissionError as e:
        raise ImageReadError(name, "cannot be read (permission denied)") from e
    return _decode(lambda: Image.open(path), name)


class ImageTooLargeError(ImageReadError):
    """An image with more pixels than the caller allows (found from its header, undecoded)."""


def load_image_bytes(
    data: bytes, name: str = "<bytes>", *, max_pixels: int | None = None
) -> Image.Image:
    """Decode an encoded image (an upload, say) into an upright 8-bit RGB image.

    The same rules as :func:`load_image` for a file, with ``name`` in the messages.

    Args:
        data: the file's bytes (JPEG, PNG, ... anything Pillow reads).
        name: what to call it in error messages.
        max_pixels: refuse images whose header says width x height is above this, before
            decoding them (:class:`ImageTooLargeError`).

    Returns:
        A new ``PIL.Image`` in mode ``RGB``, ``[H, W]`` as stored, turned upright.

    Raises:
        ImageTooLargeError: above ``max_pixels``.
        ImageReadError: empty, not an image, truncated or corrupt, above Pillow's
            decompression-bomb limit.
    """
    if not data:
        raise ImageReadError(name, "file is empty (0 bytes)")
    return _decode(lambda: Image.open(io.BytesIO(data)), name, max_pixels)


def _decode(
    opener: Callable[[], Image.Image], name: str, max_pixels: int | None = None
) -> Image.Image:
    try:
        with opener() as im:
            if max_pixels is not None and im.width * im.height > max_pixels:
                raise ImageTooLargeError(
                    name,
                    f"image is {im.width}x{im.height} = {im.width * im.height} pixels, above the "
                    f"limit of {max_pixels}",
                )
            # Image.open only reads the header; decoding every pixel is what finds a
            # truncated or damaged file.
            im.load()
            upright = _upright_frame(im, name)
            return _pil_to_rgb(upright, name)
    except ImageReadError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageReadError(
            name,
            f"image is too large for Pillow's decompression-bomb guard ({e}); if the file is "
            f"trusted, raise PIL.Image.MAX_IMAGE_PIXELS (now {Image.MAX_IMAGE_PIXELS})",
        ) from e
    except UnidentifiedImageError as e:
        raise ImageReadError(name, "not an image (format not recognised)") from e
    except PermissionError as e:
        raise ImageReadError(name, "cannot be read (permission denied)") from e
    except _DECODE_ERRORS as e:
        raise ImageReadError(name, f"truncated or corrupt image data ({e})") from e


def _upright_frame(im: Image.Image, name: str) -> Image.Image:
    """The current frame of ``im`` with its EXIF orientation applied (a new image).

    A freshly opened file is on its first frame, which is how animated files give frame 0.
    """
    try:
        upright = ImageOps.exif_transpose(im)
    except _EXIF_ERRORS as e:
        raise ImageReadError(name, f"unreadable EXIF orientation ({e})") from e
    return upright if upright is not None else im


def _pil_to_rgb(im: Image.Image, name: str) -> Image.Image:
    mode = im.mode
    if mode == "RGB":
        return im.copy()
    if mode in ("I", "I;16", "I;16L", "I;16B", "I;16N", "F"):
        return _array_to_rgb(np.asarray(im), name)
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        mode == "P" and "transparency" in im.info
    ):
        if mode == "La":
            im = im.convert("LA")
        return _composite_on_black(np.asarray(im.convert("RGBA")))
    try:
        return im.convert("RGB")
    except ValueError as e:
        raise ImageReadError(name, f"unsupported image mode {mode!r} ({e})") from e


def _composite_on_black(rgba: np.ndarray) -> Image.Image:
    """``[H,W,4]`` uint8 RGBA -> RGB image of ``rgb * alpha / 255`` (rounded)."""
    rgb = rgba[..., :3].astype(np.uint16)
    alpha = rgba[..., 3:4].astype(np.uint16)
    out = (rgb * alpha + 127) // 255
    return Image.fromarray(out.astype(np.uint8), "RGB")


def _to_uint8(data: np.ndarray, name: str) -> np.ndarray:
    """Any real-valued array -> uint8 of the same shape, by the rules in the module docstring."""
    if data.dtype.byteorder not in ("=", "|"):
        data = data.astype(data.dtype.newbyteorder("="))
    if data.dtype == np.uint8:
        return data
    if data.dtype == np.bool_:
        return data.astype(np.uint8) * 255
    if data.dtype == np.uint16:
        return ((data.astype(np.uint32) * 255 + _UINT16_MAX // 2) // _UINT16_MAX).astype(np.uint8)
    if np.issubdtype(data.dtype, np.integer):
        if data.size == 0:
            return data.astype(np.uint8)
        lo, hi = int(data.min()), int(data.max())
        if lo >= 0 and hi <= 255:
            return data.astype(np.uint8)
        if lo >= 0 and hi <= _UINT16_MAX:
            return _to_uint8(data.astype(np.uint16), name)
        stretched = (data.astype(np.float64) - lo) / max(hi - lo, 1)
        return np.round(stretched * 255).astype(np.uint8)
    if np.issubdtype(data.dtype, np.floating):
        values = np.nan_to_num(data.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        top = 1.0 if values.size == 0 or float(values.max()) <= 1.0 else 255.0
        return np.round(np.clip(values, 0.0, top) * (255.0 / top)).astype(np.uint8)
    raise ImageReadError(name, f"cannot make an image from an array of dtype {data.dtype}")


def _array_to_rgb(data: np.ndarray, name: str) -> Image.Image:
    """``[H,W]``, ``[H,W,1]``, ``[H,W,3]`` or ``[H,W,4]`` array -> RGB image."""
    if data.ndim == 3 and data.shape[2] == 1:
        data = data[..., 0]
    if not (data.ndim == 2 or (data.ndim == 3 and data.shape[2] in (3, 4))):
        raise ImageReadError(
            name,
            f"array of shape {tuple(data.shape)} is not an image; expected HxW, "
            "HxWx1, HxWx3 or HxWx4"
        )
    if data.shape[0] == 0 or data.shape[1] == 0:
        raise ImageReadError(name, f"array of shape {tuple(data.shape)} has no pixels")
    pixels = np.ascontiguousarray(_to_uint8(data, name))
    if pixels.ndim == 2:
        return Image.fromarray(np.repeat(pixels[..., None], 3, axis=2), "RGB")
    if pixels.shape[2] == 4:
        return _composite_on_black(pixels)
    return Image.fromarray(pixels, "RGB")


def _tensor_to_rgb(tensor: torch.Tensor) -> Image.Image:
    """``[H,W]`` or ``[C,H,W]`` tensor (C in 1, 3, 4; uint8 or float 0..1) -> RGB image."""
    data = tensor.detach().cpu()
    if data.is_floating_point() and data.dtype != torch.float64:
        data = data.float()
    if data.ndim == 3:
        if data.shape[0] not in (1, 3, 4):
            raise ImageReadError(
                "<tensor>",
                f"tensor of shape {tuple(tensor.shape)} is not an image; expected "
                "[H,W] or [C,H,W] with C in 1, 3, 4 (channels first)"
            )
        data = data.permute(1, 2, 0)
    elif data.ndim != 2:
        raise ImageReadError(
            "<tensor>",
            f"tensor of shape {tuple(tensor.shape)} is not an image; expected [H,W] "
            "or [C,H,W]"
        )
    return _array_to_rgb(data.numpy(), "<tensor>")


def _check_size(size: tuple[int, int]) -> tuple[int, int]:
    if len(size) != 2 or any(int(s) != s or s < 1 for s in size):
        raise ValueError(f"size must be two positive integers (H, W), got {size!r}")
    return int(size[0]), int(size[1])


def _norm_constants(
    mean: Sequence[float], std: Sequence[float]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel ``(a, b)`` with ``x * a - b == (x / 255 - mean) / std``, each ``[3,1,1]``."""
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"mean and std need three values (R, G, B), got {mean!r} and {std!r}")
    if min(std) <= 0:
        raise ValueError(f"std values must be positive, got {std!r}")
    mean_t = torch.tensor(mean, dtype=torch.float64).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float64).view(3, 1, 1)
    return (1.0 / (255.0 * std_t)).float(), (mean_t / std_t).float()


def letterbox(
    image: Image.Image,
    size: tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
) -> tuple[torch.Tensor, LetterboxInfo]:
    """Fit ``image`` into ``size`` keeping its aspect ratio, normalise, pad right and bottom.

    The scale is ``min(H / h, W / w)``; the resized image sits at the top-left corner, so a
    box maps back by dividing by the scale alone. Resizing is bilinear with antialiasing,
    done by ``torch.nn.functional.interpolate`` on uint8 (about 3x faster than
    ``PIL.Image.resize`` for a 1280x960 photo to 512 on one CPU core). Pixels are normalised
    as ``(x / 255 - mean) / std``; the padding is added after normalisation, so it is 0 in
    the returned tensor (the dataset mean colour, not black).

    Args:
        image: an image; any mode other than RGB is converted as :func:`load_image` would.
        size: ``(H, W)`` of the network input.
        mean: per-channel mean in 0..1 units (e.g. ImageNet ``(0.485, 0.456, 0.406)``).
        std: per-channel standard deviation in 0..1 units.

    Returns:
        ``Tensor[3, H, W]`` float32 and the :class:`LetterboxInfo` to map boxes back.
    """
    input_h, input_w = _check_size(size)
    scale_a, scale_b = _norm_constants(mean, std)
    if image.mode != "RGB":
        image = _pil_to_rgb(image, "<PIL image>")
    h, w = image.height, image.width
    if h < 1 or w < 1:
        raise ValueError(f"cannot letterbox an empty image of size {w}x{h}")
    scale = min(input_h / h, input_w / w)
    new_h, new_w = _resized_size((h, w), scale, (input_h, input_w))

    pixels = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)
    if (new_h, new_w) != (h, w):
        pixels = F.interpolate(
            pixels.unsqueeze(0), size=(new_h, new_w), mode="bilinear", antialias=True,
            align_corners=False,
        )[0]
    out = torch.zeros(3, input_h, input_w, dtype=torch.float32)
    content = out[:, :new_h, :new_w]
    content.copy_(pixels)
    content.mul_(scale_a).sub_(scale_b)
    return out, LetterboxInfo(scale=scale, original_size=(h, w), input_size=(input_h, input_w))


def as_sources(images: ImageSource | Sequence[ImageSource]) -> list[ImageSource]:
    """One image source, a list or tuple of them, or a ``Tensor[B, C, H, W]`` batch, as a list
    of single sources (what ``predict`` methods accept)."""
    if isinstance(images, (list, tuple)):
        return list(images)
    if isinstance(images, torch.Tensor) and images.dim() == 4:
        return list(images.unbind(0))
    return [images]  # type: ignore[list-item]


def preprocess_batch(
    sources: Sequence[ImageSource],
    size: tuple[int, int],
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
) -> tuple[torch.Tensor, list[LetterboxInfo]]:
    """Load and letterbox every source into one batch.

    Args:
        sources: anything :func:`load_image` accepts, one per batch element.
        size: ``(H, W)`` of the network input.
        mean: per-channel mean in 0..1 units.
        std: per-channel standard deviation in 0..1 units.

    Returns:
        ``Tensor[B, 3, H, W]`` float32 (``B = len(sources)``, may be 0) and one
        :class:`LetterboxInfo` per image.

    Raises:
        ImageReadError: from :func:`load_image`, for the first source that cannot be read.
    """
    input_h, input_w = _check_size(size)
    batch = torch.zeros(len(sources), 3, input_h, input_w, dtype=torch.float32)
    infos = []
    for i, source in enumerate(sources):
        batch[i], info = letterbox(load_image(source), (input_h, input_w), mean, std)
        infos.append(info)
    return batch, infos


def scale_boxes_to_original(boxes: torch.Tensor, info: LetterboxInfo) -> torch.Tensor:
    """Map boxes from network-input pixels back to the original image.

    Args:
        boxes: ``Tensor[N, 4]`` xyxy in input pixels.
        info: what :func:`letterbox` returned for that image.

    Returns:
        ``Tensor[N, 4]`` xyxy in original pixels (floating point), divided by the scale and
        clipped to ``[0, W] x [0, H]`` of the original image.
    """
    if boxes.ndim != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must be Tensor[N, 4] xyxy, got shape {tuple(boxes.shape)}")
    if not boxes.is_floating_point():
        boxes = boxes.float()
    h, w = info.original_size
    out = boxes / info.scale
    out[:, 0::2] = out[:, 0::2].clamp(0, w)
    out[:, 1::2] = out[:, 1::2].clamp(0, h)
    return out
