"""One import root, one obvious API, and a scoring-only install that imports no training code."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STAGES = ("trainer", "exporter", "scorer", "triton_kernels")
TRAINING_ONLY = ("torch_geometric", "matplotlib", "onnxscript", "scipy")  # onnx: base (bf16 heads)


def python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_the_wheel_holds_one_top_level_package(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--no-build-isolation", "-w", str(tmp_path), str(ROOT)], check=True,
                   capture_output=True)
    (wheel,) = tmp_path.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")} == {"ncnc"}
    top_level = [n for n in names if n.endswith("top_level.txt")]
    assert not top_level or zipfile.ZipFile(wheel).read(top_level[0]).split() == [b"ncnc"]
    for stage in STAGES:  # each stage's files, once, under ncnc/
        assert f"ncnc/{stage}/__init__.py" in names
    assert len(names) == len(set(names))


def test_importing_every_module_imports_no_bare_stage_name():
    done = python("""
        import importlib, pkgutil, sys
        import ncnc
        for name in ncnc.__all__:
            getattr(ncnc, name)
        for module in pkgutil.walk_packages(ncnc.__path__, "ncnc."):
            if not module.name.endswith("__main__"):  # that one runs the CLI
                importlib.import_module(module.name)
        print(sorted({m.split(".")[0] for m in sys.modules}))
    """)
    assert done.returncode == 0, done.stderr
    loaded = set(json.loads(done.stdout.strip().splitlines()[-1].replace("'", '"')))
    assert not loaded & set(STAGES), loaded & set(STAGES)


BLOCK = f"""
import sys
for name in {TRAINING_ONLY!r}:
    sys.modules[name] = None  # importing it now raises ImportError, as if it were not installed
"""

SCORE_WITHOUT_TRAINING = BLOCK + """
import json
import polars as pl
import ncnc
from ncnc.cli import cli

bundle, pairs, out, candidates = sys.argv[1:]
pl.DataFrame({"src": ["n0", "n1"], "dst": ["n3", "n4"]}).write_parquet(pairs)
assert ncnc.load_bundle(bundle).scorer(device="cpu").score(pl.read_parquet(pairs)).height == 2
for args in (["score", "--quiet", "--bundle", bundle, "--pairs", pairs, "--out", out],
             ["candidates", "--quiet", "--bundle", bundle, "--out", candidates]):
    try:
        cli(args, standalone_mode=False)
    except SystemExit as exit:
        assert not exit.code, exit.code
training = ("torch_geometric", "matplotlib", "onnxscript", "ncnc.trainer", "ncnc.exporter")
print(json.dumps(sorted(m for m, module in sys.modules.items()
                        if module is not None and m.startswith(training))))
"""


def test_scoring_needs_no_training_library(bundle_dir, tmp_path):
    done = python(SCORE_WITHOUT_TRAINING, str(bundle_dir), str(tmp_path / "pairs.parquet"),
                  str(tmp_path / "out.parquet"), str(tmp_path / "candidates.parquet"))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
    assert (tmp_path / "out.parquet").is_file() and (tmp_path / "candidates.parquet").is_file()


RUN_CLI = BLOCK + """
from ncnc.cli import main
sys.argv = ["ncnc", *sys.argv[1:]]
main()
"""


@pytest.mark.parametrize("command", [["train", "--model", "ncn", "--dataset", "cora", "--out", "x"],
                                     ["export", "--checkpoint", ".", "--out", "x"]])
def test_a_missing_extra_is_one_line_naming_it(command, tmp_path):
    # Regression: a missing optional dependency surfaced as a traceback from deep in an import.
    done = python(RUN_CLI, *[str(tmp_path / c) if c == "x" else c for c in command])
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'ncnc-toolchain[train]'" in lines[0], lines
