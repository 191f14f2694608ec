"""Synthetic data for the three tasks, generated in memory from a data seed (no download).

- classification: interleaved spiral arms in a random 2-D plane of a higher-dimensional space,
  so a linear model cannot separate the classes and model/loss choices matter;
- regression: a smooth non-linear function with Gaussian noise, and a fraction of training and
  validation targets hit by gross outliers (the test set stays clean, so it measures how well
  the true function was learnt: where MSE, MAE and Huber differ);
- ranking: queries with lists of items whose graded relevance (0-4) follows a non-linear
  utility of the item features with heteroscedastic noise (few relevant items per list).

Sizes count examples; for ranking they count queries (each holding ``list_size`` items).
"""

from __future__ import annotations

import math

import torch

from trainlab.data.base import Dataset, DatasetSpec, Split, Task
from trainlab.settings import fraction, non_negative, positive, require

# Relevance grades by utility quantile: 85 % of the items irrelevant, 1 % perfect (grade 4).
_GRADE_QUANTILES = torch.tensor([0.85, 0.93, 0.97, 0.99])


def describe(
    task: Task,
    seed: int,
    train_size: int,
    val_size: int,
    test_size: int,
    features: int,
    noise: float,
    classes: int,
    turns: float,
    outliers: float,
    outlier_scale: float,
    list_size: int,
    ndcg_k: int,
    relevance_noise: float = 0.5,
    noise_spread: float = 1.2,
) -> DatasetSpec:
    """Validate the settings and say what the data will look like, without generating it."""
    for name, size in (
        ("train_size", train_size),
        ("val_size", val_size),
        ("test_size", test_size),
    ):
        require(size >= 1, f"dataset.{name} must be >= 1, got {size}")
    require(
        0 <= seed < 2**63, f"dataset.seed must be in [0, 2^63), got {seed} (e.g. dataset.seed=0)"
    )
    numbers = (
        (train_size + val_size + test_size) * features * (list_size if task == "ranking" else 1)
    )
    require(
        numbers <= 2**31,
        f"the synthetic data would hold {numbers:.3g} numbers ({4 * numbers / 2**30:.0f} GiB); "
        "lower dataset.train_size, val_size, test_size or features",
    )
    require(
        features >= 2, f"dataset.features must be >= 2 (the spirals need a plane), got {features}"
    )
    non_negative("dataset.noise", noise)
    require(classes >= 2, f"dataset.classes must be >= 2, got {classes}")
    positive("dataset.turns", turns)
    fraction("dataset.outliers", outliers)
    non_negative("dataset.outlier_scale", outlier_scale)
    _check_ranking(list_size, ndcg_k, relevance_noise, noise_spread)
    sizes = {"train_size": train_size, "val_size": val_size, "test_size": test_size}
    if task == "classification":
        return DatasetSpec("synthetic", task, (features,), classes, **sizes, num_classes=classes)
    if task == "regression":
        return DatasetSpec("synthetic", task, (features,), 1, **sizes)
    return DatasetSpec(
        "synthetic",
        task,
        (features,),
        1,
        **sizes,
        list_size=list_size,
        ndcg_k=ndcg_k,
    )


def _check_ranking(list_size: int, ndcg_k: int, relevance_noise: float, spread: float) -> None:
    require(list_size >= 2, f"dataset.list_size must be >= 2, got {list_size}")
    require(
        1 <= ndcg_k <= list_size,
        f"dataset.ndcg_k must be in [1, dataset.list_size={list_size}], got {ndcg_k}",
    )
    non_negative("dataset.relevance_noise", relevance_noise)
    require(
        0 <= spread <= 3, f"dataset.noise_spread must be in [0, 3], got {spread} (e.g. 1.2)"
    )  # exp(3 z) of a normal z already spans five orders of magnitude


