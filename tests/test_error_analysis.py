"""Error analysis: matching, confusion matrix, PR curves and F1 thresholds on hand-computed
cases, the report files, and `eval` end to end."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from efficientdet.inference.error_analysis import (
    Outcome,
    analyze_errors,
    best_f1_threshold,
    box_iou,
    class_counts,
    match_image,
    most_missed_images,
    pr_curve,
    worst_false_positive_images,
)

NAMES = ["cat", "dog", "bird"]
CAT, DOG, BIRD = 0, 1, 2
BG = 3  # the background index of the confusion matrix


def _case() -> tuple[list[dict], list[dict]]:
    """Four images whose matching is worked out by hand in the comments."""
    ground_truth = [
        # image 1: a cat and a dog
        {"boxes": [[0, 0, 10, 10], [20, 0, 30, 10]], "labels": [CAT, DOG], "image_id": 1},
        # image 2: two birds
        {"boxes": [[0, 0, 10, 10], [50, 50, 60, 60]], "labels": [BIRD, BIRD], "image_id": 2},
        # image 3: a cat nobody finds
        {"boxes": [[0, 0, 20, 20]], "labels": [CAT], "image_id": 3},
        # image 4: nothing
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64), "image_id": 4},
    ]
    detections = [
        {
            "boxes": torch.tensor([[0, 0, 10, 10], [20, 0, 30, 10], [21, 0, 31, 10], [0, 0, 10, 10.0]]),
            # cat on the cat (TP); cat on the dog, but the dog detection below takes the dog
            # box in the first pass, so: background; dog IoU 90/110 with the dog (TP);
            # a second cat on the cat (duplicate)
            "scores": torch.tensor([0.9, 0.8, 0.4, 0.3], dtype=torch.float64),
            "labels": torch.tensor([CAT, CAT, DOG, CAT]),
        },
        {
            "boxes": np.array([[0, 0, 10, 10], [50, 50, 60, 65], [50, 50, 60, 80]]),
            # dog on a bird (confusion); bird IoU 100/150 (TP); bird IoU 100/300 on the
            # already found bird (localisation)
            "scores": np.array([0.7, 0.6, 0.5]),
            "labels": np.array([DOG, BIRD, BIRD]),
        },
        {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)},
        # a bird where there is nothing (background)
        {"boxes": [[0, 0, 5, 5]], "scores": [0.95], "labels": [BIRD]},
    ]
    return ground_truth, detections


def test_box_iou_by_hand() -> None:
    iou = box_iou([[0, 0, 10, 10], [0, 0, 0, 0]], [[5, 0, 15, 10], [0, 0, 10, 10], [20, 20, 30, 30]])
    assert iou.shape == (2, 3)
    np.testing.assert_allclose(iou[0], [50 / 150, 1.0, 0.0])
    np.testing.assert_array_equal(iou[1], [0.0, 0.0, 0.0])  # an empty box overlaps nothing


def test_match_image_outcomes_by_hand() -> None:
    gt, det = _case()
    first = match_image(
        gt[0]["boxes"], gt[0]["labels"], det[0]["boxes"], det[0]["scores"], det[0]["labels"]
    )
    assert first.outcome.tolist() == [
        Outcome.TRUE_POSITIVE, Outcome.BACKGROUND, Outcome.TRUE_POSITIVE, Outcome.DUPLICATE,
    ]
    assert first.det_gt.tolist() == [0, -1, 1, -1] and first.gt_det.tolist() == [0, 2]
    np.testing.assert_allclose(first.same_class_iou, [1.0, 0.0, 90 / 110, 1.0])

    second = match_image(
        gt[1]["boxes"], gt[1]["labels"], det[1]["boxes"], det[1]["scores"], det[1]["labels"]
    )
    assert second.outcome.tolist() == [Outcome.CONFUSION, Outcome.TRUE_POSITIVE, Outcome.LOCALISATION]
    assert second.det_gt.tolist() == [0, 1, -1] and second.gt_det.tolist() == [0, 1]
    assert not second.missed.any() and second.false_positive.tolist() == [True, False, True]


def test_match_prefers_the_higher_score_and_the_higher_iou() -> None:
    # Two cats on one box: the higher score takes it whatever the order given.
    m = match_image([[0, 0, 10, 10]], [CAT], [[0, 0, 10, 9], [0, 0, 10, 10]], [0.2, 0.8], [CAT, CAT])
    assert m.outcome.tolist() == [Outcome.DUPLICATE, Outcome.TRUE_POSITIVE]
    # One cat over two boxes: it takes the one it overlaps most.
    m = match_image([[0, 0, 10, 10], [0, 0, 10, 12]], [CAT, CAT], [[0, 0, 10, 11.5]], [0.5], [CAT])
    assert m.det_gt.tolist() == [1] and m.missed.tolist() == [True, False]
    # IoU exactly at the threshold matches (as in COCO): 50 / 100.
    m = match_image([[0, 0, 10, 10]], [DOG], [[0, 0, 10, 5]], [0.5], [DOG])
    assert m.outcome.tolist() == [Outcome.TRUE_POSITIVE]
    # Localisation starts at IoU 0.1: 10/100 is one, 9/100 is background.
    m = match_image([[0, 0, 10, 10]], [DOG], [[0, 0, 1, 10], [0, 0, 10, 0.9]], [0.5, 0.4], [DOG, DOG])
    assert m.outcome.tolist() == [Outcome.LOCALISATION, Outcome.BACKGROUND]


def test_crowd_regions_ignore_detections_of_their_class_only() -> None:
    m = match_image(
        torch.zeros(0, 4), torch.zeros(0), [[10, 10, 20, 20], [10, 10, 20, 20]], [0.9, 0.8],
        [CAT, DOG], ignore_boxes=[[0, 0, 100, 100]], ignore_labels=[CAT],
    )
    assert m.outcome.tolist() == [Outcome.IGNORED, Outcome.BACKGROUND]
    assert m.false_positive.tolist() == [False, True]


def test_match_rejects_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        match_image([[0, 0, 1, 1]], [0, 1], [], [], [])


def test_pr_curve_groups_tied_scores() -> None:
    curve = pr_curve([0.5, 0.9, 0.2, 0.5], [True, True, False, False], num_gt=4)
    np.testing.assert_allclose(curve.thresholds, [0.9, 0.5, 0.2])
    assert curve.tp.tolist() == [1, 2, 2] and curve.fp.tolist() == [0, 1, 2]
    np.testing.assert_allclose(curve.precision, [1.0, 2 / 3, 0.5])
    np.testing.assert_allclose(curve.recall, [0.25, 0.5, 0.5])
    np.testing.assert_allclose(curve.f1, [2 / 5, 4 / 7, 4 / 8])  # 2 TP / (2 TP + FP + FN)


def test_best_f1_threshold_prefers_the_higher_threshold_on_ties() -> None:
    # F1 = 2/3 at 0.9 (1 TP, 0 FP, 1 FN) and at 0.6 (2 TP, 2 FP, 0 FN).
    curve = pr_curve([0.9, 0.8, 0.7, 0.6], [True, False, False, True], num_gt=2)
    np.testing.assert_allclose(curve.f1, [2 / 3, 1 / 2, 2 / 5, 2 / 3])
    choice = best_f1_threshold(curve)
    assert choice.threshold == 0.9 and (choice.tp, choice.fp, choice.fn) == (1, 0, 1)
    assert choice.precision == 1.0 and choice.recall == 0.5
    nothing = best_f1_threshold(pr_curve([0.9, 0.1], [False, False], num_gt=3))
    assert nothing.threshold is None and (nothing.tp, nothing.fp, nothing.fn) == (0, 0, 3)
    assert best_f1_threshold(pr_curve([], [], num_gt=0)).threshold is None


def test_analysis_thresholds_confusion_and_errors_by_hand() -> None:
    gt, det = _case()
    analysis = analyze_errors(gt, det, NAMES)
    # cat: 0.9 TP, 0.8 FP, 0.3 FP; 2 boxes. Best at 0.9: P 1, R 1/2, F1 2/3.
    cat = analysis.per_class[CAT]
    assert (cat.threshold, cat.tp, cat.fp, cat.fn) == (0.9, 1, 0, 1)
    assert cat.f1 == pytest.approx(2 / 3)
    # dog: 0.7 FP, 0.4 TP; 1 box. Best at 0.4: P 1/2, R 1, F1 2/3.
    dog = analysis.per_class[DOG]
    assert (dog.threshold, dog.tp, dog.fp, dog.fn) == (0.4, 1, 1, 0)
    assert dog.precision == 0.5 and dog.recall == 1.0
    # bird: 0.95 FP, 0.6 TP, 0.5 FP; 2 boxes. Best at 0.6: P 1/2, R 1/2, F1 1/2.
    bird = analysis.per_class[BIRD]
    assert (bird.threshold, bird.tp, bird.fp, bird.fn, bird.f1) == (0.6, 1, 1, 1, 0.5)
    np.testing.assert_allclose(analysis.curves[BIRD].precision, [0.0, 0.5, 1 / 3])
    # All classes: F1 over 0.95 .. 0.3 is 0, 2/7, 2/8, 2/9, 4/10, 4/11, 6/12, 6/13: best 0.4.
    np.testing.assert_allclose(
        analysis.overall_curve.f1, [0, 2 / 7, 2 / 8, 2 / 9, 4 / 10, 4 / 11, 6 / 12, 6 / 13]
    )
    overall = analysis.overall
    assert (overall.threshold, overall.tp, overall.fp, overall.fn) == (0.4, 3, 4, 2)
    assert overall.precision == pytest.approx(3 / 7) and overall.recall == pytest.approx(3 / 5)
    assert analysis.score_threshold == 0.4 and analysis.num_gt.tolist() == [2, 1, 2]

    # At 0.4 the duplicate cat (0.3) is gone.
    expected = np.zeros((4, 4), dtype=np.int64)
    expected[CAT, CAT] = expected[DOG, DOG] = expected[BIRD, BIRD] = 1
    expected[DOG, BIRD] = 1  # the dog detection on a bird
    expected[CAT, BG] = 1  # the cat on the dog's box
    expected[BIRD, BG] = 2  # the badly placed bird and the bird on an empty image
    expected[BG, CAT] = 1  # image 3's cat
    np.testing.assert_array_equal(analysis.confusion, expected)
    assert analysis.errors == {
        "localisation": 1, "confusion": 1, "duplicate": 0, "background": 2, "missed": 1,
    }
    tp, fp, fn = class_counts(analysis.confusion)
    assert tp.tolist() == [1, 1, 1] and fp.tolist() == [1, 1, 2] and fn.tolist() == [1, 0, 1]
    assert analysis.top_confusions() == [(BIRD, DOG, 1)]
    assert analysis.most_missed_classes() == [(CAT, 1, 2)]
    # Galleries: images by their best false positive (0.95, 0.8, 0.7) and by misses.
    assert worst_false_positive_images(analysis.matches) == [3, 0, 1]
    assert worst_false_positive_images(analysis.matches, count=1) == [3]
    assert most_missed_images(analysis.matches) == [2]

    saved = analysis.thresholds_dict()
    assert saved["per_class"]["dog"] == {
        "threshold": 0.4, "precision": 0.5, "recall": 1.0, "f1": pytest.approx(2 / 3),
        "tp": 1, "fp": 1, "fn": 0, "num_gt": 1,
    }
    assert saved["overall"]["threshold"] == 0.4
    summary = analysis.summary_dict()
    assert summary["per_class"]["bird"] == {"tp": 1, "fp": 2, "fn": 1}
    assert json.loads(json.dumps(summary)) == summary


def test_analysis_without_true_positives_uses_the_fallback_threshold() -> None:
    gt = [{"boxes": [[0, 0, 10, 10]], "labels": [0]}]
    det = [{"boxes": [[50, 50, 60, 60], [0, 0, 10, 10]], "scores": [0.9, 0.2], "labels": [0, 1]}]
    analysis = analyze_errors(gt, det, ["a", "b"], fallback_threshold=0.3)
    assert analysis.overall.threshold is None and analysis.score_threshold == 0.3
    # At 0.3 the confusion (0.2) is dropped: one background detection, one missed box.
    assert analysis.confusion[0, 2] == 1 and analysis.confusion[2, 0] == 1
    assert analysis.confusion.sum() == 2
    assert "no score threshold gives a true positive" in analysis.summary_line()
    with pytest.raises(ValueError, match="labels outside"):
        analyze_errors(gt, [{"boxes": [[0, 0, 1, 1]], "scores": [0.5], "labels": [2]}], ["a", "b"])


def test_error_files_and_report(tmp_path: Path) -> None:
    from efficientdet.data import DetectionSample
    from efficientdet.inference.error_report import write_error_outputs
    from efficientdet.inference.evaluate import EvalResult

    gt, det = _case()
    samples = []
    for item in gt:
        path = tmp_path / f"{item['image_id']}.png"
        Image.new("RGB", (80, 70), (90, 90, 90)).save(path)
        samples.append(DetectionSample(path, item["image_id"], (70, 80), item["boxes"], item["labels"]))
    analysis = analyze_errors(gt, det, NAMES)
    result = EvalResult(
        dict.fromkeys(["AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large", "AR100"], 0.25),
        dict.fromkeys(NAMES, 0.2), num_images=4, num_detections=8,
        per_class_ap50=dict.fromkeys(NAMES, 0.4), error_analysis=analysis,
    )
    paths = write_error_outputs(result, analysis, tmp_path / "eval", samples)
    out = tmp_path / "eval"
    with (out / "confusion_matrix.csv").open() as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["predicted \\ true", "cat", "dog", "bird", "background"]
    assert rows[2] == ["dog", "0", "1", "1", "0"] and rows[4] == ["background", "1", "0", "0", "0"]
    with (out / "pr_curves.csv").open() as f:
        points = list(csv.DictReader(f))
    assert [p["threshold"] for p in points if p["class"] == "dog"] == ["0.7", "0.4"]
    assert len([p for p in points if p["class"] == "all"]) == 8
    assert json.loads((out / "thresholds.json").read_text())["overall"]["threshold"] == 0.4
    for name in ("confusion_matrix.png", "pr_curves.png"):
        assert Image.open(out / name).size[0] > 300
    fp_gallery = Image.open(out / "errors" / "false_positives.jpg")
    # three 80x70 images, enlarged 4 times to 320x280, in one row (4 px padding) under a
    # 28 px legend strip
    assert fp_gallery.size == (3 * 320 + 4 * 4, 28 + 280 + 2 * 4)
    assert (out / "errors" / "missed.jpg").is_file()
    report = paths["report"].read_text()
    for link in ("confusion_matrix.png", "confusion_matrix.csv", "pr_curves.png", "pr_curves.csv",
                 "thresholds.json", "errors/false_positives.jpg", "errors/missed.jpg"):
        assert link in report, link
    assert "bird taken for dog: 1 of 2 boxes" in report
    assert "cat: 1 of 2 boxes (50%)" in report
    assert "| dog | 1 | 0.200 | 0.400 | 0.400 | 0.500 | 1.000 | 0.667 | 1 | 1 | 0 | 1 | 0 |" in report
    assert "Image ids, row by row: 4, 1, 2" in report


def test_draw_match_colours_by_status() -> None:
    from efficientdet.inference.error_report import STATUS_COLORS, draw_match

    gt, det = _case()
    match = analyze_errors(gt, det, NAMES).matches[1]  # confusion, TP, localisation
    image = Image.new("RGB", (100, 100), (0, 0, 0))
    picture = np.asarray(draw_match(image, match, NAMES))
    colours = {tuple(c) for c in picture.reshape(-1, 3)}
    assert STATUS_COLORS["true_positive"] in colours and STATUS_COLORS["false_positive"] in colours
    assert STATUS_COLORS["missed"] not in colours  # both birds were taken
    assert tuple(picture[65, 55]) == STATUS_COLORS["true_positive"]  # the TP box's bottom edge


def test_eval_command_writes_the_error_analysis(tiny_demo, tmp_path: Path) -> None:
    import efficientdet as ed
    from efficientdet.cli.main import main
    from efficientdet.data import load_dataset

    data = load_dataset(tiny_demo.data_yaml, "val")
    torch.manual_seed(0)
    model = ed.create_model("efficientdet_test", num_classes=data.num_classes)
    with torch.no_grad():  # confident random detections, so there are false positives to show
        model.class_net.predict.pointwise.bias.fill_(0.0)
    weights = ed.save_checkpoint(
        model, tmp_path / "tiny.safetensors",
        metadata={"class_names": data.class_names, "label_to_category_id": data.label_to_category_id},
    )
    out = tmp_path / "eval"
    status = main(["eval", "--weights", str(weights), "--data", str(tiny_demo.data_yaml),
                   "--device", "cpu", "--out", str(out)])
    assert status == 0
    files = ("metrics.json", "detections.json", "per_class_ap.png", "thresholds.json",
             "confusion_matrix.csv", "confusion_matrix.png", "pr_curves.csv", "pr_curves.png",
             "errors/false_positives.jpg", "errors/missed.jpg", "report.md")
    for name in files:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    report = (out / "report.md").read_text()
    for name in files[2:-1]:
        assert name in report, name
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["thresholds"]["per_class"]) == set(data.class_names)
    assert set(metrics["per_class_ap50"]) == set(data.class_names)
    confusion = np.loadtxt(out / "confusion_matrix.csv", delimiter=",", skiprows=1,
                           usecols=range(1, data.num_classes + 2), dtype=np.int64)
    # every box lands once in its true class's column: found, confused or missed
    assert confusion[:, : data.num_classes].sum() == data.num_boxes
    assert metrics["error_analysis"]["errors"]["missed"] == confusion[-1].sum()
    best = metrics["thresholds"]["overall"]["threshold"]
    assert metrics["error_analysis"]["score_threshold"] == (best if best is not None else 0.3)


def _coco_interpolated_ap(curve) -> float:
    """COCO's 101-point AP of a curve: precision made non-increasing, read at recall 0..1."""
    precision = np.maximum.accumulate(curve.precision[::-1])[::-1]
    at = np.searchsorted(curve.recall, np.linspace(0, 1, 101), side="left")
    return float(np.where(at < len(precision), precision[np.minimum(at, len(precision) - 1)], 0).mean())


