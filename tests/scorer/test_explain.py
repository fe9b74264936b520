"""Explanations (``because``): the neighbours listed are the score's own terms, ranked by the exact
drop of the logit without each one.

The hand model of tests/triton_kernels/hand_model.py checks the definition on sets written out
by hand; the real NCNC bundle (``bundle_dir``, graph :data:`tests.conftest.HAND_EDGES`) checks the
engines, the CLI and the API.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pytest
import torch
from click.testing import CliRunner
from torch import Tensor

from ncnc.cli import cli
from ncnc.core.errors import InputError
from ncnc.core.ids import IdMap
from ncnc.scorer import explain
from ncnc.scorer.bundle import load_bundle
from ncnc.scorer.explain import explain_pairs, explain_rows, merge_repeats
from ncnc.scorer.job import score_files
from ncnc.triton_kernels import RaggedSet
from ncnc.triton_kernels.pair_scoring import PairRule, common_neighbor_terms, pair_logits
from tests.conftest import HAND_EDGES
from tests.triton_kernels.hand_model import (
    CALIBRATION,
    NEIGHBOURS,
    NUM_NODES,
    completion_weight,
    hand_graph,
    hand_head,
    hand_levels,
)

NCN = PairRule("ncn")
NCNC = PairRule("ncnc", depth=1, calibration=CALIBRATION)
# Every ordered pair of the hand graph: common neighbours, completed ones, isolated nodes.
ALL_PAIRS = [(i, j) for i, j in itertools.product(range(NUM_NODES), repeat=2) if i != j]


@dataclass
class HandEngine:
    """Explains with the hand model (a :class:`ncnc.scorer.explain.PairExplainer`)."""

    rule: PairRule
    tables: list[Tensor]

    def explain_pairs(self, pairs: Tensor, k: int) -> explain.Reasons:
        return explain_pairs(self.rule, hand_head, hand_graph(), self.tables, pairs, k)


def listed(reasons: explain.Reasons, b: int) -> tuple[list[int], Tensor, Tensor]:
    """(nodes, weights, contributions) listed for pair ``b``."""
    span = slice(int(reasons.offsets[b]), int(reasons.offsets[b + 1]))
    return reasons.nodes[span].tolist(), reasons.weights[span], reasons.contributions[span]


def completed_set(i: int, j: int) -> dict[int, float]:
    """NCNC's members of (i, j) and their weights, by hand (no cap)."""
    tables = hand_levels()
    weights = {u: 1.0 for u in NEIGHBOURS[i] & NEIGHBOURS[j]}
    weights |= {u: completion_weight(tables, j, u) for u in NEIGHBOURS[i] - NEIGHBOURS[j]}
    weights |= {u: completion_weight(tables, i, u) for u in NEIGHBOURS[j] - NEIGHBOURS[i]}
    return weights


def test_ncn_lists_exactly_the_common_neighbours_with_weight_one():
    reasons = explain_pairs(NCN, hand_head, hand_graph(), hand_levels(), torch.tensor(ALL_PAIRS),
                            k=NUM_NODES)
    for b, (i, j) in enumerate(ALL_PAIRS):
        nodes, weights, _ = listed(reasons, b)
        assert sorted(nodes) == sorted(NEIGHBOURS[i] & NEIGHBOURS[j])
        assert (weights == 1).all()


def test_ncnc_lists_exactly_the_common_and_completed_neighbours_with_their_weights():
    reasons = explain_pairs(NCNC, hand_head, hand_graph(), hand_levels(), torch.tensor(ALL_PAIRS),
                            k=NUM_NODES)
    for b, (i, j) in enumerate(ALL_PAIRS):
        nodes, weights, _ = listed(reasons, b)
        expected = completed_set(i, j)
        assert sorted(nodes) == sorted(expected)
        assert weights.tolist() == pytest.approx([expected[u] for u in nodes], rel=1e-5)


