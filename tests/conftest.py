"""Fixtures shared by every test folder. Keep this file small: folder-specific fixtures live with
their tests."""

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
