"""Prediction at scale: lazy sources, JSON Lines written as the run goes, resume after a kill,
shards that add up to the whole run."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from efficientdet.cli import main
from efficientdet.inference.predict import (
    FAILURES_FILE,
    PREDICTIONS_FILE,
    RECORDS_FILE,
    iter_sources,
    parse_shard,
    read_records,
    run_prediction,
)

REPO = Path(__file__).resolve().parents[1]


def _image(path: Path, size=(64, 48), color=(30, 60, 90)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def odd_widths_detect(images: list[Image.Image]) -> list[dict[str, torch.Tensor]]:
    """One box over the left half for images of odd width, nothing for the others."""
    out = []
    for im in images:
        w, h = im.size
        if w % 2:
            out.append({"boxes": torch.tensor([[0.0, 0.0, w / 2, h]]),
                        "scores": torch.tensor([0.8]), "labels": torch.tensor([1])})
        else:
            out.append({"boxes": torch.zeros(0, 4), "scores": torch.zeros(0),
                        "labels": torch.zeros(0, dtype=torch.int64)})
    return out


def _corpus(root: Path, count: int = 9) -> list[Path]:
    return [_image(root / f"{i:02d}.png", size=(40 + i, 30)) for i in range(count)]


def _key(record: dict) -> str:
    return json.dumps(record, sort_keys=True)


# --- sources -------------------------------------------------------------------------------


def test_iter_sources_reads_each_folder_only_when_it_gets_there(tmp_path):
    _image(tmp_path / "a" / "2.png")
    _image(tmp_path / "a" / "1.png")
    (tmp_path / "b").mkdir()
    sources = iter_sources([str(tmp_path / "*")])
    assert next(sources) == tmp_path / "a" / "1.png"
    # Folder b is listed after the first file came out: a file added now is still found.
    _image(tmp_path / "b" / "0.png")
    assert list(sources) == [tmp_path / "a" / "2.png", tmp_path / "b" / "0.png"]


def test_iter_sources_glob_order_recursion_and_hidden(tmp_path):
    for name in ["z.png", "b/y.png", "b/c/x.jpg", ".hid/w.png", "b/.v.png"]:
        _image(tmp_path / name)
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    found = list(iter_sources([str(tmp_path / "**" / "*.*")]))
    # Each folder's entries in name order, a folder's own files before its sub-folders'.
    assert found == [tmp_path / "z.png", tmp_path / "b" / "y.png", tmp_path / "b" / "c" / "x.jpg"]


def test_parse_shard():
    assert parse_shard("2/5") == (2, 5)
    for bad in ["5/5", "-1/3", "1", "a/b", "0/0"]:
        with pytest.raises(ValueError, match="shard"):
            parse_shard(bad)


# --- records ---------------------------------------------------------------------------------


def test_records_cover_every_image_even_without_detections(tmp_path):
    sources = _corpus(tmp_path / "in", 4)
    report = run_prediction(odd_widths_detect, sources, tmp_path / "out", progress=False,
                            class_names=["cat", "dog"], label_to_category_id=[3, 8])
    records = list(read_records(tmp_path / "out"))
    assert [r["file_name"] for r in records] == [p.as_posix() for p in sources]
    assert [r["index"] for r in records] == [0, 1, 2, 3]
    assert [(r["width"], r["height"]) for r in records] == [(40, 30), (41, 30), (42, 30), (43, 30)]
    assert records[0]["detections"] == [] and records[0]["output"] == "00.png"
    assert records[1]["detections"] == [
        {"box": [0.0, 0.0, 20.5, 30.0], "score": 0.8, "label": 1, "category_id": 8,
         "category": "dog"}
    ]
    coco = json.loads((tmp_path / "out" / PREDICTIONS_FILE).read_text())
    # Files named by a number keep it as image_id (COCO's convention).
    assert [(r["image_id"], r["bbox"]) for r in coco] == [(1, [0.0, 0.0, 20.5, 30.0]),
                                                          (3, [0.0, 0.0, 21.5, 30.0])]
    assert report.images == 4 and report.detections == 2


def test_shards_add_up_to_the_whole_run(tmp_path):
    sources = [*_corpus(tmp_path / "in", 10), tmp_path / "in" / "missing.png"]
    patterns = [str(tmp_path / "in"), str(tmp_path / "in" / "missing.png")]
    run_prediction(odd_widths_detect, iter_sources(patterns), tmp_path / "whole", progress=False)
    whole = {_key(r) for r in read_records(tmp_path / "whole")}
    assert len(whole) == 10

    shards, failures = [], []
    for i in range(3):
        out = tmp_path / f"shard{i}"
        report = run_prediction(odd_widths_detect, iter_sources(patterns), out, progress=False,
                                shard=(i, 3))
        shards.append([_key(r) for r in read_records(out)])
        failures.extend(f.path for f in report.failures)
    union = [k for shard in shards for k in shard]
    assert len(union) == len(set(union)) == 10  # no image in two shards
    assert set(union) == whole
    assert failures == [str(sources[-1])]  # the missing file: in exactly one shard
    assert [len(s) for s in shards] == [4, 3, 3]  # index modulo 3 over 11 inputs


# --- resume ----------------------------------------------------------------------------------


def test_resume_drops_a_torn_line_and_writes_nothing_twice(tmp_path):
    sources = [*_corpus(tmp_path / "in", 7), tmp_path / "in" / "gone.png"]
    full = tmp_path / "full"
    run_prediction(odd_widths_detect, sources, full, progress=False, batch_size=2)
    expected = [_key(r) for r in read_records(full)]

    cut = tmp_path / "cut"
    run_prediction(odd_widths_detect, sources, cut, progress=False, batch_size=2)
    data = (cut / RECORDS_FILE).read_bytes()
    lines = data.splitlines(keepends=True)
    # As if killed while writing the 4th record: 3 whole lines and half of the next.
    (cut / RECORDS_FILE).write_bytes(b"".join(lines[:3]) + lines[3][: len(lines[3]) // 2])
    (cut / FAILURES_FILE).write_bytes(b"")
    for picture in ["03.png", "04.png", "05.png", "06.png"]:
        (cut / picture).unlink()

    seen: list[int] = []

    def counting(images):
        seen.extend(im.width for im in images)
        return odd_widths_detect(images)

    report = run_prediction(counting, sources, cut, progress=False, batch_size=2, resume=True)
    assert [_key(r) for r in read_records(cut)] == expected
    assert seen == [43, 44, 45, 46]  # only what was not complete
    assert report.resumed == 3 and report.images == 4
    assert [f.path for f in report.failures] == [str(sources[-1])]
    assert sorted(p.name for p in cut.glob("*.png")) == [f"{i:02d}.png" for i in range(7)]
    assert json.loads((cut / PREDICTIONS_FILE).read_text()) == json.loads(
        (full / PREDICTIONS_FILE).read_text()
    )


def test_resume_keeps_output_names_apart(tmp_path):
    sources = [_image(tmp_path / d / "x.png", size=(41, 30)) for d in "abc"]
    run_prediction(odd_widths_detect, sources, tmp_path / "out", progress=False, batch_size=1)
    lines = (tmp_path / "out" / RECORDS_FILE).read_bytes().splitlines(keepends=True)
    (tmp_path / "out" / RECORDS_FILE).write_bytes(lines[0])
    run_prediction(odd_widths_detect, sources, tmp_path / "out", progress=False, resume=True)
    assert [r["output"] for r in read_records(tmp_path / "out")] == ["x.png", "x_1.png", "x_2.png"]


def test_resume_refuses_changed_inputs(tmp_path):
    sources = _corpus(tmp_path / "in", 3)
    run_prediction(odd_widths_detect, sources, tmp_path / "out", progress=False)
    with pytest.raises(ValueError, match="inputs changed"):
        run_prediction(odd_widths_detect, sources[1:], tmp_path / "out", progress=False,
                       resume=True)


def test_resume_refuses_an_input_renamed_before_the_last_record(tmp_path):
    sources = _corpus(tmp_path / "in", 4)
    run_prediction(odd_widths_detect, sources, tmp_path / "out", progress=False, batch_size=2)
    records = list(read_records(tmp_path / "out"))
    order = "".join(p.as_posix() + "\n" for p in sources)
    assert records[-1]["inputs_sha256"] == hashlib.sha256(order.encode()).hexdigest()[:16]
    # As if killed after the first batch (inputs 0 and 1 done), then input 0 renamed: the
    # count and the file at the resume point (input 1) are unchanged; only the digest sees it.
    (tmp_path / "out" / RECORDS_FILE).write_text(
        "".join(json.dumps(r) + "\n" for r in records[:2])
    )
    renamed = sources[0].with_name("00b.png")
    sources[0].rename(renamed)
    with pytest.raises(ValueError, match="inputs before .*01.png .input 1. were added to"):
        run_prediction(odd_widths_detect, [renamed, *sources[1:]], tmp_path / "out",
                       progress=False, resume=True)


# --- the command, killed and resumed ------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import efficientdet as ed

    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    model = ed.create_model("efficientdet_test", num_classes=3)
    return ed.save_checkpoint(model, path, metadata={"class_names": ["a", "b", "c"]})


def _cli(*args: str | Path, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return subprocess.Popen(
        [sys.executable, "-m", "efficientdet", *map(str, args)], cwd=cwd, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def test_predict_killed_with_sigkill_resumes_to_the_uninterrupted_result(
    tmp_path, tiny_checkpoint, monkeypatch
):
    import numpy as np

    rng = np.random.default_rng(0)
    (tmp_path / "imgs").mkdir()
    for i in range(24):
        pixels = rng.integers(0, 255, (90 + i, 120, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / "imgs" / f"{i:03d}.png")
    options = ["--weights", tiny_checkpoint, "--batch-size", "2", "--score-threshold", "0.0",
               "--max-detections", "5", "--quiet"]

    run = _cli("predict", "imgs", "--out", "killed", *options, cwd=tmp_path)
    records = tmp_path / "killed" / RECORDS_FILE
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and run.poll() is None:
        if records.exists() and records.read_bytes().count(b"\n") >= 4:
            break
        time.sleep(0.005)
    assert run.poll() is None, "the run ended before it could be killed"
    run.send_signal(signal.SIGKILL)
    run.wait(timeout=30)
    written = records.read_bytes().count(b"\n")
    assert 4 <= written < 24

    resumed = _cli("predict", "--resume", "killed", "--quiet", cwd=tmp_path)
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert f"resumed after {written} records" in out

    monkeypatch.chdir(tmp_path)  # the uninterrupted run in this process: no second start-up
    assert main(["predict", "imgs", "--out", "whole", *map(str, options)]) == 0

    got = [_key(r) for r in read_records(tmp_path / "killed")]
    want = [_key(r) for r in read_records(tmp_path / "whole")]
    assert len(got) == len(set(got)) == 24
    assert got == want
    assert json.loads((tmp_path / "killed" / PREDICTIONS_FILE).read_text()) == json.loads(
        (tmp_path / "whole" / PREDICTIONS_FILE).read_text()
    )
    assert len(list((tmp_path / "killed").glob("*.png"))) == 24


def test_predict_no_pictures_writes_only_the_records(tmp_path, tiny_checkpoint, monkeypatch):
    _corpus(tmp_path / "imgs", 3)
    monkeypatch.chdir(tmp_path)
    status = main(["predict", "imgs", "--out", "out", "--weights", str(tiny_checkpoint),
                   "--score-threshold", "0.0", "--no-pictures", "--quiet"])
    assert status == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        [FAILURES_FILE, PREDICTIONS_FILE, RECORDS_FILE, "predict_args.json"]
    )
    records = list(read_records(tmp_path / "out"))
    assert [r["file_name"] for r in records] == ["imgs/00.png", "imgs/01.png", "imgs/02.png"]
    assert [r["output"] for r in records] == [None, None, None]
