"""The scaling study of the paper's Figure 6: compound scaling against scaling one dimension.

From the ``phi = 0`` baseline (D0 by default), each compound point ``phi`` (width, depth,
resolution and backbone together, :func:`efficientdet.modeling.scaling.compound_config`) is matched in
multiply-adds by three single-dimension scalings that leave everything else at the baseline:

- ``width``: BiFPN / head width W0 + 8k (the rules' divisor);
- ``depth``: BiFPN depth D0 + k with head depth H0 + floor(k / 3) (the rules tie the two);
- ``resolution``: input side R0 + s*k, ``s`` = ``resolution_search_step`` (32 px by default;
  the rules' 128 px steps are too coarse to match FLOPs within a few per cent).

The knob k is searched (galloping then bisection on the meta-device FLOP count, which is
non-decreasing in k) for the value whose multiply-adds are closest to the compound point's.
Each configuration then gets parameters, multiply-adds, CPU latency (real forward passes at
a small batch, median after warm-up) and, with ``train_steps > 0``, the validation AP after
the same short training. Results go to ``scaling_study.md``, ``.csv`` and ``.png``.
"""

from __future__ import annotations

import csv
import functools
import logging
import math
import os
import platform
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import ModelConfig
from ..modeling.scaling import (
    DEFAULT_BASE,
    CompoundRules,
    check_phi,
    compound_config,
    round_half_up,
)
from .repeats import Repeats, bound_settings, train_repeats

log = logging.getLogger(__name__)

DIMENSIONS = ("width", "depth", "resolution")
BASELINE = "baseline"
COMPOUND = "compound"
STUDY_FILES = ("scaling_study.md", "scaling_study.csv", "scaling_study.png")
_KNOB_LIMIT = 100_000

if TYPE_CHECKING:
    from ..modeling.profile import ModelProfile


@dataclass(frozen=True)
class StudySettings:
    """What to compare and how to measure it.

    Attributes:
        phis: compound points (> 0) to match; the ``phi = 0`` baseline is always included.
        base, neck, backbone, backbone_ladder, num_classes: as for ``compound_config``.
        dimensions: single-dimension scalings to compare, a subset of :data:`DIMENSIONS`.
        image_scale: multiply the baseline's input and the rules' 128 px step by this
            (0.5: D0 at 256 px, +64 px per phi) to make the study cheaper.
        resolution_search_step: pixels per step of the resolution-only knob.
        tolerance: relative FLOP mismatch above which a match is flagged.
        latency_batch, latency_repeats, latency_warmup, threads: CPU timing.
        train_steps: 0 skips training; otherwise steps of training per configuration.
        train_batch_size, data, demo_train, demo_val, pretrained_backbone, seed: the short
            training (:func:`efficientdet.studies.short_train.short_train`, the demo's recipe); ``data``
            is a ``data.yaml`` with train and val splits (None writes a demo set of
            ``demo_train`` / ``demo_val`` images).
        train_overrides: ``section.key=value`` settings on top of the demo's recipe
            (``optim.lr=0.015``), the same for every configuration.
        rules: the compound-scaling rules (the paper's by default).
    """

    phis: tuple[float, ...] = (1.0, 2.0)
    base: str | ModelConfig = DEFAULT_BASE
    neck: str | None = None
    backbone: str | None = None
    backbone_ladder: str | None = None
    num_classes: int = 90
    dimensions: tuple[str, ...] = DIMENSIONS
    image_scale: float = 1.0
    resolution_search_step: int = 32
    tolerance: float = 0.05
    latency_batch: int = 1
    latency_repeats: int = 3
    latency_warmup: int = 1
    threads: int = 2
    train_steps: int = 0
    train_batch_size: int = 4
    data: str | None = None
    demo_train: int = 64
    demo_val: int = 32
    pretrained_backbone: bool = False
    seed: int = 0
    seeds: int = 1
    train_overrides: tuple[str, ...] = ()
    rules: CompoundRules = field(default_factory=CompoundRules)

    def __post_init__(self) -> None:
        phis = tuple(sorted({check_phi(p) for p in self.phis} - {0.0}))
        object.__setattr__(self, "phis", phis)
        bad = [d for d in self.dimensions if d not in DIMENSIONS]
        if bad:
            raise ValueError(f"dimensions {bad} are not in {DIMENSIONS}")
        if not 0 < self.image_scale <= 4:
            raise ValueError(f"image_scale must be in (0, 4], got {self.image_scale}")
        if self.resolution_search_step < 1 or self.latency_repeats < 0 or self.threads < 1:
            raise ValueError("resolution_search_step and threads must be >= 1, latency_repeats >= 0")
        if self.train_steps < 0:
            raise ValueError(f"train_steps must be >= 0, got {self.train_steps}")
        if self.seeds < 1:
            raise ValueError(f"seeds must be >= 1, got {self.seeds}")
        from ..train.config import parse_override

        for override in self.train_overrides:  # a malformed one fails now, not after the timing
            parse_override(override)


