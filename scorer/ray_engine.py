"""Scale-out: the ``ncnc score`` scorer on Ray Data, with the same output.

Two entry points, both on :func:`ncnc.scorer.job.score_table` and :class:`ncnc.scorer.engine.BatchScorer`
(the code path of ``ncnc score``; nothing here scores a pair by itself):

- :class:`ScoreBatches`: a callable class for ``Dataset.map_batches`` that loads a bundle once per
  actor and scores any Arrow or pandas batch of ``src``, ``dst`` (other columns pass through), for
  pipelines of your own::

      ds = ray.data.read_parquet("pairs/").map_batches(
          ScoreBatches, fn_constructor_args=("bundle/",), batch_format="pyarrow",
          concurrency=4, num_gpus=1)

- :func:`score_files_ray` (``ncnc score --engine ray``): the whole job of
  :func:`ncnc.scorer.job.score_files` on a Ray cluster. Same inputs, same single Parquet file (same
  rows, order and score bits, ties included), same report plus ``engine`` and ``num_workers``.

How the job keeps the output identical
--------------------------------------
Row positions. The tie rule ranks equal scores by global input position (files in the order
given, rows in file order). ``ray.data.read_parquet`` tells a row's file (``include_paths``) but
not its place in the file, and numbering its blocks would take a second pass over the input. So
the driver plans the partitions itself: it checks the inputs like the local scorer
(:func:`ncnc.scorer.inputs.open_inputs`, footers only) and cuts them into partitions of consecutive rows
``[start, stop)`` of that global numbering. A partition lies in one file and starts at a multiple
of ``--batch-size`` in it, so its batches are the local scorer's. The dataset is the list of
partitions (``ray.data.from_items``); each actor reads its partitions with
:func:`ncnc.scorer.inputs.iter_pair_batches` (``start_row``, ``stop_row``) and scores them with
:class:`ncnc.scorer.job.ScoringJob`: the local job's reader, checks (nulls named by file row, damaged
files caught by their footer counts, unknown ids) and batches, and every row knows its position.
The price: pairs files and bundle must be readable at the same path on every node.

Output. The results come back to the driver through ``Dataset.iter_batches`` in partition order
(``preserve_order``, and the driver checks it), and the driver writes them as they arrive to
the output's staged path (:class:`ncnc.scorer.outputs.ParquetRowWriter`): one file, published
with the report only when every partition succeeded (:func:`ncnc.scorer.job.publish_job`).
Memory stays bounded: Ray's streaming executor keeps a few partitions in flight (spilling to
disk past the object store) and the driver holds one at a time. Ray's
``write_parquet`` is not used: it writes a file per block, and gathering those into the one output
file would read and write every row a second time; here each row is written once.

Top K. An actor returns only the kept rows of its partition's :class:`ncnc.scorer.ranking.RunningTopK`
(at most K, or K per source, with their ``row`` position); the driver pushes them into one more
RunningTopK, which gives the top K of all rows because the tie rule's key (score, position) is
global. No shuffle and no sort of all scores. With ``--explain`` each actor explains its
partition's kept rows (:meth:`ncnc.scorer.job.ScoringJob.score` does) and ``because`` travels with
them: a pair's explanation does not depend on its partition, so the output is the local one; the
explained rows are at most K (per source) of each partition, explained in parallel.

Resources. With GPUs in the cluster (and ``--device`` not ``cpu``) each actor takes one
(``num_gpus=1``) and scores on CUDA; otherwise each takes one CPU and runs one thread (torch,
onnxruntime). Actors map the bundle's files rather than copying them into huge pages as
``ncnc score`` does: the actors of a machine share one copy of the tables through the page cache.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
import pyarrow as pa
import torch
from tqdm.auto import tqdm

from ncnc.core.errors import InputError
from ncnc.core.ids import IdMap
from ncnc.core.tables import as_polars
from ncnc.scorer.bundle import BundleError, load_bundle
from ncnc.scorer.engine import BatchScorer, load_head
from ncnc.scorer.explain import refuse_unexplainable
from ncnc.scorer.inputs import OnUnknown, PairInputs, iter_pair_batches, open_inputs
from ncnc.scorer.job import (
    DEFAULT_BATCH_SIZE,
    JobCounts,
    ScoringJob,
    check_options,
    prepare_host_path,
    publish_job,
    score_table,
)
from ncnc.scorer.outputs import OutputSpec, ParquetRowWriter

if TYPE_CHECKING:
    import ray.data

INSTALL_HINT = "pip install 'ncnc-toolchain[ray]'"
PART = "_part"  # partition number of a result row: the driver checks the order with it
SCORED = "_scored"  # rows scored in the row's partition: the report's count, kept or not
ERROR = "_error"  # the InputError message of a partition that failed (its only column but PART)
MAX_PARTITION_BATCHES = 16  # partitions of at most 16 batches: ~1M rows at the default size


@dataclass(frozen=True)
class RayOptions:
    """How the job runs on Ray.

    Attributes:
        address: the cluster to join (``ray.init(address=...)``, e.g. ``"auto"`` or
            ``"ray://head:10001"``); None starts a local Ray, or joins the one ``RAY_ADDRESS``
            names. A Ray already initialised in this process is used as it is.
        num_workers: scoring actors; None: one per GPU of the cluster, else one per CPU.
        partition_rows: input rows per partition (rounded up to whole batches); None: about four
            partitions per worker, of 1 to 16 batches.
    """

    address: str | None = None
    num_workers: int | None = None
    partition_rows: int | None = None


@dataclass(frozen=True)
class Partition:
    """Rows ``[start, stop)`` of the input, numbered over all files in order."""

    index: int
    start: int
    stop: int


def plan_partitions(row_counts: Sequence[int], batch_size: int, partition_rows: int
                    ) -> list[Partition]:
    """Cut files of ``row_counts`` rows into partitions of at most ``partition_rows`` rows.

    ``partition_rows`` must be a multiple of ``batch_size``: each partition then lies in one file
    and starts at a batch boundary of it. Empty files give no partition.
    """
    if partition_rows % batch_size:
        raise ValueError(f"partition_rows {partition_rows} is not a multiple of {batch_size}")
    parts: list[Partition] = []
    first = 0  # global number of the file's first row
    for count in row_counts:
        for start in range(first, first + count, partition_rows):
            parts.append(Partition(len(parts), start, min(start + partition_rows, first + count)))
        first += count
    return parts


def default_partition_rows(total_rows: int, batch_size: int, workers: int) -> int:
    """About four partitions per worker (load balance), of 1 to 16 whole batches."""
    batches = -(-total_rows // (4 * workers * batch_size))
    return batch_size * min(max(batches, 1), MAX_PARTITION_BATCHES)


def _load(bundle: str | Path, device: str, threads: int | None, *,
          verify_key: str | Path | None = None, checksum: str | None = None
          ) -> tuple[BatchScorer, IdMap]:
    """The actor's scorer. ``checksum``: the manifest digest the driver verified; a bundle
    changed since (another manifest, or a file unlike its checksum) is refused."""
    if threads is not None:
        torch.set_num_threads(threads)  # also the CPU common-neighbour kernels' thread count
    # Mapped, not copied: the actors on one machine share one copy of the tables.
    loaded = load_bundle(Path(bundle), huge_pages=False, verify_key=verify_key)
    if checksum is not None and loaded.checksum != checksum:
        raise BundleError(f"bundle {bundle}: changed since the driver verified it (manifest "
                          f"digest {loaded.checksum}, verified {checksum})")
    prepare_host_path(loaded.id_map)
    return BatchScorer(loaded, device, threads=threads), loaded.id_map


class ScoreBatches:
    """``Dataset.map_batches`` callable: score batches of pairs with a bundle loaded once per actor.

    Args:
        bundle: bundle directory, readable at this path where the actor runs.
        device: ``auto``, ``cpu`` or ``cuda`` (give the actors ``num_gpus=1`` for CUDA).
        on_unknown: ``"error"`` or ``"skip"`` rows whose ids are not nodes of the graph.
        threads: torch and onnxruntime threads of the actor (None: their defaults).
        verify_key: refuse the bundle unless its signature verifies with this PEM public key
            (each actor verifies: the key and the ``[sign]`` extra must be there on every node).

    A batch (``batch_format="pyarrow"`` or ``"pandas"``) holds ``src``, ``dst`` and any other
    columns; the result is the same kind of batch with the same rows (less skipped ones) plus
    ``score`` (Float32 logit) and ``prob`` (Float32), as :func:`ncnc.scorer.job.score_table` gives.
    """

    def __init__(self, bundle: str | Path, device: str = "auto", on_unknown: OnUnknown = "error",
                 threads: int | None = None, verify_key: str | Path | None = None) -> None:
        self.scorer, self.id_map = _load(bundle, device, threads, verify_key=verify_key)
        self.on_unknown = on_unknown

    def __call__(self, batch: Any) -> Any:
        frame, kind = as_polars(batch, what="batch")
        if kind == "polars":
            raise TypeError("ScoreBatches takes Arrow or pandas batches: pass "
                            "batch_format='pyarrow' or 'pandas' to map_batches")
        scored = score_table(self.scorer, self.id_map, frame, what="batch",
                             on_unknown=self.on_unknown)
        return scored.to_pandas() if kind == "pandas" else _arrow(scored)


def _arrow(frame: pl.DataFrame) -> pa.Table:
    # Plain (large) strings rather than polars' string views, which parts of Ray cannot concat.
    return frame.to_arrow(compat_level=pl.CompatLevel.oldest())


@dataclass(frozen=True)
class _PartitionJob:
    """What every actor of one job needs (small: shipped to each actor)."""

    bundle: str
    checksum: str  # the manifest digest of the bundle the driver checked (and verified)
    files: tuple[str, ...]
    row_counts: tuple[int, ...]
    top_k: int | None
    per_source: bool
    explain: int | None
    on_unknown: OnUnknown
    batch_size: int
    device: str
    threads: int | None


@dataclass
class _Frames:
    """A :class:`ncnc.scorer.job.FrameWriter` that keeps the frames."""

    frames: list[pl.DataFrame] = field(default_factory=list)

    def write(self, frame: pl.DataFrame) -> None:
        self.frames.append(frame)


class _ScorePartitions:
    """The job's actor: partitions (``PART``, ``start``, ``stop``) in, their results out.

    A partition's result: its scored rows (no top K) or its kept top K rows (with ``row``), plus
    ``PART`` and ``SCORED`` columns; or, when the input is bad, one row of ``PART`` and ``ERROR``.
    Bad input is returned rather than raised: Ray would hand the driver a traceback text instead
    of the exception, and in partition order the driver reports the first error of the input,
    as the local scorer does.
    """

    def __init__(self, spec: _PartitionJob) -> None:
        scorer, id_map = _load(spec.bundle, spec.device, spec.threads, checksum=spec.checksum)
        self.spec = spec
        self.files = [Path(f) for f in spec.files]
        self.job = ScoringJob(scorer, OutputSpec(id_map, spec.top_k, spec.per_source,
                                                 spec.explain), spec.on_unknown)

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        (index,), (start,), (stop,) = batch[PART], batch["start"], batch["stop"]  # batch_size=1
        part = Partition(int(index), int(start), int(stop))
        try:
            return _arrow(self.score(part))
        except InputError as error:
            return pa.table({PART: [part.index], ERROR: [str(error)]})

    def score(self, part: Partition) -> pl.DataFrame:
        batches = iter_pair_batches(self.files, self.spec.batch_size, start_row=part.start,
                                    stop_row=part.stop, row_counts=self.spec.row_counts)
        rows = _Frames()
        _, scored, kept = self.job.score(batches, rows)
        if kept is None:
            kept = pl.concat(rows.frames) if rows.frames else pl.DataFrame(
                schema=self.job.output.schema)
        return kept.with_columns(pl.lit(part.index, pl.Int64).alias(PART),
                                 pl.lit(scored, pl.Int64).alias(SCORED))


def import_ray() -> Any:
    """The ``ray`` module with Ray Data, or :class:`InputError` saying how to install it."""
    try:
        import ray
        import ray.data  # needs the ray[data] extra (pandas, pyarrow), not plain ray
    except ImportError as exc:
        raise InputError(f"--engine ray needs Ray Data, which is not installed: {INSTALL_HINT}"
                         ) from exc
    return ray


def _workers(ray: Any, device: str, num_workers: int | None) -> tuple[bool, int]:
    """(score on GPUs, number of actors) for this cluster."""
    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 1))
    if device == "cuda" and not gpus:
        raise InputError("--device cuda: the Ray cluster has no GPU")
    use_gpu = gpus > 0 and device != "cpu"
    if num_workers is not None and num_workers < 1:
        raise InputError(f"--num-workers must be at least 1, got {num_workers}")
    return use_gpu, num_workers or max(1, gpus if use_gpu else cpus)


def _dataset(ray: Any, spec: _PartitionJob, parts: Sequence[Partition], workers: int,
             use_gpu: bool) -> ray.data.Dataset:
    items = [{PART: p.index, "start": p.start, "stop": p.stop} for p in parts]
    return ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        _ScorePartitions, fn_constructor_args=(spec,), batch_size=1, batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=workers), num_gpus=1 if use_gpu else 0,
        num_cpus=0 if use_gpu else 1)


def _results(ds: ray.data.Dataset, parts: Sequence[Partition], bar: tqdm
             ) -> Iterator[tuple[pl.DataFrame, int]]:
    """(result rows without ``PART``/``SCORED``, rows newly scored) in partition order."""
    last = -1
    for block in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        if ERROR in block.column_names:
            raise InputError(block[ERROR][0].as_py())
        frame = pl.DataFrame(pl.from_arrow(block))
        if frame.height == 0:
            continue
        numbers = frame[PART].unique(maintain_order=True).to_list()
        if numbers[0] < last or numbers != sorted(numbers):
            raise RuntimeError(f"Ray returned partition {numbers[0]} after {last}: out of order")
        # A partition's result may come split over several blocks: count it once.
        new = [n for n in numbers if n > last]
        scored = frame.filter(pl.col(PART).is_in(new)).unique(PART)[SCORED].sum()
        bar.update(sum(parts[n].stop - parts[n].start for n in new))
        last = numbers[-1]
        yield frame.drop(PART, SCORED), int(scored)


def score_files_ray(bundle: Path | str, pairs: Sequence[Path | str], out: Path | str, *,
                    top_k: int | None = None, per_source: bool = False,
                    explain: int | None = None,
                    batch_size: int = DEFAULT_BATCH_SIZE, on_unknown: OnUnknown = "error",
                    device: str = "auto", report: Path | str | None = None,
                    progress: bool = True, options: RayOptions = RayOptions(),
                    verify_key: Path | str | None = None) -> dict[str, Any]:
    """:func:`ncnc.scorer.job.score_files` on Ray (``ncnc score --engine ray``): the same output
    file and report (plus ``engine``, ``device`` and ``num_workers``); see the module docstring.

    ``bundle`` and the pairs files must be readable at these paths on every node. Inputs are
    checked on the driver before Ray starts; errors an actor finds (nulls, unknown ids, damaged
    files) come back as the same one-line :class:`InputError`, and nothing is written then.

    The bundle too is checked on the driver before Ray starts, as a local scorer checks it
    (manifest, checksums, arrays, head), and with ``verify_key`` its signature is verified
    there. The actors do not verify the signature (workers need neither the key nor the
    ``[sign]`` extra): each checks every file's sha256 and that the manifest's digest is the
    one the driver verified, so an actor scores the signed bytes or refuses.
    """
    ray = import_ray()
    check_options(top_k, per_source, batch_size, explain)
    bundle = Path(bundle)
    # Every check an actor will make, once here: a bad bundle is one line from the driver, not an
    # actor's traceback. The arrays are not kept (the driver scores nothing).
    checked = load_bundle(bundle, huge_pages=False, verify_key=verify_key)
    checked.check_arrays()
    load_head(checked.head_path, checked.spec, torch.device("cpu"), threads=1)
    if explain is not None:
        refuse_unexplainable(checked.spec.model)
    id_map = checked.id_map
    inputs = open_inputs(pairs, id_map)
    output = OutputSpec(id_map, top_k, per_source, explain)

    def run(data: Path, bar: tqdm) -> JobCounts:
        with _ray_session(ray, options.address):
            use_gpu, workers = _workers(ray, device, options.num_workers)
            parts = plan_partitions(inputs.row_counts, batch_size, _partition_rows(
                options, inputs, batch_size, workers))
            workers = max(1, min(workers, len(parts)))  # idle actors would each load the bundle
            spec = _PartitionJob(str(bundle.resolve()), checked.checksum,
                                 tuple(str(f.resolve()) for f in inputs.files),
                                 tuple(inputs.row_counts), top_k, per_source, explain,
                                 on_unknown, batch_size, "cuda" if use_gpu else "cpu",
                                 None if use_gpu else 1)
            results = (_results(_dataset(ray, spec, parts, workers, use_gpu), parts, bar)
                       if parts else iter(()))
            rows_scored, rows_written = _write(data, output, results)
        return JobCounts(0, rows_scored, rows_written, {"device": spec.device, "engine": "ray",
                                                        "num_workers": workers})

    return publish_job(inputs, Path(out), report=Path(report) if report is not None else None,
                       report_fields={"bundle": str(bundle),
                                      **({"explain": explain} if explain is not None else {})},
                       top_k=top_k,
                       per_source=per_source, batch_size=batch_size, progress=progress,
                       reads=checked.inputs, run=run)


def _partition_rows(options: RayOptions, inputs: PairInputs, batch_size: int,
                    workers: int) -> int:
    """Rows per partition: the option's, or the default, rounded up to whole batches."""
    rows = options.partition_rows or default_partition_rows(inputs.rows, batch_size, workers)
    return -(-rows // batch_size) * batch_size


@contextlib.contextmanager
def _ray_session(ray: Any, address: str | None) -> Iterator[None]:
    """Start Ray (and stop it after) unless this process has it already; while the job runs,
    Ray Data keeps results in order and shows no progress bars of its own."""
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 logging_level="WARNING")
    context = ray.data.DataContext.get_current()
    saved = context.execution_options.preserve_order, context.enable_progress_bars
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False  # the driver shows one bar
    try:
        yield
    finally:
        context.execution_options.preserve_order, context.enable_progress_bars = saved
        if started:
            ray.shutdown()


def _write(data: Path, output: OutputSpec, results: Iterator[tuple[pl.DataFrame, int]]
           ) -> tuple[int, int]:
    """Write ``results`` (in input order) at ``data`` (the output's staged path), ranked with a
    top K.

    Returns (rows scored, rows written).
    """
    rows_scored = 0
    with ParquetRowWriter(data, output.schema) as writer:
        top = output.new_top()
        for frame, scored in results:
            rows_scored += scored
            if top is None:
                writer.write(frame.select(output.schema.names()))
            else:
                top.push(frame.select(output.kept_schema.names()))
        if top is not None:
            writer.write(output.ranked(top.kept(), merged=True))
    return rows_scored, writer.rows_written
