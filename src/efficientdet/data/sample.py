"""The one sample type every reader produces, the dataset container, and the issue log.

Inside the library a box is ``xyxy`` in absolute pixels of the original image (float32) and a
label is an int64 in ``0..K-1``. Readers convert at the edge (COCO ``xywh``, VOC 1-based
corners, YOLO normalised centres) and apply the same two fixes everywhere: boxes are clipped
to the image and boxes narrower or shorter than ``min_size`` pixels after clipping are
dropped. Every fix and every problem is counted in an :class:`IssueLog`, which
:func:`efficientdet.data.check.check_dataset` turns into a report.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image, ImageOps
from torch import Tensor

# Severities. Fatal: the data cannot be trusted or cannot train at all. Warning: the reader
# fixed it (clipped, dropped, skipped) and counted it. Info: normal, worth knowing.
FATAL = "fatal"
WARNING = "warning"
INFO = "info"

# Every kind of issue a reader or the checker records, with its severity.
ISSUE_SEVERITY: dict[str, str] = {
    "unreadable_annotation": FATAL,  # annotation file missing, unparsable or wrongly shaped
    "invalid_annotation": FATAL,  # a malformed value: NaN or string coordinates, bad fields
    "duplicate_image_id": FATAL,  # one id names two different images
    "duplicate_category_id": FATAL,
    "no_images": FATAL,
    "no_boxes": FATAL,
    "missing_image": WARNING,  # image file not found: the image is skipped
    "unreadable_image": WARNING,  # image file cannot be decoded: the image is skipped
    "unknown_category": WARNING,  # category id / class name / index not declared: box skipped
    "unknown_image_id": WARNING,  # annotation for an image id that is not declared: skipped
    "missing_annotation": WARNING,  # listed in a split file but no annotation file
    "duplicate_annotation_id": WARNING,
    "duplicate_image": WARNING,  # the same image listed twice: the repeat is skipped
    "size_mismatch": WARNING,  # declared size differs from the image file's size
    "box_clipped": WARNING,  # box reached outside the image: clipped
    "box_degenerate": WARNING,  # zero, negative or < min_size width/height: dropped
    "class_without_boxes": WARNING,
    "class_names_inferred": WARNING,  # no names given: classes named "0".."K-1"
    # A COCO category with no boxes that is only the supercategory of all the others
    # (Roboflow's exports): dropped from the class table, and said so.
    "supercategory_dropped": WARNING,
    "images_found_elsewhere": WARNING,  # images not where the annotations say; found and used
    "images_not_located": WARNING,  # images not where the annotations say; what was found
    "split_substituted": WARNING,  # the only split of a tool's export used for the asked one
    "image_without_boxes": INFO,  # kept as a negative (background-only) image
    "crowd_box": INFO,  # COCO iscrowd: kept aside, not a training target
    "tiny_box": INFO,  # too small to reach IoU 0.5 with the smallest anchor
}

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

# Largest width or height an annotation may declare (what PNG's 31-bit fields can hold);
# anything larger is a broken value, and the size is read from the image header instead.
MAX_IMAGE_SIDE = 2**31 - 1

# What opening or decoding a damaged image can raise besides OSError (which includes
# UnidentifiedImageError and "image file is truncated"): Pillow's PNG and TIFF plugins raise
# SyntaxError, header parsers struct.error, IndexError, EOFError or ValueError, the zlib-backed
# decoders zlib.error, and Image.open refuses a decompression bomb with its own exception.
IMAGE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    IndexError,
    struct.error,
    zlib.error,
    Image.DecompressionBombError,
)
# Pillow's EXIF parsing has raised these on malformed tags besides IMAGE_ERRORS (KeyError,
# TypeError and ZeroDivisionError in Pillow 8-11).
EXIF_ERRORS = (*IMAGE_ERRORS, KeyError, TypeError, ZeroDivisionError)


class DataError(ValueError):
    """An annotation source cannot be used. The message names the file and the problem."""


def where(file: str | Path, line: int | None = None) -> str:
    """``file`` or ``file:line``, the prefix of every issue message."""
    return f"{file}:{line}" if line is not None else str(file)


class IssueLog:
    """Counts of every issue kind plus the first ``max_examples`` messages of each kind.

    Messages start with the file (and line where known): ``"labels/a.txt:3: ..."``.
    """

    def __init__(self, max_examples: int = 20) -> None:
        self.max_examples = max_examples
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = {}

    def add(self, kind: str, message: str, count: int = 1) -> None:
        """Record ``count`` occurrences of ``kind``; ``message`` describes the first of them."""
        if kind not in ISSUE_SEVERITY:
            raise ValueError(f"unknown issue kind {kind!r}; known kinds: {sorted(ISSUE_SEVERITY)}")
        if count <= 0:
            return
        self.counts[kind] += count
        shown = self.examples.setdefault(kind, [])
        if len(shown) < self.max_examples:
            shown.append(message)

    def merge(self, other: IssueLog) -> None:
        """Add another log's counts and examples to this one."""
        for kind, count in other.counts.items():
            self.counts[kind] += count
            shown = self.examples.setdefault(kind, [])
            room = self.max_examples - len(shown)
            shown.extend(other.examples.get(kind, [])[:room])

    def copy(self) -> IssueLog:
        """An independent copy."""
        log = IssueLog(self.max_examples)
        log.merge(self)
        return log

    def count(self, kind: str) -> int:
        """Occurrences of ``kind`` (0 if none)."""
        return self.counts.get(kind, 0)

    def kinds(self, severity: str) -> list[str]:
        """Recorded kinds of the given severity, in the order of :data:`ISSUE_SEVERITY`."""
        return [k for k in ISSUE_SEVERITY if ISSUE_SEVERITY[k] == severity and self.counts[k]]

    @property
    def has_fatal(self) -> bool:
        """Whether any fatal issue was recorded."""
        return bool(self.kinds(FATAL))

    def raise_if_fatal(self, source: str | Path, limit: int = 10) -> None:
        """Raise :class:`DataError` listing up to ``limit`` fatal messages, if there are any."""
        messages = [m for k in self.kinds(FATAL) for m in self.examples[k]]
        if not messages:
            return
        total = sum(self.counts[k] for k in self.kinds(FATAL))
        shown = messages[:limit]
        more = f"\n  ... and {total - len(shown)} more" if total > len(shown) else ""
        lines = "\n  ".join(shown)
        raise DataError(f"{source}: {total} fatal problem(s) in the annotations:\n  {lines}{more}")