def test_ncn_contribution_is_exactly_the_drop_of_the_logit_without_the_neighbour():
    # The hand tables' sums are exact in float32, so leaving a row out of the table (zeroing
    # it) and rescoring gives the very bits of cn - x_u.
    tables = hand_levels()
    pairs = torch.tensor(ALL_PAIRS)
    reasons = explain_pairs(NCN, hand_head, hand_graph(), tables, pairs, k=NUM_NODES)
    logits = pair_logits(NCN, hand_head, hand_graph(), tables, pairs)
    for b in range(len(ALL_PAIRS)):
        nodes, _, contributions = listed(reasons, b)
        drops = []
        for u in nodes:
            without = [t.clone() for t in tables]
            without[1][u] = 0  # u's term in the common-neighbour sum, and nothing else
            drops.append(logits[b] - pair_logits(NCN, hand_head, hand_graph(), without,
                                                 pairs[b:b + 1])[0])
        assert contributions.tolist() == [float(d) for d in drops]
        # Listed by contribution: the first listed lowers the logit most when left out.
        assert all(drops[0] >= d for d in drops)
        assert contributions.tolist() == sorted(contributions.tolist(), reverse=True)


def test_ncnc_contribution_is_the_drop_of_the_logit_without_the_neighbours_term():
    tables = hand_levels()
    reasons = explain_pairs(NCNC, hand_head, hand_graph(), tables, torch.tensor(ALL_PAIRS),
                            k=NUM_NODES)
    x, h = tables[1].double(), tables[0].double()
    for b, (i, j) in enumerate(ALL_PAIRS):
        members = completed_set(i, j)
        cn = sum((w * x[u] for u, w in members.items()), torch.zeros(x.size(1), dtype=x.dtype))
        xij = (h[i] * h[j]).unsqueeze(0)

        def logit(sum_: Tensor, xij: Tensor = xij) -> float:
            return float(hand_head(sum_.unsqueeze(0), xij))

        drops = {u: logit(cn) - logit(cn - w * x[u]) for u, w in members.items()}
        nodes, _, contributions = listed(reasons, b)
        assert contributions.tolist() == pytest.approx([drops[u] for u in nodes], abs=2e-6)
        assert contributions.tolist() == sorted(contributions.tolist(), reverse=True)
        if nodes:
            assert drops[nodes[0]] >= max(drops.values()) - 2e-6


@pytest.mark.parametrize("rule", [NCN, NCNC], ids=["ncn", "ncnc"])
def test_k_keeps_the_best_k_and_k_larger_than_the_set_lists_it_all(rule):
    pairs = torch.tensor(ALL_PAIRS)
    every = explain_pairs(rule, hand_head, hand_graph(), hand_levels(), pairs, k=100)
    for k in (1, 2):
        best = explain_pairs(rule, hand_head, hand_graph(), hand_levels(), pairs, k=k)
        for b in range(len(ALL_PAIRS)):
            nodes, weights, contributions = listed(best, b)
            all_nodes, all_weights, all_contributions = listed(every, b)
            assert nodes == all_nodes[:k]
            assert torch.equal(weights, all_weights[:k])
            assert torch.equal(contributions, all_contributions[:k])


def test_equal_contributions_list_the_smaller_node_first():
    tables = hand_levels()
    tables[1][2] = tables[1][1]  # n1 and n2, the common neighbours of (0, 3), now weigh alike
    reasons = explain_pairs(NCN, hand_head, hand_graph(), tables, torch.tensor([(0, 3), (3, 0)]),
                            k=5)
    for b in range(2):
        nodes, _, contributions = listed(reasons, b)
        assert nodes == [1, 2] and contributions[0] == contributions[1]


def test_a_node_drawn_twice_by_a_capped_set_is_listed_once_with_both_weights():
    tables, found = hand_levels(), 0
    for seed in range(8):
        rule = dataclasses.replace(NCNC, cap=2, seed=seed)
        pairs = torch.tensor([(3, 6), (6, 3), (1, 7), (2, 6)])  # difference sets of 3, capped at 2
        terms = common_neighbor_terms(rule, hand_head, hand_graph(), tables, pairs).members
        reasons = explain_pairs(rule, hand_head, hand_graph(), tables, pairs, k=10)
        for b in range(len(pairs)):
            span = slice(int(terms.offsets[b]), int(terms.offsets[b + 1]))
            drawn = terms.members[span].tolist()
            found += len(drawn) != len(set(drawn))
            nodes, weights, _ = listed(reasons, b)
            assert sorted(nodes) == sorted(set(drawn))
            for u, w in zip(nodes, weights.tolist()):
                assert w == pytest.approx(float(terms.weights[span][terms.members[span] == u].sum()))
    assert found  # some draw repeated a node


