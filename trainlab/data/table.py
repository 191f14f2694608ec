"""dataset=table: a user's CSV, TSV, Parquet or .npz file as a trainlab dataset.

Every row is one example (for ranking: one item, and the rows of one query form a list). The
rows are split into train / validation / test (stratified by class, whole queries for ranking, or
as a column of the table says), the columns encoded with the training split's statistics
(trainlab.data.table_encoding), and the result cached as tensors: later runs, and every member of
a sweep, read the cache while the file and the settings are unchanged.

``describe`` decodes too (or reads the cache), once per process: a table's shape, classes and
sizes are only known from its contents, and the preflight of a sweep must find a missing column
before any member starts.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import math
from typing import Any, Literal

import numpy as np
import torch

from trainlab.data.base import PAD_GRADE, Dataset, DatasetSpec, Split, Task
from trainlab.data.cache import cache_path, files_key, read_cache, write_cache
from trainlab.data.images import DataError
from trainlab.data.table_encoding import check_task, class_labels, encode_features, grades
from trainlab.data.table_file import (
    check_kind,
    check_not_mixed,
    check_path,
    count_infinite,
    count_missing,
    pandas,
    read_table,
    require_columns,
)
from trainlab.settings import fraction, require

log = logging.getLogger("trainlab")
CACHE_FORMAT = 1
SPLITS = ("train", "val", "test")
SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val",
               "validation": "val", "dev": "val", "test": "test"}  # fmt: skip


def describe(
    path: str | None,
    root: str,
    target: str | int | None,
    task: Literal["classification", "regression", "ranking"] | None = None,
    features: list[str | int] | None = None,
    categorical: list[str | int] | None = None,
    query: str | int | None = None,
    impute: Literal["mean", "median"] | None = None,
    standardize_target: bool = True,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    split_seed: int = 0,
    split_column: str | int | None = None,
    max_categories: int = 1000,
    ndcg_k: int = 10,
) -> DatasetSpec:
    """Check the settings, then read the table (or its cache) to learn its shape and sizes."""
    settings = dict(locals())
    _check_settings(settings)
    return _spec(decoded(settings))


def load(**settings: Any) -> Dataset:
    """The table's three splits as tensors (decoded once, then read from the cache)."""
    defaults = {
        name: parameter.default
        for name, parameter in inspect.signature(describe).parameters.items()
        if parameter.default is not inspect.Parameter.empty
    }
    data = decoded({**defaults, **settings})
    for name, count in data["unseen"].items():
        log.warning(
            "dataset: %d validation/test rows hold a category of column %r that the training "
            "split lacks (encoded as all zeros)", count, name,
        )  # fmt: skip
    if data["target_scale"]:
        mean, std = data["target_scale"]
        log.info(
            "dataset: the target is standardized with the training split's mean %.4g and std "
            "%.4g; mse and mae are in those units (dataset.standardize_target=false keeps the "
            "file's units)", mean, std,
        )  # fmt: skip
    splits = [Split(data[f"{name}_inputs"], data[f"{name}_targets"]) for name in SPLITS]
    return Dataset(_spec(data), *splits)


def _spec(data: dict[str, Any]) -> DatasetSpec:
    spec = data["spec"]
    return DatasetSpec(**{**spec, "input_shape": tuple(spec["input_shape"])})


def _check_settings(settings: dict[str, Any]) -> None:
    check_path(settings["path"])
    require(
        settings["target"] is not None,
        "dataset=table needs the column to predict: set dataset.target=<column>",
    )
    if settings["split_column"] is None:
        fraction("dataset.val_fraction", settings["val_fraction"], open_right=True)
        fraction("dataset.test_fraction", settings["test_fraction"], open_right=True)
        require(
            settings["val_fraction"] > 0 and settings["test_fraction"] > 0
            and settings["val_fraction"] + settings["test_fraction"] < 1,
            "dataset.val_fraction and dataset.test_fraction must each be above 0 and sum to "
            f"less than 1, got {settings['val_fraction']} and {settings['test_fraction']}",
        )  # fmt: skip
    require(
        0 <= settings["split_seed"] < 2**63,
        f"dataset.split_seed must be in [0, 2^63), got {settings['split_seed']}",
    )
    require(settings["max_categories"] >= 1, "dataset.max_categories must be >= 1")
    require(settings["ndcg_k"] >= 1, f"dataset.ndcg_k must be >= 1, got {settings['ndcg_k']}")