def load(**settings) -> Dataset:
    """Generate the dataset described by ``settings`` (the same keys as :func:`describe`)."""
    spec = describe(**settings)
    generator = torch.Generator().manual_seed(settings["seed"])  # checked in describe()
    total = spec.train_size + spec.val_size + spec.test_size
    if spec.task == "classification":
        inputs, targets = _spirals(total, settings, generator)
    elif spec.task == "regression":
        inputs, targets = _regression(total, settings, generator)
    else:
        inputs, targets = _ranking(total, settings, generator)
    train, val, test = (
        Split(x, y)
        for x, y in zip(
            inputs.split([spec.train_size, spec.val_size, spec.test_size]),
            targets.split([spec.train_size, spec.val_size, spec.test_size]),
            strict=True,
        )
    )
    if spec.task == "regression":
        held_out = spec.train_size + spec.val_size
        noisy = _with_outliers(targets[:held_out], settings, generator)
        train.targets, val.targets = noisy.split([spec.train_size, spec.val_size])
    return Dataset(spec, train, val, test)


def _random_rotation(dimension: int, generator: torch.Generator) -> torch.Tensor:
    matrix = torch.randn(dimension, dimension, generator=generator)
    q, r = torch.linalg.qr(matrix)
    return q * torch.sign(torch.diagonal(r))


def _spirals(count: int, settings: dict, generator: torch.Generator):
    classes, features = settings["classes"], settings["features"]
    labels = torch.randint(classes, (count,), generator=generator)
    position = torch.rand(count, generator=generator)  # 0 = centre, 1 = end of the arm
    angle = 2 * math.pi * (labels / classes + settings["turns"] * position)
    radius = 0.2 + 2.0 * position
    plane = torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], dim=1)
    plane += settings["noise"] * torch.randn(count, 2, generator=generator)
    # Distractor dimensions, then a random rotation hides the spiral plane among them.
    distractors = torch.randn(count, features - 2, generator=generator)
    inputs = torch.cat([plane, distractors], dim=1) @ _random_rotation(features, generator)
    return inputs, labels


def _unit_vector(features: int, generator: torch.Generator) -> torch.Tensor:
    vector = torch.randn(features, generator=generator)
    return vector / vector.norm()


def _regression(count: int, settings: dict, generator: torch.Generator):
    features = settings["features"]
    inputs = torch.randn(count, features, generator=generator)
    a, b, c = (_unit_vector(features, generator) for _ in range(3))
    clean = torch.sin(2 * inputs @ a) + 0.5 * (inputs @ b) ** 2 - 0.5 + 0.5 * (inputs @ c)
    targets = clean + settings["noise"] * torch.randn(count, generator=generator)
    return inputs, targets.unsqueeze(1)


def _with_outliers(targets: torch.Tensor, settings: dict, generator: torch.Generator):
    hit = torch.rand(targets.shape[0], generator=generator) < settings["outliers"]
    shift = settings["outlier_scale"] * torch.randn(targets.shape[0], generator=generator)
    return targets + (hit * shift).unsqueeze(1)


def _ranking(count: int, settings: dict, generator: torch.Generator):
    """Items whose relevance is a noisy non-linear utility of their features, graded 0-4 by
    quantile. The noise is heteroscedastic: some items are far more uncertain than others
    (scale ``relevance_noise`` x exp(``noise_spread`` x a feature direction)), so the top-heavy
    NDCG rewards a ranking the expected grade alone does not give, and the pointwise, pairwise
    and listwise losses, which weigh items and pairs differently, learn different rankings."""
    features, list_size = settings["features"], settings["list_size"]
    inputs = torch.randn(count, list_size, features, generator=generator)
    a, b, c, d = (_unit_vector(features, generator) for _ in range(4))
    mean = torch.sin(1.5 * inputs @ a) + 0.3 * (inputs @ a) + 0.5 * (inputs @ b) * (inputs @ c)
    scale = settings["relevance_noise"] * torch.exp(settings["noise_spread"] * (inputs @ d))
    utility = mean + scale * torch.randn(count, list_size, generator=generator)
    thresholds = torch.quantile(utility.flatten(), _GRADE_QUANTILES)
    grades = torch.bucketize(utility, thresholds).float()
    return inputs, grades
