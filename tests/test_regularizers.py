"""Penalties against hand computations."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trainlab.errors import ConfigError
from trainlab.regularizers import build_regularizer


@pytest.fixture
def model() -> nn.Module:
    layer = nn.Linear(2, 2)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, -2.0], [0.5, 0.0]]))
        layer.bias.copy_(torch.tensor([3.0, -4.0]))
    return layer


def penalty(model, name, **settings):
    return build_regularizer({"name": name, **settings}, model)


def test_l1_l2_elastic_net_by_hand(model):
    l1_weights, l2_weights = 1 + 2 + 0.5, 1 + 4 + 0.25
    assert penalty(model, "l1", strength=0.1, include_bias=False)().item() == pytest.approx(
        0.1 * l1_weights
    )
    assert penalty(model, "l2", strength=0.1, include_bias=False)().item() == pytest.approx(
        0.05 * l2_weights
    )
    elastic = penalty(model, "elastic_net", strength=0.1, l1_ratio=0.25, include_bias=False)()
    assert elastic.item() == pytest.approx(0.1 * (0.25 * l1_weights + 0.75 / 2 * l2_weights))


def test_include_bias_adds_the_biases(model):
    assert penalty(model, "l1", strength=1.0, include_bias=True)().item() == pytest.approx(3.5 + 7)


def test_l2_gradient_equals_weight_decay(model):
    penalty(model, "l2", strength=0.3, include_bias=False)().backward()
    assert torch.allclose(model.weight.grad, 0.3 * model.weight)
    assert model.bias.grad is None


def test_none_and_bad_settings(model):
    assert penalty(model, "none") is None
    with pytest.raises(ConfigError, match=r"l1_ratio must be in \[0, 1\]"):
        penalty(model, "elastic_net", strength=0.1, l1_ratio=1.5, include_bias=False)
    with pytest.raises(ConfigError, match="strength must be >= 0"):
        penalty(model, "l2", strength=-1.0, include_bias=False)
