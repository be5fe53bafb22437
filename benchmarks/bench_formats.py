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

from common import effdet_preprocess, machine, setup, to_effdet_state_dict
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
    dict), else ``loaded``'s own, renamed to effdet's keys (:func:`common.to_effdet_state_dict`),
    so both sides compute the same detections."""
    import effdet

    config = loaded.model.config
    bench = effdet.create_model(
        config.name, pretrained=False, pretrained_backbone=False, bench_task="predict",
        num_classes=config.num_classes, image_size=config.image_size,
    ).eval()
    if effdet_weights:
        state = torch.load(effdet_weights, map_location="cpu", weights_only=True)
    else:
        state = to_effdet_state_dict(loaded.model, bench.model)
    bench.model.load_state_dict(state)
    to_effdet_input = effdet_preprocess(config)

    @torch.inference_mode()
    def predict(images: list[Any]) -> torch.Tensor:
        return bench(*to_effdet_input(images))

    return predict


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    benchmark_cli.add_arguments(parser)
    parser.add_argument("--effdet-weights", help="effdet state dict for its side (default: "
                        "--weights' own, renamed to effdet's keys)")
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
    header.append(f"- effdet: the same architecture with {args.effdet_weights or 'the same weights'}")
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
