"""Decode (and letterbox) the images of a run ahead of the network, in a bounded thread pool.

:class:`ReadAhead` is an ordered map over a thread pool with a window: at most ``window`` items
are submitted and not yet handed out, so memory stays bounded however long the input; the
results come out in input order whatever order they finish in; leaving the ``with`` block
(at the end, on an error or a ``KeyboardInterrupt``) cancels what has not started and joins
the threads. Pillow's decoders and the letterbox resize release the GIL, so the threads
decode while the main thread runs the network.

:class:`ImageLoader` is what the threads run per input: decode the file into an upright RGB
image and, for a :class:`~efficientdet.inference.predictor.LetterboxPredictor`, letterbox it
into the network's input. A file that cannot be read becomes a :class:`Decoded` with its
reason (the run records it as a failure and goes on); videos and live streams pass through
undecoded (their frames are read where they are predicted).
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from types import TracebackType
from typing import Generic, TypeVar

from PIL import Image
from torch import Tensor

from ..detection.transform import ImageReadError, LetterboxInfo, letterbox, load_image
from .sources import Input, is_video

__all__ = ["THREAD_NAME", "Decoded", "ImageLoader", "ReadAhead", "default_workers"]

THREAD_NAME = "efficientdet-reader"  # the pool's threads are named THREAD_NAME_0, _1, ...
MAX_DEFAULT_WORKERS = 4

T = TypeVar("T")
R = TypeVar("R")


def default_workers() -> int:
    """Reader threads when not given: the CPUs this process may use, at most 4."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(MAX_DEFAULT_WORKERS, cpus))


class ReadAhead(Generic[T, R]):
    """``load`` over items in ``workers`` threads, at most ``window`` items ahead, in order.

    Use it as a context manager; :meth:`map` may be called once or more inside it::

        with ReadAhead(load, workers=2, window=8) as reader:
            for result in reader.map(items):
                ...

    Args:
        load: what a thread does with one item; an exception it raises comes out of
            :meth:`map` at that item's place, after the results before it.
        workers: threads (>= 1).
        window: items submitted and not yet handed out, at most (>= 1); the items themselves
            are pulled from the iterable in the calling thread, as the window has room.
    """

    def __init__(self, load: Callable[[T], R], *, workers: int, window: int) -> None:
        if workers < 1 or window < 1:
            raise ValueError(f"workers and window must be at least 1, got {workers} and {window}")
        self._load = load
        self.workers = workers
        self.window = window
        self._pool: ThreadPoolExecutor | None = None

    def __enter__(self) -> ReadAhead[T, R]:
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix=THREAD_NAME)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Cancel the loads not started, wait for the running ones, end the threads."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def map(self, items: Iterable[T]) -> Iterator[R]:
        """``load(item)`` for every item, in the order of ``items``.

        An exception raised while pulling the next item (from the iterable itself) comes
        out after the results of the items pulled before it.
        """
        if self._pool is None:
            raise RuntimeError("ReadAhead.map needs the reader open: use `with ReadAhead(...)`")
        pool = self._pool
        pending: deque[Future[R]] = deque()
        iterator = iter(items)
        failure: Exception | None = None
        while True:
            while failure is None and len(pending) < self.window:
                try:
                    item = next(iterator)
                except StopIteration:
                    break
                except Exception as e:  # raised in order, after the items before it
                    failure = e
                    break
                pending.append(pool.submit(self._load, item))
            if not pending:
                break
            yield pending.popleft().result()
        if failure is not None:
            raise failure


@dataclass
class Decoded:
    """One input after the reader.

    Attributes:
        input: the input (index, path, digest).
        image: the upright RGB image; None for a video, an unreadable file, or when only the
            letterboxed pixels are needed.
        size: ``(width, height)`` of the image; ``(0, 0)`` when there is none.
        pixels: ``Tensor[3, H, W]`` letterboxed network input, when a letterbox was asked.
        info: how ``pixels`` were letterboxed (to map boxes back).
        error: why the file could not be read (no image then).
    """

    input: Input
    image: Image.Image | None = None
    size: tuple[int, int] = (0, 0)
    pixels: Tensor | None = None
    info: LetterboxInfo | None = None
    error: str | None = None

    @property
    def is_video(self) -> bool:
        return self.input.stream is None and is_video(self.input.path)

    @property
    def is_stream(self) -> bool:
        return self.input.stream is not None


@dataclass(frozen=True)
class ImageLoader:
    """The reader threads' work for one :class:`~efficientdet.inference.sources.Input`.

    Attributes:
        letterbox_to: ``(size (H, W), mean, std)`` to letterbox each image into a network
            input; None: decode only.
        keep_image: keep the decoded image (to draw on, or for a ``predict_fn`` of images);
            without it only its size is kept once letterboxed.
    """

    letterbox_to: tuple[tuple[int, int], tuple[float, float, float], tuple[float, float, float]] | None
    keep_image: bool = True

    def __call__(self, item: Input) -> Decoded:
        if item.stream is not None or is_video(item.path):
            return Decoded(item)
        try:
            image = load_image(item.path)
        except ImageReadError as e:
            return Decoded(item, error=e.reason)
        decoded = Decoded(item, image=image, size=image.size)
        if self.letterbox_to is not None:
            size, mean, std = self.letterbox_to
            decoded.pixels, decoded.info = letterbox(image, size, mean, std)
            if not self.keep_image:
                decoded.image = None
        return decoded
