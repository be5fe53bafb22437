import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from efficientdet.train import (
    STATE_FILE,
    Trainer,
    TrainingError,
    load_config,
    train,
)
from efficientdet.train.config import parse_override
from efficientdet.train.feature_cache import cache_bytes
from efficientdet.train.schedule import learning_rate


def _config(tiny_demo, out: Path, *extra: str):
    return load_config(
        None,
        [
            "model.name=efficientdet_test",
            "model.pretrained_backbone=false",
            f"data.train={tiny_demo.data_yaml}",
            f"run.out_dir={out}",
            "run.batch_size=4",
            "run.progress=false",
            "run.eval_every=0",
            "run.save_every_steps=0",
            "data.num_workers=0",
            *extra,
        ],
    )


def test_config_overrides_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  name: tf_efficientdet_lite0\noptim:\n  lr: 0.01\n")
    cfg = load_config(path, ["optim.lr=0.02", "run.batch_size=3", "model.image_size=256"])
    assert cfg.model.name == "tf_efficientdet_lite0" and cfg.optim.lr == 0.02
    assert cfg.run.batch_size == 3 and cfg.model.image_size == (256, 256)
    assert parse_override("data.train=a=b.json") == (["data", "train"], "a=b.json")
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['optim.lrr'\]"):
        load_config(None, ["optim.lrr=1"])
    with pytest.raises(ValueError, match="section.key"):
        load_config(None, ["lr=1"])
    with pytest.raises(ValueError, match="optim.optimizer='adam' is not one of"):
        load_config(None, ["optim.optimizer=adam"])
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "missing.yaml")


def test_official_lr_scaling_and_schedule() -> None:
    cfg = load_config(None, [])
    assert cfg.optim.base_lr(64) == pytest.approx(0.08) and cfg.optim.base_lr(128) == pytest.approx(0.16)
    lrs = [learning_rate(s, base_lr=0.08, total_steps=100, warmup_steps=10, warmup_factor=0.1) for s in range(100)]
    assert lrs[0] == pytest.approx(0.008) and lrs[10] == pytest.approx(0.08)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False)) and lrs[-1] < 0.001


def test_tiny_training_lowers_the_loss(tiny_demo, tmp_path: Path) -> None:
    cfg = _config(
        tiny_demo, tmp_path / "run", "run.max_steps=36", "optim.optimizer=adamw", "optim.lr=0.01",
        "data.augment=false", "optim.warmup_epochs=0.5", f"data.val={tiny_demo.data_yaml}",
    )
    result = train(cfg)
    assert result.status == "finished" and result.step == 36
    first, last = sum(result.losses[:6]) / 6, sum(result.losses[-6:]) / 6
    assert last < 0.7 * first, (first, last)
    run = tmp_path / "run"
    for name in ("config.yaml", "steps.csv", "epochs.csv", "last.safetensors", "best.safetensors",
                 STATE_FILE, "loss.png", "lr.png", "eval/metrics.json", "eval/per_class_ap.png",
                 "eval/report.md", "eval/thresholds.json", "eval/confusion_matrix.csv",
                 "eval/confusion_matrix.png", "eval/pr_curves.csv", "eval/pr_curves.png"):
        assert (run / name).is_file(), name
    assert result.metrics is not None and 0.0 <= result.metrics["AP"] <= 1.0


