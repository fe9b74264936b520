"""NCNC's completion cap (the paper's tstdeg) against accuracy and speed.

    python benchmarks/cap_curve.py                         # cora, citeseer, heavy_tail
    python benchmarks/cap_curve.py --graphs cora --epochs 30
    python benchmarks/cap_curve.py --graphs heavy_tail --speed-only heavy_tail \
        --speed-head /tmp/ncnc-cap-curve/bundle_cora          # timing only, no training

NCNC scores one inner pair per member of each completion set, so a pair's cost grows with its
two degrees. For each graph: train NCNC once (seed 0; the Planetoid presets for Cora and
CiteSeer, the ``--edges`` defaults for the generated graph, ``--train-cap`` as its trndeg), then
for every cap: test HR@100 scored with that cap (the checkpoint's test split and negatives,
scored by the bundle, which export validates against the eager model), the completion pairs per
target pair, and the bundle scorer's pairs/s at that cap on random pairs plus pairs two hops
apart (an export of the checkpoint, its cap set in memory: the engine reads the cap from the
spec). The default for ``--edges`` graphs is the smallest cap within 0.5 points of the uncapped
HR@100 on every graph with HR@100 figures.

Each finished (graph, cap) is appended to ``benchmarks/results/cap_curve_runs.jsonl`` and skipped
when the script runs again (resumable); ``benchmarks/results/cap_curve.json`` and
``docs/cap_curve.png`` hold the table and the curves.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from accuracy import CODE_VERSION, DATASET_DIRS, DEFAULT_PLANETOID, copy_planetoid

if TYPE_CHECKING:
    from ncnc.scorer.bundle import Bundle
    from ncnc.triton_kernels import CSRGraph

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CAPS = [-1, 4, 8, 16, 32, 64, 128]
TOLERANCE = 0.005  # HR@100 points (as a fraction) a default cap may lose against no cap


HEAVY_TAIL = dict(num_nodes=20_000, avg_degree=10, num_communities=40, feature_dim=16, seed=0)


def heavy_tail_files(workdir: Path) -> tuple[Path, Path]:
    """The generated graph: 20k nodes of mean degree 10, Pareto node weights (string ids)."""
    from ncnc.trainer.synthetic import community_graph

    edges, features = workdir / "heavy_edges.parquet", workdir / "heavy_features.parquet"
    if not edges.exists():
        synthetic = community_graph(**HEAVY_TAIL, string_ids=True)
        synthetic.edges.write_parquet(edges)
        synthetic.features.write_parquet(features)
    return edges, features


def degree_report(graph) -> dict[str, float]:
    """Mean, median and max degree of the bundle's graph, and the degree-weighted mean degree
    (E[d^2]/E[d]: the completion-set size of the node at a random edge end)."""
    degree = graph.degree().double()
    return {"mean_degree": round(float(degree.mean()), 2),
            "median_degree": float(degree.median()), "max_degree": int(degree.max()),
            "max_over_mean": round(float(degree.max() / degree.mean()), 1),
            "edge_end_mean_degree": round(float((degree ** 2).mean() / degree.mean()), 1)}


def train(graph: str, workdir: Path, epochs: int | None, data_root: Path,
          train_cap: int) -> Path:
    """A trained NCNC checkpoint of ``graph`` (cached in ``workdir``), evaluated without a cap
    while training (so the curve does not depend on the default cap it chooses); the generated
    graph's training caps its completion sets at ``train_cap`` (the paper's trndeg)."""
    import ncnc

    checkpoint = workdir / f"ck_{graph}"
    if (checkpoint / "config.json").exists():
        return checkpoint
    train_settings = {"epochs": epochs} if epochs else {}
    if graph in DATASET_DIRS:  # PyG writes processed/ beside raw/: train on a copy
        request = ncnc.TrainRequest(model="ncnc", out=checkpoint, dataset=graph,
                                    data_root=copy_planetoid(data_root, [graph],
                                                             workdir / "planetoid"),
                                    progress=False, model_overrides={"test_cap": -1},
                                    train_overrides=train_settings)
    else:
        edges, features = heavy_tail_files(workdir)
        request = ncnc.TrainRequest(model="ncnc", out=checkpoint, edges=edges, features=features,
                                    progress=False,
                                    model_overrides={"test_cap": -1, "train_cap": train_cap},
                                    train_overrides={"test_fraction": 0.1, **train_settings})
    ncnc.train(request)
    return checkpoint


def capped_engine(load: Callable[[], Bundle], cap: int, cap_seed: int = 0):
    """The batch engine of a fresh ``load()`` scoring with completion cap ``cap`` (what
    ``export --cap`` records: the engine reads the cap from the spec), without the memo."""
    from ncnc.scorer.engine import BatchScorer

    loaded = load()
    loaded.spec = dataclasses.replace(loaded.spec, cap=cap, cap_seed=cap_seed)
    return BatchScorer(loaded, "cpu", memo_mib=0)


def test_hits(checkpoint: Path, load: Callable[[], Bundle], cap: int, cap_seeds: int) -> dict[str, float]:
    """HR@100 and AUC of the checkpoint's test split scored with completion cap ``cap``: the
    mean over ``cap_seeds`` salts of the capped draws (one for no cap).

    Scored by the bundle (the checkpoint's training + validation edges as the graph; export
    validates it against the eager model at 1e-4), not the eager model: on the heavy-tailed
    graph the eager NCNC model needs minutes per cap on this machine."""
    from ncnc.trainer.checkpoint import load_checkpoint
    from ncnc.trainer.metrics import link_metrics

    ck = load_checkpoint(checkpoint)
    hits, auc = [], []
    for salt in range(cap_seeds if cap > 0 else 1):
        engine = capped_engine(load, cap, salt)
        pos, neg = (torch.cat([engine.score_logits(p) for p in pairs.split(65_536)])
                    for pairs in (ck.split.test, ck.split.test_neg))
        metrics = link_metrics(pos, neg)
        hits.append(float(metrics["hits@100"]))
        auc.append(float(metrics["auc"]))
    return {"hits@100": float(np.mean(hits)), "hits@100_per_seed": hits,
            "auc": float(np.mean(auc)), "epochs": ck.config.train.epochs,
            "train_cap": ck.config.model.train_cap}


def pairs_per_second(load: Callable[[], Bundle], caps: list[int], pairs: torch.Tensor,
                     rounds: int = 3) -> dict[int, float]:
    """The bundle scorer's rate at each completion cap (no memo: each cap scores afresh), the
    caps interleaved round by round so that a change of load on the machine hits every cap
    alike; the best round of each."""
    engines = {}
    for cap in caps:
        engines[cap] = capped_engine(load, cap)
        engines[cap].score_logits(pairs[:1000])  # warm-up: compiled kernels, onnxruntime's arena
    best = dict.fromkeys(caps, float("inf"))
    for _ in range(rounds):
        for cap, engine in engines.items():
            started = time.perf_counter()
            for chunk in pairs.split(65_536):
                engine.score_logits(chunk)
            best[cap] = min(best[cap], time.perf_counter() - started)
    return {cap: pairs.size(0) / seconds for cap, seconds in best.items()}


def inner_pairs(graph: CSRGraph, caps: list[int], pairs: torch.Tensor) -> dict[int, float]:
    """Completion pairs per target pair at each cap: ``min(|N(i)\\N(j)|, cap) +
    min(|N(j)\\N(i)|, cap)`` averaged over ``pairs``, the work NCNC adds to NCN's one pair."""
    from ncnc.triton_kernels import common_neighbor_sum

    _, common = common_neighbor_sum(graph.indptr, graph.indices, torch.zeros(graph.num_nodes, 1),
                                    pairs)
    degree = graph.degree().long()
    sides = torch.stack([degree[pairs[:, 0]] - common, degree[pairs[:, 1]] - common]).double()
    return {cap: float((sides if cap < 0 else sides.clamp(max=cap)).sum(0).mean())
            for cap in caps}


