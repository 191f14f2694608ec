"""Synthetic data: split sizes, determinism, the tasks' properties; the in-memory loader."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import compose_config
from trainlab.data import InMemoryLoader, Split, describe_dataset, load_dataset
from trainlab.errors import ConfigError


def dataset_config(**changes):
    config = dict(compose_config().dataset)
    config.update(changes)
    return config


@pytest.mark.parametrize("task", ["classification", "regression", "ranking"])
def test_split_sizes_and_shapes(task):
    data = load_dataset(dataset_config(task=task, train_size=300, val_size=50, test_size=70))
    assert [len(data.train), len(data.val), len(data.test)] == [300, 50, 70]
    assert data.spec.task == task
    if task == "classification":
        assert data.train.inputs.shape == (300, 8) and data.train.targets.dtype == torch.int64
        assert set(data.train.targets.tolist()) == {0, 1, 2}
    if task == "regression":
        assert data.train.targets.shape == (300, 1)
    if task == "ranking":
        assert data.train.inputs.shape == (300, 50, 8) and data.train.targets.shape == (300, 50)
        assert set(data.train.targets.unique().tolist()) == {0.0, 1.0, 2.0, 3.0, 4.0}


def test_same_data_seed_same_data_and_other_seed_other_data():
    first = load_dataset(dataset_config(seed=3))
    again = load_dataset(dataset_config(seed=3))
    other = load_dataset(dataset_config(seed=4))
    assert torch.equal(first.train.inputs, again.train.inputs)
    assert torch.equal(first.test.targets, again.test.targets)
    assert not torch.equal(first.train.inputs, other.train.inputs)


def test_regression_outliers_hit_train_and_val_only():
    clean = load_dataset(dataset_config(task="regression", outliers=0.0))
    noisy = load_dataset(dataset_config(task="regression", outliers=0.2, outlier_scale=10.0))
    hit = (clean.train.targets - noisy.train.targets).abs() > 1e-6
    assert 0.15 < hit.float().mean().item() < 0.25
    assert torch.equal(clean.test.targets, noisy.test.targets)
    assert torch.equal(clean.train.inputs, noisy.train.inputs)


def test_ranking_lists_hold_few_relevant_items_and_no_ranking_is_perfect():
    """15 % relevant, 1 % perfect; even ranking by the noiseless utility's order of the grades
    leaves NDCG well below 1 on average, as the noise reorders the items."""
    from trainlab.metrics import ndcg_at_k

    data = load_dataset(dataset_config(task="ranking", train_size=400))
    grades = data.train.targets
    assert (grades > 0).float().mean().item() == pytest.approx(0.15, abs=0.01)
    assert (grades == 4).float().mean().item() == pytest.approx(0.01, abs=0.005)
    by_first_feature = ndcg_at_k(data.train.inputs[..., 0], grades, 10).mean().item()
    assert by_first_feature < 0.5  # one feature alone ranks poorly: the task needs a model
    with pytest.raises(ConfigError, match=r"dataset\.noise_spread must be in \[0, 3\]"):
        describe_dataset(dataset_config(task="ranking", noise_spread=5.0))


def test_describe_validates_without_loading():
    spec = describe_dataset(dataset_config(task="ranking", list_size=5, ndcg_k=3))
    assert spec.list_size == 5 and spec.ndcg_k == 3 and spec.output_size == 1
    with pytest.raises(ConfigError, match=r"ndcg_k must be in \[1, dataset\.list_size=5\]"):
        describe_dataset(dataset_config(task="ranking", list_size=5, ndcg_k=10))
    with pytest.raises(ConfigError, match=r"dataset\.outliers must be in"):
        describe_dataset(dataset_config(outliers=1.5))
    with pytest.raises(ConfigError, match=r"dataset\.task must be one of"):
        describe_dataset(dataset_config(task="clustering"))


def _epoch_indices(loader):
    return torch.cat([inputs[:, 0].long() for inputs, _ in loader])


def test_loader_visits_every_example_once_per_epoch_in_a_new_order():
    split = Split(torch.arange(103).float().unsqueeze(1), torch.arange(103))
    loader = InMemoryLoader(split, batch_size=10, shuffle=True, seed=0)
    assert len(loader) == 11
    first, second = _epoch_indices(loader), _epoch_indices(loader)
    assert sorted(first.tolist()) == list(range(103)) == sorted(second.tolist())
    assert not torch.equal(first, second)
    for inputs, targets in loader:  # inputs and targets stay paired
        assert torch.equal(inputs[:, 0].long(), targets)


def test_loader_order_depends_on_seed_only():
    split = Split(torch.arange(50).float().unsqueeze(1), torch.arange(50))
    a = _epoch_indices(InMemoryLoader(split, 8, shuffle=True, seed=1))
    b = _epoch_indices(InMemoryLoader(split, 8, shuffle=True, seed=1))
    c = _epoch_indices(InMemoryLoader(split, 8, shuffle=True, seed=2))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_full_batch_loader_yields_the_whole_split_once():
    split = Split(torch.arange(20).float().unsqueeze(1), torch.arange(20))
    batches = list(InMemoryLoader(split, batch_size=1000, shuffle=True, seed=0))
    assert len(batches) == 1 and torch.equal(batches[0][1], torch.arange(20))


def _noisy(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """An augmentation that draws from the loader's generator, as flips and shifts do."""
    return batch + torch.rand(batch.shape, generator=generator)


@pytest.mark.parametrize("stop_after", [0, 3, 7, 8])
def test_a_loader_restored_mid_epoch_yields_exactly_the_batches_left(stop_after):
    split = Split(torch.arange(50.0).reshape(25, 2), torch.arange(25))
    first = InMemoryLoader(split, 3, shuffle=True, seed=4, prepare=_noisy)
    expected = [list(first) for _ in range(3)]  # three epochs, uninterrupted

    second = InMemoryLoader(split, 3, shuffle=True, seed=4, prepare=_noisy)
    list(second)  # epoch 1
    batches = iter(second)
    seen = [next(batches) for _ in range(stop_after)]
    resumed = InMemoryLoader(split, 3, shuffle=True, seed=99, prepare=_noisy)  # seed replaced
    resumed.load_state_dict(second.state_dict())
    got = [seen + list(resumed), list(resumed)]
    for got_epoch, expected_epoch in zip(got, expected[1:], strict=True):
        assert len(got_epoch) == len(expected_epoch) == 9
        for (inputs, targets), (want_inputs, want_targets) in zip(
            got_epoch, expected_epoch, strict=True
        ):
            assert torch.equal(inputs, want_inputs) and torch.equal(targets, want_targets)


@pytest.mark.parametrize("shuffle", [True, False])
def test_data_parallel_ranks_split_every_global_batch_and_see_each_example_once(shuffle):
    split = Split(torch.arange(22.0).reshape(22, 1), torch.arange(22))
    single = list(InMemoryLoader(split, 8, shuffle=shuffle, seed=3))
    ranks = [
        list(InMemoryLoader(split, 8, shuffle=shuffle, seed=3, rank=r, world=2)) for r in (0, 1)
    ]
    assert len(ranks[0]) == len(ranks[1]) == len(single) == 3
    for step, (_, targets) in enumerate(single):
        parts = [ranks[r][step][1] for r in (0, 1)]
        assert [len(p) for p in parts] == [len(targets) - len(targets) // 2, len(targets) // 2]
        assert torch.equal(torch.cat(parts), targets)  # the global batch, split in two
    seen = torch.cat([targets for rank in ranks for _, targets in rank])
    assert sorted(seen.tolist()) == list(range(22))
