"""Feature-network ablation: the paper's Table 5 (params, FLOPs of each neck) and Table 6
speed column (fusion methods), measured on this code, plus CPU latency.

The same detector (backbone, P6/P7 generation, class/box heads) is built with each neck.
Sizes and costs are counted on the meta device (no memory, no time); latency is measured on
the CPU with real weights. The results are printed and written as Markdown, CSV and a PNG
chart. ``efficientdet ablate`` (:mod:`efficientdet.cli.ablate`) is a thin wrapper around
:func:`run_ablation`.

Repeats: the paper does not print how often each network is repeated in its Table 5. Its
"repeated top-down FPN" and "repeated FPN + PANet" rows have the same parameters and FLOPs
(1.00x), which a top-down cell (one node per level) only matches when repeated twice as often
as a PANet cell (two nodes per level); so FPN gets ``2 * repeats`` cells and every other
neck ``repeats`` (:data:`REPEAT_FACTOR`). At the B3 size ``repeats`` is EfficientDet-D3's
BiFPN depth, 6.
"""

from __future__ import annotations

import csv
import functools
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode

from ..config import ModelConfig
from ..devices import time_round_robin
from ..modeling.model import EfficientDet
from ..modeling.necks import NECKS
from ..modeling.profile import count_multiply_adds, count_parameters
from ..modeling.registry import get_config
from .repeats import ACCURACY_KEYS, Repeats, train_repeats

if TYPE_CHECKING:
    from .short_train import ShortTrainResult

ABLATION_NECKS = ("fpn", "pafpn", "nasfpn", "fcfpn", "bifpn", "bfp", "mlfpn", "asff", "efm")
FUSION_COMPARISON = ("fast", "softmax", "sum")  # BiFPN rows (the paper's Table 6)
REFERENCE_NECK = "fpn"  # Table 5's 1.00x row
REPEAT_FACTOR = {"fpn": 2}  # cells per PANet-sized cell; see the module docstring
DEFAULT_FUSION = "fast"

# Trains a detector configuration for some steps in a run folder, returns its validation AP
# (e.g. efficientdet.studies.short_train.short_train with the data bound).
TrainFn = Callable[..., "ShortTrainResult"]  # (config, steps, run_dir, seed=k)


@dataclass(frozen=True)
class AblationSetting:
    """A detector size: registry ``model`` (backbone, heads) with the neck's ``width``, base
    ``repeats`` and the input ``image_size`` ``(H, W)``."""

    name: str
    model: str
    width: int
    repeats: int
    image_size: tuple[int, int]

    def describe(self) -> str:
        config = get_config(self.model)
        h, w = self.image_size
        return (
            f"{self.name}: {config.backbone} backbone, width {self.width}, repeats {self.repeats}, "
            f"{h}x{w} input, heads of {self.model} ({config.head_repeats} repeats)"
        )


B3_SETTING = AblationSetting("B3", "tf_efficientdet_d3", 160, 6, (896, 896))
D0_SETTING = AblationSetting("D0", "tf_efficientdet_d0", 64, 3, (512, 512))
LITE0_SETTING = AblationSetting("Lite0", "tf_efficientdet_lite0", 64, 3, (320, 320))
# What ``efficientdet ablate`` measures: params/FLOPs at both sizes, latency at D0, and with
# --train-steps the AP at Lite0 (the one backbone with ImageNet weights on disk; the demo's).
DEFAULT_COST_SETTINGS: tuple[AblationSetting, ...] = (B3_SETTING, D0_SETTING)
DEFAULT_LATENCY_SETTING = D0_SETTING
DEFAULT_TRAIN_SETTING = LITE0_SETTING


@dataclass(frozen=True)
class PaperRow:
    """The paper's Table 5 row (COCO val AP, EfficientNet-B3, relative to repeated FPN)."""

    label: str
    params_ratio: float
    flops_ratio: float
    ap: float


