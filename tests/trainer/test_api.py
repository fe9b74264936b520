"""trainer/api.py: what ncnc train writes about where and why training stopped."""

from __future__ import annotations

import json

from ncnc.trainer.api import TrainRequest, train
from ncnc.trainer.synthetic import community_graph


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
