"""Graph input for the trainer: user edge lists (Parquet) and the Planetoid benchmarks.

Every graph becomes a :class:`GraphData`: nodes are contiguous indices ``0..n-1``, an :class:`IdMap`
turns them back into the user's ids, and the edges are undirected, unique and canonical
(``src < dst``, sorted). Every user Parquet file is read through :func:`read_parquet_table`, so a
bad file always gives the same kind of one-line :class:`~ncnc.errors.InputError`.

Shapes:
    edges ``[E, 2]`` int64; features ``[num_nodes, F]`` float32 or ``None``; pairs ``[B, 2]`` int64.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch

from ncnc.errors import InputError

logger = logging.getLogger("ncnc.trainer")

PLANETOID_NAMES = {"cora": "Cora", "citeseer": "CiteSeer", "pubmed": "PubMed"}
"""Accepted ``load_planetoid`` names (any case) -> the PyG dataset name and folder."""

_EXAMPLES = 5  # how many bad values an error message quotes


def _examples(values: pl.Series | Iterable[object]) -> str:
    """The first few values as ``a, b, c, ...`` for an error message."""
    if isinstance(values, pl.Series):
        values = values.head(_EXAMPLES + 1)
    values = list(values)
    shown = ", ".join(repr(v) for v in values[:_EXAMPLES])
    return shown + (", ..." if len(values) > _EXAMPLES else "")


def _id_kind(dtype: pl.DataType) -> str | None:
    """``"integer"`` or ``"string"`` for a column that can hold node ids, else ``None``."""
    if dtype.is_integer():
        return "integer"
    if dtype in (pl.String, pl.Categorical) or isinstance(dtype, pl.Enum):
        return "string"
    return None


def _as_id_series(values: pl.Series) -> pl.Series:
    """Cast an id column to the canonical dtype of its kind (Int64 or String)."""
    kind = _id_kind(values.dtype)
    if kind is None:
        raise TypeError(f"node ids must be integers or strings, got dtype {values.dtype}")
    return values.cast(pl.Int64 if kind == "integer" else pl.String, strict=True)


def cache_dir() -> Path:
    """The project's cache folder: ``$XDG_CACHE_HOME/ncnc``, by default ``~/.cache/ncnc``."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ncnc"


