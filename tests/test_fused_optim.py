"""Stacked optimizer steps (trainlab/fused_optim.py) give every member the numbers torch's own
optimizer gives it alone, whatever its knobs, and leave inactive members untouched."""

from __future__ import annotations

import pytest
import torch

from trainlab.fused_optim import StackedAdam, StackedSGD

SHAPES = [(3, 4), (4,)]  # a weight and a bias


def _members(count: int, seed: int = 0) -> list[list[torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [[torch.randn(shape, generator=generator) for shape in SHAPES] for _ in range(count)]


def _grads(steps: int, count: int) -> list[list[list[torch.Tensor]]]:
    generator = torch.Generator().manual_seed(1)
    return [
        [[torch.randn(shape, generator=generator) for shape in SHAPES] for _ in range(count)]
        for _ in range(steps)
    ]


def _alone(make, knobs: list[dict], start, grads, active_steps) -> list[list[torch.Tensor]]:
    """Each member trained by torch's optimizer on its own, for its own number of steps."""
    results = []
    for member, settings in enumerate(knobs):
        params = [tensor.clone().requires_grad_(True) for tensor in start[member]]
        optimizer = make(params, **settings)
        for step in range(active_steps[member]):
            for param, grad in zip(params, grads[step][member], strict=True):
                param.grad = grad.clone()
            optimizer.step()
        results.append([param.detach() for param in params])
    return results


def _together(optimizer, params, grads, active_steps) -> list[list[torch.Tensor]]:
    for step in range(len(grads)):
        active = torch.tensor([step < steps for steps in active_steps])
        stacked = [torch.stack([grads[step][m][i] for m in range(len(active_steps))])
                   for i in range(len(SHAPES))]  # fmt: skip
        optimizer.step(stacked, active)
    return [[param[member] for param in params] for member in range(len(active_steps))]


def _compare(alone, together) -> None:
    for member, (expected, got) in enumerate(zip(alone, together, strict=True)):
        for one, other in zip(expected, got, strict=True):
            torch.testing.assert_close(other, one, rtol=1e-5, atol=1e-6, msg=f"member {member}")


SGD_KNOBS = [
    {"lr": 0.1, "momentum": 0.0, "dampening": 0.0, "weight_decay": 0.0, "nesterov": False},
    {"lr": 0.02, "momentum": 0.9, "dampening": 0.0, "weight_decay": 0.0, "nesterov": False},
    {"lr": 0.05, "momentum": 0.9, "dampening": 0.0, "weight_decay": 1e-2, "nesterov": True},
    {"lr": 0.03, "momentum": 0.5, "dampening": 0.3, "weight_decay": 1e-3, "nesterov": False},
]


def test_stacked_sgd_gives_each_member_torchs_numbers():
    start, grads, active_steps = _members(4), _grads(6, 4), [6, 6, 3, 6]  # member 2 stops early
    alone = _alone(torch.optim.SGD, SGD_KNOBS, start, grads, active_steps)
    params = [torch.stack([start[m][i] for m in range(4)]) for i in range(len(SHAPES))]
    knob = lambda name: torch.tensor([k[name] for k in SGD_KNOBS], dtype=torch.float32)  # noqa: E731
    optimizer = StackedSGD(
        params, knob("lr"), knob("momentum"), knob("dampening"), knob("weight_decay"),
        torch.tensor([k["nesterov"] for k in SGD_KNOBS]),
    )  # fmt: skip
    _compare(alone, _together(optimizer, params, grads, active_steps))


ADAM_KNOBS = [
    {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0},
    {"lr": 3e-2, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.0},
    {"lr": 1e-1, "betas": (0.95, 0.9), "eps": 1e-8, "weight_decay": 1e-2},
]


@pytest.mark.parametrize(("make", "decoupled", "amsgrad"), [
    (torch.optim.Adam, False, False), (torch.optim.Adam, False, True),
    (torch.optim.AdamW, True, False),
])  # fmt: skip
def test_stacked_adam_and_adamw_give_each_member_torchs_numbers(make, decoupled, amsgrad):
    start, grads, active_steps = _members(3), _grads(7, 3), [7, 2, 7]  # member 1 diverged at 2
    knobs = [{**k, "amsgrad": amsgrad} for k in ADAM_KNOBS]
    alone = _alone(make, knobs, start, grads, active_steps)
    params = [torch.stack([start[m][i] for m in range(3)]) for i in range(len(SHAPES))]
    knob = lambda name: torch.tensor([k[name] for k in ADAM_KNOBS])  # noqa: E731
    betas = (torch.tensor([k["betas"][0] for k in ADAM_KNOBS]),
             torch.tensor([k["betas"][1] for k in ADAM_KNOBS]))  # fmt: skip
    optimizer = StackedAdam(
        params, knob("lr"), betas, knob("eps"), knob("weight_decay"),
        decoupled=decoupled, amsgrad=amsgrad,
    )  # fmt: skip
    _compare(alone, _together(optimizer, params, grads, active_steps))
    assert optimizer.steps.tolist() == [7.0, 2.0, 7.0]  # bias corrections count own steps
