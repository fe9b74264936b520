"""Running top K over a stream of scored rows, globally or per group, in bounded memory.

Tie rule (the same everywhere in ncnc): a higher ``score`` ranks first; equal scores rank by the
``row`` column, the smaller (earlier) first. ``row`` is the row's position over all inputs, so the
result equals one full sort of every row by ``(score descending, row ascending)`` followed by
taking the first K (of each group), whatever the batch boundaries. NaN scores rank below every
number (as ``-inf``, then by ``row``), and so do nulls.

Memory: the kept rows (at most K, or K per group) plus a buffer of candidates that is merged into
them whenever it grows as large as they are (or ``min_merge_rows``), so each row takes part in a
bounded number of merges and the total work stays ``O(n log n)``. After each merge the K-th best
score (of each full group) is a floor: later rows scoring below it are dropped on arrival, which
keeps the buffer small once the top K has settled (any push order gives the same result).
"""

from __future__ import annotations

import polars as pl

RANK = "rank"
FLOOR = "_floor"


class RunningTopK:
    """Keep the K best rows of frames pushed one at a time.

    Args:
        k: how many rows to keep (per group when ``by`` is given), at least 1.
        by: group column, e.g. ``"src"`` for the top K of each source node; ``None`` for one
            global top K.
        score: the column to rank by (higher is better).
        row: the tie-break column: unique integers giving the rows' input order.
        min_merge_rows: buffered rows that trigger a merge at the least (bounds the buffer when
            few rows are kept).

    Example::

        top = RunningTopK(20, by="src")
        for frame in scored_batches:  # each with columns src, ..., score, row
            top.push(frame)
        best = top.result()  # the same columns without row, plus rank (1 = best)
    """

    def __init__(self, k: int, *, by: str | None = None, score: str = "score", row: str = "row",
                 min_merge_rows: int = 1 << 20) -> None:
        if k < 1:
            raise ValueError(f"RunningTopK: k must be at least 1, got {k}")
        self.k = k
        self.by = by
        self.score = score
        self.row = row
        self.min_merge_rows = min_merge_rows
        self._kept: pl.DataFrame | None = None
        self._buffer: list[pl.DataFrame] = []
        self._buffered = 0
        # The k-th best key once k rows are kept (per full group: columns by, FLOOR). A row
        # scoring below it can never enter; equal scores may (an earlier row wins the tie).
        self._floor: float | pl.DataFrame | None = None

    def _key(self) -> pl.Expr:
        """The score as ranked: Float64 with NaN (and null) as -inf."""
        return pl.col(self.score).cast(pl.Float64).fill_nan(float("-inf")).fill_null(float("-inf"))

    def _order(self) -> tuple[list[pl.Expr], list[bool]]:
        """Sort keys of the tie rule (after the group column, if any)."""
        keys, descending = [self._key(), pl.col(self.row)], [True, False]
        if self.by is not None:
            keys, descending = [pl.col(self.by), *keys], [False, *descending]
        return keys, descending

    def _best(self, frame: pl.DataFrame) -> pl.DataFrame:
        """The best ``k`` rows of ``frame`` (per group), sorted by group then the tie rule."""
        keys, descending = self._order()
        if self.by is None:
            if frame.height > self.k:
                # top_k picks without a full sort; the rule's keys are unique, so no ties remain.
                frame = frame.top_k(self.k, by=keys, reverse=[not d for d in descending])
            return frame.sort(keys, descending=descending)
        frame = frame.sort(keys, descending=descending)
        return frame.filter(pl.int_range(pl.len()).over(self.by) < self.k)

    def _prune(self, frame: pl.DataFrame) -> pl.DataFrame:
        """Drop the rows that score below the current floor (of their group)."""
        if self._floor is None:
            return frame
        if isinstance(self._floor, float):
            return frame.filter(self._key() >= self._floor)
        return frame.join(self._floor, on=self.by, how="left").filter(
            pl.col(FLOOR).is_null() | (self._key() >= pl.col(FLOOR))
        ).drop(FLOOR)

    def push(self, frame: pl.DataFrame) -> None:
        """Offer the rows of ``frame`` (it must hold the ``score`` and ``row`` columns)."""
        if self._kept is None:
            self._kept = frame.clear()  # remembers the columns, even of an empty stream
        frame = self._prune(frame)
        if frame.height == 0:
            return
        if self.by is None:
            frame = self._best(frame)  # cheap without groups; with them the merge does it
        self._buffer.append(frame)
        self._buffered += frame.height
        if self._buffered >= max(self._kept.height, self.min_merge_rows):
            self._merge()

    def _merge(self) -> None:
        if not self._buffer:
            return
        self._kept = self._best(pl.concat([self._kept, *self._buffer], how="vertical"))
        self._buffer, self._buffered = [], 0
        if self.by is None:
            if self._kept.height == self.k:
                self._floor = self._kept.select(self._key().min()).item()
        else:
            self._floor = (
                self._kept.group_by(self.by)
                .agg(pl.len().alias("count"), self._key().min().alias(FLOOR))
                .filter(pl.col("count") == self.k)
                .drop("count")
            )

    def kept(self) -> pl.DataFrame:
        """The kept rows as pushed (with ``row``), sorted as :meth:`result` sorts them.

        Pushing the ``kept()`` of several instances into a fresh one gives the top K of all the
        rows they were offered: the way partial results (chunks, partitions) are merged.
        """
        self._merge()
        if self._kept is None:
            raise ValueError("RunningTopK.kept: no frame was pushed (not even an empty one)")
        return self._kept

    def result(self) -> pl.DataFrame:
        """The kept rows with ``rank`` (1 = best; Int64) instead of ``row``.

        Sorted by rank, or by group and then rank when ``by`` is given.
        """
        kept = self.kept()
        if self.by is None:
            rank = pl.int_range(1, pl.len() + 1, dtype=pl.Int64)
        else:
            rank = (pl.int_range(pl.len(), dtype=pl.Int64).over(self.by) + 1)
        return kept.with_columns(rank.alias(RANK)).drop(self.row)