@dataclass
class StudyRow:
    """One configuration of the study with its measurements."""

    method: str
    phi: float
    knob: str
    config: ModelConfig
    params: int
    multiply_adds: int
    target_multiply_adds: int
    latency_ms: float | None = None
    latency_min_ms: float | None = None
    ap: float | None = None  # mean over the seeds
    accuracy: Repeats | None = None  # every seed's validation metrics

    @property
    def flops_ratio(self) -> float:
        """Multiply-adds relative to the compound point this row matches."""
        return self.multiply_adds / self.target_multiply_adds

    def as_dict(self) -> dict[str, Any]:
        cfg = self.config
        return {
            "method": self.method,
            "phi": self.phi,
            "knob": self.knob,
            "backbone": cfg.backbone,
            "width": cfg.fpn_channels,
            "depth": cfg.fpn_repeats,
            "head_depth": cfg.head_repeats,
            "image_size": f"{cfg.image_size[0]}x{cfg.image_size[1]}",
            "params_m": round(self.params / 1e6, 3),
            "gmacs": round(self.multiply_adds / 1e9, 3),
            "flops_ratio": round(self.flops_ratio, 4),
            "latency_ms": None if self.latency_ms is None else round(self.latency_ms, 1),
            "latency_min_ms": None if self.latency_min_ms is None else round(self.latency_min_ms, 1),
            "ap": None if self.ap is None else round(self.ap, 4),
            "ap_std": None if self.accuracy is None else round(self.accuracy.std("AP"), 4),
            "ap50": None if self.accuracy is None else round(self.accuracy.mean("AP50"), 4),
            "seeds": None if self.accuracy is None else len(self.accuracy.runs),
        }


@dataclass
class StudyResult:
    rows: list[StudyRow]
    files: dict[str, Path] = field(default_factory=dict)


# ---- configurations ------------------------------------------------------------------------------


def study_rules(settings: StudySettings) -> CompoundRules:
    """``settings.rules`` with the resolution step and divisor scaled by ``image_scale``."""
    rules, scale = settings.rules, settings.image_scale
    if scale == 1.0:
        return rules
    return replace(
        rules,
        resolution_step=round(rules.resolution_step * scale),
        resolution_divisor=max(8, round(rules.resolution_divisor * scale)),
    )


def baseline_config(settings: StudySettings) -> ModelConfig:
    """The ``phi = 0`` configuration every scaling starts from."""
    base = compound_config(
        0, base=settings.base, neck=settings.neck, backbone=settings.backbone,
        backbone_ladder=settings.backbone_ladder, num_classes=settings.num_classes,
    )
    if settings.image_scale != 1.0:
        h, w = (max(8, 8 * round_half_up(s * settings.image_scale / 8)) for s in base.image_size)
        base = replace(base, image_size=(h, w))
    return replace(base, name=f"{base.name.removesuffix('_phi0')}_baseline")


