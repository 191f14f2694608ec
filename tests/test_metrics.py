"""Metrics against hand computations."""

from __future__ import annotations

import math

import pytest
import torch

from trainlab.data.base import PAD_GRADE, DatasetSpec, Split
from trainlab.losses import build_loss, losses_for
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


def test_ndcg_shares_places_between_tied_scores_whatever_the_item_order():
    """A constant model: the relevant item first or last in the list scores the same, the
    mean gain over the tied places (scikit-learn gives 0.45436 here too)."""
    first, last = torch.zeros(1, 10), torch.zeros(1, 10)
    first[0, 0], last[0, 9] = 1, 1
    constant = torch.zeros(1, 10)
    assert ndcg_at_k(constant, first, 10).item() == pytest.approx(0.454356, abs=1e-6)
    assert ndcg_at_k(constant, last, 10).item() == pytest.approx(0.454356, abs=1e-6)


def test_ndcg_equals_scikit_learn_on_random_and_tied_scores():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    generator = torch.Generator().manual_seed(0)
    for trial in range(60):
        items = int(torch.randint(2, 25, (), generator=generator))
        k = int(torch.randint(1, items + 3, (), generator=generator))
        if trial % 2:
            scores = torch.randn(4, items, generator=generator)
        else:  # few distinct scores: many ties
            scores = torch.randint(0, 3, (4, items), generator=generator).float()
        grades = torch.randint(0, 5, (4, items), generator=generator)
        grades[:, 0] = grades[:, 0].clamp_min(1)  # a relevant item in every list
        ours = ndcg_at_k(scores, grades, k)
        for row in range(4):
            gains = (2.0 ** grades[row : row + 1] - 1).numpy()  # scikit-learn takes the gains
            expected = sklearn_metrics.ndcg_score(gains, scores[row : row + 1].numpy(), k=k)
            assert ours[row].item() == pytest.approx(expected, abs=1e-6), (trial, row)


def test_the_pairwise_validation_loss_is_the_mean_over_all_pairs_whatever_the_batch():
    """Lists with different numbers of ordered pairs: a mean of batch means would weight each
    batch by its lists, not its pairs, and change with eval_batch_size."""
    spec = DatasetSpec("t", "ranking", (1,), 1, 1, 1, 101, list_size=6, ndcg_k=3)
    generator = torch.Generator().manual_seed(1)
    scores = torch.randn(101, 6, generator=generator)
    grades = torch.randint(0, 3, (101, 6), generator=generator)
    grades[:40] = grades[:40].clamp_max(1)  # fewer ordered pairs in the first lists
    loss = build_loss({"name": "pairwise", "form": "logistic", "sigma": 1.0, "margin": 1.0}, spec)
    split = Split(scores.unsqueeze(-1), grades)
    model = torch.nn.Flatten(-2)  # (lists, items, 1) -> (lists, items): the scores themselves
    over_all = loss(scores, grades).item()
    for batch_size in (7, 37, 101, 4096):
        result = evaluate(model, loss, split, spec, batch_size=batch_size)
        assert result["loss"] == pytest.approx(over_all, rel=1e-6), batch_size


def _padded_lists(lengths: list[int], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores with many ties (padded ones tied with real ones too) and grades 0..3, padded."""
    generator = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 3, (len(lengths), max(lengths)), generator=generator).float()
    grades = torch.randint(0, 4, scores.shape, generator=generator).float()
    for row, length in enumerate(lengths):
        grades[row, length:] = PAD_GRADE
    return scores, grades


def test_ndcg_of_padded_lists_equals_their_unpadded_values():
    scores, grades = _padded_lists([5, 3, 1], seed=0)
    scores[1:, 3:] = scores[1, 0]  # padded scores tied with a real one: still no shared place
    for k in range(1, 7):
        padded = ndcg_at_k(scores, grades, k)
        for row, length in enumerate([5, 3, 1]):
            alone = ndcg_at_k(scores[row : row + 1, :length], grades[row : row + 1, :length], k)
            assert padded[row].item() == pytest.approx(alone.item(), abs=1e-6), (k, row)


def test_ndcg_puts_padding_anywhere_in_a_list_after_every_real_item():
    """Padded items in the middle, tied with real scores, even with a real score of -inf."""
    inf = math.inf
    scores = torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.0], [-inf, 5.0, -inf, 1.0, -inf]])
    grades = torch.tensor([[1.0, PAD_GRADE, 0.0, PAD_GRADE, 2.0], [3.0, PAD_GRADE, 0.0, 1.0, 2.0]])
    real = grades >= 0
    for k in (1, 2, 3, 5):
        padded = ndcg_at_k(scores, grades, k)
        for row in range(2):
            alone = ndcg_at_k(scores[row][real[row]][None], grades[row][real[row]][None], k)
            assert padded[row].item() == pytest.approx(alone.item(), abs=1e-6), (k, row)
    # A constant model on grades [1, 0, 2]: the three real items share the first three places,
    # each with the mean gain (1 + 0 + 3) / 3, whatever the padding between them.
    discounts = [1 / math.log2(place + 2) for place in range(3)]
    ideal = 3 * discounts[0] + 1 * discounts[1]
    expected = 4 / 3 * sum(discounts) / ideal
    assert ndcg_at_k(scores[:1], grades[:1], 3).item() == pytest.approx(expected, abs=1e-6)


RANKING_SETTINGS = {
    "huber": {"delta": 1.0},
    "smooth_l1": {"beta": 0.5},
    "kl_div": {"smoothing": 0.0},
    "pairwise": {"form": "both", "sigma": 1.0, "margin": 1.0},
    "pointwise": {"form": "regression"},
    "listwise": {"temperature": 1.0},
}


@pytest.mark.parametrize("name", losses_for("ranking"))
def test_the_validation_loss_and_ndcg_of_padded_lists_are_exact_whatever_the_batch(name):
    """A split of lists of different lengths: each batch's mean weighted by its terms (real
    items, lists or pairs) gives the loss over the whole split, at every evaluation batch size,
    and NDCG is the mean of the lists' unpadded values."""
    lengths = [
        int(n) for n in torch.randint(1, 7, (23,), generator=torch.Generator().manual_seed(2))
    ]
    scores, grades = _padded_lists(lengths, seed=1)
    scores = scores + torch.randn(scores.shape, generator=torch.Generator().manual_seed(3))
    scores[grades < 0] = 0.0  # what the model scores a padded item's all-zero features
    spec = DatasetSpec("t", "ranking", (1,), 1, 1, 1, 23, list_size=6, ndcg_k=3)
    loss = build_loss({"name": name, **RANKING_SETTINGS.get(name, {})}, spec)
    split = Split(scores.unsqueeze(-1), grades)
    model = torch.nn.Flatten(-2)  # (lists, items, 1) -> (lists, items): the scores themselves
    over_all = loss(scores, grades).item()
    unpadded_ndcg = [
        ndcg_at_k(scores[row : row + 1, :n], grades[row : row + 1, :n], 3).item()
        for row, n in enumerate(lengths)
    ]
    for batch_size in (4, 7, 23):
        result = evaluate(model, loss, split, spec, batch_size=batch_size)
        assert result["loss"] == pytest.approx(over_all, rel=1e-5), batch_size
        assert result["ndcg"] == pytest.approx(sum(unpadded_ndcg) / 23, rel=1e-6), batch_size
