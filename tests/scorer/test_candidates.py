"""Two-hop candidates: a hand-checked graph, a brute-force reference, chunking, and the CLI."""

from __future__ import annotations

import json
from itertools import combinations

import numpy as np
import polars as pl
import pytest
import torch
from click.testing import CliRunner

from ncnc.cli import cli
from ncnc.scorer.candidates import ragged_arange, two_hop_candidates, two_hop_paths
from ncnc.triton_kernels.graph import build_csr

# 0: 1 2 | 1: 0 2 3 | 2: 0 1 3 | 3: 1 2 4 | 4: 3 5 | 5: 4 | 6: isolated
HAND = build_csr(torch.tensor([[0, 1], [0, 2], [1, 2], [1, 3], [2, 3], [3, 4], [4, 5]]), 7)


def rows(graph, sources=None, **kwargs) -> list[tuple[int, int, int]]:
    chunks = list(two_hop_candidates(graph, sources, **kwargs))
    return [(int(s), int(d), int(c)) for chunk in chunks
            for s, d, c in zip(chunk.src, chunk.dst, chunk.common)]


def test_hand_graph_all_nodes_lists_each_pair_once():
    # (0,3) share 1 and 2; (1,4), (2,4) share 3; (3,5) share 4; adjacent pairs never appear.
    assert rows(HAND) == [(0, 3, 2), (1, 4, 1), (2, 4, 1), (3, 5, 1)]


def test_hand_graph_listed_nodes_are_the_src_in_listed_order():
    assert rows(HAND, torch.tensor([3, 0, 6])) == [(3, 0, 2), (3, 5, 1), (0, 3, 2)]


def test_hand_graph_both_directions_equals_listing_every_node():
    assert rows(HAND, both_directions=True) == rows(HAND, torch.arange(7)) == [
        (0, 3, 2), (1, 4, 1), (2, 4, 1), (3, 0, 2), (3, 5, 1), (4, 1, 1), (4, 2, 1), (5, 3, 1)]


def test_hand_graph_max_per_node_keeps_most_common_then_smaller_dst():
    assert rows(HAND, torch.tensor([3, 4]), max_per_node=1) == [(3, 0, 2), (4, 1, 1)]
    assert rows(HAND, max_per_node=1) == [(0, 3, 2), (1, 4, 1), (2, 4, 1), (3, 5, 1)]


def brute_force(graph, sources, upper_only: bool) -> list[tuple[int, int, int]]:
    indptr, indices = graph.indptr.tolist(), graph.indices.tolist()
    neighbours = [set(indices[indptr[v]:indptr[v + 1]]) for v in range(graph.num_nodes)]
    found = []
    for u in sources:
        for v in range(graph.num_nodes):
            common = len(neighbours[u] & neighbours[v])
            if v != u and v not in neighbours[u] and common and (v > u or not upper_only):
                found.append((u, v, common))
    return found


@pytest.mark.parametrize("max_paths", [1, 50, 10**9])
def test_random_graph_equals_brute_force_for_any_chunking(max_paths):
    rng = np.random.default_rng(0)
    n = 60
    pairs = [p for p in combinations(range(n), 2) if rng.random() < 0.08]
    pairs += [(0, v) for v in range(1, n, 2)]  # a hub
    graph = build_csr(torch.tensor(pairs), n)
    assert rows(graph, max_paths=max_paths) == brute_force(graph, range(n), upper_only=True)
    listed = [5, 0, 59, 17]
    assert rows(graph, torch.tensor(listed), max_paths=max_paths) == brute_force(
        graph, listed, upper_only=False)


def test_max_per_node_equals_a_sort_per_source():
    rng = np.random.default_rng(1)
    pairs = [p for p in combinations(range(40), 2) if rng.random() < 0.15]
    graph = build_csr(torch.tensor(pairs), 40)
    every = pl.DataFrame(rows(graph, torch.arange(40)), schema=["src", "dst", "common"],
                         orient="row")
    expected = (every.sort(["src", "common", "dst"], descending=[False, True, False])
                .filter(pl.int_range(pl.len()).over("src") < 3).sort(["src", "dst"]))
    got = rows(graph, torch.arange(40), max_per_node=3, max_paths=30)
    assert got == [tuple(r) for r in expected.iter_rows()]


def test_ragged_arange_and_path_counts():
    assert ragged_arange(torch.tensor([5, 0, 9]), torch.tensor([2, 0, 3])).tolist() == [
        5, 6, 9, 10, 11]
    # paths from 0: deg(1) + deg(2) = 3 + 3; from 1: deg(0) + deg(2) + deg(3) = 2 + 3 + 3.
    assert two_hop_paths(HAND).tolist() == [6, 8, 8, 8, 4, 2, 0]


def run_candidates(bundle_dir, out, *extra):
    return CliRunner().invoke(cli, ["candidates", "--bundle", str(bundle_dir), "--out", str(out),
                                    "--quiet", *extra])


def test_cli_candidates_of_the_bundle_graph(bundle_dir, tmp_path):
    # The bundle's graph is conftest.HAND_EDGES: the hand graph above on ids n0..n5.
    out = tmp_path / "pairs.parquet"
    result = run_candidates(bundle_dir, out)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["pairs"] == 4
    assert pl.read_parquet(out).rows() == [("n0", "n3", 2), ("n1", "n4", 1), ("n2", "n4", 1),
                                           ("n3", "n5", 1)]


def test_cli_candidates_of_listed_nodes_with_max_per_node(bundle_dir, tmp_path):
    nodes = tmp_path / "nodes.parquet"
    pl.DataFrame({"node": ["n3", "n4", "n3", "n250"]}).write_parquet(nodes)
    out = tmp_path / "pairs.parquet"
    result = run_candidates(bundle_dir, out, "--nodes", str(nodes), "--max-per-node", "1",
                            "--no-common-neighbors")
    assert result.exit_code == 0, result.output
    assert pl.read_parquet(out).rows() == [("n3", "n0"), ("n4", "n1")]
    result = run_candidates(bundle_dir, out, "--both-directions", "--max-per-node", "1")
    assert result.exit_code == 0, result.output
    assert pl.read_parquet(out).rows() == [("n0", "n3", 2), ("n1", "n4", 1), ("n2", "n4", 1),
                                           ("n3", "n0", 2), ("n4", "n1", 1), ("n5", "n3", 1)]


def test_cli_candidates_bad_nodes_exit_2_and_write_nothing(bundle_dir, tmp_path):
    nodes = tmp_path / "nodes.parquet"
    pl.DataFrame({"node": ["n3", "nope"]}).write_parquet(nodes)
    out = tmp_path / "pairs.parquet"
    result = run_candidates(bundle_dir, out, "--nodes", str(nodes))
    assert result.exit_code == 2
    assert "column node: 1 id(s) are not nodes of the graph: 'nope'" in result.output
    result = run_candidates(bundle_dir, nodes, "--nodes", str(nodes))
    assert result.exit_code == 2 and "is also an input" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nodes.parquet"]


def test_cli_candidates_help():
    result = CliRunner().invoke(cli, ["candidates", "--help"])
    assert result.exit_code == 0 and "--max-per-node" in result.output
