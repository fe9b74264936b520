"""The training loop: target link removal, fresh negatives each epoch, best-validation selection.

Early stopping (``TrainConfig.patience``, ``max_minutes``) is decided between epochs; the weights
of the best validation epoch are kept whatever stops the run.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ncnc.trainer.config import RunConfig, TrainConfig
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


StopReason = Literal["patience", "max_minutes", "epochs"]


@dataclass(frozen=True)
class Stop:
    """Where training stopped (the last epoch run) and why."""

    epoch: int
    reason: StopReason


@dataclass
class EpochRecord:
    """One line of ``metrics.jsonl``; the last epoch's carries ``stopped``."""

    epoch: int
    loss: float
    valid: dict[str, float | int]
    test: dict[str, float | int] | None
    seconds: float
    stopped: Stop | None = None

    def as_json(self) -> str:
        line = {k: v for k, v in self.__dict__.items() if k != "stopped"}
        if self.stopped is not None:
            line["stopped"] = dataclasses.asdict(self.stopped)
        return json.dumps(line)


@dataclass
class TrainingResult:
    model: LinkPredictionModel
    best_epoch: int
    best_valid: dict[str, float | int]
    best_test: dict[str, float | int] | None
    stopped: Stop
    history: list[EpochRecord] = field(default_factory=list)
    seconds: float = 0.0


def stop_reason(tc: TrainConfig, epoch: int, best_epoch: int,
                elapsed_seconds: float) -> StopReason | None:
    """Why training ends after ``epoch`` (``None``: go on). Patience wins over the clock when both
    apply, since it says more about the run."""
    if tc.patience > 0 and epoch - best_epoch >= tc.patience:
        return "patience"
    if tc.max_minutes > 0 and elapsed_seconds >= tc.max_minutes * 60:
        return "max_minutes"
    if epoch >= tc.epochs:
        return "epochs"
    return None


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
    clock: Callable[[], float] = time.perf_counter,
) -> TrainingResult:
    """Train one model from scratch; returns it with the best-validation weights loaded.

    Runs until :func:`stop_reason` says stop (patience, ``max_minutes`` measured on ``clock``, or
    ``epochs``). ``on_epoch`` sees each epoch's record, the last one with ``stopped`` set; an
    exception it raises ends training there (the tuner prunes trials that way).
    """
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

    started = clock()
    best: tuple[float, int, dict, dict | None, dict] | None = None
    history: list[EpochRecord] = []
    bar = tqdm(total=tc.epochs, desc=f"train {cfg.model.model}", disable=not progress,
               unit="epoch")
    epoch, stopped = 0, None
    while stopped is None:
        epoch += 1
        epoch_start = clock()
        loss = _train_epoch(model, optimizer, x, train_edges, training_graph, generator, tc,
                            num_nodes)
        valid = evaluate_split(model, x, full_graph, split.valid.to(device),
                               split.valid_neg.to(device), tc.eval_batch_size)
        test = evaluate_test() if has_test and tc.test_each_epoch else None
        score = float(valid[tc.select_metric])
        if best is None or score > best[0]:
            state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            best = (score, epoch, valid, test, state)
        now = clock()
        reason = stop_reason(tc, epoch, best[1], now - started)
        stopped = Stop(epoch, reason) if reason is not None else None
        record = EpochRecord(epoch, loss, valid, test, now - epoch_start, stopped)
        history.append(record)
        bar.update()
        bar.set_postfix(loss=f"{loss:.4f}", valid=f"{score:.4f}", best=f"{best[0]:.4f}@{best[1]}")
        if on_epoch is not None:
            on_epoch(record)
    bar.close()
    if stopped.reason != "epochs":
        log.info("stopped after epoch %d (%s); best validation epoch %d", stopped.epoch,
                 stopped.reason, best[1])
    model.load_state_dict(best[4])
    # Evaluation is deterministic, so this equals the test pass of the best epoch.
    best_test = best[3] if best[3] is not None or not has_test else evaluate_test()
    return TrainingResult(model, best[1], best[2], best_test, stopped, history,
                          clock() - started)


def _train_epoch(
    model: LinkPredictionModel,
    optimizer: torch.optim.Optimizer,
    x: Tensor | None,
    train_edges: Tensor,
    training_graph: TrainingGraph,
    generator: torch.Generator,
    tc: TrainConfig,
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


def write_learning_curve(result: TrainingResult, path: Path, metric: str) -> None:
    """PNG with the training loss and the validation (and test) metric per epoch, the best
    epoch marked, and where and why training stopped in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    history = result.history
    epochs = [r.epoch for r in history]
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [r.loss for r in history])
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="loss")
    ax_metric.plot(epochs, [r.valid[metric] for r in history], label="valid")
    if history and history[0].test is not None:
        ax_metric.plot(epochs, [r.test[metric] for r in history], label="test")
    ax_metric.axvline(result.best_epoch, color="grey", linestyle="--",
                      label=f"best epoch {result.best_epoch} (weights kept)")
    ax_metric.set(xlabel="epoch", ylabel=metric, title=metric)
    ax_metric.legend()
    fig.suptitle(f"stopped after epoch {result.stopped.epoch}: {result.stopped.reason}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
