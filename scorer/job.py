"""What ``ncnc score`` does: pairs from Parquet through the engine into (ranked) Parquet.

A request passes each room once, in the order data flows:

1. inputs (:mod:`ncnc.scorer.inputs`): paths expanded and every file checked up front, then
   batches of ``src``, ``dst`` whose ids are mapped to node indices;
2. the engine (:class:`~ncnc.scorer.engine.BatchScorer`, or any :class:`PairScorer`): node-index
   pairs -> logits;
3. outputs (:mod:`ncnc.scorer.outputs`): ``score`` and ``prob`` added, every row written or a
   running top K kept, the report; the output file and the report are staged and published
   together (:class:`ncnc.core.files.Publication`), so a failed run leaves both as they were.

:func:`score_files` is the streaming job (any engine: tests pass a fake one);
:meth:`ncnc.scorer.Scorer.score_parquet` runs it with a bundle's engine, and
:mod:`ncnc.scorer.ray_engine` runs the same :class:`ScoringJob` on partitions in Ray actors,
through the same :func:`publish_job`.
"""

from __future__ import annotations

import dataclasses
import itertools
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import torch
from tqdm.auto import tqdm

from ncnc.core.errors import InputError
from ncnc.core.files import Publication, refuse_outputs_over_inputs
from ncnc.core.ids import IdMap
from ncnc.scorer.explain import check_explain, explain_rows
from ncnc.scorer.inputs import (
    OnUnknown,
    PairBatch,
    PairInputs,
    iter_pair_batches,
    node_pairs,
    open_inputs,
)
from ncnc.scorer.outputs import (
    GROUP,
    ROW,
    OutputSpec,
    ParquetRowWriter,
    job_report,
    with_scores,
    write_json,
)
from ncnc.scorer.resume import Chunk, ResumeStore, job_fingerprint

DEFAULT_BATCH_SIZE = 65536
DEFAULT_RESUME_EVERY = 1 << 20


class PairScorer(Protocol):
    """What the job needs of an engine (:class:`ncnc.scorer.engine.BatchScorer` is one)."""

    def score_logits(self, pairs: torch.Tensor) -> torch.Tensor:
        """``[B, 2]`` int64 node indices -> ``[B]`` float32 logits on the CPU."""
        ...


class FrameWriter(Protocol):
    """Where a job puts scored rows (:class:`~ncnc.scorer.outputs.ParquetRowWriter` is one)."""

    def write(self, frame: pl.DataFrame) -> None:
        """Append ``frame`` (the job's output columns)."""
        ...


def check_options(top_k: int | None, per_source: bool, batch_size: int,
                  explain: int | None = None) -> None:
    """Refuse options no engine can run (:class:`InputError` naming the flag)."""
    if per_source and top_k is None:
        raise InputError("--per-source needs --top-k")
    if explain is not None and top_k is None:
        raise InputError("--explain needs --top-k: only the rows a top K keeps are explained")
    check_explain(explain)
    if top_k is not None and top_k < 1:
        raise InputError(f"--top-k must be at least 1, got {top_k}")
    if batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {batch_size}")


def score_table(scorer: PairScorer, id_map: IdMap, frame: pl.DataFrame, *, what: str = "pairs",
                on_unknown: OnUnknown = "error", explain: int | None = None) -> pl.DataFrame:
    """Score one in-memory polars frame of pairs given by original node ids.

    Args:
        scorer: maps ``[B, 2]`` node indices to ``[B]`` logits.
        id_map: the bundle's ids (``bundle.id_map``).
        frame: columns ``src`` and ``dst`` (ids of the graph's kind), without nulls; other
            columns pass through unchanged.
        what: names the input in error messages, e.g. ``"pairs file x.parquet"``.
        on_unknown: ``"error"`` raises on ids that are not nodes of the graph; ``"skip"`` drops
            those rows (the caller counts them as ``frame rows - result rows``).
        explain: also list the ``explain`` best reasons of every row (``because``; the scorer
            must be a :class:`ncnc.scorer.explain.PairExplainer`).

    Returns:
        The rows of ``frame`` (in order; ``src``, ``dst`` cast to ``id_map``'s dtype) plus
        ``score`` (logit, Float32), ``prob`` (``sigmoid(score)``, Float32) and with ``explain``
        ``because``.

    Raises:
        InputError: a column is missing or holds nulls or ids of the other kind, or (with
            ``on_unknown="error"``) an id is unknown.
    """
    pairs, known = node_pairs(frame, id_map, what=what, on_unknown=on_unknown)
    if known is not None:
        frame = frame.filter(pl.Series(known))
    scored = with_scores(frame, scorer.score_logits(torch.from_numpy(pairs)), id_map)
    if explain is None:
        return scored
    check_explain(explain)
    return explain_rows(scorer, id_map, scored, explain)


