"""The common-neighbour step of NCN / NCNC, the single home of the hot loop."""

from ncnc.triton_kernels.common_neighbors import NeighborSplit, RaggedSet
from ncnc.triton_kernels.graph import CSRGraph, build_csr, validate_csr
from ncnc.triton_kernels.memory import huge_page_copy, huge_page_empty
from ncnc.triton_kernels.ops import (
    common_neighbor_sum,
    concat_ragged,
    endpoint_product,
    neighbor_split,
    weighted_gather_sum,
)

__all__ = [
    "CSRGraph",
    "NeighborSplit",
    "RaggedSet",
    "build_csr",
    "common_neighbor_sum",
    "concat_ragged",
    "endpoint_product",
    "huge_page_copy",
    "huge_page_empty",
    "neighbor_split",
    "validate_csr",
    "weighted_gather_sum",
]
