"""Running top K: equals one full sort by (score descending, input row ascending), per group too."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from ncnc.scorer.ranking import RunningTopK


def scored_rows(count: int, groups: int, seed: int = 0, nan: bool = False) -> pl.DataFrame:
    """Rows with few distinct scores (many ties) and a unique row number in input order."""
    rng = np.random.default_rng(seed)
    score = rng.integers(0, 4, count).astype(np.float32)
    if nan:
        score[rng.random(count) < 0.1] = np.nan
    return pl.DataFrame({
        "src": rng.integers(0, groups, count),
        "dst": rng.integers(0, 1000, count),
        "score": score,
        "row": np.arange(count),
    })


def full_sort_top_k(rows: pl.DataFrame, k: int, per_source: bool) -> pl.DataFrame:
    """The reference: sort everything by the tie rule in numpy, take the first k (per src)."""
    score = rows["score"].to_numpy().astype(np.float64)
    score = np.where(np.isnan(score), -np.inf, score)
    keys = (rows["row"].to_numpy(), -score)
    if per_source:
        keys = (*keys, rows["src"].to_numpy())
    ordered = rows[np.lexsort(keys)]
    if not per_source:
        return ordered.head(k).with_columns(rank=pl.int_range(1, pl.len() + 1, dtype=pl.Int64))
    kept = []
    for src in sorted(set(ordered["src"].to_list())):
        group = ordered.filter(pl.col("src") == src).head(k)
        kept.append(group.with_columns(rank=pl.int_range(1, pl.len() + 1, dtype=pl.Int64)))
    return pl.concat(kept)


@pytest.mark.parametrize("per_source", [False, True])
@pytest.mark.parametrize("k", [1, 3, 17, 5000])
@pytest.mark.parametrize("batch_size", [2, 13, 400, 2000])
def test_running_top_k_equals_a_full_sort(per_source, k, batch_size):
    rows = scored_rows(1000, groups=9, seed=k + batch_size)
    top = RunningTopK(k, by="src" if per_source else None, min_merge_rows=50)
    for start in range(0, rows.height, batch_size):
        top.push(rows[start:start + batch_size])
    expected = full_sort_top_k(rows, k, per_source)
    assert top.result().equals(expected.drop("row"))


@pytest.mark.parametrize("per_source", [False, True])
def test_nan_scores_rank_last(per_source):
    rows = scored_rows(300, groups=3, nan=True)
    top = RunningTopK(40, by="src" if per_source else None, min_merge_rows=10)
    for start in range(0, rows.height, 32):
        top.push(rows[start:start + 32])
    assert top.result().equals(full_sort_top_k(rows, 40, per_source).drop("row"))


def test_all_equal_scores_keep_input_order():
    rows = pl.DataFrame({"score": [1.0] * 6, "row": [0, 1, 2, 3, 4, 5], "x": list("abcdef")})
    top = RunningTopK(4)
    top.push(rows[3:])
    top.push(rows[:3])  # batches arrive out of order: the row column decides, not arrival
    assert top.result()["x"].to_list() == ["a", "b", "c", "d"]


def test_empty_stream_keeps_the_columns():
    top = RunningTopK(5, by="src")
    top.push(scored_rows(0, groups=1))
    result = top.result()
    assert result.height == 0 and result.columns == ["src", "dst", "score", "rank"]


def test_bad_k_and_nothing_pushed():
    with pytest.raises(ValueError, match="at least 1"):
        RunningTopK(0)
    with pytest.raises(ValueError, match="no frame was pushed"):
        RunningTopK(3).result()