def paper_row(neck: str, fusion: str) -> PaperRow | None:
    """The Table 5 row comparable to ``neck`` with ``fusion`` (docs/model-reference.md, section 6)."""
    if neck == "bifpn":
        if fusion == "sum":
            return PaperRow("BiFPN without weights", 0.88, 0.67, 43.94)
        if fusion == "fast":
            return PaperRow("BiFPN with weights", 0.88, 0.68, 44.39)
        return None
    return {
        "fpn": PaperRow("repeated top-down FPN", 1.00, 1.00, 42.29),
        "pafpn": PaperRow("repeated FPN + PANet", 1.00, 1.00, 44.08),
        "nasfpn": PaperRow("NAS-FPN", 0.71, 0.72, 43.16),
        "fcfpn": PaperRow("fully-connected FPN", 1.24, 1.21, 43.06),
    }.get(neck)


@dataclass(frozen=True)
class NeckCost:
    """Size and multiply-adds of the neck alone and of the whole detector at one setting."""

    repeats: int
    params: int
    macs: int
    model_params: int
    model_macs: int
    params_ratio: float = float("nan")  # relative to the reference neck at this setting
    macs_ratio: float = float("nan")


@dataclass
class AblationRow:
    """One neck (with one fusion method) across the settings."""

    neck: str
    fusion: str
    costs: dict[str, NeckCost] = field(default_factory=dict)  # by setting name
    latency: Latency | None = None  # CPU latency at the latency setting
    ap: float | None = None  # validation AP after the short training (mean over the seeds)
    pretrained_backbone: bool | None = None  # whether that training started from ImageNet weights
    accuracy: Repeats | None = None  # every seed's validation metrics
    train_cost: NeckCost | None = None  # the neck's size at the trained setting

    @property
    def label(self) -> str:
        return self.neck if self.fusion == DEFAULT_FUSION else f"{self.neck}/{self.fusion}"

    @property
    def paper(self) -> PaperRow | None:
        return paper_row(self.neck, self.fusion)

    def as_dict(self) -> dict[str, object]:
        """A flat record for the CSV (one column per setting and measure)."""
        out: dict[str, object] = {"neck": self.neck, "fusion": self.fusion}
        for name, cost in self.costs.items():
            out[f"{name}_repeats"] = cost.repeats
            out[f"{name}_neck_params"] = cost.params
            out[f"{name}_neck_macs"] = cost.macs
            out[f"{name}_params_ratio"] = round(cost.params_ratio, 4)
            out[f"{name}_macs_ratio"] = round(cost.macs_ratio, 4)
            out[f"{name}_model_params"] = cost.model_params
            out[f"{name}_model_macs"] = cost.model_macs
        paper = self.paper
        out["paper_params_ratio"] = paper.params_ratio if paper else ""
        out["paper_flops_ratio"] = paper.flops_ratio if paper else ""
        out["paper_ap"] = paper.ap if paper else ""
        lat = self.latency
        out["neck_ms"] = _round(lat.neck_ms if lat else None)
        out["model_ms"] = _round(lat.model_ms if lat else None)
        out["neck_best_ms"] = _round(lat.neck_best_ms if lat else None)
        out["model_best_ms"] = _round(lat.model_best_ms if lat else None)
        out["neck_cpu_ms"] = _round(lat.neck_cpu_ms if lat else None)
        out["model_cpu_ms"] = _round(lat.model_cpu_ms if lat else None)
        out["ap"] = _round(self.ap, 4)
        acc = self.accuracy
        out["seeds"] = len(acc.runs) if acc else ""
        for key in ACCURACY_KEYS:
            column = key.lower()
            if key != "AP":
                out[column] = _round(acc.mean(key) if acc and acc.values(key) else None, 4)
            out[f"{column}_std"] = _round(acc.std(key) if acc and acc.values(key) else None, 4)
        out["train_neck_macs"] = self.train_cost.macs if self.train_cost else ""
        pretrained = self.pretrained_backbone
        out["pretrained_backbone"] = "" if pretrained is None else str(pretrained).lower()
        return out


def _round(value: float | None, digits: int = 2) -> object:
    return "" if value is None else round(value, digits)


