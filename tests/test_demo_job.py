import json
from pathlib import Path

from PIL import Image

from efficientdet.cli.demo import run_demo


def test_demo_job_end_to_end_on_a_tiny_setting(tmp_path: Path) -> None:
    """The `make demo` code path: data, training, evaluation, pictures and report.

    The reuse of the generated data is tested with ``prepare_demo_data`` itself
    (tests/data/test_data_demo.py), without a second training."""
    data_args = {"seed": 0, "num_train": 16, "num_val": 8, "image_size": 128}
    result = run_demo(
        tmp_path / "run",
        data_dir=tmp_path / "data",
        minutes=5,
        progress=False,
        data_args=data_args,
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
    # The final evaluation covers the 8 validation images, and the report shows its numbers.
    evaluation = json.loads((out / "eval" / "metrics.json").read_text())
    assert evaluation["num_images"] == 8 and result.metrics == evaluation["metrics"]
    m = result.metrics
    text = result.report.read_text()
    assert f"| {m['AP']:.3f} | {m['AP50']:.3f} | {m['AP75']:.3f} | {m['AP_small']:.3f} |" in text
    assert "16 training and 8 validation images of 128 px" in text
    # Four steps of 4 images: one epoch; the recipe printed without the run's own paths.
    assert "- steps: 4 (1.0 epochs), batch 4" in text
    assert "run.max_steps=4" in text and "data.train=" not in text and "run.out_dir=" not in text
    assert "eval/report.md" in text and "eval/confusion_matrix.png" in text
    # The grid: the 8 validation images, 4 a row, 128 px cells with 4 px padding.
    with Image.open(out / "val_grid.png") as grid:
        assert grid.size == (4 * 128 + 5 * 4, 2 * 128 + 3 * 4)
    assert json.loads((tmp_path / "data" / "demo-args.json").read_text()) == data_args
