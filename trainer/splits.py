"""Train / validation / test edge splits and uniform negative sampling.

Protocol for Cora / CiteSeer (reference ``ogbdataset.py``; see docs/ncnc-model.md): the undirected
edges are shuffled, ``int(E * test_fraction)`` go to test, ``int(E * val_fraction)`` to validation
and the rest to training (``val_fraction=0.1, test_fraction=0.2`` gives 70/10/20). Validation and
test negatives are random non-edges of the FULL graph, as many as the split's positives. Training
negatives are drawn each epoch by the trainer with
``sample_negatives(num_nodes, len(train), train, generator)``.

All pairs are ``[k, 2]`` int64 node indices; positives and negatives are canonical (``src < dst``).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import polars as pl
import torch
from torch import Tensor

from ncnc.core.errors import InputError
from ncnc.trainer.data import read_parquet_table

SPLIT_NAMES = ("train", "valid", "valid_neg", "test", "test_neg")

_ENUMERATE_MAX_PAIRS = 1 << 24
"""Graphs with at most this many node pairs may list every non-edge instead of rejecting draws."""
_MAX_ROUNDS = 64
"""Rejection rounds before giving up; each round oversamples by the observed acceptance rate."""


def _check_pairs(name: str, pairs: Tensor) -> None:
    if pairs.dtype != torch.int64 or pairs.dim() != 2 or pairs.shape[1] != 2:
        raise ValueError(
            f"EdgeSplit.{name} must be an int64 tensor of shape [k, 2], got "
            f"{pairs.dtype} {tuple(pairs.shape)}"
        )


@dataclass(frozen=True, eq=False)
class EdgeSplit:
    """Positive and negative node pairs of one split; every field is ``[k, 2]`` int64."""

    train: Tensor
    valid: Tensor
    valid_neg: Tensor
    test: Tensor
    test_neg: Tensor

    def __post_init__(self) -> None:
        for field in fields(self):
            _check_pairs(field.name, getattr(self, field.name))

    def save(self, path: Path) -> None:
        """Write one Parquet file with columns ``split`` (str), ``src``, ``dst`` (node indices)."""
        parts = [
            pl.DataFrame(
                {
                    "split": pl.Series([name] * len(pairs), dtype=pl.String),
                    "src": pl.Series(pairs[:, 0].numpy(), dtype=pl.Int64),
                    "dst": pl.Series(pairs[:, 1].numpy(), dtype=pl.Int64),
                }
            )
            for name in SPLIT_NAMES
            for pairs in [getattr(self, name).cpu()]
        ]
        pl.concat(parts).write_parquet(path)

    @classmethod
    def load(cls, path: Path) -> EdgeSplit:
        """Read a file written by :meth:`save`; a split with no rows loads as an empty tensor."""
        frame = read_parquet_table(path, columns=["split", "src", "dst"], what="edge split file")
        bad_columns = [c for c in ("src", "dst") if not frame[c].dtype.is_integer()]
        if bad_columns:
            raise InputError(
                f"edge split file {path} column {bad_columns[0]}: must hold integer node indices, "
                f"got {frame[bad_columns[0]].dtype}"
            )
        unknown = frame.filter(~pl.col("split").cast(pl.String).is_in(SPLIT_NAMES))[
            "split"
        ].unique()
        if unknown.len():
            raise InputError(
                f"edge split file {path} column split: unknown split name(s) "
                f"{', '.join(repr(v) for v in unknown.sort().head(5).to_list())}; "
                f"expected {', '.join(SPLIT_NAMES)}"
            )
        pairs = {}
        for name in SPLIT_NAMES:
            part = frame.filter(pl.col("split").cast(pl.String) == name)
            pairs[name] = torch.from_numpy(
                part.select(pl.col("src", "dst").cast(pl.Int64)).to_numpy().reshape(-1, 2).copy()
            )
        return cls(**pairs)


def random_edge_split(
    edges: Tensor,
    num_nodes: int,
    val_fraction: float,
    test_fraction: float,
    generator: torch.Generator,
) -> EdgeSplit:
    """Split undirected edges at random into train / valid / test and draw eval negatives.

    Args:
        edges: ``[E, 2]`` int64 undirected unique edges (as in ``GraphData.edges``).
        num_nodes: node count.
        val_fraction: share of edges for validation, ``int(E * val_fraction)`` edges.
        test_fraction: share of edges for test, ``int(E * test_fraction)`` edges.
        generator: drives the shuffle and the negatives; the same seed gives the same split.

    Returns:
        The split; ``valid_neg`` / ``test_neg`` are distinct non-edges of the whole graph, as many
        as ``valid`` / ``test``.

    Raises:
        InputError: fractions outside ``[0, 1)`` or leaving no training edge.
    """
    _check_pairs("edges", edges)
    for label, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise InputError(f"{label} must be in [0, 1), got {value}")
    num_edges = edges.shape[0]
    num_test = int(num_edges * test_fraction)
    num_valid = int(num_edges * val_fraction)
    if num_test + num_valid >= num_edges:
        raise InputError(
            f"val_fraction={val_fraction} and test_fraction={test_fraction} leave no training "
            f"edges out of {num_edges}"
        )
    order = torch.randperm(num_edges, generator=generator)
    test = edges[order[:num_test]]
    valid = edges[order[num_test : num_test + num_valid]]
    train = edges[order[num_test + num_valid :]]
    valid_neg = sample_negatives(num_nodes, num_valid, edges, generator)
    test_neg = sample_negatives(num_nodes, num_test, edges, generator)
    return EdgeSplit(train=train, valid=valid, valid_neg=valid_neg, test=test, test_neg=test_neg)


def _pair_keys(pairs: Tensor, num_nodes: int) -> Tensor:
    """One int64 key ``lo * n + hi`` per pair, direction ignored."""
    lo = torch.minimum(pairs[:, 0], pairs[:, 1])
    hi = torch.maximum(pairs[:, 0], pairs[:, 1])
    return lo * num_nodes + hi


def _contains(sorted_keys: Tensor, keys: Tensor) -> Tensor:
    """Membership of ``keys`` in the sorted 1-D ``sorted_keys``."""
    if sorted_keys.numel() == 0:
        return torch.zeros_like(keys, dtype=torch.bool)
    pos = torch.searchsorted(sorted_keys, keys).clamp_(max=sorted_keys.numel() - 1)
    return sorted_keys[pos] == keys


def _new_keys_in_draw_order(keys: Tensor, *excluded: Tensor) -> Tensor:
    """The distinct ``keys`` in none of the sorted ``excluded`` sets, in order of first draw."""
    unique, inverse = torch.unique(keys, return_inverse=True)  # sorted: cache-friendly lookups
    keep = torch.ones_like(unique, dtype=torch.bool)
    for sorted_keys in excluded:
        keep &= ~_contains(sorted_keys, unique)
    first = torch.full((unique.numel(),), keys.numel(), dtype=torch.int64)
    first.scatter_reduce_(0, inverse, torch.arange(keys.numel()), reduce="amin")
    return keys[first[keep].sort().values]


def sample_negatives(
    num_nodes: int, num: int, forbidden_edges: Tensor, generator: torch.Generator
) -> Tensor:
    """Draw ``num`` distinct node pairs uniformly among the non-edges of ``forbidden_edges``.

    A pair ``(i, j)`` with ``i != j`` is a non-edge when neither ``(i, j)`` nor ``(j, i)`` is in
    ``forbidden_edges``. The draw is uniform without replacement, vectorised (oversample, reject,
    repeat) and a function of the generator's state alone. Small dense graphs list their non-edges
    instead of rejecting.

    Args:
        num_nodes: node count n.
        num: how many pairs to draw.
        forbidden_edges: ``[E, 2]`` int64 pairs to avoid, either direction; self loops are ignored.
        generator: the random source, a CPU generator (the result is on the CPU).

    Returns:
        ``[num, 2]`` int64 with ``out[:, 0] < out[:, 1]``, in draw order.

    Raises:
        InputError: the graph has fewer than ``num`` non-edges.
    """
    _check_pairs("forbidden_edges", forbidden_edges)
    if num < 0:
        raise ValueError(f"sample_negatives: num must be >= 0, got {num}")
    if num == 0:
        return torch.empty(0, 2, dtype=torch.int64)
    forbidden = forbidden_edges.cpu()
    if forbidden.numel() and (int(forbidden.min()) < 0 or int(forbidden.max()) >= num_nodes):
        raise ValueError(f"sample_negatives: forbidden_edges hold indices outside [0, {num_nodes})")
    forbidden = forbidden[forbidden[:, 0] != forbidden[:, 1]]
    forbidden_keys = torch.unique(_pair_keys(forbidden, num_nodes))  # sorted
    total_pairs = num_nodes * (num_nodes - 1) // 2
    available = total_pairs - forbidden_keys.numel()
    if num > available:
        raise InputError(
            f"cannot draw {num} negative pairs: the graph with {num_nodes} nodes and "
            f"{forbidden_keys.numel()} edges has only {available} non-edge pairs; it is too dense "
            "(or too small) for this split"
        )
    # Rejection needs about num / rate draws; when the non-edges are rare, or most of them are
    # wanted, listing all of them is cheaper, provided the graph is small enough to do so.
    if total_pairs <= _ENUMERATE_MAX_PAIRS and (2 * available < total_pairs or 2 * num > available):
        return _negatives_by_listing(num_nodes, num, forbidden_keys, generator)
    return _negatives_by_rejection(
        num_nodes, num, forbidden_keys, available / total_pairs, generator
    )


def _negatives_by_listing(
    num_nodes: int, num: int, forbidden_keys: Tensor, generator: torch.Generator
) -> Tensor:
    pairs = torch.triu_indices(num_nodes, num_nodes, offset=1).T
    pairs = pairs[~_contains(forbidden_keys, pairs[:, 0] * num_nodes + pairs[:, 1])]
    return pairs[torch.randperm(pairs.shape[0], generator=generator)[:num]].contiguous()


def _negatives_by_rejection(
    num_nodes: int, num: int, forbidden_keys: Tensor, rate: float, generator: torch.Generator
) -> Tensor:
    accepted: list[Tensor] = []  # keys, in draw order
    accepted_sorted = torch.empty(0, dtype=torch.int64)
    need = num
    for _ in range(_MAX_ROUNDS):
        # Expected draws for `need` new pairs, plus slack; capped so a bad estimate cannot exhaust
        # memory (the loop just runs another round).
        draws = min(int(need / rate * 1.1), 20 * need) + 64
        # Uniform ordered pair with i != j: j from n-1 values, shifted past i.
        i = torch.randint(num_nodes, (draws,), generator=generator)
        j = torch.randint(num_nodes - 1, (draws,), generator=generator)
        j += (j >= i).long()
        keys = torch.minimum(i, j) * num_nodes + torch.maximum(i, j)
        keys = _new_keys_in_draw_order(keys, forbidden_keys, accepted_sorted)[:need]
        accepted.append(keys)
        need -= keys.numel()
        if need == 0:
            keys = torch.cat(accepted)
            return torch.stack([keys // num_nodes, keys % num_nodes], dim=1)
        rate = max(keys.numel() / draws, 1e-3)
        accepted_sorted = torch.cat([accepted_sorted, keys]).sort().values
    raise InputError(
        f"could not draw {num} negative pairs among {num_nodes} nodes in {_MAX_ROUNDS} rounds "
        f"(acceptance rate {rate:.2g}); the graph is too dense for uniform negative sampling"
    )


def reference_planetoid_split(edges: Tensor, num_nodes: int, seed: int) -> EdgeSplit:
    """The official code's Cora / CiteSeer / Pubmed split, reproduced draw for draw.

    GraphPKU/NeuralCommonNeighbor (``ogbdataset.randomsplit``) seeds torch's global generator with
    the run's seed, calls PyG's ``train_test_split_edges(data, 0.2, 0.2)``, then shuffles the
    validation positives and moves half of them back into training (70 / 10 / 20). Its validation
    negatives are all of that call's validation negatives (as many as 20% of the edges), its test
    negatives as many as the test positives. Running the same calls on the same edge order gives
    the very same split, so our figures compare with the paper's seed for seed. The global
    generator's state is restored afterwards.
    """
    import warnings

    from torch_geometric.data import Data
    from torch_geometric.utils import to_undirected, train_test_split_edges

    def canonical(edge_index: Tensor) -> Tensor:
        edge_index = to_undirected(edge_index)
        return edge_index[:, edge_index[0] < edge_index[1]].t().contiguous()

    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)  # the function is deprecated
        torch.manual_seed(seed)
        # PyG's Planetoid stores edge_index sorted by target node: the flip of our row-sorted
        # symmetric list. The split depends on that order, so reproduce it.
        data = Data(edge_index=to_undirected(edges.t()).flip(0), num_nodes=num_nodes)
        data = train_test_split_edges(data, 0.2, 0.2)
        val_pos = data.val_pos_edge_index
        num_val = int(val_pos.size(1) * 0.1 / 0.2)
        val_pos = val_pos[:, torch.randperm(val_pos.size(1))]
    return EdgeSplit(
        train=canonical(torch.cat([data.train_pos_edge_index, val_pos[:, :-num_val]], dim=1)),
        valid=canonical(val_pos[:, -num_val:]),
        valid_neg=canonical(data.val_neg_edge_index),
        test=canonical(data.test_pos_edge_index),
        test_neg=canonical(data.test_neg_edge_index),
    )
