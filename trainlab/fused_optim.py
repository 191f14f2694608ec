"""Optimizer steps for sweep members that train together: every parameter is stacked over the
members along a leading dimension, and every per-member knob (lr, momentum, betas, weight
decay, ...) is a tensor with one value per member, so that one step updates all of the members
at about the cost of one member's step.

The rules are torch's own (``torch.optim.SGD``, ``Adam``, ``AdamW``), written for stacked
tensors in the order torch computes them; ``tests/test_fused_optim.py`` checks each against
torch's optimizer run on every member alone. A member whose ``active`` flag is false (one that
diverged, or stopped early) keeps its parameters and its optimizer state as they are.

This is the optimizer half of fused sweep groups (issue 18); the group's training loop is not
built yet.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

Tensor = torch.Tensor


def per_member(values: Tensor, like: Tensor) -> Tensor:
    """``values`` (one per member) shaped to broadcast over a stacked ``(members, ...)`` tensor."""
    return values.reshape(-1, *([1] * (like.dim() - 1))).to(like.dtype)


class StackedSGD:
    """torch.optim.SGD for stacked members: weight decay, momentum with dampening, Nesterov."""

    def __init__(
        self,
        params: Sequence[Tensor],
        lr: Tensor,
        momentum: Tensor,
        dampening: Tensor,
        weight_decay: Tensor,
        nesterov: Tensor,
    ) -> None:
        self.params = list(params)
        self.lr, self.momentum, self.dampening = lr, momentum, dampening
        self.weight_decay, self.nesterov = weight_decay, nesterov.bool()
        self.buffers = [torch.zeros_like(param) for param in self.params]
        self.steps = torch.zeros(len(lr), dtype=torch.long, device=lr.device)

    @torch.no_grad()
    def step(self, grads: Sequence[Tensor], active: Tensor) -> None:
        for param, grad, buffer in zip(self.params, grads, self.buffers, strict=True):
            momentum = per_member(self.momentum, param)
            update = grad + per_member(self.weight_decay, param) * param
            first = per_member(self.steps == 0, param).bool()
            carried = buffer * momentum + update * (1 - per_member(self.dampening, param))
            new_buffer = torch.where(first, update, carried)
            nesterov = per_member(self.nesterov, param).bool()
            with_momentum = torch.where(nesterov, update + momentum * new_buffer, new_buffer)
            uses_momentum = momentum != 0
            direction = torch.where(uses_momentum, with_momentum, update)
            moving = per_member(active, param).bool()
            buffer.copy_(torch.where(moving & uses_momentum, new_buffer, buffer))
            param.copy_(torch.where(moving, param - per_member(self.lr, param) * direction, param))
        self.steps += active.long()


class StackedAdam:
    """torch.optim.Adam (``decoupled=False``) or AdamW (``decoupled=True``) for stacked
    members, with AMSGrad when asked. Bias corrections are taken in float64 and then cast, as
    torch computes them in Python floats."""

    def __init__(
        self,
        params: Sequence[Tensor],
        lr: Tensor,
        betas: tuple[Tensor, Tensor],
        eps: Tensor,
        weight_decay: Tensor,
        *,
        decoupled: bool = False,
        amsgrad: bool = False,
    ) -> None:
        self.params = list(params)
        self.lr, (self.beta1, self.beta2), self.eps = lr, betas, eps
        self.weight_decay, self.decoupled, self.amsgrad = weight_decay, decoupled, amsgrad
        self.exp_avgs = [torch.zeros_like(param) for param in self.params]
        self.exp_avg_sqs = [torch.zeros_like(param) for param in self.params]
        self.max_exp_avg_sqs = [torch.zeros_like(param) for param in self.params]
        self.steps = torch.zeros(len(lr), dtype=torch.float64, device=lr.device)

    @torch.no_grad()
    def step(self, grads: Sequence[Tensor], active: Tensor) -> None:
        steps = self.steps + active.to(torch.float64)
        lr, beta1, beta2 = (value.to(torch.float64) for value in (self.lr, self.beta1, self.beta2))
        step_size = lr / (1 - beta1**steps)
        correction2_sqrt = (1 - beta2**steps).sqrt()
        for index, (param, grad) in enumerate(zip(self.params, grads, strict=True)):
            self._one(index, param, grad, per_member(active, param).bool(),
                      per_member(step_size, param), per_member(correction2_sqrt, param))  # fmt: skip
        self.steps = steps

    def _one(
        self, index: int, param: Tensor, grad: Tensor, moving: Tensor, step_size: Tensor,
        correction2_sqrt: Tensor,
    ) -> None:  # fmt: skip
        decay = per_member(self.weight_decay, param)
        if self.decoupled:
            decayed = param * (1 - per_member(self.lr, param) * decay)
        else:
            decayed, grad = param, grad + decay * param
        exp_avg, exp_avg_sq = self.exp_avgs[index], self.exp_avg_sqs[index]
        new_avg = exp_avg.lerp(grad, 1 - per_member(self.beta1, param))
        beta2 = per_member(self.beta2, param)
        new_avg_sq = exp_avg_sq * beta2 + grad * grad * (1 - beta2)
        second = new_avg_sq
        if self.amsgrad:
            second = torch.maximum(self.max_exp_avg_sqs[index], new_avg_sq)
            self.max_exp_avg_sqs[index].copy_(
                torch.where(moving, second, self.max_exp_avg_sqs[index])
            )
        denom = second.sqrt() / correction2_sqrt + per_member(self.eps, param)
        updated = decayed - step_size * (new_avg / denom)
        exp_avg.copy_(torch.where(moving, new_avg, exp_avg))
        exp_avg_sq.copy_(torch.where(moving, new_avg_sq, exp_avg_sq))
        param.copy_(torch.where(moving, updated, param))