def speed_only_bundle(graph: str, workdir: Path, head: Path) -> Callable[[], Bundle]:
    """For a graph whose training does not fit on the machine: ``head``'s NCNC model (its ONNX
    head and spec, hidden 256) over ``graph``'s edges with random node tables. The scores mean
    nothing; the work per pair (kernels, head calls) is that of a trained model of this width."""
    import ncnc
    from ncnc.scorer.bundle import Bundle
    from ncnc.trainer.data import load_edge_list
    from ncnc.triton_kernels import build_csr

    edges, features = heavy_tail_files(workdir)
    today = load_edge_list(edges, None, None)
    csr = build_csr(today.edges.t(), today.num_nodes)
    spec = dataclasses.replace(ncnc.load_bundle(head).spec, num_nodes=today.num_nodes)
    gen = torch.Generator().manual_seed(0)
    levels = [torch.randn(today.num_nodes, spec.hidden, generator=gen)
              for _ in range(spec.num_levels)]
    return lambda: Bundle.in_memory(head, spec, csr, levels, today.id_map)


def end_to_end(checkpoint: Path, workdir: Path, cap: int, count: int,
               rounds: int = 3) -> dict[str, float]:
    """``ncnc export --cap`` bundles (``cap`` and none) of ``checkpoint`` and ``ncnc score``'s
    rate on the same Parquet pairs (string ids, the default memo), interleaved, best round."""
    import polars as pl

    import ncnc

    bundles = {}
    for each in (-1, cap):
        bundles[each] = workdir / f"bundle_e2e_cap{each}"
        if not (bundles[each] / "manifest.json").exists():
            ncnc.export(checkpoint, bundles[each], config=ncnc.ExportConfig(cap=each))
    loaded = ncnc.load_bundle(bundles[-1])
    index = scoring_pairs(loaded.graph, count).numpy()
    names = loaded.id_map.ids.to_numpy()[index]
    pairs_file = workdir / "e2e_pairs.parquet"
    pl.DataFrame({"src": names[:, 0], "dst": names[:, 1]}).write_parquet(pairs_file)
    scorers = {each: ncnc.load_bundle(path).scorer(device="cpu") for each, path in bundles.items()}
    best = dict.fromkeys(scorers, float("inf"))
    for _ in range(rounds):
        for each, scorer in scorers.items():
            started = time.perf_counter()
            scorer.score_parquet(pairs_file, workdir / f"e2e_scores_cap{each}.parquet",
                                 progress=False)
            best[each] = min(best[each], time.perf_counter() - started)
    rates = {each: count / seconds for each, seconds in best.items()}
    return {"cap": cap, "pairs": count, "uncapped_pairs_per_second": round(rates[-1]),
            "capped_pairs_per_second": round(rates[cap]),
            "speedup": round(rates[cap] / rates[-1], 2)}


