"""Finished work of a scoring job, kept beside its output so that a killed run can continue.

``ncnc score --resume`` cuts the input rows into chunks: chunk ``c`` is the batches whose first
row (numbered over all inputs) falls in ``[c * every, (c + 1) * every)``. Each finished chunk is
committed to the folder ``.<output name>.resume`` beside the output:

- ``chunk-<c>.parquet``: the chunk's scored rows (or, with a top K, the rows it keeps), staged
  and published like any output (:class:`ncnc.core.files.Publication`: temporary name, fsync,
  rename), so a listed chunk is complete on disk before it counts;
- ``state.json``: the job's fingerprint and the committed chunks with each chunk file's size and
  sha256, replaced the same way after each chunk (a kill leaves the old or the new list, never
  half of one; a chunk file that is not listed is ignored and redone).

The folder is locked while a run works in it (``.<output name>.resume.lock`` beside it; the kernel
drops the lock when the process dies, even by SIGKILL), so two runs never interleave.

A later ``--resume`` run with the same fingerprint (bundle, input files with their sizes and
modification times, and every option that changes the output) verifies the committed chunks and
starts after the last good one: a chunk whose file is missing, cut short or changed (a power loss
before the disk had it, a stray edit) is discarded with a warning, with every chunk after it, and
redone. Any other fingerprint means the earlier state is of another job: it is discarded with a
warning and the job starts over. The folder is removed once the output is in place.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from ncnc.core.files import OutputLock, Publication, file_sha256

log = logging.getLogger(__name__)
STATE_VERSION = 2  # 2: chunks carry their size and sha256


@dataclass(frozen=True)
class Chunk:
    """One committed chunk: input rows ``[first_row, end_row)``, of which ``rows_scored`` scored;
    its file's ``bytes`` and ``sha256`` (filled in by :meth:`ResumeStore.commit`)."""

    index: int
    first_row: int
    end_row: int
    rows_scored: int
    bytes: int = 0
    sha256: str = ""


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
            for chunk in store.chunks: ...            # finished earlier (verified)
            with store.writing_chunk(c) as path:      # write chunk c at path
                ...
            store.commit(Chunk(c, first, end, scored))
        ResumeStore.discard(out)                      # after the output is in place
    """

    def __init__(self, out: Path, fingerprint: str) -> None:
        self.out = Path(out)
        self.folder = resume_folder(self.out)
        self.fingerprint = fingerprint
        self.chunks: list[Chunk] = []
        self.discarded = False  # True when state of another job was found and dropped
        self._lock = OutputLock(self.folder)

    @property
    def end_row(self) -> int:
        """The first input row no committed chunk covers."""
        return self.chunks[-1].end_row if self.chunks else 0

    @property
    def rows_scored(self) -> int:
        return sum(chunk.rows_scored for chunk in self.chunks)

    @property
    def state_file(self) -> Path:
        return self.folder / "state.json"

    def chunk_path(self, index: int) -> Path:
        return self.folder / f"chunk-{index:08d}.parquet"

    def __enter__(self) -> ResumeStore:
        self.folder.parent.mkdir(parents=True, exist_ok=True)
        self._lock.acquire()
        try:
            self.folder.mkdir(exist_ok=True)
            self._load()
        except BaseException:
            self._lock.release()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._lock.release()

    def _load(self) -> None:
        if not self.state_file.exists():
            return
        try:
            state = json.loads(self.state_file.read_text())
            same_job = state.get("fingerprint") == self.fingerprint
            chunks = [Chunk(**chunk) for chunk in state.get("chunks", [])]
        except (ValueError, TypeError, AttributeError) as exc:
            log.warning("resume state %s is unreadable (%s): starting over", self.state_file, exc)
            same_job, chunks = False, []
        if not same_job:
            log.warning("resume state in %s belongs to another job (bundle, inputs or options "
                        "differ): starting over", self.folder)
            self._clear()
            self.discarded = True
            return
        self.chunks = self._verified(chunks)

    def _verified(self, chunks: list[Chunk]) -> list[Chunk]:
        """The committed chunks up to the first whose file is missing or not as committed."""
        for position, chunk in enumerate(chunks):
            path = self.chunk_path(chunk.index)
            if not path.is_file() or path.stat().st_size != chunk.bytes \
                    or file_sha256(path) != chunk.sha256:
                log.warning("resume chunk %s is missing or damaged: redoing it and the %d "
                            "chunk(s) after it", path, len(chunks) - position - 1)
                for later in chunks[position:]:
                    self.chunk_path(later.index).unlink(missing_ok=True)
                return chunks[:position]
        return chunks

    def _clear(self) -> None:
        for path in self.folder.iterdir():
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)

    @contextlib.contextmanager
    def writing_chunk(self, index: int) -> Iterator[Path]:
        """Stage chunk ``index``: yields where to write it, and publishes it (fsynced) when the
        block ends without an exception."""
        with Publication() as publication:
            yield publication.file(self.chunk_path(index))
            publication.publish()

    def commit(self, chunk: Chunk) -> None:
        """Record ``chunk`` (its file already published) as finished, with its file's size and
        sha256."""
        if chunk.first_row != self.end_row:
            raise ValueError(f"chunk {chunk.index} starts at row {chunk.first_row}, "
                             f"expected {self.end_row}")
        path = self.chunk_path(chunk.index)
        chunk = Chunk(chunk.index, chunk.first_row, chunk.end_row, chunk.rows_scored,
                      path.stat().st_size, file_sha256(path))
        chunks = [*self.chunks, chunk]
        with Publication() as publication:
            publication.file(self.state_file).write_text(json.dumps(
                {"fingerprint": self.fingerprint, "chunks": [asdict(c) for c in chunks]}))
            publication.publish()
        self.chunks = chunks

    @staticmethod
    def discard(out: Path) -> None:
        """Delete the resume folder of ``out`` (the job's output is in place)."""
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(resume_folder(Path(out)))
