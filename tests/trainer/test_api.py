"""trainer/api.py: what ncnc train writes about where and why training stopped, and how it
publishes its checkpoint (all or nothing, replacing only a checkpoint)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from ncnc.core.errors import InputError
from ncnc.trainer.api import TrainRequest, train
from ncnc.trainer.synthetic import community_graph
from ncnc.trainer.training import TrainingDivergedError


def test_a_tiny_max_minutes_stops_after_the_first_epoch_and_says_so(tmp_path):
    community_graph(150, avg_degree=6, num_communities=3, feature_dim=0, seed=2).edges \
        .write_parquet(tmp_path / "edges.parquet")
    summary = train(TrainRequest(
        model="ncn", out=tmp_path / "ck", edges=tmp_path / "edges.parquet", device="cpu",
        progress=False, model_overrides={"hidden": 8},
        train_overrides={"epochs": 50, "batch_size": 64, "max_minutes": 1e-6},
    ))
    assert summary["stopped"] == {"epoch": 1, "reason": "max_minutes"}
    assert summary["best_epoch"] == 1
    lines = [json.loads(line) for line in (tmp_path / "ck" / "metrics.jsonl").read_text()
             .splitlines()]
    assert len(lines) == 1 and lines[-1]["stopped"] == summary["stopped"]
    saved = json.loads((tmp_path / "ck" / "config.json").read_text())
    assert saved["summary"]["stopped"] == summary["stopped"]
    assert saved["train"]["max_minutes"] == 1e-6
    assert (tmp_path / "ck" / "learning_curve.png").stat().st_size > 0


# --- train --out: staged, published whole, replacing only a checkpoint ------------------------


@pytest.fixture(scope="module")
def edges_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("graph") / "edges.parquet"
    community_graph(120, avg_degree=6, num_communities=3, feature_dim=0, seed=2).edges \
        .write_parquet(path)
    return path


def quick(edges: Path, out: Path, **train_overrides) -> dict:
    return train(TrainRequest(
        model="gae", out=out, edges=edges, device="cpu", progress=False,
        model_overrides={"hidden": 8},
        train_overrides={"epochs": 1, "batch_size": 64, **train_overrides}))


def tree_digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_non_finite_loss_stops_training_and_writes_no_checkpoint(edges_file, tmp_path):
    out = tmp_path / "ck"
    quick(edges_file, out)
    before = tree_digests(out)
    # A learning rate of 1e38 makes the first step's weights infinite.
    with pytest.raises(TrainingDivergedError, match=rf"training diverged: .*; no checkpoint was "
                       rf"written to {out} \(an earlier one there is kept\)$"):
        quick(edges_file, out, gnnlr=1e38, prelr=1e38, epochs=3)
    assert tree_digests(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]  # no temporaries or locks left


def test_an_earlier_checkpoint_is_replaced_whole(edges_file, tmp_path):
    out = tmp_path / "ck"
    quick(edges_file, out)
    (out / "notes.txt").write_text("a file of the earlier run")
    quick(edges_file, out, seed=7)
    assert not (out / "notes.txt").exists()  # the folder was replaced, not written into
    assert json.loads((out / "config.json").read_text())["train"]["seed"] == 7
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


@pytest.mark.parametrize("make", [
    lambda out: (out.mkdir(), (out / "thesis.tex").write_text("years of work")),
    lambda out: (out.mkdir(), (out / "config.json").write_text('{"format": "something else"}')),
    lambda out: out.write_text("a file"),
], ids=["a data folder", "another tool's config.json", "a file"])
def test_train_refuses_to_replace_what_is_not_a_checkpoint(edges_file, tmp_path, make):
    # Rule of issue 14 class 1: never replace a folder ncnc did not create.
    out = tmp_path / "out"
    make(out)
    before = tree_digests(tmp_path)
    with pytest.raises(InputError, match=rf"--out {out}: exists and is not (an ncnc checkpoint|a "
                                         rf"folder); refusing to replace it"):
        quick(edges_file, out)
    assert tree_digests(tmp_path) == before


def test_train_refuses_an_out_that_holds_its_input(edges_file, tmp_path):
    edges = tmp_path / "data" / "edges.parquet"
    edges.parent.mkdir()
    edges.write_bytes(edges_file.read_bytes())
    with pytest.raises(InputError, match="holds .*edges.parquet, which this run reads"):
        quick(edges, tmp_path / "data")
    with pytest.raises(InputError, match="is also an input"):
        quick(edges, edges)
    assert edges.read_bytes() == edges_file.read_bytes()


def test_interrupted_training_leaves_nothing_at_out(edges_file, tmp_path, monkeypatch):
    from ncnc.trainer import api

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(api, "train_model", interrupted)
    with pytest.raises(KeyboardInterrupt):
        quick(edges_file, tmp_path / "ck")
    assert list(tmp_path.iterdir()) == []