def ablation_config(setting: AblationSetting, neck: str, fusion: str = DEFAULT_FUSION) -> ModelConfig:
    """The detector configuration for ``neck`` at ``setting`` (FPN gets twice the repeats)."""
    if neck not in NECKS:
        raise ValueError(f"neck {neck!r} is not one of {', '.join(map(repr, sorted(NECKS)))}")
    return get_config(
        setting.model,
        neck=neck,
        fusion=fusion,
        fpn_channels=setting.width,
        fpn_repeats=setting.repeats * REPEAT_FACTOR.get(neck, 1),
        image_size=setting.image_size,
    )


def neck_inputs(model: EfficientDet, images: Tensor) -> list[Tensor]:
    """The neck's inputs for ``images: Tensor[B, 3, H, W]``: backbone taps plus extra levels,
    one ``Tensor[B, C_l, H_l, W_l]`` per level."""
    features = list(model.backbone(images))
    for extra in model.extra_levels:
        features.append(extra(features[-1]))
    return features


def measure_cost(config: ModelConfig) -> NeckCost:
    """Parameters and multiply-adds of ``config``'s neck alone and of the whole network,
    counted on the meta device (batch 1, ``config.image_size``)."""
    with torch.device("meta"):
        model = EfficientDet(config)
    model.eval()
    images = torch.zeros(1, 3, *config.image_size, device="meta")
    counter = FlopCounterMode(display=False)
    with torch.no_grad():
        features = neck_inputs(model, images)
        with counter:
            model.neck(features)
    return NeckCost(
        repeats=config.fpn_repeats,
        params=count_parameters(model.neck),
        macs=counter.get_total_flops() // 2,
        model_params=count_parameters(model),
        model_macs=count_multiply_adds(model, config.image_size),
    )


@dataclass(frozen=True)
class Latency:
    """Milliseconds of the neck alone and of the whole network.

    ``*_ms`` / ``*_best_ms``: median / fastest wall-clock run at the current thread count.
    ``*_cpu_ms``: median single-thread CPU time (``time.thread_time``), which other processes
    on a shared machine hardly change: the steadier number for comparing necks there.
    """

    neck_ms: float
    model_ms: float
    neck_best_ms: float
    model_best_ms: float
    neck_cpu_ms: float
    model_cpu_ms: float


_Bench = tuple[EfficientDet, Tensor, list[Tensor]]


def _round_robin(
    benches: Sequence[_Bench], runs: int, warmup: int, clock: Callable[[], float]
) -> tuple[list[list[float]], list[list[float]]]:
    """Milliseconds by ``clock`` of each bench's neck and whole network, runs interleaved."""
    calls: list[Callable[[], object]] = []
    for model, images, features in benches:
        calls += [functools.partial(model.neck, features), functools.partial(model, images)]
    device = benches[0][1].device if benches else None
    seconds = time_round_robin(calls, repeats=max(1, runs), warmup=warmup, device=device, clock=clock)
    ms = [[t * 1e3 for t in times] for times in seconds]
    return ms[0::2], ms[1::2]


def measure_latencies(configs: Sequence[ModelConfig], runs: int, warmup: int = 2) -> list[Latency]:
    """CPU latency of each configuration at batch 1, eval mode, ``torch.inference_mode()``:
    the neck alone on precomputed backbone features, and the whole network on an image.

    All models are built first and the timed runs go round-robin over them, so load from
    other processes on a shared machine falls on every configuration alike. A second pass
    measures single-thread CPU time (:class:`Latency`).
    """
    benches: list[_Bench] = []
    threads = torch.get_num_threads()
    with torch.inference_mode():
        for config in configs:
            torch.manual_seed(0)
            model = EfficientDet(config).eval()
            images = torch.randn(1, 3, *config.image_size)
            benches.append((model, images, neck_inputs(model, images)))
        neck_wall, model_wall = _round_robin(benches, runs, warmup, time.perf_counter)
        try:
            torch.set_num_threads(1)
            neck_cpu, model_cpu = _round_robin(benches, runs, 1, time.thread_time)
        finally:
            torch.set_num_threads(threads)
    median = statistics.median
    return [
        Latency(median(nw), median(mw), min(nw), min(mw), median(nc), median(mc))
        for nw, mw, nc, mc in zip(neck_wall, model_wall, neck_cpu, model_cpu, strict=True)
    ]


