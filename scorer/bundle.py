"""The bundle: a self-contained directory an exported model is scored from.

Files (every one listed in the manifest with its sha256):

====================  =============================================================================
``manifest.json``     format tag and version, what inference needs (model kind, depth, hidden
                      width, node count, calibration, cap), sha256 of every file, library
                      versions, the export's parity figures
``graph.safetensors`` the CSR graph the common-neighbour step reads: ``indptr`` [n+1] int64,
                      ``indices`` [nnz] int64, rows sorted
``tables.safetensors``the node tables the head reads: ``level0`` = encoder output ``h``,
                      ``level{k+1}`` = ``level{k} + xlin(level{k})`` (``x~`` of the paper)
``id_map.parquet``    node index -> original id (columns ``index``, ``id``)
``head.onnx``         the pair head ``(cn [B, d], xij [B, d]) -> logit [B]`` (GAE: ``xij`` only),
                      dynamic batch axis ``num_pairs``
``program.pt2``       ``torch.export`` program of the whole pair scorer, common-neighbour custom
                      ops included: ``(indptr, indices, level0.., pairs) -> logits``

``model.sig``          (with ``ncnc export --sign-key``) the model-signing signature of every other
                      file (:mod:`ncnc.scorer.signing`)
====================  =============================================================================

Format-version rule: ``format_version`` changes whenever a file's meaning or layout changes; a
reader refuses versions it does not know instead of guessing.
Loading never unpickles: JSON, safetensors, Parquet and ONNX only (``program.pt2`` is loaded only
on request, with ``torch.export.load``, which reads weights without pickle).

Nothing a bundle holds is trusted before it is checked, at a cost bounded by the files' sizes:
the manifest by its schema and digest (:mod:`ncnc.scorer.manifest`), every file's size and
sha256 by the manifest, the signature with ``verify_key``, the id map's row count from its footer
before it is read; the safetensors headers (read with a size limit, their shapes and dtypes
matched against the manifest before any array is allocated) and then the arrays themselves (the
CSR structure, finite tables) where they are read (:class:`Bundle`), on every path: huge pages,
mapped, CUDA. The head is checked by the batch engine (:mod:`ncnc.scorer.engine`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch import Tensor

from ncnc.core.errors import InputError, first_line
from ncnc.core.files import file_sha256
from ncnc.core.ids import IdMap
from ncnc.scorer.manifest import (
    BUNDLE_FILES,
    BUNDLE_FORMAT,
    DIGEST_FIELD,
    FORMAT_VERSION,
    GRAPH_FILE,
    HEAD_FILE,
    ID_MAP_FILE,
    MANIFEST,
    PROGRAM_FILE,
    SIGNATURE_FILE,
    TABLES_FILE,
    BundleError,
    check_manifest,
    is_bundle,
    parse_manifest,
    seal,
    strict_json,
)
from ncnc.triton_kernels import CSRGraph, huge_page_empty, validate_csr
from ncnc.triton_kernels.completion import Calibration
from ncnc.triton_kernels.pair_scoring import PairRule

if TYPE_CHECKING:
    from ncnc.scorer.api import Scorer

__all__ = ["GRAPH_FILE", "HEAD_FILE", "ID_MAP_FILE", "MANIFEST", "PROGRAM_FILE", "SIGNATURE_FILE",
           "TABLES_FILE", "Bundle", "BundleError", "ScoringSpec", "is_bundle", "load_bundle",
           "read_safetensors", "write_arrays", "write_manifest"]


@dataclass(frozen=True)
class ScoringSpec:
    """What inference needs to know about the model, beyond its weights."""

    model: str  # gae | ncn | ncnc
    depth: int  # NCNC completion depth (0 for gae / ncn)
    hidden: int
    num_nodes: int
    probscale: float = 0.0
    proboffset: float = 0.0
    pt: float = 0.0
    alpha: float = 0.0
    cap: int = -1  # cap on each completion set (the model's test cap)
    cap_seed: int = 0  # salt of the capped draws
    precision: str = "fp32"  # fp32 | bf16 | int8 (PRECISIONS): the tables' dtype and the head's

    @property
    def table_dtype(self) -> torch.dtype:
        """The node tables' dtype: float32 for an fp32 bundle, bfloat16 otherwise (an int8
        bundle quantises its head only; its tables are bf16: half the bytes gathered)."""
        return torch.float32 if self.precision == "fp32" else torch.bfloat16

    @property
    def num_levels(self) -> int:
        """Node tables the scorer reads: h, then one x~ level per common-neighbour depth."""
        if self.model == "gae":
            return 1
        return self.depth + 2

    @property
    def calibration(self) -> Calibration:
        return Calibration(self.probscale, self.proboffset, self.pt, self.alpha)

    @property
    def rule(self) -> PairRule:
        """The pair-scoring recursion's settings (:func:`ncnc.triton_kernels.pair_logits`)."""
        return PairRule(self.model, self.depth, self.calibration, self.cap, self.cap_seed)


