"""D0 on one CUDA GPU against effdet (the reference port) on the same GPU and weights, one run.

    python benchmarks/bench_gpu.py [--out benchmarks/results/gpu] [--repeats 20] [--quick]

Measured, every comparison interleaved with effdet in the same process:

* training: images/s of an SGD step (forward, anchor labelling, loss, backward, update) of D0
  at 512, batch 16, AMP bf16, channels-last weights and input. Ours: ``Detector(model)`` and its
  loss, as ``bench_train.py``; effdet: ``DetBenchTrain`` with its anchor labeller.
* inference: normalised input tensors on the GPU to detections (top 5000, decode, NMS, 100 per
  image) at batch 1 (latency) and batch 8 (images/s), fp16 autocast. effdet's
  ``DetBenchPredict`` eager; ours eager, optimised (``optimize_for_inference``: BN folded,
  channels-last), the optimised network replayed from a CUDA graph, ``torch.compile`` of it, and
  ONNX Runtime with the CUDA (and, with ``--tensorrt``, TensorRT) provider when
  onnxruntime-gpu is installed (skipped with the reason otherwise).
* end to end, batch 8: decoded frames (uint8 ``HxWx3`` arrays in memory) to detections in
  their own pixels, on the host. effdet: its evaluation transform (``ResizePad`` on the CPU) and
  its loader's normalisation on the GPU, then ``DetBenchPredict`` with ``img_info``. Ours:
  ``Detector.predict`` (the package's path: letterbox on the CPU), and the frames letterboxed on
  the GPU by this script (upload, bilinear antialiased resize, normalise, pad: the same steps as
  ``efficientdet.detection.transform.letterbox``) feeding the CUDA-graph network.

Random weights are created by effdet (seeded) and loaded into this project's network, so both
compute the same function; with them every score is about 0.0099, so both run NMS on 5000
candidates per image. Each timing synchronises the GPU before and after the call and reads
``time.perf_counter`` (host overheads count, as they do for a caller); median of ``--repeats``
after warm-up, the variants taking turns. cuDNN autotuning (``cudnn.benchmark``) is on for all.

Goals (printed PASS/FAIL; a missed goal does not change the exit status): training images/s at
least 1.3x effdet's; batch-1 latency at most 0.5x effdet's (best of our variants); D0 batch 8
end to end at least 800 images/s on an H100/H200.

Writes ``gpu_check.md``, ``gpu_check.csv`` and ``gpu_check.json`` to ``--out``, rewritten after
each section, so a run cut short by a timeout leaves what it had measured (marked partial).

Exit status: 0 when it ran (goals met or not), and also without a CUDA GPU, where it prints one
line saying so and writes nothing; 1 when a measurement raised (its row says "error").
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import json
import math
import os
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

NEEDS_GPU = "bench_gpu.py: needs a CUDA GPU (torch.cuda.is_available() is False); nothing measured"
SETTINGS = dict(score_threshold=0.001, pre_nms_top_k=5000, max_detections=100)
TRAIN_GOAL = 1.3  # ours / effdet images/s, at least
LATENCY_GOAL = 0.5  # ours / effdet batch-1 latency, at most
E2E_GOAL = 800.0  # images/s, D0 batch 8 end to end on an H100/H200
E2E_GOAL_GPUS = ("H100", "H200")


# ---- results ---------------------------------------------------------------------------------


@dataclass
class Row:
    section: str  # "train", "inference", "end to end"
    variant: str
    batch: int
    ms: float | None = None  # per batch (per step for training)
    effdet_ms: float | None = None  # effdet's time in the same interleaving
    note: str = ""
    status: str = "ok"  # ok, skipped, error

    @property
    def images_per_s(self) -> float | None:
        return self.batch / (self.ms / 1000) if self.ms else None

    @property
    def time_ratio(self) -> float | None:
        return self.ms / self.effdet_ms if self.ms and self.effdet_ms else None


@dataclass
class Report:
    header: dict[str, str]
    train_batch: int = 16
    e2e_batch: int = 8
    rows: list[Row] = field(default_factory=list)
    complete: bool = False

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        shown = f"{row.ms:9.2f} ms" if row.ms is not None else f"{row.status:>12s}"
        ratio = f"  {row.time_ratio:.3f} x effdet's time" if row.time_ratio is not None else ""
        print(f"{row.section:10s} b{row.batch:<3d} {row.variant:40s} {shown}{ratio}  {row.note}", flush=True)
        return row

    def find(self, section: str, batch: int, ours: bool = True) -> list[Row]:
        return [
            r for r in self.rows
            if r.section == section and r.batch == batch and r.ms is not None
            and r.status == "ok" and (r.variant.startswith("effdet") != ours)
        ]

    def goals(self) -> list[dict[str, str]]:
        out = []
        train = self.find("train", self.train_batch)
        ref = self.find("train", self.train_batch, ours=False)
        if train and ref:
            ratio = ref[0].ms / train[0].ms
            out.append(_goal(
                "training images/s, ours / effdet", f"{ratio:.2f}x ({train[0].images_per_s:.3g} vs "
                f"{ref[0].images_per_s:.3g} images/s)", f">= {TRAIN_GOAL}x", ratio >= TRAIN_GOAL,
            ))
        else:
            out.append(_goal("training images/s, ours / effdet", "not measured", f">= {TRAIN_GOAL}x", None))
        lat = [r for r in self.find("inference", 1) if r.time_ratio is not None]
        if lat:
            best = min(lat, key=lambda r: r.time_ratio or math.inf)
            ratio = best.time_ratio or math.inf
            out.append(_goal(
                "batch-1 latency, ours / effdet (best variant)",
                f"{ratio:.3f}x ({best.variant}: {best.ms:.2f} vs {best.effdet_ms:.2f} ms)",
                f"<= {LATENCY_GOAL}x", ratio <= LATENCY_GOAL,
            ))
        else:
            out.append(_goal("batch-1 latency, ours / effdet", "not measured", f"<= {LATENCY_GOAL}x", None))
        e2e = self.find("end to end", self.e2e_batch)
        gpu = self.header.get("device", "")
        target = f">= {E2E_GOAL:.0f} images/s on an H100/H200"
        if e2e:
            best = max(e2e, key=lambda r: r.images_per_s or 0.0)
            rate = best.images_per_s or 0.0
            applies = any(name in gpu for name in E2E_GOAL_GPUS)
            out.append(_goal(
                f"D0 batch {self.e2e_batch} end to end", f"{rate:.4g} images/s ({best.variant})",
                target if applies else f"{target} (n/a on {gpu})", rate >= E2E_GOAL if applies else None,
            ))
        else:
            out.append(_goal(f"D0 batch {self.e2e_batch} end to end", "not measured", target, None))
        return out

    def write(self, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        goals = self.goals()
        lines = [f"# GPU check: {self.header.get('model', '')} ({'complete' if self.complete else 'partial run'})", ""]
        lines += [f"- {k}: {v}" for k, v in self.header.items()]
        lines += ["", "| section | variant | batch | ms | images/s | time / effdet | images/s / effdet | note |",
                  "|---|---|---:|---:|---:|---:|---:|---|"]
        for r in self.rows:
            ms = f"{r.ms:.2f}" if r.ms is not None else r.status
            ips = f"{r.images_per_s:.1f}" if r.images_per_s is not None else ""
            tr = f"{r.time_ratio:.3f}" if r.time_ratio is not None else ""
            ir = f"{1 / r.time_ratio:.2f}" if r.time_ratio else ""
            note = r.note.replace("|", "/")
            lines.append(f"| {r.section} | {r.variant} | {r.batch} | {ms} | {ips} | {tr} | {ir} | {note} |")
        lines += ["", "## Goals", "", "| goal | measured | target | result |", "|---|---|---|---|"]
        lines += [f"| {g['goal']} | {g['measured']} | {g['target']} | {g['result']} |" for g in goals]
        (out / "gpu_check.md").write_text("\n".join(lines) + "\n")
        with (out / "gpu_check.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["section", "variant", "batch", "ms", "images_per_s", "effdet_ms",
                             "time_vs_effdet", "images_per_s_vs_effdet", "status", "note"])
            for r in self.rows:
                writer.writerow([
                    r.section, r.variant, r.batch, _fmt(r.ms), _fmt(r.images_per_s), _fmt(r.effdet_ms),
                    _fmt(r.time_ratio), _fmt(1 / r.time_ratio if r.time_ratio else None), r.status, r.note,
                ])
        doc = {"header": self.header, "complete": self.complete, "goals": goals,
               "rows": [{**asdict(r), "images_per_s": r.images_per_s, "time_vs_effdet": r.time_ratio}
                        for r in self.rows]}
        (out / "gpu_check.json").write_text(json.dumps(doc, indent=1))


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.4g}"


def _goal(goal: str, measured: str, target: str, ok: bool | None) -> dict[str, str]:
    result = "n/a" if ok is None else ("PASS" if ok else "FAIL")
    return {"goal": goal, "measured": measured, "target": target, "result": result}


# ---- timing ----------------------------------------------------------------------------------


class Clock:
    """Wall time of calls with the device synchronised before and after each."""

    def __init__(self, device: torch.device, budget_s: float) -> None:
        self.device = device
        self.start = time.perf_counter()
        self.budget_s = budget_s

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def remaining(self) -> float:
        return self.budget_s - (time.perf_counter() - self.start)

    def once(self, fn: Callable[[], object]) -> float:
        self.sync()
        t0 = time.perf_counter()
        fn()
        self.sync()
        return (time.perf_counter() - t0) * 1000

    def interleaved(
        self, fns: dict[str, Callable[[], object]], repeats: int, warmup: int
    ) -> tuple[dict[str, float], dict[str, str]]:
        """Median ms of each function, the functions taking turns; those that raise are left out
        and returned as ``{name: error}``."""
        errors: dict[str, str] = {}
        live = dict(fns)
        for _ in range(warmup):
            for name, fn in list(live.items()):
                try:
                    fn()
                    self.sync()
                except Exception as err:  # a variant that fails must not stop the others
                    errors[name] = _error(err)
                    del live[name]
        times: dict[str, list[float]] = {k: [] for k in live}
        for _ in range(repeats):
            for name, fn in list(live.items()):
                try:
                    times[name].append(self.once(fn))
                except Exception as err:
                    errors[name] = _error(err)
                    del live[name]
                    times.pop(name, None)
        return {k: statistics.median(v) for k, v in times.items() if v}, errors


def _error(err: BaseException) -> str:
    traceback.print_exception(err, file=sys.stderr)
    return f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"


def _autocast(device: torch.device, dtype: torch.dtype) -> Any:
    return torch.autocast(device.type, dtype=dtype)


# ---- models ----------------------------------------------------------------------------------


class GraphedNetwork(nn.Module):
    """A network's forward captured once in a CUDA graph for one input shape (fp16 autocast
    inside); a call copies the input into the captured buffer and replays. The outputs are the
    graph's own buffers, overwritten by the next call. Keeps ``config`` for ``Detector``."""

    def __init__(self, net: nn.Module, example: Tensor, dtype: torch.dtype) -> None:
        super().__init__()
        self.net = net
        self.static_input = example.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        # cache_enabled=False: weight casts must be recorded in the graph, not cached outside it
        with torch.cuda.stream(side), torch.no_grad(), torch.autocast("cuda", dtype, cache_enabled=False):
            for _ in range(3):
                net(self.static_input)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), torch.no_grad(), torch.autocast("cuda", dtype, cache_enabled=False):
            self.static_output = net(self.static_input)

    @property
    def config(self) -> Any:
        return self.net.config

    def forward(self, images: Tensor) -> Any:
        if images.shape != self.static_input.shape:
            raise ValueError(f"captured for {tuple(self.static_input.shape)}, got {tuple(images.shape)}")
        self.static_input.copy_(images)
        self.graph.replay()
        return self.static_output


