"""Featureless graphs: NCN and NCNC with the ``--edges`` defaults against common neighbours and
Adamic-Adar on the same splits, and the measurements that chose those defaults.

Graphs (no node features): Cora and CiteSeer with their features dropped, and generated graphs of
other shapes (``ncnc.trainer.synthetic``): heavy-tailed (Holme-Kim growth), a sparse near-tree
(power-grid-like), dense communities (a planted partition), and a Yeast-sized protein-like graph
(2,375 nodes, about 10.5k edges, heavy-tailed with clustering). Each run uses the ``--edges``
split of its seed (5% validation, as ``ncnc train`` makes) plus 15% test edges; CN and AA score
the same test pairs on the same training graph. HR@100 counts a positive only when it scores
strictly above the 100th-best negative (OGB's rule), so tied heuristic scores count against.

Modes (every finished run is appended to a .jsonl under benchmarks/results/ and skipped when
its settings were already run, so each mode can be stopped and resumed):

    python benchmarks/featureless.py table --seeds 3         # the README table, current defaults
    python benchmarks/featureless.py curves --variant h64 h256 --epochs 40
    python benchmarks/featureless.py patience                # early stopping simulated on curves
    python benchmarks/featureless.py yeast --main-ref cff6e79 [--main-epochs 12]  # vs main
    python benchmarks/featureless.py patience --variant h64 --select hits@100 hits@50
    python benchmarks/featureless.py diagnose --graphs heavy_tailed  # table checkpoints, re-scored

``curves`` trains with patience off for ``--epochs`` epochs and records validation and test
metrics of every epoch; since a run that stops early is a prefix of that run (same seed, same
draws), ``patience`` reads off what each patience would have stopped at and kept. ``yeast``
runs ``ncnc train --edges`` as a user would (a process each, nothing but the graph given), with
this tree's code and with ``--main-ref``'s (exported by ``git archive``), one after the other per
model, on the same seed and split, and compares wall time, CPU time and best validation HR@100.
``patience --select`` picks the epoch (and counts the patience) by another validation metric.
``diagnose`` trains nothing: it re-scores the table runs' checkpoints (kept in the temporary
folder) and reports the score plateau, the top-scored negatives' degrees, other completion caps.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from accuracy import DATASET_DIRS, DEFAULT_PLANETOID, code_version, copy_planetoid

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
# Files under --results: every run of a mode, one JSON line each, and the table's summary.
RUNS, CURVES = "featureless_runs.jsonl", "featureless_curves.jsonl"
YEAST, SUMMARY = "featureless_yeast.jsonl", "featureless.json"
DIAGNOSE = "featureless_diagnose.jsonl"
CURVE_METRICS = ("hits@20", "hits@50", "hits@100", "mrr", "auc")  # per epoch in the curves
VAL_FRACTION, TEST_FRACTION = 0.05, 0.15
GRAPHS = ["cora", "citeseer", "heavy_tailed", "near_tree", "dense_communities", "yeast_sized"]
# Overrides on top of the current defaults, for the curves that compare settings.
VARIANTS: dict[str, dict[str, dict[str, Any]]] = {
    "defaults": {"model": {}, "train": {}},
    "h256": {"model": {"hidden": 256}, "train": {}},  # main's width
    "h128": {"model": {"hidden": 128}, "train": {}},
    "h64": {"model": {"hidden": 64}, "train": {}},
}
CODE_VERSION = code_version()


def write_graph(name: str, folder: Path, planetoid: Path) -> Path:
    """The graph's edge list as Parquet in ``folder`` (made once per process)."""
    from ncnc.trainer import synthetic

    path = folder / f"{name}.parquet"
    if path.exists():
        return path
    if name in DATASET_DIRS:
        from ncnc.trainer.data import load_planetoid

        root = copy_planetoid(planetoid, [name], folder / "planetoid")
        edges = load_planetoid(name, root).edges.numpy()  # the features are dropped here
        frame = synthetic.edge_frame(edges, int(edges.max()) + 1)
    else:
        frame = {
            "heavy_tailed": lambda: synthetic.preferential_attachment_graph(3000, 3, 0.5),
            "near_tree": lambda: synthetic.near_tree_graph(4000),
            "dense_communities": lambda: synthetic.planted_partition_graph(1200, 12, 16, 3),
            "yeast_sized": lambda: synthetic.community_graph(
                2375, avg_degree=11, num_communities=30, feature_dim=0).edges,
        }[name]()
    frame.write_parquet(path)
    return path