def scoring_pairs(graph: CSRGraph, count: int) -> torch.Tensor:
    """Half random pairs, half pairs two hops apart."""
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
        if all(r["hits@100"] is not None for r in mine):
            ax_hits.plot(labels, [100 * r["hits@100"] for r in mine], marker="o", label=graph)
        uncapped = next(r["pairs_per_second"] for r in mine if r["cap"] < 0)
        ax_speed.plot(labels, [r["pairs_per_second"] / uncapped for r in mine], marker="o",
                      label=graph)
    ax_hits.set(xlabel="completion cap", ylabel="test HR@100 (%)", title="accuracy")
    ax_speed.set(xlabel="completion cap", ylabel="NCNC pairs/s over no cap (2 threads)",
                 title="speed-up")
    for ax in (ax_hits, ax_speed):
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def markdown_table(rows: list[dict]) -> str:
    """Test HR@100 (%) and pairs/s per cap, one row per graph (the README's table)."""
    graphs = sorted({r["graph"] for r in rows})
    caps = sorted({r["cap"] for r in rows}, key=lambda c: (c > 0, c))
    label = ["none" if c < 0 else str(c) for c in caps]
    lines = ["| graph | | " + " | ".join(label) + " |", "|---|---|" + "---|" * len(caps)]
    for graph in graphs:
        by_cap = {r["cap"]: r for r in rows if r["graph"] == graph}
        lines.append(f"| {graph} | HR@100 | " + " | ".join(
            f"{100 * by_cap[c]['hits@100']:.2f}" if by_cap.get(c, {}).get("hits@100") is not None
            else "" for c in caps) + " |")
        lines.append("| | completion pairs / pair | " + " | ".join(
            f"{by_cap[c]['completion_pairs_per_pair']}" if c in by_cap else "" for c in caps)
            + " |")
        lines.append("| | pairs/s | " + " | ".join(
            f"{by_cap[c]['pairs_per_second']:,}" if c in by_cap else "" for c in caps) + " |")
    return "\n".join(lines)