class GpuLetterbox:
    """Frames of one size (uint8 ``HxWx3``) to the normalised, padded network input on the
    device: the steps of ``transform.letterbox`` (scale ``min(H / h, W / w)``, bilinear with
    antialias to ``round(side * scale)``, ``(x / 255 - mean) / std``, zeros to the right and
    bottom), except that the resize runs on floats, not rounded uint8."""

    def __init__(self, frame_hw: tuple[int, int], input_hw: tuple[int, int], mean: Any, std: Any,
                 batch: int, device: torch.device) -> None:
        from efficientdet.detection.transform import LetterboxInfo

        h, w = frame_hw
        self.input_hw = input_hw
        scale = min(input_hw[0] / h, input_hw[1] / w)
        self.info = LetterboxInfo(scale=scale, original_size=(h, w), input_size=input_hw)
        self.resized = self.info.resized_size
        self.device = device
        self.staging = torch.empty(batch, h, w, 3, dtype=torch.uint8, pin_memory=device.type == "cuda")
        std_t = torch.tensor(std, dtype=torch.float64).view(1, 3, 1, 1)
        mean_t = torch.tensor(mean, dtype=torch.float64).view(1, 3, 1, 1)
        self.a = (1.0 / (255.0 * std_t)).float().to(device)
        self.b = (mean_t / std_t).float().to(device)

    def __call__(self, frames: list[np.ndarray]) -> Tensor:
        n = len(frames)
        for i, frame in enumerate(frames):
            self.staging[i].copy_(torch.from_numpy(frame))
        x = self.staging[:n].to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()
        if tuple(x.shape[-2:]) != self.resized:
            x = F.interpolate(x, size=self.resized, mode="bilinear", antialias=True, align_corners=False)
        out = torch.zeros(n, 3, *self.input_hw, device=self.device)
        out[:, :, : self.resized[0], : self.resized[1]] = x * self.a - self.b
        return out


