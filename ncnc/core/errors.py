"""Error types shared by every stage; the CLI maps them to exit codes.

This module imports nothing, so any floor (trainer, scorer, exporter) may raise these without
pulling in the CLI.
"""

from __future__ import annotations

from collections.abc import Iterable

EXAMPLES = 5  # how many bad values an error message quotes


def examples(values: Iterable[object]) -> str:
    """The first few values as ``a, b, c, ...`` for an error message (any iterable, a polars
    Series included: only its head is read)."""
    head = getattr(values, "head", None)
    if callable(head):
        values = head(EXAMPLES + 1)
    values = list(values)
    shown = ", ".join(repr(v) for v in values[:EXAMPLES])
    return shown + (", ..." if len(values) > EXAMPLES else "")


def first_line(err: BaseException) -> str:
    """An exception's message cut to its first line (libraries' messages may hold tracebacks),
    or its type's name when it has none: the reason quoted in a one-line error."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


class InputError(Exception):
    """The user's input is wrong (file, column, value, flag). The message names what and where."""

    exit_code = 2
