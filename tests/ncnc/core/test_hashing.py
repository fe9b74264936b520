"""The compiled key table behind id lookups and the inner-logit memo."""

from __future__ import annotations

import numpy as np
import pytest

from ncnc.core.hashing import KeyTable


def test_keys_map_to_their_insertion_positions():
    table = KeyTable(capacity=100)
    keys = np.array([7, 2**64 - 1, 0, 123456789012345], dtype=np.uint64)
    assert table.insert(keys).tolist() == [0, 1, 2, 3]
    assert table.find(np.array([0, 7, 8, 2**64 - 1], dtype=np.uint64)).tolist() == [2, 0, -1, 1]
    assert table.insert(np.array([9, 7, 9], dtype=np.uint64)).tolist() == [4, -2, -2]
    assert table.size == 5
    assert table.find(keys, valid=np.array([True, False, True, False])).tolist() == [0, -1, 2, -1]


def test_many_consecutive_keys_and_a_full_table():
    table = KeyTable(capacity=50_000)
    keys = np.arange(50_000, dtype=np.uint64) * np.uint64(1024)  # a pattern that clusters badly
    assert np.array_equal(table.insert(keys), np.arange(50_000))
    assert np.array_equal(table.find(keys[::-1]), np.arange(50_000)[::-1])
    with pytest.raises(ValueError, match="exceed the capacity"):
        table.insert(np.array([1], dtype=np.uint64))
    table.clear()
    assert table.size == 0 and (table.find(keys) == -1).all()
