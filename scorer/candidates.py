"""What ``ncnc candidates`` does: the node pairs two hops apart that are not yet linked.

A pair ``(u, v)`` is a candidate when ``u != v``, ``u`` and ``v`` are not adjacent and they share
at least one neighbour; ``common_neighbors`` is how many (``|N(u) ∩ N(v)|``, the count an NCN
model starts from). These are the pairs worth scoring when recommending new links: a pair without
a common neighbour gets no common-neighbour signal.

:func:`two_hop_candidates` enumerates them from the CSR graph with vectorised torch in chunks of
source nodes, each chunk expanding at most about ``max_paths`` two-hop paths, so memory stays
bounded whatever the graph (a single source whose own two-hop paths exceed the budget is one
chunk on its own). :func:`write_candidates` runs it over a bundle's graph into Parquet.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import torch
from torch import Tensor
from tqdm.auto import tqdm

from ncnc.core.errors import InputError
from ncnc.core.files import Publication, refuse_outputs_over_inputs
from ncnc.core.tables import read_parquet_table
from ncnc.scorer.outputs import ParquetRowWriter
from ncnc.triton_kernels import CSRGraph

DEFAULT_MAX_PATHS = 1 << 21  # about 150 MiB of intermediate tensors per chunk


@dataclass(frozen=True)
class CandidateChunk:
    """Candidates of a run of sources, sorted by source (in the order given) then ``dst`` index.

    Attributes:
        src, dst: ``[P]`` int64 node indices.
        common: ``[P]`` int64 number of common neighbours of ``src`` and ``dst`` (at least 1).
        sources: how many sources the chunk covered (for progress).
    """

    src: Tensor
    dst: Tensor
    common: Tensor
    sources: int


def ragged_arange(starts: Tensor, lengths: Tensor) -> Tensor:
    """``cat([arange(s, s + n) for s, n in zip(starts, lengths)])`` without a Python loop."""
    total = int(lengths.sum())
    if total == 0:
        return torch.zeros(0, dtype=torch.int64, device=starts.device)
    offsets = torch.cumsum(lengths, 0) - lengths
    base = torch.repeat_interleave(starts - offsets, lengths, output_size=total)
    return base + torch.arange(total, device=starts.device)


def two_hop_paths(graph: CSRGraph) -> Tensor:
    """``[num_nodes]`` int64: how many two-hop paths start at each node (``sum deg(b), b ∈ N(u)``)."""
    degree = graph.degree()
    summed = torch.zeros(graph.num_entries + 1, dtype=torch.int64, device=degree.device)
    summed[1:] = torch.cumsum(degree[graph.indices.long()], 0)
    return summed[graph.indptr[1:]] - summed[graph.indptr[:-1]]


def _chunk_candidates(graph: CSRGraph, sources: Tensor, *, upper_only: bool,
                      max_per_node: int | None) -> tuple[Tensor, Tensor, Tensor]:
    """Candidates of ``sources`` (one chunk): ``(src, dst, common)`` as in :class:`CandidateChunk`."""
    n = graph.num_nodes
    indptr, indices = graph.indptr, graph.indices.long()
    degree = graph.degree()
    m = sources.numel()
    # First hop: (owner, mid) for each neighbour of each source; owner = position in `sources`.
    d1 = degree[sources]
    owner1 = torch.repeat_interleave(torch.arange(m), d1)
    mid = indices[ragged_arange(indptr[sources], d1)]
    # Second hop: (owner, far) for each neighbour of each mid; the multiplicity of a pair is the
    # number of distinct mids, i.e. of common neighbours (rows hold no duplicates).
    d2 = degree[mid]
    owner2 = torch.repeat_interleave(owner1, d2)
    far = indices[ragged_arange(indptr[mid], d2)]
    keys, common = torch.unique(owner2 * n + far, sorted=True, return_counts=True)
    owner, dst = keys // n, keys % n
    src = sources[owner]
    keep = dst != src
    # Existing edges: owner1 * n + mid is sorted (owner ascending, rows sorted), so search it.
    edges = owner1 * n + mid
    if edges.numel():
        at = torch.searchsorted(edges, keys).clamp_(max=edges.numel() - 1)
        keep &= edges[at] != keys
    if upper_only:
        keep &= dst > src
    owner, src, dst, common = owner[keep], src[keep], dst[keep], common[keep]
    if max_per_node is not None and owner.numel():
        # Order by (owner, common descending, dst ascending) with stable sorts, then keep the
        # first max_per_node of each owner; finally restore (owner, dst) order.
        order = torch.sort(-common, stable=True).indices  # dst ascending within equal counts
        order = order[torch.sort(owner[order], stable=True).indices]
        grouped = owner[order]
        first = torch.searchsorted(grouped, grouped)
        chosen = order[torch.arange(grouped.numel()) - first < max_per_node]
        chosen = torch.sort(chosen).values
        src, dst, common = src[chosen], dst[chosen], common[chosen]
    return src, dst, common


def two_hop_candidates(graph: CSRGraph, sources: Tensor | None = None, *,
                       both_directions: bool = False, max_per_node: int | None = None,
                       max_paths: int = DEFAULT_MAX_PATHS) -> Iterator[CandidateChunk]:
    """Yield the non-adjacent two-hop pairs of ``graph``, chunk by chunk.

    Args:
        graph: symmetric CSR adjacency without self loops (``bundle.graph``).
        sources: int64 node indices to list candidates for, in the order wanted (each pair then
            has ``src`` = the source, so a pair may appear twice if both ends are listed);
            ``None`` lists every unordered pair once, as ``src < dst`` by index.
        both_directions: with ``sources=None``, list every pair from both ends (as when every
            node is listed), so that a per-source ranking covers each node's candidates.
        max_per_node: keep, per ``src``, the candidates with the most common neighbours (ties:
            the smaller ``dst`` index), at most this many. Applies to the rows as listed, so
            without ``sources`` to the pairs whose smaller end is the ``src``.
        max_paths: two-hop paths expanded per chunk at most (memory: about 80 bytes a path).

    Yields:
        :class:`CandidateChunk` s covering the sources in order.

    Shapes:
        ``graph.indptr``: ``[N + 1]``; ``sources``: ``[S]``; each chunk ``[P]``.
    """
    if max_per_node is not None and max_per_node < 1:
        raise ValueError(f"max_per_node must be at least 1, got {max_per_node}")
    graph = graph.to("cpu")
    upper_only = sources is None and not both_directions
    if sources is None:
        sources = torch.arange(graph.num_nodes)
    sources = sources.to("cpu", torch.int64)
    cost = torch.cumsum(two_hop_paths(graph)[sources], 0)
    start = 0
    while start < sources.numel():
        spent = int(cost[start - 1]) if start else 0
        end = int(torch.searchsorted(cost, torch.tensor(spent + max_paths), right=True))
        end = max(end, start + 1)
        src, dst, common = _chunk_candidates(graph, sources[start:end], upper_only=upper_only,
                                             max_per_node=max_per_node)
        yield CandidateChunk(src, dst, common, end - start)
        start = end


def write_candidates(bundle_path: Path | str, out: Path | str, *, nodes: Path | None = None,
                     both_directions: bool = False, max_per_node: int | None = None,
                     common_neighbors: bool = True, max_paths: int = DEFAULT_MAX_PATHS,
                     progress: bool = True, verify_key: Path | str | None = None
                     ) -> dict[str, Any]:
    """Write the two-hop candidate pairs of a bundle's graph to the Parquet file ``out``.

    Args:
        bundle_path: the bundle directory.
        out: the result, columns ``src``, ``dst`` (original ids) and, with ``common_neighbors``,
            ``common_neighbors`` (Int64); rows sorted by source then ``dst`` index. Written
            under a temporary name and renamed into place on success only.
        nodes: Parquet file whose column ``node`` lists the sources (duplicates count once, the
            first occurrence fixes the order); ``None`` lists each unordered pair once.
        both_directions, max_per_node, max_paths: see :func:`two_hop_candidates`.
        common_neighbors: write the ``common_neighbors`` column.
        progress: show a progress bar over the sources on stderr.
        verify_key: refuse the bundle unless its signature verifies with this PEM public key
            (:func:`ncnc.scorer.load_bundle`).

    Returns:
        A summary: ``bundle``, ``output``, ``sources``, ``pairs``, ``seconds``.

    Raises:
        InputError: bad bundle or nodes file (missing column, nulls, unknown ids), a signature
            that does not verify with ``verify_key``, or ``out`` is one of the inputs.
    """
    from ncnc.scorer.bundle import load_bundle

    started = time.perf_counter()
    out = Path(out)
    if out.is_dir():
        raise InputError(f"output {out}: is a folder; give a file name such as "
                         f"{out / 'candidates.parquet'}")
    read = [Path(p) for p in (nodes, verify_key) if p is not None]
    refuse_outputs_over_inputs([out], read, [bundle_path])
    # Only the graph is read, mapped from its file (no huge-page copy of anything).
    bundle = load_bundle(Path(bundle_path), huge_pages=False, verify_key=verify_key)
    id_map = bundle.id_map
    sources = None
    if nodes is not None:
        listed = read_parquet_table(nodes, columns=["node"], what="nodes file")["node"]
        sources = id_map.to_index(listed.unique(maintain_order=True),
                                  what=f"nodes file {nodes} column node")
    if max_per_node is not None and max_per_node < 1:
        raise InputError(f"--max-per-node must be at least 1, got {max_per_node}")
    schema = {"src": id_map.ids.dtype, "dst": id_map.ids.dtype}
    if common_neighbors:
        schema["common_neighbors"] = pl.Int64()
    count = bundle.graph.num_nodes if sources is None else sources.numel()
    with Publication() as publication:
        with ParquetRowWriter(publication.file(out), schema) as writer, tqdm(
            total=count, unit="nodes", unit_scale=True, desc="candidates", disable=not progress,
        ) as bar:
            for chunk in two_hop_candidates(bundle.graph, sources,
                                            both_directions=both_directions,
                                            max_per_node=max_per_node, max_paths=max_paths):
                columns = {"src": id_map.to_original(chunk.src),
                           "dst": id_map.to_original(chunk.dst)}
                if common_neighbors:
                    columns["common_neighbors"] = pl.Series(chunk.common.numpy(), dtype=pl.Int64)
                writer.write(pl.DataFrame(columns))
                bar.update(chunk.sources)
        publication.publish()
    return {"bundle": str(bundle_path), "output": str(out), "sources": count,
            "pairs": writer.rows_written, "seconds": round(time.perf_counter() - started, 3)}