def load_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def append_row(path: Path, row: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps({k: v for k, v in row.items() if k not in ("epochs", "settings")}),
          flush=True)


def settings_of(model: str, edges: Path,
                overrides: dict[str, dict[str, Any]]) -> tuple[dict, str]:
    """The resolved settings of a run but its seed, and a short id of them: runs with the same
    id (and seed) are the same run."""
    from ncnc.trainer.api import TrainRequest, load_graph, run_config

    request = TrainRequest(model=model, out=Path("unused"), edges=edges,
                           model_overrides=overrides["model"],
                           train_overrides={**overrides["train"], "test_fraction": TEST_FRACTION})
    cfg = run_config(request, load_graph(request))
    settings = {"model": {k: v for k, v in asdict(cfg.model).items()
                          if k not in ("num_nodes", "in_features")},
                "train": {k: v for k, v in asdict(cfg.train).items() if k != "seed"}}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
    return settings, digest


def train_run(model: str, edges: Path, out: Path, overrides: dict[str, dict[str, Any]],
              seed: int) -> tuple[dict, float, float]:
    """One ``ncnc train --edges`` run in this process: (summary, wall s, CPU s of the process)."""
    from ncnc.trainer.api import TrainRequest, train

    wall, cpu = time.perf_counter(), time.process_time()
    summary = train(TrainRequest(
        model=model, out=out, edges=edges, device="cpu", progress=False,
        model_overrides=overrides["model"],
        train_overrides={**overrides["train"], "seed": seed, "test_fraction": TEST_FRACTION},
    ))
    return summary, time.perf_counter() - wall, time.process_time() - cpu


def heuristic_scores(split, num_nodes: int,
                     which: tuple[str, str] = ("test", "test_neg")) -> dict[str, dict[str, float]]:
    """Metrics of common neighbours and Adamic-Adar on the positive and negative pairs
    ``which`` of ``split`` (the test pairs unless told), computed on the training graph."""
    import numpy as np
    import scipy.sparse as sp
    import torch

    from ncnc.trainer.metrics import link_metrics

    train = split.train.numpy()
    adjacency = sp.coo_matrix((np.ones(len(train)), (train[:, 0], train[:, 1])),
                              shape=(num_nodes, num_nodes))
    adjacency = (adjacency + adjacency.T).tocsr()
    degree = np.asarray(adjacency.sum(1)).ravel()
    # A common neighbour has degree >= 2, so log(degree) > 0 wherever it is used.
    inverse_log = 1.0 / np.log(np.maximum(degree, 2))

    def score(pairs, weights):
        common = adjacency[pairs[:, 0]].multiply(adjacency[pairs[:, 1]])
        return torch.tensor(common @ weights, dtype=torch.float64)

    pos, neg = (getattr(split, name).numpy() for name in which)
    out = {}
    for name, weights in (("cn", np.ones(num_nodes)), ("aa", inverse_log)):
        metrics = link_metrics(score(pos, weights), score(neg, weights))
        out[name] = {f"{which[0]}_hits@100": metrics["hits@100"],
                     f"{which[0]}_auc": metrics["auc"]}
    return out


