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

Ranking lists of different lengths come padded to the longest; a padded item has grade
``PAD_GRADE`` (below every real grade). Every ranking loss leaves padded items out exactly, so a
padded batch gives the value and gradients its unpadded lists would: item-wise losses average over
real items, list-wise ones over lists with a real item, pairwise over pairs of real items. The
masks are tensor arithmetic (no host sync) that reduces to the unmasked computation, bit for bit,
when nothing is padded.
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
from trainlab.user_code import build_user_loss, is_user_part

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def terms(loss_fn: LossFn, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """How many terms ``loss_fn``'s mean over this batch is taken over: its examples, or what
    the loss names in its ``terms`` attribute (on ranking: real items, lists with a real item,
    or the pairwise loss's ordered pairs). Evaluation weights each batch's mean by it, so that a
    split's loss is the mean over all of its terms, whatever the evaluation batch size."""
    count = getattr(loss_fn, "terms", None)
    if count is not None:
        return count(outputs, targets)
    return torch.tensor(float(len(outputs)), device=outputs.device)


def _real(grades: torch.Tensor) -> torch.Tensor:
    """Which ranking items are real: a padded item's ``PAD_GRADE`` lies below every real grade."""
    return grades >= 0


def _over_real(loss: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Turn a mean over all of ``real``'s entries, where the false ones added zero, into the mean
    over the true ones. The factor is exactly 1 when all are true (x / x), so unpadded input keeps
    its value and gradients bit for bit; no host sync."""
    count = real.sum().to(torch.promote_types(loss.dtype, torch.float32))
    factor = count.new_full((), real.numel()) / count.clamp_min(1)
    return (loss * factor).to(loss.dtype)


def _real_items(scores: torch.Tensor, grades: torch.Tensor) -> torch.Tensor:
    """The terms of an item-wise ranking loss: its real items."""
    return _real(grades).sum().float()


def _real_lists(scores: torch.Tensor, grades: torch.Tensor) -> torch.Tensor:
    """The terms of a list-wise ranking loss: its lists with at least one real item."""
    return _real(grades).any(dim=-1).sum().float()


def _masked_logits(values: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """``values`` with padded items so low that a softmax gives them exactly zero weight; finite
    (half the dtype's lowest) so that no -inf - -inf makes a NaN, in values or gradients."""
    return torch.where(real, values, torch.finfo(values.dtype).min / 2)


def with_stacked(loss: LossFn, terms: LossFn, *, per_example: bool = False) -> LossFn:
    """Give ``loss`` (a mean) a ``stacked(outputs, targets)``: the loss of each of several
    models stacked along a leading dimension at once (sweep members trained together,
    trainlab.fused_engine). ``terms`` is the loss unreduced, called with that dimension folded
    into the batch; each model's loss is the mean of its terms, or (``per_example``) their sum
    over its examples, as a ``batchmean`` takes it."""

    def stacked(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        models, examples = outputs.shape[:2]
        each = terms(outputs.flatten(0, 1), targets.flatten(0, 1)).reshape(models, -1)
        return each.sum(1) / examples if per_example else each.mean(1)

    loss.stacked = stacked  # type: ignore[attr-defined]
    return loss


def _regression_loss(spec: DatasetSpec, loss: Callable[..., torch.Tensor]) -> LossFn:
    """``loss`` (a mean over elements; it takes ``reduction``) with outputs and targets made two
    float tensors of the same shape; on ranking a padded item's score is replaced by its target,
    so it adds zero error and gets no gradient, and the mean is taken over real items."""
    if spec.task == "classification":
        classes = spec.num_classes

        def one_hot(outputs: torch.Tensor, labels: torch.Tensor, **reduced: str) -> torch.Tensor:
            return loss(outputs, F.one_hot(labels, classes).to(outputs.dtype), **reduced)

        return with_stacked(one_hot, lambda o, t: one_hot(o, t, reduction="none"))
    if spec.task == "regression":

        def as_floats(outputs: torch.Tensor, targets: torch.Tensor, **reduced: str) -> torch.Tensor:
            return loss(outputs, targets.to(outputs.dtype), **reduced)

        return with_stacked(as_floats, lambda o, t: as_floats(o, t, reduction="none"))

    def over_real_items(scores: torch.Tensor, grades: torch.Tensor) -> torch.Tensor:
        real, targets = _real(grades), grades.to(scores.dtype)
        return _over_real(loss(torch.where(real, scores, targets), targets), real)

    over_real_items.terms = _real_items  # type: ignore[attr-defined]
    return over_real_items


def mse(spec: DatasetSpec) -> LossFn:
    return _regression_loss(spec, F.mse_loss)


def mae(spec: DatasetSpec) -> LossFn:
    return _regression_loss(spec, F.l1_loss)


def huber(spec: DatasetSpec, delta: float) -> LossFn:
    """Quadratic for |error| <= delta, linear beyond: 0.5 e^2 or delta (|e| - 0.5 delta)."""
    positive("loss.delta", delta)
    return _regression_loss(
        spec,
        lambda outputs, targets, **reduced: F.huber_loss(outputs, targets, delta=delta, **reduced),
    )


def smooth_l1(spec: DatasetSpec, beta: float) -> LossFn:
    """Huber divided by beta: 0.5 e^2 / beta for |e| < beta, |e| - 0.5 beta beyond (beta=0: MAE)."""
    non_negative("loss.beta", beta)
    return _regression_loss(
        spec,
        lambda outputs, targets, **reduced: F.smooth_l1_loss(
            outputs, targets, beta=beta, **reduced
        ),
    )


def cross_entropy(spec: DatasetSpec, label_smoothing: float) -> LossFn:
    """Softmax cross-entropy on logits; label smoothing mixes the target with the uniform one."""
    fraction("loss.label_smoothing", label_smoothing)

    def loss(logits: torch.Tensor, labels: torch.Tensor, **reduced: str) -> torch.Tensor:
        return F.cross_entropy(logits, labels, label_smoothing=label_smoothing, **reduced)

    return with_stacked(loss, lambda o, t: loss(o, t, reduction="none"))


def log_loss(spec: DatasetSpec) -> LossFn:
    """Binary cross-entropy on sigmoid outputs (logistic loss).

    Classification: one-vs-rest, one logistic unit per class against the one-hot target.
    Ranking: an item is a positive when its relevance grade is above zero; averaged over real
    items (a padded one has weight zero).
    """
    if spec.task == "ranking":

        def over_real_items(scores: torch.Tensor, grades: torch.Tensor) -> torch.Tensor:
            real = _real(grades)
            loss = F.binary_cross_entropy_with_logits(
                scores, (grades > 0).to(scores.dtype), weight=real.to(scores.dtype)
            )
            return _over_real(loss, real)

        over_real_items.terms = _real_items  # type: ignore[attr-defined]
        return over_real_items
    classes = spec.num_classes

    def one_vs_rest(logits: torch.Tensor, labels: torch.Tensor, **reduced: str) -> torch.Tensor:
        targets = F.one_hot(labels, classes).to(logits.dtype)
        return F.binary_cross_entropy_with_logits(logits, targets, **reduced)

    return with_stacked(one_vs_rest, lambda o, t: one_vs_rest(o, t, reduction="none"))


def hinge(spec: DatasetSpec, margin: float) -> LossFn:
    """Multi-class margin loss: sum over wrong classes j of max(0, margin - s_y + s_j) / classes."""
    positive("loss.margin", margin)
    return _margin_loss(1, margin)


def _margin_loss(power: int, margin: float) -> LossFn:
    # No stacked form: its mean's gradient, 1 / (examples x classes), rounds otherwise when
    # the unreduced loss is averaged afterwards (vmap runs it member by member instead).
    return lambda logits, labels: F.multi_margin_loss(logits, labels, p=power, margin=margin)


def squared_hinge(spec: DatasetSpec, margin: float) -> LossFn:
    """The multi-class margin loss with squared violations (smooth, punishes big violations more)."""
    positive("loss.margin", margin)
    return _margin_loss(2, margin)


def kl_div(spec: DatasetSpec, smoothing: float) -> LossFn:
    """KL(target || softmax(outputs)), averaged over examples (lists with a real item, for ranking).

    Classification: the target distribution is the one-hot label mixed with ``smoothing`` of the
    uniform distribution (with smoothing 0 its gradient equals cross-entropy's). Ranking: the
    target is softmax over the relevance grades of each list, as in ListNet; both softmaxes run
    over real items only.
    """
    fraction("loss.smoothing", smoothing)
    if spec.task == "ranking":

        def over_real_lists(scores: torch.Tensor, grades: torch.Tensor) -> torch.Tensor:
            # A padded item has zero target weight, so it adds exactly 0; a list with no real
            # item has the same uniform target and prediction, so it adds exactly 0 too.
            real = _real(grades)
            loss = F.kl_div(
                F.log_softmax(_masked_logits(scores, real), dim=-1),
                F.log_softmax(_masked_logits(grades.to(scores.dtype), real), dim=-1),
                reduction="batchmean",
                log_target=True,
            )
            return _over_real(loss, real.any(dim=-1))

        over_real_lists.terms = _real_lists  # type: ignore[attr-defined]
        return over_real_lists
    classes = spec.num_classes

    def loss(
        logits: torch.Tensor, labels: torch.Tensor, reduction: str = "batchmean"
    ) -> torch.Tensor:
        target = F.one_hot(labels, classes).to(logits.dtype) * (1 - smoothing) + smoothing / classes
        return F.kl_div(F.log_softmax(logits, dim=-1), target, reduction=reduction)

    return with_stacked(loss, lambda o, t: loss(o, t, reduction="none"), per_example=True)


def pairwise(
    spec: DatasetSpec, form: Literal["logistic", "margin", "both"], sigma: float, margin: float
) -> LossFn:
    """Over every pair (i, j) in a list with grade_i > grade_j, with d = s_i - s_j:

    logistic (RankNet): log(1 + exp(-sigma d)); margin: max(0, margin - d); both: their sum.
    Averaged over the pairs of the batch; a padded item is in no pair.
    """
    positive("loss.sigma", sigma)
    non_negative("loss.margin", margin)

    def ordered_pairs(scores: torch.Tensor, grades: torch.Tensor) -> torch.Tensor:
        # grade_i > grade_j >= 0: j is real, and so is i, whose grade is above a real one.
        ordered = (grades.unsqueeze(-1) > grades.unsqueeze(-2)) & _real(grades).unsqueeze(-2)
        return ordered.to(scores.dtype)

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
    (grade > 0) against not with the logistic loss; averaged over real items."""
    if form == "binary":
        return log_loss(spec)
    return mse(spec)


def listwise(spec: DatasetSpec, temperature: float) -> LossFn:
    """ListNet (top-one): cross-entropy between softmax(grades / temperature) and softmax(scores)
    over the real items of each list, averaged over lists with a real item."""
    positive("loss.temperature", temperature)

    def loss(scores: torch.Tensor, grades: torch.Tensor) -> torch.Tensor:
        real = _real(grades)
        target = torch.softmax(_masked_logits(grades.to(scores.dtype) / temperature, real), dim=-1)
        log_predicted = F.log_softmax(_masked_logits(scores, real), dim=-1)
        per_list = -(target * log_predicted).sum(dim=-1)
        has_real = real.any(dim=-1)  # a list of padding alone would add log(items)
        return _over_real((per_list * has_real.to(per_list.dtype)).mean(), has_real)

    loss.terms = _real_lists  # type: ignore[attr-defined]
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
    """Build the configured loss for the dataset's task (a built-in by name, or the user's own
    by ``_target_``), refusing combinations that make no sense."""
    if is_user_part(config):
        return build_user_loss(config, spec)
    name, entry, settings = choose(
        "loss", config, LOSSES, lambda entry: entry.build, supplied=("spec",)
    )
    if spec.task not in entry.tasks:
        raise ConfigError(
            f"loss={name} does not fit the {spec.task} task of dataset={spec.name}; "
            f"losses that do: {', '.join(losses_for(spec.task))}"
        )
    return entry.build(spec, **settings)
