"""Print the top recommendations of a few users with the neighbours behind each (``because``).

    python examples/own_graph/show_reasons.py RECOMMENDATIONS.parquet [--users 3] [--top 3]

RECOMMENDATIONS.parquet is what ``ncnc score --top-k K --per-source --explain N`` writes. Each
reason is a common neighbour (a friend both already know) or, for NCNC, a completed one (a
friend of one that the model believes knows the other too, with that probability), with its
contribution: how much lower the score would be without it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import polars as pl


def describe(reason: dict) -> str:
    """``n5 (+0.120)`` for a common neighbour, ``n9 (p 0.41, +0.050)`` for a completed one."""
    weight = "" if reason["weight"] == 1 else f"p {reason['weight']:.2f}, "
    return f"{reason['id']} ({weight}{reason['contribution']:+.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recommendations", type=Path)
    parser.add_argument("--users", type=int, default=3, help="how many users to show")
    parser.add_argument("--top", type=int, default=3, help="recommendations shown per user")
    args = parser.parse_args()
    recs = pl.read_parquet(args.recommendations)
    print("Top recommendations and why (neighbour (contribution to the score); "
          "p: a completed neighbour's probability):")
    for user in recs["src"].unique(maintain_order=True).head(args.users):
        print(f"  {user}:")
        rows = recs.filter((pl.col("src") == user) & (pl.col("rank") <= args.top))
        for row in rows.iter_rows(named=True):
            reasons = ", ".join(describe(r) for r in row["because"]) or "no shared neighbours"
            print(f"    {row['rank']}. {row['dst']}  prob {row['prob']:.2f}  because {reasons}")


if __name__ == "__main__":
    main()
