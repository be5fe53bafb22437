"""Shared bad inputs for the robustness tests: an image corpus, tiny data and weights, the CLI.

Everything is generated here, nothing is downloaded. The corpus is written once per session;
tests that damage files work on copies.
"""

from __future__ import annotations

import io
import json
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from efficientdet.cli.main import main

# Pixels of the crafted decompression bomb: far above Pillow's limit (about 179 million
# pixels raises), while the file itself is a few dozen bytes.
BOMB_SIDE = 60_000


@dataclass
class ImageCorpus:
    """One folder with every kind of image file the tests feed to the library.

    Attributes:
        folder: where the files are.
        good: file name -> upright ``(width, height)`` that reading must give.
        bad: file name -> a fragment the error message must contain.
    """

    folder: Path
    good: dict[str, tuple[int, int]] = field(default_factory=dict)
    bad: dict[str, str] = field(default_factory=dict)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk with its length and CRC."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_bomb_png(path: Path, side: int = BOMB_SIDE) -> Path:
    """A valid PNG header announcing ``side x side`` RGB pixels, with almost no data."""
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    body = png_chunk(b"IHDR", header) + png_chunk(b"IDAT", zlib.compress(b"")) + png_chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return path


def _noise(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


def _exif_rotated_jpeg(path: Path) -> None:
    """A 40x20 JPEG tagged 'rotate 90 clockwise' (orientation 6): upright it is 20x40."""
    image = _noise(40, 20, seed=3)
    exif = image.getexif()
    exif[0x0112] = 6
    image.save(path, exif=exif.tobytes())


def _animated_gif(path: Path) -> None:
    frames = [Image.new("P", (24, 16), i * 40) for i in range(3)]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)


