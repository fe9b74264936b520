"""The last room of a scoring job: scored rows, their ranking, the Parquet writer, the report.

Output columns: ``src``, ``dst`` (original ids, in the graph's id dtype: Int64 or String),
``score`` (the logit, Float32), ``prob`` (``sigmoid(score)``, Float32), with a top K ``rank``
(Int64, 1 = best), and with ``explain`` ``because`` (the neighbours behind each score, see
:mod:`ncnc.scorer.explain`). Without a top K, rows keep input order (files in the order given, folders and
patterns sorted by name, rows in file order). With a top K the rows are sorted by rank (globally),
or by source and rank (``per_source``); see :mod:`ncnc.scorer.ranking` for the tie rule: a higher
score first, equal scores by input position, the earlier first.

Files are written at paths a :class:`ncnc.core.files.Publication` staged: this module writes,
the publication makes the result appear whole or not at all.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import resource
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import polars as pl
import torch
from polars.io.plugins import register_io_source

from ncnc.core.ids import IdMap
from ncnc.scorer.explain import BECAUSE, because_dtype
from ncnc.scorer.inputs import PAIR_COLUMNS
from ncnc.scorer.ranking import RANK, RunningTopK
from ncnc.triton_kernels.completion import reproducible_sigmoid

ROW = "row"  # a kept row's position over all inputs: the tie-break of the ranking
GROUP = "src_index"  # a kept row's source node index: the group of a per-source top K
SKIPPED_UNKNOWN = "unknown_id"  # reason key in the report's "skipped"


def output_schema(id_map: IdMap, *, ranked: bool, explained: bool = False) -> pl.Schema:
    """Columns and dtypes of the file a scoring job writes."""
    columns: dict[str, pl.DataType] = {"src": id_map.ids.dtype, "dst": id_map.ids.dtype,
                                       "score": pl.Float32(), "prob": pl.Float32()}
    if ranked:
        columns[RANK] = pl.Int64()
    if explained:
        columns[BECAUSE] = because_dtype(id_map)
    return pl.Schema(columns)


def with_scores(frame: pl.DataFrame, logits: torch.Tensor | np.ndarray, id_map: IdMap
                ) -> pl.DataFrame:
    """``frame`` (its ``src``, ``dst`` cast to the graph's id dtype) plus ``score`` and ``prob``.

    Raises:
        RuntimeError: the scorer returned another number of logits than ``frame`` has rows.
    """
    if isinstance(logits, torch.Tensor):
        logits = logits.detach().cpu().numpy()
    logits = np.asarray(logits, dtype=np.float32).reshape(-1)
    if logits.size != frame.height:
        raise RuntimeError(f"scorer returned {logits.size} logits for {frame.height} pairs")
    # Not np.exp: its vectorised and scalar paths differ in the last bit, so a pair's prob
    # would depend on its place in the batch.
    prob = reproducible_sigmoid(torch.from_numpy(logits)).numpy().astype(np.float32)
    casts = [pl.col(c).cast(id_map.ids.dtype) for c in PAIR_COLUMNS
             if frame.schema[c] != id_map.ids.dtype]
    if casts:
        frame = frame.with_columns(casts)
    # hstack, not with_columns: no query plan per batch (that costs more than the columns).
    return frame.hstack([pl.Series("score", logits, dtype=pl.Float32),
                         pl.Series("prob", prob, dtype=pl.Float32)])


@dataclass(frozen=True)
class OutputSpec:
    """What a job writes: the columns, and which rows with a top K (every engine shares it).

    ``explain``: list the ``explain`` best reasons of each kept row (needs ``top_k``).
    """

    id_map: IdMap
    top_k: int | None = None
    per_source: bool = False
    explain: int | None = None

    @property
    def schema(self) -> pl.Schema:
        """Columns of the output file."""
        return output_schema(self.id_map, ranked=self.top_k is not None,
                             explained=self.explain is not None)

    @property
    def scored_schema(self) -> pl.Schema:
        """Columns of the scored rows a top K keeps: the output's but ``rank`` and ``because``,
        with the input position for rank (and, per source, the source's node index: the
        ranking's group number)."""
        columns = {**{k: v for k, v in self.schema.items() if k not in (RANK, BECAUSE)},
                   ROW: pl.Int64()}
        if self.per_source:
            columns[GROUP] = pl.Int64()
        return pl.Schema(columns)

    @property
    def kept_schema(self) -> pl.Schema:
        """Columns of the kept rows a job returns: :attr:`scored_schema`, plus ``because`` when
        explaining (the rows are explained once the top K of a stream is known)."""
        if self.explain is None:
            return self.scored_schema
        return pl.Schema({**self.scored_schema, BECAUSE: because_dtype(self.id_map)})

    def new_top(self, schema: pl.Schema | None = None) -> RunningTopK | None:
        """An empty running top K of rows of ``schema`` (default :attr:`kept_schema`; None
        without a top K). Per source, the groups are source node indices, so the output is
        sorted by source in id order."""
        if self.top_k is None:
            return None
        top = RunningTopK(self.top_k, by=GROUP if self.per_source else None)
        # The columns, even of an empty stream.
        top.push(pl.DataFrame(schema=self.kept_schema if schema is None else schema))
        return top

    def ranked(self, kept: pl.DataFrame, *, merged: bool = False) -> pl.DataFrame:
        """The output rows of the top K among ``kept`` rows (with ``rank``).

        ``merged``: the rows are one running top K's :meth:`RunningTopK.kept` already (sorted
        and cut): they are ranked without sorting again. Otherwise (the kept rows of several
        chunks or partitions) they are merged first.
        """
        top = self.new_top()
        if top is None:
            raise ValueError("OutputSpec.ranked: the output has no top K")
        if merged:
            return top.with_ranks(kept).select(self.schema.names())
        top.push(kept)
        return top.result().select(self.schema.names())


class ParquetRowWriter:
    """Append polars frames to one Parquet file (at a path a Publication staged).

    The file is written by polars' streaming Parquet sink in a thread of its own, fed through a
    bounded queue: :meth:`write` hands a frame over and returns, and the encoding and compression
    (on polars' thread pool, across columns) overlap with whatever the caller does next. Row
    groups hold ``row_group_rows`` rows (the last one fewer); zstd at level 1. Leaving the
    ``with`` block waits for the file to be complete (its footer written); the caller's
    Publication then publishes it, or removes it on failure.

    Example::

        with Publication() as outputs:
            with ParquetRowWriter(outputs.file(out), schema) as writer:
                for frame in frames:
                    writer.write(frame)
            outputs.publish()
    """

    def __init__(self, path: Path, schema: pl.Schema | dict[str, pl.DataType], *,
                 row_group_rows: int = 1 << 19, compression: str = "zstd",
                 queued_frames: int = 4) -> None:
        self.path = Path(path)
        self.schema = pl.Schema(schema)
        self.rows_written = 0
        self._row_group_rows = row_group_rows
        self._synced_rows = 0
        self._writeback: threading.Thread | None = None
        self._frames: queue.Queue = queue.Queue(queued_frames)
        self._error: BaseException | None = None
        self._closed = False
        # Opened here, in the caller's thread, and handed to the sink: the file exists before
        # the sink starts, so a job interrupted at any moment leaves no file the Publication's
        # cleanup did not see (a sink opening the path itself could create it after the
        # cleanup had run).
        self._file = open(self.path, "wb")  # noqa: SIM115 (closed in __exit__)
        sink = register_io_source(self._source, schema=self.schema)
        self._thread = threading.Thread(
            target=self._sink, name="ncnc-parquet-sink", daemon=True,
            # Level 1, not polars' default 3: files as small within 1%, written 1.5x faster.
            args=(sink, dict(compression=compression, compression_level=1,
                             row_group_size=row_group_rows)))
        self._thread.start()

    def __enter__(self) -> ParquetRowWriter:
        return self

    def _source(self, with_columns: list[str] | None, predicate: Any, n_rows: int | None,
                batch_size: int | None) -> Iterator[pl.DataFrame]:
        """The frames handed to :meth:`write`, as polars' sink pulls them."""
        while (frame := self._frames.get()) is not _CLOSE:
            if frame is _ABANDON:
                raise _Abandoned(f"{self.path}: the writing was abandoned")
            yield frame if with_columns is None else frame.select(with_columns)

    def _sink(self, sink: pl.LazyFrame, options: dict[str, Any]) -> None:
        try:
            sink.sink_parquet(self._file, **options)
        except BaseException as error:  # handed to the caller's thread
            self._error = error

    def _hand_over(self, item: object) -> None:
        while self._thread.is_alive():
            try:
                self._frames.put(item, timeout=0.05)
                return
            except queue.Full:
                continue
        self._raise_failure()

    def _raise_failure(self) -> None:
        if self._error is not None and not isinstance(self._error, _Abandoned):
            raise self._error
        raise RuntimeError(f"{self.path}: the Parquet writer stopped")

    def write(self, frame: pl.DataFrame) -> None:
        """Append ``frame`` (columns and dtypes exactly as ``schema``)."""
        if frame.schema != self.schema:
            raise ValueError(f"frame schema {frame.schema} differs from the file's {self.schema}")
        if self._closed:
            raise ValueError(f"{self.path}: write() after the writer was closed")
        if frame.height == 0:
            return
        self._hand_over(frame)
        self.rows_written += frame.height
        if self.rows_written - self._synced_rows >= self._row_group_rows:
            self._synced_rows = self.rows_written
            self._start_writeback()

    def _start_writeback(self) -> None:
        """Flush what the sink has written so far to disk, in a thread of its own: the disk
        writes overlap with the job, and the publication's fsync at the end finds little left
        (on a 5M-row job it took 80 ms of 0.84 s alone)."""
        if self._writeback is not None and self._writeback.is_alive():
            return  # the running flush covers most of it; the next row group starts another
        self._writeback = threading.Thread(target=self._write_back, name="ncnc-writeback",
                                           daemon=True)
        self._writeback.start()

    def _write_back(self) -> None:
        with contextlib.suppress(OSError, ValueError):  # ValueError: closed meanwhile
            os.fsync(self._file.fileno())

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._close(exc_type)
        finally:
            if self._writeback is not None:
                self._writeback.join()
            if not self._thread.is_alive():  # else the sink still writes to it (interrupted)
                self._file.close()

    def _close(self, exc_type: type[BaseException] | None) -> None:
        if exc_type is not None:
            # Stop the sink without waiting on a full queue; the staged file is removed anyway.
            with contextlib.suppress(BaseException):
                self._hand_over(_ABANDON)
            self._thread.join()
            return
        self._hand_over(_CLOSE)
        self._thread.join()
        if self._error is not None:
            self._raise_failure()


_CLOSE = object()  # the end of a writer's frames
_ABANDON = object()  # a writer's caller failed: the sink stops with an error


class _Abandoned(Exception):
    """Raised inside polars' sink when the writer's caller failed."""


def write_json(path: Path, document: dict[str, Any]) -> None:
    """Write ``document`` as indented JSON (at a path a Publication staged)."""
    with open(path, "w") as f:  # "w", not a rename-based write: the path may be /dev/stdout
        f.write(json.dumps(document, indent=2) + "\n")


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, in MiB.

    Linux: ``VmHWM`` of /proc/self/status. ``ru_maxrss`` is not used there because it survives
    ``exec``: a scorer started by a large parent process would report the parent's peak.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024  # bytes vs KiB


def job_report(files: Sequence[Path], out: Path, row_counts: Sequence[int], rows_scored: int,
               rows_written: int, *, rows_resumed: int, top_k: int | None, per_source: bool,
               batch_size: int, seconds: float) -> dict[str, Any]:
    """The report of a finished job (fields: see :func:`ncnc.scorer.job.score_files`)."""
    rows_read = sum(row_counts)
    skipped = rows_read - rows_scored
    return {
        "inputs": [str(f) for f in files],
        "output": str(out),
        "rows_read": rows_read,
        "rows_scored": rows_scored,
        "rows_skipped": skipped,
        "skipped": {SKIPPED_UNKNOWN: skipped} if skipped else {},
        "rows_written": rows_written,
        "rows_resumed": rows_resumed,
        "top_k": top_k,
        "per_source": per_source,
        "batch_size": batch_size,
        "seconds": round(seconds, 3),
        "pairs_per_second": (round((rows_read - rows_resumed) / seconds, 1)
                             if seconds > 0 else None),
        "peak_rss_mib": round(peak_rss_mib(), 1),
    }
