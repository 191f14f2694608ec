"""A table's columns as model inputs and targets, fitted on the training rows only.

Numbers are standardized with the training split's mean and standard deviation (missing values
imputed first, when asked); text columns, and numeric ones named categorical, are one-hot encoded
with the training split's categories, so a category seen only in validation or test rows (or a
missing value) becomes all zeros, and is counted. Everything works on whole columns (numpy and
pandas), never row by row.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from trainlab.data.base import TASKS
from trainlab.data.images import DataError
from trainlab.data.table_file import is_text, pandas

MANY_VALUES = 50  # whole-number targets with more distinct values are taken as quantities


class Encoded:
    """The feature matrix of every row, with the names of its columns and the unseen-category
    counts (rows outside the training split whose category training never saw)."""

    def __init__(self) -> None:
        self.blocks: list[np.ndarray] = []
        self.names: list[str] = []
        self.unseen: dict[str, int] = {}

    def matrix(self) -> np.ndarray:
        return np.concatenate(self.blocks, axis=1, dtype=np.float32)


def encode_features(
    table: Any,
    names: list[str],
    categorical: list[str],
    impute: str | None,
    train_rows: np.ndarray,
    max_categories: int,
) -> Encoded:
    """Every feature column encoded with statistics of ``train_rows``."""
    encoded = Encoded()
    for name in names:
        column = table[name]
        if name in categorical or is_text(column):
            block, categories, unseen = one_hot(column, name, train_rows, max_categories)
            encoded.names += [f"{name}={category}" for category in categories]
            if unseen:
                encoded.unseen[name] = unseen
        else:
            block = standardized(column, name, train_rows, impute)
            encoded.names.append(name)
        encoded.blocks.append(block)
    return encoded


def standardized(column: Any, name: str, train_rows: np.ndarray, impute: str | None) -> np.ndarray:
    """A numeric column as one standardized feature (missing values imputed beforehand)."""
    values = column.to_numpy(dtype=np.float64, na_value=np.nan)
    missing = np.isnan(values)
    if missing.any():  # only reached with dataset.impute set (missing values are refused else)
        train_values = values[train_rows]
        if np.isnan(train_values).all():
            raise DataError(
                f"column {name!r} has no value in the training split to impute from; drop it "
                "from dataset.features"
            )
        fill = np.nanmedian(train_values) if impute == "median" else np.nanmean(train_values)
        values = np.where(missing, fill, values)
    mean, std = values[train_rows].mean(), values[train_rows].std()
    return ((values - mean) / (std if std > 0 else 1.0)).astype(np.float32).reshape(-1, 1)


def _as_categories(column: Any) -> Any:
    """Text as it is; a column mixing kinds (a categorical one with numbers and text) as text."""
    present = column.dropna()
    kinds = {type(value) for value in present.iloc[:1000]}
    if is_text(column) and len(kinds) > 1:
        return column.where(column.isna(), column.astype(str))
    return column


def one_hot(
    column: Any, name: str, train_rows: np.ndarray, max_categories: int
) -> tuple[np.ndarray, list[str], int]:
    """One 0/1 feature per category of the training rows; and the count of other rows whose
    category is not one of them (missing values are not counted: they were refused or imputed)."""
    pd = pandas()
    column = _as_categories(column)
    categories = sorted(pd.unique(column.iloc[train_rows].dropna()))
    if len(categories) > max_categories:
        raise DataError(
            f"column {name!r} has {len(categories)} categories, more than dataset.max_categories="
            f"{max_categories}; leave it out with dataset.features=[...], or raise "
            "dataset.max_categories"
        )
    codes = pd.Index(categories).get_indexer(column).astype(np.int64)  # -1: unseen or missing
    block = np.zeros((len(column), len(categories)), dtype=np.float32)
    known = codes >= 0
    block[np.flatnonzero(known), codes[known]] = 1.0
    outside = np.ones(len(column), dtype=bool)
    outside[train_rows] = False
    unseen = int((outside & ~known & column.notna().to_numpy()).sum())
    return block, [str(category) for category in categories], unseen


def infer_task(column: Any, target: str, query: str | None) -> str:
    """The task a target column implies, where it is unambiguous; else one line asking: text
    and two-valued targets are classes, fractional or many-valued numbers are quantities."""
    if query is not None:
        return "ranking"
    if is_text(column) or pandas().api.types.is_bool_dtype(column.dtype):
        return "classification"
    values = column.dropna().to_numpy(dtype=np.float64)
    if not np.all(values == np.round(values)):
        return "regression"
    distinct = len(np.unique(values))
    if distinct == 1:
        raise DataError(
            f"dataset.target={target} holds one value ({values[0]:g}) in every row; there is "
            "nothing to learn: choose another target"
        )
    if distinct == 2:
        return "classification"
    if distinct > MANY_VALUES:  # a count or an amount: classes are rarely numbered this far
        return "regression"
    raise DataError(
        f"dataset.target={target} holds whole numbers with {distinct} distinct values, which "
        "could be classes or a quantity; set dataset.task=classification or "
        "dataset.task=regression"
    )


def check_task(task: str | None, column: Any, target: str, query: str | None) -> str:
    """The task, given or inferred, checked against the target and the query column."""
    task = task or infer_task(column, target, query)
    if task not in TASKS:
        raise DataError(f"dataset.task must be one of {', '.join(TASKS)} or null, got {task!r}")
    if task == "ranking" and query is None:
        raise DataError(
            "a ranking table needs dataset.query=<the column that groups rows into lists> "
            "(each list holds the rows of one query)"
        )
    if task != "ranking" and query is not None:
        raise DataError(
            f"dataset.query groups rows into ranking lists, but the task is {task}; set "
            "dataset.task=ranking, or drop dataset.query"
        )
    if task != "classification" and is_text(column):
        raise DataError(
            f"dataset.target={target} holds text, but {task} needs numbers; set "
            "dataset.task=classification, or choose a numeric target"
        )
    return task


def class_labels(column: Any, target: str) -> tuple[np.ndarray, list[str]]:
    """Integer labels 0..C-1 and the class names they stand for (sorted)."""
    pd = pandas()
    column = _as_categories(column)
    if not is_text(column) and not pd.api.types.is_bool_dtype(column.dtype):
        values = column.to_numpy(dtype=np.float64)
        if not np.all(values == np.round(values)):
            raise DataError(
                f"dataset.target={target} holds fractional numbers (e.g. "
                f"{values[values != np.round(values)][0]:g}); classification needs labels: set "
                "dataset.task=regression, or choose a label column"
            )
    classes = sorted(pd.unique(column))
    if len(classes) < 2:
        raise DataError(
            f"dataset.target={target} holds one class ({str(classes[0])!r}) in all {len(column)} "
            "rows; classification needs two or more"
        )
    codes = pd.Index(classes).get_indexer(column).astype(np.int64)
    return codes, [str(name) for name in classes]


def grades(column: Any, target: str) -> np.ndarray:
    """Relevance grades: numbers >= 0 (larger is more relevant)."""
    values = column.to_numpy(dtype=np.float64)
    if (values < 0).any():
        raise DataError(
            f"dataset.target={target} holds negative grades (e.g. {values[values < 0][0]:g}); "
            "ranking grades are 0 (irrelevant) or more"
        )
    return values.astype(np.float32)
