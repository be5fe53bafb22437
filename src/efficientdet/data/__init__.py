"""Detection data: readers (COCO, Pascal VOC, YOLO), checks, augmentation (per image, and
mosaic / mixup / copy-paste across images), loading, demo data.

Boxes are ``xyxy`` float32 in absolute pixels and labels int64 in ``0..K-1`` everywhere;
conversion happens in the readers. This package never imports the model.

Typical training code::

    data = load_dataset("path/to/data.yaml", split="train")
    report = check_dataset(data, input_size=320)
    if report.fatal:
        raise SystemExit(format_report(report))
    dataset = DetectionDataset(data, build_transform(320, train=True))
    loader = build_dataloader(dataset, batch_size=16, shuffle=True, num_workers=2, seed=0)
    for images, targets in loader:  # Tensor[B, 3, 320, 320], list of dicts
        ...
"""

from .check import DataReport, assign_levels, check_dataset, format_report
from .coco import coco_dict, load_coco, write_coco
from .dataset import (
    DetectionDataset,
    EpochSampler,
    RunSampler,
    SeededSampler,
    build_dataloader,
    collate_detection,
    default_num_workers,
)
from .demo import DIGIT_CLASS_NAMES, DemoFiles, write_demo_dataset
from .load import detect_format, load_dataset
from .mix import MixAugment, copy_paste, mixup
from .mosaic import LabelledImage, mosaic
from .sample import DataError, DetectionData, DetectionSample, IssueLog
from .transforms import (
    EvalTransform,
    TrainTransform,
    TransformOutput,
    build_transform,
)
from .voc import load_voc
from .yolo import load_yolo

__all__ = [
    "DIGIT_CLASS_NAMES",
    "DataError",
    "DataReport",
    "DemoFiles",
    "DetectionData",
    "DetectionDataset",
    "DetectionSample",
    "EvalTransform",
    "IssueLog",
    "LabelledImage",
    "MixAugment",
    "EpochSampler",
    "RunSampler",
    "SeededSampler",
    "TrainTransform",
    "TransformOutput",
    "assign_levels",
    "build_dataloader",
    "default_num_workers",
    "build_transform",
    "check_dataset",
    "coco_dict",
    "collate_detection",
    "copy_paste",
    "detect_format",
    "format_report",
    "load_coco",
    "load_dataset",
    "load_voc",
    "load_yolo",
    "mixup",
    "mosaic",
    "write_coco",
    "write_demo_dataset",
]
