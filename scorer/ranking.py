"""Running top K over a stream of scored rows, globally or per group, in bounded memory.

Tie rule (the same everywhere in ncnc): a higher ``score`` ranks first; equal scores rank by the
``row`` column, the smaller (earlier) first. ``row`` is the row's position over all inputs, so the
result equals one full sort of every row by ``(score descending, row ascending)`` followed by
taking the first K (of each group), whatever the batch boundaries. NaN (and null) scores rank
below every number (as ``-inf``, then by ``row``).

Memory: the kept rows (at most K, or K per group) plus a buffer of candidates that is merged into
them whenever it grows as large as they are (or ``min_merge_rows``), so each row takes part in a
bounded number of merges and the total work stays ``O(n log n)``. After each merge the K-th best
score (of each full group) is a floor: later rows scoring below it are dropped on arrival, which
keeps the buffer small once the top K has settled (any push order gives the same result).

Groups are numbered (an integer column, e.g. a source node's index): the floors are then one
array indexed by group, so pruning a batch costs a gather, not a join, and the sorts run on
numbers only. Results come sorted by group number, then rank.
"""

from __future__ import annotations

import numpy as np
import polars as pl

RANK = "rank"
_KEY = "__ncnc_key"  # the score as ranked (Float64, NaN and null as -inf), while sorting


def _rank_in_group(groups: np.ndarray) -> np.ndarray:
    """For a sorted array of group numbers, each element's position within its group."""
    if groups.size == 0:
        return np.zeros(0, dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]])
    lengths = np.diff(np.r_[starts, groups.size])
    return np.arange(groups.size) - np.repeat(starts, lengths)


class RunningTopK:
    """Keep the K best rows of frames pushed one at a time.

    Args:
        k: how many rows to keep (per group when ``by`` is given), at least 1.
        by: an integer column numbering the groups (``>= 0``), e.g. the source node's index for
            the top K of each source; ``None`` for one global top K.
        score: the column to rank by (higher is better).
        row: the tie-break column: unique integers giving the rows' input order.
        min_merge_rows: buffered rows that trigger a merge at the least (bounds the buffer when
            few rows are kept).

    Example::

        top = RunningTopK(20, by="src_index")
        for frame in scored_batches:  # each with columns src_index, ..., score, row
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
        # The k-th best key once k rows are kept: a float, or per group an array indexed by the
        # group number (-inf for groups not full yet). A row scoring below it can never enter;
        # equal scores may (an earlier row wins the tie).
        self._floor: float | np.ndarray | None = None

    def _key(self) -> pl.Expr:
        """The score as ranked: Float64 with NaN (and null) as -inf."""
        return (pl.col(self.score).cast(pl.Float64).fill_nan(float("-inf"))
                .fill_null(float("-inf")))

    def _best(self, frame: pl.DataFrame) -> pl.DataFrame:
        """The best ``k`` rows of ``frame`` (per group), sorted by group then the tie rule."""
        if self.by is None:
            keys, descending = [self._key(), pl.col(self.row)], [True, False]
            if frame.height > self.k:
                # top_k picks without a full sort; the rule's keys are unique, so no ties remain.
                frame = frame.top_k(self.k, by=keys, reverse=[not d for d in descending])
            return frame.sort(keys, descending=descending)
        ordered = frame.with_columns(self._key().alias(_KEY)).sort(
            [self.by, _KEY, self.row], descending=[False, True, False])
        rank = _rank_in_group(ordered[self.by].to_numpy())
        return ordered.filter(pl.Series(rank < self.k)).drop(_KEY)

    def _prune(self, frame: pl.DataFrame) -> pl.DataFrame:
        """Drop the rows that score below the current floor (of their group)."""
        if self._floor is None or frame.height == 0:
            return frame
        key = frame.select(self._key()).to_series().to_numpy()
        if isinstance(self._floor, float):
            return frame.filter(pl.Series(key >= self._floor))
        groups = frame[self.by].to_numpy()
        floors = np.full(groups.size, -np.inf)
        known = groups < self._floor.size
        floors[known] = self._floor[groups[known]]
        return frame.filter(pl.Series(key >= floors))

    def push(self, frame: pl.DataFrame) -> None:
        """Offer the rows of ``frame`` (it must hold the ``score``, ``row`` and ``by`` columns)."""
        if self._kept is None:
            self._kept = frame.clear()  # remembers the columns, even of an empty stream
        if self.by is not None and frame.height and frame[self.by].min() < 0:
            raise ValueError(f"RunningTopK: group numbers in {self.by!r} must be >= 0")
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
            return
        groups = self._kept[self.by].to_numpy()
        if groups.size == 0:
            return
        rank = _rank_in_group(groups)
        full = rank == self.k - 1  # the k-th row of a group: its key is the group's floor
        floor = np.full(int(groups.max()) + 1, -np.inf)
        floor[groups[full]] = self._kept.select(self._key()).to_series().to_numpy()[full]
        self._floor = floor

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
        return self.with_ranks(self.kept())

    def with_ranks(self, kept: pl.DataFrame) -> pl.DataFrame:
        """``rank`` instead of ``row`` for rows already in :meth:`kept`'s order (the kept rows of
        an instance with the same ``k`` and ``by``): no sort again."""
        if self.by is None:
            rank = np.arange(1, kept.height + 1)
        else:
            rank = _rank_in_group(kept[self.by].to_numpy()) + 1
        return kept.with_columns(pl.Series(RANK, rank, dtype=pl.Int64)).drop(self.row)
