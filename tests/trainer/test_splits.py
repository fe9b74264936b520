"""trainer/splits.py: random edge splits and uniform negative sampling."""

from __future__ import annotations

import polars as pl
import pytest
import torch

from ncnc.core.errors import InputError
from ncnc.trainer import splits
from ncnc.trainer.splits import (
    EdgeSplit,
    random_edge_split,
    reference_planetoid_split,
    sample_negatives,
)


def _graph(num_nodes: int, num_edges: int, seed: int = 0) -> torch.Tensor:
    """``num_edges`` distinct canonical edges on ``num_nodes`` nodes, sorted."""
    pairs = torch.triu_indices(num_nodes, num_nodes, offset=1).T
    pick = torch.randperm(pairs.shape[0], generator=torch.Generator().manual_seed(seed))[:num_edges]
    return pairs[pick.sort().values]


def _keys(pairs: torch.Tensor, num_nodes: int) -> set[int]:
    lo, hi = pairs.min(dim=1).values, pairs.max(dim=1).values
    return set((lo * num_nodes + hi).tolist())


def _assert_non_edges(negatives: torch.Tensor, edges: torch.Tensor, num_nodes: int) -> None:
    assert negatives.dtype == torch.int64 and negatives.shape[1] == 2
    assert bool((negatives[:, 0] < negatives[:, 1]).all())  # canonical, so never a self loop
    assert int(negatives.min()) >= 0 and int(negatives.max()) < num_nodes
    keys = _keys(negatives, num_nodes)
    assert len(keys) == len(negatives)  # distinct
    assert not keys & _keys(edges, num_nodes)


@pytest.mark.parametrize(("num_edges", "sizes"), [(100, (70, 10, 20)), (57, (41, 5, 11))])
def test_split_sizes_follow_the_protocol(num_edges, sizes):
    edges = _graph(40, num_edges)
    split = random_edge_split(edges, 40, 0.1, 0.2, torch.Generator().manual_seed(0))
    assert (len(split.train), len(split.valid), len(split.test)) == sizes
    assert len(split.valid_neg) == sizes[1] and len(split.test_neg) == sizes[2]


def test_split_parts_are_disjoint_and_cover_the_edges():
    edges = _graph(40, 100)
    split = random_edge_split(edges, 40, 0.1, 0.2, torch.Generator().manual_seed(1))
    parts = [_keys(p, 40) for p in (split.train, split.valid, split.test)]
    assert sum(map(len, parts)) == 100
    assert parts[0] | parts[1] | parts[2] == _keys(edges, 40)
    for negatives in (split.valid_neg, split.test_neg):
        _assert_non_edges(negatives, edges, 40)  # non-edges of the FULL graph


def test_split_is_deterministic_given_the_seed():
    edges = _graph(40, 100)

    def run(seed: int) -> EdgeSplit:
        return random_edge_split(edges, 40, 0.1, 0.2, torch.Generator().manual_seed(seed))

    first, again, other = run(3), run(3), run(4)
    for name in ("train", "valid", "valid_neg", "test", "test_neg"):
        assert torch.equal(getattr(first, name), getattr(again, name))
    assert not torch.equal(first.test, other.test)


def test_split_save_load_round_trip(tmp_path):
    split = random_edge_split(_graph(40, 100), 40, 0.1, 0.2, torch.Generator().manual_seed(0))
    split.save(tmp_path / "split.parquet")
    frame = pl.read_parquet(tmp_path / "split.parquet")
    assert frame.columns == ["split", "src", "dst"]
    loaded = EdgeSplit.load(tmp_path / "split.parquet")
    for name in ("train", "valid", "valid_neg", "test", "test_neg"):
        assert torch.equal(getattr(loaded, name), getattr(split, name))


def test_split_load_rejects_unknown_split_names(write_parquet):
    path = write_parquet("s.parquet", split=["train", "validation"], src=[0, 1], dst=[1, 2])
    with pytest.raises(InputError, match=r"column split: unknown split name\(s\) 'validation'"):
        EdgeSplit.load(path)


@pytest.mark.parametrize(("val", "test"), [(0.5, 0.5), (-0.1, 0.2), (0.1, 1.0)])
def test_split_rejects_bad_fractions(val, test):
    with pytest.raises(InputError, match="fraction"):
        random_edge_split(_graph(10, 20), 10, val, test, torch.Generator().manual_seed(0))


