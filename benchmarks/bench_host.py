"""The scoring job's own cost, without a model: read, map ids, sigmoid, rank, write.

    python benchmarks/bench_host.py                      # 5M random pairs over 1M nodes
    python benchmarks/bench_host.py --pairs 10000000 --repeats 3

A scorer that returns zeros runs through ``ncnc.scorer.job.score_files`` (everything ``ncnc score``
does but the model), for integer and string ids, with and without ``--top-k 20 --per-source``. In
the same run, interleaved, the floor a user would write instead: a plain ``pl.read_parquet`` of
the same rows plus a ``write_parquet`` with ``score`` and ``prob`` added (zstd, polars' default
level 3), the same at zstd level 1 (the level the job writes), and for the top K the same
ranking done in polars (rank within each source, keep 20, sort).
Each run is its own process (so its peak RSS is its own); each figure is the best of
``--repeats`` runs. Prints pairs/s, the ratio to the floor and peak RSS, and writes
``benchmarks/results/host_cpu.json``.

Integer ids are dense (an offset range: the direct array lookup applies); string ids are
``u<k>`` (the hash index applies). Pairs are uniform over the nodes, in one Parquet file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parents[1]
INTEGER_OFFSET = 1_000_000_000

JOB = """
import json, sys, time, torch
import numpy as np
import polars as pl
from pathlib import Path
from ncnc.core.ids import IdMap
from ncnc.scorer.job import prepare_host_path, score_files
from ncnc.scorer.outputs import peak_rss_mib

class ZeroScorer:
    def score_logits(self, pairs):
        return torch.from_numpy(np.zeros(pairs.size(0), dtype=np.float32))  # no torch kernel

torch.set_num_threads({threads})
ids = IdMap.load(Path({id_map!r}))
prepare_host_path(ids)  # what a Scorer does when it is made
started = time.perf_counter()
report = score_files(ZeroScorer(), ids, [{pairs!r}], Path({out!r}), progress=False, {options})
seconds = time.perf_counter() - started  # the id map is loaded before: a bundle's cost
print(json.dumps({{"seconds": seconds, "rows": report["rows_read"],
                  "peak_rss_mib": peak_rss_mib()}}))
"""

FLOOR = """
import json, sys, time
import polars as pl
from ncnc.scorer.outputs import peak_rss_mib
started = time.perf_counter()
frame = pl.read_parquet({pairs!r})
scored = frame.with_columns(score=pl.lit(0.0, pl.Float32), prob=pl.lit(0.5, pl.Float32))
if {per_source_top!r}:  # the same top K a user would rank with polars itself
    scored = (scored.with_columns(rank=pl.col("score").rank("ordinal", descending=True)
                                  .over("src").cast(pl.Int64))
              .filter(pl.col("rank") <= {per_source_top!r}).sort(["src", "rank"]))
scored.write_parquet({out!r}{level})
print(json.dumps({{"seconds": time.perf_counter() - started, "rows": frame.height,
                  "peak_rss_mib": peak_rss_mib()}}))
"""


def make_inputs(folder: Path, nodes: int, pairs: int, seed: int) -> dict[str, tuple[Path, Path]]:
    """For each id kind: (id map file, pairs file)."""
    from ncnc.core.ids import IdMap

    rng = np.random.default_rng(seed)
    src, dst = rng.integers(0, nodes, pairs), rng.integers(0, nodes, pairs)
    made = {}
    for kind in ("integer", "string"):
        id_map_path, pairs_path = folder / f"ids_{kind}.parquet", folder / f"pairs_{kind}.parquet"
        if kind == "integer":
            ids = np.arange(nodes, dtype=np.int64) + INTEGER_OFFSET
            frame = pl.DataFrame({"src": ids[src], "dst": ids[dst]})
        else:
            ids = np.array([f"u{k}" for k in range(nodes)], dtype=object)
            frame = pl.DataFrame({"src": ids[src], "dst": ids[dst]})
        IdMap.from_ids(pl.Series(ids)).save(id_map_path)
        frame.write_parquet(pairs_path)
        made[kind] = (id_map_path, pairs_path)
    return made


def run(code: str) -> dict:
    # Each run starts with no dirty pages of the previous one left to write back: the floors
    # never flush theirs, and the kernel would write them while the next run works.
    os.sync()
    done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                          text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1_000_000)
    parser.add_argument("--pairs", type=int, default=5_000_000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=65_536)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/ncnc-bench-host"))
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks/results/host_cpu.json")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    inputs = make_inputs(args.workdir, args.nodes, args.pairs, seed=0)
    variants = {"all rows": ("", 0), "top 20 per source": ("top_k=20, per_source=True, ", 20)}
    rows = []
    for kind, (id_map, pairs) in inputs.items():
        for name, (options, top) in variants.items():
            # What a user would run instead: the plain read + write (polars' defaults: zstd level
            # 3), the same at the job's own level 1, and for a top K the same ranking in polars.
            references = {"floor": (0, ""), "floor_zstd1": (0, ", compression_level=1")}
            if top:
                references["polars_top_k"] = (top, "")
            runs: dict[str, list[dict]] = {"job": [], **{ref: [] for ref in references}}
            for _ in range(args.repeats):  # interleaved: job, floors, job, floors, ...
                runs["job"].append(run(JOB.format(
                    threads=args.threads, id_map=str(id_map), pairs=str(pairs),
                    out=str(args.workdir / "job.parquet"),
                    options=f"{options}batch_size={args.batch_size}")))
                for ref, (per_source_top, level) in references.items():
                    runs[ref].append(run(FLOOR.format(
                        pairs=str(pairs), out=str(args.workdir / "floor.parquet"),
                        per_source_top=per_source_top, level=level)))
            best = {what: min(done, key=lambda r: r["seconds"]) for what, done in runs.items()}
            job = best["job"]
            row = {"ids": kind, "job": name, "pairs": job["rows"],
                   **{f"{what}_seconds": [round(r["seconds"], 3) for r in done]
                      for what, done in runs.items()},
                   "job_pairs_per_second": round(job["rows"] / job["seconds"]),
                   "floor_pairs_per_second": round(job["rows"] / best["floor"]["seconds"]),
                   **{f"ratio_to_{ref}": round(job["seconds"] / best[ref]["seconds"], 2)
                      for ref in references},
                   "job_peak_rss_mib": round(max(r["peak_rss_mib"] for r in runs["job"])),
                   "floor_peak_rss_mib": round(max(r["peak_rss_mib"] for r in runs["floor"]))}
            rows.append(row)
            ratios = ", ".join(f"{row[f'ratio_to_{ref}']:.2f}x {ref}" for ref in references)
            print(f"{kind:8s} {name:18s} job {row['job_pairs_per_second']:>10,} pairs/s "
                  f"({row['job_seconds']} s)  floor {row['floor_pairs_per_second']:>10,} pairs/s "
                  f"({row['floor_seconds']} s)  ratio {ratios}  peak RSS job "
                  f"{row['job_peak_rss_mib']} MiB, floor {row['floor_peak_rss_mib']} MiB",
                  flush=True)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps({
        "command": " ".join(sys.argv), "nodes": args.nodes, "pairs": args.pairs,
        "threads": args.threads, "batch_size": args.batch_size, "repeats": args.repeats,
        "machine": platform.processor() or platform.machine(),
        "measured": time.strftime("%Y-%m-%d %H:%M"), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
