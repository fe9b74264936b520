"""User Parquet tables, read the same way by every stage.

:func:`read_parquet_table` reads a user Parquet file or raises a one-line
:class:`~ncnc.core.errors.InputError` naming the file, the column and the first bad values, so the
same bad input gets the same message everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import polars as pl

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
