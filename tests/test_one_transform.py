"""Evaluation and prediction share one letterbox and one reverse mapping: ``eval`` reports the
detections that ``predict --all-scores`` writes for the same images and weights, and
pycocotools on ``predict``'s JSON gives ``eval``'s AP."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

import efficientdet as ed
from efficientdet.cli import main
from efficientdet.inference.evaluate import coco_evaluate


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny detector whose class logits are raised, so it returns plenty of boxes."""
    torch.manual_seed(0)
    model = ed.create_model("efficientdet_test", num_classes=10)
    with torch.no_grad():
        model.class_net.predict.pointwise.bias += 5.0
    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    names = [str(i) for i in range(10)]
    return ed.save_checkpoint(model, path, metadata={"class_names": names, "label_to_category_id": list(range(10))})


def _non_square_copy(tiny_demo, root: Path) -> Path:
    """The demo's validation split with every image cropped to a non-square size."""
    doc = json.loads(Path(tiny_demo.val_annotations).read_text())
    (root / "images").mkdir(parents=True)
    for i, image in enumerate(doc["images"]):
        source = Image.open(Path(tiny_demo.val_annotations).parent / image["file_name"]).convert("RGB")
        width = source.width - 8 * (i % 5)  # widths 128, 120, ..., 96: other letterbox scales
        source.crop((0, 0, width, source.height)).save(root / "images" / f"{image['id']}.png")
        image["file_name"] = f"images/{image['id']}.png"
        image["width"] = width
    doc["annotations"] = [
        a for a in doc["annotations"]
        if a["bbox"][0] + a["bbox"][2] <= next(im["width"] for im in doc["images"] if im["id"] == a["image_id"])
    ]
    (root / "val.json").write_text(json.dumps(doc))
    return root / "val.json"


def test_eval_equals_predict_all_scores_and_its_json_gives_the_same_ap(
    tiny_demo, weights: Path, tmp_path: Path
) -> None:
    annotations = _non_square_copy(tiny_demo, tmp_path / "data")
    assert main(["eval", "--weights", str(weights), "--data", str(annotations), "--split", "val",
                 "--out", str(tmp_path / "eval"), "--batch-size", "3"]) == 0
    assert main(["predict", "--weights", str(weights), str(tmp_path / "data" / "images"),
                 "--out", str(tmp_path / "pred"), "--all-scores", "--quiet", "--batch-size", "2"]) == 0

    evaluated = json.loads((tmp_path / "eval" / "detections.json").read_text())
    predicted = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    assert evaluated and len(predicted) == len(evaluated)
    by_image: dict[int, list[dict]] = {}
    for record in predicted:  # predict names images by their file's number: the dataset's id
        by_image.setdefault(record["image_id"], []).append(record)
    for image_id in {r["image_id"] for r in evaluated}:
        ours = sorted((r for r in evaluated if r["image_id"] == image_id), key=lambda r: -r["score"])
        theirs = sorted(by_image[image_id], key=lambda r: -r["score"])
        assert len(ours) == len(theirs)
        for a, b in zip(ours, theirs, strict=True):
            assert a["category_id"] == b["category_id"]
            assert a["score"] == pytest.approx(b["score"], abs=1e-4)
            assert a["bbox"] == pytest.approx(b["bbox"], abs=0.02)

    ground_truth = json.loads(annotations.read_text())
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())["metrics"]
    from_predict = coco_evaluate(ground_truth, [
        {k: r[k] for k in ("image_id", "category_id", "bbox", "score")} for r in predicted
    ]).metrics
    assert metrics["AP50"] > 0
    for key in ("AP", "AP50", "AP75"):
        assert from_predict[key] == pytest.approx(metrics[key], abs=1e-3)
