"""Smoke tests of examples/: each example runs as a user runs it (a subprocess, the venv's ncnc on
PATH) on a 400-node graph with one epoch of a hidden-16 model, and its outputs are checked.

Most of their time is single-threaded (importing torch, tracing the exports), so the CLI example
and the Python API example run side by side, started together by :func:`started`.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import polars as pl
import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
SMALL = {"EPOCHS": "1", "HIDDEN": "16", "SAMPLE_NODES": "400"}


def run(command: list[str | Path], **env: str) -> subprocess.CompletedProcess[str]:
    """Run an example with the venv's ``ncnc`` and ``python3`` first on PATH."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return subprocess.run([str(c) for c in command], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PATH": path, "PYTHON": sys.executable, **env},
                          timeout=300)


def linked(edges: Path) -> set[tuple[str, str]]:
    """The edges of ``edges`` in both directions."""
    frame = pl.read_parquet(edges)
    return {*zip(frame["src"], frame["dst"]), *zip(frame["dst"], frame["src"])}


def assert_ranked_per_source(recs: pl.DataFrame, k: int, *, explained: bool = False) -> None:
    """Each src's rows together, at most k of them, ranked 1..n, scores not increasing."""
    assert recs.columns == ["src", "dst", "score", "prob", "rank"] + (["because"] if explained
                                                                       else [])
    for _, group in recs.group_by("src", maintain_order=True):
        assert group["rank"].to_list() == list(range(1, min(group.height, k) + 1))
        assert group["score"].is_sorted(descending=True)
    assert recs["src"].rle_id().max() + 1 == recs["src"].n_unique()  # each src in one run


Run = tuple[Future[subprocess.CompletedProcess[str]], Path]


@pytest.fixture(scope="module")
def started(tmp_path_factory) -> Iterator[dict[str, Run]]:
    """``own_graph/run.sh`` (on the sample it generates) and ``python_api.py`` (on a sample from
    ``make_sample.py``), running in the background: name -> (future result, output folder)."""
    own_out, api_out = tmp_path_factory.mktemp("own_graph"), tmp_path_factory.mktemp("api")
    sample = run([sys.executable, EXAMPLES / "own_graph" / "make_sample.py", api_out / "sample",
                  "--nodes", SMALL["SAMPLE_NODES"]])
    assert sample.returncode == 0, sample.stderr
    with ThreadPoolExecutor(max_workers=2) as pool:
        yield {
            "own_graph": (pool.submit(run, [EXAMPLES / "own_graph" / "run.sh"], OUT=str(own_out),
                                      **SMALL), own_out),
            "python_api": (pool.submit(
                run, [sys.executable, EXAMPLES / "python_api.py", api_out / "sample/edges.parquet",
                      api_out / "sample/features.parquet", "--out", api_out, "--epochs",
                      SMALL["EPOCHS"], "--hidden", SMALL["HIDDEN"], "--users", "3",
                      "--top-k", "5"]), api_out),
        }


@pytest.fixture(scope="module")
def own_graph(started) -> tuple[subprocess.CompletedProcess[str], Path]:
    future, out = started["own_graph"]
    return future.result(), out


def test_own_graph_recommends_the_top_20_of_every_node(own_graph):
    done, out = own_graph
    assert done.returncode == 0, done.stderr
    recs = pl.read_parquet(out / "recommendations.parquet")
    candidates = pl.read_parquet(out / "candidates.parquet")
    assert recs.schema["src"] == pl.String and recs.height > 0
    assert_ranked_per_source(recs, 20, explained=True)
    # Every node with candidates gets min(20, its candidates) recommendations, all candidates
    # and none of them an existing link.
    expected = candidates.group_by("src").len().with_columns(pl.col("len").clip(upper_bound=20))
    got = recs.group_by("src").len()
    assert got.sort("src").equals(expected.sort("src").cast({"len": got.schema["len"]}))
    pairs = set(zip(recs["src"], recs["dst"]))
    assert pairs <= set(zip(candidates["src"], candidates["dst"]))
    assert not pairs & linked(out / "sample" / "edges.parquet")
    report = json.loads((out / "score_report.json").read_text())
    assert report["rows_scored"] == candidates.height
    assert report["rows_written"] == recs.height
    assert (report["top_k"], report["per_source"], report["explain"]) == (20, True, 3)


def test_own_graph_prints_each_shown_recommendation_with_its_neighbours(own_graph):
    done, out = own_graph
    assert done.returncode == 0, done.stderr
    recs = pl.read_parquet(out / "recommendations.parquet")
    graph = linked(out / "sample" / "edges.parquet")
    # Candidates are two hops apart, so every recommendation has a common neighbour, and every
    # listed neighbour is linked to src or dst (NCNC lists completed ones too), best first.
    assert recs["because"].list.len().min() >= 1 and recs["because"].list.len().max() <= 3
    for row in recs.iter_rows(named=True):
        reasons = row["because"]
        assert all((row["src"], r["id"]) in graph or (row["dst"], r["id"]) in graph
                   for r in reasons)
        contributions = [r["contribution"] for r in reasons]
        assert contributions == sorted(contributions, reverse=True)
    shown = [line.strip() for line in done.stdout.splitlines() if " because " in line]
    first = recs.row(0, named=True)
    assert len(shown) == 9  # three users, three recommendations each
    assert shown[0].startswith(f"1. {first['dst']}  prob {first['prob']:.2f}  because "
                               f"{first['because'][0]['id']} (")


