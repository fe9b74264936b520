"""Parquet in and out for batch jobs, in bounded memory.

- :func:`expand_inputs` turns the user's paths (files, folders, globs) into an ordered file list.
- :func:`inspect_pair_files` checks every file's schema up front (so one bad file among many fails
  before any work) and counts the rows from the footers.
- :func:`iter_pair_batches` streams ``src``, ``dst`` in batches of a fixed number of rows
  (``pl.scan_parquet(...).collect_batches``: the fastest bounded reader we measured, see
  docs/toolchain-notes.md), numbering rows globally across files.
- :class:`AtomicParquetWriter` writes frames incrementally under a temporary name in the
  destination folder and renames the file into place only when the whole job succeeded.

Every problem with the user's files raises :class:`~ncnc.core.errors.InputError` naming the file, the
column and the first bad values.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from ncnc.core.errors import InputError
from ncnc.core.ids import id_kind
from ncnc.core.errors import examples

PAIR_COLUMNS = ("src", "dst")
GLOB_CHARS = frozenset("*?[")


def expand_inputs(paths: Iterable[Path | str]) -> list[Path]:
    """The Parquet files named by ``paths``, in order.

    Each path is a file (taken as is), a folder (its ``*.parquet`` files, sorted by name; names
    starting with ``.`` or ``_`` are skipped, as Spark and Hive write markers there) or a glob
    pattern (its matches, sorted). Files appear in the order the paths were given.

    Raises:
        InputError: a path does not exist, or a folder or pattern holds no Parquet file.
    """
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.glob("*.parquet")
                           if p.is_file() and not p.name.startswith((".", "_")))
            if not found:
                raise InputError(f"pairs folder {path}: holds no *.parquet file")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        elif GLOB_CHARS & set(str(raw)):
            found = sorted(Path(p) for p in glob.glob(str(raw), recursive=True) if Path(p).is_file())
            if not found:
                raise InputError(f"pairs pattern {raw}: matches no file")
            files.extend(found)
        else:
            raise InputError(f"pairs path {path}: no such file or folder")
    if not files:
        raise InputError("no pairs input given")
    return files


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def inspect_pair_files(files: Sequence[Path], *, id_kind_expected: str) -> list[int]:
    """Check that every file is Parquet with id columns ``src``, ``dst``; return its row counts.

    Only footers are read. ``id_kind_expected`` is ``"integer"`` or ``"string"``, the kind of the
    graph's node ids (:attr:`ncnc.core.ids.IdMap.kind`).

    Raises:
        InputError: a file is not Parquet, lacks ``src`` or ``dst``, or holds ids of another type.
    """
    counts = []
    for path in files:
        try:
            schema = pl.read_parquet_schema(path)
            rows = pq.read_metadata(path).num_rows
        except Exception as exc:  # polars and pyarrow raise several types for a non-Parquet file
            raise InputError(f"pairs file {path}: cannot be read as Parquet ({_reason(exc)})") from exc
        missing = [c for c in PAIR_COLUMNS if c not in schema]
        if missing:
            raise InputError(
                f"pairs file {path}: missing column(s) {', '.join(missing)}"
                f" (columns present: {', '.join(schema.names()) or 'none'})"
            )
        for column in PAIR_COLUMNS:
            kind = id_kind(schema[column])
            if kind != id_kind_expected and schema[column] != pl.Null:
                raise InputError(
                    f"pairs file {path} column {column}: ids are {kind or schema[column]} but the "
                    f"graph's node ids are {id_kind_expected}"
                )
        counts.append(rows)
    return counts


@dataclass(frozen=True)
class PairBatch:
    """A run of consecutive rows of one input file.

    Attributes:
        path: the file.
        file_row: number (from 0) of the batch's first row within its file.
        row: number (from 0) of the batch's first row over all inputs, in input order.
        frame: columns ``src`` and ``dst`` as stored in the file.
    """

    path: Path
    file_row: int
    row: int
    frame: pl.DataFrame

    @property
    def what(self) -> str:
        """Where the batch comes from, for error messages."""
        return f"pairs file {self.path}"


def iter_pair_batches(files: Sequence[Path], batch_size: int, *, start_row: int = 0,
                      stop_row: int | None = None,
                      row_counts: Sequence[int] | None = None) -> Iterator[PairBatch]:
    """Stream ``src``, ``dst`` of ``files`` in order, ``batch_size`` rows at a time.

    Batches never span two files; every batch but the last of each file has exactly
    ``batch_size`` rows. Memory stays bounded by a few batches whatever the file sizes.

    ``row_counts`` (from :func:`inspect_pair_files`: the footers' counts) are checked against
    the rows each file really yields: the streaming reader can end a damaged file early without
    an error. ``start_row`` skips the rows before it (numbered over all files, as
    :attr:`PairBatch.row`), without decoding the files it skips whole, and needs ``row_counts``.
    Resuming at the end of an earlier batch yields the same batches as an uninterrupted stream
    from there on. ``stop_row`` ends the stream before that row (same numbering, also needs
    ``row_counts``; later files are not opened): ``[start_row, stop_row)`` is then one partition
    of a parallel job (:mod:`ncnc.scorer.ray_engine`).

    Raises:
        InputError: a file cannot be decoded or yields another number of rows than its footer
            lists, or a batch holds nulls (rows are numbered within the file).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if (start_row or stop_row is not None) and (row_counts is None
                                                or len(row_counts) != len(files)):
        raise ValueError("start_row and stop_row need the row count of every file")
    if stop_row is not None and stop_row < start_row:
        raise ValueError(f"stop_row {stop_row} is before start_row {start_row}")
    row = 0
    for index, path in enumerate(files):
        if stop_row is not None and row >= stop_row:
            return
        if row_counts is not None and row + row_counts[index] <= start_row:
            row += row_counts[index]
            continue
        skip = max(0, start_row - row)
        # Rows of this file to read: all (None), or up to stop_row; the footer says how many.
        take = None if stop_row is None else min(row_counts[index], stop_row - row) - skip
        file_row, row = skip, row + skip
        try:
            batches = pl.scan_parquet(path).select(PAIR_COLUMNS).slice(
                skip, take).collect_batches(chunk_size=batch_size, lazy=True)
        except Exception as exc:
            raise InputError(f"pairs file {path}: cannot be read as Parquet ({_reason(exc)})") from exc
        while True:
            try:
                frame = next(batches)
            except StopIteration:
                break
            except Exception as exc:
                raise InputError(
                    f"pairs file {path}: cannot be read as Parquet ({_reason(exc)})") from exc
            if frame.height == 0:
                continue
            batch = PairBatch(path, file_row, row, frame)
            check_no_nulls(frame, what=batch.what, first_row=file_row)
            yield batch
            file_row += frame.height
            row += frame.height
        if row_counts is not None and file_row != (row_counts[index] if take is None
                                                   else skip + take):
            raise InputError(f"pairs file {path}: {file_row} rows could be read of the "
                             f"{row_counts[index]} its footer lists (the file is damaged)")


def check_no_nulls(frame: pl.DataFrame, *, what: str, first_row: int = 0) -> None:
    """Raise :class:`InputError` naming the first column with nulls and its first null rows.

    ``first_row`` is the number of the frame's first row in the input ``what`` names.
    """
    for name in frame.columns:
        if frame[name].null_count():
            rows = frame[name].is_null().arg_true() + first_row
            raise InputError(
                f"{what} column {name}: {rows.len()} null value(s), in rows {examples(rows)}"
            )


def refuse_overwriting(out: Path, inputs: Iterable[Path]) -> None:
    """Raise :class:`InputError` when ``out`` is a folder or one of ``inputs``."""
    if out.is_dir():
        raise InputError(f"output {out}: is a folder; give a file name such as {out / 'out.parquet'}")
    target = out.resolve()
    for path in inputs:
        if path.resolve() == target or (out.exists() and os.path.samefile(path, out)):
            raise InputError(f"output {out}: is also an input; write the result elsewhere")


class AtomicParquetWriter:
    """Write polars frames to one Parquet file, all or nothing.

    Rows go to ``.<name>.tmp-<pid>`` beside ``out`` (same folder, so the final rename is atomic)
    through :class:`pyarrow.parquet.ParquetWriter`; small frames are gathered into row groups of
    about ``row_group_rows`` rows. Leaving the ``with`` block normally renames the file to ``out``
    (replacing an earlier one); leaving it by an exception deletes the temporary file, so ``out``
    keeps whatever it held before.

    Example::

        with AtomicParquetWriter(out, schema) as writer:
            for frame in frames:
                writer.write(frame)
    """

    def __init__(self, out: Path, schema: pl.Schema | dict[str, pl.DataType], *,
                 row_group_rows: int = 1 << 19, compression: str = "zstd") -> None:
        self.out = Path(out)
        self.schema = pl.Schema(schema)
        self.temp = temporary_path(self.out)
        self.row_group_rows = row_group_rows
        self.compression = compression
        self.rows_written = 0
        self._pending: list[pl.DataFrame] = []
        self._pending_rows = 0
        self._writer: pq.ParquetWriter | None = None

    def __enter__(self) -> AtomicParquetWriter:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.out)
        arrow_schema = pl.DataFrame(schema=self.schema).to_arrow().schema
        # No dictionary pages: on scores and ids they cost 2-4x the write time for no smaller file.
        self._writer = pq.ParquetWriter(self.temp, arrow_schema, compression=self.compression,
                                        use_dictionary=False)
        return self

    def write(self, frame: pl.DataFrame) -> None:
        """Append ``frame`` (columns and dtypes exactly as ``schema``)."""
        if frame.schema != self.schema:
            raise ValueError(f"frame schema {frame.schema} differs from the file's {self.schema}")
        if frame.height == 0:
            return
        self._pending.append(frame)
        self._pending_rows += frame.height
        if self._pending_rows >= self.row_group_rows:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        assert self._writer is not None, "write() outside the with block"
        table: pa.Table = pl.concat(self._pending, rechunk=False).to_arrow()
        # One row group per flush, except that a single huge frame is cut into several.
        self._writer.write_table(table, row_group_size=2 * self.row_group_rows)
        self.rows_written += table.num_rows
        self._pending, self._pending_rows = [], 0

    def _close(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        committed = False
        try:
            if exc_type is None:
                self._flush()
                self._close()
                os.replace(self.temp, self.out)
                committed = True
        finally:
            if not committed:
                with contextlib.suppress(Exception):
                    self._close()
                self.temp.unlink(missing_ok=True)


def temporary_path(out: Path) -> Path:
    """Where this process writes ``out`` before renaming it into place (same folder: the rename
    is atomic; a dot name: readers of the folder skip it; the pid: stale ones can be found)."""
    return out.parent / f".{out.name}.tmp-{os.getpid()}"


def remove_stale_temporaries(out: Path) -> None:
    """Delete the temporary files or folders of earlier writers of ``out`` that were killed
    before they could clean up (their process is gone)."""
    for path in out.parent.glob(f".{glob.escape(out.name)}.tmp-*"):
        pid = path.name.rsplit("-", 1)[1]
        if pid.isdigit() and not _process_alive(int(pid)):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True
