"""Tracks in the MOT Challenge format, built from a run's ``predictions.jsonl``.

One text file per sequence, one line per tracked box::

    <frame>,<id>,<bb_left>,<bb_top>,<bb_width>,<bb_height>,<conf>,-1,-1,-1

``frame`` counts from 1; ``id`` is the record's ``track_id`` + 1 (MOT ids start at 1); the box
is in pixels, its top-left corner and size; ``conf`` the detection's score. Boxes without a
track id are left out. This is what MOTChallenge's evaluation (and TrackEval's
``MotChallenge2DBox``) reads as a tracker's results.

A sequence is a run of consecutive records of one video or live stream (``frame`` is the
frame's number in it: a stream's dropped frames leave gaps), or of still images of one folder
(numbered 1, 2, ... in input order). Like ``predictions.json``, the files are written at the
end of a run from its records, so a resumed run writes them whole.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from .live import stream_name
from .pictures import OutputNames
from .records import read_records

__all__ = ["MotSequence", "mot_line", "mot_sequences", "write_mot"]

logger = logging.getLogger(__name__)


def mot_line(frame: int, track_id: int, box: list[float], score: float) -> str:
    """One MOT line: ``frame`` from 1, ``track_id`` from 0 (written + 1), ``box`` xyxy."""
    x1, y1, x2, y2 = box
    return (
        f"{frame},{track_id + 1},{x1:.2f},{y1:.2f},{x2 - x1:.2f},{y2 - y1:.2f},{score:.5f},"
        "-1,-1,-1"
    )


@dataclass
class MotSequence:
    """The MOT lines of one sequence.

    Attributes:
        key: what makes records one sequence (the video or stream, or an image's folder).
        name: a name for its file (the video's or folder's stem, or the stream's name).
        lines: MOT lines, in frame order.
    """

    key: str
    name: str
    lines: list[str] = field(default_factory=list)
    frames: int = 0


def _sequence_of(record: Mapping[str, Any]) -> tuple[str, str]:
    """(key, name) of the sequence a record belongs to."""
    file_name = str(record["file_name"])
    if "time" in record:  # a live stream
        return f"video:{file_name}", stream_name(file_name)
    if "frame" in record:  # a video
        return f"video:{file_name}", PurePosixPath(file_name).stem or "video"
    folder = PurePosixPath(file_name).parent
    return f"folder:{folder}", folder.name or "frames"


def mot_sequences(out_dir: str | Path) -> Iterator[MotSequence]:
    """The sequences of a run's records, in order, each with its MOT lines."""
    current: MotSequence | None = None
    for record in read_records(out_dir):
        key, name = _sequence_of(record)
        if current is None or key != current.key:
            if current is not None:
                yield current
            current = MotSequence(key, name)
        current.frames += 1
        frame = int(record["frame"]) + 1 if "frame" in record else current.frames
        for det in record["detections"]:
            if det.get("track_id") is not None:
                current.lines.append(mot_line(frame, int(det["track_id"]), det["box"], det["score"]))
    if current is not None:
        yield current


def write_mot(out_dir: str | Path, path: str | Path) -> list[Path]:
    """Write the MOT files of the run in ``out_dir``.

    Args:
        out_dir: the run's output folder (its ``predictions.jsonl``).
        path: a ``.txt`` file for a run of one sequence; otherwise a folder, which gets one
            ``<name>.txt`` per sequence (names made unique with ``_1``, ``_2``, ...). A run of
            several sequences given a ``.txt`` file writes them into the folder of that
            name without the suffix (``tracks.txt`` -> ``tracks/``), and says so.

    Returns:
        The files written, in sequence order.
    """
    target = Path(path)
    sequences = list(mot_sequences(out_dir))
    if target.suffix.lower() == ".txt" and len(sequences) <= 1:
        files = [(target, sequences[0] if sequences else MotSequence("", target.stem))]
    else:
        if target.suffix.lower() == ".txt":
            logger.warning(
                "%s: the run has %d sequences; writing one file each into %s/",
                target, len(sequences), target.with_suffix(""),
            )
            target = target.with_suffix("")
        names = OutputNames([])
        files = [(target / names.claim(s.name, ".txt"), s) for s in sequences]
    written = []
    for file, sequence in files:
        file.parent.mkdir(parents=True, exist_ok=True)
        partial = file.with_name(file.name + ".partial")
        partial.write_text("".join(line + "\n" for line in sequence.lines))
        partial.replace(file)
        written.append(file)
    return written
