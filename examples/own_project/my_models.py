"""A model of your own: any torch.nn.Module. trainlab passes the data's shape to the arguments
your class names (input_shape, output_size, task, num_classes); the rest come from its config
file, conf/model/resmlp.yaml, or the command line (model.width=128)."""

import math

from torch import nn


class ResidualMLP(nn.Module):
    """An MLP whose hidden blocks add their input back: x + f(x)."""

    def __init__(self, input_shape: tuple, output_size: int, width: int = 64, blocks: int = 2):
        super().__init__()
        self.embed = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), width))
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.GELU())
            for _ in range(blocks)
        )
        self.head = nn.Linear(width, output_size)

    def forward(self, inputs):
        hidden = self.embed(inputs)
        for block in self.blocks:
            hidden = hidden + block(hidden)
        return self.head(hidden)
