"""Tests for efficientdet.inference.sources: the input order's digest, numbering, shards and
the resume check. (Walking folders and globs: tests/test_predict.py, test_predict_scale.py.)"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from efficientdet.inference.sources import InputDigest, ResumePoint, select_inputs


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def test_digest_is_sha256_of_the_paths_in_order_one_per_line():
    digest = InputDigest()
    assert digest.update(Path("a.png")) == _sha("a.png\n")
    assert digest.update(Path("dir/b.jpg")) == _sha("a.png\ndir/b.jpg\n")
    # Another order is another digest.
    other = InputDigest()
    other.update(Path("dir/b.jpg"))
    assert other.update(Path("a.png")) == _sha("dir/b.jpg\na.png\n") != _sha("a.png\ndir/b.jpg\n")


def test_select_inputs_numbers_digests_and_shards():
    paths = [f"{i}.png" for i in range(5)]
    inputs = list(select_inputs(paths, shard=(1, 2)))
    assert [(x.index, x.path) for x in inputs] == [(1, Path("1.png")), (3, Path("3.png"))]
    assert inputs[1].digest == _sha("0.png\n1.png\n2.png\n3.png\n")  # the whole order, all shards


def test_select_inputs_skips_what_a_resumed_run_did_after_checking_it():
    paths = ["a.png", "b.png", "c.png", "d.png"]
    point = ResumePoint(run="out", done_index=1, index=1, file_name="b.png",
                        digest=_sha("a.png\nb.png\n"))
    assert [x.path.name for x in select_inputs(paths, resume=point)] == ["c.png", "d.png"]


def test_select_inputs_refuses_an_input_changed_before_the_resume_point():
    point = ResumePoint(run="out", done_index=2, index=2, file_name="c.png",
                        digest=_sha("a.png\nb.png\nc.png\n"))
    # Same count, same file at the resume point: only the digest sees the renamed b.png.
    with pytest.raises(ValueError) as caught:
        list(select_inputs(["a.png", "B2.png", "c.png", "d.png"], resume=point))
    message = str(caught.value)
    assert message.startswith("out: cannot resume: the inputs before c.png (input 2)")
    assert _sha("a.png\nb.png\nc.png\n") in message and _sha("a.png\nB2.png\nc.png\n") in message
    assert "\n" not in message
    # Reordered before it, too.
    with pytest.raises(ValueError, match="renamed or reordered"):
        list(select_inputs(["b.png", "a.png", "c.png"], resume=point))


def test_select_inputs_names_the_file_at_the_resume_point_and_counts():
    point = ResumePoint(run="out", done_index=2, index=2, file_name="c.png", digest=None)
    with pytest.raises(ValueError, match="input 2 was c.png in the first run and is x.png now"):
        list(select_inputs(["a.png", "b.png", "x.png"], resume=point))
    with pytest.raises(ValueError, match="only 2 inputs now"):
        list(select_inputs(["a.png", "b.png"], resume=point))
    # Inputs added after the resume point are new work, not a change.
    more = list(select_inputs(["a.png", "b.png", "c.png", "d.png", "e.png"], resume=point))
    assert [x.index for x in more] == [3, 4]


def test_the_output_folder_is_never_read_as_input(tmp_path: Path) -> None:
    """An output folder inside the input tree: its pictures are not inputs (a resumed run
    would otherwise see more files and a shifted order), and it cannot be an input folder."""
    from PIL import Image

    from efficientdet.inference.sources import iter_sources

    data = tmp_path / "data"
    (data / "a").mkdir(parents=True)
    (data / "preds").mkdir()
    for name in ("a/1.jpg", "a/2.jpg", "preds/1.jpg", "top.jpg"):
        Image.new("RGB", (4, 4)).save(data / name)
    glob = f"{data}/**/*.jpg"
    every = [p.relative_to(data).as_posix() for p in iter_sources([glob])]
    assert sorted(every) == ["a/1.jpg", "a/2.jpg", "preds/1.jpg", "top.jpg"]
    kept = [p.relative_to(data).as_posix() for p in iter_sources([glob], exclude=data / "preds")]
    assert kept == [name for name in every if not name.startswith("preds/")]
    with pytest.raises(ValueError, match="both an input folder and the output folder"):
        iter_sources([data / "a"], exclude=data / "a")
