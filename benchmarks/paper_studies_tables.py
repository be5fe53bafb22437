"""The README's tables of the paper-claims studies, from the CSVs the studies write.

    python benchmarks/paper_studies_tables.py [OUT]      (default runs/paper-studies)

reads ``OUT/ablation/ablation.csv`` (``efficientdet ablate``) and
``OUT/scaling/scaling_study.csv`` (``efficientdet scaling-study``) and prints three Markdown
tables: the necks against the paper's Table 5, the BiFPN fusion methods against Table 6, and
compound against single-dimension scaling (Figure 6). Every figure comes from the CSVs.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

NECK_NAMES = {
    "fpn": "repeated top-down FPN",
    "pafpn": "repeated FPN + PANet",
    "nasfpn": "NAS-FPN",
    "fcfpn": "fully-connected FPN",
    "bifpn": "BiFPN",
    "bfp": "Balanced FP",
    "mlfpn": "MLFPN",
    "asff": "ASFF",
    "efm": "Exact Fusion Model",
}


def _read(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _pm(row: dict[str, str], key: str) -> str:
    """``mean ± std`` of a metric column, or a dash where the size has no boxes."""
    mean, std = row.get(key, ""), row.get(f"{key}_std", "")
    if mean == "":
        return "-"
    return f"{float(mean):.3f} ± {float(std or 0):.3f}"


def _seed_values(ablation_dir: Path, row: dict[str, str]) -> str:
    """Each seed's AP from the training records, in seed order."""
    import json

    label = row["neck"] if row["fusion"] == "fast" else f"{row['neck']}-{row['fusion']}"
    values = []
    for record in sorted((ablation_dir / "train" / label).glob("seed-*/result.json")):
        values.append(f"{json.loads(record.read_text())['metrics']['AP']:.3f}")
    return " / ".join(values)


def neck_table(rows: list[dict[str, str]], ablation_dir: Path) -> str:
    lines = [
        "| neck | paper AP (Table 5) | AP | seeds | AP50 | AP small | AP medium | AP large "
        "| neck GMACs (Lite0, 320 px) | FLOPs rel. FPN (B3) | neck latency (D0, ms) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if row["fusion"] != "fast":  # BiFPN's other fusions are the fusion table's
            continue
        paper = f"{float(row['paper_ap']):.2f}" if row["paper_ap"] else "-"
        latency = row["neck_ms"] or "-"
        lines.append(
            f"| {NECK_NAMES.get(row['neck'], row['neck'])} | {paper} | {_pm(row, 'ap')} "
            f"| {_seed_values(ablation_dir, row)} | {_pm(row, 'ap50')} | {_pm(row, 'ap_small')} "
            f"| {_pm(row, 'ap_medium')} | {_pm(row, 'ap_large')} "
            f"| {int(row['train_neck_macs']) / 1e9:.3f} | {float(row['B3_macs_ratio']):.2f}x | {latency} |"
        )
    return "\n".join(lines)


def fusion_table(rows: list[dict[str, str]], ablation_dir: Path) -> str:
    bifpn = [row for row in rows if row["neck"] == "bifpn"]
    fast = next((row for row in bifpn if row["fusion"] == "fast"), None)
    lines = [
        "| fusion | paper | AP | seeds | AP50 | neck latency (D0, ms) | rel. fast | 1-thread CPU time (ms) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    paper = {"fast": "Table 5: 44.39", "sum": "Table 5: 43.94 (without weights)",
             "softmax": "Table 6: same AP as fast, 1.26-1.31x slower on GPU", "channel_fast": "-"}
    for row in bifpn:
        ratio = "-"
        if fast is not None and row["neck_ms"] and fast["neck_ms"]:
            ratio = f"{float(row['neck_ms']) / float(fast['neck_ms']):.2f}x"
        lines.append(
            f"| {row['fusion']} | {paper.get(row['fusion'], '-')} | {_pm(row, 'ap')} "
            f"| {_seed_values(ablation_dir, row)} | {_pm(row, 'ap50')} | {row['neck_ms'] or '-'} "
            f"| {ratio} | {row['neck_cpu_ms'] or '-'} |"
        )
    return "\n".join(lines)


def scaling_table(rows: list[dict[str, str]]) -> str:
    lines = [
        "| method | phi | knob | backbone | input | params | GMACs | FLOPs rel. compound | CPU latency (ms) | AP | AP50 | seeds |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        ap = f"{float(row['ap']):.3f} ± {float(row['ap_std'] or 0):.3f}" if row["ap"] else "not trained"
        ap50 = f"{float(row['ap50']):.3f}" if row.get("ap50") else "-"
        latency = f"{float(row['latency_ms']):.0f}" if row["latency_ms"] else "-"
        lines.append(
            f"| {row['method']} | {float(row['phi']):g} | {row['knob']} "
            f"| {row['backbone'].removeprefix('tf_efficientnet_')} | {row['image_size']} "
            f"| {float(row['params_m']):.2f}M | {float(row['gmacs']):.3f} | {float(row['flops_ratio']):.3f} "
            f"| {latency} | {ap} | {ap50} | {row['seeds'] or 0} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default="runs/paper-studies", type=Path)
    args = parser.parse_args()
    ablation_dir = args.out / "ablation"
    ablation = _read(ablation_dir / "ablation.csv")
    print(neck_table(ablation, ablation_dir), end="\n\n")
    print(fusion_table(ablation, ablation_dir), end="\n\n")
    scaling = args.out / "scaling" / "scaling_study.csv"
    if scaling.is_file():
        print(scaling_table(_read(scaling)))


if __name__ == "__main__":
    main()