def test_resume_follows_the_same_trajectory(tiny_demo, tmp_path: Path) -> None:
    extra = ("run.max_steps=10", "data.num_workers=1")
    whole = train(_config(tiny_demo, tmp_path / "a", *extra))
    first = train(_config(tiny_demo, tmp_path / "b", *extra), on_step=lambda step, row: step == 4)
    assert first.status == "interrupted" and first.step == 4
    rest = Trainer.resume(tmp_path / "b").fit()
    assert rest.status == "finished"
    assert first.losses + rest.losses == whole.losses
    a = torch.load(tmp_path / "a" / STATE_FILE, weights_only=True)["model"]
    b = torch.load(tmp_path / "b" / STATE_FILE, weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_non_finite_losses_are_skipped_then_stop_the_run(tiny_demo, tmp_path: Path, monkeypatch) -> None:
    from efficientdet.detection.detector import Detector

    real = Detector.loss
    calls = {"n": 0}

    def flaky(self, images, targets):
        out = real(self, images, targets)
        calls["n"] += 1
        if calls["n"] in (2, 3) or calls["n"] >= 5:
            out = {k: v * float("nan") for k, v in out.items()}
        return out

    monkeypatch.setattr(Detector, "loss", flaky)
    cfg = _config(tiny_demo, tmp_path / "nan", "run.max_steps=20", "run.max_nonfinite=3")
    with pytest.raises(TrainingError, match="non-finite steps in a row.*learning rate"):
        train(cfg)
    state = torch.load(tmp_path / "nan" / STATE_FILE, weights_only=True)
    assert state["nonfinite_total"] == 5 and state["step"] == 6
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_refuses_to_start_without_boxes(tmp_path: Path) -> None:
    import json

    ann = tmp_path / "empty.json"
    ann.write_text(json.dumps({"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}]}))
    with pytest.raises((TrainingError, ValueError)):
        train(load_config(None, [f"data.train={ann}", "model.name=efficientdet_test",
                                  "model.pretrained_backbone=false", f"run.out_dir={tmp_path / 'r'}"]))


def test_two_processes_equal_one_process_on_the_combined_batch(tiny_demo, tmp_path: Path) -> None:
    """torchrun with 2 gloo processes of batch 2 ends with the weights of 1 process of batch 4.

    BN is frozen (``model.freeze_bn``): on CPU there is no SyncBatchNorm, so batch statistics
    would differ between a split and a combined batch.
    """
    common = [
        "model.name=efficientdet_test", "model.pretrained_backbone=false", "model.freeze_bn=true",
        f"data.train={tiny_demo.data_yaml}", "run.max_steps=3", "run.progress=false",
        "run.eval_every=0", "data.num_workers=0", "optim.ema_decay=0", "data.augment=true",
    ]
    single = _config(tiny_demo, tmp_path / "single", *common[3:], "model.freeze_bn=true",
                     "run.batch_size=4", "optim.lr=0.05")
    train(single)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "efficientdet", "train",
        *[arg for kv in common for arg in ("--set", kv)],
        "--set", "run.batch_size=2", "--set", "optim.lr=0.05", "--set", f"run.out_dir={tmp_path / 'ddp'}",
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    a = torch.load(tmp_path / "single" / STATE_FILE, weights_only=True)["model"]
    b = torch.load(tmp_path / "ddp" / STATE_FILE, weights_only=True)["model"]
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5, msg=key)


def test_compound_phi_and_width_overrides_build_the_model(tiny_demo, tmp_path: Path) -> None:
    cfg = _config(tiny_demo, tmp_path / "phi", "model.phi=1", "model.name=efficientdet_test",
                  "model.fpn_repeats=2", "run.max_steps=1", "model.image_size=128")
    trainer = Trainer(cfg)
    assert trainer.model.config.fpn_repeats == 2
    # width 16 * 1.35 = 21.6: the growth over the base rounds to the nearest multiple of 8
    assert trainer.model.config.fpn_channels == 24
    assert trainer.model.config.image_size == (128, 128)


def test_time_budget_shortens_the_schedule(tiny_demo, tmp_path: Path) -> None:
    cfg = _config(tiny_demo, tmp_path / "budget", "run.max_steps=400", "run.time_budget_minutes=0.1")
    result = train(cfg)
    assert result.status == "finished"
    assert 6 < result.step < 400 and result.total_steps == result.step


def test_time_budget_times_steps_without_evaluations(tiny_demo, tmp_path: Path, monkeypatch) -> None:
    """A slow evaluation is not read as slow steps (which would cut the schedule short); its
    cost is spread over the steps between evaluations. Checked on a fake clock."""
    import efficientdet.train.loop as loop

    cfg = _config(
        tiny_demo, tmp_path / "budget", "run.max_steps=100000", "run.time_budget_minutes=1",
        "run.eval_every=2",
    )
    trainer = Trainer(cfg)
    assert trainer.steps_per_epoch == 6
    now = [14.0]
    monkeypatch.setattr(loop.time, "perf_counter", lambda: now[0])
    trainer._start, trainer._fit_start_step = 0.0, 0
    # steps 2..7 took 0.5 s each after a mark at t=1 (step 1 is warm-up), plus a 10 s evaluation
    trainer.budget.mark = (1.0, 1, 0.0)
    trainer._overhead, trainer._eval_seconds = 10.0, 10.0
    trainer.step = 7
    trainer._maybe_fit_budget()
    per_step = 0.5 + 10.0 / 12  # the step, plus its share of one evaluation every 12 steps
    assert trainer.total_steps == 7 + int((60.0 - 14.0) / per_step)  # not 60 / (13 / 6) s
    assert trainer.budget.mark == (1.0, 1, 0.0)  # the probe window keeps growing until 10 steps


def test_channels_last_trains_like_nchw(tiny_demo, tmp_path: Path) -> None:
    extra = ("run.max_steps=6", "data.augment=false", "optim.optimizer=adamw", "optim.lr=0.005")
    nchw = train(_config(tiny_demo, tmp_path / "a", *extra))
    nhwc = train(_config(tiny_demo, tmp_path / "b", *extra, "run.channels_last=true"))
    assert nhwc.losses == pytest.approx(nchw.losses, rel=1e-3)
    weights = torch.load(tmp_path / "b" / STATE_FILE, weights_only=True)["model"]
    assert all(not v.is_floating_point() or v.dim() != 4 or v.is_contiguous(memory_format=torch.channels_last)
               for v in weights.values())


# ---- the backbone feature cache (data.cache_features) ------------------------------------


def _frozen_config(tiny_demo, out: Path, *extra: str):
    return _config(tiny_demo, out, "model.freeze_backbone=-1", *extra)


def test_cached_features_train_like_the_frozen_backbone(tiny_demo, tmp_path: Path) -> None:
    extra = ("run.max_steps=8", "data.augment=false", "optim.optimizer=adamw", "optim.lr=0.005")
    plain = train(_frozen_config(tiny_demo, tmp_path / "plain", *extra))
    cached = train(_frozen_config(tiny_demo, tmp_path / "cached", *extra, "data.cache_features=true"))
    assert len(plain.losses) == len(cached.losses) == 8
    # Same batches, same updates: only the float16 cache and the folded BN differ.
    assert cached.losses == pytest.approx(plain.losses, rel=2e-3)
    assert cached.losses[-1] < cached.losses[0]


def test_views_hold_augmented_copies_and_epochs_cycle_through_them(tiny_demo, tmp_path: Path) -> None:
    cfg = _frozen_config(
        tiny_demo, tmp_path / "run", "data.cache_features=true", "data.cache_views=3",
        "data.scale_min=0.5", "data.scale_max=1.5", "run.max_steps=2",
    )
    trainer = Trainer(cfg)
    cache = trainer.feature_cache
    assert cache is not None and cache.views == 3 and cache.num_samples == len(trainer.train_data)
    n = cache.num_samples
    assert cache.maps[0].shape[0] == 3 * n and cache.maps[0].dtype == torch.float16
    # view 0 is the letterbox; the augmented views move the boxes
    moved = sum(
        not torch.equal(cache.targets[i]["boxes"], cache.targets[n + i]["boxes"]) for i in range(n)
    )
    assert moved > n // 2
    maps, targets = cache.batch([0, 1], epoch=4, device=torch.device("cpu"))  # epoch 4 -> view 1
    assert maps.maps[0].dtype == torch.float32 and maps.image_size == (128, 128)
    assert torch.equal(targets[0]["boxes"], cache.targets[n]["boxes"])
    assert torch.equal(maps.maps[-1][1].half(), cache.maps[-1][n + 1])


def test_cached_run_resumes_on_the_same_trajectory(tiny_demo, tmp_path: Path) -> None:
    extra = ("run.max_steps=8", "data.cache_features=true", "data.cache_views=2")
    whole = train(_frozen_config(tiny_demo, tmp_path / "a", *extra))
    first = train(_frozen_config(tiny_demo, tmp_path / "b", *extra), on_step=lambda step, row: step == 5)
    rest = Trainer.resume(tmp_path / "b").fit()
    assert first.losses + rest.losses == whole.losses


def test_cache_refuses_a_trainable_backbone_or_an_oversized_cache(tiny_demo, tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="model.freeze_backbone=-1"):
        Trainer(_frozen_config(tiny_demo, tmp_path / "a", "data.cache_features=true", "model.freeze_backbone=0"))
    with pytest.raises(TrainingError, match=r"GiB .*data.cache_max_gb"):
        Trainer(_frozen_config(tiny_demo, tmp_path / "b", "data.cache_features=true", "data.cache_max_gb=0.00001"))
    with pytest.raises(ValueError, match="data.augment=true"):
        _frozen_config(tiny_demo, tmp_path / "c", "data.cache_views=2", "data.augment=false")


def test_cache_size_counts_every_level() -> None:
    # Lite0 at 320 px: 40x40x40 + 112x20x20 + 320x10x10 halves per image
    assert cache_bytes([40, 112, 320], [8, 16, 32], (320, 320), 10) == 10 * 2 * (64000 + 44800 + 32000)


def test_a_model_configuration_trains_without_registering_it(tiny_demo, tmp_path: Path) -> None:
    from dataclasses import replace

    from efficientdet import get_config, list_models
    from efficientdet.config import model_config_from_dict, model_config_to_dict
    from efficientdet.modeling.checkpoint import read_checkpoint

    before = list_models()
    deeper = model_config_to_dict(replace(get_config("efficientdet_test"), head_repeats=2))
    cfg = _config(tiny_demo, tmp_path / "cfg", "run.max_steps=1")
    cfg = replace(cfg, model=replace(cfg.model, config=deeper))
    result = train(cfg)
    saved = read_checkpoint(Path(result.run_dir) / "last.safetensors").config
    assert saved is not None and saved.head_repeats == 2 and saved.num_classes == 10
    assert list_models() == before
    resumed = Trainer.resume(result.run_dir)  # the configuration survives config.yaml
    assert resumed.config.model.config is not None
    assert model_config_from_dict(resumed.config.model.config) == model_config_from_dict(deeper)


def test_custom_anchors_train_save_reload_and_export(tiny_demo, tmp_path: Path) -> None:
    """model.anchor_scale / aspect_ratios reach the matcher (the detector's anchors), the
    checkpoint header, the reloaded model and the ONNX graph, whose detections match eager."""
    pytest.importorskip("onnxruntime")
    from efficientdet.deploy.export import export_onnx
    from efficientdet.deploy.onnx_backend import OnnxDetector
    from efficientdet.detection.detector import Detector
    from efficientdet.inference.loading import load_trained

    ratios = "[[0.5, 2.0], [0.4, 2.5], [0.3, 3.3]]"
    cfg = _config(tiny_demo, tmp_path / "anchors", "run.max_steps=2", "model.anchor_scale=2.5",
                  f"model.aspect_ratios={ratios}")
    result = train(cfg)
    assert result.status == "finished"
    expected = ((0.5, 2.0), (0.4, 2.5), (0.3, 3.3))
    loaded = load_trained(result.run_dir / "last.safetensors")
    anchors = loaded.model.config.anchors
    assert anchors.anchor_scale == 2.5 and anchors.aspect_ratios == expected
    # a resumed run rebuilds the same anchors from its config.yaml
    resumed = Trainer.resume(result.run_dir)
    assert resumed.detector.anchors.config == anchors
    detector = Detector(loaded.model, score_threshold=0.001).eval()
    assert detector.anchors.config == anchors
    path = tmp_path / "anchors.onnx"
    export_onnx(loaded.model, path, class_names=loaded.class_names)
    images = sorted((tiny_demo.root / "val").glob("*.png"))[:2]
    assert len(images) == 2
    eager = detector.predict(images)
    onnx = OnnxDetector(path, score_threshold=0.001).predict(images)
    for got, want in zip(onnx, eager, strict=True):
        assert len(want["scores"]) > 0 and len(got["scores"]) == len(want["scores"])
        # the same detections; near-tied scores may come in another order
        for box, score, label in zip(want["boxes"], want["scores"], want["labels"], strict=True):
            same = (
                (got["labels"] == label)
                & ((got["scores"] - score).abs() <= 1e-4)
                & ((got["boxes"] - box).abs() <= 1e-2 + 1e-3 * box.abs()).all(dim=1)
            )
            assert bool(same.any()), (box, score, label)


def test_bf16_autocast_trains_close_to_float32(tiny_demo, tmp_path: Path) -> None:
    extra = ("run.max_steps=4", "data.augment=false", "optim.ema_decay=0")
    fp32 = train(_config(tiny_demo, tmp_path / "fp32", *extra))
    bf16 = train(_config(tiny_demo, tmp_path / "bf16", *extra, "run.amp=bf16"))
    assert bf16.status == "finished" and bf16.nonfinite_steps == 0
    assert all(torch.isfinite(torch.tensor(bf16.losses)))
    # bf16 keeps 8 bits of mantissa: the same trajectory to about a percent.
    torch.testing.assert_close(torch.tensor(bf16.losses), torch.tensor(fp32.losses), rtol=0.03, atol=0.0)
    assert bf16.losses != fp32.losses  # the network did run in bf16


def test_fp16_overflowing_gradients_are_skipped_and_counted(tiny_demo, tmp_path: Path, monkeypatch) -> None:
    """fp16 runs with a gradient scaler; a step whose scaled gradients overflow is skipped by
    it (weights untouched, scale lowered) and counted, not applied. The first steps overflow
    too, until the scaler has lowered its initial scale of 2**16 far enough."""
    from efficientdet.detection.detector import Detector

    real = Detector.loss
    calls = {"n": 0}
    huge = 12

    def huge_once(self, images, targets):
        out = real(self, images, targets)
        calls["n"] += 1
        if calls["n"] == huge:  # finite in float32, but its fp16 gradients overflow once scaled
            out = {k: v * 1e12 for k, v in out.items()}
        return out

    monkeypatch.setattr(Detector, "loss", huge_once)
    weights: dict[int, dict[str, torch.Tensor]] = {}
    overflows: dict[int, int] = {}
    scales: dict[int, float] = {}

    def snapshot(step: int, row: dict) -> bool:
        weights[step] = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
        overflows[step] = trainer.overflow_total
        scales[step] = trainer.scaler.get_scale()
        return False

    cfg = _config(tiny_demo, tmp_path / "fp16", f"run.max_steps={huge + 2}", "run.amp=fp16",
                  "optim.ema_decay=0", "data.augment=false")
    trainer = Trainer(cfg, on_step=snapshot)
    assert trainer.scaler.is_enabled()
    result = trainer.fit()
    assert result.nonfinite_steps == 0
    assert overflows[huge - 1] < huge - 1  # some steps before were applied
    assert overflows[huge] == overflows[huge - 1] + 1
    assert result.overflow_steps == overflows[huge + 2]
    assert scales[huge] < scales[huge - 1]
    for key, value in weights[huge].items():  # the overflowing step changed no weight
        if value.is_floating_point() and "running" not in key:
            torch.testing.assert_close(value, weights[huge - 1][key], msg=key)
    assert any(not torch.equal(weights[huge + 1][k], weights[huge][k]) for k in weights[huge])
    state = torch.load(tmp_path / "fp16" / STATE_FILE, weights_only=True)
    assert state["overflow_total"] == result.overflow_steps and state["scaler"] is not None


def test_loader_workers_do_not_change_the_trajectory(tiny_demo, tmp_path: Path) -> None:
    """One loader serves the whole run (two epochs here) with a persistent worker; order and
    augmentation depend on the seed alone, so the losses equal those of loading in-process."""
    extra = ("run.max_steps=12", "optim.ema_decay=0")  # 24 images / batch 4: two epochs
    inline = train(_config(tiny_demo, tmp_path / "w0", *extra))
    workers = train(_config(tiny_demo, tmp_path / "w1", *extra, "data.num_workers=1"))
    assert workers.losses == inline.losses and len(inline.losses) == 12
