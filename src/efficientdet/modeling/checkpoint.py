"""Saving and loading weights: this project's safetensors checkpoints and state dicts saved
by the reference PyTorch port ``effdet``. Nothing here ever unpickles code: safetensors, or
``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import Tensor, nn

from ..config import ModelConfig, model_config_from_dict, model_config_to_dict

log = logging.getLogger(__name__)

FORMAT_NAME = "efficientdet"
FORMAT_VERSION = 1
CLASS_PREDICT_PREFIX = "class_net.predict."
_WRAPPER_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model")
_PREFIXES = ("module.", "model.")


class CheckpointError(ValueError):
    """A weights file that cannot be read or does not fit the model."""


@dataclass
class Checkpoint:
    """A state dict with what the file says about itself."""

    state_dict: dict[str, Tensor]
    config: ModelConfig | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    source_format: str = FORMAT_NAME


@dataclass
class LoadReport:
    """What :func:`load_checkpoint` did: keys it skipped on purpose."""

    skipped: list[str] = field(default_factory=list)
    source_format: str = FORMAT_NAME


# ---- writing -------------------------------------------------------------------------------


def atomic_write(path: str | Path, write: Any) -> None:
    """Call ``write(tmp_path)`` then rename onto ``path``: a crash never leaves half a file,
    and a failed write (disk full) leaves the previous file intact and no temporary file.

    Raises:
        OSError: the write failed; when the error does not name a file, it is re-raised (same
            errno, same subclass) naming ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno is not None and err.filename is None:
            raise OSError(err.errno, err.strerror or str(err), str(path)) from err
        raise


def save_checkpoint(
    model: nn.Module, path: str | Path, *, metadata: Mapping[str, Any] | None = None
) -> Path:
    """Write the model's weights as safetensors, with its configuration and ``metadata``
    (class names, category ids, ...) in the header. Written atomically."""
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    header = {"format": FORMAT_NAME, "format_version": str(FORMAT_VERSION)}
    config = getattr(model, "config", None)
    if isinstance(config, ModelConfig):
        header["config"] = json.dumps(model_config_to_dict(config))
    if metadata:
        header["metadata"] = json.dumps(dict(metadata))
    # Serialise in memory, write with Python: a full disk then raises OSError(ENOSPC) naming
    # the file (safetensors' own writer raises a bare SafetensorError).
    data = safetensors_bytes(state, metadata=header)
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))
    return Path(path)


# ---- reading -------------------------------------------------------------------------------


