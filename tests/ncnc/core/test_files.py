"""Staging and atomic publication (ncnc.core.files): all or nothing, locks by flock, in place for
devices, folders replaced by two renames that a later run can finish."""

from __future__ import annotations

import fcntl
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ncnc.core.errors import InputError
from ncnc.core.files import (
    OutputBusyError,
    Publication,
    refuse_outputs_over_inputs,
    remove_stale,
)


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_outputs_appear_together_and_only_on_publish(tmp_path):
    data, report = tmp_path / "out.parquet", tmp_path / "report.json"
    with Publication() as outputs:
        outputs.file(data).write_text("data")
        outputs.file(report).write_text("report")
        assert not data.exists() and not report.exists()
        outputs.publish()
    assert data.read_text() == "data" and report.read_text() == "report"
    assert names(tmp_path) == ["out.parquet", "report.json"]  # no temporaries, no lock files


def test_a_failure_before_publish_keeps_every_earlier_output(tmp_path):
    # Regression: a run whose report could not be written had already replaced the output.
    data, report = tmp_path / "out.parquet", tmp_path / "report.json"
    data.write_text("old data")
    report.write_text("old report")
    with pytest.raises(OSError, match="disk full"), Publication() as outputs:
        outputs.file(data).write_text("new data")
        outputs.file(report)
        raise OSError("disk full")
    assert data.read_text() == "old data" and report.read_text() == "old report"
    assert names(tmp_path) == ["out.parquet", "report.json"]


def test_a_second_run_to_the_same_output_is_refused_and_harms_nothing(tmp_path):
    out = tmp_path / "out.parquet"
    with Publication() as first:
        staged = first.file(out)
        staged.write_text("first")
        with pytest.raises(OutputBusyError, match="another ncnc run is writing it"):
            with Publication() as second:
                second.file(out)
        assert staged.read_text() == "first"
        first.publish()
    assert out.read_text() == "first"
    with Publication() as third:  # the lock is gone with the first run
        third.file(out).write_text("third")
        third.publish()
    assert out.read_text() == "third"


HOLD = textwrap.dedent("""
    import fcntl, os, sys, time
    fd = os.open(sys.argv[1], os.O_RDONLY | (os.O_DIRECTORY if os.path.isdir(sys.argv[1]) else 0))
    fcntl.flock(fd, fcntl.LOCK_EX)
    print("held", flush=True)
    time.sleep(60)
""")


def hold_lock(path: Path) -> subprocess.Popen:
    """Another process holding an flock on ``path`` (as a live writer does), until killed."""
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE,
                               text=True)
    assert process.stdout.readline().strip() == "held"
    return process


def test_stale_temporaries_are_told_by_their_lock_not_by_a_pid(tmp_path):
    # Regression: cleanup went by PID liveness, so a run in another PID namespace (a container,
    # another host) deleted a live run's temporary file.
    out = tmp_path / "out.parquet"
    unheld = tmp_path / f".out.parquet.tmp-{os.getpid()}-aaaa"  # a live pid, but nobody holds it
    unheld.write_text("left by a killed writer")
    held = tmp_path / ".out.parquet.tmp-999999-bbbb"  # a pid that exists nowhere here, held
    held.write_text("being written")
    held_dir = tmp_path / ".out.parquet.tmp-1-cccc"
    (held_dir / "sub").mkdir(parents=True)
    other = tmp_path / ".other.parquet.tmp-1-dddd"  # another output's: not ours to judge
    other.write_text("x")
    holders = [hold_lock(held), hold_lock(held_dir)]
    try:
        remove_stale(out)
        assert not unheld.exists()
        assert held.read_text() == "being written" and held_dir.is_dir() and other.exists()
    finally:
        for process in holders:
            process.kill()
            process.wait()
    remove_stale(out)  # their writers died: now they go
    assert not held.exists() and not held_dir.exists() and other.exists()


def test_a_device_or_fifo_is_written_in_place(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    reader = subprocess.Popen([sys.executable, "-c", f"print(open({str(fifo)!r}).read())"],
                              stdout=subprocess.PIPE, text=True)
    with Publication() as outputs:
        path = outputs.file(fifo)
        assert path == fifo
        path.write_text("streamed")
        outputs.publish()
    assert reader.communicate(timeout=30)[0].strip() == "streamed"
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)  # not replaced by a regular file
    with Publication() as outputs:
        outputs.file(Path("/dev/null")).write_text("discarded")
        outputs.publish()
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_a_folder_is_replaced_whole(tmp_path):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "old.txt").write_text("old")
    with Publication() as outputs:
        staged = outputs.directory(bundle)
        (staged / "new.txt").write_text("new")
        assert names(bundle) == ["old.txt"]
        outputs.publish()
    assert names(bundle) == ["new.txt"]
    assert names(tmp_path) == ["bundle"]


def test_a_folder_set_aside_by_an_interrupted_replacement_is_put_back(tmp_path):
    # A crash between the two renames leaves the old folder aside and none at the output.
    aside = tmp_path / ".bundle.old-123-abcd"
    aside.mkdir()
    (aside / "manifest.json").write_text("{}")
    remove_stale(tmp_path / "bundle")
    assert names(tmp_path / "bundle") == ["manifest.json"] and not aside.exists()


def test_outputs_may_not_write_over_what_the_run_reads(tmp_path):
    pairs = tmp_path / "pairs.parquet"
    pairs.write_text("x")
    (tmp_path / "link.parquet").symlink_to(pairs)
    os.link(pairs, tmp_path / "hard.parquet")
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    cases = {
        tmp_path / "." / "pairs.parquet": "is also an input",
        tmp_path / "link.parquet": "is also an input",
        tmp_path / "hard.parquet": "is also an input",
        bundle / "manifest.json": "lies inside",
        bundle: "is also an input",
        tmp_path: "holds",
    }
    for out, message in cases.items():
        with pytest.raises(InputError, match=message):
            refuse_outputs_over_inputs([out], [pairs], [bundle])
    refuse_outputs_over_inputs([tmp_path / "out.parquet"], [pairs], [bundle])


def test_the_lock_file_is_removed_after_the_run(tmp_path):
    out = tmp_path / "out.parquet"
    with Publication() as outputs:
        outputs.file(out).write_text("x")
        lock = tmp_path / ".out.parquet.lock"
        assert lock.exists()
        fd = os.open(lock, os.O_RDONLY)
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.close(fd)
        outputs.publish()
    assert names(tmp_path) == ["out.parquet"]
