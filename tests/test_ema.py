"""Model EMA: the average follows ``ema = d * ema + (1 - d) * weights``, buffers are copied."""

from __future__ import annotations

import torch
from torch import nn

from efficientdet.train.ema import ModelEMA


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1))


def test_update_averages_parameters_and_copies_buffers() -> None:
    model = _net()
    ema = ModelEMA(model, decay=0.9, warmup=False)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
        model[1].running_mean.fill_(3.0)
        model[1].num_batches_tracked.fill_(7)
    ema.update(model)
    for name, p in ema.module.named_parameters():
        assert torch.allclose(p, 0.9 * start[name] + 0.1 * (start[name] + 1.0), atol=1e-6)
    assert torch.equal(ema.module[1].running_mean, torch.full((4,), 3.0))
    assert int(ema.module[1].num_batches_tracked) == 7
    assert all(not p.requires_grad for p in ema.module.parameters())


def test_warmup_ramps_the_decay_and_state_round_trips() -> None:
    model = _net()
    ema = ModelEMA(model, decay=0.999, warmup=True)
    assert ema.current_decay() == 1 / 10
    for _ in range(5):
        ema.update(model)
    assert ema.current_decay() == 6 / 15
    other = ModelEMA(_net(), decay=0.999)
    other.load_state_dict(ema.state_dict())
    assert other.updates == 5


def test_update_follows_another_model_of_the_same_layout() -> None:
    # The tensors are paired on the first update; a different model object re-pairs them.
    first, second = _net(), _net()
    ema = ModelEMA(first, decay=0.5, warmup=False)
    ema.update(first)
    with torch.no_grad():
        for p in second.parameters():
            p.fill_(2.0)
    before = [p.detach().clone() for p in ema.module.parameters()]
    ema.update(second)
    for old, new in zip(before, ema.module.parameters(), strict=True):
        assert torch.allclose(new, 0.5 * old + 0.5 * 2.0)
