"""What ``ncnc score`` does: score candidate pairs from Parquet into Parquet, in bounded memory.

Three layers, so that other drivers (a Ray adapter, a notebook) reuse the lower ones:

- :func:`score_table`: one in-memory table of pairs -> the same rows with ``score`` and ``prob``.
- :func:`score_files`: the streaming job over files with any :class:`PairScorer` (tests pass a
  fake one): read batch by batch, score, write incrementally or keep a running top K, report.
- :func:`score_pairs`: loads the bundle and its :class:`~scorer.engine.BatchScorer`, then runs
  :func:`score_files` and writes the report (``ncnc score`` calls this).

Output columns: ``src``, ``dst`` (original ids, in the graph's id dtype: Int64 or String),
``score`` (the logit, Float32), ``prob`` (``sigmoid(score)``, Float32), and with a top K ``rank``
(Int64, 1 = best). Without a top K, rows keep input order (files in the order given, folders and
globs sorted by name, rows in file order). With a top K the rows are sorted by rank (globally), or
by source and rank (``per_source``); see :mod:`scorer.ranking` for the tie rule: a higher score
first, equal scores by input position, the earlier first.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import polars as pl
import pyarrow as pa
import torch
from tqdm.auto import tqdm

from ncnc.errors import InputError
from ncnc.tables import IdMap
from scorer.ranking import RANK, RunningTopK
from scorer.stream import (
    PAIR_COLUMNS,
    AtomicParquetWriter,
    check_no_nulls,
    expand_inputs,
    inspect_pair_files,
    iter_pair_batches,
    refuse_overwriting,
)

DEFAULT_BATCH_SIZE = 65536
OnUnknown = Literal["error", "skip"]
SKIPPED_UNKNOWN = "unknown_id"  # reason key in the report's "skipped"
ROW = "row"


class PairScorer(Protocol):
    """What the job needs of a scorer (:class:`scorer.engine.BatchScorer` is one)."""

    def score_logits(self, pairs: torch.Tensor) -> torch.Tensor:
        """``[B, 2]`` int64 node indices -> ``[B]`` float32 logits on the CPU."""
        ...


def score_table(scorer: PairScorer, id_map: IdMap, table: pl.DataFrame | pa.Table, *,
                what: str = "pairs", on_unknown: OnUnknown = "error") -> pl.DataFrame:
    """Score one in-memory table of pairs given by original node ids.

    Args:
        scorer: maps ``[B, 2]`` node indices to ``[B]`` logits.
        id_map: the bundle's ids (``bundle.id_map``).
        table: columns ``src`` and ``dst`` (ids of the graph's kind), without nulls; other
            columns pass through unchanged.
        what: names the input in error messages, e.g. ``"pairs file x.parquet"``.
        on_unknown: ``"error"`` raises on ids that are not nodes of the graph; ``"skip"`` drops
            those rows (the caller counts them as ``table rows - result rows``).

    Returns:
        The rows of ``table`` (in order; ``src``, ``dst`` cast to ``id_map``'s dtype) plus
        ``score`` (logit, Float32) and ``prob`` (``sigmoid(score)``, Float32).

    Raises:
        InputError: a column is missing or holds nulls or ids of the other kind, or (with
            ``on_unknown="error"``) an id is unknown.

    Shapes:
        ``table``: ``[B]`` rows -> result ``[B']`` rows, ``B' = B`` unless rows are skipped.
    """
    frame = table if isinstance(table, pl.DataFrame) else pl.DataFrame(pl.from_arrow(table))
    missing = [c for c in PAIR_COLUMNS if c not in frame.columns]
    if missing:
        raise InputError(f"{what}: missing column(s) {', '.join(missing)}"
                         f" (columns present: {', '.join(frame.columns) or 'none'})")
    check_no_nulls(frame.select(PAIR_COLUMNS), what=what)
    # Element-wise work in numpy: tiny torch ops pay a thread-pool handoff (ms on a busy machine).
    index, known = [], np.ones(frame.height, dtype=bool)
    for column in PAIR_COLUMNS:
        values, what_column = frame[column], f"{what} column {column}"
        if on_unknown == "error":
            index.append(id_map.to_index(values, what=what_column).numpy())
        else:
            idx, ok = id_map.lookup(values, what=what_column)
            index.append(idx.numpy())
            known &= ok.numpy()
    pairs = np.stack(index, 1)
    if not known.all():
        pairs = pairs[known]
        frame = frame.filter(pl.Series(known))
    logits = scorer.score_logits(torch.from_numpy(pairs))
    logits = logits.detach().to("cpu", torch.float32).reshape(-1).numpy()
    if logits.size != frame.height:
        raise RuntimeError(f"scorer returned {logits.size} logits for {frame.height} pairs")
    with np.errstate(over="ignore"):
        prob = (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)
    return frame.with_columns(
        pl.col(c).cast(id_map.ids.dtype) for c in PAIR_COLUMNS
    ).with_columns(
        pl.Series("score", logits, dtype=pl.Float32),
        pl.Series("prob", prob, dtype=pl.Float32),
    )


def output_schema(id_map: IdMap, *, ranked: bool) -> pl.Schema:
    """Columns and dtypes of the file :func:`score_files` writes."""
    columns: dict[str, pl.DataType] = {"src": id_map.ids.dtype, "dst": id_map.ids.dtype,
                                       "score": pl.Float32(), "prob": pl.Float32()}
    if ranked:
        columns[RANK] = pl.Int64()
    return pl.Schema(columns)


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


def score_files(scorer: PairScorer, id_map: IdMap, pairs: Sequence[Path | str], out: Path, *,
                top_k: int | None = None, per_source: bool = False,
                batch_size: int = DEFAULT_BATCH_SIZE, on_unknown: OnUnknown = "error",
                progress: bool = True) -> dict[str, Any]:
    """Stream the pairs of ``pairs`` through ``scorer`` into the Parquet file ``out``.

    Args:
        scorer: maps ``[B, 2]`` node indices to ``[B]`` logits.
        id_map: the bundle's node ids.
        pairs: Parquet files, folders (their ``*.parquet``, sorted) or glob patterns, each file
            with columns ``src``, ``dst``.
        out: the result file; written under a temporary name and renamed into place on success
            only (on failure an earlier ``out`` is left as it was).
        top_k: keep only the ``top_k`` best pairs (with ``per_source``, of each ``src``) and add
            ``rank``; ``None`` writes every pair in input order.
        per_source: rank within each source node instead of globally (needs ``top_k``).
        batch_size: rows read, scored and written at a time; memory grows with it.
        on_unknown: ``"error"`` or ``"skip"`` rows whose ids are not nodes of the graph.
        progress: show a progress bar (pairs/s) on stderr.

    Returns:
        The report: ``inputs``, ``output``, ``rows_read``, ``rows_scored``, ``rows_skipped``,
        ``skipped`` (reason -> count), ``rows_written``, ``top_k``, ``per_source``,
        ``batch_size``, ``seconds``, ``pairs_per_second``, ``peak_rss_mib``.

    Raises:
        InputError: bad paths, files, columns, nulls, id types or (with ``on_unknown="error"``)
            unknown ids, or ``out`` is one of the inputs. Nothing is written to ``out`` then.
    """
    if per_source and top_k is None:
        raise InputError("--per-source needs --top-k")
    if top_k is not None and top_k < 1:
        raise InputError(f"--top-k must be at least 1, got {top_k}")
    if batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {batch_size}")
    started = time.perf_counter()
    out = Path(out)
    files = expand_inputs(pairs)
    refuse_overwriting(out, files)
    total = sum(inspect_pair_files(files, id_kind_expected=id_map.kind))
    top = RunningTopK(top_k, by="src" if per_source else None) if top_k is not None else None
    rows_read = rows_scored = 0
    schema = output_schema(id_map, ranked=top is not None)
    with AtomicParquetWriter(out, schema) as writer, tqdm(
        total=total, unit="pairs", unit_scale=True, desc="score", disable=not progress,
        file=sys.stderr,
    ) as bar:
        for batch in iter_pair_batches(files, batch_size):
            frame = batch.frame
            if top is not None:
                frame = frame.with_columns(
                    pl.int_range(batch.row, batch.row + frame.height, dtype=pl.Int64).alias(ROW))
            scored = score_table(scorer, id_map, frame, what=batch.what, on_unknown=on_unknown)
            rows_read += frame.height
            rows_scored += scored.height
            if top is not None:
                top.push(scored)
            else:
                writer.write(scored)
            bar.update(frame.height)
        if top is not None:
            top.push(pl.DataFrame(schema={**schema, ROW: pl.Int64()}).drop(RANK))
            writer.write(top.result().select(schema.names()))
    seconds = time.perf_counter() - started
    skipped = rows_read - rows_scored
    return {
        "inputs": [str(f) for f in files],
        "output": str(out),
        "rows_read": rows_read,
        "rows_scored": rows_scored,
        "rows_skipped": skipped,
        "skipped": {SKIPPED_UNKNOWN: skipped} if skipped else {},
        "rows_written": writer.rows_written,
        "top_k": top_k,
        "per_source": per_source,
        "batch_size": batch_size,
        "seconds": round(seconds, 3),
        "pairs_per_second": round(rows_read / seconds, 1) if seconds > 0 else None,
        "peak_rss_mib": round(peak_rss_mib(), 1),
    }


@dataclass(frozen=True)
class ScoreRequest:
    """One ``ncnc score`` invocation (see :func:`score_files` for the fields' meaning)."""

    bundle: Path
    pairs: Sequence[Path | str]
    out: Path
    top_k: int | None = None
    per_source: bool = False
    batch_size: int = DEFAULT_BATCH_SIZE
    device: str = "auto"
    on_unknown: OnUnknown = "error"
    report: Path | None = None
    progress: bool = True


def score_pairs(request: ScoreRequest) -> dict[str, Any]:
    """Load the bundle, score ``request.pairs`` into ``request.out``; return (and write) the report.

    The report is :func:`score_files`' plus ``bundle`` and ``device``; with ``request.report`` it
    is also written there as JSON, after the output is in place.
    """
    from scorer.bundle import load_bundle
    from scorer.engine import BatchScorer

    if request.report is not None and Path(request.report).resolve() == Path(request.out).resolve():
        raise InputError(f"--report {request.report}: is the same file as --out")
    bundle = load_bundle(Path(request.bundle))
    scorer = BatchScorer(bundle, device=request.device)
    report = score_files(
        scorer, bundle.id_map, request.pairs, request.out, top_k=request.top_k,
        per_source=request.per_source, batch_size=request.batch_size,
        on_unknown=request.on_unknown, progress=request.progress,
    )
    report = {"bundle": str(request.bundle), "device": str(getattr(scorer, "device", request.device)),
              **report}
    if request.report is not None:
        Path(request.report).parent.mkdir(parents=True, exist_ok=True)
        Path(request.report).write_text(json.dumps(report, indent=2) + "\n")
    return report
