"""NCNC's completed common-neighbour sum, one implementation for training, export and scoring.

``cn~(i, j) = sum_{u in N(i) & N(j)} x_u + sum_{u in N(i) \\ N(j)} p(j, u) x_u
+ sum_{u in N(j) \\ N(i)} p(i, u) x_u`` where ``p`` is the calibrated probability, computed by the
caller's ``inner_logits``, that the missing edge exists. The difference sets are capped by
:func:`ncnc.triton_kernels.neighbor_split`'s deterministic rule.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from ncnc.triton_kernels import library
from ncnc.triton_kernels.common_neighbors import RaggedSet
from ncnc.triton_kernels.ops import concat_ragged, neighbor_split, weighted_gather_sum

INNER_CHUNK = 32_768
"""Completion pairs scored per call of ``inner_logits``."""


@dataclass(frozen=True)
class Calibration:
    """``alpha * pt * s / (pt * s + 1 - s)`` with ``s = sigmoid(probscale * (z - proboffset))``."""

    probscale: float
    proboffset: float
    pt: float
    alpha: float

    def __call__(self, logits: Tensor) -> Tensor:
        s = reproducible_sigmoid(self.probscale * (logits.double() - self.proboffset))
        return (self.alpha * self.pt * s / (self.pt * s + 1 - s)).to(logits.dtype)


# exp(-a) = 2^-k * exp(r), k = round(a / ln 2), r = k ln 2 - a in [-ln2 / 2, ln2 / 2]; ln 2 split
# in two so that k * LN2_HI is exact (fdlibm's constants), exp(r) by its Taylor series (the
# 14th term is below 1e-17 there).
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
_TAYLOR = [1.0 / math.factorial(n) for n in range(14)]
_SATURATE = 110.0  # exp(-110) rounds to 0 in float32


def reproducible_sigmoid(z: Tensor) -> Tensor:
    """:func:`reproducible_sigmoid_reference`, on the CPU (outside autograd and tracing) in one
    compiled pass that gives the same bits."""
    if (z.device.type == "cpu" and not torch.compiler.is_compiling()
            and not (z.requires_grad and torch.is_grad_enabled())):
        return library.cpu.reproducible_sigmoid_cpu(z)
    return reproducible_sigmoid_reference(z)


def reproducible_sigmoid_reference(z: Tensor) -> Tensor:
    """``sigmoid(z)`` in float64 from additions, multiplications and divisions only.

    ``torch.sigmoid`` (and ``exp``) on the CPU take a vectorised path for most elements and a
    scalar one for the tail of a run, which differ in the last bit: an element's result would
    depend on its position in the tensor, so a pair's score on its batch. Basic IEEE operations
    are exactly rounded on every path, so this is bit-identical wherever an element sits; it
    agrees with ``torch.sigmoid`` in float64 to about 1e-16.
    """
    z = z.double()
    a = z.abs().clamp(max=_SATURATE)
    k = torch.round(a / _LN2_HI)
    r = (k * _LN2_HI - a) + k * _LN2_LO
    series = torch.full_like(r, _TAYLOR[-1])
    for coefficient in reversed(_TAYLOR[:-1]):
        series = series * r + coefficient
    # 2^-k from its bit pattern: exact, unlike pow on some paths.
    scale = ((1023 - k.to(torch.int64)) << 52).view(torch.float64)
    e = series * scale  # exp(-|z|)
    return torch.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


class InnerLogitCache(Protocol):
    """Logits of completion pairs kept across calls (the scorer's memo). Keys are the pairs'
    int64 keys ``a * num_nodes + b``; a cache returns exactly the logits it was given."""

    def cached(self, keys: Tensor) -> tuple[Tensor, Tensor]:
        """``(logits [K] float32, hit [K] bool)`` for ``keys [K]`` (logits where hit)."""
        ...

    def store(self, keys: Tensor, logits: Tensor) -> None:
        """Keep ``logits`` of ``keys`` (it may forget them later)."""
        ...


def completed_common_neighbors(
    indptr: Tensor,
    indices: Tensor,
    x: Tensor,
    pairs: Tensor,
    inner_logits: Callable[[Tensor], Tensor],
    calibration: Calibration,
    cap: int = -1,
    seed: int = 0,
    symmetric_inner: bool = False,
    cache: InnerLogitCache | None = None,
) -> RaggedSet:
    """The weighted members of each pair's completed common-neighbour set, the terms of ``cn~``.

    Pair ``b`` owns, in this order, its common neighbours (weight 1), the kept members ``u`` of
    ``N(i) \\ N(j)`` (weight ``p(j, u)``, times ``|S| / cap`` when capped) and those of
    ``N(j) \\ N(i)`` (weight ``p(i, u)``, likewise). A capped draw that picks a member twice
    lists it twice. :func:`completed_common_neighbor_sum` gathers exactly this set, and the
    scorer's explanations list it, so scores and explanations share one definition.

    Args:
        x: ``[n, d]`` node table the completion pairs' inner model reads (for its device and
            size; the members index it).
        inner_logits: logits ``[P]`` of completion pairs ``[P, 2]``; each distinct pair is asked
            once per call. Called under ``torch.no_grad``.
        symmetric_inner: the inner score of ``(a, b)`` equals that of ``(b, a)`` (true for NCN), so
            the two orders share one computation.
        cache: completion pairs' logits from earlier calls; only the pairs it lacks are asked of
            ``inner_logits``. A pair's logit does not depend on the batch it is scored in, so the
            result is the same bits with or without it.

    Shapes:
        ``pairs`` ``[B, 2]``; returns offsets ``[B + 1]``, members ``[M]``, weights ``[M]`` float32
        (not requiring grad).
    """
    split = neighbor_split(indptr, indices, pairs, cap, seed)
    only_i, only_j = split.only_i, split.only_j
    completion_pairs = torch.cat([
        torch.stack([pairs[only_i.segment_ids(), 1], only_i.members], 1),
        torch.stack([pairs[only_j.segment_ids(), 0], only_j.members], 1),
    ])
    with torch.no_grad():
        probs = calibration(_distinct_logits(completion_pairs, inner_logits, symmetric_inner, x,
                                             cache))
    p_i, p_j = probs.split([only_i.members.numel(), only_j.members.numel()])
    # One ragged set over the three parts: the gather then reads each pair's x rows in one pass.
    return concat_ragged([
        split.common,
        RaggedSet(only_i.offsets, only_i.members, p_i * only_i.weights),
        RaggedSet(only_j.offsets, only_j.members, p_j * only_j.weights),
    ])


def completed_common_neighbor_sum(
    indptr: Tensor,
    indices: Tensor,
    x: Tensor,
    pairs: Tensor,
    inner_logits: Callable[[Tensor], Tensor],
    calibration: Calibration,
    cap: int = -1,
    seed: int = 0,
    symmetric_inner: bool = False,
    cache: InnerLogitCache | None = None,
) -> Tensor:
    """``cn~`` of each pair, ``[B, d]``: the weighted sum of ``x`` over
    :func:`completed_common_neighbors` (same arguments); differentiable in ``x`` (not through
    ``inner_logits``)."""
    members = completed_common_neighbors(indptr, indices, x, pairs, inner_logits, calibration,
                                         cap, seed, symmetric_inner, cache)
    return weighted_gather_sum(members.offsets, members.members, members.weights, x)


def _distinct_logits(
    pairs: Tensor, inner_logits: Callable[[Tensor], Tensor], symmetric: bool, x: Tensor,
    cache: InnerLogitCache | None = None,
) -> Tensor:
    # Eager callers skip the inner model when nothing needs completing; while torch.export traces,
    # the size is symbolic and the general path below handles zero pairs too.
    if not torch.compiler.is_compiling() and pairs.size(0) == 0:
        return torch.zeros(0, dtype=torch.float32, device=x.device)
    if symmetric:
        pairs = torch.sort(pairs, dim=1).values
    # One int64 key per pair: unique over a 1-D key is many times faster than over rows.
    stride = x.size(0)
    keys, inverse = torch.unique(pairs[:, 0] * stride + pairs[:, 1], return_inverse=True)
    unique = torch.stack([keys // stride, keys % stride], 1)
    if torch.compiler.is_compiling():  # a traced program cannot loop over data-dependent chunks
        return inner_logits(unique).float()[inverse]
    if cache is None:
        return _chunked_logits(unique, inner_logits)[inverse]
    logits, hit = cache.cached(keys)
    missing = ~hit
    if bool(missing.any()):
        computed = _chunked_logits(unique[missing], inner_logits)
        logits[missing] = computed
        cache.store(keys[missing], computed)
    return logits[inverse]


def _chunked_logits(pairs: Tensor, inner_logits: Callable[[Tensor], Tensor]) -> Tensor:
    # Hubs make a batch's completion pairs outnumber its target pairs many times over: score them
    # in bounded chunks so memory stays flat whatever the degrees.
    return torch.cat([inner_logits(chunk).float() for chunk in pairs.split(INNER_CHUNK)])
