"""Fixtures shared by every test folder. Keep this file small: folder-specific fixtures live with
their tests. (``bundle_dir``, one tiny real bundle per session, serves tests/scorer and
tests/examples.)"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest


@pytest.fixture
def write_parquet(tmp_path: Path) -> Callable[..., Path]:
    """``write_parquet("e.parquet", src=[...], dst=[...])`` -> path of a Parquet file in tmp_path.

    Pass ``dtypes={...}`` to pin column dtypes (for example ``pl.List(pl.Float32)``).
    """

    def write(name: str, dtypes: dict[str, pl.DataType] | None = None, **columns: object) -> Path:
        path = tmp_path / name
        pl.DataFrame(columns, schema_overrides=dtypes).write_parquet(path)
        return path

    return write


# The project's shared/ folder sits beside the repository (read-only in CI); NCNC_SHARED overrides.
SHARED = Path(os.environ.get("NCNC_SHARED", Path(__file__).resolve().parents[2] / "shared"))
PLANETOID = SHARED / "data" / "planetoid"


@pytest.fixture
def no_unpickling(monkeypatch) -> None:
    """Make every unpickling entry point fail, so a test proves a code path never unpickles."""
    import pickle

    import torch

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("something tried to unpickle")

    for module, name in [(pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"),
                         (torch, "load"), (torch.export, "load")]:
        monkeypatch.setattr(module, name, refuse)


# The bundle's graph (exported with --edges): six of the trained graph's ids, whose string order
# is their name order, so indices compare like the names. Neighbours:
# n0: n1 n2 | n1: n0 n2 n3 | n2: n0 n1 n3 | n3: n1 n2 n4 | n4: n3 n5 | n5: n4
HAND_EDGES = [("n0", "n1"), ("n0", "n2"), ("n1", "n2"), ("n1", "n3"), ("n2", "n3"),
              ("n3", "n4"), ("n4", "n5")]


@pytest.fixture(scope="session")
def bundle_dir(tmp_path_factory) -> Path:
    """A real NCNC bundle over string ids n0..n299 whose graph is :data:`HAND_EDGES` (the other
    294 nodes are in the graph without edges)."""
    from ncnc.exporter import export_bundle
    from ncnc.trainer.api import TrainRequest, train
    from ncnc.trainer.synthetic import community_graph

    folder = tmp_path_factory.mktemp("bundle")
    graph = community_graph(300, avg_degree=6, num_communities=5, feature_dim=6,
                            string_ids=True, seed=1)
    graph.edges.write_parquet(folder / "edges.parquet")
    graph.features.write_parquet(folder / "features.parquet")
    pl.DataFrame(HAND_EDGES, schema=["src", "dst"], orient="row").write_parquet(
        folder / "hand_edges.parquet")
    train(TrainRequest(
        model="ncnc", out=folder / "ck", edges=folder / "edges.parquet",
        features=folder / "features.parquet", progress=False, model_overrides={"hidden": 16},
        train_overrides={"epochs": 1, "batch_size": 128, "test_fraction": 0.1},
    ))
    # The snapshot is the hand graph plus every node of the features file (without edges).
    export_bundle(folder / "ck", folder / "bundle", edges=folder / "hand_edges.parquet",
                  features=folder / "features.parquet")
    return folder / "bundle"


@pytest.fixture(scope="session")
def ray_runtime():
    """One local Ray for the whole session (starting one costs seconds): the Ray engine's tests
    and the ray_cluster example's share it. Skipped when the ray extra is not installed."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             object_store_memory=300 * 1024 * 1024)
    yield ray
    ray.shutdown()
