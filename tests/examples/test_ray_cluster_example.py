"""Smoke test of examples/ray_cluster.py: its ``main`` run as a user runs it, on the session's
local Ray and tiny bundle, compared with ``ncnc score --per-source``."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import numpy as np
import polars as pl
from click.testing import CliRunner

from ncnc.cli import cli

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "ray_cluster.py"


def run_example(monkeypatch, capsys, *args: object) -> tuple[int, str, str]:
    """Run the script's ``__main__`` in this process; (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", [str(EXAMPLE), *map(str, args)])
    code = 0
    try:
        runpy.run_path(str(EXAMPLE), run_name="__main__")
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_ray_cluster_example_writes_the_per_source_top_k_of_ncnc_score(
        ray_runtime, bundle_dir, tmp_path, monkeypatch, capsys):
    rng = np.random.default_rng(5)
    ids = np.array([f"n{k}" for k in range(300)])
    folder = tmp_path / "candidates"
    folder.mkdir()
    for k in range(2):
        pl.DataFrame({"src": ids[rng.integers(0, 300, 3000)],
                      "dst": ids[rng.integers(0, 300, 3000)]}).write_parquet(
            folder / f"part{k}.parquet")
    out = tmp_path / "recommendations.parquet"
    code, stdout, stderr = run_example(monkeypatch, capsys, "--bundle", bundle_dir, "--pairs",
                                       folder, "--out", out, "--num-workers", "1", "--top-k", "3")
    assert code == 0, stderr[-3000:]
    report = json.loads(stdout)
    assert report["engine"] == "ray" and report["rows_read"] == 6000

    expected = tmp_path / "expected.parquet"
    local = CliRunner().invoke(cli, ["score", "--quiet", "--bundle", str(bundle_dir), "--pairs",
                                     str(folder), "--out", str(expected), "--top-k", "3",
                                     "--per-source", "--device", "cpu"])
    assert local.exit_code == 0, local.output
    assert pl.read_parquet(out).equals(pl.read_parquet(expected))

    code, _, stderr = run_example(monkeypatch, capsys, "--bundle", bundle_dir, "--pairs",
                                  tmp_path / "nope.parquet", "--out", out)
    assert code == 2
    assert stderr.strip().splitlines()[-1].startswith("error: pairs path")