@dataclass(frozen=True)
class IdMap:
    """Index -> original node id.

    ``ids[i]`` is the user's id of node ``i``; ``ids`` is a polars Series of dtype Int64 or String,
    without nulls or duplicates. Build one with :meth:`from_ids`, which sorts the distinct ids, so
    the same set of ids always gives the same indices.
    """

    ids: pl.Series

    def __post_init__(self) -> None:
        if self.ids.dtype not in (pl.Int64, pl.String):
            raise TypeError(f"IdMap ids must be Int64 or String, got {self.ids.dtype}")
        if self.ids.null_count() or self.ids.n_unique() != self.ids.len():
            raise ValueError("IdMap ids must be distinct and not null")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, IdMap):
            return NotImplemented
        return self.ids.dtype == other.ids.dtype and self.ids.equals(other.ids)

    @classmethod
    def from_ids(cls, ids: pl.Series | Iterable[int] | Iterable[str]) -> IdMap:
        """The map over the distinct values of ``ids``, in sorted order (integer or string ids)."""
        series = ids if isinstance(ids, pl.Series) else pl.Series(list(ids))
        series = _as_id_series(series.drop_nulls())
        return cls(series.unique().sort().rename("id"))

    def __len__(self) -> int:
        return self.ids.len()

    @property
    def is_string(self) -> bool:
        """True when the original ids are strings, False when they are integers."""
        return self.ids.dtype == pl.String

    @property
    def kind(self) -> str:
        """``"string"`` or ``"integer"``, for error messages."""
        return "string" if self.is_string else "integer"

    def to_index(self, values: pl.Series, *, what: str) -> torch.Tensor:
        """Map original ids to node indices (int64 tensor of the same length).

        ``what`` names the input in errors, e.g. ``"pairs file x.parquet column src"``.

        Raises:
            InputError: the values are of the other id kind, or some are not in the map (the message
                gives how many distinct ids are unknown and the first few).
        """
        kind = _id_kind(values.dtype)
        if values.dtype == pl.Null or values.len() == 0:
            kind = self.kind  # an empty or all-null column carries no kind of its own
        if kind != self.kind:
            raise InputError(
                f"{what}: ids are {kind or values.dtype} but the graph's node ids are {self.kind}"
                f" (examples: {_examples(values)})"
            )
        values = values.cast(self.ids.dtype)
        index = values.replace_strict(
            self.ids,
            pl.int_range(len(self), dtype=pl.Int64, eager=True),
            default=None,
            return_dtype=pl.Int64,
        )
        unknown_rows = index.is_null()
        if unknown_rows.any():
            unknown = values.filter(unknown_rows).unique(maintain_order=True)
            raise InputError(
                f"{what}: {unknown.len()} id(s) are not nodes of the graph: {_examples(unknown)}"
            )
        return torch.from_numpy(index.to_numpy().copy())

    def to_original(self, index: torch.Tensor) -> pl.Series:
        """Map node indices (any shape, flattened) back to the original ids."""
        flat = index.detach().reshape(-1).to("cpu", torch.int64)
        if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= len(self)):
            raise IndexError(
                f"IdMap.to_original: indices must lie in [0, {len(self)}),"
                f" got min {int(flat.min())} and max {int(flat.max())}"
            )
        return self.ids.gather(flat.numpy())

    def save(self, path: Path) -> None:
        """Write a Parquet file with columns ``index`` (Int64) and ``id``."""
        frame = pl.DataFrame(
            {"index": pl.int_range(len(self), dtype=pl.Int64, eager=True), "id": self.ids}
        )
        frame.write_parquet(path)

    @classmethod
    def load(cls, path: Path) -> IdMap:
        """Read a file written by :meth:`save` (plain Parquet; nothing is unpickled)."""
        frame = read_parquet_table(path, columns=["index", "id"], what="id map file")
        what = f"id map file {path}"
        if not frame["index"].dtype.is_integer() or _id_kind(frame["id"].dtype) is None:
            raise InputError(
                f"{what}: column index must be integer and column id integer or string, got "
                f"{frame['index'].dtype} and {frame['id'].dtype}"
            )
        frame = frame.sort("index")
        expected = pl.int_range(frame.height, dtype=pl.Int64, eager=True)
        bad = frame.filter(frame["index"].cast(pl.Int64) != expected)
        if bad.height:
            raise InputError(
                f"{what} column index: must be 0..{frame.height - 1} exactly once each, found "
                f"{_examples(bad['index'])} out of place"
            )
        ids = _as_id_series(frame["id"]).rename("id")
        duplicated = ids.filter(ids.is_duplicated()).unique(maintain_order=True)
        if duplicated.len():
            raise InputError(
                f"{what} column id: {duplicated.len()} id(s) appear more than once: "
                f"{_examples(duplicated)}"
            )
        return cls(ids)


@dataclass(frozen=True, eq=False)
class GraphData:
    """An undirected graph on nodes ``0..num_nodes-1``.

    Attributes:
        num_nodes: node count, isolated nodes included.
        edges: ``[E, 2]`` int64, each undirected edge once with ``edges[:, 0] < edges[:, 1]``,
            rows sorted.
        features: ``[num_nodes, F]`` float32, or ``None`` for a featureless graph.
        id_map: node index -> original id.
        stats: ``rows_read``, ``self_loops_dropped``, ``duplicates_dropped``, ``edges``.
    """

    num_nodes: int
    edges: torch.Tensor
    features: torch.Tensor | None
    id_map: IdMap
    stats: dict[str, int]


