"""The nightly scoring job on a Ray cluster, through the Python API (needs ``ncnc-toolchain[ray]``).

    python examples/ray_cluster.py --bundle BUNDLE --pairs CANDIDATES [CANDIDATES ...] \\
        --out recommendations.parquet [--address auto] [--num-workers N] [--top-k 20]

Scores the candidate pairs (Parquet files, folders or quoted globs of ``src``, ``dst``) with the
bundle on the cluster's actors (one per GPU, else one per CPU) and writes the ``--top-k`` best
of each source node to one Parquet file, exactly what ``ncnc score --per-source`` writes on one
machine; prints the run report as JSON. Bundle and pairs must be readable at the same paths on
every node (shared storage), and ncnc installed there. Without ``--address`` it joins the cluster
``RAY_ADDRESS`` names, else starts a Ray on this machine.

Exit codes as ncnc's: 0 done, 2 bad input (one line on stderr), 1 internal failure.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ncnc.core.errors import InputError
from ncnc.scorer.ray_engine import RayOptions, score_files_ray


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True, help="bundle folder (ncnc export)")
    parser.add_argument("--pairs", nargs="+", required=True, help="candidate pairs (Parquet)")
    parser.add_argument("--out", type=Path, required=True, help="Parquet file to write")
    parser.add_argument("--address", help="Ray cluster to join, e.g. auto or ray://head:10001")
    parser.add_argument("--num-workers", type=int, help="scoring actors (default: all GPUs/CPUs)")
    parser.add_argument("--top-k", type=int, default=20, help="recommendations per source node")
    args = parser.parse_args()
    try:
        report = score_files_ray(args.bundle, args.pairs, args.out, top_k=args.top_k,
                                 per_source=True, on_unknown="skip", progress=False,
                                 options=RayOptions(args.address, args.num_workers))
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(InputError.exit_code)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
