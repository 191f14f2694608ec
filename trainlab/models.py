"""Models by name, sized from the dataset spec: the user never types input or output sizes."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, Literal

import torch
from torch import nn

from trainlab.data.base import DatasetSpec
from trainlab.settings import choose, fraction, require
from trainlab.user_code import build_user_model, is_user_part

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


def _needs_images(spec: DatasetSpec, model: str) -> None:
    require(
        len(spec.input_shape) == 3,
        f"model={model} needs image data (dataset=mnist, fashion_mnist, cifar10 or image_folder), "
        f"not dataset={spec.name}; use model=mlp or model=linear there",
    )


def cnn(
    spec: DatasetSpec, channels: list[int], dense: int, dropout: float, batch_norm: bool
) -> nn.Module:
    """The tutorials' convnet: per stage a 3x3 conv (+ batch norm), ReLU and 2x2 max pooling,
    then a dense layer; 28x28x1 and 32x32x3 inputs both fit."""
    _needs_images(spec, "cnn")
    require(
        all(c >= 1 for c in channels) and channels,
        f"model.channels must be positive integers, got {list(channels)}",
    )
    require(dense >= 1, f"model.dense must be >= 1, got {dense}")
    fraction("model.dropout", dropout, open_right=True)
    in_channels, height, width = spec.input_shape
    require(
        min(height, width) >> len(channels) >= 1,
        f"model.channels has {len(channels)} pooling stages, too many for {height}x{width} images",
    )
    layers: list[nn.Module] = []
    for out_channels in channels:
        layers.append(nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm2d(out_channels))
        layers += [nn.ReLU(inplace=True), nn.MaxPool2d(2)]
        in_channels, height, width = out_channels, height // 2, width // 2
    layers += [nn.Flatten(), nn.Linear(in_channels * height * width, dense), nn.ReLU(inplace=True)]
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(dense, spec.output_size))
    return nn.Sequential(*layers)


def _conv_bn(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class _Residual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv_bn(channels, channels), _conv_bn(channels, channels))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return inputs + self.body(inputs)


class _Scale(nn.Module):
    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return inputs * self.factor


def resnet(spec: DatasetSpec, width: int, logit_scale: float) -> nn.Module:
    """ResNet-9 (the DAWNBench CIFAR-10 net of Myrtle.ai): channels width-2w-4w-8w, residual
    blocks after the first and last pooling, global max pooling, scaled logits. Trains to good
    CIFAR-10 accuracy in few epochs."""
    _needs_images(spec, "resnet")
    require(width >= 1, f"model.width must be >= 1, got {width}")
    # Three 2x2 poolings; below 16 pixels the last residual block sees 1x1 maps, whose batch
    # norm fails on a batch of one image.
    height, width_pixels = spec.input_shape[1:]
    require(
        min(height, width_pixels) >= 16,
        f"model=resnet needs images of at least 16x16 pixels, got {height}x{width_pixels}; "
        "use a larger dataset.image_size, or model=cnn",
    )
    in_channels = spec.input_shape[0]
    return nn.Sequential(
        _conv_bn(in_channels, width),
        _conv_bn(width, 2 * width),
        nn.MaxPool2d(2),
        _Residual(2 * width),
        _conv_bn(2 * width, 4 * width),
        nn.MaxPool2d(2),
        _conv_bn(4 * width, 8 * width),
        nn.MaxPool2d(2),
        _Residual(8 * width),
        nn.AdaptiveMaxPool2d(1),
        nn.Flatten(),
        nn.Linear(8 * width, spec.output_size, bias=False),
        _Scale(logit_scale),
    )


MODELS: dict[str, Callable[..., nn.Module]] = {
    "linear": linear,
    "mlp": mlp,
    "cnn": cnn,
    "resnet": resnet,
}


class Autocast(nn.Module):
    """Runs the wrapped model under autocast (bf16) and hands float32 outputs to the loss."""

    def __init__(self, module: nn.Module, device_type: str, dtype: torch.dtype) -> None:
        super().__init__()
        self.module = module
        self.device_type = device_type
        self.dtype = dtype

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device_type, dtype=self.dtype):
            return self.module(inputs).float()


def uses_convolutions(model: nn.Module) -> bool:
    return any(isinstance(module, nn.Conv2d) for module in model.modules())


def for_device(
    model: nn.Module,
    device: torch.device,
    precision: str,
    channels_last: bool,
    compile_model: bool,
) -> nn.Module:
    """Move ``model`` to ``device`` in the requested memory format, precision and compilation."""
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if precision == "bf16":
        model = Autocast(model, device.type, torch.bfloat16)
    if compile_model:
        model = torch.compile(model)
    return model


def build_model(config: Mapping[str, Any], spec: DatasetSpec) -> nn.Module:
    """Build the configured model for ``spec`` (a built-in by name, or the user's own by
    ``_target_``); ranking models score each item of a list."""
    if is_user_part(config):
        network = build_user_model(config, spec)
    else:
        _, build, settings = choose("model", config, MODELS, supplied=("spec",))
        network = build(spec, **settings)
    if spec.task == "ranking":
        return ItemScorer(network, item_dims=len(spec.input_shape))
    return network
