"""What explanations cost: ``ncnc score --top-k 20 --per-source`` with and without ``--explain 3``.

On the demo's data (examples/demo.py: a community graph of 20,000 users, NCNC trained with
examples/demo_config.toml, the candidates of ``ncnc candidates --both-directions``), or with
``--nodes`` a smaller graph of the same generator, this script scores the candidates with and
without ``--explain`` in alternating passes (plain, explained, plain, explained, ...), each pass
its own ``ncnc score`` process, and prints for each mode its pairs/s (input pairs over the job's
seconds, as the run report gives them) and the ratio of the two, with the load average seen
around each pass. It also counts the neighbour-set members of the explained rows: explaining a
row costs one head evaluation per member (plus one), which is what the ratio pays for.

Everything generated lives in ``--workdir`` and is reused by later runs; figures go to
``benchmarks/results/explain_cpu.json``.

    python benchmarks/bench_explain.py                 # the demo's 20,000-user graph
    python benchmarks/bench_explain.py --nodes 5000    # a smaller graph, same generator
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from accuracy import CODE_VERSION  # taken at start

ROOT = Path(__file__).resolve().parents[1]
NCNC = str(Path(sys.executable).with_name("ncnc"))


def ncnc(*args: str) -> dict:
    """Run one ``ncnc`` command; its JSON output."""
    done = subprocess.run([NCNC, *args], cwd=ROOT, stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def build(workdir: Path, nodes: int) -> tuple[Path, Path]:
    """The demo's pipeline up to the candidates (reused when present): (bundle, candidates)."""
    from ncnc.trainer.synthetic import community_graph

    bundle, candidates = workdir / "bundle", workdir / "candidates.parquet"
    if candidates.exists():
        return bundle, candidates
    workdir.mkdir(parents=True, exist_ok=True)
    graph = community_graph(nodes, avg_degree=8, num_communities=30, feature_dim=16,
                            string_ids=True, seed=7)  # examples/demo.py's generator and seed
    graph.edges.write_parquet(workdir / "edges.parquet")
    graph.features.write_parquet(workdir / "features.parquet")
    ncnc("train", "--model", "ncnc", "--edges", str(workdir / "edges.parquet"), "--features",
         str(workdir / "features.parquet"), "--config",
         str(ROOT / "examples" / "demo_config.toml"), "--out", str(workdir / "checkpoint"),
         "--quiet")
    ncnc("export", "--checkpoint", str(workdir / "checkpoint"), "--out", str(bundle))
    ncnc("candidates", "--bundle", str(bundle), "--out", str(candidates), "--both-directions",
         "--quiet")
    return bundle, candidates


def score_pass(bundle: Path, candidates: Path, out: Path, top_k: int, explain: int | None
               ) -> dict:
    """One ``ncnc score`` process: its report's figures and the load average around it."""
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    extra = ["--explain", str(explain)] if explain else []
    report = ncnc("score", "--quiet", "--bundle", str(bundle), "--pairs", str(candidates),
                  "--out", str(out), "--top-k", str(top_k), "--per-source", *extra,
                  "--report", str(out.with_suffix(".json")))
    return {"pairs_per_second": report["pairs_per_second"], "seconds": report["seconds"],
            "process_seconds": round(time.perf_counter() - started, 1),
            "rows_read": report["rows_read"], "rows_written": report["rows_written"],
            "load_1min_before": round(load_before, 1),
            "load_1min_after": round(os.getloadavg()[0], 1)}


def members_per_row(bundle: Path, recommendations: Path) -> float:
    """Mean size of the explained rows' neighbour sets (common part plus capped completion sets,
    counted as drawn): the head evaluations an explanation costs, less one."""
    import polars as pl
    import torch

    from ncnc.scorer.bundle import load_bundle
    from ncnc.triton_kernels import neighbor_split

    loaded = load_bundle(bundle)
    rows = pl.read_parquet(recommendations, columns=["src", "dst"])
    pairs = torch.stack([loaded.id_map.to_index(rows[c], what=c) for c in ("src", "dst")], 1)
    split = neighbor_split(loaded.graph.indptr, loaded.graph.indices, pairs, loaded.spec.cap,
                           loaded.spec.cap_seed)
    members = sum(int(part.members.numel()) for part in (split.common, split.only_i, split.only_j))
    return members / max(1, rows.height)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=20_000, help="users (the demo: 20,000)")
    parser.add_argument("--top-k", type=int, default=20)
    parser.add_argument("--explain", type=int, default=3)
    parser.add_argument("--passes", type=int, default=2, help="passes of each mode")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/ncnc-bench-explain"))
    parser.add_argument("--results", type=Path,
                        default=ROOT / "benchmarks" / "results" / "explain_cpu.json")
    args = parser.parse_args()
    workdir = args.workdir / f"n{args.nodes}"
    bundle, candidates = build(workdir, args.nodes)
    passes: dict[str, list[dict]] = {"plain": [], "explained": []}
    for k in range(args.passes):
        for mode, explain in (("plain", None), ("explained", args.explain)):
            figures = score_pass(bundle, candidates, workdir / f"{mode}.parquet", args.top_k,
                                 explain)
            passes[mode].append(figures)
            print(json.dumps({"pass": k, "mode": mode, **figures}), flush=True)
    plain = statistics.median(p["pairs_per_second"] for p in passes["plain"])
    explained = statistics.median(p["pairs_per_second"] for p in passes["explained"])
    row = {
        "nodes": args.nodes, "pairs": passes["plain"][0]["rows_read"],
        "rows_written": passes["plain"][0]["rows_written"], "top_k": args.top_k,
        "explain": args.explain,
        "members_per_explained_row": round(members_per_row(bundle, workdir / "explained.parquet"),
                                           1),
        "plain_pairs_per_s": round(plain), "explained_pairs_per_s": round(explained),
        "explained_over_plain": round(explained / plain, 3),
        "passes": passes, "cpus": os.cpu_count(), "commit": CODE_VERSION,
        "command": " ".join(["python", *sys.argv]),
    }
    results = json.loads(args.results.read_text()) if args.results.exists() else {}
    results[f"ncnc_n{args.nodes}"] = row
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: v for k, v in row.items() if k != "passes"}), flush=True)


if __name__ == "__main__":
    main()
