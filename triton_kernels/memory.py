"""Node tables laid out for random row reads on the CPU.

The common-neighbour step and the head's ``h_i * h_j`` read rows of ``[n, d]`` tables at random.
With 4 KiB pages, a table larger than the TLB's reach (a few MiB) costs a page walk on nearly every
row; 2 MiB transparent huge pages remove most of them. On a 1M x 256 float32 table this machine
summed random rows 1.3-1.9x faster from huge pages (``benchmarks/bench_common_neighbors.py``
reads its tables through :func:`huge_page_copy`, for our kernels and the baseline alike).
"""

from __future__ import annotations

import contextlib
import math
import mmap

import numpy as np
import torch
from torch import Tensor

HUGE_PAGE_MIN_BYTES = 32 << 20
"""Smaller tables fit the TLB's reach well enough; they are only made contiguous."""


def huge_page_empty(shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
    """An uninitialised CPU tensor in memory the kernel is asked (``madvise``) to back with
    transparent huge pages.

    A plain ``torch.empty`` below :data:`HUGE_PAGE_MIN_BYTES` or where the platform has no
    ``MADV_HUGEPAGE`` (not Linux). Where the kernel refuses the advice (THP disabled), the memory
    is ordinary pages: only the speed differs.
    """
    nbytes = math.prod(shape) * torch.empty(0, dtype=dtype).element_size()
    if nbytes < HUGE_PAGE_MIN_BYTES or not hasattr(mmap, "MADV_HUGEPAGE"):
        return torch.empty(shape, dtype=dtype)
    buffer = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    with contextlib.suppress(OSError):  # THP not built into this kernel: ordinary pages
        buffer.madvise(mmap.MADV_HUGEPAGE)
    # Raw bytes viewed as the dtype (numpy has no bfloat16); the array keeps the mapping alive for
    # as long as the tensor lives.
    raw = torch.from_numpy(np.frombuffer(buffer, dtype=np.uint8))
    return raw.view(dtype).view(shape)


def huge_page_copy(table: Tensor) -> Tensor:
    """A contiguous copy of a CPU tensor in :func:`huge_page_empty` memory.

    Returns ``table.contiguous()`` instead (which may be ``table`` itself) for tensors not on the
    CPU or smaller than :data:`HUGE_PAGE_MIN_BYTES`.
    """
    nbytes = table.numel() * table.element_size()
    if table.device.type != "cpu" or nbytes < HUGE_PAGE_MIN_BYTES:
        return table.contiguous()
    copy = huge_page_empty(tuple(table.shape), table.dtype)
    copy.copy_(table)
    return copy
