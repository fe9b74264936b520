"""What ``ncnc score`` does: score candidate pairs from Parquet into Parquet, in bounded memory.

Three layers, so that other drivers (a Ray adapter, a notebook) reuse the lower ones:

- :func:`score_table`: one in-memory table of pairs -> the same rows with ``score`` and ``prob``.
- :func:`score_files`: the streaming job over files with any :class:`PairScorer` (tests pass a
  fake one): read batch by batch, score, write incrementally or keep a running top K, report.
- :func:`score_pairs`: loads the bundle and its :class:`~ncnc.scorer.engine.BatchScorer`, then runs
  :func:`score_files` and writes the report (``ncnc score`` calls this).

:mod:`ncnc.scorer.ray_engine` runs the same :class:`ScoringJob` on partitions of the input in Ray
actors (``ncnc score --engine ray``), with the same :class:`OutputSpec` and report.

Output columns: ``src``, ``dst`` (original ids, in the graph's id dtype: Int64 or String),
``score`` (the logit, Float32), ``prob`` (``sigmoid(score)``, Float32), and with a top K ``rank``
(Int64, 1 = best). Without a top K, rows keep input order (files in the order given, folders and
globs sorted by name, rows in file order). With a top K the rows are sorted by rank (globally), or
by source and rank (``per_source``); see :mod:`ncnc.scorer.ranking` for the tie rule: a higher score
first, equal scores by input position, the earlier first.
"""

from __future__ import annotations

import itertools
import json
import resource
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm.auto import tqdm

from ncnc.core.device import resolve_device
from ncnc.core.errors import InputError
from ncnc.core.ids import IdMap
from ncnc.scorer.ranking import RANK, RunningTopK
from ncnc.scorer.resume import Chunk, ResumeStore, job_fingerprint
from ncnc.scorer.stream import (
    PAIR_COLUMNS,
    AtomicParquetWriter,
    PairBatch,
    check_no_nulls,
    expand_inputs,
    inspect_pair_files,
    iter_pair_batches,
    refuse_overwriting,
)
from ncnc.triton_kernels.completion import reproducible_sigmoid

DEFAULT_BATCH_SIZE = 65536
DEFAULT_RESUME_EVERY = 1 << 20
OnUnknown = Literal["error", "skip"]
SKIPPED_UNKNOWN = "unknown_id"  # reason key in the report's "skipped"
ROW = "row"


class PairScorer(Protocol):
    """What the job needs of a scorer (:class:`ncnc.scorer.engine.BatchScorer` is one)."""

    def score_logits(self, pairs: torch.Tensor) -> torch.Tensor:
        """``[B, 2]`` int64 node indices -> ``[B]`` float32 logits on the CPU."""
        ...


