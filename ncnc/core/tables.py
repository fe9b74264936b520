"""User tables, read the same way by every stage.

:func:`read_parquet_table` reads a user Parquet file or raises a one-line
:class:`~ncnc.core.errors.InputError` naming the file, the column and the first bad values, so the
same bad input gets the same message everywhere. :func:`as_polars` and :func:`like` let the
Python API take polars, pandas or Arrow tables and give back the kind it was given.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import polars as pl
import pyarrow as pa

from ncnc.core.errors import InputError, examples


def read_parquet_table(path: Path, *, columns: Sequence[str] | None, what: str) -> pl.DataFrame:
    """Read a user Parquet file, or raise a one-line :class:`InputError`.

    Args:
        path: the file.
        columns: the columns to read, all required; ``None`` reads every column.
        what: what the file is, for messages, e.g. ``"edges file"``.

    Raises:
        InputError: the file is missing, unreadable or not Parquet, lacks a column, or a column
            holds nulls (the message names the file, the column and the first bad rows).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} {path}: no such file")
    try:
        schema = pl.read_parquet_schema(path)
    except Exception as exc:  # polars raises several types for a file that is not Parquet
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{what} {path}: cannot be read as Parquet ({reason})") from exc
    if columns is not None:
        missing = [c for c in columns if c not in schema]
        if missing:
            raise InputError(
                f"{what} {path}: missing column(s) {', '.join(missing)}"
                f" (columns present: {', '.join(schema.names()) or 'none'})"
            )
    try:
        frame = pl.read_parquet(path, columns=list(columns) if columns is not None else None)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{what} {path}: cannot be read as Parquet ({reason})") from exc
    for name in frame.columns:
        nulls = frame[name].is_null()
        if nulls.any():
            rows = nulls.arg_true()
            raise InputError(
                f"{what} {path} column {name}: {rows.len()} null value(s), in rows "
                f"{examples(rows)}"
            )
    return frame


TableKind = Literal["polars", "pandas", "arrow"]


def as_polars(table: object, *, what: str) -> tuple[pl.DataFrame, TableKind]:
    """A polars frame of ``table`` and the kind it came as, for :func:`like`.

    Takes a polars DataFrame, a pandas DataFrame or a pyarrow Table / RecordBatch.

    Raises:
        InputError: another type (the message names it), or a lazy frame (collect it first).
    """
    if isinstance(table, pl.DataFrame):
        return table, "polars"
    if isinstance(table, (pa.Table, pa.RecordBatch)):
        return pl.DataFrame(pl.from_arrow(table)), "arrow"
    kind = type(table)
    if kind.__module__.split(".")[0] == "pandas" and kind.__name__ == "DataFrame":
        return pl.from_pandas(table, nan_to_null=False), "pandas"  # type: ignore[arg-type]
    if isinstance(table, pl.LazyFrame):
        raise InputError(f"{what}: a polars LazyFrame; pass frame.collect() (scoring reads "
                         "every row)")
    raise InputError(f"{what}: cannot score a {kind.__module__}.{kind.__qualname__}; pass a "
                     "polars DataFrame, a pandas DataFrame or a pyarrow Table")


def like(frame: pl.DataFrame, kind: TableKind) -> object:
    """``frame`` as the kind of table :func:`as_polars` was given."""
    if kind == "pandas":
        return frame.to_pandas()
    if kind == "arrow":
        return frame.to_arrow()
    return frame
