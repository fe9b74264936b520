"""trainer/inductive.py: snapshot inputs, the cold-start rules, evaluation with unseen nodes."""

from __future__ import annotations

import polars as pl
import pytest
import torch

from ncnc.core.errors import InputError
from ncnc.core.ids import IdMap
from ncnc.trainer.api import TrainRequest, evaluate, train
from ncnc.trainer.checkpoint import Checkpoint
from ncnc.trainer.config import ModelConfig, RunConfig, TrainConfig
from ncnc.trainer.inductive import (
    cold_start_embeddings,
    evaluation_inputs,
    read_pairs_with_new_nodes,
    snapshot_inputs,
)
from ncnc.trainer.model import LinkPredictionModel
from ncnc.trainer.splits import EdgeSplit
from ncnc.trainer.synthetic import community_graph
from ncnc.triton_kernels import build_csr

# Snapshot nodes 0..5: 0 and 1 known (learned rows 0 and 1), 2..5 new.
#
#   0 - 2 - 1        2 touches both known nodes: round 1, mean of rows 0 and 1
#       |   |        4 touches known 1: round 1, row 1 (3 is not filled yet)
#       3 - 4        3 touches only new nodes: round 2, mean of 2's and 4's rows
#                    5 has no edge: no path to a known node, the mean of every learned row
LEARNED = torch.tensor([[2.0, 0.0], [0.0, 2.0], [4.0, 4.0]])  # row 2: a node gone from the snapshot
EDGES = torch.tensor([[0, 2], [1, 2], [2, 3], [1, 4], [3, 4]])
INDEX = torch.tensor([0, 1, -1, -1, -1, -1])
KNOWN = INDEX >= 0


def test_mean_rule_fills_new_nodes_outwards_from_the_known_ones():
    rows, global_mean = cold_start_embeddings(LEARNED, INDEX, KNOWN, build_csr(EDGES, 6), "mean")
    expected = torch.tensor([[2.0, 0.0], [0.0, 2.0], [1.0, 1.0], [0.5, 1.5], [0.0, 2.0],
                             [2.0, 2.0]])
    torch.testing.assert_close(rows, expected, atol=0, rtol=0)
    assert global_mean == 1


def test_zero_rule_keeps_learned_rows_and_zeroes_new_ones():
    rows, global_mean = cold_start_embeddings(LEARNED, INDEX, KNOWN, build_csr(EDGES, 6), "zero")
    assert torch.equal(rows[:2], LEARNED[:2]) and not rows[2:].any() and global_mean == 0


def checkpoint(in_features: int, ids: list[str]) -> Checkpoint:
    torch.manual_seed(0)
    cfg = RunConfig(ModelConfig(model="ncn", num_nodes=len(ids), in_features=in_features,
                                hidden=4), TrainConfig())
    features = torch.randn(len(ids), in_features) if in_features else None
    empty = torch.empty(0, 2, dtype=torch.long)
    split = EdgeSplit(train=torch.tensor([[0, 1]]), valid=empty, valid_neg=empty, test=empty,
                      test_neg=empty)
    return Checkpoint(LinkPredictionModel(cfg.model).eval(), cfg, features,
                      IdMap.from_ids(ids), split, {})


def today(ids: list[str], edges: list[tuple[int, int]]):
    return IdMap.from_ids(ids), build_csr(torch.tensor(edges), len(ids))


def test_known_nodes_keep_their_features_and_removed_ones_are_counted():
    ck = checkpoint(3, ["a", "b", "c", "d"])
    id_map, graph = today(["b", "d"], [(0, 1)])
    got = snapshot_inputs(ck, id_map, graph, None, "mean", source="snapshot")
    assert torch.equal(got.inputs, ck.features[[1, 3]])
    assert got.report == {"nodes": 2, "known_nodes": 2, "new_nodes": 0, "removed_nodes": 2,
                          "new_nodes_without_edges": 0, "new_nodes_given_the_global_mean": None,
                          "new_node_rule": "features"}


