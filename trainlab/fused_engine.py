"""Training a group of sweep members together: their weights stacked, one row per member; one
batched forward and backward for all (``mlp`` and ``linear`` as batched matrix products, other
models, such as the ranking item scorer, through ``torch.func.vmap``); one stacked optimizer
step (trainlab.fused_optim).

Each member keeps its own engine loop (trainlab.engine's ``_Loop``: its counters, logging,
validation, early stopping, divergence, best weights and checkpoints), its own data order,
lr schedule and torch optimizer; only the arithmetic of a step is shared. A member that stops
(early stopping, divergence, its last epoch) leaves the stack, and the others go on untouched.
Before a member validates or writes a checkpoint, its slice of the stack is copied into its
own model and optimizer, so that what it evaluates and saves is what it would alone.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, vmap

from trainlab.engine import LOSS, PENALTY, FitResult, FitState, _Loop
from trainlab.fused_optim import StackedOptimizer, stacked_optimizer

Tensor = torch.Tensor
# vmap runs a loss without a batching rule of its own (multi_margin_loss, kl_div) member by
# member, and says so at every step: the numbers are right, and the step still shared.
warnings.filterwarnings("ignore", "There is a performance drop because we have not yet implemented")


@dataclass(frozen=True)
class PenaltyTerms:
    """A member's weight penalty as numbers (trainlab.regularizers' conventions): strength x
    (l1_ratio x sum|w| + (1 - l1_ratio)/2 x sum w^2), biases only with include_bias."""

    strength: float = 0.0
    l1_ratio: float = 0.0
    include_bias: bool = False


class MemberLoop(_Loop):
    """One member's engine loop, stepped by its group (:class:`GroupFit`) instead of itself."""

    position = 0  # the member's place in the stack while it trains
    checkpoint_due = True  # whether the group's checkpoints are due at this epoch's end

    def _logged_grad_norm(self) -> Tensor:
        return self.grad_norm  # the group's, for this member, before clipping

    def _checkpoint(self, mid_epoch: bool = False) -> None:
        """At an epoch's end, only when the group's round is due, or the member stops or is
        asked to (mid-epoch checkpoints are the stops' and checkpoint.every_steps')."""
        ending = (
            self.state.status != "completed" or self.state.epochs_finished >= self.settings.epochs
        )
        if mid_epoch or ending or self.checkpoint_due or self.stop_requested():
            super()._checkpoint(mid_epoch)


