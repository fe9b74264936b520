"""The common-neighbour step, every backend against the plain-torch reference (the specification).

* Public ops (``ncnc.triton_kernels.common_neighbor_sum`` / ``neighbor_split`` /
  ``weighted_gather_sum``): on the CPU (numba twin) and, when present, on CUDA (Triton).
* Triton launchers: in a child process under ``TRITON_INTERPRET=1`` (see ``interpret_worker``),
  and in-process on CUDA when present.
* ``torch.export`` of the custom ops: only outside interpreter mode.

References run in float64 on the CPU; integer outputs (counts, members, offsets) and the split's
weights must match exactly.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import Tensor

import ncnc.triton_kernels as tk
from ncnc.triton_kernels import CSRGraph, NeighborSplit, build_csr
from ncnc.triton_kernels.common_neighbors import (
    common_neighbor_sum_reference,
    concat_ragged_reference,
    endpoint_product_reference,
    neighbor_split_reference,
    weighted_gather_sum_reference,
)
from tests.triton_kernels.interpret_worker import InterpretedKernels

CUDA = torch.cuda.is_available()
INTERPRET_SET = os.environ.get("TRITON_INTERPRET") == "1"
DEVICES = ["cpu"] + (["cuda"] if CUDA else [])
requires_cuda = pytest.mark.skipif(not CUDA or INTERPRET_SET, reason="needs a CUDA GPU")
not_interpreted = pytest.mark.skipif(
    INTERPRET_SET, reason="torch.export of a triton_op fails while TRITON_INTERPRET=1"
)

# x dtype, atol, rtol against the float64 reference. atol allows float32 rounding over a sum of
# 10,000 unit-variance rows (the hub pair); a missing or extra row would be off by about 1. Half
# inputs accumulate in float32 as well, so they are held to float32 tolerances against the
# reference run on their widened values.
FLOAT_TOLERANCES = [
    pytest.param(torch.float32, 1e-3, 1e-5, id="fp32"),
    pytest.param(torch.float64, 1e-9, 1e-12, id="fp64"),
]
HALF_TOLERANCES = [
    pytest.param(torch.float16, 1e-3, 1e-5, id="fp16"),
    pytest.param(torch.bfloat16, 1e-3, 1e-5, id="bf16"),
]
INDEX_DTYPES = [pytest.param(torch.int32, id="int32"), pytest.param(torch.int64, id="int64")]
CAPS = [-1, 0, 1, 3, 10**6]


def assert_matches(actual: Tensor, expected: Tensor, name: str, atol: float = 0.0, rtol: float = 0.0):
    """Compare on the CPU; report the number of mismatches, the first indices and any NaN/inf."""
    actual, expected = actual.detach().cpu(), expected.detach().cpu()
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    if actual.is_floating_point() or expected.is_floating_point():
        a, e = actual.double(), expected.double()
        bad = ~torch.isclose(a, e, atol=atol, rtol=rtol, equal_nan=True)
    else:
        a, e = actual, expected
        bad = a != e
    if bool(bad.any()):
        where = bad.nonzero()[:5].tolist()
        shown = [f"{tuple(i)}: {a[tuple(i)].item()} vs {e[tuple(i)].item()}" for i in where]
        nonfinite = ""
        if a.is_floating_point():
            nonfinite = f"; NaN {int(a.isnan().sum())}, inf {int(a.isinf().sum())} in actual"
        pytest.fail(
            f"{name}: {int(bad.sum())} of {bad.numel()} elements differ (atol={atol}, rtol={rtol})"
            f"{nonfinite}; first: {'; '.join(shown)}"
        )


def assert_split_equal(actual: NeighborSplit, expected: NeighborSplit) -> None:
    for part in ("common", "only_i", "only_j"):
        for field in ("offsets", "members", "weights"):
            got, want = getattr(getattr(actual, part), field), getattr(getattr(expected, part), field)
            assert got.dtype == want.dtype, f"{part}.{field}: dtype {got.dtype} != {want.dtype}"
            assert_matches(got, want, f"{part}.{field}")


def flat_split(split: NeighborSplit) -> tuple[Tensor, ...]:
    return tuple(
        t for r in (split.common, split.only_i, split.only_j) for t in (r.offsets, r.members, r.weights)
    )


def as_split(flat: tuple[Tensor, ...]) -> NeighborSplit:
    return NeighborSplit(tk.RaggedSet(*flat[0:3]), tk.RaggedSet(*flat[3:6]), tk.RaggedSet(*flat[6:9]))


# --- graphs and pairs ------------------------------------------------------------------------

HUB, HUB_PARTNER, HUB_DEGREE = 0, 1, 10_050


def _random_graph(num_nodes: int = 200, num_edges: int = 1500, isolated: int = 12) -> CSRGraph:
    g = torch.Generator().manual_seed(0)
    return build_csr(torch.randint(0, num_nodes - isolated, (2, num_edges), generator=g).t(),
                     num_nodes)


def _hub_graph() -> CSRGraph:
    """Node 0 has degree 10,050; node 1 shares 599 of them; nodes 10,200.. are isolated."""
    g = torch.Generator().manual_seed(1)
    hub = torch.stack([torch.zeros(HUB_DEGREE, dtype=torch.long), torch.arange(1, HUB_DEGREE + 1)])
    partner = torch.stack([torch.ones(599, dtype=torch.long), torch.arange(2, 601)])
    rest = torch.randint(2, 10_200, (2, 3000), generator=g)
    return build_csr(torch.cat([hub, partner, rest], 1).t(), 10_300)


GRAPHS = {
    "random": _random_graph(),
    "hub": _hub_graph(),
    "empty": build_csr(torch.empty(0, 2, dtype=torch.long), 6),
}


def _pairs(name: str, num_random: int = 60, seed: int = 2) -> Tensor:
    graph = GRAPHS[name]
    n = graph.num_nodes
    g = torch.Generator().manual_seed(seed)
    if name == "hub":
        special = [(HUB, HUB_PARTNER), (HUB_PARTNER, HUB), (HUB, HUB), (HUB, 5), (5, HUB),
                   (HUB, 10_250), (10_250, 10_251), (HUB_PARTNER, HUB_PARTNER), (7, 7)]
    elif name == "empty":
        special = [(0, 1), (2, 2), (5, 0)]
    else:  # i == j, isolated nodes on either side, adjacent nodes
        u, v = int(graph.edge_index()[0, 0]), int(graph.edge_index()[1, 0])
        special = [(3, 3), (n - 1, 4), (4, n - 1), (n - 1, n - 2), (u, v)]
    random = torch.randint(0, n, (num_random, 2), generator=g)
    return torch.cat([torch.tensor(special, dtype=torch.long), random])


def _graph(name: str, index_dtype: torch.dtype = torch.int64, device: str = "cpu") -> CSRGraph:
    graph = GRAPHS[name]
    return CSRGraph(graph.indptr.to(device), graph.indices.to(index_dtype).to(device))


def _features(num_nodes: int, d: int, dtype: torch.dtype, seed: int = 3) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(num_nodes, d, generator=g, dtype=torch.float64).to(dtype)


def test_pairs_cover_the_adversarial_cases():
    for name in ("random", "hub"):
        counts = common_neighbor_sum_reference(
            GRAPHS[name].indptr, GRAPHS[name].indices, torch.zeros(GRAPHS[name].num_nodes, 1), _pairs(name)
        )[1]
        assert bool((counts == 0).any()) and bool((counts > 0).any())
    hub_counts = common_neighbor_sum_reference(
        GRAPHS["hub"].indptr, GRAPHS["hub"].indices, torch.zeros(10_300, 1), _pairs("hub")[:3]
    )[1]
    assert hub_counts.tolist() == [599, 599, HUB_DEGREE]


# --- public ops against the reference --------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("graph_name", list(GRAPHS))
@pytest.mark.parametrize("index_dtype", INDEX_DTYPES)
@pytest.mark.parametrize("d", [1, 37, 300])
@pytest.mark.parametrize("dtype, atol, rtol", FLOAT_TOLERANCES)
def test_common_neighbor_sum_matches_reference(device, graph_name, index_dtype, d, dtype, atol, rtol):
    graph, pairs = _graph(graph_name, index_dtype), _pairs(graph_name)
    x = _features(graph.num_nodes, d, dtype)
    want_sums, want_counts = common_neighbor_sum_reference(graph.indptr, graph.indices, x.double(), pairs)
    dev = graph.to(device)
    sums, counts = tk.common_neighbor_sum(dev.indptr, dev.indices, x.to(device), pairs.to(device))
    assert sums.dtype == dtype and counts.dtype == torch.int64 and sums.device.type == device
    assert_matches(counts, want_counts, "counts")
    assert_matches(sums, want_sums, "sums", atol, rtol)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype, atol, rtol", HALF_TOLERANCES)
def test_half_features_accumulate_in_float32(device, dtype, atol, rtol):
    graph, pairs = _graph("hub"), _pairs("hub")
    x = _features(graph.num_nodes, 40, dtype)
    want, _ = common_neighbor_sum_reference(graph.indptr, graph.indices, x.double(), pairs)
    dev = graph.to(device)
    sums, _ = tk.common_neighbor_sum(dev.indptr, dev.indices, x.to(device), pairs.to(device))
    assert sums.dtype == torch.float32
    assert_matches(sums, want, "sums", atol, rtol)
    split = neighbor_split_reference(graph.indptr, graph.indices, pairs, 3)
    r = split.only_i
    got = tk.weighted_gather_sum(
        r.offsets.to(device), r.members.to(device), r.weights.to(device), x.to(device)
    )
    assert_matches(
        got, weighted_gather_sum_reference(r.offsets, r.members, r.weights, x.double()), "gather", atol, rtol
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("graph_name", list(GRAPHS))
@pytest.mark.parametrize("index_dtype", INDEX_DTYPES)
@pytest.mark.parametrize("cap", CAPS)
@pytest.mark.parametrize("seed", [0, 987_654_321])
def test_neighbor_split_matches_reference_bit_for_bit(device, graph_name, index_dtype, cap, seed):
    graph, pairs = _graph(graph_name, index_dtype), _pairs(graph_name)
    want = neighbor_split_reference(graph.indptr, graph.indices, pairs, cap, seed)
    dev = graph.to(device)
    assert_split_equal(tk.neighbor_split(dev.indptr, dev.indices, pairs.to(device), cap, seed), want)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", [-7, 2**40 + 3])
def test_capping_accepts_any_seed(device, seed):
    """Regression: the reference hash overflowed int64 for seeds beyond about 2**33."""
    graph, pairs = _graph("random"), _pairs("random")
    want = neighbor_split_reference(graph.indptr, graph.indices, pairs, 2, seed)
    dev = graph.to(device)
    assert_split_equal(tk.neighbor_split(dev.indptr, dev.indices, pairs.to(device), 2, seed), want)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("member_dtype", INDEX_DTYPES)
@pytest.mark.parametrize("d", [1, 37, 300])
@pytest.mark.parametrize("dtype, atol, rtol", FLOAT_TOLERANCES)
def test_weighted_gather_sum_matches_reference(device, member_dtype, d, dtype, atol, rtol):
    graph, pairs = _graph("hub"), _pairs("hub")
    split = neighbor_split_reference(graph.indptr, graph.indices, pairs, cap=-1)
    r = split.only_i  # ragged with empty segments and one of 10,000 members
    weights = torch.rand(r.members.numel(), generator=torch.Generator().manual_seed(4))
    x = _features(graph.num_nodes, d, dtype)
    want = weighted_gather_sum_reference(r.offsets, r.members, weights, x.double())
    got = tk.weighted_gather_sum(
        r.offsets.to(device), r.members.to(member_dtype).to(device), weights.to(device), x.to(device)
    )
    assert got.dtype == dtype
    assert_matches(got, want, "gather", atol, rtol)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("num_pairs", [0, 1])
def test_zero_and_one_pair(device, num_pairs):
    graph = _graph("random", device=device)
    pairs = _pairs("random")[3 : 3 + num_pairs]  # (3, 3) when one pair
    x = _features(graph.num_nodes, 5, torch.float32)
    sums, counts = tk.common_neighbor_sum(graph.indptr, graph.indices, x.to(device), pairs.to(device))
    want_sums, want_counts = common_neighbor_sum_reference(
        GRAPHS["random"].indptr, GRAPHS["random"].indices, x.double(), pairs
    )
    assert sums.shape == (num_pairs, 5) and counts.shape == (num_pairs,)
    assert_matches(counts, want_counts, "counts")
    assert_matches(sums, want_sums, "sums", 1e-5, 1e-5)
    split = tk.neighbor_split(graph.indptr, graph.indices, pairs.to(device), cap=2)
    assert_split_equal(
        split, neighbor_split_reference(GRAPHS["random"].indptr, GRAPHS["random"].indices, pairs, cap=2)
    )
    r = split.only_j
    got = tk.weighted_gather_sum(r.offsets, r.members, r.weights, x.to(device))
    assert got.shape == (num_pairs, 5)


@pytest.mark.parametrize("device", DEVICES)
def test_int32_pairs_give_the_same_results(device):
    graph, pairs = _graph("hub", device=device), _pairs("hub").to(device)
    x = _features(graph.num_nodes, 6, torch.float32).to(device)
    wide = tk.common_neighbor_sum(graph.indptr, graph.indices, x, pairs)
    narrow = tk.common_neighbor_sum(graph.indptr, graph.indices, x, pairs.int())
    assert_matches(narrow[1], wide[1], "counts")
    assert_matches(narrow[0], wide[0], "sums")
    assert_split_equal(
        tk.neighbor_split(graph.indptr, graph.indices, pairs.int(), 3, 1),
        tk.neighbor_split(graph.indptr, graph.indices, pairs, 3, 1),
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("index_dtype", INDEX_DTYPES)
@pytest.mark.parametrize("d", [1, 37, 300])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("num_pairs", [0, 1, 5000])
def test_endpoint_product_matches_reference_bit_for_bit(device, index_dtype, d, dtype, num_pairs):
    # 5,000 pairs over 300 nodes: repeated rows, i == j, and enough pairs for the thread pool.
    h = _features(300, d, dtype).to(device)
    g = torch.Generator().manual_seed(4)
    pairs = torch.cat([torch.tensor([[7, 7], [0, 299]]), torch.randint(0, 300, (num_pairs, 2), generator=g)])
    pairs = pairs[:num_pairs].to(index_dtype).to(device)
    got = tk.endpoint_product(h, pairs)
    want = endpoint_product_reference(h.cpu(), pairs.cpu().long())
    # Half-precision tables give float32 products (exact).
    half = dtype in (torch.float16, torch.bfloat16)
    assert got.dtype == (torch.float32 if half else dtype) and got.shape == (num_pairs, d)
    assert torch.equal(got.cpu(), want), f"{int((got.cpu() != want).sum())} elements differ"


def test_endpoint_product_is_differentiable_through_the_reference():
    h = _features(20, 4, torch.float64).requires_grad_()
    pairs = torch.tensor([[1, 2], [2, 2], [3, 1]])
    tk.endpoint_product(h, pairs).sum().backward()
    want = torch.zeros(20, 4, dtype=torch.float64)
    for i, j in pairs.tolist():
        want[i] += h[j].detach()
        want[j] += h[i].detach()
    assert torch.allclose(h.grad, want)


@pytest.mark.parametrize(
    "h, pairs, message",
    [
        (torch.zeros(5), torch.zeros(1, 2, dtype=torch.long), "h must be a 2-D tensor"),
        (torch.zeros(5, 3), torch.tensor([[0, 5]]), r"node ids outside \[0, 5\)"),
        (torch.zeros(5, 3), torch.tensor([[-1, 0]]), "min -1"),
        (torch.zeros(5, 3), torch.zeros(1, 3, dtype=torch.long), r"shape \[B, 2\]"),
        (torch.zeros(5, 3), torch.zeros(1, 2), "int32 or int64"),
    ],
)
def test_endpoint_product_rejects_bad_inputs(h, pairs, message):
    with pytest.raises(ValueError, match=message):
        tk.endpoint_product(h, pairs)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("graph_name", ["random", "hub", "empty"])
@pytest.mark.parametrize("cap", [-1, 3])
def test_concat_ragged_matches_reference_and_sums_like_the_parts(device, graph_name, cap):
    graph = _graph(graph_name, device=device)
    pairs = _pairs(graph_name).to(device)
    split = tk.neighbor_split(graph.indptr, graph.indices, pairs, cap)
    g = torch.Generator().manual_seed(5)
    scaled = tk.RaggedSet(
        split.only_j.offsets,
        split.only_j.members,
        split.only_j.weights * torch.rand(split.only_j.members.numel(), generator=g).to(device),
    )
    parts = [split.common, split.only_i, scaled]
    got = tk.concat_ragged(parts)
    want = concat_ragged_reference(
        [tk.RaggedSet(*(t.cpu() for t in (p.offsets, p.members, p.weights))) for p in parts]
    )
    for field in ("offsets", "members", "weights"):
        assert_matches(getattr(got, field), getattr(want, field), field)
    # pair b's segment: its common part, then N(i) \ N(j), then the scaled N(j) \ N(i)
    b = int(torch.argmax(split.common.sizes() + split.only_i.sizes()))
    expect = torch.cat([p.members[p.offsets[b] : p.offsets[b + 1]] for p in parts])
    assert torch.equal(got.members[got.offsets[b] : got.offsets[b + 1]], expect)
    x = _features(graph.num_nodes, 7, torch.float64).to(device)
    summed = sum(tk.weighted_gather_sum(p.offsets, p.members, p.weights, x) for p in parts)
    assert_matches(
        tk.weighted_gather_sum(got.offsets, got.members, got.weights, x), summed, "sum", 1e-9, 1e-12
    )


@pytest.mark.parametrize("num_pairs", [0, 1, 5000])
def test_concat_ragged_of_zero_one_and_many_pairs(num_pairs):
    g = torch.Generator().manual_seed(6)
    parts = []
    for _ in range(3):
        sizes = torch.randint(0, 4, (num_pairs,), generator=g)
        offsets = torch.zeros(num_pairs + 1, dtype=torch.long)
        offsets[1:] = torch.cumsum(sizes, 0)
        total = int(offsets[-1])
        parts.append(
            tk.RaggedSet(offsets, torch.randint(0, 99, (total,), generator=g), torch.rand(total, generator=g))
        )
    got, want = tk.concat_ragged(parts), concat_ragged_reference(parts)
    for field in ("offsets", "members", "weights"):
        assert torch.equal(getattr(got, field), getattr(want, field)), field


def test_concat_ragged_rejects_sets_over_other_pairs():
    one = tk.RaggedSet(torch.tensor([0, 1]), torch.tensor([3]), torch.ones(1))
    two = tk.RaggedSet(torch.tensor([0, 0, 1]), torch.tensor([4]), torch.ones(1))
    with pytest.raises(ValueError, match="same pairs"):
        tk.concat_ragged([one, two])
    with pytest.raises(ValueError, match="at least one"):
        tk.concat_ragged([])


# --- gradients ---------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("graph_name", ["random", "hub"])
def test_gradients_match_reference_autograd(device, graph_name):
    graph, pairs = _graph(graph_name), _pairs(graph_name)
    x = _features(graph.num_nodes, 19, torch.float32)
    g = torch.Generator().manual_seed(5)
    upstream = torch.randn(pairs.size(0), 19, generator=g)
    split = neighbor_split_reference(graph.indptr, graph.indices, pairs, cap=3)
    weights = torch.rand(split.only_i.members.numel(), generator=g)

    def loss(fn_sum, fn_gather, xs, dev):
        sums = fn_sum(xs)
        r = split.only_i
        gathered = fn_gather(r.offsets.to(dev), r.members.to(dev), weights.to(dev), xs)
        return (sums * upstream.to(dev)).sum() + (gathered * upstream.to(dev)).sum() * 0.5

    x_ref = x.double().requires_grad_()
    loss(lambda xs: common_neighbor_sum_reference(graph.indptr, graph.indices, xs, pairs)[0],
         weighted_gather_sum_reference, x_ref, "cpu").backward()
    dev = graph.to(device)
    x_dev = x.to(device).requires_grad_()
    loss(lambda xs: tk.common_neighbor_sum(dev.indptr, dev.indices, xs, pairs.to(device))[0],
         tk.weighted_gather_sum, x_dev, device).backward()
    assert x_dev.grad.dtype == torch.float32
    assert_matches(x_dev.grad, x_ref.grad, "grad_x", 1e-4, 1e-5)


def test_gradcheck_cpu():
    g = torch.Generator().manual_seed(12)
    graph = build_csr(torch.randint(0, 25, (2, 90), generator=g).t(), 30)
    pairs = torch.randint(0, 30, (20, 2), generator=g)
    x = _features(graph.num_nodes, 2, torch.float64).requires_grad_()
    torch.autograd.gradcheck(
        lambda xs: tk.common_neighbor_sum(graph.indptr, graph.indices, xs, pairs)[0], (x,)
    )
    split = neighbor_split_reference(graph.indptr, graph.indices, pairs, cap=2)
    r = split.only_j
    torch.autograd.gradcheck(lambda xs: tk.weighted_gather_sum(r.offsets, r.members, r.weights, xs), (x,))


# --- invariances --------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_results_do_not_depend_on_pair_order_or_batch_size(device):
    graph, pairs = _graph("hub", device=device), _pairs("hub").to(device)
    x = _features(graph.num_nodes, 16, torch.float32).to(device)
    sums, counts = tk.common_neighbor_sum(graph.indptr, graph.indices, x, pairs)
    perm = torch.randperm(pairs.size(0), generator=torch.Generator().manual_seed(6)).to(device)
    p_sums, p_counts = tk.common_neighbor_sum(graph.indptr, graph.indices, x, pairs[perm])
    assert_matches(p_counts, counts[perm], "counts (permuted)")
    assert_matches(p_sums, sums[perm], "sums (permuted)")
    whole = tk.neighbor_split(graph.indptr, graph.indices, pairs, cap=3, seed=11)
    for chunk_size in (1, 7):  # 7 does not divide the batch
        parts = [
            tk.neighbor_split(graph.indptr, graph.indices, c, cap=3, seed=11) for c in pairs.split(chunk_size)
        ]
        for part in ("common", "only_i", "only_j"):
            members = torch.cat([getattr(p, part).members for p in parts])
            weights = torch.cat([getattr(p, part).weights for p in parts])
            sizes = torch.cat([getattr(p, part).sizes() for p in parts])
            assert_matches(members, getattr(whole, part).members, f"{part}.members (chunks of {chunk_size})")
            assert_matches(weights, getattr(whole, part).weights, f"{part}.weights (chunks of {chunk_size})")
            assert_matches(sizes, getattr(whole, part).sizes(), f"{part}.sizes (chunks of {chunk_size})")


def test_results_do_not_depend_on_edge_order():
    graph, pairs = GRAPHS["random"], _pairs("random")
    edges = graph.edge_index().t()
    shuffled = build_csr(edges[torch.randperm(edges.size(0))].flip(1), graph.num_nodes)
    x = _features(graph.num_nodes, 8, torch.float32)
    a = tk.common_neighbor_sum(graph.indptr, graph.indices, x, pairs)
    b = tk.common_neighbor_sum(shuffled.indptr, shuffled.indices, x, pairs)
    assert_matches(a[0], b[0], "sums")
    assert_split_equal(
        tk.neighbor_split(shuffled.indptr, shuffled.indices, pairs, 2),
        tk.neighbor_split(graph.indptr, graph.indices, pairs, 2),
    )


# --- validation at the public boundary --------------------------------------------------------


def _small_csr() -> tuple[Tensor, Tensor]:
    g = build_csr(torch.tensor([[0, 1], [0, 2], [1, 2], [2, 3]]), 5)
    return g.indptr.clone(), g.indices.clone()


def test_unsorted_row_is_rejected_and_check_false_skips_the_scan():
    indptr, indices = _small_csr()
    indices[0], indices[1] = indices[1].clone(), indices[0].clone()  # row 0 becomes [2, 1]
    x, pairs = torch.zeros(5, 2), torch.tensor([[0, 1]])
    with pytest.raises(ValueError, match="row 0 .* not sorted"):
        tk.common_neighbor_sum(indptr, indices, x, pairs)
    with pytest.raises(ValueError, match="not sorted"):
        tk.neighbor_split(indptr, indices, pairs)
    tk.common_neighbor_sum(indptr, indices, x, pairs, check=False)  # the caller vouches for it


def test_validation_is_remembered_until_the_graph_changes_in_place():
    indptr, indices = _small_csr()
    x, pairs = torch.zeros(5, 2), torch.tensor([[0, 3]])
    tk.common_neighbor_sum(indptr, indices, x, pairs)
    indices[1] = 1  # duplicate in row 0; the in-place write bumps the tensor version
    with pytest.raises(ValueError, match="not sorted without duplicates"):
        tk.common_neighbor_sum(indptr, indices, x, pairs)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: a.update(pairs=torch.tensor([[0, 5]])), r"pairs hold node ids outside \[0, 5\)"),
        (lambda a: a.update(pairs=torch.tensor([[-1, 2]])), "outside"),
        (lambda a: a.update(pairs=torch.tensor([[0.0, 1.0]])), "pairs must be int32 or int64"),
        (lambda a: a.update(pairs=torch.tensor([0, 1])), r"pairs must have shape \[B, 2\]"),
        (lambda a: a.update(indptr=a["indptr"].int()), "indptr must be a non-empty 1-D int64"),
        (lambda a: a.update(indices=a["indices"].float()), "indices must be a 1-D int32/int64"),
        (lambda a: a.update(indices=a["indices"] + 3), "node ids outside"),
        (lambda a: a.update(x=torch.zeros(5, 2, dtype=torch.long)), "x must be a 2-D float"),
        (lambda a: a.update(x=torch.zeros(4, 2)), "x has 4 rows but the graph has 5 nodes"),
        (lambda a: a.update(x=torch.zeros(5, 2, device="meta")), "one device.*x on meta"),
    ],
)
def test_common_neighbor_sum_rejects_bad_inputs(change, message):
    indptr, indices = _small_csr()
    args = {"indptr": indptr, "indices": indices, "x": torch.zeros(5, 2), "pairs": torch.tensor([[0, 1]])}
    change(args)
    with pytest.raises(ValueError, match=message):
        tk.common_neighbor_sum(**args)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: a.update(offsets=torch.tensor([0, 2, 1])), "offsets must run from 0 to len"),
        (lambda a: a.update(offsets=torch.tensor([0, 3, 2])), "non-decreasing"),
        (lambda a: a.update(offsets=torch.tensor([0, 2], dtype=torch.int32)), "offsets must be"),
        (lambda a: a.update(members=torch.tensor([0, 9])), r"members hold ids outside \[0, 5\)"),
        (lambda a: a.update(weights=torch.ones(3)), "shaped like members"),
        (lambda a: a.update(weights=torch.ones(2, requires_grad=True)), "pass weights.detach"),
        (lambda a: a.update(x=torch.zeros(5, 2, device="meta")), "one device"),
    ],
)
def test_weighted_gather_sum_rejects_bad_inputs(change, message):
    args = {
        "offsets": torch.tensor([0, 2]),
        "members": torch.tensor([0, 4]),
        "weights": torch.ones(2),
        "x": torch.zeros(5, 2),
    }
    change(args)
    with pytest.raises(ValueError, match=message):
        tk.weighted_gather_sum(**args)


# --- torch.export: one node per op (outside interpreter mode) --------------------------------


class _NCNStep(torch.nn.Module):
    def forward(self, indptr: Tensor, indices: Tensor, x: Tensor, pairs: Tensor) -> Tensor:
        sums, counts = tk.common_neighbor_sum(indptr, indices, x, pairs)
        return sums * 2.0 + counts.unsqueeze(1)


class _NCNCStep(torch.nn.Module):
    def forward(self, indptr: Tensor, indices: Tensor, x: Tensor, pairs: Tensor) -> Tensor:
        split = tk.neighbor_split(indptr, indices, pairs, 3, 0)
        r = split.only_i
        return tk.weighted_gather_sum(r.offsets, r.members, r.weights, x)


def _export(module: torch.nn.Module, graph: CSRGraph, x: Tensor, pairs: Tensor):
    dims = {"indptr": None, "indices": None, "x": None, "pairs": {0: torch.export.Dim("num_pairs")}}
    return torch.export.export(module, (graph.indptr, graph.indices, x, pairs), dynamic_shapes=dims)


def _ncnc_targets(program) -> list[str]:
    return [str(n.target) for n in program.graph.nodes if n.op == "call_function" and "ncnc" in str(n.target)]


@not_interpreted
def test_export_keeps_each_custom_op_as_one_node(tmp_path):
    graph = GRAPHS["random"]
    x = _features(graph.num_nodes, 8, torch.float32)
    program = _export(_NCNStep(), graph, x, _pairs("random")[:10])
    assert _ncnc_targets(program) == ["ncnc.common_neighbor_sum.default"]
    path = tmp_path / "ncn.pt2"
    torch.export.save(program, path)
    loaded = torch.export.load(path).module()
    other = _pairs("random", num_random=33, seed=9)  # a batch size other than the traced one
    assert_matches(
        loaded(graph.indptr, graph.indices, x, other),
        _NCNStep()(graph.indptr, graph.indices, x, other),
        "loaded",
        1e-6,
        1e-6,
    )
    ncnc = _export(_NCNCStep(), graph, x, _pairs("random")[:10])
    assert _ncnc_targets(ncnc) == ["ncnc.neighbor_split.default", "ncnc.weighted_gather_sum.default"]
    assert_matches(
        ncnc.module()(graph.indptr, graph.indices, x, other),
        _NCNCStep()(graph.indptr, graph.indices, x, other),
        "ncnc",
        1e-6,
        1e-6,
    )


@not_interpreted
def test_exported_program_loads_in_a_fresh_process(tmp_path):
    graph = GRAPHS["random"]
    x = _features(graph.num_nodes, 8, torch.float32)
    torch.export.save(_export(_NCNStep(), graph, x, _pairs("random")[:10]), tmp_path / "ncn.pt2")
    torch.save(
        {"indptr": graph.indptr, "indices": graph.indices, "x": x, "pairs": _pairs("random")},
        tmp_path / "in.pt",
    )
    script = textwrap.dedent(
        f"""
        import torch, ncnc.triton_kernels  # registers torch.ops.ncnc before loading
        a = torch.load({str(tmp_path / "in.pt")!r})
        program = torch.export.load({str(tmp_path / "ncn.pt2")!r}).module()
        out = program(a["indptr"], a["indices"], a["x"], a["pairs"])
        torch.save(out, {str(tmp_path / "out.pt")!r})
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    want = _NCNStep()(graph.indptr, graph.indices, x, _pairs("random"))
    assert_matches(torch.load(tmp_path / "out.pt"), want, "fresh-process output", 1e-6, 1e-6)