def test_featured_new_nodes_take_todays_features_which_may_change_known_ones():
    ck = checkpoint(3, ["a", "b"])
    id_map, graph = today(["a", "b", "new", "alone"], [(0, 1), (1, 2)])
    features = torch.arange(12.0).view(4, 3)
    got = snapshot_inputs(ck, id_map, graph, features, "mean", source="snapshot")
    assert torch.equal(got.inputs, features)
    assert (got.report["new_nodes"], got.report["new_nodes_without_edges"]) == (2, 1)


def test_featured_new_nodes_without_features_are_a_clear_error():
    ck = checkpoint(3, ["a", "b"])
    id_map, graph = today(["a", "b", "stranger"], [(0, 2)])
    with pytest.raises(InputError, match="snapshot: 1 node.*new.*--features.*'stranger'"):
        snapshot_inputs(ck, id_map, graph, None, "mean", source="snapshot")


def test_features_of_another_width_are_a_clear_error():
    ck = checkpoint(3, ["a", "b"])
    id_map, graph = today(["a", "b"], [(0, 1)])
    with pytest.raises(InputError, match="features have 5 columns.*trained on 3"):
        snapshot_inputs(ck, id_map, graph, torch.zeros(2, 5), "mean", source="snapshot")


def test_ids_of_the_other_kind_are_a_clear_error():
    ck = checkpoint(0, ["a", "b"])
    id_map, graph = IdMap.from_ids([1, 2]), build_csr(torch.tensor([[0, 1]]), 2)
    with pytest.raises(InputError, match="ids are integer but the checkpoint's are string"):
        snapshot_inputs(ck, id_map, graph, None, "mean", source="snapshot")


@pytest.mark.parametrize("in_features", [0, 3])
def test_error_rule_refuses_new_nodes_naming_them(in_features):
    ck = checkpoint(in_features, ["a", "b"])
    id_map, graph = today(["a", "b", "zed"], [(0, 2)])
    features = torch.zeros(3, 3) if in_features else None
    with pytest.raises(InputError, match="--new-nodes error.*'zed'"):
        snapshot_inputs(ck, id_map, graph, features, "error", source="snapshot")


def test_featureless_model_refuses_features():
    ck = checkpoint(0, ["a", "b"])
    id_map, graph = today(["a", "b"], [(0, 1)])
    with pytest.raises(InputError, match="trained without node features"):
        snapshot_inputs(ck, id_map, graph, torch.zeros(2, 3), "mean", source="snapshot")


def test_featureless_snapshot_equal_to_the_training_graph_reads_the_learned_table():
    ck = checkpoint(0, ["a", "b", "c"])
    id_map, graph = today(["a", "b", "c"], [(0, 1), (1, 2)])
    got = snapshot_inputs(ck, id_map, graph, None, "mean", source="snapshot")
    learned = ck.model.encoder.embedding.weight
    assert torch.equal(got.inputs, learned)
    with torch.no_grad():
        assert torch.equal(ck.model.encoder(got.inputs, graph), ck.model.encoder(None, graph))


def test_pairs_with_unseen_ids_get_indices_after_the_known_ones(write_parquet):
    id_map = IdMap.from_ids(["a", "b", "c"])
    pos = write_parquet("pos.parquet", src=["a", "zz"], dst=["yy", "b"])
    neg = write_parquet("neg.parquet", src=["c"], dst=["zz"])
    (pos_pairs, neg_pairs), new = read_pairs_with_new_nodes(id_map, [pos, neg], "mean")
    assert new.to_list() == ["yy", "zz"]
    assert pos_pairs.tolist() == [[0, 3], [4, 1]] and neg_pairs.tolist() == [[2, 4]]
    with pytest.raises(InputError, match=r"pos.parquet column src.*'zz'"):
        read_pairs_with_new_nodes(id_map, [pos, neg], "error")
    ints = write_parquet("ints.parquet", src=[1], dst=[2])
    with pytest.raises(InputError, match="ints.parquet column src: ids are integer"):
        read_pairs_with_new_nodes(id_map, [ints, neg], "mean")


