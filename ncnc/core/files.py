"""Staging and atomic publication: the one home of "all or nothing" on disk.

Every command writes each of its outputs under a temporary name in the output's own folder (so the
final rename is atomic, on one file system), flushes it to disk, and moves all of them into place
only after every one was written (:class:`Publication`). A crash, a signal or a full disk leaves
each output as it was before the run, or whole as the run wrote it; never half of one.

- Temporary names are ``.<name>.tmp-<token>`` (a dot name: readers of the folder skip it). The
  writer holds an ``flock`` on each for as long as it lives, so a later run removes the
  temporaries nobody holds any more (their writer died, even by SIGKILL) and never one that a live
  writer holds, whatever PID namespace or host it runs in, wherever the file system honours flock.
- Each output is locked for the whole run (``.<name>.lock``): a second run to the same output is
  refused at once (:class:`OutputBusyError`, exit 2) and never touches the first run's files.
- A destination that exists and is neither a regular file nor a folder (``/dev/stdout``, a FIFO, a
  character device) is written in place: a rename would replace the device node.
- A folder is replaced by two renames (the old one aside, the new one in); a crash between them
  leaves the old folder under ``.<name>.old-<token>``, which the next run puts back.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import secrets
import shutil
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from ncnc.core.errors import InputError

TEMP_MARK = ".tmp-"
OLD_MARK = ".old-"
LOCK_SUFFIX = ".lock"


class OutputBusyError(InputError):
    """Another live run is writing the same output."""


def _token() -> str:
    # The pid is for people reading a folder listing; the random part makes names unique across
    # PID namespaces and hosts sharing the folder.
    return f"{os.getpid()}-{secrets.token_hex(4)}"


def _try_flock(path: Path) -> int | None:
    """An open descriptor of ``path`` holding an exclusive flock, or None when another holds it
    (or the path vanished)."""
    flags = os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _same_inode(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file ``fd`` is open on (nobody removed or replaced it)."""
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def fsync_path(path: Path) -> None:
    """Flush a file, or a folder's entries, to disk."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: Path) -> None:
    """Flush a file, or a folder with everything inside it, to disk."""
    if path.is_dir():
        for entry in path.iterdir():
            fsync_tree(entry)
    fsync_path(path)


def is_special(path: Path) -> bool:
    """Whether ``path`` exists and is neither a regular file nor a folder (a device, a FIFO, a
    socket): such a destination is written in place, never replaced by a rename."""
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def remove_stale(final: Path) -> None:
    """Remove what killed writers of ``final`` left beside it: temporaries nobody holds, and put
    back a folder set aside by an interrupted replacement when ``final`` is missing."""
    folder, name = final.parent, final.name
    if not folder.is_dir():
        return
    for entry in sorted(folder.iterdir()):
        if not entry.name.startswith(f".{name}{TEMP_MARK}") and not entry.name.startswith(
                f".{name}{OLD_MARK}"):
            continue
        fd = _try_flock(entry)
        if fd is None:
            continue  # a live writer holds it
        try:
            if OLD_MARK in entry.name[len(name) + 1:] and not os.path.lexists(final):
                entry.rename(final)
            else:
                _remove(entry)
        finally:
            os.close(fd)


class OutputLock:
    """An exclusive lock on one output for the length of a run (``.<name>.lock`` beside it).

    The lock file is removed on release; a run that opened it just before is told so by the
    inode check and takes a fresh one, so two runs can never both believe they hold it.
    """

    def __init__(self, final: Path) -> None:
        self.final = final
        self.path = final.parent / f".{final.name}{LOCK_SUFFIX}"
        self._fd: int | None = None

    def acquire(self) -> None:
        while True:
            fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise OutputBusyError(
                    f"output {self.final}: another ncnc run is writing it (lock {self.path} is "
                    f"held); wait for it to finish or write elsewhere") from None
            if _same_inode(fd, self.path):
                self._fd = fd
                return
            os.close(fd)  # released and removed by its holder after we opened it: try again

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            os.close(fd)


@dataclass
class Staged:
    """One output being staged: written at ``path``, published at ``final``."""

    final: Path
    path: Path
    is_dir: bool
    in_place: bool
    _fd: int | None = field(default=None, repr=False)


def _create_locked(final: Path, directory: bool) -> tuple[Path, int]:
    """A new, flock-held temporary beside ``final``: ``(its path, the descriptor holding it)``."""
    while True:
        path = final.parent / f".{final.name}{TEMP_MARK}{_token()}"
        if directory:
            path.mkdir()
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        else:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        # A cleaner may have taken the unheld temporary in the instant before flock: check.
        if _same_inode(fd, path):
            return path, fd
        os.close(fd)


class Publication:
    """Outputs staged together and published together.

    Example::

        with Publication() as outputs:
            data = outputs.file(out)           # write the data at `data`
            report = outputs.file(report_path)
            ...
            outputs.publish()                  # every output written: move each into place
        # leaving the block without publish() (an exception, a signal) removes every temporary;
        # each output keeps what it held before the run

    Staging an output locks it (:class:`OutputLock`) and removes stale temporaries of earlier runs.
    """

    def __init__(self) -> None:
        self.staged: list[Staged] = []
        self._locks: list[OutputLock] = []
        self.published = False

    def __enter__(self) -> Publication:
        return self

    def _stage(self, final: Path, directory: bool) -> Path:
        final = Path(final)
        if is_special(final):
            if directory:
                raise InputError(f"output {final}: is not a folder")
            self.staged.append(Staged(final, final, False, True))
            return final
        final.parent.mkdir(parents=True, exist_ok=True)
        lock = OutputLock(final)
        lock.acquire()
        self._locks.append(lock)
        remove_stale(final)
        path, fd = _create_locked(final, directory)
        self.staged.append(Staged(final, path, directory, False, fd))
        return path

    def file(self, final: Path) -> Path:
        """Stage the file ``final``; returns where to write it (``final`` itself when it is a
        device or FIFO, written in place)."""
        return self._stage(final, directory=False)

    def directory(self, final: Path) -> Path:
        """Stage the folder ``final`` (an empty folder to fill); on publication it replaces the
        folder there, if any (callers check first that it may be replaced)."""
        return self._stage(final, directory=True)

    def publish(self) -> None:
        """Flush every staged output to disk, then move each into place."""
        for staged in self.staged:
            if not staged.in_place:
                fsync_tree(staged.path)
        for staged in self.staged:
            if not staged.in_place:
                _move_into_place(staged)
        for folder in {s.final.parent for s in self.staged if not s.in_place}:
            fsync_path(folder)
        self.published = True

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for staged in self.staged:
            if not self.published and not staged.in_place:
                _remove(staged.path)
            if staged._fd is not None:
                os.close(staged._fd)
                staged._fd = None
        for lock in self._locks:
            lock.release()


def _move_into_place(staged: Staged) -> None:
    final = staged.final
    if not staged.is_dir or not final.exists():
        os.replace(staged.path, final)
        return
    # A folder cannot be renamed over a non-empty one: set the old one aside (locked, so no
    # cleaner takes it while we work), move the new one in, then remove the old one.
    aside = final.parent / f".{final.name}{OLD_MARK}{_token()}"
    held = _try_flock(final)
    try:
        os.rename(final, aside)
        os.rename(staged.path, final)
    except OSError:
        if not os.path.lexists(final) and os.path.lexists(aside):
            os.rename(aside, final)
        raise
    finally:
        if held is not None:
            os.close(held)
    _remove(aside)


def file_sha256(path: Path) -> str:
    """The sha256 hex digest of a file's bytes, read 1 MiB at a time (bounded memory)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def refuse_replacing_foreign_folder(out: Path, kind: str, is_ours: Callable[[Path], bool]) -> None:
    """Raise :class:`InputError`, before any work, unless ``out`` is absent, an empty folder or a
    folder ``is_ours`` recognises (an earlier ncnc ``kind``, e.g. ``"bundle"``): a folder
    ``--out`` points at by mistake must never be deleted by its replacement."""
    if not out.exists():
        return
    if not out.is_dir():
        raise InputError(f"--out {out}: exists and is not a folder; refusing to replace it")
    if any(out.iterdir()) and not is_ours(out):
        raise InputError(f"--out {out}: exists and is not an ncnc {kind}; refusing to replace it")


def refuse_outputs_over_inputs(outputs: Iterable[Path], inputs: Iterable[Path],
                               containers: Iterable[Path] = ()) -> None:
    """Raise :class:`InputError` when an output would write over what a run reads: an input
    (the same path or inode), a path inside one of ``containers`` (the bundle or checkpoint the
    run reads), or a folder holding an input or container (replacing it would delete them)."""
    read = [Path(p) for p in [*inputs, *containers]]
    containers = [Path(c).resolve() for c in containers]
    for out in outputs:
        out = Path(out)
        target = out.resolve()
        for path in read:
            if path.resolve() == target or _same_file(path, out):
                raise InputError(f"output {out}: is also an input ({path}); write it elsewhere")
            if target in path.resolve().parents:
                raise InputError(f"output {out}: holds {path}, which this run reads; write it "
                                 "elsewhere")
        for container in containers:
            if container in target.parents:
                raise InputError(f"output {out}: lies inside {container}, which this run reads; "
                                 "write it elsewhere")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError as err:
        if err.errno in (errno.ENOENT, errno.ENOTDIR):
            return False
        raise
