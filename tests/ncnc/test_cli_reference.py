"""The README's CLI reference is the commands' current --help (regenerate with ``make docs``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ncnc.cli.reference import END, START, render, replace_block

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_cli_reference_is_up_to_date():
    readme = README.read_text()
    assert readme.count(START) == 1 and readme.count(END) == 1
    assert replace_block(readme, render()) == readme, "stale CLI reference: run `make docs`"


@pytest.mark.parametrize("command", [[], ["score"], ["train"]])
def test_reference_shows_what_the_installed_command_prints(command):
    """The real ``ncnc`` on a wide terminal (``--help`` imports no torch: this is quick)."""
    ncnc = Path(sys.executable).parent / "ncnc"
    printed = subprocess.run([ncnc, *command, "--help"], capture_output=True, text=True,
                             check=True, env={**os.environ, "COLUMNS": "200"}).stdout
    title = " ".join(["ncnc", *command, "--help"])
    assert f"### `{title}`\n\n```text\n{printed.rstrip()}\n```" in render()


def test_replace_block_keeps_the_text_around_the_markers():
    document = f"intro\n{START}\nold\n{END}\noutro\n"
    assert replace_block(document, f"{START}\nnew\n{END}") == f"intro\n{START}\nnew\n{END}\noutro\n"
    with pytest.raises(ValueError, match="markers"):
        replace_block("no markers here", "x")