# --- Triton kernels: interpreter on the CPU, and CUDA when present -----------------------------


@pytest.fixture(scope="module", params=["interpreter", pytest.param("cuda", marks=requires_cuda)])
def triton_backend(request):
    """(launchers, device): launchers run under TRITON_INTERPRET=1 in a child process, or on CUDA."""
    if request.param == "interpreter":
        kernels = InterpretedKernels()
        yield kernels, "cpu"
        kernels.close()
    else:
        from ncnc.triton_kernels import common_neighbors_triton

        yield common_neighbors_triton, "cuda"


# Few pairs: the interpreter spends about 8 ms per program.
TRITON_CASES = [
    pytest.param("random", torch.int32, 37, 24, id="random-int32-d37"),
    pytest.param("random", torch.int64, 70, 12, id="random-int64-d70"),
    pytest.param("hub", torch.int64, 8, 0, id="hub-int64-d8"),
    pytest.param("empty", torch.int32, 5, 4, id="empty-int32-d5"),
]


@pytest.mark.parametrize("graph_name, index_dtype, d, num_random", TRITON_CASES)
def test_triton_common_neighbor_sum_and_backward(triton_backend, graph_name, index_dtype, d, num_random):
    kernels, device = triton_backend
    graph, pairs = _graph(graph_name, index_dtype), _pairs(graph_name, num_random)
    if graph_name == "hub":  # (hub, hub) and the rest are covered by the public-op tests
        pairs = torch.tensor([[HUB, HUB_PARTNER], [5, HUB], [HUB, 10_250], [7, 7]])
    x = _features(graph.num_nodes, d, torch.float32)
    want_sums, want_counts = common_neighbor_sum_reference(graph.indptr, graph.indices, x.double(), pairs)
    dev = graph.to(device)
    sums, counts = kernels.common_neighbor_sum_triton(dev.indptr, dev.indices, x.to(device), pairs.to(device))
    assert_matches(counts, want_counts, "counts")
    assert_matches(sums, want_sums, "sums", 1e-4, 1e-5)
    assert_matches(
        kernels.common_neighbor_count_triton(dev.indptr, dev.indices, pairs.to(device)),
        want_counts,
        "count pass",
    )

    upstream = torch.randn(pairs.size(0), d, generator=torch.Generator().manual_seed(7))
    x_ref = x.double().requires_grad_()
    common_neighbor_sum_reference(graph.indptr, graph.indices, x_ref, pairs)[0].backward(upstream.double())
    grad = kernels.common_neighbor_sum_backward_triton(
        dev.indptr, dev.indices, pairs.to(device), upstream.to(device), graph.num_nodes
    )
    assert_matches(grad, x_ref.grad, "grad_x", 1e-4, 1e-5)


