"""Public entry points of the common-neighbour step: validate at the boundary, then dispatch.

Every caller (trainer, exporter, scorer) goes through these functions. The three
common-neighbour operations check their inputs and call one ``torch.ops.ncnc`` operator
(:mod:`ncnc.triton_kernels.library`); the dispatcher runs the Triton kernels for CUDA tensors and the
numba twin for CPU tensors. All three are differentiable with respect to ``x`` (not with respect
to ``weights``). Two helpers of the scorer's hot path, :func:`endpoint_product` and
:func:`concat_ragged`, are plain functions: a numba pass on the CPU, their torch reference
elsewhere (CUDA, autograd, tracing), with the same results.

Validation cost, and the ``check`` flag:

* always (cheap): dtypes, shapes, devices, pair ids in range (``O(B)``), ragged offsets consistent
  (``O(B)``);
* with ``check=True`` (the default): the CSR graph is fully validated (rows sorted without
  duplicates, ids in range: ``O(nnz)``) the first time a given pair of ``indptr`` / ``indices``
  tensors is seen; the result is remembered until either tensor is modified in place or freed, so
  repeated calls on one graph pay it once. ``weighted_gather_sum`` checks member ids (``O(M)``).
* ``check=False`` skips the ``O(nnz)`` / ``O(M)`` checks: for callers that built the graph with
  :func:`ncnc.triton_kernels.build_csr` themselves. An unsorted row then gives wrong results; an id out
  of range may crash.

While ``torch.export`` / ``torch.compile`` trace, only the metadata checks run (values are not
known then).
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from ncnc.triton_kernels import library  # registers torch.ops.ncnc.*
from ncnc.triton_kernels.common_neighbors import (
    NeighborSplit,
    RaggedSet,
    concat_ragged_reference,
    endpoint_product_reference,
)
from ncnc.triton_kernels.graph import validate_csr

_INDEX_DTYPES = (torch.int32, torch.int64)
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

# (id(indptr), id(indices)) -> (weakrefs to both, their versions) of graphs that passed validate_csr
_validated: dict[tuple[int, int], tuple[weakref.ref, weakref.ref, int, int]] = {}


def _tracing() -> bool:
    return torch.compiler.is_compiling()


def _min_max(t: Tensor) -> tuple[int, int]:
    """Smallest and largest entry of a non-empty index tensor. On the CPU through numpy: a
    single-threaded pass beats torch's threaded reductions, which stall on a busy machine."""
    if t.device.type == "cpu":
        values = t.detach().numpy()
        return int(values.min()), int(values.max())
    low, high = torch.aminmax(t)
    return int(low), int(high)


def _decreases(t: Tensor) -> bool:
    """Whether some entry of a 1-D tensor is smaller than the one before it."""
    if t.device.type == "cpu":
        return bool((np.diff(t.detach().numpy()) < 0).any())
    return bool((t[1:] < t[:-1]).any())


def _check_same_device(**tensors: Tensor) -> None:
    devices = {name: t.device for name, t in tensors.items()}
    if len(set(devices.values())) > 1:
        listed = ", ".join(f"{name} on {device}" for name, device in devices.items())
        raise ValueError(f"inputs must be on one device, got {listed}")


def _check_features(x: Tensor, min_rows: int | None = None) -> None:
    if x.dim() != 2 or x.dtype not in _FLOAT_DTYPES:
        raise ValueError(
            f"x must be a 2-D float16/bfloat16/float32/float64 tensor, got {x.dtype} "
            f"{tuple(x.shape)}"
        )
    if min_rows is not None and not _tracing() and x.size(0) < min_rows:
        raise ValueError(f"x has {x.size(0)} rows but the graph has {min_rows} nodes")


def _validate_graph_once(indptr: Tensor, indices: Tensor) -> None:
    key = (id(indptr), id(indices))
    seen = _validated.get(key)
    if (
        seen is not None
        and seen[0]() is indptr
        and seen[1]() is indices
        and seen[2:] == (indptr._version, indices._version)
    ):
        return
    validate_csr(indptr, indices)

    def forget(_ref: weakref.ref) -> None:
        _validated.pop(key, None)

    _validated[key] = (
        weakref.ref(indptr, forget),
        weakref.ref(indices, forget),
        indptr._version,
        indices._version,
    )


