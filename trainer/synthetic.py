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


def edge_frame(pairs: np.ndarray, num_nodes: int, string_ids: bool = False) -> pl.DataFrame:
    """Undirected ``[k, 2]`` pairs as a unique ``src < dst`` edge list without self loops."""
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    pairs = np.unique(np.sort(pairs, axis=1), axis=0)
    ids = _ids(num_nodes, string_ids)
    return pl.DataFrame({"src": ids[pairs[:, 0]], "dst": ids[pairs[:, 1]]})


def preferential_attachment_graph(num_nodes: int, edges_per_node: int = 3,
                                  triangle_prob: float = 0.5, seed: int = 0) -> pl.DataFrame:
    """Holme-Kim growth: heavy-tailed degrees with clustering (router, protein, web graphs).

    Each new node links to ``edges_per_node`` distinct older nodes: the first by preferential
    attachment (probability proportional to degree), each further one, with probability
    ``triangle_prob``, to a neighbour of the node just linked (closing a triangle), else again
    by preferential attachment.
    """
    rng = np.random.default_rng(seed)
    m = edges_per_node
    neighbours: list[list[int]] = [[] for _ in range(num_nodes)]
    endpoints: list[int] = list(range(m))  # each node once per edge end (plus the seed nodes)
    pairs = []
    for new in range(m, num_nodes):
        targets: list[int] = []
        while len(targets) < m:
            last = targets[-1] if targets else None
            if last is not None and neighbours[last] and rng.random() < triangle_prob:
                pick = neighbours[last][rng.integers(len(neighbours[last]))]
            else:
                pick = endpoints[rng.integers(len(endpoints))]
            if pick != new and pick not in targets:
                targets.append(pick)
        for target in targets:
            pairs.append((new, target))
            neighbours[new].append(target)
            neighbours[target].append(new)
            endpoints += [new, target]
    return edge_frame(np.array(pairs), num_nodes)


def near_tree_graph(num_nodes: int, extra_edges: float = 0.5, nearest: int = 6,
                    seed: int = 0) -> pl.DataFrame:
    """A sparse spatial graph, nearly a tree (power grids, road networks).

    Nodes are random points in the unit square; each links to the nearest earlier point (a
    spanning tree of short links), then ``extra_edges * (num_nodes - 1)`` more links join a random
    node to one of its ``nearest`` nearest points (those already present are dropped): local
    cycles, few triangles, mean degree at most ``2 * (1 + extra_edges)`` (2.7 at the default, as
    the US power grid).
    """
    from scipy.spatial import cKDTree

    rng = np.random.default_rng(seed)
    points = rng.random((num_nodes, 2))
    pairs = []
    for node in range(1, num_nodes):
        distances = ((points[:node] - points[node]) ** 2).sum(1)
        pairs.append((node, int(distances.argmin())))
    count = int(extra_edges * (num_nodes - 1))
    _, near = cKDTree(points).query(points, k=nearest + 1)  # column 0 is the point itself
    sources = rng.integers(0, num_nodes, count)
    targets = near[sources, rng.integers(1, nearest + 1, count)]
    pairs += list(zip(sources.tolist(), targets.tolist()))
    return edge_frame(np.array(pairs), num_nodes)


def planted_partition_graph(num_nodes: int, num_communities: int = 10,
                            inside_degree: float = 20.0, outside_degree: float = 3.0,
                            seed: int = 0) -> pl.DataFrame:
    """Dense communities with even degrees (a stochastic block model: social, co-purchase).

    Every pair inside a community is an edge with the probability that gives a mean of
    ``inside_degree`` neighbours there, every other pair with the probability for
    ``outside_degree`` neighbours elsewhere.
    """
    rng = np.random.default_rng(seed)
    community = rng.integers(0, num_communities, num_nodes)
    size = num_nodes / num_communities
    p_in = inside_degree / (size - 1)
    p_out = outside_degree / (num_nodes - size)
    lo, hi = np.triu_indices(num_nodes, k=1)
    same = community[lo] == community[hi]
    keep = rng.random(lo.size) < np.where(same, p_in, p_out)
    return edge_frame(np.stack([lo[keep], hi[keep]], 1), num_nodes)