class StackedModels:
    """The members' weights as stacked tensors, and one training step for all of them."""

    def __init__(
        self, models: Sequence[nn.Module], loss_keys: Sequence[str],
        loss_fns: Sequence[Callable[[Tensor, Tensor], Tensor]],
        penalties: Sequence[PenaltyTerms], clips: Sequence[float | None],
        optimizers: Sequence[torch.optim.Optimizer],
    ) -> None:  # fmt: skip
        self.base = models[0]  # the architecture every member shares (its weights are not used)
        named = [(n, p) for n, p in self.base.named_parameters() if p.requires_grad]
        self.names = [name for name, _ in named]
        self.shapes = [param.shape for _, param in named]
        self.sizes = [param.numel() for _, param in named]
        rows = [
            torch.cat(
                [dict(m.named_parameters())[name].detach().reshape(-1) for name in self.names]
            )
            for m in models
        ]
        self.flat = torch.stack(rows).requires_grad_(True)  # one row of weights per member
        self.loss_keys, self.loss_fns = list(loss_keys), list(loss_fns)
        self.penalties, self.clips = list(penalties), list(clips)
        self.optimizer: StackedOptimizer = stacked_optimizer(self.flat, optimizers)
        self.layered = layered_forward(self.base)
        self._member_forward = vmap(self._forward, in_dims=(0, 0))
        self._shared_forward = vmap(self._forward, in_dims=(0, None))
        self._index()

    def params(self) -> list[Tensor]:
        """The stacked parameters, ``(members, *shape)`` views of the flat rows."""
        pieces = self.flat.split(self.sizes, dim=1)
        return [piece.view(-1, *shape) for piece, shape in zip(pieces, self.shapes, strict=True)]

    def _forward(self, params: Sequence[Tensor], inputs: Tensor) -> Tensor:
        weights = dict(zip(self.names, params, strict=True))
        return functional_call(self.base, weights, (inputs,), tie_weights=False)

    def _index(self) -> None:
        """Per-member tensors for the members now in the stack."""
        device = self.flat.device
        parts: dict[str, list[int]] = {}
        for position, key in enumerate(self.loss_keys):
            parts.setdefault(key, []).append(position)
        self.parts = [
            (torch.tensor(p, device=device), _stacked(self.loss_fns[p[0]])) for p in parts.values()
        ]
        order = torch.cat([index for index, _ in self.parts])
        self.unsort = torch.empty_like(order)
        self.unsort[order] = torch.arange(len(order), device=device)
        self.strength = torch.tensor([p.strength for p in self.penalties], device=device)
        self.l1 = torch.tensor([p.l1_ratio for p in self.penalties], device=device)
        self.with_bias = torch.tensor(
            [float(p.include_bias) for p in self.penalties], device=device
        )
        self.penalized = torch.nonzero(self.strength).flatten()
        clips = [float("inf") if c is None else c for c in self.clips]
        self.clip = (
            torch.tensor(clips, device=device) if any(c is not None for c in self.clips) else None
        )

    def step(
        self, inputs: Tensor, targets: Tensor, shared: bool, want_norms: bool
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """One optimizer step for every member on its batch (``shared``: one batch for all);
        each member's data loss and penalty, and (when asked) its gradient norm before
        clipping."""
        params = self.params()
        if self.layered is not None:
            outputs = self.layered(params, inputs, shared)
        else:
            outputs = (self._shared_forward if shared else self._member_forward)(params, inputs)
        losses = self._losses(outputs, targets, shared)
        penalties = self._penalties(params) if len(self.penalized) else None
        total = losses.sum() if penalties is None else (losses + penalties).sum()
        (grad,) = torch.autograd.grad(total, self.flat)
        norms = None
        if want_norms or self.clip is not None:  # as clip_grad_norm_ takes it, per member
            norms = torch.linalg.vector_norm(grad, dim=1)
        if self.clip is not None:  # a member without clipping is multiplied by exactly 1
            factor = (self.clip / (norms + 1e-6)).clamp(max=1.0)
            grad = grad * torch.where(self.clip.isinf(), 1.0, factor).unsqueeze(1)
        self.optimizer.step(grad)
        return losses.detach(), None if penalties is None else penalties.detach(), norms

    def _losses(self, outputs: Tensor, targets: Tensor, shared: bool) -> Tensor:
        """Each member's mean loss, by its own loss function: one batched call per loss (the
        loss's own ``stacked`` form, or vmap's)."""
        values = []
        for index, batched in self.parts:
            mine = outputs if len(self.parts) == 1 else outputs[index]
            theirs = targets.expand(len(index), *targets.shape) if shared else targets
            values.append(batched(mine, theirs if len(self.parts) == 1 else theirs[index]))
        return values[0] if len(values) == 1 else torch.cat(values)[self.unsort]

    def _penalties(self, params: list[Tensor]) -> Tensor:
        """regularizers' penalty per member, summed in its order. Only the members with a
        penalty take part (the others' is an exact 0 with no gradient, even when their weights
        have grown past float range)."""
        taking = self.penalized
        strength, l1 = self.strength[taking], self.l1[taking]
        total = torch.zeros_like(strength)
        for param in params:
            counted = torch.ones_like(strength) if param.dim() > 2 else self.with_bias[taking]
            flat = param[taking].flatten(1)
            total = total + counted * l1 * flat.abs().sum(1)
            total = total + counted * (1 - l1) / 2 * flat.pow(2).sum(1)
        return torch.zeros_like(self.strength).index_add(0, taking, strength * total)

    @torch.no_grad()
    def copy_weights(self, position: int, model: nn.Module) -> None:
        """The member's weights into its own model (what it validates and saves)."""
        weights = dict(model.named_parameters())
        for name, param in zip(self.names, self.params(), strict=True):
            weights[name].copy_(param[position])

    def copy_into(self, position: int, model: nn.Module) -> None:
        """Its weights into its model, and its optimizer state into its own optimizer (what
        its checkpoint holds)."""
        self.copy_weights(position, model)
        self.optimizer.export(position)

    def keep(self, kept: Sequence[int]) -> None:
        """Only the members at positions ``kept`` go on."""
        index = torch.tensor(kept, dtype=torch.long, device=self.flat.device)
        self.flat = self.flat.detach()[index].requires_grad_(True)
        self.optimizer.keep(index, self.flat)
        self.loss_keys = [self.loss_keys[p] for p in kept]
        self.loss_fns = [self.loss_fns[p] for p in kept]
        self.penalties = [self.penalties[p] for p in kept]
        self.clips = [self.clips[p] for p in kept]
        self._index()


def _stacked(loss_fn: Callable[[Tensor, Tensor], Tensor]) -> Callable[[Tensor, Tensor], Tensor]:
    """The loss of every member at once: the loss's own batched form (trainlab.losses'
    ``with_stacked``), else vmap's."""
    return getattr(loss_fn, "stacked", None) or vmap(loss_fn)


ELEMENTWISE = (nn.ReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.ELU, nn.Identity)
Forward = Callable[[list[Tensor], Tensor, bool], Tensor]


def layered_forward(model: nn.Module) -> Forward | None:
    """For a flattening stack of linear layers and activations (trainlab's ``linear`` and
    ``mlp``), the members' forward as batched matrix products, which costs less than vmap's
    version of the same; None for any other model (vmap runs it)."""
    layers = list(model) if isinstance(model, nn.Sequential) else []
    plain = all(
        isinstance(layer, (nn.Linear, *ELEMENTWISE))
        or (isinstance(layer, nn.Dropout) and layer.p == 0)
        for layer in layers[1:]
    )
    first = layers[0] if layers else None
    if not (isinstance(first, nn.Flatten) and (first.start_dim, first.end_dim) == (1, -1)):
        return None
    if not plain:
        return None

    def forward(params: list[Tensor], inputs: Tensor, shared: bool) -> Tensor:
        """``params`` stacked ``(members, ...)``; ``inputs`` ``(members, batch, ...)``, or
        ``(batch, ...)`` when ``shared``; the outputs ``(members, batch, outputs)``."""
        members = len(params[0])
        hidden, taken = inputs.flatten(1 if shared else 2), iter(params)
        if shared:  # the one batch every member sees (a view, not copies)
            hidden = hidden.expand(members, *hidden.shape)
        for layer in layers[1:]:
            if isinstance(layer, nn.Linear):
                weight = next(taken)
                hidden = StackedLinear.apply(
                    hidden, weight, next(taken) if layer.bias is not None else None
                )
            else:
                hidden = layer(hidden)
        return hidden

    return forward


class StackedLinear(torch.autograd.Function):
    """Every member's ``nn.Linear`` at once, computed as torch computes one member's alone:
    the forward as ``addmm`` does, and the backward as linear's own (``grad.T @ input`` for
    the weight, which autograd's batched version would transpose), so that on the CPU the
    members' gradients equal their solo runs' bit for bit (tests/test_fused.py)."""

    @staticmethod
    def forward(ctx: Any, hidden: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(hidden, weight)
        ctx.with_bias = bias is not None
        if bias is None:
            return torch.bmm(hidden, weight.transpose(1, 2))
        return torch.baddbmm(bias.unsqueeze(1), hidden, weight.transpose(1, 2))

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        hidden, weight = ctx.saved_tensors
        grad_hidden = torch.bmm(grad, weight) if ctx.needs_input_grad[0] else None
        return grad_hidden, weight_gradients(grad, hidden), grad.sum(1) if ctx.with_bias else None


_BATCHED_ROUNDS_AS_ALONE: dict[tuple, bool] = {}


def weight_gradients(grad: Tensor, hidden: Tensor) -> Tensor:
    """``grad.T @ hidden`` for every member, rounded as linear's backward rounds one member's.

    The batched product does that for most shapes, not all (10 outputs, on some CPUs, take
    another kernel): a shape's batched product is compared once with the members' own products
    on random numbers, and where they differ every member gets its own product. On a GPU the
    batched product always (one launch; GPU runs are not bit-reproducible by default anyway)."""
    if grad.is_cuda:
        return torch.bmm(grad.transpose(1, 2), hidden)
    key = (grad.shape, hidden.shape, hidden.stride(0) == 0, grad.dtype)
    if key not in _BATCHED_ROUNDS_AS_ALONE:
        generator = torch.Generator().manual_seed(0)
        probe = torch.randn(grad.shape, generator=generator, dtype=grad.dtype)
        inputs = torch.randn(hidden.shape[1:] if key[2] else hidden.shape, generator=generator)
        inputs = inputs.to(hidden.dtype).expand(hidden.shape) if key[2] else inputs
        alike = torch.equal(torch.bmm(probe.transpose(1, 2), inputs), _each(probe, inputs))
        _BATCHED_ROUNDS_AS_ALONE[key] = alike
    if _BATCHED_ROUNDS_AS_ALONE[key]:
        return torch.bmm(grad.transpose(1, 2), hidden)
    return _each(grad, hidden)


def _each(grad: Tensor, hidden: Tensor) -> Tensor:
    products = grad.new_empty(grad.shape[0], grad.shape[2], hidden.shape[2])
    for member, (rows, inputs) in enumerate(zip(grad, hidden, strict=True)):
        torch.mm(rows.t(), inputs, out=products[member])
    return products


class GroupFit:
    """The members' loops in lockstep: every step, each member draws its own batch, the stack
    takes one step, and each loop counts it, logs, checkpoints or stops as it would alone.

    A member alone checkpoints after every epoch; a group of them would spend its time writing,
    so at an epoch's end the group checkpoints its members at most every ``checkpoint_seconds``
    (and always one that stops, and all of them at a stop request or the end)."""

    def __init__(
        self, loops: Sequence[MemberLoop], stacked: StackedModels, checkpoint_seconds: float = 0
    ) -> None:
        self.loops = list(loops)
        self.stacked = stacked
        self.checkpoint_seconds = checkpoint_seconds
        self.last_round = time.perf_counter()
        device = stacked.flat.device
        self.sums = torch.stack([loop.state.sums.to(device) for loop in self.loops])
        self.alive = list(self.loops)
        for position, loop in enumerate(self.loops):
            loop.position = position
            loop.state.sums = self.sums[position]  # a view: the group adds to every member's
            loop.save_checkpoint = self._saver(loop, loop.save_checkpoint)

    def _saver(self, loop: MemberLoop, save: Callable[[FitState], None] | None) -> Any:
        if save is None:
            return None

        def save_member(state: FitState) -> None:
            if loop in self.alive:
                self.stacked.copy_into(loop.position, loop.model)
            save(dataclasses.replace(state, sums=state.sums.clone()))

        return save_member

    def run(self) -> list[FitResult]:
        for loop in self.loops:
            loop.announce()
        self._leave([loop for loop in self.alive if not loop._more_to_train()])
        while self.alive:
            epoch = self.alive[0].state.epochs_finished + 1
            for loop in self.alive:
                loop._begin_epoch()
            self._train_epoch(epoch)
            self._end_epoch(epoch)
        return [loop._result() for loop in self.loops]

    def _end_epoch(self, epoch: int) -> None:
        """Each member still training ends the epoch (validation, early stopping, report,
        checkpoint when due); those that are done leave."""
        due = time.perf_counter() - self.last_round >= self.checkpoint_seconds
        ending = list(self.alive)
        for loop in ending:
            loop.checkpoint_due = due
            self.stacked.copy_weights(loop.position, loop.model)
            loop._end_epoch(epoch)
        if due:
            self.last_round = time.perf_counter()
        self._leave([loop for loop in ending if not loop._more_to_train()])

    def _train_epoch(self, epoch: int) -> None:
        """Steps until the batches run out; members that stop on the way leave the stack."""
        rows = [loop.batches.batch_rows() for loop in self.alive]
        while self.alive:
            drawn = [next(member_rows, None) for member_rows in rows]  # each ends its epoch
            if any(batch is None for batch in drawn):
                return
            stopped = self._step(drawn, epoch)
            if stopped:
                rows = [r for r, loop in zip(rows, self.alive, strict=True) if loop not in stopped]
                self._leave(stopped)
                for loop in stopped:
                    if loop.state.status != "interrupted":  # diverged: its epoch still ends
                        loop._end_epoch(epoch)

    def _step(self, drawn: list[Tensor | slice], epoch: int) -> list[MemberLoop]:
        """One stacked step on the members' batches; return the members it stopped."""
        inputs, targets, shared = self._batches(drawn)
        want_norms = any(
            (loop.state.step + 1) % loop.settings.log_every_steps == 0 for loop in self.alive
        )
        losses, penalties, norms = self.stacked.step(inputs, targets, shared, want_norms)
        self.sums[:, LOSS] += losses.unsqueeze(1)
        if penalties is not None:
            self.sums[:, PENALTY] += penalties.unsqueeze(1)
        stopped = []
        for position, loop in enumerate(self.alive):
            if norms is not None:
                loop.grad_norm = norms[position]
            loop._step_taken()
            if loop._stop_after_step(epoch):
                stopped.append(loop)
        return stopped

    def _batches(self, drawn: list[Tensor | slice]) -> tuple[Tensor, Tensor, bool]:
        """The members' batches gathered at once, ``(members, batch, ...)``; or, for full-batch
        members without augmentation, the one batch they all see (``shared``)."""
        loaders = [loop.batches for loop in self.alive]
        split = loaders[0].split  # the group's members share one copy of the data
        if isinstance(drawn[0], slice):  # unshuffled: full batch, the same rows for everyone
            inputs, targets = split.inputs[drawn[0]], split.targets[drawn[0]]
            if all(loader.prepare is None for loader in loaders):
                return inputs, targets, True
            inputs, targets = (
                inputs.expand(len(loaders), *inputs.shape),
                targets.expand(len(loaders), *targets.shape),
            )
        else:
            rows = torch.stack(drawn)
            inputs, targets = split.inputs[rows], split.targets[rows]
        if loaders[0].prepare is not None:  # each member's augmentation, from its own stream
            inputs = torch.stack([
                loader.prepare(batch, loader.augment_generator)
                for loader, batch in zip(loaders, inputs, strict=True)
            ])  # fmt: skip
        return inputs, targets, False

    def _leave(self, leaving: Sequence[MemberLoop]) -> None:
        """``leaving`` take their weights, optimizer state and sums with them; the rest of the
        stack goes on."""
        if not leaving:
            return
        for loop in leaving:
            self.stacked.copy_into(loop.position, loop.model)
            loop.state.sums = loop.state.sums.clone()
        kept = [p for p, loop in enumerate(self.alive) if loop not in leaving]
        self.alive = [self.alive[p] for p in kept]
        if not self.alive:
            return
        self.stacked.keep(kept)
        self.sums = self.sums[torch.tensor(kept, device=self.sums.device)]
        for position, loop in enumerate(self.alive):
            loop.position = position
            loop.state.sums = self.sums[position]
