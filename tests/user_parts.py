"""A user's own parts, as tests name them by ``_target_`` (tests.user_parts.TinyNet)."""

from __future__ import annotations

import math

from torch import nn


class TinyNet(nn.Module):
    """One hidden layer, sized from the data through the shape arguments trainlab passes."""

    def __init__(self, input_shape: tuple, output_size: int, width: int = 16) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Flatten(), nn.Linear(math.prod(input_shape), width), nn.ReLU(),
            nn.Linear(width, output_size),
        )  # fmt: skip

    def forward(self, inputs):
        return self.layers(inputs)
