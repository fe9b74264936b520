"""`make demo`: the whole ncnc story on a generated graph, through the real CLI.

generate a graph -> ncnc train (NCNC) -> ncnc evaluate -> ncnc export -> ncnc candidates ->
ncnc score --top-k --per-source -> print the top recommendations and the throughput.

Everything is written under ``demo_output/`` (or the folder given as the first argument).
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import polars as pl

ROOT = Path(__file__).resolve().parents[1]
NODES = 20_000


def ncnc(*args: str) -> dict:
    """Run one ``ncnc`` command as a user would, echoing it; return its JSON output."""
    command = [str(Path(sys.executable).with_name("ncnc")), *args]
    print(f"\n$ ncnc {shlex.join(args)}", flush=True)
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    if done.returncode != 0:
        sys.exit(f"demo: `ncnc {args[0]}` failed with exit code {done.returncode}")
    print(f"  ({time.perf_counter() - started:.1f} s)", flush=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "demo_output"
    out.mkdir(parents=True, exist_ok=True)
    from ncnc.trainer.synthetic import community_graph

    print(f"Generating a graph of {NODES:,} users with communities and friend-of-friend links...")
    graph = community_graph(NODES, avg_degree=8, num_communities=30, feature_dim=16,
                            string_ids=True, seed=7)
    edges, features = out / "edges.parquet", out / "features.parquet"
    graph.edges.write_parquet(edges)
    graph.features.write_parquet(features)
    print(f"  {graph.edges.height:,} edges -> {edges}")

    checkpoint, bundle = out / "checkpoint", out / "bundle"
    summary = ncnc("train", "--model", "ncnc", "--edges", str(edges), "--features", str(features),
                   "--config", str(ROOT / "examples" / "demo_config.toml"), "--out",
                   str(checkpoint))
    print(f"  best epoch {summary['best_epoch']}: validation hits@100 "
          f"{summary['valid']['hits@100']:.3f}")
    metrics = ncnc("evaluate", "--checkpoint", str(checkpoint))
    print(f"  held-out test: hits@100 {metrics['hits@100']:.3f}, auc {metrics['auc']:.3f}")
    exported = ncnc("export", "--checkpoint", str(checkpoint), "--out", str(bundle))
    parity = exported["parity"]
    print(f"  bundle validated on {parity['pairs']:,} pairs: max |diff| ONNX "
          f"{parity['onnx_max_abs_diff']:.1e}, torch.export {parity['torch_export_max_abs_diff']:.1e}")
    candidates = out / "candidates.parquet"
    listed = ncnc("candidates", "--bundle", str(bundle), "--out", str(candidates),
                  "--both-directions", "--quiet")
    print(f"  {listed['pairs']:,} candidate pairs two hops apart")
    recommendations = out / "recommendations.parquet"
    report = ncnc("score", "--bundle", str(bundle), "--pairs", str(candidates), "--out",
                  str(recommendations), "--top-k", "5", "--per-source", "--report",
                  str(out / "score_report.json"))
    top = pl.read_parquet(recommendations)
    print("\nTop recommendations for the first three users:")
    for user in top["src"].unique(maintain_order=True).head(3):
        rows = top.filter(pl.col("src") == user)
        picks = ", ".join(f"{d} ({p:.2f})" for d, p in zip(rows["dst"], rows["prob"]))
        print(f"  {user}: {picks}")
    print(f"\nScored {report['rows_scored']:,} pairs in {report['seconds']:.1f} s "
          f"({report['pairs_per_second']:,.0f} pairs/s, peak RSS {report['peak_rss_mib']:.0f} MiB)")
    print(f"Outputs: checkpoint {checkpoint}\n         bundle {bundle}\n"
          f"         recommendations {recommendations}\n"
          f"         run report {out / 'score_report.json'}")


if __name__ == "__main__":
    main()
