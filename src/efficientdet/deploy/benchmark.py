"""``efficientdet benchmark``: one model in every format and precision, side by side.

For each variant (PyTorch eager and optimised, bf16 where the CPU has it; ONNX Runtime,
OpenVINO and LiteRT in fp32 and calibrated int8; OpenVINO's bf16 hint) it exports the file,
then measures on this machine:

- the file size;
- batch-1 latency end to end: a decoded image in, detections in its pixels out (letterbox,
  network, post-processing, boxes mapped back: what ``predict`` runs per image);
- batch-8 throughput, images per second, the same way;
- COCO AP and AP50 on the dataset's validation split through ``eval``'s own evaluation.

Timings are medians over rounds in which every variant runs once in turn
(:func:`~efficientdet.devices.time_round_robin`), so load from other processes falls on all
of them alike. :func:`fastest_within` names the fastest variant within 0.01 AP of fp32 PyTorch.
"""

from __future__ import annotations

import csv
import json
import logging
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..devices import parse_device, time_round_robin
from ..inference.predictor import LetterboxPredictor

log = logging.getLogger(__name__)

__all__ = [
    "BENCHMARK_FORMATS",
    "BENCHMARK_PRECISIONS",
    "BenchmarkRow",
    "Variant",
    "cpu_has_bf16",
    "fastest_within",
    "plan_variants",
    "run_benchmark",
    "write_report",
]

BENCHMARK_FORMATS = ("pytorch", "onnx", "openvino", "litert")
# Timing turns: a re-warming call and three timed ones, after a pause in which the previous
# variant's worker threads stop spinning. Back-to-back variants without the pause measured
# ONNX Runtime int8 and OpenVINO fp32 at 2-2.5x their own time on 2 cores.
CALLS_PER_TURN = 4
PAUSE_S = 0.2
BENCHMARK_PRECISIONS = ("fp32", "bf16", "int8")
Detect = Callable[[Tensor], Any]


@dataclass(frozen=True)
class Variant:
    """One way to run the model: a format, a precision, and for PyTorch whether it is
    :func:`~efficientdet.modeling.optimize.optimize_for_inference`'d."""

    fmt: str
    precision: str
    optimized: bool = False

    @property
    def name(self) -> str:
        base = "pytorch-optimized" if self.optimized else self.fmt
        return f"{base} {self.precision}"


@dataclass
class BenchmarkRow:
    """What :func:`run_benchmark` measured of one :class:`Variant` (``None``: not measured).

    Attributes:
        variant, fmt, precision: what ran.
        file: the exported file (``None`` for PyTorch).
        size_mb: the file's size (PyTorch: its parameters and buffers), MB.
        export_s: seconds to export (and calibrate).
        latency_ms: median batch-1 time end to end.
        throughput: images per second at batch 8, end to end (median round).
        ap, ap50: COCO AP and AP50 (0-1) on the validation split.
        note: why a variant did not run, or what to know about it.
    """

    variant: str
    fmt: str
    precision: str
    file: str | None = None
    size_mb: float | None = None
    export_s: float | None = None
    latency_ms: float | None = None
    throughput: float | None = None
    ap: float | None = None
    ap50: float | None = None
    note: str = ""
    times_ms: list[float] = field(default_factory=list, repr=False)


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (``avx512_bf16`` or ``amx_bf16`` in its flags)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines()
                  if line.startswith("flags")), [])
    return "avx512_bf16" in flags or "amx_bf16" in flags