def _names_as_text(settings: dict[str, Any]) -> dict[str, Any]:
    """Column names as text: a command line's ``dataset.target=3`` names the column "3"."""
    named = dict(settings)
    for key in ("target", "query", "split_column"):
        if named.get(key) is not None:
            named[key] = str(named[key])
    for key in ("features", "categorical"):
        if named.get(key) is not None:
            named[key] = [str(name) for name in named[key]]
    return named


def decoded(settings: dict[str, Any]) -> dict[str, Any]:
    """The decoded table for ``settings``: from this process's memory, the cache, or the file."""
    settings = _names_as_text(settings)
    file = check_path(settings["path"])
    shaping = {key: value for key, value in settings.items() if key != "root"}
    key = files_key([file], {**shaping, "format": CACHE_FORMAT})
    return _decoded_for(key, json.dumps(settings, sort_keys=True))


@functools.lru_cache(maxsize=4)
def _decoded_for(key: str, settings_text: str) -> dict[str, Any]:
    settings = json.loads(settings_text)
    where = cache_path(settings["root"], "table", key)
    data = read_cache(where, key)
    if data is None:
        log.info("decoding %s (once; cached in %s)", settings["path"], where)
        data = decode(settings)
        write_cache(where, key, data)
    return data


def decode(settings: dict[str, Any]) -> dict[str, Any]:
    """Read, check, split and encode the table: the tensors and what describes them."""
    table = read_table(check_path(settings["path"]))
    if len(table) == 0:
        raise DataError(f"dataset.path={settings['path']} holds no rows; check the file")
    columns = _columns(table, settings)
    target, query = settings["target"], settings["query"]
    _check_values(table, columns, settings)
    task = check_task(settings["task"], table[target], target, query)
    labels, classes = (
        class_labels(table[target], target) if task == "classification" else (None, [])
    )
    rows = split_rows(table, task, labels, settings)
    encoded = encode_features(
        table, columns, settings["categorical"] or [], settings["impute"], rows["train"],
        settings["max_categories"],
    )  # fmt: skip
    inputs = encoded.matrix()
    targets, scale = _targets(table[target], task, labels, rows["train"], settings)
    data: dict[str, Any] = {"unseen": encoded.unseen, "target_scale": scale,
                            "classes": classes, "features": encoded.names}  # fmt: skip
    list_size = None
    if task == "ranking":
        list_size = int(table.groupby(query, sort=False).size().max())
        queries = pandas().factorize(table[query])[0]
        for name in SPLITS:
            packed = pack_lists(inputs, targets, queries, rows[name], list_size)
            data[f"{name}_inputs"], data[f"{name}_targets"] = packed
    else:
        for name in SPLITS:
            data[f"{name}_inputs"] = torch.from_numpy(inputs[rows[name]])
            data[f"{name}_targets"] = torch.from_numpy(targets[rows[name]])
    data["spec"] = _spec_fields(data, task, settings, len(encoded.names), list_size)
    return data


def _spec_fields(
    data: dict[str, Any], task: Task, settings: dict[str, Any], width: int, list_size: int | None
) -> dict[str, Any]:
    classes = len(data["classes"]) or None
    return {
        "name": "table",
        "task": task,
        "input_shape": [width],
        "output_size": classes or 1,
        "train_size": len(data["train_inputs"]),
        "val_size": len(data["val_inputs"]),
        "test_size": len(data["test_inputs"]),
        "num_classes": classes,
        "list_size": list_size,
        "ndcg_k": settings["ndcg_k"] if task == "ranking" else None,
    }


