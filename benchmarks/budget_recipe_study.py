"""The budgeted recipe (``efficientdet train --data D --minutes M``) on generated datasets of
several kinds and sizes, each at several budgets, with no ``--set`` (or with the same ``--set``
options for every run, as a named variant).

    python benchmarks/budget_recipe_study.py --out runs/budget_study --minutes 5 10
    python benchmarks/budget_recipe_study.py --out runs/family_study --families all --minutes 5 10
    python benchmarks/budget_recipe_study.py --out runs/family_study --families all --minutes 10 \\
        --variant mosaic --set data.mosaic_prob=0.5

generates the datasets (deterministic; reused when already there), runs the command above for
every dataset and budget, one after the other on an otherwise idle machine (the budget is
wall-clock time), and writes ``results.json`` (every run: AP, AP50, wall time, the recipe it
chose) and ``results.md`` as it goes. Runs already in ``results.json`` are skipped, so a
stopped study continues where it was; a variant's runs are stored apart from the plain ones.

Datasets (``--datasets``, the default without ``--families``): the digit scenes (scikit-learn
digits on photo crops, 320 px, 10 classes) with 100, 300 and 1,000 training images, and
scikit-image photo cut-outs (6 classes with sparse COCO ids, mirrored at random, 10 % empty
images) at 480 x 360 / 360 x 480 with objects of 40-140 px and at 640 x 480 with objects of
12-40 px (``benchmarks/photo_objects.py``). Each has its own seed, and the validation images
are drawn separately from the training ones.

Families (``--families``, ``benchmarks/families.py``): ``--sets`` sets of each family (seeds
1, 2, ...; 300 training and 100 validation images), named ``FAMILY-SEED``. ``results.md`` then
also gives, for each family and budget, AP and AP50 as the mean over its sets with their
range, and over the families the mean, the minimum (the family it is) and the worst set.
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
from families import FAMILIES, write_family  # noqa: E402
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
FAMILY_TRAIN, FAMILY_VAL = 300, 100


def family_sets(families: list[str], sets: int, num_train: int = FAMILY_TRAIN,
                num_val: int = FAMILY_VAL) -> dict[str, dict[str, Any]]:
    """``sets`` datasets of each of ``families``: ``FAMILY-SEED`` for seeds 1..sets, with
    ``-nNUM_TRAIN`` for another training size than :data:`FAMILY_TRAIN` (the same validation
    images: each image is a function of the seed, the split and its index)."""
    suffix = "" if num_train == FAMILY_TRAIN else f"-n{num_train}"
    return {
        f"{family}-{seed}{suffix}": {"kind": "family", "family": family, "seed": seed, "num_train": num_train,
                                     "num_val": num_val}
        for family in families for seed in range(1, sets + 1)
    }


def make_dataset(root: Path, name: str, spec: dict[str, Any]) -> Path:
    """Write dataset ``name`` under ``root`` (once for one ``spec``) and return its data.yaml."""
    out = root / name
    stamp = out / "spec.json"
    if (out / "data.yaml").is_file() and stamp.is_file() and json.loads(stamp.read_text()) == spec:
        return out / "data.yaml"
    if spec["kind"] == "digits":
        files = write_demo_dataset(out, seed=spec["seed"], num_train=spec["num_train"], num_val=spec["num_val"])
        path = Path(files.data_yaml)
    elif spec["kind"] == "family":
        path = write_family(out, spec["family"], seed=spec["seed"], num_train=spec["num_train"],
                            num_val=spec["num_val"])
    else:
        path = write_photo_objects(
            out, num_train=spec["num_train"], num_val=spec["num_val"], size=spec["size"], seed=spec["seed"]
        )
    stamp.write_text(json.dumps(spec))
    return path


def run_one(data_yaml: Path, minutes: float, run_dir: Path, overrides: list[str]) -> dict[str, Any]:
    """``efficientdet train --data --minutes`` (with ``--set`` ``overrides``) in a fresh
    process; its metrics and wall time."""
    command = [
        sys.executable, "-m", "efficientdet", "train", "--data", str(data_yaml),
        "--minutes", f"{minutes:g}", "--set", f"run.out_dir={run_dir}", "--set", "run.progress=false",
    ]
    for option in overrides:
        command += ["--set", option]
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


def result_key(name: str, minutes: float, variant: str = "") -> str:
    """``DATASET@MINUTES``, with ``+VARIANT`` for a variant's run."""
    return f"{name}@{minutes:g}" + (f"+{variant}" if variant else "")


def _split_key(key: str) -> tuple[str, float, str]:
    name, rest = key.split("@", 1)
    minutes, _, variant = rest.partition("+")
    return name, float(minutes), variant


def _cell(values: list[float]) -> str:
    """``mean (min-max)`` of one metric over a family's sets."""
    mean = sum(values) / len(values)
    return f"{mean:.3f}" if len(values) == 1 else f"{mean:.3f} ({min(values):.3f}-{max(values):.3f})"


