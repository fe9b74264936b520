"""huge_page_copy: same values in a separate, contiguous buffer; huge pages where Linux gives them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from ncnc.triton_kernels import huge_page_copy
from ncnc.triton_kernels.memory import HUGE_PAGE_MIN_BYTES

THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def _large(dtype: torch.dtype = torch.float32) -> torch.Tensor:
    rows = 2 * HUGE_PAGE_MIN_BYTES // (64 * torch.empty(0, dtype=dtype).element_size())
    return torch.randn(rows, 64, generator=torch.Generator().manual_seed(0)).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.int64, torch.bfloat16])
def test_copy_holds_the_same_values_in_its_own_memory(dtype):
    table = _large(dtype)
    copy = huge_page_copy(table)
    assert copy.dtype == dtype and copy.shape == table.shape and copy.is_contiguous()
    assert torch.equal(copy, table)
    copy[0, 0] = 123
    assert table[0, 0] != 123, "the copy must not share memory with its source"


def test_small_and_strided_tables_come_back_contiguous():
    small = torch.arange(12.0).view(3, 4)
    assert huge_page_copy(small) is small
    strided = _large().t()
    copy = huge_page_copy(strided)
    assert copy.is_contiguous() and torch.equal(copy, strided)


def _anon_huge_kib(address: int) -> int:
    """AnonHugePages of the mapping of this process that holds ``address``."""
    mapping = None
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = re.match(r"^([0-9a-f]+)-([0-9a-f]+) ", line)
        if head:
            low, high = int(head.group(1), 16), int(head.group(2), 16)
            mapping = low <= address < high
        elif mapping and line.startswith("AnonHugePages:"):
            return int(line.split()[1])
    raise AssertionError(f"no mapping holds address {address:#x}")


@pytest.mark.skipif(
    not THP.exists() or "[never]" in THP.read_text(), reason="transparent huge pages unavailable"
)
def test_large_copy_is_backed_by_huge_pages():
    copy = huge_page_copy(_large())
    assert _anon_huge_kib(copy.data_ptr()) >= 2048
    plain = _large()
    if "[always]" not in THP.read_text():
        assert _anon_huge_kib(plain.data_ptr()) == 0, "with THP on madvise only, plain memory has none"