def _frames(batch: int, width: int, height: int) -> list[np.ndarray]:
    """Photo-like frames: smooth gradients plus noise, each different."""
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 // width, y * 255 // height, (x + y) * 255 // (width + height)], -1)
    rng = np.random.default_rng(0)
    return [np.clip(base + rng.integers(0, 40, base.shape), 0, 255).astype(np.uint8) for _ in range(batch)]


def _targets(batch: int, size: int, device: torch.device) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
    """6 boxes per image, as ours ({boxes xyxy, labels 0-based}) and as effdet's training targets
    ({bbox yxyx, cls 1-based, img_scale, img_size}), as in bench_train.py."""
    g = torch.Generator().manual_seed(0)
    boxes, labels = [], []
    for _ in range(batch):
        xy = torch.rand(6, 2, generator=g) * (size - size * 0.3)
        wh = torch.rand(6, 2, generator=g) * size * 0.27 + 16
        boxes.append(torch.cat([xy, xy + wh], 1).clamp(max=size - 1))
        labels.append(torch.randint(0, 90, (6,), generator=g))
    ours = [{"boxes": b.to(device), "labels": lab.to(device)} for b, lab in zip(boxes, labels, strict=True)]
    theirs = {
        "bbox": torch.stack([b[:, [1, 0, 3, 2]] for b in boxes]).to(device),
        "cls": torch.stack([lab.float() + 1 for lab in labels]).to(device),
        "img_scale": torch.ones(batch, device=device),
        "img_size": torch.full((batch, 2), float(size), device=device),
    }
    return ours, theirs


