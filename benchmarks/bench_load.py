"""Load: ``ncnc score`` streams 100M pairs from disk with flat memory.

Uses ``bench_score.py``'s generated graph and NCN bundle (1M nodes; built here when missing),
writes the pairs as a folder of Parquet parts (1M rows each, drawn like bench_score's: half two
hops apart, half uniform), and scores the folder with ``ncnc score --resume`` into one Parquet
file, sampling the scorer's resident memory every few seconds. ``--resume`` makes the load itself
resumable: run the script again after an interruption and it continues where it stopped.

Figures (time, pairs/s, peak RSS over the first tenth of the run and over all of it) go to
``benchmarks/results/load_cpu.json``.

    python benchmarks/bench_load.py                     # 100M pairs
    python benchmarks/bench_load.py --pairs 5000000     # a quick look
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench_score import ROOT, PairSampler, build_bundle, build_inputs

PART_ROWS = 1_000_000


def write_parts(workdir: Path, graph_dir: Path, nodes: int, pairs: int, seed: int) -> Path:
    """``pairs`` rows as parts of :data:`PART_ROWS` rows in ``workdir/load_<pairs>`` (cached)."""
    import numpy as np
    import polars as pl
    from tqdm import tqdm

    folder = workdir / f"load_{pairs}"
    folder.mkdir(parents=True, exist_ok=True)
    sampler = PairSampler(pl.read_parquet(graph_dir / "edges.parquet").to_numpy(), nodes)
    for part in tqdm(range((pairs + PART_ROWS - 1) // PART_ROWS), desc="write pairs"):
        path = folder / f"part-{part:05d}.parquet"
        if path.exists():
            continue
        rows = min(PART_ROWS, pairs - part * PART_ROWS)
        frame = sampler.sample(rows, np.random.default_rng([seed, part]))
        frame.write_parquet(folder / f".part-{part:05d}.tmp", row_group_size=PART_ROWS)
        (folder / f".part-{part:05d}.tmp").rename(path)
    return folder


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=100_000_000)
    parser.add_argument("--nodes", type=int, default=1_000_000)
    parser.add_argument("--degree", type=float, default=10.0)
    parser.add_argument("--model", default="ncn")
    parser.add_argument("--batch-size", type=int, default=65_536)
    parser.add_argument("--sample-every", type=float, default=5.0, help="seconds between RSS samples")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/ncnc-bench-score"))
    parser.add_argument("--results", type=Path,
                        default=ROOT / "benchmarks" / "results" / "load_cpu.json")
    args = parser.parse_args()

    args.workdir.mkdir(parents=True, exist_ok=True)
    graph_dir = build_inputs(args.workdir, args.nodes, args.degree, 1_000_000, seed=0)
    _, bundle = build_bundle(args.workdir, graph_dir, args.model)
    folder = write_parts(args.workdir, graph_dir, args.nodes, args.pairs, seed=7)
    out = args.workdir / f"load_{args.pairs}_{args.model}.parquet"
    report_path = out.with_suffix(".report.json")
    command = [str(Path(sys.executable).with_name("ncnc")), "score", "--bundle", str(bundle), "--pairs",
               str(folder), "--out", str(out), "--batch-size", str(args.batch_size),
               "--device", "cpu", "--resume", "--report", str(report_path)]
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT)
    samples: list[tuple[float, float]] = []

    def sample() -> None:
        while process.poll() is None:
            value = rss_mib(process.pid)
            if value is not None:
                samples.append((time.perf_counter() - started, value))
            time.sleep(args.sample_every)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    if process.wait() != 0:
        sys.exit(f"ncnc score failed (exit {process.returncode}); run again to resume")
    sampler.join()
    wall = time.perf_counter() - started
    report = json.loads(report_path.read_text())
    tenth = [rss for t, rss in samples if t <= wall / 10] or [samples[0][1]]
    row = {
        "model": args.model, "nodes": args.nodes, "pairs": report["rows_read"],
        "input_files": len(report["inputs"]), "batch_size": args.batch_size,
        "rows_resumed": report["rows_resumed"],
        "seconds": round(wall, 1),
        "pairs_per_s": report["pairs_per_second"],
        "peak_rss_mib": report["peak_rss_mib"],
        "rss_max_first_tenth_mib": round(max(tenth)),
        "rss_max_mib_sampled": round(max(rss for _, rss in samples)),
        "rss_samples": len(samples),
        "output_bytes": out.stat().st_size,
    }
    results = json.loads(args.results.read_text()) if args.results.exists() else {}
    results[f"{args.model}_{args.pairs}"] = row
    args.results.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(row, indent=2))


if __name__ == "__main__":
    main()
