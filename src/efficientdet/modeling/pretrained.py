"""The model zoo: COCO detector weights for the registered models, downloaded, verified and
cached the way torch.hub does it.

The weights are the official TensorFlow checkpoints (and two PyTorch-trained D0/D1) as
converted by the reference PyTorch port ``effdet`` and published on its GitHub release; this
package reads that state-dict layout unchanged. One table, :data:`PRETRAINED`, names each
file; the 8 hex digits before ``.pth`` are the start of the file's sha256, checked after every
download.

- Cache: ``$TORCH_HOME/hub/checkpoints`` (``torch.hub.get_dir()``), shared with timm and
  torchvision. A file already there is used with no network access at all.
- Mirror: ``EFFICIENTDET_WEIGHTS_URL`` replaces the base URL (``https://...``, ``http://...``
  or ``file:///folder/``); the file names stay the same.
- Offline: :class:`WeightsDownloadError` (an ``OSError``) in one line naming the URL and the
  cache path where the file can be put by hand.

The published models predict COCO's 90 category ids (1..90, the 80 annotated ones plus ten
ids that COCO 2017 never uses); label ``l`` is category id ``l + 1``. The ten unused ids are
real class slots of the 90-way head, so they can score; :func:`unused_labels` names them for
the detector to suppress (``predict``, ``eval`` and ``serve`` never report them).
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import tempfile
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .registry import get_config

log = logging.getLogger(__name__)

#: Where the reference port publishes its converted checkpoints.
DEFAULT_BASE_URL = "https://github.com/rwightman/efficientdet-pytorch/releases/download/v0.1/"
#: Environment variable that replaces :data:`DEFAULT_BASE_URL` (mirrors, air-gapped sites).
BASE_URL_ENV = "EFFICIENTDET_WEIGHTS_URL"
_HASH_IN_NAME = re.compile(r"-([0-9a-f]{6,64})\.[A-Za-z0-9]+$")
_CHUNK = 1 << 20

# COCO 2017 category ids and names; the ten ids missing here (12, 26, 29, 30, 45, 66, 68, 69,
# 71, 83) exist in the 91-id list of the COCO paper but carry no annotations.
COCO_CATEGORIES: dict[int, str] = {
    1: "person", 2: "bicycle", 3: "car", 4: "motorcycle", 5: "airplane", 6: "bus",
    7: "train", 8: "truck", 9: "boat", 10: "traffic light", 11: "fire hydrant",
    13: "stop sign", 14: "parking meter", 15: "bench", 16: "bird", 17: "cat", 18: "dog",
    19: "horse", 20: "sheep", 21: "cow", 22: "elephant", 23: "bear", 24: "zebra",
    25: "giraffe", 27: "backpack", 28: "umbrella", 31: "handbag", 32: "tie", 33: "suitcase",
    34: "frisbee", 35: "skis", 36: "snowboard", 37: "sports ball", 38: "kite",
    39: "baseball bat", 40: "baseball glove", 41: "skateboard", 42: "surfboard",
    43: "tennis racket", 44: "bottle", 46: "wine glass", 47: "cup", 48: "fork", 49: "knife",
    50: "spoon", 51: "bowl", 52: "banana", 53: "apple", 54: "sandwich", 55: "orange",
    56: "broccoli", 57: "carrot", 58: "hot dog", 59: "pizza", 60: "donut", 61: "cake",
    62: "chair", 63: "couch", 64: "potted plant", 65: "bed", 67: "dining table", 70: "toilet",
    72: "tv", 73: "laptop", 74: "mouse", 75: "remote", 76: "keyboard", 77: "cell phone",
    78: "microwave", 79: "oven", 80: "toaster", 81: "sink", 82: "refrigerator", 84: "book",
    85: "clock", 86: "vase", 87: "scissors", 88: "teddy bear", 89: "hair drier",
    90: "toothbrush",
}
#: Name given to the output labels of the ten category ids COCO 2017 does not use.
UNUSED_CATEGORY = "N/A"
COCO_NUM_CLASSES = 90


def coco_label_space() -> tuple[list[str], list[int]]:
    """The published models' labels: ``(class_names, label_to_category_id)``, 90 entries each.

    Label ``l`` is COCO category id ``l + 1``; unused ids are named :data:`UNUSED_CATEGORY`.
    """
    ids = list(range(1, COCO_NUM_CLASSES + 1))
    return [COCO_CATEGORIES.get(i, UNUSED_CATEGORY) for i in ids], ids


def unused_labels(class_names: Sequence[str] | None) -> tuple[int, ...]:
    """The labels named :data:`UNUSED_CATEGORY`, sorted: class slots of a head with no class
    behind them (labels 11, 25, 28, 29, 44, 65, 67, 68, 70 and 82 of :func:`coco_label_space`,
    COCO's unused ids 12 ... 83). A detector suppresses them; ``()`` without names."""
    return tuple(i for i, name in enumerate(class_names or ()) if name == UNUSED_CATEGORY)


@dataclass(frozen=True)
class PretrainedWeights:
    """One published checkpoint.

    Attributes:
        model: the registered model name the weights are for.
        file: the release file name; ``-XXXXXXXX.pth`` holds the start of its sha256.
        size_mb: megabytes (1e6) of tensors in the file, about its size on disk.
        reference_ap: COCO val2017 AP[.5:.95] (%) that the reference port ``effdet`` reports
            for this file (its figure, hard NMS), or None where it gives none.
        official_ap: COCO val2017 AP (%) that the official TensorFlow release reports for the
            same checkpoint (soft-NMS), or None.
    """

    model: str
    file: str
    size_mb: float
    reference_ap: float | None
    official_ap: float | None

    @property
    def sha256_prefix(self) -> str:
        match = _HASH_IN_NAME.search(self.file)
        if match is None:  # every row of the table has one; a test holds it so
            raise ValueError(f"{self.file}: no sha256 prefix in the file name")
        return match.group(1)

    @property
    def url(self) -> str:
        return base_url() + self.file

    @property
    def cache_path(self) -> Path:
        return cache_dir() / self.file


# (model, release file, MB of tensors, effdet val2017 AP, TF official val2017 AP): the files
# and APs as the reference port's model table and README list them; the size is what
# ``weights_size_bytes`` counts (a test holds them equal).
_TABLE: tuple[tuple[str, str, float, float | None, float | None], ...] = (
    ("tf_efficientdet_d0", "tf_efficientdet_d0_34-f153e0cf.pth", 15.7, 34.2, 34.3),
    ("tf_efficientdet_d1", "tf_efficientdet_d1_40-a30f94af.pth", 26.8, 40.1, 40.2),
    ("tf_efficientdet_d2", "tf_efficientdet_d2_43-8107aa99.pth", 32.7, 43.4, 42.5),
    ("tf_efficientdet_d3", "tf_efficientdet_d3_47-0b525f35.pth", 48.6, 47.1, 47.2),
    ("tf_efficientdet_d4", "tf_efficientdet_d4_49-f56376d9.pth", 83.6, 49.2, 49.3),
    ("tf_efficientdet_d5", "tf_efficientdet_d5_51-c79f9be6.pth", 135.5, 51.2, 51.2),
    ("tf_efficientdet_d6", "tf_efficientdet_d6_52-4eda3773.pth", 208.7, 52.0, 52.1),
    ("tf_efficientdet_d7", "tf_efficientdet_d7_53-6d1d7a95.pth", 208.7, 53.1, 53.4),
    ("tf_efficientdet_d7x", "tf_efficientdet_d7x-f390b87c.pth", 310.3, 54.3, 54.4),
    ("tf_efficientdet_d0_ap", "tf_efficientdet_d0_ap-d0cdbd0a.pth", 15.7, 34.8, 35.2),
    ("tf_efficientdet_d1_ap", "tf_efficientdet_d1_ap-7721d075.pth", 26.8, 40.8, 40.9),
    ("tf_efficientdet_d2_ap", "tf_efficientdet_d2_ap-a2995c19.pth", 32.7, 44.2, 44.3),
    ("tf_efficientdet_d3_ap", "tf_efficientdet_d3_ap-e4a2feab.pth", 48.6, 47.7, 48.0),
    ("tf_efficientdet_d4_ap", "tf_efficientdet_d4_ap-f601a5fc.pth", 83.6, 50.2, 50.4),
    ("tf_efficientdet_d5_ap", "tf_efficientdet_d5_ap-3673ae5d.pth", 135.5, 52.1, 52.2),
    ("tf_efficientdet_lite0", "tf_efficientdet_lite0-dfacfc78.pth", 13.2, 27.1, 26.4),
    ("tf_efficientdet_lite1", "tf_efficientdet_lite1-6dc7ab30.pth", 17.2, 32.2, 31.5),
    ("tf_efficientdet_lite2", "tf_efficientdet_lite2-86c5d55b.pth", 21.3, 35.9, 35.1),
    ("tf_efficientdet_lite3", "tf_efficientdet_lite3-506852cb.pth", 33.8, 39.6, 38.8),
    ("tf_efficientdet_lite3x", "tf_efficientdet_lite3x-8404c57b.pth", 37.6, 43.6, 42.6),
    ("tf_efficientdet_lite4", "tf_efficientdet_lite4-391ddabc.pth", 61.1, 44.2, 43.2),
    ("efficientdet_d0", "efficientdet_d0-f3276ba8.pth", 15.7, 33.6, None),
    ("efficientdet_d1", "efficientdet_d1-bb7e98fe.pth", 26.8, 39.4, None),
)
#: Registered model name -> its published COCO weights.
PRETRAINED: dict[str, PretrainedWeights] = {row[0]: PretrainedWeights(*row) for row in _TABLE}


class WeightsDownloadError(OSError):
    """Weights that could not be fetched or failed verification; the message is one line."""


def base_url() -> str:
    """The base URL of the weights: ``$EFFICIENTDET_WEIGHTS_URL`` or the reference release."""
    url = os.environ.get(BASE_URL_ENV, "").strip() or DEFAULT_BASE_URL
    return url if url.endswith("/") else url + "/"


def cache_dir() -> Path:
    """``<torch.hub.get_dir()>/checkpoints``: ``$TORCH_HOME/hub/checkpoints`` when set."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def list_pretrained() -> list[str]:
    """Names of the registered models that have published COCO weights, sorted."""
    return sorted(PRETRAINED)


def pretrained_weights(name: str) -> PretrainedWeights:
    """The table row for ``name``; a ValueError listing the models that have weights."""
    if name not in PRETRAINED:
        raise ValueError(
            f"no published COCO weights for {name!r}; models with weights: "
            f"{', '.join(list_pretrained())}"
        )
    return PRETRAINED[name]


def fetch_weights(name: str, *, progress: bool = True) -> Path:
    """The local path of ``name``'s COCO weights, downloading them on first use.

    A file already in :func:`cache_dir` is returned without any network access.

    Raises:
        ValueError: ``name`` has no published weights.
        WeightsDownloadError: no network (one line naming the URL and the path to put the file
            at by hand), a transfer cut short, or a file whose sha256 does not match; nothing
            is left in the cache then.
    """
    entry = pretrained_weights(name)
    path = entry.cache_path
    if path.is_file():
        return path
    download(entry.url, path, sha256_prefix=entry.sha256_prefix, progress=progress)
    return path


def download(url: str, dest: Path, *, sha256_prefix: str, progress: bool = True) -> None:
    """Fetch ``url`` into ``dest`` through a temporary file in the same folder.

    The file is renamed into place only after its length matches the server's
    ``Content-Length`` and its sha256 starts with ``sha256_prefix``; otherwise it is deleted
    and :class:`WeightsDownloadError` says why in one line.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            digest, received, expected = _stream(url, dest, out, progress)
        if expected is not None and received != expected:
            raise WeightsDownloadError(
                f"download of {url} was cut short ({received} of {expected} bytes); "
                "the partial file was deleted, run again to retry"
            )
        if not digest.startswith(sha256_prefix):
            raise WeightsDownloadError(
                f"{url}: sha256 {digest[:16]}... does not start with {sha256_prefix} as its name "
                "says; the file was deleted (a corrupt transfer or a wrong mirror)"
            )
        os.replace(tmp, dest)
        log.info("saved %s (%.1f MB)", dest, received / 1e6)
    finally:
        tmp.unlink(missing_ok=True)


def _stream(url: str, dest: Path, out: Any, progress: bool) -> tuple[str, int, int | None]:
    """Copy ``url`` into the open file ``out``: ``(sha256 hex, bytes received, Content-Length)``."""
    request = urllib.request.Request(url, headers={"User-Agent": "efficientdet"})
    sha = hashlib.sha256()
    received = 0
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            length = response.headers.get("Content-Length")
            expected = int(length) if length and length.isdigit() else None
            bar = _progress_bar(dest.name, expected) if progress else None
            try:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    sha.update(chunk)
                    received += len(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
            finally:
                if bar is not None:
                    bar.close()
    except urllib.error.HTTPError as err:
        raise WeightsDownloadError(
            f"cannot download {url} (HTTP {err.code} {err.reason}); put the file at {dest} "
            f"by hand, or set {BASE_URL_ENV} to a mirror"
        ) from err
    except http.client.HTTPException as err:  # the server broke the transfer off
        raise WeightsDownloadError(
            f"download of {url} was cut short after {received} bytes ({type(err).__name__}); "
            "the partial file was deleted, run again to retry"
        ) from err
    except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
        reason = getattr(err, "reason", None) or err
        raise WeightsDownloadError(
            f"cannot download {url} ({reason}); without network access, put the file at "
            f"{dest} by hand, or set {BASE_URL_ENV} to a mirror"
        ) from err
    return sha.hexdigest(), received, expected


def _progress_bar(name: str, total: int | None) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=name, unit="B", unit_scale=True, unit_divisor=1024, leave=False)


def weights_size_bytes(name: str) -> int:
    """Bytes of the tensors in ``name``'s weights (90 classes), counted without allocating
    them: about the size of the release file, which adds a little serialisation overhead."""
    import torch  # torch and timm only here: the table and downloads stay quick to import

    from .model import EfficientDet

    with torch.device("meta"):
        model = EfficientDet(get_config(name, num_classes=COCO_NUM_CLASSES))
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())
