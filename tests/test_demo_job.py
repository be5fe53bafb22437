from pathlib import Path

from efficientdet.cli.demo import run_demo


def test_demo_job_end_to_end_on_a_tiny_setting(tmp_path: Path) -> None:
    """The `make demo` code path: data, training, evaluation, pictures and report."""
    result = run_demo(
        tmp_path / "run",
        data_dir=tmp_path / "data",
        minutes=5,
        progress=False,
        data_args={"seed": 0, "num_train": 16, "num_val": 8, "image_size": 128},
        extra=[
            "model.name=efficientdet_test", "model.pretrained_backbone=false",
            "run.max_steps=4", "run.batch_size=4", "run.eval_every=1", "data.num_workers=0",
        ],
    )
    out = tmp_path / "run"
    for name in ("report.md", "val_grid.png", "loss.png", "lr.png", "map.png", "best.safetensors",
                 "eval/metrics.json", "eval/per_class_ap.png", "eval/report.md",
                 "eval/confusion_matrix.png"):
        assert (out / name).is_file(), name
    text = result.report.read_text()
    assert "AP[.5:.95]" in text and "val_grid.png" in text
    assert "eval/report.md" in text and "eval/confusion_matrix.png" in text
    assert 0.0 <= result.metrics["AP"] <= 1.0
    # a second run reuses the generated data
    stamp = tmp_path / "data" / "demo-args.json"
    before = stamp.stat().st_mtime_ns
    run_demo(tmp_path / "run2", data_dir=tmp_path / "data", minutes=5, progress=False,
             data_args={"seed": 0, "num_train": 16, "num_val": 8, "image_size": 128},
             extra=["model.name=efficientdet_test", "model.pretrained_backbone=false",
                    "run.max_steps=1", "run.batch_size=4", "data.num_workers=0"])
    assert stamp.stat().st_mtime_ns == before