def prepare_host_path(id_map: IdMap) -> None:
    """Build what every batch of a job uses before the first batch needs it: the id map's index
    (its first lookup builds it) and the compiled sigmoid of :func:`with_scores`, whose first
    call loads numba's runtime (about 0.6 s, during which the pipeline's threads would wait).
    A scorer calls it once when it is made (:class:`ncnc.scorer.Scorer`, each Ray actor)."""
    first = id_map.ids.head(1)
    id_map.indices(first, what="the id map")
    with_scores(pl.DataFrame({"src": first, "dst": first}),
                np.zeros(first.len(), dtype=np.float32), id_map)


_DONE = object()  # the end of a pipeline stage's stream


def run_pipeline(items: Iterable[Any], transform: Callable[[Any], Any],
                 consume: Callable[[Any], None], *, depth: int = 2) -> None:
    """``consume(transform(item))`` for every item, in order, three stages overlapping: a
    thread draws ``items`` (reading, id mapping), the caller's thread transforms (the engine), a
    thread consumes (writing, ranking). Queues of ``depth`` items bound the memory; polars,
    pyarrow, torch, onnxruntime and the numba kernels release the GIL, so the stages really run
    at once.

    The first error of any stage (a BaseException too: Ctrl-C arrives in the caller's thread)
    stops the others and is raised here, after both threads have ended.
    """
    stop = threading.Event()
    drawn: queue.Queue = queue.Queue(depth)
    done: queue.Queue = queue.Queue(depth)
    errors: list[BaseException] = []

    def put(channel: queue.Queue, item: Any) -> bool:
        while not stop.is_set():
            try:
                channel.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def get(channel: queue.Queue) -> Any:
        while True:
            try:
                return channel.get(timeout=0.05)
            except queue.Empty:
                if stop.is_set():
                    return _DONE

    def draw() -> None:
        try:
            for item in items:
                if not put(drawn, item):
                    return
        except BaseException as error:  # handed to the caller's thread
            errors.append(error)
            stop.set()
        put(drawn, _DONE)

    def drain() -> None:
        try:
            while (item := get(done)) is not _DONE:
                consume(item)
        except BaseException as error:  # handed to the caller's thread
            errors.append(error)
            stop.set()

    threads = [threading.Thread(target=draw, name="ncnc-read", daemon=True),
               threading.Thread(target=drain, name="ncnc-write", daemon=True)]
    for thread in threads:
        thread.start()
    try:
        while (item := get(drawn)) is not _DONE:
            if not put(done, transform(item)):
                break
        put(done, _DONE)
    except BaseException as error:
        errors.append(error)
        stop.set()
    finally:
        for thread in threads:
            while thread.is_alive():
                thread.join(timeout=0.05)
                if errors:
                    stop.set()
    if errors:
        raise errors[0]


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
        are returned (columns :attr:`OutputSpec.kept_schema`; explained, with ``explain``, once
        they are known). Reading and id mapping of the next batch and writing (or ranking) of
        the previous one overlap with the scoring of each batch (:func:`run_pipeline`); the
        order of rows is the input's.

        Returns (rows read, rows scored, kept rows or None).
        """
        top = self.output.new_top(self.output.scored_schema)
        id_map, per_source = self.output.id_map, self.output.per_source
        rows = {"read": 0, "scored": 0}

        def mapped() -> Iterator[tuple[PairBatch, pl.DataFrame, np.ndarray]]:
            for batch in batches:
                frame = batch.frame
                if top is not None:
                    frame = frame.hstack([pl.Series(ROW, np.arange(
                        batch.row, batch.row + frame.height, dtype=np.int64))])
                pairs, known = node_pairs(frame, id_map, what=batch.what,
                                          on_unknown=self.on_unknown)
                yield batch, frame if known is None else frame.filter(pl.Series(known)), pairs

        def scored(item: tuple[PairBatch, pl.DataFrame, np.ndarray]) -> pl.DataFrame:
            batch, frame, pairs = item
            frame = with_scores(frame, self.scorer.score_logits(torch.from_numpy(pairs)), id_map)
            rows["read"] += batch.frame.height
            rows["scored"] += frame.height
            if self.bar is not None:
                self.bar.update(batch.frame.height)
            if top is not None and per_source:
                frame = frame.hstack([pl.Series(GROUP, pairs[:, 0], dtype=pl.Int64)])
            return frame

        def kept_or_written(frame: pl.DataFrame) -> None:
            if top is not None:
                top.push(frame.select(self.output.scored_schema.names()))
            else:
                writer.write(frame)

        run_pipeline(mapped(), scored, kept_or_written)
        return rows["read"], rows["scored"], None if top is None else self.explained(top.kept())

    def explained(self, kept: pl.DataFrame) -> pl.DataFrame:
        """``kept`` plus ``because`` when the output explains (the scorer explains)."""
        if self.output.explain is None:
            return kept
        return explain_rows(self.scorer, self.output.id_map, kept, self.output.explain)


@dataclass(frozen=True)
class JobCounts:
    """What a finished job did: input rows an earlier run had finished, rows scored, rows
    written, and report fields only the engine knows (e.g. Ray's worker count)."""

    rows_resumed: int
    rows_scored: int
    rows_written: int
    fields: Mapping[str, Any] = field(default_factory=dict)


def publish_job(inputs: PairInputs, out: Path, *, report: Path | None,
                report_fields: Mapping[str, Any], top_k: int | None, per_source: bool,
                batch_size: int, progress: bool, reads: Sequence[Path] = (),
                run: Callable[[Path, tqdm], JobCounts]) -> dict[str, Any]:
    """Stage ``out`` (and ``report``), let ``run`` write the data at the staged path, write the
    report, and publish both together: the skeleton every engine shares.

    ``reads``: folders the job reads besides its inputs (the bundle): no output may lie inside
    them. ``report_fields`` come first in the report (bundle, device, engine, ...).

    Raises:
        InputError: ``out`` is a folder, an input, the report, or inside a folder the job reads;
            another run is writing ``out`` or ``report``.
    """
    started = time.perf_counter()
    out = Path(out)
    if out.is_dir():
        raise InputError(f"output {out}: is a folder; give a file name such as "
                         f"{out / 'out.parquet'}")
    outputs = [out] if report is None else [out, Path(report)]
    if report is not None and Path(report).resolve() == out.resolve():
        raise InputError(f"--report {report}: is the same file as --out")
    refuse_outputs_over_inputs(outputs, inputs.files, reads)
    with Publication() as publication:
        data = publication.file(out)
        report_file = publication.file(Path(report)) if report is not None else None
        with tqdm(total=inputs.rows, unit="pairs", unit_scale=True, desc="score",
                  disable=not progress, file=sys.stderr) as bar:
            counts = run(data, bar)
        document = {**report_fields, **counts.fields, **job_report(
            inputs.files, out, inputs.row_counts, counts.rows_scored, counts.rows_written,
            rows_resumed=counts.rows_resumed, top_k=top_k, per_source=per_source,
            batch_size=batch_size, seconds=time.perf_counter() - started)}
        if report_file is not None:
            write_json(report_file, document)
        publication.publish()
    return document


def score_files(scorer: PairScorer, id_map: IdMap, pairs: Sequence[Path | str], out: Path, *,
                top_k: int | None = None, per_source: bool = False, explain: int | None = None,
                batch_size: int = DEFAULT_BATCH_SIZE, on_unknown: OnUnknown = "error",
                progress: bool = True, resume: bool = False,
                resume_every: int = DEFAULT_RESUME_EVERY, report: Path | None = None,
                report_fields: Mapping[str, Any] | None = None, reads: Sequence[Path] = (),
                job_key: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Stream the pairs of ``pairs`` through ``scorer`` into the Parquet file ``out``.

    Args:
        scorer: maps ``[B, 2]`` node indices to ``[B]`` logits.
        id_map: the bundle's node ids.
        pairs: Parquet files, folders (their ``*.parquet``, sorted) or glob patterns (a path that
            exists is never read as a pattern), each file with columns ``src``, ``dst``.
        out: the result file; staged and published with the report only when the whole job
            succeeded (on failure an earlier ``out`` is left as it was).
        top_k: keep only the ``top_k`` best pairs (with ``per_source``, of each ``src``) and add
            ``rank``; ``None`` writes every pair in input order.
        per_source: rank within each source node instead of globally (needs ``top_k``).
        explain: add ``because``, the ``explain`` best reasons of each row written (needs
            ``top_k``, and a scorer that is a :class:`ncnc.scorer.explain.PairExplainer`); see
            :mod:`ncnc.scorer.explain`. Only kept rows are explained: with ``resume``, the kept
            rows of each chunk.
        batch_size: rows read, scored and written at a time; memory grows with it.
        on_unknown: ``"error"`` or ``"skip"`` rows whose ids are not nodes of the graph.
        progress: show a progress bar (pairs/s) on stderr.
        resume: keep finished work in ``.<out name>.resume`` beside ``out`` (committed every
            ``resume_every`` input rows) and continue from the work a killed or failed run of the
            same job left there; see :mod:`ncnc.scorer.resume`. The output is the same as without.
        resume_every: input rows per committed chunk (rounded up to whole batches).
        report: also write the report there as JSON (published with ``out``).
        report_fields: fields put first in the report (e.g. ``bundle``, ``device``).
        reads: folders the job reads (the bundle): no output may lie inside them.
        job_key: what else identifies the job for ``resume`` (e.g. the bundle's checksum).

    Returns:
        The report: ``report_fields``, then ``inputs``, ``output``, ``rows_read``,
        ``rows_scored``, ``rows_skipped``, ``skipped`` (reason -> count), ``rows_written``,
        ``rows_resumed`` (input rows whose work an earlier run had finished), ``top_k``,
        ``per_source``, ``batch_size``, ``seconds``, ``pairs_per_second`` (rows this run
        scored), ``peak_rss_mib``.

    Raises:
        InputError: bad paths, files, columns, nulls, id types or (with ``on_unknown="error"``)
            unknown ids, or an output that would write over an input. Nothing is written then.
    """
    check_options(top_k, per_source, batch_size, explain)
    if resume_every < 1:
        raise InputError(f"--resume-every must be at least 1, got {resume_every}")
    out = Path(out)
    inputs = open_inputs(pairs, id_map)
    job = ScoringJob(scorer, OutputSpec(id_map, top_k, per_source, explain), on_unknown)
    fingerprint = None
    if resume:
        options = {**(job_key or {}), "top_k": top_k, "per_source": per_source,
                   "batch_size": batch_size, "on_unknown": on_unknown,
                   "resume_every": resume_every, "schema": str(job.output.schema),
                   **({"explain": explain} if explain is not None else {})}
        fingerprint = job_fingerprint(inputs.files, options)

    def run(data: Path, bar: tqdm) -> JobCounts:
        job.bar = bar
        if fingerprint is not None:
            counts = _score_resumable(job, inputs, out, data, batch_size, resume_every,
                                      fingerprint)
        else:
            with ParquetRowWriter(data, job.output.schema) as writer:
                _, rows_scored, kept = job.score(iter_pair_batches(
                    inputs.files, batch_size, row_counts=inputs.row_counts), writer)
                if kept is not None:
                    writer.write(job.output.ranked(kept, merged=True))
            counts = JobCounts(0, rows_scored, writer.rows_written)
        # The engine's own figures (e.g. the memo's hit rate), when it keeps any.
        return dataclasses.replace(counts, fields=dict(getattr(scorer, "stats", {})))

    if explain is not None:
        report_fields = {**(report_fields or {}), "explain": explain}
    document = publish_job(inputs, out, report=report, report_fields=report_fields or {},
                           top_k=top_k, per_source=per_source, batch_size=batch_size,
                           progress=progress, reads=reads, run=run)
    if fingerprint is not None:
        ResumeStore.discard(out)  # the output is in place: the finished work is no longer needed
    return document


def _score_resumable(job: ScoringJob, inputs: PairInputs, out: Path, data: Path,
                     batch_size: int, resume_every: int, fingerprint: str) -> JobCounts:
    """Score chunk by chunk into the resume folder of ``out``, then assemble the output at
    ``data`` (its staged path) from the chunks."""
    output = job.output
    chunk_schema = output.schema if output.top_k is None else output.kept_schema
    with ResumeStore(out, fingerprint) as store:
        rows_resumed = store.end_row
        job.bar.update(rows_resumed)
        batches = iter_pair_batches(inputs.files, batch_size, start_row=rows_resumed,
                                    row_counts=inputs.row_counts)
        for index, group in itertools.groupby(batches, key=lambda b: b.row // resume_every):
            first_row = store.end_row
            with store.writing_chunk(index) as path:
                with ParquetRowWriter(path, chunk_schema) as writer:
                    read, scored, kept = job.score(group, writer)
                    if kept is not None:
                        writer.write(kept)
            store.commit(Chunk(index, first_row, first_row + read, scored))
        chunk_files = [store.chunk_path(chunk.index) for chunk in store.chunks]
        with ParquetRowWriter(data, output.schema) as writer:
            if output.top_k is None:
                for path in chunk_files:
                    for part in pq.ParquetFile(path).iter_batches(batch_size=1 << 19):
                        writer.write(pl.DataFrame(pl.from_arrow(part)))
            else:
                kept = pl.concat([pl.read_parquet(path) for path in chunk_files]
                                 or [pl.DataFrame(schema=output.kept_schema)])
                writer.write(output.ranked(kept))
        return JobCounts(rows_resumed, store.rows_scored, writer.rows_written)