@dataclass
class Bundle:
    """A loaded bundle (:func:`load_bundle`): what :class:`~ncnc.scorer.Scorer` scores with.

    Attributes:
        path: the bundle directory.
        manifest: ``manifest.json`` as a dict (checked against its schema and digest).
        spec: model kind, depth, hidden width, node count, calibration and cap.
        id_map: node index <-> original id (Int64 or String).
        huge_pages: how :attr:`graph` and :attr:`levels` are read on first use: into this
            process's own huge-page memory (the fastest random row reads on the CPU), or
            (False) mapped from the files, so that processes on one machine share one copy
            through the page cache.
        verify_key: the public key its signature was verified with (None: not verified); a
            run's outputs must not be written over it.

    :attr:`graph` (the CSR graph, ``indptr`` [n+1] and ``indices`` [nnz] int64) and
    :attr:`levels` (``spec.num_levels`` tables ``[n, hidden]`` of ``spec.table_dtype``) are read
    when first used: a CUDA scorer copies them to the device without keeping a private host copy, and
    ``ncnc candidates`` reads the graph alone. Every read checks the arrays
    (:class:`BundleError` naming the file and the problem): shapes and dtypes from the header
    before any allocation, then a valid CSR graph and finite tables.
    """

    path: Path
    manifest: dict[str, Any]
    spec: ScoringSpec
    id_map: IdMap
    huge_pages: bool = True
    verify_key: Path | None = None
    _graph: CSRGraph | None = None
    _levels: list[Tensor] | None = None

    @classmethod
    def in_memory(cls, path: Path, spec: ScoringSpec, graph: CSRGraph, levels: list[Tensor],
                  id_map: IdMap) -> Bundle:
        """A bundle being assembled at ``path`` whose arrays are already in memory (the
        exporter validates its head with the real engine before writing the manifest)."""
        return cls(path, {}, spec, id_map, _graph=graph, _levels=levels)

    @property
    def num_nodes(self) -> int:
        return self.spec.num_nodes

    @property
    def graph(self) -> CSRGraph:
        if self._graph is None:
            self._graph = self._read_graph(self.huge_pages)
        return self._graph

    @property
    def levels(self) -> list[Tensor]:
        if self._levels is None:
            self._levels = self._read_levels(self.huge_pages)
        return self._levels

    def _read_graph(self, huge_pages: bool) -> CSRGraph:
        n, entries = self.spec.num_nodes, 2 * self.manifest["num_edges"]
        path = _bundle_file(self.path, GRAPH_FILE)
        arrays = _read_tensors(path, {"indptr": (torch.int64, (n + 1,)),
                                      "indices": (torch.int64, (entries,))}, huge_pages)
        try:
            validate_csr(arrays["indptr"], arrays["indices"])
        except ValueError as err:
            raise BundleError(f"{path}: not a valid CSR graph: {err}") from err
        return CSRGraph(arrays["indptr"], arrays["indices"])

    def _read_levels(self, huge_pages: bool) -> list[Tensor]:
        shape = (self.spec.num_nodes, self.spec.hidden)
        names = [f"level{k}" for k in range(self.spec.num_levels)]
        path = _bundle_file(self.path, TABLES_FILE)
        dtype = self.spec.table_dtype
        try:
            tables = _read_tensors(path, {name: (dtype, shape) for name in names}, huge_pages)
        except DtypeMismatch as err:
            raise BundleError(f"{err}, as field spec.precision {self.spec.precision!r} of "
                              f"{self.path / MANIFEST} needs") from err
        for name in names:
            _check_finite(tables[name], f"{path}: table {name}")
        return [tables[name] for name in names]

    def check_arrays(self) -> None:
        """Read (mapped) and check the graph and the tables without keeping them: what a
        process that hands the bundle to others (the Ray driver) runs before they start."""
        self._read_graph(False)
        self._read_levels(False)

    def arrays_for(self, device: torch.device) -> tuple[CSRGraph, list[Tensor]]:
        """The graph and node tables on ``device``. Off the CPU, files not read yet are mapped
        (and checked) and copied to the device, so no private host copy is kept."""
        if device.type == "cpu":
            return self.graph, self.levels
        graph = self._graph if self._graph is not None else self._read_graph(False)
        levels = self._levels if self._levels is not None else self._read_levels(False)
        return graph.to(device), [t.to(device) for t in levels]

    def scorer(self, *, device: str = "auto", threads: int | None = None,
               memo_mib: float | None = None) -> Scorer:
        """A :class:`~ncnc.scorer.Scorer` of this bundle (reads and checks its arrays and head).

        Args:
            device: ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``.
            threads: onnxruntime's intra-op threads (None: one per core), e.g. one per Ray actor
                when several share a machine.
            memo_mib: memory for NCNC's memo of completion-pair logits across batches (the same
                scores, fewer head evaluations; 0 turns it off; None: 256 MiB).
        """
        from ncnc.scorer.api import Scorer
        from ncnc.scorer.engine import DEFAULT_MEMO_MIB, BatchScorer

        memo = DEFAULT_MEMO_MIB if memo_mib is None else memo_mib
        return Scorer(self, BatchScorer(self, device, threads, memo_mib=memo))

    @property
    def inputs(self) -> list[Path]:
        """What scoring with this bundle reads: its folder, and the key that verified it."""
        return [self.path] + ([self.verify_key] if self.verify_key is not None else [])

    @property
    def checksum(self) -> str:
        """The manifest's digest (``manifest_sha256``: of its content, which lists every file's
        sha256): identifies the bundle."""
        return self.manifest[DIGEST_FIELD]

    @property
    def head_path(self) -> Path:
        return self.path / HEAD_FILE

    @property
    def program_path(self) -> Path:
        return self.path / PROGRAM_FILE


