import argparse
import csv
import json
from pathlib import Path

import pytest

from efficientdet.cli import ablate as ablation_cli
from efficientdet.studies import ablation
from efficientdet.studies.ablation import (
    B3_SETTING,
    AblationRow,
    AblationSetting,
    Latency,
    NeckCost,
    ablation_config,
    format_markdown,
    measure_latencies,
    paper_row,
    run_ablation,
    write_csv,
)
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


# The paper's Table 5 (arXiv 1911.09070; docs/REFERENCE.md section 6), EfficientNet-B3
# backbone: COCO val AP, and params and FLOPs relative to the repeated top-down FPN.
TABLE_5 = {
    ("fpn", "fast"): (42.29, 1.00, 1.00),
    ("pafpn", "fast"): (44.08, 1.00, 1.00),
    ("nasfpn", "fast"): (43.16, 0.71, 0.72),
    ("fcfpn", "fast"): (43.06, 1.24, 1.21),
    ("bifpn", "sum"): (43.94, 0.88, 0.67),  # "BiFPN without weights"
    ("bifpn", "fast"): (44.39, 0.88, 0.68),  # "BiFPN with weights"
}


def test_paper_rows_are_table_5() -> None:
    # Necks other than BiFPN are only compared with fast fusion (run_ablation's rows).
    keys = [(n, "fast") for n in ablation.ABLATION_NECKS if n != "bifpn"]
    keys += [("bifpn", f) for f in ablation.FUSION_COMPARISON]
    for neck, fusion in keys:
        row = paper_row(neck, fusion)
        got = None if row is None else (row.ap, row.params_ratio, row.flops_ratio)
        assert got == TABLE_5.get((neck, fusion)), (neck, fusion)