def _to_host(detections: list[dict[str, Tensor]]) -> list[dict[str, Tensor]]:
    return [{k: v.cpu() for k, v in d.items()} for d in detections]


# ---- sections --------------------------------------------------------------------------------


def train_section(args: argparse.Namespace, report: Report, clock: Clock, device: torch.device,
                  workdir: Path) -> None:
    import effdet

    import efficientdet as ed

    size, batch = args.image_size, args.train_batch
    torch.manual_seed(0)
    theirs = effdet.create_model(
        args.model, pretrained=False, pretrained_backbone=False, bench_task="train",
        bench_labeler=True, image_size=(size, size),
    )
    weights = workdir / "train_init.pth"
    torch.save(theirs.model.state_dict(), weights)
    ours_net = ed.create_model(args.model, checkpoint=weights, image_size=(size, size))
    nhwc = torch.channels_last
    ours = ed.Detector(ours_net, channels_last=True).to(device).to(memory_format=nhwc).train()
    theirs = theirs.to(device).to(memory_format=nhwc).train()
    g = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, size, size, generator=g).to(device).contiguous(memory_format=nhwc)
    ours_t, theirs_t = _targets(batch, size, device)
    dtype = torch.bfloat16 if args.train_amp == "bf16" else torch.float16

    def trainer(module: nn.Module, forward: Callable[[], Tensor]) -> Callable[[], None]:
        opt = torch.optim.SGD(module.parameters(), lr=0.01, momentum=0.9)

        def step() -> None:
            with _autocast(device, dtype):
                loss = forward()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        return step

    fns = {
        "effdet DetBenchTrain": trainer(theirs, lambda: theirs(images, theirs_t)["loss"]),
        "ours Detector": trainer(ours, lambda: ours(images, ours_t)["loss"]),
    }
    # Same function, same targets: in evaluation mode (no drop-path draws, running BN
    # statistics) and fp32 the two losses agree to float tolerance.
    with torch.no_grad():
        ours.eval()
        theirs.eval()
        losses = {"ours": float(ours.loss(images, ours_t)["loss"]),
                  "effdet": float(theirs(images, theirs_t)["loss"])}
        ours.train()
        theirs.train()
    memory: dict[str, str] = {}
    if device.type == "cuda":  # the step's peak above what is resident (both models' weights)
        for name, fn in fns.items():
            try:
                fn()
                clock.sync()
                resident = torch.cuda.memory_allocated(device)
                torch.cuda.reset_peak_memory_stats(device)
                fn()
                clock.sync()
                memory[name] = f"step peak {(torch.cuda.max_memory_allocated(device) - resident) / 2**20:.0f} MB above resident"
            except Exception as err:
                memory[name] = _error(err)
    times, errors = clock.interleaved(fns, repeats=args.train_repeats, warmup=args.warmup)
    base = times.get("effdet DetBenchTrain")
    for name in fns:
        loss = losses["effdet" if name.startswith("effdet") else "ours"]
        note = (f"{args.train_amp}, channels-last, SGD; loss before training (eval mode, fp32) "
                f"{loss:.4f}; {memory.get(name, '')}").rstrip("; ")
        if name in errors:
            report.add(Row("train", name, batch, note=errors[name], status="error"))
        else:
            report.add(Row("train", name, batch, times[name], base, note))


