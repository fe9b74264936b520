"""Property-based fuzzing of pairs files (issue 14): random truncations, byte flips, inserted and
deleted bytes of a Parquet pairs file, scored with ``Scorer.score_parquet`` (``ncnc score``).

The property: one one-line :class:`~ncnc.core.errors.InputError` and nothing at the output, or an
output that is exactly the scores of the rows the damaged file holds (read on its own, whole,
with ``pyarrow.parquet.read_table`` and Arrow's full validation: polars' own reader also checks
the column statistics, whose damage leaves the rows intact); the pairs file and the bundle never
change. Parquet as polars writes it has no page checksums, so a flipped byte inside a data page
may decode to other valid ids: such a file is a different, valid input (its rows are scored, as
the differential check demands); a damage that leaves the rows as they were gives exactly the
untampered output.

``NCNC_FUZZ_EXAMPLES`` and ``NCNC_FUZZ_RANDOM`` as in tests/scorer/test_fuzz_bundles.py.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest
from hypothesis import event, given
from hypothesis import strategies as st

import ncnc
from tests.scorer.tampering import FUZZ, damaged, file_hashes, outcome

# 64 pairs of the bundle's ids, three row groups; a few with common neighbours.
ROWS = pl.DataFrame({"src": [f"n{k % 9}" for k in range(64)],
                     "dst": [f"n{(7 * k + 3) % 11}" for k in range(64)]})


@pytest.fixture(scope="module")
def setting(bundle_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz-pairs")
    pairs = folder / "pairs.parquet"
    ROWS.write_parquet(pairs, row_group_size=25)
    scorer = ncnc.load_bundle(bundle_dir).scorer(device="cpu")
    return {"scorer": scorer, "raw": pairs.read_bytes(), "bundle": bundle_dir,
            "scores": scorer.score(ROWS)}


@FUZZ
@given(data=st.data(), top_k=st.sampled_from([None, 5]))
def test_fuzz_damaged_pairs_file_is_refused_or_scored_as_it_reads(setting, data, top_k):
    root = Path(tempfile.mkdtemp(prefix="ncnc-fuzz-pairs-"))
    try:
        pairs, out = root / "pairs.parquet", root / "out.parquet"
        pairs.write_bytes(damaged(data, setting["raw"]))
        before = file_hashes(pairs, setting["bundle"])
        kind, _ = outcome(lambda: setting["scorer"].score_parquet(pairs, out, top_k=top_k,
                                                                  progress=False))
        assert file_hashes(pairs, setting["bundle"]) == before, "an input was changed"
        event(kind)
        if kind == "refused":
            assert not out.exists() and sorted(root.iterdir()) == [pairs]
            return
        whole = pq.read_table(pairs, columns=["src", "dst"])  # it read: so must this
        whole.validate(full=True)
        decoded = pl.DataFrame(pl.from_arrow(whole))
        expected = setting["scorer"].score(decoded)
        if top_k is not None:
            expected = ncnc.top_k(expected, top_k)
        assert pl.read_parquet(out).equals(expected), "output differs from the file's rows"
        if decoded.equals(ROWS):
            event("the same rows")
    finally:
        shutil.rmtree(root)
