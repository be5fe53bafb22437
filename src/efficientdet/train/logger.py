"""Run metrics: CSV files per step and per epoch, optional TensorBoard and MLflow, PNG curves
at the end.

``run.loggers`` picks the sinks: ``csv`` (``steps.csv`` / ``epochs.csv``, what the curves and
the studies read), ``tensorboard`` (when installed), ``mlflow``
(:class:`~efficientdet.train.mlflow_logger.MlflowLogger`).
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .mlflow_logger import MlflowLogger

log = logging.getLogger(__name__)

STEP_FIELDS = ("step", "epoch", "loss", "class_loss", "box_loss", "lr", "images_per_s", "elapsed_s")
EPOCH_FIELDS = ("epoch", "step", "loss", "AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large", "AR100")
STEP_METRICS = ("loss", "class_loss", "box_loss", "lr", "images_per_s")
EVAL_METRICS = EPOCH_FIELDS[3:]


class MetricsLogger:
    """Sends each step's and each evaluation's metrics to the run's sinks (rank 0 only).

    CSV: rows appended to ``steps.csv`` and ``epochs.csv`` in the run folder; on resume, rows
    past the resumed step are dropped first, so a run that crashed after its last checkpoint
    does not keep rows for steps it is about to redo.

    Args:
        run_dir: the run folder.
        resume_step: the step a resumed run continues from; None for a new run.
        loggers: the sinks, among ``csv``, ``tensorboard``, ``mlflow``.
        mlflow: the MLflow run, when ``mlflow`` is one of them.
    """

    def __init__(
        self, run_dir: Path, *, resume_step: int | None = None,
        loggers: Sequence[str] = ("csv", "tensorboard"), mlflow: MlflowLogger | None = None,
    ) -> None:
        self.run_dir = run_dir
        self.steps_path = run_dir / "steps.csv"
        self.epochs_path = run_dir / "epochs.csv"
        self.csv = "csv" in loggers
        for path, fields in ((self.steps_path, STEP_FIELDS), (self.epochs_path, EPOCH_FIELDS)):
            if not self.csv:
                break
            if resume_step is None or not path.exists():
                with open(path, "w", newline="") as f:
                    csv.writer(f).writerow(fields)
            else:
                _truncate_after(path, resume_step)
        self.writer: Any = None
        if "tensorboard" in loggers:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:
                log.debug("tensorboard not installed; metrics go to CSV only")
        self.mlflow = mlflow
        self._closed = False

    def log_step(self, row: dict[str, float]) -> None:
        if self.csv:
            _append(self.steps_path, STEP_FIELDS, row)
        step = int(row["step"])
        if self.writer is not None:
            for key in STEP_METRICS:
                self.writer.add_scalar(f"train/{key}", row[key], step)
        if self.mlflow is not None:
            self.mlflow.log_metrics({f"train/{k}": row[k] for k in STEP_METRICS if k in row}, step)

    def log_epoch(self, row: dict[str, float]) -> None:
        if self.csv:
            _append(self.epochs_path, EPOCH_FIELDS, row)
        step = int(row["step"])
        if self.writer is not None:
            for key in ("AP", "AP50", "AP75"):
                if key in row:
                    self.writer.add_scalar(f"val/{key}", row[key], step)
        if self.mlflow is not None:
            self.mlflow.log_metrics({f"val/{k}": row[k] for k in EVAL_METRICS if k in row}, step)

    def close(
        self, status: str = "finished", artifacts: Sequence[tuple[Path, str]] = ()
    ) -> None:
        """Close the sinks, once; MLflow gets ``artifacts`` (``(file or folder, folder in the
        run's artifacts)``, those that exist) and ends the run as ``status`` (``finished``,
        ``interrupted``, ``failed``)."""
        if self._closed:
            return
        self._closed = True
        if self.writer is not None:
            self.writer.close()
        if self.mlflow is not None:
            try:
                self.mlflow.log_artifacts(artifacts)
            finally:
                self.mlflow.close(status)


def _append(path: Path, fields: tuple[str, ...], row: dict[str, float]) -> None:
    with open(path, "a", newline="") as f:
        csv.writer(f).writerow([_fmt(row.get(k, "")) for k in fields])


def _fmt(value: object) -> object:
    return f"{value:.6g}" if isinstance(value, float) else value


def _truncate_after(path: Path, step: int) -> None:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return
    header, body = rows[0], rows[1:]
    index = header.index("step")
    kept = [r for r in body if r and r[index] and int(float(r[index])) <= step]
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([header, *kept])


def read_csv(path: Path) -> list[dict[str, float]]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return [
            {k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)
        ]


def plot_curves(run_dir: Path) -> dict[str, Path]:
    """Write ``loss.png``, ``lr.png`` and ``map.png`` from the run's CSV files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = read_csv(run_dir / "steps.csv")
    epochs = read_csv(run_dir / "epochs.csv")
    paths: dict[str, Path] = {}
    if steps:
        x = [r["step"] for r in steps]
        fig, ax = plt.subplots(figsize=(7, 4))
        for key, colour in (("loss", "#222222"), ("class_loss", "#d8573b"), ("box_loss", "#3b7dd8")):
            y = [r.get(key, float("nan")) for r in steps]
            if key == "box_loss":
                y = [v * 50 for v in y]
                key = "box_loss x50"
            ax.plot(x, _smooth(y), label=key, color=colour, linewidth=1.2)
        ax.set_xlabel("step")
        ax.set_ylabel("loss (smoothed)")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend()
        ax.set_title("Training loss")
        fig.tight_layout()
        paths["loss"] = run_dir / "loss.png"
        fig.savefig(paths["loss"], dpi=100)
        plt.close(fig)

        fig, ax = plt.subplots(figsize=(7, 3))
        ax.plot(x, [r["lr"] for r in steps], color="#2a9d52")
        ax.set_xlabel("step")
        ax.set_ylabel("learning rate")
        ax.grid(alpha=0.3)
        ax.set_title("Learning rate")
        fig.tight_layout()
        paths["lr"] = run_dir / "lr.png"
        fig.savefig(paths["lr"], dpi=100)
        plt.close(fig)
    evals = [r for r in epochs if "AP" in r]
    if evals:
        fig, ax = plt.subplots(figsize=(7, 3.5))
        x = [r["step"] for r in evals]
        for key in ("AP", "AP50", "AP75"):
            ax.plot(x, [r.get(key, float("nan")) for r in evals], marker="o", label=key)
        ax.set_xlabel("step")
        ax.set_ylabel("COCO AP (validation)")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend()
        ax.set_title("Validation mAP")
        fig.tight_layout()
        paths["map"] = run_dir / "map.png"
        fig.savefig(paths["map"], dpi=100)
        plt.close(fig)
    return paths


def _smooth(values: list[float], window: int = 20) -> list[float]:
    out, acc = [], []
    for v in values:
        acc.append(v)
        if len(acc) > window:
            acc.pop(0)
        out.append(sum(acc) / len(acc))
    return out
