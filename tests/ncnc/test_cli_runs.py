"""What a nightly job relies on, command by command: exit codes for signals and full disks,
nothing half-published, a second run to one output refused, no output over an input."""

from __future__ import annotations

import hashlib
import json
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
from ncnc.core.files import Publication

NCNC = str(Path(sys.executable).with_name("ncnc"))
IDS = np.array([f"n{k}" for k in range(6)])  # the shared bundle's graph (tests/conftest.py)


def pairs_file(path: Path, rows: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    pl.DataFrame({"src": IDS[rng.integers(0, 6, rows)],
                  "dst": IDS[rng.integers(0, 6, rows)]}).write_parquet(path)
    return path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def bundle_digests(bundle: Path) -> dict[str, str]:
    return {p.name: digest(p) for p in sorted(bundle.iterdir())}


def score(bundle: Path, pairs: Path, out: Path, *extra: str):
    return CliRunner().invoke(cli, ["score", "--quiet", "--bundle", str(bundle), "--pairs",
                                    str(pairs), "--out", str(out), *extra])


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_exits_with_its_code_and_publishes_nothing(bundle_dir, tmp_path, signum, code):
    # Regression: Ctrl-C exited 1, the code the README gives an internal failure.
    pairs = pairs_file(tmp_path / "pairs.parquet", 3_000_000)
    out = tmp_path / "out.parquet"
    out.write_bytes(b"yesterday's output")
    process = subprocess.Popen([NCNC, "score", "--quiet", "--bundle", str(bundle_dir), "--pairs",
                                str(pairs), "--out", str(out)], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".out.parquet.tmp-*")):  # the run is writing its staged output
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()
        time.sleep(0.02)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == code, stderr
    assert len(stderr.strip().splitlines()) == 1 and "nothing was published" in stderr
    assert out.read_bytes() == b"yesterday's output"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.parquet", "pairs.parquet"]


def test_a_report_that_cannot_be_written_keeps_the_earlier_output(bundle_dir, tmp_path):
    # Regression: a full disk (here /dev/full) for --report had already replaced the output.
    pairs = pairs_file(tmp_path / "pairs.parquet", 50)
    out = tmp_path / "out.parquet"
    out.write_bytes(b"yesterday's output")
    result = score(bundle_dir, pairs, out, "--report", "/dev/full")
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "error: No space left on device: nothing was published, earlier outputs are kept"]
    assert out.read_bytes() == b"yesterday's output"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.parquet", "pairs.parquet"]


def test_a_report_to_stdout_is_written_in_place(bundle_dir, tmp_path):
    pairs = pairs_file(tmp_path / "pairs.parquet", 50)
    done = subprocess.run([NCNC, "score", "--quiet", "--bundle", str(bundle_dir), "--pairs",
                           str(pairs), "--out", str(tmp_path / "out.parquet"), "--report",
                           "/dev/stdout"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    # stdout: the report written in place at /dev/stdout, then the line ncnc score prints.
    report, end = json.JSONDecoder().raw_decode(done.stdout)
    printed = json.loads(done.stdout[end:])
    assert report["rows_scored"] == 50 and report == printed


def test_a_second_run_to_the_same_output_is_refused_and_harms_nothing(bundle_dir, tmp_path):
    # Regression: without --resume, two runs to one output both reported success.
    pairs = pairs_file(tmp_path / "pairs.parquet", 50)
    out = tmp_path / "out.parquet"
    with Publication() as first:  # a live run holding the output (in this process or any other)
        staged = first.file(out)
        staged.write_bytes(b"the first run's rows")
        result = score(bundle_dir, pairs, out)
        assert result.exit_code == 2
        assert "another ncnc run is writing it" in result.output
        assert staged.read_bytes() == b"the first run's rows"
        first.publish()
    assert out.read_bytes() == b"the first run's rows"
    assert score(bundle_dir, pairs, out).exit_code == 0  # and free again afterwards


@pytest.mark.parametrize("target", ["pairs", "manifest", "bundle_file", "bundle"])
def test_no_output_is_written_over_what_the_run_reads(bundle_dir, tmp_path, target):
    # Regression: --report could replace the pairs file or the bundle's manifest.json, --out a
    # file inside the bundle.
    pairs = pairs_file(tmp_path / "pairs.parquet", 50)
    before, pairs_digest = bundle_digests(bundle_dir), digest(pairs)
    path = {"pairs": pairs, "manifest": bundle_dir / "manifest.json",
            "bundle_file": bundle_dir / "scores.parquet", "bundle": bundle_dir}[target]
    for options in (["--out", str(path)], ["--out", str(tmp_path / "o.parquet"), "--report",
                                           str(path)]):
        result = CliRunner().invoke(cli, ["score", "--quiet", "--bundle", str(bundle_dir),
                                          "--pairs", str(pairs), *options])
        assert result.exit_code == 2, result.output
        assert len(result.output.strip().splitlines()) == 1
    assert bundle_digests(bundle_dir) == before and digest(pairs) == pairs_digest
    assert not (tmp_path / "o.parquet").exists()


def test_candidates_refuses_an_output_inside_the_bundle(bundle_dir, tmp_path):
    before = bundle_digests(bundle_dir)
    result = CliRunner().invoke(cli, ["candidates", "--quiet", "--bundle", str(bundle_dir),
                                      "--out", str(bundle_dir / "graph.safetensors")])
    assert result.exit_code == 2 and "lies inside" in result.output
    assert bundle_digests(bundle_dir) == before


def test_export_replaces_only_a_bundle(bundle_dir, tmp_path):
    # Regression: export deleted any folder that merely held a file named manifest.json.
    checkpoint = bundle_dir.parent / "ck"
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "manifest.json").write_text('{"mine": true}')
    (folder / "thesis.tex").write_text("precious")
    result = CliRunner().invoke(cli, ["export", "--checkpoint", str(checkpoint), "--out",
                                      str(folder)])
    assert result.exit_code == 2 and "is not an ncnc bundle" in result.output
    assert (folder / "thesis.tex").read_text() == "precious"
    inside = CliRunner().invoke(cli, ["export", "--checkpoint", str(checkpoint), "--out",
                                      str(checkpoint / "bundle")])
    assert inside.exit_code == 2 and "lies inside" in inside.output
    assert not (checkpoint / "bundle").exists()
    above = CliRunner().invoke(cli, ["export", "--checkpoint", str(checkpoint), "--out",
                                     str(checkpoint.parent)])
    assert above.exit_code == 2 and "holds" in above.output
    assert os.path.isdir(checkpoint)