def _check_graph(indptr: Tensor, indices: Tensor, pairs: Tensor, check: bool) -> None:
    if indptr.dtype != torch.int64 or indptr.dim() != 1 or indptr.numel() < 1:
        raise ValueError(
            f"indptr must be a non-empty 1-D int64 tensor, got {indptr.dtype} {tuple(indptr.shape)}"
        )
    if indices.dtype not in _INDEX_DTYPES or indices.dim() != 1:
        raise ValueError(f"indices must be a 1-D int32/int64 tensor, got {indices.dtype}")
    _check_pairs(pairs, indptr.numel() - 1)
    if check and not _tracing():
        _validate_graph_once(indptr, indices)


def _check_pairs(pairs: Tensor, num_nodes: int) -> None:
    if pairs.dim() != 2 or pairs.size(1) != 2:
        raise ValueError(f"pairs must have shape [B, 2], got {tuple(pairs.shape)}")
    if pairs.dtype not in _INDEX_DTYPES:
        raise ValueError(f"pairs must be int32 or int64, got {pairs.dtype}")
    if _tracing():
        return
    if pairs.numel():
        low, high = _min_max(pairs)
        if low < 0 or high >= num_nodes:
            raise ValueError(f"pairs hold node ids outside [0, {num_nodes}): min {low}, max {high}")


def _check_ragged(offsets: Tensor, members: Tensor, weights: Tensor, x: Tensor, check: bool) -> None:
    if offsets.dtype != torch.int64 or offsets.dim() != 1 or offsets.numel() < 1:
        raise ValueError(
            f"offsets must be a non-empty 1-D int64 tensor, got {offsets.dtype} "
            f"{tuple(offsets.shape)}"
        )
    if members.dtype not in _INDEX_DTYPES or members.dim() != 1:
        raise ValueError(f"members must be a 1-D int32/int64 tensor, got {members.dtype}")
    if weights.dtype not in _FLOAT_DTYPES or weights.shape != members.shape:
        raise ValueError(
            f"weights must be a float tensor shaped like members {tuple(members.shape)}, got "
            f"{weights.dtype} {tuple(weights.shape)}"
        )
    if weights.requires_grad and torch.is_grad_enabled():
        raise ValueError(
            "weighted_gather_sum is differentiable with respect to x only; pass weights.detach()"
        )
    if _tracing():
        return
    if int(offsets[0]) != 0 or int(offsets[-1]) != members.numel():
        raise ValueError(
            f"offsets must run from 0 to len(members)={members.numel()}, got "
            f"{int(offsets[0])}..{int(offsets[-1])}"
        )
    if _decreases(offsets):
        raise ValueError("offsets must be non-decreasing")
    if check and members.numel():
        low, high = _min_max(members)
        if low < 0 or high >= x.size(0):
            raise ValueError(f"members hold ids outside [0, {x.size(0)}): min {low}, max {high}")


def common_neighbor_sum(
    indptr: Tensor, indices: Tensor, x: Tensor, pairs: Tensor, *, check: bool = True
) -> tuple[Tensor, Tensor]:
    """Sum of ``x`` over the common neighbours of each pair, and their count (NCN's ``cn``).

    ``sums[b] = sum_{u in N(i) & N(j)} x[u]`` and ``counts[b] = |N(i) & N(j)|`` for
    ``(i, j) = pairs[b]``; differentiable with respect to ``x``.

    Args:
        indptr, indices: CSR graph (``int64`` / ``int32`` or ``int64``), rows sorted, no duplicates.
        x: ``[n, d]`` float32 or float64; float16 / bfloat16 too, accumulated in float32 (the CPU
            twin first widens a half ``x`` to float32, one copy of ``x`` per call).
        pairs: ``[B, 2]`` int32 or int64 node ids.
        check: fully validate the graph (see the module docstring).

    Shapes:
        returns ``sums [B, d]`` (float32; float64 when ``x`` is float64) and ``counts [B]`` int64.
    """
    _check_same_device(indptr=indptr, indices=indices, x=x, pairs=pairs)
    _check_graph(indptr, indices, pairs, check)
    _check_features(x, indptr.numel() - 1)
    return torch.ops.ncnc.common_neighbor_sum(indptr, indices, x, pairs)


