"""ncnc train / evaluate on garbage (issue 14 class 11): one line and exit 2, no checkpoint from a
run that diverged, strict JSON (null for an undefined metric, with one warning), a warning for
pairs that are both positive and negative."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner

from ncnc.cli import cli
from ncnc.trainer.synthetic import community_graph

QUICK = ["--epochs", "1", "--hidden", "8", "--batch-size", "64", "--quiet", "--device", "cpu"]


def strict(text: str) -> dict:
    """Parse one JSON line, refusing NaN / Infinity (which Python's json accepts by default)."""
    return json.loads(text, parse_constant=lambda c: pytest.fail(f"not JSON: {c}"))


def digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def graph(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("graph")
    g = community_graph(120, avg_degree=6, num_communities=3, feature_dim=4, string_ids=True,
                        seed=2)
    g.edges.write_parquet(folder / "edges.parquet")
    g.features.write_parquet(folder / "features.parquet")
    return folder


@pytest.fixture(scope="module")
def checkpoint(graph, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "ck"
    result = CliRunner().invoke(cli, ["train", "--model", "ncn", "--edges",
                                      str(graph / "edges.parquet"), "--out", str(out), *QUICK])
    assert result.exit_code == 0, result.output
    return out


def scaled_features(graph: Path, path: Path, factor: float) -> Path:
    frame = pl.read_parquet(graph / "features.parquet")
    frame.with_columns(pl.col(c).cast(pl.Float64) * factor for c in frame.columns
                       if c != "node").write_parquet(path)
    return path


def train(graph: Path, features: Path, out: Path):
    return CliRunner().invoke(cli, ["train", "--model", "ncnc", "--edges",
                                    str(graph / "edges.parquet"), "--features", str(features),
                                    "--out", str(out), *QUICK])


def test_float64_features_that_overflow_float32_are_refused(graph, tmp_path):
    features = scaled_features(graph, tmp_path / "f.parquet", 1e300)
    result = train(graph, features, tmp_path / "ck")
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith(f"error: features file {features} columns 'f0'")
    assert "beyond float32's range" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.parquet"]


def test_features_of_huge_magnitude_stop_training_and_keep_the_earlier_checkpoint(graph,
                                                                                 tmp_path):
    # Regression: 1e30-sized features (finite in float32) trained NaN weights and exited 0.
    out = tmp_path / "ck"
    assert train(graph, graph / "features.parquet", out).exit_code == 0
    before = digests(out)
    result = train(graph, scaled_features(graph, tmp_path / "f.parquet", 1e30), out)
    assert result.exit_code == 2 and result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: training diverged: the loss of epoch 1, batch 1 became NaN")
    assert "node features of huge magnitude (largest |x| = " in line
    assert line.endswith(f"no checkpoint was written to {out} (an earlier one there is kept)")
    assert digests(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck", "f.parquet"]


def test_train_refuses_to_replace_a_folder_that_is_not_a_checkpoint(graph, tmp_path):
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "keep.csv").write_text("a,b\n")
    result = train(graph, graph / "features.parquet", tmp_path / "results")
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [f"error: --out {tmp_path / 'results'}: exists and is "
                                          "not an ncnc checkpoint; refusing to replace it"]
    assert (tmp_path / "results" / "keep.csv").read_text() == "a,b\n"


def evaluate(*args: str):
    return CliRunner().invoke(cli, ["evaluate", "--device", "cpu", *args])


def pairs(path: Path, rows: list[tuple[str, str]]) -> Path:
    pl.DataFrame(rows, schema={"src": pl.String, "dst": pl.String}, orient="row") \
        .write_parquet(path)
    return path


@pytest.mark.parametrize("empty", ["pos", "neg"])
def test_evaluate_with_empty_pos_prints_strict_json(checkpoint, tmp_path, empty):
    # Regression: an empty --pos printed bare NaN, which no JSON parser takes.
    files = {"pos": pairs(tmp_path / "pos.parquet", [("n0", "n1"), ("n2", "n3")]),
             "neg": pairs(tmp_path / "neg.parquet", [("n0", "n5")])}
    files[empty] = pairs(tmp_path / "empty.parquet", [])
    result = evaluate("--checkpoint", str(checkpoint), "--pos", str(files["pos"]),
                      "--neg", str(files["neg"]))
    assert result.exit_code == 0, result.output
    metrics = strict(result.stdout)
    assert [metrics[k] for k in ("hits@20", "hits@50", "hits@100", "mrr", "auc")] == [None] * 5
    assert (metrics["num_pos"], metrics["num_neg"]) == ((0, 1) if empty == "pos" else (2, 0))
    side = "positive" if empty == "pos" else "negative"
    assert result.stderr.splitlines() == [
        "WARNING ncnc.trainer: metrics hits@20, hits@50, hits@100, mrr, auc are null "
        f"(undefined): no {side} pairs were scored"]


def test_evaluate_warns_once_about_pairs_that_are_both_positive_and_negative(checkpoint,
                                                                            tmp_path):
    pos = pairs(tmp_path / "pos.parquet", [("n0", "n1"), ("n2", "n3"), ("n4", "n5")])
    neg = pairs(tmp_path / "neg.parquet", [("n1", "n0"), ("n2", "n3"), ("n0", "n7")])
    result = evaluate("--checkpoint", str(checkpoint), "--pos", str(pos), "--neg", str(neg))
    assert result.exit_code == 0, result.output
    assert strict(result.stdout)["num_pos"] == 3
    assert result.stderr.splitlines() == [
        f"WARNING ncnc.trainer: pairs files {pos} and {neg}: 2 positive pair(s) are also "
        "negatives (the same unordered pair in both): ('n0', 'n1'), ('n2', 'n3'); each counts "
        "as both, which lowers every metric"]


def test_evaluate_bundle_with_empty_neg_and_overlapping_pairs_prints_strict_json(bundle_dir,
                                                                                tmp_path):
    pos = pairs(tmp_path / "pos.parquet", [("n0", "n1"), ("n3", "n4")])
    neg = pairs(tmp_path / "neg.parquet", [("n4", "n3")])
    result = evaluate("--bundle", str(bundle_dir), "--pos", str(pos), "--neg", str(neg))
    assert result.exit_code == 0, result.output
    assert strict(result.stdout)["auc"] is not None
    assert len(result.stderr.splitlines()) == 1 and "1 positive pair(s) are also" in result.stderr
    empty = pairs(tmp_path / "empty.parquet", [])
    result = evaluate("--bundle", str(bundle_dir), "--pos", str(pos), "--neg", str(empty))
    assert result.exit_code == 0, result.output
    assert strict(result.stdout)["auc"] is None
    assert len(result.stderr.splitlines()) == 1 and "no negative pairs" in result.stderr
