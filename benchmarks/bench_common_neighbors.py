"""Throughput of the common-neighbour step against the official code's way of computing it.

On a generated power-law graph (default 1M nodes, 10M undirected edges; Chung-Lu with weights
``(v + 10) ** -0.6``, ids shuffled) and two pair sets (default 1M each: uniformly random pairs, and
pairs two hops apart: ``i`` uniform, ``j`` a random neighbour of ``i``, ``k`` a random neighbour of
``j``, pair ``(i, k)``), for each feature width (default 64 and 256) this measures pairs/s of

* ``cn``: the NCN step, ``(sum_{u in N(i) & N(j)} x[u], |N(i) & N(j)|)``;
* ``split+gather``: the NCNC step, the split into common part and two differences capped at
  ``--cap``, then the three weighted sums of ``x`` rows;

for our implementation (``triton_kernels``: the numba twin on the CPU, the Triton kernels on CUDA)
and for a baseline that computes the step the way the official code (GraphPKU/NeuralCommonNeighbor
``utils.adjoverlap``) does: gather both rows of each pair as ``pair * n + node`` keys, intersect
with ``torch.searchsorted`` over the sorted keys, cap a difference by uniform draws with
replacement reweighted ``|S| / cap`` (its ``sparsesample_reweight``), then a sparse (CSR) x dense
matmul with ``x``. Both run on the same graph tensors, in the same chunks of ``--chunk`` pairs, one
after the other in the same process; the ratio is baseline time / our time.

It also reports our achieved memory bandwidth: bytes that must be read (the shorter row of each
pair, and for the split both rows; the ``x`` rows summed; the pairs and row pointers) / time; on a
GPU that ``benchmarks/gpu_specs.py`` knows, also (those bytes + the results written: the float32
sums, and the counts) / time as a fraction of the device's HBM bandwidth. Intermediates (the
split's lists) are not counted, so the fraction is a lower bound. Where
that approaches the machine's bandwidth (split+gather at d = 256 reads about 1 KB of ``x`` per
neighbour), neither implementation can go much faster: the baseline reads the same rows. For
split+gather it measures that floor directly: torch's sparse x dense matmul summing exactly the
rows our split selects (``gather_floor_s``), and ``ratio_bound`` = baseline time / floor, the
largest ratio any implementation reading those float32 rows could reach here.

On the CPU ``x`` and the graph's ``indices`` are copied into huge pages
(:func:`ncnc.triton_kernels.huge_page_copy`, as ``ncnc score`` loads a bundle); both sides read them.

    python benchmarks/bench_common_neighbors.py                                  # full size, CPU
    python benchmarks/bench_common_neighbors.py --nodes 100000 --edges 1000000 --pairs 100000
    python benchmarks/bench_common_neighbors.py --device cuda --out benchmarks/results/x.json
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
from gpu_specs import GPUSpec, spec_for
from torch import Tensor

import ncnc.triton_kernels as tk
from ncnc.triton_kernels import CSRGraph, build_csr, huge_page_copy

ROOT = Path(__file__).resolve().parents[1]

warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")


# --- inputs ------------------------------------------------------------------------------------


def power_law_graph(nodes: int, edges: int, seed: int, index_dtype: torch.dtype) -> CSRGraph:
    """Chung-Lu graph: endpoints drawn with probability proportional to ``(v + 10) ** -0.6``."""
    g = torch.Generator().manual_seed(seed)
    weights = (torch.arange(nodes, dtype=torch.float64) + 10.0).pow(-0.6)
    cdf = torch.cumsum(weights, 0)
    cdf /= cdf[-1].clone()
    # Oversample a little: duplicates and self loops are dropped by build_csr.
    ends = torch.searchsorted(cdf, torch.rand(2, int(edges * 1.01), generator=g, dtype=torch.float64))
    ends = torch.randperm(nodes, generator=g)[ends.clamp_(max=nodes - 1)]
    graph = build_csr(ends.t(), nodes)
    return CSRGraph(graph.indptr, graph.indices.to(index_dtype))


def random_pairs(graph: CSRGraph, count: int, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, graph.num_nodes, (count, 2), generator=g)


def two_hop_pairs(graph: CSRGraph, count: int, seed: int) -> Tensor:
    """``(i, k)`` with ``k`` a random neighbour of a random neighbour ``j`` of a uniform ``i``."""
    g = torch.Generator().manual_seed(seed)
    deg = graph.degree()
    out = []
    while sum(p.size(0) for p in out) < count:
        i = torch.randint(0, graph.num_nodes, (count,), generator=g)
        i = i[deg[i] > 0]
        j = graph.indices[graph.indptr[i] + (torch.rand(i.numel(), generator=g) * deg[i]).long()].long()
        k = graph.indices[graph.indptr[j] + (torch.rand(j.numel(), generator=g) * deg[j]).long()].long()
        keep = i != k
        out.append(torch.stack([i[keep], k[keep]], 1))
    return torch.cat(out)[:count]


# --- the baseline (official adjoverlap style) ---------------------------------------------------


def _row_keys(graph: CSRGraph, nodes: Tensor) -> Tensor:
    """``segment * n + neighbour`` for the rows of ``nodes`` (sorted: segment-major, rows sorted)."""
    starts = graph.indptr[nodes]
    sizes = graph.indptr[nodes + 1] - starts
    segment = torch.repeat_interleave(torch.arange(nodes.numel(), device=nodes.device), sizes)
    first = torch.cumsum(sizes, 0) - sizes
    position = torch.arange(segment.numel(), device=nodes.device) - first[segment] + starts[segment]
    return segment * graph.num_nodes + graph.indices[position].long()


def _member_of(keys: Tensor, sorted_keys: Tensor) -> Tensor:
    if sorted_keys.numel() == 0:
        return torch.zeros_like(keys, dtype=torch.bool)
    at = torch.searchsorted(sorted_keys, keys).clamp_(max=sorted_keys.numel() - 1)
    return sorted_keys[at] == keys


def _spmm(keys: Tensor, weights: Tensor | None, num_pairs: int, x: Tensor) -> Tensor:
    """CSR ``[num_pairs, n]`` from sorted ``pair * n + node`` keys, times ``x``."""
    n = x.size(0)
    rows, cols = keys // n, keys % n
    crow = torch.zeros(num_pairs + 1, dtype=torch.long, device=x.device)
    crow[1:] = torch.cumsum(torch.bincount(rows, minlength=num_pairs), 0)
    values = torch.ones(keys.numel(), dtype=x.dtype, device=x.device) if weights is None else weights
    return torch.sparse_csr_tensor(crow, cols, values.to(x.dtype), size=(num_pairs, n)) @ x


def baseline_cn(graph: CSRGraph, x: Tensor, pairs: Tensor) -> tuple[Tensor, Tensor]:
    keys_i, keys_j = _row_keys(graph, pairs[:, 0]), _row_keys(graph, pairs[:, 1])
    common = keys_j[_member_of(keys_j, keys_i)]
    counts = torch.bincount(common // graph.num_nodes, minlength=pairs.size(0))
    return _spmm(common, None, pairs.size(0), x), counts


def _sample_reweight(keys: Tensor, num_pairs: int, n: int, cap: int) -> tuple[Tensor, Tensor]:
    """Official ``sparsesample_reweight``: a row longer than ``cap`` keeps ``cap`` uniform draws
    with replacement, each weighted ``|row| / cap``; shorter rows are kept whole with weight 1."""
    sizes = torch.bincount(keys // n, minlength=num_pairs)
    if cap < 0 or not bool((sizes > cap).any()):
        return keys, torch.ones(keys.numel(), device=keys.device)
    first = torch.cumsum(sizes, 0) - sizes
    keep = sizes <= cap
    whole = keys[keep[keys // n]]
    capped = (~keep).nonzero().flatten()
    rows = capped.repeat_interleave(cap)
    draws = (torch.rand(rows.numel(), device=keys.device) * sizes[rows]).long() + first[rows]
    sampled = keys[draws]
    merged = torch.cat([whole, sampled])
    weights = torch.cat([torch.ones(whole.numel(), device=keys.device), (sizes[rows] / cap).float()])
    order = torch.argsort(merged // n, stable=True)  # CSR wants rows in order
    return merged[order], weights[order]


def baseline_split_gather(graph: CSRGraph, x: Tensor, pairs: Tensor, cap: int) -> Tensor:
    n, num_pairs = graph.num_nodes, pairs.size(0)
    keys_i, keys_j = _row_keys(graph, pairs[:, 0]), _row_keys(graph, pairs[:, 1])
    j_in_i = _member_of(keys_j, keys_i)
    i_in_j = _member_of(keys_i, keys_j)
    out = _spmm(keys_j[j_in_i], None, num_pairs, x)
    for only in (keys_i[~i_in_j], keys_j[~j_in_i]):
        keys, weights = _sample_reweight(only, num_pairs, n, cap)
        out = out + _spmm(keys, weights, num_pairs, x)
    return out


# --- ours ----------------------------------------------------------------------------------------


def ours_cn(graph: CSRGraph, x: Tensor, pairs: Tensor) -> tuple[Tensor, Tensor]:
    return tk.common_neighbor_sum(graph.indptr, graph.indices, x, pairs)


def all_members(split: tk.NeighborSplit) -> tk.RaggedSet:
    """The three sets of each pair as one ragged set, as NCNC's completion gathers them."""
    return tk.concat_ragged([split.common, split.only_i, split.only_j])


