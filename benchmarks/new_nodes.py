"""Quality on nodes that joined after training: the inductive export against retraining and
Adamic-Adar (issue 15; docs/growing-graphs.md).

Protocol, per dataset and seed:

1. Hold out 10% of the nodes at random, with every edge that touches them: the new nodes.
2. Split the held-out nodes' edges at random: half are the evaluation positives, absent from
   every graph; the other half are the edges the new nodes join with. Today's snapshot is the
   full graph without the evaluation positives (a positive inside the graph would leak into the
   encoder's propagation and NCNC's completion).
3. Negatives: random non-edges of the full graph with at least one held-out endpoint (a held-out
   node and any other node), as many as the positives.
4. Methods, all scored on the snapshot graph:
   - ``inductive``: train on the graph without the held-out nodes, ``ncnc export`` with today's
     snapshot (and its features), ``ncnc evaluate --bundle`` (featureless: once per cold-start
     rule, ``inductive-mean`` and ``inductive-zero``, from the same checkpoint);
   - ``retrained``: train on the snapshot (every node), export, evaluate: the upper bound;
   - ``adamic-adar`` on the snapshot.
   Models are selected on a random 10% of their own training graph's edges (best HR@100).
5. HR@100 (OGB: positives above the 100th best negative) and AUC; ``isolated_auc``: AUC of the
   pairs touching a held-out node left without any snapshot edge (its pairs have no common
   neighbours), which measures the rule for nodes without edges alone.

Each finished (dataset, seed, method) run is appended to ``benchmarks/results/new_nodes_runs.jsonl``
and skipped when the script runs again, so a sweep can be stopped and continued;
``benchmarks/results/new_nodes.json`` holds the summary. The machine is shared: run it with
``nice -n 10``; it uses one thread (on the loaded 2-core machine two threads took 4.5x the CPU
time per epoch of one, measured 2026-12-01: 40.5 against 8.9 CPU seconds for 8 NCN epochs).

    nice -n 10 python benchmarks/new_nodes.py                           # the sweep (resumable)
    python benchmarks/new_nodes.py --datasets cora --seeds 1 --epochs 3  # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from accuracy import DEFAULT_PLANETOID, RESULTS, code_version, copy_planetoid

DATASETS = ("cora", "citeseer", "cora-featureless", "synthetic-100k")
METHODS = ("inductive", "retrained", "adamic-adar")
NODE_FRACTION = 0.1
TARGET_FRACTION = 0.5


@dataclass(frozen=True)
class FullGraph:
    num_nodes: int
    edges: np.ndarray  # [E, 2] int64, each undirected edge once, src < dst
    features: np.ndarray | None  # [num_nodes, F] float32
    preset: str | None  # the ModelConfig / TrainConfig preset of ncnc.trainer.config.PRESETS


@dataclass(frozen=True)
class Holdout:
    """One seed's new nodes and evaluation pairs (node ids are the full graph's indices)."""

    new: np.ndarray  # [num_nodes] bool: held out of training
    old_edges: np.ndarray  # edges between kept nodes: the training graph of ``inductive``
    snapshot_edges: np.ndarray  # every edge but the positives: today's graph
    pos: np.ndarray  # held-out nodes' edges kept out of every graph
    neg: np.ndarray  # non-edges with at least one held-out endpoint


def load_graph(name: str, planetoid: Path) -> FullGraph:
    if name == "synthetic-100k":
        from ncnc.trainer.synthetic import community_graph

        graph = community_graph(100_000, avg_degree=8, num_communities=50, feature_dim=16, seed=0)
        edges = graph.edges.select("src", "dst").to_numpy().astype(np.int64)
        features = graph.features.drop("node").to_numpy().astype(np.float32)
        return FullGraph(100_000, edges, features, None)
    from ncnc.trainer.data import load_planetoid

    base = name.removesuffix("-featureless")
    data = load_planetoid(base, planetoid)
    features = None if name.endswith("-featureless") else data.features.numpy()
    return FullGraph(data.num_nodes, data.edges.numpy(), features, base)


def hold_out(graph: FullGraph, seed: int) -> Holdout:
    rng = np.random.default_rng(seed)
    n = graph.num_nodes
    new = np.zeros(n, dtype=bool)
    new[rng.choice(n, int(NODE_FRACTION * n), replace=False)] = True
    touches = new[graph.edges].any(1)
    held = graph.edges[touches]
    target = rng.random(held.shape[0]) < TARGET_FRACTION
    pos = held[target]
    snapshot_edges = np.concatenate([graph.edges[~touches], held[~target]])
    return Holdout(new, graph.edges[~touches], snapshot_edges, pos,
                   _negatives(graph, new, pos.shape[0], rng))


def _negatives(graph: FullGraph, new: np.ndarray, count: int,
               rng: np.random.Generator) -> np.ndarray:
    n = graph.num_nodes
    existing = set((graph.edges[:, 0] * n + graph.edges[:, 1]).tolist())
    held = np.flatnonzero(new)
    chosen: dict[int, None] = {}  # keys in draw order
    while len(chosen) < count:
        a = held[rng.integers(0, held.size, 2 * count)]
        b = rng.integers(0, n, 2 * count)
        for key in (np.minimum(a, b) * n + np.maximum(a, b))[a != b].tolist():
            if key not in existing:
                chosen.setdefault(key)
    keys = np.fromiter(chosen, dtype=np.int64)[:count]
    return np.stack([keys // n, keys % n], 1)


def write_edges(path: Path, edges: np.ndarray) -> Path:
    pl.DataFrame({"src": edges[:, 0], "dst": edges[:, 1]}).write_parquet(path)
    return path


def write_nodes(path: Path, num_nodes: int) -> Path:
    pl.DataFrame({"node": np.arange(num_nodes, dtype=np.int64)}).write_parquet(path)
    return path


def write_features(path: Path, graph: FullGraph, nodes: np.ndarray) -> Path | None:
    if graph.features is None:
        return None
    values = graph.features[nodes]
    pl.DataFrame({"node": nodes.astype(np.int64)}).with_columns(
        pl.Series("x", values, dtype=pl.Array(pl.Float32, values.shape[1]))
    ).write_parquet(path)
    return path


def train_overrides(graph: FullGraph, args: argparse.Namespace,
                    seed: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The reference settings of the dataset (Planetoid), or small ones for the 100k graph."""
    from ncnc.trainer.config import PRESETS

    if graph.preset is not None:
        model = dict(PRESETS[graph.preset]["model"])
        train = dict(PRESETS[graph.preset]["train"])
        epochs = args.epochs
    else:  # 100k nodes: a smaller model, fewer epochs and a cap on NCNC's completion sets
        model = {"hidden": 64, "train_cap": 16, "test_cap": 16}
        train = {"batch_size": 4096}
        epochs = args.large_epochs
    train.update(epochs=epochs, seed=seed, val_fraction=0.1, test_fraction=0.0)
    return model, train


