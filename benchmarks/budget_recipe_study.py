"""The budgeted recipe (``efficientdet train --data D --minutes M``) on generated datasets of
several kinds and sizes, each at several budgets, with no ``--set``.

    python benchmarks/budget_recipe_study.py --out runs/budget_study --minutes 5 10

generates the datasets below (deterministic; reused when already there), runs the command
above for every dataset and budget, one after the other on an otherwise idle machine (the
budget is wall-clock time), and writes ``results.json`` (every run: AP, AP50, wall time, the
recipe it chose) and ``results.md`` (the table in the README) as it goes. Runs already in
``results.json`` are skipped, so a stopped study continues where it was.

Datasets: the digit scenes (scikit-learn digits on photo crops, 320 px, 10 classes) with 100,
300 and 1,000 training images, and scikit-image photo cut-outs (6 classes with sparse COCO ids,
mirrored at random, 10 % empty images) at 480 x 360 / 360 x 480 with objects of 40-140 px and
at 640 x 480 with objects of 12-40 px (``benchmarks/photo_objects.py``). Each has its own seed,
and the validation images are drawn separately from the training ones.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from efficientdet.data import write_demo_dataset  # noqa: E402
from photo_objects import write_photo_objects  # noqa: E402

DATASETS: dict[str, dict[str, Any]] = {
    "digits-100": {"kind": "digits", "num_train": 100, "num_val": 100, "seed": 101},
    "digits-300": {"kind": "digits", "num_train": 300, "num_val": 100, "seed": 102},
    # Two more 300-image digit sets: the spread of the goal across datasets.
    "digits-300-b": {"kind": "digits", "num_train": 300, "num_val": 100, "seed": 106},
    "digits-300-c": {"kind": "digits", "num_train": 300, "num_val": 100, "seed": 107},
    "digits-1000": {"kind": "digits", "num_train": 1000, "num_val": 150, "seed": 103},
    "objects-300": {"kind": "objects", "size": "medium", "num_train": 300, "num_val": 100, "seed": 104},
    "small-objects-300": {"kind": "objects", "size": "small", "num_train": 300, "num_val": 100, "seed": 105},
}


def make_dataset(root: Path, name: str) -> Path:
    """Write dataset ``name`` under ``root`` (once) and return its data.yaml."""
    spec = DATASETS[name]
    out = root / name
    if (out / "data.yaml").is_file():
        return out / "data.yaml"
    if spec["kind"] == "digits":
        files = write_demo_dataset(out, seed=spec["seed"], num_train=spec["num_train"], num_val=spec["num_val"])
        return Path(files.data_yaml)
    return write_photo_objects(
        out, num_train=spec["num_train"], num_val=spec["num_val"], size=spec["size"], seed=spec["seed"]
    )


def run_one(data_yaml: Path, minutes: float, run_dir: Path) -> dict[str, Any]:
    """``efficientdet train --data --minutes`` in a fresh process; its metrics and wall time."""
    command = [
        sys.executable, "-m", "efficientdet", "train", "--data", str(data_yaml),
        "--minutes", f"{minutes:g}", "--set", f"run.out_dir={run_dir}", "--set", "run.progress=false",
    ]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - start
    (run_dir.parent / f"{run_dir.name}.log").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    recipe = done.stdout.split("\n\n")[0]
    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())["metrics"]
    steps = sum(1 for _ in (run_dir / "steps.csv").open()) - 1 if (run_dir / "steps.csv").is_file() else None
    return {
        "AP": metrics["AP"], "AP50": metrics["AP50"], "AP_small": metrics["AP_small"],
        "wall_minutes": wall / 60, "recipe": recipe, "logged_steps": steps,
    }


def write_markdown(results: dict[str, dict[str, Any]], budgets: list[float], path: Path) -> None:
    header = "| dataset | train / val images | " + " | ".join(
        f"{m:g} min: AP / AP50 (wall min)" for m in budgets
    ) + " |"
    lines = [header, "|" + "---|" * (2 + len(budgets))]
    for name, spec in DATASETS.items():
        cells = []
        for m in budgets:
            r = results.get(f"{name}@{m:g}")
            cells.append(
                f"{r['AP']:.3f} / {r['AP50']:.3f} ({r['wall_minutes']:.1f})" if r else "not run"
            )
        lines.append(f"| {name} | {spec['num_train']} / {spec['num_val']} | " + " | ".join(cells) + " |")
    lines += spread_lines(results, budgets)
    path.write_text("\n".join(lines) + "\n")


def spread_lines(results: dict[str, dict[str, Any]], budgets: list[float]) -> list[str]:
    """Mean, min and max AP50 over the datasets of one kind and size that differ in seed only
    (``digits-300``, ``digits-300-b``, ...), where more than one ran."""
    groups: dict[str, list[str]] = {}
    for name in DATASETS:
        base = name if name.count("-") < 2 or not name.split("-")[-1].isalpha() else name.rsplit("-", 1)[0]
        groups.setdefault(base, []).append(name)
    lines = []
    for base, names in groups.items():
        for m in budgets:
            ap50 = [results[f"{n}@{m:g}"]["AP50"] for n in names if f"{n}@{m:g}" in results]
            if len(ap50) > 1:
                lines.append(
                    f"\n{base} sets at {m:g} min ({len(ap50)} seeds): AP50 mean {sum(ap50) / len(ap50):.3f}, "
                    f"min {min(ap50):.3f}, max {max(ap50):.3f}"
                )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/budget_study"))
    parser.add_argument("--minutes", type=float, nargs="+", default=[5.0, 10.0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    store = args.out / "results.json"
    results: dict[str, dict[str, Any]] = json.loads(store.read_text()) if store.is_file() else {}
    for name in args.datasets:
        data_yaml = make_dataset(args.out / "data", name)
        for minutes in args.minutes:
            key = f"{name}@{minutes:g}"
            if key in results:
                continue
            print(f"{key} ...", flush=True)
            results[key] = run_one(data_yaml, minutes, args.out / "runs" / key.replace("@", "_"))
            r = results[key]
            print(f"{key}: AP {r['AP']:.3f} AP50 {r['AP50']:.3f} in {r['wall_minutes']:.1f} min", flush=True)
            store.write_text(json.dumps(results, indent=1))
            write_markdown(results, args.minutes, args.out / "results.md")
    # Every budget on record, so a later call for a few datasets keeps the other columns.
    budgets = sorted({float(key.split("@")[1]) for key in results} | set(args.minutes))
    write_markdown(results, budgets, args.out / "results.md")
    print((args.out / "results.md").read_text())


if __name__ == "__main__":
    main()
