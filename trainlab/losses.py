"""Every loss by name, with the adaptation each task needs.

A loss is a callable ``(outputs, targets) -> scalar``. The shapes it sees:

- classification: logits ``(batch, classes)`` and integer labels ``(batch,)``;
- regression: predictions ``(batch, dims)`` and float targets ``(batch, dims)``;
- ranking: item scores ``(queries, items)`` and relevance grades ``(queries, items)``.

Regression losses (mse, mae, huber, smooth_l1) on classification regress the raw outputs onto
one-hot targets. Raw outputs, not softmax probabilities: on probabilities every error lies in
[-1, 1], so huber with delta >= 1 collapses to mse / 2 and the saturating softmax starves the
gradient; on raw outputs they are honest regression losses, as in square-loss classification
(Hui & Belkin, 2021). On ranking they regress each item's score onto its relevance grade
(pointwise ranking). The ``LOSSES`` table says which task each loss accepts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F

from trainlab.data.base import DatasetSpec, Task
from trainlab.errors import ConfigError
from trainlab.settings import choose, fraction, non_negative, positive

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def terms(loss_fn: LossFn, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """How many terms ``loss_fn``'s mean over this batch is taken over: its examples (lists,
    for ranking), or what the loss names in its ``terms`` attribute (the pairwise loss: its
    ordered pairs). Evaluation weights each batch's mean by it, so that a split's loss is the
    mean over all of its terms, whatever the evaluation batch size."""
    count = getattr(loss_fn, "terms", None)
    if count is not None:
        return count(outputs, targets)
    return torch.tensor(float(len(outputs)), device=outputs.device)


def _regression_view(spec: DatasetSpec) -> Callable[[torch.Tensor, torch.Tensor], tuple]:
    """Map (outputs, targets) to two float tensors of the same shape for a regression loss."""
    if spec.task == "classification":
        classes = spec.num_classes

        def one_hot(outputs: torch.Tensor, labels: torch.Tensor) -> tuple:
            return outputs, F.one_hot(labels, classes).to(outputs.dtype)

        return one_hot
    return lambda outputs, targets: (outputs, targets.to(outputs.dtype))


def mse(spec: DatasetSpec) -> LossFn:
    view = _regression_view(spec)
    return lambda outputs, targets: F.mse_loss(*view(outputs, targets))


def mae(spec: DatasetSpec) -> LossFn:
    view = _regression_view(spec)
    return lambda outputs, targets: F.l1_loss(*view(outputs, targets))


def huber(spec: DatasetSpec, delta: float) -> LossFn:
    """Quadratic for |error| <= delta, linear beyond: 0.5 e^2 or delta (|e| - 0.5 delta)."""
    positive("loss.delta", delta)
    view = _regression_view(spec)
    return lambda outputs, targets: F.huber_loss(*view(outputs, targets), delta=delta)


def smooth_l1(spec: DatasetSpec, beta: float) -> LossFn:
    """Huber divided by beta: 0.5 e^2 / beta for |e| < beta, |e| - 0.5 beta beyond (beta=0: MAE)."""
    non_negative("loss.beta", beta)
    view = _regression_view(spec)
    return lambda outputs, targets: F.smooth_l1_loss(*view(outputs, targets), beta=beta)


def cross_entropy(spec: DatasetSpec, label_smoothing: float) -> LossFn:
    """Softmax cross-entropy on logits; label smoothing mixes the target with the uniform one."""
    fraction("loss.label_smoothing", label_smoothing)
    return lambda logits, labels: F.cross_entropy(logits, labels, label_smoothing=label_smoothing)


def log_loss(spec: DatasetSpec) -> LossFn:
    """Binary cross-entropy on sigmoid outputs (logistic loss).

    Classification: one-vs-rest, one logistic unit per class against the one-hot target.
    Ranking: an item is a positive when its relevance grade is above zero.
    """
    if spec.task == "ranking":
        return lambda scores, grades: F.binary_cross_entropy_with_logits(
            scores, (grades > 0).to(scores.dtype)
        )
    classes = spec.num_classes
    return lambda logits, labels: F.binary_cross_entropy_with_logits(
        logits, F.one_hot(labels, classes).to(logits.dtype)
    )


def hinge(spec: DatasetSpec, margin: float) -> LossFn:
    """Multi-class margin loss: sum over wrong classes j of max(0, margin - s_y + s_j) / classes."""
    positive("loss.margin", margin)
    return lambda logits, labels: F.multi_margin_loss(logits, labels, p=1, margin=margin)


def squared_hinge(spec: DatasetSpec, margin: float) -> LossFn:
    """The multi-class margin loss with squared violations (smooth, punishes big violations more)."""
    positive("loss.margin", margin)
    return lambda logits, labels: F.multi_margin_loss(logits, labels, p=2, margin=margin)


def kl_div(spec: DatasetSpec, smoothing: float) -> LossFn:
    """KL(target || softmax(outputs)), averaged over examples (lists, for ranking).

    Classification: the target distribution is the one-hot label mixed with ``smoothing`` of the
    uniform distribution (with smoothing 0 its gradient equals cross-entropy's). Ranking: the
    target is softmax over the relevance grades of each list, as in ListNet.
    """
    fraction("loss.smoothing", smoothing)
    if spec.task == "ranking":
        return lambda scores, grades: F.kl_div(
            F.log_softmax(scores, dim=-1),
            F.log_softmax(grades.to(scores.dtype), dim=-1),
            reduction="batchmean",
            log_target=True,
        )
    classes = spec.num_classes

    def loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        target = F.one_hot(labels, classes).to(logits.dtype) * (1 - smoothing) + smoothing / classes
        return F.kl_div(F.log_softmax(logits, dim=-1), target, reduction="batchmean")

    return loss


def pairwise(
    spec: DatasetSpec, form: Literal["logistic", "margin", "both"], sigma: float, margin: float
) -> LossFn:
    """Over every pair (i, j) in a list with grade_i > grade_j, with d = s_i - s_j:

    logistic (RankNet): log(1 + exp(-sigma d)); margin: max(0, margin - d); both: their sum.
    Averaged over the pairs of the batch.
    """
    positive("loss.sigma", sigma)
    non_negative("loss.margin", margin)

    def ordered_pairs(scores: torch.Tensor, grades: torch.Tensor) -> torch.Tensor:
        return (grades.unsqueeze(-1) > grades.unsqueeze(-2)).to(scores.dtype)

    def loss(scores: torch.Tensor, grades: torch.Tensor) -> torch.Tensor:
        difference = scores.unsqueeze(-1) - scores.unsqueeze(-2)  # [q, i, j] = s_i - s_j
        ordered = ordered_pairs(scores, grades)
        per_pair = torch.zeros_like(difference)
        if form in ("logistic", "both"):
            per_pair = per_pair + F.softplus(-sigma * difference)
        if form in ("margin", "both"):
            per_pair = per_pair + F.relu(margin - difference)
        return (per_pair * ordered).sum() / ordered.sum().clamp_min(1)

    loss.terms = lambda scores, grades: ordered_pairs(scores, grades).sum()  # type: ignore[attr-defined]
    return loss


def pointwise(spec: DatasetSpec, form: Literal["regression", "binary"]) -> LossFn:
    """Each item on its own: regress the score onto the grade (MSE), or classify relevant
    (grade > 0) against not with the logistic loss."""
    if form == "binary":
        return log_loss(spec)
    return mse(spec)


def listwise(spec: DatasetSpec, temperature: float) -> LossFn:
    """ListNet (top-one): cross-entropy between softmax(grades / temperature) and softmax(scores)
    within each list, averaged over lists."""
    positive("loss.temperature", temperature)

    def loss(scores: torch.Tensor, grades: torch.Tensor) -> torch.Tensor:
        target = torch.softmax(grades.to(scores.dtype) / temperature, dim=-1)
        return -(target * F.log_softmax(scores, dim=-1)).sum(dim=-1).mean()

    return loss


@dataclass(frozen=True)
class LossEntry:
    build: Callable[..., LossFn]
    tasks: tuple[Task, ...]


_ALL: tuple[Task, ...] = ("classification", "regression", "ranking")
LOSSES: dict[str, LossEntry] = {
    "mse": LossEntry(mse, _ALL),
    "mae": LossEntry(mae, _ALL),
    "huber": LossEntry(huber, _ALL),
    "smooth_l1": LossEntry(smooth_l1, _ALL),
    "cross_entropy": LossEntry(cross_entropy, ("classification",)),
    "log_loss": LossEntry(log_loss, ("classification", "ranking")),
    "hinge": LossEntry(hinge, ("classification",)),
    "squared_hinge": LossEntry(squared_hinge, ("classification",)),
    "kl_div": LossEntry(kl_div, ("classification", "ranking")),
    "pairwise": LossEntry(pairwise, ("ranking",)),
    "pointwise": LossEntry(pointwise, ("ranking",)),
    "listwise": LossEntry(listwise, ("ranking",)),
}


def losses_for(task: Task) -> list[str]:
    """Names of the losses that accept ``task``."""
    return [name for name, entry in LOSSES.items() if task in entry.tasks]


def build_loss(config: Mapping[str, Any], spec: DatasetSpec) -> LossFn:
    """Build the configured loss for the dataset's task, refusing combinations that make no sense."""
    name, entry, settings = choose(
        "loss", config, LOSSES, lambda entry: entry.build, supplied=("spec",)
    )
    if spec.task not in entry.tasks:
        raise ConfigError(
            f"loss={name} does not fit the {spec.task} task of dataset={spec.name}; "
            f"losses that do: {', '.join(losses_for(spec.task))}"
        )
    return entry.build(spec, **settings)
