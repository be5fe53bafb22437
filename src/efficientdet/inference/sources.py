"""The inputs of ``efficientdet predict``: walk folders and globs lazily, number the files, shard
them, and check on resume that they are those of the first run.

:func:`iter_sources` turns command-line patterns into paths (and live sources, kept as the
text given: stream URLs and camera indices, :func:`~efficientdet.inference.live.is_stream`)
in a deterministic order;
:func:`select_inputs` numbers them (the index every record keeps), hashes the order as it goes
(:class:`InputDigest`), skips what a resumed run has done and keeps one shard. Nothing here
opens an image.
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from .live import is_stream, redact, stream_name

__all__ = [
    "IMAGE_EXTENSIONS",
    "VIDEO_EXTENSIONS",
    "Input",
    "InputDigest",
    "ResumePoint",
    "collect_sources",
    "is_video",
    "iter_sources",
    "numbered_sources",
    "parse_shard",
    "select_inputs",
]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp",
     ".ppm", ".pgm", ".pbm", ".pnm"}
)
VIDEO_EXTENSIONS = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm"})
DIGEST_CHARS = 16  # hex digits of sha256 kept: 64 bits, plenty to notice a change


def is_video(path: str | Path) -> bool:
    """Whether ``path`` is treated as a video (by extension: .mp4 .avi .mov .mkv .webm)."""
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def _is_media(path: Path) -> bool:
    suffix = path.suffix.lower()
    return suffix in IMAGE_EXTENSIONS or suffix in VIDEO_EXTENSIONS


def _folder_media(folder: Path) -> Iterator[Path]:
    """Image and video files directly inside ``folder``, sorted by name, hidden ones skipped.

    Only the folder's media names are held (sorting needs them); paths are made one by one.
    """
    with os.scandir(folder) as entries:
        names = sorted(
            entry.name for entry in entries
            if not entry.name.startswith(".") and _is_media(Path(entry.name)) and entry.is_file()
        )
    for name in names:
        yield folder / name


def _has_glob(text: str) -> bool:
    return any(c in text for c in "*?[")


def _sorted_children(folder: Path) -> list[str]:
    try:
        with os.scandir(folder) as entries:
            return sorted(entry.name for entry in entries)
    except OSError:  # unreadable or vanished: matches nothing, as glob does
        return []


def _walk_glob(base: Path, parts: Sequence[str]) -> Iterator[Path]:
    """Paths under ``base`` matching the pattern ``parts`` (one per path segment; ``**``: any
    number of folders), folder by folder in sorted name order. Like :mod:`glob`, wildcards do
    not match names starting with a dot unless the pattern segment does."""
    if not parts:
        yield base
        return
    head, rest = parts[0], parts[1:]
    if head == "**":
        yield from _walk_glob(base, rest)
        for name in _sorted_children(base):
            child = base / name
            if not name.startswith(".") and child.is_dir():
                yield from _walk_glob(child, parts)
        return
    if not _has_glob(head):
        child = base / head
        if child.exists() or child.is_symlink():
            yield from _walk_glob(child, rest)
        return
    for name in _sorted_children(base):
        if name.startswith(".") and not head.startswith("."):
            continue
        if fnmatch.fnmatchcase(name, head):
            yield from _walk_glob(base / name, rest)


def _iter_glob(text: str) -> Iterator[Path]:
    """Lazy, sorted-per-folder expansion of a glob pattern (``**`` recurses)."""
    path = Path(text)
    parts = path.parts
    first = next(i for i, part in enumerate(parts) if _has_glob(part))
    base = Path(*parts[:first]) if first else Path(".")
    yield from _walk_glob(base, parts[first:])  # Path(".") / "a.png" is Path("a.png")


def _glob_media(text: str) -> Iterator[Path]:
    """The image and video files a glob pattern names: matching files, and the media of
    matching folders (:func:`_folder_media`)."""
    for match in _iter_glob(text):
        if match.is_dir():
            yield from _folder_media(match)
        elif match.is_file() and _is_media(match):
            yield match


def iter_sources(
    patterns: Iterable[str | Path], *, exclude: str | Path | None = None
) -> Iterator[Path | str]:
    """Expand command-line inputs into the files to predict, lazily, in order, without
    duplicates.

    Each pattern is one of:

    * a file: kept whatever its extension (reading decides whether it is an image);
    * a folder: its image and video files, not recursing into sub-folders, sorted by name;
    * a glob (``*``, ``?``, ``[...]``; ``**`` recurses): matching image and video files,
      each folder's entries in sorted name order; matching folders expanded as above;
    * a live source (``rtsp://``, ``http://``, ... URLs, or a camera index such as ``0``
      that is not a file here): yielded as the ``str`` given.

    Nothing is listed ahead: the first file comes out as soon as its folder is read, so a
    million inputs start at once (a folder's media names are held while it is read; the paths
    already given are remembered to drop duplicates). The order depends only on the patterns
    and the files on disk, so two runs, or the shards of one, see the same sequence.

    A path that does not exist, or a glob that matches nothing, is logged and kept as given,
    so :func:`~efficientdet.inference.predict.run_prediction` reports it as a failure ("no
    such file") while the other inputs still run. A folder without images is logged and adds
    nothing.

    Args:
        patterns: paths, folders and glob patterns as typed by the user.
        exclude: a folder whose files are never inputs, the run's output folder: inside the
            input tree its pictures would otherwise be read back as inputs (and shift the
            order a resumed run checks). It cannot be one of the input folders.

    Yields:
        Paths of the files and the texts of the live sources, in the order of the patterns.

    Raises:
        ValueError: ``exclude`` is one of the folders named in ``patterns``.
    """
    patterns = list(patterns)
    skip = os.path.realpath(exclude) if exclude is not None else None
    for pattern in patterns:  # before anything runs, not when the walk gets there
        folder = os.path.expanduser(str(pattern))
        if skip is not None and os.path.isdir(folder) and os.path.realpath(folder) == skip:
            raise ValueError(
                f"{pattern} is both an input folder and the output folder: the annotated "
                "pictures would replace the inputs; give another --out"
            )
    return _walk_patterns(patterns, skip)


def _walk_patterns(patterns: list[str | Path], skip: str | None) -> Iterator[Path | str]:
    """:func:`iter_sources`' walk; files under ``skip`` (a real path) are left out."""
    seen: set[str] = set()

    def excluded(path: Path) -> bool:
        if skip is None:
            return False
        real = os.path.realpath(path)
        return real == skip or real.startswith(skip + os.sep)

    def fresh(path: Path) -> bool:
        key = os.path.realpath(path) if path.exists() else str(path)
        if key in seen:
            return False
        seen.add(key)
        return True

    streams: set[str] = set()
    for pattern in patterns:
        if isinstance(pattern, str) and is_stream(pattern):
            if pattern not in streams:
                streams.add(pattern)
                yield pattern
            continue
        text = os.path.expanduser(str(pattern))
        path = Path(text)
        if path.exists() and not path.is_dir():
            if fresh(path):
                yield path
            continue
        if not path.is_dir() and not _has_glob(text):
            logger.warning("%s: no such file or folder", pattern)
            if fresh(path):
                yield path
            continue
        empty = True
        for f in _folder_media(path) if path.is_dir() else _glob_media(text):
            empty = False
            if not excluded(f) and fresh(f):
                yield f
        if empty and path.is_dir():
            logger.warning("%s: folder has no image or video files", pattern)
        elif empty:
            logger.warning("%s: pattern matches no image or video files", pattern)
            if fresh(path):
                yield path


def collect_sources(patterns: Sequence[str | Path]) -> list[Path | str]:
    """:func:`iter_sources` as a list (for callers that want the whole set up front)."""
    return list(iter_sources(patterns))


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` (0 <= I < N) -> ``(I, N)``; anything else raises ``ValueError``."""
    index, sep, count = text.partition("/")
    try:
        i, n = int(index), int(count)
    except ValueError:
        raise ValueError(f"shard {text!r}: expected I/N, e.g. 0/4") from None
    if not sep or n < 1 or not 0 <= i < n:
        raise ValueError(f"shard {text!r}: expected I/N with 0 <= I < N, e.g. 0/4")
    return i, n


def numbered_sources(sources: Sequence[str | Path]) -> bool:
    """Whether every source is an image whose file name is a number (COCO's
    ``000000397133.jpg``): then that number is its ``image_id`` in ``predictions.json``."""
    paths = [Path(s) for s in sources]
    return bool(paths) and all(p.stem.isdigit() and not is_video(p) for p in paths)


class InputDigest:
    """A running hash of the input order: after the paths of inputs ``0..i`` went in,
    :meth:`update` returns the first :data:`DIGEST_CHARS` hex digits of
    ``sha256(path_0 + "\\n" + ... + path_i + "\\n")``, each path in its POSIX form as given
    (UTF-8; undecodable bytes of a file name kept as they are)."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()

    def update(self, path: Path | str) -> str:
        """Add the next input (a path, or a live source's text) and return the digest of
        the inputs so far."""
        text = path.as_posix() if isinstance(path, Path) else path
        self._hash.update(text.encode("utf-8", "surrogateescape") + b"\n")
        return self._hash.hexdigest()[:DIGEST_CHARS]


@dataclass(frozen=True)
class Input:
    """One input to predict.

    Attributes:
        index: its position in the whole input order (all shards), from 0.
        path: the source path as given; for a live source, a path made of its short name
            (:func:`~efficientdet.inference.live.stream_name`), for output names.
        digest: the :class:`InputDigest` of inputs ``0..index`` (written in its records).
        stream: a live source's URL or camera index as given; None for a file.
    """

    index: int
    path: Path
    digest: str
    stream: str | None = None

    @property
    def name(self) -> str:
        """What records and messages call it: the path, or the live source (password
        hidden)."""
        return redact(self.stream) if self.stream is not None else self.path.as_posix()


@dataclass(frozen=True)
class ResumePoint:
    """Where a resumed run picks up, read from the first run's records.

    Attributes:
        run: the run's output folder, for messages.
        done_index: inputs ``0..done_index`` have complete results and are skipped.
        index: the input of the last complete record (``<= done_index``; -1: none), which
            the new inputs must match.
        file_name: that record's source path; None: not checked.
        digest: that record's input digest; None: not checked (a log written before digests).
    """

    run: str = ""
    done_index: int = -1
    index: int = -1
    file_name: str | None = None
    digest: str | None = None

    def check(self, index: int, name: str, digest: str) -> None:
        """Raise ``ValueError`` when input ``index`` (the checked one, named ``name`` as its
        records name it) or the order up to it differs from the first run's."""
        if self.file_name is not None and self.file_name != name:
            raise ValueError(
                f"{self.run}: cannot resume: input {index} was {self.file_name} in the first "
                f"run and is {name} now (the inputs changed)"
            )
        if self.digest is not None and self.digest != digest:
            raise ValueError(
                f"{self.run}: cannot resume: the inputs before {name} (input "
                f"{index}) were added to, removed from, renamed or reordered since the first "
                f"run (sha256 of inputs 0..{index}: {self.digest} then, {digest} now; the "
                "inputs changed)"
            )

    def check_count(self, count: int) -> None:
        """Raise ``ValueError`` when fewer than ``done_index + 1`` inputs came."""
        if count <= self.done_index:
            raise ValueError(
                f"{self.run}: cannot resume: the first run wrote results for input "
                f"{self.done_index} but there are only {count} inputs now (the inputs changed)"
            )


def select_inputs(
    sources: Iterable[str | Path],
    *,
    shard: tuple[int, int] | None = None,
    resume: ResumePoint | None = None,
) -> Iterator[Input]:
    """Number ``sources`` in order, hash the order, and keep what this run predicts.

    Args:
        sources: paths (and live sources' texts) in the run's input order, consumed one at
            a time.
        shard: ``(i, n)``: only the inputs whose index is ``i`` modulo ``n``.
        resume: skip inputs ``0..resume.done_index``, after checking that the inputs up to
            ``resume.index`` are those of the first run.

    Yields:
        An :class:`Input` per source to predict, in order.

    Raises:
        ValueError: the inputs are not those of the resumed run (:meth:`ResumePoint.check`),
            raised when the mismatch is seen (at ``resume.index``, or at the end for too few).
    """
    point = resume if resume is not None else ResumePoint()
    digest = InputDigest()
    count = 0
    for index, source in enumerate(sources):
        if isinstance(source, str) and is_stream(source):
            item = Input(index, Path(stream_name(source)), digest.update(source), source)
        else:
            item = Input(index, Path(source), digest.update(Path(source)))
        count = index + 1
        if index == point.index:
            point.check(index, item.name, item.digest)
        if index <= point.done_index or (shard is not None and index % shard[1] != shard[0]):
            continue
        yield item
    point.check_count(count)
