"""Logits of target pairs from a bundle's tables: the one scoring path, whatever runs the head.

The head (``(cn, xij) -> logits``) is a parameter: the batch engine passes onnxruntime, the
exporter passes the eager torch head when it builds the ``torch.export`` program. Everything
else (common neighbours, NCNC completion, inner pairs) is written once, here.

Levels: ``levels[0] = h`` (encoder output), ``levels[k + 1] = levels[k] + xlin(levels[k])``.
A pair scored at level ``l`` multiplies ``levels[l]`` rows for ``xij`` and sums ``levels[l + 1]``
over common neighbours; its NCNC completion pairs are scored at level ``l + 1`` (this mirrors the
reference, whose inner call transforms the already transformed table once more).
"""

from __future__ import annotations

from typing import Callable, Sequence

from torch import Tensor

from ncnc.scorer.bundle import ScoringSpec
from ncnc.triton_kernels import common_neighbor_sum, endpoint_product
from ncnc.triton_kernels.completion import completed_common_neighbor_sum

HeadFn = Callable[[Tensor | None, Tensor], Tensor]
"""``head(cn [B, d] or None for GAE, xij [B, d]) -> logits [B]``."""


def pair_logits(
    spec: ScoringSpec,
    head: HeadFn,
    indptr: Tensor,
    indices: Tensor,
    levels: Sequence[Tensor],
    pairs: Tensor,
    depth: int | None = None,
    level: int = 0,
) -> Tensor:
    """Logits ``[B]`` of ``pairs`` ``[B, 2]`` (node indices)."""
    depth = spec.depth if depth is None else depth
    h = levels[level]
    xij = endpoint_product(h, pairs)
    if spec.model == "gae":
        return head(None, xij)
    x = levels[level + 1]
    if depth == 0:
        cn, _ = common_neighbor_sum(indptr, indices, x, pairs)
        return head(cn, xij)

    def inner_logits(inner_pairs: Tensor) -> Tensor:
        return pair_logits(spec, head, indptr, indices, levels, inner_pairs, depth - 1, level + 1)

    cn = completed_common_neighbor_sum(
        indptr, indices, x, pairs, inner_logits, spec.calibration, spec.cap, spec.cap_seed,
        symmetric_inner=depth == 1,
    )
    return head(cn, xij)