def _add_rows(
    report: Report, section: str, batch: int, names: list[str], times: dict[str, float],
    errors: dict[str, str], base: float | None, note: str,
) -> None:
    """One row per timed variant against ``base`` (effdet's time), or its error."""
    for name in names:
        if name in errors:
            report.add(Row(section, name, batch, note=errors[name], status="error"))
        else:
            report.add(Row(section, name, batch, times[name], base, note))


def _free(device: torch.device) -> None:
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


class Models:
    """effdet's predict bench and our network with the same weights, and our variants."""

    def __init__(self, args: argparse.Namespace, device: torch.device, workdir: Path) -> None:
        import effdet

        import efficientdet as ed
        from efficientdet.modeling.optimize import optimize_for_inference

        size = args.image_size
        torch.manual_seed(0)
        self.ref = effdet.create_model(
            args.model, pretrained=False, pretrained_backbone=False, bench_task="predict",
            image_size=(size, size),
        ).eval()
        self.weights = workdir / "predict_init.pth"
        torch.save(self.ref.model.state_dict(), self.weights)
        self.ref = self.ref.to(device)
        self.net = ed.create_model(args.model, checkpoint=self.weights, image_size=(size, size)).eval()
        self.config = self.net.config
        self.net = self.net.to(device)
        self.eager = ed.Detector(self.net, **SETTINGS).eval()
        self.fast_net = optimize_for_inference(self.net)  # BN folded, heads unshared, NHWC
        self.fast = ed.Detector(self.fast_net, **SETTINGS).eval()
        self.device = device
        self.dtype = torch.float16 if args.infer_dtype == "fp16" else torch.bfloat16
        self.graphs: dict[int, Any] = {}
        self.compiled_once = False

    def graphed(self, batch: int) -> Any:
        import efficientdet as ed

        if batch not in self.graphs:
            example = torch.zeros(batch, 3, *self.config.image_size, device=self.device)
            self.graphs[batch] = ed.Detector(GraphedNetwork(self.fast_net, example, self.dtype), **SETTINGS).eval()
        return self.graphs[batch]


def inference_section(args: argparse.Namespace, report: Report, clock: Clock, models: Models,
                      batch: int) -> None:
    device, dtype = models.device, models.dtype
    size = models.config.image_size
    x = torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(batch)).to(device)
    fns: dict[str, Callable[[], object]] = {
        "effdet DetBenchPredict": lambda: models.ref(x),
        "ours eager": lambda: models.eager.detect(x),
        "ours optimised (BN folded, NHWC)": lambda: models.fast.detect(x),
    }
    build_errors: dict[str, str] = {}
    if device.type == "cuda":
        try:
            graphed = models.graphed(batch)
            fns["ours optimised, CUDA graph"] = lambda: graphed.detect(x)
        except Exception as err:
            build_errors["ours optimised, CUDA graph"] = _error(err)
    with torch.no_grad(), _autocast(device, dtype):
        candidates = int((torch.cat([c.flatten() for c in models.net(x)[0]]).float().sigmoid() > 0.001).sum())
        times, errors = clock.interleaved(fns, repeats=args.repeats, warmup=args.warmup)
    errors.update(build_errors)
    _add_rows(report, "inference", batch, [*fns, *build_errors], times, errors,
              times.get("effdet DetBenchPredict"), f"{args.infer_dtype} autocast; {candidates} scores > 0.001")


