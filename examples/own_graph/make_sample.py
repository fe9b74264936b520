"""Write a sample graph in the layout ``run.sh`` expects, for trying the example without own data.

    python examples/own_graph/make_sample.py OUT_DIR [--nodes N] [--seed S]

writes ``OUT_DIR/edges.parquet`` (columns ``src``, ``dst``: string user ids such as ``"n17"``)
and ``OUT_DIR/features.parquet`` (column ``node`` plus numeric columns ``f0`` .. ``f15``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ncnc.trainer.synthetic import community_graph


def write_sample(out: Path, nodes: int, seed: int) -> tuple[Path, Path]:
    """Generate a community graph of ``nodes`` users; return the edges and features paths."""
    graph = community_graph(nodes, avg_degree=8, num_communities=max(2, nodes // 100),
                            feature_dim=16, string_ids=True, seed=seed)
    out.mkdir(parents=True, exist_ok=True)
    edges, features = out / "edges.parquet", out / "features.parquet"
    graph.edges.write_parquet(edges)
    graph.features.write_parquet(features)
    return edges, features


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder to write edges.parquet, features.parquet")
    parser.add_argument("--nodes", type=int, default=2000, help="number of users")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    edges, features = write_sample(args.out, args.nodes, args.seed)
    print(f"wrote {edges} and {features}")


if __name__ == "__main__":
    main()