@pytest.mark.parametrize("num_pairs, d", [(0, 4), (1, 4), (3, 0)])
def test_triton_degenerate_sizes(triton_backend, num_pairs, d):
    kernels, device = triton_backend
    graph, pairs = _graph("random", device=device), _pairs("random")[:num_pairs]
    x = _features(graph.num_nodes, d, torch.float32)
    sums, counts = kernels.common_neighbor_sum_triton(
        graph.indptr, graph.indices, x.to(device), pairs.to(device)
    )
    want_sums, want_counts = common_neighbor_sum_reference(
        GRAPHS["random"].indptr, GRAPHS["random"].indices, x.double(), pairs
    )
    assert sums.shape == (num_pairs, d)
    assert_matches(counts, want_counts, "counts")
    assert_matches(sums, want_sums, "sums", 1e-5, 1e-5)


# The interpreter walks a row 16 lanes at a time, about 20 ms a step: pairs with the hub are run
# capped (the hub row is then never walked); uncapped hub pairs are covered by the public-op tests.
@pytest.mark.parametrize(
    "graph_name, index_dtype, caps, pairs",
    [
        pytest.param("random", torch.int64, (-1, 1, 3, 10**6), _pairs("random")[:20], id="random-int64"),
        pytest.param("random", torch.int32, (0, 2), _pairs("random")[:12], id="random-int32"),
        pytest.param(
            "hub",
            torch.int32,
            (3,),
            torch.tensor([[HUB, HUB_PARTNER], [5, HUB], [HUB, 10_250]]),
            id="hub-capped",
        ),
        pytest.param(
            "hub",
            torch.int64,
            (-1,),
            torch.tensor([[HUB_PARTNER, 7], [7, HUB_PARTNER], [10_250, 10_251]]),
            id="hub-partner",
        ),
    ],
)
def test_triton_neighbor_split_matches_reference_bit_for_bit(
    triton_backend, graph_name, index_dtype, caps, pairs
):
    kernels, device = triton_backend
    graph = _graph(graph_name, index_dtype)
    dev = graph.to(device)
    for cap in caps:
        want = neighbor_split_reference(graph.indptr, graph.indices, pairs, cap, 5)
        got = kernels.neighbor_split_triton(dev.indptr, dev.indices, pairs.to(device), cap, 5)
        assert_split_equal(as_split(got), want)