def _stem(baseline: ModelConfig) -> str:
    return baseline.name.removesuffix("_baseline")


def compound_point(settings: StudySettings, baseline: ModelConfig, phi: float) -> ModelConfig:
    """The compound-scaled configuration for ``phi`` from ``baseline``."""
    return compound_config(
        phi, base=baseline, backbone=settings.backbone, backbone_ladder=settings.backbone_ladder,
        num_classes=settings.num_classes, rules=study_rules(settings),
        name=f"{_stem(baseline)}_compound_phi{phi:g}",
    )


def single_dimension(
    baseline: ModelConfig,
    dimension: str,
    k: int,
    *,
    rules: CompoundRules | None = None,
    resolution_step: int = 32,
) -> ModelConfig:
    """``baseline`` with one dimension scaled ``k`` steps (module docstring)."""
    rules = rules or CompoundRules()
    stem = _stem(baseline)
    if dimension == "width":
        width = baseline.fpn_channels + rules.width_divisor * k
        return replace(baseline, name=f"{stem}_width{width}", fpn_channels=width)
    if dimension == "depth":
        depth = baseline.fpn_repeats + k
        head = baseline.head_repeats + k // rules.head_depth_every
        return replace(baseline, name=f"{stem}_depth{depth}", fpn_repeats=depth, head_repeats=head)
    if dimension == "resolution":
        h, w = (s + resolution_step * k for s in baseline.image_size)
        return replace(baseline, name=f"{stem}_res{h}", image_size=(h, w))
    raise ValueError(f"dimension {dimension!r} is not one of {DIMENSIONS}")


def _knob_text(dimension: str, config: ModelConfig) -> str:
    if dimension == "width":
        return f"W={config.fpn_channels}"
    if dimension == "depth":
        return f"D={config.fpn_repeats}, head={config.head_repeats}"
    return f"R={config.image_size[0]}" if len(set(config.image_size)) == 1 else (
        "R={}x{}".format(*config.image_size)
    )


def match_knob(cost: Callable[[int], int], target: float, *, limit: int = _KNOB_LIMIT) -> int:
    """The ``k >= 0`` whose ``cost(k)`` is closest to ``target`` (relative error), for a
    non-decreasing ``cost``. Gallops up from 0 (steps 1, 2, 4, ...) to bracket the target, then
    bisects; each ``k`` is evaluated once. A ValueError when ``cost(limit)`` < ``target``."""
    cache: dict[int, int] = {}

    def f(k: int) -> int:
        if k not in cache:
            cache[k] = cost(k)
        return cache[k]

    if f(0) >= target:
        return 0
    lo, hi, step = 0, 1, 1
    while f(hi) < target:
        if hi >= limit:
            raise ValueError(f"cost({limit}) = {f(limit)} stays below the target {target:.4g}")
        lo, step = hi, step * 2
        hi = min(limit, hi + step)
    # Invariant: f(lo) < target <= f(hi).
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if f(mid) < target:
            lo = mid
        else:
            hi = mid
    return lo if abs(math.log(max(f(lo), 1) / target)) < abs(math.log(f(hi) / target)) else hi


class Profiler:
    """:func:`profile_config` with a cache keyed by the architecture (names ignored)."""

    def __init__(self, profile: Callable[[ModelConfig], ModelProfile] | None = None) -> None:
        if profile is None:
            from ..modeling.profile import profile_config

            profile = profile_config
        self._profile = profile
        self._cache: dict[ModelConfig, ModelProfile] = {}
        self.calls = 0

    def __call__(self, config: ModelConfig) -> ModelProfile:
        key = replace(config, name="")
        if key not in self._cache:
            self.calls += 1
            self._cache[key] = self._profile(config)
        return self._cache[key]