def _truncated(path: Path, image: Image.Image) -> None:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG" if path.suffix == ".png" else "JPEG")
    data = buffer.getvalue()
    path.write_bytes(data[: len(data) // 2])


def _scrambled_png(path: Path) -> None:
    buffer = io.BytesIO()
    _noise(32, 32, seed=4).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    # Keep the signature and the header chunk, overwrite the compressed pixels.
    data[60:400] = np.random.default_rng(5).integers(0, 256, 340, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))


def write_image_corpus(folder: Path) -> ImageCorpus:
    """Write the corpus of good and bad image files into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    corpus = ImageCorpus(folder)

    def good(name: str, image: Image.Image, upright: tuple[int, int] | None = None) -> None:
        image.save(folder / name)
        corpus.good[name] = upright or image.size

    good("rgb.jpg", _noise(48, 32, seed=1))
    good("gray.png", _noise(30, 20, seed=2).convert("L"))
    good("bilevel.bmp", _noise(30, 20, seed=2).convert("1"))
    good("palette.png", _noise(30, 20, seed=6).convert("P"))
    transparent = _noise(30, 20, seed=7).convert("P")
    transparent.info["transparency"] = 0
    good("palette_transparent.png", transparent)
    rgba = _noise(30, 20, seed=8).convert("RGBA")
    rgba.putalpha(128)
    good("rgba.png", rgba)
    good("gray_alpha.png", _noise(30, 20, seed=9).convert("LA"))
    good("cmyk.jpg", _noise(30, 20, seed=10).convert("CMYK"))
    good("sixteen_bit.png", Image.fromarray(np.full((20, 30), 40_000, dtype=np.uint16)))
    good("one_pixel.png", Image.new("RGB", (1, 1), (200, 10, 10)))
    _exif_rotated_jpeg(folder / "exif_rotated.jpg")
    corpus.good["exif_rotated.jpg"] = (20, 40)
    _animated_gif(folder / "animated.gif")
    corpus.good["animated.gif"] = (24, 16)

    _truncated(folder / "truncated.jpg", _noise(64, 64, seed=11))
    corpus.bad["truncated.jpg"] = "truncated or corrupt"
    _truncated(folder / "truncated.png", _noise(64, 64, seed=12))
    corpus.bad["truncated.png"] = "truncated or corrupt"
    _scrambled_png(folder / "scrambled.png")
    corpus.bad["scrambled.png"] = "corrupt"
    (folder / "zero_bytes.jpg").write_bytes(b"")
    corpus.bad["zero_bytes.jpg"] = "empty (0 bytes)"
    (folder / "notes.png").write_text("these are not pixels\n" * 10)
    corpus.bad["notes.png"] = "not an image"
    (folder / "page.jpg").write_text("<html><body>not a photo</body></html>\n")
    corpus.bad["page.jpg"] = "not an image"
    write_bomb_png(folder / "bomb.png")
    corpus.bad["bomb.png"] = "decompression-bomb"
    return corpus


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread: these tiny models are tens of times slower with two threads on a
    machine whose cores are busy with other work (the threads wait for each other)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def image_corpus(tmp_path_factory: pytest.TempPathFactory) -> ImageCorpus:
    """The corpus, written once; do not modify it (copy it instead)."""
    return write_image_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="session")
def robust_demo(tmp_path_factory: pytest.TempPathFactory):
    """Digit-scenes data: 16 training and 4 validation images of 128 px (COCO format)."""
    from efficientdet.data import write_demo_dataset

    return write_demo_dataset(
        tmp_path_factory.mktemp("robust_demo"), num_train=16, num_val=4, image_size=128
    )


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory, robust_demo) -> Path:
    """A trained-format checkpoint of the tiny model for the demo classes (random weights)."""
    import efficientdet as ed
    from efficientdet.data import load_dataset

    data = load_dataset(robust_demo.data_yaml, "train")
    model = ed.create_model("efficientdet_test", num_classes=data.num_classes)
    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    metadata = {"class_names": data.class_names, "label_to_category_id": data.label_to_category_id}
    return ed.save_checkpoint(model, path, metadata=metadata)


def coco_for_images(folder: Path, json_name: str = "annotations.json") -> Path:
    """A COCO file over every file in ``folder``: one category, one box per image.

    The size written is what the file's header says (before any EXIF rotation), or 64x64
    where there is no readable header, so the annotations are valid and only pixels are bad.
    """
    images, annotations = [], []
    for index, path in enumerate(sorted(p for p in folder.iterdir() if p.is_file()), start=1):
        try:
            with Image.open(path) as image:
                width, height = image.size
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
            width, height = 64, 64
        images.append({"id": index, "file_name": path.name, "width": width, "height": height})
        annotations.append({
            "id": index, "image_id": index, "category_id": 1,
            "bbox": [0, 0, width / 2, height / 2], "area": width * height / 4, "iscrowd": 0,
        })
    doc = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "thing"}]}
    out = folder / json_name
    out.write_text(json.dumps(doc))
    return out


@pytest.fixture
def coco_over() -> Callable[..., Path]:
    """``coco_over(folder)`` writes a COCO file annotating every file in ``folder``."""
    return coco_for_images


CliResult = tuple[int, str, str]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., CliResult]:
    """``cli("predict", ...)`` runs the command in this process: ``(exit status, stdout, stderr)``.

    argparse refusals (``SystemExit``) come back as their exit status, like a shell sees them.
    """

    def run(*argv: str | Path) -> CliResult:
        capsys.readouterr()
        try:
            status = main([str(a) for a in argv])
        except SystemExit as stop:
            status = stop.code if isinstance(stop.code, int) else 1
        out, err = capsys.readouterr()
        return status, out, err

    return run


TRAIN_BASE = (
    "model.name=efficientdet_test",
    "model.pretrained_backbone=false",
    "run.batch_size=2",
    "run.progress=false",
    "run.eval_every=0",
    "run.log_every=1",
    "data.num_workers=0",
    "optim.warmup_epochs=0",
)


def train_args(*overrides: str) -> list[str]:
    """``train --set ...`` arguments for a tiny CPU run, with ``overrides`` appended."""
    args = ["train"]
    for item in (*TRAIN_BASE, *overrides):
        args += ["--set", item]
    return args


@pytest.fixture
def train_argv() -> Callable[..., list[str]]:
    """``train_argv("data.train=...", ...)``: command-line words of a tiny training run."""
    return train_args


@pytest.fixture
def train_overrides() -> Callable[..., list[str]]:
    """``train_overrides("data.train=...", ...)``: the same run as ``--set`` values only."""

    def overrides(*extra: str) -> list[str]:
        return [*TRAIN_BASE, *extra]

    return overrides