def _with_ratios(cost: NeckCost, reference: NeckCost) -> NeckCost:
    return NeckCost(
        cost.repeats, cost.params, cost.macs, cost.model_params, cost.model_macs,
        params_ratio=cost.params / reference.params, macs_ratio=cost.macs / reference.macs,
    )


def run_ablation(
    necks: Sequence[str] = ABLATION_NECKS,
    *,
    out_dir: Path,
    train_steps: int = 0,
    cost_settings: Sequence[AblationSetting] = DEFAULT_COST_SETTINGS,
    latency_setting: AblationSetting | None = DEFAULT_LATENCY_SETTING,
    latency_runs: int = 5,
    fusions: Sequence[str] = FUSION_COMPARISON,
    train_fn: TrainFn | None = None,
    train_setting: AblationSetting = DEFAULT_TRAIN_SETTING,
    seeds: int = 1,
    training: Mapping[str, Any] | None = None,
    command: str | None = None,
    echo: Callable[[str], None] | None = print,
) -> list[AblationRow]:
    """Build the detector with each neck and measure it; write ``ablation.md``,
    ``ablation.csv`` and ``ablation.png`` under ``out_dir``.

    Args:
        necks: names from :data:`efficientdet.modeling.necks.NECKS`.
        out_dir: where the outputs go (created).
        train_steps: ``> 0`` also trains each detector this many steps with ``train_fn`` and
            records the validation AP it returns.
        cost_settings: sizes at which params and FLOPs are counted (meta device); ratios are
            against :data:`REFERENCE_NECK` at the same setting.
        latency_setting: size at which CPU latency is measured (``None``: skip).
        latency_runs: timed runs per model (median and fastest reported; two warm-up runs).
        fusions: fusion methods compared on BiFPN (one row each; other necks use ``fast``).
        train_fn: ``(config, steps, run_dir, seed=k) -> ShortTrainResult`` (validation metrics,
            whether the backbone was pretrained), the same short training for every neck, e.g.
            :func:`efficientdet.studies.short_train.short_train` with the data bound; needed when
            ``train_steps > 0``.
        train_setting: the detector size that is trained.
        seeds: trainings per row (seeds ``0..seeds-1``); each finished one is recorded under
            ``out_dir/train/<row>/seed-<k>/``, and running again reuses the records, so a
            study that was stopped resumes where it was (:mod:`efficientdet.studies.repeats`).
        training: the settings bound into ``train_fn`` (data, batch, overrides), kept in each
            record so that a record made with other settings is not reused.
        command: the command line to record in the Markdown.
        echo: progress and the final table go here (``None``: silent).

    Returns one :class:`AblationRow` per neck and, for BiFPN, per fusion method.
    """
    say = echo or (lambda _: None)
    _check_request(necks, train_steps, train_fn)
    rows = _ablation_rows(necks, fusions)
    _count_costs(rows, cost_settings, say)
    if latency_setting is not None:
        _time_rows(rows, latency_setting, latency_runs, say)
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    if train_steps > 0:
        assert train_fn is not None
        _train_rows(rows, train_fn, train_steps, train_setting, seeds, out_dir, training, say)
    _write_outputs(
        rows, out_dir, cost_settings, latency_setting, latency_runs, command=command,
        train_steps=train_steps, train_setting=train_setting, say=say,
    )
    return rows


def _check_request(necks: Sequence[str], train_steps: int, train_fn: TrainFn | None) -> None:
    """Raise on unknown or no necks, negative steps, or steps without a training function."""
    unknown = [n for n in necks if n not in NECKS]
    if unknown:
        raise ValueError(f"unknown neck(s) {unknown}; choose from {sorted(NECKS)}")
    if not necks:
        raise ValueError("no necks to compare")
    if train_steps < 0:
        raise ValueError(f"train_steps must be >= 0, got {train_steps}")
    if train_steps > 0 and train_fn is None:
        raise RuntimeError(
            "training-based ablation needs efficientdet.train: give run_ablation a train_fn "
            "(config, steps, run_dir) -> AP, or run without --train-steps"
        )


