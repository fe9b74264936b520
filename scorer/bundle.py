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
====================  =============================================================================

Format-version rule: ``format_version`` changes whenever a file's meaning or layout changes; a
reader refuses versions it does not know instead of guessing.
Loading never unpickles: JSON, safetensors, Parquet and ONNX only (``program.pt2`` is loaded only
on request, with ``torch.export.load``, which reads weights without pickle).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from ncnc.core.errors import InputError
from ncnc.core.ids import IdMap
from ncnc.triton_kernels import CSRGraph, huge_page_empty
from ncnc.triton_kernels.completion import Calibration
from ncnc.triton_kernels.pair_scoring import PairRule

if TYPE_CHECKING:
    from ncnc.scorer.api import Scorer

BUNDLE_FORMAT = "ncnc-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
GRAPH_FILE = "graph.safetensors"
TABLES_FILE = "tables.safetensors"
ID_MAP_FILE = "id_map.parquet"
HEAD_FILE = "head.onnx"
PROGRAM_FILE = "program.pt2"


class BundleError(InputError):
    """The bundle is missing, changed since export, or of an unknown format."""


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
        manifest: ``manifest.json`` as a dict.
        spec: model kind, depth, hidden width, node count, calibration and cap.
        id_map: node index <-> original id (Int64 or String).
        huge_pages: how :attr:`graph` and :attr:`levels` are read on first use: into this
            process's own huge-page memory (the fastest random row reads on the CPU), or
            (False) mapped from the files, so that processes on one machine share one copy
            through the page cache.

    :attr:`graph` (the CSR graph, ``indptr`` [n+1] and ``indices`` [nnz] int64) and
    :attr:`levels` (``spec.num_levels`` float32 tables ``[n, hidden]``) are read when first used:
    a CUDA scorer copies them to the device without keeping a private host copy, and
    ``ncnc candidates`` reads the graph alone.
    """

    path: Path
    manifest: dict[str, Any]
    spec: ScoringSpec
    id_map: IdMap
    huge_pages: bool = True
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
            arrays = self._read(GRAPH_FILE, ["indptr", "indices"], self.huge_pages)
            self._graph = CSRGraph(arrays["indptr"], arrays["indices"])
        return self._graph

    @property
    def levels(self) -> list[Tensor]:
        if self._levels is None:
            self._levels = self._read_levels(self.huge_pages)
        return self._levels

    def _read(self, name: str, tensors: Sequence[str], huge_pages: bool) -> dict[str, Tensor]:
        read = read_safetensors if huge_pages else _map_safetensors
        return read(_bundle_file(self.path, name), tensors)

    def _read_levels(self, huge_pages: bool) -> list[Tensor]:
        names = [f"level{k}" for k in range(self.spec.num_levels)]
        tables = self._read(TABLES_FILE, names, huge_pages)
        return [tables[name] for name in names]

    def arrays_for(self, device: torch.device) -> tuple[CSRGraph, list[Tensor]]:
        """The graph and node tables on ``device``. Off the CPU, files not read yet are mapped
        and copied to the device, so no private host copy is kept."""
        if device.type == "cpu":
            return self.graph, self.levels
        graph = self._graph
        if graph is None:
            graph = CSRGraph(**self._read(GRAPH_FILE, ["indptr", "indices"], False))
        levels = self._levels if self._levels is not None else self._read_levels(False)
        return graph.to(device), [t.to(device) for t in levels]

    def scorer(self, *, device: str = "auto", threads: int | None = None,
               memo_mib: float | None = None) -> Scorer:
        """A :class:`~ncnc.scorer.Scorer` of this bundle.

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
    def checksum(self) -> str:
        """sha256 of the manifest, which lists every file's sha256: identifies the bundle."""
        return sha256(self.path / MANIFEST)

    @property
    def head_path(self) -> Path:
        return self.path / HEAD_FILE

    @property
    def program_path(self) -> Path:
        return self.path / PROGRAM_FILE


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_arrays(directory: Path, graph: CSRGraph, levels: list[Tensor], id_map: IdMap) -> None:
    """Write the graph, node tables and id map of a bundle being assembled in ``directory``."""
    save_file({"indptr": graph.indptr.cpu().contiguous(),
               "indices": graph.indices.long().cpu().contiguous()}, str(directory / GRAPH_FILE))
    save_file({f"level{k}": t.detach().float().cpu().contiguous() for k, t in enumerate(levels)},
              str(directory / TABLES_FILE))
    id_map.save(directory / ID_MAP_FILE)


def write_manifest(directory: Path, spec: ScoringSpec, extra: dict[str, Any]) -> dict[str, Any]:
    """Checksum every file in ``directory`` and write the manifest last."""
    files = sorted(p.name for p in directory.iterdir() if p.is_file() and p.name != MANIFEST)
    manifest = {
        "format": BUNDLE_FORMAT,
        "format_version": FORMAT_VERSION,
        "spec": asdict(spec),
        "files": {name: {"sha256": sha256(directory / name),
                         "bytes": (directory / name).stat().st_size} for name in files},
        **extra,
    }
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _manifest_json(path: Path) -> dict[str, Any]:
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise BundleError(f"{path} is not an ncnc bundle: {MANIFEST} is missing")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BundleError(f"{manifest_path} is not valid JSON: {err}") from err
    if not isinstance(manifest, dict):
        raise BundleError(f"{manifest_path}: not an ncnc bundle (a JSON {type(manifest).__name__}"
                          ", not an object)")
    return manifest


def is_bundle(path: Path) -> bool:
    """Whether ``path`` is a folder ``ncnc export`` wrote (of any format version): the only kind
    of folder an export may replace."""
    try:
        return _manifest_json(Path(path)).get("format") == BUNDLE_FORMAT
    except (BundleError, OSError):
        return False