def test_true_positives_are_the_ones_pycocotools_counts_for_ap50() -> None:
    from efficientdet.inference.evaluate import coco_evaluate, detections_to_coco

    g = torch.Generator().manual_seed(3)
    ground_truth, detections, images, annotations = [], [], [], []
    for image_id in range(1, 7):
        xy = torch.rand(4, 2, generator=g) * 60
        boxes = torch.cat([xy, xy + torch.rand(4, 2, generator=g) * 30 + 10], 1)
        labels = torch.randint(0, 3, (4,), generator=g)
        ground_truth.append({"boxes": boxes, "labels": labels})
        images.append({"id": image_id, "file_name": f"{image_id}.png", "height": 100, "width": 100})
        for box, label in zip(boxes.tolist(), labels.tolist(), strict=True):
            w, h = box[2] - box[0], box[3] - box[1]
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": label + 1,
                                "bbox": [box[0], box[1], w, h], "area": w * h, "iscrowd": 0})
        # jittered copies of the boxes (some hits, some near misses, some wrong classes) and noise
        jitter = boxes.repeat(2, 1) + torch.randn(8, 4, generator=g) * 4
        # corners in order: COCO gives an inverted box a negative area and ignores it
        jitter = torch.cat([torch.minimum(jitter[:, :2], jitter[:, 2:]), torch.maximum(jitter[:, :2], jitter[:, 2:])], 1)
        noise_xy = torch.rand(4, 2, generator=g) * 70
        det_boxes = torch.cat([jitter, torch.cat([noise_xy, noise_xy + 15], 1)])
        det_labels = torch.cat([labels.repeat(2), torch.randint(0, 3, (4,), generator=g)])
        det_labels[::5] = (det_labels[::5] + 1) % 3
        detections.append({"boxes": det_boxes, "scores": torch.rand(12, generator=g), "labels": det_labels})
    coco = {"images": images, "annotations": annotations,
            "categories": [{"id": k + 1, "name": n} for k, n in enumerate(NAMES)]}
    result = coco_evaluate(coco, detections_to_coco(range(1, 7), detections, [1, 2, 3]))
    # COCO results hold boxes rounded to 3 decimals; match on the same boxes
    rounded = [{**d, "boxes": (d["boxes"] * 1000).round() / 1000} for d in detections]
    analysis = analyze_errors(ground_truth, rounded, NAMES)
    ours = [_coco_interpolated_ap(curve) for curve in analysis.curves]
    assert ours == pytest.approx([result.per_class_ap50[n] for n in NAMES], abs=1e-9)
    assert min(ours) > 0 and max(ours) < 1  # neither trivial case


def test_error_files_without_any_detection(tmp_path: Path) -> None:
    from efficientdet.data import DetectionSample
    from efficientdet.inference.error_report import write_error_outputs
    from efficientdet.inference.evaluate import STAT_NAMES, EvalResult

    path = tmp_path / "1.png"
    Image.new("RGB", (40, 30)).save(path)
    sample = DetectionSample(path, 1, (30, 40), [[5, 5, 20, 20]], [1])
    empty = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}
    analysis = analyze_errors([{"boxes": sample.boxes, "labels": sample.labels, "image_id": 1}], [empty], NAMES)
    assert analysis.errors["missed"] == 1 and analysis.confusion[BG, DOG] == 1
    result = EvalResult(dict.fromkeys(STAT_NAMES, 0.0), dict.fromkeys(NAMES, 0.0), 1, 0)
    paths = write_error_outputs(result, analysis, tmp_path / "eval", [sample])
    assert "false_positives" not in paths and paths["missed"].is_file()
    assert not (tmp_path / "eval" / "errors" / "false_positives.jpg").exists()
    report = paths["report"].read_text()
    assert "None at this threshold." in report and "No score threshold gives a true positive" in report
    assert "- No box was taken for another class." in report
