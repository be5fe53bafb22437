"""A training run in MLflow: its parameters, metrics, checkpoints and evaluation report
(``run.loggers: [..., mlflow]``; ``pip install 'efficientdet[mlflow]'``).

Where: ``run.mlflow_tracking_uri`` when given (a tracking server ``http://...``, a shared
``sqlite:///...`` file, ``databricks``); by default an SQLite store in the run folder,
``<run>/mlflow.db``, with the artifacts in ``<run>/mlartifacts/`` (MLflow 3 keeps its plain
file store for reading old runs only). Look at it with ``mlflow ui --backend-store-uri
sqlite:///<run>/mlflow.db`` (the ``mlflow`` package; ``mlflow-skinny`` writes but has no UI).

What: the resolved configuration as parameters (``model.name``, ``optim.lr``, ...; nested
values flattened with dots), per step ``train/loss``, ``train/class_loss``, ``train/box_loss``,
``train/lr``, ``train/images_per_s``, per evaluation ``val/AP``, ``val/AP50``, ... at their
step, and at the end the artifacts: ``config.yaml``, the ``last`` and ``best`` weights under
``checkpoints/``, the evaluation report under ``eval/`` and the curves under ``plots/``.

Resume: the run's id is kept in ``<run>/mlflow_run.json``; ``efficientdet train --resume``
continues that MLflow run (status RUNNING again) in the same store. Steps redone after the
last checkpoint are not logged twice: MLflow keeps the first values (resuming retraces the
same losses). Parameters a resume changed are kept as they were and the new values set as
tags ``resumed.<key>``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..inference.live import redact

log = logging.getLogger(__name__)

RUN_FILE = "mlflow_run.json"
DEFAULT_STORE = "mlflow.db"
ARTIFACTS_FOLDER = "mlartifacts"
MAX_PARAM_CHARS = 6000  # MLflow refuses longer parameter values
BATCH = 100  # parameters (and tags) per request, MLflow's limit
STATUSES = {"finished": "FINISHED", "interrupted": "KILLED", "failed": "FAILED"}


def import_mlflow() -> Any:
    """``mlflow.tracking``; ``ImportError`` saying how to install it when it is missing."""
    try:
        from mlflow import tracking
    except ImportError as e:
        raise ImportError(
            "run.loggers has mlflow, which is not installed: pip install 'efficientdet[mlflow]'"
        ) from e
    return tracking


def flatten_params(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"model": {"name": "d0"}}`` -> ``{"model.name": "d0"}``: MLflow parameters, lists and
    None as their JSON text, values cut to :data:`MAX_PARAM_CHARS`."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten_params(value, name + "."))
            continue
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        flat[name] = text if len(text) <= MAX_PARAM_CHARS else text[: MAX_PARAM_CHARS - 3] + "..."
    return flat


def _chunks(items: list[Any], size: int = BATCH) -> Iterable[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


class MlflowLogger:
    """The MLflow run of one training run (module docstring).

    Args:
        run_dir: the training run's folder.
        config: the resolved configuration (``TrainConfig.to_dict()``), logged as parameters.
        tracking_uri: where to log; None: ``sqlite:///<run_dir>/mlflow.db``.
        experiment: the MLflow experiment, made when missing.
        resume_step: the step a resumed run continues from (None: a new run): its MLflow run
            is continued, and steps up to what it logged are not logged again.
    """

    def __init__(
        self, run_dir: Path, config: Mapping[str, Any], *, tracking_uri: str | None = None,
        experiment: str = "efficientdet", resume_step: int | None = None,
    ) -> None:
        tracking = import_mlflow()
        self.run_dir = run_dir
        stored = self._stored() if resume_step is not None else None
        given = stored["tracking_uri"] if stored else tracking_uri  # None: the run's own store
        self._given_uri = given
        self.tracking_uri = given or f"sqlite:///{(run_dir / DEFAULT_STORE).resolve()}"
        self.client = tracking.MlflowClient(self.tracking_uri)
        self.logged_until = -1  # steps up to this are in MLflow already
        if stored:
            self.run_id = str(stored["run_id"])
            self.client.update_run(self.run_id, status="RUNNING")
            self.logged_until = self._last_logged_step()
            log.info("continuing MLflow run %s in %s", self.run_id, redact(self.tracking_uri))
        else:
            self.run_id = self._create_run(experiment)
        params = flatten_params(config)
        for key, value in params.items():  # a database URI's password stays out of MLflow
            if key.endswith("tracking_uri"):
                params[key] = redact(value)
        self._log_params(params)
        self._closed = False

    def _stored(self) -> dict[str, Any] | None:
        path = self.run_dir / RUN_FILE
        if not path.is_file():
            log.warning("%s: no MLflow run to continue; starting a new one", path)
            return None
        try:
            stored = json.loads(path.read_text())
            uri = stored["tracking_uri"]
            return {"tracking_uri": None if uri is None else str(uri), "run_id": str(stored["run_id"])}
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path}: not an MLflow run record ({e})") from None

    def _create_run(self, experiment: str) -> str:
        found = self.client.get_experiment_by_name(experiment)
        if found is not None:
            experiment_id = found.experiment_id
        else:
            own_store = self._given_uri is None
            location = (self.run_dir / ARTIFACTS_FOLDER).resolve().as_uri() if own_store else None
            experiment_id = self.client.create_experiment(experiment, artifact_location=location)
        run = self.client.create_run(
            experiment_id, run_name=self.run_dir.resolve().name,
            tags={"mlflow.source.name": "efficientdet train", "run_dir": str(self.run_dir.resolve())},
        )
        # tracking_uri None: the run folder's own store, wherever the folder is moved to.
        record = {"tracking_uri": self._given_uri, "run_id": run.info.run_id,
                  "experiment_id": experiment_id}
        partial = self.run_dir / (RUN_FILE + ".partial")
        partial.write_text(json.dumps(record, indent=1))
        partial.replace(self.run_dir / RUN_FILE)
        log.info("MLflow run %s in %s", run.info.run_id, redact(self.tracking_uri))
        return str(run.info.run_id)

    def _last_logged_step(self) -> int:
        steps = [-1]
        for key in ("train/loss", "val/AP"):
            steps += [m.step for m in self.client.get_metric_history(self.run_id, key)]
        return max(steps)

    def _log_params(self, params: dict[str, str]) -> None:
        from mlflow.entities import Param, RunTag

        existing = self.client.get_run(self.run_id).data.params
        new = [Param(k, v) for k, v in params.items() if k not in existing]
        changed = [RunTag(f"resumed.{k}", v) for k, v in params.items() if k in existing and existing[k] != v]
        for chunk in _chunks(new):
            self.client.log_batch(self.run_id, params=chunk)
        for chunk in _chunks(changed):
            self.client.log_batch(self.run_id, tags=chunk)

    def log_metrics(self, values: Mapping[str, float], step: int) -> None:
        """Log ``{name: value}`` at ``step`` (skipped for a step a resumed run logged)."""
        if step <= self.logged_until or not values:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, step) for k, v in values.items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def log_artifacts(self, artifacts: Iterable[tuple[Path, str]]) -> None:
        """Upload each ``(file or folder, folder in the run's artifacts)`` that exists."""
        for path, folder in artifacts:
            if path.is_dir():
                self.client.log_artifacts(self.run_id, str(path), folder)
            elif path.is_file():
                self.client.log_artifact(self.run_id, str(path), folder or None)

    def close(self, status: str) -> None:
        """End the MLflow run as ``status`` (``finished``, ``interrupted`` or ``failed``)."""
        if not self._closed:
            self.client.set_terminated(self.run_id, STATUSES[status])
            self._closed = True
