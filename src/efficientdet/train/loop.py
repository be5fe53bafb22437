"""The training loop: data, model, optimizer, EMA, checkpoints, resume, evaluation, logging."""

from __future__ import annotations

import contextlib
import io
import logging
import math
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..data import (
    DetectionData,
    DetectionDataset,
    EpochSampler,
    RunSampler,
    build_dataloader,
    build_transform,
    load_dataset,
)
from ..detection.detector import BackboneFeatures, Detector
from ..devices import resolve_device
from ..inference.evaluate import (
    EvalResult,
    format_metrics,
    predict_dataset,
    score_detections,
    write_eval_outputs,
)
from ..modeling.backbone import split_matches, tapped_blocks
from ..modeling.checkpoint import atomic_write, load_checkpoint, save_checkpoint
from ..modeling.model import EfficientDet
from ..modeling.optimize import optimize_for_inference
from ..modeling.pretrained import fetch_weights
from ..modeling.scaling import config_for_training
from .budget import TimeBudget
from .config import TrainConfig, load_config, save_config
from .distributed import DistContext, convert_sync_batchnorm
from .ema import ModelEMA
from .feature_cache import FeatureCache, build_feature_cache, cache_bytes, frozen_part_bytes
from .logger import MetricsLogger, plot_curves
from .mlflow_logger import MlflowLogger
from .parameters import (
    backbone_stages,
    first_trainable_block,
    freeze_modules,
    parameter_groups,
    set_frozen_bn_eval,
)
from .rng import rng_state, seed_everything, set_rng_state
from .schedule import learning_rate

log = logging.getLogger(__name__)

STATE_FILE = "state.pt"
LAST_WEIGHTS = "last.safetensors"
BEST_WEIGHTS = "best.safetensors"
CONFIG_FILE = "config.yaml"
STATE_VERSION = 2  # 2: one RNG state per process (a list), each GPU's generator with its process


class TrainingError(RuntimeError):
    """A run that cannot start or cannot go on; the message says what to change."""


@dataclass
class TrainResult:
    run_dir: Path
    status: str  # "finished" or "interrupted"
    step: int
    total_steps: int
    losses: list[float] = field(default_factory=list)  # this process's per-step losses
    nonfinite_steps: int = 0  # steps skipped for a non-finite loss or gradient
    overflow_steps: int = 0  # fp16 steps the gradient scaler skipped (its scale was too high)
    metrics: dict[str, float] | None = None
    seconds: float = 0.0
    epochs: float = 0.0


def steps_per_epoch(num_samples: int, batch_size: int, world_size: int) -> int:
    return num_samples // (batch_size * world_size)


def _channels_last(images: torch.Tensor | BackboneFeatures) -> torch.Tensor | BackboneFeatures:
    nhwc = torch.channels_last
    if isinstance(images, BackboneFeatures):
        boundary = None if images.boundary is None else images.boundary.contiguous(memory_format=nhwc)
        return BackboneFeatures(
            [m.contiguous(memory_format=nhwc) for m in images.maps], images.image_size, boundary,
            images.first_trainable,
        )
    return images.contiguous(memory_format=nhwc)


def _remove_partial_writes(run_dir: Path) -> None:
    """Delete the temporary files of saves cut short by a kill (``atomic_write`` leftovers)."""
    for name in (STATE_FILE, LAST_WEIGHTS, BEST_WEIGHTS, CONFIG_FILE):
        for leftover in run_dir.glob(f".{name}.*.tmp"):
            log.warning("removing %s, left by a save that was cut short", leftover)
            leftover.unlink(missing_ok=True)