def test_featured_evaluation_leaves_out_and_counts_pairs_it_cannot_embed():
    ck = checkpoint(3, ["a", "b", "c"])
    graph = build_csr(torch.tensor([[0, 1]]), 3)  # c has no training edge
    pos, neg = torch.tensor([[0, 1], [0, 3], [2, 1]]), torch.tensor([[3, 4], [0, 2]])
    batch = evaluation_inputs(ck, graph, pos, neg, 2, "mean")
    assert batch.pos.tolist() == [[0, 1], [2, 1]] and batch.neg.tolist() == [[0, 2]]
    assert batch.report == {"new_node_rule": "features", "new_nodes": 2,
                            "pairs_touching_new_nodes": 2,
                            "pairs_touching_nodes_without_training_edges": 4,
                            "pos_left_out": 1, "neg_left_out": 1}


def test_featureless_evaluation_embeds_unseen_nodes_without_edges():
    ck = checkpoint(0, ["a", "b", "c"])
    graph = build_csr(torch.tensor([[0, 1]]), 3)
    pos, neg = torch.tensor([[0, 3]]), torch.tensor([[1, 2]])
    batch = evaluation_inputs(ck, graph, pos, neg, 1, "mean")
    assert batch.graph.num_nodes == 4 and batch.graph.degree()[3] == 0
    learned = ck.model.encoder.embedding.weight
    torch.testing.assert_close(batch.inputs[3], learned.mean(0))
    assert torch.equal(batch.inputs[:3], learned)
    assert batch.report["pos_left_out"] == 0 and batch.report["pairs_touching_new_nodes"] == 1


@pytest.fixture(scope="module")
def featureless_checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("featureless")
    graph = community_graph(200, avg_degree=6, num_communities=4, feature_dim=0,
                            string_ids=True, seed=3)
    graph.edges.write_parquet(folder / "edges.parquet")
    train(TrainRequest(model="ncn", out=folder / "ck", edges=folder / "edges.parquet",
                       progress=False, device="cpu", model_overrides={"hidden": 8},
                       train_overrides={"epochs": 1, "batch_size": 256}))
    return folder / "ck"


def test_evaluation_scores_test_pairs_touching_nodes_without_training_edges(
        featureless_checkpoint, write_parquet):
    # Regression: one test pair touching a node the checkpoint never saw made evaluate exit 2.
    edges = pl.read_parquet(featureless_checkpoint.parent / "edges.parquet")
    a, b, c, d = edges["src"].unique().sort()[:4]  # nodes of the checkpoint
    pos = write_parquet("pos.parquet", src=[a, b, "joined"], dst=[c, "joined", d])
    neg = write_parquet("neg.parquet", src=[a, "joined"], dst=[d, "later"])
    metrics = evaluate(featureless_checkpoint, pos, neg, device="cpu")
    assert (metrics["num_pos"], metrics["num_neg"], metrics["pairs"]) == (3, 2, "files")
    assert metrics["cold_start"]["new_nodes"] == 2
    assert metrics["cold_start"]["pairs_touching_new_nodes"] == 3
    assert metrics["cold_start"]["pos_left_out"] == metrics["cold_start"]["neg_left_out"] == 0
    assert 0.0 <= metrics["auc"] <= 1.0
    with pytest.raises(InputError, match="'joined'"):
        evaluate(featureless_checkpoint, pos, neg, device="cpu", new_nodes="error")
    assert pl.read_parquet(pos).height == 3  # inputs untouched


def test_uint64_pair_ids_beyond_int64_are_refused_not_a_traceback(write_parquet):
    # Regression: unseen ids were cast to the map's Int64 strictly: a polars traceback.
    id_map = IdMap.from_ids([1, 2, 3])
    pos = write_parquet("pos.parquet", src=[1, 2**63 + 5], dst=[2, 3],
                        dtypes={"src": pl.UInt64, "dst": pl.UInt64})
    neg = write_parquet("neg.parquet", src=[1], dst=[7], dtypes={"src": pl.UInt64, "dst": pl.UInt64})
    with pytest.raises(InputError, match=r"pos.parquet column src: 1 id\(s\) are not nodes of the "
                                         r"checkpoint .* beyond the Int64 range .*: 9223372036854775813"):
        read_pairs_with_new_nodes(id_map, [pos, neg], "mean")
    (pos_pairs, neg_pairs), new = read_pairs_with_new_nodes(id_map, [neg, neg], "mean")
    assert new.to_list() == [7] and pos_pairs.tolist() == [[0, 3]]
