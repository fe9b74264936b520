"""Tiny trained checkpoints (one per model kind per session, and a featureless one) and a
snapshot with joined, departed and changed nodes, for the exporter tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pytest

from ncnc.trainer.api import TrainRequest, train
from ncnc.trainer.synthetic import community_graph


@pytest.fixture(scope="session")
def graph_files(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("export-graph")
    graph = community_graph(300, avg_degree=8, num_communities=4, feature_dim=6,
                            string_ids=True, seed=4)
    graph.edges.write_parquet(folder / "edges.parquet")
    graph.features.write_parquet(folder / "features.parquet")
    return folder / "edges.parquet", folder / "features.parquet"


@pytest.fixture(scope="session")
def checkpoints(graph_files, tmp_path_factory) -> dict[str, Path]:
    """gae, ncn and ncnc (completion weights well away from zero, small cap) checkpoints."""
    edges, features = graph_files
    out = {}
    for model in ("gae", "ncn", "ncnc"):
        directory = tmp_path_factory.mktemp(f"ck-{model}")
        train(TrainRequest(
            model=model, out=directory, edges=edges, features=features, progress=False,
            model_overrides={"hidden": 16, "probscale": 1.0, "proboffset": 0.0, "test_cap": 3},
            train_overrides={"epochs": 1, "batch_size": 256},
        ))
        out[model] = directory
    return out


@pytest.fixture(scope="session")
def featureless_checkpoint(graph_files, tmp_path_factory) -> Path:
    """An NCNC checkpoint trained on the edges alone (the model learns one row per node)."""
    directory = tmp_path_factory.mktemp("ck-featureless")
    train(TrainRequest(
        model="ncnc", out=directory, edges=graph_files[0], progress=False,
        model_overrides={"hidden": 16, "probscale": 1.0, "proboffset": 0.0, "test_cap": 3},
        train_overrides={"epochs": 1, "batch_size": 256},
    ))
    return directory


@dataclass(frozen=True)
class Night:
    """A snapshot exported from a checkpoint: its input files and the bundle written."""

    checkpoint: Path
    edges: Path
    features: Path | None
    bundle: Path
    manifest: dict


@pytest.fixture(scope="session")
def featured_night(graph_files, checkpoints, tmp_path_factory) -> Night:
    """Today's graph for the featured NCNC checkpoint: n0..n4 left (with their edges and feature
    rows), new_a joined (edges to n10, n11), new_b joined (an edge to new_a only), new_c joined
    without edges (a feature row only), and n20's features changed."""
    from ncnc.exporter import export_bundle

    folder = tmp_path_factory.mktemp("featured-night")
    gone = [f"n{k}" for k in range(5)]
    edges = pl.read_parquet(graph_files[0])
    edges = edges.filter(~pl.col("src").is_in(gone) & ~pl.col("dst").is_in(gone))
    joined = pl.DataFrame({"src": ["new_a", "new_a", "new_b"], "dst": ["n10", "n11", "new_a"]})
    pl.concat([edges, joined]).write_parquet(folder / "edges.parquet")
    features = pl.read_parquet(graph_files[1]).filter(~pl.col("node").is_in(gone))
    columns = [c for c in features.columns if c != "node"]
    features = features.with_columns(
        [pl.when(pl.col("node") == "n20").then(3.0).otherwise(pl.col(c)).cast(pl.Float32).alias(c)
         for c in columns])
    new_rows = pl.DataFrame({"node": ["new_a", "new_b", "new_c"],
                             **{c: [0.5, -0.5, 1.0] for c in columns}},
                            schema_overrides={c: pl.Float32 for c in columns})
    pl.concat([features, new_rows]).write_parquet(folder / "features.parquet")
    manifest = export_bundle(checkpoints["ncnc"], folder / "bundle", folder / "edges.parquet",
                             features=folder / "features.parquet")
    return Night(checkpoints["ncnc"], folder / "edges.parquet", folder / "features.parquet",
                 folder / "bundle", manifest)
