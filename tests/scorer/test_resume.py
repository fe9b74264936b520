"""Resumable scoring: a failed or killed run continues with ``--resume`` to the very same output."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner

from ncnc.cli import cli
from ncnc.core.errors import InputError
from ncnc.scorer.job import score_files
from ncnc.scorer.resume import ResumeStore, job_fingerprint, resume_folder
from tests.scorer.conftest import FakeScorer, random_pairs

ROOT = Path(__file__).resolve().parents[2]


class CrashingScorer(FakeScorer):
    """The fake scorer, dying (like a killed process) at its ``crash_at``-th call."""

    def __init__(self, crash_at: int | None) -> None:
        super().__init__()
        self.crash_at = crash_at

    def score_logits(self, pairs):
        if self.crash_at is not None and len(self.calls) + 1 == self.crash_at:
            raise RuntimeError("simulated crash")
        return super().score_logits(pairs)


@pytest.fixture
def input_files(write_pairs, string_ids) -> list[Path]:
    """Three files of 250, 0 and 173 rows."""
    return [write_pairs(random_pairs(string_ids, n, seed=k), f"in/{k}.parquet", row_group_size=50)
            for k, n in enumerate([250, 0, 173])]


def score(files, out, scorer, id_map, **options) -> dict:
    return score_files(scorer, id_map, files, out, progress=False, batch_size=20, **options)


def leftovers(folder: Path, out: Path) -> list[str]:
    """Files other than the inputs and ``out`` (temporary files, resume state)."""
    return sorted(p.name for p in folder.iterdir() if p != out and p.name != "in")


@pytest.mark.parametrize("options", [
    {}, {"top_k": 7}, {"top_k": 2, "per_source": True},
], ids=["all-rows", "top-k", "per-source"])
def test_resumed_run_equals_an_uninterrupted_one(input_files, string_ids, tmp_path, options):
    expected_out = tmp_path / "expected.parquet"
    score(input_files, expected_out, FakeScorer(), string_ids, **options)

    out = tmp_path / "out.parquet"
    with pytest.raises(RuntimeError, match="simulated crash"):
        score(input_files, out, CrashingScorer(crash_at=13), string_ids, resume=True,
              resume_every=50, **options)
    assert not out.exists()
    # Batches of 20 rows (file 0: rows 0, 20, ..., 240) belong to the chunk of 50 rows holding
    # their first row: chunks end at rows 60, 100, 160, 200 and 250; 12 batches were scored.
    state = json.loads((resume_folder(out) / "state.json").read_text())
    assert [c["end_row"] for c in state["chunks"]] == [60, 100, 160, 200]

    again = CrashingScorer(crash_at=None)
    report = score(input_files, out, again, string_ids, resume=True, resume_every=50, **options)
    assert report["rows_resumed"] == 200
    assert sum(again.calls) == 423 - 200  # only the unfinished rows were scored again
    assert report["rows_read"] == report["rows_scored"] == 423
    assert pl.read_parquet(out).equals(pl.read_parquet(expected_out))
    assert leftovers(tmp_path, out) == ["expected.parquet"]


def test_state_of_another_job_is_discarded(input_files, string_ids, tmp_path, caplog):
    out = tmp_path / "out.parquet"
    with pytest.raises(RuntimeError):
        score(input_files, out, CrashingScorer(crash_at=5), string_ids, resume=True,
              resume_every=20)
    os.utime(input_files[0], ns=(0, 0))  # as if rewritten
    with caplog.at_level(logging.WARNING):
        report = score(input_files, out, FakeScorer(), string_ids, resume=True, resume_every=20)
    assert report["rows_resumed"] == 0
    assert "belongs to another job" in caplog.text
    expected = tmp_path / "expected.parquet"
    score(input_files, expected, FakeScorer(), string_ids)
    assert pl.read_parquet(out).equals(pl.read_parquet(expected))


def test_a_different_option_is_another_job(input_files, string_ids, tmp_path):
    out = tmp_path / "out.parquet"
    with pytest.raises(RuntimeError):
        score(input_files, out, CrashingScorer(crash_at=5), string_ids, resume=True,
              resume_every=20)
    report = score(input_files, out, FakeScorer(), string_ids, resume=True, resume_every=20,
                   top_k=3)
    assert report["rows_resumed"] == 0 and pl.read_parquet(out).height == 3


def test_fingerprint_follows_files_and_options(input_files):
    base = job_fingerprint(input_files, {"top_k": None})
    assert job_fingerprint(input_files, {"top_k": None}) == base
    assert job_fingerprint(input_files, {"top_k": 5}) != base
    assert job_fingerprint(input_files[::-1], {"top_k": None}) != base
    os.utime(input_files[1], ns=(1, 1))
    assert job_fingerprint(input_files, {"top_k": None}) != base


def test_a_second_run_on_the_same_output_is_refused_while_one_works(input_files, string_ids,
                                                                     tmp_path):
    out = tmp_path / "out.parquet"
    with ResumeStore(out, "some other run"):
        with pytest.raises(InputError, match="another ncnc run is writing it"):
            score(input_files, out, FakeScorer(), string_ids, resume=True)
    score(input_files, out, FakeScorer(), string_ids, resume=True)  # the lock is gone with it
    assert pl.read_parquet(out).height == 423


def test_temporary_files_of_killed_writers_are_removed(input_files, string_ids, tmp_path):
    out = tmp_path / "out.parquet"
    stale = tmp_path / f".out.parquet.tmp-{os.getpid()}-0000"  # nobody holds its lock
    stale.write_bytes(b"half a file")
    score(input_files, out, FakeScorer(), string_ids)
    assert not stale.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".out")) == []


def test_a_damaged_committed_chunk_is_redone_with_a_warning(input_files, string_ids, tmp_path,
                                                             caplog):
    # Regression: a committed chunk cut short (as a power loss leaves it) made every later
    # --resume run fail until someone deleted the hidden folder by hand.
    out = tmp_path / "out.parquet"
    with pytest.raises(RuntimeError, match="simulated crash"):
        score(input_files, out, CrashingScorer(crash_at=10), string_ids, resume=True,
              resume_every=50)
    folder = resume_folder(out)
    committed = json.loads((folder / "state.json").read_text())["chunks"]
    assert len(committed) == 3  # rows 0-59, 60-99, 100-159 (batches of 20 from chunk starts)
    second = folder / f"chunk-{committed[1]['index']:08d}.parquet"
    second.write_bytes(second.read_bytes()[:100])
    with caplog.at_level(logging.WARNING):
        report = score(input_files, out, FakeScorer(), string_ids, resume=True,
                       resume_every=50)
    assert "missing or damaged" in caplog.text
    # Only the chunk before the damaged one was reused.
    assert report["rows_resumed"] == committed[0]["end_row"] == 60
    expected = score(input_files, tmp_path / "plain.parquet", FakeScorer(), string_ids)
    assert pl.read_parquet(out).equals(pl.read_parquet(tmp_path / "plain.parquet"))
    assert expected["rows_written"] == report["rows_written"]


def test_sigkilled_cli_run_resumes_to_the_uninterrupted_output(bundle_dir, tmp_path):
    """The real thing: ``ncnc score --resume`` killed with SIGKILL mid-run, then run again."""
    rng = np.random.default_rng(0)
    ids = np.array([f"n{k}" for k in range(300)])
    inputs = tmp_path / "pairs"
    inputs.mkdir()
    for part in range(4):
        pl.DataFrame({"src": rng.choice(ids, 25_000), "dst": rng.choice(ids, 25_000)}
                     ).write_parquet(inputs / f"part{part}.parquet")
    out = tmp_path / "scores.parquet"

    def arguments(target: Path, *extra: str) -> list[str]:
        return ["score", "--bundle", str(bundle_dir), "--pairs", str(inputs), "--out",
                str(target), "--batch-size", "500", "--device", "cpu", "--quiet", *extra]

    resumable = arguments(out, "--resume", "--resume-every", "5000")
    state = resume_folder(out) / "state.json"
    killed = subprocess.Popen([str(Path(sys.executable).with_name("ncnc")), *resumable], cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while killed.poll() is None and time.monotonic() < deadline:
        if state.exists() and len(json.loads(state.read_text())["chunks"]) >= 3:
            break
        time.sleep(0.01)
    killed.send_signal(signal.SIGKILL)
    assert killed.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    assert not out.exists()
    done_before = json.loads(state.read_text())["chunks"][-1]["end_row"]
    assert 15_000 <= done_before < 100_000

    # The rerun and the uninterrupted run go in this process (no second start-up of torch).
    finished = CliRunner().invoke(cli, resumable)
    assert finished.exit_code == 0, finished.output
    report = json.loads(finished.stdout)
    assert report["rows_resumed"] >= done_before and report["rows_read"] == 100_000

    expected = tmp_path / "expected.parquet"
    assert CliRunner().invoke(cli, arguments(expected)).exit_code == 0
    resumed = pl.read_parquet(out)
    assert resumed.height == 100_000
    assert resumed.equals(pl.read_parquet(expected))  # same rows, order and score bits
    assert sorted(p.name for p in tmp_path.iterdir()) == ["expected.parquet", "pairs",
                                                          "scores.parquet"]
