"""Each loss against a hand computation on small tensors, and the loss x task rules."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from trainlab.data.base import PAD_GRADE, DatasetSpec
from trainlab.errors import ConfigError
from trainlab.losses import LOSSES, build_loss, losses_for, terms

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


def _pairwise_before_padding(scores: torch.Tensor, grades: torch.Tensor) -> torch.Tensor:
    difference = scores.unsqueeze(-1) - scores.unsqueeze(-2)
    ordered = (grades.unsqueeze(-1) > grades.unsqueeze(-2)).to(scores.dtype)
    per_pair = torch.zeros_like(difference) + F.softplus(-1.0 * difference)
    per_pair = per_pair + F.relu(1.0 - difference)
    return (per_pair * ordered).sum() / ordered.sum().clamp_min(1)


def _listwise_before_padding(scores: torch.Tensor, grades: torch.Tensor) -> torch.Tensor:
    target = torch.softmax(grades.to(scores.dtype) / 0.5, dim=-1)
    return -(target * F.log_softmax(scores, dim=-1)).sum(dim=-1).mean()


def _binary(scores: torch.Tensor, grades: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(scores, (grades > 0).to(scores.dtype))


# Every ranking loss with its settings and its formula before padding was handled.
RANKING_LOSSES = [
    ("mse", {}, F.mse_loss),
    ("mae", {}, F.l1_loss),
    ("huber", {"delta": 1.0}, lambda s, g: F.huber_loss(s, g, delta=1.0)),
    ("smooth_l1", {"beta": 0.5}, lambda s, g: F.smooth_l1_loss(s, g, beta=0.5)),
    ("log_loss", {}, _binary),
    (
        "kl_div",
        {"smoothing": 0.0},
        lambda s, g: F.kl_div(
            F.log_softmax(s, dim=-1),
            F.log_softmax(g, dim=-1),
            reduction="batchmean",
            log_target=True,
        ),
    ),
    ("pairwise", {"form": "both", "sigma": 1.0, "margin": 1.0}, _pairwise_before_padding),
    ("pointwise", {"form": "regression"}, F.mse_loss),
    ("pointwise", {"form": "binary"}, _binary),
    ("listwise", {"temperature": 0.5}, _listwise_before_padding),
]
RANKING_IDS = [f"{name}-{settings.get('form', '')}" for name, settings, _ in RANKING_LOSSES]
LENGTHS = (5, 3, 1, 0)  # a list of padding alone too: it must count for nothing


def padded_batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random scores (the padded ones too: they must not matter) and integer grades 0..3."""
    generator = torch.Generator().manual_seed(seed)
    scores = torch.randn(len(LENGTHS), max(LENGTHS), generator=generator)
    grades = torch.randint(0, 4, scores.shape, generator=generator).float()
    for row, length in enumerate(LENGTHS):
        grades[row, length:] = PAD_GRADE
    return scores, grades


def test_every_ranking_loss_is_checked_with_padding():
    assert {name for name, _, _ in RANKING_LOSSES} == set(losses_for("ranking"))


@pytest.mark.parametrize(("name", "settings", "before"), RANKING_LOSSES, ids=RANKING_IDS)
def test_a_padded_batch_gives_the_value_and_gradients_of_its_unpadded_lists(name, settings, before):
    """Each real list alone, weighted by its terms (items, one list, or pairs), is what the
    padded batch must equal; a padded score gets no gradient."""
    fn = loss(name, RANKING, **settings)
    scores, grades = padded_batch()
    padded = scores.clone().requires_grad_()
    value = fn(padded, grades)
    value.backward()
    lists = scores.clone().requires_grad_()
    parts = [
        (lists[row, :length].unsqueeze(0), grades[row, :length].unsqueeze(0))
        for row, length in enumerate(LENGTHS)
        if length
    ]
    weights = [terms(fn, *part) for part in parts]
    expected = sum(fn(*part) * weight for part, weight in zip(parts, weights, strict=True))
    expected = expected / sum(weights)
    expected.backward()
    assert value.item() == pytest.approx(expected.item(), rel=1e-6)
    torch.testing.assert_close(padded.grad, lists.grad)
    assert torch.all(padded.grad[grades < 0] == 0)


@pytest.mark.parametrize(("name", "settings", "before"), RANKING_LOSSES, ids=RANKING_IDS)
def test_unpadded_ranking_losses_compute_bit_for_bit_as_before(name, settings, before):
    generator = torch.Generator().manual_seed(3)
    scores = torch.randn(6, 7, generator=generator)
    grades = torch.randint(0, 4, (6, 7), generator=generator).float()
    results = []
    for fn in (loss(name, RANKING, **settings), before):
        leaf = scores.clone().requires_grad_()
        value = fn(leaf, grades)
        value.backward()
        results.append((value.detach(), leaf.grad))
    (value, grad), (value_before, grad_before) = results
    assert torch.equal(value, value_before)
    assert torch.equal(grad, grad_before)


def test_terms_count_real_items_real_lists_and_real_pairs():
    scores, grades = padded_batch()
    for name, settings, _ in RANKING_LOSSES:
        fn = loss(name, RANKING, **settings)
        count = terms(fn, scores, grades).item()
        if name == "pairwise":
            real = [grades[row, :length].tolist() for row, length in enumerate(LENGTHS)]
            pairs = sum(a > b for grade in real for a in grade for b in grade)
            assert count == pairs > 0
        elif name in ("listwise", "kl_div"):
            assert count == 3, name  # the list of padding alone is no term
        else:
            assert count == sum(LENGTHS), name


def test_padded_listwise_losses_have_finite_gradients_with_extreme_scores():
    """The softmax mask is finite, so huge real scores beside padded ones make no NaN."""
    scores, grades = padded_batch()
    for name, settings in [("listwise", {"temperature": 0.1}), ("kl_div", {"smoothing": 0.0})]:
        leaf = (scores * 1e4).requires_grad_()
        value = loss(name, RANKING, **settings)(leaf, grades)
        value.backward()
        assert torch.isfinite(value) and torch.isfinite(leaf.grad).all(), name