def write_arrays(directory: Path, graph: CSRGraph, levels: list[Tensor], id_map: IdMap,
                 table_dtype: torch.dtype = torch.float32) -> None:
    """Write the graph, node tables (as ``table_dtype``: :attr:`ScoringSpec.table_dtype`) and id
    map of a bundle being assembled in ``directory``."""
    save_file({"indptr": graph.indptr.cpu().contiguous(),
               "indices": graph.indices.long().cpu().contiguous()}, str(directory / GRAPH_FILE))
    save_file({f"level{k}": t.detach().to(table_dtype).cpu().contiguous()
               for k, t in enumerate(levels)}, str(directory / TABLES_FILE))
    id_map.save(directory / ID_MAP_FILE)


def write_manifest(directory: Path, spec: ScoringSpec, extra: dict[str, Any], *,
                   signed: bool = False) -> dict[str, Any]:
    """Checksum every bundle file in ``directory`` and write the manifest last.

    The manifest is checked against the schema a reader applies (an export never writes a
    bundle its own reader would refuse), then sealed with its digest. ``signed``: the bundle
    will be signed next (:func:`ncnc.scorer.signing.sign_bundle`), recorded as ``signature``.
    """
    manifest = {
        "format": BUNDLE_FORMAT,
        "format_version": FORMAT_VERSION,
        "spec": asdict(spec),
        "files": {name: {"sha256": file_sha256(directory / name),
                         "bytes": (directory / name).stat().st_size} for name in BUNDLE_FILES},
        "signature": SIGNATURE_FILE if signed else None,
        **extra,
    }
    # Through JSON first: the reader checks what the file holds (plain str, not torch's
    # TorchVersion; lists, not tuples).
    manifest = seal(json.loads(json.dumps(manifest, allow_nan=False)))
    check_manifest(manifest, directory / MANIFEST)
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _bundle_file(path: Path, name: str) -> Path:
    """The bundle's file ``name``, refusing one that resolves outside the bundle (a link)."""
    candidate = (path / name).resolve()
    if candidate.parent != path.resolve():
        raise BundleError(f"bundle {path}: {name} points outside the bundle")
    return candidate


