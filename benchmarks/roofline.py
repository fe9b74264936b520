"""Roofline of the common-neighbour kernels and of NCN / NCNC scoring on an H100 and an H200.

For each workload, the bytes that must cross HBM per target pair and the FLOPs per pair, as
formulas of the feature width ``d``, the element sizes and the degree statistics of the pairs;
then the predicted pairs/s ``min(bandwidth / bytes, peak FLOP/s / FLOPs)`` on each device. The
degree statistics are measured here on the benchmark graphs, built by the benchmarks' own
generators (``bench_common_neighbors.power_law_graph`` and its random / two-hop pairs for the
kernels; ``trainer.synthetic.community_graph`` with ``bench_score.PairSampler``'s mix for NCN and
NCNC end to end), on ``--sample`` pairs of each set (means; default full-size graphs).

Bytes are counted two ways: **exact**, every element read or written once; and in **32-byte
sectors**, the unit DRAM serves: a random read of ``L`` bytes at a random ``a``-aligned offset
costs ``E[sectors] = (L + 32 - a) / 32`` sectors on average, so a 16-byte pair of row pointers
costs 40 bytes and a 40-byte neighbour row 68. Predictions use sectors; exact bytes bound them.
What is counted per target pair (``s_x`` table element, ``s_i`` index, ``s_p = 8`` pair id
bytes; ``c`` common neighbours, ``m`` the shorter row, ``a``, ``b`` the two difference sets):

* ``cn_sum`` (NCN's step): pair ``2 s_p``, row pointers of both ends, the shorter row ``m s_i``
  (probing the longer row is left out: a lower bound), ``c`` rows of ``x``, the fp32 sum ``4 d``
  and the count; ``c d`` FLOPs.
* ``neighbor_split`` (count pass + fill pass): the count pass as above without ``x``; the fill
  pass reads the pair, row pointers and both rows ``(deg_i + deg_j) s_i``, writes the commons
  (member, position in each row: ``3 x 8`` bytes each), the kept difference members (member 8 +
  weight 4 bytes each) and three offsets; no FLOPs.
* ``weighted_gather`` (NCNC's sum over its three sets, ``M = c + a' + b'`` members after
  capping): offsets, members (8) and weights (4), ``M`` rows of ``x``, the fp32 sum; ``2 M d``.
* ``NCN`` end to end: the pair in (``2 s_p``) and score + probability out (8 bytes), the
  endpoint rows ``h_i, h_j`` (``2 d s_x``) and the ``cn_sum`` traffic on the next table; FLOPs
  ``d`` for ``h_i * h_j``, ``c d`` and the head's ``8 d^2 + 2 d`` (xcnlin 2, xijlin 1 and lin 1
  ``d x d`` products, and lin's ``d x 1``; ``2 d^2`` FLOPs each).
* ``NCNC`` end to end (depth 1): the split, the completion pairs ``(j, u), u in N(i) \\ N(j)`` and
  ``(i, u), u in N(j) \\ N(i)`` (distinct within a batch: the inner model scores each once) each
  scored by NCN on the next tables, the gather over ``M`` members and the head once more.

``fused`` assumes the head reads only its two inputs from HBM; ``layered`` adds what running it
layer by layer (as onnxruntime does) moves: ``cn`` and ``h_i * h_j`` written and read, and the
head's 5 intermediate ``d``-wide activations (xcnlin's hidden and output, xijlin's output, their
sum, lin's hidden) written once and read once each, at the table's element size.

    python benchmarks/roofline.py                           # full-size graphs, 100k pairs per set
    python benchmarks/roofline.py --nodes 100000 --sample 20000
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from bench_common_neighbors import power_law_graph, random_pairs, two_hop_pairs
from gpu_specs import H100_SXM, H200, GPUSpec

import ncnc.triton_kernels as tk
from ncnc.triton_kernels import CSRGraph, build_csr

ROOT = Path(__file__).resolve().parents[1]

SECTOR = 32
PAIR_ID_BYTES = 8
INDPTR_BYTES = 8
OUT_BYTES = 8  # score and probability, float32 each
HEAD_ACTIVATIONS = 5


DEVICES = (H100_SXM, H200)


def random_read(length: float, align: int) -> float:
    """Expected bytes of 32-byte sectors fetched by a read of ``length`` bytes that starts at a
    random ``align``-aligned offset (0 for an empty read)."""
    return 0.0 if length <= 0 else SECTOR * (length + SECTOR - align) / SECTOR


# --- degree statistics -------------------------------------------------------------------------


def _counts(graph: CSRGraph, pairs: torch.Tensor) -> torch.Tensor:
    return tk.common_neighbor_sum(graph.indptr, graph.indices, torch.zeros(graph.num_nodes, 0), pairs)[1]


def pair_stats(graph: CSRGraph, pairs: torch.Tensor, cap: int) -> dict[str, float]:
    """Means over ``pairs`` of: both degrees, the shorter row, common neighbours ``c``, the two
    difference sets ``a + b`` before and after capping at ``cap`` (-1: none)."""
    deg = graph.degree()
    di, dj = deg[pairs[:, 0]].double(), deg[pairs[:, 1]].double()
    c = _counts(graph, pairs).double()
    difference = di + dj - 2 * c
    kept = difference if cap < 0 else torch.clamp(di - c, max=cap) + torch.clamp(dj - c, max=cap)
    return {
        "deg_sum": float((di + dj).mean()),
        "shorter": float(torch.minimum(di, dj).mean()),
        "common": float(c.mean()),
        "difference": float(difference.mean()),
        "difference_kept": float(kept.mean()),
    }


def completion_pairs(graph: CSRGraph, pairs: torch.Tensor, cap: int) -> torch.Tensor:
    """NCNC's completion pairs of ``pairs``, sorted ``(min, max)`` (the inner NCN is symmetric)."""
    split = tk.neighbor_split(graph.indptr, graph.indices, pairs, cap, 0)
    inner = torch.cat([
        torch.stack([pairs[split.only_i.segment_ids(), 1], split.only_i.members], 1),
        torch.stack([pairs[split.only_j.segment_ids(), 0], split.only_j.members], 1),
    ])
    return torch.sort(inner, dim=1).values


