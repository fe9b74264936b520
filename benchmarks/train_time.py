"""Wall time of one training run with the README's reference settings (the figure the official
code is compared by: about 98 s for NCN and 196 s for NCNC per 100-epoch Cora run on 2 cores).

Run it on an otherwise idle machine: the figure is the whole ``train`` call (data loading, the
split, 100 epochs with validation each epoch, the final test pass), 2 torch threads.

    python benchmarks/train_time.py --models ncnc ncn --dataset cora
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from accuracy import DATASET_DIRS, DEFAULT_PLANETOID, code_version

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    import torch

    from ncnc.trainer.api import TrainRequest, train

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["ncnc", "ncn"])
    parser.add_argument("--dataset", default="cora", choices=sorted(DATASET_DIRS))
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--planetoid", type=Path, default=DEFAULT_PLANETOID)
    parser.add_argument("--results", type=Path,
                        default=ROOT / "benchmarks" / "results" / "train_time.json")
    args = parser.parse_args()
    torch.set_num_threads(2)
    results = json.loads(args.results.read_text()) if args.results.exists() else {}
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        name = DATASET_DIRS[args.dataset]
        shutil.copytree(args.planetoid / name / "raw", root / name / "raw")
        for model in args.models:
            started = time.perf_counter()
            summary = train(TrainRequest(
                model=model, out=root / f"out_{model}", dataset=args.dataset, data_root=root,
                device="cpu", progress=False,
                train_overrides={"seed": args.seed, "epochs": args.epochs}))
            row = {"epochs": args.epochs, "seed": args.seed,
                   "seconds": round(time.perf_counter() - started, 1),
                   "seconds_per_epoch": summary["seconds_per_epoch"],
                   "test_hits@100": summary["test"]["hits@100"], "commit": code_version()}
            results[f"{model}/{args.dataset}"] = row
            print(json.dumps({f"{model}/{args.dataset}": row}), flush=True)
    args.results.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