def compile_section(args: argparse.Namespace, report: Report, clock: Clock, models: Models,
                    batch: int) -> None:
    """``torch.compile`` of the optimised network (static shapes), timed against effdet again."""
    import efficientdet as ed
    from efficientdet.modeling.optimize import InferenceModel

    name = f"ours optimised, torch.compile ({args.compile_mode})"
    needed = 60 if models.compiled_once else 90
    if clock.remaining() < needed:
        report.add(Row("inference", name, batch, note=f"skipped: {clock.remaining():.0f} s of the "
                       f"--budget-s left, a compilation needs about {needed} s", status="skipped"))
        return
    device, dtype = models.device, models.dtype
    x = torch.randn(batch, 3, *models.config.image_size, generator=torch.Generator().manual_seed(batch)).to(device)
    try:
        compiled = torch.compile(models.fast_net.net, dynamic=False, mode=args.compile_mode)
        detector = ed.Detector(InferenceModel(models.fast_net.net, channels_last=True, compiled=compiled), **SETTINGS).eval()
        with torch.no_grad(), _autocast(device, dtype):
            seconds = clock.once(lambda: detector.detect(x)) / 1000
    except Exception as err:
        report.add(Row("inference", name, batch, note=_error(err), status="error"))
        return
    models.compiled_once = True
    fns = {"effdet DetBenchPredict": lambda: models.ref(x), name: lambda: detector.detect(x)}
    with torch.no_grad(), _autocast(device, dtype):
        times, errors = clock.interleaved(fns, repeats=args.repeats, warmup=args.warmup)
    if name in errors or "effdet DetBenchPredict" not in times:
        report.add(Row("inference", name, batch, note=errors.get(name, str(errors)), status="error"))
        return
    report.add(Row("inference", name, batch, times[name], times["effdet DetBenchPredict"],
                   f"{args.infer_dtype} autocast; first call (compilation) {seconds:.0f} s; "
                   "effdet re-timed in this interleaving"))


def onnx_section(args: argparse.Namespace, report: Report, clock: Clock, models: Models,
                 workdir: Path, batches: list[int]) -> None:
    """ONNX Runtime on the export with NMS inside, CUDA provider (and TensorRT with
    ``--tensorrt``); host arrays in and out. Skipped with the reason when not possible."""
    def skip(variant: str, reason: str) -> None:
        for batch in batches:
            report.add(Row("inference", variant, batch, note=f"skipped: {reason}", status="skipped"))

    try:
        import onnxruntime as ort
    except ImportError:
        skip("onnxruntime CUDA", "onnxruntime is not installed")
        return
    available = ort.get_available_providers()
    wanted = [("onnxruntime CUDA", "CUDAExecutionProvider")]
    if args.tensorrt:
        wanted.append(("onnxruntime TensorRT (fp16)", "TensorrtExecutionProvider"))
    else:
        skip("onnxruntime TensorRT", "not asked for (--tensorrt; building the engine takes minutes)")
    wanted_here = [(v, p) for v, p in wanted if p in available]
    for variant, provider in wanted:
        if provider not in available:
            skip(variant, f"{provider} not in onnxruntime {ort.__version__}'s providers {available} "
                 "(the CPU build; install onnxruntime-gpu)")
    if not wanted_here:
        return
    if clock.remaining() < 60:
        for variant, _ in wanted_here:
            skip(variant, f"{clock.remaining():.0f} s of the --budget-s left")
        return
    from efficientdet.deploy.export import export_onnx

    path = workdir / "model.onnx"
    try:
        t0 = time.perf_counter()
        export_onnx(copy.deepcopy(models.net).cpu().float(), path, batch="dynamic", **SETTINGS)
        export_s = time.perf_counter() - t0
    except Exception as err:
        for variant, _ in wanted_here:
            for batch in batches:
                report.add(Row("inference", variant, batch, note=f"export failed: {_error(err)}", status="error"))
        return
    for variant, provider in wanted_here:
        options: dict[str, Any] = {"device_id": models.device.index or 0}
        if provider == "TensorrtExecutionProvider":
            options.update(trt_fp16_enable=True, trt_engine_cache_enable=True,
                           trt_engine_cache_path=str(workdir / "trt"))
        try:
            fallbacks = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p != provider]
            session = ort.InferenceSession(str(path), providers=[(provider, options), *fallbacks])
        except Exception as err:
            for batch in batches:
                report.add(Row("inference", variant, batch, note=_error(err), status="error"))
            continue
        if session.get_providers()[0] != provider:
            skip(variant, f"{provider} did not load (session runs on {session.get_providers()}); "
                 "see onnxruntime's log above: CUDA/cuDNN libraries of the build it expects")
            continue
        for batch in batches:
            x = torch.randn(batch, 3, *models.config.image_size, generator=torch.Generator().manual_seed(batch))
            xn, xd = x.numpy(), x.to(models.device)
            first = clock.once(lambda xn=xn, s=session: s.run(None, {"images": xn}))
            fns = {"effdet DetBenchPredict": lambda xd=xd: models.ref(xd),
                   variant: lambda xn=xn, s=session: s.run(None, {"images": xn})}
            with torch.no_grad(), _autocast(models.device, models.dtype):
                times, errors = clock.interleaved(fns, repeats=args.repeats, warmup=args.warmup)
            if variant in errors or "effdet DetBenchPredict" not in times:
                report.add(Row("inference", variant, batch, note=errors.get(variant, str(errors)), status="error"))
                continue
            report.add(Row("inference", variant, batch, times[variant], times["effdet DetBenchPredict"],
                           f"fp32 graph, host arrays in/out; export {export_s:.0f} s, first run "
                           f"{first / 1000:.1f} s; effdet ({models.dtype}) re-timed in this interleaving"))


