"""Load an exported file in the runtime its suffix names: :func:`open_runner` (the graph
alone) and :func:`load_exported` (the graph with the package's pre- and post-processing).

Kept apart from :mod:`efficientdet.deploy.exported`, which the runtimes' own modules build on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .exported import RUNTIMES, ExportedDetector, Runner, runtime_for

__all__ = ["load_exported", "open_runner"]


def open_runner(
    path: str | Path,
    runtime: str = "auto",
    *,
    threads: int | None = None,
    device: str | torch.device = "cpu",
    precision: str | None = None,
) -> Runner:
    """Load an exported file in its runtime.

    Args:
        path: an ``.onnx``, OpenVINO ``.xml`` or LiteRT ``.tflite`` file written by
            ``efficientdet export``.
        runtime: a key of :data:`RUNTIMES`, or ``"auto"`` (by the suffix).
        threads: CPU threads of the runtime (default ``torch.get_num_threads()``).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"`` (ONNX Runtime's providers;
            OpenVINO and LiteRT run on the CPU here).
        precision: OpenVINO's inference precision hint, ``"f32"`` (default: the file's own
            precision, whereas OpenVINO's plugin would pick bf16 on CPUs that have it) or
            ``"bf16"``; other runtimes refuse one.

    Raises:
        ValueError: an unknown runtime or suffix, or a file its runtime cannot load.
        RuntimeError: the runtime's package is not installed (naming the extra).
    """
    name = runtime_for(path) if runtime == "auto" else runtime
    if runtime != "auto" and name not in RUNTIMES:
        raise ValueError(f"runtime {runtime!r} is not one of {', '.join(RUNTIMES)}")
    if name is None:
        known = ", ".join(f"{ext} ({rt})" for rt, ext in RUNTIMES.items())
        raise ValueError(f"{path}: not an exported file (expected {known})")
    if precision is not None and name != "openvino":
        raise ValueError(f"a precision hint ({precision}) is for OpenVINO, not {name}")
    if name == "onnxruntime":
        from .onnx_backend import OnnxRunner

        return OnnxRunner(path, threads=threads, device=device)
    if _is_gpu(device):
        raise ValueError(f"--device {device}: {name} runs on the CPU here; use an .onnx export for CUDA")
    if name == "openvino":
        from .openvino_backend import OpenVinoRunner

        return OpenVinoRunner(path, threads=threads, precision=precision or "f32")
    from .litert_backend import LiteRTRunner

    return LiteRTRunner(path, threads=threads)


def _is_gpu(device: str | torch.device) -> bool:
    return str(device).strip().lower().startswith("cuda")


def load_exported(
    path: str | Path,
    runtime: str = "auto",
    *,
    threads: int | None = None,
    device: str | torch.device = "cpu",
    precision: str | None = None,
    **settings: Any,
) -> ExportedDetector:
    """:class:`ExportedDetector` of ``path`` (:func:`open_runner`'s arguments, then the
    detector's: ``score_threshold``, ``max_detections``, ``nms``, ...)."""
    runner = open_runner(path, runtime, threads=threads, device=device, precision=precision)
    return ExportedDetector(runner, **settings)