def _ablation_rows(necks: Sequence[str], fusions: Sequence[str]) -> list[AblationRow]:
    """One row per neck (duplicates dropped), with BiFPN's other fusion methods after it."""
    rows = [AblationRow(neck, DEFAULT_FUSION) for neck in dict.fromkeys(necks)]
    if "bifpn" in necks:
        at = next(i for i, r in enumerate(rows) if r.neck == "bifpn")
        extra = [AblationRow("bifpn", f) for f in dict.fromkeys(fusions) if f != DEFAULT_FUSION]
        rows[at + 1 : at + 1] = extra
    return rows


def _count_costs(
    rows: Sequence[AblationRow], cost_settings: Sequence[AblationSetting], say: Callable[[str], None]
) -> None:
    """Fill each row's params and FLOPs per setting, with ratios to :data:`REFERENCE_NECK`."""
    for setting in cost_settings:
        say(f"counting params and FLOPs at {setting.describe()}")
        reference = measure_cost(ablation_config(setting, REFERENCE_NECK))
        for row in rows:
            is_reference = (row.neck, row.fusion) == (REFERENCE_NECK, DEFAULT_FUSION)
            cost = reference if is_reference else measure_cost(
                ablation_config(setting, row.neck, row.fusion)
            )
            row.costs[setting.name] = _with_ratios(cost, reference)


def _time_rows(
    rows: Sequence[AblationRow],
    latency_setting: AblationSetting,
    latency_runs: int,
    say: Callable[[str], None],
) -> None:
    """Fill each row's CPU latency at ``latency_setting`` (:func:`measure_latencies`)."""
    say(f"timing on the CPU ({torch.get_num_threads()} threads) at {latency_setting.describe()}")
    configs = [ablation_config(latency_setting, r.neck, r.fusion) for r in rows]
    for row, latency in zip(rows, measure_latencies(configs, latency_runs), strict=True):
        row.latency = latency
        say(
            f"  {row.label:14s} neck {latency.neck_ms:7.1f} ms (best {latency.neck_best_ms:.1f}, "
            f"1-thread CPU {latency.neck_cpu_ms:.1f})   network {latency.model_ms:7.1f} ms "
            f"(best {latency.model_best_ms:.1f}, 1-thread CPU {latency.model_cpu_ms:.1f})"
        )


def _train_rows(
    rows: Sequence[AblationRow],
    train_fn: TrainFn,
    train_steps: int,
    train_setting: AblationSetting,
    seeds: int,
    out_dir: Path,
    training: Mapping[str, Any] | None,
    say: Callable[[str], None],
) -> None:
    """Train each row's detector ``seeds`` times (recorded runs reused) and fill its AP."""
    say(f"training each {seeds} time(s) for {train_steps} steps at {train_setting.describe()}")
    for row in rows:
        config = ablation_config(train_setting, row.neck, row.fusion)
        say(f"  {row.label}")
        row.accuracy = train_repeats(
            train_fn, config, train_steps, out_dir / "train" / row.label.replace("/", "-"),
            range(seeds), training=training, say=say,
        )
        row.ap, row.pretrained_backbone = row.accuracy.mean("AP"), row.accuracy.pretrained_backbone
        row.train_cost = measure_cost(config)
        origin = "ImageNet backbone" if row.pretrained_backbone else "backbone from scratch"
        say(f"  {row.label:14s} AP {row.accuracy.text('AP')} ({origin})")