@dataclass(eq=False)
class DetectionSample:
    """One annotated image. Boxes are training targets; crowd boxes are kept aside.

    Attributes:
        image_path: the image file; the pixels are read only by :meth:`load_image`.
        image_id: integer id, unique in its dataset (the user's id for COCO, 1-based order
            for VOC and YOLO).
        size: original ``(height, width)`` in pixels.
        boxes: ``Tensor[N, 4]`` float32 ``xyxy`` in original pixels.
        labels: ``Tensor[N]`` int64 in ``0..K-1``.
        difficult: ``Tensor[N]`` bool, VOC's ``difficult`` flag (all False elsewhere).
        crowd_boxes: ``Tensor[M, 4]`` float32 ``xyxy``, COCO ``iscrowd`` regions (not targets).
        crowd_labels: ``Tensor[M]`` int64 labels of ``crowd_boxes``.
    """

    image_path: Path
    image_id: int
    size: tuple[int, int]
    boxes: Tensor
    labels: Tensor
    difficult: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.bool))
    crowd_boxes: Tensor = field(default_factory=lambda: torch.zeros(0, 4))
    crowd_labels: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.int64))

    def __post_init__(self) -> None:
        self.image_path = Path(self.image_path)
        self.size = (int(self.size[0]), int(self.size[1]))
        if min(self.size) <= 0:
            raise ValueError(f"{self.image_path}: image size must be positive, got {self.size}")
        self.boxes = torch.as_tensor(self.boxes, dtype=torch.float32).reshape(-1, 4)
        self.labels = torch.as_tensor(self.labels, dtype=torch.int64).reshape(-1)
        n = self.boxes.shape[0]
        self.difficult = torch.as_tensor(self.difficult, dtype=torch.bool).reshape(-1)
        if self.difficult.numel() == 0:
            self.difficult = torch.zeros(n, dtype=torch.bool)
        self.crowd_boxes = torch.as_tensor(self.crowd_boxes, dtype=torch.float32).reshape(-1, 4)
        self.crowd_labels = torch.as_tensor(self.crowd_labels, dtype=torch.int64).reshape(-1)
        for name, count, expected in (
            ("labels", self.labels.shape[0], n),
            ("difficult flags", self.difficult.shape[0], n),
            ("crowd labels", self.crowd_labels.shape[0], self.crowd_boxes.shape[0]),
        ):
            if count != expected:
                raise ValueError(
                    f"{self.image_path}: {expected} boxes but {count} {name} in the sample"
                )

    @property
    def height(self) -> int:
        """Original height in pixels."""
        return self.size[0]

    @property
    def width(self) -> int:
        """Original width in pixels."""
        return self.size[1]

    @property
    def num_boxes(self) -> int:
        """Number of training boxes N."""
        return int(self.boxes.shape[0])

    def load_image(self) -> Image.Image:
        """Decode the image as RGB (grey, palette and alpha images are converted), upright:
        with its EXIF orientation applied, the view that browsers and annotation tools show
        and that the boxes are taken to refer to (as in prediction).

        Raises:
            DataError: naming the file when it is missing, cannot be decoded (truncated,
                corrupt, not an image) or is above Pillow's decompression-bomb limit.
        """
        try:
            with Image.open(self.image_path) as img:
                try:
                    upright = ImageOps.exif_transpose(img)
                except EXIF_ERRORS as err:
                    raise DataError(
                        f"{self.image_path}: cannot read image: unreadable EXIF orientation ({err!r})"
                    ) from err
                return (upright if upright is not None else img).convert("RGB")
        except IMAGE_ERRORS as err:
            raise DataError(f"{self.image_path}: cannot read image: {err}") from err


