"""What the compiler makes of each Triton kernel, without a GPU: per kernel (launcher), dtypes,
configuration and target (sm_80, sm_90): registers per thread, spills (stack frame and the
local-memory traffic in the SASS, in loops or not), shared memory per block, and the global
loads and atomics by bytes per instruction (``ld.global.v4.b32`` moves 16 bytes, a scalar
``ld.global.b32`` 4), with whether each forward kernel's feature tile is read in the widest loads
its width allows (16 bytes; 8 for float16 rows of d = 100, a multiple of 4 elements only).

The cases are those of :mod:`ncnc.triton_kernels.compile_check` (the launchers' own launches,
specialised by Triton's JIT binder as on a GPU with 16-byte aligned tensors): by default the full
product of distinct dtype choices x configurations x targets at d = 256, plus the forward kernels
at a feature width that is not a multiple of 16 (``--unaligned-d``), where Triton's JIT alone
proves nothing about row alignment (the kernels' ``ROW_ALIGN`` tells it what the launcher
checked). Compiled in a process pool; Triton's cache makes reruns fast.

    python benchmarks/ptx_report.py                    # all cases -> results/ptx_report.json
    python benchmarks/ptx_report.py --cases covering   # the set test_compile_check.py compiles
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import triton

from ncnc.triton_kernels import compile_check as cc

ROOT = Path(__file__).resolve().parents[1]
FORWARD = ("cn_sum", "gather_sum")


def unaligned_cases(d: int) -> list[cc.CompileCase]:
    """The forward kernels at width ``d``, every feature dtype and configuration, first index dtypes."""
    out = []
    for name in FORWARD:
        seen = set()
        for dtypes, _ in cc.distinct_dtype_choices(name):
            if dtypes["x"] in seen:
                continue
            seen.add(dtypes["x"])
            launch = cc.record_launch(name, dtypes, d)
            out += [
                cc.CompileCase(name, tuple(dtypes.items()), c, arch, d)
                for c in cc.configs(launch)
                for arch in cc.ARCHS
            ]
    return out


def widths(counts: dict[int, int]) -> str:
    """``16B x8 4B x12``: instruction counts by bytes per instruction, widest first."""
    return " ".join(f"{w}Bx{n}" for w, n in sorted(counts.items(), reverse=True)) or "-"


def row(r: cc.CompileResult) -> str:
    dtypes = "/".join(
        v.replace("float", "f").replace("bfloat", "bf").replace("int", "i") for _, v in r.case.dtypes
    )
    head = f"{r.case.launcher:<14} {dtypes:<12} {r.case.config:<15} d={r.case.d:<4} sm_{r.case.arch}"
    if r.error:
        return f"{head}  ERROR {r.error}"
    spill = (
        "-"
        if not r.stack_bytes
        else f"{r.spill_store_bytes}/{r.spill_load_bytes}B ({r.spill_in_loop_bytes} in loop)"
    )
    vectorised = cc.tile_vectorised(r)
    tile = (
        ""
        if vectorised is None
        else f"tile {cc.tile_load_bytes(r.case)}B" + ("" if vectorised else " NARROW")
    )
    flag = "  << " + "; ".join(cc.problems(r)) if cc.problems(r) else ""
    return (
        f"{head}  regs {r.registers:>3}  spill {spill:<22} smem {r.shared_bytes:>6}  "
        f"ld {widths(r.loads):<24} atom {widths(r.atomics):<10} {tile}{flag}"
    )


def summary(results: list[cc.CompileResult]) -> list[dict]:
    """Per launcher, width and target: the range of registers, the most shared memory, the cases
    with a parked spill slot or a problem, and how many forward tiles are read in the widest
    vectors their width allows."""
    groups: dict[tuple, list[cc.CompileResult]] = defaultdict(list)
    for r in results:
        groups[r.case.launcher, r.case.d, r.case.arch].append(r)
    out = []
    for (launcher, d, arch), rs in groups.items():
        ok = [r for r in rs if not r.error]
        vectorised = [cc.tile_vectorised(r) for r in ok if cc.tile_vectorised(r) is not None]
        out.append({
            "launcher": launcher, "d": d, "arch": arch, "cases": len(rs),
            "registers_min": min((r.registers for r in ok), default=None),
            "registers_max": max((r.registers for r in ok), default=None),
            "shared_bytes_max": max((r.shared_bytes for r in ok), default=None),
            "parked_spill_cases": sorted(r.case.id for r in ok if r.stack_bytes and not cc.problems(r)),
            "problem_cases": sorted(r.case.id for r in rs if cc.problems(r)),
            "tiles_widest_loads": f"{sum(vectorised)}/{len(vectorised)}" if vectorised else None,
        })
    return out


def print_summary(rows: list[dict]) -> None:
    print(f"\n{'kernel':<14} {'d':>4} {'target':<6} {'cases':>5} {'registers':>10} {'smem max':>9} "
          f"{'parked':>6} {'problems':>8} {'wide tiles':>10}")
    for s in rows:
        regs = f"{s['registers_min']}-{s['registers_max']}"
        print(
            f"{s['launcher']:<14} {s['d']:>4} sm_{s['arch']:<3} {s['cases']:>5} {regs:>10} "
            f"{s['shared_bytes_max']:>9} {len(s['parked_spill_cases']):>6} "
            f"{len(s['problem_cases']):>8} {s['tiles_widest_loads'] or '-':>10}"
        )


def ptxas_versions() -> dict[str, str]:
    out = {}
    for name in ("ptxas", "ptxas_blackwell"):
        tool = getattr(triton.knobs.nvidia, name)
        out[name] = (
            subprocess.run([tool.path, "--version"], capture_output=True, text=True)
            .stdout.strip()
            .splitlines()[-1]
        )
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", choices=["all", "covering"], default="all")
    p.add_argument(
        "--unaligned-d", type=int, default=100, help="forward kernels also at this width (0: skip)"
    )
    p.add_argument("--workers", type=int, default=max(1, min(len(os.sched_getaffinity(0)), 8)))
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/ptx_report.json")
    args = p.parse_args(argv)

    cases = cc.all_cases() if args.cases == "all" else cc.covering_cases()
    if args.unaligned_d:
        cases += unaligned_cases(args.unaligned_d)
    start = time.perf_counter()
    results = cc.compile_cases(cases, workers=args.workers)
    wall = time.perf_counter() - start
    for r in results:
        print(row(r))
    rows = summary(results)
    print_summary(rows)
    problems = [r for r in results if cc.problems(r)]
    print(
        f"\n{len(results)} compilations in {wall:.0f} s ({args.workers} workers), "
        f"{len(problems)} with problems"
    )
    report = {
        "benchmark": "Triton kernels compiled for sm_80 / sm_90 without a GPU "
                     "(ncnc.triton_kernels.compile_check)",
        "command": "python benchmarks/ptx_report.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "triton": triton.__version__,
        "ptxas": ptxas_versions(),
        "host": platform.node(),
        "workers": args.workers,
        "wall_s": round(wall, 1),
        "shared_limit_bytes": cc.SHARED_LIMIT_BYTES,
        "parked_slot_bytes": cc.PARKED_SLOT_BYTES,
        "summary": rows,
        "cases": [r.as_json() for r in results],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