def read_manifest(path: Path) -> dict[str, Any]:
    manifest_path = path / MANIFEST
    manifest = _manifest_json(path)
    if manifest.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{manifest_path}: not an ncnc bundle (format {manifest.get('format')!r})")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(
            f"{manifest_path}: bundle format version {manifest.get('format_version')} is not "
            f"supported (this ncnc reads version {FORMAT_VERSION}); re-export the model"
        )
    return manifest


def _bundle_file(path: Path, name: str) -> Path:
    """Resolve a manifest file name, refusing anything that would leave the bundle directory."""
    candidate = (path / name).resolve()
    if candidate.parent != path.resolve() or name in ("", ".", ".."):
        raise BundleError(f"{path / MANIFEST}: file name {name!r} points outside the bundle")
    return candidate


def verify_files(path: Path, manifest: dict[str, Any]) -> None:
    """Every manifest file exists and has its recorded sha256; required files are listed."""
    files = manifest.get("files", {})
    for required in (GRAPH_FILE, TABLES_FILE, ID_MAP_FILE, HEAD_FILE):
        if required not in files:
            raise BundleError(f"{path / MANIFEST}: required file {required} is not listed")
    for name, meta in files.items():
        file = _bundle_file(path, name)
        if not file.is_file():
            raise BundleError(f"bundle {path}: file {name} is missing")
        if sha256(file) != meta.get("sha256"):
            raise BundleError(
                f"bundle {path}: {name} changed since export (sha256 mismatch); re-export it"
            )


def _checked_manifest(path: Path, verify: bool) -> dict[str, Any]:
    if not path.is_dir():
        raise BundleError(f"bundle {path}: no such directory")
    manifest = read_manifest(path)
    if verify:
        verify_files(path, manifest)
    return manifest


_SAFETENSORS_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32,
                       "F64": torch.float64, "I32": torch.int32, "I64": torch.int64}


def read_safetensors(path: Path, names: Sequence[str]) -> dict[str, Tensor]:
    """The named tensors of a safetensors file, read straight into huge-page memory
    (:func:`ncnc.triton_kernels.huge_page_empty`).

    The scorer reads table and graph rows at random, and huge pages spare it most TLB misses.
    Reading (rather than mapping the file and copying) keeps the file's pages out of the process,
    so loading never holds a table twice.
    """
    with path.open("rb") as f:
        header_size = int.from_bytes(f.read(8), "little")
        try:
            header = json.loads(f.read(header_size))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise BundleError(f"{path}: not a safetensors file ({err})") from err
        tensors = {}
        for name in names:
            entry = header.get(name)
            if not isinstance(entry, dict) or entry.get("dtype") not in _SAFETENSORS_DTYPES:
                raise BundleError(f"{path}: no readable tensor {name!r} (found {sorted(header)})")
            tensor = huge_page_empty(tuple(entry["shape"]), _SAFETENSORS_DTYPES[entry["dtype"]])
            target = memoryview(tensor.view(-1).view(torch.uint8).numpy())
            begin, end = entry["data_offsets"]
            if end - begin != target.nbytes:
                raise BundleError(f"{path}: tensor {name!r} holds {end - begin} bytes, its shape "
                                  f"{entry['shape']} needs {target.nbytes}")
            f.seek(8 + header_size + begin)
            if f.readinto(target) != target.nbytes:  # a buffered read retries short reads
                raise BundleError(f"{path}: file ends inside tensor {name!r}")
            tensors[name] = tensor
    return tensors


def _map_safetensors(path: Path, names: Sequence[str]) -> dict[str, Tensor]:
    """The named tensors of a safetensors file, backed by a mapping of the file."""
    tensors = load_file(str(path))
    missing = [name for name in names if name not in tensors]
    if missing:
        raise BundleError(f"{path}: no tensor {missing[0]!r} (found {sorted(tensors)})")
    return {name: tensors[name] for name in names}


def load_bundle(path: Path | str, *, verify: bool = True, huge_pages: bool = True) -> Bundle:
    """Open a bundle directory; with ``verify`` (default) every checksum is checked first.

    Args:
        path: the directory ``ncnc export`` wrote.
        verify: check every file's sha256 against the manifest (reads every byte once); turn it
            off only for a bundle checked already in this process.
        huge_pages: on the CPU, read the graph and node tables into this process's own
            huge-page memory (:func:`read_safetensors`: the fastest random row reads). False maps
            the files instead: processes on one machine (Ray actors) then share one copy through
            the OS page cache. CUDA scorers always map the files and copy them to the device.

    Returns:
        The :class:`Bundle`; its arrays are read when first used. Nothing is unpickled;
        ``program.pt2`` is not loaded.

    Raises:
        BundleError: (an :class:`~ncnc.core.errors.InputError`) no such directory, not a bundle, an
            unknown ``format_version``, a malformed manifest, a missing or changed file, or a
            manifest file name pointing outside the bundle.

    Example::

        scorer = ncnc.load_bundle("bundle/").scorer()
        scored = scorer.score(pairs)   # polars, pandas or Arrow: src, dst -> + score, prob
    """
    path = Path(path)
    manifest = _checked_manifest(path, verify)
    try:
        spec = ScoringSpec(**manifest["spec"])
    except (KeyError, TypeError) as err:
        raise BundleError(f"{path / MANIFEST}: malformed spec ({err})") from err
    return Bundle(path=path, manifest=manifest, spec=spec,
                  id_map=IdMap.load(_bundle_file(path, ID_MAP_FILE)), huge_pages=huge_pages)
