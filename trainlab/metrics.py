"""Evaluation metrics by task, accumulated as device-side sums and read back once per evaluation."""

from __future__ import annotations

from collections.abc import Callable

import torch

from trainlab.data.base import DatasetSpec, Prepare, Split
from trainlab.losses import LossFn, terms
from trainlab.metric_names import names_for


def ndcg_at_k(scores: torch.Tensor, grades: torch.Tensor, k: int) -> torch.Tensor:
    """NDCG@k per list with gains 2^grade - 1, as scikit-learn's ``ndcg_score`` computes it.

    Items with tied scores share their places: each gets the mean gain of its tie group
    (McSherry and Najork, 2008), so the value does not depend on the order the items happen to
    be in. A list with no relevant item scores 1 (scikit-learn says 0): there is nothing to rank
    wrong in it. Padded items (grade ``PAD_GRADE``) take no place and no part in the ideal DCG,
    so a padded list scores as its real items alone would.
    """
    items = scores.shape[-1]
    k = min(k, items)  # padded items come last, so places past the real ones add nothing
    places = torch.arange(items, device=scores.device)
    discounts = torch.where(places < k, 1.0 / torch.log2(places.float() + 2), 0.0)
    real = grades >= 0
    # Gains scaled by 2^-(the list's top grade), which NDCG's ratio does not see: grades of 128
    # and more would overflow float32 as 2^grade (and powers of two scale exactly).
    top = torch.where(real, grades.float(), 0.0).amax(-1, keepdim=True)
    gains = torch.where(real, torch.exp2(grades.float() - top) - torch.exp2(-top), 0.0)
    ordered, order = _real_first(torch.where(real, scores.float(), -torch.inf), real)
    ordered_gains = gains.gather(-1, order)
    # Tie groups along each sorted list: a new group wherever the score changes. A padded
    # item's -inf differs from any real score, and -inf - -inf is NaN, so none shares a group.
    group = torch.cat(
        [torch.zeros_like(ordered[..., :1], dtype=torch.long), (ordered.diff(dim=-1) != 0).long()],
        dim=-1,
    ).cumsum(-1)
    group_gain = torch.zeros_like(ordered_gains).scatter_add_(-1, group, ordered_gains)
    group_size = torch.zeros_like(ordered_gains).scatter_add_(
        -1, group, torch.ones_like(ordered_gains)
    )
    shared_gain = (group_gain / group_size.clamp_min(1)).gather(-1, group)
    dcg = (shared_gain * discounts).sum(-1)
    ideal = (torch.sort(gains, dim=-1, descending=True).values * discounts).sum(-1)
    return torch.where(ideal > 0, dcg / ideal.clamp_min(1e-30), torch.ones_like(dcg))


def _real_first(scores: torch.Tensor, real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores sorted descending (stable) and their order, padded items after every real one even
    where a real score is -inf too; with nothing padded, just the sort."""
    ordered, order = torch.sort(scores, dim=-1, descending=True, stable=True)
    _, padded_last = torch.sort((~real).gather(-1, order).float(), dim=-1, stable=True)
    return ordered.gather(-1, padded_last), order.gather(-1, padded_last)


def _metric_sums(spec: DatasetSpec, outputs: torch.Tensor, targets: torch.Tensor) -> dict:
    if spec.task == "classification":
        return {"accuracy": (outputs.argmax(-1) == targets).sum()}
    if spec.task == "regression":
        error = outputs.float() - targets.float()
        per_example = error[0].numel()
        return {
            "mse": error.pow(2).sum() / per_example,
            "mae": error.abs().sum() / per_example,
        }
    return {"ndcg": ndcg_at_k(outputs, targets, spec.ndcg_k).sum()}


def metric_names(spec: DatasetSpec) -> list[str]:
    """The metrics reported for ``spec``'s task, loss first."""
    return names_for(spec.task)


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    loss_fn: LossFn,
    split: Split,
    spec: DatasetSpec,
    batch_size: int,
    prepare: Prepare | None = None,
    shard: tuple[int, int] = (0, 1),
    reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, float]:
    """Mean loss and task metrics of ``model`` over ``split``, one host sync at the end. The
    loss is the mean over all of its terms (examples; on ranking, the real items, the lists or
    the pairwise loss's pairs that :func:`trainlab.losses.terms` counts).

    Data-parallel: ``shard=(rank, world)`` evaluates this process's contiguous part, and
    ``reduce_sum`` adds the processes' sums, so the means come from exact global sums.
    """
    was_training = model.training
    model.eval()
    rank, world = shard
    share, extra = divmod(len(split), world)  # contiguous parts, as tensor_split cuts them
    begin = rank * share + min(rank, extra)
    end = begin + share + (1 if rank < extra else 0)
    sums: dict[str, torch.Tensor] = {}
    for start in range(begin, end, batch_size):
        stop = min(start + batch_size, end)
        inputs = split.inputs[start:stop]
        if prepare is not None:
            inputs = prepare(inputs, None)  # no augmentation
        targets = split.targets[start:stop]
        outputs = model(inputs)
        count = terms(loss_fn, outputs, targets).float()
        batch = {"loss": loss_fn(outputs, targets).float() * count, "loss_terms": count}
        batch.update(_metric_sums(spec, outputs, targets))
        for name, value in batch.items():
            sums[name] = sums[name] + value if name in sums else value.float()
    model.train(was_training)
    names = metric_names(spec)
    device = split.inputs.device
    summed = [*names, "loss_terms"]
    totals = torch.stack([sums.get(name, torch.zeros((), device=device)) for name in summed])
    if reduce_sum is not None:
        totals = reduce_sum(totals)
    *values, loss_terms = totals.tolist()
    means = {name: value / len(split) for name, value in zip(names, values, strict=True)}
    means["loss"] = values[0] / max(loss_terms, 1.0)  # the mean over all of the loss's terms
    return means
