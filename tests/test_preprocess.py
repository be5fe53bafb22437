"""Tests for efficientdet.detection.transform: reading every kind of input, letterboxing, box mapping."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from efficientdet.detection.transform import (
    ImageReadError,
    LetterboxInfo,
    letterbox,
    load_image,
    preprocess_batch,
    scale_boxes_to_original,
)

EXIF_ORIENTATION = 0x0112
RED = (255, 0, 0)
BLUE = (0, 0, 255)


def _saved(tmp_path, image: Image.Image, name: str, **save_args):
    path = tmp_path / name
    image.save(path, **save_args)
    return path


# --- load_image: modes --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "value", "suffix", "expected"),
    [
        ("L", 128, ".png", (128, 128, 128)),
        ("1", 1, ".png", (255, 255, 255)),
        # LA/RGBA: alpha composited on black, rgb * alpha / 255 rounded.
        ("LA", (200, 128), ".png", (100, 100, 100)),
        ("RGBA", (255, 0, 0, 128), ".png", (128, 0, 0)),
        ("RGBA", (0, 255, 0, 0), ".png", (0, 0, 0)),
        ("CMYK", (0, 255, 255, 0), ".tif", (255, 0, 0)),
        ("RGB", (10, 20, 30), ".png", (10, 20, 30)),
    ],
)
def test_load_image_modes_from_files(tmp_path, mode, value, suffix, expected):
    path = _saved(tmp_path, Image.new(mode, (5, 3), value), f"img{suffix}")
    out = load_image(path)
    assert out.mode == "RGB"
    assert out.size == (5, 3)
    assert out.getpixel((2, 1)) == expected


def test_load_image_palette_with_and_without_transparency(tmp_path):
    palette = [0, 0, 0, 255, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 9)
    image = Image.new("P", (4, 2), 1)
    image.putpalette(palette)
    image.putpixel((3, 1), 2)
    plain = load_image(_saved(tmp_path, image, "p.png"))
    assert plain.getpixel((0, 0)) == RED
    assert plain.getpixel((3, 1)) == BLUE
    # Index 2 transparent: composited on black.
    transparent = load_image(_saved(tmp_path, image, "pt.png", transparency=2))
    assert transparent.getpixel((0, 0)) == RED
    assert transparent.getpixel((3, 1)) == (0, 0, 0)


def test_load_image_16_bit_maps_full_range(tmp_path):
    data = np.array([[0, 257 * 100, 65535]], dtype=np.uint16)
    image = Image.fromarray(data)
    assert image.mode == "I;16"
    out = load_image(_saved(tmp_path, image, "deep.png"))
    assert [out.getpixel((x, 0)) for x in range(3)] == [(0,) * 3, (100,) * 3, (255,) * 3]


def test_load_image_32_bit_int_and_float_modes():
    small = Image.fromarray(np.array([[0, 7, 255]], dtype=np.int32), "I")
    assert [load_image(small).getpixel((x, 0))[0] for x in range(3)] == [0, 7, 255]
    # Values outside 0..65535 are stretched min..max.
    wide = Image.fromarray(np.array([[-1000, 0, 1000]], dtype=np.int32), "I")
    assert [load_image(wide).getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]
    unit = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32), "F")
    assert [load_image(unit).getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]


def test_load_image_applies_exif_orientation(tmp_path):
    # 40 wide x 20 high, left half red. Orientation 6 means "rotate 90 degrees clockwise
    # to display": the result is 20 wide x 40 high with the red half on top.
    image = Image.new("RGB", (40, 20), BLUE)
    image.paste(RED, (0, 0, 20, 20))
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    path = _saved(tmp_path, image, "rotated.jpg", exif=exif, quality=95)
    out = load_image(path)
    assert out.size == (20, 40)
    top, bottom = out.getpixel((10, 5)), out.getpixel((10, 35))
    assert top[0] > 200 and top[2] < 60
    assert bottom[2] > 200 and bottom[0] < 60


def test_load_image_names_the_file_on_malformed_exif(tmp_path, monkeypatch):
    path = _saved(tmp_path, Image.new("RGB", (4, 4), RED), "odd_exif.jpg")

    def broken(image):  # what Pillow 11.0 raised on a malformed rational tag
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(ImageOps, "exif_transpose", broken)
    with pytest.raises(ImageReadError, match="odd_exif.jpg: unreadable EXIF orientation"):
        load_image(path)


def test_load_image_one_pixel(tmp_path):
    out = load_image(_saved(tmp_path, Image.new("RGB", (1, 1), (9, 8, 7)), "dot.png"))
    assert out.size == (1, 1)
    assert out.getpixel((0, 0)) == (9, 8, 7)


def test_load_image_animated_gif_gives_first_frame(tmp_path):
    frames = [Image.new("RGB", (6, 4), RED), Image.new("RGB", (6, 4), BLUE)]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    with Image.open(path) as check:
        assert check.n_frames == 2
    assert load_image(path).getpixel((3, 2)) == RED


def test_load_image_result_does_not_keep_file_open(tmp_path):
    path = _saved(tmp_path, Image.new("RGB", (4, 4), RED), "a.png")
    out = load_image(path)
    path.unlink()
    assert out.getpixel((0, 0)) == RED


# --- load_image: arrays, tensors, PIL ------------------------------------------------------


@pytest.mark.parametrize(
    ("array", "expected"),
    [
        (np.full((3, 5), 77, np.uint8), (77, 77, 77)),
        (np.full((3, 5, 1), 77, np.uint8), (77, 77, 77)),
        (np.tile(np.array([1, 2, 3], np.uint8), (3, 5, 1)), (1, 2, 3)),
        (np.tile(np.array([200, 100, 0, 255], np.uint8), (3, 5, 1)), (200, 100, 0)),
        (np.full((3, 5, 3), 65535, np.uint16), (255, 255, 255)),
        (np.full((3, 5, 3), 0.5, np.float32), (128, 128, 128)),
        (np.full((3, 5), 100.0, np.float64), (100, 100, 100)),
        (np.full((3, 5, 3), np.nan, np.float32), (0, 0, 0)),
        (np.ones((3, 5), bool), (255, 255, 255)),
    ],
)
def test_load_image_numpy(array, expected):
    out = load_image(array)
    assert out.mode == "RGB"
    assert out.size == (5, 3)
    assert out.getpixel((4, 2)) == expected


def test_load_image_tensors():
    chw = torch.zeros(3, 4, 6)
    chw[0] = 1.0
    out = load_image(chw)
    assert out.size == (6, 4)
    assert out.getpixel((0, 0)) == RED
    gray = load_image(torch.full((4, 6), 42, dtype=torch.uint8))
    assert gray.getpixel((5, 3)) == (42, 42, 42)
    half = load_image(torch.full((1, 2, 2), 0.25, dtype=torch.float16))
    assert half.getpixel((0, 0)) == (64, 64, 64)


def test_load_image_pil_is_copied_and_converted():
    rgba = Image.new("RGBA", (3, 3), (255, 255, 255, 255))
    out = load_image(rgba)
    assert out.mode == "RGB" and out.getpixel((1, 1)) == (255, 255, 255)
    rgb = Image.new("RGB", (3, 3), RED)
    copy = load_image(rgb)
    copy.putpixel((0, 0), BLUE)
    assert rgb.getpixel((0, 0)) == RED


@pytest.mark.parametrize(
    "bad",
    [np.zeros((2, 2, 2), np.uint8), np.zeros((2,), np.uint8), np.zeros((0, 4), np.uint8),
     torch.zeros(2, 4, 4), torch.zeros(1, 1, 4, 4)],
)
def test_load_image_rejects_non_image_arrays(bad):
    with pytest.raises(ImageReadError, match="shape"):
        load_image(bad)


def test_load_image_rejects_other_types():
    with pytest.raises(TypeError, match="int"):
        load_image(3)  # type: ignore[arg-type]


# --- load_image: broken files -------------------------------------------------------------


def test_missing_file(tmp_path):
    path = tmp_path / "nope.jpg"
    with pytest.raises(ImageReadError, match="nope.jpg: no such file") as info:
        load_image(path)
    assert info.value.source == str(path)
    assert info.value.reason == "no such file"


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(ImageReadError, match=r"empty\.png: file is empty"):
        load_image(path)


def test_not_an_image(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("these are not pixels\n" * 20)
    with pytest.raises(ImageReadError, match=r"notes\.jpg: not an image"):
        load_image(path)


def test_folder_is_not_an_image(tmp_path):
    with pytest.raises(ImageReadError, match="is a folder"):
        load_image(tmp_path)


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_truncated_file(tmp_path, suffix):
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    path = _saved(tmp_path, noise, f"cut{suffix}")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match=rf"cut\{suffix}: truncated or corrupt"):
        load_image(path)


def test_corrupt_png_data(tmp_path):
    rng = np.random.default_rng(1)
    noise = Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    path = _saved(tmp_path, noise, "bad.png")
    data = bytearray(path.read_bytes())
    # Keep the signature and header chunk, scramble the compressed pixel data.
    data[60:400] = rng.integers(0, 256, 340, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    with pytest.raises(ImageReadError, match=r"bad\.png"):
        load_image(path)


def test_decompression_bomb_limit(tmp_path, monkeypatch):
    path = _saved(tmp_path, Image.new("RGB", (30, 30)), "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(ImageReadError, match=r"huge\.png: image is too large.*MAX_IMAGE_PIXELS"):
        load_image(path)


def test_image_read_error_pickles():
    error = ImageReadError("a.jpg", "no such file")
    copy = pickle.loads(pickle.dumps(error))
    assert str(copy) == "a.jpg: no such file" and copy.reason == "no such file"
    assert isinstance(copy, ValueError)


# --- letterbox ------------------------------------------------------------------------------


def test_letterbox_non_square_scale_padding_and_normalisation():
    # 40 wide x 20 high into (H, W) = (48, 64): scale = min(48/20, 64/40) = 1.6, content
    # 64 wide x 32 high at the top, 16 rows of padding below.
    image = Image.new("RGB", (40, 20), (255, 128, 0))
    mean, std = (0.5, 0.25, 0.0), (0.5, 0.25, 1.0)
    tensor, info = letterbox(image, (48, 64), mean, std)
    assert tensor.shape == (3, 48, 64) and tensor.dtype == torch.float32
    assert info == LetterboxInfo(scale=1.6, original_size=(20, 40), input_size=(48, 64))
    assert info.resized_size == (32, 64)
    expected = [(255 / 255 - 0.5) / 0.5, (128 / 255 - 0.25) / 0.25, 0.0]
    for c in range(3):
        assert torch.allclose(tensor[c, :32, :], torch.tensor(expected[c]), atol=1e-5)
    # Padding is added after normalisation: exactly zero.
    assert torch.count_nonzero(tensor[:, 32:, :]) == 0


def test_letterbox_tall_image_pads_right():
    image = Image.new("RGB", (10, 30), (255, 255, 255))
    tensor, info = letterbox(image, (60, 60), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    assert info.scale == 2.0 and info.resized_size == (60, 20)
    assert torch.allclose(tensor[:, :, :20], torch.ones(3, 60, 20))
    assert torch.count_nonzero(tensor[:, :, 20:]) == 0


def test_letterbox_resize_matches_pil_bilinear():
    y, x = np.mgrid[0:96, 0:128]
    smooth = np.stack([x * 2, y * 2, (x + y)], -1).astype(np.uint8)
    image = Image.fromarray(smooth)
    tensor, _ = letterbox(image, (48, 64), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    reference = np.asarray(image.resize((64, 48), Image.Resampling.BILINEAR), np.float32) / 255
    ours = tensor.permute(1, 2, 0).numpy()
    assert np.abs(ours - reference).max() <= 1.5 / 255


def test_letterbox_one_pixel_and_grayscale():
    tensor, info = letterbox(Image.new("L", (1, 1), 51), (8, 8), (0.0,) * 3, (1.0,) * 3)
    assert info.scale == 8.0
    assert torch.allclose(tensor, torch.full((3, 8, 8), 0.2))


@pytest.mark.parametrize(
    ("size", "mean", "std"),
    [((0, 8), (0.0,) * 3, (1.0,) * 3), ((8, 8), (0.0,) * 2, (1.0,) * 3),
     ((8, 8), (0.0,) * 3, (1.0, 0.0, 1.0)), ((8.5, 8), (0.0,) * 3, (1.0,) * 3)],
)
def test_letterbox_rejects_bad_arguments(size, mean, std):
    with pytest.raises(ValueError):
        letterbox(Image.new("RGB", (4, 4)), size, mean, std)


def test_preprocess_batch_mixed_sources(tmp_path):
    path = _saved(tmp_path, Image.new("RGB", (20, 10), RED), "a.png")
    sources = [path, np.zeros((10, 10, 3), np.uint8), torch.ones(3, 5, 20)]
    batch, infos = preprocess_batch(sources, (16, 16), (0.0,) * 3, (1.0,) * 3)
    assert batch.shape == (3, 3, 16, 16)
    assert [i.original_size for i in infos] == [(10, 20), (10, 10), (5, 20)]
    assert [i.scale for i in infos] == [0.8, 1.6, 0.8]
    assert torch.allclose(batch[0, 0, :8, :], torch.ones(8, 16))
    empty, none = preprocess_batch([], (16, 16), (0.0,) * 3, (1.0,) * 3)
    assert empty.shape == (0, 3, 16, 16) and none == []


def test_preprocess_batch_raises_for_unreadable_source(tmp_path):
    with pytest.raises(ImageReadError, match="missing.png"):
        preprocess_batch([tmp_path / "missing.png"], (16, 16), (0.0,) * 3, (1.0,) * 3)


# --- scale_boxes_to_original ------------------------------------------------------------------


def test_scale_boxes_round_trip():
    info = LetterboxInfo(scale=0.4, original_size=(960, 1280), input_size=(512, 512))
    original = torch.tensor([[10.0, 20.0, 300.0, 400.0], [0.0, 0.0, 1280.0, 960.0]])
    in_input = original * info.scale
    back = scale_boxes_to_original(in_input, info)
    assert torch.allclose(back, original, atol=1e-4)


def test_scale_boxes_clips_to_original_image():
    info = LetterboxInfo(scale=2.0, original_size=(10, 20), input_size=(40, 40))
    boxes = torch.tensor([[-4.0, -2.0, 50.0, 39.0]])
    assert torch.equal(scale_boxes_to_original(boxes, info), torch.tensor([[0.0, 0.0, 20.0, 10.0]]))
    empty = scale_boxes_to_original(torch.zeros(0, 4, dtype=torch.int64), info)
    assert empty.shape == (0, 4) and empty.is_floating_point()
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        scale_boxes_to_original(torch.zeros(4), info)


def test_letterbox_then_scale_back_matches_original_box():
    # A white square in a 300x200 image, letterboxed to 128: find it in the input and map
    # its edges back.
    image = Image.new("RGB", (300, 200))
    image.paste((255, 255, 255), (60, 40, 180, 160))
    tensor, info = letterbox(image, (128, 128), (0.0,) * 3, (1.0,) * 3)
    mask = tensor[0] > 0.5
    ys, xs = torch.nonzero(mask, as_tuple=True)
    box = torch.tensor([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], dtype=torch.float32)
    back = scale_boxes_to_original(box, info)
    assert torch.allclose(back, torch.tensor([[60.0, 40.0, 180.0, 160.0]]), atol=1.0 / info.scale)
