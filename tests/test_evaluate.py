import contextlib
import io

import pytest
import torch

from efficientdet.inference.evaluate import coco_evaluate, detections_to_coco


def _ground_truth() -> dict:
    images = [{"id": i, "file_name": f"{i}.png", "height": 100, "width": 120} for i in (1, 2, 3)]
    boxes = {1: [(10, 10, 30, 40, 7)], 2: [(50, 20, 20, 20, 7), (5, 5, 60, 60, 9)], 3: [(0, 0, 10, 12, 9)]}
    annotations = []
    for image_id, items in boxes.items():
        for x, y, w, h, cat in items:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": cat,
                                "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
    return {"images": images, "annotations": annotations,
            "categories": [{"id": 7, "name": "cat"}, {"id": 9, "name": "dog"}]}


def test_equals_pycocotools_on_fixed_detections() -> None:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = _ground_truth()
    g = torch.Generator().manual_seed(1)
    detections = []
    for _ in range(3):
        xy = torch.rand(6, 2, generator=g) * 60
        wh = torch.rand(6, 2, generator=g) * 40 + 5
        detections.append({"boxes": torch.cat([xy, xy + wh], 1), "scores": torch.rand(6, generator=g),
                           "labels": torch.randint(0, 2, (6,), generator=g)})
    # a near-perfect detection for image 1 so AP is not zero
    detections[0]["boxes"][0] = torch.tensor([10.0, 10.0, 40.0, 50.0])
    detections[0]["labels"][0] = 0
    detections[0]["scores"][0] = 0.99
    results = detections_to_coco([1, 2, 3], detections, [7, 9])
    ours = coco_evaluate(gt, results)

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = dict(gt)
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(results), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert ours.metrics["AP"] == pytest.approx(float(ev.stats[0]))
    assert ours.metrics["AP50"] == pytest.approx(float(ev.stats[1]))
    assert list(ours.metrics.values()) == pytest.approx([float(v) for v in ev.stats])
    assert ours.metrics["AP"] > 0
    assert set(ours.per_class_ap) == {"cat", "dog"}


def test_no_detections_gives_zero() -> None:
    result = coco_evaluate(_ground_truth(), [])
    assert result.metrics["AP"] == 0.0 and result.num_detections == 0


def test_results_use_user_category_ids_and_xywh() -> None:
    det = {"boxes": torch.tensor([[1.0, 2.0, 11.0, 22.0]]), "scores": torch.tensor([0.5]), "labels": torch.tensor([1])}
    (entry,) = detections_to_coco([42], [det], [7, 9])
    assert entry == {"image_id": 42, "category_id": 9, "bbox": [1.0, 2.0, 10.0, 20.0], "score": 0.5}