def ours_split_gather(graph: CSRGraph, x: Tensor, pairs: Tensor, cap: int) -> Tensor:
    """As NCNC's completion does it (``ncnc.triton_kernels.completion``): the three sets of each pair
    concatenated, then one gather (completion probabilities aside, which multiply the weights)."""
    members = all_members(tk.neighbor_split(graph.indptr, graph.indices, pairs, cap, seed=0))
    return tk.weighted_gather_sum(members.offsets, members.members, members.weights, x)


# --- measurement -------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed_pass(fn, chunks: list[Tensor], device: torch.device) -> float:
    """Seconds for ``fn`` over every chunk (outputs are dropped as they come)."""
    _sync(device)
    start = time.perf_counter()
    for chunk in chunks:
        fn(chunk)
    _sync(device)
    return time.perf_counter() - start


def bytes_read(graph: CSRGraph, pairs: Tensor, d: int, x_elem: int, op: str, members: int) -> int:
    """Bytes that must be read: pairs and row pointers; the shorter row (``cn``) or both rows
    (``split+gather``); the ``x`` rows summed (``members`` of them)."""
    deg = graph.degree()
    pairs = pairs.to(deg.device)
    di, dj = deg[pairs[:, 0]], deg[pairs[:, 1]]
    rows = torch.minimum(di, dj).sum() if op == "cn" else (di + dj).sum()
    per_pair = 2 * pairs.element_size() + 4 * 8
    return int(rows) * graph.indices.element_size() + pairs.size(0) * per_pair + members * d * x_elem


