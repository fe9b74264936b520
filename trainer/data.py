"""Graph input for the trainer: user edge lists (Parquet) and the Planetoid benchmarks.

Every graph becomes a :class:`GraphData`: nodes are contiguous indices ``0..n-1``, an :class:`IdMap`
turns them back into the user's ids, and the edges are undirected, unique and canonical
(``src < dst``, sorted). Every user Parquet file is read through :func:`read_parquet_table`, so a
bad file always gives the same kind of one-line :class:`~ncnc.core.errors.InputError`.

Shapes:
    edges ``[E, 2]`` int64; features ``[num_nodes, F]`` float32 or ``None``; pairs ``[B, 2]`` int64.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch

from ncnc.core.errors import EXAMPLES, InputError, examples
from ncnc.core.ids import IdMap, as_id_series, id_kind
from ncnc.core.tables import read_parquet_table

logger = logging.getLogger("ncnc.trainer")

PLANETOID_NAMES = {"cora": "Cora", "citeseer": "CiteSeer", "pubmed": "PubMed"}
"""Accepted ``load_planetoid`` names (any case) -> the PyG dataset name and folder."""

def cache_dir() -> Path:
    """The project's cache folder: ``$XDG_CACHE_HOME/ncnc``, by default ``~/.cache/ncnc``."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ncnc"


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


def load_edge_list(edges_path: Path, features_path: Path | None = None,
                   nodes_path: Path | None = None) -> GraphData:
    """Load a graph from a Parquet edge list and, optionally, a Parquet features file.

    The edges file has columns ``src`` and ``dst`` holding integer or string ids (both the same
    kind). Edges are undirected; self loops and repeated edges (in either direction) are dropped and
    counted in ``stats``. Node indices follow the sorted order of the distinct ids.

    The features file has a ``node`` column (ids of the same kind) and either numeric columns, one
    feature each, or a single list/array column of floats of fixed length. Nodes that appear only
    in the features file become isolated nodes; every node of the edges file needs a feature row.

    The nodes file (optional) has a ``node`` column listing nodes of the graph, those without
    edges included (they become isolated nodes, and need a feature row too when features are
    given).

    Raises:
        InputError: for any bad input; the message names the file, the column and example values.
    """
    edges_path = Path(edges_path)
    frame = read_parquet_table(edges_path, columns=["src", "dst"], what="edges file")
    if frame.height == 0:
        raise InputError(f"edges file {edges_path}: has no rows; a graph needs at least one edge")
    kinds = {c: id_kind(frame[c].dtype) for c in ("src", "dst")}
    for column, kind in kinds.items():
        if kind is None:
            raise InputError(
                f"edges file {edges_path} column {column}: ids must be integers or strings, got "
                f"{frame[column].dtype} (examples: {examples(frame[column])})"
            )
    if kinds["src"] != kinds["dst"]:
        raise InputError(
            f"edges file {edges_path}: columns src and dst must hold the same kind of id, but "
            f"src is {kinds['src']} ({frame['src'].dtype}) and dst is {kinds['dst']} "
            f"({frame['dst'].dtype})"
        )
    try:
        src_ids, dst_ids = as_id_series(frame["src"]), as_id_series(frame["dst"])
    except pl.exceptions.InvalidOperationError as exc:  # e.g. UInt64 ids beyond the Int64 range
        raise InputError(f"edges file {edges_path}: ids do not fit in Int64 ({exc})") from exc

    node_values = pl.concat([src_ids, dst_ids])
    if nodes_path is not None:
        node_values = pl.concat([node_values, _read_nodes(Path(nodes_path), kinds["src"])])
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
        what = "edges file" if nodes_path is None else "edges or nodes file"
        features = _features_tensor(features_frame, Path(features_path), id_map, node_values,
                                    what)
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


def _id_column(frame: pl.DataFrame, path: Path, what: str, edge_kind: str) -> pl.Series:
    """``frame``'s ``node`` column as canonical ids of the edges file's kind, or InputError."""
    if "node" not in frame.columns:
        raise InputError(
            f"{what} {path}: missing column node "
            f"(columns present: {', '.join(frame.columns)})"
        )
    kind = id_kind(frame["node"].dtype)
    if kind != edge_kind:
        raise InputError(
            f"{what} {path} column node: ids are {kind or frame['node'].dtype} but the "
            f"edges file's ids are {edge_kind} (examples: {examples(frame['node'])})"
        )
    try:
        return as_id_series(frame["node"])
    except pl.exceptions.InvalidOperationError as exc:
        raise InputError(f"{what} {path} column node: ids do not fit in Int64 ({exc})") from exc


def _read_nodes(path: Path, edge_kind: str) -> pl.Series:
    """The ids of a nodes file (column ``node``), in the edges file's kind."""
    frame = read_parquet_table(path, columns=["node"], what="nodes file")
    return _id_column(frame, path, "nodes file", edge_kind)


def _read_features_frame(path: Path, edge_kind: str) -> pl.DataFrame:
    """Read and check a features file; returns ``node`` (canonical ids) plus the value columns."""
    frame = read_parquet_table(path, columns=None, what="features file")
    frame = frame.with_columns(_id_column(frame, path, "features file", edge_kind))
    duplicated = frame["node"].filter(frame["node"].is_duplicated()).unique(maintain_order=True)
    if duplicated.len():
        raise InputError(
            f"features file {path} column node: {duplicated.len()} node(s) have more than one row: "
            f"{examples(duplicated)}"
        )
    value_columns = [c for c in frame.columns if c != "node"]
    if not value_columns:
        raise InputError(f"features file {path}: no feature columns besides node")
    return frame


