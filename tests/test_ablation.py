import argparse
import csv
import json
from pathlib import Path

import pytest

from efficientdet.cli import ablate as ablation_cli
from efficientdet.studies import ablation
from efficientdet.studies.ablation import AblationSetting, ablation_config, paper_row, run_ablation
from efficientdet.studies.repeats import bound_settings
from efficientdet.studies.short_train import ShortTrainResult

TINY = AblationSetting("tiny", "efficientdet_test", 16, 1, (128, 128))
TINY_WIDE = AblationSetting("tiny96", "efficientdet_test", 24, 2, (96, 160))


def test_ablation_config_doubles_fpn_repeats() -> None:
    assert ablation_config(TINY_WIDE, "fpn").fpn_repeats == 4
    config = ablation_config(TINY_WIDE, "bifpn", "softmax")
    assert (config.fpn_repeats, config.fpn_channels, config.fusion) == (2, 24, "softmax")
    assert config.image_size == (96, 160) and config.neck == "bifpn"
    with pytest.raises(ValueError, match="not one of"):
        ablation_config(TINY, "unet")


def test_paper_rows_follow_table_5() -> None:
    assert paper_row("bifpn", "fast").ap == 44.39
    assert paper_row("bifpn", "sum").flops_ratio == 0.67
    assert paper_row("bifpn", "softmax") is None
    assert paper_row("fcfpn", "fast").params_ratio == 1.24
    assert paper_row("mlfpn", "fast") is None


def test_run_ablation_writes_markdown_csv_and_png(tmp_path: Path) -> None:
    lines: list[str] = []
    rows = run_ablation(
        ["fpn", "pafpn", "bifpn", "bfp"],
        out_dir=tmp_path / "out",
        cost_settings=(TINY, TINY_WIDE),
        latency_setting=TINY,
        latency_runs=1,
        fusions=("fast", "sum"),
        command="efficientdet ablate --necks fpn pafpn bifpn bfp",
        echo=lines.append,
    )
    assert [r.label for r in rows] == ["fpn", "pafpn", "bifpn", "bifpn/sum", "bfp"]
    for row in rows:
        assert set(row.costs) == {"tiny", "tiny96"}
        lat = row.latency
        assert lat is not None and 0 < lat.neck_best_ms <= lat.neck_ms
        assert 0 < lat.model_best_ms <= lat.model_ms
        assert 0 < lat.neck_cpu_ms < lat.model_cpu_ms
    by_label = {r.label: r for r in rows}
    for name in ("tiny", "tiny96"):
        fpn, pafpn = by_label["fpn"].costs[name], by_label["pafpn"].costs[name]
        assert fpn.params_ratio == fpn.macs_ratio == 1.0
        # Table 5: repeated FPN and FPN + PANet cost the same (FPN at twice the repeats).
        assert (pafpn.params, pafpn.macs) == (fpn.params, fpn.macs)
        assert by_label["bifpn/sum"].costs[name].params < by_label["bifpn"].costs[name].params
        assert 0 < fpn.params < fpn.model_params and 0 < fpn.macs < fpn.model_macs

    out = tmp_path / "out"
    markdown = (out / "ablation.md").read_text()
    assert "efficientdet ablate --necks fpn pafpn bifpn bfp" in markdown
    assert "| bifpn/sum | 1 |" in markdown
    assert "44.39" in markdown and "Latency at tiny" in markdown and "bifpn/sum" in markdown
    assert markdown in "\n".join(lines)
    with (out / "ablation.csv").open() as f:
        records = list(csv.DictReader(f))
    assert [r["neck"] for r in records] == ["fpn", "pafpn", "bifpn", "bifpn", "bfp"]
    assert [r["fusion"] for r in records][2:4] == ["fast", "sum"]
    assert float(records[1]["tiny96_params_ratio"]) == 1.0
    assert records[2]["paper_params_ratio"] == "0.88" and records[4]["paper_ap"] == ""
    assert float(records[0]["neck_cpu_ms"]) > 0
    png = (out / "ablation.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_run_ablation_rejects_bad_requests(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown neck"):
        run_ablation(["fpn", "unet"], out_dir=tmp_path, cost_settings=(TINY,), latency_setting=None)
    with pytest.raises(RuntimeError, match="efficientdet.train"):
        run_ablation(["fpn"], out_dir=tmp_path, train_steps=5, cost_settings=(TINY,))


