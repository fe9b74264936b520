"""The CPU twin reads bfloat16 tables natively (no widened copy): each element is widened
exactly in the kernel and accumulated in float32, against the float64 reference."""

from __future__ import annotations

import pytest
import torch

from ncnc.triton_kernels import build_csr, common_neighbor_sum, endpoint_product, neighbor_split
from ncnc.triton_kernels import weighted_gather_sum as gather
from ncnc.triton_kernels.common_neighbors import (
    common_neighbor_sum_reference,
    endpoint_product_reference,
    weighted_gather_sum_reference,
)


def graph_and_table(nodes: int, d: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    edges = torch.randint(0, nodes, (4 * nodes, 2), generator=generator)
    graph = build_csr(edges, nodes)
    x = torch.randn(nodes, d, generator=generator).to(torch.bfloat16)
    pairs = torch.randint(0, nodes, (257, 2), generator=generator)
    return graph, x, pairs


@pytest.mark.parametrize("d", [1, 37, 256])
def test_bf16_common_neighbour_sum_against_the_float64_reference(d):
    graph, x, pairs = graph_and_table(60, d, seed=d)
    sums, counts = common_neighbor_sum(graph.indptr, graph.indices, x, pairs)
    expected, expected_counts = common_neighbor_sum_reference(graph.indptr, graph.indices,
                                                              x.double(), pairs)
    assert sums.dtype == torch.float32 and torch.equal(counts, expected_counts)
    # The bf16 values are exact in float32; only the float32 accumulation rounds.
    torch.testing.assert_close(sums.double(), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("d", [1, 37, 256])
def test_bf16_weighted_gather_against_the_float64_reference(d):
    graph, x, pairs = graph_and_table(60, d, seed=d + 1)
    split = neighbor_split(graph.indptr, graph.indices, pairs)
    members = split.only_i
    weights = torch.rand(members.members.numel(), generator=torch.Generator().manual_seed(d))
    out = gather(members.offsets, members.members, weights, x)
    expected = weighted_gather_sum_reference(members.offsets, members.members, weights.double(),
                                             x.double())
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), expected, rtol=1e-6, atol=1e-6)


def test_bf16_endpoint_product_is_exact_in_float32():
    _, x, pairs = graph_and_table(60, 37, seed=5)
    out = endpoint_product(x, pairs)
    assert out.dtype == torch.float32
    assert torch.equal(out, endpoint_product_reference(x, pairs))
    assert torch.equal(out.double(), x.double()[pairs[:, 0]] * x.double()[pairs[:, 1]])


def test_bf16_and_its_float32_widening_give_the_same_sums():
    # Reading bf16 natively equals reading the float32 copy the twin used to make.
    graph, x, pairs = graph_and_table(80, 64, seed=9)
    native, _ = common_neighbor_sum(graph.indptr, graph.indices, x, pairs)
    widened, _ = common_neighbor_sum(graph.indptr, graph.indices, x.float(), pairs)
    assert torch.equal(native, widened)