def measure(
    graph: CSRGraph, pair_sets: dict[str, Tensor], dims: list[int], args, device, spec: GPUSpec | None
) -> list[dict]:
    results = []
    for d in dims:
        x = torch.randn(graph.num_nodes, d, generator=torch.Generator().manual_seed(d))
        # On the CPU in huge pages, as the scorer loads its tables; both sides read this x.
        x = huge_page_copy(x) if device.type == "cpu" else x.to(device)
        for set_name, pairs in pair_sets.items():
            chunks = list(pairs.to(device).split(args.chunk))
            for op in ("cn", "split+gather"):
                if op == "cn":
                    ours = functools.partial(ours_cn, graph, x)
                    base = functools.partial(baseline_cn, graph, x)
                else:
                    ours = functools.partial(ours_split_gather, graph, x, cap=args.cap)
                    base = functools.partial(baseline_split_gather, graph, x, cap=args.cap)
                check_agreement(graph, x, chunks[0][:4096], op, args.cap)
                for fn in (ours, base):  # warm-up on one full chunk: compile / autotune / caches
                    timed_pass(fn, chunks[:1], device)
                times = {"ours": [], "baseline": []}
                for _ in range(args.repeats):  # interleaved, so load changes hit both alike
                    if not args.skip_baseline:
                        times["baseline"].append(timed_pass(base, chunks, device))
                    times["ours"].append(timed_pass(ours, chunks, device))
                results.append(summarise(graph, pairs, d, x, set_name, op, times, args, spec))
                print(format_row(results[-1]), flush=True)
                if op == "split+gather" and not args.skip_baseline:
                    add_gather_floor(results[-1], graph, x, chunks, args.cap, device)
    return results


