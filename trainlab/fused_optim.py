"""Optimizer steps for sweep members that train together (hydra/launcher=fused).

The members' parameters are one tensor, a row per member (``(members, P)``, each member's
parameters flattened in the model's order), and every per-member knob (lr, momentum, betas,
weight decay, ...) a column with one value per member, so that a step is a handful of
whole-tensor operations for all of the members: about the cost of one member's step. torch's
own optimizers take one lr per parameter tensor, not one per row of it, hence these two small
classes.

The rules are torch's own (``torch.optim.SGD``, ``Adam``, ``AdamW``, AMSGrad included), in the
order torch computes them, with its bias corrections taken in Python floats as torch takes
them; ``tests/test_fused_optim.py`` checks each against torch's optimizer run on every member
alone. The knobs are read from each member's own torch optimizer before every step, so that
its lr schedule (which sets them) runs unchanged, and the state goes back into that optimizer
(:meth:`StackedOptimizer.export`) whenever the member is checkpointed: a fused member's
checkpoint is the one it would write alone. Members that stop (early stopping, divergence)
leave the stack (:meth:`StackedOptimizer.keep`) rather than being masked at every step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

Tensor = torch.Tensor


def _column(values: Sequence[float], like: Tensor) -> Tensor:
    """One value per member, as a column that broadcasts over the ``(members, P)`` stack, in its
    dtype (each Python float rounded once, as torch rounds a scalar it is given)."""
    return torch.tensor(values, dtype=like.dtype, device=like.device).unsqueeze(1)


class StackedOptimizer:
    """What both rules share: the members' torch optimizers, the state, compaction."""

    STATE: tuple[str, ...] = ()  # the names of the per-parameter state tensors

    def __init__(self, flat: Tensor, members: Sequence[torch.optim.Optimizer]) -> None:
        self.flat = flat
        self.members = list(members)
        self.state = {name: self._stacked_state(name) for name in self.STATE}
        for optimizer in self.members:  # its schedule checks that it stepped; we step for it
            optimizer._opt_called = True  # type: ignore[attr-defined]
        self._read: tuple | None = None  # the knobs last read, and what was made of them
        self._made: Any = None

    @staticmethod
    def _member_params(optimizer: torch.optim.Optimizer) -> list[Tensor]:
        return list(optimizer.param_groups[0]["params"])

    def _stacked_state(self, name: str) -> Tensor:
        """The state ``name`` over the members (zeros where a member has none yet): a resumed
        member brings its checkpoint's."""
        rows = []
        for optimizer in self.members:
            parts = []
            for param in self._member_params(optimizer):
                own = optimizer.state.get(param, {}).get(name)
                parts.append(torch.zeros(param.numel()) if own is None else own.reshape(-1))
            rows.append(torch.cat([part.to(self.flat.device, self.flat.dtype) for part in parts]))
        return torch.stack(rows)

    def _split(self, row: Tensor, optimizer: torch.optim.Optimizer) -> list[Tensor]:
        """One member's row cut back into its parameters' shapes (copies)."""
        params = self._member_params(optimizer)
        pieces = row.split([param.numel() for param in params])
        return [piece.reshape(p.shape).clone() for piece, p in zip(pieces, params, strict=True)]

    def _knobs(self) -> Any:
        """What the members' knobs make (:meth:`_make`), made again only when one changed (a
        schedule sets the lr every step, every epoch, or never)."""
        read = tuple(self._knobs_of(optimizer) for optimizer in self.members)
        if read != self._read:
            self._read, self._made = read, self._make(list(zip(*read, strict=True)))
        return self._made

    def _knobs_of(self, optimizer: torch.optim.Optimizer) -> tuple:
        raise NotImplementedError

    def _make(self, columns: list[tuple]) -> Any:
        raise NotImplementedError

    def keep(self, kept: Tensor, flat: Tensor) -> None:
        """Only the members at positions ``kept`` go on, with the stack's new ``flat``."""
        self.members = [self.members[p] for p in kept.tolist()]
        self.flat = flat
        self.state = {name: tensor[kept] for name, tensor in self.state.items()}
        self._read = None

    def export(self, position: int) -> None:
        """Write the member's row of the state into its own torch optimizer."""
        raise NotImplementedError

    def step(self, grad: Tensor) -> None:
        raise NotImplementedError