@dataclass(eq=False)
class DetectionData:
    """Samples of one split plus the class table and everything the reader noticed.

    ``label_to_category_id[label]`` is the user's category id of a label (COCO's sparse ids;
    the label itself for VOC and YOLO), so predictions can be written back with the user's ids.
    """

    samples: list[DetectionSample]
    class_names: list[str]
    label_to_category_id: list[int]
    format: str
    source: Path
    issues: IssueLog = field(default_factory=IssueLog)

    def __post_init__(self) -> None:
        if len(self.class_names) != len(self.label_to_category_id):
            raise ValueError(
                f"{len(self.class_names)} class names but "
                f"{len(self.label_to_category_id)} category ids"
            )
        if len(set(self.label_to_category_id)) != len(self.label_to_category_id):
            raise ValueError(f"category ids must be unique: {self.label_to_category_id}")
        self.source = Path(self.source)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> DetectionSample:
        return self.samples[index]

    @property
    def num_classes(self) -> int:
        """Number of classes K."""
        return len(self.class_names)

    @property
    def category_id_to_label(self) -> dict[int, int]:
        """The inverse of ``label_to_category_id``."""
        return {cid: label for label, cid in enumerate(self.label_to_category_id)}

    @property
    def num_boxes(self) -> int:
        """Training boxes over all samples."""
        return sum(s.num_boxes for s in self.samples)

    def subset(self, indices: Iterable[int]) -> DetectionData:
        """The samples at ``indices`` with the same classes (issues are copied, not recounted)."""
        return DetectionData(
            samples=[self.samples[i] for i in indices],
            class_names=list(self.class_names),
            label_to_category_id=list(self.label_to_category_id),
            format=self.format,
            source=self.source,
            issues=self.issues.copy(),
        )

    def without_images(self, image_ids: Iterable[int]) -> DetectionData:
        """Drop samples by image id, e.g. the unreadable ones a check found."""
        drop = set(image_ids)
        return self.subset(i for i, s in enumerate(self.samples) if s.image_id not in drop)


# EXIF orientations that turn the image by 90 degrees (transposed, rotated 90 / 270, transverse).
_SIDEWAYS_ORIENTATIONS = (5, 6, 7, 8)
_EXIF_ORIENTATION = 0x0112


def _exif_orientation(img: Image.Image) -> object:
    """The EXIF orientation tag of an opened image, read from its header only; None when
    absent or unreadable (the pixel read then reports the broken EXIF)."""
    try:
        if img.format == "PNG":
            # Pillow's getexif() on a PNG decodes every pixel to look for an eXIf chunk after
            # the image data; only one before it (the usual place) is read here.
            raw = img.info.get("exif")
            if not raw:
                return None
            exif = Image.Exif()
            exif.load(raw)
            return exif.get(_EXIF_ORIENTATION)
        return img.getexif().get(_EXIF_ORIENTATION)
    except EXIF_ERRORS:
        return None


def upright_size(img: Image.Image) -> tuple[int, int]:
    """``(height, width)`` of an opened image once its EXIF orientation is applied (the
    header's size with the sides swapped for the four sideways orientations)."""
    width, height = img.size
    if _exif_orientation(img) in _SIDEWAYS_ORIENTATIONS:
        width, height = height, width
    return height, width


def read_image_size(path: Path) -> tuple[int, int]:
    """``(height, width)`` of the upright image (EXIF orientation applied, as
    :meth:`DetectionSample.load_image` gives it), from the header, without decoding pixels.

    Raises:
        FileNotFoundError: the file does not exist.
        DataError: the file is not an image PIL can identify.
    """
    try:
        with Image.open(path) as img:
            return upright_size(img)
    except FileNotFoundError:
        raise
    except IMAGE_ERRORS as err:
        raise DataError(f"{path}: cannot read image header: {err}") from err


