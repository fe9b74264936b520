"""Triton kernels of the common-neighbour step, and the launchers that check, allocate and launch.

Three kernels, each one program per pair (or ragged segment) and, where ``x`` is read, per tile of
``BLOCK_D`` feature columns:

* :func:`_cn_kernel`: probes the shorter of the two sorted rows into the longer one, ``BLOCK_K``
  values at a time, each with a vectorised binary search (the lower bound moves forward from chunk
  to chunk because both rows are ascending). ``MODE`` picks what a hit does: add ``x[u]`` into an
  fp32 (fp64 for fp64 ``x``) accumulator (forward), ``atomic_add`` the pair's upstream gradient
  into ``grad_x[u]`` (backward, fused: no list of common neighbours is ever written), or only count
  (the first pass of the split).
* :func:`_split_fill_kernel`: second pass of the split. Writes the common members in ascending
  order together with their positions in row ``i`` and row ``j``; a difference set is then either
  the row with those positions skipped, or, when capped, ``cap`` hashed ranks mapped to row
  positions by a binary search over the common positions (``row position = rank + #{t : pos[t] - t
  <= rank}``), so a hub row is never walked for a capped difference. No scratch buffer.
* :func:`_gather_kernel`: weighted ragged gather-sum ``out[b] = sum_k w_k x[m_k]`` (forward) and
  its transpose ``grad_x[m_k] += w_k grad[b]`` with atomics (backward).

Launchers run the autotuned kernels through :func:`torch.library.wrap_triton`, so the same code is
the body of the ``torch.library.triton_op`` registrations in :mod:`ncnc.triton_kernels.library`. Under
``TRITON_INTERPRET=1`` (the CPU tests) they bypass autotuning and launch one fixed configuration on
CPU tensors.
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import wrap_triton

from ncnc.triton_kernels.common_neighbors import SplitLayout, split_layout

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

# Forward / backward / count-only modes of the kernels that read or write feature rows.
MODE_SUM, MODE_SCATTER, MODE_COUNT = 0, 1, 2

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


# ---------------------------------------------------------------------------------------------
# Device helpers


@triton.jit
def _search_steps(length):
    """Iterations a binary search over ``length`` entries needs: the bit length of ``length``."""
    steps = tl.full([], 0, tl.int32)
    while length > 0:
        length = length >> 1
        steps += 1
    return steps


@triton.jit
def _lower_bound(sorted_ptr, lo, hi, values, mask, steps):
    """Vectorised lower bound: per lane, the first position in ``[lo, hi)`` holding ``>= value``.

    ``lo`` and ``hi`` are per-lane vectors, ``steps`` the iteration count for the widest range.
    """
    for _ in range(steps):
        active = mask & (lo < hi)
        mid = (lo + hi) >> 1
        probe = tl.load(sorted_ptr + mid, mask=active, other=0)
        right = active & (probe < values)
        lo = tl.where(right, mid + 1, lo)
        hi = tl.where(active & (probe >= values), mid, hi)
    return lo


@triton.jit
def _probe_chunk(indices, offs, mask, q_start, q_end):
    """Look up ``indices[offs]`` in the sorted run ``indices[q_start:q_end]``.

    Returns the values, a hit mask and each lane's lower-bound position in the run.
    """
    values = tl.load(indices + offs, mask=mask, other=0)
    lo = tl.zeros_like(offs) + q_start
    hi = tl.zeros_like(offs) + q_end
    lo = _lower_bound(indices, lo, hi, values, mask, _search_steps(q_end - q_start))
    inside = mask & (lo < q_end)
    found = inside & (tl.load(indices + lo, mask=inside, other=0) == values)
    return values, found, lo


@triton.jit
def _row_bounds(indptr, pairs, b):
    i = tl.load(pairs + 2 * b).to(tl.int64)
    j = tl.load(pairs + 2 * b + 1).to(tl.int64)
    si = tl.load(indptr + i)
    ei = tl.load(indptr + i + 1)
    sj = tl.load(indptr + j)
    ej = tl.load(indptr + j + 1)
    return i, j, si, ei, sj, ej


@triton.jit
def _slot_hash(i, j, k, salt):
    """:func:`ncnc.triton_kernels.common_neighbors.slot_hash` in wrapping uint32 arithmetic."""
    h = (
        i.to(tl.uint32) * 0x9E3779B1
        + j.to(tl.uint32) * 0x85EBCA77
        + k.to(tl.uint32) * 0xC2B2AE3D
        + salt.to(tl.uint32) * 0x27D4EB2F
    )
    h = h ^ (h >> 16)
    h = h * 0x85EBCA6B
    h = h ^ (h >> 13)
    h = h * 0xC2B2AE35
    return h ^ (h >> 16)


@triton.jit
def _hash_rank(h, size):
    """``h % size`` for a uint32 hash ``h`` and an int64 ``size >= 1``, as int64, without 64-bit
    division (a call into a division routine whose saved registers ptxas spilled): a size of
    ``2**32`` or more leaves ``h`` as it is, any other fits the 32-bit remainder."""
    wide = size > 0xFFFFFFFF
    narrow = tl.where(wide, 1, size).to(tl.uint32)
    return tl.where(wide, h.to(tl.int64), (h % narrow).to(tl.int64))


@triton.jit
def _aligned(value, ROW_ALIGN: tl.constexpr):
    # ``value`` is a multiple of ROW_ALIGN (the launcher made sure): an identity the compiler can
    # read. tl.multiple_of does not reach scalar kernel arguments.
    return value // ROW_ALIGN * ROW_ALIGN


@triton.jit
def _aligned_rows(d, stride_x, stride_out, stride_grad, stride_grad_x, ROW_ALIGN: tl.constexpr):
    """The feature width and row strides, each a multiple of ``ROW_ALIGN`` (the launcher's
    :func:`_row_align`). Triton's JIT proves only multiples of 16, so at a width such as
    d = 100 rows were read one element per instruction; with this, in 8- or 16-byte vectors."""
    return (
        _aligned(d, ROW_ALIGN), _aligned(stride_x, ROW_ALIGN), _aligned(stride_out, ROW_ALIGN),
        _aligned(stride_grad, ROW_ALIGN), _aligned(stride_grad_x, ROW_ALIGN),
    )


# ---------------------------------------------------------------------------------------------
# Kernels


def _prune_wide_tiles(configs, named_args, **kwargs):
    """Drop feature tiles wider than needed: they would only repeat a narrower config's work."""
    width = max(16, triton.next_power_of_2(int(named_args["d"])))
    kept = [c for c in configs if c.kwargs["BLOCK_D"] <= width]
    return kept or configs[:1]


