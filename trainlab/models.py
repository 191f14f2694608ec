"""Models by name, sized from the dataset spec: the user never types input or output sizes."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, Literal

import torch
from torch import nn

from trainlab.data.base import DatasetSpec
from trainlab.errors import ConfigError
from trainlab.settings import check_settings, fraction, require

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
}


class ItemScorer(nn.Module):
    """Scores every item of every list with one network: ``(queries, items, *shape) -> (queries, items)``."""

    def __init__(self, network: nn.Module, item_dims: int) -> None:
        super().__init__()
        self.network = network
        self.item_dims = item_dims

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        leading = inputs.shape[: inputs.dim() - self.item_dims]
        scores = self.network(inputs.reshape(-1, *inputs.shape[len(leading) :]))
        return scores.reshape(leading)


def linear(spec: DatasetSpec) -> nn.Module:
    """One affine map from the flattened input to the outputs."""
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(spec.input_shape), spec.output_size))


def mlp(
    spec: DatasetSpec,
    hidden_sizes: list[int],
    activation: Literal["relu", "gelu", "silu", "tanh", "sigmoid", "leaky_relu", "elu"],
    dropout: float,
) -> nn.Module:
    """Fully connected layers ``hidden_sizes``, each followed by ``activation`` and dropout."""
    require(
        all(size >= 1 for size in hidden_sizes),
        f"model.hidden_sizes must be positive integers, got {list(hidden_sizes)}",
    )
    fraction("model.dropout", dropout, open_right=True)
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(spec.input_shape)
    for size in hidden_sizes:
        layers += [nn.Linear(width, size), ACTIVATIONS[activation]()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = size
    layers.append(nn.Linear(width, spec.output_size))
    return nn.Sequential(*layers)


MODELS: dict[str, Callable[..., nn.Module]] = {"linear": linear, "mlp": mlp}


def build_model(config: Mapping[str, Any], spec: DatasetSpec) -> nn.Module:
    """Build the configured model for ``spec``; ranking models score each item of a list."""
    name = config.get("name")
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
    settings = {key: value for key, value in config.items() if key != "name"}
    settings = check_settings("model", settings, MODELS[name], supplied=("spec",))
    network = MODELS[name](spec, **settings)
    if spec.task == "ranking":
        return ItemScorer(network, item_dims=len(spec.input_shape))
    return network