def affine_depth_cost(
    baseline: ModelConfig, profiler: Profiler, rules: CompoundRules
) -> Callable[[int], int] | None:
    """Multiply-adds of the depth-only knob ``k`` without building deep models, or None.

    In a graph neck every cell after the first costs the same, and so does every head repeat,
    so ``F(k) = F(0) + k * cell + (k // every) * head`` from three cheap profiles. The model is
    checked against a real count at ``k = every + 1`` and returned only when it is exact there
    (necks whose cost is not affine in their repeats fall back to real counts).
    """
    f0 = profiler(baseline).multiply_adds
    cell = profiler(replace(baseline, fpn_repeats=baseline.fpn_repeats + 1)).multiply_adds - f0
    head = profiler(replace(baseline, head_repeats=baseline.head_repeats + 1)).multiply_adds - f0
    every = rules.head_depth_every

    def predict(k: int) -> int:
        return f0 + k * cell + (k // every) * head

    check = every + 1
    actual = profiler(single_dimension(baseline, "depth", check, rules=rules)).multiply_adds
    return predict if actual == predict(check) and cell + head > 0 else None


def match_dimension(
    baseline: ModelConfig,
    dimension: str,
    target: int,
    profiler: Profiler,
    *,
    rules: CompoundRules,
    resolution_step: int,
) -> ModelConfig:
    """``baseline`` scaled along ``dimension`` to the multiply-adds closest to ``target``."""

    def build(k: int) -> ModelConfig:
        return single_dimension(baseline, dimension, k, rules=rules, resolution_step=resolution_step)

    def cost(k: int) -> int:
        return profiler(build(k)).multiply_adds

    if dimension == "depth":
        predicted = affine_depth_cost(baseline, profiler, rules)
        if predicted is not None:
            return build(match_knob(predicted, target))
    return build(match_knob(cost, target))


def plan_study(settings: StudySettings, profiler: Profiler | None = None) -> list[StudyRow]:
    """The baseline, the compound points and their FLOP-matched single-dimension rows, with
    parameters and multiply-adds (meta device); no latency or AP yet."""
    profiler = profiler or Profiler()
    rules = study_rules(settings)
    baseline = baseline_config(settings)
    base_profile = profiler(baseline)
    rows = [StudyRow(BASELINE, 0.0, "phi=0", baseline, base_profile.params,
                     base_profile.multiply_adds, base_profile.multiply_adds)]
    for phi in settings.phis:
        config = compound_point(settings, baseline, phi)
        profile = profiler(config)
        target = profile.multiply_adds
        rows.append(StudyRow(COMPOUND, phi, f"phi={phi:g}", config, profile.params, target, target))
        for dimension in settings.dimensions:
            matched = match_dimension(
                baseline, dimension, target, profiler, rules=rules,
                resolution_step=settings.resolution_search_step,
            )
            prof = profiler(matched)
            row = StudyRow(dimension, phi, _knob_text(dimension, matched), matched,
                           prof.params, prof.multiply_adds, target)
            if abs(row.flops_ratio - 1) > settings.tolerance:
                log.warning("%s at phi=%g: closest FLOPs are %.1f%% off the compound point",
                            dimension, phi, 100 * (row.flops_ratio - 1))
            rows.append(row)
    return rows


# ---- measurements --------------------------------------------------------------------------------


def measure_latencies(
    configs: Sequence[ModelConfig], *, batch: int = 1, repeats: int = 3, warmup: int = 1,
    threads: int = 2, seed: int = 0,
) -> list[list[float]]:
    """Wall times in milliseconds of ``repeats`` CPU forward passes of each configuration
    (random weights, eval mode, ``Tensor[batch, 3, H, W]`` input) after ``warmup`` passes.

    The models run in alternation, one pass of each per round, so that load from other
    processes on a shared machine falls on all of them alike.
    """
    import torch

    from ..devices import time_round_robin
    from ..modeling.model import EfficientDet

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(seed)
        models = [EfficientDet(config).eval() for config in configs]
        inputs = [torch.randn(batch, 3, *config.image_size) for config in configs]
        calls = [functools.partial(model, x) for model, x in zip(models, inputs, strict=True)]
        with torch.inference_mode():
            seconds = time_round_robin(
                calls, repeats=repeats, warmup=warmup, device=inputs[0].device if inputs else None
            )
        return [[t * 1000 for t in times] for times in seconds]
    finally:
        torch.set_num_threads(previous)


def run_study(
    settings: StudySettings, out_dir: str | Path, *, command: str | None = None,
    report: Callable[[str], None] = print,
) -> StudyResult:
    """Plan, measure (and train), then write Markdown, CSV and PNG into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = None
    if settings.train_steps:
        from ..data import load_dataset
        from .short_train import demo_data

        data = settings.data or demo_data(
            out / "demo_data", seed=settings.seed, num_train=settings.demo_train,
            num_val=settings.demo_val,
        )
        settings = replace(settings, num_classes=load_dataset(data, "train").num_classes)
    rows = plan_study(settings)
    report(f"{len(rows)} configurations planned")
    notes = []
    if settings.latency_repeats:
        report(f"timing {len(rows)} configurations, {settings.latency_repeats} rounds")
        load_before = _load_average()
        timings = measure_latencies(
            [row.config for row in rows], batch=settings.latency_batch,
            repeats=settings.latency_repeats, warmup=settings.latency_warmup,
            threads=settings.threads, seed=settings.seed,
        )
        for row, times in zip(rows, timings, strict=True):
            row.latency_ms, row.latency_min_ms = statistics.median(times), min(times)
        if load_before is not None:
            notes.append(
                f"CPU load average (1 min) before / after timing: {load_before:.1f} / "
                f"{_load_average():.1f} on {os.cpu_count()} cores; a load above the thread "
                "count means other processes shared the cores and latencies are inflated."
            )
    seeds = range(settings.seed, settings.seed + settings.seeds)
    train_fn = None
    if data is not None:
        from .short_train import short_train

        train_fn = functools.partial(
            short_train, data=data, batch_size=settings.train_batch_size,
            pretrained_backbone=settings.pretrained_backbone, overrides=settings.train_overrides,
        )
    for row in rows:
        if train_fn is not None:
            row.accuracy = train_repeats(
                train_fn, row.config, settings.train_steps, out / "runs" / row.config.name, seeds,
                training=bound_settings(train_fn),
            )
            row.ap = row.accuracy.mean("AP")
        latency = "" if row.latency_ms is None else f", {row.latency_ms:.0f} ms"
        ap = "" if row.accuracy is None else f", AP {row.accuracy.text('AP')}"
        report(f"{row.method:>10s} phi={row.phi:g} {row.knob}: {row.multiply_adds / 1e9:.2f} GMACs{latency}{ap}")
    result = StudyResult(rows)
    result.files = write_outputs(rows, settings, out, command=command, notes=notes)
    return result


# ---- outputs -------------------------------------------------------------------------------------


def _cell(value: Any) -> str:
    return "" if value is None else str(value)


def markdown_table(rows: Sequence[StudyRow]) -> str:
    """The study's rows as a Markdown table."""
    keys = list(rows[0].as_dict())
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(_cell(v) for v in row.as_dict().values()) + " |" for row in rows]
    return "\n".join(lines)


