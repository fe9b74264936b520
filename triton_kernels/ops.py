"""Public entry points of the common-neighbour step: validate at the boundary, then dispatch.

Every caller (trainer, exporter, scorer) goes through these functions.
"""

from __future__ import annotations

import torch
from torch import Tensor

from triton_kernels.common_neighbors import (
    NeighborSplit,
    common_neighbor_sum_reference,
    neighbor_split_reference,
    weighted_gather_sum_reference,
)


def _check_pairs(pairs: Tensor, num_nodes: int) -> None:
    if pairs.dim() != 2 or pairs.size(1) != 2:
        raise ValueError(f"pairs must have shape [B, 2], got {tuple(pairs.shape)}")
    if pairs.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"pairs must be int32 or int64, got {pairs.dtype}")
    if pairs.numel() and (int(pairs.min()) < 0 or int(pairs.max()) >= num_nodes):
        raise ValueError(
            f"pairs hold node ids outside [0, {num_nodes}): min {int(pairs.min())}, "
            f"max {int(pairs.max())}"
        )


def common_neighbor_sum(
    indptr: Tensor, indices: Tensor, x: Tensor, pairs: Tensor
) -> tuple[Tensor, Tensor]:
    """Sum of ``x`` over the common neighbours of each pair, and their count."""
    _check_pairs(pairs, indptr.numel() - 1)
    return common_neighbor_sum_reference(indptr, indices, x, pairs)


def neighbor_split(
    indptr: Tensor, indices: Tensor, pairs: Tensor, cap: int = -1, seed: int = 0
) -> NeighborSplit:
    """Common part and capped differences of N(i), N(j) for each pair (NCNC completion sets)."""
    _check_pairs(pairs, indptr.numel() - 1)
    return neighbor_split_reference(indptr, indices, pairs, cap, seed)


def weighted_gather_sum(offsets: Tensor, members: Tensor, weights: Tensor, x: Tensor) -> Tensor:
    """``sum_k weights[k] * x[members[k]]`` per ragged segment, ``[B, d]``."""
    return weighted_gather_sum_reference(offsets, members, weights, x)
