"""Synthetic graphs for the demo, tests and benchmarks (no data leaves or enters the machine).

:func:`community_graph` plants communities with heavy-tailed degrees and closes triangles, so
both node features and common neighbours carry signal, as in real social or citation graphs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl


@dataclass(frozen=True)
class SyntheticGraph:
    edges: pl.DataFrame  # src, dst (string ids "n<k>" or int64)
    features: pl.DataFrame | None  # node, f0..f{d-1}
    communities: np.ndarray  # [num_nodes] community of each node


def community_graph(
    num_nodes: int,
    avg_degree: float = 8.0,
    num_communities: int = 20,
    feature_dim: int = 16,
    closure: float = 0.5,
    string_ids: bool = False,
    seed: int = 0,
) -> SyntheticGraph:
    """Planted-partition graph with Pareto node weights plus triadic closure.

    ``closure`` is the share of edges added by closing two-hop paths. Features (when
    ``feature_dim > 0``) are a noisy community centroid, so they are informative but not decisive.
    """
    rng = np.random.default_rng(seed)
    community = rng.integers(0, num_communities, num_nodes)
    weight = rng.pareto(2.0, num_nodes) + 1.0
    num_edges = int(num_nodes * avg_degree / 2)
    num_base = int(num_edges * (1 - closure))
    src = rng.choice(num_nodes, num_base, p=weight / weight.sum())
    # 85% of base edges stay inside the source's community: draw a weighted member of it.
    order = np.lexsort((rng.random(num_nodes), community))
    sorted_comm = community[order]
    starts = np.searchsorted(sorted_comm, np.arange(num_communities))
    ends = np.searchsorted(sorted_comm, np.arange(num_communities), side="right")
    same = rng.random(num_base) < 0.85
    c = community[src]
    sizes = np.maximum(ends[c] - starts[c], 1)
    inside = order[np.minimum(starts[c] + (rng.random(num_base) ** 1.5 * sizes).astype(np.int64),
                              ends[c] - 1)]
    anywhere = rng.choice(num_nodes, num_base, p=weight / weight.sum())
    dst = np.where(same, inside, anywhere)
    src, dst = _closed_triangles(src, dst, num_edges - num_base, rng)
    keep = src != dst
    lo, hi = np.minimum(src[keep], dst[keep]), np.maximum(src[keep], dst[keep])
    pairs = np.unique(np.stack([lo, hi], 1), axis=0)
    ids = _ids(num_nodes, string_ids)
    edges = pl.DataFrame({"src": ids[pairs[:, 0]], "dst": ids[pairs[:, 1]]})
    features = None
    if feature_dim > 0:
        centroids = rng.normal(size=(num_communities, feature_dim))
        values = centroids[community] + rng.normal(scale=1.5, size=(num_nodes, feature_dim))
        features = pl.DataFrame({"node": ids}).with_columns(
            [pl.Series(f"f{k}", values[:, k].astype(np.float32)) for k in range(feature_dim)]
        )
    return SyntheticGraph(edges, features, community)


def _closed_triangles(
    src: np.ndarray, dst: np.ndarray, count: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Add ``count`` edges a-c for random two-hop paths a-b-c over the current edges."""
    if count <= 0 or src.size == 0:
        return src, dst
    a = np.concatenate([src, dst])
    b = np.concatenate([dst, src])
    order = np.argsort(a, kind="stable")
    a, b = a[order], b[order]
    pick = rng.integers(0, a.size, count)
    first, middle = a[pick], b[pick]
    lo = np.searchsorted(a, middle)
    hi = np.searchsorted(a, middle, side="right")
    third = b[lo + (rng.random(count) * (hi - lo)).astype(np.int64)]
    return np.concatenate([src, first]), np.concatenate([dst, third])


def _ids(num_nodes: int, string_ids: bool) -> np.ndarray:
    if string_ids:
        return np.array([f"n{k}" for k in range(num_nodes)], dtype=object)
    return np.arange(num_nodes, dtype=np.int64)
