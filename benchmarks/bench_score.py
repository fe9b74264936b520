"""Batch scoring throughput and memory: the bundle scorer against the eager PyTorch model.

On a generated graph (default 1M nodes, ~5M undirected edges, 16 features) and for NCN and NCNC
(hidden 256, untrained weights: speed does not depend on training), this script

1. writes candidate pairs to Parquet: half uniformly random, half two hops apart (where common
   neighbours exist), 1M pairs and 10M pairs (the 1M file is the 10M file's first rows);
2. scores the 1M pairs with ``ncnc score`` (the bundle scorer: Parquet in, Parquet out) and with
   the eager model (``LinkPredictionModel.score``: the encoder once, then the predictor per batch,
   compute only, no I/O), each in its own process so peak RSS is its own;
3. scores the 10M pairs with ``ncnc score`` and compares its peak RSS with the 1M run (with
   ``--eager-pairs`` below 1M, the bundle also scores the first ``--rss-pairs`` for that);
4. with ``--engine ray``, also scores the 10M pairs with ``ncnc score --engine ray`` (a local Ray,
   one actor per core, Ray's start included in the time) and reports its pairs/s against step 3
   and whether the two output files are identical.

Everything generated lives in ``--workdir`` and is reused by later runs; figures go to
``benchmarks/results/score_cpu.json``.

    python benchmarks/bench_score.py                       # the full benchmark
    python benchmarks/bench_score.py --nodes 100000 --pairs 1000000 --eager-pairs 200000
    python benchmarks/bench_score.py --models ncnc --eager-pairs 100000   # NCNC's eager is slow
    python benchmarks/bench_score.py --nodes 100000 --pairs 1000000 --eager-pairs 100000 \
        --models ncn --engine ray --workdir /tmp/ncnc-bench-ray \
        --results benchmarks/results/score_ray.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from accuracy import CODE_VERSION  # taken at start

ROOT = Path(__file__).resolve().parents[1]


class PairSampler:
    """Candidate pairs of a graph: half two hops apart (common neighbours exist), half uniform,
    interleaved so that any prefix has both kinds."""

    def __init__(self, edges, nodes: int) -> None:
        import numpy as np

        both = np.concatenate([edges, edges[:, ::-1]])
        self.both = both[np.argsort(both[:, 0], kind="stable")]
        self.starts = np.searchsorted(self.both[:, 0], np.arange(nodes + 1))
        self.nodes = nodes

    def sample(self, pairs: int, rng):
        import numpy as np
        import polars as pl

        half = pairs // 2
        pick = self.both[rng.integers(0, self.both.shape[0], half)]
        first, middle = pick[:, 0], pick[:, 1]
        degree_mid = self.starts[middle + 1] - self.starts[middle]
        third = self.both[self.starts[middle] + (rng.random(half) * degree_mid).astype(np.int64), 1]
        random_pairs = rng.integers(0, self.nodes, (pairs - half, 2))
        src = np.empty(pairs, np.int64)
        dst = np.empty(pairs, np.int64)
        src[0::2], dst[0::2] = first, third
        src[1::2], dst[1::2] = random_pairs[:, 0], random_pairs[:, 1]
        return pl.DataFrame({"src": src, "dst": dst})


def build_inputs(workdir: Path, nodes: int, degree: float, pairs: int, seed: int) -> Path:
    """Graph edges/features and the pairs files (cached in ``workdir``)."""
    import numpy as np
    import polars as pl

    from ncnc.trainer.synthetic import community_graph

    graph_dir = workdir / "graph"
    if not (graph_dir / "edges.parquet").exists():
        graph_dir.mkdir(parents=True, exist_ok=True)
        graph = community_graph(nodes, avg_degree=degree, num_communities=1000, feature_dim=16,
                                seed=seed)
        graph.features.write_parquet(graph_dir / "features.parquet")
        graph.edges.write_parquet(graph_dir / "edges.tmp.parquet")
        (graph_dir / "edges.tmp.parquet").rename(graph_dir / "edges.parquet")
    pairs_file = workdir / f"pairs_{pairs}.parquet"
    if not pairs_file.exists():
        sampler = PairSampler(pl.read_parquet(graph_dir / "edges.parquet").to_numpy(), nodes)
        frame = sampler.sample(pairs, np.random.default_rng(seed))
        frame.write_parquet(pairs_file.with_suffix(".tmp"), row_group_size=1_000_000)
        pairs_file.with_suffix(".tmp").rename(pairs_file)
    return graph_dir


def prefix_file(workdir: Path, full: Path, rows: int) -> Path:
    import polars as pl

    path = workdir / f"pairs_{rows}.parquet"
    if not path.exists():
        pl.scan_parquet(full).head(rows).collect().write_parquet(path, row_group_size=1_000_000)
    return path


def build_bundle(workdir: Path, graph_dir: Path, model: str) -> tuple[Path, Path]:
    """An untrained checkpoint of ``model`` over the whole graph, and its exported bundle."""
    import torch

    from ncnc.exporter import export_bundle
    from ncnc.trainer.checkpoint import save_checkpoint
    from ncnc.trainer.config import resolve_config
    from ncnc.trainer.data import load_edge_list
    from ncnc.trainer.model import LinkPredictionModel
    from ncnc.trainer.splits import EdgeSplit

    checkpoint, bundle = workdir / f"ck_{model}", workdir / f"bundle_{model}"
    if (bundle / "manifest.json").exists():
        return checkpoint, bundle
    data = load_edge_list(graph_dir / "edges.parquet", graph_dir / "features.parquet")
    cfg = resolve_config(model, dataset="cora", model_flags={
        "num_nodes": data.num_nodes, "in_features": data.features.size(1)})
    torch.manual_seed(0)
    empty = torch.zeros(0, 2, dtype=torch.long)
    valid = data.edges[:1000]
    split = EdgeSplit(train=data.edges[1000:], valid=valid, valid_neg=valid.flip(1),
                      test=empty, test_neg=empty)
    save_checkpoint(checkpoint, LinkPredictionModel(cfg.model), cfg, data.features,
                    data.id_map, split, {"note": "untrained, for throughput benchmarks"})
    started = time.perf_counter()
    export_bundle(checkpoint, bundle)
    print(f"exported {model} in {time.perf_counter() - started:.1f} s", flush=True)
    return checkpoint, bundle


EAGER = """
import json, sys, time
from pathlib import Path
import polars as pl, torch
from ncnc.trainer.checkpoint import load_checkpoint
from ncnc.trainer.training import TrainingGraph
from ncnc.scorer.job import peak_rss_mib
torch.set_num_threads({threads})
ck = load_checkpoint(Path({checkpoint!r}))
graph = TrainingGraph(torch.cat([ck.split.train, ck.split.valid]), ck.config.model.num_nodes).graph
frame = pl.read_parquet({pairs!r})
pairs = torch.stack([ck.id_map.to_index(frame["src"], what="src"),
                     ck.id_map.to_index(frame["dst"], what="dst")], 1)