def check_agreement(graph: CSRGraph, x: Tensor, pairs: Tensor, op: str, cap: int) -> None:
    """Both sides must do the same work: equal counts and sums (cn); equal set sizes (split)."""
    if op == "cn":
        (s1, c1), (s2, c2) = ours_cn(graph, x, pairs), baseline_cn(graph, x, pairs)
        if not torch.equal(c1.cpu(), c2.cpu()) or not torch.allclose(s1.float(), s2.float(), atol=1e-3):
            raise SystemExit("ours and the baseline disagree on the common-neighbour sums")
        return
    split = tk.neighbor_split(graph.indptr, graph.indices, pairs, cap)
    keys_i, keys_j = _row_keys(graph, pairs[:, 0]), _row_keys(graph, pairs[:, 1])
    common = int(_member_of(keys_j, keys_i).sum())
    if split.common.members.numel() != common:
        raise SystemExit("ours and the baseline disagree on the common parts")


def union_rows(split: tk.NeighborSplit, num_nodes: int) -> Tensor:
    """A CSR matrix ``[B, n]`` with, in row ``b``, every member of pair ``b``'s three sets."""
    rows = all_members(split)
    size = (rows.offsets.numel() - 1, num_nodes)
    return torch.sparse_csr_tensor(rows.offsets, rows.members, rows.weights, size=size)


def add_gather_floor(
    row: dict, graph: CSRGraph, x: Tensor, chunks: list[Tensor], cap: int, device: torch.device
) -> None:
    """Time torch's sparse (CSR) x dense matmul summing exactly the ``x`` rows our split selects
    (the split itself untimed): the cost of reading those rows, which every implementation,
    the baseline included, pays. ``ratio_bound`` = baseline time / that floor is the most any
    implementation reading float32 rows can beat the baseline by on this machine."""
    floor = 0.0
    for chunk in chunks:
        matrix = union_rows(tk.neighbor_split(graph.indptr, graph.indices, chunk, cap), x.size(0))
        _sync(device)
        start = time.perf_counter()
        matrix @ x
        _sync(device)
        floor += time.perf_counter() - start
    row["gather_floor_s"] = round(floor, 4)
    row["ratio_bound"] = round(row["baseline_s"] / floor, 2)
    print(
        f"{'':>7} gather floor {floor:.3f} s: no float32 implementation beats the baseline "
        f"by more than {row['ratio_bound']:.1f}x here",
        flush=True,
    )


def summarise(graph, pairs, d, x, set_name, op, times, args, spec: GPUSpec | None) -> dict:
    num_pairs = pairs.size(0)
    ours = statistics.median(times["ours"])
    row = {
        "pairs": set_name,
        "d": d,
        "op": op,
        "num_pairs": num_pairs,
        "ours_s": round(ours, 4),
        "ours_pairs_per_s": round(num_pairs / ours),
        "ours_runs_s": [round(t, 4) for t in times["ours"]],
    }
    if times["baseline"]:
        base = statistics.median(times["baseline"])
        row.update(
            baseline_s=round(base, 4),
            baseline_pairs_per_s=round(num_pairs / base),
            baseline_runs_s=[round(t, 4) for t in times["baseline"]],
            ratio=round(base / ours, 2),
        )
    members = members_summed(graph, pairs, set_name, op, args)
    row["x_rows_summed"] = members
    read = bytes_read(graph, pairs, d, x.element_size(), op, members)
    row["gbytes_read"] = round(read / 1e9, 3)
    row["ours_gb_per_s"] = round(row["gbytes_read"] / ours, 2)
    if spec is not None:
        moved = read + bytes_written(num_pairs, d, op)
        row["hbm_fraction"] = round(moved / ours / spec.hbm_bytes_per_s, 3)
    return row


def bytes_written(num_pairs: int, d: int, op: str) -> int:
    """The results: float32 sums ``[B, d]``, and for ``cn`` the int64 counts."""
    return num_pairs * (4 * d + (8 if op == "cn" else 0))


_members_cache: dict[tuple[str, str], int] = {}


def members_summed(graph: CSRGraph, pairs: Tensor, set_name: str, op: str, args) -> int:
    """How many ``x`` rows the step sums over the whole pair set (the same for every width)."""
    if (set_name, op) in _members_cache:
        return _members_cache[set_name, op]
    total = 0
    device = graph.indptr.device
    for chunk in pairs.to(device).split(args.chunk):
        if op == "cn":
            total += int(
                tk.common_neighbor_sum(
                    graph.indptr, graph.indices, torch.zeros(graph.num_nodes, 0, device=device), chunk
                )[1].sum()
            )
        else:
            split = tk.neighbor_split(graph.indptr, graph.indices, chunk, args.cap)
            total += sum(p.members.numel() for p in (split.common, split.only_i, split.only_j))
    _members_cache[set_name, op] = total
    return total


