"""A model small enough to check by hand: an 8-node graph, seeded node tables and a non-linear
torch head (tests/triton_kernels and tests/scorer score and explain pairs with it)."""

from __future__ import annotations

import torch
from torch import Tensor

from ncnc.triton_kernels import CSRGraph, build_csr
from ncnc.triton_kernels.completion import Calibration

# 0: 1 2 | 1: 0 2 3 | 2: 0 1 3 | 3: 1 2 4 | 4: 3 5 | 5: 4 | 6, 7: isolated
EDGES = [(0, 1), (0, 2), (1, 2), (1, 3), (2, 3), (3, 4), (4, 5)]
NUM_NODES = 8
WIDTH = 4
NEIGHBOURS = {v: {b for a, b in EDGES if a == v} | {a for a, b in EDGES if b == v}
              for v in range(NUM_NODES)}
CALIBRATION = Calibration(probscale=2.0, proboffset=0.5, pt=0.75, alpha=0.9)


def hand_graph() -> CSRGraph:
    return build_csr(torch.tensor(EDGES), NUM_NODES)


def hand_levels(seed: int = 3) -> list[Tensor]:
    """``levels[0..2]``, ``[NUM_NODES, WIDTH]`` float32 (enough for NCNC of depth 1), of quarter
    integers in [-2, 2]: their sums are exact in float32, whatever the order of the terms."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(-8, 9, (NUM_NODES, WIDTH), generator=generator) / 4.0
            for _ in range(3)]


def hand_head(cn: Tensor | None, xij: Tensor) -> Tensor:
    """``sum(tanh(cn A)) + xij . b`` (``xij . b`` alone for GAE)."""
    a = torch.linspace(-1.0, 1.5, WIDTH * WIDTH, dtype=xij.dtype).reshape(WIDTH, WIDTH)
    b = torch.tensor([0.5, -0.25, 1.0, 0.75], dtype=xij.dtype)
    bias = xij @ b
    return bias if cn is None else torch.tanh(cn @ a).sum(1) + bias


def completion_weight(tables: list[Tensor], anchor: int, u: int) -> float:
    """NCNC's ``p(anchor, u)`` by hand: the calibrated NCN logit of ``(anchor, u)`` one level
    down (``xij`` from ``levels[1]``, common neighbours summed from ``levels[2]``)."""
    common = sorted(NEIGHBOURS[anchor] & NEIGHBOURS[u])
    cn = tables[2][common].sum(0, keepdim=True) if common else torch.zeros(1, WIDTH)
    return float(CALIBRATION(hand_head(cn, (tables[1][anchor] * tables[1][u]).unsqueeze(0))))