started = time.perf_counter()
logits = ck.model.score(ck.features, graph, pairs, batch_size={batch_size})
seconds = time.perf_counter() - started
print(json.dumps({{"pairs": pairs.size(0), "seconds": seconds,
                  "pairs_per_second": pairs.size(0) / seconds,
                  "peak_rss_mib": peak_rss_mib()}}))
"""


def run_eager(checkpoint: Path, pairs: Path, batch_size: int, threads: int) -> dict:
    code = EAGER.format(checkpoint=str(checkpoint), pairs=str(pairs), batch_size=batch_size,
                        threads=threads)
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_bundle(bundle: Path, pairs: Path, out: Path, batch_size: int, *extra: str) -> dict:
    """``ncnc score`` in its own process (``extra``: more flags, e.g. the engine); its report."""
    report = out.with_suffix(".report.json")
    subprocess.run([str(Path(sys.executable).with_name("ncnc")), "score", "--bundle", str(bundle), "--pairs",
                    str(pairs), "--out", str(out), "--batch-size", str(batch_size), "--quiet",
                    "--device", "cpu", "--report", str(report), *extra],
                   check=True, capture_output=True, text=True, cwd=ROOT)
    return json.loads(report.read_text())


def ray_figures(bundle: Path, pairs: Path, local_out: Path, local: dict, out: Path,
                batch_size: int) -> dict:
    """Score ``pairs`` with ``--engine ray``: pairs/s against the single-process run ``local``
    (report of ``local_out``), and whether both outputs are the same."""
    import polars as pl

    ray = run_bundle(bundle, pairs, out, batch_size, "--engine", "ray")
    return {
        "ray_workers": ray["num_workers"],
        "ray_pairs_per_s": round(ray["pairs_per_second"]),
        "ray_seconds": round(ray["seconds"], 1),
        "ray_vs_local": round(ray["pairs_per_second"] / local["pairs_per_second"], 3),
        "ray_driver_peak_rss_mib": round(ray["peak_rss_mib"]),
        "ray_output_identical": pl.read_parquet(out).equals(pl.read_parquet(local_out)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1_000_000)
    parser.add_argument("--degree", type=float, default=10.0, help="average degree")
    parser.add_argument("--pairs", type=int, default=10_000_000)
    parser.add_argument("--eager-pairs", type=int, default=1_000_000,
                        help="pairs scored by both (the speed comparison)")
    parser.add_argument("--rss-pairs", type=int, default=1_000_000,
                        help="pairs of the bundle run whose peak RSS the full run is compared with")
    parser.add_argument("--models", nargs="+", default=["ncn", "ncnc"])
    parser.add_argument("--batch-size", type=int, default=65_536)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--engine", choices=["local", "ray"], default="local",
                        help="ray: also score the --pairs file on a local Ray (needs ncnc-toolchain[ray])")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/ncnc-bench-score"))
    parser.add_argument("--results", type=Path,
                        default=ROOT / "benchmarks" / "results" / "score_cpu.json")
    args = parser.parse_args()

    args.workdir.mkdir(parents=True, exist_ok=True)
    graph_dir = build_inputs(args.workdir, args.nodes, args.degree, args.pairs, seed=0)
    full = args.workdir / f"pairs_{args.pairs}.parquet"
    small = prefix_file(args.workdir, full, args.eager_pairs)
    results = json.loads(args.results.read_text()) if args.results.exists() else {}
    for model in args.models:
        checkpoint, bundle = build_bundle(args.workdir, graph_dir, model)
        eager = run_eager(checkpoint, small, args.batch_size, args.threads)
        bundle_small = run_bundle(bundle, small, args.workdir / f"scores_{model}_small.parquet",
                                  args.batch_size)
        bundle_rss = bundle_small
        if args.rss_pairs != args.eager_pairs:
            bundle_rss = run_bundle(bundle, prefix_file(args.workdir, full, args.rss_pairs),
                                    args.workdir / f"scores_{model}_rss.parquet", args.batch_size)
        full_out = args.workdir / f"scores_{model}_full.parquet"
        bundle_full = run_bundle(bundle, full, full_out, args.batch_size)
        row = {
            "nodes": args.nodes, "pairs_compared": args.eager_pairs, "pairs_full": args.pairs,
            "eager_pairs_per_s": round(eager["pairs_per_second"]),
            "bundle_pairs_per_s": round(bundle_small["pairs_per_second"]),
            "speedup": round(bundle_small["pairs_per_second"] / eager["pairs_per_second"], 2),
            "eager_peak_rss_mib": round(eager["peak_rss_mib"]),
            "pairs_rss_baseline": args.rss_pairs,
            "bundle_peak_rss_mib_small": round(bundle_rss["peak_rss_mib"]),
            "bundle_peak_rss_mib_full": round(bundle_full["peak_rss_mib"]),
            "rss_growth_full_vs_small": round(
                bundle_full["peak_rss_mib"] / bundle_rss["peak_rss_mib"] - 1, 3),
            "bundle_full_pairs_per_s": round(bundle_full["pairs_per_second"]),
            "bundle_full_seconds": round(bundle_full["seconds"], 1),
            "batch_size": args.batch_size, "threads": args.threads,
            "commit": CODE_VERSION, "command": " ".join(["python", *sys.argv]),
        }
        if args.engine == "ray":
            row.update(ray_figures(bundle, full, full_out, bundle_full,
                                   args.workdir / f"scores_{model}_full_ray.parquet",
                                   args.batch_size))
        results[model] = row
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(results, indent=2) + "\n")
        print(json.dumps({model: row}), flush=True)


if __name__ == "__main__":
    main()
