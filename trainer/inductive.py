"""Embed the nodes of a newer graph than the one a model was trained on, without retraining.

A nightly graph grows: nodes join, leave, and change their features. The snapshot (today's
edges, and features) defines the graph and the id map; the trained encoder runs over it once.

- **With node features** the GCN encoder is inductive: a new node is embedded from its features
  and its edges exactly as a known one (known nodes read today's features too).
- **Without features** the model learned one input row per training node (``nn.Embedding``); a
  new node has none. Its input row comes from a cold-start rule (``NewNodeRule``):

  - ``"mean"`` (default, measured best in docs/growing-graphs.md): the mean of its known
    neighbours' learned rows; new nodes whose neighbours are all new take, round after round,
    the mean of the neighbours filled in the round before (a breadth-first fill outwards from
    the known nodes). A new node with no path to a known node (no edges at all, or only new
    neighbours all the way) takes the mean of every learned row.
  - ``"zero"``: a zero row; the encoder's propagation still mixes in its neighbours.
  - ``"error"``: refuse any node the model has not seen (with or without features).

A node with no edges is still embedded (from its features, or by the rule), so its pairs get a
score; having no neighbours, they have no common neighbours.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import polars as pl
import torch
from torch import Tensor

from ncnc.core.errors import InputError, examples
from ncnc.core.ids import IdMap
from ncnc.core.tables import read_parquet_table
from ncnc.trainer.checkpoint import Checkpoint
from ncnc.triton_kernels import CSRGraph

log = logging.getLogger("ncnc.trainer")

NewNodeRule = Literal["mean", "zero", "error"]
NEW_NODE_RULES: tuple[str, ...] = get_args(NewNodeRule)
DEFAULT_NEW_NODE_RULE: NewNodeRule = "mean"


def check_rule(rule: str) -> None:
    if rule not in NEW_NODE_RULES:
        raise InputError(f"--new-nodes {rule!r}: choose one of {', '.join(NEW_NODE_RULES)}")


@dataclass(frozen=True)
class SnapshotInputs:
    """The encoder's input for a snapshot of ``n`` nodes, and how it was made.

    Attributes:
        inputs: ``[n, in_features]`` node features, or for a featureless model its input table
            ``[n, hidden]`` (learned rows of known nodes, cold-start rows of new ones); pass it
            as ``x`` to :class:`~ncnc.trainer.model.Encoder`.
        report: counts and the rule, for the bundle manifest's ``snapshot`` section:
            ``nodes``, ``known_nodes``, ``new_nodes``, ``removed_nodes`` (checkpoint nodes absent
            from the snapshot), ``new_nodes_without_edges``, ``new_node_rule`` (``"features"``,
            ``"mean"``, ``"zero"`` or ``"error"``) and, for ``"mean"``,
            ``new_nodes_given_the_global_mean`` (no path to a known node).
    """

    inputs: Tensor | None
    report: dict[str, Any]


def snapshot_inputs(ck: Checkpoint, id_map: IdMap, graph: CSRGraph, features: Tensor | None,
                    rule: NewNodeRule, *, source: str) -> SnapshotInputs:
    """Encoder inputs for a snapshot graph over ``id_map``'s nodes.

    Args:
        ck: the trained checkpoint.
        id_map: the snapshot's nodes (index -> original id), of the checkpoint's id kind.
        graph: the snapshot's CSR graph over ``len(id_map)`` nodes.
        features: ``[n, F]`` today's features of every snapshot node, or None: known nodes keep
            the checkpoint's features (a featured model then refuses new nodes).
        rule: the cold-start rule for new nodes of a featureless model; ``"error"`` refuses new
            nodes of any model.
        source: what the snapshot is, for messages (e.g. ``"edges file today.parquet"``).

    Raises:
        InputError: ids of the other kind, new nodes with ``rule="error"``, new nodes of a
            featured model without ``features``, or features of the wrong width.
    """
    check_rule(rule)
    if id_map.kind != ck.id_map.kind:
        raise InputError(f"{source}: node ids are {id_map.kind} but the checkpoint's are "
                         f"{ck.id_map.kind} (examples: {examples(id_map.ids)})")
    index, known = ck.id_map.lookup(id_map.ids, what=source)
    new = ~known
    new_ids = id_map.ids.filter(pl.Series(new.numpy()))
    if rule == "error" and new_ids.len():
        raise InputError(f"{source}: {new_ids.len()} node(s) are new to the checkpoint (a node "
                         f"the model cannot embed with --new-nodes error): {examples(new_ids)}")
    device = _model_device(ck)
    index, known = index.to(device), known.to(device)
    report: dict[str, Any] = {
        "nodes": len(id_map),
        "known_nodes": int(known.sum()),
        "new_nodes": new_ids.len(),
        "removed_nodes": len(ck.id_map) - int(known.sum()),
        "new_nodes_without_edges": int((~known & (graph.degree().to(device) == 0)).sum()),
        "new_nodes_given_the_global_mean": None,  # rule "mean" only
    }
    if ck.features is not None:
        inputs = _featured_inputs(ck, index, known, features, new_ids, source)
        report["new_node_rule"] = "error" if rule == "error" else "features"
    else:
        check_features_fit(ck, features, source)
        learned = ck.model.encoder.embedding.weight.detach()
        inputs, global_mean = cold_start_embeddings(learned, index, known, graph.to(device),
                                                    "zero" if rule == "zero" else "mean")
        report["new_node_rule"] = rule
        if rule == "mean":
            report["new_nodes_given_the_global_mean"] = global_mean
    log.info("snapshot %s: %s", source, report)
    return SnapshotInputs(inputs, report)


def check_features_fit(ck: Checkpoint, features: object | None, source: str) -> None:
    """Refuse features (a tensor or a file) for a model trained without them."""
    if features is not None and ck.features is None:
        raise InputError(f"{source}: the checkpoint was trained without node features; drop "
                         "--features (new nodes take the --new-nodes rule)")


def _model_device(ck: Checkpoint) -> torch.device:
    return next(ck.model.parameters()).device


def _featured_inputs(ck: Checkpoint, index: Tensor, known: Tensor, features: Tensor | None,
                     new_ids: pl.Series, source: str) -> Tensor:
    assert ck.features is not None
    if features is None:
        if new_ids.len():
            raise InputError(
                f"{source}: {new_ids.len()} node(s) are new to the checkpoint and the model reads "
                f"node features: pass --features with a row for every node of the snapshot "
                f"(new: {examples(new_ids)})")
        return ck.features[index]
    if features.size(1) != ck.features.size(1):
        raise InputError(f"{source}: features have {features.size(1)} columns, the model was "
                         f"trained on {ck.features.size(1)}")
    return features.to(ck.features.device, ck.features.dtype)


def cold_start_embeddings(learned: Tensor, index: Tensor, known: Tensor, graph: CSRGraph,
                          rule: Literal["mean", "zero"]) -> tuple[Tensor, int]:
    """Input rows of a snapshot's nodes for a featureless encoder (the module docstring's rules).

    Args:
        learned: ``[N, d]`` the checkpoint's learned rows.
        index: ``[n]`` int64, each snapshot node's checkpoint row (ignored where not ``known``).
        known: ``[n]`` bool, whether the node has a learned row.
        graph: the snapshot graph over the ``n`` nodes (the ``"mean"`` rule reads neighbours).
        rule: ``"mean"`` or ``"zero"``.

    Returns:
        ``[n, d]`` rows, and how many new nodes had no path to a known node (``"mean"`` gives
        them the mean of every learned row; ``"zero"`` leaves every new row zero and says 0).
    """
    n, d = known.numel(), learned.size(1)
    rows = torch.zeros(n, d, dtype=learned.dtype, device=learned.device)
    rows[known] = learned[index[known]]
    if rule == "zero" or bool(known.all()):
        return rows, 0
    source = torch.repeat_interleave(torch.arange(n, device=known.device), graph.degree())
    target = graph.indices.long()
    filled = known.clone()
    while True:
        # Entries from an unfilled node to a filled neighbour: this round's frontier averages
        # the neighbours filled so far (known ones first, then those of earlier rounds).
        useful = filled[target] & ~filled[source]
        if not bool(useful.any()):
            break
        frontier, slot = torch.unique(source[useful], return_inverse=True)
        sums = torch.zeros(frontier.numel(), d, dtype=rows.dtype, device=rows.device)
        sums.index_add_(0, slot, rows[target[useful]])
        counts = torch.bincount(slot, minlength=frontier.numel()).unsqueeze(1)
        rows[frontier] = sums / counts
        filled[frontier] = True
    unreachable = ~filled
    rows[unreachable] = learned.mean(0)
    return rows, int(unreachable.sum())


@dataclass(frozen=True)
class EvaluationInputs:
    """What ``ncnc evaluate --checkpoint`` scores: pairs in the index space of :attr:`graph`.

    Attributes:
        graph: the training graph, with the pairs' new nodes appended as nodes without edges.
        inputs: the encoder's ``x`` for :attr:`graph` (see :class:`SnapshotInputs`).
        pos, neg: ``[P, 2]`` and ``[Q, 2]`` int64 pairs to score.
        report: ``new_node_rule``, ``new_nodes`` (ids of the pairs the checkpoint never saw),
            ``pairs_touching_new_nodes``, ``pairs_touching_nodes_without_training_edges`` (new
            nodes included), ``pos_left_out`` and ``neg_left_out`` (pairs not scored: a featured
            model has no features for a new node).
    """

    graph: CSRGraph
    inputs: Tensor | None
    pos: Tensor
    neg: Tensor
    report: dict[str, Any]


def read_pairs_with_new_nodes(id_map: IdMap, paths: Sequence[Path], rule: NewNodeRule
                              ) -> tuple[list[Tensor], pl.Series]:
    """Read Parquet pair files (``src``, ``dst``); ids outside ``id_map`` become new nodes.

    Returns:
        ``[k, 2]`` int64 pairs per file, in the index space of ``id_map`` followed by the new
        ids (``len(id_map) + position`` in the second return value, sorted, distinct).

    Raises:
        InputError: unreadable files, missing columns, nulls, ids of the other kind, or new ids
            with ``rule="error"``.
    """
    check_rule(rule)
    columns, unknown = [], []
    for path in paths:
        frame = read_parquet_table(path, columns=["src", "dst"], what="pairs file")
        for column in ("src", "dst"):
            what = f"pairs file {path} column {column}"
            if rule == "error":
                id_map.to_index(frame[column], what=f"{what} (--new-nodes error)")
            _, known = id_map.lookup(frame[column], what=what)
            columns.append((frame[column], known))
            unknown.append(_as_id_dtype(frame[column].filter(pl.Series(~known.numpy())),
                                        id_map, what))
    new_ids = pl.concat([id_map.ids.head(0), *unknown]).unique().sort()
    extended = IdMap(pl.concat([id_map.ids, new_ids]))
    index = [extended.to_index(values, what="pairs") for values, _ in columns]
    return [torch.stack(index[k:k + 2], dim=1) for k in range(0, len(index), 2)], new_ids


def _as_id_dtype(values: pl.Series, id_map: IdMap, what: str) -> pl.Series:
    """New ids in the map's dtype, checked after the cast: an integer no Int64 id can equal
    (uint64 above 2^63 - 1) cannot become a node, so it is refused naming the values."""
    cast = values.cast(id_map.ids.dtype, strict=False)
    failed = cast.is_null() & values.is_not_null()
    if failed.any():
        raise InputError(f"{what}: {int(failed.sum())} id(s) are not nodes of the checkpoint and "
                         f"cannot be new ones, being beyond the {id_map.ids.dtype} range of its "
                         f"ids: {examples(values.filter(failed))}")
    return cast


def evaluation_inputs(ck: Checkpoint, graph: CSRGraph, pos: Tensor, neg: Tensor, num_new: int,
                      rule: NewNodeRule) -> EvaluationInputs:
    """Embed the pairs' nodes for evaluation on the checkpoint's training ``graph``.

    Pair indices at or above ``graph.num_nodes`` are ``num_new`` nodes the checkpoint never saw
    (:func:`read_pairs_with_new_nodes`). A featureless model embeds them by ``rule`` (they have
    no training edge, so ``"mean"`` gives them the mean learned row); a featured model has no
    features for them, so their pairs are left out and counted in the report, never silently.
    """
    n = graph.num_nodes
    degree = torch.cat([graph.degree().cpu(), torch.zeros(num_new, dtype=torch.long)])
    touches_new = [(p >= n).any(1) for p in (pos, neg)]
    untrained = [(degree[p] == 0).any(1) for p in (pos, neg)]
    report: dict[str, Any] = {
        "new_node_rule": "features" if ck.features is not None else rule,
        "new_nodes": num_new,
        "pairs_touching_new_nodes": int(sum(t.sum() for t in touches_new)),
        "pairs_touching_nodes_without_training_edges": int(sum(u.sum() for u in untrained)),
        "pos_left_out": 0,
        "neg_left_out": 0,
    }
    if ck.features is not None:
        if report["pairs_touching_new_nodes"]:
            report["pos_left_out"], report["neg_left_out"] = (int(t.sum()) for t in touches_new)
            log.warning("evaluate: %d positive and %d negative pair(s) touch nodes the checkpoint "
                        "never saw and have no features; left out (export a bundle with today's "
                        "--features and evaluate it with --bundle to score them)",
                        report["pos_left_out"], report["neg_left_out"])
            pos, neg = pos[~touches_new[0]], neg[~touches_new[1]]
        return EvaluationInputs(graph, ck.features, pos, neg, report)
    device = graph.indptr.device
    indptr = torch.cat([graph.indptr, graph.indptr[-1:].expand(num_new)])
    extended = CSRGraph(indptr, graph.indices)
    known = torch.arange(n + num_new, device=device) < n
    learned = ck.model.encoder.embedding.weight.detach()
    inputs, _ = cold_start_embeddings(learned, torch.arange(n + num_new, device=device), known,
                                      extended, "zero" if rule == "zero" else "mean")
    return EvaluationInputs(extended, inputs, pos, neg, report)
