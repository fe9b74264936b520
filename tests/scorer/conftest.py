"""Fixtures of the scorer tests: a fake scorer whose scores we control, pair files, and variants
of the real bundle (``bundle_dir``, shared with tests/examples from tests/conftest.py): signed,
and with integer ids. Never modify a session fixture's folder: copy it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from ncnc.core.ids import IdMap


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
def key_pair(tmp_path_factory) -> tuple[Path, Path]:
    """(private, public) PEM files of a P-256 key made for this session."""
    pytest.importorskip("model_signing")
    from tests.scorer.tampering import write_key_pair

    return write_key_pair(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="session")
def signed_bundle(bundle_dir, key_pair, tmp_path_factory) -> Path:
    """``bundle_dir`` signed with ``key_pair``'s private key."""
    from tests.scorer.tampering import sign_copy

    return sign_copy(bundle_dir, tmp_path_factory.mktemp("signed") / "bundle", key_pair[0])


@pytest.fixture(scope="session")
def int_bundle(bundle_dir, tmp_path_factory) -> Path:
    """``bundle_dir`` with integer ids: node index ``k`` has id ``1000 + k``."""
    from ncnc.scorer.manifest import ID_MAP_FILE
    from tests.scorer.tampering import copy_bundle, reseal

    copy = copy_bundle(bundle_dir, tmp_path_factory.mktemp("int-ids") / "bundle")
    count = pl.read_parquet(copy / ID_MAP_FILE).height
    IdMap.from_ids(range(1000, 1000 + count)).save(copy / ID_MAP_FILE)
    reseal(copy)
    return copy
