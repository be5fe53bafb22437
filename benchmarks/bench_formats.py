"""Every export format and precision against effdet's predict, in the same interleaved rounds.

``efficientdet benchmark`` (:mod:`efficientdet.deploy.benchmark`) measures this package's
variants; this script adds effdet's own end-to-end predict (its evaluation transform and
``DetBenchPredict``, the reference port's whole path from a decoded image to detections in
its pixels) as one more predictor timed in the same rounds, so each variant's time can be
given as a ratio of effdet's. effdet runs the same architecture with the same weights loaded
(``--weights``'s state dict; the key names are the reference port's).

    .venv/bin/python benchmarks/bench_formats.py --weights runs/lite0/best.safetensors \
        --data data/digit-scenes/data.yaml --out benchmarks/results/formats-lite0

Writes the benchmark's files (``benchmark.md`` etc.) into ``--out`` with a ``vs effdet`` column.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from common import machine, setup
from efficientdet.cli import benchmark as benchmark_cli
from efficientdet.deploy.benchmark import (
    fastest_within,
    format_table,
    plan_variants,
    run_benchmark,
    write_report,
)
from efficientdet.inference.loading import load_model


def effdet_predictor(loaded: Any, effdet_weights: str | None = None) -> Any:
    """effdet's end-to-end predict on ``loaded``'s architecture: images in, detections
    ``[B, 100, 6]`` in image pixels out. Its weights: ``effdet_weights`` (an effdet state
    dict, the file ``--weights`` may name too), else ``loaded``'s where the key names match,
    else random (with random weights every one of the 5000 candidates reaches its NMS)."""
    import effdet
    from effdet.data.transforms import transforms_coco_eval

    config = loaded.model.config
    bench = effdet.create_model(
        config.name, pretrained=False, pretrained_backbone=False, bench_task="predict",
        num_classes=config.num_classes, image_size=config.image_size,
    ).eval()
    state = torch.load(effdet_weights, map_location="cpu") if effdet_weights else loaded.model.state_dict()
    missing, unexpected = bench.model.load_state_dict(state, strict=False)
    if missing or unexpected:
        print(f"effdet: weights not loaded ({len(missing)} missing, {len(unexpected)} unexpected "
              "keys); it runs with random weights", file=sys.stderr)
    transform = transforms_coco_eval(
        config.image_size[0], interpolation="bilinear", use_prefetcher=True,
        mean=config.mean, std=config.std,
    )
    mean = torch.tensor([m * 255 for m in config.mean]).view(1, 3, 1, 1)
    std = torch.tensor([s * 255 for s in config.std]).view(1, 3, 1, 1)

    @torch.inference_mode()
    def predict(images: list[Any]) -> torch.Tensor:
        arrays, scales = [], []
        for image in images:
            array, info = transform(image, {})
            arrays.append(torch.from_numpy(array))
            scales.append(info["img_scale"])
        x = torch.stack(arrays).float().sub_(mean).div_(std)
        img_info = {
            "img_scale": torch.tensor(scales, dtype=torch.float32),
            "img_size": torch.tensor([[im.width, im.height] for im in images], dtype=torch.float32),
        }
        return bench(x, img_info)

    return predict


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    benchmark_cli.add_arguments(parser)
    parser.add_argument("--effdet-weights", help="effdet state dict for its side (e.g. the same "
                        "file as --weights when that is one)")
    args = parser.parse_args()
    threads = args.threads or 2
    setup(threads)
    loaded = load_model(args.weights, model_name=args.model, pretrained=args.pretrained)
    variants, skipped = plan_variants(args.formats, args.precisions, device=args.device)
    data, calibration, label_map, images = benchmark_cli._inputs(args, loaded)
    out = Path(args.out)
    rows = run_benchmark(
        loaded, out / "exports", variants, images=images, data=data, calibration=calibration,
        label_to_category_id=label_map, repeats=args.repeats, threads=threads, device=args.device,
        others={"effdet predict": effdet_predictor(loaded, args.effdet_weights)},
    ) + skipped
    reference = next(r for r in rows if r.variant == "effdet predict")
    for row in rows:
        if row.latency_ms is not None and reference.latency_ms:
            row.note = (f"{row.latency_ms / reference.latency_ms:.3f}x effdet's batch-1 time; "
                        + row.note).rstrip("; ")
    header = benchmark_cli._header(args, loaded, threads, data)
    header[2] = f"- command: `.venv/bin/python benchmarks/bench_formats.py {' '.join(sys.argv[1:])}`"
    header.append(f"- effdet: {'weights of ' + args.effdet_weights if args.effdet_weights else 'see stderr for whether the weights loaded'}")
    header.append(f"- {machine()}")
    paths = write_report(rows, out, header)
    print("\n".join(header))
    print(format_table(rows))
    best = fastest_within(rows)
    if best is not None and best.latency_ms and reference.latency_ms:
        print(f"fastest within 0.01 AP: {best.variant} {best.latency_ms} ms = "
              f"{best.latency_ms / reference.latency_ms:.3f}x effdet's predict")
    print(json.dumps({k: str(v) for k, v in paths.items()}))


if __name__ == "__main__":
    main()