def run_diagnose(args: argparse.Namespace, folder: Path) -> None:
    """Why a model's test HR@100 falls below its validation figure (nothing is trained): the
    table run's checkpoint of each graph, model and seed scored again on validation and test.
    Records the score plateau (how many test negatives outscore the validation's 100th-best
    negative, which HR@100 on validation lets through, and the logits that bound that band),
    the training-graph degree of the larger endpoint among the top 100 test negatives (hubs?),
    the figures under each evaluation
    completion cap ``--caps`` (``test_cap``), and CN/AA on the same validation pairs."""
    import dataclasses

    import torch

    from ncnc.trainer.checkpoint import load_checkpoint
    from ncnc.trainer.metrics import link_metrics
    from ncnc.trainer.training import TrainingGraph

    done = {(r["graph"], r["model"], r["seed"]) for r in load_rows(args.results / DIAGNOSE)}
    for graph, model, seed in itertools.product(args.graphs, args.models, range(args.seeds)):
        directory = folder / f"{graph}-{model}-{seed}"
        if (graph, model, seed) in done or not (directory / "config.json").exists():
            continue
        ck = load_checkpoint(directory)
        split, num_nodes = ck.split, ck.config.model.num_nodes
        training_graph = TrainingGraph(split.train, num_nodes).graph
        degree = torch.bincount(split.train.flatten(), minlength=num_nodes)
        row: dict[str, Any] = {
            "graph": graph, "model": model, "seed": seed, "hidden": ck.config.model.hidden,
            "best_epoch": ck.summary["best_epoch"],
            "valid_heuristics": heuristic_scores(split, num_nodes, ("valid", "valid_neg"))}
        for cap in args.caps:
            cfg = dataclasses.replace(ck.config.model, test_cap=cap)
            ck.model.cfg = ck.model.predictor.cfg = cfg
            scores = {}
            for name in ("valid", "test"):
                pos, neg = getattr(split, name), getattr(split, f"{name}_neg")
                both = ck.model.score(ck.features, training_graph, torch.cat([pos, neg]))
                scores[name] = (both[: len(pos)], both[len(pos):])
                metrics = link_metrics(*scores[name])
                row[f"cap{cap}/{name}"] = {"hits@100": metrics["hits@100"],
                                           "auc": metrics["auc"], "num_neg": metrics["num_neg"]}
            valid_threshold = scores["valid"][1].sort(descending=True).values[99]
            test_pos, test_neg = scores["test"]
            top = split.test_neg[test_neg.topk(100).indices]
            row[f"cap{cap}/test"].update(
                neg_above_valid_threshold=int((test_neg > valid_threshold).sum()),
                logits={"max": float(torch.cat([test_pos, test_neg]).max()),
                        "test_100th_neg": float(test_neg.sort(descending=True).values[99]),
                        "valid_100th_neg": float(valid_threshold),
                        "pos_median": float(test_pos.median()),
                        "neg_median": float(test_neg.median())},
                pos_above_valid_threshold=float((test_pos > valid_threshold).float().mean()),
                top100_neg_hub_degree_median=float(degree[top].max(1).values.float().median()),
                all_neg_hub_degree_median=float(degree[split.test_neg].max(1).values.float()
                                                .median()))
        row["commit"] = CODE_VERSION
        append_row(args.results / DIAGNOSE, row)


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


