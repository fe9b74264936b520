"""What ``ncnc train`` and ``ncnc evaluate`` do, as importable functions."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ncnc.device import resolve_device
from ncnc.errors import InputError
from trainer.checkpoint import load_checkpoint, save_checkpoint
from trainer.config import ModelKind, resolve_config
from trainer.data import GraphData, load_edge_list, load_planetoid, read_pairs
from trainer.splits import random_edge_split, reference_planetoid_split
from trainer.training import (
    EpochRecord,
    TrainingGraph,
    evaluate_split,
    train_model,
    write_learning_curve,
)

log = logging.getLogger("ncnc.trainer")


@dataclass(frozen=True)
class TrainRequest:
    """One ``ncnc train`` invocation: exactly one of ``dataset`` or ``edges``."""

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


def train(request: TrainRequest) -> dict[str, Any]:
    """Load the graph, split it, train, and write a checkpoint directory. Returns its summary."""
    graph = load_graph(request)
    in_features = 0 if graph.features is None else graph.features.size(1)
    cfg = resolve_config(
        request.model,
        dataset=request.dataset,
        config_file=request.config_file,
        model_flags={**request.model_overrides, "num_nodes": graph.num_nodes,
                     "in_features": in_features},
        train_flags=request.train_overrides,
    )
    device = resolve_device(request.device)
    if request.dataset is not None:  # the paper's protocol, split for split
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
    request.out.mkdir(parents=True, exist_ok=True)
    metrics_path = request.out / "metrics.jsonl"
    with metrics_path.open("w") as metrics_file:

        def record(epoch: EpochRecord) -> None:
            metrics_file.write(epoch.as_json() + "\n")
            metrics_file.flush()

        result = train_model(cfg, graph.features, split, device, on_epoch=record,
                             progress=request.progress)
    summary = {
        "model": cfg.model.model,
        "input": str(request.dataset or request.edges),
        "num_nodes": graph.num_nodes,
        "graph_stats": graph.stats,
        "best_epoch": result.best_epoch,
        "valid": result.best_valid,
        "test": result.best_test,
        "seconds": round(result.seconds, 2),
        "seconds_per_epoch": round(result.seconds / max(len(result.history), 1), 3),
    }
    save_checkpoint(request.out, result.model, cfg, graph.features, graph.id_map, split, summary)
    write_learning_curve(result.history, request.out / "learning_curve.png",
                         cfg.train.select_metric)
    return summary


def evaluate(
    checkpoint: Path,
    pos: Path | None = None,
    neg: Path | None = None,
    device: str = "auto",
) -> dict[str, Any]:
    """Metrics of the checkpoint's model on given pairs, or on its own held-out split."""
    if (pos is None) != (neg is None):
        raise InputError("--pos and --neg go together")
    torch_device = resolve_device(device)
    ck = load_checkpoint(checkpoint, torch_device)
    graph = TrainingGraph(ck.split.train.to(torch_device), ck.config.model.num_nodes).graph
    if pos is not None:
        pos_pairs, neg_pairs = read_pairs(pos, ck.id_map), read_pairs(neg, ck.id_map)
        source = "files"
    elif ck.split.test.size(0) > 0:
        pos_pairs, neg_pairs, source = ck.split.test, ck.split.test_neg, "test"
    else:
        pos_pairs, neg_pairs, source = ck.split.valid, ck.split.valid_neg, "valid"
        log.warning("checkpoint holds no test split; evaluating its validation split")
    metrics = evaluate_split(ck.model, ck.features, graph, pos_pairs.to(torch_device),
                             neg_pairs.to(torch_device), ck.config.train.eval_batch_size)
    return {**metrics, "pairs": source}
