"""Each loss against a hand computation on small tensors, and the loss x task rules."""

from __future__ import annotations

import math

import pytest
import torch

from trainlab.data.base import DatasetSpec
from trainlab.errors import ConfigError
from trainlab.losses import LOSSES, build_loss, losses_for

CLASSIFICATION = DatasetSpec("t", "classification", (2,), 3, 1, 1, 1, num_classes=3)
REGRESSION = DatasetSpec("t", "regression", (2,), 1, 1, 1, 1)
RANKING = DatasetSpec("t", "ranking", (2,), 1, 1, 1, 1, list_size=3, ndcg_k=3)

LOGITS = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]])
LABELS = torch.tensor([0, 1])


def loss(name: str, spec: DatasetSpec, **settings):
    return build_loss({"name": name, **settings}, spec)


def test_regression_losses_by_hand():
    predictions = torch.tensor([[0.0], [3.0]])
    targets = torch.tensor([[0.5], [0.0]])  # errors: -0.5 and 3
    assert loss("mse", REGRESSION)(predictions, targets).item() == pytest.approx((0.25 + 9) / 2)
    assert loss("mae", REGRESSION)(predictions, targets).item() == pytest.approx((0.5 + 3) / 2)
    # Huber, delta 1: 0.5 * 0.25 for the small error, 1 * (3 - 0.5) for the large one.
    assert loss("huber", REGRESSION, delta=1.0)(predictions, targets).item() == pytest.approx(
        (0.125 + 2.5) / 2
    )
    # Smooth L1, beta 2: 0.5 * 0.25 / 2 for the small error, 3 - 1 for the large one.
    assert loss("smooth_l1", REGRESSION, beta=2.0)(predictions, targets).item() == pytest.approx(
        (0.0625 + 2.0) / 2
    )


def test_regression_losses_on_classification_use_raw_outputs_and_one_hot_targets():
    one_hot = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    expected = ((LOGITS - one_hot) ** 2).mean().item()
    assert loss("mse", CLASSIFICATION)(LOGITS, LABELS).item() == pytest.approx(expected)
    expected_mae = (LOGITS - one_hot).abs().mean().item()
    assert loss("mae", CLASSIFICATION)(LOGITS, LABELS).item() == pytest.approx(expected_mae)


def _log_softmax(row: list[float]) -> list[float]:
    total = math.log(sum(math.exp(v) for v in row))
    return [v - total for v in row]


def test_cross_entropy_and_label_smoothing_by_hand():
    rows = [_log_softmax(r) for r in LOGITS.tolist()]
    plain = -(rows[0][0] + rows[1][1]) / 2
    assert loss("cross_entropy", CLASSIFICATION, label_smoothing=0.0)(LOGITS, LABELS).item() == (
        pytest.approx(plain)
    )
    eps = 0.3
    smoothed = (
        -sum(
            sum(((1 - eps) * (j == y) + eps / 3) * row[j] for j in range(3))
            for row, y in zip(rows, [0, 1], strict=True)
        )
        / 2
    )
    assert loss("cross_entropy", CLASSIFICATION, label_smoothing=eps)(LOGITS, LABELS).item() == (
        pytest.approx(smoothed)
    )


def _softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_log_loss_is_one_vs_rest_logistic():
    total = 0.0
    for row, y in zip(LOGITS.tolist(), [0, 1], strict=True):
        for j, z in enumerate(row):
            total += _softplus(-z) if j == y else _softplus(z)
    assert loss("log_loss", CLASSIFICATION)(LOGITS, LABELS).item() == pytest.approx(total / 6)


def test_hinge_and_squared_hinge_by_hand():
    # Row 0 (label 0, score 2): violations max(0, 1 - 2 + 0.5)=0, max(0, 1 - 2 - 1)=0.
    # Row 1 (label 1, score 1): max(0, 1 - 1 + 0)=0, max(0, 1 - 1 + 3)=3.
    assert loss("hinge", CLASSIFICATION, margin=1.0)(LOGITS, LABELS).item() == pytest.approx(
        (0 + 3 / 3) / 2
    )
    assert loss("squared_hinge", CLASSIFICATION, margin=1.0)(LOGITS, LABELS).item() == (
        pytest.approx((0 + 9 / 3) / 2)
    )
    # A margin of 2 makes row 1's first term violate too: max(0, 2 - 1 + 0) = 1.
    assert loss("hinge", CLASSIFICATION, margin=2.0)(LOGITS, LABELS).item() == pytest.approx(
        (max(0, 2 - 2 + 0.5) / 3 + (1 + 4) / 3) / 2
    )


