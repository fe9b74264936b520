"""User tables, read the same way by every stage.

:func:`read_parquet_table` reads a user Parquet file or raises a one-line
:class:`~ncnc.core.errors.InputError` naming the file, the column and the first bad values, so the
same bad input gets the same message everywhere. :func:`as_polars` and :func:`like` let the
Python API take polars, pandas or Arrow tables and give back the kind it was given.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from ncnc.core.errors import InputError, examples, first_line


def _cannot_read(what: str, path: Path, exc: BaseException) -> InputError:
    return InputError(f"{what} {path}: cannot be read as Parquet ({first_line(exc)})")


# Every Parquet read goes through pyarrow: on damaged files it raises Python exceptions, where
# polars' reader was seen to panic in its worker threads and abort the whole process (SIGABRT,
# with a Rust backtrace), so that no one-line error could be given.


def parquet_schema(path: Path, *, what: str) -> tuple[pl.Schema, int]:
    """The polars schema of a Parquet file and its row count, from the footer alone.

    Raises:
        InputError: the file cannot be read as Parquet.
    """
    try:
        footer = pq.ParquetFile(path, pre_buffer=False)
        fields = _plain_schema(footer.schema_arrow)
        return pl.DataFrame(pl.from_arrow(fields.empty_table())).schema, footer.metadata.num_rows
    except Exception as exc:  # pyarrow raises OSError, ArrowInvalid, ... for a damaged footer
        raise _cannot_read(what, path, exc) from exc


def _plain_schema(schema: pa.Schema) -> pa.Schema:
    """``schema`` without its key-value metadata (a damaged footer's metadata bytes need not be
    UTF-8, and polars panics on them; ids and features need none of it)."""
    return pa.schema([pa.field(f.name, f.type, f.nullable) for f in schema])


def _as_frame(table: pa.Table, *, what: str, path: Path) -> pl.DataFrame:
    """``table`` as a polars frame, after Arrow's full validation: invalid UTF-8 in a string
    column (a damaged page pyarrow decoded without complaint) is an InputError here, where
    polars would panic."""
    try:
        table.validate(full=True)
        table = table.cast(_plain_schema(table.schema))
    except Exception as exc:
        raise _cannot_read(what, path, exc) from exc
    return pl.DataFrame(pl.from_arrow(table))


def iter_parquet_batches(path: Path, columns: Sequence[str], batch_size: int, *, what: str,
                         skip: int = 0, take: int | None = None) -> Iterator[pl.DataFrame]:
    """The rows ``[skip, skip + take)`` of a Parquet file's ``columns``, ``batch_size`` at a time:
    every frame but the last has exactly ``batch_size`` rows. Row groups before ``skip`` are not
    decoded; memory stays bounded by a few batches (``pre_buffer=False``).

    Raises:
        InputError: the file cannot be decoded (the message names it). A damaged file can also
            end early without an error: callers compare the rows read with the footer's count.
    """
    try:
        source = pq.ParquetFile(path, pre_buffer=False)
        sizes = [source.metadata.row_group(g).num_rows for g in range(source.num_row_groups)]
    except Exception as exc:
        raise _cannot_read(what, path, exc) from exc
    groups, offset, first = [], 0, 0  # the row groups holding rows at or after skip
    for group, size in enumerate(sizes):
        if first + size > skip:
            if not groups:
                offset = skip - first  # rows of the first kept group before skip
            groups.append(group)
        first += size
    remaining = take
    pending: list[pa.RecordBatch] = []
    pending_rows = 0
    batches = source.iter_batches(batch_size=batch_size, row_groups=groups,
                                  columns=list(columns)) if groups else iter(())
    while remaining is None or remaining > 0:
        try:
            batch = next(batches)
        except StopIteration:
            break
        except Exception as exc:
            raise _cannot_read(what, path, exc) from exc
        if offset:
            cut = min(offset, batch.num_rows)
            batch, offset = batch.slice(cut), offset - cut
        if remaining is not None:
            batch = batch.slice(0, remaining)
            remaining -= batch.num_rows
        pending.append(batch)
        pending_rows += batch.num_rows
        while pending_rows >= batch_size:
            table = pa.Table.from_batches(pending)
            yield _as_frame(table.slice(0, batch_size), what=what, path=path)
            pending = table.slice(batch_size).to_batches()
            pending_rows -= batch_size
    if pending_rows:
        yield _as_frame(pa.Table.from_batches(pending), what=what, path=path)


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
    schema, rows = parquet_schema(path, what=what)
    if columns is not None:
        missing = [c for c in columns if c not in schema]
        if missing:
            raise InputError(
                f"{what} {path}: missing column(s) {', '.join(missing)}"
                f" (columns present: {', '.join(schema.names()) or 'none'})"
            )
    try:
        table = pq.read_table(path, columns=list(columns) if columns is not None else None,
                              pre_buffer=False)
    except Exception as exc:
        raise _cannot_read(what, path, exc) from exc
    frame = _as_frame(table, what=what, path=path)
    if frame.height != rows:
        raise InputError(f"{what} {path}: {frame.height} rows could be read of the {rows} its "
                         "footer lists (the file is damaged)")
    for name in frame.columns:
        nulls = frame[name].is_null()
        if nulls.any():
            found = nulls.arg_true()
            raise InputError(
                f"{what} {path} column {name}: {found.len()} null value(s), in rows "
                f"{examples(found)}"
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