# Shared by the common-neighbour and the gather kernels (both load [BLOCK_K, BLOCK_D] tiles of x):
# BLOCK_K: lanes working at once: rows of the shorter neighbour list probed, or ragged members
#          gathered; wide for long rows, narrow so that short rows (the common case in power-law
#          graphs) leave few lanes idle.
# BLOCK_D: feature columns per program; a wide tile reuses one intersection (or one read of the
#          member list) for more columns, a narrow one makes more programs when there are few pairs.
# num_warps: more warps hide the latency of the dependent index loads behind wide tiles.
_TILE_CONFIGS = [
    triton.Config({"BLOCK_K": 16, "BLOCK_D": 64}, num_warps=2),
    triton.Config({"BLOCK_K": 16, "BLOCK_D": 128}, num_warps=4),
    triton.Config({"BLOCK_K": 32, "BLOCK_D": 128}, num_warps=4),
    triton.Config({"BLOCK_K": 16, "BLOCK_D": 256}, num_warps=4),
    triton.Config({"BLOCK_K": 32, "BLOCK_D": 256}, num_warps=8),
    triton.Config({"BLOCK_K": 64, "BLOCK_D": 256}, num_warps=8),
]
# The scatters (backward) take at most 32 tile elements per thread: each element is one atomic
# with its own 64-bit address, and on sm_80, which has no vector f32 atomics, the 64 per thread of
# the [64, 256] / 8-warp tile need 255 registers and spill (benchmarks/ptx_report.py).
_SCATTER_CONFIGS = [
    c for c in _TILE_CONFIGS if c.kwargs["BLOCK_K"] * c.kwargs["BLOCK_D"] <= 32 * 32 * c.num_warps
]
# Keys: feature width (tile choice), the log2 bucket of the mean shorter-row degree (probe width),
# and the mode (count-only runs have no feature work at all).
_CN_KEY = ["d", "deg_key", "MODE"]