class Trainer:
    """One training run. ``Trainer(config).fit()``; ``Trainer.resume(run_dir).fit()``."""

    def __init__(
        self,
        config: TrainConfig,
        *,
        resume_state: dict[str, Any] | None = None,
        on_step: Callable[[int, dict[str, float]], bool] | None = None,
        dist: DistContext | None = None,
    ) -> None:
        """
        Args:
            config: the run's configuration.
            resume_state: a ``state.pt`` to continue from (see :meth:`resume`).
            on_step: called after every step with ``(step, row)``; True stops the run.
            dist: the process group to train in; default: the one torchrun's environment
                describes (or none), created here and closed at the end of :meth:`fit`.
        """
        self.config = config
        self.on_step = on_step
        self.dist = dist if dist is not None else DistContext.from_environment(
            resolve_device(config.run.device)
        )
        self._owns_dist = dist is None
        self.device = self.dist.device
        try:
            self._setup(config, resume_state)
        except BaseException:
            if self._owns_dist:
                self.dist.close()
            raise

    def _setup(self, config: TrainConfig, resume_state: dict[str, Any] | None) -> None:
        self.run_dir = Path(config.run.out_dir)
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise TrainingError(f"{self.run_dir}: run.out_dir exists and is not a folder")
        self.stop_requested = False
        self._signalled = False  # set by the SIGINT / SIGTERM handler alone
        self.resume_state = resume_state
        # The same seed on every process while the network is built: the EMA copy and every
        # randomly initialised layer start equal everywhere (DDP would only align the
        # training weights). Then a stream of its own for each process.
        seed_everything(config.run.seed)
        self._setup_data()
        self._setup_model()
        self._setup_optimizer()
        if self.dist.rank:
            seed_everything(config.run.seed + self.dist.rank)
        self._train_dataset: DetectionDataset | None = None  # made by the first _loader
        self.step = 0
        self.best_ap = -1.0
        self.nonfinite_total = 0
        self.nonfinite_in_a_row = 0
        self.overflow_total = 0
        self.elapsed_before = 0.0
        self.total_steps = self._configured_total_steps()
        self.budget = TimeBudget(config.run.time_budget_minutes)
        if resume_state is not None:
            self._load_state(resume_state)  # the weights first: the cache runs the backbone
        setup_start = time.perf_counter()
        self.feature_cache: FeatureCache | None = self._setup_feature_cache()
        # Seconds this process spent before training that a budget may count (the cache).
        self.setup_seconds = time.perf_counter() - setup_start
        if resume_state is not None:
            self._restore_rng(resume_state)  # after the cache, which draws (BN-folding probes)
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if resume_state is not None:
                _remove_partial_writes(self.run_dir)
            atomic_write(self.run_dir / CONFIG_FILE, lambda tmp: save_config(config, tmp))
        self.logger = self._open_logger(config, resume_state is not None) if self.dist.is_main else None

    def _open_logger(self, config: TrainConfig, resumed: bool) -> MetricsLogger:
        """The run's metric sinks (``run.loggers``); a resumed run continues its MLflow run."""
        resume_step = self.step if resumed else None
        mlflow = None
        if "mlflow" in config.run.loggers:
            try:
                mlflow = MlflowLogger(
                    self.run_dir, config.to_dict(), tracking_uri=config.run.mlflow_tracking_uri,
                    experiment=config.run.mlflow_experiment, resume_step=resume_step,
                )
            except ImportError as e:
                raise TrainingError(str(e)) from None
        return MetricsLogger(
            self.run_dir, resume_step=resume_step, loggers=config.run.loggers, mlflow=mlflow
        )

    def _artifacts(self, plots: dict[str, Path]) -> list[tuple[Path, str]]:
        """What an experiment tracker keeps of the run: ``(path, folder)``."""
        run = self.run_dir
        return [
            (run / CONFIG_FILE, ""), (run / LAST_WEIGHTS, "checkpoints"),
            (run / BEST_WEIGHTS, "checkpoints"), (run / "eval", "eval"),
            *((path, "plots") for path in plots.values()),
        ]

    @classmethod
    def resume(
        cls, run_dir: str | Path, *, overrides: list[str] | None = None,
        on_step: Callable[[int, dict[str, float]], bool] | None = None,
        dist: DistContext | None = None,
    ) -> Trainer:
        """Continue the run in ``run_dir`` from its last training state."""
        run_dir = Path(run_dir)
        state_path = run_dir / STATE_FILE
        if not state_path.is_file():
            raise TrainingError(f"{run_dir}: nothing to resume (no {STATE_FILE}; was a checkpoint ever saved?)")
        config = load_config(run_dir / CONFIG_FILE, overrides)
        config = replace(config, run=replace(config.run, out_dir=str(run_dir)))
        try:
            state = torch.load(state_path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise TrainingError(f"{state_path}: unreadable training state ({err})") from err
        if int(state.get("version", 0)) > STATE_VERSION:
            raise TrainingError(f"{state_path}: written by a newer efficientdet; upgrade to resume")
        return cls(config, resume_state=state, on_step=on_step, dist=dist)

    # ---- set-up --------------------------------------------------------------------------

    def _setup_data(self) -> None:
        cfg = self.config
        if not cfg.data.train:
            raise TrainingError("no training data: set data.train (a COCO .json, VOC/YOLO folder or data.yaml)")
        self.train_data: DetectionData = load_dataset(cfg.data.train, "train")
        if len(self.train_data) == 0 or sum(s.num_boxes for s in self.train_data.samples) == 0:
            raise TrainingError(f"{cfg.data.train}: no images with boxes to train on")
        for kind in self.train_data.issues.kinds("warning"):
            log.warning("%s: %d x %s (fixed while loading)", cfg.data.train, self.train_data.issues.count(kind), kind)
        self.val_data: DetectionData | None = None
        if cfg.data.val:
            self.val_data = load_dataset(cfg.data.val, "val", class_names=self.train_data.class_names)
            if self.val_data.class_names != self.train_data.class_names:
                raise TrainingError(
                    f"validation classes {self.val_data.class_names} differ from training classes "
                    f"{self.train_data.class_names}"
                )
        per_step = cfg.run.batch_size * self.dist.world_size
        if len(self.train_data) < per_step:
            raise TrainingError(
                f"{len(self.train_data)} training images, fewer than one batch of {per_step}; "
                "lower run.batch_size"
            )

    def _setup_model(self) -> None:
        cfg = self.config.model
        overrides: dict[str, Any] = {}
        if cfg.image_size is not None:
            overrides["image_size"] = tuple(cfg.image_size)
        if cfg.neck is not None:
            overrides["neck"] = cfg.neck
        if cfg.fusion is not None:
            overrides["fusion"] = cfg.fusion
        init_checkpoint = cfg.init_checkpoint
        if cfg.pretrained:
            if init_checkpoint is not None:
                raise TrainingError(
                    "model.pretrained and model.init_checkpoint both name starting weights; keep one"
                )
            if self.resume_state is None:
                init_checkpoint = str(fetch_weights(cfg.name))
        pretrained = cfg.pretrained_backbone and init_checkpoint is None and self.resume_state is None
        for key in ("fpn_channels", "fpn_repeats"):
            if getattr(cfg, key) is not None:
                overrides[key] = getattr(cfg, key)
        model_config = config_for_training(
            cfg.name, cfg.phi, self.train_data.num_classes, model_config=cfg.config, **overrides
        )
        anchor_overrides = cfg.anchor_overrides()
        if anchor_overrides:
            anchors = replace(model_config.anchors, **anchor_overrides)
            model_config = replace(model_config, anchors=anchors)
            log.info(
                "anchors: scale %g, %d octave scales, aspect ratios (w, h) %s",
                anchors.anchor_scale, anchors.num_scales, list(anchors.aspect_ratios),
            )
        model = EfficientDet(model_config, pretrained_backbone=pretrained)
        if init_checkpoint and self.resume_state is None:
            report = load_checkpoint(model, init_checkpoint)
            log.info("initialised from %s (%s)", init_checkpoint, report.source_format)
        if self.dist.enabled and self.device.type == "cuda":
            # Batch statistics over the global batch. timm's converter keeps the backbone's
            # fused BN + activation layers whole (torch's would drop their activations). It
            # replaces the norm modules, so it comes before the frozen ones are collected.
            # SyncBatchNorm needs CUDA tensors: on the CPU (gloo) each process normalises
            # its own batch.
            model = convert_sync_batchnorm(model)
        stages = backbone_stages(model.backbone)
        count = len(stages) if cfg.freeze_backbone < 0 else min(cfg.freeze_backbone, len(stages))
        self.frozen_stages: list[nn.Module] = freeze_modules([m for s in stages[:count] for m in s])
        # the modules whose BN statistics stay fixed
        self.frozen: list[nn.Module] = [model] if cfg.freeze_bn else self.frozen_stages
        if cfg.grad_checkpointing:
            set_gc = getattr(model.backbone, "set_grad_checkpointing", None)
            if set_gc is None:
                raise TrainingError(f"backbone {model.config.backbone} does not support gradient checkpointing")
            set_gc(True)
        model.to(self.device)
        if self.config.run.channels_last:
            model.to(memory_format=torch.channels_last)
        self.model = model
        self.detector = Detector(model).to(self.device)
        if self.dist.enabled:
            self.detector.positives_reducer = self.dist.all_reduce_sum
        self.ema = (
            ModelEMA(model, self.config.optim.ema_decay, self.config.optim.ema_warmup)
            if self.config.optim.ema_decay > 0
            else None
        )
        # What a training step calls: the detector, wrapped for data parallelism when several
        # processes train.
        self.train_module: nn.Module = self.detector
        if self.dist.enabled:
            self.train_module = nn.parallel.DistributedDataParallel(
                self.detector,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
            )

    def _setup_optimizer(self) -> None:
        opt = self.config.optim
        global_batch = self.config.run.batch_size * self.dist.world_size
        self.base_lr = opt.base_lr(global_batch)
        groups = parameter_groups(self.model, opt.weight_decay, opt.backbone_lr_factor)
        # What gradient clipping covers: the optimizer's parameters (the trainable ones).
        self._trainable = [p for group in groups for p in group["params"]]
        if opt.optimizer == "sgd":
            self.optimizer: torch.optim.Optimizer = torch.optim.SGD(
                groups, lr=self.base_lr, momentum=opt.momentum
            )
        else:
            # foreach: one call per step for all tensors instead of a Python loop over them
            # (the default only on CUDA).
            self.optimizer = torch.optim.AdamW(groups, lr=self.base_lr, foreach=True)
        # fp16 needs loss scaling (small gradients underflow); bf16 has float32's range.
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.config.run.amp == "fp16")
        self.steps_per_epoch = steps_per_epoch(
            len(self.train_data), self.config.run.batch_size, self.dist.world_size
        )
        self.warmup_steps = int(round(opt.warmup_epochs * self.steps_per_epoch))

    def _setup_feature_cache(self) -> FeatureCache | None:
        cfg = self.config
        if not cfg.data.cache_features:
            return None
        backbone = self.model.backbone
        stages = backbone_stages(backbone)
        freeze = cfg.model.freeze_backbone
        first_trainable = None if freeze < 0 or freeze >= len(stages) else first_trainable_block(freeze)
        if first_trainable is not None and first_trainable < 0:
            raise TrainingError(
                "data.cache_features needs the backbone frozen: set model.freeze_backbone=-1 "
                "(all of it) or k >= 1 (its first k stages; the rest train on the cached maps)"
            )
        if first_trainable is not None and (
            tapped_blocks(backbone) is None or not split_matches(backbone, first_trainable)
        ):
            raise TrainingError(
                f"data.cache_features with model.freeze_backbone={freeze}: backbone "
                f"{self.model.config.backbone} cannot be run in parts; set model.freeze_backbone=-1 "
                "or train without data.cache_features"
            )
        views = cfg.data.cache_views
        if views == 1 and (cfg.data.mix_augment().active or any(cfg.data.hsv)) and self.dist.is_main:
            log.warning(
                "data.mosaic_prob / mixup_prob / copy_paste_prob / hsv_* change nothing here: the feature "
                "cache holds each image's plain view alone (data.cache_views=1); set "
                "data.cache_views >= 2 for augmented views, or train without data.cache_features"
            )
        info = self.model.feature_info
        size = self.model.config.image_size
        # Each process caches its own shard of the images and trains on it alone.
        shard = self.train_data.subset(self.dist.shard(len(self.train_data)))
        need = (
            cache_bytes(info.channels, info.strides, size, views * len(shard)) if first_trainable is None
            else frozen_part_bytes(backbone, size, first_trainable, views * len(shard))
        )
        if need > cfg.data.cache_max_gb * 2**30:
            raise TrainingError(
                f"the feature cache needs {need / 2**30:.1f} GiB ({views} view(s) of "
                f"{len(shard)} images at {size[0]}x{size[1]}), over data.cache_max_gb="
                f"{cfg.data.cache_max_gb:g}; lower data.cache_views or the image size, raise "
                "data.cache_max_gb, or train without data.cache_features"
            )
        start = time.perf_counter()
        model_cfg = self.model.config
        cache = build_feature_cache(
            self.model.backbone, shard, image_size=size, mean=model_cfg.mean,
            std=model_cfg.std, views=views, hflip_prob=cfg.data.hflip_prob, hsv=cfg.data.hsv,
            scale_range=(cfg.data.scale_min, cfg.data.scale_max), mix=cfg.data.mix_augment(),
            seed=cfg.run.seed, device=self.device, progress=self.dist.is_main and cfg.run.progress,
            first_trainable=first_trainable,
        )
        log.info(
            "cached backbone features of %d x %d images (%.0f MB) in %.1f s",
            views, len(shard), need / 2**20, time.perf_counter() - start,
        )
        return cache

    def _cached_batches(
        self, epoch: int, start_step: int
    ) -> Iterator[tuple[BackboneFeatures, list[dict[str, torch.Tensor]]]]:
        """The batches of the run from the feature cache, epoch after epoch from ``(epoch,
        start_step)``: each epoch a shuffle of this process's shard, cut to the run's steps
        per epoch (shards differ in size by at most one image)."""
        cache = self.feature_cache
        assert cache is not None
        cfg = self.config
        batch = cfg.run.batch_size
        while True:
            sampler = EpochSampler(
                cache.num_samples, seed=cfg.run.seed, epoch=epoch, batch_size=batch,
                start_step=start_step,
            )
            indices = sampler.indices[: (self.steps_per_epoch - start_step) * batch]
            for begin in range(0, len(indices) - batch + 1, batch):
                yield cache.batch(indices[begin : begin + batch], epoch, self.device)
            epoch, start_step = epoch + 1, 0

    def _configured_total_steps(self) -> int:
        run = self.config.run
        if run.max_steps is not None:
            return int(run.max_steps)
        return run.epochs * self.steps_per_epoch

    # ---- state -----------------------------------------------------------------------------

    def _state(self, rng: list[dict[str, Any]]) -> dict[str, Any]:
        """The training state; ``rng``: every process's generators, in rank order."""
        return {
            "version": STATE_VERSION,
            "step": self.step,
            "total_steps": self.total_steps,
            "budget_fixed": self.budget.fixed,
            "best_ap": self.best_ap,
            "nonfinite_total": self.nonfinite_total,
            "nonfinite_in_a_row": self.nonfinite_in_a_row,
            "elapsed": self.elapsed_before + (time.perf_counter() - self._start),
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "rng": rng,
            "world_size": self.dist.world_size,
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "overflow_total": self.overflow_total,
        }

    def _load_state(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        self.total_steps = int(state["total_steps"])
        self.budget.fixed = bool(state.get("budget_fixed", True))
        self.best_ap = float(state["best_ap"])
        self.nonfinite_total = int(state["nonfinite_total"])
        self.nonfinite_in_a_row = int(state["nonfinite_in_a_row"])
        self.elapsed_before = float(state.get("elapsed", 0.0))
        self.overflow_total = int(state.get("overflow_total", 0))
        if state.get("scaler") is not None and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])
        if self.dist.is_main:
            log.info("resuming at step %d of %d", self.step, self.total_steps)

    def _restore_rng(self, state: dict[str, Any]) -> None:
        """Each process takes its own generators back. Another process count than the saved
        run's (or a GPU run resumed on the CPU) cannot continue the same random streams: the
        run goes on with fresh ones, and says so."""
        saved = state["rng"]
        streams = saved if isinstance(saved, list) else [saved]  # version 1: rank 0's alone
        saved_world = int(state.get("world_size", len(streams)))
        if saved_world != self.dist.world_size or len(streams) != self.dist.world_size:
            if self.dist.is_main:
                log.warning(
                    "the run was saved with %s and resumes with %d process(es): each process "
                    "starts a fresh random stream (seed + rank), and the global batch, the "
                    "learning rate when optim.lr is unset, and the data order change with the "
                    "process count; the run goes on, but not on the trajectory it would have "
                    "taken", f"{saved_world} process(es)" if isinstance(saved, list)
                    else "an older efficientdet (one random stream)", self.dist.world_size,
                )
            return
        mine = streams[self.dist.rank]
        if "cuda" in mine and self.device.type != "cuda" and self.dist.is_main:
            log.warning("the run was saved on a GPU and resumes on the CPU: the GPU's random "
                        "stream is not restored")
        set_rng_state(mine, self.device)

    def eval_model(self) -> nn.Module:
        """The weights used for evaluation and export: the EMA when there is one."""
        return self.ema.module if self.ema is not None else self.model

    def _metadata(self) -> dict[str, Any]:
        return {
            "class_names": self.train_data.class_names,
            "label_to_category_id": self.train_data.label_to_category_id,
            "step": self.step,
            "best_ap": self.best_ap,
        }

    def save(self) -> None:
        """Write the training state and the (EMA) weights, each atomically. Every process
        calls it at the same step (it gathers each one's random state); rank 0 writes."""
        rng = self.dist.gather(rng_state(self.device))
        if rng is None:  # not rank 0
            return
        # Serialised in memory first: a full disk then fails in a plain file write, with
        # OSError(ENOSPC) naming the file, not inside torch's zip writer.
        buffer = io.BytesIO()
        torch.save(self._state(rng), buffer)
        atomic_write(self.run_dir / STATE_FILE, lambda tmp: Path(tmp).write_bytes(buffer.getbuffer()))
        save_checkpoint(self.eval_model(), self.run_dir / LAST_WEIGHTS, metadata=self._metadata())

    # ---- the loop --------------------------------------------------------------------------

    def _loader(self, epoch: int, start_step: int) -> DataLoader:
        """One loader for the rest of the run from ``(epoch, start_step)``: its workers
        decode and augment ahead of the network for every epoch (see :class:`RunSampler`)."""
        cfg = self.config
        model_cfg = self.model.config
        if self._train_dataset is None:
            # One dataset for the whole run: what it learns about unreadable files outlives
            # each epoch's loader workers (see DetectionDataset.note_replaced).
            transform = build_transform(
                model_cfg.image_size, train=True, augment=cfg.data.augment, mean=model_cfg.mean,
                std=model_cfg.std, hflip_prob=cfg.data.hflip_prob,
                scale_range=(cfg.data.scale_min, cfg.data.scale_max), hsv=cfg.data.hsv,
            )
            self._train_dataset = DetectionDataset(
                self.train_data, transform, on_unreadable="substitute",
                mix=cfg.data.mix_augment() if cfg.data.augment else None,
            )
        sampler = RunSampler(
            len(self.train_data), seed=cfg.run.seed, epoch=epoch, batch_size=cfg.run.batch_size,
            start_step=start_step, rank=self.dist.rank, world_size=self.dist.world_size,
        )
        # The loader's own generator keeps the global RNG untouched (resume equality).
        return build_dataloader(
            self._train_dataset, batch_size=cfg.run.batch_size, sampler=sampler,
            num_workers=cfg.data.num_workers, seed=cfg.run.seed, drop_last=True,
            device=self.device,
        )

    def _install_signals(self) -> dict[Any, Any]:
        """SIGINT / SIGTERM ask this process to stop; every process learns of it after the
        same step (:meth:`DistContext.any`), saves once and ends."""
        previous: dict[Any, Any] = {}

        def handler(signum: int, frame: Any) -> None:
            log.warning("signal %d: saving a checkpoint and stopping after this step", signum)
            # A latch nothing else writes: a signal that lands while this process waits in
            # the stop agreement is seen at the next one.
            self._signalled = True

        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread
                previous[sig] = signal.signal(sig, handler)
        return previous

    def _autocast(self) -> Any:
        amp = self.config.run.amp
        if amp == "none":
            return torch.autocast(self.device.type, enabled=False)
        dtype = torch.bfloat16 if amp == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def _train_mode(self) -> None:
        self.detector.train()
        # Frozen stages run as at inference (fixed BN statistics, no drop-path), as their
        # cached maps were computed.
        for module in self.frozen_stages:
            module.eval()
        set_frozen_bn_eval(self.frozen)

    def fit(self) -> TrainResult:
        """Train to the end of the schedule, or until a stop (signal, ``on_step``); then save,
        evaluate (when finished) and close the process group this trainer opened."""
        try:
            return self._fit()
        except BaseException:
            if self.logger is not None:
                self.logger.close("failed")
            raise
        finally:
            if self._owns_dist:
                self.dist.close()

    def _fit(self) -> TrainResult:
        cfg = self.config
        previous = self._install_signals()
        self._start = time.perf_counter()
        self._fit_start_step = self.step
        losses: list[float] = []
        progress = None
        if self.dist.is_main and cfg.run.progress:
            from tqdm import tqdm

            progress = tqdm(total=self.total_steps, initial=self.step, unit="step", dynamic_ncols=True)
        status = "finished"
        self._overhead = 0.0  # seconds of this fit spent in evaluations and checkpoints
        self._eval_seconds = 0.0  # duration of the last mid-run evaluation
        try:
            self._train_mode()
            epoch, start = divmod(self.step, self.steps_per_epoch)
            batches: Any = (
                self._cached_batches(epoch, start) if self.feature_cache is not None
                else self._loader(epoch, start)
            )
            for images, targets in batches:
                if self.step >= self.total_steps:
                    break
                t0 = time.perf_counter()
                self.budget.step_started(t0, self.step, self._fit_start_step, self._overhead)
                if self._train_dataset is not None:  # None on cached features
                    self._train_dataset.note_replaced(targets)
                row = self._train_step(images, targets)
                losses.append(row["loss"])
                self.step += 1
                row["images_per_s"] = len(targets) * self.dist.world_size / max(1e-9, time.perf_counter() - t0)
                row["elapsed_s"] = self.elapsed_before + time.perf_counter() - self._start
                self._maybe_fit_budget()
                if self.logger is not None and (self.step % cfg.run.log_every == 0 or self.step == 1):
                    self.logger.log_step(row)
                if progress is not None:
                    progress.total = self.total_steps
                    progress.set_postfix(loss=f"{row['loss']:.3f}", lr=f"{row['lr']:.2e}", ips=f"{row['images_per_s']:.1f}")
                    progress.update(1)
                if self.on_step is not None and self.on_step(self.step, row):
                    self.stop_requested = True
                # A stop asked of any process stops them all after this step. Only this
                # agreed value decides: a signal seen by one process alone, at any other
                # moment, waits for the next agreement.
                self.stop_requested = self.dist.any(self.stop_requested or self._signalled)
                t1 = time.perf_counter()
                if self.stop_requested:
                    break
                if cfg.run.save_every_steps and self.step % cfg.run.save_every_steps == 0:
                    self.save()
                if self.step % self.steps_per_epoch == 0:
                    self._end_of_epoch(self.step // self.steps_per_epoch)
                self._overhead += time.perf_counter() - t1
            del batches  # ends the loader's workers
            if self.stop_requested and self.step < self.total_steps:
                status = "interrupted"
            self.save()
        finally:
            for sig, h in previous.items():
                signal.signal(sig, h)
            if progress is not None:
                progress.close()
        metrics = None
        if status == "finished":
            metrics = self._final_evaluation()
        if self.logger is not None:
            self.logger.close(status, self._artifacts(plot_curves(self.run_dir)))
        self.dist.barrier()
        return TrainResult(
            self.run_dir, status, self.step, self.total_steps, losses, self.nonfinite_total,
            self.overflow_total, metrics, self.elapsed_before + time.perf_counter() - self._start,
            self.step / self.steps_per_epoch,
        )

    def _maybe_fit_budget(self) -> None:
        """Let the time budget shorten the schedule (see :class:`TimeBudget`); the first fit also
        shortens the warm-up to at most a tenth of the fitted run. With several processes,
        rank 0's timing decides for all."""
        first = self.budget.cap is None
        now = time.perf_counter()
        fitted = self.budget.refit(
            now=now, step=self.step, first_step=self._fit_start_step, total_steps=self.total_steps,
            elapsed=self.elapsed_before + now - self._start + (
                self.setup_seconds if self.config.run.budget_includes_setup else 0.0
            ),
            overhead=self._overhead,
            eval_seconds=self._eval_seconds,
            steps_per_eval=self.config.run.eval_every * self.steps_per_epoch,
            agree=self.dist.broadcast,
        )
        if fitted is None:
            return
        self.total_steps, per_step = fitted
        if first:
            self.warmup_steps = min(self.warmup_steps, max(1, self.total_steps // 10))
        if self.dist.is_main:
            log.info(
                "%.2f s/step (evaluations included): %d steps fit the %.1f-minute budget",
                per_step, self.total_steps, float(self.config.run.time_budget_minutes or 0),
            )

    def _train_step(
        self, images: torch.Tensor | BackboneFeatures, targets: list[dict[str, Any]]
    ) -> dict[str, float]:
        opt = self.config.optim
        lr = learning_rate(
            self.step, base_lr=self.base_lr, total_steps=self.total_steps,
            warmup_steps=self.warmup_steps, warmup_factor=opt.warmup_factor,
            schedule=opt.schedule, min_lr_factor=opt.min_lr_factor,
        )
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_factor", 1.0)
        if isinstance(images, torch.Tensor):
            images = images.to(self.device, non_blocking=True)
        if self.config.run.channels_last:
            images = _channels_last(images)
        targets = [
            {"boxes": t["boxes"].to(self.device, non_blocking=True),
             "labels": t["labels"].to(self.device, non_blocking=True)}
            for t in targets
        ]
        with self._autocast():
            out = self.train_module(images, targets)
        loss = out["loss"]
        if self.dist.enabled:
            # The loss is normalised by the positives of the whole global batch; DDP averages
            # gradients over processes, so scale back to the gradient of the combined batch.
            loss = loss * self.dist.world_size
        self.optimizer.zero_grad(set_to_none=True)
        row = {
            "step": float(self.step + 1),
            "epoch": (self.step + 1) / self.steps_per_epoch,
            "loss": float(out["loss"].detach()),
            "class_loss": float(out["class_loss"].detach()),
            "box_loss": float(out["box_loss"].detach()),
            "lr": lr,
        }
        # A non-finite loss on any process skips the step on all (before DDP's backward).
        if self.dist.any(not math.isfinite(row["loss"])):
            self._skip_step("non-finite loss")
            return row
        self.scaler.scale(loss).backward()
        if opt.clip_grad > 0 or not self.scaler.is_enabled():
            self.scaler.unscale_(self.optimizer)
            # Without clipping the norm is still taken, to find non-finite gradients.
            norm = torch.nn.utils.clip_grad_norm_(self._trainable, opt.clip_grad or math.inf)
            # Under fp16 the scaler skips such steps itself (counted below).
            if not self.scaler.is_enabled() and self.dist.any(not bool(torch.isfinite(norm))):
                self.optimizer.zero_grad(set_to_none=True)
                self._skip_step("non-finite gradient")
                return row
        self.nonfinite_in_a_row = 0
        if self.scaler.is_enabled():
            scale = self.scaler.get_scale()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if self.scaler.get_scale() < scale:  # inf/nan gradients: the scaler skipped it
                self.overflow_total += 1
                if self.dist.is_main:
                    log.info("step %d: fp16 gradients overflowed at scale %g; step skipped, "
                             "scale lowered (%d so far)", self.step + 1, scale, self.overflow_total)
                return row
        else:
            self.optimizer.step()
        if self.ema is not None:
            self.ema.update(self.model)
        return row

    def _skip_step(self, what: str) -> None:
        """Count a step left out for ``what``; stop the run after too many in a row."""
        self.nonfinite_total += 1
        self.nonfinite_in_a_row += 1
        if self.dist.is_main:
            log.warning("step %d: %s, step skipped (%d in a row)", self.step + 1, what, self.nonfinite_in_a_row)
        if self.nonfinite_in_a_row >= self.config.run.max_nonfinite:
            self.save()
            raise TrainingError(
                f"{self.nonfinite_in_a_row} non-finite steps in a row at step {self.step + 1}. "
                f"Lower the learning rate (optim.lr, now {self.base_lr:g}), raise run.batch_size, "
                "keep gradient clipping on (optim.clip_grad), or check the boxes "
                "(efficientdet check-data). The last good state is saved."
            )

    def _evaluate(self, error_analysis: bool = False) -> dict[str, float] | None:
        """COCO metrics of the evaluation weights on the validation set. Every process
        predicts its shard of the images; rank 0 gathers the detections and scores them (the
        same metrics as one process would compute), and every process gets the metrics."""
        if self.val_data is None:
            return None
        # A BN-folded, channels-last copy of the evaluation weights: the same detections to
        # float tolerance, in about half the time of the training module on CPU.
        model = self.eval_model()
        # Rank 0's weights, the ones saved, on every process: BN statistics of a process's own
        # batches (no SyncBN on the CPU) would make each shard score another network.
        self.dist.broadcast_tensors(list(model.state_dict().values()))
        folded = optimize_for_inference(model, check=False, probe_size=self.model.config.image_size)
        detector = Detector(folded).to(self.device)
        config = detector.config
        detections = predict_dataset(
            detector, self.val_data, image_size=config.image_size, mean=config.mean,
            std=config.std, batch_size=self.config.run.eval_batch_size, device=self.device,
            num_workers=self.config.data.num_workers,
            indices=self.dist.shard(len(self.val_data)),
        )
        parts = self.dist.gather(detections)  # on rank 0 alone, which scores them
        scored: tuple[EvalResult, list[dict[str, Any]]] | None = None
        if parts is not None:
            gathered = self.dist.unshard(parts)
            scored = score_detections(self.val_data, gathered, error_analysis=error_analysis)
        metrics = self.dist.broadcast(scored[0].metrics if scored is not None else None)
        self._train_mode()
        if scored is not None:
            self.last_eval = scored
        return metrics

    def _end_of_epoch(self, epoch: int) -> None:
        every = self.config.run.eval_every
        metrics = None
        if every and epoch % every == 0 and self.step < self.total_steps:
            began = time.perf_counter()
            metrics = self._evaluate()
            # Rank 0's duration for all: the budget plans the same schedule everywhere.
            self._eval_seconds = self.dist.broadcast(time.perf_counter() - began)
        if self.logger is not None:
            row: dict[str, float] = {"epoch": float(epoch), "step": float(self.step)}
            if metrics:
                row.update(metrics)
            self.logger.log_epoch(row)
        if metrics is not None:
            if self.dist.is_main:
                log.info("epoch %d: %s", epoch, format_metrics(self.last_eval[0]))
            if metrics["AP"] > self.best_ap:
                self.best_ap = metrics["AP"]
                if self.dist.is_main:
                    save_checkpoint(self.eval_model(), self.run_dir / BEST_WEIGHTS, metadata=self._metadata())
        self.save()

    def _final_evaluation(self) -> dict[str, float] | None:
        metrics = self._evaluate(error_analysis=True)
        if metrics is None or self.val_data is None:
            return None
        if metrics["AP"] > self.best_ap:
            self.best_ap = metrics["AP"]
        if not self.dist.is_main:
            return metrics
        result, results = self.last_eval
        write_eval_outputs(result, self.run_dir / "eval", results, self.val_data.samples)
        if self.logger is not None:
            row = {"epoch": self.step / self.steps_per_epoch, "step": float(self.step), **metrics}
            self.logger.log_epoch(row)
        log.info("final evaluation: %s", format_metrics(result))
        save_checkpoint(self.eval_model(), self.run_dir / LAST_WEIGHTS, metadata=self._metadata())
        if metrics["AP"] >= self.best_ap:
            save_checkpoint(self.eval_model(), self.run_dir / BEST_WEIGHTS, metadata=self._metadata())
        return metrics


def train(
    config: TrainConfig | None,
    *,
    resume: str | Path | None = None,
    on_step: Callable[[int, dict[str, float]], bool] | None = None,
    dist: DistContext | None = None,
) -> TrainResult:
    """Run (or resume) training; see :class:`Trainer` (``dist``: the process group to train in,
    default the one torchrun's environment describes)."""
    if resume:
        trainer = Trainer.resume(resume, on_step=on_step, dist=dist)
    elif config is None:
        raise ValueError("train() needs a config, or resume= a run folder")
    else:
        trainer = Trainer(config, on_step=on_step, dist=dist)
    return trainer.fit()
