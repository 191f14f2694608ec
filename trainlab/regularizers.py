"""Explicit weight penalties added to the data loss (and logged apart from it).

Conventions: l1 = strength * sum|w|; l2 = strength/2 * sum w^2 (so its gradient is strength * w,
the same as SGD's coupled weight_decay=strength); elastic_net = strength * (l1_ratio * sum|w| +
(1 - l1_ratio)/2 * sum w^2), as in scikit-learn. Biases and other 1-D parameters are left out
unless ``include_bias`` is true.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from trainlab.settings import choose, fraction, non_negative

Penalty = Callable[[], torch.Tensor]


def _penalised(model: nn.Module, include_bias: bool) -> list[torch.Tensor]:
    return [p for p in model.parameters() if p.requires_grad and (include_bias or p.dim() > 1)]


def _elastic(model: nn.Module, strength: float, l1_ratio: float, include_bias: bool) -> Penalty:
    parameters = _penalised(model, include_bias)

    def penalty() -> torch.Tensor:
        total = parameters[0].new_zeros(())
        for parameter in parameters:
            if l1_ratio > 0:
                total = total + l1_ratio * parameter.abs().sum()
            if l1_ratio < 1:
                total = total + (1 - l1_ratio) / 2 * parameter.pow(2).sum()
        return strength * total

    return penalty


def none(model: nn.Module) -> Penalty | None:
    """No penalty."""
    return None


def l1(model: nn.Module, strength: float, include_bias: bool) -> Penalty:
    non_negative("regularizer.strength", strength)
    return _elastic(model, strength, 1.0, include_bias)


def l2(model: nn.Module, strength: float, include_bias: bool) -> Penalty:
    non_negative("regularizer.strength", strength)
    return _elastic(model, strength, 0.0, include_bias)


def elastic_net(model: nn.Module, strength: float, l1_ratio: float, include_bias: bool) -> Penalty:
    non_negative("regularizer.strength", strength)
    fraction("regularizer.l1_ratio", l1_ratio)
    return _elastic(model, strength, l1_ratio, include_bias)


REGULARIZERS: dict[str, Callable[..., Penalty | None]] = {
    "none": none,
    "l1": l1,
    "l2": l2,
    "elastic_net": elastic_net,
}


def build_regularizer(config: Mapping[str, Any], model: nn.Module) -> Penalty | None:
    """The configured penalty over ``model``'s weights, or None for no penalty."""
    _, build, settings = choose("regularizer", config, REGULARIZERS, supplied=("model",))
    return build(model, **settings)


def penalty_terms(config: Mapping[str, Any]) -> tuple[float, float, bool]:
    """The configured penalty as numbers for stacked sweep members (trainlab.fused_engine):
    strength, l1_ratio and include_bias in the conventions above; no penalty is strength 0."""
    name = config["name"]
    if name == "none":
        return 0.0, 0.0, False
    l1_ratio = {"l1": 1.0, "l2": 0.0}.get(name, config.get("l1_ratio", 0.0))
    return float(config["strength"]), float(l1_ratio), bool(config["include_bias"])