def test_train_steps_call_the_training_function_per_row_and_seed(tmp_path: Path) -> None:
    calls: list[tuple[str, str, int, int, Path, int]] = []

    def fake_train(config, steps: int, run_dir: Path, *, seed: int) -> ShortTrainResult:
        calls.append((config.neck, config.fusion, config.fpn_repeats, steps, run_dir, seed))
        ap = (0.25 if config.fusion == "sum" else 0.5) + 0.1 * seed
        metrics = {"AP": ap, "AP50": 2 * ap, "AP_small": -1.0, "AP_medium": ap, "AP_large": ap}
        return ShortTrainResult(ap, metrics, config.fusion == "sum", run_dir, steps, 1.0)

    def run(train_fn) -> list:
        return run_ablation(
            ["fpn", "bifpn"], out_dir=tmp_path, train_steps=3, train_fn=train_fn,
            train_setting=TINY, cost_settings=(TINY,), latency_setting=None, fusions=("sum",),
            seeds=2, echo=None,
        )

    rows = run(fake_train)
    assert [(c[0], c[1], c[2], c[3], c[5]) for c in calls] == [
        ("fpn", "fast", 2, 3, 0), ("fpn", "fast", 2, 3, 1), ("bifpn", "fast", 1, 3, 0),
        ("bifpn", "fast", 1, 3, 1), ("bifpn", "sum", 1, 3, 0), ("bifpn", "sum", 1, 3, 1),
    ]
    assert calls[5][4] == tmp_path / "train" / "bifpn-sum" / "seed-1"
    assert [r.ap for r in rows] == pytest.approx([0.55, 0.55, 0.30])
    assert rows[0].accuracy.std("AP") == pytest.approx(0.1 / 2**0.5)  # sample std of 0.5, 0.6
    assert rows[0].accuracy.values("AP_small") == []  # COCO's -1: no small boxes
    assert [r.pretrained_backbone for r in rows] == [False, False, True]
    markdown = (tmp_path / "ablation.md").read_text()
    assert "3 steps at tiny: test_efficientnet backbone" in markdown and "2 seed(s) each" in markdown
    assert "| bifpn/sum | 0.300 ± 0.071 | 0.600 ± 0.141 |  | 0.300 ± 0.071 |" in markdown
    assert "| no (from scratch) | 42.29 |" in markdown
    assert (tmp_path / "ablation_ap.png").stat().st_size > 0
    with (tmp_path / "ablation.csv").open() as f:
        records = list(csv.DictReader(f))
    assert [r["ap"] for r in records] == ["0.55", "0.55", "0.3"]
    assert [r["seeds"] for r in records] == ["2", "2", "2"]
    assert [r["pretrained_backbone"] for r in records] == ["false", "false", "true"]

    # Run again: every training is read back from its record, none is repeated.
    def must_not_train(*args, **kwargs):
        raise AssertionError("a recorded training ran again")

    again = run(must_not_train)
    assert [r.ap for r in again] == pytest.approx([0.55, 0.55, 0.30])
    assert all(r.accuracy.reused == 2 for r in again)
    # A study stopped part-way: one record missing is trained again, the others reused.
    (tmp_path / "train" / "bifpn" / "seed-1" / "result.json").unlink()
    calls.clear()
    run(fake_train)
    assert [(c[0], c[1], c[5]) for c in calls] == [("bifpn", "fast", 1)]


