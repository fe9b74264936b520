"""NCNC's completion cap (the paper's tstdeg) against accuracy and speed.

    python benchmarks/cap_curve.py                         # cora, citeseer, heavy_tail
    python benchmarks/cap_curve.py --graphs cora --epochs 30

NCNC scores one inner pair per member of each completion set, so a pair's cost grows with its
two degrees and a heavy-tailed graph is dominated by its hubs. For each graph: train NCNC once
(seed 0; the Planetoid presets for Cora and CiteSeer, the ``--edges`` defaults for the generated
graph), then for every cap: test HR@100 of the model scoring with that cap (the checkpoint's
test split and negatives), and the bundle scorer's pairs/s at that cap on random pairs plus pairs
two hops apart (an export of the checkpoint, its cap set in memory: the engine reads the cap from
the spec). The default for ``--edges`` graphs is the smallest cap within 0.5 points of the
uncapped HR@100 on every graph.

Each finished (graph, cap) is appended to ``benchmarks/results/cap_curve_runs.jsonl`` and skipped
when the script runs again (resumable); ``benchmarks/results/cap_curve.json`` and
``docs/cap_curve.png`` hold the table and the curves.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch
from accuracy import CODE_VERSION, DATASET_DIRS, DEFAULT_PLANETOID

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CAPS = [-1, 4, 8, 16, 32, 64, 128]
TOLERANCE = 0.005  # HR@100 points (as a fraction) a default cap may lose against no cap


def train(graph: str, workdir: Path, epochs: int | None, data_root: Path) -> Path:
    """A trained NCNC checkpoint of ``graph`` (cached in ``workdir``)."""
    import ncnc
    from ncnc.trainer.synthetic import community_graph

    checkpoint = workdir / f"ck_{graph}"
    if (checkpoint / "config.json").exists():
        return checkpoint
    train_settings = {"epochs": epochs} if epochs else {}
    if graph in DATASET_DIRS:
        request = ncnc.TrainRequest(model="ncnc", out=checkpoint, dataset=graph,
                                    data_root=data_root, progress=False,
                                    train_overrides=train_settings)
    else:  # heavy-tailed: 20k nodes of mean degree 10, Pareto node weights
        synthetic = community_graph(20_000, avg_degree=10, num_communities=40, feature_dim=16,
                                    seed=3)
        synthetic.edges.write_parquet(workdir / "heavy_edges.parquet")
        synthetic.features.write_parquet(workdir / "heavy_features.parquet")
        request = ncnc.TrainRequest(model="ncnc", out=checkpoint,
                                    edges=workdir / "heavy_edges.parquet",
                                    features=workdir / "heavy_features.parquet", progress=False,
                                    train_overrides={"test_fraction": 0.1, **train_settings})
    ncnc.train(request)
    return checkpoint


def test_hits(checkpoint: Path, cap: int) -> dict[str, float]:
    """HR@100 and AUC of the checkpoint's test split, scored with completion cap ``cap``."""
    from ncnc.trainer.checkpoint import load_checkpoint
    from ncnc.trainer.training import TrainingGraph, evaluate_split

    ck = load_checkpoint(checkpoint)
    ck.model.predictor.cfg = dataclasses.replace(ck.model.predictor.cfg, test_cap=cap)
    graph = TrainingGraph(torch.cat([ck.split.train, ck.split.valid]),
                          ck.config.model.num_nodes).graph
    metrics = evaluate_split(ck.model, ck.features, graph, ck.split.test, ck.split.test_neg,
                             ck.config.train.eval_batch_size)
    return {"hits@100": metrics["hits@100"], "auc": metrics["auc"]}


def pairs_per_second(bundle: Path, cap: int, pairs: torch.Tensor, repeats: int = 2) -> float:
    """The bundle scorer's rate at completion cap ``cap`` (no memo: each cap scores afresh)."""
    import ncnc
    from ncnc.scorer.engine import BatchScorer

    loaded = ncnc.load_bundle(bundle)
    loaded.spec = dataclasses.replace(loaded.spec, cap=cap)
    engine = BatchScorer(loaded, "cpu", memo_mib=0)
    engine.score_logits(pairs[:1000])  # warm-up: compiled kernels, onnxruntime's arena
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for chunk in pairs.split(65_536):
            engine.score_logits(chunk)
        best = min(best, time.perf_counter() - started)
    return pairs.size(0) / best


