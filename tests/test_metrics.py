"""Metrics against hand computations."""

from __future__ import annotations

import math

import pytest
import torch

from trainlab.data.base import DatasetSpec, Split
from trainlab.losses import build_loss
from trainlab.metrics import evaluate, ndcg_at_k


def test_ndcg_by_hand():
    grades = torch.tensor([[3.0, 2.0, 0.0, 1.0]])
    scores = torch.tensor(
        [[0.1, 0.9, 0.5, 0.2]]
    )  # ranks: item1 (2), item2 (0), item3 (1), item0 (3)
    gains = [2**2 - 1, 0, 2**1 - 1]  # top 3 by score
    dcg = sum(g / math.log2(i + 2) for i, g in enumerate(gains))
    ideal = sum(g / math.log2(i + 2) for i, g in enumerate([7, 3, 1]))
    assert ndcg_at_k(scores, grades, 3).item() == pytest.approx(dcg / ideal)
    assert ndcg_at_k(grades, grades, 3).item() == pytest.approx(1.0)
    assert ndcg_at_k(scores, torch.zeros(1, 4), 3).item() == 1.0  # nothing relevant to rank


def test_evaluate_classification_and_regression_exactly():
    spec = DatasetSpec("t", "classification", (2,), 2, 1, 1, 3, num_classes=2)
    model = torch.nn.Identity()
    split = Split(torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0]]), torch.tensor([0, 0, 0]))
    loss = build_loss({"name": "cross_entropy", "label_smoothing": 0.0}, spec)
    result = evaluate(model, loss, split, spec, batch_size=2)  # two chunks: sums, not averages
    assert result["accuracy"] == pytest.approx(2 / 3)
    assert result["loss"] == pytest.approx(loss(split.inputs, split.targets).item())

    spec = DatasetSpec("t", "regression", (1,), 1, 1, 1, 4)
    split = Split(
        torch.tensor([[1.0], [2.0], [3.0], [4.0]]), torch.tensor([[1.0], [1.0], [1.0], [0.0]])
    )
    result = evaluate(model, build_loss({"name": "mae"}, spec), split, spec, batch_size=3)
    assert result["mse"] == pytest.approx((0 + 1 + 4 + 16) / 4)
    assert result["mae"] == pytest.approx((0 + 1 + 2 + 4) / 4)
