"""``run.loggers: [csv, mlflow]``: a tiny training run logs its parameters, metrics per step
and per evaluation, checkpoints, evaluation report and curves to MLflow's default store in
the run folder, and ``--resume`` continues the same MLflow run without logging a step twice."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("mlflow", reason="the mlflow extra is not installed")

from efficientdet.train import Trainer, load_config, train  # noqa: E402
from efficientdet.train.mlflow_logger import RUN_FILE, flatten_params  # noqa: E402


def _config(tiny_demo, out: Path, *extra: str):
    return load_config(None, [
        "model.name=efficientdet_test", "model.pretrained_backbone=false",
        f"data.train={tiny_demo.data_yaml}", f"data.val={tiny_demo.data_yaml}",
        f"run.out_dir={out}", "run.batch_size=4", "run.progress=false", "run.eval_every=0",
        "run.save_every_steps=0", "run.log_every=1", "data.num_workers=0", "run.max_steps=6",
        "run.loggers=[csv, mlflow]", *extra,
    ])


def test_a_run_logs_to_mlflow_and_resume_continues_the_same_run(tiny_demo, tmp_path, monkeypatch):
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)  # MLflow's relative defaults (./mlruns) land here, if anywhere
    run_dir = tmp_path / "run"
    first = train(_config(tiny_demo, run_dir), on_step=lambda step, row: step == 3)
    assert first.status == "interrupted"
    stored = json.loads((run_dir / RUN_FILE).read_text())
    assert stored["tracking_uri"] is None  # the run folder's own store
    client = MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}")
    run_id = stored["run_id"]
    assert client.get_run(run_id).info.status == "KILLED"
    # As if the first process had logged steps 4 and 5 and crashed before saving them.
    client.log_batch(run_id, metrics=[Metric("train/loss", 9.0, 0, 4), Metric("train/loss", 9.0, 0, 5)])

    rest = Trainer.resume(run_dir).fit()
    assert rest.status == "finished" and rest.step == 6
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    runs = client.search_runs([run.info.experiment_id])
    assert [r.info.run_id for r in runs] == [run_id]  # continued, not a second run
    params = run.data.params
    assert params["model.name"] == "efficientdet_test" and params["run.max_steps"] == "6"
    assert params["run.loggers"] == '["csv", "mlflow"]' and params["optim.lr"] == "null"
    history = client.get_metric_history(run_id, "train/loss")
    assert sorted(m.step for m in history) == [1, 2, 3, 4, 5, 6]  # 4 and 5 kept, not twice
    assert {m.step: m.value for m in history}[4] == 9.0
    assert {"train/lr", "train/class_loss", "train/box_loss", "train/images_per_s"} <= set(run.data.metrics)
    assert [m.step for m in client.get_metric_history(run_id, "val/AP")] == [6]
    assert run.data.metrics["val/AP"] == pytest.approx(rest.metrics["AP"])

    def listed(folder: str = "") -> set[str]:
        return {a.path for a in client.list_artifacts(run_id, folder or None)}

    assert {"config.yaml", "checkpoints", "eval", "plots"} <= listed()
    assert listed("checkpoints") == {"checkpoints/last.safetensors", "checkpoints/best.safetensors"}
    assert {"eval/metrics.json", "eval/report.md", "eval/pr_curves.png"} <= listed("eval")
    assert {"plots/loss.png", "plots/lr.png", "plots/map.png"} <= listed("plots")
    local = Path(run.info.artifact_uri.removeprefix("file://"))
    assert local.is_relative_to(run_dir.resolve())  # artifacts under the run folder too


def test_a_tracking_uri_is_used_as_given_and_params_are_flat(tiny_demo, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    # A local file store (MLflow 3 keeps it for old runs, behind this switch).
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.chdir(tmp_path)  # MLflow's relative defaults (./mlruns) land here, if anywhere
    uri = (tmp_path / "mlruns").as_uri()
    result = train(_config(
        tiny_demo, tmp_path / "run", "run.max_steps=2", f"run.mlflow_tracking_uri={uri}",
        "run.mlflow_experiment=digits", "data.val=''",
    ))
    assert result.status == "finished"
    assert not (tmp_path / "run" / "mlflow.db").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlruns", "run"]
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("digits")
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id])
    assert json.loads((tmp_path / "run" / RUN_FILE).read_text())["tracking_uri"] == uri
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "train/loss")) == [1, 2]
    assert flatten_params({"a": {"b": [1, 2], "c": None, "d": {}}, "e": "x" * 7000}) == {
        "a.b": "[1, 2]", "a.c": "null", "a.d": "{}", "e": "x" * 5997 + "...",
    }


def test_unknown_loggers_are_refused():
    with pytest.raises(ValueError, match="run.loggers: 'wandb' not one of 'csv', 'tensorboard', 'mlflow'"):
        load_config(None, ["run.loggers=[csv, wandb]"])
    assert load_config(None, ["run.loggers=mlflow"]).run.loggers == ("mlflow",)


def test_a_password_in_the_tracking_uri_stays_out_of_the_params_and_the_log(tmp_path, monkeypatch, caplog):
    from types import SimpleNamespace

    from efficientdet.train import mlflow_logger

    logged: dict[str, object] = {}

    class Client:  # a server-backed store, as far as the logger can tell
        def __init__(self, uri: str) -> None:
            logged["uri"] = uri

        def get_experiment_by_name(self, name):
            return SimpleNamespace(experiment_id="7")

        def create_run(self, experiment_id, run_name=None, tags=None):
            return SimpleNamespace(info=SimpleNamespace(run_id="r1"))

        def get_run(self, run_id):
            return SimpleNamespace(data=SimpleNamespace(params={}))

        def log_batch(self, run_id, params=(), tags=()):
            logged.update({p.key: p.value for p in params})

    monkeypatch.setattr(mlflow_logger, "import_mlflow", lambda: SimpleNamespace(MlflowClient=Client))
    uri = "postgresql://trainer:hunter2@db.internal:5432/mlflow"
    config = {"run": {"mlflow_tracking_uri": uri, "epochs": 3}}
    with caplog.at_level("INFO", logger=mlflow_logger.__name__):
        mlflow_logger.MlflowLogger(tmp_path, config, tracking_uri=uri)
    assert logged["uri"] == uri  # the client connects with the password
    assert logged["run.mlflow_tracking_uri"] == "postgresql://trainer:***@db.internal:5432/mlflow"
    assert logged["run.epochs"] == "3"
    assert caplog.messages and not any("hunter2" in m for m in caplog.messages)