def e2e_section(args: argparse.Namespace, report: Report, clock: Clock, models: Models) -> None:
    from effdet.data.transforms import transforms_coco_eval
    from PIL import Image

    from efficientdet.detection.transform import scale_boxes_to_original

    device, dtype, config = models.device, models.dtype, models.config
    batch, (width, height) = args.batch, args.frame
    frames = _frames(batch, width, height)
    size = config.image_size
    transform = transforms_coco_eval(size[0], interpolation="bilinear", use_prefetcher=True,
                                     mean=config.mean, std=config.std)
    mean = torch.tensor([m * 255 for m in config.mean], device=device).view(1, 3, 1, 1)
    std = torch.tensor([s * 255 for s in config.std], device=device).view(1, 3, 1, 1)

    def effdet_e2e() -> Tensor:
        arrays, scales = [], []
        for frame in frames:
            array, info = transform(Image.fromarray(frame), {})
            arrays.append(torch.from_numpy(array))
            scales.append(info["img_scale"])
        x = torch.stack(arrays).to(device, non_blocking=True).float().sub_(mean).div_(std)
        img_info = {
            "img_scale": torch.tensor(scales, dtype=torch.float32, device=device),
            "img_size": torch.tensor([[width, height]] * batch, dtype=torch.float32, device=device),
        }
        return models.ref(x, img_info).cpu()

    fns: dict[str, Callable[[], object]] = {
        "effdet transform + DetBenchPredict": effdet_e2e,
        "ours Detector.predict (CPU letterbox), optimised": lambda: _to_host(models.fast.predict(frames)),
    }
    build_errors: dict[str, str] = {}
    letterbox = GpuLetterbox((height, width), size, config.mean, config.std, batch, device)

    def gpu_path(detector: Any) -> Callable[[], object]:
        def run() -> object:
            detections = detector.detect(letterbox(frames))
            for d in detections:
                d["boxes"] = scale_boxes_to_original(d["boxes"], letterbox.info)
            return _to_host(detections)
        return run

    fns["ours GPU letterbox, optimised"] = gpu_path(models.fast)
    if device.type == "cuda":
        try:
            fns["ours GPU letterbox, CUDA graph"] = gpu_path(models.graphed(batch))
        except Exception as err:
            build_errors["ours GPU letterbox, CUDA graph"] = _error(err)
    with torch.no_grad(), _autocast(device, dtype):
        times, errors = clock.interleaved(fns, repeats=args.repeats, warmup=args.warmup)
    errors.update(build_errors)
    _add_rows(report, "end to end", batch, [*fns, *build_errors], times, errors,
              times.get("effdet transform + DetBenchPredict"),
              f"{batch} frames {width}x{height} uint8 in memory -> detections on the host; {args.infer_dtype}")


# ---- main ------------------------------------------------------------------------------------


