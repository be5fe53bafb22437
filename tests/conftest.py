import os
import random

import numpy as np
import pytest
import torch

# Never touch the network from tests (timm / huggingface hub, MLflow's usage telemetry).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _seed() -> None:
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory: pytest.TempPathFactory):
    """A small digit-scenes dataset (COCO format, 128 px), written once per test session."""
    from efficientdet.data import write_demo_dataset

    return write_demo_dataset(
        tmp_path_factory.mktemp("demo"), num_train=24, num_val=8, image_size=128
    )


@pytest.fixture
def unused_slot_model():
    """The tiny network with COCO's 90-way head (random weights) forced to score the ten
    unused COCO ids highest everywhere: logit 6 for those slots, 3 for label 0 ("person"),
    -6 for the rest (the class layer's weights zeroed, so its bias is every logit)."""
    from efficientdet.modeling.factory import create_model
    from efficientdet.modeling.pretrained import COCO_CATEGORIES

    model = create_model("efficientdet_test", num_classes=90).eval()
    predict = model.class_net.predict.pointwise
    assert predict.bias is not None
    logits = torch.full((90,), -6.0)
    logits[[label for label in range(90) if label + 1 not in COCO_CATEGORIES]] = 6.0
    logits[0] = 3.0
    with torch.no_grad():
        predict.weight.zero_()
        predict.bias.copy_(logits.repeat(predict.bias.numel() // 90))
    return model
