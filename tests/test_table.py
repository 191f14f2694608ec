"""dataset=table: a user's CSV / Parquet / .npz file read, checked, split, encoded, cached and
trained on, with scikit-learn's bundled real datasets written to files by the tests."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.helpers import compose_config, train_run
from trainlab.data import describe_dataset, load_dataset
from trainlab.data import table as table_module
from trainlab.data.base import PAD_GRADE
from trainlab.errors import UserError

pd = pytest.importorskip("pandas")
pytest.importorskip("pyarrow")  # Parquet files (the tables extra has both)
datasets = pytest.importorskip("sklearn.datasets")

CULTIVARS = np.array(["barolo", "grignolino", "barbera"])  # the UCI wine data's three cultivars


@pytest.fixture(autouse=True)
def fresh_memory():
    table_module._decoded_for.cache_clear()  # each test decodes (or reads the cache) anew
    yield
    table_module._decoded_for.cache_clear()


def wine_csv(folder) -> str:
    """The wine data with text labels and a text column (alcohol band) to one-hot encode."""
    frame = datasets.load_wine(as_frame=True).frame
    frame["cultivar"] = CULTIVARS[frame.pop("target")]
    frame["alcohol_band"] = pd.cut(frame["alcohol"], 3, labels=["low", "mid", "high"]).astype(str)
    path = folder / "wine.csv"
    frame.to_csv(path, index=False)
    return str(path)


def diabetes_parquet(folder) -> str:
    frame = datasets.load_diabetes(as_frame=True, scaled=False).frame
    path = folder / "diabetes.parquet"
    frame.to_parquet(path)
    return str(path)


def ranking_csv(folder, queries: int = 240, seed: int = 0) -> str:
    """Queries with 4 to 30 items each; grades 0-3 from a noisy linear utility of 5 features."""
    generator = np.random.default_rng(seed)
    lengths = generator.integers(4, 31, size=queries)
    query = np.repeat(np.arange(queries), lengths)
    features = generator.normal(size=(len(query), 5))
    utility = features @ np.array([1.0, -0.7, 0.5, 0.0, 0.3]) + 0.3 * generator.normal(
        size=len(query)
    )
    grade = np.digitize(utility, np.quantile(utility, [0.6, 0.85, 0.95]))
    frame = pd.DataFrame(features, columns=[f"f{i}" for i in range(5)])
    frame.insert(0, "query_id", [f"q{q:04d}" for q in query])
    frame["relevance"] = grade
    path = folder / "ranking.csv"
    frame.sample(frac=1.0, random_state=seed).to_csv(path, index=False)  # rows in any order
    return str(path)


def table_settings(tmp_path, path: str | None, **changes) -> dict:
    config = dict(compose_config("dataset=table").dataset)
    config.update({"path": path, "root": str(tmp_path / "data-root"), **changes})
    return config


def table_run(tmp_path, path: str, *overrides: str) -> dict:
    config = compose_config(
        "dataset=table", f"dataset.path={path}", f"dataset.root={tmp_path / 'data-root'}",
        "cpu_threads=1", *overrides,
    )  # fmt: skip
    return train_run(config, tmp_path / "run")


def test_text_labels_and_a_text_column_train_a_classifier(tmp_path):
    path = wine_csv(tmp_path)
    settings = table_settings(tmp_path, path, target="cultivar")
    spec = describe_dataset(settings)
    assert spec.task == "classification" and spec.num_classes == 3
    assert spec.input_shape == (13 + 3,)  # 13 numbers and the band's three categories
    assert (spec.train_size, spec.val_size, spec.test_size) == (124, 27, 27)
    metrics = table_run(tmp_path, path, "dataset.target=cultivar", "epochs=30")
    assert metrics["test"]["accuracy"] >= 0.9, metrics["test"]


def test_a_parquet_regression_with_a_categorical_column_learns(tmp_path):
    path = diabetes_parquet(tmp_path)
    data = load_dataset(table_settings(tmp_path, path, target="target", categorical=["sex"]))
    assert data.spec.task == "regression" and data.spec.input_shape == (9 + 2,)
    # Standardized with the training split's statistics: the training target has mean 0, std 1.
    assert abs(float(data.train.targets.mean())) < 1e-5
    assert abs(float(data.train.targets.std(unbiased=False)) - 1) < 1e-4
    metrics = table_run(
        tmp_path, path, "dataset.target=target", "dataset.categorical=[sex]", "model=linear",
        "loss=mse", "epochs=40",
    )  # fmt: skip
    # Standardized units: 1 - mse is about R^2 (a linear model reaches about 0.5 on this data).
    assert metrics["test"]["mse"] < 0.65, metrics["test"]


def test_a_ranking_table_packs_whole_queries_and_trains_with_ranking_losses(tmp_path):
    path = ranking_csv(tmp_path)
    data = load_dataset(table_settings(tmp_path, path, target="relevance", query="query_id"))
    assert data.spec.task == "ranking" and data.spec.input_shape == (5,)
    assert data.spec.list_size == 30 and data.train.inputs.shape[1:] == (30, 5)
    real = torch.cat([split.targets for split in (data.train, data.val, data.test)]) != PAD_GRADE
    assert int(real.sum()) == len(pd.read_csv(path))  # every row is in exactly one list
    random_scores = torch.rand(data.test.targets.shape, generator=torch.Generator().manual_seed(0))
    from trainlab.metrics import ndcg_at_k

    chance = float(ndcg_at_k(random_scores, data.test.targets, 10).mean())
    for loss in ("pairwise", "listwise"):
        metrics = table_run(
            tmp_path / loss, path, "dataset.target=relevance", "dataset.query=query_id",
            f"loss={loss}", "epochs=8",
        )  # fmt: skip
        assert metrics["test"]["ndcg"] > chance + 0.25, (loss, metrics["test"], chance)


def test_queries_stay_whole_and_classes_stratified(tmp_path):
    frame = pd.read_csv(ranking_csv(tmp_path))
    rows = table_module.split_rows(
        frame, "ranking", None, {"split_column": None, "query": "query_id", "split_seed": 3,
                                 "val_fraction": 0.2, "test_fraction": 0.2},
    )  # fmt: skip
    owners = [set(frame["query_id"].iloc[rows[name]]) for name in ("train", "val", "test")]
    assert not (owners[0] & owners[1] or owners[0] & owners[2] or owners[1] & owners[2])
    assert [len(owner) for owner in owners] == [144, 48, 48]
    labels = np.repeat([0, 1, 2], [100, 50, 10])
    rows = table_module._stratified_split(labels, {"split_seed": 0, "val_fraction": 0.1,
                                                   "test_fraction": 0.2})  # fmt: skip
    assert [np.bincount(labels[rows[n]]).tolist() for n in ("train", "val", "test")] == [
        [70, 35, 7], [10, 5, 1], [20, 10, 2],
    ]  # fmt: skip


def test_a_split_column_decides_the_splits(tmp_path):
    frame = pd.DataFrame({"x": np.arange(10.0), "y": [0, 1] * 5,
                          "part": ["train"] * 6 + ["Validation", " val"] + ["TEST"] * 2})  # fmt: skip
    frame.to_csv(tmp_path / "t.csv", index=False)
    data = load_dataset(
        table_settings(tmp_path, str(tmp_path / "t.csv"), target="y", split_column="part")
    )
    assert [len(data.train), len(data.val), len(data.test)] == [6, 2, 2]
    assert data.spec.input_shape == (1,)  # the split column is no feature
    frame.loc[3, "part"] = "holdout"
    frame.to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(UserError, match="holds 'holdout'; each row must say train, val or test"):
        describe_dataset(
            table_settings(tmp_path, str(tmp_path / "t.csv"), target="y", split_column="part")
        )


def test_encoding_uses_training_statistics_and_zeros_unseen_categories(tmp_path, caplog):
    frame = pd.DataFrame({
        "size": [1.0, 2.0, 3.0, 4.0, 100.0, 200.0],
        "city": ["a", "b", "a", "b", "zurich", "a"],
        "y": [0.0, 1.0, 0.0, 1.0, 0.5, 0.2],
        "part": ["train"] * 4 + ["val", "test"],
    })  # fmt: skip
    frame.to_csv(tmp_path / "t.csv", index=False)
    settings = table_settings(tmp_path, str(tmp_path / "t.csv"), target="y", split_column="part")
    data = load_dataset(settings)
    sizes = np.array([1.0, 2.0, 3.0, 4.0])
    expected = (100.0 - sizes.mean()) / sizes.std()
    assert data.train.inputs[:, 0].mean().abs() < 1e-6
    assert data.val.inputs[0].tolist() == pytest.approx([expected, 0.0, 0.0])  # zurich: zeros
    assert data.test.inputs[0, 1:].tolist() == [1.0, 0.0]  # city=a
    assert "1 validation/test rows hold a category of column 'city'" in caplog.text


@pytest.mark.parametrize(("impute", "filled"), [("mean", 3.0), ("median", 2.0)])
def test_missing_numbers_are_imputed_from_the_training_split_when_asked(tmp_path, impute, filled):
    frame = pd.DataFrame({"x": [1.0, 2.0, 6.0, None, 9.0, 9.0], "y": [0, 1, 0, 1, 0, 1],
                          "part": ["train"] * 4 + ["val", "test"]})  # fmt: skip
    frame.to_csv(tmp_path / "t.csv", index=False)
    data = load_dataset(table_settings(
        tmp_path, str(tmp_path / "t.csv"), target="y", split_column="part", impute=impute
    ))  # fmt: skip
    train = np.array([1.0, 2.0, 6.0, filled])
    assert data.train.inputs[3, 0] == pytest.approx((filled - train.mean()) / train.std())


@pytest.mark.parametrize(("target", "task"), [
    (["a", "b", "a", "c"] * 5, "classification"),
    ([0, 1, 1, 0] * 5, "classification"),
    ([0.5, 1.25, 3.0, 2.0] * 5, "regression"),
    (list(range(60)) + [0] * 0, "regression"),
])  # fmt: skip
def test_the_task_is_inferred_from_the_target_where_it_is_clear(tmp_path, target, task):
    frame = pd.DataFrame({"x": np.arange(len(target), dtype=float), "y": target})
    frame.to_csv(tmp_path / "t.csv", index=False)
    assert (
        describe_dataset(table_settings(tmp_path, str(tmp_path / "t.csv"), target="y")).task == task
    )


def test_columns_named_by_numbers_are_named_as_a_command_line_gives_them(tmp_path):
    frame = pd.DataFrame({0: np.arange(20.0), 1: [0.5, 2.5] * 10, 2: ["a", "b"] * 10})
    frame.to_parquet(tmp_path / "numbered.parquet")  # Parquet keeps the numbers as text
    (tmp_path / "numbered.csv").write_text(
        "0,1,2\n" + "".join(f"{i}.5,{i % 3},{'ab'[i % 2]}\n" for i in range(20))
    )
    for name in ("numbered.parquet", "numbered.csv"):
        settings = table_settings(tmp_path, str(tmp_path / name), target=2, features=[0, 1])
        assert describe_dataset(settings).input_shape == (2,)  # dataset.target=2 on the CLI


def test_npz_columns_and_matrices_are_a_table(tmp_path):
    generator = np.random.default_rng(0)
    np.savez(tmp_path / "t.npz", x=generator.normal(size=(50, 3)), label=np.arange(50) % 2)
    spec = describe_dataset(table_settings(tmp_path, str(tmp_path / "t.npz"), target="label"))
    assert spec.input_shape == (3,) and spec.task == "classification"


def test_the_decoded_table_is_cached_until_the_file_changes(tmp_path, monkeypatch):
    path = wine_csv(tmp_path)
    settings = table_settings(tmp_path, path, target="cultivar")
    first = load_dataset(settings)
    assert len(list((tmp_path / "data-root" / "trainlab-cache").glob("table-*.pt"))) == 1
    table_module._decoded_for.cache_clear()
    reads = []
    original = table_module.read_table
    monkeypatch.setattr(table_module, "read_table", lambda p: reads.append(p) or original(p))
    again = load_dataset(settings)
    assert reads == [] and torch.equal(first.train.inputs, again.train.inputs)
    frame = pd.read_csv(path).iloc[:150]
    frame.to_csv(path, index=False)  # a changed file is decoded again
    table_module._decoded_for.cache_clear()
    assert describe_dataset(settings).train_size < 124 and len(reads) == 1


def _write(tmp_path, frame, name="t.csv") -> str:
    frame.to_csv(tmp_path / name, index=False)
    return str(tmp_path / name)


def _bad(tmp_path, message: str, **settings) -> None:
    """describe refuses in one line containing ``message``, and writes no cache."""
    with pytest.raises(UserError) as error:
        describe_dataset(table_settings(tmp_path, **settings))
    assert message in str(error.value) and "\n" not in str(error.value), str(error.value)
    assert not (tmp_path / "data-root").exists()


def test_bad_tables_are_one_line_each_and_write_nothing(tmp_path):
    plain = pd.DataFrame({"x": [1.0, 2.0, 3.0, 4.0] * 5, "y": ["a", "b"] * 10,
                          "q": [1, 1, 2, 2] * 5})  # fmt: skip
    good = _write(tmp_path, plain)
    _bad(tmp_path, "no such file", path=str(tmp_path / "nope.csv"), target="y")
    _bad(tmp_path, "set dataset.path=", path=None, target="y")
    _bad(tmp_path, "no column 'yy' in the table; did you mean y?", path=good, target="yy")
    _bad(tmp_path, "dataset.features: no column 'z'", path=good, target="y", features=["x", "z"])
    _bad(tmp_path, "set dataset.target=", path=good, target=None)
    mixed = _write(tmp_path, plain.assign(x=["1.5", "2", "?", "4"] * 5), "mixed.csv")
    _bad(
        tmp_path,
        "column 'x' mixes numbers and text (e.g. '?' in data row 3",
        path=mixed,
        target="y",
    )
    holes = plain.assign(x=[1.0, None, 3.0, 4.0] * 5, w=[None] + [1.0] * 19)
    _bad(tmp_path, "missing values in 2 feature column(s): x (5), w (1); fill them in the file, "
         "or set dataset.impute=mean or median", path=_write(tmp_path, holes, "holes.csv"),
         target="y")  # fmt: skip
    _bad(tmp_path, "holds one class ('a') in all 20 rows", target="y",
         path=_write(tmp_path, plain.assign(y="a"), "one.csv"))  # fmt: skip
    _bad(tmp_path, "a ranking table needs dataset.query=", path=good, target="x", task="ranking")
    _bad(tmp_path, "is a folder, not a table file", path=str(tmp_path), target="y")
    (tmp_path / "t.xlsx").write_text("x")
    _bad(tmp_path, "not a table file trainlab reads", path=str(tmp_path / "t.xlsx"), target="y")
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    _bad(tmp_path, "cannot read it as parquet", path=str(tmp_path / "broken.parquet"), target="y")
    _bad(tmp_path, "whole numbers with 4 distinct values", target="x",
         path=_write(tmp_path, plain.assign(x=[1, 2, 3, 4] * 5, y=[0.5] * 20), "ints.csv"))  # fmt: skip


def test_tables_trainlab_cannot_learn_from_are_one_line_each(tmp_path):
    """What a real file may hold: no rows, another separator, infinities, dates, lists, a
    constant target, an empty column."""
    (tmp_path / "header.csv").write_text("a,b,y\n")
    _bad(tmp_path, "holds no rows", path=str(tmp_path / "header.csv"), target="y")
    (tmp_path / "semi.csv").write_text("a;y\n1;2\n3;4\n")
    _bad(tmp_path, "its columns are separated by ';'", path=str(tmp_path / "semi.csv"), target="y")
    plain = pd.DataFrame({"x": np.arange(20.0), "y": [0.5, 1.5] * 10})
    _bad(tmp_path, "infinite values in column(s) x (1)", target="y",
         path=_write(tmp_path, plain.assign(x=[np.inf, *range(19)]), "inf.csv"))  # fmt: skip
    dated = plain.assign(when=pd.date_range("2026-01-01", periods=20))
    dated.to_parquet(tmp_path / "dated.parquet")
    _bad(tmp_path, "column 'when' holds dates or times", target="y",
         path=str(tmp_path / "dated.parquet"))  # fmt: skip
    listed = plain.assign(pair=[[1, 2]] * 20)
    listed.to_parquet(tmp_path / "lists.parquet")
    _bad(tmp_path, "column 'pair' holds lists", target="y", path=str(tmp_path / "lists.parquet"))
    _bad(tmp_path, "holds one value (7) in every row", target="y",
         path=_write(tmp_path, plain.assign(y=7), "constant.csv"))  # fmt: skip
    _bad(tmp_path, "column 'w' has no values at all", target="y", impute="mean",
         path=_write(tmp_path, plain.assign(w=np.nan), "empty.csv"))  # fmt: skip


def test_large_grades_have_a_finite_ndcg():
    from trainlab.metrics import ndcg_at_k

    grades = torch.tensor([[0.0, 200.0, 400.0]])
    assert ndcg_at_k(torch.tensor([[1.0, 2.0, 3.0]]), grades, 10).item() == 1.0
    assert ndcg_at_k(torch.tensor([[3.0, 2.0, 1.0]]), grades, 10).item() == pytest.approx(0.5)


def test_without_pandas_the_table_says_how_to_install_it(tmp_path, monkeypatch):
    import builtins

    path = wine_csv(tmp_path)
    real_import = builtins.__import__

    def no_pandas(name, *args, **kwargs):
        if name == "pandas":
            raise ImportError("No module named 'pandas'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pandas)
    _bad(tmp_path, "pip install 'trainlab[tables]'", path=path, target="cultivar")