def run_table(args: argparse.Namespace, folder: Path) -> None:
    """NCN and NCNC with the current defaults (or ``--variant`` overrides of them), then CN and
    AA on each seed's split."""
    from ncnc.trainer.splits import EdgeSplit

    done = {(r["graph"], r["method"], r["seed"], r.get("settings_id"))
            for r in load_rows(args.results / RUNS)}
    for variant, seed, graph, model in itertools.product(args.variant, range(args.seeds),
                                                         args.graphs, args.models):
        edges = write_graph(graph, folder, args.planetoid)
        settings, sid = settings_of(model, edges, VARIANTS[variant])
        if (graph, model, seed, sid) in done:
            continue
        out = folder / f"{graph}-{model}-{seed}"
        load = load_average()
        summary, wall, cpu = train_run(model, edges, out, VARIANTS[variant], seed)
        append_row(args.results / RUNS, {
            "graph": graph, "method": model, "seed": seed, "variant": variant,
            "settings_id": sid, "settings": settings,
            "test_hits@100": summary["test"]["hits@100"], "test_auc": summary["test"]["auc"],
            "valid_hits@100": summary["valid"]["hits@100"],
            "best_epoch": summary["best_epoch"], "stopped": summary["stopped"],
            "train_seconds": summary["seconds"], "wall_seconds": round(wall, 2),
            "cpu_seconds": round(cpu, 2), "load_before": load, "load_after": load_average(),
            "threads": args.threads, "commit": CODE_VERSION,
        })
        done.add((graph, model, seed, sid))
        if (graph, "aa", seed, None) not in done:  # one split per seed, for every model
            split = EdgeSplit.load(out / "split.parquet")
            for name, metrics in heuristic_scores(split, summary["num_nodes"]).items():
                append_row(args.results / RUNS, {"graph": graph, "method": name, "seed": seed,
                                                 **metrics, "commit": CODE_VERSION})
                done.add((graph, name, seed, None))
    print_table(args, folder)
    print_variants(args, folder)


def print_variants(args: argparse.Namespace, folder: Path) -> None:
    """Each variant against the current defaults, seed for seed (validation decides)."""
    rows = load_rows(args.results / RUNS)
    edges = write_graph(args.graphs[0], folder, args.planetoid)
    print("\n| variant | graph | model | seeds | valid HR@100 (defaults) | test HR@100 (defaults) "
          "| train s (defaults) |")
    print("|---|---|---|---|---|---|---|")
    for variant, graph, model in itertools.product(args.variant, args.graphs, args.models):
        if variant == "defaults":
            continue
        ids = {name: settings_of(model, edges, VARIANTS[name])[1]
               for name in (variant, "defaults")}
        runs = {name: {r["seed"]: r for r in rows if r["graph"] == graph and
                       r["method"] == model and r.get("settings_id") == sid}
                for name, sid in ids.items()}
        seeds = sorted(set(runs[variant]) & set(runs["defaults"]))
        if not seeds:
            continue

        cells = [paired_means(runs[variant], runs["defaults"], seeds, key, scale)
                 for key, scale in (("valid_hits@100", 100), ("test_hits@100", 100),
                                    ("train_seconds", 1))]
        print(f"| {variant} | {graph} | {model} | {len(seeds)} | {' | '.join(cells)} |")


def paired_means(mine: dict[int, dict], base: dict[int, dict], seeds: list[int], key: str,
                 scale: float) -> str:
    """``mean (mean of base)`` of ``key`` over the same seeds."""
    ours = statistics.mean(scale * mine[s][key] for s in seeds)
    theirs = statistics.mean(scale * base[s][key] for s in seeds)
    return f"{ours:.2f} ({theirs:.2f})"