class StackedSGD(StackedOptimizer):
    """torch.optim.SGD for stacked members: weight decay, momentum with dampening, Nesterov.

    Members may mix these freely (plain SGD, momentum and Nesterov in one group): each one's
    update is chosen by 0/1 factors, which are exact on finite numbers."""

    STATE = ("momentum_buffer",)

    def __init__(self, flat: Tensor, members: Sequence[torch.optim.Optimizer]) -> None:
        super().__init__(flat, members)
        # torch's first momentum step takes the gradient as the buffer: whether there is one yet
        moving = [o for o in self.members if o.param_groups[0]["momentum"] != 0]
        self.started = bool(moving) and all(self._has_buffer(o) for o in moving)

    def _has_buffer(self, optimizer: torch.optim.Optimizer) -> bool:
        state = optimizer.state.get(self._member_params(optimizer)[0], {})
        return state.get("momentum_buffer") is not None

    def _knobs_of(self, optimizer: torch.optim.Optimizer) -> tuple:
        group = optimizer.param_groups[0]
        return tuple(group[k] for k in ("lr", "momentum", "dampening", "weight_decay", "nesterov"))

    def _make(self, columns: list[tuple]) -> dict[str, Any]:
        lr, momentum, dampening, decay, nesterov = columns
        plain = [value == 0 for value in momentum]
        kinds = list(zip(nesterov, plain, strict=True))
        flat = self.flat
        return {
            "step": _column([-value for value in lr], flat),  # torch's alpha=-lr
            "decay": _column(decay, flat) if any(decay) else None,
            "momentum": None if all(plain) else _column(momentum, flat),
            "damped": _column([1 - value for value in dampening], flat),
            # plain: the update; Nesterov: update + momentum x buffer; otherwise the buffer
            "ahead": _column([float(n and not p) for n, p in kinds], flat),
            "buffer": _column([float(not n and not p) for n, p in kinds], flat),
            "plain": _column([float(p) for p in plain], flat),
        }

    @torch.no_grad()
    def step(self, grad: Tensor) -> None:
        knobs = self._knobs()
        # torch's x.add(y, alpha=a) is what addcmul(x, y, a) computes, rounding included
        update = grad if knobs["decay"] is None else grad.addcmul(self.flat, knobs["decay"])
        if knobs["momentum"] is not None:
            update = self._with_momentum(update, knobs)
        self.flat.addcmul_(update, knobs["step"])

    def _with_momentum(self, update: Tensor, knobs: dict[str, Any]) -> Tensor:
        buffer = self.state["momentum_buffer"]
        if not self.started:
            buffer.copy_(update)
            self.started = True
        else:
            buffer.mul_(knobs["momentum"]).addcmul_(update, knobs["damped"])
        ahead = update.addcmul(buffer, knobs["momentum"])
        chosen = ahead * knobs["ahead"] + buffer * knobs["buffer"]
        return chosen + update * knobs["plain"]

    def export(self, position: int) -> None:
        optimizer = self.members[position]
        if optimizer.param_groups[0]["momentum"] == 0 or not self.started:
            return  # torch keeps no state for plain SGD, nor before the first step
        buffers = self._split(self.state["momentum_buffer"][position], optimizer)
        for param, buffer in zip(self._member_params(optimizer), buffers, strict=True):
            optimizer.state[param] = {"momentum_buffer": buffer}


def _decoupled(optimizer: torch.optim.Optimizer) -> bool:
    group = optimizer.param_groups[0]
    return bool(group.get("decoupled_weight_decay")) or isinstance(optimizer, torch.optim.AdamW)