def _load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):  # not on every platform
        return None


def _overrides_text(settings: StudySettings) -> str:
    return "".join(f", `{o}`" for o in settings.train_overrides)


def write_outputs(
    rows: Sequence[StudyRow], settings: StudySettings, out_dir: Path, *,
    command: str | None = None, notes: Sequence[str] = (),
) -> dict[str, Path]:
    """Write ``scaling_study.md``, ``.csv`` and ``.png``; returns their paths by suffix."""
    import torch

    paths = {suffix: out_dir / f"scaling_study.{suffix}" for suffix in ("md", "csv", "png")}
    with open(paths["csv"], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0].as_dict()))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _cell(v) for k, v in row.as_dict().items()})
    plot_study(rows, paths["png"])
    base = rows[0].config
    flagged = [r for r in rows if abs(r.flops_ratio - 1) > settings.tolerance]
    text = [
        "# Scaling study: compound scaling against single-dimension scaling",
        "",
        f"Baseline: `{base.name}` ({base.backbone}, W={base.fpn_channels}, D={base.fpn_repeats}, "
        f"head={base.head_repeats}, {base.image_size[0]}x{base.image_size[1]}, neck {base.neck}, "
        f"{base.num_classes} classes). Compound points phi = {', '.join(f'{p:g}' for p in settings.phis)}.",
        "",
        "Single-dimension rows scale one knob from the baseline (width: W in steps of 8; depth: "
        "BiFPN depth with head depth +1 per 3; resolution: input side in steps of "
        f"{settings.resolution_search_step} px) to the multiply-adds closest to the compound "
        "point of the same phi; `flops_ratio` is theirs over the compound point's.",
        "",
        f"Latency: median (and minimum) of {settings.latency_repeats} CPU forward passes at batch "
        f"{settings.latency_batch} after {settings.latency_warmup} warm-up, the models run in "
        f"alternation, {settings.threads} threads, random weights; "
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}.",
    ]
    if settings.train_steps:
        text += ["", f"AP: COCO AP on the validation split after {settings.train_steps} training "
                 f"steps at batch {settings.train_batch_size} with the demo's recipe "
                 f"(`efficientdet.train.recipes.DEMO_RECIPE`{_overrides_text(settings)}; "
                 f"pretrained backbone: {settings.pretrained_backbone}); "
                 f"data `{settings.data or 'demo digit scenes'}`; {settings.seeds} seed(s) per "
                 "configuration: `ap` is the mean, `ap_std` the sample standard deviation. "
                 "Finished trainings are recorded under `runs/`, so the same command resumes."]
    text += [line for note in notes for line in ("", note)]
    if command:
        text += ["", "Command:", "", "```", command, "```"]
    text += ["", markdown_table(rows), "", f"![chart]({paths['png'].name})"]
    if flagged:
        text += ["", "FLOP matches outside the tolerance of "
                 f"{100 * settings.tolerance:.0f}%: "
                 + ", ".join(f"{r.method} phi={r.phi:g} ({r.flops_ratio:.3f})" for r in flagged)]
    paths["md"].write_text("\n".join(text) + "\n")
    return paths


