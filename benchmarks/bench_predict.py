"""End-to-end prediction latency of D0 at 512, stage by stage, against effdet in one run.

    .venv/bin/python benchmarks/bench_predict.py [--batch 1] [--repeats 10] [--image 1280 960]

From an RGB ``PIL`` image to detections in its original pixels:

* pre-processing: this project's letterbox (``preprocess_batch``: resize, normalise, pad) against
  effdet's evaluation transform (``ResizePad`` + ``ImageToNumpy``) and its loader's
  normalisation;
* network: the raw forward pass;
* post-processing: top-5000, decode, NMS, 100 per image, boxes back to original pixels
  (``postprocess`` + ``letterbox_to_original`` against effdet's ``_post_process`` +
  ``_batch_detection``) on stored network outputs;
* total: ``Detector.predict`` against effdet's transform + ``DetBenchPredict``; also this
  project's optimised network and ONNX Runtime (``OnnxDetector.predict``).

Random weights are created by effdet and loaded into this project's network. Score threshold
0.001: with these weights every score is about 0.0099, so both run NMS on all 5000 candidates.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import efficientdet as ed
from common import effdet_preprocess, interleaved_median_ms, machine, setup
from efficientdet.deploy.export import export_onnx
from efficientdet.deploy.onnx_backend import OnnxDetector
from efficientdet.detection.detector import Detector
from efficientdet.detection.postprocess import letterbox_to_original, postprocess
from efficientdet.detection.transform import preprocess_batch
from efficientdet.modeling.optimize import optimize_for_inference


def test_image(width: int, height: int, seed: int) -> Image.Image:
    """A photo-sized image with smooth structure and noise (resizing cost does not depend on
    content, but a flat image would compress oddly if anyone saved it)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 // width, y * 255 // height, (x + y) * 255 // (width + height)], -1)
    noise = rng.integers(0, 40, (height, width, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), "RGB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tf_efficientdet_d0")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--image", type=int, nargs=2, default=[1280, 960], metavar=("W", "H"))
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--post-detail", action="store_true",
        help="also time the post-processing's parts on the stored network outputs",
    )
    args = parser.parse_args()
    setup(args.threads)
    import effdet
    from effdet.bench import _batch_detection, _post_process

    torch.manual_seed(0)
    ref = effdet.create_model(
        args.model, pretrained=False, pretrained_backbone=False, bench_task="predict"
    ).eval()
    workdir = tempfile.TemporaryDirectory(prefix="bench_predict_")
    weights = Path(workdir.name) / "effdet.pth"
    torch.save(ref.model.state_dict(), weights)
    ours = ed.create_model(args.model, checkpoint=weights).eval()
    config = ours.config
    size = config.image_size
    settings = dict(score_threshold=0.001, pre_nms_top_k=5000, max_detections=100)
    detector = Detector(ours, **settings).eval()
    fast = Detector(optimize_for_inference(ours), **settings).eval()
    onnx_path = Path(workdir.name) / "model.onnx"
    export_onnx(ours, onnx_path, batch="dynamic", **settings)
    onnx_detector = OnnxDetector(onnx_path, threads=args.threads)

    images = [test_image(*args.image, seed=i) for i in range(args.batch)]

    # effdet's side, as its evaluation loader and DetBenchPredict do it.
    to_effdet_input = effdet_preprocess(config)

    def effdet_pre() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return to_effdet_input(images)

    def effdet_post(outputs: tuple[list[torch.Tensor], list[torch.Tensor]], img_info: dict) -> torch.Tensor:
        cls_out, box_out, indices, classes = _post_process(
            outputs[0], outputs[1], num_levels=ref.num_levels, num_classes=ref.num_classes,
            max_detection_points=ref.max_detection_points,
        )
        return _batch_detection(
            len(images), cls_out, box_out, ref.anchors.boxes, indices, classes,
            img_info["img_scale"], img_info["img_size"], max_det_per_image=ref.max_det_per_image,
            soft_nms=ref.soft_nms,
        )

    def effdet_total() -> torch.Tensor:
        x, img_info = effdet_pre()
        return ref(x, img_info)

    # This project's side.
    def ours_pre() -> tuple[torch.Tensor, list]:
        return preprocess_batch(images, size, config.mean, config.std)

    anchors = detector.anchors(size)

    def ours_post(outputs: tuple[list[torch.Tensor], list[torch.Tensor]], infos: list) -> list:
        detections = postprocess(
            outputs[0], outputs[1], anchors, config.num_classes, size, detector.postprocess_config
        )
        for det, info in zip(detections, infos, strict=True):
            det["boxes"] = letterbox_to_original(det["boxes"], info.scale, info.original_size)
        return detections

    with torch.inference_mode():
        x_ref, img_info = effdet_pre()
        x_ours, infos = ours_pre()
        # As Detector.detect runs it on CPU: channels-last input, so NHWC outputs.
        x_ours = x_ours.contiguous(memory_format=torch.channels_last)
        out_ref = ref.model(x_ref)
        out_ours = ours(x_ours)
        candidates = int((torch.cat([c.flatten() for c in out_ours[0]]).sigmoid() > 0.001).sum())
        fns: dict[str, Callable[[], object]] = {
            "effdet pre": effdet_pre,
            "effdet network": lambda: ref.model(x_ref),
            "effdet post": lambda: effdet_post(out_ref, img_info),
            "effdet total": effdet_total,
            "ours pre": ours_pre,
            "ours network": lambda: ours(x_ours),
            "ours post": lambda: ours_post(out_ours, infos),
            "ours total": lambda: detector.predict(images),
            "optimised network": lambda: fast.model(x_ours),
            "optimised total": lambda: fast.predict(images),
            "onnxruntime total": lambda: onnx_detector.predict(images),
        }
        times = interleaved_median_ms(fns, repeats=args.repeats, warmup=args.warmup)

    print(
        f"# {args.model} predict, {args.batch} x {args.image[0]}x{args.image[1]} RGB image(s) -> "
        f"{size[0]}x{size[1]}, {machine()}, median of {args.repeats} interleaved"
    )
    print(f"# {candidates} (anchor, class) scores above the 0.001 threshold; NMS sees 5000 per image")
    print(f"{'stage':12s} {'effdet ms':>10s} {'ours ms':>10s} {'ours/effdet':>11s}")
    for stage in ("pre", "network", "post", "total"):
        a, b = times[f"effdet {stage}"], times[f"ours {stage}"]
        print(f"{stage:12s} {a:10.1f} {b:10.1f} {b / a:11.3f}")
    print(f"post / network: effdet {times['effdet post'] / times['effdet network']:.3f}, "
          f"ours {times['ours post'] / times['ours network']:.3f}")
    for name in ("optimised network", "optimised total", "onnxruntime total"):
        print(f"{name:18s} {times[name]:8.1f} ms  ({times[name] / times['effdet total']:.3f} x effdet total)")
    if args.post_detail:
        post_detail(out_ours, anchors, config.num_classes, size, args)
    workdir.cleanup()


