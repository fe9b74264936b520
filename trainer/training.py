"""The training loop: target link removal, fresh negatives each epoch, best-validation selection."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ncnc.trainer.config import RunConfig
from ncnc.trainer.metrics import link_metrics
from ncnc.trainer.model import LinkPredictionModel, link_loss, mask_entries
from ncnc.trainer.splits import EdgeSplit, sample_negatives
from ncnc.triton_kernels import CSRGraph

log = logging.getLogger("ncnc.trainer")


class TrainingGraph:
    """Training edges as a CSR graph whose entries remember their edge, for target link removal.

    ``without(edge_ids)`` removes both directions of those edges in O(nnz) without re-sorting.
    """

    def __init__(self, edges: Tensor, num_nodes: int) -> None:
        num_edges = edges.size(0)
        rows = torch.cat([edges[:, 0], edges[:, 1]])
        cols = torch.cat([edges[:, 1], edges[:, 0]])
        edge_of_entry = torch.arange(num_edges, device=edges.device).repeat(2)
        order = torch.argsort(rows * num_nodes + cols)
        indptr = torch.zeros(num_nodes + 1, dtype=torch.long, device=edges.device)
        indptr[1:] = torch.cumsum(torch.bincount(rows, minlength=num_nodes), 0)
        self.graph = CSRGraph(indptr, cols[order])
        self.edge_of_entry = edge_of_entry[order]
        self.num_edges = num_edges

    def without(self, edge_ids: Tensor) -> CSRGraph:
        removed = torch.zeros(self.num_edges, dtype=torch.bool, device=edge_ids.device)
        removed[edge_ids] = True
        return mask_entries(self.graph, ~removed[self.edge_of_entry])


@dataclass
class EpochRecord:
    epoch: int
    loss: float
    valid: dict[str, float | int]
    test: dict[str, float | int] | None
    seconds: float

    def as_json(self) -> str:
        return json.dumps(self.__dict__)


@dataclass
class TrainingResult:
    model: LinkPredictionModel
    best_epoch: int
    best_valid: dict[str, float | int]
    best_test: dict[str, float | int] | None
    history: list[EpochRecord] = field(default_factory=list)
    seconds: float = 0.0


def evaluate_split(
    model: LinkPredictionModel,
    features: Tensor | None,
    graph: CSRGraph,
    pos: Tensor,
    neg: Tensor,
    batch_size: int,
) -> dict[str, float | int]:
    """Metrics of positive against negative pairs, scored on ``graph``."""
    scores = model.score(features, graph, torch.cat([pos, neg]), batch_size)
    return link_metrics(scores[: pos.size(0)], scores[pos.size(0):])


def train_model(
    cfg: RunConfig,
    features: Tensor | None,
    split: EdgeSplit,
    device: torch.device,
    on_epoch: Callable[[EpochRecord], None] | None = None,
    progress: bool = True,
) -> TrainingResult:
    """Train one model from scratch; returns it with the best-validation weights loaded."""
    tc, num_nodes = cfg.train, cfg.model.num_nodes
    torch.manual_seed(tc.seed)
    generator = torch.Generator().manual_seed(tc.seed)
    model = LinkPredictionModel(cfg.model).to(device)
    # fused: one kernel per step instead of a dozen per parameter (8% of an NCNC epoch on CPU).
    optimizer = torch.optim.Adam([
        {"params": model.encoder.parameters(), "lr": tc.gnnlr},
        {"params": model.predictor.parameters(), "lr": tc.prelr},
    ], fused=True)
    x = features.to(device) if features is not None else None
    train_edges = split.train.to(device)
    training_graph = TrainingGraph(train_edges, num_nodes)
    full_graph = training_graph.graph
    has_test = split.test.numel() > 0

    def evaluate_test() -> dict[str, float | int]:
        return evaluate_split(model, x, full_graph, split.test.to(device),
                              split.test_neg.to(device), tc.eval_batch_size)

    started = time.perf_counter()
    best: tuple[float, int, dict, dict | None, dict] | None = None
    history: list[EpochRecord] = []
    bar = tqdm(range(1, tc.epochs + 1), desc=f"train {cfg.model.model}", disable=not progress,
               unit="epoch")
    for epoch in bar:
        epoch_start = time.perf_counter()
        loss = _train_epoch(model, optimizer, x, train_edges, training_graph, generator, tc,
                            num_nodes)
        valid = evaluate_split(model, x, full_graph, split.valid.to(device),
                               split.valid_neg.to(device), tc.eval_batch_size)
        test = evaluate_test() if has_test and tc.test_each_epoch else None
        record = EpochRecord(epoch, loss, valid, test, time.perf_counter() - epoch_start)
        history.append(record)
        if on_epoch is not None:
            on_epoch(record)
        score = float(valid[tc.select_metric])
        if best is None or score > best[0]:
            state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            best = (score, epoch, valid, test, state)
        bar.set_postfix(loss=f"{loss:.4f}", valid=f"{score:.4f}", best=f"{best[0]:.4f}@{best[1]}")
    assert best is not None, "epochs must be >= 1"
    model.load_state_dict(best[4])
    # Evaluation is deterministic, so this equals the test pass of the best epoch.
    best_test = best[3] if best[3] is not None or not has_test else evaluate_test()
    return TrainingResult(model, best[1], best[2], best_test, history,
                          time.perf_counter() - started)


def _train_epoch(
    model: LinkPredictionModel,
    optimizer: torch.optim.Optimizer,
    x: Tensor | None,
    train_edges: Tensor,
    training_graph: TrainingGraph,
    generator: torch.Generator,
    tc,
    num_nodes: int,
) -> float:
    model.train()
    num_edges = train_edges.size(0)
    perm = torch.randperm(num_edges, generator=generator).to(train_edges.device)
    negatives = sample_negatives(num_nodes, num_edges, train_edges.cpu(), generator).to(
        train_edges.device
    )
    losses = []
    batch_size = min(tc.batch_size, num_edges)
    # Like the reference, the last incomplete batch of each epoch is skipped.
    for start in range(0, num_edges - batch_size + 1, batch_size):
        batch = perm[start:start + batch_size]
        graph = (training_graph.without(batch) if tc.target_link_removal
                 else training_graph.graph)
        optimizer.zero_grad()
        h = model.encoder(x, graph)
        pos = model.predictor(h, graph, train_edges[batch])
        neg = model.predictor(h, graph, negatives[batch])
        loss = link_loss(pos, neg)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return sum(losses) / len(losses)


def write_learning_curve(history: list[EpochRecord], path: Path, metric: str) -> None:
    """PNG with the training loss and the validation (and test) metric per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r.epoch for r in history]
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [r.loss for r in history])
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="loss")
    ax_metric.plot(epochs, [r.valid[metric] for r in history], label="valid")
    if history and history[0].test is not None:
        ax_metric.plot(epochs, [r.test[metric] for r in history], label="test")
    ax_metric.set(xlabel="epoch", ylabel=metric, title=metric)
    ax_metric.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
