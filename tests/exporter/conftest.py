"""Tiny trained checkpoints (one per model kind per session) for the exporter tests."""

from __future__ import annotations

from pathlib import Path

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
