"""ncnc/core/ids.py: ids beyond Int64 are unknown ids, and type errors name example values
(issue 14, class 7)."""

from __future__ import annotations

import polars as pl
import pytest

from ncnc.core.errors import InputError
from ncnc.core.ids import IdMap

BEYOND = [2**63, 2**63 + 5, 2**64 - 1]


@pytest.mark.parametrize("id_map", [
    IdMap.from_ids(range(10)),  # dense: a lookup table
    IdMap.from_ids([0, 3, 7, 10**15]),  # sparse and sorted: a binary search
    IdMap(pl.Series("id", [7, 0, 3])),  # not sorted: a hash join
], ids=["dense", "sorted", "unsorted"])
def test_uint64_ids_beyond_int64_are_unknown_not_a_traceback(id_map):
    # Regression: the cast to Int64 raised polars' InvalidOperationError (a traceback).
    values = pl.Series([3, *BEYOND, 0], dtype=pl.UInt64)
    index, known = id_map.lookup(values, what="pairs column src")
    expected = id_map.lookup(pl.Series([3, 0]), what="x")[0].tolist()
    assert known.tolist() == [True, False, False, False, True]
    assert index.tolist() == [expected[0], -1, -1, -1, expected[1]]
    with pytest.raises(InputError, match="pairs column src: 3 id.s. are not nodes of the graph: "
                                         "9223372036854775808, 9223372036854775813, "
                                         "18446744073709551615$"):
        id_map.to_index(values, what="pairs column src")


def test_uint64_ids_within_int64_map_as_usual():
    id_map = IdMap.from_ids([5, 2**62])
    values = pl.Series([2**62, 5], dtype=pl.UInt64)
    assert id_map.to_index(values, what="x").tolist() == [1, 0]


@pytest.mark.parametrize("values, match", [
    (pl.Series([1.5, 2.0]), r"ids are Float64 but the graph's node ids are integer \(examples: "
                            r"1.5, 2.0\)"),
    (pl.Series(["a", "b"]), r"ids are string but the graph's node ids are integer \(examples: "
                            r"'a', 'b'\)"),
    (pl.Series([True]), r"ids are Boolean .*\(examples: True\)"),
])
def test_type_errors_name_example_values(values, match):
    with pytest.raises(InputError, match=match):
        IdMap.from_ids(range(3)).lookup(values, what="pairs column src")
