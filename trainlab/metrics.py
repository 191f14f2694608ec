"""Evaluation metrics by task, accumulated as device-side sums and read back once per evaluation."""

from __future__ import annotations

from collections.abc import Callable

import torch

from trainlab.data.base import DatasetSpec, Prepare, Split
from trainlab.losses import LossFn

# The metric each task is judged by (the report ranks losses and errors low-first).
PRIMARY_METRIC = {"classification": "accuracy", "regression": "mse", "ranking": "ndcg"}


def ndcg_at_k(scores: torch.Tensor, grades: torch.Tensor, k: int) -> torch.Tensor:
    """NDCG@k per list with gains 2^grade - 1; a list with no relevant item counts as 1."""
    k = min(k, scores.shape[-1])
    discounts = 1.0 / torch.log2(torch.arange(2, k + 2, device=scores.device, dtype=torch.float32))
    gains = torch.pow(2.0, grades.float()) - 1
    by_score = torch.topk(scores.float(), k, dim=-1).indices
    dcg = (gains.gather(-1, by_score) * discounts).sum(-1)
    ideal = (torch.topk(gains, k, dim=-1).values * discounts).sum(-1)
    return torch.where(ideal > 0, dcg / ideal.clamp_min(1e-12), torch.ones_like(dcg))


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
    by_task = {"classification": ["accuracy"], "regression": ["mse", "mae"], "ranking": ["ndcg"]}
    return ["loss", *by_task[spec.task]]


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
    """Mean loss and task metrics of ``model`` over ``split``, one host sync at the end.

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
        batch = {"loss": loss_fn(outputs, targets).float() * inputs.shape[0]}
        batch.update(_metric_sums(spec, outputs, targets))
        for name, value in batch.items():
            sums[name] = sums[name] + value if name in sums else value.float()
    model.train(was_training)
    names = metric_names(spec)
    device = split.inputs.device
    totals = torch.stack([sums.get(name, torch.zeros((), device=device)) for name in names])
    if reduce_sum is not None:
        totals = reduce_sum(totals)
    values = totals.tolist()
    return {name: value / len(split) for name, value in zip(names, values, strict=True)}
