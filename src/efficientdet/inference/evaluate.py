"""COCO evaluation with pycocotools: AP, AP50, AP75, AP by size, AR, and per-class AP; plus
the error analysis (:mod:`efficientdet.inference.error_analysis`) and the files that show it.

The result, :class:`~efficientdet.inference.eval_result.EvalResult`, lives in
:mod:`efficientdet.inference.eval_result` (re-exported here with :func:`format_metrics`)."""

from __future__ import annotations

import contextlib
import io
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..data import (
    DetectionData,
    DetectionDataset,
    DetectionSample,
    build_dataloader,
    build_transform,
    coco_dict,
)
from ..detection.transform import LetterboxInfo, scale_boxes_to_original
from .error_analysis import ErrorAnalysis, analyze_errors
from .error_report import write_error_outputs
from .eval_result import STAT_NAMES, EvalResult
from .eval_result import format_metrics as format_metrics  # re-exported: where callers look

log = logging.getLogger(__name__)

def detections_to_coco(
    image_ids: Sequence[int],
    detections: Sequence[dict[str, Tensor]],
    label_to_category_id: Sequence[int],
) -> list[dict[str, Any]]:
    """COCO results entries (``bbox`` as xywh) from per-image xyxy detections in original pixels."""
    results = []
    for image_id, det in zip(image_ids, detections, strict=True):
        boxes = det["boxes"].detach().float().cpu()
        if boxes.numel() == 0:
            continue
        xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
        for box, score, label in zip(
            xywh, det["scores"].detach().float().cpu().tolist(), det["labels"].cpu().tolist(), strict=True
        ):
            results.append(
                {
                    "image_id": int(image_id),
                    "category_id": int(label_to_category_id[int(label)]),
                    "bbox": [round(v, 3) for v in box],
                    "score": round(float(score), 5),
                }
            )
    return results


def match_label_space(
    class_names: Sequence[str] | None,
    label_to_category_id: Sequence[int] | None,
    num_classes: int,
    data: DetectionData,
    *,
    source: str = "the model",
    data_source: str = "the dataset",
) -> list[int]:
    """The category id of each model label ``0..C-1`` for evaluating on ``data``.

    A model that records its category ids (this project's checkpoints, the pretrained COCO
    models) is matched by id: every category of ``data`` must be one of the model's, with the
    same name; the model may know more (COCO's 90 ids against val2017's 80). Otherwise the
    model's labels are the dataset's, and the class counts (and names, when recorded) must
    agree.

    Raises:
        ValueError: the two label spaces do not match; the message says how.
    """
    if label_to_category_id is not None:
        if len(label_to_category_id) != num_classes:
            raise ValueError(
                f"{source}: {len(label_to_category_id)} category ids for {num_classes} classes"
            )
        names: Sequence[str | None] = class_names or [None] * num_classes
        model_names = dict(zip(label_to_category_id, names, strict=True))
        missing = [c for c in data.label_to_category_id if c not in model_names]
        if missing:
            raise ValueError(
                f"{data_source}: category ids {missing[:10]} are not among the {num_classes} "
                f"that {source} predicts"
            )
        renamed = [
            f"{cid}: {name!r} vs {model_names[cid]!r}"
            for cid, name in zip(data.label_to_category_id, data.class_names, strict=True)
            if model_names[cid] is not None and model_names[cid] != name
        ]
        if renamed:
            raise ValueError(
                f"{data_source}: category names differ from those of {source} "
                f"({', '.join(renamed[:5])})"
            )
        return list(label_to_category_id)
    if class_names is not None and list(data.class_names) != list(class_names):
        raise ValueError(
            f"{data_source}: classes {data.class_names} differ from the checkpoint's {list(class_names)}"
        )
    if num_classes != data.num_classes:
        raise ValueError(f"{source} predicts {num_classes} classes, {data_source} has {data.num_classes}")
    return list(data.label_to_category_id)