def plan_variants(
    formats: Sequence[str] = BENCHMARK_FORMATS,
    precisions: Sequence[str] = BENCHMARK_PRECISIONS,
    *,
    device: str = "cpu",
    bf16: bool | None = None,
) -> tuple[list[Variant], list[BenchmarkRow]]:
    """The variants to run, and rows for those left out with the reason.

    On CUDA only PyTorch and ONNX Runtime run (OpenVINO and LiteRT run on the CPU here);
    bf16 runs where the CPU has it (``bf16`` overrides the check) or on CUDA.
    """
    unknown = sorted(set(formats) - set(BENCHMARK_FORMATS)) + sorted(
        set(precisions) - set(BENCHMARK_PRECISIONS)
    )
    if unknown:
        raise ValueError(f"unknown format or precision: {', '.join(unknown)}")
    cuda = parse_device(device).type == "cuda"
    has_bf16 = cpu_has_bf16() if bf16 is None else bf16
    candidates = [
        Variant("pytorch", "fp32"), Variant("pytorch", "fp32", optimized=True),
        Variant("pytorch", "bf16", optimized=True),
        Variant("onnx", "fp32"), Variant("onnx", "int8"),
        Variant("openvino", "fp32"), Variant("openvino", "bf16"), Variant("openvino", "int8"),
        Variant("litert", "fp32"), Variant("litert", "int8"),
    ]
    chosen: list[Variant] = []
    skipped: list[BenchmarkRow] = []
    for variant in candidates:
        if variant.fmt not in formats or variant.precision not in precisions:
            continue
        reason = ""
        if cuda and variant.fmt in ("openvino", "litert"):
            reason = f"{variant.fmt} runs on the CPU here, not on {device}"
        elif cuda and variant.fmt == "onnx" and variant.precision == "int8":
            reason = "int8 ONNX is a CPU format here (its QDQ kernels)"
        elif variant.precision == "bf16" and not (has_bf16 or cuda):
            reason = "this CPU has no native bf16 (avx512_bf16 / amx_bf16)"
        if reason:
            skipped.append(BenchmarkRow(variant.name, variant.fmt, variant.precision, note=reason))
        else:
            chosen.append(variant)
    return chosen, skipped


@dataclass
class _Built:
    """A variant ready to time: ``detect`` on normalised batches, plus its input spec, and
    its own end-to-end ``predict`` where it has one (an export's, which runs PyTorch's part
    single-threaded: :class:`~efficientdet.deploy.exported.ExportedDetector`)."""

    row: BenchmarkRow
    detect: Detect
    image_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    predict: Callable[[Sequence[Any]], object] | None = None

    @property
    def predictor(self) -> Callable[[Sequence[Any]], object]:
        if self.predict is not None:
            return self.predict
        return LetterboxPredictor(self.detect, self.image_size, self.mean, self.std)


def _pytorch_variant(variant: Variant, loaded: Any, device: torch.device) -> _Built:
    """Eager, optimised or bf16-autocast PyTorch on ``device``."""
    from ..detection.detector import Detector
    from ..modeling.optimize import optimize_for_inference

    model = loaded.model.to(device).eval()
    if variant.optimized:
        model = optimize_for_inference(model, channels_last=device.type == "cpu")
    detector = Detector(
        model, score_threshold=0.001, suppressed_labels=loaded.suppressed_labels
    ).eval()
    autocast = variant.precision == "bf16"

    @torch.inference_mode()
    def detect(batch: Tensor) -> Any:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            detections = detector(batch.to(device))
        return [{k: v.float() if v.is_floating_point() else v for k, v in d.items()}
                for d in detections]

    size = sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 1e6
    row = BenchmarkRow(variant.name, variant.fmt, variant.precision, size_mb=round(size, 2))
    cfg = loaded.model.config
    return _Built(row, detect, cfg.image_size, cfg.mean, cfg.std)


def _export_variant(
    variant: Variant,
    loaded: Any,
    workdir: Path,
    calibration: Any,
    exported: dict[str, Path],
    *,
    device: str,
    threads: int,
) -> _Built:
    """Export (or reuse the fp32 file for OpenVINO's bf16 hint) and load in the runtime."""
    from .formats import FORMAT_SUFFIX, export_model
    from .runtimes import load_exported

    started = time.perf_counter()
    precision_hint = None
    key = f"{variant.fmt}-{'int8' if variant.precision == 'int8' else 'fp32'}"
    if variant.fmt == "openvino" and variant.precision == "bf16":
        precision_hint = "bf16"
    if variant.precision == "int8" and calibration is None:
        raise RuntimeError("int8 needs calibration images: give --data")
    if key not in exported:
        path = workdir / f"model-{key}{FORMAT_SUFFIX[variant.fmt]}"
        export_model(
            loaded.model.cpu(), path, fmt=variant.fmt,
            batch=1 if variant.fmt == "litert" else "dynamic",
            class_names=loaded.class_names, label_to_category_id=loaded.label_to_category_id,
            calibration=calibration if variant.precision == "int8" else None,
        )
        exported[key] = path
    path = exported[key]
    detector = load_exported(
        path, threads=threads, device=device, precision=precision_hint, score_threshold=0.001
    )
    files = [path, path.with_suffix(".bin")] if variant.fmt == "openvino" else [path]
    size = sum(f.stat().st_size for f in files if f.is_file()) / 1e6
    row = BenchmarkRow(
        variant.name, variant.fmt, variant.precision, file=str(path), size_mb=round(size, 2),
        export_s=round(time.perf_counter() - started, 1),
    )
    meta = detector.metadata
    return _Built(row, detector.detect, meta.image_size, meta.mean, meta.std, detector.predict)