def _write_outputs(
    rows: Sequence[AblationRow],
    out_dir: Path,
    cost_settings: Sequence[AblationSetting],
    latency_setting: AblationSetting | None,
    latency_runs: int,
    *,
    command: str | None,
    train_steps: int,
    train_setting: AblationSetting,
    say: Callable[[str], None],
) -> None:
    """Write ``ablation.md``, ``.csv``, ``.png`` (and ``ablation_ap.png`` when trained)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown = format_markdown(
        rows, cost_settings, latency_setting, latency_runs, command=command,
        train_steps=train_steps, train_setting=train_setting,
    )
    (out_dir / "ablation.md").write_text(markdown)
    write_csv(rows, out_dir / "ablation.csv")
    plot_ablation(rows, out_dir / "ablation.png", cost_settings, latency_setting)
    if any(row.accuracy is not None for row in rows):
        plot_accuracy(rows, out_dir / "ablation_ap.png", train_setting)
    say(markdown)
    say(f"wrote {out_dir / 'ablation.md'}, {out_dir / 'ablation.csv'}, {out_dir / 'ablation.png'}")


def write_csv(rows: Sequence[AblationRow], path: Path) -> None:
    """One line per row, columns from :meth:`AblationRow.as_dict`."""
    records = [row.as_dict() for row in rows]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)


def _fmt_ratio(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}x"


def format_markdown(
    rows: Sequence[AblationRow],
    cost_settings: Sequence[AblationSetting],
    latency_setting: AblationSetting | None,
    latency_runs: int,
    *,
    command: str | None = None,
    train_steps: int = 0,
    train_setting: AblationSetting | None = None,
) -> str:
    """The results as Markdown: Table 5 columns per setting next to the paper's, then latency,
    then the AP after the short training of ``train_steps`` at ``train_setting`` (when run)."""
    timed = latency_setting is not None and all(row.latency is not None for row in rows)
    lines = _intro_lines(cost_settings, command)
    lines += _neck_cost_table(rows, cost_settings)
    lines += _network_section(rows, cost_settings, latency_setting if timed else None, latency_runs)
    lines += _fusion_speed_lines(rows) if timed else []
    lines += _accuracy_section(rows, train_steps, train_setting)
    return "\n".join(lines)


def _table(header: Sequence[str], body: Sequence[Sequence[str]]) -> list[str]:
    """A Markdown table's lines: the header, its rule, one line per row of cells."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(cells) + " |" for cells in body]


def _intro_lines(cost_settings: Sequence[AblationSetting], command: str | None) -> list[str]:
    """The title, the command, what was compared and the settings, one line each."""
    lines = ["# Feature-network ablation", ""]
    if command:
        lines += [f"Command: `{command}`", ""]
    lines += [
        "Same backbone, P6/P7 generation and class/box heads around each neck. Params and "
        "FLOPs (multiply-adds, batch 1) are of the neck alone, counted on the meta device; "
        f"ratios are against the repeated top-down FPN ({REFERENCE_NECK}) at the same size. "
        "FPN runs twice the repeats of the others (its Table 5 row costs the same as "
        "FPN + PANet's). Necks other than BiFPN use fast-normalised fusion where they fuse.",
        "",
    ]
    lines += [f"- {s.describe()}" for s in cost_settings]
    lines.append("")
    return lines


def _neck_cost_table(
    rows: Sequence[AblationRow], cost_settings: Sequence[AblationSetting]
) -> list[str]:
    """Table 5: the neck's repeats, params and FLOPs per setting beside the paper's ratios."""
    header = ["neck"]
    for s in cost_settings:
        header += [
            f"{s.name} repeats", f"{s.name} params", f"{s.name} GMACs",
            f"{s.name} params rel.", f"{s.name} FLOPs rel.",
        ]
    header += ["paper params rel.", "paper FLOPs rel.", "paper AP"]
    body = []
    for row in rows:
        cells = [row.label]
        for s in cost_settings:
            c = row.costs[s.name]
            cells += [
                str(c.repeats), f"{c.params / 1e6:#.3g}M", f"{c.macs / 1e9:#.3g}",
                _fmt_ratio(c.params_ratio), _fmt_ratio(c.macs_ratio),
            ]
        paper = row.paper
        cells += (
            [_fmt_ratio(paper.params_ratio), _fmt_ratio(paper.flops_ratio), f"{paper.ap:.2f}"]
            if paper
            else ["", "", ""]
        )
        body.append(cells)
    return [*_table(header, body), ""]


