"""Logits of target pairs from node tables: the GAE / NCN / NCNC recursion, written once.

Training, evaluation, the exporter's ``torch.export`` program and the batch scorer all call
:func:`pair_logits`; what differs is only the head (the trainer's eager MLP, onnxruntime, ...)
and how the node tables come about (computed on demand while training, tabulated in a bundle).

Levels: ``levels[0] = h`` (encoder output), ``levels[k + 1] = levels[k] + xlin(levels[k])``.
A pair scored at level ``l`` multiplies ``levels[l]`` rows for ``xij`` and sums ``levels[l + 1]``
over common neighbours; its NCNC completion pairs are scored at level ``l + 1`` (this mirrors the
reference, whose inner call transforms the already transformed table once more).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from torch import Tensor

from ncnc.triton_kernels.common_neighbors import RaggedSet
from ncnc.triton_kernels.completion import (
    Calibration,
    InnerLogitCache,
    completed_common_neighbor_sum,
    completed_common_neighbors,
)
from ncnc.triton_kernels.graph import CSRGraph
from ncnc.triton_kernels.ops import common_neighbor_sum, endpoint_product, neighbor_split

HeadFn = Callable[[Tensor | None, Tensor], Tensor]
"""``head(cn [B, d] or None for GAE, xij [B, d]) -> logits [B]``."""

PairModel = Literal["gae", "ncn", "ncnc"]


@dataclass(frozen=True)
class PairRule:
    """What the recursion needs besides weights.

    Attributes:
        model: ``"gae"`` (no common-neighbour term), ``"ncn"`` or ``"ncnc"``.
        depth: NCNC completion depth (1 or 2; 0 for GAE / NCN).
        calibration: maps inner NCN logits to completion probabilities (NCNC).
        cap: largest completion set kept per pair (the paper's trndeg / tstdeg); -1 keeps all.
        seed: salt of the capped draws (fixed when scoring; redrawn each step when training).
    """

    model: PairModel
    depth: int = 0
    calibration: Calibration = Calibration(0.0, 0.0, 0.0, 0.0)
    cap: int = -1
    seed: int = 0


class NodeLevels(Protocol):
    """``levels[k]``: the ``[n, d]`` node table of level ``k`` (a list of tensors is one)."""

    def __getitem__(self, level: int) -> Tensor: ...


class LazyLevels:
    """``levels[0] = h`` and ``levels[k + 1] = transform(levels[k])``, each computed on first use
    and kept: the trainer's tables, whose deeper levels only NCNC's inner pairs read (under
    ``torch.no_grad``, so no graph is kept for them)."""

    def __init__(self, h: Tensor, transform: Callable[[Tensor], Tensor]) -> None:
        self._levels = [h]
        self._transform = transform

    def __getitem__(self, level: int) -> Tensor:
        while len(self._levels) <= level:
            self._levels.append(self._transform(self._levels[-1]))
        return self._levels[level]


def pair_logits(
    rule: PairRule,
    head: HeadFn,
    graph: CSRGraph,
    levels: NodeLevels,
    pairs: Tensor,
    *,
    drop_edges: Callable[[CSRGraph], CSRGraph] | None = None,
    cache: InnerLogitCache | None = None,
    depth: int | None = None,
    level: int = 0,
) -> Tensor:
    """Logits ``[B]`` of ``pairs`` ``[B, 2]`` (node indices).

    Args:
        rule: model kind, completion depth, calibration and cap.
        head: ``(cn, xij) -> logits``; called once for the pairs and, with NCNC, for their
            completion pairs (in bounded chunks, under ``torch.no_grad``).
        graph: the adjacency the common-neighbour step reads.
        levels: node tables (see the module docstring).
        drop_edges: applied to ``graph`` at every level before it is read (training's edge
            dropout, preedp; the reference drops afresh at each depth); None reads it as is.
        cache: logits of this call's completion pairs kept across calls (the scorer's memo; the
            same bits with or without it); deeper levels do not use it.
        depth, level: where in the recursion this call is (callers leave the defaults).

    Shapes:
        ``levels[k]``: ``[n, d]``; ``pairs``: ``[B, 2]`` int64; returns ``[B]``.
    """
    depth = rule.depth if depth is None else depth
    h = levels[level]
    xij = endpoint_product(h, pairs)
    if rule.model == "gae":
        return head(None, xij)
    if drop_edges is not None:
        graph = drop_edges(graph)
    x = levels[level + 1]
    if depth == 0:
        cn, _ = common_neighbor_sum(graph.indptr, graph.indices, x, pairs)
        return head(cn, xij)

    inner_logits = _inner_logits(rule, head, graph, levels, drop_edges, depth, level)
    cn = completed_common_neighbor_sum(
        graph.indptr, graph.indices, x, pairs, inner_logits, rule.calibration, rule.cap,
        rule.seed, symmetric_inner=depth == 1,  # NCN is symmetric in (a, b)
        cache=cache,
    )
    return head(cn, xij)


def _inner_logits(rule: PairRule, head: HeadFn, graph: CSRGraph, levels: NodeLevels,
                  drop_edges: Callable[[CSRGraph], CSRGraph] | None, depth: int, level: int
                  ) -> Callable[[Tensor], Tensor]:
    """The logits of a depth-``depth`` pair's completion pairs: one step down the recursion."""

    def inner_logits(inner_pairs: Tensor) -> Tensor:
        return pair_logits(rule, head, graph, levels, inner_pairs, drop_edges=drop_edges,
                           depth=depth - 1, level=level + 1)

    return inner_logits


@dataclass(frozen=True)
class CommonNeighborTerms:
    """What the head of each target pair reads, with its common-neighbour sum left unsummed.

    ``head(weighted_gather_sum(members, x), xij)`` is the pair's logit, as :func:`pair_logits`
    computes it (for NCNC the very same gather; for NCN its fused ``common_neighbor_sum`` adds the
    same rows in the same ascending order).

    Attributes:
        xij: ``[B, d]`` endpoint products ``h_i * h_j``.
        x: ``[n, d]`` the node table the common-neighbour sum reads (``levels[1]``).
        members: each pair's weighted members: NCN's common neighbours (weight 1); NCNC's
            (:func:`~ncnc.triton_kernels.completion.completed_common_neighbors`) common and
            completed neighbours.
    """

    xij: Tensor
    x: Tensor
    members: RaggedSet


def common_neighbor_terms(rule: PairRule, head: HeadFn, graph: CSRGraph, levels: NodeLevels,
                          pairs: Tensor) -> CommonNeighborTerms:
    """The terms of the (completed) common-neighbour sum of ``pairs`` ``[B, 2]``, the evidence
    behind their logits: NCN and NCNC only (GAE has no such sum: ``ValueError``). Scoring
    settings: no edge dropout, the rule's depth, level 0."""
    if rule.model == "gae":
        raise ValueError("a GAE model has no common-neighbour term")
    xij = endpoint_product(levels[0], pairs)
    x = levels[1]
    if rule.depth == 0:
        members = neighbor_split(graph.indptr, graph.indices, pairs).common
    else:
        members = completed_common_neighbors(
            graph.indptr, graph.indices, x, pairs,
            _inner_logits(rule, head, graph, levels, None, rule.depth, 0), rule.calibration,
            rule.cap, rule.seed, symmetric_inner=rule.depth == 1)
    return CommonNeighborTerms(xij, x, members)