def _time_variants(
    rows: Sequence[BenchmarkRow],
    predictors: Sequence[Callable[[Sequence[Any]], object]],
    images: Sequence[Any],
    *,
    repeats: int,
    device: str,
) -> None:
    """Median batch-1 latency and batch-8 throughput of each predictor into its row, rounds
    interleaved. In each round a predictor takes a turn of :data:`CALLS_PER_TURN` calls after
    a pause of :data:`PAUSE_S` (:func:`~efficientdet.devices.time_round_robin`): timed back to
    back, as a deployed model runs, with the runtime before it idle."""
    one, eight = [images[0]], [images[i % len(images)] for i in range(8)]
    sync = device if parse_device(device).type == "cuda" else None
    singles = time_round_robin(
        [partial(p, one) for p in predictors], repeats=repeats, warmup=1, device=sync,
        calls_per_turn=CALLS_PER_TURN, pause_s=PAUSE_S,
    )
    batches = time_round_robin(
        [partial(p, eight) for p in predictors], repeats=max(3, repeats // 3), warmup=0,
        device=sync, calls_per_turn=CALLS_PER_TURN, pause_s=PAUSE_S,
    )
    for row, single, batch in zip(rows, singles, batches, strict=True):
        row.times_ms = [round(t * 1000, 2) for t in single]
        row.latency_ms = round(statistics.median(single) * 1000, 2)
        row.throughput = round(8 / statistics.median(batch), 2)


def _score_variants(built: Sequence[_Built], data: Any, label_to_category_id: Any) -> None:
    """COCO AP and AP50 of each variant on ``data`` (``eval``'s evaluation)."""
    from ..inference.evaluate import evaluate_detector

    for b in built:
        result, _ = evaluate_detector(
            b.detect, data, image_size=b.image_size, mean=b.mean, std=b.std, batch_size=8,
            label_to_category_id=label_to_category_id, error_analysis=False,
        )
        b.row.ap = round(float(result.metrics["AP"]), 4)
        b.row.ap50 = round(float(result.metrics["AP50"]), 4)


def run_benchmark(
    loaded: Any,
    workdir: str | Path,
    variants: Sequence[Variant],
    *,
    images: Sequence[Any],
    data: Any = None,
    calibration: Any = None,
    label_to_category_id: Sequence[int] | None = None,
    repeats: int = 10,
    threads: int = 2,
    device: str = "cpu",
    others: Mapping[str, Callable[[Sequence[Any]], object]] | None = None,
) -> list[BenchmarkRow]:
    """Export, time and score every variant; a variant that fails gets a row with the reason.

    Args:
        loaded: a :class:`~efficientdet.inference.loading.LoadedModel`.
        workdir: where the exported files go.
        variants: from :func:`plan_variants`.
        images: decoded images (PIL) to time on: batch 1 takes the first, batch 8 cycles them.
        data: a :class:`~efficientdet.data.DetectionData` to score on (None: no AP).
        calibration: a :class:`~efficientdet.deploy.calibration.Calibration` for int8.
        label_to_category_id: the model's labels as ``data``'s category ids.
        repeats: timed rounds at batch 1 (a third of them at batch 8, at least 3).
        threads: CPU threads of every runtime (and of PyTorch).
        device: ``"cpu"`` or ``"cuda[:N]"``.
        others: more predictors (a list of images in, anything out; another library's, say)
            timed in the same rounds, reported as format ``"other"`` without AP.
    """
    torch.set_num_threads(threads)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    torch_device = parse_device(device)
    built: list[_Built] = []
    failed: list[BenchmarkRow] = []
    exported: dict[str, Path] = {}
    for variant in variants:
        log.info("building %s", variant.name)
        try:
            if variant.fmt == "pytorch":
                built.append(_pytorch_variant(variant, loaded, torch_device))
            else:
                built.append(_export_variant(
                    variant, loaded, workdir, calibration, exported, device=device, threads=threads,
                ))
        except (RuntimeError, ValueError, OSError) as err:
            log.warning("%s: %s", variant.name, err)
            failed.append(BenchmarkRow(variant.name, variant.fmt, variant.precision, note=str(err)))
    extra = dict(others or {})
    rows = [b.row for b in built] + [BenchmarkRow(name, "other", "fp32") for name in extra]
    predictors = [b.predictor for b in built] + list(extra.values())
    _time_variants(rows, predictors, images, repeats=repeats, device=device)
    if data is not None:
        _score_variants(built, data, label_to_category_id)
    return rows + failed


def fastest_within(rows: Sequence[BenchmarkRow], tolerance: float = 0.01) -> BenchmarkRow | None:
    """The lowest-latency row of this package's whose AP is within ``tolerance`` of fp32
    PyTorch's (any timed row when no AP was measured); ``"other"`` rows never win."""
    timed = [r for r in rows if r.latency_ms is not None and r.fmt != "other"]
    reference = next((r for r in rows if r.variant == "pytorch fp32" and r.ap is not None), None)
    if reference is not None and reference.ap is not None:
        floor = reference.ap - tolerance
        timed = [r for r in timed if r.ap is not None and r.ap >= floor]
    return min(timed, key=lambda r: r.latency_ms or float("inf"), default=None)


_COLUMNS = ("variant", "size_mb", "export_s", "latency_ms", "throughput", "ap", "ap50", "note")
_HEADERS = ("variant", "size MB", "export s", "batch-1 ms", "batch-8 img/s", "AP", "AP50", "note")


def _cell(value: Any) -> str:
    return "" if value is None else str(value)


def format_table(rows: Sequence[BenchmarkRow]) -> str:
    """The rows as a Markdown table."""
    lines = ["| " + " | ".join(_HEADERS) + " |", "|" + "---|" * len(_HEADERS)]
    for row in rows:
        values = asdict(row)
        lines.append("| " + " | ".join(_cell(values[c]) for c in _COLUMNS) + " |")
    return "\n".join(lines)


def write_report(
    rows: Sequence[BenchmarkRow], out: str | Path, header: Sequence[str] = ()
) -> dict[str, Path]:
    """``benchmark.md`` (the header lines, the table, the fastest within 0.01 AP),
    ``benchmark.csv``, ``benchmark.json`` and ``benchmark.png`` (AP against latency) in ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    best = fastest_within(rows)
    verdict = (
        f"Fastest within 0.01 AP of pytorch fp32: **{best.variant}** ({best.latency_ms} ms)"
        if best is not None else "No variant was timed."
    )
    paths = {name: out / f"benchmark.{name}" for name in ("md", "csv", "json", "png")}
    paths["md"].write_text("\n".join([*header, "", format_table(rows), "", verdict, ""]))
    with paths["csv"].open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(("format", "precision", *_COLUMNS))
        for row in rows:
            values = asdict(row)
            writer.writerow((row.fmt, row.precision, *(_cell(values[c]) for c in _COLUMNS)))
    paths["json"].write_text(json.dumps(
        {"header": list(header), "rows": [asdict(r) for r in rows],
         "fastest_within_0.01_ap": best.variant if best else None}, indent=2,
    ))
    if not _plot(rows, paths["png"]):
        del paths["png"]
    return paths


def _plot(rows: Sequence[BenchmarkRow], path: Path) -> bool:
    """AP (or, without one, throughput) against batch-1 latency; False when nothing to draw."""
    points = [r for r in rows if r.latency_ms is not None]
    if not points:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    use_ap = all(r.ap is not None for r in points)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in points:
        x, y = float(r.latency_ms or 0.0), float((r.ap if use_ap else r.throughput) or 0.0)
        ax.scatter(x, y)
        ax.annotate(r.variant, (x, y), fontsize=8, xytext=(4, 3), textcoords="offset points")
    ax.set_xlabel("batch-1 latency end to end, ms (lower is better)")
    ax.set_ylabel("COCO AP" if use_ap else "batch-8 images/s")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