def read_parquet_table(path: Path, *, columns: Sequence[str] | None, what: str) -> pl.DataFrame:
    """Read a user Parquet file, or raise a one-line :class:`InputError`.

    Args:
        path: the file.
        columns: the columns to read, all required; ``None`` reads every column.
        what: what the file is, for messages, e.g. ``"edges file"``.

    Raises:
        InputError: the file is missing, unreadable or not Parquet, lacks a column, or a column
            holds nulls (the message names the file, the column and the first bad rows).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} {path}: no such file")
    try:
        schema = pl.read_parquet_schema(path)
    except Exception as exc:  # polars raises several types for a file that is not Parquet
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{what} {path}: cannot be read as Parquet ({reason})") from exc
    if columns is not None:
        missing = [c for c in columns if c not in schema]
        if missing:
            raise InputError(
                f"{what} {path}: missing column(s) {', '.join(missing)}"
                f" (columns present: {', '.join(schema.names()) or 'none'})"
            )
    try:
        frame = pl.read_parquet(path, columns=list(columns) if columns is not None else None)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{what} {path}: cannot be read as Parquet ({reason})") from exc
    for name in frame.columns:
        nulls = frame[name].is_null()
        if nulls.any():
            rows = nulls.arg_true()
            raise InputError(
                f"{what} {path} column {name}: {rows.len()} null value(s), in rows "
                f"{_examples(rows)}"
            )
    return frame


def _canonical_edges(
    src: torch.Tensor, dst: torch.Tensor, num_nodes: int
) -> tuple[torch.Tensor, dict[str, int]]:
    """Undirected unique edges (``src < dst``, sorted) and the counts of what was dropped."""
    rows = src.numel()
    keep = src != dst
    lo = torch.minimum(src, dst)[keep]
    hi = torch.maximum(src, dst)[keep]
    # One int64 key per pair: num_nodes**2 fits in int64 for any graph that fits in memory.
    keys = torch.unique(lo * num_nodes + hi)  # sorted
    edges = torch.stack([keys // num_nodes, keys % num_nodes], dim=1)
    stats = {
        "rows_read": rows,
        "self_loops_dropped": rows - int(keep.sum()),
        "duplicates_dropped": int(keep.sum()) - keys.numel(),
        "edges": keys.numel(),
    }
    return edges, stats


def load_edge_list(edges_path: Path, features_path: Path | None = None) -> GraphData:
    """Load a graph from a Parquet edge list and, optionally, a Parquet features file.

    The edges file has columns ``src`` and ``dst`` holding integer or string ids (both the same
    kind). Edges are undirected; self loops and repeated edges (in either direction) are dropped and
    counted in ``stats``. Node indices follow the sorted order of the distinct ids.

    The features file has a ``node`` column (ids of the same kind) and either numeric columns, one
    feature each, or a single list/array column of floats of fixed length. Nodes that appear only
    in the features file become isolated nodes; every node of the edges file needs a feature row.

    Raises:
        InputError: for any bad input; the message names the file, the column and example values.
    """
    edges_path = Path(edges_path)
    frame = read_parquet_table(edges_path, columns=["src", "dst"], what="edges file")
    if frame.height == 0:
        raise InputError(f"edges file {edges_path}: has no rows; a graph needs at least one edge")
    kinds = {c: _id_kind(frame[c].dtype) for c in ("src", "dst")}
    for column, kind in kinds.items():
        if kind is None:
            raise InputError(
                f"edges file {edges_path} column {column}: ids must be integers or strings, got "
                f"{frame[column].dtype} (examples: {_examples(frame[column])})"
            )
    if kinds["src"] != kinds["dst"]:
        raise InputError(
            f"edges file {edges_path}: columns src and dst must hold the same kind of id, but "
            f"src is {kinds['src']} ({frame['src'].dtype}) and dst is {kinds['dst']} "
            f"({frame['dst'].dtype})"
        )
    try:
        src_ids, dst_ids = _as_id_series(frame["src"]), _as_id_series(frame["dst"])
    except pl.exceptions.InvalidOperationError as exc:  # e.g. UInt64 ids beyond the Int64 range
        raise InputError(f"edges file {edges_path}: ids do not fit in Int64 ({exc})") from exc

    node_values = pl.concat([src_ids, dst_ids])
    features_frame = None
    if features_path is not None:
        features_frame = _read_features_frame(Path(features_path), kinds["src"])
        node_values = pl.concat([node_values, features_frame["node"]])
    id_map = IdMap.from_ids(node_values)
    num_nodes = len(id_map)

    src = id_map.to_index(src_ids, what=f"edges file {edges_path} column src")
    dst = id_map.to_index(dst_ids, what=f"edges file {edges_path} column dst")
    edges, stats = _canonical_edges(src, dst, num_nodes)
    if stats["edges"] == 0:
        raise InputError(
            f"edges file {edges_path}: no edges left after dropping "
            f"{stats['self_loops_dropped']} self loop(s)"
        )
    features = None
    if features_frame is not None:
        features = _features_tensor(features_frame, Path(features_path), id_map, src_ids, dst_ids)
    logger.info(
        "edges file %s: %d rows, dropped %d self loop(s) and %d duplicate edge(s); "
        "%d undirected edges on %d nodes%s",
        edges_path,
        stats["rows_read"],
        stats["self_loops_dropped"],
        stats["duplicates_dropped"],
        stats["edges"],
        num_nodes,
        "" if features is None else f", {features.shape[1]} features per node",
    )
    return GraphData(
        num_nodes=num_nodes, edges=edges, features=features, id_map=id_map, stats=stats
    )


def _read_features_frame(path: Path, edge_kind: str) -> pl.DataFrame:
    """Read and check a features file; returns ``node`` (canonical ids) plus the value columns."""
    frame = read_parquet_table(path, columns=None, what="features file")
    if "node" not in frame.columns:
        raise InputError(
            f"features file {path}: missing column node "
            f"(columns present: {', '.join(frame.columns)})"
        )
    kind = _id_kind(frame["node"].dtype)
    if kind != edge_kind:
        raise InputError(
            f"features file {path} column node: ids are {kind or frame['node'].dtype} but the "
            f"edges file's ids are {edge_kind} (examples: {_examples(frame['node'])})"
        )
    try:
        frame = frame.with_columns(_as_id_series(frame["node"]))
    except pl.exceptions.InvalidOperationError as exc:
        raise InputError(
            f"features file {path} column node: ids do not fit in Int64 ({exc})"
        ) from exc
    duplicated = frame["node"].filter(frame["node"].is_duplicated()).unique(maintain_order=True)
    if duplicated.len():
        raise InputError(
            f"features file {path} column node: {duplicated.len()} node(s) have more than one row: "
            f"{_examples(duplicated)}"
        )
    value_columns = [c for c in frame.columns if c != "node"]
    if not value_columns:
        raise InputError(f"features file {path}: no feature columns besides node")
    return frame


def _features_matrix(frame: pl.DataFrame, path: Path) -> np.ndarray:
    """The feature values as a float64 ``[rows, F]`` array, in the frame's row order."""
    value_columns = [c for c in frame.columns if c != "node"]
    nested = [c for c in value_columns if isinstance(frame[c].dtype, (pl.List, pl.Array))]
    if nested:
        if len(value_columns) != 1:
            raise InputError(
                f"features file {path}: use either one list column or numeric columns, not both "
                f"(list column(s): {', '.join(nested)}; all: {', '.join(value_columns)})"
            )
        column = nested[0]
        series = frame[column]
        inner = series.dtype.inner
        if not inner.is_numeric():
            raise InputError(
                f"features file {path} column {column}: list items must be numeric, got {inner}"
            )
        lengths = series.list.len() if isinstance(series.dtype, pl.List) else None
        if lengths is not None:
            distinct = lengths.unique().sort()
            if distinct.len() > 1:
                first = lengths[0]
                odd = frame["node"].filter(lengths != first).head(_EXAMPLES + 1).to_list()
                raise InputError(
                    f"features file {path} column {column}: lists have different lengths "
                    f"({_examples(distinct.to_list())}); first row has {first}, nodes with another "
                    f"length: {_examples(odd)}"
                )
            width = int(distinct[0]) if distinct.len() else 0
        else:
            width = series.dtype.size
        if width == 0:
            raise InputError(f"features file {path} column {column}: lists are empty")
        flat = series.explode() if lengths is not None else series.arr.explode()
        null_rows = flat.is_null()
        if null_rows.any():
            nodes = frame["node"].gather(null_rows.arg_true() // width).unique(maintain_order=True)
            raise InputError(
                f"features file {path} column {column}: lists hold null values, for nodes "
                f"{_examples(nodes)}"
            )
        return flat.cast(pl.Float64).to_numpy().reshape(frame.height, width)
    not_numeric = [c for c in value_columns if not frame[c].dtype.is_numeric()]
    if not_numeric:
        column = not_numeric[0]
        raise InputError(
            f"features file {path} column {column}: feature columns must be numeric, got "
            f"{frame[column].dtype} (examples: {_examples(frame[column])})"
        )
    return frame.select(pl.col(value_columns).cast(pl.Float64)).to_numpy()


def _features_tensor(
    frame: pl.DataFrame, path: Path, id_map: IdMap, src_ids: pl.Series, dst_ids: pl.Series
) -> torch.Tensor:
    """The ``[num_nodes, F]`` float32 feature matrix in node-index order."""
    edge_nodes = pl.concat([src_ids, dst_ids]).unique()
    missing = edge_nodes.filter(~edge_nodes.is_in(frame["node"].implode())).sort()
    if missing.len():
        raise InputError(
            f"features file {path} column node: {missing.len()} node(s) of the edges file have no "
            f"feature row: {_examples(missing)}"
        )
    values = _features_matrix(frame, path)
    finite = np.isfinite(values).all(axis=1)
    if not finite.all():
        bad_nodes = frame["node"].filter(pl.Series(~finite)).head(_EXAMPLES + 1).to_list()
        raise InputError(
            f"features file {path}: {int((~finite).sum())} node(s) have NaN or infinite features: "
            f"{_examples(bad_nodes)}"
        )
    index = id_map.to_index(frame["node"], what=f"features file {path} column node")
    features = torch.zeros(len(id_map), values.shape[1], dtype=torch.float32)
    features[index] = torch.tensor(values, dtype=torch.float32)
    return features


def read_pairs(path: Path, id_map: IdMap) -> torch.Tensor:
    """Read node pairs from Parquet columns ``src`` and ``dst`` (original ids) -> ``[B, 2]`` int64.

    Raises:
        InputError: unreadable file, missing column, nulls, ids of the other kind or unknown ids.
    """
    path = Path(path)
    frame = read_parquet_table(path, columns=["src", "dst"], what="pairs file")
    columns = [
        id_map.to_index(frame[c], what=f"pairs file {path} column {c}") for c in ("src", "dst")
    ]
    return torch.stack(columns, dim=1) if frame.height else torch.empty(0, 2, dtype=torch.int64)


def _is_writable(folder: Path) -> bool:
    """Whether files can be created in ``folder`` (created if missing); probes with a real file."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError:
        return False
    return True


def _copy_raw(source_raw: Path, target_raw: Path) -> None:
    """Copy the raw files that are missing in ``target_raw`` (or differ in size)."""
    target_raw.mkdir(parents=True, exist_ok=True)
    for file in sorted(source_raw.iterdir()):
        target = target_raw / file.name
        if file.is_file() and (
            not target.is_file() or target.stat().st_size != file.stat().st_size
        ):
            shutil.copyfile(file, target)


def _planetoid_root(name: str, data_root: Path) -> Path:
    """A root PyG can process ``name`` under: ``data_root``, or a writable copy of its raw files.

    PyG writes ``<root>/<name>/processed``; when ``data_root`` is read-only (a shared data folder)
    and not processed yet, the raw files are copied to ``cache_dir()/planetoid-copy`` (or, if that
    is not writable either, a temporary folder) and processed there.
    """
    folder = data_root / name
    if (folder / "processed" / "data.pt").is_file() or _is_writable(folder):
        return data_root
    raw = folder / "raw"
    copy_root = cache_dir() / "planetoid-copy"
    if not _is_writable(copy_root / name):
        copy_root = Path(tempfile.mkdtemp(prefix="ncnc-planetoid-"))
    logger.info("Planetoid folder %s is read-only; processing a copy under %s", folder, copy_root)
    if raw.is_dir():
        _copy_raw(raw, copy_root / name / "raw")
    return copy_root


def load_planetoid(name: str, data_root: Path | None) -> GraphData:
    """Load Cora, CiteSeer or PubMed (name in any case) with PyG's ``Planetoid``.

    Args:
        name: ``cora``, ``citeseer`` or ``pubmed``.
        data_root: folder holding ``<Name>/raw``; with the raw files there nothing is downloaded.
            ``None`` uses ``cache_dir()/planetoid`` (PyG downloads on first use). A read-only folder
            is handled by processing a copy (see :func:`_planetoid_root`).

    Returns:
        Node ids are the integer node indices; features are the dataset's ``x`` as float32.

    Raises:
        InputError: unknown name.
    """
    pyg_name = PLANETOID_NAMES.get(name.lower())
    if pyg_name is None:
        raise InputError(
            f"unknown Planetoid dataset {name!r}; choose one of {', '.join(PLANETOID_NAMES)}"
        )
    data_root = Path(data_root).expanduser() if data_root is not None else cache_dir() / "planetoid"
    root = _planetoid_root(pyg_name, data_root)

    from torch_geometric.datasets import Planetoid  # heavy import, only needed here

    data = Planetoid(root=str(root), name=pyg_name)[0]
    num_nodes = int(data.num_nodes)
    edges, stats = _canonical_edges(data.edge_index[0], data.edge_index[1], num_nodes)
    logger.info(
        "Planetoid %s: %d undirected edges on %d nodes, %d features per node",
        pyg_name,
        stats["edges"],
        num_nodes,
        data.x.shape[1],
    )
    return GraphData(
        num_nodes=num_nodes,
        edges=edges,
        features=data.x.to(torch.float32).contiguous(),
        id_map=IdMap(pl.Series("id", np.arange(num_nodes, dtype=np.int64))),
        stats=stats,
    )
