"""Dropout whose CPU mask comes from a counter-based hash instead of torch's Bernoulli sampler.

On the CPU ``torch.dropout`` draws its mask with ``bernoulli_``, which walks one Mersenne-Twister
stream element by element: it was the largest single cost of an NCNC training step on Cora (18%
of the CPU time, more than any matrix multiply) and of CiteSeer's 3,703-wide input dropout. Here
element ``k`` of a call is kept when ``splitmix64(seed + k * golden) >> 32`` is at or above
``p * 2^32``, computed by a numba loop on the CPU kernels' threads; the backward pass recomputes
the same mask from the seed instead of storing it. The distribution is the same as
``nn.Dropout`` (each element kept independently with probability ``1 - p``, kept ones scaled by
``1 / (1 - p)``); the per-call seed is drawn from torch's global generator, so
``torch.manual_seed`` makes training reproducible. Other devices and dtypes use
``torch.nn.functional.dropout``.
"""

from __future__ import annotations

import numba
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ncnc.triton_kernels.common_neighbors_cpu import run_ranges

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_SEED_BOUND = 2**62
_HASHED_DTYPES = (torch.float32, torch.float64)


@numba.njit(nogil=True, cache=True)
def _keep_and_scale(lo: int, hi: int, values: np.ndarray, out: np.ndarray, seed: np.uint64,
                    threshold: np.uint64, scale: float) -> None:
    for k in range(lo, hi):
        z = seed + np.uint64(k) * _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _MIX1
        z = (z ^ (z >> np.uint64(27))) * _MIX2
        z = z ^ (z >> np.uint64(31))
        out[k] = values[k] * scale if (z >> np.uint64(32)) >= threshold else 0.0


def hashed_dropout_mask_apply(x: Tensor, p: float, seed: int) -> Tensor:
    """``x`` with element ``k`` zeroed or scaled by ``1 / (1 - p)`` per the hash of ``(seed, k)``.

    ``x``: a CPU float32/float64 tensor of any shape (elements numbered in row-major order).
    """
    values = x.detach().contiguous()
    out = torch.empty_like(values)
    run_ranges(_keep_and_scale, values.numel(), values.view(-1).numpy(), out.view(-1).numpy(),
               np.uint64(seed), np.uint64(int(p * 2**32)), 1.0 / (1.0 - p), min_chunk=1 << 16)
    return out


class _HashedDropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, p: float, seed: int) -> Tensor:
        ctx.p, ctx.seed = p, seed
        return hashed_dropout_mask_apply(x, p, seed)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        # d(x * mask * scale)/dx = mask * scale: the same function of the same seed.
        return hashed_dropout_mask_apply(grad, ctx.p, ctx.seed), None, None


class Dropout(nn.Module):
    """Drop-in for :class:`torch.nn.Dropout` (same ``p``, same train/eval behaviour)."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        if x.device.type != "cpu" or x.dtype not in _HASHED_DTYPES:
            return F.dropout(x, self.p, training=True)
        seed = int(torch.randint(0, _SEED_BOUND, (1,)))
        return _HashedDropout.apply(x, self.p, seed)

    def extra_repr(self) -> str:
        return f"p={self.p}"