def plot_study(rows: Sequence[StudyRow], path: Path) -> None:
    """Parameters, latency and (when measured) AP against multiply-adds, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: list[tuple[str, Callable[[StudyRow], float | None]]] = [
        ("parameters (M)", lambda r: r.params / 1e6),
        ("CPU latency (ms)", lambda r: r.latency_ms),
    ]
    if any(r.ap is not None for r in rows):
        panels.append(("validation AP", lambda r: r.ap))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    baseline = [r for r in rows if r.method == BASELINE]
    methods = [COMPOUND, *[m for m in DIMENSIONS if any(r.method == m for r in rows)]]
    for ax, (label, value) in zip(axes[0], panels, strict=True):
        for method in methods:
            series = [(r.multiply_adds / 1e9, value(r)) for r in [*baseline, *[r for r in rows if r.method == method]]]
            points = [(x, y) for x, y in series if y is not None]
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, marker="o", label=method)
                if label == "validation AP":  # the seeds' spread
                    members = [r for r in [*baseline, *[r for r in rows if r.method == method]] if r.accuracy]
                    ax.errorbar([r.multiply_adds / 1e9 for r in members],
                                [r.accuracy.mean("AP") for r in members if r.accuracy],
                                yerr=[r.accuracy.std("AP") for r in members if r.accuracy],
                                fmt="none", capsize=3, color=ax.lines[-1].get_color())
        ax.set_xlabel("multiply-adds (G)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0][0].legend()
    fig.suptitle(f"Scaling from {rows[0].config.name}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---- command line: `efficientdet scaling-study` --------------------------------------------------