def train_checkpoint(out: Path, edges: Path, features: Path | None, graph: FullGraph,
                     args: argparse.Namespace, seed: int) -> dict[str, Any]:
    from ncnc.trainer.api import TrainRequest, train

    model, train_settings = train_overrides(graph, args, seed)
    return train(TrainRequest(model=args.model, out=out, edges=edges, features=features,
                              device="cpu", progress=False, model_overrides=model,
                              train_overrides=train_settings))


def bundle_metrics(bundle: Path, pairs: dict[str, Path]) -> dict[str, Any]:
    """``ncnc evaluate --bundle`` on all pairs, and the AUC of the pairs without edges."""
    from ncnc.exporter import evaluate_bundle

    everything = evaluate_bundle(bundle, pairs["pos"], pairs["neg"], device="cpu")
    isolated = evaluate_bundle(bundle, pairs["pos_isolated"], pairs["neg_isolated"],
                               device="cpu")
    return {"hits@100": everything["hits@100"], "auc": everything["auc"],
            "isolated_auc": isolated["auc"], "isolated_pos": isolated["num_pos"],
            "num_pos": everything["num_pos"], "num_neg": everything["num_neg"],
            "snapshot": everything["snapshot"]}


def run_inductive(graph: FullGraph, holdout: Holdout, files: dict[str, Path], tmp: Path,
                  args: argparse.Namespace, seed: int) -> dict[str, Any]:
    from ncnc.exporter import export_bundle

    kept = np.flatnonzero(~holdout.new)
    old_edges = write_edges(tmp / "old_edges.parquet", holdout.old_edges)
    old_features = write_features(tmp / "old_features.parquet", graph, kept)
    summary = train_checkpoint(tmp / "ck_old", old_edges, old_features, graph, args, seed)
    rules = ["mean"] if graph.features is not None else ["mean", "zero"]
    results = {}
    for rule in rules:
        bundle = tmp / f"bundle_{rule}"
        export_bundle(tmp / "ck_old", bundle, files["snapshot"], features=files["features"],
                      nodes=files["nodes"], new_nodes=rule)
        results[rule] = bundle_metrics(bundle, files)
        shutil.rmtree(bundle)
    return {"best_epoch": summary["best_epoch"], "by_rule": results}


