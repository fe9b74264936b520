"""Runs the Triton launchers in a child process under ``TRITON_INTERPRET=1``.

Triton reads ``TRITON_INTERPRET`` once, when it is imported, and ``torch.export`` of a
``triton_op`` fails while it is set; so the interpreted kernels live in their own process and the
test process stays normal. :class:`InterpretedKernels` starts the child with the variable set
(``spawn``: a fresh interpreter that imports triton anew) and forwards each call
``kernels.<launcher>(*args)`` to :mod:`ncnc.triton_kernels.common_neighbors_triton`. Tensors cross the
pipe as ``torch.save`` bytes; an exception in the child comes back as a ``RuntimeError`` carrying
the child's traceback.
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing as mp
import os
import traceback
from typing import Any

import torch


def _dumps(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _loads(data: bytes) -> Any:
    return torch.load(io.BytesIO(data), weights_only=True)


def _serve(conn) -> None:
    from ncnc.triton_kernels import common_neighbors_triton as kernels

    if not kernels.INTERPRET:
        conn.send_bytes(_dumps(("err", "TRITON_INTERPRET=1 did not reach the child process")))
        return
    conn.send_bytes(_dumps(("ok", "ready")))
    while message := conn.recv_bytes():
        name, args = _loads(message)
        try:
            reply = ("ok", getattr(kernels, name)(*args))
        except Exception:
            reply = ("err", traceback.format_exc())
        conn.send_bytes(_dumps(reply))


class InterpretedKernels:
    """``kernels.common_neighbor_sum_triton(...)`` etc., executed by the Triton interpreter."""

    def __init__(self) -> None:
        context = mp.get_context("spawn")
        self._conn, child_conn = context.Pipe()
        previous = os.environ.get("TRITON_INTERPRET")
        os.environ["TRITON_INTERPRET"] = "1"
        try:
            self._process = context.Process(target=_serve, args=(child_conn,), daemon=True)
            self._process.start()
        finally:
            if previous is None:
                del os.environ["TRITON_INTERPRET"]
            else:
                os.environ["TRITON_INTERPRET"] = previous
        child_conn.close()
        self._receive("start-up")

    def _receive(self, name: str) -> Any:
        if not self._conn.poll(600):
            raise RuntimeError(f"{name}: the interpreter process did not answer within 600 s")
        status, value = _loads(self._conn.recv_bytes())
        if status != "ok":
            raise RuntimeError(f"{name} failed in the interpreter process:\n{value}")
        return value

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)

        def call(*args: Any) -> Any:
            self._conn.send_bytes(_dumps((name, args)))
            return self._receive(name)

        return call

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._conn.send_bytes(b"")
        self._process.join(timeout=10)
        if self._process.is_alive():
            self._process.kill()
