"""CSR adjacency used by every common-neighbour operation.

The common-neighbour step needs each node's neighbours as a sorted, duplicate-free run of
``indices`` so that intersections are merges. :func:`build_csr` is the one place that builds such
a structure from an edge list; :func:`validate_csr` is the one place that checks one handed in.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class CSRGraph:
    """Symmetric adjacency without self loops in compressed sparse row form.

    Attributes:
        indptr: ``[num_nodes + 1]`` int64, row ``v`` is ``indices[indptr[v]:indptr[v + 1]]``.
        indices: ``[nnz]`` int64 (or int32), each row sorted ascending without duplicates.
    """

    indptr: Tensor
    indices: Tensor

    @property
    def num_nodes(self) -> int:
        return self.indptr.numel() - 1

    @property
    def num_entries(self) -> int:
        return self.indices.numel()

    def degree(self) -> Tensor:
        return self.indptr[1:] - self.indptr[:-1]

    def to(self, device: torch.device | str) -> CSRGraph:
        return CSRGraph(self.indptr.to(device), self.indices.to(device))

    def edge_index(self) -> Tensor:
        """``[2, nnz]`` int64 (row, col) of every stored entry, both directions included: PyG's
        layout, for its message-passing layers (ncnc's own edges and pairs are ``[E, 2]``)."""
        rows = torch.repeat_interleave(
            torch.arange(self.num_nodes, device=self.indptr.device), self.degree()
        )
        return torch.stack([rows, self.indices.long()])


def build_csr(edges: Tensor, num_nodes: int) -> CSRGraph:
    """Symmetrise ``edges`` ([E, 2] int, one ``(src, dst)`` row per edge: the layout of every
    edge and pair tensor in ncnc), drop self loops and duplicates, sort each row."""
    if edges.dim() != 2 or edges.size(1) != 2:
        raise ValueError(f"edges must have shape [E, 2], got {tuple(edges.shape)}")
    src, dst = edges.long().unbind(1)
    if src.numel() and (min(src.min(), dst.min()) < 0 or max(src.max(), dst.max()) >= num_nodes):
        raise ValueError(f"edges hold ids outside [0, {num_nodes})")
    rows = torch.cat([src, dst])
    cols = torch.cat([dst, src])
    keep = rows != cols
    keys = torch.unique(rows[keep] * num_nodes + cols[keep])  # sorted: row-major, then column
    rows, cols = keys // num_nodes, keys % num_nodes
    indptr = torch.zeros(num_nodes + 1, dtype=torch.long, device=edges.device)
    indptr[1:] = torch.cumsum(torch.bincount(rows, minlength=num_nodes), 0)
    return CSRGraph(indptr, cols)


def validate_csr(indptr: Tensor, indices: Tensor) -> None:
    """Raise ``ValueError`` naming the first problem of a CSR pair handed in by a caller."""
    if indptr.dtype != torch.int64:
        raise ValueError(f"indptr must be int64, got {indptr.dtype}")
    if indices.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"indices must be int32 or int64, got {indices.dtype}")
    if indptr.dim() != 1 or indptr.numel() < 1:
        raise ValueError("indptr must be a non-empty 1-D tensor")
    if indptr.device != indices.device:
        raise ValueError(f"indptr on {indptr.device} but indices on {indices.device}")
    num_nodes = indptr.numel() - 1
    if int(indptr[0]) != 0 or int(indptr[-1]) != indices.numel():
        raise ValueError(
            f"indptr must start at 0 and end at len(indices)={indices.numel()}, "
            f"got {int(indptr[0])}..{int(indptr[-1])}"
        )
    if bool((indptr[1:] < indptr[:-1]).any()):
        raise ValueError("indptr must be non-decreasing")
    if indices.numel() == 0:
        return
    if int(indices.min()) < 0 or int(indices.max()) >= num_nodes:
        raise ValueError(
            f"indices hold node ids outside [0, {num_nodes}): min {int(indices.min())}, "
            f"max {int(indices.max())}"
        )
    # Within a row, each next entry must be strictly larger; row starts are exempt.
    increasing = indices[1:] > indices[:-1]
    row_start = torch.zeros(indices.numel(), dtype=torch.bool, device=indices.device)
    starts = indptr[:-1][indptr[:-1] < indices.numel()]
    row_start[starts] = True
    bad = ~(increasing | row_start[1:])
    if bool(bad.any()):
        pos = int(bad.nonzero()[0]) + 1
        row = int(torch.searchsorted(indptr, torch.tensor(pos, device=indptr.device), right=True)) - 1
        raise ValueError(
            f"row {row} of the CSR graph is not sorted without duplicates "
            f"(entry {pos}: {int(indices[pos - 1])} then {int(indices[pos])})"
        )
