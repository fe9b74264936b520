"""Accuracy against the paper: GAE, NCN, NCNC on Cora and CiteSeer, the reference protocol.

Protocol (official code, ``ogbdataset.py`` + README commands): a fresh random 70/10/20 edge split
per seed, one test negative per positive, 100 epochs, test HR@100 at the best-validation epoch,
seeds 0..N-1. Each finished (model, dataset, seed) run is appended to
``benchmarks/results/accuracy_runs.jsonl`` as it ends; runs already there are skipped, so a long
sweep can be stopped and continued later. ``benchmarks/results/accuracy.json`` holds the summary.

    python benchmarks/accuracy.py --seeds 5                   # the whole sweep (resumable)
    python benchmarks/accuracy.py --models ncnc --datasets cora --seeds 1
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DEFAULT_PLANETOID = ROOT.parent / "shared" / "data" / "planetoid"

# Test HR@100 (%), mean and std over 10 seeds: Table 2 of the paper.
PAPER = {
    ("gae", "cora"): (89.01, 1.32), ("gae", "citeseer"): (91.78, 0.94),
    ("ncn", "cora"): (89.05, 0.96), ("ncn", "citeseer"): (91.56, 1.43),
    ("ncnc", "cora"): (89.65, 1.36), ("ncnc", "citeseer"): (93.47, 0.95),
}
DATASET_DIRS = {"cora": "Cora", "citeseer": "CiteSeer"}


def load_runs(path: Path) -> dict[tuple[str, str, int], dict]:
    runs = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                run = json.loads(line)
                runs[(run["model"], run["dataset"], run["seed"])] = run
    return runs


def copy_planetoid(source: Path, datasets: list[str], target: Path) -> Path:
    """The shared raw files are read-only: PyG must write processed/ into a copy."""
    for name in datasets:
        raw = source / DATASET_DIRS[name] / "raw"
        if not raw.is_dir():
            sys.exit(f"error: {raw} not found (pass --planetoid DIR)")
        shutil.copytree(raw, target / DATASET_DIRS[name] / "raw", dirs_exist_ok=True)
    return target


def run_one(model: str, dataset: str, seed: int, data_root: Path, epochs: int) -> dict:
    from ncnc.trainer.api import TrainRequest, train

    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        summary = train(TrainRequest(
            model=model, out=Path(out), dataset=dataset, data_root=data_root, device="cpu",
            progress=False, train_overrides={"seed": seed, "epochs": epochs},
        ))
        seconds = time.perf_counter() - started
    return {
        "model": model, "dataset": dataset, "seed": seed, "epochs": epochs,
        "best_epoch": summary["best_epoch"],
        "test_hits@100": summary["test"]["hits@100"],
        "valid_hits@100": summary["valid"]["hits@100"],
        "seconds": round(seconds, 1),
        "seconds_per_epoch": summary["seconds_per_epoch"],
        "commit": CODE_VERSION,
    }


def code_version() -> str | None:
    """The commit the run's code came from (runs of a resumed sweep may span several)."""
    import subprocess

    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                              capture_output=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


CODE_VERSION = code_version()  # at start: later commits do not change the running code


def summarise(runs: dict[tuple[str, str, int], dict]) -> dict:
    table = {}
    for (model, dataset) in PAPER:
        scores = [100 * r["test_hits@100"] for (m, d, _), r in sorted(runs.items())
                  if (m, d) == (model, dataset)]
        if not scores:
            continue
        seconds = [r["seconds"] for (m, d, _), r in runs.items() if (m, d) == (model, dataset)]
        table[f"{model}/{dataset}"] = {
            "mean": round(statistics.mean(scores), 2),
            "std": round(statistics.stdev(scores), 2) if len(scores) > 1 else 0.0,
            "seeds": len(scores),
            "paper_mean": PAPER[(model, dataset)][0],
            "paper_std": PAPER[(model, dataset)][1],
            "mean_seconds_per_run": round(statistics.mean(seconds), 1),
        }
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["ncnc", "ncn", "gae"])
    parser.add_argument("--datasets", nargs="+", default=["cora", "citeseer"])
    parser.add_argument("--seeds", type=int, default=10, help="seeds 0..N-1")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--planetoid", type=Path, default=DEFAULT_PLANETOID)
    parser.add_argument("--runs-file", type=Path, default=RESULTS / "accuracy_runs.jsonl")
    parser.add_argument("--summary", type=Path, default=RESULTS / "accuracy.json")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(2)  # the figures are for the 2-core reference machine
    args.runs_file.parent.mkdir(parents=True, exist_ok=True)
    runs = load_runs(args.runs_file)
    with tempfile.TemporaryDirectory() as tmp:
        data_root = copy_planetoid(args.planetoid, args.datasets, Path(tmp))
        for seed in range(args.seeds):
            for dataset in args.datasets:
                for model in args.models:
                    if (model, dataset, seed) in runs:
                        continue
                    run = run_one(model, dataset, seed, data_root, args.epochs)
                    runs[(model, dataset, seed)] = run
                    with args.runs_file.open("a") as f:
                        f.write(json.dumps(run) + "\n")
                    print(json.dumps(run), flush=True)
                    args.summary.write_text(json.dumps(summarise(runs), indent=2) + "\n")
    table = summarise(runs)
    args.summary.write_text(json.dumps(table, indent=2) + "\n")
    print(f"{'model/dataset':<16} {'ours HR@100':>14} {'paper':>14} {'seeds':>6} {'s/run':>7}")
    for key, row in table.items():
        print(f"{key:<16} {row['mean']:>7.2f} ± {row['std']:<4.2f} "
              f"{row['paper_mean']:>7.2f} ± {row['paper_std']:<4.2f} {row['seeds']:>6} "
              f"{row['mean_seconds_per_run']:>7.1f}")


if __name__ == "__main__":
    main()
