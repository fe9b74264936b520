"""Finished work of a scoring job, kept beside its output so that a killed run can continue.

``ncnc score --resume`` cuts the input rows into chunks: chunk ``c`` is the batches whose first
row (numbered over all inputs) falls in ``[c * every, (c + 1) * every)``. Each finished chunk is
committed to the folder ``.<output name>.resume`` beside the output:

- ``chunk-<c>.parquet``: the chunk's scored rows (or, with a top K, the rows it keeps), written
  under a temporary name and renamed when complete;
- ``state.json``: the job's fingerprint and the committed chunks, replaced atomically after each
  chunk (a kill leaves the old or the new list, never half of one; a chunk file that is not
  listed is ignored and redone);
- ``lock``: an exclusive ``flock`` held while a run works here (the kernel drops it when the
  process dies, even by SIGKILL), so two runs never interleave.

A later ``--resume`` run with the same fingerprint (bundle, input files with their sizes and
modification times, and every option that changes the output) starts after the last committed
chunk; any other fingerprint means the earlier state is of another job: it is discarded with a
warning and the job starts over. The folder is removed once the output is in place.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

from ncnc.core.errors import InputError

log = logging.getLogger(__name__)
STATE_VERSION = 1


@dataclass(frozen=True)
class Chunk:
    """One committed chunk: input rows ``[first_row, end_row)``, of which ``rows_scored`` scored."""

    index: int
    first_row: int
    end_row: int
    rows_scored: int


def job_fingerprint(files: Sequence[Path], options: Mapping[str, Any]) -> str:
    """A digest of everything that determines a job's output.

    ``files`` are identified by absolute path, size and modification time (rewriting a file in
    place changes the time), ``options`` by their JSON form.
    """
    inputs = []
    for path in files:
        stat = path.stat()
        inputs.append([str(path.resolve()), stat.st_size, stat.st_mtime_ns])
    text = json.dumps({"version": STATE_VERSION, "inputs": inputs, "options": options},
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def resume_folder(out: Path) -> Path:
    """Where the finished work of the job writing ``out`` is kept."""
    return out.parent / f".{out.name}.resume"


class ResumeStore:
    """The committed chunks of one job; a context manager that holds the folder's lock.

    Example::

        with ResumeStore(out, fingerprint) as store:
            for chunk in store.chunks: ...            # finished earlier
            ... write store.chunk_path(c), then store.commit(Chunk(c, first, end, scored))
        store.remove()                                 # after the output is in place
    """

    def __init__(self, out: Path, fingerprint: str) -> None:
        self.out = Path(out)
        self.folder = resume_folder(self.out)
        self.fingerprint = fingerprint
        self.chunks: list[Chunk] = []
        self.discarded = False  # True when state of another job was found and dropped
        self._lock: TextIO | None = None

    @property
    def end_row(self) -> int:
        """The first input row no committed chunk covers."""
        return self.chunks[-1].end_row if self.chunks else 0

    @property
    def rows_scored(self) -> int:
        return sum(chunk.rows_scored for chunk in self.chunks)

    def chunk_path(self, index: int) -> Path:
        return self.folder / f"chunk-{index:08d}.parquet"

    def __enter__(self) -> ResumeStore:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.folder / "lock", "w")  # noqa: SIM115 - held until __exit__
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._release()
            raise InputError(
                f"output {self.out}: another ncnc score run is working on it"
                f" (lock {self.folder / 'lock'} is held)"
            ) from None
        self._load()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._release()

    def _release(self) -> None:
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.close()  # closing the file drops the flock

    def _load(self) -> None:
        state_file = self.folder / "state.json"
        if not state_file.exists():
            return
        try:
            state = json.loads(state_file.read_text())
            same_job = state.get("fingerprint") == self.fingerprint
            chunks = [Chunk(**chunk) for chunk in state.get("chunks", [])]
        except (ValueError, TypeError) as exc:
            log.warning("resume state %s is unreadable (%s): starting over", state_file, exc)
            same_job, chunks = False, []
        if not same_job:
            log.warning("resume state in %s belongs to another job (bundle, inputs or options "
                        "differ): starting over", self.folder)
            self._clear()
            self.discarded = True
            return
        if all(self.chunk_path(chunk.index).is_file() for chunk in chunks):
            self.chunks = chunks
        else:
            log.warning("resume state in %s lists missing chunk files: starting over", self.folder)
            self._clear()
            self.discarded = True

    def _clear(self) -> None:
        for path in self.folder.iterdir():
            if path.name != "lock":
                path.unlink()

    def commit(self, chunk: Chunk) -> None:
        """Record ``chunk`` (its file already complete) as finished."""
        if chunk.first_row != self.end_row:
            raise ValueError(f"chunk {chunk.index} starts at row {chunk.first_row}, "
                             f"expected {self.end_row}")
        chunks = [*self.chunks, chunk]
        temp = self.folder / "state.json.tmp"
        temp.write_text(json.dumps({"fingerprint": self.fingerprint,
                                    "chunks": [asdict(c) for c in chunks]}))
        os.replace(temp, self.folder / "state.json")
        self.chunks = chunks

    def remove(self) -> None:
        """Delete the folder (the job's output is in place)."""
        self._release()
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(self.folder)