def _network_section(
    rows: Sequence[AblationRow],
    cost_settings: Sequence[AblationSetting],
    latency_setting: AblationSetting | None,
    latency_runs: int,
) -> list[str]:
    """The whole detector's params and GMACs per setting, and the latencies when every row
    was timed at ``latency_setting`` (``None``: not timed)."""
    timed = latency_setting is not None
    lines = ["## Whole detector" + (" and CPU latency" if timed else ""), ""]
    if latency_setting is not None:
        lines += [
            f"Latency at {latency_setting.describe()}; batch 1, eval mode, "
            f"`torch.inference_mode()`: wall-clock median and fastest of {latency_runs} runs "
            f"with {torch.get_num_threads()} threads after two warm-up runs, taken round-robin "
            "over the models; then the median single-thread CPU time (`time.thread_time`, "
            "1 thread), which load from other processes hardly changes. The neck alone runs "
            "on precomputed backbone features.",
            "",
        ]
    header = ["neck"]
    for s in cost_settings:
        header += [f"{s.name} network params", f"{s.name} network GMACs"]
    if timed:
        header += [
            "neck ms", "neck best ms", "neck 1-thread CPU ms",
            "network ms", "network best ms", "network 1-thread CPU ms",
        ]
    body = []
    for row in rows:
        cells = [row.label]
        for s in cost_settings:
            c = row.costs[s.name]
            cells += [f"{c.model_params / 1e6:.2f}M", f"{c.model_macs / 1e9:.2f}"]
        if timed and row.latency is not None:
            lat = row.latency
            cells += [
                f"{lat.neck_ms:.1f}", f"{lat.neck_best_ms:.1f}", f"{lat.neck_cpu_ms:.1f}",
                f"{lat.model_ms:.1f}", f"{lat.model_best_ms:.1f}", f"{lat.model_cpu_ms:.1f}",
            ]
        body.append(cells)
    return [*lines, *_table(header, body), ""]


def _fusion_speed_lines(rows: Sequence[AblationRow]) -> list[str]:
    """BiFPN's fusion methods timed against fast fusion (Table 6's speed column), when
    more than one was timed."""
    bifpn = {r.fusion: r.latency for r in rows if r.neck == "bifpn" and r.latency is not None}
    fast = bifpn.get(DEFAULT_FUSION)
    if len(bifpn) <= 1 or fast is None:
        return []
    return [
        "BiFPN fusion, neck alone (the paper's Table 6 speed column: fast fusion 1.26x-1.31x "
        "faster than softmax on GPU): "
        + "; ".join(
            f"{f}: median {lat.neck_ms:.1f} ms ({lat.neck_ms / fast.neck_ms:.2f}x fast), "
            f"best {lat.neck_best_ms:.1f} ms ({lat.neck_best_ms / fast.neck_best_ms:.2f}x), "
            f"1-thread CPU {lat.neck_cpu_ms:.1f} ms ({lat.neck_cpu_ms / fast.neck_cpu_ms:.2f}x)"
            for f, lat in bifpn.items()
        ),
        "",
    ]