@pytest.mark.parametrize("num_nodes", [8, 300])  # listing path and rejection path
def test_negatives_avoid_edges_in_either_direction(num_nodes):
    edges = _graph(num_nodes, num_nodes * 2)
    flipped = torch.cat([edges[::2], edges[1::2].flip(1)])
    negatives = sample_negatives(num_nodes, 6, flipped, torch.Generator().manual_seed(0))
    assert len(negatives) == 6
    _assert_non_edges(negatives, edges, num_nodes)


def test_negatives_are_deterministic_given_the_generator():
    edges = _graph(300, 600)
    draws = [sample_negatives(300, 500, edges, torch.Generator().manual_seed(7)) for _ in range(2)]
    assert torch.equal(draws[0], draws[1])
    assert not torch.equal(
        draws[0], sample_negatives(300, 500, edges, torch.Generator().manual_seed(8))
    )


def test_negatives_are_uniform_over_non_edges():
    # 8 nodes, 28 pairs, 4 edges: 24 non-edges, each should come up about 2400 * 2 / 24 = 200 times.
    edges = torch.tensor([[0, 1], [2, 3], [4, 5], [6, 7]])
    gen = torch.Generator().manual_seed(0)
    counts = torch.zeros(64, dtype=torch.int64)
    for _ in range(2400):
        negatives = sample_negatives(8, 2, edges, gen)
        counts += torch.bincount(negatives[:, 0] * 8 + negatives[:, 1], minlength=64)
    seen = counts[counts > 0]
    assert len(seen) == 24 and counts.sum() == 4800
    assert int(seen.min()) > 140 and int(seen.max()) < 260


def test_negatives_take_every_non_edge_of_a_nearly_complete_graph():
    complete = torch.triu_indices(6, 6, offset=1).T
    edges = complete[3:]  # drop (0,1), (0,2), (0,3)
    negatives = sample_negatives(6, 3, edges, torch.Generator().manual_seed(0))
    assert sorted(negatives.tolist()) == [[0, 1], [0, 2], [0, 3]]


def test_negatives_on_a_too_dense_graph_fail_clearly():
    complete = torch.triu_indices(5, 5, offset=1).T
    with pytest.raises(InputError, match="cannot draw 1 negative pairs.*only 0 non-edge pairs"):
        sample_negatives(5, 1, complete, torch.Generator().manual_seed(0))
    with pytest.raises(InputError, match="too dense"):
        sample_negatives(5, 3, complete[2:], torch.Generator().manual_seed(0))


def test_zero_negatives():
    out = sample_negatives(5, 0, torch.empty(0, 2, dtype=torch.int64), torch.Generator())
    assert out.shape == (0, 2) and out.dtype == torch.int64


def test_rejection_path_collects_every_non_edge_over_several_rounds(monkeypatch):
    monkeypatch.setattr(splits, "_ENUMERATE_MAX_PAIRS", 0)  # force oversample-reject-repeat
    rounds = []
    one_round = splits._new_keys_in_draw_order
    monkeypatch.setattr(
        splits, "_new_keys_in_draw_order", lambda *args: rounds.append(1) or one_round(*args)
    )
    edges = _graph(20, 10)
    negatives = sample_negatives(20, 180, edges, torch.Generator().manual_seed(0))  # all 180
    assert len(rounds) > 1 and len(negatives) == 180
    _assert_non_edges(negatives, edges, 20)


def test_reference_planetoid_split_follows_the_official_protocol():
    # A ring plus chords: 200 nodes, 400 undirected edges.
    n = 200
    ring = torch.stack([torch.arange(n), (torch.arange(n) + 1) % n], 1)
    chords = torch.stack([torch.arange(n), (torch.arange(n) + 7) % n], 1)
    edges = torch.sort(torch.cat([ring, chords]), dim=1).values
    edges = edges[torch.argsort(edges[:, 0] * n + edges[:, 1])]
    split = reference_planetoid_split(edges, n, seed=0)
    assert (split.train.size(0), split.valid.size(0), split.test.size(0)) == (280, 40, 80)
    assert split.valid_neg.size(0) == 80 and split.test_neg.size(0) == 80  # 20% worth each

    def keys(e: torch.Tensor) -> set[int]:
        return set((e[:, 0] * n + e[:, 1]).tolist())

    assert keys(split.train) | keys(split.valid) | keys(split.test) == keys(edges)
    assert not keys(split.train) & keys(split.test) and not keys(split.valid) & keys(split.test)
    assert not (keys(split.valid_neg) | keys(split.test_neg)) & keys(edges)
    again = reference_planetoid_split(edges, n, seed=0)
    assert torch.equal(again.test, split.test)
    assert not torch.equal(reference_planetoid_split(edges, n, seed=1).test, split.test)
