"""Repeated short trainings of one configuration, recorded so that a study can be resumed.

A study (the neck ablation, the scaling study) trains every configuration with several seeds.
Each finished training leaves ``result.json`` in its run folder (``<run_dir>/seed-<k>/``);
running the study again reads those records instead of training again, so a study stopped
after 5 of 9 necks goes on with the remaining ones. A record is reused only when it was made
with the same number of steps, the same model configuration and the same training settings
(data, batch, recipe overrides: what the study passes as ``training``). Records written before
the training settings were part of the record carry none; they are reused with a warning.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import ModelConfig, model_config_to_dict
from ..modeling.checkpoint import atomic_write

log = logging.getLogger(__name__)

#: The COCO metrics a study reports for each configuration.
ACCURACY_KEYS = ("AP", "AP50", "AP_small", "AP_medium", "AP_large")
RESULT_FILE = "result.json"

# (config, steps, run_dir, seed) -> a result with ``metrics`` and ``pretrained_backbone``,
# e.g. efficientdet.studies.short_train.short_train with the data bound.
SeededTrainFn = Callable[..., Any]


@dataclass
class Repeats:
    """The validation metrics of one configuration over several seeds.

    Attributes:
        runs: one ``{metric: value}`` per seed, in seed order.
        seeds: the seeds.
        pretrained_backbone: whether the trainings started from ImageNet weights.
        reused: how many of the runs were read back from an earlier run of the study.
    """

    runs: list[dict[str, float]] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    pretrained_backbone: bool | None = None
    reused: int = 0

    def values(self, key: str) -> list[float]:
        """The metric over the seeds; COCO's -1 (no boxes of that size) is left out."""
        return [run[key] for run in self.runs if key in run and run[key] >= 0]

    def mean(self, key: str = "AP") -> float:
        values = self.values(key)
        return statistics.fmean(values) if values else math.nan

    def std(self, key: str = "AP") -> float:
        """Sample standard deviation over the seeds (0 for a single run)."""
        values = self.values(key)
        return statistics.stdev(values) if len(values) > 1 else 0.0

    def spread(self, key: str = "AP") -> tuple[float, float]:
        values = self.values(key)
        return (min(values), max(values)) if values else (math.nan, math.nan)

    def text(self, key: str = "AP") -> str:
        """``mean ± std`` with three decimals, or the single value."""
        if not self.values(key):
            return ""
        if len(self.values(key)) == 1:
            return f"{self.mean(key):.3f}"
        return f"{self.mean(key):.3f} ± {self.std(key):.3f}"


def bound_settings(train_fn: functools.partial[Any]) -> dict[str, Any]:
    """The keyword settings bound into ``train_fn`` as JSON values (paths as text, tuples as
    lists): the ``training`` of :func:`train_repeats` for a study's partial training."""
    def plain(value: Any) -> Any:
        if isinstance(value, Path):
            return str(value)
        return list(value) if isinstance(value, tuple) else value

    return {key: plain(value) for key, value in train_fn.keywords.items()}


def _signature(
    config: ModelConfig, steps: int, seed: int, training: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    signature = {"steps": steps, "seed": seed, "model": model_config_to_dict(config)}
    if training is not None:
        signature["training"] = dict(training)
    return signature


def _read_record(path: Path, signature: dict[str, Any]) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        log.warning("%s: unreadable; training again", path)
        return None
    # JSON turns the configuration's tuples into lists: compare through one round trip.
    wanted = json.loads(json.dumps(signature))
    recorded = record.get("signature")
    if isinstance(recorded, dict) and "training" in wanted and "training" not in recorded:
        # An older record: the model and steps are all it can be checked against.
        wanted.pop("training")
        if recorded == wanted:
            log.warning(
                "%s: recorded without its training settings; reused (delete it to train again)", path
            )
            return record
    if recorded != wanted:
        log.info("%s: made with other settings; training again", path)
        return None
    return record


def train_repeats(
    train_fn: SeededTrainFn,
    config: ModelConfig,
    steps: int,
    run_dir: Path,
    seeds: Sequence[int],
    *,
    training: Mapping[str, Any] | None = None,
    say: Callable[[str], None] = lambda _: None,
) -> Repeats:
    """Train ``config`` once per seed with ``train_fn(config, steps, run_dir / f"seed-{k}",
    seed=k)``, reusing the records of trainings already done; return their metrics.

    ``training``: JSON-able settings bound into ``train_fn`` (data, batch, overrides); a record
    made with other settings is not reused.
    """
    out = Repeats(seeds=list(seeds))
    for seed in seeds:
        seed_dir = Path(run_dir) / f"seed-{seed}"
        signature = _signature(config, steps, seed, training)
        record = _read_record(seed_dir / RESULT_FILE, signature)
        reused = record is not None
        if record is None:
            result = train_fn(config, steps, seed_dir, seed=seed)
            record = {
                "signature": signature,
                "metrics": {k: float(v) for k, v in result.metrics.items()},
                "pretrained_backbone": bool(result.pretrained_backbone),
            }
            text = json.dumps(record, indent=1)
            atomic_write(seed_dir / RESULT_FILE, lambda tmp, text=text: Path(tmp).write_text(text))
        out.reused += reused
        out.runs.append(dict(record["metrics"]))
        out.pretrained_backbone = bool(record["pretrained_backbone"])
        ap = float(record["metrics"].get("AP", math.nan))
        say(f"    seed {seed}: AP {ap:.4f}" + (" (recorded by an earlier run)" if reused else ""))
    return out
