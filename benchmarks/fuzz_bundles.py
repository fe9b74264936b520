"""A long fuzzing campaign over bundles and pairs files (the fuzzers of ``make test``, more
examples, new ones each run).

Runs tests/scorer/test_fuzz_bundles.py and tests/scorer/test_fuzz_pairs.py with
``NCNC_FUZZ_EXAMPLES`` examples per fuzzer, drawn afresh (``NCNC_FUZZ_RANDOM=1``), and prints
each fuzzer's outcome counts (Hypothesis' statistics: refused / ran, per kind of damage) and the
wall time. Exit status: pytest's (0 when every property held).

Usage::

    .venv/bin/python benchmarks/fuzz_bundles.py --examples 3000 --log /tmp/fuzz.log
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FUZZERS = ["tests/scorer/test_fuzz_bundles.py", "tests/scorer/test_fuzz_pairs.py"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=3000, help="examples per fuzzer")
    parser.add_argument("-k", default=None, help="only the fuzzers matching (pytest -k)")
    parser.add_argument("--log", type=Path, default=Path("fuzz_bundles.log"),
                        help="pytest's whole output (a native crash's stack dump included)")
    args = parser.parse_args()
    env = {**os.environ, "NCNC_FUZZ_EXAMPLES": str(args.examples), "NCNC_FUZZ_RANDOM": "1"}
    command = [sys.executable, "-m", "pytest", *FUZZERS, "-q", "-p", "no:cacheprovider",
               "--hypothesis-show-statistics"] + (["-k", args.k] if args.k else [])
    started = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    args.log.write_text(result.stdout + "\n--- stderr ---\n" + result.stderr)
    print(_statistics(result.stdout))
    if result.returncode:
        print(f"pytest failed: its whole output is in {args.log}")
    print(f"fuzzers: {len(FUZZERS)} files, {args.examples} examples each requested, "
          f"{seconds:.0f} s wall, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores, "
          f"pytest exit {result.returncode}")
    return result.returncode


def _statistics(stdout: str) -> str:
    """Hypothesis' statistics block, without pytest's progress lines."""
    lines = stdout.splitlines()
    start = next((i for i, line in enumerate(lines) if "Hypothesis Statistics" in line), None)
    if start is None:
        return stdout[-5_000:]
    return "\n".join(line for line in lines[start:] if line.strip() and not line.startswith("="))


if __name__ == "__main__":
    sys.exit(main())