def test_merge_repeats_adds_the_weights_of_a_repeated_node():
    members = RaggedSet(torch.tensor([0, 4, 5, 5]), torch.tensor([3, 1, 3, 3, 2]),
                        torch.tensor([0.5, 1.0, 0.5, 0.5, 2.0]))
    merged = merge_repeats(members, num_nodes=4)
    assert merged.offsets.tolist() == [0, 2, 3, 3]
    assert merged.members.tolist() == [1, 3, 2]
    assert merged.weights.tolist() == [1.0, 1.5, 2.0]


@pytest.mark.parametrize("ids", [[f"u{k}" for k in range(NUM_NODES)], list(range(100, 108))],
                         ids=["string ids", "integer ids"])
def test_because_names_original_ids_and_is_empty_without_neighbours(ids):
    id_map = IdMap.from_ids(ids)
    frame = pl.DataFrame({"src": [ids[0], ids[6], ids[0], ids[1]],
                          "dst": [ids[3], ids[7], ids[5], ids[4]]})
    explained = explain_rows(HandEngine(NCN, hand_levels()), id_map, frame, 5)
    assert explained.schema["because"] == pl.List(pl.Struct(
        {"id": id_map.ids.dtype, "weight": pl.Float32, "contribution": pl.Float32}))
    because = explained["because"].to_list()
    assert [sorted(r["id"] for r in reasons) for reasons in because] == [
        [ids[1], ids[2]], [], [], [ids[3]]]
    assert explained["because"].null_count() == 0


def test_an_engine_without_explanations_is_refused(fake_scorer, string_ids):
    frame = pl.DataFrame({"src": ["v001"], "dst": ["v002"]})
    with pytest.raises(TypeError, match="FakeScorer cannot explain"):
        explain_rows(fake_scorer, string_ids, frame, 3)


# The real bundle: ids n0..n299, graph HAND_EDGES (most nodes isolated).
BUNDLE_NEIGHBOURS: dict[str, set[str]] = {}
for a, b in HAND_EDGES:
    BUNDLE_NEIGHBOURS.setdefault(a, set()).add(b)
    BUNDLE_NEIGHBOURS.setdefault(b, set()).add(a)
NAMES = [f"n{k}" for k in range(9)]
NAME_PAIRS = pl.DataFrame([(a, b) for a, b in itertools.product(NAMES, repeat=2) if a != b],
                          schema=["src", "dst"], orient="row")


def bundle_set(i: str, j: str) -> set[str]:
    """The common and completed neighbours of (i, j) in HAND_EDGES."""
    return BUNDLE_NEIGHBOURS.get(i, set()) | BUNDLE_NEIGHBOURS.get(j, set())


@pytest.fixture(scope="module")
def scorer(bundle_dir):
    return load_bundle(bundle_dir).scorer(device="cpu")


def test_the_listed_terms_sum_back_to_the_score_and_their_drops(scorer):
    explained = scorer.score(NAME_PAIRS, explain=20)
    bundle, head = scorer.bundle, scorer.engine.head
    h, x = bundle.levels[0], bundle.levels[1]
    index = {name: k for k, name in enumerate(bundle.id_map.ids)}
    for row in explained.iter_rows(named=True):
        reasons = row["because"]
        assert {r["id"] for r in reasons} == bundle_set(row["src"], row["dst"])
        nodes = torch.tensor([index[r["id"]] for r in reasons], dtype=torch.int64)
        weights = torch.tensor([r["weight"] for r in reasons])
        cn = (weights.unsqueeze(1) * x[nodes]).sum(0, keepdim=True)
        xij = (h[index[row["src"]]] * h[index[row["dst"]]]).unsqueeze(0)
        assert float(head(cn, xij)) == pytest.approx(row["score"], abs=1e-5)
        drops = [float(head(cn, xij) - head(cn - w * x[u], xij)) for u, w in zip(nodes, weights)]
        assert [r["contribution"] for r in reasons] == pytest.approx(drops, abs=1e-5)
        contributions = [r["contribution"] for r in reasons]
        assert contributions == sorted(contributions, reverse=True)


def run_score(bundle: Path, pairs: Path, out: Path, *extra: str):
    return CliRunner().invoke(cli, ["score", "--quiet", "--bundle", str(bundle), "--pairs",
                                    str(pairs), "--out", str(out), *extra])