@pytest.mark.parametrize("member_dtype", INDEX_DTYPES)
def test_triton_weighted_gather_sum_and_backward(triton_backend, member_dtype):
    kernels, device = triton_backend
    graph, pairs = _graph("random"), _pairs("random", num_random=20)
    r = neighbor_split_reference(graph.indptr, graph.indices, pairs, cap=4).only_j
    g = torch.Generator().manual_seed(8)
    weights = torch.rand(r.members.numel(), generator=g)
    x = _features(graph.num_nodes, 45, torch.float32)
    args = (r.offsets.to(device), r.members.to(member_dtype).to(device), weights.to(device))
    want = weighted_gather_sum_reference(r.offsets, r.members, weights, x.double())
    assert_matches(kernels.weighted_gather_sum_triton(*args, x.to(device)), want, "gather", 1e-4, 1e-5)
    upstream = torch.randn(pairs.size(0), 45, generator=g)
    x_ref = x.double().requires_grad_()
    weighted_gather_sum_reference(r.offsets, r.members, weights, x_ref).backward(upstream.double())
    grad = kernels.weighted_gather_sum_backward_triton(*args, upstream.to(device), graph.num_nodes)
    assert_matches(grad, x_ref.grad, "grad_x", 1e-4, 1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_triton_half_gradients_are_summed_in_float32(triton_backend, dtype):
    """Regression: half gradients were scattered with 16-bit atomics, rounding at every addition
    (and on sm_80 a compare-and-swap loop per bfloat16 element). Now they are summed in float32
    and rounded once: exactly the float32 scatter of the same values, cast."""
    kernels, device = triton_backend
    graph, pairs = _graph("random"), _pairs("random", num_random=20)
    dev = graph.to(device)
    upstream = torch.randn(pairs.size(0), 24, generator=torch.Generator().manual_seed(11)).to(dtype)
    widened = upstream.float().to(device)
    got = kernels.common_neighbor_sum_backward_triton(
        dev.indptr, dev.indices, pairs.to(device), upstream.to(device), graph.num_nodes
    )
    want = kernels.common_neighbor_sum_backward_triton(
        dev.indptr, dev.indices, pairs.to(device), widened, graph.num_nodes
    )
    assert got.dtype == dtype
    assert_matches(got, want.to(dtype), "cn grad_x")
    r = neighbor_split_reference(graph.indptr, graph.indices, pairs, cap=4).only_j
    args = (r.offsets.to(device), r.members.to(device), r.weights.to(device))
    got = kernels.weighted_gather_sum_backward_triton(*args, upstream.to(device), graph.num_nodes)
    want = kernels.weighted_gather_sum_backward_triton(*args, widened, graph.num_nodes)
    assert got.dtype == dtype
    assert_matches(got, want.to(dtype), "gather grad_x")


def test_triton_launchers_reject_bad_inputs(triton_backend):
    kernels, device = triton_backend
    graph, pairs = _graph("random", device=device), _pairs("random")[:2].to(device)
    x = torch.zeros(graph.num_nodes, 3, device=device)
    with pytest.raises((ValueError, RuntimeError), match="indices must be 1-D int32/int64"):
        kernels.common_neighbor_sum_triton(graph.indptr, graph.indices.float(), x, pairs)
    with pytest.raises((ValueError, RuntimeError), match="x must be a 2-D float tensor"):
        kernels.common_neighbor_sum_triton(graph.indptr, graph.indices, x.long(), pairs)
    with pytest.raises((ValueError, RuntimeError), match="weights must be float"):
        kernels.weighted_gather_sum_triton(
            torch.tensor([0, 1], device=device),
            torch.tensor([0], device=device),
            torch.ones(2, device=device),
            x,
        )


def test_triton_launchers_refuse_cpu_tensors_without_the_interpreter():
    if INTERPRET_SET:
        pytest.skip("this process runs the interpreter")
    from ncnc.triton_kernels import common_neighbors_triton

    graph, pairs = GRAPHS["random"], _pairs("random")[:2]
    with pytest.raises(ValueError, match="need CUDA tensors"):
        common_neighbors_triton.common_neighbor_sum_triton(
            graph.indptr, graph.indices, torch.zeros(200, 2), pairs
        )


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_cuda_larger_batch_matches_cpu_twin(dtype):
    g = torch.Generator().manual_seed(10)
    n = 5000
    graph = build_csr(torch.randint(0, n, (2, 60_000), generator=g).t(), n)
    pairs = torch.randint(0, n, (4000, 2), generator=g)
    x = torch.randn(n, 256, generator=g).to(dtype)
    cpu = tk.common_neighbor_sum(graph.indptr, graph.indices, x, pairs)
    gpu = tk.common_neighbor_sum(graph.indptr.cuda(), graph.indices.cuda(), x.cuda(), pairs.cuda())
    assert_matches(gpu[1], cpu[1], "counts")
    assert_matches(gpu[0], cpu[0], "sums", 1e-3, 1e-4)
    assert_split_equal(
        tk.neighbor_split(graph.indptr.cuda(), graph.indices.cuda(), pairs.cuda(), 5, 3),
        tk.neighbor_split(graph.indptr, graph.indices, pairs, 5, 3),
    )
