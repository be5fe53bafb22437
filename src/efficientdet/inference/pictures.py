"""The annotated pictures of a prediction run: names that never collide, boxes drawn, saved.

:class:`OutputNames` hands out file names in the output folder (``x.jpg``, ``x_1.jpg``, ...);
:class:`PictureWriter` draws the confident detections on an image
(:func:`~efficientdet.inference.visualize.draw_detections`) and saves it as ``.png`` for
lossless inputs (PNG, BMP, GIF, TIFF, PNM) and ``.jpg`` otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from .predictor import Detection
from .visualize import ClassNames, draw_detections

__all__ = ["JPEG_QUALITY", "LOSSLESS_EXTENSIONS", "OutputNames", "PictureWriter", "picture_suffix"]

LOSSLESS_EXTENSIONS = frozenset(
    {".png", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm", ".pbm", ".pnm"}
)
JPEG_QUALITY = 90


class OutputNames:
    """Hands out file names in the output folder, never the same one twice (case-blind).

    Args:
        reserved: names already taken (the run's own files, a resumed run's pictures).
    """

    def __init__(self, reserved: Sequence[str]) -> None:
        self._used = {name.lower() for name in reserved}

    def claim(self, stem: str, suffix: str) -> str:
        """``stem + suffix``, or ``stem_1 + suffix``, ``stem_2 + suffix``, ... if taken."""
        name = f"{stem}{suffix}"
        index = 0
        while name.lower() in self._used:
            index += 1
            name = f"{stem}_{index}{suffix}"
        self._used.add(name.lower())
        return name


def picture_suffix(path: Path) -> str:
    """``.png`` for a lossless input format, ``.jpg`` for the others."""
    return ".png" if path.suffix.lower() in LOSSLESS_EXTENSIONS else ".jpg"


class PictureWriter:
    """Draws detections and writes annotated pictures into ``out_dir``.

    Args:
        out_dir: the output folder.
        names: where the file names come from.
        class_names: names by label, for the tags.
        score_threshold: only detections scoring at least this are drawn.
    """

    def __init__(
        self, out_dir: Path, names: OutputNames, class_names: ClassNames | None,
        score_threshold: float,
    ) -> None:
        self.out_dir = out_dir
        self.names = names
        self.class_names = class_names
        self.score_threshold = score_threshold

    def annotate(self, image: Image.Image, detection: Detection) -> Image.Image:
        """A copy of ``image`` with the boxes of ``detection`` (image pixels) drawn."""
        return draw_detections(
            image, detection["boxes"], detection["scores"], detection["labels"],
            self.class_names, self.score_threshold,
        )

    def path_for(self, source: Path, suffix: str | None = None) -> Path:
        """A fresh path in ``out_dir`` after ``source``'s stem, ending in ``suffix`` (default
        :func:`picture_suffix`)."""
        ending = suffix if suffix is not None else picture_suffix(source)
        return self.out_dir / self.names.claim(source.stem, ending)

    def write(self, path: Path, image: Image.Image, detection: Detection) -> None:
        """Write ``image`` with ``detection`` drawn to ``path``.

        Raises:
            OSError: the file could not be written.
        """
        self.save(path, self.annotate(image, detection))

    def save(self, path: Path, picture: Image.Image) -> None:
        """Write an annotated ``picture`` to ``path``.

        Raises:
            OSError: the file could not be written.
        """
        picture.save(path, quality=JPEG_QUALITY)
