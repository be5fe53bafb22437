"""Property-based tests (hypothesis): box coding, matching, the COCO and YOLO readers and the
letterbox, each over random inputs including bad ones."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from efficientdet.data import DataError, load_coco, load_yolo
from efficientdet.detection.boxes import BBOX_XFORM_CLIP, box_iou, decode, encode
from efficientdet.detection.matcher import BELOW_LOW_THRESHOLD, BETWEEN_THRESHOLDS, Matcher
from efficientdet.detection.transform import LetterboxInfo, letterbox, scale_boxes_to_original

FEW = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SOME = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ---- box coding ------------------------------------------------------------------------------

sides = st.floats(1.0, 512.0)
centres = st.floats(-100.0, 1000.0)
# A box side may differ from its anchor's by a factor of 50 at most: log(50) < BBOX_XFORM_CLIP,
# so decoding does not clamp and the round trip is exact up to rounding.
ratios = st.floats(1 / 50, 50.0)


@st.composite
def box_anchor_pairs(draw) -> tuple[torch.Tensor, torch.Tensor]:
    n = draw(st.integers(1, 8))
    boxes, anchors = [], []
    for _ in range(n):
        acx, acy, aw, ah = draw(centres), draw(centres), draw(sides), draw(sides)
        w, h = aw * draw(ratios), ah * draw(ratios)
        cx, cy = acx + draw(st.floats(-3, 3)) * aw, acy + draw(st.floats(-3, 3)) * ah
        anchors.append([acx - aw / 2, acy - ah / 2, acx + aw / 2, acy + ah / 2])
        boxes.append([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
    return torch.tensor(boxes, dtype=torch.float64), torch.tensor(anchors, dtype=torch.float64)


@SOME
@given(box_anchor_pairs())
def test_decode_inverts_encode_for_valid_boxes(pair) -> None:
    boxes, anchors = pair
    deltas = encode(boxes, anchors)
    assert deltas.shape == boxes.shape and torch.isfinite(deltas).all()
    assert (deltas[:, 2:].abs() < BBOX_XFORM_CLIP).all()
    torch.testing.assert_close(decode(deltas, anchors), boxes, rtol=1e-9, atol=1e-7)
    # float32, as the model runs: the same boxes up to single-precision rounding.
    again = decode(encode(boxes.float(), anchors.float()), anchors.float())
    scale = boxes.abs().max().item() + 1
    torch.testing.assert_close(again.double(), boxes, rtol=0, atol=1e-5 * scale)


finite32 = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False, width=32)


@SOME
@given(
    st.lists(st.tuples(finite32, finite32, finite32, finite32), min_size=1, max_size=8),
    st.lists(st.tuples(centres, centres, sides, sides), min_size=1, max_size=8),
)
def test_coding_gives_finite_values_for_any_finite_input(raw_boxes, raw_anchors) -> None:
    """Degenerate or inverted boxes and wild deltas still give finite numbers (no inf, no NaN)."""
    anchors = torch.tensor(
        [[cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2] for cx, cy, w, h in raw_anchors]
    )
    boxes = torch.tensor(raw_boxes)
    n = min(len(boxes), len(anchors))
    deltas = encode(boxes[:n], anchors[:n])
    assert torch.isfinite(deltas).all()
    assert torch.isfinite(decode(boxes[:n], anchors[:n])).all()  # any values used as deltas


# ---- matching --------------------------------------------------------------------------------

iou_values = st.one_of(st.sampled_from([0.0, 0.3, 0.4, 0.5, 0.7, 1.0]), st.floats(0.0, 1.0))


@st.composite
def iou_matrices(draw) -> torch.Tensor:
    """``[M, N]`` IoU values with many ties, plus rows of -1 standing for padded boxes."""
    m, n = draw(st.integers(0, 5)), draw(st.integers(1, 12))
    rows = [[draw(iou_values) for _ in range(n)] for _ in range(m)]
    rows += [[-1.0] * n for _ in range(draw(st.integers(0, 2)))]
    return torch.tensor(rows, dtype=torch.float32).reshape(len(rows), n)


thresholds = st.tuples(st.floats(0.05, 0.95), st.floats(0.0, 0.3)).map(
    lambda pair: (pair[0], max(0.0, pair[0] - pair[1]))
)


@SOME
@given(iou_matrices(), thresholds)
def test_matcher_outputs_valid_indices_and_follows_the_thresholds(iou, bands) -> None:
    high, low = bands
    matches = Matcher(high, low, force_match=False)(iou)
    assert matches.shape == (iou.shape[1],) and matches.dtype == torch.int64
    real = int((iou >= 0).all(dim=1).sum()) if iou.shape[0] else 0
    best = iou.max(dim=0).values if iou.shape[0] else torch.full((iou.shape[1],), -1.0)
    for n, match in enumerate(matches.tolist()):
        if best[n] >= high:
            assert 0 <= match < real and iou[match, n] == best[n]  # never a padding row
        elif best[n] >= low:
            assert match == BETWEEN_THRESHOLDS
        else:
            assert match == BELOW_LOW_THRESHOLD


@SOME
@given(iou_matrices(), thresholds)
def test_force_match_gives_every_overlapping_box_its_best_anchor(iou, bands) -> None:
    high, low = bands
    matches = Matcher(high, low, force_match=True)(iou)
    sentinels = {BELOW_LOW_THRESHOLD, BETWEEN_THRESHOLDS}
    rows = iou.shape[0]
    assert all(m in sentinels or 0 <= m < rows for m in matches.tolist())
    # The official rule: each box forces its first best anchor; an anchor forced by several
    # boxes takes the first of them.
    forced_by: dict[int, int] = {}
    for m in range(rows):
        if iou[m].max() > 0:
            forced_by.setdefault(int(iou[m].argmax()), m)
    for anchor, box in forced_by.items():
        assert matches[anchor] == box
    # So every box with positive IoU is matched unless an earlier box took its one anchor.
    for m in range(rows):
        if iou[m].max() > 0 and forced_by[int(iou[m].argmax())] == m:
            assert (matches == m).any()


@SOME
@given(iou_matrices())
def test_force_match_ties_matches_every_tied_anchor(iou) -> None:
    matches = Matcher(0.5, force_match=True, force_match_ties=True)(iou)
    for m in range(iou.shape[0]):
        best = iou[m].max()
        if best <= 0:
            continue
        for anchor in torch.nonzero(iou[m] == best).flatten().tolist():
            winner = int(matches[anchor])
            assert winner >= 0 and iou[winner, anchor] >= best


@SOME
@given(
    st.lists(st.tuples(centres, centres, sides, sides), min_size=1, max_size=6),
    st.lists(st.tuples(centres, centres, sides, sides), min_size=1, max_size=20),
)
def test_match_from_real_boxes_matches_each_separate_box(gt_raw, anchor_raw) -> None:
    def xyxy(raw):
        return torch.tensor([[cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2] for cx, cy, w, h in raw])

    iou = box_iou(xyxy(gt_raw), xyxy(anchor_raw))
    matches = Matcher()(iou)
    owners = {}
    for m in range(iou.shape[0]):
        if iou[m].max() > 0:
            owners.setdefault(int(iou[m].argmax()), m)
    matched = set(matches[matches >= 0].tolist())
    assert set(owners.values()) <= matched


# ---- data readers ----------------------------------------------------------------------------

IMAGE_W, IMAGE_H = 40, 30


def mostly(good: st.SearchStrategy, bad: st.SearchStrategy) -> st.SearchStrategy:
    """``good`` three times in four, else ``bad``: bad values must get past the good ones."""
    return st.integers(0, 3).flatmap(lambda k: bad if k == 0 else good)


weird_numbers = st.one_of(
    st.floats(-1e3, 1e3),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, -1, 10**20, 10**400, 1e300, -1e300, True]),
)
weird_values = st.one_of(
    weird_numbers, st.text(max_size=4), st.none(), st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
)
ids = mostly(st.integers(1, 3), st.one_of(st.integers(-2, 10**30), weird_values))
sizes = mostly(st.sampled_from([IMAGE_W, IMAGE_H, 25]), weird_values)
coordinates = mostly(st.floats(-20, 60), weird_numbers)


@st.composite
def coco_documents(draw) -> dict:
    images = []
    for _ in range(draw(st.integers(0, 4))):
        image = {
            "id": draw(ids),
            "file_name": draw(mostly(st.just("img.png"), st.sampled_from(["gone.png", "", ".", "a\x00b", 7]))),
        }
        if draw(st.booleans()):
            image["width"], image["height"] = draw(sizes), draw(sizes)
        images.append(draw(mostly(st.just(image), weird_values)))
    annotations = []
    for _ in range(draw(st.integers(0, 6))):
        bbox = draw(mostly(
            st.lists(coordinates, min_size=4, max_size=4),
            st.one_of(st.lists(coordinates, max_size=6), weird_values),
        ))
        annotation = {"id": draw(ids), "image_id": draw(ids), "category_id": draw(ids), "bbox": bbox}
        if draw(st.booleans()):
            annotation["iscrowd"] = draw(mostly(st.sampled_from([0, 1]), weird_values))
        annotations.append(draw(mostly(st.just(annotation), weird_values)))
    categories = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    categories += draw(st.lists(
        st.one_of(st.fixed_dictionaries({"id": ids, "name": st.text(max_size=3)}), weird_values),
        max_size=2,
    ))
    doc = {"images": images, "annotations": annotations, "categories": categories}
    if draw(st.integers(0, 9)) == 0:
        doc[draw(st.sampled_from(sorted(doc)))] = draw(weird_values)
    return doc


def _coco_with(image: dict, bbox: object) -> dict:
    """One image (``image`` over good defaults) with one box of category 1."""
    return {
        "images": [{"id": 1, "file_name": "img.png", "width": IMAGE_W, "height": IMAGE_H, **image}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": bbox}],
        "categories": [{"id": 1, "name": "a"}],
    }


@pytest.fixture(scope="module")
def reader_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("readers")
    Image.new("RGB", (IMAGE_W, IMAGE_H), (10, 200, 90)).save(folder / "img.png")
    return folder


def _assert_clean(data, sizes_by_path: dict | None = None) -> None:
    for sample in data.samples:
        height, width = sample.size
        boxes = sample.boxes
        assert torch.isfinite(boxes).all()
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
        assert (boxes[:, 2] <= width).all() and (boxes[:, 3] <= height).all()
        assert (boxes[:, 2] - boxes[:, 0] >= 1).all() and (boxes[:, 3] - boxes[:, 1] >= 1).all()
        assert ((sample.labels >= 0) & (sample.labels < data.num_classes)).all()


@FEW
@given(doc=coco_documents(), strict=st.booleans(), raw=st.integers(0, 19))
@example(doc=_coco_with({}, [10**400, 0, 5, 5]), strict=True, raw=1)  # int beyond float
@example(doc=_coco_with({}, [0, 0, 1e300, 5]), strict=False, raw=1)  # inf in float32
@example(doc=_coco_with({"width": 10**400}, [1, 1, 5, 5]), strict=True, raw=1)
@example(doc=_coco_with({"width": True, "height": True}, [1, 1, 5, 5]), strict=True, raw=1)
@example(doc=_coco_with({"file_name": "a\x00b"}, [1, 1, 5, 5]), strict=True, raw=1)
@example(  # an unhashable image_id in an annotation
    doc={**_coco_with({}, []), "annotations": [{"id": 0, "image_id": [], "category_id": 1, "bbox": []}]},
    strict=False, raw=1,
)
def test_coco_reader_loads_clean_boxes_or_raises_data_error(reader_folder, doc, strict, raw) -> None:
    path = reader_folder / "annotations.json"
    text = json.dumps(doc)
    if raw == 0:
        text = text[: len(text) // 2]  # cut short: not JSON any more
    path.write_text(text)
    try:
        data = load_coco(path, strict=strict)
    except DataError as err:
        assert str(path) in str(err)
        return
    _assert_clean(data)
    assert len({s.image_id for s in data.samples}) == len(data.samples)


yolo_tokens = st.one_of(
    st.floats(-0.5, 1.5).map(lambda v: f"{v:.3f}"),
    st.sampled_from(["nan", "inf", "-inf", "1e400", "1e9", "1e300", "abc", "0x10", "1.5", "-1", "3"]),
    st.integers(-2, 4).map(str),
)


@FEW
@given(
    lines=st.lists(st.lists(yolo_tokens, max_size=9).map(" ".join), max_size=6),
    strict=st.booleans(),
    names=st.one_of(st.none(), st.just(["a", "b"])),
)
@example(lines=["1e9 0.5 0.5 0.2 0.2"], strict=True, names=None)  # no table: not 10**9 classes
@example(lines=["1e300 0.5 0.5 0.2 0.2"], strict=False, names=["a", "b"])
@example(lines=["0 1e300 0.5 1e300 0.2"], strict=False, names=None)
def test_yolo_reader_loads_clean_boxes_or_raises_data_error(
    tmp_path_factory, lines, strict, names
) -> None:
    root = tmp_path_factory.mktemp("yolo")
    (root / "images").mkdir()
    (root / "labels").mkdir()
    Image.new("RGB", (IMAGE_W, IMAGE_H)).save(root / "images" / "a.png")
    (root / "labels" / "a.txt").write_text("\n".join(lines) + "\n")
    try:
        data = load_yolo(root, class_names=names, strict=strict)
    except DataError as err:
        assert str(root) in str(err)
        return
    _assert_clean(data)


# ---- letterbox and mapping back ------------------------------------------------------------

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
image_sides = st.integers(1, 400)
input_sides = st.integers(1, 160)


@FEW
@given(w=image_sides, h=image_sides, out_h=input_sides, out_w=input_sides, mode=st.sampled_from(["RGB", "L", "RGBA", "P"]))
def test_letterbox_shape_scale_and_finite_values(w, h, out_h, out_w, mode) -> None:
    image = Image.new(mode, (w, h))
    tensor, info = letterbox(image, (out_h, out_w), MEAN, STD)
    assert tensor.shape == (3, out_h, out_w) and tensor.dtype == torch.float32
    assert torch.isfinite(tensor).all()
    assert info.scale == pytest.approx(min(out_h / h, out_w / w))
    assert info.original_size == (h, w) and info.input_size == (out_h, out_w)
    new_h, new_w = info.resized_size
    assert 1 <= new_h <= out_h and 1 <= new_w <= out_w
    assert new_h == out_h or new_w == out_w or (new_h, new_w) == (h, w) or min(new_h, new_w) == 1
    assert (tensor[:, new_h:, :] == 0).all() and (tensor[:, :, new_w:] == 0).all()


coords = st.floats(-1e4, 1e4, allow_nan=False, width=32)


@FEW
@given(
    w=image_sides, h=image_sides, out=input_sides,
    boxes=st.lists(st.tuples(coords, coords, coords, coords), max_size=6),
)
def test_boxes_mapped_back_stay_inside_the_original_image(w, h, out, boxes) -> None:
    info = LetterboxInfo(scale=min(out / h, out / w), original_size=(h, w), input_size=(out, out))
    mapped = scale_boxes_to_original(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), info)
    assert mapped.shape == (len(boxes), 4) and torch.isfinite(mapped).all()
    assert (mapped[:, 0::2] >= 0).all() and (mapped[:, 0::2] <= w).all()
    assert (mapped[:, 1::2] >= 0).all() and (mapped[:, 1::2] <= h).all()


@FEW
@given(w=image_sides, h=image_sides, out=input_sides, fractions=st.tuples(*[st.floats(0, 1)] * 4))
def test_a_box_survives_letterbox_and_back(w, h, out, fractions) -> None:
    """A box inside the image, scaled into the input and back, is where it was (to a pixel)."""
    x1, x2 = sorted((fractions[0] * w, fractions[1] * w))
    y1, y2 = sorted((fractions[2] * h, fractions[3] * h))
    _, info = letterbox(Image.new("RGB", (w, h)), (out, out), MEAN, STD)
    inside = torch.tensor([[x1, y1, x2, y2]]) * info.scale
    back = scale_boxes_to_original(inside, info)[0].tolist()
    assert back == pytest.approx([x1, y1, x2, y2], abs=1e-3 * max(w, h) + 1e-4)
    assert math.isfinite(sum(back))
