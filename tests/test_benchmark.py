"""``efficientdet benchmark``: the variants it plans, the table, CSV, JSON and chart it writes,
and the verdict it draws from them."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from efficientdet.cli.main import main
from efficientdet.data import load_dataset
from efficientdet.deploy.benchmark import BenchmarkRow, fastest_within, plan_variants, write_report
from efficientdet.modeling.checkpoint import save_checkpoint
from efficientdet.modeling.factory import create_model


def test_plan_follows_the_formats_precisions_and_the_cpu() -> None:
    variants, skipped = plan_variants(["pytorch", "openvino"], ["fp32", "bf16"], bf16=False)
    assert [v.name for v in variants] == ["pytorch fp32", "pytorch-optimized fp32", "openvino fp32"]
    assert {r.variant for r in skipped} == {"pytorch-optimized bf16", "openvino bf16"}
    assert all("bf16" in r.note for r in skipped)
    variants, _ = plan_variants(["openvino"], ["bf16", "int8"], bf16=True)
    assert [v.name for v in variants] == ["openvino bf16", "openvino int8"]
    variants, skipped = plan_variants(device="cuda")
    assert {v.fmt for v in variants} == {"pytorch", "onnx"}
    assert {r.fmt for r in skipped} >= {"openvino", "litert"}
    with pytest.raises(ValueError, match="tensorrt"):
        plan_variants(["tensorrt"])


def _row(name: str, latency: float | None, ap: float | None) -> BenchmarkRow:
    fmt, precision = name.split()
    return BenchmarkRow(name, fmt, precision, latency_ms=latency, ap=ap)


def test_fastest_within_keeps_to_the_accuracy_of_fp32() -> None:
    rows = [_row("pytorch fp32", 100.0, 0.50), _row("onnx fp32", 40.0, 0.50),
            _row("onnx int8", 20.0, 0.48), _row("openvino int8", 25.0, 0.495),
            _row("litert int8", None, None)]
    best = fastest_within(rows)
    assert best is not None and best.variant == "openvino int8"  # onnx int8 lost 0.02 AP
    assert fastest_within(rows, tolerance=0.05).variant == "onnx int8"  # type: ignore[union-attr]
    no_ap = [_row("pytorch fp32", 30.0, None), _row("onnx fp32", 10.0, None)]
    assert fastest_within(no_ap).variant == "onnx fp32"  # type: ignore[union-attr]
    assert fastest_within([_row("litert fp32", None, None)]) is None


def test_report_files(tmp_path) -> None:
    rows = [_row("pytorch fp32", 100.0, 0.5), _row("onnx fp32", 40.0, 0.5),
            BenchmarkRow("litert int8", "litert", "int8", note="not installed")]
    paths = write_report(rows, tmp_path, ["# header line"])
    assert set(paths) == {"md", "csv", "json", "png"}
    text = paths["md"].read_text()
    assert text.startswith("# header line") and "| onnx fp32 |" in text
    assert "Fastest within 0.01 AP of pytorch fp32: **onnx fp32** (40.0 ms)" in text
    table = list(csv.DictReader(paths["csv"].open()))
    assert [r["variant"] for r in table] == ["pytorch fp32", "onnx fp32", "litert int8"]
    assert table[2]["note"] == "not installed" and table[2]["latency_ms"] == ""
    assert json.loads(paths["json"].read_text())["fastest_within_0.01_ap"] == "onnx fp32"
    assert paths["png"].stat().st_size > 1000


def test_benchmark_command_on_a_small_model(tiny_demo, tmp_path, capsys) -> None:
    pytest.importorskip("onnxruntime")
    data = load_dataset(tiny_demo.data_yaml, "val")
    torch.manual_seed(0)
    model = create_model("efficientdet_test", num_classes=data.num_classes)
    weights = save_checkpoint(
        model, tmp_path / "tiny.safetensors",
        metadata={"class_names": data.class_names, "label_to_category_id": data.label_to_category_id},
    )
    out = tmp_path / "bench"
    assert main(["benchmark", "--weights", str(weights), "--data", str(tiny_demo.data_yaml),
                 "--formats", "pytorch", "onnx", "--precisions", "fp32", "--repeats", "3",
                 "--threads", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "fastest within 0.01 AP of pytorch fp32:" in printed
    result = json.loads((out / "benchmark.json").read_text())
    rows = {r["variant"]: r for r in result["rows"]}
    assert set(rows) == {"pytorch fp32", "pytorch-optimized fp32", "onnx fp32"}
    for row in rows.values():
        assert row["latency_ms"] > 0 and row["throughput"] > 0 and row["size_mb"] > 0
        assert len(row["times_ms"]) == 3
    # The same network in every format: the same accuracy.
    assert rows["onnx fp32"]["ap"] == pytest.approx(rows["pytorch fp32"]["ap"], abs=1e-3)
    assert (out / "exports" / "model-onnx-fp32.onnx").is_file()
    assert "1 threads" in result["header"][3]