def mean_std(values: list[float]) -> str:
    """``mean ± std``, or the one value alone (no spread is known from one seed)."""
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def print_table(args: argparse.Namespace, folder: Path) -> None:
    """Mean ± std over seeds of the runs with the current default settings, as Markdown, and
    the same figures in featureless.json."""
    rows = load_rows(args.results / RUNS)
    graphs = args.graphs
    current = {model: settings_of(model, write_graph(graphs[0], folder, args.planetoid),
                                  VARIANTS["defaults"])[1] for model in ("ncn", "ncnc")}
    summary: dict[str, dict] = {}
    print("| graph | method | test HR@100 | test AUC | train s (wall) | CPU s | epochs run (best) "
          "| seeds |")
    print("|---|---|---|---|---|---|---|---|")
    for graph in graphs:
        for method in ("cn", "aa", "ncn", "ncnc"):
            picked = [r for r in rows if r["graph"] == graph and r["method"] == method
                      and r.get("settings_id") == current.get(method)]
            if not picked:
                continue
            hits = [100 * r["test_hits@100"] for r in picked]
            auc = [100 * r["test_auc"] for r in picked]
            entry: dict[str, Any] = {"test_hits@100": mean_std(hits), "test_auc": mean_std(auc),
                                     "seeds": sorted(r["seed"] for r in picked)}
            timing = "— | — | —"
            if method in current:
                seconds = [r["train_seconds"] for r in picked]
                cpu = [r["cpu_seconds"] for r in picked]
                epochs = [r["stopped"]["epoch"] for r in picked]
                best = [r["best_epoch"] for r in picked]
                entry.update(train_seconds=mean_std(seconds), cpu_seconds=mean_std(cpu),
                             epochs_run=epochs, best_epochs=best, settings_id=current[method])
                timing = (f"{statistics.mean(seconds):.0f} | {statistics.mean(cpu):.0f} | "
                          f"{statistics.mean(epochs):.0f} ({statistics.mean(best):.0f})")
            print(f"| {graph} | {method.upper()} | {mean_std(hits)} | {mean_std(auc)} | "
                  f"{timing} | {len(picked)} |")
            summary[f"{graph}/{method}"] = entry
    (args.results / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")


def run_curves(args: argparse.Namespace, folder: Path) -> None:
    """Patience off, ``--epochs`` epochs, validation and test metrics of every epoch."""
    done = {(r["graph"], r["model"], r["seed"], r["settings_id"])
            for r in load_rows(args.results / CURVES)}
    for variant in args.variant:
        overrides = {"model": VARIANTS[variant]["model"],
                     "train": {**VARIANTS[variant]["train"], "patience": 0,
                               "epochs": args.epochs, "test_each_epoch": True}}
        for seed in range(args.seeds):
            for graph in args.graphs:
                edges = write_graph(graph, folder, args.planetoid)
                for model in args.models:
                    settings, sid = settings_of(model, edges, overrides)
                    if (graph, model, seed, sid) in done:
                        continue
                    out = folder / f"curve-{graph}-{model}-{seed}"
                    load = load_average()
                    summary, wall, cpu = train_run(model, edges, out, overrides, seed)
                    epochs = [json.loads(line) for line in
                              (out / "metrics.jsonl").read_text().splitlines()]
                    append_row(args.results / CURVES, {
                        "graph": graph, "model": model, "seed": seed, "variant": variant,
                        "settings_id": sid, "settings": settings,
                        "best_epoch": summary["best_epoch"], "wall_seconds": round(wall, 2),
                        "cpu_seconds": round(cpu, 2), "load_before": load,
                        "load_after": load_average(), "threads": args.threads,
                        "commit": CODE_VERSION,
                        "epochs": [{"epoch": e["epoch"], "seconds": round(e["seconds"], 3),
                                    **{f"{split}_{key}": e[split][key]
                                       for split in ("valid", "test") for key in CURVE_METRICS}}
                                   for e in epochs],
                    })
                    done.add((graph, model, seed, sid))


def stop_at(valid: list[float], patience: int) -> tuple[int, int]:
    """(epochs run, best epoch), both 1-based, of early stopping with ``patience`` on a curve
    (the rule of ``ncnc.trainer.training.stop_reason``: a strictly better value resets it)."""
    best = 0
    for index, value in enumerate(valid):
        if value > valid[best]:
            best = index
        if index - best >= patience:
            return index + 1, best + 1
    return len(valid), best + 1


def run_patience(args: argparse.Namespace) -> None:
    """What each patience would have cost and kept, per variant and validation metric that
    selects the epoch and counts the patience (``select_metric``), over the recorded curves.
    The losses are against the best epoch of the whole curve by validation HR@100 (today's
    selection without early stopping); the test figure is always HR@100."""
    rows = [r for r in load_rows(args.results / CURVES) if r["variant"] in args.variant]
    print("| variant | select | patience | epochs run | share of the time | valid HR@100 lost "
          "(mean / worst) | test HR@100 lost (mean / worst) | test HR@100 kept | curves |")
    print("|---|---|---|---|---|---|---|---|---|")
    for variant, select in itertools.product(args.variant, args.select):
        curves = [r for r in rows if r["variant"] == variant]
        if not curves:
            continue
        for patience in args.patience:
            runs, share, valid_lost, test_lost, kept = [], [], [], [], []
            for curve in curves:
                chosen = [e[f"valid_{select}"] for e in curve["epochs"]]
                valid = [e["valid_hits@100"] for e in curve["epochs"]]
                test = [e["test_hits@100"] for e in curve["epochs"]]
                seconds = [e["seconds"] for e in curve["epochs"]]
                ran, best = stop_at(chosen, patience or len(chosen))
                full_best = stop_at(valid, len(valid))[1]
                runs.append(ran)
                share.append(sum(seconds[:ran]) / sum(seconds))
                valid_lost.append(100 * (valid[full_best - 1] - valid[best - 1]))
                test_lost.append(100 * (test[full_best - 1] - test[best - 1]))
                kept.append(100 * test[best - 1])
            print(f"| {variant} | {select} | {patience or 'off'} | {statistics.mean(runs):.1f} | "
                  f"{statistics.mean(share):.2f} | {statistics.mean(valid_lost):.2f} / "
                  f"{max(valid_lost):.2f} | {statistics.mean(test_lost):.2f} / "
                  f"{max(test_lost):.2f} | {statistics.mean(kept):.2f} | {len(curves)} |")
    if args.plot is not None:
        plot_curves(rows, args.plot, patience=10)
    print()
    print("| variant | graph | model | best valid HR@100 | its test HR@100 | best epoch | "
          + " | ".join(f"test HR@100 at best valid {s} (epoch)" for s in args.select
                       if s != "hits@100") + " | s/epoch |")
    print("|---|---|---|---|---|---|" + "---|" * len([s for s in args.select if s != "hits@100"])
          + "---|")
    for curve in sorted(rows, key=lambda r: (r["graph"], r["model"], r["variant"], r["seed"])):
        valid = [e["valid_hits@100"] for e in curve["epochs"]]
        best = stop_at(valid, len(valid))[1]
        others = []
        for select in args.select:
            if select == "hits@100":
                continue
            chosen = [e[f"valid_{select}"] for e in curve["epochs"]]
            at = stop_at(chosen, len(chosen))[1]
            others.append(f"{100 * curve['epochs'][at - 1]['test_hits@100']:.2f} ({at})")
        seconds = statistics.mean(e["seconds"] for e in curve["epochs"])
        print(f"| {curve['variant']} | {curve['graph']} | {curve['model']} | "
              f"{100 * valid[best - 1]:.2f} | {100 * curve['epochs'][best - 1]['test_hits@100']:.2f}"
              f" | {best} | {' | '.join(others + [f'{seconds:.2f}'])} |")


def plot_curves(rows: list[dict], path: Path, patience: int) -> None:
    """One panel per curve: validation and test HR@100 per epoch, the epoch early stopping with
    ``patience`` keeps, and where it stops."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(rows, key=lambda r: (r["graph"], r["model"], r["variant"], r["seed"]))
    columns = 4
    fig, axes = plt.subplots((len(rows) + columns - 1) // columns, columns, sharex=True,
                             figsize=(3.2 * columns, 2.4 * ((len(rows) + columns - 1) // columns)),
                             squeeze=False)
    for ax, curve in zip(axes.flat, rows):
        epochs = [e["epoch"] for e in curve["epochs"]]
        valid = [100 * e["valid_hits@100"] for e in curve["epochs"]]
        ax.plot(epochs, valid, label="valid HR@100")
        ax.plot(epochs, [100 * e["test_hits@100"] for e in curve["epochs"]], label="test HR@100")
        ran, best = stop_at(valid, patience)
        ax.axvline(best, color="green", linestyle=":", label=f"kept (patience {patience})")
        ax.axvline(ran, color="grey", linestyle="--", label="stopped")
        ax.set_title(f"{curve['graph']} {curve['model'].upper()} ({curve['variant']})", fontsize=9)
        ax.set_ylim(0, 100)
    for ax in axes.flat[len(rows):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7, loc="lower right")
    fig.supxlabel("epoch")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def cli_run(tree: Path, model: str, edges: Path, out: Path, *extra: str) -> dict:
    """``ncnc train --model M --edges F`` with the code of ``tree``, nothing else set (but
    ``extra`` flags): the summary plus wall and CPU seconds of the whole process (imports and
    loading included), and the validation HR@100 and seconds of each epoch."""
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "2"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load, wall = load_average(), time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "ncnc", "train", "--model", model, "--edges", str(edges),
         "--out", str(out), "--device", "cpu", "--quiet", *extra],
        cwd=tree, env=env, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - wall
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    epochs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {"wall_seconds": round(wall, 1), "cpu_seconds": round(cpu, 1), "load_before": load,
            "load_after": load_average(), "best_epoch": summary["best_epoch"],
            "stopped": summary.get("stopped"), "valid_hits@100": summary["valid"]["hits@100"],
            "train_seconds": summary["seconds"], "seconds_per_epoch": summary["seconds_per_epoch"],
            "epochs": [{"epoch": e["epoch"], "valid_hits@100": e["valid"]["hits@100"],
                        "seconds": round(e["seconds"], 2)} for e in epochs]}


def export_ref(ref: str, folder: Path) -> tuple[Path, str]:
    """Main's code as files (``git archive``), and its short commit."""
    commit = subprocess.run(["git", "rev-parse", "--short", ref], cwd=ROOT, text=True,
                            capture_output=True, check=True).stdout.strip()
    tree = folder / f"code-{commit}"
    if not tree.exists():
        tree.mkdir()
        archive = subprocess.run(["git", "archive", commit], cwd=ROOT, capture_output=True,
                                 check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree, commit


def main_estimate(row: dict, epochs: int) -> tuple[float, float]:
    """(wall, CPU seconds) of ``row``'s process had it run ``epochs`` epochs: the measured
    process plus the missing epochs at the mean measured epoch time, CPU at the run's measured
    CPU/wall ratio (equal to the measurement when the run was not cut)."""
    seconds = [e["seconds"] for e in row["epochs"]]
    wall = row["wall_seconds"] + (epochs - len(seconds)) * statistics.mean(seconds)
    return wall, wall * row["cpu_seconds"] / row["wall_seconds"]


def run_yeast(args: argparse.Namespace, folder: Path) -> None:
    """Today's default ``ncnc train --edges`` against ``--main-ref``'s, on the Yeast-sized graph,
    one after the other per model (the same seed, so the same split and validation pairs).
    ``--main-epochs K`` below 100 cuts main's fixed 100 epochs at K (main's time is then the K
    measured epochs extrapolated to 100; a run that stops early is a prefix of main's, which
    the per-epoch validation figures of both show)."""
    from ncnc.trainer.synthetic import community_graph

    main_tree, main_commit = export_ref(args.main_ref, folder)
    edges = write_graph("yeast_sized", folder, args.planetoid)
    codes = {"main": (main_tree, main_commit), "this": (ROOT, CODE_VERSION)}
    warm = folder / "warm.parquet"
    community_graph(200, feature_dim=0).edges.write_parquet(warm)
    for tree, _ in codes.values():  # numba compiles (and caches) each tree's kernels first
        for model in args.models:
            cli_run(tree, model, warm, folder / "warm", "--epochs", "1")
    done = {(r["code"], r["model"], r["commit"], r["settings_id"], r.get("epochs_cap", 100))
            for r in load_rows(args.results / YEAST)}
    ids = {model: settings_of(model, edges, VARIANTS["defaults"])[1] for model in args.models}
    for model in args.models:
        for code, (tree, commit) in codes.items():
            sid, cap = (ids[model], 100) if code == "this" else (None, args.main_epochs)
            if (code, model, commit, sid, cap) in done:
                continue
            extra = ("--epochs", str(cap)) if code == "main" else ()
            row = cli_run(tree, model, edges, folder / f"yeast-{code}-{model}", *extra)
            append_row(args.results / YEAST, {"code": code, "model": model, "commit": commit,
                                              "settings_id": sid, "epochs_cap": cap, **row})
    rows = load_rows(args.results / YEAST)
    for model in args.models:
        main = [r for r in rows if r["model"] == model and r["code"] == "main"
                and r["commit"] == main_commit and r.get("epochs_cap", 100) == args.main_epochs]
        this = [r for r in rows if r["model"] == model and r["code"] == "this"
                and r["settings_id"] == ids[model]]
        if not (main and this):
            continue
        main, this = main[-1], this[-1]
        wall, cpu = main_estimate(main, 100)
        shared = min(len(main["epochs"]), len(this["epochs"]))
        same = all(a["valid_hits@100"] == b["valid_hits@100"]
                   for a, b in zip(main["epochs"][:shared], this["epochs"][:shared]))
        cut = "" if main["epochs_cap"] == 100 else (
            f" (estimated from {main['epochs_cap']} measured epochs: {main['wall_seconds']} s "
            f"wall, {main['cpu_seconds']} s CPU)")
        print(f"{model}: wall {this['wall_seconds']} s vs main {wall:.1f} s{cut} "
              f"({this['wall_seconds'] / wall:.3f}x), CPU {this['cpu_seconds']} s vs "
              f"{cpu:.1f} s ({this['cpu_seconds'] / cpu:.3f}x); best valid HR@100 "
              f"{100 * this['valid_hits@100']:.2f} (epoch {this['best_epoch']}, stopped "
              f"{this['stopped']}) vs main {100 * main['valid_hits@100']:.2f} (epoch "
              f"{main['best_epoch']} of {len(main['epochs'])} run); validation of the first "
              f"{shared} epochs identical in both: {same}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["table", "curves", "patience", "yeast", "diagnose"])
    parser.add_argument("--graphs", nargs="+", default=GRAPHS, choices=GRAPHS)
    parser.add_argument("--models", nargs="+", default=["ncn", "ncnc"])
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1")
    parser.add_argument("--variant", nargs="+", default=["defaults"], choices=sorted(VARIANTS))
    parser.add_argument("--epochs", type=int, default=40, help="curves: epochs per run")
    parser.add_argument("--patience", nargs="+", type=int, default=[3, 5, 8, 10, 15, 20],
                        help="patience: the patiences to simulate (0: off, the whole curve)")
    parser.add_argument("--select", nargs="+", default=["hits@100"], choices=CURVE_METRICS,
                        help="patience: validation metrics that select the epoch")
    parser.add_argument("--plot", type=Path, help="patience: PNG of the curves (patience 10)")
    parser.add_argument("--caps", nargs="+", type=int, default=[-1, 64, 32, 16, 8],
                        help="diagnose: evaluation completion caps (test_cap; -1: none)")
    parser.add_argument("--planetoid", type=Path, default=DEFAULT_PLANETOID)
    parser.add_argument("--main-ref", default="main", help="yeast: the code to compare with")
    parser.add_argument("--main-epochs", type=int, default=100,
                        help="yeast: cut main's fixed 100 epochs at K (its time extrapolated)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder of the .jsonl")
    parser.add_argument("--threads", type=int, default=2,
                        help="torch threads of in-process runs (1 wastes less on a busy machine)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)  # 2: the 2-core machine of the issue
    folder = Path(tempfile.gettempdir()) / "ncnc-featureless"  # graphs are rebuilt if missing
    folder.mkdir(exist_ok=True)
    args.results.mkdir(parents=True, exist_ok=True)
    {"table": lambda: run_table(args, folder), "curves": lambda: run_curves(args, folder),
     "patience": lambda: run_patience(args), "yeast": lambda: run_yeast(args, folder),
     "diagnose": lambda: run_diagnose(args, folder)}[args.mode]()


if __name__ == "__main__":
    main()
