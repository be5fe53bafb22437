"""The public API is what the README shows: every ``efficientdet.NAME`` it uses exists and is
in ``efficientdet.__all__``; every name in ``__all__`` is what it says and does what the
README uses it for; importing the package stays light."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import efficientdet

README = Path(__file__).resolve().parents[1] / "README.md"


def test_every_name_the_readme_uses_is_public() -> None:
    used = set(re.findall(r"\befficientdet\.([A-Za-z_]\w*)\b(?!\.py)", README.read_text()))
    subpackages = {"modeling", "detection", "data", "inference", "train", "deploy", "studies", "cli", "config"}
    names = used - subpackages
    assert names, "the README shows no efficientdet.NAME at all"
    missing = sorted(n for n in names if n not in efficientdet.__all__)
    assert missing == [], f"README uses efficientdet.{missing} that __all__ does not name"


def test_every_public_name_is_the_object_of_that_name() -> None:
    """Each name of ``__all__`` loads, on first use, the class or function of that name from
    the package's own modules (a wrong entry in the lazy table fails here)."""
    for name in efficientdet.__all__:
        if name == "__version__":
            continue
        value = getattr(efficientdet, name)
        assert value.__name__ == name and value.__module__.startswith("efficientdet."), name
    assert set(efficientdet.__all__) <= set(dir(efficientdet))
    with pytest.raises(AttributeError, match="no attribute 'EfficientDetX'"):
        efficientdet.EfficientDetX  # noqa: B018


def test_version_is_a_release_number() -> None:
    assert re.fullmatch(r"\d+\.\d+\.\d+((a|b|rc)\d+)?(\.post\d+)?(\.dev\d+)?", efficientdet.__version__)


def test_import_loads_neither_torch_nor_timm() -> None:
    """``import efficientdet`` stays light: the public names load their modules on first use."""
    code = "import sys, efficientdet; print(sorted({'torch', 'timm', 'torchvision'} & set(sys.modules)))"
    env = {**os.environ, "PYTHONPATH": str(Path(efficientdet.__file__).parents[1])}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_create_model_builds_the_named_detector() -> None:
    # D0 has 3.9M parameters with the 90 COCO classes (the paper's Table 2).
    with torch.device("meta"):
        d0 = efficientdet.create_model("tf_efficientdet_d0")
    assert isinstance(d0, efficientdet.EfficientDet)
    assert d0.config == efficientdet.get_config("tf_efficientdet_d0")
    assert abs(sum(p.numel() for p in d0.parameters()) / 1e6 - 3.9) < 0.05
    # The tiny model with 3 classes: 9 anchors a location, P3-P7 of a 128 px input.
    tiny = efficientdet.create_model("efficientdet_test", num_classes=3).eval()
    with torch.no_grad():
        classes, boxes = tiny(torch.zeros(1, 3, 128, 128))
    assert [tuple(t.shape) for t in classes] == [(1, 27, s, s) for s in (16, 8, 4, 2, 1)]
    assert [tuple(t.shape) for t in boxes] == [(1, 36, s, s) for s in (16, 8, 4, 2, 1)]


def test_compound_config_and_pretrained_names() -> None:
    # The README's efficientdet.compound_config: phi = 2.5 by the paper's rules
    # (64 * 1.35^2.5 = 135.5 -> 136, 3 + 2.5 -> 6, 512 + 320 = 832 -> 896, backbone B2).
    config = efficientdet.compound_config(2.5)
    assert (config.fpn_channels, config.fpn_repeats, config.image_size) == (136, 6, (896, 896))
    assert config.backbone == "tf_efficientnet_b2"
    # Published COCO weights exist for every official D0-D7x and Lite row, not for the test model.
    pretrained = set(efficientdet.list_pretrained())
    official = {f"tf_efficientdet_{k}" for k in ("d0", "d1", "d2", "d3", "d4", "d5", "d6", "d7", "d7x")}
    official |= {f"tf_efficientdet_lite{k}" for k in ("0", "1", "2", "3", "3x", "4")}
    assert official <= pretrained <= set(efficientdet.list_models())
    assert "efficientdet_test" not in pretrained