def _header(args: argparse.Namespace, device: torch.device) -> dict[str, str]:
    import importlib.metadata

    import timm

    header = {"model": f"{args.model} at {args.image_size}x{args.image_size}"}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        header["device"] = f"{props.name} ({props.total_memory / 2**30:.0f} GiB)"
        header["CUDA / cuDNN"] = f"{torch.version.cuda} / {torch.backends.cudnn.version()}"
    else:
        header["device"] = "CPU (--allow-cpu: a check of the script, the numbers mean nothing)"
    header["torch"] = torch.__version__
    header["effdet / timm"] = f"{importlib.metadata.version('effdet')} / {timm.__version__}"
    try:
        import onnxruntime as ort

        header["onnxruntime"] = f"{ort.__version__} ({', '.join(ort.get_available_providers())})"
    except ImportError:
        header["onnxruntime"] = "not installed"
    header["date"] = time.strftime("%Y-%m-%d %H:%M %Z")
    header["command"] = " ".join(["python", *sys.argv])
    header["timing"] = (f"median of {args.repeats} (training {args.train_repeats}) after {args.warmup} "
                        "warm-up calls, variants interleaved, device synchronised around each call")
    return header


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "gpu")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per variant (training: half)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--quick", action="store_true",
                        help="5 repeats, 2 warm-up calls, no torch.compile and no ONNX Runtime")
    parser.add_argument("--model", default="tf_efficientdet_d0")
    parser.add_argument("--image-size", type=int, default=512, help="network input side")
    parser.add_argument("--train-batch", type=int, default=16)
    parser.add_argument("--train-amp", choices=["bf16", "fp16"], default="bf16")
    parser.add_argument("--batch", type=int, default=8, help="the larger inference batch and the end-to-end batch")
    parser.add_argument("--frame", type=int, nargs=2, default=[640, 480], metavar=("W", "H"),
                        help="end-to-end frame size")
    parser.add_argument("--infer-dtype", choices=["fp16", "bf16"], default="fp16")
    parser.add_argument("--compile-mode", default="default", help="torch.compile mode")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--tensorrt", action="store_true", help="also ONNX Runtime's TensorRT provider")
    parser.add_argument("--budget-s", type=float, default=170.0,
                        help="seconds after which the optional parts (compile, ONNX Runtime) are skipped")
    parser.add_argument("--threads", type=int, default=min(8, os.cpu_count() or 1), help="CPU threads")
    parser.add_argument("--allow-cpu", action="store_true",
                        help="run on the CPU without CUDA, to check the script (no CUDA graph; "
                        "the numbers mean nothing)")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.warmup, args.no_compile = min(args.repeats, 5), min(args.warmup, 2), True
    args.train_repeats = max(3, args.repeats // 2)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available() and not args.allow_cpu:
        print(NEEDS_GPU)
        return 0
    sys.path.insert(0, str(Path(__file__).parent))
    from common import setup

    setup(args.threads)
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    torch.backends.cudnn.benchmark = True
    clock = Clock(device, args.budget_s)
    report = Report(_header(args, device), train_batch=args.train_batch, e2e_batch=args.batch)
    for key, value in report.header.items():
        print(f"# {key}: {value}")
    failed = False
    with tempfile.TemporaryDirectory(prefix="bench_gpu_") as tmp:
        workdir = Path(tmp)
        for part in _sections(args, report, clock, device, workdir):
            try:
                part.run()
            except Exception as err:  # a part that cannot even start: say so, go on
                failed = True
                report.add(Row(part.section, part.label, part.batch, note=_error(err), status="error"))
            _free(device)  # the training models go before the inference ones are built
            report.write(args.out)
    report.complete = True
    report.write(args.out)
    print("\n## Goals")
    for goal in report.goals():
        print(f"{goal['result']:5s} {goal['goal']}: {goal['measured']} (target {goal['target']})")
    print(f"wrote {args.out / 'gpu_check.md'}, {args.out / 'gpu_check.csv'}, {args.out / 'gpu_check.json'}")
    failed = failed or any(r.status == "error" for r in report.rows)
    return 1 if failed else 0


@dataclass
class Part:
    """One step of the run; a row names it when it raises."""

    section: str
    label: str
    batch: int
    run: Callable[[], None]


def _sections(args: argparse.Namespace, report: Report, clock: Clock, device: torch.device,
              workdir: Path) -> Iterator[Part]:
    """The parts in order: the goals' measurements first, the optional ones last."""
    yield Part("train", "setup", args.train_batch, lambda: train_section(args, report, clock, device, workdir))
    holder: dict[str, Models] = {}

    def build() -> None:
        holder["models"] = Models(args, device, workdir)

    yield Part("inference", "setup", 1, build)
    if "models" not in holder:
        return
    models = holder["models"]
    for batch in (1, args.batch):
        yield Part("inference", "variants", batch,
                   lambda b=batch: inference_section(args, report, clock, models, b))
    yield Part("end to end", "variants", args.batch, lambda: e2e_section(args, report, clock, models))
    for batch in (1, args.batch):
        if args.no_compile:
            reason = "skipped: --quick" if args.quick else "skipped: --no-compile"
            yield Part("inference", "torch.compile", batch, lambda b=batch, r=reason: _skip(
                report, "ours optimised, torch.compile", b, r))
        else:
            yield Part("inference", "torch.compile", batch,
                       lambda b=batch: compile_section(args, report, clock, models, b))
    if args.quick:
        for batch in (1, args.batch):
            yield Part("inference", "onnxruntime", batch,
                       lambda b=batch: _skip(report, "onnxruntime CUDA", b, "skipped: --quick"))
    else:
        yield Part("inference", "onnxruntime", 1,
                   lambda: onnx_section(args, report, clock, models, workdir, [1, args.batch]))


def _skip(report: Report, variant: str, batch: int, reason: str) -> None:
    report.add(Row("inference", variant, batch, note=reason, status="skipped"))


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
