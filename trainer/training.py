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

from ncnc.core.errors import InputError, examples
from ncnc.trainer.config import RunConfig, TrainConfig
from ncnc.trainer.metrics import Metrics, check_finite_scores, link_metrics
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


class TrainingDivergedError(InputError):
    """The loss, the logits or the weights became NaN or infinite: a run that cannot give a
    usable model (exit 2, as bad input: the input or the settings caused it)."""


def divergence_cause(x: Tensor | None, tc: TrainConfig) -> str:
    """The likely reasons a run diverged, with the figures that point to them."""
    rates = f"learning rates gnnlr {tc.gnnlr:g}, prelr {tc.prelr:g}"
    if x is None:
        return f"likely too high a learning rate ({rates}): lower them"
    largest = float(x.abs().max()) if x.numel() else 0.0
    return (f"likely node features of huge magnitude (largest |x| = {largest:.3g}: scale or "
            f"standardise them) or too high a learning rate ({rates})")


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
    valid: Metrics
    test: Metrics | None
    seconds: float
    stopped: Stop | None = None

    def as_json(self) -> str:
        line = {k: v for k, v in self.__dict__.items() if k != "stopped"}
        if self.stopped is not None:
            line["stopped"] = dataclasses.asdict(self.stopped)
        return json.dumps(line, allow_nan=False)


@dataclass
class TrainingResult:
    model: LinkPredictionModel
    best_epoch: int
    best_valid: Metrics
    best_test: Metrics | None
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
    what: str = "the evaluated pairs",
) -> Metrics:
    """Metrics of positive against negative pairs, scored on ``graph``.

    Raises:
        InputError: a score is NaN or infinite (``what`` names the pairs in the message).
    """
    scores = model.score(features, graph, torch.cat([pos, neg]), batch_size)
    check_finite_scores(scores, what)
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

    Raises:
        TrainingDivergedError: a batch's loss or logits, the weights after an epoch, or a
            validation score became NaN or infinite; training stops there.
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

    def evaluate(pos: Tensor, neg: Tensor, what: str) -> Metrics:
        try:
            return evaluate_split(model, x, full_graph, pos.to(device), neg.to(device),
                                  tc.eval_batch_size, what)
        except InputError as err:  # non-finite scores from finite weights and inputs
            raise TrainingDivergedError(f"training diverged: {err}; "
                                        f"{divergence_cause(x, tc)}") from err

    def evaluate_test() -> Metrics:
        return evaluate(split.test, split.test_neg, "the test pairs")

    started = clock()
    best: tuple[float, int, Metrics, Metrics | None, dict] | None = None
    history: list[EpochRecord] = []
    bar = tqdm(total=tc.epochs, desc=f"train {cfg.model.model}", disable=not progress,
               unit="epoch")
    epoch, stopped = 0, None
    while stopped is None:
        epoch += 1
        epoch_start = clock()
        loss = _train_epoch(model, optimizer, x, train_edges, training_graph, generator, tc,
                            num_nodes, epoch)
        _check_finite_weights(model, x, tc, epoch)
        valid = evaluate(split.valid, split.valid_neg, f"the validation pairs of epoch {epoch}")
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
    epoch: int,
) -> float:
    """One epoch over the training edges; returns the mean batch loss.

    Raises:
        TrainingDivergedError: a batch's loss or logits are NaN or infinite (checked before the
            step, so no update is made from them).
    """
    model.train()
    num_edges = train_edges.size(0)
    perm = torch.randperm(num_edges, generator=generator).to(train_edges.device)
    negatives = sample_negatives(num_nodes, num_edges, train_edges.cpu(), generator).to(
        train_edges.device
    )
    losses = []
    batch_size = min(tc.batch_size, num_edges)
    # Like the reference, the last incomplete batch of each epoch is skipped.
    for number, start in enumerate(range(0, num_edges - batch_size + 1, batch_size), 1):
        batch = perm[start:start + batch_size]
        graph = (training_graph.without(batch) if tc.target_link_removal
                 else training_graph.graph)
        optimizer.zero_grad()
        h = model.encoder(x, graph)
        pos = model.predictor(h, graph, train_edges[batch])
        neg = model.predictor(h, graph, negatives[batch])
        loss = link_loss(pos, neg)
        # Logits too: infinite logits can give a finite loss and NaN gradients. One sync, as the
        # loss's .item() below needs anyway.
        finite = torch.stack([torch.isfinite(loss), torch.isfinite(pos).all(),
                              torch.isfinite(neg).all()]).cpu()
        if not bool(finite.all()):
            what = "loss" if not finite[0] else "logits"
            raise TrainingDivergedError(
                f"training diverged: the {what} of epoch {epoch}, batch {number} became NaN or "
                f"infinite (loss {loss.item():g}); {divergence_cause(x, tc)}")
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return sum(losses) / len(losses)


def _check_finite_weights(model: LinkPredictionModel, x: Tensor | None, tc: TrainConfig,
                          epoch: int) -> None:
    """Refuse weights a step made NaN or infinite (overflowing gradients), which the next
    batch's loss would otherwise only show an epoch later, or never after the last one."""
    bad = [name for name, p in model.named_parameters() if not bool(torch.isfinite(p).all())]
    if bad:
        raise TrainingDivergedError(
            f"training diverged: after epoch {epoch} the weights {examples(bad)} hold NaN or "
            f"infinite values; {divergence_cause(x, tc)}")


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
