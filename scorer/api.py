"""The scoring half of the Python API: a bundle's :class:`Scorer` and :func:`top_k`.

Example::

    import ncnc

    scorer = ncnc.load_bundle("bundle/").scorer()
    scored = scorer.score(pairs)              # polars, pandas or Arrow in; the same kind out
    ncnc.top_k(scored, 20, per_source=True)   # the 20 best of each src, with rank
    scorer.score_parquet(["candidates/"], "recs.parquet", top_k=20, per_source=True)
    scorer.score(pairs, explain=3)            # plus because: the 3 neighbours behind each score
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import polars as pl
import torch

from ncnc.core.errors import InputError
from ncnc.core.tables import as_polars, like
from ncnc.scorer.bundle import Bundle
from ncnc.scorer.engine import BatchScorer
from ncnc.scorer.explain import refuse_unexplainable
from ncnc.scorer.inputs import OnUnknown
from ncnc.scorer.job import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_RESUME_EVERY,
    prepare_host_path,
    score_files,
    score_table,
)
from ncnc.scorer.ranking import RunningTopK

Table = TypeVar("Table")
_POSITION = "__ncnc_position"  # the tie-break column of top_k (dropped from its result)
_GROUP = "__ncnc_group"  # top_k's group number of each src (dropped from its result)


class Scorer:
    """Scores pairs of node ids with one bundle (from :meth:`ncnc.scorer.Bundle.scorer`).

    Attributes:
        bundle: the bundle.
        engine: the batch engine (node indices -> logits) on :attr:`device`.
    """

    def __init__(self, bundle: Bundle, engine: BatchScorer) -> None:
        self.bundle = bundle
        self.engine = engine
        prepare_host_path(bundle.id_map)

    @property
    def device(self) -> torch.device:
        return self.engine.device

    def score(self, table: Table, *, on_unknown: OnUnknown = "error",
              explain: int | None = None) -> Table:
        """Score a table of pairs held in memory.

        Args:
            table: a polars DataFrame, pandas DataFrame or pyarrow Table with columns ``src`` and
                ``dst`` (original node ids, of the graph's kind), without nulls; other columns
                are kept.
            on_unknown: ``"error"`` refuses ids that are not nodes of the graph; ``"skip"``
                drops those rows.
            explain: also add ``because`` to every row: its ``explain`` common (NCNC: and
                completed) neighbours of largest contribution, as structs ``{id, weight,
                contribution}`` (definition and cost: :mod:`ncnc.scorer.explain`; each row costs
                about one head evaluation per neighbour, so explain the rows you keep).

        Returns:
            The same kind of table: its rows in order, ``src``/``dst`` in the graph's id dtype,
            plus ``score`` (the logit, float32), ``prob`` (``sigmoid(score)``, float32) and with
            ``explain`` ``because``.

        Raises:
            InputError: another kind of table, a missing column, nulls, ids of the other kind,
                (``on_unknown="error"``) an unknown id, or ``explain`` with a GAE bundle.

        Shapes:
            ``[B]`` rows in, ``[B]`` rows out (fewer when unknown ids are skipped).
        """
        frame, kind = as_polars(table, what="pairs table")
        if explain is not None:
            refuse_unexplainable(self.bundle.spec.model)
        scored = score_table(self.engine, self.bundle.id_map, frame, what="pairs table",
                             on_unknown=on_unknown, explain=explain)
        return like(scored, kind)  # type: ignore[return-value]

    def score_logits(self, pairs: torch.Tensor) -> torch.Tensor:
        """``[B, 2]`` int64 node indices -> ``[B]`` float32 logits (no id mapping)."""
        return self.engine.score_logits(pairs)

    def score_parquet(self, pairs: Sequence[Path | str] | Path | str, out: Path | str, *,
                      top_k: int | None = None, per_source: bool = False,
                      explain: int | None = None,
                      batch_size: int = DEFAULT_BATCH_SIZE, on_unknown: OnUnknown = "error",
                      report: Path | str | None = None, resume: bool = False,
                      resume_every: int = DEFAULT_RESUME_EVERY, progress: bool = True
                      ) -> dict[str, Any]:
        """Stream Parquet pairs through the scorer into one Parquet file (``ncnc score``).

        Memory stays bounded by a few batches whatever the input size. ``out`` (and ``report``)
        appear whole, only when the whole job succeeded. See :func:`ncnc.scorer.job.score_files`
        for every argument and the report's fields.

        Returns:
            The run report (also written to ``report`` as JSON when given).
        """
        if isinstance(pairs, (str, Path)):
            pairs = [pairs]
        if explain is not None:
            refuse_unexplainable(self.bundle.spec.model)
        return score_files(
            self.engine, self.bundle.id_map, pairs, Path(out), top_k=top_k,
            per_source=per_source, explain=explain, batch_size=batch_size, on_unknown=on_unknown,
            progress=progress, resume=resume, resume_every=resume_every,
            report=Path(report) if report is not None else None,
            report_fields={"bundle": str(self.bundle.path), "device": str(self.device)},
            reads=self.bundle.inputs, job_key={"bundle": self.bundle.checksum})


def top_k(table: Table, k: int, *, per_source: bool = False, score: str = "score") -> Table:
    """The ``k`` best rows of a scored table with ``rank`` (1 = best), by the ranking rule of
    ``ncnc score --top-k``: a higher ``score`` first, equal scores in table order (the earlier
    row first), NaN below every number.

    Args:
        table: polars, pandas or Arrow, with a ``score`` column (e.g. :meth:`Scorer.score`'s
            result); with ``per_source`` also ``src``.
        k: rows to keep (per source), at least 1.
        per_source: the ``k`` best of each ``src``, sorted by ``src`` then rank.
        score: the column to rank by.

    Returns:
        The same kind of table: the kept rows sorted by rank (per source), plus ``rank`` (Int64).

    Raises:
        InputError: another kind of table, or a missing column.
    """
    frame, kind = as_polars(table, what="scored table")
    needed = [score, "src"] if per_source else [score]
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise InputError(f"scored table: missing column(s) {', '.join(missing)} (columns "
                         f"present: {', '.join(frame.columns) or 'none'})")
    if k < 1:
        raise InputError(f"top_k: k must be at least 1, got {k}")
    numbered = frame.with_row_index(_POSITION).with_columns(pl.col(_POSITION).cast(pl.Int64))
    group = None
    if per_source:
        if frame["src"].null_count():
            raise InputError("scored table column src: holds nulls")
        group = _GROUP  # group numbers in src order, so the result is sorted by src
        numbered = numbered.with_columns(
            (pl.col("src").rank("dense").cast(pl.Int64) - 1).alias(_GROUP))
    top = RunningTopK(k, by=group, score=score, row=_POSITION)
    top.push(numbered)
    best = top.result()
    return like(best.drop(_GROUP) if per_source else best, kind)  # type: ignore[return-value]
