"""Inference throughput of D0 at 512 on this CPU: effdet's predict wrapper against this project's
eager detector, its optimised path and ONNX Runtime on its export, all in one interleaved run.

    .venv/bin/python benchmarks/bench_inference.py [--batches 1 8] [--repeats 10] [--compile]

Every variant goes from normalised input tensors to detections (decode, top-5000, NMS, 100 per
image). Random weights are created by effdet and loaded into this project's network, so both
compute the same function. Prints milliseconds per batch, images per second, the ratio to
effdet, and the achieved network GFLOP/s against this CPU's peak.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torchvision

import efficientdet as ed
from common import interleaved_median_ms, machine, setup
from efficientdet.deploy.export import export_onnx
from efficientdet.deploy.export_graph import class_nms, onnx_translations
from efficientdet.detection.anchors import generate_anchors
from efficientdet.detection.boxes import clip_boxes, decode, flatten_level_outputs
from efficientdet.detection.detector import Detector
from efficientdet.detection.postprocess import select_top_k
from efficientdet.modeling.optimize import optimize_for_inference
from efficientdet.modeling.profile import count_multiply_adds


def cpu_peak_gflops(threads: int) -> tuple[float, str]:
    """FP32 peak of ``threads`` cores from /proc/cpuinfo, with the formula used."""
    info = Path("/proc/cpuinfo").read_text()
    flags = next(line for line in info.splitlines() if line.startswith("flags")).split()
    mhz = max(float(line.split(":")[1]) for line in info.splitlines() if line.startswith("cpu MHz"))
    if "avx512f" in flags:
        lanes, isa = 16, "AVX-512"
    elif "avx2" in flags and "fma" in flags:
        lanes, isa = 8, "AVX2"
    else:
        lanes, isa = 4, "SSE"
    per_cycle = 2 * lanes * 2  # two FMA pipes x lanes x 2 FLOP per FMA
    peak = threads * mhz / 1000 * per_cycle
    formula = (
        f"{threads} cores x {mhz / 1000:.2f} GHz x {per_cycle} FP32 FLOP/cycle "
        f"(2 FMA pipes x {lanes} {isa} lanes x 2) = {peak:.1f} GFLOP/s"
    )
    return peak, formula


def ablation(model: torch.nn.Module, reference: torch.nn.Module, args: argparse.Namespace) -> None:
    """Network-only latency of channels-last input, BN folding (with and without per-level head
    copies) and channels-last weights, alone and together, against the eager network on NCHW
    input, at the first batch size; effdet's network on both layouts for comparison."""
    batch = args.batches[0]
    x = torch.randn(batch, 3, *model.config.image_size, generator=torch.Generator().manual_seed(0))
    nhwc = x.contiguous(memory_format=torch.channels_last)
    variants = {  # name: (network, its input)
        "eager": (model, x),
        "channels-last input": (model, nhwc),
        "fold (heads shared)": (optimize_for_inference(model, unshare_head_convs=False, channels_last=False), x),
        "fold (heads unshared)": (optimize_for_inference(model, channels_last=False), x),
        "channels-last": (optimize_for_inference(model, fold_bn=False), nhwc),
        "fold (shared) + CL": (optimize_for_inference(model, unshare_head_convs=False), nhwc),
        "fold (unshared) + CL": (optimize_for_inference(model), nhwc),
        "effdet network": (reference, x),
        "effdet, CL input": (reference, nhwc),
    }
    fns: dict[str, Callable[[], object]] = {
        name: (lambda m=m, i=i: m(i)) for name, (m, i) in variants.items()
    }
    with torch.inference_mode():
        times = interleaved_median_ms(fns, repeats=args.repeats, warmup=args.warmup)
    print(f"# network only, batch {batch}, {machine()}, median of {args.repeats} interleaved")
    for name, ms in times.items():
        print(f"{name:24s} {ms:8.1f} ms  {ms / times['eager']:.3f} x eager")


