"""The own-graph example through the Python API: train, export, then score pairs held in memory.

    python examples/own_graph/make_sample.py sample          # or bring your own edges.parquet
    python examples/python_api.py sample/edges.parquet sample/features.parquet --out api_output

Trains NCNC on the edge list, exports a validated bundle, loads it, and scores an Arrow table of
pairs built in memory (each of a few users against every user not yet linked to them) without
writing the pairs to disk; writes the top ``--top-k`` of each user to
``OUT/recommendations.parquet`` (``src``, ``dst``, ``score``, ``prob``, ``rank``) and prints them.
Only the ``ncnc`` facade is used: what ``import ncnc`` offers is the whole Python API.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import polars as pl

import ncnc


def unlinked_pairs(edges: pl.DataFrame, users: pl.Series, everyone: pl.Series) -> pl.DataFrame:
    """Each of ``users`` against every node it is not yet linked to (itself excluded)."""
    linked = pl.concat([edges.select("src", "dst"),
                        edges.select(src="dst", dst="src")]).cast(everyone.dtype)
    return (users.to_frame("src").join(everyone.to_frame("dst"), how="cross")
            .filter(pl.col("src") != pl.col("dst"))
            .join(linked, on=["src", "dst"], how="anti", maintain_order="left"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("edges", type=Path, help="Parquet edge list (src, dst)")
    parser.add_argument("features", type=Path, nargs="?", help="Parquet node features (optional)")
    parser.add_argument("--out", type=Path, default=Path("api_output"))
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--users", type=int, default=3, help="how many users to recommend for")
    parser.add_argument("--top-k", type=int, default=5)
    args = parser.parse_args()

    summary = ncnc.train(ncnc.TrainRequest(
        model="ncnc", out=args.out / "checkpoint", edges=args.edges, features=args.features,
        model_overrides={"hidden": args.hidden}, train_overrides={"epochs": args.epochs},
    ))
    print(f"trained: validation hits@100 {summary['valid']['hits@100']:.3f}")
    manifest = ncnc.export(args.out / "checkpoint", args.out / "bundle")
    print(f"exported: ONNX parity {manifest['parity']['onnx_max_abs_diff']:.1e}")

    bundle = ncnc.load_bundle(args.out / "bundle")
    scorer = bundle.scorer()
    everyone = bundle.id_map.ids
    pairs = unlinked_pairs(pl.read_parquet(args.edges), everyone.head(args.users), everyone)
    # Any Arrow table (from DuckDB, Spark, pyarrow.parquet), polars or pandas DataFrame scores
    # the same, and comes back as the kind of table it was.
    scored = scorer.score(pairs.to_arrow())
    top = pl.from_arrow(ncnc.top_k(scored, args.top_k, per_source=True))
    top.write_parquet(args.out / "recommendations.parquet")
    print(f"scored {scored.num_rows:,} pairs in memory; top {args.top_k} per user:")
    print(top)


if __name__ == "__main__":
    main()