def ncnc_stats(graph: CSRGraph, pairs: torch.Tensor, cap: int, batch_size: int) -> dict:
    """Target-pair statistics, completion pairs per target pair (all and distinct within each
    batch of ``batch_size``) and the statistics of the distinct completion pairs."""
    inner = []
    for batch in pairs.split(batch_size):
        listed = completion_pairs(graph, batch, cap)
        keys = torch.unique(listed[:, 0] * graph.num_nodes + listed[:, 1])  # as the completion does
        inner.append(torch.stack([keys // graph.num_nodes, keys % graph.num_nodes], 1))
    inner_pairs = torch.cat(inner)
    distinct = inner_pairs.size(0)
    target = pair_stats(graph, pairs, cap)
    return {
        **target,
        "completion_per_pair": target["difference_kept"],
        "distinct_completion_per_pair": distinct / pairs.size(0),
        "inner": pair_stats(graph, inner_pairs, cap),
    }


# --- bytes and FLOPs per pair ------------------------------------------------------------------


@dataclass(frozen=True)
class Widths:
    d: int
    s_x: int  # bytes per table element
    s_i: int  # bytes per CSR index


def _row_pointers(sectors: bool) -> float:
    """Both ends' ``indptr[v], indptr[v + 1]``."""
    return 2 * (random_read(2 * INDPTR_BYTES, INDPTR_BYTES) if sectors else 2 * INDPTR_BYTES)


def _rows(count: float, row_bytes: float, align: int, sectors: bool) -> float:
    """``count`` random reads of ``row_bytes`` each."""
    return count * (random_read(row_bytes, align) if sectors else row_bytes)


def cn_sum_bytes(st: dict, w: Widths, sectors: bool) -> float:
    shorter = random_read(st["shorter"] * w.s_i, w.s_i) if sectors else st["shorter"] * w.s_i
    return (
        2 * PAIR_ID_BYTES + _row_pointers(sectors) + shorter
        + _rows(st["common"], w.d * w.s_x, w.s_x, sectors) + 4 * w.d + 8
    )


def split_bytes(st: dict, w: Widths, sectors: bool) -> float:
    count_pass = cn_sum_bytes({**st, "common": 0.0}, Widths(0, 0, w.s_i), sectors)  # writes the count
    both = st["deg_sum"] * w.s_i  # two random reads; E[sectors] is linear in the length
    fill_reads = (
        2 * PAIR_ID_BYTES + _row_pointers(sectors) + (2 * random_read(both / 2, w.s_i) if sectors else both)
    )
    writes = st["common"] * 3 * 8 + st["difference_kept"] * (8 + 4) + 3 * 8
    return count_pass + fill_reads + writes


def gather_bytes(members: float, w: Widths, sectors: bool) -> float:
    return 2 * 8 + members * (8 + 4) + _rows(members, w.d * w.s_x, w.s_x, sectors) + 4 * w.d


def head_flops(d: int) -> float:
    return 4 * 2 * d * d + 2 * d


def head_layer_bytes(w: Widths) -> float:
    """What a layer-by-layer head moves beyond its inputs: cn and xij written and read, and
    HEAD_ACTIVATIONS intermediate activations written and read."""
    return (2 + HEAD_ACTIVATIONS) * 2 * w.d * w.s_x


def ncn_cost(st: dict, w: Widths, sectors: bool, layered: bool) -> tuple[float, float]:
    """(bytes, FLOPs) of scoring one pair with NCN, pair in and score out included."""
    endpoints = _rows(2, w.d * w.s_x, w.s_x, sectors)
    moved = OUT_BYTES + endpoints + cn_sum_bytes(st, w, sectors) - (4 * w.d + 8)  # the sum stays on chip
    if layered:
        moved += head_layer_bytes(w)
    return moved, w.d + st["common"] * w.d + head_flops(w.d)


def ncnc_cost(st: dict, w: Widths, sectors: bool, layered: bool) -> tuple[float, float]:
    """(bytes, FLOPs) of scoring one target pair with NCNC (depth 1)."""
    inner_bytes, inner_flops = ncn_cost(st["inner"], w, sectors, layered)
    inner = st["distinct_completion_per_pair"]
    # An inner pair is written once as it is listed (its read is in ncn_cost) and its output is
    # one probability (4 bytes, read back by the gather as a weight), not a score and a probability.
    inner_bytes += 2 * PAIR_ID_BYTES - (OUT_BYTES - 4)
    members = st["common"] + st["completion_per_pair"]
    own = OUT_BYTES + _rows(2, w.d * w.s_x, w.s_x, sectors) + split_bytes(st, w, sectors)
    own += gather_bytes(members, w, sectors) - 4 * w.d  # the sum stays on chip
    if layered:
        own += head_layer_bytes(w)
    flops = w.d + 2 * members * w.d + head_flops(w.d) + inner * inner_flops
    return own + inner * inner_bytes, flops


# --- the table ---------------------------------------------------------------------------------


def predict(moved: float, flops: float, device: GPUSpec, precision: str) -> tuple[float, str]:
    """Pairs/s and what bounds it."""
    peak = device.fp32_flops if precision == "fp32" else device.bf16_flops
    memory, compute = device.hbm_bytes_per_s / moved, (peak / flops if flops else float("inf"))
    return (memory, "memory") if memory <= compute else (compute, "compute")


def rows_for(name: str, cost, st: dict, d: int, s_i: int, notes: str) -> list[dict]:
    """One row per precision: fp32 tables and head (CUDA cores), bf16 tables and head (tensor)."""
    out = []
    for precision, s_x in (("fp32", 4), ("bf16", 2)):
        w = Widths(d, s_x, s_i)
        exact, flops = cost(st, w, False)
        moved, _ = cost(st, w, True)
        row = {"workload": name, "precision": precision, "d": d, "bytes_exact": round(exact),
               "bytes_sectors": round(moved), "flops": round(flops),
               "flop_per_byte": round(flops / moved, 2), "notes": notes}
        for device in DEVICES:
            rate, bound = predict(moved, flops, device, precision)
            row[f"{device.name} pairs/s"] = round(rate)
            row[f"{device.name} bound"] = bound
        out.append(row)
    return out


def fmt(rate: float) -> str:
    return f"{rate / 1e9:.2f}G" if rate >= 1e9 else f"{rate / 1e6:.1f}M"


def print_table(rows: list[dict]) -> None:
    names = [d.name for d in DEVICES]
    print(f"\n{'workload':<34} {'prec':<5} {'B/pair exact':>12} {'B/pair sect':>11} {'FLOP/pair':>10} "
          + " ".join(f"{n:>16}" for n in names))
    for r in rows:
        cells = " ".join(f"{fmt(r[f'{n} pairs/s']):>8} {r[f'{n} bound'][:3]:>7}" for n in names)
        print(f"{r['workload']:<34} {r['precision']:<5} {r['bytes_exact']:>12,} {r['bytes_sectors']:>11,} "
              f"{r['flops']:>10,} {cells}")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=1_000_000, help="nodes of both graphs")
    p.add_argument("--cn-edges", type=int, default=10_000_000, help="undirected edges, kernel graph")
    p.add_argument("--score-degree", type=float, default=10.0, help="mean degree, scoring graph")
    p.add_argument("--sample", type=int, default=100_000, help="pairs per pair set")
    p.add_argument("--d", type=int, default=256)
    p.add_argument("--cap", type=int, default=64, help="the kernel benchmark's cap (NCNC scoring: none)")
    p.add_argument("--batch-size", type=int, default=65_536, help="scoring batch (distinct completion pairs)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/roofline.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()

    cn_graph = power_law_graph(args.nodes, args.cn_edges, 0, torch.int32)
    kernel_sets = {
        "random": random_pairs(cn_graph, args.sample, 1),
        "two_hop": two_hop_pairs(cn_graph, args.sample, 2),
    }
    kernel_stats = {name: pair_stats(cn_graph, pairs, args.cap) for name, pairs in kernel_sets.items()}

    from bench_score import PairSampler

    from ncnc.trainer.synthetic import community_graph

    synthetic = community_graph(
        args.nodes, avg_degree=args.score_degree, num_communities=1000, feature_dim=0, seed=0
    )
    edges = synthetic.edges.to_numpy()
    score_graph = build_csr(torch.from_numpy(edges), args.nodes)
    score_graph = CSRGraph(score_graph.indptr, score_graph.indices.int())
    frame = PairSampler(edges, args.nodes).sample(args.sample, np.random.default_rng(0))
    score_pairs = torch.from_numpy(frame.to_numpy().copy())
    ncn_st = pair_stats(score_graph, score_pairs, -1)
    ncnc_st = ncnc_stats(score_graph, score_pairs, -1, args.batch_size)

    rows = []
    for name, st in kernel_stats.items():
        members = st["common"] + st["difference_kept"]
        rows += rows_for(f"cn_sum, {name}",
                         lambda s, w, sec: (cn_sum_bytes(s, w, sec), s["common"] * w.d), st,
                         args.d, 4, "kernel graph")
        rows += rows_for(f"neighbor_split cap {args.cap}, {name}",
                         lambda s, w, sec: (split_bytes(s, w, sec), 0.0),
                         st, args.d, 4, "kernel graph")
        rows += rows_for(f"weighted_gather cap {args.cap}, {name}",
                         lambda s, w, sec, m=members: (gather_bytes(m, w, sec), 2 * m * w.d), st, args.d, 4,
                         "kernel graph, M = c + a' + b'")
    for layered in (False, True):
        kind = "layered" if layered else "fused"
        rows += rows_for(f"NCN end to end, {kind} head",
                         lambda s, w, sec, by_layer=layered: ncn_cost(s, w, sec, by_layer),
                         ncn_st, args.d, 4, "scoring graph, no cap")
        rows += rows_for(f"NCNC end to end, {kind} head",
                         lambda s, w, sec, by_layer=layered: ncnc_cost(s, w, sec, by_layer),
                         ncnc_st, args.d, 4, "scoring graph, no cap")

    print(
        f"kernel graph ({args.nodes:,} nodes, {cn_graph.num_entries // 2:,} edges): "
        + "; ".join(
            f"{k}: " + ", ".join(f"{a} {b:.2f}" for a, b in v.items()) for k, v in kernel_stats.items()
        )
    )
    print(
        f"scoring graph ({args.nodes:,} nodes, {score_graph.num_entries // 2:,} edges), pair mix: "
        + ", ".join(f"{a} {b:.2f}" for a, b in ncn_st.items())
    )
    print(
        f"NCNC: {ncnc_st['completion_per_pair']:.2f} completion pairs per target pair, "
        f"{ncnc_st['distinct_completion_per_pair']:.2f} distinct per batch of {args.batch_size:,}; "
        "inner pairs: "
        + ", ".join(f"{a} {b:.2f}" for a, b in ncnc_st["inner"].items())
    )
    print_table(rows)
    report = {
        "benchmark": "roofline of the common-neighbour kernels and NCN / NCNC scoring",
        "command": "python benchmarks/roofline.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "devices": [asdict(d) for d in DEVICES],
        "sector_bytes": SECTOR,
        "kernel_graph": {"nodes": args.nodes, "undirected_edges": cn_graph.num_entries // 2,
                         "pairs_per_set": args.sample, "cap": args.cap, "stats": kernel_stats},
        "scoring_graph": {"nodes": args.nodes, "undirected_edges": score_graph.num_entries // 2,
                          "pairs": args.sample, "ncn_stats": ncn_st, "ncnc_stats": ncnc_st},
        "rows": rows,
        "total_s": round(time.perf_counter() - start, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
