"""How long a large table takes to become a dataset: the first decode (read, check, split,
encode, write the cache) and every later load (the cache), for CSV and Parquet.

The table has ``--rows`` rows: 16 numeric features, a text column of 20 categories, a numeric
categorical column, and a text class label; a ranking variant groups the rows into queries of
5-60 items. Prints seconds and rows per second for each step.

    python scripts/bench_table.py [--rows 1000000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def make_table(rows: int, folder: Path) -> dict[str, Path]:
    import pandas as pd

    generator = np.random.default_rng(0)
    frame = pd.DataFrame(generator.normal(size=(rows, 16)), columns=[f"x{i}" for i in range(16)])
    frame["city"] = np.array([f"city_{i}" for i in range(20)])[generator.integers(0, 20, rows)]
    frame["zone"] = generator.integers(0, 8, rows)
    frame["label"] = np.array(["low", "mid", "high"])[generator.integers(0, 3, rows)]
    frame["session"] = np.repeat(np.arange(rows // 30 + 1), 30)[:rows]
    frame["grade"] = generator.integers(0, 4, rows)
    paths = {"csv": folder / "big.csv", "parquet": folder / "big.parquet"}
    frame.to_csv(paths["csv"], index=False)
    frame.to_parquet(paths["parquet"])
    return paths


def timed(settings: dict) -> float:
    from trainlab.data import table

    table._decoded_for.cache_clear()  # this process's memory: time the file or the cache
    start = time.perf_counter()
    table.load(**settings)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        paths = make_table(args.rows, Path(folder))
        base = {"root": str(Path(folder) / "root"), "categorical": ["zone"]}
        cases = {
            "csv classification": {**base, "path": str(paths["csv"]), "target": "label",
                                   "features": [f"x{i}" for i in range(16)] + ["city", "zone"]},
            "parquet classification": {**base, "path": str(paths["parquet"]), "target": "label",
                                       "features": [f"x{i}" for i in range(16)] + ["city", "zone"]},
            "parquet ranking": {**base, "path": str(paths["parquet"]), "target": "grade",
                                "query": "session", "categorical": [],
                                "features": [f"x{i}" for i in range(16)]},
        }  # fmt: skip
        print(f"{args.rows} rows")
        for name, settings in cases.items():
            first, cached = timed(settings), timed(settings)
            print(
                f"{name:24s} first decode {first:6.2f} s ({args.rows / first:9.0f} rows/s)   "
                f"from the cache {cached:5.2f} s"
            )


if __name__ == "__main__":
    main()