def post_detail(
    outputs: tuple[list[torch.Tensor], list[torch.Tensor]],
    anchors: torch.Tensor,
    num_classes: int,
    size: tuple[int, int],
    args: argparse.Namespace,
) -> None:
    """Top-k selection (threshold and fixed-shape gather versions) and class-aware NMS (this
    project's and torchvision's) on the first image's stored outputs."""
    import torchvision

    from efficientdet.detection.boxes import clip_boxes, decode, flatten_level_outputs
    from efficientdet.detection.postprocess import class_aware_nms, select_top_k

    class_outputs, box_outputs = [o[:1] for o in outputs[0]], [o[:1] for o in outputs[1]]
    with torch.inference_mode():
        scores, anchor_index, labels = select_top_k(class_outputs, num_classes, 5000)
        deltas = flatten_level_outputs(box_outputs, 4)
        picked = deltas.gather(1, anchor_index.unsqueeze(-1).expand(-1, -1, 4))
        boxes = clip_boxes(decode(picked, anchors[anchor_index]), size)[0]
        scores, labels = scores[0], labels[0]
        times = interleaved_median_ms(
            {
                "select_top_k (threshold)": lambda: select_top_k(class_outputs, num_classes, 5000),
                "select_top_k (gather)": lambda: select_top_k(
                    class_outputs, num_classes, 5000, traceable=True
                ),
                "class_aware_nms": lambda: class_aware_nms(boxes, scores, labels, 0.5),
                "torchvision batched_nms": lambda: torchvision.ops.batched_nms(
                    boxes, scores, labels, 0.5
                ),
            },
            repeats=max(args.repeats, 20), warmup=args.warmup,
        )
    print(f"\n# post-processing parts, 1 image, 5000 candidates, median of {max(args.repeats, 20)}")
    for name, ms in times.items():
        print(f"{name:26s} {ms:8.2f} ms")


if __name__ == "__main__":
    main()
