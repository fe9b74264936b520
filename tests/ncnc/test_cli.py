"""The ncnc CLI: help of every command, end-to-end train + evaluate, bad input -> exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner

from ncnc.cli import cli
from ncnc.trainer.synthetic import community_graph

SMALL_TRAINING = ["--epochs", "2", "--hidden", "16", "--batch-size", "128", "--quiet"]


@pytest.fixture(scope="module")
def graph_files(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("graph")
    graph = community_graph(400, avg_degree=6, num_communities=5, feature_dim=6,
                            string_ids=True, seed=2)
    graph.edges.write_parquet(folder / "edges.parquet")
    graph.features.write_parquet(folder / "features.parquet")
    return folder / "edges.parquet", folder / "features.parquet"


@pytest.fixture(scope="module")
def checkpoint(graph_files, tmp_path_factory) -> Path:
    edges, features = graph_files
    out = tmp_path_factory.mktemp("run") / "ck"
    result = CliRunner().invoke(cli, ["train", "--model", "ncnc", "--edges", str(edges),
                                      "--features", str(features), "--out", str(out),
                                      "--test-fraction", "0.1", *SMALL_TRAINING])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert summary["model"] == "ncnc" and summary["num_nodes"] == 400
    return out


@pytest.mark.parametrize(
    "command", [[], ["train"], ["evaluate"], ["export"], ["candidates"], ["score"]]
)
def test_help_of_every_command(command):
    result = CliRunner().invoke(cli, [*command, "--help"])
    assert result.exit_code == 0 and "Usage:" in result.output


def test_train_writes_a_complete_checkpoint(checkpoint):
    names = {p.name for p in checkpoint.iterdir()}
    assert {"config.json", "model.safetensors", "features.safetensors", "id_map.parquet",
            "split.parquet", "metrics.jsonl", "learning_curve.png"} <= names
    lines = (checkpoint / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    assert not any(p.suffix in {".pt", ".pkl", ".pth"} for p in checkpoint.iterdir())


def test_evaluate_own_test_split(checkpoint):
    result = CliRunner().invoke(cli, ["evaluate", "--checkpoint", str(checkpoint)])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert {"hits@20", "hits@50", "hits@100", "mrr", "auc", "num_pos", "num_neg"} <= set(metrics)
    assert metrics["pairs"] == "test" and metrics["num_pos"] == metrics["num_neg"] > 0
    assert 0.0 <= metrics["hits@100"] <= 1.0 and 0.0 <= metrics["auc"] <= 1.0


def test_evaluate_given_pairs_in_the_original_id_space(checkpoint, graph_files, tmp_path):
    edges = pl.read_parquet(graph_files[0])
    pos = tmp_path / "pos.parquet"
    neg = tmp_path / "neg.parquet"
    edges.head(50).write_parquet(pos)
    pl.DataFrame({"src": ["n0"] * 30, "dst": [f"n{k}" for k in range(370, 400)]}).write_parquet(neg)
    result = CliRunner().invoke(cli, ["evaluate", "--checkpoint", str(checkpoint),
                                      "--pos", str(pos), "--neg", str(neg)])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert (metrics["num_pos"], metrics["num_neg"], metrics["pairs"]) == (50, 30, "files")


def test_evaluate_counts_pairs_a_featured_model_cannot_embed_and_scores_the_rest(checkpoint,
                                                                                   tmp_path):
    # Regression: one pair touching a node the checkpoint never saw made evaluate exit 2.
    pos = tmp_path / "pos.parquet"
    pl.DataFrame({"src": ["n0", "nope"], "dst": ["n1", "n2"]}).write_parquet(pos)
    result = CliRunner().invoke(cli, ["evaluate", "--checkpoint", str(checkpoint),
                                      "--pos", str(pos), "--neg", str(pos)])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert (metrics["num_pos"], metrics["num_neg"]) == (1, 1)
    assert metrics["cold_start"] == {
        "new_node_rule": "features", "new_nodes": 1, "pairs_touching_new_nodes": 2,
        "pairs_touching_nodes_without_training_edges": 2, "pos_left_out": 1, "neg_left_out": 1}


def test_evaluate_with_new_nodes_error_refuses_unknown_ids(checkpoint, tmp_path):
    pos = tmp_path / "pos.parquet"
    pl.DataFrame({"src": ["n0", "nope"], "dst": ["n1", "n2"]}).write_parquet(pos)
    result = CliRunner().invoke(cli, ["evaluate", "--checkpoint", str(checkpoint), "--pos",
                                      str(pos), "--neg", str(pos), "--new-nodes", "error"])
    assert result.exit_code == 2
    assert "nope" in result.output and "pos.parquet" in result.output


@pytest.mark.parametrize("command", ["export", "evaluate"])
def test_new_nodes_choices_are_the_trainers_rules(command):
    from ncnc.trainer.inductive import DEFAULT_NEW_NODE_RULE, NEW_NODE_RULES

    (option,) = [p for p in cli.commands[command].params if p.name == "new_nodes"]
    assert tuple(option.type.choices) == NEW_NODE_RULES and option.default == DEFAULT_NEW_NODE_RULE


def run_train(*args: str) -> object:
    return CliRunner().invoke(cli, ["train", "--model", "ncn", *args, *SMALL_TRAINING])


def test_missing_column_is_rejected(tmp_path):
    bad = tmp_path / "edges.parquet"
    pl.DataFrame({"source": [1, 2], "dst": [2, 3]}).write_parquet(bad)
    result = run_train("--edges", str(bad), "--out", str(tmp_path / "o"))
    assert result.exit_code == 2
    assert "src" in result.output and "edges.parquet" in result.output
    assert not (tmp_path / "o" / "config.json").exists()


def test_nulls_are_rejected(tmp_path):
    bad = tmp_path / "edges.parquet"
    pl.DataFrame({"src": [1, None, 3], "dst": [2, 3, 4]}).write_parquet(bad)
    result = run_train("--edges", str(bad), "--out", str(tmp_path / "o"))
    assert result.exit_code == 2 and "null" in result.output


def test_unreadable_file_is_rejected(tmp_path):
    bad = tmp_path / "edges.parquet"
    bad.write_text("src,dst\n1,2\n")
    result = run_train("--edges", str(bad), "--out", str(tmp_path / "o"))
    assert result.exit_code == 2 and "edges.parquet" in result.output


def test_unknown_dataset_is_rejected(tmp_path):
    result = run_train("--dataset", "imaginary", "--out", str(tmp_path / "o"))
    assert result.exit_code == 2 and "imaginary" in result.output and "cora" in result.output


def test_dataset_and_edges_together_are_rejected(graph_files, tmp_path):
    result = run_train("--dataset", "cora", "--edges", str(graph_files[0]),
                       "--out", str(tmp_path / "o"))
    assert result.exit_code == 2 and "exactly one" in result.output


def test_pos_without_neg_is_rejected(checkpoint, graph_files):
    result = CliRunner().invoke(cli, ["evaluate", "--checkpoint", str(checkpoint),
                                      "--pos", str(graph_files[0])])
    assert result.exit_code == 2 and "--neg" in result.output
