import os
import random

import numpy as np
import pytest
import torch

# Never touch the network from tests (timm / huggingface hub).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
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
