"""Stacked optimizer steps (trainlab/fused_optim.py) give every member the numbers torch's own
optimizer gives it alone, bit for bit, whatever its knobs and schedule; a member that leaves
the stack, and the state written back into its own optimizer, are torch's too."""

from __future__ import annotations

import pytest
import torch

from trainlab.fused_optim import stacked_optimizer

SHAPES = [(3, 4), (4,)]  # a weight and a bias
STEPS = 6


def _tensors(count: int, seed: int) -> list[list[torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [[torch.randn(shape, generator=generator) for shape in SHAPES] for _ in range(count)]


def _lr_at(step: int) -> float:
    return 1.0 / (1 + step)  # a factor a schedule would set between steps


def _alone(make, knobs, start, grads, steps) -> tuple[list, list]:
    """Each member trained by torch's optimizer on its own, for its own number of steps."""
    results, optimizers = [], []
    for member, settings in enumerate(knobs):
        params = [tensor.clone().requires_grad_(True) for tensor in start[member]]
        optimizer = make[member](params, **settings)
        for step in range(steps[member]):
            optimizer.param_groups[0]["lr"] = settings["lr"] * _lr_at(step)
            for param, grad in zip(params, grads[step][member], strict=True):
                param.grad = grad.clone()
            optimizer.step()
        results.append([param.detach() for param in params])
        optimizers.append(optimizer)
    return results, optimizers


def _flat(members: list[list[torch.Tensor]]) -> torch.Tensor:
    return torch.stack([torch.cat([t.reshape(-1) for t in member]) for member in members])


def _unflat(row: torch.Tensor) -> list[torch.Tensor]:
    pieces = row.split([torch.Size(shape).numel() for shape in SHAPES])
    return [piece.reshape(shape).clone() for piece, shape in zip(pieces, SHAPES, strict=True)]


def _together(make, knobs, start, grads, steps, resume_at=None):
    """The same members stacked: each leaves once its steps are done; with ``resume_at``, the
    stack is written back into the torch optimizers and rebuilt from them halfway."""
    count = len(knobs)
    holders = [[torch.zeros(shape, requires_grad=True) for shape in SHAPES] for _ in knobs]
    members = [make[m](holders[m], **knobs[m]) for m in range(count)]
    flat = _flat(start)
    optimizer = stacked_optimizer(flat, members)
    alive = list(range(count))
    finished: dict[int, list[torch.Tensor]] = {}
    for step in range(max(steps)):
        if step == resume_at:
            for position in range(len(alive)):
                optimizer.export(position)
            optimizer = stacked_optimizer(flat, [members[m] for m in alive])
        for m in alive:
            members[m].param_groups[0]["lr"] = knobs[m]["lr"] * _lr_at(step)
        optimizer.step(_flat([grads[step][m] for m in alive]))
        leaving = [position for position, m in enumerate(alive) if steps[m] == step + 1]
        for position in leaving:
            optimizer.export(position)
            finished[alive[position]] = _unflat(flat[position])
        if leaving:
            kept = torch.tensor(
                [p for p in range(len(alive)) if p not in leaving], dtype=torch.long
            )
            flat = flat[kept]
            optimizer.keep(kept, flat)
            alive = [alive[p] for p in kept.tolist()]
    return [finished[m] for m in range(count)], members


def _compare(alone, together) -> None:
    for member, (expected, got) in enumerate(zip(alone, together, strict=True)):
        for one, other in zip(expected, got, strict=True):
            torch.testing.assert_close(other, one, rtol=0, atol=0, msg=f"member {member}")


def _compare_state(alone_optimizers, together_optimizers) -> None:
    for member, (one, other) in enumerate(zip(alone_optimizers, together_optimizers, strict=True)):
        mine = one.state_dict()["state"]
        theirs = other.state_dict()["state"]
        assert mine.keys() == theirs.keys(), f"member {member}"
        for index in mine:
            assert mine[index].keys() == theirs[index].keys(), f"member {member}"
            for name, value in mine[index].items():
                if value is None:
                    assert theirs[index][name] is None
                else:
                    torch.testing.assert_close(theirs[index][name], value, rtol=0, atol=0)


SGD = torch.optim.SGD
SGD_KNOBS = [
    {"lr": 0.1, "momentum": 0.0, "dampening": 0.0, "weight_decay": 0.0, "nesterov": False},
    {"lr": 0.02, "momentum": 0.9, "dampening": 0.0, "weight_decay": 0.0, "nesterov": False},
    {"lr": 0.05, "momentum": 0.9, "dampening": 0.0, "weight_decay": 1e-2, "nesterov": True},
    {"lr": 0.03, "momentum": 0.5, "dampening": 0.3, "weight_decay": 1e-3, "nesterov": False},
]
ADAM_KNOBS = [
    {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0},
    {"lr": 3e-2, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.0},
    {"lr": 1e-1, "betas": (0.95, 0.9), "eps": 1e-8, "weight_decay": 1e-2},
    {"lr": 1e-2, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 1e-1, "amsgrad": True},
]
ADAM = [torch.optim.Adam, torch.optim.Adam, torch.optim.AdamW, torch.optim.Adam]
CASES = {
    "sgd": ([SGD] * 4, SGD_KNOBS),
    "sgd, all with momentum": ([SGD] * 3, SGD_KNOBS[1:]),
    "adam and adamw, one amsgrad": (ADAM, ADAM_KNOBS),
    "adamw only": ([torch.optim.AdamW] * 3, ADAM_KNOBS[:3]),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("resume_at", [None, 3])
def test_stacked_steps_give_each_member_torchs_numbers(case, resume_at):
    make, knobs = CASES[case]
    steps = [STEPS] * len(knobs)
    steps[1] = 2  # member 1 stops early and leaves the stack
    start, grads = _tensors(len(knobs), 0), [_tensors(len(knobs), 1 + s) for s in range(STEPS)]
    alone, alone_optimizers = _alone(make, knobs, start, grads, steps)
    together, members = _together(make, knobs, start, grads, steps, resume_at)
    _compare(alone, together)
    _compare_state(alone_optimizers, members)  # what a checkpoint of each member holds


def test_a_member_resumed_alone_continues_as_torch_would():
    """The state a stacked member hands its optimizer lets torch go on exactly."""
    make, knobs = CASES["adam and adamw, one amsgrad"]
    start, grads = _tensors(4, 0), [_tensors(4, 1 + s) for s in range(STEPS)]
    alone, _ = _alone(make, knobs, start, grads, [STEPS] * 4)
    half, members = _together(make, knobs, start, grads[:3], [3] * 4)
    for member in range(4):
        params = [tensor.clone().requires_grad_(True) for tensor in half[member]]
        optimizer = make[member](params, **knobs[member])
        optimizer.load_state_dict(members[member].state_dict())
        for step in range(3, STEPS):
            optimizer.param_groups[0]["lr"] = knobs[member]["lr"] * _lr_at(step)
            for param, grad in zip(params, grads[step][member], strict=True):
                param.grad = grad.clone()
            optimizer.step()
        _compare([alone[member]], [[p.detach() for p in params]])
