"""Why a pair scored as it did: the common (and completed) neighbours behind its logit.

NCN and NCNC score a pair ``(i, j)`` as ``logit = head(cn, xij)`` with
``cn = sum_u w_u x_u`` over the pair's common-neighbour set
(:func:`ncnc.triton_kernels.pair_scoring.common_neighbor_terms`, the very terms the score sums):

* NCN: the common neighbours ``N(i) & N(j)``, ``w_u = 1``;
* NCNC: those, plus the completed neighbours ``u`` of ``N(i) \\ N(j)`` and ``N(j) \\ N(i)``,
  ``w_u`` their completion probability ``p(j, u)`` or ``p(i, u)`` (times ``|S| / cap`` for each
  time a capped set drew ``u``: a node drawn twice is listed once, with both draws' weight).

Contribution (what ``because`` ranks by) is the exact drop of the pair's logit when ``u``'s term
is left out of the sum::

    contribution(u) = head(cn, xij) - head(cn - w_u * x_u, xij)

Nothing else changes when ``u`` is left out: the other members' weights are scores of other pairs
(``(j, v)``, ``(i, v)``), not of this one. Positive: ``u`` raises the score; negative: it lowers
it. The head is non-linear, so contributions need not add up to anything. Both logits are the
scorer's float32 head; ``cn - w_u * x_u`` is computed in float32, one rounding per operation.

Listing: the ``k`` members of largest contribution, best first; equal contributions by smaller
node index first, which is the smaller original id (the id map sorts ids); NaN ranks as ``-inf``.
A pair without common (or completed) neighbours gets an empty list.

Cost per explained pair: one head evaluation per distinct member of its set (all of them, to rank
them) plus one for the whole sum, batched :data:`HEAD_ROWS` rows per head call; plus building the
set again (for NCNC, scoring its completion pairs with the inner model, as scoring the pair did).
So ``ncnc score`` explains only the rows a top K keeps.

Determinism: every step is per pair (capping by hash, elementwise float32 arithmetic, the head
row by row), so on the CPU a pair's explanation has the same bits whatever batch it is in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import polars as pl
import pyarrow as pa
import torch
from torch import Tensor

from ncnc.core.errors import InputError
from ncnc.core.ids import IdMap
from ncnc.triton_kernels.common_neighbors import RaggedSet
from ncnc.triton_kernels.graph import CSRGraph
from ncnc.triton_kernels.ops import weighted_gather_sum
from ncnc.triton_kernels.pair_scoring import (
    HeadFn,
    NodeLevels,
    PairRule,
    common_neighbor_terms,
)

BECAUSE = "because"
HEAD_ROWS = 65_536
"""Left-out sums per head call (memory: a few ``HEAD_ROWS x d`` float32 tables)."""
PAIR_BLOCK = 8_192
"""Target pairs whose neighbour sets are built at once."""


@dataclass(frozen=True)
class Reasons:
    """The listed members of ``B`` pairs: pair ``b`` owns ``offsets[b]:offsets[b + 1]``, best
    first (CPU tensors).

    Attributes:
        offsets: ``[B + 1]`` int64.
        nodes: ``[M]`` int64 node indices.
        weights: ``[M]`` float32: ``w_u``, the member's coefficient in ``cn``.
        contributions: ``[M]`` float32: the logit's drop without the member's term.
    """

    offsets: Tensor
    nodes: Tensor
    weights: Tensor
    contributions: Tensor


@runtime_checkable
class PairExplainer(Protocol):
    """What explaining needs of an engine (:class:`ncnc.scorer.engine.BatchScorer` is one)."""

    def explain_pairs(self, pairs: Tensor, k: int) -> Reasons:
        """The ``k`` best reasons of each of ``[B, 2]`` int64 node-index pairs."""
        ...


def refuse_unexplainable(model: str) -> None:
    """:class:`InputError` for a model without a common-neighbour term (GAE)."""
    if model == "gae":
        raise InputError("--explain: the bundle's model is gae, whose score has no "
                         "common-neighbour term, so there are no neighbours to list; explain an "
                         "NCN or NCNC bundle")


def check_explain(explain: int | None) -> None:
    if explain is not None and explain < 1:
        raise InputError(f"--explain must be at least 1, got {explain}")


def explain_pairs(rule: PairRule, head: HeadFn, graph: CSRGraph, levels: NodeLevels,
                  pairs: Tensor, k: int) -> Reasons:
    """The ``k`` members of largest contribution of each pair (definition: module docstring).

    Args:
        rule, head, graph, levels: what :func:`ncnc.triton_kernels.pair_scoring.pair_logits`
            scores with (NCN or NCNC).
        pairs: ``[B, 2]`` int64 node indices on the tables' device.
        k: members listed per pair at most.

    Shapes:
        returns :class:`Reasons` of ``B`` pairs with at most ``k`` members each, on the CPU.
    """
    if k < 1:
        raise ValueError(f"explain_pairs: k must be at least 1, got {k}")
    blocks = [_explain_block(rule, head, graph, levels, pairs[start:start + PAIR_BLOCK], k)
              for start in range(0, pairs.size(0), PAIR_BLOCK)]
    offsets = [torch.zeros(1, dtype=torch.int64)]
    for block in blocks:
        offsets.append(block.offsets[1:] + offsets[-1][-1])
    return Reasons(torch.cat(offsets), *(
        torch.cat([getattr(b, name) for b in blocks]) if blocks else torch.zeros(0, dtype=dtype)
        for name, dtype in (("nodes", torch.int64), ("weights", torch.float32),
                            ("contributions", torch.float32))))


def _explain_block(rule: PairRule, head: HeadFn, graph: CSRGraph, levels: NodeLevels,
                   pairs: Tensor, k: int) -> Reasons:
    terms = common_neighbor_terms(rule, head, graph, levels, pairs)
    members = terms.members
    # The score's own sum (same set, same order), before repeated draws are merged.
    cn = weighted_gather_sum(members.offsets, members.members, members.weights, terms.x)
    distinct = merge_repeats(members, terms.x.size(0))
    segment = distinct.segment_ids()
    full = head(cn, terms.xij).float().cpu()[segment]
    without = torch.empty_like(full)
    device = cn.device
    for start in range(0, segment.numel(), HEAD_ROWS):
        rows = slice(start, start + HEAD_ROWS)
        pair, node = segment[rows].to(device), distinct.members[rows].to(device)
        # cn - w_u * x_u in two roundings (a product, then a difference), never a fused
        # multiply-add: the same bits on every path.
        term = terms.x.index_select(0, node).to(cn.dtype)
        term.mul_(distinct.weights[rows].to(device, cn.dtype).unsqueeze(1))
        left_out = cn.index_select(0, pair).sub_(term)
        without[rows] = head(left_out, terms.xij.index_select(0, pair)).float().cpu()
    return _best(distinct, full - without, k)


def merge_repeats(members: RaggedSet, num_nodes: int) -> RaggedSet:
    """Each pair's members once, in ascending node order, with the weights of its repeats added
    (on the CPU).

    A node repeats only as several draws of one capped set, all of one weight, so the float64
    sum is exact and the float32 result does not depend on the draws' order. (numpy, single
    threaded: torch's threaded sorts stall on a busy machine.)
    """
    sizes = members.sizes().cpu().numpy()
    segment = np.repeat(np.arange(sizes.size, dtype=np.int64), sizes)
    keys, inverse = np.unique(segment * num_nodes + members.members.cpu().numpy(),
                              return_inverse=True)
    weights = np.bincount(inverse, weights=members.weights.cpu().numpy().astype(np.float64),
                          minlength=keys.size)
    offsets = np.zeros(sizes.size + 1, dtype=np.int64)
    offsets[1:] = np.cumsum(np.bincount(keys // num_nodes, minlength=sizes.size))
    return RaggedSet(torch.from_numpy(offsets), torch.from_numpy(keys % num_nodes),
                     torch.from_numpy(weights.astype(np.float32)))


def _best(distinct: RaggedSet, contributions: Tensor, k: int) -> Reasons:
    """The ``k`` largest contributions of each pair; ``distinct`` is sorted by pair, then node,
    and the sort is stable, so equal contributions keep the smaller node first."""
    offsets = distinct.offsets.numpy()
    sizes = np.diff(offsets)
    key = np.nan_to_num(contributions.numpy().astype(np.float64), nan=-np.inf)
    segment = np.repeat(np.arange(sizes.size), sizes)
    order = np.lexsort((-key, segment))  # by pair, then contribution (descending)
    chosen = order[np.arange(order.size) - np.repeat(offsets[:-1], sizes) < k]
    listed = np.zeros_like(offsets)
    listed[1:] = np.cumsum(np.minimum(sizes, k))
    return Reasons(torch.from_numpy(listed), distinct.members[chosen],
                   distinct.weights[chosen], contributions[chosen])


def because_dtype(id_map: IdMap) -> pl.DataType:
    """``List(Struct(id, weight, contribution))``, ``id`` in the graph's id dtype."""
    return pl.List(pl.Struct({"id": id_map.ids.dtype, "weight": pl.Float32(),
                              "contribution": pl.Float32()}))