def _accuracy_section(
    rows: Sequence[AblationRow], train_steps: int, train_setting: AblationSetting | None
) -> list[str]:
    """The validation AP of each trained row over its seeds (nothing when none was trained)."""
    trained = [row for row in rows if row.accuracy is not None]
    if not trained:
        return []
    runs = max(len(row.accuracy.runs) for row in trained if row.accuracy is not None)
    lines = ["## Validation AP after the same short training", ""]
    where = f" at {train_setting.describe()}" if train_setting is not None else ""
    steps = f"{train_steps} steps" if train_steps else "the same steps"
    lines += [
        f"{steps}{where}, with the demo's recipe (`efficientdet.train.recipes.DEMO_RECIPE`), "
        f"{runs} seed(s) each: mean ± sample standard deviation over the seeds of COCO "
        "AP[.5:.95], AP50 and AP by object size on the validation split (chart: "
        "`ablation_ap.png`, AP against the neck's multiply-adds). The paper's AP is COCO val "
        "after full training, for the ordering only.",
        "",
        "| neck | AP | AP50 | AP small | AP medium | AP large | neck GMACs | ImageNet backbone | paper AP |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in trained:
        assert row.accuracy is not None
        pretrained = {True: "yes", False: "no (from scratch)", None: ""}[row.pretrained_backbone]
        paper_ap = f"{row.paper.ap:.2f}" if row.paper else ""
        macs = f"{row.train_cost.macs / 1e9:.3f}" if row.train_cost else ""
        cells = [row.accuracy.text(key) for key in ACCURACY_KEYS]
        lines.append(f"| {row.label} | {' | '.join(cells)} | {macs} | {pretrained} | {paper_ap} |")
    lines.append("")
    return lines


def plot_ablation(
    rows: Sequence[AblationRow],
    path: Path,
    cost_settings: Sequence[AblationSetting],
    latency_setting: AblationSetting | None,
) -> None:
    """A PNG: relative params and FLOPs at the first setting (paper's as markers), and the
    single-thread CPU time of the neck and of the whole network when measured."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = 1 + (latency_setting is not None)
    fig = Figure(figsize=(6 * panels, 4.5))
    FigureCanvasAgg(fig)
    labels = [row.label for row in rows]
    x = list(range(len(rows)))
    if cost_settings:
        first = cost_settings[0].name
        ax = fig.add_subplot(1, panels, 1)
        params = [row.costs[first].params_ratio for row in rows]
        macs = [row.costs[first].macs_ratio for row in rows]
        ax.bar([i - 0.2 for i in x], params, width=0.4, label="params")
        ax.bar([i + 0.2 for i in x], macs, width=0.4, label="FLOPs")
        paper = [(i, row.paper) for i, row in zip(x, rows, strict=True) if row.paper]
        if paper:
            ax.scatter([i - 0.2 for i, _ in paper], [p.params_ratio for _, p in paper],
                       marker="_", s=200, color="black", label="paper params")
            ax.scatter([i + 0.2 for i, _ in paper], [p.flops_ratio for _, p in paper],
                       marker="x", color="black", label="paper FLOPs")
        ax.axhline(1.0, color="grey", linewidth=0.8)
        ax.set_xticks(x)
        ax.set_xticklabels(labels, rotation=45, ha="right")
        ax.set_ylabel(f"relative to {REFERENCE_NECK}")
        ax.set_title(f"neck size and cost at {first}")
        ax.legend(fontsize="small")
    if latency_setting is not None:
        ax = fig.add_subplot(1, panels, panels)
        neck_ms = [row.latency.neck_cpu_ms if row.latency else 0.0 for row in rows]
        model_ms = [row.latency.model_cpu_ms if row.latency else 0.0 for row in rows]
        ax.bar([i - 0.2 for i in x], neck_ms, width=0.4, label="neck")
        ax.bar([i + 0.2 for i in x], model_ms, width=0.4, label="whole network")
        ax.set_xticks(x)
        ax.set_xticklabels(labels, rotation=45, ha="right")
        ax.set_ylabel("single-thread CPU ms (median, batch 1)")
        ax.set_title(f"CPU time at {latency_setting.name}")
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def plot_accuracy(
    rows: Sequence[AblationRow], path: Path, train_setting: AblationSetting | None = None
) -> None:
    """A PNG in the style of the paper's Figure 1: validation AP (mean, with the seeds'
    standard deviation as error bars) against the neck's multiply-adds at the trained size."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for row in rows:
        if row.accuracy is None or row.train_cost is None:
            continue
        x = row.train_cost.macs / 1e9
        ax.errorbar([x], [row.accuracy.mean("AP")], yerr=[row.accuracy.std("AP")], fmt="o",
                    capsize=3, label=row.label)
        ax.annotate(row.label, (x, row.accuracy.mean("AP")), textcoords="offset points",
                    xytext=(4, 4), fontsize="small")
    ax.set_xlabel("neck multiply-adds (G)" + (f" at {train_setting.name}" if train_setting else ""))
    ax.set_ylabel("validation AP[.5:.95] (mean ± std over seeds)")
    ax.set_title("accuracy against cost of each neck")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


# ---- command line ----------------------------------------------------------------------------


__all__ = [
    "ABLATION_NECKS",
    "B3_SETTING",
    "D0_SETTING",
    "Latency",
    "DEFAULT_COST_SETTINGS",
    "DEFAULT_LATENCY_SETTING",
    "DEFAULT_TRAIN_SETTING",
    "LITE0_SETTING",
    "AblationRow",
    "AblationSetting",
    "NeckCost",
    "PaperRow",
    "TrainFn",
    "ablation_config",
    "measure_cost",
    "measure_latencies",
    "neck_inputs",
    "paper_row",
    "run_ablation",
]

