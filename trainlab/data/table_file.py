"""A user's table file (CSV, TSV, Parquet or NumPy .npz) read into a pandas DataFrame, and the
checks that name what is wrong with it: a missing file or column, a column that mixes numbers
and text, missing values.

pandas (and pyarrow, for Parquet) come with the ``tables`` extra; without them the first use
says how to install them.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from trainlab.data.images import DataError
from trainlab.errors import first_line
from trainlab.settings import did_you_mean

SUFFIXES = (".csv", ".tsv", ".parquet", ".pq", ".npz")  # .csv and .tsv may be .gz/.bz2/.zip/.xz
COMPRESSED = (".gz", ".bz2", ".zip", ".xz")
INSTALL = "pip install 'trainlab[tables]'"


def pandas() -> Any:
    """The pandas module, or one line saying how to get it."""
    try:
        import pandas as pd
    except ImportError:
        raise DataError(
            f"dataset=table reads files with pandas, which is missing; {INSTALL}"
        ) from None
    return pd


def table_format(path: Path) -> str:
    """csv, tsv, parquet or npz, from the file's name."""
    suffixes = [suffix.lower() for suffix in path.suffixes]
    if suffixes and suffixes[-1] in COMPRESSED:
        suffixes = suffixes[:-1]
    last = suffixes[-1] if suffixes else ""
    if last not in SUFFIXES:
        raise DataError(
            f"dataset.path={path}: not a table file trainlab reads (it reads "
            f"{', '.join(SUFFIXES)}; CSV and TSV may be compressed); convert it, or rename it"
        )
    return {".pq": "parquet"}.get(last, last[1:])


def check_path(path: str | None) -> Path:
    """The table file, which must exist."""
    if path is None:
        raise DataError("dataset=table needs a file: set dataset.path=<your .csv/.parquet/.npz>")
    file = Path(path).expanduser()
    if not file.exists():
        raise DataError(f"dataset.path={path}: no such file; check the path")
    if not file.is_file():
        raise DataError(f"dataset.path={path} is a folder, not a table file; name the file")
    table_format(file)
    return file


def read_table(path: Path) -> Any:
    """The file as a DataFrame (one column per field; an .npz array of shape (N, k) gives k
    columns name_0 ... name_k-1)."""
    pd = pandas()
    kind = table_format(path)
    try:
        if kind == "npz":
            table = _read_npz(path, pd)
        elif kind == "parquet":
            table = pd.read_parquet(path)
        else:
            table = pd.read_csv(path, sep="\t" if kind == "tsv" else ",", low_memory=False)
            _check_separator(table, path, kind)
    except ImportError as error:  # Parquet without pyarrow
        raise DataError(f"dataset.path={path}: {first_line(error)}; {INSTALL}") from None
    except DataError:
        raise
    except Exception as error:  # pandas' and numpy's parse errors: many kinds, one line each
        raise DataError(
            f"dataset.path={path}: cannot read it as {kind} ({first_line(error)[:200]}); "
            "check the file"
        ) from None
    table.columns = [str(name) for name in table.columns]  # a Parquet file may number them
    return table


def _check_separator(table: Any, path: Path, kind: str) -> None:
    """One column whose name holds ; or | : a file separated by something else."""
    if len(table.columns) == 1:
        header = str(table.columns[0])
        for separator in (";", "|", "\t", ","):
            if separator in header:
                shown = {"\t": "tabs"}.get(separator, repr(separator))
                raise DataError(
                    f"dataset.path={path}: its columns are separated by {shown}, but a .{kind} "
                    "file is read as "
                    + ("comma" if kind == "csv" else "tab")
                    + "-separated; convert it (or name it .tsv for tabs)"
                )


def _read_npz(path: Path, pd: Any) -> Any:
    import numpy as np

    columns: dict[str, Any] = {}
    with np.load(path, allow_pickle=False) as arrays:
        for name in arrays.files:
            array = arrays[name]
            if array.ndim == 1:
                columns[name] = array
            elif array.ndim == 2:
                columns.update({f"{name}_{i}": array[:, i] for i in range(array.shape[1])})
            else:
                raise DataError(
                    f"dataset.path={path}: array {name!r} has {array.ndim} dimensions; a table "
                    "holds 1-D columns or 2-D (rows x columns) arrays"
                )
    lengths = {name: len(values) for name, values in columns.items()}
    if len(set(lengths.values())) > 1:
        raise DataError(
            f"dataset.path={path}: its arrays have different lengths ({lengths}); every column "
            "needs one value per row"
        )
    return pd.DataFrame(columns)


def require_columns(table: Any, key: str, names: Iterable[str]) -> None:
    """Every name is a column of ``table``; else one line with a did-you-mean."""
    columns = [str(column) for column in table.columns]
    for name in names:
        if name not in columns:
            shown = ", ".join(columns[:12]) + (", ..." if len(columns) > 12 else "")
            raise DataError(
                f"dataset.{key}: no column {name!r} in the table{did_you_mean(name, columns)} "
                f"(columns: {shown})"
            )


def check_kind(column: Any, name: str) -> None:
    """Columns trainlab can learn from hold numbers, true/false or text: not dates or times,
    and not lists or other containers (a Parquet list column, say)."""
    pd = pandas()
    if pd.api.types.is_datetime64_any_dtype(column.dtype) or pd.api.types.is_timedelta64_dtype(
        column.dtype
    ):
        raise DataError(
            f"column {name!r} holds dates or times; convert it to numbers in the file (e.g. days "
            "since a start date), or leave it out with dataset.features=[...]"
        )
    if column.dtype == object:
        try:
            pd.unique(column)
        except TypeError:  # unhashable: lists, arrays, dicts
            raise DataError(
                f"column {name!r} holds lists or other containers, not numbers or text; leave "
                "it out with dataset.features=[...]"
            ) from None


def count_infinite(table: Any, names: list[str]) -> dict[str, int]:
    """Infinite values per numeric column, for the columns that have any."""
    import numpy as np

    counts = {}
    for name in names:
        if not is_text(table[name]) and not pandas().api.types.is_bool_dtype(table[name].dtype):
            count = int(np.isinf(table[name].to_numpy(dtype=np.float64, na_value=0.0)).sum())
            if count:
                counts[name] = count
    return counts


def is_text(column: Any) -> bool:
    """Whether a column holds text (strings, or Python objects pandas could not type)."""
    pd = pandas()
    return not (
        pd.api.types.is_numeric_dtype(column.dtype) or pd.api.types.is_bool_dtype(column.dtype)
    )


def check_not_mixed(column: Any, name: str, key: str) -> None:
    """A text column whose values are partly numbers is a mistake in the file, not categories.
    (Checked on the distinct values: a column has far fewer of them than rows.)"""
    if not is_text(column):
        return
    pd = pandas()
    distinct = pd.Series(pd.unique(column.dropna()))
    parsed = pd.to_numeric(distinct.astype(str), errors="coerce").notna()
    if 0 < int(parsed.sum()) < len(distinct):
        text_rows = column.isin(set(distinct[~parsed])).to_numpy()
        first = int(text_rows.argmax())
        raise DataError(
            f"column {name!r} mixes numbers and text (e.g. {column.iloc[first]!r} in data row "
            f"{first + 1}, "
            f"{int(text_rows.sum())} such rows); fix the file (leave missing values empty), or "
            f"list it in dataset.{key} to treat every value as a category"
        )


def count_missing(table: Any, names: list[str]) -> dict[str, int]:
    """Missing values per column, for the columns that have any."""
    counts = table[names].isna().sum()
    return {str(name): int(count) for name, count in counts.items() if count}