@triton.jit
def _cn_kernel(
    indptr, indices, pairs, x, out, counts, grad, grad_x,
    d, stride_x, stride_out, stride_grad, stride_grad_x, deg_key,
    MODE: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
    ROW_ALIGN: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    tile = tl.program_id(1)
    i, j, si, ei, sj, ej = _row_bounds(indptr, pairs, b)
    swap = (ei - si) > (ej - sj)
    ps = tl.where(swap, sj, si)
    pe = tl.where(swap, ej, ei)
    q_start = tl.where(swap, si, sj)
    q_end = tl.where(swap, ei, ej)

    d, stride_x, stride_out, stride_grad, stride_grad_x = _aligned_rows(
        d, stride_x, stride_out, stride_grad, stride_grad_x, ROW_ALIGN
    )
    cols = tile * BLOCK_D + tl.arange(0, BLOCK_D)
    col_mask = cols < d
    lanes = tl.arange(0, BLOCK_K)
    if MODE == 0:
        acc = tl.zeros([BLOCK_D], dtype=out.dtype.element_ty)
    if MODE == 1:
        g = tl.load(grad + b * stride_grad + cols, mask=col_mask, other=0)
    count = tl.zeros([BLOCK_K], dtype=tl.int64)
    for start in range(ps, pe, BLOCK_K):
        offs = start + lanes
        mask = offs < pe
        values, found, lo = _probe_chunk(indices, offs, mask, q_start, q_end)
        count += found.to(tl.int64)
        rows = values.to(tl.int64)
        if MODE == 0:
            if tl.sum(found.to(tl.int32)) > 0:
                tile_mask = found[:, None] & col_mask[None, :]
                xs = tl.load(x + rows[:, None] * stride_x + cols[None, :], mask=tile_mask, other=0)
                acc += tl.sum(xs.to(acc.dtype), axis=0)
        if MODE == 1:
            if tl.sum(found.to(tl.int32)) > 0:
                tile_mask = found[:, None] & col_mask[None, :]
                tl.atomic_add(
                    grad_x + rows[:, None] * stride_grad_x + cols[None, :],
                    tl.broadcast_to(g[None, :], (BLOCK_K, BLOCK_D)),
                    mask=tile_mask,
                    sem="relaxed",  # nothing here reads grad_x: no ordering, just the sum
                )
        # Rows are ascending: the next chunk's values lie beyond this chunk's last lower bound.
        q_start = tl.max(tl.where(mask, lo, q_start))
    if MODE == 0:
        tl.store(out + b * stride_out + cols, acc, mask=col_mask)
    if MODE != 1:
        if tile == 0:
            tl.store(counts + b, tl.sum(count))


@triton.jit
def _fill_difference(
    indices, own_start, own_degree, pos, pos_base, common, i, j, cap, salt, weight,
    out_base, members, weights, BLOCK_K: tl.constexpr,
):
    """One row minus its common positions: all of it, or ``cap`` hashed draws weighted ``weight``."""
    lanes = tl.arange(0, BLOCK_K)
    size = own_degree - common
    pos_steps = _search_steps(common)
    if (cap < 0) | (size <= cap):
        o = out_base
        for first_p in range(0, own_degree, BLOCK_K):
            p = first_p + lanes
            mask = p < own_degree
            lo = _lower_bound(
                pos, tl.zeros_like(p) + pos_base, tl.zeros_like(p) + pos_base + common, p, mask,
                pos_steps,
            )
            inside = mask & (lo < pos_base + common)
            is_common = inside & (tl.load(pos + lo, mask=inside, other=-1) == p)
            keep = mask & ~is_common
            slot = o + tl.cumsum(keep.to(tl.int32), 0).to(tl.int64) - 1
            values = tl.load(indices + own_start + p, mask=keep, other=0)
            tl.store(members + slot, values.to(tl.int64), mask=keep)
            tl.store(weights + slot, tl.full([BLOCK_K], 1.0, tl.float32), mask=keep)
            o += tl.sum(keep.to(tl.int64))
    else:
        for first_k in range(0, cap, BLOCK_K):
            k = first_k + lanes
            mask = k < cap
            rank = _hash_rank(_slot_hash(i, j, k, salt), size)
            # m = #{t : pos[t] - t <= rank}, a lower bound over the non-decreasing pos[t] - t.
            lo = tl.zeros([BLOCK_K], dtype=tl.int64)
            hi = lo + common
            for _ in range(pos_steps):
                active = mask & (lo < hi)
                mid = (lo + hi) >> 1
                before = tl.load(pos + pos_base + mid, mask=active, other=0) - mid
                right = active & (before <= rank)
                lo = tl.where(right, mid + 1, lo)
                hi = tl.where(active & (before > rank), mid, hi)
            values = tl.load(indices + own_start + rank + lo, mask=mask, other=0)
            tl.store(members + out_base + k, values.to(tl.int64), mask=mask)
            tl.store(weights + out_base + k, tl.zeros([BLOCK_K], tl.float32) + weight, mask=mask)


# BLOCK_K: lanes per chunk of a row (commons, then each difference); wide chunks for long rows.
# num_warps: latency hiding of the dependent binary-search loads.
_SPLIT_CONFIGS = [
    triton.Config({"BLOCK_K": 16}, num_warps=1),
    triton.Config({"BLOCK_K": 32}, num_warps=1),
    triton.Config({"BLOCK_K": 64}, num_warps=2),
    triton.Config({"BLOCK_K": 128}, num_warps=4),
]


@triton.jit(do_not_specialize=["cap", "salt_i", "salt_j"])
def _split_fill_kernel(
    indptr, indices, pairs, cap, salt_i, salt_j, weight_i, weight_j,
    c_off, c_mem, pos_i, pos_j, i_off, i_mem, i_w, j_off, j_mem, j_w, deg_key,
    BLOCK_K: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    i, j, si, ei, sj, ej = _row_bounds(indptr, pairs, b)
    swap = (ei - si) > (ej - sj)
    ps = tl.where(swap, sj, si)
    pe = tl.where(swap, ej, ei)
    q_first = tl.where(swap, si, sj)
    q_start = q_first
    q_end = tl.where(swap, ei, ej)
    base = tl.load(c_off + b)
    o = base
    lanes = tl.arange(0, BLOCK_K)
    for start in range(ps, pe, BLOCK_K):
        offs = start + lanes
        mask = offs < pe
        values, found, lo = _probe_chunk(indices, offs, mask, q_start, q_end)
        slot = o + tl.cumsum(found.to(tl.int32), 0).to(tl.int64) - 1
        tl.store(c_mem + slot, values.to(tl.int64), mask=found)
        short_pos = offs - ps
        long_pos = lo - q_first
        tl.store(pos_i + slot, tl.where(swap, long_pos, short_pos), mask=found)
        tl.store(pos_j + slot, tl.where(swap, short_pos, long_pos), mask=found)
        o += tl.sum(found.to(tl.int64))
        q_start = tl.max(tl.where(mask, lo, q_start))
    common = o - base
    _fill_difference(
        indices, si, ei - si, pos_i, base, common, i, j, cap, salt_i, tl.load(weight_i + b),
        tl.load(i_off + b), i_mem, i_w, BLOCK_K,
    )
    _fill_difference(
        indices, sj, ej - sj, pos_j, base, common, i, j, cap, salt_j, tl.load(weight_j + b),
        tl.load(j_off + b), j_mem, j_w, BLOCK_K,
    )


# Keys: feature width, the log2 bucket of the mean segment length, and the mode.
_GATHER_KEY = ["d", "seg_key", "MODE"]


@triton.jit
def _gather_kernel(
    offsets, members, weights, x, out, grad, grad_x,
    d, stride_x, stride_out, stride_grad, stride_grad_x, seg_key,
    MODE: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
    ROW_ALIGN: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    d, stride_x, stride_out, stride_grad, stride_grad_x = _aligned_rows(
        d, stride_x, stride_out, stride_grad, stride_grad_x, ROW_ALIGN
    )
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    col_mask = cols < d
    start = tl.load(offsets + b)
    end = tl.load(offsets + b + 1)
    lanes = tl.arange(0, BLOCK_K)
    if MODE == 0:
        acc = tl.zeros([BLOCK_D], dtype=out.dtype.element_ty)
    else:
        g = tl.load(grad + b * stride_grad + cols, mask=col_mask, other=0)
    for k0 in range(start, end, BLOCK_K):
        k = k0 + lanes
        mask = k < end
        rows = tl.load(members + k, mask=mask, other=0).to(tl.int64)
        tile_mask = mask[:, None] & col_mask[None, :]
        if MODE == 0:
            w = tl.load(weights + k, mask=mask, other=0).to(acc.dtype)
            xs = tl.load(x + rows[:, None] * stride_x + cols[None, :], mask=tile_mask, other=0)
            acc += tl.sum(xs.to(acc.dtype) * w[:, None], axis=0)
        else:
            w = tl.load(weights + k, mask=mask, other=0).to(g.dtype)
            tl.atomic_add(
                grad_x + rows[:, None] * stride_grad_x + cols[None, :],
                w[:, None] * g[None, :],
                mask=tile_mask,
                sem="relaxed",  # nothing here reads grad_x: no ordering, just the sum
            )
    if MODE == 0:
        tl.store(out + b * stride_out + cols, acc, mask=col_mask)


def _autotuned(kernel, configs, key, scatter: bool = False):
    """One autotuner per use; a scatter's zeroes ``grad_x`` between trials (atomics accumulate)."""
    prune = {"early_config_prune": _prune_wide_tiles} if "d" in key else None
    reset = ["grad_x"] if scatter else None
    return triton.autotune(configs, key=key, prune_configs_by=prune, reset_to_zero=reset)(kernel)


_cn_forward = _autotuned(_cn_kernel, _TILE_CONFIGS, _CN_KEY)
_cn_backward = _autotuned(_cn_kernel, _SCATTER_CONFIGS, _CN_KEY, scatter=True)
_split_fill = _autotuned(_split_fill_kernel, _SPLIT_CONFIGS, ["deg_key"])
_gather_forward = _autotuned(_gather_kernel, _TILE_CONFIGS, _GATHER_KEY)
_gather_backward = _autotuned(_gather_kernel, _SCATTER_CONFIGS, _GATHER_KEY, scatter=True)

# NCNC_TRITON_AUTOTUNE=0 launches one fixed configuration instead of autotuning (each new key
# compiles and times every config: the CUDA tests set it to stay quick). Interpreter runs (CPU
# tests) never autotune and use small tiles so that chunk boundaries are exercised.
AUTOTUNE = os.environ.get("NCNC_TRITON_AUTOTUNE", "1") != "0"
# Each fixed configuration is one of the kernel's autotune configs. The split's has one warp: its
# 32 lanes on 4 warps left 3 of them repeating the first one's work (and spilled on sm_80).
_FIXED_META = {"BLOCK_K": 32, "BLOCK_D": 128, "num_warps": 4}
_FIXED_SPLIT_META = {"BLOCK_K": 32, "num_warps": 1}
_INTERPRET_META = {"BLOCK_K": 16, "BLOCK_D": 32}


def _fixed_meta(kernel, interpret: bool) -> dict:
    """The one configuration ``kernel`` (an autotuner) runs in without autotuning."""
    if interpret:
        return {k: v for k, v in _INTERPRET_META.items() if k in kernel.fn.arg_names}
    return _FIXED_META if "BLOCK_D" in kernel.fn.arg_names else _FIXED_SPLIT_META


def _launch(kernel, grid, *args, **meta) -> None:
    if AUTOTUNE and not INTERPRET:
        wrap_triton(kernel)[grid](*args, **meta)
        return
    fixed = _fixed_meta(kernel, INTERPRET)
    grid = grid(fixed) if callable(grid) else grid
    launcher = kernel.fn if INTERPRET else wrap_triton(kernel.fn)
    launcher[grid](*args, **meta, **fixed)


def _check_device(name: str, t: Tensor, device: torch.device) -> None:
    if t.device != device:
        raise ValueError(f"{name} is on {t.device} but the other inputs are on {device}")
    if not INTERPRET and t.device.type != "cuda":
        raise ValueError(f"the Triton kernels need CUDA tensors, {name} is on {t.device}")


def _check_graph(indptr: Tensor, indices: Tensor, pairs: Tensor) -> None:
    device = indptr.device
    for name, t in (("indices", indices), ("pairs", pairs)):
        _check_device(name, t, device)
    _check_device("indptr", indptr, device)
    if indptr.dtype != torch.int64 or indptr.dim() != 1:
        raise ValueError(f"indptr must be 1-D int64, got {indptr.dtype} {tuple(indptr.shape)}")
    if indices.dtype not in (torch.int32, torch.int64) or indices.dim() != 1:
        raise ValueError(f"indices must be 1-D int32/int64, got {indices.dtype}")
    if pairs.dtype not in (torch.int32, torch.int64) or pairs.dim() != 2 or pairs.size(1) != 2:
        raise ValueError(f"pairs must be int32/int64 [B, 2], got {pairs.dtype} {tuple(pairs.shape)}")


def _check_features(name: str, x: Tensor, device: torch.device) -> None:
    _check_device(name, x, device)
    if x.dtype not in _FLOAT_DTYPES or x.dim() != 2:
        raise ValueError(f"{name} must be a 2-D float tensor, got {x.dtype} {tuple(x.shape)}")


def _log2_bucket(mean: float) -> int:
    """Autotune key of a mean length: its log2, clamped, so similar workloads share a config."""
    return min(int(mean).bit_length(), 12)


def _deg_key(indptr: Tensor, pairs: Tensor) -> int:
    deg = indptr[1:] - indptr[:-1]
    shorter = torch.minimum(deg[pairs[:, 0].long()], deg[pairs[:, 1].long()])
    return _log2_bucket(float(shorter.float().mean()))


def _row_align(*sizes: int) -> int:
    """The largest power of two, at most 16, that divides every size (feature width and row
    strides in elements): what the kernels may assume of row offsets (``_aligned_rows``)."""
    common = math.gcd(*sizes)
    return 16 if common == 0 else min(16, common & -common)


def _rows(t: Tensor) -> Tensor:
    """``t`` with unit column stride (the kernels index ``row * stride + col``)."""
    return t if t.stride(-1) == 1 else t.contiguous()


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _scatter_rows(grad: Tensor, num_rows: int) -> tuple[Tensor, Tensor]:
    """``(grad, grad_x)`` for a scatter: ``grad`` as rows in its accumulation dtype and a zeroed
    ``[num_rows, d]`` ``grad_x`` of that dtype. Half gradients are summed in float32: many small
    contributions added in 16 bits lose their low bits, and sm_80 has no bfloat16 atomic add (it
    becomes a compare-and-swap loop per element, which also spilled registers)."""
    grad = _rows(grad).to(_acc_dtype(grad.dtype))
    return grad, torch.zeros(num_rows, grad.size(1), dtype=grad.dtype, device=grad.device)


def common_neighbor_sum_triton(
    indptr: Tensor, indices: Tensor, x: Tensor, pairs: Tensor
) -> tuple[Tensor, Tensor]:
    """``(sum_{u in N(i) & N(j)} x[u], |N(i) & N(j)|)`` per pair; fp32 accumulation."""
    _check_graph(indptr, indices, pairs)
    _check_features("x", x, indptr.device)
    x, pairs = _rows(x), pairs.contiguous()
    num_pairs, d = pairs.size(0), x.size(1)
    out = torch.empty(num_pairs, d, dtype=_acc_dtype(x.dtype), device=x.device)
    counts = torch.empty(num_pairs, dtype=torch.int64, device=x.device)
    if num_pairs == 0:
        return out, counts
    if d == 0:
        return out, common_neighbor_count_triton(indptr, indices, pairs)
    grid = lambda meta: (num_pairs, triton.cdiv(d, meta["BLOCK_D"]))
    _launch(
        _cn_forward, grid, indptr, indices, pairs, x, out, counts, out, out,
        d, x.stride(0), out.stride(0), 0, 0, _deg_key(indptr, pairs), MODE=MODE_SUM,
        ROW_ALIGN=_row_align(d, x.stride(0), out.stride(0)),
    )
    return out, counts


def common_neighbor_sum_backward_triton(
    indptr: Tensor, indices: Tensor, pairs: Tensor, grad: Tensor, num_rows: int
) -> Tensor:
    """``grad_x [num_rows, d]``: each pair's ``grad`` row added into its common neighbours' rows
    (in ``grad``'s dtype; half gradients are summed in float32, see :func:`_scatter_rows`)."""
    _check_graph(indptr, indices, pairs)
    _check_features("grad", grad, indptr.device)
    grad_dtype = grad.dtype
    (grad, grad_x), pairs = _scatter_rows(grad, num_rows), pairs.contiguous()
    num_pairs, d = pairs.size(0), grad.size(1)
    if num_pairs and d:
        grid = lambda meta: (num_pairs, triton.cdiv(d, meta["BLOCK_D"]))
        _launch(
            _cn_backward, grid, indptr, indices, pairs, grad, grad, grad, grad, grad_x,
            d, 0, 0, grad.stride(0), grad_x.stride(0), _deg_key(indptr, pairs), MODE=MODE_SCATTER,
            ROW_ALIGN=_row_align(d, grad.stride(0), grad_x.stride(0)),
        )
    return grad_x.to(grad_dtype)


def common_neighbor_count_triton(indptr: Tensor, indices: Tensor, pairs: Tensor) -> Tensor:
    """``|N(i) & N(j)|`` per pair (first pass of the split)."""
    _check_graph(indptr, indices, pairs)
    pairs = pairs.contiguous()
    counts = torch.empty(pairs.size(0), dtype=torch.int64, device=indptr.device)
    if pairs.size(0) == 0:
        return counts
    unused = counts  # the feature pointers are never read in count mode
    _launch(
        _cn_forward, (pairs.size(0), 1), indptr, indices, pairs, unused, unused, counts, unused,
        unused, 1, 0, 0, 0, 0, _deg_key(indptr, pairs), MODE=MODE_COUNT, ROW_ALIGN=1,
    )
    return counts


def neighbor_split_triton(
    indptr: Tensor, indices: Tensor, pairs: Tensor, cap: int, seed: int
) -> tuple[Tensor, ...]:
    """Flat ``(c_off, c_mem, c_w, i_off, i_mem, i_w, j_off, j_mem, j_w)`` as the reference lays out."""
    pairs = pairs.contiguous()
    counts = common_neighbor_count_triton(indptr, indices, pairs)
    layout: SplitLayout = split_layout(indptr, pairs, counts, cap)
    device = indptr.device

    def empty(size: int, dtype: torch.dtype) -> Tensor:
        return torch.empty(size, dtype=dtype, device=device)

    c_mem, pos_i, pos_j = (empty(layout.common_total, torch.int64) for _ in range(3))
    i_mem, i_w = empty(layout.only_i_total, torch.int64), empty(layout.only_i_total, torch.float32)
    j_mem, j_w = empty(layout.only_j_total, torch.int64), empty(layout.only_j_total, torch.float32)
    if pairs.size(0):
        salt_i, salt_j = layout.salts(seed)
        _launch(
            _split_fill, (pairs.size(0),), indptr, indices, pairs, cap, salt_i, salt_j,
            layout.weight_i, layout.weight_j, layout.common_offsets, c_mem, pos_i, pos_j,
            layout.only_i_offsets, i_mem, i_w, layout.only_j_offsets, j_mem, j_w,
            _deg_key(indptr, pairs),
        )
    c_w = torch.ones(layout.common_total, dtype=torch.float32, device=device)
    return (
        layout.common_offsets, c_mem, c_w,
        layout.only_i_offsets, i_mem, i_w,
        layout.only_j_offsets, j_mem, j_w,
    )


def _check_ragged(offsets: Tensor, members: Tensor, weights: Tensor) -> None:
    device = offsets.device
    _check_device("offsets", offsets, device)
    _check_device("members", members, device)
    _check_device("weights", weights, device)
    if offsets.dtype != torch.int64 or offsets.dim() != 1 or offsets.numel() < 1:
        raise ValueError(f"offsets must be non-empty 1-D int64, got {offsets.dtype}")
    if members.dtype not in (torch.int32, torch.int64) or members.dim() != 1:
        raise ValueError(f"members must be 1-D int32/int64, got {members.dtype}")
    if weights.dtype not in _FLOAT_DTYPES or weights.shape != members.shape:
        raise ValueError(
            f"weights must be float with the shape of members {tuple(members.shape)}, "
            f"got {weights.dtype} {tuple(weights.shape)}"
        )


def _seg_key(offsets: Tensor, members: Tensor) -> int:
    return _log2_bucket(members.numel() / max(offsets.numel() - 1, 1))


def weighted_gather_sum_triton(offsets: Tensor, members: Tensor, weights: Tensor, x: Tensor) -> Tensor:
    """``out[b] = sum_{k in segment b} weights[k] * x[members[k]]``; fp32 accumulation."""
    _check_ragged(offsets, members, weights)
    _check_features("x", x, offsets.device)
    # The kernel multiplies in the accumulation dtype: widening (or rounding) the weights to it
    # here gives the same products, and one kernel per x dtype instead of one per weight dtype.
    x, members, weights = _rows(x), members.contiguous(), weights.to(_acc_dtype(x.dtype)).contiguous()
    num_segments, d = offsets.numel() - 1, x.size(1)
    out = torch.empty(num_segments, d, dtype=_acc_dtype(x.dtype), device=x.device)
    if num_segments == 0 or d == 0:
        return out
    grid = lambda meta: (num_segments, triton.cdiv(d, meta["BLOCK_D"]))
    _launch(
        _gather_forward, grid, offsets, members, weights, x, out, out, out,
        d, x.stride(0), out.stride(0), 0, 0, _seg_key(offsets, members), MODE=MODE_SUM,
        ROW_ALIGN=_row_align(d, x.stride(0), out.stride(0)),
    )
    return out


def weighted_gather_sum_backward_triton(
    offsets: Tensor, members: Tensor, weights: Tensor, grad: Tensor, num_rows: int
) -> Tensor:
    """``grad_x[members[k]] += weights[k] * grad[b]`` for every member ``k`` of segment ``b`` (in
    ``grad``'s dtype; half gradients are summed in float32, see :func:`_scatter_rows`)."""
    _check_ragged(offsets, members, weights)
    _check_features("grad", grad, offsets.device)
    grad_dtype = grad.dtype
    grad, grad_x = _scatter_rows(grad, num_rows)
    members, weights = members.contiguous(), weights.to(grad.dtype).contiguous()  # as the forward
    num_segments, d = offsets.numel() - 1, grad.size(1)
    if num_segments and d and members.numel():
        grid = lambda meta: (num_segments, triton.cdiv(d, meta["BLOCK_D"]))
        _launch(
            _gather_backward, grid, offsets, members, weights, grad, grad, grad, grad_x,
            d, 0, 0, grad.stride(0), grad_x.stride(0), _seg_key(offsets, members), MODE=MODE_SCATTER,
            ROW_ALIGN=_row_align(d, grad.stride(0), grad_x.stride(0)),
        )
    return grad_x.to(grad_dtype)
