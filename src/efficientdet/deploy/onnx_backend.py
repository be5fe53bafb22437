"""Run an ONNX export in ONNX Runtime.

:class:`OnnxRunner` is the ONNX :class:`~efficientdet.deploy.exported.Runner`: a session on the
file and its metadata (input size, mean, std, class names; see :mod:`efficientdet.deploy.export`).
:class:`OnnxDetector` is the :class:`~efficientdet.deploy.exported.ExportedDetector` on one:
the same letterbox, post-processing and output as ``Detector.predict``.

:func:`onnx_providers` turns ``--device`` into ONNX Runtime's execution providers: the one
place that chooses them, for every session that predicts.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..devices import parse_device
from .exported import ExportedDetector
from .metadata import ExportMetadata

log = logging.getLogger(__name__)

__all__ = ["OnnxDetector", "OnnxRunner", "onnx_providers"]

# An ONNX Runtime execution provider: its name, or its name and options.
Provider = str | tuple[str, dict[str, Any]]

CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"
TENSORRT_PROVIDER = "TensorrtExecutionProvider"


def _is_auto(device: str | torch.device) -> bool:
    return isinstance(device, str) and device.strip().lower() == "auto"


def onnx_providers(device: str | torch.device = "auto") -> list[Provider]:
    """ONNX Runtime's execution providers for ``device``, best first.

    - ``"cpu"``: the CPU provider.
    - ``"cuda"`` / ``"cuda:N"``: TensorRT (where this onnxruntime has it; its engines cached
      in ``<torch hub dir>/tensorrt``), then CUDA, both on GPU ``N`` (``device_id``, 0 by
      default), then the CPU for operators they do not run.
    - ``"auto"``: the CUDA list when PyTorch sees a GPU and this onnxruntime has the CUDA
      provider, else the CPU.

    Raises:
        ValueError: a device name other than those (:func:`efficientdet.devices.parse_device`),
            or CUDA asked for with an onnxruntime built without it (the CPU-only
            ``onnxruntime`` package, not ``onnxruntime-gpu``).
    """
    ort = _require("onnxruntime")
    available = set(ort.get_available_providers())
    if _is_auto(device):
        if CUDA_PROVIDER not in available or not torch.cuda.is_available():
            return [CPU_PROVIDER]
        target = torch.device("cuda")
    else:
        target = parse_device(device)
    if target.type == "cpu":
        return [CPU_PROVIDER]
    if CUDA_PROVIDER not in available:
        raise ValueError(
            f"--device {device}: onnxruntime {ort.__version__} has no {CUDA_PROVIDER} (it has "
            f"{', '.join(sorted(available))}); pip install onnxruntime-gpu in place of onnxruntime"
        )
    on_gpu = {"device_id": target.index or 0}
    first: list[Provider] = []
    if TENSORRT_PROVIDER in available:
        # TensorRT builds an engine for the graph (minutes for a detector); the cache keeps
        # it for the next session of the same file on the same GPU.
        from torch.hub import get_dir

        engines = Path(get_dir()) / "tensorrt"
        first = [(TENSORRT_PROVIDER, {
            **on_gpu, "trt_engine_cache_enable": True, "trt_engine_cache_path": str(engines),
        })]
    return [*first, (CUDA_PROVIDER, dict(on_gpu)), CPU_PROVIDER]


def _require(module: str) -> Any:
    from .metadata import require_extra

    return require_extra(module, "ONNX Runtime")


class OnnxRunner:
    """An ONNX export loaded in ONNX Runtime (an :class:`~efficientdet.deploy.exported.Runner`).

    Args:
        path: the ``.onnx`` file.
        threads: intra-op threads (default: ``torch.get_num_threads()``).
        device: where the graph runs: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``
            (:func:`onnx_providers`).
        providers: execution providers, in place of ``device``'s.
    """

    runtime = "onnxruntime"

    def __init__(
        self,
        path: str | Path,
        *,
        threads: int | None = None,
        device: str | torch.device = "cpu",
        providers: Sequence[Provider] | None = None,
    ) -> None:
        ort = _require("onnxruntime")

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such ONNX file")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads if threads is not None else torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        wanted = list(providers) if providers is not None else onnx_providers(device)
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=wanted)
        except Exception as err:  # ORT raises its own exception types
            raise ValueError(f"{self.path}: ONNX Runtime cannot load the file ({err})") from err
        self._check_providers(wanted, explicit=providers is not None or not _is_auto(device))
        props = self.session.get_modelmeta().custom_metadata_map
        self.metadata = ExportMetadata.from_props(props, str(self.path))
        self.input_name = self.session.get_inputs()[0].name

    def _check_providers(self, wanted: list[Provider], *, explicit: bool) -> None:
        """Refuse (asked for) or log (``auto``) a session that fell back from the GPU to the
        CPU, as ONNX Runtime does when the CUDA provider cannot start (its CUDA or cuDNN
        libraries missing, or of another version)."""
        names = [p if isinstance(p, str) else p[0] for p in wanted]
        running = self.session.get_providers()
        if CUDA_PROVIDER not in names or CUDA_PROVIDER in running:
            return
        problem = (
            f"{self.path}: ONNX Runtime could not start {CUDA_PROVIDER} and runs on "
            f"{', '.join(running)}; see its log above (the CUDA and cuDNN libraries that "
            "onnxruntime-gpu needs)"
        )
        if explicit:
            raise ValueError(problem)
        log.warning("%s", problem)

    def __call__(self, batch: np.ndarray) -> list[np.ndarray]:
        """The graph's outputs for ``batch: float32[B, 3, H, W]``."""
        return [np.asarray(out) for out in self.session.run(None, {self.input_name: batch})]


class OnnxDetector(ExportedDetector):
    """An ONNX export in ONNX Runtime with the interface of ``Detector``.

    Args:
        path: the ``.onnx`` file.
        threads, device, providers: :class:`OnnxRunner`'s.
        score_threshold, max_detections, nms: :class:`~efficientdet.deploy.exported.ExportedDetector`'s.

    A raw export (``--raw``) is decoded by the package's own post-processing.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        threads: int | None = None,
        device: str | torch.device = "cpu",
        providers: Sequence[Provider] | None = None,
        score_threshold: float | None = None,
        max_detections: int | None = None,
        nms: str = "hard",
    ) -> None:
        runner = OnnxRunner(path, threads=threads, device=device, providers=providers)
        super().__init__(
            runner, score_threshold=score_threshold, max_detections=max_detections, nms=nms
        )

    @property
    def session(self) -> Any:
        """The ONNX Runtime ``InferenceSession``."""
        return self.runner.session  # type: ignore[attr-defined]
