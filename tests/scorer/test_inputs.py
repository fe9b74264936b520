"""A job's inputs: path expansion, file checks, bounded batches equal one in-memory read."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from ncnc.core.errors import InputError
from ncnc.scorer.inputs import (
    expand_inputs,
    inspect_pair_files,
    iter_pair_batches,
    open_inputs,
)
from tests.scorer.conftest import random_pairs


def test_expand_inputs_keeps_given_order_and_sorts_folders_and_globs(tmp_path, write_pairs,
                                                                     string_ids):
    frame = random_pairs(string_ids, 3)
    b = write_pairs(frame, "b.parquet")
    a = write_pairs(frame, "a.parquet")
    d2 = write_pairs(frame, "d/2.parquet")
    d1 = write_pairs(frame, "d/1.parquet")
    write_pairs(frame, "d/_SUCCESS.parquet")  # markers and hidden files are not data
    write_pairs(frame, "d/.hidden.parquet")
    (tmp_path / "d" / "notes.txt").write_text("not parquet")
    g2 = write_pairs(frame, "g/x2.parquet")
    g1 = write_pairs(frame, "g/x1.parquet")
    found = expand_inputs([b, a, tmp_path / "d", str(tmp_path / "g" / "x*.parquet")])
    assert found == [b, a, d1, d2, g1, g2]


@pytest.mark.parametrize("path, message", [
    ("missing.parquet", "no such file or folder"),
    ("empty_dir", "holds no *.parquet file"),
    ("nothing*.parquet", "matches no file"),
])
def test_expand_inputs_names_what_is_missing(tmp_path, path, message):
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(InputError, match=message.replace("*", r"\*")):
        expand_inputs([tmp_path / path])


@pytest.mark.parametrize("batch_size", [1, 5, 7, 64, 1000])
def test_streamed_batches_equal_one_in_memory_read(write_pairs, string_ids, batch_size):
    # Row groups of 7 and batch sizes that do not divide the row counts (61, 0, 30).
    frames = [random_pairs(string_ids, 61, seed=1), random_pairs(string_ids, 0, seed=2),
              random_pairs(string_ids, 30, seed=3)]
    files = [write_pairs(f, f"p{k}.parquet", row_group_size=7) for k, f in enumerate(frames)]
    batches = list(iter_pair_batches(files, batch_size))
    assert pl.concat([b.frame for b in batches]).equals(pl.concat(frames))
    assert all(b.frame.height <= batch_size for b in batches)
    # Global row numbers follow input order; file row numbers restart per file.
    assert [b.row for b in batches] == [sum(x.frame.height for x in batches[:i])
                                        for i in range(len(batches))]
    for path in files:
        own = [b for b in batches if b.path == path]
        assert [b.file_row for b in own] == [sum(x.frame.height for x in own[:i])
                                             for i in range(len(own))]
    first_file = [b.frame.height for b in batches if b.path == files[0]]
    assert all(h == batch_size for h in first_file[:-1])  # only a file's last batch is short


@pytest.mark.parametrize("batch_size", [1, 7, 64])
def test_starting_at_a_batch_boundary_yields_the_rest_of_the_stream(write_pairs, string_ids,
                                                                    batch_size):
    frames = [random_pairs(string_ids, n, seed=n) for n in (61, 0, 30)]
    files = [write_pairs(f, f"p{k}.parquet", row_group_size=7) for k, f in enumerate(frames)]
    counts = [61, 0, 30]
    full = list(iter_pair_batches(files, batch_size))
    for skipped in range(len(full) + 1):
        start = full[skipped].row if skipped < len(full) else 91
        rest = list(iter_pair_batches(files, batch_size, start_row=start, row_counts=counts))
        assert [(b.path, b.row, b.file_row) for b in rest] == [
            (b.path, b.row, b.file_row) for b in full[skipped:]]
        assert all(a.frame.equals(b.frame) for a, b in zip(rest, full[skipped:]))


def test_a_row_range_yields_exactly_those_rows_of_the_stream(write_pairs, string_ids):
    frames = [random_pairs(string_ids, n, seed=n) for n in (61, 0, 30)]
    files = [write_pairs(f, f"p{k}.parquet", row_group_size=7) for k, f in enumerate(frames)]
    everything = pl.concat(frames)
    for start, stop in [(0, 91), (0, 61), (61, 91), (5, 12), (55, 70), (90, 91), (40, 40)]:
        batches = list(iter_pair_batches(files, 5, start_row=start, stop_row=stop,
                                         row_counts=[61, 0, 30]))
        got = pl.concat([b.frame for b in batches]) if batches else everything.clear()
        assert got.equals(everything.slice(start, stop - start)), (start, stop)
        assert all(b.row >= start for b in batches)


def test_nulls_are_reported_with_file_row_numbers(write_pairs):
    frame = pl.DataFrame({"src": ["a"] * 10, "dst": ["b"] * 8 + [None, None]})
    path = write_pairs(frame, "nulls.parquet", row_group_size=3)
    with pytest.raises(InputError, match=r"nulls.parquet column dst: 2 null value\(s\), in rows 8, 9"):
        list(iter_pair_batches([path], 4))


def test_inspect_counts_rows_and_rejects_bad_files(tmp_path, write_pairs, string_ids):
    good = write_pairs(random_pairs(string_ids, 12), "good.parquet", row_group_size=5)
    assert inspect_pair_files([good, good], id_kind_expected="string") == [12, 12]
    no_dst = write_pairs(pl.DataFrame({"src": ["a"], "target": ["b"]}), "no_dst.parquet")
    floats = write_pairs(pl.DataFrame({"src": [1.5], "dst": [2.5]}), "floats.parquet")
    text = tmp_path / "text.parquet"
    text.write_text("src,dst\na,b\n")
    with pytest.raises(InputError, match=r"no_dst.parquet: missing column\(s\) dst"):
        inspect_pair_files([good, no_dst], id_kind_expected="string")
    with pytest.raises(InputError, match="floats.parquet column src: ids are Float64"):
        inspect_pair_files([floats], id_kind_expected="integer")
    with pytest.raises(InputError, match="good.parquet column src: ids are string but the "
                                         "graph's node ids are integer"):
        inspect_pair_files([good], id_kind_expected="integer")
    with pytest.raises(InputError, match="text.parquet: cannot be read as Parquet"):
        inspect_pair_files([text], id_kind_expected="string")


def test_truncated_and_corrupted_files_are_input_errors(tmp_path, write_pairs, string_ids):
    frame = random_pairs(string_ids, 5000, seed=4)
    truncated = write_pairs(frame, "truncated.parquet")
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    with pytest.raises(InputError, match="truncated.parquet: cannot be read as Parquet"):
        inspect_pair_files([truncated], id_kind_expected="string")
    # Footer intact, data pages garbled: found while streaming, not by the footer check.
    corrupted = write_pairs(frame, "corrupted.parquet", row_group_size=1000)
    data = bytearray(corrupted.read_bytes())
    data[200:4000] = bytes(3800)
    corrupted.write_bytes(bytes(data))
    assert inspect_pair_files([corrupted], id_kind_expected="string") == [5000]
    # The polars reader stops early on this one, without an error: the footer's count tells.
    with pytest.raises(InputError, match="corrupted.parquet: (cannot be read as Parquet|"
                                         "0 rows could be read of the 5000 its footer lists)"):
        list(iter_pair_batches([corrupted], 1000, row_counts=[5000]))


def test_paths_that_exist_are_never_read_as_patterns(tmp_path, write_pairs, string_ids):
    # Regression: pairs[1].parquet was globbed to pairs1.parquet, a folder run[7] was refused.
    literal = write_pairs(random_pairs(string_ids, 3, seed=1), "pairs[1].parquet")
    write_pairs(random_pairs(string_ids, 4, seed=2), "pairs1.parquet")
    inside = write_pairs(random_pairs(string_ids, 5, seed=3), "run[7]/part-0.parquet")
    star = write_pairs(random_pairs(string_ids, 2, seed=4), "odd*name?.parquet")
    assert expand_inputs([literal, tmp_path / "run[7]", star]) == [literal, inside, star]
    # A path that does not exist is a pattern.
    assert expand_inputs([str(tmp_path / "pairs[0-9].parquet")]) == [tmp_path / "pairs1.parquet"]


def test_damaged_pages_give_an_input_error_never_a_panic(tmp_path, write_pairs, string_ids):
    # Regression: polars' streaming reader panicked on damaged pages (a Rust backtrace of ~30
    # lines) and, after a few, aborted the process (SIGABRT); the read now goes through pyarrow,
    # with Arrow's full validation before polars sees the data (invalid UTF-8 made polars panic).
    rng = np.random.default_rng(11)
    originals = {}
    for compression in ("zstd", "snappy", "uncompressed"):
        path = tmp_path / f"{compression}.parquet"
        random_pairs(string_ids, 3000, seed=5).write_parquet(path, row_group_size=500,
                                                            compression=compression)
        originals[compression] = path.read_bytes()
    outcomes = {"read": 0, "refused": 0}
    damaged = tmp_path / "damaged.parquet"
    for trial in range(300):
        data = bytearray(originals[("zstd", "snappy", "uncompressed")[trial % 3]])
        for _ in range(int(rng.integers(1, 9))):
            data[int(rng.integers(0, len(data) - 8))] = int(rng.integers(0, 256))
        damaged.write_bytes(bytes(data))
        try:
            inputs = open_inputs([damaged], string_ids)
            rows = sum(b.frame.height for b in iter_pair_batches(
                inputs.files, 700, row_counts=inputs.row_counts))
            assert rows == 3000
            outcomes["read"] += 1
        except InputError as error:
            assert "damaged.parquet" in str(error) and "\n" not in str(error)
            outcomes["refused"] += 1
    assert outcomes["refused"] > 100 and sum(outcomes.values()) == 300