def _session(path: Path, threads: int, **settings: Any) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = settings.pop("level", ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    if settings.pop("no_spinning", False):
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if settings.pop("profile", False):
        options.enable_profiling = True
        options.profile_file_prefix = str(path.with_suffix(""))
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"], **settings)


class _OffsetNMS(torch.nn.Module):
    """What ``torchvision.ops.batched_nms`` traces to: one NMS, classes moved apart."""

    def forward(self, boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        shift = (labels.to(boxes.dtype) * (boxes.max() + 1)).unsqueeze(1)
        return torchvision.ops.nms(boxes + shift, scores, 0.5)


class _ClassNMS(torch.nn.Module):
    """This project's export: one NMS with a class axis."""

    def forward(self, boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        selected = class_nms(boxes[None], scores[None], labels[None], 90, 0.5, 0.0, 5000)
        return selected[:, 2]


def onnx_detail(model: torch.nn.Module, workdir: Path, args: argparse.Namespace) -> None:
    """ONNX Runtime graph settings on the raw network, an operator profile of the detection
    export, and NMS exported two ways over the same 5000 D0 candidates (batch 1)."""
    import onnxruntime as ort

    size = model.config.image_size
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(0))
    feed = {"images": x.numpy()}
    raw_path, det_path = workdir / "raw.onnx", workdir / "detections.onnx"
    export_onnx(model, raw_path, with_nms=False)
    export_onnx(model, det_path)
    level = ort.GraphOptimizationLevel
    sessions = {
        "ORT_ENABLE_ALL (default)": _session(raw_path, args.threads),
        "ORT_ENABLE_EXTENDED": _session(raw_path, args.threads, level=level.ORT_ENABLE_EXTENDED),
        "QuickGelu fusion off": _session(
            raw_path, args.threads, disabled_optimizers=["QuickGeluFusion"]
        ),
        "no thread spinning": _session(raw_path, args.threads, no_spinning=True),
    }
    times = interleaved_median_ms(
        {name: (lambda s=s: s.run(None, feed)) for name, s in sessions.items()},
        repeats=args.repeats, warmup=args.warmup,
    )
    print(f"# raw network in ONNX Runtime, batch 1, {machine()}, median of {args.repeats}")
    for name, ms in times.items():
        print(f"{name:26s} {ms:8.1f} ms")

    profiled = _session(det_path, args.threads, profile=True)
    runs = 5
    for _ in range(args.warmup + runs):
        profiled.run(None, feed)
    events = json.loads(Path(profiled.end_profiling()).read_text())
    starts = sorted(e["ts"] for e in events if e.get("name") == "model_run")
    cutoff = starts[args.warmup]  # the first timed run
    per_op: dict[str, float] = {}
    for event in events:
        if (
            event.get("cat") == "Node"
            and event["name"].endswith("_kernel_time")
            and event["ts"] >= cutoff
        ):
            op = event["args"]["op_name"]
            per_op[op] = per_op.get(op, 0.0) + event["dur"] / 1000 / runs
    total = sum(per_op.values())
    print(f"\n# detection export, batch 1, kernel time per run by operator (mean of {runs} runs)")
    for op, ms in sorted(per_op.items(), key=lambda item: -item[1])[:14]:
        print(f"{op:26s} {ms:8.2f} ms")
    print(f"{'total':26s} {total:8.2f} ms")

    with torch.inference_mode():
        class_outputs, box_outputs = model(x)
        scores, anchor_index, labels = select_top_k(class_outputs, 90, 5000)
        deltas = flatten_level_outputs(box_outputs, 4)
        picked = deltas.gather(1, anchor_index.unsqueeze(-1).expand(-1, -1, 4))
        anchors = generate_anchors(size, model.config.min_level, model.config.max_level, model.config.anchors)
        boxes = clip_boxes(decode(picked, anchors[anchor_index]), size)[0]
    inputs = (boxes, scores[0], labels[0])
    nms_feed = {"boxes": boxes.numpy(), "scores": scores[0].numpy(), "labels": labels[0].numpy()}
    nms_sessions = {}
    for name, module in (("offset NMS (batched_nms)", _OffsetNMS()), ("class-axis NMS (class_nms)", _ClassNMS())):
        path = workdir / f"nms_{len(nms_sessions)}.onnx"
        program = torch.onnx.export(
            module, inputs, input_names=list(nms_feed), dynamo=True,
            custom_translation_table=onnx_translations(), external_data=False, verbose=False,
        )
        assert program is not None
        program.save(str(path))
        nms_sessions[name] = _session(path, args.threads)
    kept = {name: len(s.run(None, nms_feed)[0]) for name, s in nms_sessions.items()}
    times = interleaved_median_ms(
        {name: (lambda s=s: s.run(None, nms_feed)) for name, s in nms_sessions.items()},
        repeats=max(args.repeats, 20), warmup=args.warmup,
    )
    print(f"\n# NMS alone in ONNX Runtime over the 5000 candidates, median of {max(args.repeats, 20)}")
    for name, ms in times.items():
        print(f"{name:28s} {ms:8.2f} ms  ({kept[name]} kept)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tf_efficientdet_d0")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="add a torch.compile variant")
    parser.add_argument(
        "--ablation", action="store_true",
        help="instead: network-only time of each optimisation alone and together "
        "(first of --batches)",
    )
    parser.add_argument(
        "--onnx-detail", action="store_true",
        help="instead: ONNX Runtime settings, a profile by operator, and the two NMS exports",
    )
    args = parser.parse_args()
    setup(args.threads)
    import effdet
    import onnxruntime as ort

    torch.manual_seed(0)
    ref = effdet.create_model(
        args.model, pretrained=False, pretrained_backbone=False, bench_task="predict"
    ).eval()
    workdir = tempfile.TemporaryDirectory(prefix="bench_inference_")
    weights = Path(workdir.name) / "effdet.pth"
    torch.save(ref.model.state_dict(), weights)
    ours = ed.create_model(args.model, checkpoint=weights).eval()
    size = ours.config.image_size
    if args.ablation:
        ablation(ours, ref.model, args)
        workdir.cleanup()
        return
    if args.onnx_detail:
        onnx_detail(ours, Path(workdir.name), args)
        workdir.cleanup()
        return
    # effdet keeps the top 5000 and runs NMS on all of them; with these random weights every
    # score is about 0.0099 (the class prior), so 0.001 lets all 5000 through here as well.
    settings = dict(score_threshold=0.001, pre_nms_top_k=5000, max_detections=100)
    eager = Detector(ours, **settings).eval()
    fast = Detector(optimize_for_inference(ours), **settings).eval()
    compiled = (
        Detector(optimize_for_inference(ours, compile=True), **settings).eval()
        if args.compile
        else None
    )
    onnx_path = Path(workdir.name) / "model.onnx"
    export_onnx(ours, onnx_path, batch="dynamic", **settings)
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])

    flop_per_image = 2 * count_multiply_adds(ours, size)
    peak, formula = cpu_peak_gflops(args.threads)
    print(f"# {args.model} at {size[0]}x{size[1]}, {machine()}, median of {args.repeats} interleaved")
    print(f"# network: {flop_per_image / 1e9:.2f} GFLOP per image (torch flop counter); peak {formula}")
    for batch in args.batches:
        x = torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(batch))
        xn = x.numpy()
        fns: dict[str, Callable[[], object]] = {
            "effdet predict": lambda x=x: ref(x),
            "eager": lambda x=x: eager.detect(x),
            "optimised": lambda x=x: fast.detect(x),
            "onnxruntime": lambda xn=xn: session.run(None, {"images": xn}),
        }
        if compiled is not None:
            fns["optimised+compile"] = lambda x=x: compiled.detect(x)
        with torch.inference_mode():
            candidates = int((torch.cat([c.flatten() for c in ours(x)[0]]).sigmoid() > 0.001).sum())
            times = interleaved_median_ms(fns, repeats=args.repeats, warmup=args.warmup)
        print(f"\n## batch {batch} ({candidates} (anchor, class) scores above 0.001 in the batch)")
        print(f"{'variant':20s} {'ms/batch':>10s} {'img/s':>8s} {'vs effdet':>9s} {'GFLOP/s':>8s} {'% peak':>7s}")
        base = times["effdet predict"]
        for name, ms in times.items():
            rate = batch / (ms / 1000)
            gflops = rate * flop_per_image / 1e9
            print(
                f"{name:20s} {ms:10.1f} {rate:8.2f} {ms / base:9.3f} {gflops:8.1f} "
                f"{100 * gflops / peak:6.1f}%"
            )
    workdir.cleanup()


if __name__ == "__main__":
    main()