class FrameWriter(Protocol):
    """Where a job puts scored rows (:class:`~ncnc.scorer.stream.AtomicParquetWriter` is one)."""

    def write(self, frame: pl.DataFrame) -> None:
        """Append ``frame`` (the job's output columns)."""
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
    # Not np.exp: its vectorised and scalar paths differ in the last bit, so a pair's prob
    # would depend on its place in the batch.
    prob = reproducible_sigmoid(torch.from_numpy(logits)).to(torch.float32).numpy()
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
                progress: bool = True, resume: bool = False,
                resume_every: int = DEFAULT_RESUME_EVERY,
                job_key: Mapping[str, Any] | None = None) -> dict[str, Any]:
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
        resume: keep finished work in ``.<out name>.resume`` beside ``out`` (committed every
            ``resume_every`` input rows) and continue from the work a killed or failed run of the
            same job left there; see :mod:`ncnc.scorer.resume`. The output is the same as without.
        resume_every: input rows per committed chunk (rounded up to whole batches).
        job_key: what else identifies the job for ``resume`` (e.g. the bundle's checksum).

    Returns:
        The report: ``inputs``, ``output``, ``rows_read``, ``rows_scored``, ``rows_skipped``,
        ``skipped`` (reason -> count), ``rows_written``, ``rows_resumed`` (input rows whose work
        an earlier run had finished), ``top_k``, ``per_source``, ``batch_size``, ``seconds``,
        ``pairs_per_second`` (rows this run scored), ``peak_rss_mib``.

    Raises:
        InputError: bad paths, files, columns, nulls, id types or (with ``on_unknown="error"``)
            unknown ids, or ``out`` is one of the inputs. Nothing is written to ``out`` then.
    """
    check_options(top_k, per_source, batch_size)
    if resume_every < 1:
        raise InputError(f"--resume-every must be at least 1, got {resume_every}")
    started = time.perf_counter()
    out = Path(out)
    files, row_counts = open_inputs(pairs, out, id_map)
    job = ScoringJob(scorer, OutputSpec(id_map, top_k, per_source), on_unknown)
    with tqdm(total=sum(row_counts), unit="pairs", unit_scale=True, desc="score",
              disable=not progress, file=sys.stderr) as bar:
        job.bar = bar
        if resume:
            options = {**(job_key or {}), "top_k": top_k, "per_source": per_source,
                       "batch_size": batch_size, "on_unknown": on_unknown,
                       "resume_every": resume_every, "schema": str(job.output.schema)}
            rows_resumed, rows_scored, rows_written = _score_resumable(
                job, files, row_counts, out, batch_size, resume_every,
                job_fingerprint(files, options))
        else:
            rows_resumed = 0
            with AtomicParquetWriter(out, job.output.schema) as writer:
                _, rows_scored, kept = job.score(
                    iter_pair_batches(files, batch_size, row_counts=row_counts), writer)
                if kept is not None:
                    writer.write(job.output.ranked(kept))
            rows_written = writer.rows_written
    return job_report(files, out, row_counts, rows_scored, rows_written,
                      rows_resumed=rows_resumed, top_k=top_k, per_source=per_source,
                      batch_size=batch_size, seconds=time.perf_counter() - started)


def check_options(top_k: int | None, per_source: bool, batch_size: int) -> None:
    """Refuse options no engine can run (:class:`InputError` naming the flag)."""
    if per_source and top_k is None:
        raise InputError("--per-source needs --top-k")
    if top_k is not None and top_k < 1:
        raise InputError(f"--top-k must be at least 1, got {top_k}")
    if batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {batch_size}")


def open_inputs(pairs: Sequence[Path | str], out: Path, id_map: IdMap
                ) -> tuple[list[Path], list[int]]:
    """The job's input files in order and their row counts (from the footers only).

    Raises:
        InputError: a path names nothing, a file is not Parquet of ``src``, ``dst`` ids of
            ``id_map``'s kind, or ``out`` is a folder or one of the inputs.
    """
    files = expand_inputs(pairs)
    refuse_overwriting(out, files)
    return files, inspect_pair_files(files, id_kind_expected=id_map.kind)


def job_report(files: Sequence[Path], out: Path, row_counts: Sequence[int], rows_scored: int,
               rows_written: int, *, rows_resumed: int, top_k: int | None, per_source: bool,
               batch_size: int, seconds: float) -> dict[str, Any]:
    """The report of a finished job (fields: see :func:`score_files`); ``seconds`` of wall time."""
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


@dataclass(frozen=True)
class OutputSpec:
    """What a job writes: the columns, and which rows with a top K (every engine shares it)."""

    id_map: IdMap
    top_k: int | None = None
    per_source: bool = False

    @property
    def schema(self) -> pl.Schema:
        """Columns of the output file."""
        return output_schema(self.id_map, ranked=self.top_k is not None)

    @property
    def kept_schema(self) -> pl.Schema:
        """Columns of the rows a top K keeps: the output's, with the input position for rank."""
        return pl.Schema({**{k: v for k, v in self.schema.items() if k != RANK}, ROW: pl.Int64()})

    def new_top(self) -> RunningTopK | None:
        """An empty running top K of this output (None without a top K)."""
        if self.top_k is None:
            return None
        top = RunningTopK(self.top_k, by="src" if self.per_source else None)
        top.push(pl.DataFrame(schema=self.kept_schema))  # the columns, even of an empty stream
        return top

    def ranked(self, kept: pl.DataFrame) -> pl.DataFrame:
        """The output rows of the top K among ``kept`` rows (with ``rank``)."""
        top = self.new_top()
        assert top is not None
        top.push(kept)
        return top.result().select(self.schema.names())


@dataclass
class ScoringJob:
    """The scoring of one job, shared by the direct, the resumable and the Ray paths."""

    scorer: PairScorer
    output: OutputSpec
    on_unknown: OnUnknown
    bar: Any = None

    def score(self, batches: Iterable[PairBatch], writer: FrameWriter
              ) -> tuple[int, int, pl.DataFrame | None]:
        """Score ``batches``: every row goes to ``writer``, or with a top K only the kept rows
        are returned (columns :attr:`OutputSpec.kept_schema`).

        Returns (rows read, rows scored, kept rows or None).
        """
        top = self.output.new_top()
        rows_read = rows_scored = 0
        for batch in batches:
            frame = batch.frame
            if top is not None:
                frame = frame.with_columns(
                    pl.int_range(batch.row, batch.row + frame.height, dtype=pl.Int64).alias(ROW))
            scored = score_table(self.scorer, self.output.id_map, frame, what=batch.what,
                                 on_unknown=self.on_unknown)
            rows_read += frame.height
            rows_scored += scored.height
            if top is not None:
                top.push(scored.select(self.output.kept_schema.names()))
            else:
                writer.write(scored)
            if self.bar is not None:
                self.bar.update(frame.height)
        return rows_read, rows_scored, None if top is None else top.kept()


def _score_resumable(job: ScoringJob, files: Sequence[Path], row_counts: Sequence[int], out: Path,
                     batch_size: int, resume_every: int, fingerprint: str) -> tuple[int, int, int]:
    """Score chunk by chunk into the resume folder, then assemble ``out`` from the chunks.

    Returns (rows resumed, rows scored, rows written).
    """
    with ResumeStore(out, fingerprint) as store:
        rows_resumed = store.end_row
        job.bar.update(rows_resumed)
        batches = iter_pair_batches(files, batch_size, start_row=rows_resumed,
                                    row_counts=row_counts)
        output = job.output
        chunk_schema = output.schema if output.top_k is None else output.kept_schema
        for index, group in itertools.groupby(batches, key=lambda b: b.row // resume_every):
            first_row = store.end_row
            with AtomicParquetWriter(store.chunk_path(index), chunk_schema) as writer:
                read, scored, kept = job.score(group, writer)
                if kept is not None:
                    writer.write(kept)
            store.commit(Chunk(index, first_row, first_row + read, scored))
        with AtomicParquetWriter(out, output.schema) as writer:
            chunk_files = [store.chunk_path(chunk.index) for chunk in store.chunks]
            if output.top_k is None:
                for path in chunk_files:
                    for part in pq.ParquetFile(path).iter_batches(batch_size=1 << 19):
                        writer.write(pl.DataFrame(pl.from_arrow(part)))
            else:
                kept = pl.concat([pl.read_parquet(path) for path in chunk_files]
                                 or [pl.DataFrame(schema=output.kept_schema)])
                writer.write(output.ranked(kept))
        rows_scored = store.rows_scored
    store.remove()
    return rows_resumed, rows_scored, writer.rows_written


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
    resume: bool = False
    resume_every: int = DEFAULT_RESUME_EVERY


def score_pairs(request: ScoreRequest) -> dict[str, Any]:
    """Load the bundle, score ``request.pairs`` into ``request.out``; return (and write) the report.

    The report is :func:`score_files`' plus ``bundle`` and ``device``; with ``request.report`` it
    is also written there as JSON, after the output is in place.
    """
    from ncnc.scorer.bundle import load_bundle
    from ncnc.scorer.engine import BatchScorer

    check_report_path(request)
    on_cpu = resolve_device(request.device).type == "cpu"
    bundle = load_bundle(Path(request.bundle), huge_pages=on_cpu)
    scorer = BatchScorer(bundle, device=request.device)
    report = score_files(
        scorer, bundle.id_map, request.pairs, request.out, top_k=request.top_k,
        per_source=request.per_source, batch_size=request.batch_size,
        on_unknown=request.on_unknown, progress=request.progress, resume=request.resume,
        resume_every=request.resume_every, job_key={"bundle": bundle.checksum},
    )
    return publish_report(request, str(getattr(scorer, "device", request.device)), report)


def check_report_path(request: ScoreRequest) -> None:
    """Refuse a ``--report`` that would overwrite ``--out``."""
    if request.report is not None and Path(request.report).resolve() == Path(request.out).resolve():
        raise InputError(f"--report {request.report}: is the same file as --out")


def publish_report(request: ScoreRequest, device: str, report: dict[str, Any]) -> dict[str, Any]:
    """``report`` with ``bundle`` and ``device`` first; also written to ``request.report``."""
    report = {"bundle": str(request.bundle), "device": device, **report}
    if request.report is not None:
        Path(request.report).parent.mkdir(parents=True, exist_ok=True)
        Path(request.report).write_text(json.dumps(report, indent=2) + "\n")
    return report