def _features_matrix(frame: pl.DataFrame, path: Path) -> tuple[np.ndarray, list[str]]:
    """The feature values as a float64 ``[rows, F]`` array, in the frame's row order, and the
    name of each of its ``F`` columns for messages (``vec[3]``: item 3 of a list column)."""
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
                odd = frame["node"].filter(lengths != first).head(EXAMPLES + 1).to_list()
                raise InputError(
                    f"features file {path} column {column}: lists have different lengths "
                    f"({examples(distinct.to_list())}); first row has {first}, nodes with another "
                    f"length: {examples(odd)}"
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
                f"{examples(nodes)}"
            )
        values = flat.cast(pl.Float64).to_numpy().reshape(frame.height, width)
        return values, [f"{column}[{k}]" for k in range(width)]
    not_numeric = [c for c in value_columns if not frame[c].dtype.is_numeric()]
    if not_numeric:
        column = not_numeric[0]
        raise InputError(
            f"features file {path} column {column}: feature columns must be numeric, got "
            f"{frame[column].dtype} (examples: {examples(frame[column])})"
        )
    return frame.select(pl.col(value_columns).cast(pl.Float64)).to_numpy(), value_columns


FLOAT32_MAX = float(np.finfo(np.float32).max)


def _as_float32(values: np.ndarray, columns: list[str], frame: pl.DataFrame,
                path: Path) -> np.ndarray:
    """``[rows, F]`` float64 features as the float32 the model computes in, checked after the
    cast: a value that is NaN or infinite in the file, or finite there but beyond float32's range
    (it would become infinite, and train NaN weights), is refused naming nodes, columns, values.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        cast = values.astype(np.float32)
    bad = ~np.isfinite(cast)
    if not bad.any():
        return cast
    in_file = bad & ~np.isfinite(values)
    problem, what = ((in_file, "NaN or infinite features") if in_file.any() else
                     (bad, f"features beyond float32's range (|x| > {FLOAT32_MAX:.4g}; the "
                           "model computes in float32, where they become infinite)"))
    rows = problem.any(axis=1)
    named = [columns[k] for k in np.flatnonzero(problem.any(axis=0))]
    nodes = frame["node"].filter(pl.Series(rows)).head(EXAMPLES + 1).to_list()
    raise InputError(
        f"features file {path} column{'s' if len(named) > 1 else ''} {examples(named)}: "
        f"{int(rows.sum())} node(s) have {what}: {examples(nodes)} (values: "
        f"{examples(float(v) for v in values[problem][:EXAMPLES + 1])})"
    )


def _features_tensor(
    frame: pl.DataFrame, path: Path, id_map: IdMap, required: pl.Series, what: str
) -> torch.Tensor:
    """The ``[num_nodes, F]`` float32 feature matrix in node-index order; every node of
    ``required`` (the nodes of ``what``, e.g. the edges file) needs a row."""
    required = required.unique()
    missing = required.filter(~required.is_in(frame["node"].implode())).sort()
    if missing.len():
        raise InputError(
            f"features file {path} column node: {missing.len()} node(s) of the {what} have no "
            f"feature row: {examples(missing)}"
        )
    values = _as_float32(*_features_matrix(frame, path), frame, path)
    index = id_map.to_index(frame["node"], what=f"features file {path} column node")
    features = torch.zeros(len(id_map), values.shape[1], dtype=torch.float32)
    features[index] = torch.from_numpy(values)
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


def warn_overlapping_pairs(pos: torch.Tensor, neg: torch.Tensor, id_map: IdMap,
                           pos_path: Path, neg_path: Path) -> int:
    """Warn once when positive pairs are also negatives (the same unordered pair in both
    files): each then counts as both, which lowers every metric. Returns how many positive
    rows are also negatives.

    Args:
        pos, neg: ``[P, 2]`` and ``[Q, 2]`` int64 pairs in ``id_map``'s index space.
    """
    n = max(len(id_map), 1)

    def keys(pairs: torch.Tensor) -> np.ndarray:
        pairs = pairs.cpu().numpy()
        return pairs.min(axis=1) * n + pairs.max(axis=1)

    pos_keys = keys(pos)
    shared = np.isin(pos_keys, keys(neg))
    count = int(shared.sum())
    if count:  # examples as the positives file spells them, in its order
        _, first = np.unique(pos_keys[shared], return_index=True)
        rows = pos[torch.from_numpy(np.flatnonzero(shared)[np.sort(first)][:EXAMPLES + 1])]
        src = id_map.to_original(rows[:, 0]).to_list()
        dst = id_map.to_original(rows[:, 1]).to_list()
        logger.warning(
            "pairs files %s and %s: %d positive pair(s) are also negatives (the same unordered "
            "pair in both): %s; each counts as both, which lowers every metric",
            pos_path, neg_path, count, examples(zip(src, dst, strict=True)))
    return count


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

    try:
        data = Planetoid(root=str(root), name=pyg_name)[0]
    except OSError as exc:  # no raw files and no network (aiohttp errors are OSErrors too)
        raise InputError(
            f"dataset {name}: raw files not found under {root / pyg_name / 'raw'} and the "
            f"download failed ({type(exc).__name__}); pass --data-root with <Name>/raw inside"
        ) from exc
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