def family_lines(results: dict[str, dict[str, Any]], budgets: list[float], variant: str) -> list[str]:
    """Per family and budget: AP and AP50 over its sets (mean, range); over the families: the
    mean, the minimum of the family means and the worst single set."""
    by_family: dict[str, dict[float, dict[str, list[float]]]] = {}
    worst: dict[float, tuple[float, str]] = {}
    for key, r in results.items():
        name, minutes, var = _split_key(key)
        family = name.rsplit("-", 1)[0]
        if var != variant or family not in FAMILIES or minutes not in budgets:
            continue
        cell = by_family.setdefault(family, {}).setdefault(minutes, {"AP": [], "AP50": []})
        cell["AP"].append(r["AP"])
        cell["AP50"].append(r["AP50"])
        if minutes not in worst or r["AP50"] < worst[minutes][0]:
            worst[minutes] = (r["AP50"], name)
    if not by_family:
        return []
    header = "| family | " + " | ".join(f"{m:g} min: sets, AP, AP50 (mean, range)" for m in budgets) + " |"
    lines = ["", header, "|" + "---|" * (1 + len(budgets))]
    for family in FAMILIES:
        if family not in by_family:
            continue
        cells = []
        for m in budgets:
            c = by_family[family].get(m)
            cells.append(f"{len(c['AP50'])}, {_cell(c['AP'])}, {_cell(c['AP50'])}" if c else "not run")
        lines.append(f"| {family} | " + " | ".join(cells) + " |")
    for m in budgets:
        means = {f: sum(v[m]["AP50"]) / len(v[m]["AP50"]) for f, v in by_family.items() if m in v}
        if not means:
            continue
        low = min(means, key=means.__getitem__)
        lines.append(
            f"\nAt {m:g} min, {len(means)} families: AP50 mean {sum(means.values()) / len(means):.3f}, "
            f"minimum {means[low]:.3f} ({low}); worst set {worst[m][1]} ({worst[m][0]:.3f})"
        )
    return lines


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


def write_markdown(results: dict[str, dict[str, Any]], budgets: list[float], path: Path,
                   variants: dict[str, list[str]] | None = None) -> None:
    """The table of every dataset that ran, a section per variant (the plain plan first), the
    family summary under each, and the digit sets' spread."""
    variants = variants or {}
    seen = {_split_key(k)[0] for k in results}
    names = [n for n in DATASETS if n in seen] + [n for n in dict.fromkeys(_split_key(k)[0] for k in results)
                                                    if n not in DATASETS]
    lines: list[str] = []
    for variant in sorted({_split_key(k)[2] for k in results}, key=lambda v: (v != "", v)):
        options = " ".join(f"--set {o}" for o in variants.get(variant, []))
        lines.append(f"## {variant or 'plan'}" + (f" ({options})" if options else "") + "\n")
        lines.append("| dataset | train / val images | " + " | ".join(
            f"{m:g} min: AP / AP50 (wall min)" for m in budgets) + " |")
        lines.append("|" + "---|" * (2 + len(budgets)))
        for name in names:
            runs = [results.get(result_key(name, m, variant)) for m in budgets]
            if not any(runs):
                continue
            spec = {**DATASETS.get(name, {}), **next(r for r in runs if r)}  # older records: no sizes
            sizes = f"{spec.get('num_train', '?')} / {spec.get('num_val', '?')}"
            cells = [f"{r['AP']:.3f} / {r['AP50']:.3f} ({r['wall_minutes']:.1f})" if r else "not run" for r in runs]
            lines.append(f"| {name} | {sizes} | " + " | ".join(cells) + " |")
        lines += family_lines(results, budgets, variant)
        if not variant:
            lines += spread_lines(results, budgets)
        lines.append("")
    path.write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/budget_study"))
    parser.add_argument("--minutes", type=float, nargs="+", default=[5.0, 10.0])
    parser.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=None,
                        help="the generated digit and photo sets (default: all of them, without --families)")
    parser.add_argument("--families", nargs="+", choices=["all", *FAMILIES], default=[],
                        help="dataset families (benchmarks/families.py); 'all' for every one")
    parser.add_argument("--sets", type=int, default=2, help="sets of each family (seeds 1..N)")
    parser.add_argument("--num-train", type=int, default=FAMILY_TRAIN, help="training images of a family set")
    parser.add_argument("--num-val", type=int, default=FAMILY_VAL, help="validation images of a family set")
    parser.add_argument("--variant", default="", help="a name for the runs with these --set options")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="an option for every run (needs --variant)")
    args = parser.parse_args()
    if args.overrides and not args.variant:
        parser.error("--set needs --variant NAME, so that those runs are stored apart from the plain ones")
    families = list(FAMILIES) if "all" in args.families else args.families
    datasets = args.datasets if args.datasets is not None else ([] if families else list(DATASETS))
    specs = {**{n: DATASETS[n] for n in datasets},
             **family_sets(families, args.sets, args.num_train, args.num_val)}
    args.out.mkdir(parents=True, exist_ok=True)
    store = args.out / "results.json"
    saved = json.loads(store.read_text()) if store.is_file() else {}
    results: dict[str, dict[str, Any]] = saved.get("runs", saved)  # older files: the runs alone
    variants: dict[str, list[str]] = saved.get("variants", {})
    if args.variant:
        variants[args.variant] = args.overrides
    for name, spec in specs.items():
        data_yaml = make_dataset(args.out / "data", name, spec)
        for minutes in args.minutes:
            key = result_key(name, minutes, args.variant)
            if key in results:
                continue
            print(f"{key} ...", flush=True)
            run_dir = args.out / "runs" / key.replace("@", "_").replace("+", "_")
            results[key] = {**run_one(data_yaml, minutes, run_dir, args.overrides), **spec}
            r = results[key]
            print(f"{key}: AP {r['AP']:.3f} AP50 {r['AP50']:.3f} in {r['wall_minutes']:.1f} min", flush=True)
            store.write_text(json.dumps({"runs": results, "variants": variants}, indent=1))
            write_markdown(results, args.minutes, args.out / "results.md", variants)
    # Every budget on record, so a later call for a few datasets keeps the other columns.
    budgets = sorted({_split_key(key)[1] for key in results} | set(args.minutes))
    store.write_text(json.dumps({"runs": results, "variants": variants}, indent=1))
    write_markdown(results, budgets, args.out / "results.md", variants)
    print((args.out / "results.md").read_text())


if __name__ == "__main__":
    main()
