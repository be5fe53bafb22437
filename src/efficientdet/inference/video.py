"""Video in and out for prediction, through PyAV (``pip install av``).

:class:`VideoFrames` decodes a video's first stream into upright RGB frames and keeps the
decoding error that stopped it early, if any; :class:`VideoWriter` encodes annotated frames to
H.264 (MPEG-4 Part 2 where libx264 is missing) in an ``.mp4``.
"""

from __future__ import annotations

from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

from PIL import Image

__all__ = [
    "DEFAULT_FRAME_RATE", "VideoFrames", "VideoWriter", "frame_rate", "import_av", "upright_frame",
]

DEFAULT_FRAME_RATE = Fraction(25)


def import_av() -> Any:
    """The ``av`` module; ``ImportError`` saying how to install it when it is missing."""
    try:
        import av
    except ImportError as e:
        raise ImportError(
            "reading and writing video needs PyAV, which is not installed: pip install av"
        ) from e
    return av


def upright_frame(frame: Any) -> Image.Image:
    """Decoded PyAV frame -> RGB image turned as its display matrix says."""
    image = frame.to_image()
    rotation = int(getattr(frame, "rotation", 0) or 0) % 360
    transposes = {
        90: Image.Transpose.ROTATE_90,
        180: Image.Transpose.ROTATE_180,
        270: Image.Transpose.ROTATE_270,
    }
    if rotation in transposes:
        image = image.transpose(transposes[rotation])
    elif rotation:
        image = image.rotate(rotation, expand=True)
    return image


def _even_size(image: Image.Image) -> Image.Image:
    """Pad to even width and height on the right/bottom; H.264 in yuv420p needs them."""
    width, height = image.width + image.width % 2, image.height + image.height % 2
    if (width, height) == image.size:
        return image
    padded = Image.new("RGB", (width, height))
    padded.paste(image, (0, 0))
    return padded


def frame_rate(stream: Any) -> Fraction:
    """A video stream's frame rate, :data:`DEFAULT_FRAME_RATE` where it has none."""
    rate = stream.average_rate or stream.guessed_rate
    if not rate or rate <= 0:
        return DEFAULT_FRAME_RATE
    return Fraction(rate).limit_denominator(1001)


class VideoFrames:
    """The upright RGB frames of ``stream`` in ``container``, in order.

    Iterating stops at the end of the stream or at the first decoding error, which is kept
    in :attr:`error` (the frames before it are given).
    """

    def __init__(self, av: Any, container: Any, stream: Any) -> None:
        self._av = av
        self._container = container
        self._stream = stream
        self.error: str | None = None

    def __iter__(self) -> Iterator[Image.Image]:
        frames = self._container.decode(self._stream)
        while True:
            try:
                frame = next(frames)
            except StopIteration:
                return
            except (self._av.FFmpegError, OSError) as e:
                self.error = str(e)
                return
            yield upright_frame(frame)


class VideoWriter:
    """Encodes RGB frames to H.264 (MPEG-4 Part 2 where libx264 is missing) in an .mp4.

    Args:
        av: the ``av`` module.
        path: the file to write.
        rate: frames per second.
    """

    def __init__(self, av: Any, path: Path, rate: Fraction) -> None:
        self._av = av
        self._container = av.open(str(path), "w")
        self._rate = rate
        self._stream: Any = None
        self._index = 0

    def write(self, image: Image.Image, time: float | None = None) -> None:
        """Encode the next frame (padded to even sides; resized to the first frame's size).

        Args:
            image: the frame.
            time: when it shows, in seconds from the first frame (live streams, whose taken
                frames are not evenly spaced); None: one frame after the last.
        """
        image = _even_size(image)
        if self._stream is None:
            codec = "libx264" if "libx264" in self._av.codecs_available else "mpeg4"
            self._stream = self._container.add_stream(codec, rate=self._rate)
            self._stream.width, self._stream.height = image.size
            self._stream.pix_fmt = "yuv420p"
        elif image.size != (self._stream.width, self._stream.height):
            image = image.resize((self._stream.width, self._stream.height))
        frame = self._av.VideoFrame.from_image(image)
        if time is not None:
            self._index = max(self._index, round(time * self._rate))
        frame.pts = self._index
        frame.time_base = 1 / self._rate
        self._index += 1
        self._container.mux(self._stream.encode(frame))

    def close(self) -> None:
        """Flush the encoder and close the file."""
        if self._stream is not None:
            self._container.mux(self._stream.encode(None))
        self._container.close()