class StackedAdam(StackedOptimizer):
    """torch.optim.Adam and AdamW (decoupled weight decay) for stacked members, with AMSGrad
    where a member asks for it."""

    STATE = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")

    def __init__(self, flat: Tensor, members: Sequence[torch.optim.Optimizer]) -> None:
        super().__init__(flat, members)
        self.steps = []  # each member's steps so far
        for optimizer in self.members:
            state = optimizer.state.get(self._member_params(optimizer)[0], {})
            self.steps.append(float(state["step"]) if "step" in state else 0.0)

    def keep(self, kept: Tensor, flat: Tensor) -> None:
        super().keep(kept, flat)
        self.steps = [self.steps[p] for p in kept.tolist()]

    def _knobs_of(self, optimizer: torch.optim.Optimizer) -> tuple:
        group = optimizer.param_groups[0]
        beta1, beta2 = group["betas"]
        return (
            group["lr"], beta1, beta2, group["eps"], group["weight_decay"],
            _decoupled(optimizer), bool(group["amsgrad"]),
        )  # fmt: skip

    def _make(self, columns: list[tuple]) -> dict[str, Any]:
        lr, beta1, beta2, eps, decay, decoupled, amsgrad = columns
        flat = self.flat
        coupled = [d * (not w) for d, w in zip(decay, decoupled, strict=True)]
        shrink = [1 - r * d * w for r, d, w in zip(lr, decay, decoupled, strict=True)]
        chosen = torch.tensor(amsgrad, device=flat.device).unsqueeze(1)
        return {
            "lr": lr, "beta1": beta1, "beta2": beta2,
            "coupled": _column(coupled, flat) if any(coupled) else None,  # Adam's decay
            "shrink": _column(shrink, flat) if any(s != 1 for s in shrink) else None,  # AdamW's
            "average": _column([1 - b for b in beta1], flat),
            "keep_square": _column(beta2, flat),
            "square": _column([1 - b for b in beta2], flat),
            "eps": _column(eps, flat),
            "amsgrad": None if not any(amsgrad) else (True if all(amsgrad) else chosen),
        }  # fmt: skip

    @torch.no_grad()
    def step(self, grad: Tensor) -> None:
        knobs, flat = self._knobs(), self.flat
        self.steps = [step + 1 for step in self.steps]
        steps = list(zip(knobs["lr"], knobs["beta1"], knobs["beta2"], self.steps, strict=True))
        step_size = [lr / (1 - beta1**step) for lr, beta1, _, step in steps]
        root = [(1 - beta2**step) ** 0.5 for _, _, beta2, step in steps]
        if knobs["coupled"] is not None:  # Adam: the decay joins the gradient
            grad = grad.addcmul(flat, knobs["coupled"])
        if knobs["shrink"] is not None:  # AdamW: the weights shrink first
            flat.mul_(knobs["shrink"])
        exp_avg, exp_avg_sq = self.state["exp_avg"], self.state["exp_avg_sq"]
        # torch's operations in its order (addcmul: value x t1 x t2; addcdiv: value x t1 / t2),
        # with each per-member scalar folded into the first operand
        exp_avg.lerp_(grad, knobs["average"])
        exp_avg_sq.mul_(knobs["keep_square"]).addcmul_(knobs["square"] * grad, grad)
        denominator = self._second_moment(knobs["amsgrad"]).sqrt()
        denominator.div_(_column(root, flat)).add_(knobs["eps"])
        flat.addcdiv_(_column([-size for size in step_size], flat) * exp_avg, denominator)

    def _second_moment(self, amsgrad: Tensor | bool | None) -> Tensor:
        """What each member divides by: AMSGrad's running maximum, or its own."""
        exp_avg_sq = self.state["exp_avg_sq"]
        if amsgrad is None:
            return exp_avg_sq
        maxima = self.state["max_exp_avg_sq"]
        torch.maximum(maxima, exp_avg_sq, out=maxima)
        return maxima if amsgrad is True else torch.where(amsgrad, maxima, exp_avg_sq)

    def export(self, position: int) -> None:
        optimizer = self.members[position]
        step = self.steps[position]
        if step == 0:
            return  # torch keeps no state before the first step
        names = ["exp_avg", "exp_avg_sq"]
        if optimizer.param_groups[0]["amsgrad"]:
            names.append("max_exp_avg_sq")
        parts = {name: self._split(self.state[name][position], optimizer) for name in names}
        for index, param in enumerate(self._member_params(optimizer)):
            state = {"step": torch.tensor(step, dtype=torch.float32)}
            state.update({name: parts[name][index] for name in names})
            optimizer.state[param] = state


STACKED = {
    torch.optim.SGD: StackedSGD,
    torch.optim.Adam: StackedAdam,
    torch.optim.AdamW: StackedAdam,
}


def stacked_optimizer(flat: Tensor, members: Sequence[torch.optim.Optimizer]) -> StackedOptimizer:
    """The stacked rule for ``members`` (torch optimizers of one family, checked by grouping)
    over their parameters ``flat`` (one row each)."""
    return STACKED[type(members[0])](flat, members)
