"""examples/ray_data_predict.py: the library's predictor over a folder with Ray Data on a local
Ray cluster gives the detections `efficientdet predict` gives."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("ray.data", reason="ray is not installed (pip install 'efficientdet[ray]')")

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_ray_data_example_matches_predict(tmp_path):
    import efficientdet as ed
    from efficientdet.deploy.backends import build_predictor
    from efficientdet.inference.predict import read_records, run_prediction

    weights = ed.save_checkpoint(
        ed.create_model("efficientdet_test", num_classes=3), tmp_path / "tiny.safetensors",
        metadata={"class_names": ["a", "b", "c"]},
    )
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        pixels = rng.integers(0, 255, (60 + 10 * i, 80, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"p{i}.png")
    (folder / "broken.png").write_bytes(b"not a png at all")

    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}
    run = subprocess.run(
        [sys.executable, str(REPO / "examples" / "ray_data_predict.py"), str(folder),
         "--weights", str(weights), "--out", str(tmp_path / "ray-out"), "--score-threshold",
         "0.0", "--actors", "1", "--batch-size", "4", "--num-cpus", "2"],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    rows = [json.loads(line) for f in sorted((tmp_path / "ray-out").glob("*.json"))
            for line in f.read_text().splitlines() if line.strip()]
    by_name = {Path(r["path"]).name: r for r in rows}
    assert sorted(by_name) == ["broken.png", *[f"p{i}.png" for i in range(6)]]
    assert by_name["broken.png"]["error"] == "not an image (format not recognised)"

    predictor = build_predictor(weights, score_threshold=0.0, device="cpu")
    run_prediction(predictor.predict_fn, sorted(folder.glob("p*.png")), tmp_path / "local",
                   class_names=predictor.class_names, progress=False)
    for record in read_records(tmp_path / "local"):
        row = by_name[Path(record["file_name"]).name]
        assert (row["width"], row["height"]) == (record["width"], record["height"])
        assert len(row["detections"]) == len(record["detections"]) > 0
        best, expected = row["detections"][0], record["detections"][0]
        assert best["category"] == expected["category"]
        assert best["box"] == pytest.approx(expected["box"], abs=0.05)
