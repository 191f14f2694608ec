"""Turn uint8 images into model inputs on the training device, as batched tensor ops: each split
is scaled and normalized once when it reaches the device, and training batches get random flips
and translations as they are drawn."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

Normalization = Literal["channel", "image", "none"]


class ImageBatches:
    """Prepares ``(batch, channels, height, width)`` images: :meth:`normalize` turns a whole uint8
    split into float inputs, calling the object augments a batch of them (given a generator).

    normalize: ``channel`` subtracts the training set's per-channel mean and divides by its std;
    ``image`` standardizes each image on its own; ``none`` only scales to [0, 1].
    Training batches may be flipped left-right (``flip``) and shifted by up to ``translate``
    pixels in each direction with zero fill (random crop of a zero-padded image).
    """

    def __init__(
        self,
        normalize: Normalization,
        mean: torch.Tensor,
        std: torch.Tensor,
        flip: bool,
        translate: int,
        channels_last: bool = False,
    ) -> None:
        self.normalization = normalize
        self.mean = mean.reshape(1, -1, 1, 1)
        self.std = std.reshape(1, -1, 1, 1)
        self.flip = flip
        self.translate = translate
        self.channels_last = channels_last

    def to(self, device: torch.device) -> ImageBatches:
        return ImageBatches(
            self.normalization, self.mean.to(device), self.std.to(device), self.flip, self.translate,
            self.channels_last,
        )  # fmt: skip

    def normalize(self, images: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
        """Float32 inputs from uint8 ``images``, a chunk at a time to bound the peak memory."""
        return (
            torch.cat([self._normalize(part) for part in images.split(chunk)])
            if len(images)
            else images.float()
        )

    def _normalize(self, images: torch.Tensor) -> torch.Tensor:
        inputs = images.float().div_(255)
        if self.normalization == "channel":
            inputs = (inputs - self.mean) / self.std
        elif self.normalization == "image":
            flat = inputs.flatten(1)
            mean = flat.mean(1).reshape(-1, 1, 1, 1)
            std = flat.std(1).clamp_min(1.0 / 255).reshape(-1, 1, 1, 1)
            inputs = (inputs - mean) / std
        return inputs

    def __call__(self, inputs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """A batch of normalized inputs, augmented when a ``generator`` is given."""
        if generator is not None:
            if self.flip:
                inputs = random_flip(inputs, generator)
            if self.translate > 0:
                inputs = random_translate(inputs, self.translate, generator)
        if self.channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        return inputs


def random_flip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror a random half of the batch left-right."""
    flip = torch.rand(images.shape[0], device=images.device, generator=generator) < 0.5
    return torch.where(flip.reshape(-1, 1, 1, 1), images.flip(-1), images)


def random_translate(images: torch.Tensor, pixels: int, generator: torch.Generator) -> torch.Tensor:
    """Shift each image by its own random (dy, dx) in [-pixels, pixels], filling with zeros."""
    batch, _, height, width = images.shape
    padded = F.pad(images, (pixels, pixels, pixels, pixels))
    shifts = torch.randint(0, 2 * pixels + 1, (2, batch), device=images.device, generator=generator)
    rows = torch.arange(height, device=images.device) + shifts[0].unsqueeze(1)  # (batch, H)
    columns = torch.arange(width, device=images.device) + shifts[1].unsqueeze(1)  # (batch, W)
    index = torch.arange(batch, device=images.device).reshape(-1, 1, 1)
    # (batch, H, W, C) after advanced indexing on dims 0, 2, 3; back to (batch, C, H, W).
    moved = padded.permute(0, 2, 3, 1)[index, rows.unsqueeze(2), columns.unsqueeze(1)]
    return moved.permute(0, 3, 1, 2)
