"""Bit-identical scores on CPU: across runs, batch sizes and input file splits, with capping on,
at every precision (fp32; bf16 tables and head; bf16 tables and an int8 head).

The NCNC completion caps each difference set at the bundle's ``cap`` by a hash of
(i, j, member, side, seed) (README, "Completion and capping"), not by a random draw, so a pair's
score cannot depend on what else is in its batch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from ncnc.scorer.bundle import load_bundle
from ncnc.scorer.engine import BatchScorer
from ncnc.scorer.job import score_files

CAP = 3


@pytest.fixture(scope="module")
def capped_checkpoint(tmp_path_factory) -> Path:
    """An NCNC checkpoint over a 400-node graph of mean degree 12, completion sets capped at 3."""
    from ncnc.trainer.api import TrainRequest, train
    from ncnc.trainer.synthetic import community_graph

    folder = tmp_path_factory.mktemp("capped")
    graph = community_graph(400, avg_degree=12, num_communities=4, feature_dim=8, seed=2)
    graph.edges.write_parquet(folder / "edges.parquet")
    graph.features.write_parquet(folder / "features.parquet")
    train(TrainRequest(
        model="ncnc", out=folder / "ck", edges=folder / "edges.parquet",
        features=folder / "features.parquet", progress=False,
        model_overrides={"hidden": 16, "test_cap": CAP, "cap_seed": 5},
        train_overrides={"epochs": 1, "batch_size": 256},
    ))
    return folder / "ck"


@pytest.fixture(scope="module", params=["fp32", "bf16", "int8"])
def capped_bundle(request, capped_checkpoint, tmp_path_factory) -> Path:
    """``capped_checkpoint`` exported at each precision (agreement thresholds off: a one-epoch
    model's ranking is not what these tests are about)."""
    from ncnc.exporter import ExportConfig, export_bundle

    out = tmp_path_factory.mktemp(f"precision-{request.param}-") / "bundle"
    export_bundle(capped_checkpoint, out, config=ExportConfig(
        precision=request.param, min_top100_overlap=0.0, min_per_source_top20_overlap=0.0,
        max_abs_delta_hits100=1.0, agreement_sources=50))
    return out


@pytest.fixture(scope="module")
def scorer(capped_bundle):
    bundle = load_bundle(capped_bundle)
    return bundle, BatchScorer(bundle, "cpu")


@pytest.fixture(scope="module")
def pairs(scorer) -> pl.DataFrame:
    """1,500 random pairs and 1,500 pairs two hops apart (common neighbours, capped sets)."""
    bundle, _ = scorer
    rng = np.random.default_rng(0)
    n = bundle.num_nodes
    indptr, indices = bundle.graph.indptr.numpy(), bundle.graph.indices.numpy()
    src = rng.choice(np.flatnonzero(np.diff(indptr) > 0), 1500)
    mid = np.array([rng.choice(indices[indptr[u]:indptr[u + 1]]) for u in src])
    two_hop = np.array([rng.choice(indices[indptr[m]:indptr[m + 1]]) for m in mid])
    index = np.concatenate([np.stack([rng.integers(0, n, 1500), rng.integers(0, n, 1500)], 1),
                            np.stack([src, two_hop], 1)])
    ids = bundle.id_map.ids
    return pl.DataFrame({"src": ids.gather(index[:, 0]), "dst": ids.gather(index[:, 1])})


def test_the_graph_really_caps(scorer, capped_bundle):
    bundle, _ = scorer
    degrees = bundle.graph.indptr.diff()
    assert bundle.spec.cap == CAP and (degrees > 2 * CAP).float().mean() > 0.5
    assert bundle.spec.precision == capped_bundle.parent.name.split("-")[1]


def scores_of(scorer, files, tmp_path, name, batch_size) -> pl.Series:
    bundle, engine = scorer
    out = tmp_path / name
    score_files(engine, bundle.id_map, files, out, batch_size=batch_size, progress=False)
    return pl.read_parquet(out)["score"]


def test_scores_are_bit_identical_across_runs_batches_and_file_splits(scorer, pairs, tmp_path):
    one_file = tmp_path / "all.parquet"
    pairs.write_parquet(one_file)
    reference = scores_of(scorer, [one_file], tmp_path, "a.parquet", batch_size=4096)
    assert reference.null_count() == 0 and reference.n_unique() > 100
    assert scores_of(scorer, [one_file], tmp_path, "b.parquet", batch_size=4096).equals(reference)
    for batch_size in (7, 97, 1000):  # batches of one: the next test
        got = scores_of(scorer, [one_file], tmp_path, f"batch{batch_size}.parquet", batch_size)
        assert got.equals(reference), f"batch size {batch_size} changed scores"
    splits = []
    for k, (start, length) in enumerate([(0, 1), (1, 1200), (1201, 1799)]):
        splits.append(tmp_path / f"split{k}.parquet")
        pairs.slice(start, length).write_parquet(splits[-1])
    assert scores_of(scorer, splits, tmp_path, "split.parquet", batch_size=500).equals(reference)


def test_a_pair_scores_the_same_alone_and_in_any_batch(scorer, pairs):
    bundle, engine = scorer
    index = torch.stack([bundle.id_map.to_index(pairs[c], what=c) for c in ("src", "dst")], 1)
    together = engine.score_logits(index)
    shuffled = torch.randperm(len(index), generator=torch.Generator().manual_seed(0))
    assert torch.equal(engine.score_logits(index[shuffled]), together[shuffled])
    alone = torch.cat([engine.score_logits(index[k:k + 1]) for k in range(1490, 1530)])
    assert torch.equal(alone, together[1490:1530])


def test_explanations_are_bit_identical_alone_in_blocks_and_in_one_batch(scorer, pairs,
                                                                        monkeypatch):
    from ncnc.scorer import explain

    bundle, engine = scorer
    index = torch.stack([bundle.id_map.to_index(pairs[c], what=c) for c in ("src", "dst")], 1)
    together = engine.explain_pairs(index, 3)
    assert (together.offsets.diff() == 3).float().mean() > 0.4  # most pairs have 3+ reasons
    monkeypatch.setattr(explain, "PAIR_BLOCK", 97)  # completion sets built 97 pairs at a time
    monkeypatch.setattr(explain, "HEAD_ROWS", 113)  # and left-out sums headed 113 at a time
    blocked = engine.explain_pairs(index, 3)
    alone = [engine.explain_pairs(index[k:k + 1], 3) for k in range(1490, 1530)]
    span = slice(int(together.offsets[1490]), int(together.offsets[1530]))
    for name in ("nodes", "weights", "contributions"):
        assert torch.equal(getattr(blocked, name), getattr(together, name)), name
        assert torch.equal(torch.cat([getattr(r, name) for r in alone]),
                           getattr(together, name)[span]), name
    assert torch.equal(blocked.offsets, together.offsets)