def run_retrained(graph: FullGraph, files: dict[str, Path], tmp: Path,
                  args: argparse.Namespace, seed: int) -> dict[str, Any]:
    from ncnc.exporter import export_bundle

    summary = train_checkpoint(tmp / "ck_full", files["snapshot"], files["features"], graph,
                               args, seed)
    bundle = tmp / "bundle_full"
    export_bundle(tmp / "ck_full", bundle, files["snapshot"], features=files["features"],
                  nodes=files["nodes"])
    return {"best_epoch": summary["best_epoch"], **bundle_metrics(bundle, files)}


def run_adamic_adar(graph: FullGraph, holdout: Holdout, isolated: np.ndarray) -> dict[str, Any]:
    """``sum over common neighbours w of 1 / log(deg w)`` on the snapshot graph."""
    import torch

    from ncnc.trainer.metrics import link_metrics
    from ncnc.triton_kernels import build_csr, common_neighbor_sum

    csr = build_csr(torch.from_numpy(holdout.snapshot_edges), graph.num_nodes)
    degree = csr.degree().double()
    weight = torch.where(degree > 1, 1.0 / degree.clamp(min=2).log(), 0.0).float().unsqueeze(1)

    def score(pairs: np.ndarray) -> torch.Tensor:
        sums, _ = common_neighbor_sum(csr.indptr, csr.indices, weight, torch.from_numpy(pairs))
        return sums.squeeze(1)

    pos, neg = score(holdout.pos), score(holdout.neg)
    iso_pos, iso_neg = _isolated_masks(holdout, isolated)
    everything = link_metrics(pos, neg)
    return {"hits@100": everything["hits@100"], "auc": everything["auc"],
            "isolated_auc": link_metrics(pos[iso_pos], neg[iso_neg])["auc"],
            "isolated_pos": int(iso_pos.sum()), "num_pos": everything["num_pos"],
            "num_neg": everything["num_neg"]}