def test_cli_explains_the_rows_it_writes(bundle_dir, tmp_path):
    pairs = tmp_path / "pairs.parquet"
    NAME_PAIRS.write_parquet(pairs)
    plain = run_score(bundle_dir, pairs, tmp_path / "plain.parquet", "--top-k", "3",
                      "--per-source")
    assert plain.exit_code == 0, plain.output
    done = run_score(bundle_dir, pairs, tmp_path / "explained.parquet", "--top-k", "3",
                     "--per-source", "--explain", "2")
    assert done.exit_code == 0, done.output
    got, expected = pl.read_parquet(tmp_path / "explained.parquet"), pl.read_parquet(
        tmp_path / "plain.parquet")
    assert got.columns == ["src", "dst", "score", "prob", "rank", "because"]
    assert got.drop("because").equals(expected)
    for row in got.iter_rows(named=True):
        reasons = row["because"]
        everything = bundle_set(row["src"], row["dst"])
        assert len(reasons) == min(2, len(everything))
        assert {r["id"] for r in reasons} <= everything
    # The same reasons as the API gives for these pairs.
    api = load_bundle(bundle_dir).scorer(device="cpu").score(got.select("src", "dst"), explain=2)
    assert api["because"].equals(got["because"])


def test_explain_without_top_k_is_a_usage_error(bundle_dir, tmp_path, scorer):
    pairs = tmp_path / "pairs.parquet"
    NAME_PAIRS.write_parquet(pairs)
    done = run_score(bundle_dir, pairs, tmp_path / "out.parquet", "--explain", "2")
    assert done.exit_code == 2 and "--explain needs --top-k" in done.output
    with pytest.raises(InputError, match="--explain needs --top-k"):
        scorer.score_parquet(pairs, tmp_path / "out.parquet", explain=2, progress=False)
    with pytest.raises(InputError, match="--explain must be at least 1"):
        scorer.score_parquet(pairs, tmp_path / "out.parquet", top_k=1, explain=0, progress=False)
    assert not (tmp_path / "out.parquet").exists()


def test_a_gae_bundle_refuses_explain(scorer, tmp_path):
    from ncnc.scorer.api import Scorer

    bundle = dataclasses.replace(scorer.bundle,
                                 spec=dataclasses.replace(scorer.bundle.spec, model="gae"))
    gae = Scorer(bundle, scorer.engine)
    with pytest.raises(InputError, match="model is gae"):
        gae.score(NAME_PAIRS, explain=1)
    with pytest.raises(InputError, match="model is gae"):
        gae.score_parquet(tmp_path / "none.parquet", tmp_path / "out.parquet", top_k=1, explain=1)


def test_resumed_and_direct_jobs_write_the_same_explanations(scorer, tmp_path):
    pairs = tmp_path / "pairs.parquet"
    pl.concat([NAME_PAIRS] * 3).write_parquet(pairs, row_group_size=50)
    engine, id_map = scorer.engine, scorer.bundle.id_map
    options = dict(top_k=4, per_source=True, explain=3, batch_size=32, progress=False)
    score_files(engine, id_map, [pairs], tmp_path / "direct.parquet", **options)
    score_files(engine, id_map, [pairs], tmp_path / "resumed.parquet", resume=True,
                resume_every=64, **options)
    direct = pl.read_parquet(tmp_path / "direct.parquet")
    assert direct["because"].list.len().max() == 3
    assert pl.read_parquet(tmp_path / "resumed.parquet").equals(direct)


def test_ray_engine_explains_like_the_local_one(ray_runtime, bundle_dir, scorer, tmp_path):
    from ncnc.scorer.ray_engine import RayOptions, score_files_ray

    pairs = tmp_path / "pairs.parquet"
    pl.concat([NAME_PAIRS] * 4).write_parquet(pairs)
    options = dict(top_k=5, explain=4, batch_size=64, progress=False)
    score_files(scorer.engine, scorer.bundle.id_map, [pairs], tmp_path / "local.parquet",
                **options)
    report = score_files_ray(bundle_dir, [pairs], tmp_path / "ray.parquet", device="cpu",
                             options=RayOptions(num_workers=2, partition_rows=64), **options)
    assert report["explain"] == 4
    local = pl.read_parquet(tmp_path / "local.parquet")
    assert local["because"].list.len().min() > 0
    assert pl.read_parquet(tmp_path / "ray.parquet").equals(local)

