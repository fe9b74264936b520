"""The scoring facade: ncnc.load_bundle(...).scorer() scores polars, pandas and Arrow tables into
the same kind, ncnc.top_k ranks like ``ncnc score --top-k``, score_parquet is ``ncnc score``."""

from __future__ import annotations

import pandas as pd
import polars as pl
import pyarrow as pa
import pytest

import ncnc
from ncnc.core.errors import InputError

PAIRS = pl.DataFrame({"src": ["n0", "n1", "n3", "n0"], "dst": ["n3", "n4", "n0", "n5"],
                      "note": ["a", "b", "c", "d"]})


@pytest.fixture(scope="module")
def scorer(bundle_dir):
    return ncnc.load_bundle(bundle_dir).scorer(device="cpu")


def test_scores_polars_pandas_and_arrow_into_the_same_kind(scorer):
    from_polars = scorer.score(PAIRS)
    assert isinstance(from_polars, pl.DataFrame)
    assert from_polars.columns == ["src", "dst", "note", "score", "prob"]
    from_pandas = scorer.score(PAIRS.to_pandas())
    assert isinstance(from_pandas, pd.DataFrame)
    from_arrow = scorer.score(PAIRS.to_arrow())
    assert isinstance(from_arrow, pa.Table)
    assert pl.from_pandas(from_pandas).equals(from_polars)
    assert pl.DataFrame(pl.from_arrow(from_arrow)).equals(from_polars)


def test_the_logits_are_the_engines(scorer, bundle_dir):
    scored = scorer.score(PAIRS)
    index = scorer.bundle.id_map.to_index(PAIRS["src"], what="src")
    other = scorer.bundle.id_map.to_index(PAIRS["dst"], what="dst")
    import torch

    logits = scorer.score_logits(torch.stack([index, other], 1))
    assert scored["score"].to_list() == logits.tolist()


def test_a_table_of_another_type_is_named(scorer):
    # Regression: a pandas DataFrame was reported as "columns present: none".
    with pytest.raises(InputError, match="cannot score a builtins.dict; pass a polars DataFrame, "
                                         "a pandas DataFrame or a pyarrow Table"):
        scorer.score({"src": ["n0"], "dst": ["n1"]})
    with pytest.raises(InputError, match="LazyFrame"):
        scorer.score(PAIRS.lazy())


def test_unknown_ids_error_or_skip(scorer):
    pairs = pd.DataFrame({"src": ["n0", "nobody"], "dst": ["n1", "n2"]})
    with pytest.raises(InputError, match="1 id\\(s\\) are not nodes of the graph: 'nobody'"):
        scorer.score(pairs)
    assert len(scorer.score(pairs, on_unknown="skip")) == 1


def test_top_k_follows_the_ranking_rule_and_keeps_the_kind():
    scored = pd.DataFrame({"src": ["a", "a", "b", "a", "b"], "dst": ["x", "y", "z", "w", "v"],
                           "score": [1.0, 3.0, float("nan"), 3.0, 0.5]})
    best = ncnc.top_k(scored, 2)
    assert isinstance(best, pd.DataFrame)
    # Ties (3.0, 3.0) keep table order; NaN ranks below every number.
    assert list(zip(best["dst"], best["rank"])) == [("y", 1), ("w", 2)]
    per_source = pl.from_pandas(ncnc.top_k(scored, 2, per_source=True))
    assert per_source.select("src", "dst", "rank").rows() == [
        ("a", "y", 1), ("a", "w", 2), ("b", "v", 1), ("b", "z", 2)]
    with pytest.raises(InputError, match=r"missing column\(s\) src"):
        ncnc.top_k(pl.DataFrame({"score": [1.0]}), 1, per_source=True)


def test_score_parquet_equals_score_and_top_k(scorer, tmp_path):
    path = tmp_path / "pairs.parquet"
    PAIRS.select("src", "dst").write_parquet(path)
    report = scorer.score_parquet(path, tmp_path / "all.parquet", progress=False,
                                  report=tmp_path / "report.json")
    assert report["rows_scored"] == 4 and (tmp_path / "report.json").is_file()
    streamed = pl.read_parquet(tmp_path / "all.parquet")
    assert streamed.equals(scorer.score(PAIRS.select("src", "dst")))
    scorer.score_parquet([path], tmp_path / "top.parquet", top_k=2, per_source=True,
                         progress=False)
    expected = ncnc.top_k(streamed, 2, per_source=True)
    assert pl.read_parquet(tmp_path / "top.parquet").equals(expected)


def test_score_parquet_refuses_an_output_inside_the_bundle(scorer, tmp_path):
    path = tmp_path / "pairs.parquet"
    PAIRS.select("src", "dst").write_parquet(path)
    before = sorted(p.name for p in scorer.bundle.path.iterdir())
    with pytest.raises(InputError, match="lies inside"):
        scorer.score_parquet(path, scorer.bundle.path / "manifest.json", progress=False)
    with pytest.raises(InputError, match="lies inside"):
        scorer.score_parquet(path, tmp_path / "out.parquet", progress=False,
                             report=scorer.bundle.path / "report.json")
    assert sorted(p.name for p in scorer.bundle.path.iterdir()) == before