def test_necks_at_b3_cost_what_table_5_says(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each neck built at the B3 setting (D3's backbone, width 160, 6 repeats) against the
    paper's relative params and FLOPs, within 0.03."""
    # The whole detector's multiply-adds are not compared here (tests/test_registry.py holds
    # them to the paper's Table 2); counting them would take most of this test's time.
    monkeypatch.setattr(ablation, "count_multiply_adds", lambda model, image_size: 0)
    rows = run_ablation(
        ["fpn", "nasfpn", "fcfpn", "bifpn"], out_dir=tmp_path, cost_settings=(B3_SETTING,),
        latency_setting=None, fusions=("fast",), echo=None,
    )
    assert [r.label for r in rows] == ["fpn", "nasfpn", "fcfpn", "bifpn"]
    for row in rows:
        _, params, flops = TABLE_5[(row.neck, row.fusion)]
        cost = row.costs["B3"]
        assert abs(cost.params_ratio - params) <= 0.03, (row.label, cost.params_ratio, params)
        assert abs(cost.macs_ratio - flops) <= 0.03, (row.label, cost.macs_ratio, flops)
    assert rows[0].costs["B3"].repeats == 12 and rows[3].costs["B3"].repeats == 6


def test_run_ablation_rows_ratios_and_files(tmp_path: Path) -> None:
    rows = run_ablation(
        ["fpn", "pafpn", "bifpn", "bfp"], out_dir=tmp_path, cost_settings=(TINY, TINY_WIDE),
        latency_setting=None, fusions=("fast", "sum"), echo=None,
    )
    # BiFPN's other fusions come right after it.
    assert [r.label for r in rows] == ["fpn", "pafpn", "bifpn", "bifpn/sum", "bfp"]
    by_label = {r.label: r for r in rows}
    for setting in (TINY, TINY_WIDE):
        fpn, pafpn = by_label["fpn"].costs[setting.name], by_label["pafpn"].costs[setting.name]
        assert fpn.params_ratio == fpn.macs_ratio == 1.0
        assert fpn.repeats == 2 * pafpn.repeats == 2 * setting.repeats
        # Table 5: FPN + PANet costs what the repeated FPN does (at twice the repeats).
        assert (pafpn.params, pafpn.macs) == (fpn.params, fpn.macs)
        # Fast fusion adds one weight per fused input: 8 nodes of 2 or 3 inputs per cell.
        weighted, plain = by_label["bifpn"].costs[setting.name], by_label["bifpn/sum"].costs[setting.name]
        assert weighted.params - plain.params == setting.repeats * (2 + 2 + 2 + 2 + 3 + 3 + 3 + 2)
        for row in rows:
            cost = row.costs[setting.name]
            assert cost.params_ratio == cost.params / fpn.params and cost.macs_ratio == cost.macs / fpn.macs
            assert 0 < cost.params < cost.model_params and 0 < cost.macs < cost.model_macs
    assert all(r.latency is None and r.ap is None for r in rows)
    assert "| bifpn/sum | 1 |" in (tmp_path / "ablation.md").read_text()
    with (tmp_path / "ablation.csv").open() as f:
        records = list(csv.DictReader(f))
    assert [(r["neck"], r["fusion"]) for r in records] == [(r.neck, r.fusion) for r in rows]
    png = (tmp_path / "ablation.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def _fixed_rows() -> list[AblationRow]:
    """Three rows with made-up costs and latencies, for the writers."""

    def cost(repeats: int, params: int, macs: int, ratios: tuple[float, float]) -> dict[str, NeckCost]:
        return {"s": NeckCost(repeats, params, macs, params + 2_000_000, macs + 5 * 10**9, *ratios)}

    return [
        AblationRow("fpn", "fast", cost(2, 1_000_000, 4 * 10**9, (1.0, 1.0)),
                    Latency(10.0, 40.0, 9.0, 38.0, 8.0, 30.0)),
        AblationRow("bifpn", "fast", cost(1, 880_000, 2_720_000_000, (0.88, 0.68)),
                    Latency(8.0, 36.0, 7.0, 35.0, 6.0, 28.0)),
        AblationRow("bifpn", "softmax", cost(1, 880_000, 2_800_000_000, (0.88, 0.70)),
                    Latency(10.4, 37.0, 9.1, 36.0, 7.2, 29.0)),
    ]


def test_markdown_and_csv_from_fixed_numbers(tmp_path: Path) -> None:
    setting = AblationSetting("s", "efficientdet_test", 16, 1, (128, 128))
    rows = _fixed_rows()
    markdown = format_markdown(rows, (setting,), setting, 5, command="efficientdet ablate --necks fpn bifpn")
    lines = markdown.splitlines()
    assert "Command: `efficientdet ablate --necks fpn bifpn`" in lines
    # Table 5's columns: repeats, params, GMACs, ratios, then the paper's row where there is one.
    assert "| fpn | 2 | 1.00M | 4.00 | 1.00x | 1.00x | 1.00x | 1.00x | 42.29 |" in lines
    assert "| bifpn | 1 | 0.880M | 2.72 | 0.88x | 0.68x | 0.88x | 0.68x | 44.39 |" in lines
    assert "| bifpn/softmax | 1 | 0.880M | 2.80 | 0.88x | 0.70x |  |  |  |" in lines
    # The whole detector and the latencies, as given.
    assert "| fpn | 3.00M | 9.00 | 10.0 | 9.0 | 8.0 | 40.0 | 38.0 | 30.0 |" in lines
    assert "| bifpn/softmax | 2.88M | 7.80 | 10.4 | 9.1 | 7.2 | 37.0 | 36.0 | 29.0 |" in lines
    assert "fastest of 5 runs" in markdown
    # Table 6's speed column: each fusion relative to fast fusion.
    assert "fast: median 8.0 ms (1.00x fast), best 7.0 ms (1.00x), 1-thread CPU 6.0 ms (1.00x)" in markdown
    assert "softmax: median 10.4 ms (1.30x fast), best 9.1 ms (1.30x), 1-thread CPU 7.2 ms (1.20x)" in markdown
    assert "Validation AP" not in markdown  # nothing was trained
    untimed = format_markdown(rows, (setting,), None, 5)
    assert "Latency" not in untimed and "neck ms" not in untimed and "1.30x fast" not in untimed
    assert "| fpn | 3.00M | 9.00 |" in untimed.splitlines()

    write_csv(rows, tmp_path / "ablation.csv")
    with (tmp_path / "ablation.csv").open() as f:
        records = list(csv.DictReader(f))
    assert [(r["neck"], r["fusion"]) for r in records] == [
        ("fpn", "fast"), ("bifpn", "fast"), ("bifpn", "softmax")
    ]
    first, last = records[0], records[2]
    assert (first["s_repeats"], first["s_neck_params"], first["s_neck_macs"]) == ("2", "1000000", "4000000000")
    assert (first["s_model_params"], first["s_model_macs"]) == ("3000000", "9000000000")
    assert (first["paper_params_ratio"], first["paper_flops_ratio"], first["paper_ap"]) == ("1.0", "1.0", "42.29")
    assert (last["s_macs_ratio"], last["paper_ap"], last["neck_ms"], last["model_cpu_ms"]) == ("0.7", "", "10.4", "29.0")
    assert (last["ap"], last["seeds"], last["pretrained_backbone"]) == ("", "", "")


def test_measure_latencies_times_the_neck_and_the_network() -> None:
    (lat,) = measure_latencies([ablation_config(TINY, "bifpn")], runs=2, warmup=0)
    assert 0 < lat.neck_best_ms <= lat.neck_ms and 0 < lat.model_best_ms <= lat.model_ms
    # The neck is part of the network: less single-thread CPU time.
    assert 0 < lat.neck_cpu_ms < lat.model_cpu_ms


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
            train_setting=TINY, cost_settings=(), latency_setting=None, fusions=("sum",),
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
