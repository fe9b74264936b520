"""What ``ncnc train`` and ``ncnc evaluate`` do, as importable functions."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import torch

from ncnc.core.device import resolve_device
from ncnc.core.errors import InputError
from ncnc.core.files import Publication, refuse_outputs_over_inputs, refuse_replacing_foreign_folder
from ncnc.core.ids import IdMap
from ncnc.trainer.checkpoint import is_checkpoint, load_checkpoint, save_checkpoint
from ncnc.trainer.config import ModelKind, RunConfig, resolve_config
from ncnc.trainer.data import GraphData, load_edge_list, load_planetoid, warn_overlapping_pairs
from ncnc.trainer.inductive import (
    DEFAULT_NEW_NODE_RULE,
    NewNodeRule,
    evaluation_inputs,
    read_pairs_with_new_nodes,
)
from ncnc.trainer.splits import EdgeSplit, random_edge_split, reference_planetoid_split
from ncnc.trainer.training import (
    EpochRecord,
    TrainingDivergedError,
    TrainingGraph,
    evaluate_split,
    train_model,
    write_learning_curve,
)

log = logging.getLogger("ncnc.trainer")


@dataclass(frozen=True)
class TrainRequest:
    """One ``ncnc train`` invocation: exactly one of ``dataset`` or ``edges``.

    Attributes:
        model: ``"gae"``, ``"ncn"`` or ``"ncnc"``.
        out: checkpoint directory to write. It is staged beside ``out`` and published whole
            only when training succeeded; it replaces only an earlier checkpoint (or an empty
            folder), never another folder, and a failed or interrupted run leaves ``out`` as it
            was.
        dataset: a built-in graph, ``"cora"``, ``"citeseer"`` or ``"pubmed"``; its reference
            hyperparameters become the defaults.
        data_root: folder holding ``<Name>/raw`` Planetoid files (default
            ``~/.cache/ncnc/planetoid``).
        edges: Parquet edge list, columns ``src`` and ``dst`` (Int64 or String ids; undirected).
        features: Parquet node features for ``edges``: a ``node`` column plus numeric columns or
            one list column; without it the model learns a node embedding.
        config_file: TOML file with ``[model]`` / ``[train]`` tables of
            :class:`ncnc.trainer.config.ModelConfig` / :class:`ncnc.trainer.config.TrainConfig` fields.
        device: ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``.
        progress: show a progress bar on stderr.
        model_overrides, train_overrides: ``ModelConfig`` / ``TrainConfig`` fields that win over
            every other setting (``None`` values are ignored), e.g. ``{"hidden": 64}``,
            ``{"epochs": 20}``.
    """

    model: ModelKind
    out: Path
    dataset: str | None = None
    data_root: Path | None = None
    edges: Path | None = None
    features: Path | None = None
    config_file: Path | None = None
    device: str = "auto"
    progress: bool = True
    model_overrides: dict[str, Any] = field(default_factory=dict)
    train_overrides: dict[str, Any] = field(default_factory=dict)


def load_graph(request: TrainRequest) -> GraphData:
    if (request.dataset is None) == (request.edges is None):
        raise InputError("give exactly one of --dataset or --edges")
    if request.dataset is not None:
        if request.features is not None:
            raise InputError("--features only goes with --edges")
        return load_planetoid(request.dataset, request.data_root)
    return load_edge_list(request.edges, request.features)


def run_config(request: TrainRequest, graph: GraphData) -> RunConfig:
    """The request's settings for ``graph``: defaults < dataset preset < ``--config`` <
    overrides."""
    in_features = 0 if graph.features is None else graph.features.size(1)
    return resolve_config(
        request.model,
        dataset=request.dataset,
        config_file=request.config_file,
        model_flags={**request.model_overrides, "num_nodes": graph.num_nodes,
                     "in_features": in_features},
        train_flags=request.train_overrides,
    )


def split_graph(graph: GraphData, cfg: RunConfig, dataset: str | None) -> EdgeSplit:
    """The run's train / validation / test split: the paper's for a built-in dataset, else a
    random one of ``val_fraction`` / ``test_fraction`` drawn from ``cfg.train.seed``.

    Raises:
        InputError: too few edges to hold out validation edges and still train.
    """
    if dataset is not None:  # the paper's protocol, split for split
        split = reference_planetoid_split(graph.edges, graph.num_nodes, cfg.train.seed)
    else:
        split = random_edge_split(
            graph.edges, graph.num_nodes, cfg.train.val_fraction, cfg.train.test_fraction,
            torch.Generator().manual_seed(cfg.train.seed),
        )
    if split.train.size(0) == 0 or split.valid.size(0) == 0:
        raise InputError(
            f"the graph has {graph.edges.size(0)} edges: too few to hold out validation edges "
            f"(val fraction {cfg.train.val_fraction}) and still train"
        )
    log.info("split: %d train, %d valid, %d test edges", split.train.size(0),
             split.valid.size(0), split.test.size(0))
    return split


def train(request: TrainRequest) -> dict[str, Any]:
    """Load the graph, split it, train, and write a checkpoint directory at ``request.out``.

    Edges are split into train / validation / test (``val_fraction``, ``test_fraction``; the
    built-in datasets use the paper's split). Training runs for at most ``epochs`` epochs and
    stops earlier after ``patience`` epochs without a better validation metric
    (``select_metric``, default hits@100) or past ``max_minutes``; the weights of the best
    validation epoch are kept.

    Returns:
        The summary ``ncnc train`` prints: ``model``, ``input``, ``num_nodes``, ``graph_stats``
        (rows read, self loops and duplicates dropped, edges), ``best_epoch``, ``stopped``
        (``{"epoch", "reason"}``: the last epoch run and ``"patience"``, ``"max_minutes"`` or
        ``"epochs"``), ``valid`` and ``test`` metrics at the best epoch (``hits@20/50/100`` and
        ``mrr`` as fractions, ``auc``; ``test`` is ``None`` without a test split), ``seconds``,
        ``seconds_per_epoch``.

    Raises:
        InputError: not exactly one of ``dataset`` / ``edges``, unreadable or malformed input
            files, bad settings, too few edges to hold out validation edges, ``out`` is an input
            (or holds one) or exists and is not a checkpoint, or another run writes ``out``.
        TrainingDivergedError: (an InputError) the loss, logits or weights became NaN or
            infinite; no checkpoint is written.
    """
    out = Path(request.out)
    inputs = [Path(p) for p in (request.edges, request.features, request.config_file,
                                request.data_root) if p is not None]
    refuse_outputs_over_inputs([out], inputs)
    refuse_replacing_foreign_folder(out, "checkpoint", is_checkpoint)
    with Publication() as publication:
        staging = publication.directory(out)  # locks out first: a second run is refused at once
        summary = _train_into(request, staging)
        publication.publish()
    return summary


def _train_into(request: TrainRequest, staging: Path) -> dict[str, Any]:
    """:func:`train`'s work, every file written into the staged folder ``staging``."""
    graph = load_graph(request)
    cfg = run_config(request, graph)
    device = resolve_device(request.device)
    split = split_graph(graph, cfg, request.dataset)
    with (staging / "metrics.jsonl").open("w") as metrics_file:

        def record(epoch: EpochRecord) -> None:
            metrics_file.write(epoch.as_json() + "\n")
            metrics_file.flush()

        try:
            result = train_model(cfg, graph.features, split, device, on_epoch=record,
                                 progress=request.progress)
        except TrainingDivergedError as err:
            raise TrainingDivergedError(f"{err}; no checkpoint was written to {request.out}"
                                        " (an earlier one there is kept)") from err
    summary = {
        "model": cfg.model.model,
        "input": str(request.dataset or request.edges),
        "num_nodes": graph.num_nodes,
        "graph_stats": graph.stats,
        "best_epoch": result.best_epoch,
        "stopped": dataclasses.asdict(result.stopped),
        "valid": result.best_valid,
        "test": result.best_test,
        "seconds": round(result.seconds, 2),
        "seconds_per_epoch": round(result.seconds / max(len(result.history), 1), 3),
    }
    save_checkpoint(staging, result.model, cfg, graph.features, graph.id_map, split, summary)
    write_learning_curve(result, staging / "learning_curve.png", cfg.train.select_metric)
    return summary


def evaluate(
    checkpoint: Path,
    pos: Path | None = None,
    neg: Path | None = None,
    device: str = "auto",
    new_nodes: NewNodeRule = DEFAULT_NEW_NODE_RULE,
) -> dict[str, Any]:
    """Metrics of the checkpoint's model on given pairs, or on its own held-out split.

    The model scores on its training graph. A pair touching a node without a training edge is
    scored all the same; a node the checkpoint never saw is embedded by the cold-start rule
    ``new_nodes`` of a featureless model (:mod:`ncnc.trainer.inductive`), while a featured model,
    having no features for it, leaves its pairs out: counted in ``cold_start``, never silently.

    Args:
        checkpoint: a directory written by :func:`train`.
        pos, neg: Parquet files of positive and negative pairs (``src``, ``dst`` in the graph's
            ids), given together; without them the checkpoint's test split is used (its
            validation split when it has no test split).
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        new_nodes: ``"mean"``, ``"zero"`` or ``"error"`` (refuse ids the checkpoint never saw).

    Returns:
        ``hits@20``, ``hits@50``, ``hits@100`` and ``mrr`` (fractions), ``auc``, ``num_pos``,
        ``num_neg`` (the pairs scored), ``pairs``: ``"files"``, ``"test"`` or ``"valid"``, and
        ``cold_start``: ``new_node_rule``, ``new_nodes``, ``pairs_touching_new_nodes``,
        ``pairs_touching_nodes_without_training_edges``, ``pos_left_out``, ``neg_left_out``.

    Raises:
        InputError: only one of ``pos`` / ``neg``, a bad checkpoint, or bad pair files (missing
            columns, nulls, ids of the other kind, new ids with ``new_nodes="error"``).
    """
    if (pos is None) != (neg is None):
        raise InputError("--pos and --neg go together")
    torch_device = resolve_device(device)
    ck = load_checkpoint(checkpoint, torch_device)
    graph = TrainingGraph(ck.split.train.to(torch_device), ck.config.model.num_nodes).graph
    new_ids = 0
    if pos is not None:
        (pos_pairs, neg_pairs), new = read_pairs_with_new_nodes(ck.id_map, [pos, neg], new_nodes)
        source, new_ids = "files", new.len()
        warn_overlapping_pairs(pos_pairs, neg_pairs, IdMap(pl.concat([ck.id_map.ids, new])),
                               pos, neg)
    elif ck.split.test.size(0) > 0:
        pos_pairs, neg_pairs, source = ck.split.test, ck.split.test_neg, "test"
    else:
        pos_pairs, neg_pairs, source = ck.split.valid, ck.split.valid_neg, "valid"
        log.warning("checkpoint holds no test split; evaluating its validation split")
    batch = evaluation_inputs(ck, graph, pos_pairs, neg_pairs, new_ids, new_nodes)
    metrics = evaluate_split(ck.model, batch.inputs, batch.graph, batch.pos.to(torch_device),
                             batch.neg.to(torch_device), ck.config.train.eval_batch_size,
                             f"checkpoint {checkpoint}: the model's scores of the {source} pairs")
    return {**metrics, "pairs": source, "cold_start": batch.report}