def is_finite_number(value: object) -> bool:
    """True for a finite int or float (bool excluded); an int too large for a float is not."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def is_image_side(value: object) -> bool:
    """True for an int (bool excluded) that can be an image's width or height in pixels."""
    return (
        isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_IMAGE_SIDE
    )


def fix_boxes(
    boxes: Tensor,
    size: tuple[int, int],
    issues: IssueLog,
    context: str,
    *,
    min_size: float = 1.0,
    tolerance: float = 1e-3,
) -> tuple[Tensor, Tensor]:
    """Clip boxes to the image and drop degenerate ones, counting both in ``issues``.

    A box is counted as clipped when a corner lies more than ``tolerance`` pixels outside
    ``[0, width] x [0, height]``; it is degenerate when, after clipping, its width or height
    is below ``min_size`` (this includes zero and negative sizes and boxes wholly outside).

    Args:
        boxes: ``Tensor[N, 4]`` xyxy in pixels.
        size: ``(height, width)``.
        issues: where the counts go.
        context: file (and annotation) named in the first message of each kind.
        min_size: smallest width and height kept, in pixels.
        tolerance: slack before a box counts as out of bounds (float noise in exports).

    Returns:
        ``(clipped boxes Tensor[M, 4], keep Tensor[N] bool)``: ``clipped = clip(boxes)[keep]``.
    """
    height, width = size
    boxes = boxes.reshape(-1, 4).to(torch.float32)
    limits = torch.tensor([width, height, width, height], dtype=torch.float32)
    outside = ((boxes < -tolerance) | (boxes > limits + tolerance)).any(dim=1)
    clipped = torch.minimum(boxes.clamp(min=0.0), limits)
    sizes = clipped[:, 2:] - clipped[:, :2]
    keep = (sizes >= min_size).all(dim=1)
    n_clipped = int((outside & keep).sum())
    n_degenerate = int((~keep).sum())
    if n_clipped:
        issues.add(
            "box_clipped",
            f"{context}: {n_clipped} box(es) outside the {width}x{height} image",
            count=n_clipped,
        )
    if n_degenerate:
        first = boxes[~keep][0].tolist()
        issues.add(
            "box_degenerate",
            f"{context}: {n_degenerate} box(es) smaller than {min_size} px after clipping, "
            f"e.g. xyxy {[round(v, 2) for v in first]}",
            count=n_degenerate,
        )
    return clipped[keep], keep


def make_sample(
    *,
    image_path: Path,
    image_id: int,
    size: tuple[int, int],
    boxes: Sequence[Sequence[float]],
    labels: Sequence[int],
    issues: IssueLog,
    context: str,
    min_size: float,
    difficult: Sequence[bool] | None = None,
    crowd_boxes: Sequence[Sequence[float]] = (),
    crowd_labels: Sequence[int] = (),
) -> DetectionSample:
    """Build a sample from raw pixel boxes, applying :func:`fix_boxes` and counting issues."""
    raw = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    fixed, keep = fix_boxes(raw, size, issues, context, min_size=min_size)
    label_t = torch.tensor(labels, dtype=torch.int64).reshape(-1)[keep]
    diff_t = torch.zeros(label_t.shape[0], dtype=torch.bool)
    if difficult is not None:
        diff_t = torch.tensor(difficult, dtype=torch.bool).reshape(-1)[keep]
    crowd = torch.tensor(crowd_boxes, dtype=torch.float32).reshape(-1, 4)
    crowd_l = torch.tensor(crowd_labels, dtype=torch.int64).reshape(-1)
    if crowd.shape[0]:
        issues.add("crowd_box", f"{context}: {crowd.shape[0]} crowd box(es)", crowd.shape[0])
        # Crowd regions are only used to ignore detections; clip them quietly.
        crowd_fixed, crowd_keep = fix_boxes(crowd, size, IssueLog(0), context, min_size=min_size)
        crowd, crowd_l = crowd_fixed, crowd_l[crowd_keep]
    if fixed.shape[0] == 0:
        issues.add("image_without_boxes", f"{context}: no boxes")
    return DetectionSample(
        image_path=image_path,
        image_id=image_id,
        size=size,
        boxes=fixed,
        labels=label_t,
        difficult=diff_t,
        crowd_boxes=crowd,
        crowd_labels=crowd_l,
    )