def test_kl_div_against_smoothed_one_hot():
    smoothing = 0.1
    total = 0.0
    for row, y in zip(LOGITS.tolist(), [0, 1], strict=True):
        log_q = _log_softmax(row)
        for j in range(3):
            p = (1 - smoothing) * (j == y) + smoothing / 3
            total += p * (math.log(p) - log_q[j])
    assert loss("kl_div", CLASSIFICATION, smoothing=smoothing)(LOGITS, LABELS).item() == (
        pytest.approx(total / 2)
    )


SCORES = torch.tensor([[2.0, 0.0, 1.0]])
GRADES = torch.tensor([[2.0, 0.0, 1.0]])  # then swap to make one pair mis-ordered
MISORDERED = torch.tensor([[0.0, 2.0, 1.0]])


def test_pairwise_logistic_and_margin_by_hand():
    # Pairs with grade_i > grade_j: (0,1), (0,2), (2,1); differences s_i - s_j under MISORDERED
    # scores [0, 2, 1]: -2, -1, -1.
    differences = [-2.0, -1.0, -1.0]
    logistic = sum(_softplus(-d) for d in differences) / 3
    margin = sum(max(0.0, 1.0 - d) for d in differences) / 3
    pairwise = lambda form: loss("pairwise", RANKING, form=form, sigma=1.0, margin=1.0)  # noqa: E731
    assert pairwise("logistic")(MISORDERED, GRADES).item() == pytest.approx(logistic)
    assert pairwise("margin")(MISORDERED, GRADES).item() == pytest.approx(margin)
    assert pairwise("both")(MISORDERED, GRADES).item() == pytest.approx(logistic + margin)
    # A perfect ordering with gaps >= margin costs nothing under the margin form.
    assert pairwise("margin")(SCORES * 2, GRADES).item() == pytest.approx(0.0)


def test_pointwise_and_listwise_by_hand():
    assert loss("pointwise", RANKING, form="regression")(MISORDERED, GRADES).item() == (
        pytest.approx(((0 - 2) ** 2 + (2 - 0) ** 2 + 0) / 3)
    )
    binary = (_softplus(-0.0) + _softplus(2.0) + _softplus(-1.0)) / 3  # relevant: grade > 0
    assert loss("pointwise", RANKING, form="binary")(MISORDERED, GRADES).item() == (
        pytest.approx(binary)
    )
    target = [math.exp(g) for g in GRADES[0].tolist()]
    target = [t / sum(target) for t in target]
    log_q = _log_softmax(MISORDERED[0].tolist())
    expected = -sum(p * lq for p, lq in zip(target, log_q, strict=True))
    assert loss("listwise", RANKING, temperature=1.0)(MISORDERED, GRADES).item() == (
        pytest.approx(expected)
    )


def test_loss_prefers_better_ranking():
    for name, settings in [
        ("pairwise", {"form": "logistic", "sigma": 1.0, "margin": 1.0}),
        ("listwise", {"temperature": 1.0}),
        ("kl_div", {"smoothing": 0.0}),
    ]:
        fn = loss(name, RANKING, **settings)
        assert fn(SCORES, GRADES).item() < fn(MISORDERED, GRADES).item(), name


def test_incompatible_loss_and_task_is_refused_with_the_losses_that_fit():
    with pytest.raises(ConfigError) as error:
        loss("hinge", REGRESSION, margin=1.0)
    message = str(error.value)
    assert "loss=hinge" in message and "regression" in message
    assert "mse, mae, huber, smooth_l1" in message
    assert losses_for("ranking") == [
        "mse",
        "mae",
        "huber",
        "smooth_l1",
        "log_loss",
        "kl_div",
        "pairwise",
        "pointwise",
        "listwise",
    ]
    assert set(losses_for("classification")) == set(LOSSES) - {"pairwise", "pointwise", "listwise"}


@pytest.mark.parametrize(
    ("name", "settings", "fragment"),
    [
        ("huber", {"delta": 0.0}, "loss.delta must be > 0"),
        ("cross_entropy", {"label_smoothing": 1.5}, "loss.label_smoothing must be in [0, 1]"),
        ("huber", {"delta": "big"}, "loss.delta must be a number"),
        ("mse", {"delta": 1.0}, "loss.delta is not a setting here"),
    ],
)
def test_bad_loss_settings(name, settings, fragment):
    with pytest.raises(ConfigError, match=None) as error:
        loss(name, CLASSIFICATION, **settings)
    assert fragment in str(error.value)