def test_python_api_scores_an_in_memory_table(started):
    future, out = started["python_api"]
    done, sample = future.result(), out / "sample"
    assert done.returncode == 0, done.stderr
    assert (out / "bundle" / "manifest.json").is_file()
    recs = pl.read_parquet(out / "recommendations.parquet")
    assert recs.height == 15 and recs["src"].n_unique() == 3
    assert_ranked_per_source(recs, 5)
    assert not set(zip(recs["src"], recs["dst"])) & linked(sample / "edges.parquet")
    assert (recs["src"] != recs["dst"]).all()
    for score, prob in zip(recs["score"], recs["prob"]):
        assert prob == pytest.approx(1 / (1 + math.exp(-score)), abs=1e-6)


def test_nightly_job_publishes_atomically_and_keeps_it_on_bad_input(own_graph, tmp_path):
    _, graph_run = own_graph
    job = EXAMPLES / "nightly_job.sh"
    checkpoint, candidates = graph_run / "checkpoint", graph_run / "candidates.parquet"
    features = graph_run / "sample" / "features.parquet"
    root = tmp_path / "published"
    # Today's graph: yesterday's minus a tenth of its edges, in the same ids; today's features
    # keep every node in the graph (those that lost all their edges too).
    yesterday = pl.read_parquet(graph_run / "sample" / "edges.parquet")
    today = yesterday.filter(pl.int_range(pl.len()) % 10 != 1)
    today_edges = tmp_path / "today_edges.parquet"
    today.write_parquet(today_edges)

    done = run([job, checkpoint, today_edges, candidates, root], RUN_ID="day1",
               FEATURES=str(features))
    assert done.returncode == 0, done.stderr
    assert os.readlink(root / "latest") == "day1"
    assert sorted(p.name for p in root.iterdir()) == [".work", "day1", "latest"]
    assert not any((root / ".work").iterdir())
    manifest = json.loads((root / "latest" / "bundle" / "manifest.json").read_text())
    assert manifest["graph_source"] == str(today_edges)
    assert manifest["num_edges"] == today.height
    assert (manifest["snapshot"]["new_nodes"], manifest["snapshot"]["removed_nodes"]) == (0, 0)
    recs = pl.read_parquet(root / "latest" / "recommendations.parquet")
    assert_ranked_per_source(recs, 20)
    report = json.loads((root / "latest" / "report.json").read_text())
    assert report["rows_scored"] == pl.read_parquet(candidates).height
    assert report["rows_written"] == recs.height
    published = (root / "day1" / "recommendations.parquet").read_bytes()

    again = run([job, checkpoint, today_edges, candidates, root], RUN_ID="day1")
    assert again.returncode == 0 and "already published" in again.stderr

    # Day 2's graph names a node the model never saw, without its features: export refuses it,
    # nothing is published.
    bad_edges = tmp_path / "bad_edges.parquet"
    pl.concat([today, pl.DataFrame({"src": ["stranger"], "dst": ["n0"]})]).write_parquet(bad_edges)
    bad = run([job, checkpoint, bad_edges, candidates, root], RUN_ID="day2")
    assert bad.returncode == 2, bad.stderr
    assert "stranger" in bad.stderr and "export refused its input" in bad.stderr
    assert os.readlink(root / "latest") == "day1"
    assert not (root / "day2").exists()
    assert (root / "latest" / "recommendations.parquet").read_bytes() == published


def test_nightly_job_on_a_night_when_nodes_joined(own_graph, tmp_path):
    _, graph_run = own_graph
    yesterday = pl.read_parquet(graph_run / "sample" / "edges.parquet")
    joined = pl.DataFrame({"src": ["newcomer1", "newcomer1", "newcomer2", "newcomer2"],
                           "dst": ["n0", "n1", "newcomer1", "n5"]})
    edges = tmp_path / "edges.parquet"
    pl.concat([yesterday, joined]).write_parquet(edges)
    features = pl.read_parquet(graph_run / "sample" / "features.parquet")
    newcomers = features.filter(pl.col("node").is_in(["n0", "n5"])).with_columns(
        node=pl.Series(["newcomer1", "newcomer2"]))
    features_file = tmp_path / "features.parquet"
    pl.concat([features, newcomers]).write_parquet(features_file)
    root = tmp_path / "published"

    done = run([EXAMPLES / "nightly_job.sh", graph_run / "checkpoint", edges, "-", root],
               RUN_ID="day3", FEATURES=str(features_file))
    assert done.returncode == 0, done.stderr
    snapshot = json.loads(done.stdout.strip().splitlines()[0])["snapshot"]  # export's line
    assert (snapshot["new_nodes"], snapshot["new_node_rule"]) == (2, "features")
    manifest = json.loads((root / "latest" / "bundle" / "manifest.json").read_text())
    assert manifest["snapshot"] == snapshot
    recs = pl.read_parquet(root / "latest" / "recommendations.parquet")
    assert_ranked_per_source(recs, 20)
    # Today's candidates are listed from today's graph: the newcomers get recommendations, none
    # of them a link they already have.
    assert {"newcomer1", "newcomer2"} <= set(recs["src"])
    assert not set(zip(recs["src"], recs["dst"])) & linked(edges)
    assert (root / "day3" / "candidates.parquet").is_file()
