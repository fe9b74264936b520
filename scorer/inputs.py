"""The first room of a scoring job: the user's pair files, read in bounded memory.

- :func:`open_inputs` turns the user's paths (files, folders, patterns) into an ordered file list
  and checks every file's schema up front (one bad file among many fails before any work),
  counting the rows from the footers (:class:`PairInputs`).
- :func:`iter_pair_batches` streams ``src``, ``dst`` in batches of a fixed number of rows
  (:func:`ncnc.core.tables.iter_parquet_batches`, pyarrow's bounded reader), numbering rows
  globally across files.
- :func:`node_pairs` maps a batch's ids to node indices.

Every problem with the user's files raises :class:`~ncnc.core.errors.InputError` naming the file, the
column and the first bad values.
"""

from __future__ import annotations

import glob
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl

from ncnc.core.errors import InputError, examples
from ncnc.core.ids import IdMap, id_kind, refuse_unknown
from ncnc.core.tables import iter_parquet_batches, parquet_schema

PAIR_COLUMNS = ("src", "dst")
GLOB_CHARS = frozenset("*?[")


OnUnknown = Literal["error", "skip"]


def expand_inputs(paths: Iterable[Path | str]) -> list[Path]:
    """The Parquet files named by ``paths``, in order.

    A path that exists is taken literally, whatever characters its name holds: a file as is, a
    folder as its ``*.parquet`` files sorted by name (names starting with ``.`` or ``_`` are
    skipped, as Spark and Hive write markers there). Only a path that does not exist is a glob
    pattern (its matches, sorted). Files appear in the order the paths were given.

    Raises:
        InputError: a path does not exist, or a folder or pattern holds no Parquet file.
    """
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            # iterdir, not glob: the folder's own name may hold pattern characters.
            found = sorted(p for p in path.iterdir()
                           if p.suffix == ".parquet" and p.is_file()
                           and not p.name.startswith((".", "_")))
            if not found:
                raise InputError(f"pairs folder {path}: holds no *.parquet file")
            files.extend(found)
        elif path.exists():
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


def inspect_pair_files(files: Sequence[Path], *, id_kind_expected: str) -> list[int]:
    """Check that every file is Parquet with id columns ``src``, ``dst``; return its row counts.

    Only footers are read. ``id_kind_expected`` is ``"integer"`` or ``"string"``, the kind of the
    graph's node ids (:attr:`ncnc.core.ids.IdMap.kind`).

    Raises:
        InputError: a file is not Parquet, lacks ``src`` or ``dst``, or holds ids of another type.
    """
    counts = []
    for path in files:
        schema, rows = parquet_schema(path, what="pairs file")
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
class PairInputs:
    """The checked input of a job: its files in order and their row counts (from the footers)."""

    files: list[Path]
    row_counts: list[int]

    @property
    def rows(self) -> int:
        return sum(self.row_counts)


def open_inputs(paths: Sequence[Path | str], id_map: IdMap) -> PairInputs:
    """Expand ``paths`` (:func:`expand_inputs`) and check every file (:func:`inspect_pair_files`).

    Raises:
        InputError: a path names nothing, or a file is not Parquet of ``src``, ``dst`` ids of
            ``id_map``'s kind.
    """
    files = expand_inputs(paths)
    return PairInputs(files, inspect_pair_files(files, id_kind_expected=id_map.kind))


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
        for frame in iter_parquet_batches(path, PAIR_COLUMNS, batch_size, what="pairs file",
                                          skip=skip, take=take):
            batch = PairBatch(path, file_row, row, frame)
            check_no_nulls(frame, what=batch.what, first_row=file_row)
            yield batch
            file_row += frame.height
            row += frame.height
        if row_counts is not None and file_row != (row_counts[index] if take is None
                                                   else skip + take):
            raise InputError(f"pairs file {path}: {file_row} rows could be read of the "
                             f"{row_counts[index]} its footer lists (the file is damaged)")


def check_no_nulls(frame: pl.DataFrame, *, what: str, first_row: int = 0,
                   columns: Sequence[str] | None = None) -> None:
    """Raise :class:`InputError` naming the first column with nulls and its first null rows.

    ``first_row`` is the number of the frame's first row in the input ``what`` names;
    ``columns``: the columns to check (default all).
    """
    for name in frame.columns if columns is None else columns:
        if frame[name].null_count():
            rows = frame[name].is_null().arg_true() + first_row
            raise InputError(
                f"{what} column {name}: {rows.len()} null value(s), in rows {examples(rows)}"
            )


def node_pairs(frame: pl.DataFrame, id_map: IdMap, *, what: str, on_unknown: OnUnknown
               ) -> tuple[np.ndarray, np.ndarray | None]:
    """Map the ``src``, ``dst`` ids of ``frame`` to node indices.

    Returns:
        ``(pairs, known)``: ``[B', 2]`` int64 node indices of the rows to score, and the ``[B]``
        bool mask of those rows (``None`` when every row is kept).

    Raises:
        InputError: a column is missing or holds nulls or ids of the other kind, or (with
            ``on_unknown="error"``) an id is not a node of the graph.
    """
    missing = [c for c in PAIR_COLUMNS if c not in frame.columns]
    if missing:
        raise InputError(f"{what}: missing column(s) {', '.join(missing)}"
                         f" (columns present: {', '.join(frame.columns) or 'none'})")
    check_no_nulls(frame, what=what, columns=PAIR_COLUMNS)
    # Element-wise work in numpy: tiny torch ops pay a thread-pool handoff (ms on a busy machine).
    pairs = np.empty((frame.height, 2), dtype=np.int64)
    for side, column in enumerate(PAIR_COLUMNS):
        pairs[:, side] = id_map.indices(frame[column], what=f"{what} column {column}")
    if not pairs.size or pairs.min() >= 0:  # one pass, no mask: every id is known
        return pairs, None
    known = (pairs >= 0).all(axis=1)
    if on_unknown == "error":
        for side, column in enumerate(PAIR_COLUMNS):
            refuse_unknown(frame[column], pairs[:, side], what=f"{what} column {column}")
    return pairs[known], known