def coco_evaluate(
    ground_truth: dict[str, Any], results: list[dict[str, Any]], *, verbose: bool = False
) -> EvalResult:
    """Run pycocotools' bbox evaluation of ``results`` against a COCO ``ground_truth`` dict."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    quiet = contextlib.redirect_stdout(io.StringIO()) if not verbose else contextlib.nullcontext()
    with quiet:
        gt = COCO()
        gt.dataset = {k: v for k, v in ground_truth.items()}
        gt.dataset.setdefault("info", {})
        gt.createIndex()
        names = {c["id"]: c["name"] for c in ground_truth["categories"]}
        if not results:
            metrics = dict.fromkeys(STAT_NAMES, 0.0)
            zeros = dict.fromkeys(names.values(), 0.0)
            return EvalResult(metrics, zeros, len(gt.imgs), 0, per_class_ap50=dict(zeros))
        dt = gt.loadRes(results)
        evaluator = COCOeval(gt, dt, "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    metrics = {name: float(v) for name, v in zip(STAT_NAMES, evaluator.stats, strict=True)}
    # precision: [T IoU thresholds, R recall points, K categories, A areas, M max dets]
    precision = evaluator.eval["precision"]
    per_class, per_class_50 = {}, {}
    iou_50 = int(np.argmin(np.abs(evaluator.params.iouThrs - 0.5)))
    for k, cat_id in enumerate(evaluator.params.catIds):
        p = precision[:, :, k, 0, -1]
        valid = p[p > -1]
        per_class[names[cat_id]] = float(valid.mean()) if valid.size else -1.0
        valid_50 = p[iou_50][p[iou_50] > -1]
        per_class_50[names[cat_id]] = float(valid_50.mean()) if valid_50.size else -1.0
    return EvalResult(metrics, per_class, len(gt.imgs), len(results), per_class_ap50=per_class_50)


@torch.inference_mode()
def predict_dataset(
    detector: nn.Module | Callable[[Tensor], list[dict[str, Tensor]]],
    data: DetectionData,
    *,
    image_size: tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int = 8,
    num_workers: int | None = None,
    device: torch.device | str = "cpu",
    progress: bool = False,
    indices: Sequence[int] | None = None,
) -> list[dict[str, Tensor]]:
    """Detections for every sample of ``data`` in original-image pixels (letterboxed input).

    An image that cannot be read gets no detections and an ``"unreadable"`` entry (the file
    and the problem) in its dict, instead of stopping the run.

    Args:
        detector: a module (run in evaluation mode, its mode restored) or any callable
            (``ExportedDetector.detect``) from ``Tensor[B, 3, H, W]`` normalised inputs to
            per-image detections in input pixels.
        num_workers: loader processes decoding ahead of the network (None: from the CPU
            count, :func:`~efficientdet.data.default_num_workers`).
        indices: only these samples, in this order (one process's shard of a sharded
            evaluation); default all.

    Returns:
        One dict per sample (of ``indices``): ``boxes`` ``Tensor[N, 4]`` xyxy, ``scores``
        ``Tensor[N]``, ``labels`` ``Tensor[N]`` int64, on the CPU.
    """
    samples = list(data.samples) if indices is None else [data.samples[i] for i in indices]
    dataset = DetectionDataset(
        samples, build_transform(image_size, train=False, mean=mean, std=std), on_unreadable="blank"
    )
    loader = build_dataloader(dataset, batch_size=batch_size, num_workers=num_workers, device=device)
    module = detector if isinstance(detector, nn.Module) else None
    was_training = module is not None and module.training
    if module is not None:
        module.eval()
    outputs: list[dict[str, Tensor]] = []
    iterator: Any = loader
    if progress:
        from tqdm import tqdm

        iterator = tqdm(loader, desc="eval", unit="batch", leave=False)
    for images, targets in iterator:
        detections = detector(images.to(device, non_blocking=True))
        for det, target in zip(detections, targets, strict=True):
            if "unreadable" in target:
                outputs.append({
                    "boxes": torch.zeros(0, 4), "scores": torch.zeros(0),
                    "labels": torch.zeros(0, dtype=torch.int64), "unreadable": target["unreadable"],
                })
                continue
            info = LetterboxInfo(
                scale=float(target["scale"]), original_size=tuple(target["original_size"]),
                input_size=(int(images.shape[-2]), int(images.shape[-1])),
            )
            boxes = scale_boxes_to_original(det["boxes"].cpu(), info)
            outputs.append({"boxes": boxes, "scores": det["scores"].cpu(), "labels": det["labels"].cpu()})
    if module is not None:
        module.train(was_training)
    return outputs


def evaluate_detector(
    detector: nn.Module | Callable[[Tensor], list[dict[str, Tensor]]],
    data: DetectionData,
    *,
    image_size: tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int = 8,
    num_workers: int | None = None,
    device: torch.device | str = "cpu",
    progress: bool = False,
    label_to_category_id: Sequence[int] | None = None,
    error_analysis: bool = True,
) -> tuple[EvalResult, list[dict[str, Any]]]:
    """COCO metrics of ``detector`` on ``data``; also returns the COCO results entries.

    :func:`predict_dataset`, then :func:`score_detections` (see there for
    ``label_to_category_id`` and ``error_analysis``).
    """
    detections = predict_dataset(
        detector, data, image_size=image_size, mean=mean, std=std, batch_size=batch_size,
        num_workers=num_workers, device=device, progress=progress,
    )
    return score_detections(
        data, detections, label_to_category_id=label_to_category_id, error_analysis=error_analysis
    )


def score_detections(
    data: DetectionData,
    detections: Sequence[dict[str, Any]],
    *,
    label_to_category_id: Sequence[int] | None = None,
    error_analysis: bool = True,
) -> tuple[EvalResult, list[dict[str, Any]]]:
    """COCO metrics of per-image ``detections`` (aligned with ``data.samples``, as
    :func:`predict_dataset` returns them, or gathered from the shards of several processes);
    also returns the COCO results entries.

    ``label_to_category_id`` maps the detector's labels to category ids when they are not
    the dataset's own labels (see :func:`match_label_space`); detections of categories that
    ``data`` does not have are left out. Images that could not be read are logged, left out of
    the ground truth and listed in ``EvalResult.unreadable``; the others are evaluated. With
    ``error_analysis``, the detections are also matched to the ground truth
    (:func:`analyze_sample_errors`) into ``EvalResult.error_analysis``.
    """
    samples = list(data.samples)
    if len(detections) != len(samples):
        raise ValueError(f"{len(detections)} detection entries for {len(samples)} images")
    if label_to_category_id is not None:
        detections = [
            to_dataset_labels(det, label_to_category_id, data.label_to_category_id)
            for det in detections
        ]
    results = detections_to_coco(
        [s.image_id for s in data.samples], detections, data.label_to_category_id
    )
    unreadable = {
        s.image_id: det["unreadable"]
        for s, det in zip(data.samples, detections, strict=True)
        if "unreadable" in det
    }
    if unreadable:
        log.warning(
            "%d of %d images could not be read and are left out of the metrics",
            len(unreadable), len(data.samples),
        )
        data = data.without_images(unreadable)
    result = coco_evaluate(coco_dict(data), results)
    result.unreadable = [str(message) for message in unreadable.values()]
    if error_analysis:
        readable = [det for s, det in zip(samples, detections, strict=True) if s.image_id not in unreadable]
        result.error_analysis = analyze_sample_errors(data.samples, readable, data.class_names)
    return result, results


def to_dataset_labels(
    detections: dict[str, Tensor],
    model_category_ids: Sequence[int],
    data_category_ids: Sequence[int],
) -> dict[str, Tensor]:
    """One image's detections with the model's labels turned into the dataset's through their
    category ids; detections of categories the dataset does not have are dropped."""
    lookup = torch.full((len(model_category_ids),), -1, dtype=torch.int64)
    position = {cid: label for label, cid in enumerate(data_category_ids)}
    for label, cid in enumerate(model_category_ids):
        lookup[label] = position.get(cid, -1)
    labels = lookup[detections["labels"].long().cpu()]
    keep = labels >= 0
    out = {key: value[keep] if torch.is_tensor(value) and value.dim() and len(value) == len(keep)
           else value for key, value in detections.items()}
    out["labels"] = labels[keep]
    return out


def analyze_sample_errors(
    samples: Sequence[DetectionSample],
    detections: Sequence[dict[str, Tensor]],
    class_names: Sequence[str],
) -> ErrorAnalysis:
    """:func:`~efficientdet.inference.error_analysis.analyze_errors` of per-image detections (xyxy in
    original pixels, aligned with ``samples``) against the samples' boxes; crowd boxes are
    ignore regions."""
    ground_truth = [
        {
            "boxes": s.boxes, "labels": s.labels, "ignore_boxes": s.crowd_boxes,
            "ignore_labels": s.crowd_labels, "image_id": s.image_id,
        }
        for s in samples
    ]
    return analyze_errors(ground_truth, detections, class_names)


def write_eval_outputs(
    result: EvalResult,
    out_dir: str | Path,
    results: list[dict] | None = None,
    samples: Sequence[DetectionSample] | None = None,
) -> dict[str, Path]:
    """Write ``metrics.json``, ``per_class_ap.png`` (and ``detections.json``) into ``out_dir``.

    When ``result`` has an error analysis, also the files that show it
    (:func:`efficientdet.inference.error_report.write_error_outputs`): ``thresholds.json``, the
    confusion matrix and PR curves (CSV and PNG), ``report.md``, and with ``samples`` (the
    evaluated images) the galleries in ``errors/``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"metrics": out / "metrics.json", "per_class_ap": out / "per_class_ap.png"}
    paths["metrics"].write_text(json.dumps(result.to_dict(), indent=2))
    if results is not None:
        paths["detections"] = out / "detections.json"
        paths["detections"].write_text(json.dumps(results))
    plot_per_class_ap(result.per_class_ap, paths["per_class_ap"])
    if result.error_analysis is not None:
        paths.update(write_error_outputs(result, result.error_analysis, out, samples))
    return paths


def plot_per_class_ap(per_class_ap: dict[str, float], path: Path) -> None:
    """Horizontal bar chart of per-class AP[.5:.95]."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(per_class_ap)
    values = [max(0.0, per_class_ap[n]) for n in names]
    fig, ax = plt.subplots(figsize=(6, 0.3 * len(names) + 1.2))
    ax.barh(np.arange(len(names)), values, color="#3b7dd8")
    ax.set_yticks(np.arange(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("AP[.5:.95]")
    ax.set_title("Per-class AP")
    for i, v in enumerate(values):
        ax.text(min(v + 0.01, 0.9), i, f"{v:.3f}", va="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