def scoring_pairs(bundle: Path, count: int) -> torch.Tensor:
    """Half random pairs, half pairs two hops apart, over the bundle's graph."""
    import ncnc

    graph = ncnc.load_bundle(bundle).graph
    rng = np.random.default_rng(0)
    n = graph.num_nodes
    random = rng.integers(0, n, (count // 2, 2))
    indptr, indices = graph.indptr.numpy(), graph.indices.numpy()
    degree = np.diff(indptr)
    middle = rng.choice(np.flatnonzero(degree >= 2), count - count // 2)

    def neighbour() -> np.ndarray:  # a random neighbour of each middle node
        return indices[indptr[middle] + (rng.random(middle.size) * degree[middle]).astype(np.int64)]

    two_hop = np.stack([neighbour(), neighbour()], 1)
    return torch.from_numpy(np.concatenate([random, two_hop]).astype(np.int64))


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_hits, ax_speed) = plt.subplots(1, 2, figsize=(10, 4))
    for graph in sorted({r["graph"] for r in rows}):
        mine = sorted((r for r in rows if r["graph"] == graph), key=lambda r: r["cap_order"])
        labels = [("none" if r["cap"] < 0 else str(r["cap"])) for r in mine]
        ax_hits.plot(labels, [100 * r["hits@100"] for r in mine], marker="o", label=graph)
        ax_speed.plot(labels, [r["pairs_per_second"] for r in mine], marker="o", label=graph)
    ax_hits.set(xlabel="completion cap", ylabel="test HR@100 (%)", title="accuracy")
    ax_speed.set(xlabel="completion cap", ylabel="NCNC pairs/s (2 threads)", title="speed",
                 yscale="log")
    for ax in (ax_hits, ax_speed):
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def default_cap(rows: list[dict]) -> int | None:
    """The smallest cap within TOLERANCE of the uncapped HR@100 on every graph measured."""
    graphs = {r["graph"] for r in rows}
    for cap in sorted(c for c in CAPS if c > 0):
        ok = True
        for graph in graphs:
            by_cap = {r["cap"]: r for r in rows if r["graph"] == graph}
            if cap not in by_cap or -1 not in by_cap:
                return None
            ok &= by_cap[cap]["hits@100"] >= by_cap[-1]["hits@100"] - TOLERANCE
        if ok:
            return cap
    return -1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--graphs", nargs="+", default=["cora", "citeseer", "heavy_tail"])
    parser.add_argument("--caps", nargs="+", type=int, default=CAPS)
    parser.add_argument("--epochs", type=int, help="training epochs (default: the preset's)")
    parser.add_argument("--pairs", type=int, default=20_000, help="pairs timed per cap")
    parser.add_argument("--data-root", type=Path, default=DEFAULT_PLANETOID)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/ncnc-cap-curve"))
    args = parser.parse_args()
    import ncnc

    torch.set_num_threads(2)
    args.workdir.mkdir(parents=True, exist_ok=True)
    runs = RESULTS / "cap_curve_runs.jsonl"
    done = [json.loads(line) for line in runs.read_text().splitlines()] if runs.exists() else []
    for graph in args.graphs:
        checkpoint = train(graph, args.workdir, args.epochs, args.data_root)
        bundle = args.workdir / f"bundle_{graph}"
        if not (bundle / "manifest.json").exists():
            ncnc.export(checkpoint, bundle)
        pairs = scoring_pairs(bundle, args.pairs)
        for cap in args.caps:
            if any(r["graph"] == graph and r["cap"] == cap for r in done):
                continue
            row = {"graph": graph, "cap": cap, "cap_order": CAPS.index(cap) if cap in CAPS else cap,
                   **test_hits(checkpoint, cap),
                   "pairs_per_second": round(pairs_per_second(bundle, cap, pairs)),
                   "timed_pairs": pairs.size(0), "epochs": args.epochs, "code": CODE_VERSION}
            done.append(row)
            with runs.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)
    chosen = default_cap(done)
    summary = {"tolerance": TOLERANCE, "default_cap_for_edges_graphs": chosen, "rows": done,
               "command": "python benchmarks/cap_curve.py " + " ".join(
                   f"--graphs {' '.join(args.graphs)}".split())}
    (RESULTS / "cap_curve.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot(done, ROOT / "docs" / "cap_curve.png")
    print(f"smallest cap within {100 * TOLERANCE:.1f} points of no cap on every graph: {chosen}")


if __name__ == "__main__":
    main()