def format_row(r: dict) -> str:
    text = f"{r['pairs']:>7} d={r['d']:<4} {r['op']:<13} ours {r['ours_pairs_per_s']:>12,} pairs/s"
    if "ratio" in r:
        text += f"   baseline {r['baseline_pairs_per_s']:>10,} pairs/s   ratio {r['ratio']:.1f}x"
    if "ours_gb_per_s" in r:
        text += f"   {r['ours_gb_per_s']} GB/s ({r['gbytes_read']} GB read)"
    if "hbm_fraction" in r:
        text += f"   {100 * r['hbm_fraction']:.0f}% of HBM (reads + results)"
    return text


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=1_000_000)
    p.add_argument("--edges", type=int, default=10_000_000, help="undirected edges drawn")
    p.add_argument("--pairs", type=int, default=1_000_000, help="pairs per pair set")
    p.add_argument("--dims", type=int, nargs="+", default=[64, 256])
    p.add_argument("--cap", type=int, default=64, help="cap of each difference set (-1: none)")
    p.add_argument("--chunk", type=int, default=131_072, help="pairs per call, both sides")
    p.add_argument("--repeats", type=int, default=1, help="timed passes per measurement (median)")
    p.add_argument("--threads", type=int, default=2, help="torch (and our) CPU threads")
    p.add_argument("--index-dtype", choices=["int32", "int64"], default="int32")
    p.add_argument("--device", default="cpu", help="cpu, or cuda for the Triton kernels")
    p.add_argument("--skip-baseline", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/common_neighbors_cpu.json")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    start = time.perf_counter()
    graph = power_law_graph(args.nodes, args.edges, args.seed, getattr(torch, args.index_dtype))
    pair_sets = {
        "random": random_pairs(graph, args.pairs, args.seed + 1),
        "two_hop": two_hop_pairs(graph, args.pairs, args.seed + 2),
    }
    deg = graph.degree()
    graph_info = {
        "nodes": graph.num_nodes,
        "undirected_edges": graph.num_entries // 2,
        "max_degree": int(deg.max()),
        "mean_degree": round(float(deg.float().mean()), 2),
        "isolated_nodes": int((deg == 0).sum()),
        "index_dtype": args.index_dtype,
        "generated_s": round(time.perf_counter() - start, 1),
    }
    print(f"graph: {graph_info}", flush=True)
    for name, pairs in pair_sets.items():
        mins = torch.minimum(deg[pairs[:, 0]], deg[pairs[:, 1]]).float()
        print(f"{name}: mean shorter row {mins.mean():.1f}, mean rows {deg[pairs].float().mean():.1f}")
    if device.type == "cpu":
        dev_graph = CSRGraph(graph.indptr, huge_page_copy(graph.indices))
    else:
        dev_graph = graph.to(device)
    tk.common_neighbor_sum(
        dev_graph.indptr,
        dev_graph.indices,
        torch.zeros(graph.num_nodes, 1, device=device),
        pair_sets["random"][:1].to(device),
    )  # validates the graph once
    device_name = torch.cuda.get_device_name() if device.type == "cuda" else None
    spec = spec_for(device_name) if device_name else None
    if device_name:
        print(
            f"device: {device_name}; HBM bandwidth "
            + (
                f"{spec.hbm_bytes_per_s / 1e12:.2f} TB/s ({spec.name})"
                if spec
                else "not known: absolute figures only"
            )
        )
    results = measure(dev_graph, pair_sets, args.dims, args, device, spec)
    report = {
        "benchmark": "common-neighbour step: triton_kernels vs official adjoverlap-style baseline",
        "command": "python benchmarks/bench_common_neighbors.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "device": device_name or platform.processor() or platform.machine(),
        "hbm_bytes_per_s": spec.hbm_bytes_per_s if spec else None,
        "threads": args.threads,
        "torch": torch.__version__,
        "graph": graph_info,
        "cap": args.cap,
        "chunk": args.chunk,
        "repeats": args.repeats,
        "results": results,
        "total_s": round(time.perf_counter() - start, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
