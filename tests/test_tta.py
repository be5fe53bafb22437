"""Test-time augmentation: geometry of the scaled and flipped runs, identity equals plain."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from efficientdet.detection.detector import Detector
from efficientdet.detection.postprocess import PostprocessConfig
from efficientdet.inference.tta import TTAConfig, TTADetector, scaled_size
from efficientdet.modeling.factory import create_model


class BrightBoxDetector(nn.Module):
    """Stands in for a Detector: one box around the bright pixels of each input, its score
    the run's input width / 1000 (so the runs can be told apart)."""

    def __init__(self) -> None:
        super().__init__()
        self.postprocess_config = PostprocessConfig(max_detections=10)
        self.sizes: list[tuple[int, int]] = []

    def detect(self, images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        self.sizes.append((int(images.shape[-2]), int(images.shape[-1])))
        out = []
        for image in images:
            ys, xs = torch.nonzero(image[0] > 0.5, as_tuple=True)
            box = torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()
            out.append({
                "boxes": box[None], "scores": torch.tensor([images.shape[-1] / 1000.0]),
                "labels": torch.tensor([1]),
            })
        return out


def test_scaled_and_flipped_runs_map_back_to_the_same_box() -> None:
    images = torch.zeros(2, 3, 64, 96)
    images[0, :, 8:24, 16:48] = 1.0  # x 16..48, y 8..24
    images[1, :, 40:64, 80:96] = 1.0  # against the right and bottom edges
    stub = BrightBoxDetector()
    tta = TTADetector(stub, TTAConfig(scales=(0.5, 1.0, 2.0), flip=True))  # type: ignore[arg-type]
    fused = tta(images)
    assert stub.sizes == [(32, 48), (32, 48), (64, 96), (64, 96), (128, 192), (128, 192)]
    torch.testing.assert_close(fused[0]["boxes"], torch.tensor([[16.0, 8.0, 48.0, 24.0]]), atol=1.0, rtol=0)
    torch.testing.assert_close(fused[1]["boxes"], torch.tensor([[80.0, 40.0, 96.0, 64.0]]), atol=1.0, rtol=0)
    # six runs, one cluster: the mean of the six scores
    expected = 2 * (0.048 + 0.096 + 0.192) / 6
    torch.testing.assert_close(fused[0]["scores"], torch.tensor([expected]))
    assert fused[0]["labels"].tolist() == [1]


def test_tta_config_and_sizes() -> None:
    assert TTAConfig().augmentations == [(0.83, False), (1.0, False), (1.2, False)]
    assert TTAConfig(scales=(1.0,), flip=True).augmentations == [(1.0, False), (1.0, True)]
    assert scaled_size((512, 512), 0.83) == (424, 424)
    assert scaled_size((128, 100), 1.0) == (128, 100)
    assert scaled_size((128, 128), 1.2) == (152, 152)
    with pytest.raises(ValueError, match="positive"):
        TTAConfig(scales=(0.0,))


def test_identity_tta_equals_plain_prediction() -> None:
    torch.manual_seed(0)
    model = create_model("efficientdet_test", num_classes=4).eval()
    with torch.no_grad():  # spread the class logits so detections differ clearly
        for p in model.class_net.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    detector = Detector(model, score_threshold=0.05).eval()
    rng = np.random.default_rng(0)
    images = [
        Image.fromarray(rng.integers(0, 255, (90, 150, 3), dtype=np.uint8)),
        Image.fromarray(rng.integers(0, 255, (128, 128, 3), dtype=np.uint8)),
    ]
    plain = detector.predict(images)
    tta = TTADetector(detector, TTAConfig(scales=(1.0,))).predict(images)
    assert sum(len(d["boxes"]) for d in plain) > 5
    for got, expected in zip(tta, plain, strict=True):
        for key in ("boxes", "scores", "labels"):
            assert torch.equal(got[key], expected[key]), key


def test_predict_and_eval_commands_take_tiles_and_tta(tiny_demo, tmp_path) -> None:
    from efficientdet.cli.main import main
    from efficientdet.data import load_dataset
    from efficientdet.modeling.checkpoint import save_checkpoint

    data = load_dataset(tiny_demo.data_yaml, "val")
    torch.manual_seed(0)
    model = create_model("efficientdet_test", num_classes=data.num_classes)
    weights = save_checkpoint(model, tmp_path / "tiny.safetensors",
                              metadata={"class_names": list(data.class_names)})
    image = str(data.samples[0].image_path)
    out = tmp_path / "pred"
    argv = ["predict", "--weights", str(weights), image, "--out", str(out), "--quiet",
            "--score-threshold", "0.001"]
    assert main([*argv, "--tile", "64", "--overlap", "0.25", "--tile-merge", "wbf", "--tta"]) == 0
    assert (out / "predictions.json").is_file()
    assert main(["eval", "--weights", str(weights), "--data", str(tiny_demo.data_yaml),
                 "--tta-scales", "1.0", "--tta-flip", "--out", str(tmp_path / "eval")]) == 0
    assert (tmp_path / "eval" / "metrics.json").is_file()
    onnx_argv = ["predict", "--weights", str(tmp_path / "x.onnx"), image, "--out", str(out), "--tta"]
    assert main(onnx_argv) == 2  # refused: an ONNX graph runs one input size