def _is_safetensors(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{"


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Read a weights file without building a model.

    Accepts this project's safetensors files, other safetensors state dicts, and PyTorch
    files holding a plain state dict (or one under ``state_dict`` / ``model`` /
    ``state_dict_ema``), as ``effdet`` saves them. Refuses pickles that carry code.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: the file is empty")
    if _is_safetensors(path):
        return _read_safetensors(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        text = str(err)
        if "weights_only" in text or "Unsupported global" in text or "GLOBAL" in text:
            raise CheckpointError(
                f"{path}: refused to load: the file holds Python objects other than tensors "
                "(possibly code). Only plain state dicts and safetensors are accepted."
            ) from err
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or corrupt?): {err}") from err
    state = _unwrap_state_dict(obj, path)
    return Checkpoint(state_dict=state, source_format="pytorch")


def _read_safetensors(path: Path) -> Checkpoint:
    try:
        state = load_file(str(path))
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors file (truncated or corrupt?): {err}") from err
    if header.get("format") != FORMAT_NAME:
        return Checkpoint(state_dict=dict(state), source_format="safetensors")
    try:
        version = int(header.get("format_version", "0"))
    except ValueError as err:
        raise CheckpointError(f"{path}: the format version in the header is not a number: {err}") from err
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: written by a newer efficientdet (checkpoint format {version}, this version "
            f"reads up to {FORMAT_VERSION}); upgrade the package"
        )
    config = None
    if "config" in header:
        try:
            config = model_config_from_dict(json.loads(header["config"]))
        except (ValueError, TypeError) as err:
            raise CheckpointError(f"{path}: the stored model configuration is invalid: {err}") from err
    metadata: Any = {}
    if "metadata" in header:
        try:
            metadata = json.loads(header["metadata"])
        except ValueError as err:
            raise CheckpointError(f"{path}: the stored metadata is not valid JSON: {err}") from err
        if not isinstance(metadata, dict):
            raise CheckpointError(f"{path}: the stored metadata must be a JSON object")
    return Checkpoint(state_dict=dict(state), config=config, metadata=metadata)


def _unwrap_state_dict(obj: Any, path: Path) -> dict[str, Tensor]:
    if isinstance(obj, Mapping):
        for key in _WRAPPER_KEYS:
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: does not hold a state dict of tensors")
    state = dict(obj)
    for prefix in _PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


# ---- the effdet layout ---------------------------------------------------------------------


def is_effdet_state_dict(state: Mapping[str, Tensor]) -> bool:
    return any(k.startswith("fpn.") for k in state)


_HEAD_BN_REPEAT_FIRST = re.compile(r"^(class_net|box_net)\.bn_rep\.(\d+)\.(\d+)\.bn\.(.+)$")
_HEAD_BN_LEVEL_FIRST = re.compile(r"^(class_net|box_net)\.bn_rep\.(\d+)\.(\d+)\.(.+)$")
_RESAMPLE = re.compile(r"^fpn\.resample\.(\d+)\.conv\.(conv|bn)\.(.+)$")
_COMBINE = re.compile(r"^fpn\.cell\.(\d+)\.fnode\.(\d+)\.combine\.resample\.(\d+)\.conv\.(conv|bn)\.(.+)$")
_EDGE = re.compile(r"^fpn\.cell\.(\d+)\.fnode\.(\d+)\.combine\.edge_weights$")
_AFTER = re.compile(r"^fpn\.cell\.(\d+)\.fnode\.(\d+)\.after_combine\.conv\.(conv_dw|conv_pw|bn)\.(.+)$")
_SEPARABLE = {"conv_dw": "depthwise", "conv_pw": "pointwise", "bn": "bn"}


def convert_effdet_state_dict(state: Mapping[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """Rename an ``effdet`` BiFPN state dict to this package's layout for ``model``.

    effdet keys a node's input resampling by feature id; here projections are kept per input
    position, so the node lists of ``model.neck`` translate one to the other.
    """
    neck = getattr(model, "neck", None)
    cells = getattr(neck, "cells", None)
    if cells is None:
        raise CheckpointError("effdet checkpoints need a BiFPN model (neck='bifpn')")
    num_backbone = len(cast(Any, model).feature_info.channels)
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        new = key
        if m := _RESAMPLE.match(key):
            level, part, rest = m.groups()
            new = f"extra_levels.{int(level) - num_backbone}.proj.{part}.{rest}"
        elif m := _COMBINE.match(key):
            cell, node, offset, part, rest = m.groups()
            ids = cells[int(cell)].nodes[int(node)].input_ids
            new = f"neck.cells.{cell}.nodes.{node}.projs.{ids.index(int(offset))}.{part}.{rest}"
        elif m := _EDGE.match(key):
            cell, node = m.groups()
            new = f"neck.cells.{cell}.nodes.{node}.fusion.weight"
        elif m := _AFTER.match(key):
            cell, node, part, rest = m.groups()
            new = f"neck.cells.{cell}.nodes.{node}.conv.{_SEPARABLE[part]}.{rest}"
        elif m := _HEAD_BN_REPEAT_FIRST.match(key):
            head, repeat, level, rest = m.groups()
            new = f"{head}.norms.{level}.{repeat}.{rest}"
        elif m := _HEAD_BN_LEVEL_FIRST.match(key):
            head, level, repeat, rest = m.groups()
            new = f"{head}.norms.{level}.{repeat}.{rest}"
        elif key.startswith(("class_net.", "box_net.")):
            new = (
                key.replace(".conv_rep.", ".convs.")
                .replace(".conv_dw.", ".depthwise.")
                .replace(".conv_pw.", ".pointwise.")
            )
        out[new] = value
    return out


# ---- loading into a model ------------------------------------------------------------------


def load_state_dict_checked(
    model: nn.Module, state: Mapping[str, Tensor], *, source: str = "checkpoint"
) -> LoadReport:
    """Load ``state`` into ``model``; a different class count skips the class prediction layer
    (with a log message), anything else that does not fit raises one :class:`CheckpointError`
    naming the missing, unexpected and mis-shaped keys."""
    target = model.state_dict()
    missing = [k for k in target if k not in state]
    unexpected = [k for k in state if k not in target]
    misshaped = [
        k for k in state if k in target and tuple(state[k].shape) != tuple(target[k].shape)
    ]
    skipped = [k for k in misshaped if k.startswith(CLASS_PREDICT_PREFIX)]
    misshaped = [k for k in misshaped if k not in skipped]
    if missing or unexpected or misshaped:
        lines = [f"{source} does not fit the model {getattr(getattr(model, 'config', None), 'name', '')!r}:"]
        for label, keys in (("missing", missing), ("unexpected", unexpected)):
            if keys:
                lines.append(f"  {len(keys)} {label} keys: {', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''}")
        if misshaped:
            shown = ", ".join(
                f"{k} {tuple(state[k].shape)} vs {tuple(target[k].shape)}" for k in misshaped[:8]
            )
            lines.append(f"  {len(misshaped)} mis-shaped keys (file vs model): {shown}")
        raise CheckpointError("\n".join(lines))
    loadable = {k: v for k, v in state.items() if k not in skipped}
    if skipped:
        log.warning(
            "%s: class count differs from the model's; loaded everything but the class "
            "prediction layer (%s), which keeps its fresh initialisation",
            source,
            ", ".join(skipped),
        )
        loadable.update({k: target[k] for k in skipped})
    model.load_state_dict(loadable, strict=True)
    return LoadReport(skipped=skipped)


def load_checkpoint(model: nn.Module, path: str | Path) -> LoadReport:
    """Load weights from ``path`` into ``model`` (this project's safetensors, or an ``effdet``
    state dict for the same architecture)."""
    ckpt = read_checkpoint(path)
    state = ckpt.state_dict
    fmt = ckpt.source_format
    if is_effdet_state_dict(state):
        state = convert_effdet_state_dict(state, model)
        fmt = "effdet"
    report = load_state_dict_checked(model, state, source=str(path))
    report.source_format = fmt
    return report
