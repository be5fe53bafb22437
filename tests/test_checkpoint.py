import pickle
from pathlib import Path

import pytest
import torch

import efficientdet as ed
from efficientdet.modeling.checkpoint import CheckpointError, read_checkpoint


def _randomise(model: torch.nn.Module) -> None:
    """Give BN statistics and fusion weights non-default values so parity checks mean something."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "edge_weights" in name or "fusion.weight" in name:
                p.uniform_(0.2, 2.0)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)


@pytest.mark.parametrize("name", ["tf_efficientdet_d0", "efficientdet_d1", "tf_efficientdet_lite0"])
def test_effdet_state_dict_gives_the_reference_outputs(name: str, tmp_path: Path) -> None:
    effdet = pytest.importorskip("effdet")
    ref = effdet.create_model(name, pretrained=False, pretrained_backbone=False).eval()
    _randomise(ref)
    path = tmp_path / f"{name}.pth"
    torch.save(ref.state_dict(), path)
    model = ed.create_model(name, checkpoint=path).eval()
    x = torch.randn(1, 3, *model.config.image_size)
    with torch.inference_mode():
        ref_cls, ref_box = ref(x)
        cls, box = model(x)
    for a, b in zip(ref_cls + ref_box, cls + box, strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-4)


def test_safetensors_round_trip_with_metadata(tmp_path: Path) -> None:
    model = ed.create_model("efficientdet_test", num_classes=3, image_size=(128, 256)).eval()
    path = ed.save_checkpoint(model, tmp_path / "m.safetensors", metadata={"class_names": ["a", "b", "c"]})
    ckpt = read_checkpoint(path)
    assert ckpt.config == model.config
    assert ckpt.metadata["class_names"] == ["a", "b", "c"]
    other = ed.create_model("efficientdet_test", num_classes=3, image_size=(128, 256), checkpoint=path)
    x = torch.randn(1, 3, 128, 256)
    with torch.inference_mode():
        torch.testing.assert_close(other.eval()(x)[0][0], model(x)[0][0])
    assert not list(tmp_path.glob("*.tmp"))


def test_other_class_count_loads_all_but_the_class_layer(tmp_path: Path, caplog) -> None:
    source = ed.create_model("efficientdet_test", num_classes=90)
    path = ed.save_checkpoint(source, tmp_path / "coco.safetensors")
    model = ed.create_model("efficientdet_test", num_classes=4)
    report = ed.load_checkpoint(model, path)
    assert sorted(report.skipped) == ["class_net.predict.pointwise.bias", "class_net.predict.pointwise.weight"]
    assert "class prediction layer" in caplog.text
    torch.testing.assert_close(model.box_net.predict.pointwise.weight, source.box_net.predict.pointwise.weight)
    assert model.class_net.predict.pointwise.weight.shape[0] == 36


def test_wrong_architecture_names_the_keys(tmp_path: Path) -> None:
    path = ed.save_checkpoint(ed.create_model("efficientdet_test"), tmp_path / "a.safetensors")
    model = ed.create_model("efficientdet_test", fpn_channels=24)
    with pytest.raises(CheckpointError, match="mis-shaped keys") as err:
        ed.load_checkpoint(model, path)
    assert "(16,) vs (24,)" in str(err.value)
    deeper = ed.create_model("efficientdet_test", fpn_repeats=2)
    with pytest.raises(CheckpointError, match="missing keys.*neck.cells.1"):
        ed.load_checkpoint(deeper, path)


def test_pickle_with_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": Evil()}, f)
    with pytest.raises(CheckpointError, match="refused"):
        read_checkpoint(path)
    assert not marker.exists()


def test_truncated_and_empty_files(tmp_path: Path) -> None:
    path = ed.save_checkpoint(ed.create_model("efficientdet_test"), tmp_path / "m.safetensors")
    data = path.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.safetensors"):
        read_checkpoint(cut)
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        read_checkpoint(empty)
    with pytest.raises(CheckpointError, match="no such"):
        read_checkpoint(tmp_path / "missing.pth")


def test_newer_format_is_refused(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "new.safetensors"
    save_file({"x": torch.zeros(1)}, str(path), metadata={"format": "efficientdet", "format_version": "99"})
    with pytest.raises(CheckpointError, match="newer efficientdet"):
        read_checkpoint(path)


def test_wrapped_and_prefixed_state_dicts(tmp_path: Path) -> None:
    torch.manual_seed(3)
    model = ed.create_model("efficientdet_test")
    for wrapper, prefix in (("state_dict", "module."), ("model", "model."), ("state_dict_ema", "")):
        path = tmp_path / f"{wrapper}.pth"
        torch.save({wrapper: {f"{prefix}{k}": v for k, v in model.state_dict().items()}}, path)
        torch.manual_seed(4)  # a fresh model with other weights
        fresh = ed.create_model("efficientdet_test")
        assert not torch.equal(fresh.class_net.predict.pointwise.weight, model.class_net.predict.pointwise.weight)
        ed.load_checkpoint(fresh, path)
        loaded = fresh.state_dict()
        assert loaded.keys() == model.state_dict().keys()
        for key, value in model.state_dict().items():
            assert torch.equal(loaded[key], value), f"{wrapper}/{prefix}: {key} differs"