def because_column(reasons: Reasons, id_map: IdMap) -> pl.Series:
    """The ``because`` column of ``reasons`` (one list per pair, original ids)."""
    ids = id_map.ids.gather(pl.Series(reasons.nodes.numpy())).to_arrow()
    structs = pa.StructArray.from_arrays(
        [ids, pa.array(reasons.weights.numpy()), pa.array(reasons.contributions.numpy())],
        names=["id", "weight", "contribution"])
    lists = pa.LargeListArray.from_arrays(pa.array(reasons.offsets.numpy()), structs)
    return pl.Series(BECAUSE, pl.from_arrow(lists)).cast(because_dtype(id_map))


def explain_rows(explainer: PairExplainer, id_map: IdMap, frame: pl.DataFrame, k: int
                 ) -> pl.DataFrame:
    """``frame`` (``src``, ``dst``: ids of nodes of the graph) plus its ``because`` column."""
    if not isinstance(explainer, PairExplainer):
        raise TypeError(f"{type(explainer).__name__} cannot explain scores (no explain_pairs)")
    pairs = torch.stack([id_map.to_index(frame[c], what=f"explained rows column {c}")
                         for c in ("src", "dst")], 1)
    return frame.with_columns(because_column(explainer.explain_pairs(pairs, k), id_map))