def _isolated_masks(holdout: Holdout, isolated: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return isolated[holdout.pos].any(1), isolated[holdout.neg].any(1)


def pair_files(graph: FullGraph, holdout: Holdout, tmp: Path) -> dict[str, Path]:
    degree = np.bincount(holdout.snapshot_edges.ravel(), minlength=graph.num_nodes)
    isolated = holdout.new & (degree == 0)
    iso_pos, iso_neg = _isolated_masks(holdout, isolated)
    return {
        "snapshot": write_edges(tmp / "snapshot.parquet", holdout.snapshot_edges),
        # every node is in today's graph, the held-out ones left without edges included
        "nodes": write_nodes(tmp / "nodes.parquet", graph.num_nodes),
        "features": write_features(tmp / "features.parquet", graph, np.arange(graph.num_nodes)),
        "pos": write_edges(tmp / "pos.parquet", holdout.pos),
        "neg": write_edges(tmp / "neg.parquet", holdout.neg),
        "pos_isolated": write_edges(tmp / "pos_isolated.parquet", holdout.pos[iso_pos]),
        "neg_isolated": write_edges(tmp / "neg_isolated.parquet", holdout.neg[iso_neg]),
    }


def load_runs(path: Path) -> dict[tuple[str, int, str], dict]:
    runs = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                run = json.loads(line)
                runs[(run["dataset"], run["seed"], run["method"])] = run
    return runs


def rows_of(run: dict) -> dict[str, dict]:
    """The table rows of one run: ``inductive`` gives one row per cold-start rule."""
    if run["method"] == "inductive":
        rules = run["result"]["by_rule"]
        if len(rules) == 1:
            return {"inductive": rules["mean"]}
        return {f"inductive-{rule}": metrics for rule, metrics in rules.items()}
    return {run["method"]: run["result"]}


def summarise(runs: dict[tuple[str, int, str], dict]) -> dict[str, Any]:
    table: dict[str, Any] = {}
    for (dataset, _, _), run in sorted(runs.items()):
        for row, metrics in rows_of(run).items():
            cell = table.setdefault(dataset, {}).setdefault(row, {"hits@100": [], "auc": [],
                                                                   "isolated_auc": [],
                                                                   "seeds": []})
            for key in ("hits@100", "auc", "isolated_auc"):
                cell[key].append(100 * metrics[key])
            cell["seeds"].append(run["seed"])
    summary: dict[str, Any] = {}
    for dataset, rows in table.items():
        for row, cell in rows.items():
            summary.setdefault(dataset, {})[row] = {
                **{key: _mean_std(cell[key]) for key in ("hits@100", "auc", "isolated_auc")},
                "seeds": cell["seeds"],
            }
    return summary


def _mean_std(values: list[float]) -> dict[str, float]:
    finite = [v for v in values if v == v]  # AUC of an empty subset is NaN
    if not finite:
        return {"mean": float("nan"), "std": float("nan")}
    std = statistics.stdev(finite) if len(finite) > 1 else 0.0
    return {"mean": round(statistics.mean(finite), 2), "std": round(std, 2)}


def markdown(summary: dict[str, Any]) -> str:
    lines = ["| dataset | method | HR@100 (%) | AUC (%) | AUC, new nodes without edges (%) | seeds |",
             "|---|---|---|---|---|---|"]
    for dataset, rows in summary.items():
        for row, cell in rows.items():
            shown = [f"{cell[k]['mean']:.2f} ± {cell[k]['std']:.2f}"
                     for k in ("hits@100", "auc", "isolated_auc")]
            lines.append(f"| {dataset} | {row} | {' | '.join(shown)} | "
                         f"{', '.join(map(str, cell['seeds']))} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1")
    parser.add_argument("--model", default="ncnc", choices=["gae", "ncn", "ncnc"])
    parser.add_argument("--epochs", type=int, default=50, help="Planetoid training epochs")
    parser.add_argument("--large-epochs", type=int, default=3,
                        help="training epochs on the 100k-node graph")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--planetoid", type=Path, default=DEFAULT_PLANETOID)
    parser.add_argument("--runs-file", type=Path, default=RESULTS / "new_nodes_runs.jsonl")
    parser.add_argument("--summary", type=Path, default=RESULTS / "new_nodes.json")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    args.runs_file.parent.mkdir(parents=True, exist_ok=True)
    runs = load_runs(args.runs_file)
    commit = code_version()
    with tempfile.TemporaryDirectory() as scratch:
        bases = sorted({d.removesuffix("-featureless") for d in args.datasets} - {"synthetic-100k"})
        planetoid = copy_planetoid(args.planetoid, bases, Path(scratch) / "planetoid")
        for dataset in args.datasets:
            todo = [(seed, method) for seed in range(args.seeds) for method in args.methods
                    if (dataset, seed, method) not in runs]
            if not todo:
                continue
            graph = load_graph(dataset, planetoid)
            for seed in sorted({seed for seed, _ in todo}):
                holdout = hold_out(graph, seed)
                with tempfile.TemporaryDirectory(dir=scratch) as work:
                    tmp = Path(work)
                    files = pair_files(graph, holdout, tmp)
                    for method in [m for s, m in todo if s == seed]:
                        run = run_one(dataset, seed, method, graph, holdout, files, tmp, args)
                        run["commit"] = commit
                        runs[(dataset, seed, method)] = run
                        with args.runs_file.open("a") as f:
                            f.write(json.dumps(run) + "\n")
                        print(json.dumps(run), flush=True)
                        args.summary.write_text(json.dumps(summarise(runs), indent=2) + "\n")
    summary = summarise(runs)
    args.summary.write_text(json.dumps(summary, indent=2) + "\n")
    print(markdown(summary))


def run_one(dataset: str, seed: int, method: str, graph: FullGraph, holdout: Holdout,
            files: dict[str, Path], tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    started, cpu = time.perf_counter(), time.process_time()
    if method == "inductive":
        result = run_inductive(graph, holdout, files, tmp, args, seed)
    elif method == "retrained":
        result = run_retrained(graph, files, tmp, args, seed)
    else:
        degree = np.bincount(holdout.snapshot_edges.ravel(), minlength=graph.num_nodes)
        result = run_adamic_adar(graph, holdout, holdout.new & (degree == 0))
    trained = method != "adamic-adar"
    return {
        "dataset": dataset, "seed": seed, "method": method,
        "model": args.model if trained else None,
        "epochs": train_overrides(graph, args, seed)[1]["epochs"] if trained else None,
        "nodes": graph.num_nodes, "new_nodes": int(holdout.new.sum()),
        "positives": int(holdout.pos.shape[0]), "negatives": int(holdout.neg.shape[0]),
        "result": result,
        "seconds": round(time.perf_counter() - started, 1),
        "cpu_seconds": round(time.process_time() - cpu, 1),
        "load_average": round(os.getloadavg()[0], 2),
    }


if __name__ == "__main__":
    main()