def neighbor_split(
    indptr: Tensor, indices: Tensor, pairs: Tensor, cap: int = -1, seed: int = 0, *, check: bool = True
) -> NeighborSplit:
    """Common part and capped differences of N(i), N(j) for each pair (NCNC completion sets).

    Members are listed in ascending node order; a difference larger than ``cap`` is replaced by
    ``cap`` hashed draws weighted ``|S| / cap`` (rule in :mod:`ncnc.triton_kernels.common_neighbors`),
    bit for bit as :func:`~ncnc.triton_kernels.common_neighbors.neighbor_split_reference`.

    Args:
        cap: largest size kept for each difference set; ``-1`` keeps all.
        seed: salt of the capping draws.
        check: fully validate the graph (see the module docstring).
    """
    _check_same_device(indptr=indptr, indices=indices, pairs=pairs)
    _check_graph(indptr, indices, pairs, check)
    flat = torch.ops.ncnc.neighbor_split(indptr, indices, pairs, int(cap), int(seed))
    return NeighborSplit(RaggedSet(*flat[0:3]), RaggedSet(*flat[3:6]), RaggedSet(*flat[6:9]))


def weighted_gather_sum(
    offsets: Tensor, members: Tensor, weights: Tensor, x: Tensor, *, check: bool = True
) -> Tensor:
    """``out[b] = sum_{k in offsets[b]:offsets[b+1]} weights[k] * x[members[k]]``.

    Differentiable with respect to ``x`` only (``weights`` must not require grad).

    Shapes:
        offsets ``[B + 1]`` int64, members ``[M]`` int32/int64, weights ``[M]`` float,
        x ``[n, d]``; returns ``[B, d]`` (float32; float64 when ``x`` is float64).
    """
    _check_same_device(offsets=offsets, members=members, weights=weights, x=x)
    _check_features(x)
    _check_ragged(offsets, members, weights, x, check)
    return torch.ops.ncnc.weighted_gather_sum(offsets, members, weights, x)


def endpoint_product(h: Tensor, pairs: Tensor) -> Tensor:
    """``h[i] * h[j]`` for each pair ``(i, j)`` (the head's ``xij``), ``[B, d]`` in ``h``'s dtype
    (float32 for half-precision ``h``: the products are exact).

    On the CPU, for a float32 / float64 / bfloat16 ``h`` outside autograd and tracing, one compiled
    pass reads both rows of each pair with prefetching: about 4x faster than two index gathers and
    a multiply on a 1M x 256 table. Elsewhere it is
    :func:`~ncnc.triton_kernels.common_neighbors.endpoint_product_reference`; both give the same bits
    (one multiplication per element).
    """
    if h.dim() != 2:
        raise ValueError(f"h must be a 2-D tensor, got shape {tuple(h.shape)}")
    _check_same_device(h=h, pairs=pairs)
    _check_pairs(pairs, h.size(0))
    compiled = (
        h.device.type == "cpu"
        and h.dtype in (torch.float32, torch.float64, torch.bfloat16)
        and not _tracing()
        and not (h.requires_grad and torch.is_grad_enabled())
    )
    if not compiled:
        return endpoint_product_reference(h, pairs)
    return library.cpu.endpoint_product_cpu(h, pairs)


def concat_ragged(parts: Sequence[RaggedSet]) -> RaggedSet:
    """Several ragged sets over the same pairs as one: for each pair the members (and weights) of
    ``parts[0]``, then ``parts[1]``, ... So ``weighted_gather_sum`` of the result sums in one pass
    over ``x`` what one call per part, added up, would: NCNC gathers its common part and both
    completed differences this way.

    On the CPU (outside tracing) one compiled pass per part; elsewhere
    :func:`~ncnc.triton_kernels.common_neighbors.concat_ragged_reference`, which gives the same tensors.
    """
    if not parts:
        raise ValueError("concat_ragged needs at least one ragged set")
    _check_same_device(**{f"part{k}": part.offsets for k, part in enumerate(parts)})
    if not _tracing() and len({part.offsets.numel() for part in parts}) > 1:
        shapes = [tuple(part.offsets.shape) for part in parts]
        raise ValueError(f"ragged sets must cover the same pairs, got offsets of shapes {shapes}")
    if parts[0].offsets.device.type != "cpu" or _tracing():
        return concat_ragged_reference(parts)
    flat = [(part.offsets, part.members, part.weights.detach()) for part in parts]
    return RaggedSet(*library.cpu.concat_ragged_cpu(flat))
