"""Fixtures of the scorer tests: a fake scorer whose scores we control, pair files, and one tiny
real bundle per session (trained and exported in a few seconds)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from ncnc.tables import IdMap

# The bundle's graph (exported with --edges): six of the trained graph's ids, whose string order
# is their name order, so indices compare like the names. Neighbours:
# n0: n1 n2 | n1: n0 n2 n3 | n2: n0 n1 n3 | n3: n1 n2 n4 | n4: n3 n5 | n5: n4
HAND_EDGES = [("n0", "n1"), ("n0", "n2"), ("n1", "n2"), ("n1", "n3"), ("n2", "n3"),
              ("n3", "n4"), ("n4", "n5")]


class FakeScorer:
    """Scores with many ties: ``(31 * src + 17 * dst) mod 7`` (a float32 logit); counts calls."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def score_logits(self, pairs: torch.Tensor) -> torch.Tensor:
        self.calls.append(pairs.size(0))
        return ((31 * pairs[:, 0] + 17 * pairs[:, 1]) % 7).to(torch.float32)


@pytest.fixture
def fake_scorer() -> FakeScorer:
    return FakeScorer()


@pytest.fixture(scope="session")
def string_ids() -> IdMap:
    return IdMap.from_ids([f"v{k:03d}" for k in range(50)])


@pytest.fixture(scope="session")
def int_ids() -> IdMap:
    return IdMap.from_ids(range(1000, 1050))


def random_pairs(id_map: IdMap, count: int, seed: int = 0) -> pl.DataFrame:
    """``count`` random pairs (src, dst) of ids of ``id_map`` (repeats allowed)."""
    rng = np.random.default_rng(seed)
    return pl.DataFrame({"src": id_map.ids.gather(rng.integers(0, len(id_map), count)),
                         "dst": id_map.ids.gather(rng.integers(0, len(id_map), count))})


@pytest.fixture
def write_pairs(tmp_path: Path) -> Callable[..., Path]:
    """``write_pairs(frame, "a.parquet", row_group_size=7)`` -> the file under tmp_path."""

    def write(frame: pl.DataFrame, name: str, row_group_size: int | None = None) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        frame.write_parquet(path, row_group_size=row_group_size)
        return path

    return write


@pytest.fixture(scope="session")
def bundle_dir(tmp_path_factory) -> Path:
    """A real NCNC bundle over string ids n0..n299 whose graph is :data:`HAND_EDGES`."""
    from exporter import export_bundle
    from trainer.api import TrainRequest, train
    from trainer.synthetic import community_graph

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
    export_bundle(folder / "ck", folder / "bundle", edges=folder / "hand_edges.parquet")
    return folder / "bundle"