def _columns(table: Any, settings: dict[str, Any]) -> list[str]:
    """The feature columns, after checking that every named column exists."""
    target, query, split_column = settings["target"], settings["query"], settings["split_column"]
    require_columns(table, "target", [target])
    require_columns(table, "query", [query] if query else [])
    require_columns(table, "split_column", [split_column] if split_column else [])
    own = {target, query, split_column} - {None}
    features = settings["features"]
    if features is None:
        features = [column for column in table.columns if column not in own]
    require_columns(table, "features", features)
    require_columns(table, "categorical", settings["categorical"] or [])
    for name in features:
        if name in own:
            raise DataError(
                f"dataset.features lists {name!r}, which is the table's target, query or split "
                "column; leave it out of dataset.features"
            )
    stray = [name for name in settings["categorical"] or [] if name not in features]
    if stray:
        raise DataError(f"dataset.categorical names {stray[0]!r}, which is not a feature column")
    if not features:
        raise DataError("the table has no feature column besides the target; add columns")
    return list(features)


def _check_values(table: Any, features: list[str], settings: dict[str, Any]) -> None:
    """Columns of a kind trainlab cannot read, missing and infinite values, and columns that
    mix numbers with text, named with their counts."""
    own = [
        name for name in (settings["target"], settings["query"], settings["split_column"]) if name
    ]
    for name in [*own, *features]:
        check_kind(table[name], name)
    infinite = count_infinite(table, [settings["target"], *features])
    if infinite:
        listed = ", ".join(f"{name} ({count})" for name, count in infinite.items())
        raise DataError(f"infinite values in column(s) {listed}; fix them in the file")
    missing = count_missing(table, own)
    if missing:
        name, count = next(iter(missing.items()))
        raise DataError(
            f"column {name!r} has {count} missing values; it cannot be imputed (it is the "
            "target, query or split column): fill them in, or drop those rows"
        )
    categorical = settings["categorical"] or []
    for name in features:
        if name not in categorical:
            check_not_mixed(table[name], name, "categorical")
    missing = count_missing(table, features)
    empty = [name for name, count in missing.items() if count == len(table)]
    if empty:
        raise DataError(
            f"column {empty[0]!r} has no values at all; leave it out with dataset.features=[...]"
        )
    if missing and settings["impute"] is None:
        listed = ", ".join(f"{name} ({count})" for name, count in missing.items())
        raise DataError(
            f"missing values in {len(missing)} feature column(s): {listed}; fill them in the "
            "file, or set dataset.impute=mean or median"
        )


def _targets(
    column: Any, task: Task, labels: np.ndarray | None, train_rows: np.ndarray, settings: dict
) -> tuple[np.ndarray, list[float] | None]:
    """The targets of every row, and the (mean, std) a regression target was scaled by."""
    if task == "classification":
        return labels, None  # type: ignore[return-value]
    if task == "ranking":
        return grades(column, settings["target"]), None
    values = column.to_numpy(dtype=np.float64).reshape(-1, 1)
    if not settings["standardize_target"]:
        return values.astype(np.float32), None
    mean, std = float(values[train_rows].mean()), float(values[train_rows].std())
    std = std if std > 0 else 1.0
    return ((values - mean) / std).astype(np.float32), [mean, std]


def split_rows(
    table: Any, task: Task, labels: np.ndarray | None, settings: dict[str, Any]
) -> dict[str, np.ndarray]:
    """Row indices of each split, sorted: from the split column, or drawn with split_seed
    (stratified by class; whole queries for ranking)."""
    if settings["split_column"] is not None:
        rows = _rows_from_column(table, settings)
    elif task == "ranking":
        rows = _query_split(table[settings["query"]], settings)
    else:
        strata = labels if labels is not None else np.zeros(len(table), dtype=np.int64)
        rows = _stratified_split(strata, settings)
    for name in SPLITS:
        if len(rows[name]) == 0:
            raise DataError(
                f"the {name} split of the table is empty ({len(table)} rows); "
                + _split_fix(settings, name)
            )
    return rows


