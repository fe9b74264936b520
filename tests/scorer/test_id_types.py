"""Ids beyond Int64 against an integer-id bundle are unknown ids on every path (issue 14,
class 7): ``ncnc score`` refuses them naming the values, ``--on-unknown skip`` skips them,
``ncnc candidates --nodes`` refuses them, ``Scorer.score`` does either. Never a traceback."""

from __future__ import annotations

import polars as pl
import pytest
from click.testing import CliRunner

import ncnc
from ncnc.cli import cli
from ncnc.core.errors import InputError
from tests.scorer.tampering import file_hashes

HUGE = 2**63 + 7  # a UInt64 id no Int64 node id can equal
PAIRS = pl.DataFrame({"src": [1000, HUGE, 1003, 1001], "dst": [1003, 1004, HUGE, 1005]},
                     schema={"src": pl.UInt64, "dst": pl.UInt64})
KNOWN = PAIRS.filter((pl.col("src") != HUGE) & (pl.col("dst") != HUGE))


@pytest.fixture(scope="module")
def scorer(int_bundle):
    return ncnc.load_bundle(int_bundle).scorer(device="cpu")


def test_scorer_refuses_or_skips_ids_beyond_int64(scorer):
    with pytest.raises(InputError, match=f"column src: 1 id.s. are not nodes of the graph: {HUGE}"):
        scorer.score(PAIRS)
    skipped = scorer.score(PAIRS, on_unknown="skip")
    assert skipped.equals(scorer.score(KNOWN.cast(pl.Int64)))
    assert skipped.select("src", "dst").rows() == [(1000, 1003), (1001, 1005)]


def test_cli_score_refuses_or_skips_ids_beyond_int64(int_bundle, scorer, tmp_path):
    pairs = tmp_path / "pairs.parquet"
    PAIRS.write_parquet(pairs)
    before = file_hashes(int_bundle, pairs)
    command = ["score", "--bundle", str(int_bundle), "--pairs", str(pairs), "--quiet",
               "--out", str(tmp_path / "out.parquet")]
    refused = CliRunner().invoke(cli, command)
    assert refused.exit_code == 2 and refused.output.count("\n") == 1, refused.output
    assert f"column src: 1 id(s) are not nodes of the graph: {HUGE}" in refused.output
    assert not (tmp_path / "out.parquet").exists()
    skipped = CliRunner().invoke(cli, [*command, "--on-unknown", "skip"])
    assert skipped.exit_code == 0, skipped.output
    assert pl.read_parquet(tmp_path / "out.parquet").equals(
        scorer.score(KNOWN.cast(pl.Int64)))
    assert file_hashes(int_bundle, pairs) == before


def test_cli_candidates_nodes_beyond_int64_are_unknown(int_bundle, tmp_path):
    nodes = tmp_path / "nodes.parquet"
    pl.DataFrame({"node": [1003, HUGE]}, schema={"node": pl.UInt64}).write_parquet(nodes)
    result = CliRunner().invoke(cli, ["candidates", "--bundle", str(int_bundle), "--nodes",
                                      str(nodes), "--out", str(tmp_path / "c.parquet"),
                                      "--quiet"])
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert f"column node: 1 id(s) are not nodes of the graph: {HUGE}" in result.output
    assert not (tmp_path / "c.parquet").exists()