def default_cap(rows: list[dict]) -> int | None:
    """The smallest cap within TOLERANCE of the uncapped HR@100 on every graph measured (-1 when
    none is; None while some graph lacks a cap or the uncapped row)."""
    graphs = {r["graph"] for r in rows}
    by_graph = {g: {r["cap"]: r["hits@100"] for r in rows if r["graph"] == g} for g in graphs
                if all(r["hits@100"] is not None for r in rows if r["graph"] == g)}
    caps = sorted({r["cap"] for r in rows if r["cap"] > 0})
    if any(-1 not in hits or set(caps) - set(hits) for hits in by_graph.values()):
        return None
    for cap in caps:
        if all(hits[cap] >= hits[-1] - TOLERANCE for hits in by_graph.values()):
            return cap
    return -1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--graphs", nargs="+", default=["cora", "citeseer", "heavy_tail"])
    parser.add_argument("--caps", nargs="+", type=int, default=CAPS)
    parser.add_argument("--epochs", type=int,
                        help="training epochs, a ceiling under patience (default: the preset's)")
    parser.add_argument("--pairs", type=int, default=20_000, help="pairs timed per cap")
    parser.add_argument("--cap-seeds", type=int, default=3,
                        help="salts of the capped draws averaged in each capped HR@100")
    parser.add_argument("--train-cap", type=int, default=-1,
                        help="the generated graph's training cap (trndeg; -1: none)")
    parser.add_argument("--speed-only", nargs="*", default=[],
                        help="graphs timed without training (no HR@100): --speed-head's model "
                             "over the graph's edges, random node tables")
    parser.add_argument("--speed-head", type=Path,
                        help="an NCNC bundle (hidden 256) whose head --speed-only graphs use")
    parser.add_argument("--data-root", type=Path, default=DEFAULT_PLANETOID)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/ncnc-cap-curve"))
    args = parser.parse_args()
    import ncnc

    torch.set_num_threads(2)
    args.workdir.mkdir(parents=True, exist_ok=True)
    runs = RESULTS / "cap_curve_runs.jsonl"
    done = [json.loads(line) for line in runs.read_text().splitlines()] if runs.exists() else []
    graphs: dict[str, dict] = {}
    for graph in args.graphs:
        if graph in args.speed_only:  # training does not fit: time the head of another bundle
            checkpoint, load = None, speed_only_bundle(graph, args.workdir, args.speed_head)
        else:
            checkpoint = train(graph, args.workdir, args.epochs, args.data_root, args.train_cap)
            bundle = args.workdir / f"bundle_{graph}"
            if not (bundle / "manifest.json").exists():
                ncnc.export(checkpoint, bundle, config=ncnc.ExportConfig(cap=-1))
            load = functools.partial(ncnc.load_bundle, bundle)
        graphs[graph] = degree_report(load().graph)
        print(json.dumps({"graph": graph, **graphs[graph]}), flush=True)
        older = [r for r in done if r["graph"] == graph and "completion_pairs_per_pair" not in r]
        if older:  # rows of an earlier version of this script: count their work now
            work = inner_pairs(load().graph, [r["cap"] for r in older],
                               scoring_pairs(load().graph, older[0]["timed_pairs"]))
            for r in older:
                r["completion_pairs_per_pair"] = round(work[r["cap"]], 2)
            runs.write_text("".join(json.dumps(r) + "\n" for r in done))
        todo = [c for c in args.caps if not any(r["graph"] == graph and r["cap"] == c
                                                for r in done)]
        if not todo:
            continue
        timed = scoring_pairs(load().graph, args.pairs)
        rates, work = pairs_per_second(load, todo, timed), inner_pairs(load().graph, todo, timed)
        for cap in todo:
            hits = (test_hits(checkpoint, load, cap, args.cap_seeds) if checkpoint is not None
                    else {"hits@100": None, "speed_head": str(args.speed_head)})
            row = {"graph": graph, "cap": cap, "cap_order": CAPS.index(cap) if cap in CAPS else cap,
                   **hits, "pairs_per_second": round(rates[cap]), "timed_pairs": args.pairs,
                   "completion_pairs_per_pair": round(work[cap], 2),
                   "timed_with": todo, "code": CODE_VERSION}
            done.append(row)
            with runs.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)
    chosen = default_cap(done)
    summary = {"tolerance": TOLERANCE, "default_cap_for_edges_graphs": chosen,
               "degrees": graphs, "rows": done,
               "command": " ".join(["python", "benchmarks/cap_curve.py", *sys.argv[1:]])}
    if (chosen is not None and chosen > 0 and "heavy_tail" in args.graphs
            and "heavy_tail" not in args.speed_only):
        summary["heavy_tail_ncnc_score"] = end_to_end(args.workdir / "ck_heavy_tail",
                                                      args.workdir, chosen, args.pairs)
        print(json.dumps(summary["heavy_tail_ncnc_score"]), flush=True)
    (RESULTS / "cap_curve.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot(done, ROOT / "docs" / "cap_curve.png")
    print(markdown_table(done))
    print(f"smallest cap within {100 * TOLERANCE:.1f} points of no cap on every graph: {chosen}")


if __name__ == "__main__":
    main()