def _split_fix(settings: dict[str, Any], name: str) -> str:
    if settings["split_column"] is not None:
        return f"give some rows {name!r} in column {settings['split_column']!r}"
    if name == "train":
        return "lower dataset.val_fraction and dataset.test_fraction"
    return f"raise dataset.{name}_fraction, or use a larger table"


def _stratified_split(strata: np.ndarray, settings: dict[str, Any]) -> dict[str, np.ndarray]:
    """Within each stratum, a random test_fraction of its rows to test and val_fraction to
    validation (rounded per stratum), the rest to training."""
    generator = np.random.default_rng(settings["split_seed"])
    order = generator.permutation(len(strata))
    order = order[np.argsort(strata[order], kind="stable")]  # grouped by stratum, random within
    sizes = np.bincount(strata)
    starts = np.cumsum(sizes) - sizes
    rank = np.arange(len(order)) - starts[strata[order]]
    size = sizes[strata[order]]
    test_end = np.floor(size * settings["test_fraction"] + 0.5)
    val_end = test_end + np.floor(size * settings["val_fraction"] + 0.5)
    where = np.where(rank < test_end, 2, np.where(rank < val_end, 1, 0))
    return {name: np.sort(order[where == index]) for index, name in enumerate(SPLITS)}


def _query_split(queries: Any, settings: dict[str, Any]) -> dict[str, np.ndarray]:
    """Whole queries to each split: no list is shared between training and evaluation."""
    codes = pandas().factorize(queries)[0]
    groups = codes.max() + 1
    order = np.random.default_rng(settings["split_seed"]).permutation(groups)
    test = math.floor(groups * settings["test_fraction"] + 0.5)
    val = math.floor(groups * settings["val_fraction"] + 0.5)
    assignment = np.zeros(groups, dtype=np.int64)
    assignment[order[:test]] = 2
    assignment[order[test : test + val]] = 1
    where = assignment[codes]
    return {name: np.flatnonzero(where == index) for index, name in enumerate(SPLITS)}


def _rows_from_column(table: Any, settings: dict[str, Any]) -> dict[str, np.ndarray]:
    name = settings["split_column"]
    words = table[name].astype(str).str.strip().str.lower()
    unknown = sorted(set(words.unique()) - set(SPLIT_NAMES))
    if unknown:
        raise DataError(
            f"column {name!r} (dataset.split_column) holds {', '.join(map(repr, unknown[:3]))}; "
            "each row must say train, val or test"
        )
    split = words.map(SPLIT_NAMES)
    query = settings["query"]
    if query is not None:
        per_query = split.groupby(table[query]).nunique()
        if (per_query > 1).any():
            raise DataError(
                f"query {per_query[per_query > 1].index[0]!r} has rows in more than one split "
                f"of column {name!r}; a list belongs to one split"
            )
    return {part: np.flatnonzero((split == part).to_numpy()) for part in SPLITS}


def pack_lists(
    inputs: np.ndarray, targets: np.ndarray, queries: np.ndarray, rows: np.ndarray, size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows of each query as one list, padded to ``size`` items with PAD_GRADE (and zero
    features): ``(lists, size, features)`` inputs and ``(lists, size)`` grades."""
    codes = pandas().factorize(queries[rows])[0]
    order = np.argsort(codes, kind="stable")
    codes, rows = codes[order], rows[order]
    counts = np.bincount(codes)
    position = np.arange(len(rows)) - (np.cumsum(counts) - counts)[codes]
    packed = np.zeros((len(counts), size, inputs.shape[1]), dtype=np.float32)
    packed[codes, position] = inputs[rows]
    packed_grades = np.full((len(counts), size), PAD_GRADE, dtype=np.float32)
    packed_grades[codes, position] = targets[rows]
    return torch.from_numpy(packed), torch.from_numpy(packed_grades)