def test_cli_arguments_and_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parser = argparse.ArgumentParser()
    ablation_cli.add_arguments(parser)
    defaults = parser.parse_args([])
    assert defaults.necks == list(ablation.ABLATION_NECKS) and defaults.train_steps == 0
    assert defaults.fusions == ["fast", "softmax", "sum"] and defaults.out == Path("runs/ablation")
    with pytest.raises(SystemExit):
        parser.parse_args(["--necks", "unet"])
    args = parser.parse_args(["--necks", "nasfpn", "efm", "--out", str(tmp_path), "--no-latency"])
    monkeypatch.setattr(ablation, "DEFAULT_COST_SETTINGS", (TINY,))
    assert ablation_cli.run(args) == 0
    markdown = (tmp_path / "ablation.md").read_text()
    assert f"efficientdet ablate --necks nasfpn efm --fusions fast softmax sum --out {tmp_path}" in markdown
    assert "Latency" not in markdown and "network GMACs" in markdown
    assert "| nasfpn | 1 |" in markdown and "| efm | 1 |" in markdown


def test_short_train_fn_binds_the_data_batch_and_overrides(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    ablation_cli.add_arguments(parser)
    args = parser.parse_args([
        "--train-steps", "5", "--train-batch", "3", "--data", "d.yaml", "--train-set", "optim.lr=0.01",
    ])
    train_fn = ablation_cli.short_train_fn(args)
    assert train_fn.keywords == {"data": Path("d.yaml"), "batch_size": 3, "overrides": ["optim.lr=0.01"]}
    assert bound_settings(train_fn) == {
        "data": "d.yaml", "batch_size": 3, "overrides": ["optim.lr=0.01"]
    }
    assert ablation_cli._training_options(parser.parse_args([])) == []


@pytest.mark.slow
def test_cli_trains_each_neck_and_reports_ap(
    tmp_path: Path, tiny_demo, monkeypatch: pytest.MonkeyPatch
) -> None:
    from efficientdet.cli.main import main

    monkeypatch.setattr(ablation, "DEFAULT_COST_SETTINGS", (TINY,))
    # The Lite0 detector (ImageNet backbone on disk) with a tiny neck at 128 px.
    tiny_lite0 = AblationSetting("tiny-lite0", "tf_efficientdet_lite0", 8, 1, (128, 128))
    monkeypatch.setattr(ablation, "DEFAULT_TRAIN_SETTING", tiny_lite0)
    out = tmp_path / "out"
    assert main([
        "ablate", "--necks", "fpn", "bifpn", "--fusions", "fast", "--train-steps", "2",
        "--train-batch", "2", "--data", str(tiny_demo.data_yaml),
        "--train-set", "data.num_workers=0", "--no-latency", "--out", str(out),
    ]) == 0
    markdown = (out / "ablation.md").read_text()
    assert f"--train-steps 2 --seeds 1 --train-batch 2 --data {tiny_demo.data_yaml}" in markdown
    assert "2 steps at tiny-lite0: tf_efficientnet_lite0 backbone, width 8" in markdown
    assert "| neck | AP | AP50 | AP small | AP medium | AP large | neck GMACs | ImageNet backbone |" in markdown
    with (out / "ablation.csv").open() as f:
        records = list(csv.DictReader(f))
    assert [r["neck"] for r in records] == ["fpn", "bifpn"]
    for record in records:
        assert 0.0 <= float(record["ap"]) <= 1.0 and record["pretrained_backbone"] == "true"
    assert (out / "train" / "fpn" / "seed-0" / "config.yaml").is_file()
    assert (out / "train" / "bifpn" / "seed-0" / "eval" / "metrics.json").is_file()
    # The record keeps what the training was bound to, so other settings train again.
    record = json.loads((out / "train" / "fpn" / "seed-0" / "result.json").read_text())
    assert record["signature"]["training"] == {
        "data": str(tiny_demo.data_yaml), "batch_size": 2, "overrides": ["data.num_workers=0"]
    }
