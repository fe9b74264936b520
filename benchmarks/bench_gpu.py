"""``ncnc score --device cuda`` end to end, NCN and NCNC, with agreement against the CPU scorer.

    python benchmarks/bench_gpu.py                         # on a CUDA machine (gpu_check.sh runs it)
    python benchmarks/bench_gpu.py --ncn-pairs 1000000 --ncnc-pairs 100000   # a quicker look

On the generated graph of ``bench_score.py`` (1M nodes, mean degree 10, 16 features, hidden 256;
pairs half two hops apart, half uniform) with untrained NCN and NCNC bundles:

1. ``ncnc score --device cuda`` on ``--ncn-pairs`` (10M) and ``--ncnc-pairs`` (1M) pairs, each in
   its own process, reporting pairs/s and the split of the wall time between the device (the
   engine's ``engine_seconds``: common neighbours, completion and head, synchronised) and the host
   (reading, id mapping, writing; everything else), for every precision of ``--precisions``
   (fp32, bf16, int8: each exported on the host with its agreement against fp32 recorded, as
   ``bench_precision.py`` does; reduced precisions score ``--reduced-fraction`` of the pairs);
2. ``ncnc score --device cpu`` on the first ``--agreement-pairs`` of the same pairs, and the
   agreement of the two: max abs logit difference and the overlap of their top 100.

Writes ``benchmarks/results/score_<gpu>.json`` (or ``--results``) and prints a summary.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
from bench_precision import PRECISIONS, export_precisions
from bench_score import build_bundle, build_inputs, prefix_file

ROOT = Path(__file__).resolve().parents[1]


def score(bundle: Path, pairs: Path, out: Path, device: str) -> dict:
    """``ncnc score`` in its own process (``python -m ncnc``: the package need not be installed
    where the repository is on the path); its report."""
    report = out.with_suffix(".report.json")
    command = [sys.executable, "-m", "ncnc", "score", "--quiet", "--bundle", str(bundle),
               "--pairs", str(pairs), "--out", str(out), "--device", device, "--report",
               str(report)]
    started = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT)
    result = json.loads(report.read_text())
    result["process_seconds"] = round(time.perf_counter() - started, 2)
    return result


def agreement(gpu_out: Path, cpu_out: Path) -> dict:
    """Max abs logit difference over the CPU-scored rows, and the overlap of the two top 100s."""
    cpu = pl.read_parquet(cpu_out).with_row_index("row")
    gpu = pl.read_parquet(gpu_out).head(cpu.height).with_row_index("row")
    diff = (gpu["score"].cast(pl.Float64) - cpu["score"].cast(pl.Float64)).abs()

    def top(frame: pl.DataFrame) -> set[int]:
        return set(frame.sort(["score", "row"], descending=[True, False]).head(100)["row"])

    return {"rows": cpu.height, "max_abs_logit_diff": float(diff.max()),
            "mean_abs_logit_diff": float(diff.mean()),
            "top100_overlap": len(top(gpu) & top(cpu)) / 100}


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1_000_000)
    parser.add_argument("--degree", type=float, default=10.0)
    parser.add_argument("--ncn-pairs", type=int, default=10_000_000)
    parser.add_argument("--ncnc-pairs", type=int, default=1_000_000)
    parser.add_argument("--agreement-pairs", type=int, default=20_000)
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=list(PRECISIONS))
    parser.add_argument("--reduced-fraction", type=float, default=0.5,
                        help="bf16 / int8 runs score this fraction of the fp32 pair counts")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/ncnc-bench-gpu"))
    parser.add_argument("--results", type=Path)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_gpu.py needs a CUDA GPU")
    name = torch.cuda.get_device_name()
    slug = "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_")
    results = args.results or ROOT / "benchmarks" / "results" / f"score_{slug}.json"
    args.workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    graph_dir = build_inputs(args.workdir, args.nodes, args.degree, args.ncn_pairs, seed=0)
    full = args.workdir / f"pairs_{args.ncn_pairs}.parquet"
    print(f"inputs ready in {time.perf_counter() - started:.0f} s", flush=True)
    rows = []
    for model, fp32_count, precision in [(m, c, p) for m, c in (("ncn", args.ncn_pairs),
                                                               ("ncnc", args.ncnc_pairs))
                                         for p in args.precisions]:
        checkpoint, bundle = build_bundle(args.workdir, graph_dir, model)
        export = {"agreement": None}
        if precision != "fp32":
            export = export_precisions(checkpoint, args.workdir, model, (precision,))[precision]
            bundle = export["bundle"]
        count = fp32_count if precision == "fp32" else int(fp32_count * args.reduced_fraction)
        pairs = full if count == args.ncn_pairs else prefix_file(args.workdir, full, count)
        head = prefix_file(args.workdir, full, args.agreement_pairs)
        gpu = score(bundle, pairs, args.workdir / f"{model}_{precision}_cuda.parquet", "cuda")
        cpu = score(bundle, head, args.workdir / f"{model}_{precision}_cpu.parquet", "cpu")
        engine = gpu.get("engine_seconds") or 0.0
        row = {"model": model, "precision": precision, "pairs": gpu["rows_scored"],
               "pairs_per_second": gpu["pairs_per_second"], "seconds": gpu["seconds"],
               "device_seconds": engine, "host_seconds": round(gpu["seconds"] - engine, 3),
               "peak_rss_mib": gpu["peak_rss_mib"], "memo_hit_rate": gpu.get("memo_hit_rate"),
               "cpu_pairs_per_second": cpu["pairs_per_second"],
               "agreement": agreement(args.workdir / f"{model}_{precision}_cuda.parquet",
                                      args.workdir / f"{model}_{precision}_cpu.parquet"),
               "export_agreement_vs_fp32": export["agreement"]}
        rows.append(row)
        print(f"{model} {precision}: {row['pairs']:,} pairs at {row['pairs_per_second']:,.0f} pairs/s on "
              f"{name} (device {engine:.1f} s, host {row['host_seconds']:.1f} s); CPU "
              f"{row['cpu_pairs_per_second']:,.0f} pairs/s; agreement {row['agreement']}",
              flush=True)
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps({
        "command": " ".join(["python", *sys.argv]), "device": name,
        "torch": torch.__version__, "nodes": args.nodes, "degree": args.degree,
        "measured": time.strftime("%Y-%m-%d %H:%M"), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
