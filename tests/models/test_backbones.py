"""Backbones: Conv4 (Omniglot and 84x84 RGB variants) and MLP shapes; batch norm keeps no running stats."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_meta.models import MLP, Conv4


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_conv4_omniglot():
    model = Conv4(out_features=5)
    assert model(torch.rand(3, 1, 28, 28)).shape == (3, 5)
    # 28 -> 14 -> 7 -> 4 -> 2 with stride-2 convolutions: the head sees 64 x 2 x 2 features.
    assert model.head.in_features == 64 * 2 * 2
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [m.stride for m in convs] == [(2, 2)] * 4 and [m.out_channels for m in convs] == [64] * 4
    conv = 1 * 64 * 9 + 64 + 3 * (64 * 64 * 9 + 64)
    assert _count(model) == conv + 4 * 2 * 64 + 256 * 5 + 5


def test_conv4_rgb_84():
    model = Conv4(out_features=5, in_channels=3, hidden=32, image_size=84, max_pool=True)
    assert model(torch.rand(2, 3, 84, 84)).shape == (2, 5)
    # 84 -> 42 -> 21 -> 10 -> 5 by 2x2 max-pooling: the head sees 32 x 5 x 5 = 800 features (MAML's network).
    assert model.head.in_features == 800
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 4


def test_conv4_rejects_tiny_images():
    with pytest.raises(ValueError, match=r"model\.image_size=8 is too small"):
        Conv4(image_size=8, max_pool=True)


def test_mlp_shapes():
    model = MLP(in_features=1, hidden=(40, 40), out_features=1)
    assert model(torch.rand(7, 1)).shape == (7, 1)
    assert _count(model) == (1 * 40 + 40) + (40 * 40 + 40) + (40 * 1 + 1)
    assert MLP(in_features=3, hidden=[8], out_features=2)(torch.rand(4, 3)).shape == (4, 2)


def test_batch_norm_has_no_running_statistics():
    model = Conv4(out_features=3, hidden=8)
    assert list(model.buffers()) == []  # nothing for the functional inner loop to carry
    x = torch.rand(6, 1, 28, 28)
    train_out = model.train()(x)
    eval_out = model.eval()(x)
    assert torch.allclose(train_out, eval_out), "eval mode must normalise by the batch too"
    # Transductive: an example's output depends on the rest of its batch.
    assert not torch.allclose(model(x)[:1], model(torch.cat([x[:1], torch.rand(5, 1, 28, 28)]))[:1])
