"""Id maps: the hash index, the dense table and the binary-search fallback give the same
indices; ids outside the Int64 range are unknown ids, never a traceback."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ncnc.core.errors import InputError
from ncnc.core.ids import IdMap


def as_list(index_known):
    index, known = index_known
    return index.tolist(), known.tolist()


def test_uint64_ids_beyond_int64_are_unknown():
    # Regression: uint64 ids above 2^63 - 1 against an integer-id map raised a traceback.
    ids = IdMap.from_ids([1, 5, 2**62])
    values = pl.Series([5, 2**64 - 1, 2**63, None, 2**62], dtype=pl.UInt64)
    assert as_list(ids.lookup(values, what="x")) == ([1, -1, -1, -1, 2],
                                                      [True, False, False, False, True])
    with pytest.raises(InputError, match=r"x: 2 id\(s\) are not nodes of the graph: "
                                         "18446744073709551615, 9223372036854775808"):
        ids.to_index(values.drop_nulls(), what="x")


@pytest.mark.parametrize("kind", ["string", "sparse integer", "dense integer"])
def test_every_lookup_path_gives_the_same_indices(kind):
    rng = np.random.default_rng(3)
    if kind == "string":
        ids = IdMap.from_ids([f"node-{k}" for k in rng.permutation(5000)])
        queries = pl.Series([f"node-{k}" for k in rng.integers(0, 6000, 20_000)])
    elif kind == "sparse integer":
        ids = IdMap.from_ids(rng.integers(-2**62, 2**62, 5000))
        queries = pl.Series(np.concatenate([ids.ids.to_numpy()[rng.integers(0, 5000, 10_000)],
                                            rng.integers(-2**62, 2**62, 10_000)]))
    else:
        ids = IdMap.from_ids(range(1000, 6000))
        queries = pl.Series(rng.integers(0, 7000, 20_000))
    expected = {value: index for index, value in enumerate(ids.ids.to_list())}
    index, known = ids.lookup(queries, what="q")
    assert index.tolist() == [expected.get(v, -1) for v in queries.to_list()]
    assert known.tolist() == [v in expected for v in queries.to_list()]
    if kind != "dense integer":  # the fallback for maps whose ids share a 64-bit hash
        hashed = ids._hash_index()
        valid = np.ones(queries.len(), dtype=bool)
        assert hashed._search(queries, valid).tolist() == index.tolist()


# Class 7 of issue 14 on each lookup path, and the type errors naming example values.
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


INT64 = st.integers(-2**63, 2**63 - 1)


@settings(max_examples=150, deadline=None)
@given(low=INT64, size=st.integers(1, 64), data=st.data())
def test_dense_lookup_wraps_no_id_into_the_table(low, size, data):
    """The dense table's one-pass lookup subtracts the smallest id with wrap-around; whatever
    the ids' place in the Int64 range (its ends included), exactly the map's ids are found."""
    low = min(low, 2**63 - size)  # the ids low .. low + size - 1 are all Int64
    ids = IdMap.from_ids(range(low, low + size))
    near = st.integers(max(-2**63, low - 3), min(2**63 - 1, low + size + 2))
    queries = data.draw(st.lists(st.one_of(INT64, near, st.none()), max_size=40))
    index, known = ids.lookup(pl.Series(queries, dtype=pl.Int64), what="q")
    expected = [q - low if q is not None and low <= q < low + size else -1 for q in queries]
    assert index.tolist() == expected
    assert known.tolist() == [e >= 0 for e in expected]
