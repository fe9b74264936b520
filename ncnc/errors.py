"""Error types shared by every stage; the CLI maps them to exit codes.

This module imports nothing, so any floor (trainer, scorer, exporter) may raise these without
pulling in the CLI.
"""


class InputError(Exception):
    """The user's input is wrong (file, column, value, flag). The message names what and where."""

    exit_code = 2