def verify_files(path: Path, manifest: dict[str, Any], *, hashes: bool = True) -> None:
    """Every bundle file is a regular file of its recorded size and (``hashes``) sha256."""
    for name, meta in manifest["files"].items():
        file = _bundle_file(path, name)
        if not file.is_file():
            raise BundleError(f"bundle {path}: file {name} is missing")
        size = file.stat().st_size
        if size != meta["bytes"]:
            raise BundleError(f"bundle {path}: {name} changed since export ({size} bytes, the "
                              f"manifest says {meta['bytes']}); re-export it")
        if hashes and file_sha256(file) != meta["sha256"]:
            raise BundleError(
                f"bundle {path}: {name} changed since export (sha256 mismatch); re-export it"
            )


# --- safetensors, read with every size checked before it is trusted ---------------------------

MAX_HEADER_BYTES = 100_000_000  # the safetensors format's own limit
_DTYPE_CODES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32,
                "F64": torch.float64, "I32": torch.int32, "I64": torch.int64}
_CODE_OF = {dtype: code for code, dtype in _DTYPE_CODES.items()}
TensorSpec = tuple[torch.dtype, tuple[int, ...]]
"""What a tensor must be: its dtype and shape."""


class DtypeMismatch(BundleError):
    """A safetensors tensor of another dtype than expected (the caller names the rule)."""


@dataclass(frozen=True)
class _Entry:
    dtype: torch.dtype
    shape: tuple[int, ...]
    offset: int  # of the first byte, from the start of the file
    nbytes: int


def _header(path: Path, expected: Mapping[str, TensorSpec]) -> dict[str, _Entry]:
    """The entries of a safetensors header, each checked against ``expected`` and the file size
    (reads at most :data:`MAX_HEADER_BYTES`; allocates nothing per tensor)."""
    size = path.stat().st_size
    with path.open("rb") as f:
        prefix = f.read(8)
        header_size = int.from_bytes(prefix, "little")
        if len(prefix) < 8 or header_size > min(MAX_HEADER_BYTES, size - 8):
            raise BundleError(f"{path}: not a safetensors file (its header claims {header_size} "
                              f"bytes; the file holds {size})")
        header = strict_json(f.read(header_size), path)
    if type(header) is not dict:
        raise BundleError(f"{path}: not a safetensors file (the header is not a JSON object)")
    names = sorted(name for name in header if name != "__metadata__")
    if names != sorted(expected):
        raise BundleError(f"{path}: holds tensors {names}, expected {sorted(expected)}")
    data_size = size - 8 - header_size
    return {name: _entry(path, name, header[name], spec, 8 + header_size, data_size)
            for name, spec in expected.items()}


