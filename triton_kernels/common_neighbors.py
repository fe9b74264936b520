"""The common-neighbour step of NCN / NCNC: plain-torch references (the specification).

Three operations over a CSR graph (see :mod:`ncnc.triton_kernels.graph`) and target pairs ``[B, 2]``:

* :func:`common_neighbor_sum_reference`: ``sum_{u in N(i) & N(j)} x[u]`` and ``|N(i) & N(j)|``.
* :func:`neighbor_split_reference`: the members of ``N(i) & N(j)``, ``N(i) \\ N(j)`` and
  ``N(j) \\ N(i)`` in ragged form, the two differences capped and reweighted as NCNC does.
* :func:`weighted_gather_sum_reference`: ``sum_k w_k x[m_k]`` per ragged segment.
* :func:`concat_ragged_reference`: several ragged sets as one, pair by pair, so that one gather
  sums what several would (NCNC sums its three sets in one pass over ``x``).

Capping rule (deterministic, documented for users): a difference set ``S`` of pair ``(i, j)`` larger
than ``cap`` is replaced by ``cap`` members drawn uniformly *with replacement*; slot ``k`` takes
``S[slot_hash(i, j, k, 2 * seed + side) % |S|]`` (``side`` 0 for ``N(i) \\ N(j)``, 1 for the other),
each weighted ``|S| / cap``. The draw depends only on the pair and the seed, never on the batch
it sits in, so scores do not change with batch size, pair order or input file splits.
Uncapped sets list members in ascending node order with weight 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

_MASK32 = 0xFFFFFFFF


@dataclass(frozen=True)
class RaggedSet:
    """Per-pair variable-length member lists: pair ``b`` owns ``offsets[b]:offsets[b + 1]``.

    Attributes:
        offsets: ``[B + 1]`` int64.
        members: ``[M]`` int64 node ids.
        weights: ``[M]`` float32 multiplicity of each member in the sum.
    """

    offsets: Tensor
    members: Tensor
    weights: Tensor

    def sizes(self) -> Tensor:
        return self.offsets[1:] - self.offsets[:-1]

    def segment_ids(self) -> Tensor:
        """``[M]`` int64: the pair index each member belongs to."""
        return torch.repeat_interleave(
            torch.arange(self.offsets.numel() - 1, device=self.offsets.device), self.sizes()
        )


@dataclass(frozen=True)
class NeighborSplit:
    """The three neighbour sets NCNC reads for each target pair ``(i, j)``."""

    common: RaggedSet  # N(i) & N(j), weight 1
    only_i: RaggedSet  # N(i) \ N(j), capped and reweighted
    only_j: RaggedSet  # N(j) \ N(i), capped and reweighted


def slot_hash(i: Tensor, j: Tensor, k: Tensor, salt: int) -> Tensor:
    """32-bit hash of (i, j, k, salt) as int64 in [0, 2**32): a linear mix then murmur3's fmix32.

    Products may wrap in int64; only the low 32 bits are kept, so every backend that works in
    uint32 or wrapping int64 arithmetic reproduces it bit for bit.
    """
    salt &= _MASK32  # only the low 32 bits count; keeps salt * constant inside int64 for any seed
    h = (i * 0x9E3779B1 + j * 0x85EBCA77 + k * 0xC2B2AE3D + salt * 0x27D4EB2F) & _MASK32
    h = h ^ (h >> 16)
    h = (h * 0x85EBCA6B) & _MASK32
    h = h ^ (h >> 13)
    h = (h * 0xC2B2AE35) & _MASK32
    return h ^ (h >> 16)


def _offsets_from_sizes(sizes: Tensor) -> Tensor:
    offsets = torch.zeros(sizes.numel() + 1, dtype=torch.long, device=sizes.device)
    offsets[1:] = torch.cumsum(sizes, 0)
    return offsets


def _local_positions(sizes: Tensor, offsets: Tensor) -> Tensor:
    """For ragged segments, the position of each element inside its own segment."""
    total = int(offsets[-1])
    return torch.arange(total, device=sizes.device) - torch.repeat_interleave(offsets[:-1], sizes)


def _gather_rows(indptr: Tensor, indices: Tensor, nodes: Tensor) -> tuple[Tensor, Tensor]:
    """Concatenated neighbour lists of ``nodes``: (segment id per entry, neighbour per entry)."""
    starts = indptr[nodes]
    sizes = indptr[nodes + 1] - starts
    offsets = _offsets_from_sizes(sizes)
    local = _local_positions(sizes, offsets)
    segment = torch.repeat_interleave(torch.arange(nodes.numel(), device=nodes.device), sizes)
    return segment, indices[torch.repeat_interleave(starts, sizes) + local].long()


def _ragged(segment: Tensor, members: Tensor, num_pairs: int) -> RaggedSet:
    sizes = torch.bincount(segment, minlength=num_pairs)
    weights = torch.ones(members.numel(), dtype=torch.float32, device=members.device)
    return RaggedSet(_offsets_from_sizes(sizes), members, weights)


def _cap(ragged: RaggedSet, pairs: Tensor, cap: int, salt: int) -> RaggedSet:
    """Replace each set larger than ``cap`` by ``cap`` hashed draws weighted ``|S| / cap``."""
    sizes = ragged.sizes()
    if cap < 0 or not bool((sizes > cap).any()):
        return ragged
    new_sizes = torch.where(sizes > cap, torch.full_like(sizes, cap), sizes)
    new_offsets = _offsets_from_sizes(new_sizes)
    segment = torch.repeat_interleave(torch.arange(sizes.numel(), device=sizes.device), new_sizes)
    slot = _local_positions(new_sizes, new_offsets)
    capped = sizes[segment] > cap
    pick = torch.where(
        capped,
        slot_hash(pairs[segment, 0], pairs[segment, 1], slot, salt) % sizes[segment].clamp(min=1),
        slot,
    )
    members = ragged.members[ragged.offsets[segment] + pick]
    weights = torch.where(
        capped, sizes[segment].to(torch.float32) / cap, torch.ones_like(slot, dtype=torch.float32)
    )
    return RaggedSet(new_offsets, members, weights)


def neighbor_split_reference(
    indptr: Tensor, indices: Tensor, pairs: Tensor, cap: int = -1, seed: int = 0
) -> NeighborSplit:
    """Split N(i) and N(j) of each pair into common part and the two differences.

    Args:
        indptr, indices: CSR graph, rows sorted without duplicates.
        pairs: ``[B, 2]`` int64 target pairs ``(i, j)``.
        cap: largest size kept for each difference set; ``-1`` keeps all.
        seed: salt of the capping draws (see module docstring).
    """
    pairs = pairs.long()
    num_pairs = pairs.size(0)
    seg_i, nbr_i = _gather_rows(indptr, indices, pairs[:, 0])
    seg_j, nbr_j = _gather_rows(indptr, indices, pairs[:, 1])
    n = indptr.numel()  # > every node id, so (segment, node) keys sort segment-major
    keys_i = seg_i * n + nbr_i
    keys_j = seg_j * n + nbr_j
    i_in_j = torch.isin(keys_i, keys_j)
    j_in_i = torch.isin(keys_j, keys_i)
    common = _ragged(seg_i[i_in_j], nbr_i[i_in_j], num_pairs)
    only_i = _ragged(seg_i[~i_in_j], nbr_i[~i_in_j], num_pairs)
    only_j = _ragged(seg_j[~j_in_i], nbr_j[~j_in_i], num_pairs)
    return NeighborSplit(
        common=common,
        only_i=_cap(only_i, pairs, cap, 2 * seed),
        only_j=_cap(only_j, pairs, cap, 2 * seed + 1),
    )


def weighted_gather_sum_reference(
    offsets: Tensor, members: Tensor, weights: Tensor, x: Tensor
) -> Tensor:
    """``out[b] = sum_{k in segment b} weights[k] * x[members[k]]``, shape ``[B, d]``.

    Accumulates in float32 (float64 when ``x`` is float64); differentiable with respect to ``x``.
    """
    acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    num_pairs = offsets.numel() - 1
    sizes = offsets[1:] - offsets[:-1]
    segment = torch.repeat_interleave(torch.arange(num_pairs, device=offsets.device), sizes)
    rows = x[members.long()].to(acc_dtype) * weights.to(acc_dtype).unsqueeze(1)
    out = torch.zeros(num_pairs, x.size(1), dtype=acc_dtype, device=x.device)
    return out.index_add(0, segment, rows)


def concat_ragged_reference(parts: Sequence[RaggedSet]) -> RaggedSet:
    """One ragged set holding, for each pair, the members of ``parts[0]``, then of ``parts[1]``,
    and so on (each in its own order), with their weights; all parts have the same pairs.

    Its weighted gather-sum is the sum of the parts' gather-sums, read in one pass. Written
    without data-dependent loops (a stable sort by pair), so ``torch.export`` can trace it.
    """
    segments = torch.cat([part.segment_ids() for part in parts])
    order = torch.argsort(segments, stable=True)
    members = torch.cat([part.members.long() for part in parts])[order]
    weights = torch.cat([part.weights.float() for part in parts])[order]
    offsets = torch.stack([part.offsets for part in parts]).sum(0)
    return RaggedSet(offsets, members, weights)


def endpoint_product_reference(h: Tensor, pairs: Tensor) -> Tensor:
    """``h[i] * h[j]`` for each pair ``(i, j)``: the head's ``xij``. Half-precision tables give
    float32 products (exact: two 8- or 11-bit significands fit in float32's 24), as the other
    common-neighbour operations accumulate half inputs in float32."""
    if h.dtype in (torch.float16, torch.bfloat16):
        return h[pairs[:, 0]].float() * h[pairs[:, 1]].float()
    return h[pairs[:, 0]] * h[pairs[:, 1]]


def common_neighbor_sum_reference(
    indptr: Tensor, indices: Tensor, x: Tensor, pairs: Tensor
) -> tuple[Tensor, Tensor]:
    """``(sum_{u in N(i) & N(j)} x[u]  [B, d], |N(i) & N(j)|  [B] int64)`` for each pair."""
    common = neighbor_split_reference(indptr, indices, pairs).common
    sums = weighted_gather_sum_reference(common.offsets, common.members, common.weights, x)
    return sums, common.sizes()


@dataclass(frozen=True)
class SplitLayout:
    """Where each pair's three sets go in the ragged outputs of a split, before they are filled.

    Shared by the CPU twin and the Triton launcher, so both lay out (and weight) the output exactly
    as :func:`neighbor_split_reference` does.
    """

    common_offsets: Tensor  # [B + 1] int64
    only_i_offsets: Tensor  # [B + 1] int64, capped sizes
    only_j_offsets: Tensor  # [B + 1] int64, capped sizes
    weight_i: Tensor  # [B] float32: |S| / cap for a capped N(i) \ N(j), else 1
    weight_j: Tensor  # [B] float32
    common_total: int
    only_i_total: int
    only_j_total: int

    @staticmethod
    def salts(seed: int) -> tuple[int, int]:
        """Hash salts of the two sides, reduced to the 32 bits the hash reads (non-negative)."""
        return (2 * seed) & _MASK32, (2 * seed + 1) & _MASK32


def split_layout(indptr: Tensor, pairs: Tensor, common_counts: Tensor, cap: int) -> SplitLayout:
    """Offsets and capping weights of a split from ``|N(i) & N(j)|`` per pair (see module doc)."""
    pairs = pairs.long()
    deg = indptr[1:] - indptr[:-1]
    sides = []
    for side in (0, 1):
        size = deg[pairs[:, side]] - common_counts
        if cap < 0:
            kept, weight = size, torch.ones(size.shape, dtype=torch.float32, device=size.device)
        else:
            capped = size > cap
            kept = torch.where(capped, torch.full_like(size, cap), size)
            weight = torch.where(
                capped, size.to(torch.float32) / max(cap, 1), torch.ones_like(size, dtype=torch.float32)
            )
        sides.append((_offsets_from_sizes(kept), weight))
    (off_i, w_i), (off_j, w_j) = sides
    off_c = _offsets_from_sizes(common_counts)
    totals = torch.stack([off_c[-1], off_i[-1], off_j[-1]]).tolist()
    return SplitLayout(off_c, off_i, off_j, w_i, w_j, *totals)