def _entry(path: Path, name: str, raw: Any, spec: TensorSpec, start: int,
           data_size: int) -> _Entry:
    dtype, shape = spec
    where = f"{path}: tensor {name!r}"
    if type(raw) is not dict or set(raw) != {"dtype", "shape", "data_offsets"}:
        raise BundleError(f"{where}: a header entry needs exactly dtype, shape and data_offsets")
    if raw["dtype"] != _CODE_OF[dtype]:
        raise DtypeMismatch(f"{where} is of dtype {raw['dtype']!r}, expected {_CODE_OF[dtype]}")
    got = raw["shape"]
    if type(got) is not list or any(type(d) is not int or d < 0 for d in got):
        raise BundleError(f"{where}: shape {got!r} is not a list of non-negative integers")
    if tuple(got) != shape:
        raise BundleError(f"{where} has shape {got}, the manifest needs {list(shape)}")
    offsets = raw["data_offsets"]
    if (type(offsets) is not list or len(offsets) != 2 or any(type(o) is not int for o in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= data_size):
        raise BundleError(f"{where}: data_offsets {offsets!r} are not within the file's "
                          f"{data_size} data bytes")
    nbytes = math.prod(shape) * torch.empty(0, dtype=dtype).element_size()
    if offsets[1] - offsets[0] != nbytes:
        raise BundleError(f"{where} holds {offsets[1] - offsets[0]} bytes, its shape "
                          f"{list(shape)} needs {nbytes}")
    return _Entry(dtype, shape, start + offsets[0], nbytes)


def read_safetensors(path: Path, expected: Mapping[str, TensorSpec]) -> dict[str, Tensor]:
    """The tensors of a safetensors file, read straight into huge-page memory
    (:func:`ncnc.triton_kernels.huge_page_empty`).

    The scorer reads table and graph rows at random, and huge pages spare it most TLB misses.
    Reading (rather than mapping the file and copying) keeps the file's pages out of the process,
    so loading never holds a table twice.

    Args:
        expected: every tensor the file holds, name -> (dtype, shape); the header must match it.

    Raises:
        BundleError: another set of tensors, dtype or shape, offsets outside the file, or a
            header that is not one (checked before anything is allocated).
    """
    entries = _header(path, expected)
    tensors = {}
    with path.open("rb") as f:
        for name, entry in entries.items():
            tensor = huge_page_empty(entry.shape, entry.dtype)
            f.seek(entry.offset)
            if f.readinto(memoryview(tensor.view(-1).view(torch.uint8).numpy())) != entry.nbytes:
                raise BundleError(f"{path}: file ends inside tensor {name!r}")  # shrank meanwhile
            tensors[name] = tensor
    return tensors


def map_safetensors(path: Path, expected: Mapping[str, TensorSpec]) -> dict[str, Tensor]:
    """The tensors of a safetensors file (checked as by :func:`read_safetensors`), backed by a
    private mapping of the file: processes mapping one file share its pages."""
    entries = _header(path, expected)
    mapped = np.memmap(path, dtype=np.uint8, mode="c")  # copy-on-write: writable, never written
    return {name: torch.from_numpy(mapped[e.offset:e.offset + e.nbytes]).view(e.dtype)
            .view(e.shape) for name, e in entries.items()}


def _read_tensors(path: Path, expected: Mapping[str, TensorSpec],
                  huge_pages: bool) -> dict[str, Tensor]:
    return (read_safetensors if huge_pages else map_safetensors)(path, expected)


FINITE_CHECK_ROWS = 1 << 16  # rows per step of the finite check: bounded temporaries
BF16_EXPONENT = np.int16(0x7F80)  # all ones: infinity or NaN


def _check_finite(table: Tensor, what: str) -> None:
    """Refuse a table holding NaN or infinity, naming the first such row. Through numpy, one
    thread: torch's threaded reductions stall on a busy machine (benchmarks/bench_bundle_checks.py
    measures this pass next to the table read)."""
    if table.dtype == torch.bfloat16:  # numpy has no bfloat16: test its exponent bits
        bits = table.view(torch.int16).numpy()

        def finite_rows(block: np.ndarray) -> np.ndarray:
            return (block & BF16_EXPONENT) != BF16_EXPONENT
    else:
        bits = table.numpy()
        finite_rows = np.isfinite
    for start in range(0, table.size(0), FINITE_CHECK_ROWS):
        finite = finite_rows(bits[start:start + FINITE_CHECK_ROWS])
        if not finite.all():
            row, column = (int(i) for i in np.argwhere(~finite)[0])
            raise BundleError(f"{what}: row {start + row} holds {float(table[start + row, column])}"
                              f" (column {column}); node tables must be finite")


# --- opening a bundle --------------------------------------------------------------------------


def _read_id_map(path: Path, spec: ScoringSpec) -> IdMap:
    """The id map, its row count checked against the manifest from the footer before reading."""
    import polars as pl
    import pyarrow.parquet as pq

    file = _bundle_file(path, ID_MAP_FILE)
    try:
        rows = pq.ParquetFile(file).metadata.num_rows
        id_map = IdMap.load(file) if rows == spec.num_nodes else None
    except InputError:
        raise
    # pyarrow and polars raise many types for a damaged file; a Rust panic is a BaseException.
    except (Exception, pl.exceptions.PanicException) as err:
        raise BundleError(f"{file}: cannot be read as an id map ({first_line(err)})") from err
    if id_map is None or len(id_map) != spec.num_nodes:
        raise BundleError(f"{file}: holds {rows} ids, the manifest's spec.num_nodes is "
                          f"{spec.num_nodes}")
    return id_map



def load_bundle(path: Path | str, *, verify: bool = True, huge_pages: bool = True,
                verify_key: Path | str | None = None) -> Bundle:
    """Open a bundle directory; with ``verify`` (default) every checksum is checked first.

    Args:
        path: the directory ``ncnc export`` wrote.
        verify: check every file's sha256 against the manifest (reads every byte once); turn it
            off only for a bundle checked already in this process. The manifest's schema and
            digest and the files' sizes are checked always.
        huge_pages: on the CPU, read the graph and node tables into this process's own
            huge-page memory (:func:`read_safetensors`: the fastest random row reads). False maps
            the files instead: processes on one machine (Ray actors) then share one copy through
            the OS page cache. CUDA scorers always map the files and copy them to the device.
        verify_key: a PEM public key (elliptic curve): refuse the bundle unless its signature
            (``ncnc export --sign-key``) verifies with it, every file unchanged since signing.
            Needs the ``[sign]`` extra; reads every file once more, whatever ``verify`` says.

    Returns:
        The :class:`Bundle`; its arrays are read (and checked) when first used. Nothing is
        unpickled; ``program.pt2`` is not loaded.

    Raises:
        BundleError: (an :class:`~ncnc.core.errors.InputError`) no such directory, not a bundle, an
            unknown ``format_version``, a manifest field the schema refuses (named), a manifest
            edited since export, a missing or changed file, a damaged id map, no signature or
            one that does not verify with ``verify_key``.

    Example::

        scorer = ncnc.load_bundle("bundle/", verify_key="ncnc-pub.pem").scorer()
        scored = scorer.score(pairs)   # polars, pandas or Arrow: src, dst -> + score, prob
    """
    path = Path(path)
    if not path.is_dir():
        raise BundleError(f"bundle {path}: no such directory")
    manifest = parse_manifest(path)
    verify_files(path, manifest, hashes=verify)
    if verify_key is not None:
        from ncnc.scorer.signing import verify_signature

        if manifest["signature"] is None:
            raise BundleError(f"bundle {path}: not signed (exported without --sign-key), so "
                              f"--verify-key {verify_key} cannot vouch for it")
        verify_signature(path, verify_key)
    spec = ScoringSpec(**manifest["spec"])
    return Bundle(path=path, manifest=manifest, spec=spec, id_map=_read_id_map(path, spec),
                  huge_pages=huge_pages,
                  verify_key=Path(verify_key) if verify_key is not None else None)
