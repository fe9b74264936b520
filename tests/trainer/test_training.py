"""trainer/training.py: target link removal, featureless training, reproducibility."""

from __future__ import annotations

import json
from typing import NamedTuple

import pytest
import torch

from ncnc.trainer import training
from ncnc.trainer.config import RunConfig, resolve_config
from ncnc.trainer.splits import EdgeSplit, random_edge_split
from ncnc.trainer.synthetic import community_graph
from ncnc.trainer.training import Stop, TrainingGraph, TrainingResult, train_model
from ncnc.triton_kernels import build_csr


def test_target_link_removal_removes_exactly_the_batch_edges_both_directions():
    edges = torch.tensor([[0, 1], [0, 2], [1, 2], [1, 3], [2, 3], [3, 4]])
    training_graph = TrainingGraph(edges, 5)
    batch = torch.tensor([1, 5])  # edges 0-2 and 3-4
    without = training_graph.without(batch)
    kept = edges[torch.tensor([0, 2, 3, 4])]
    expected = build_csr(kept, 5)
    assert torch.equal(without.indptr, expected.indptr)
    assert torch.equal(without.indices, expected.indices)
    pairs = set(map(tuple, without.edge_index().t().tolist()))
    assert (0, 2) not in pairs and (2, 0) not in pairs and (3, 4) not in pairs and (4, 3) not in pairs
    assert len(pairs) == 2 * 4
    # The full graph is untouched.
    assert training_graph.graph.num_entries == 12


class SmallRun(NamedTuple):
    result: TrainingResult
    split: EdgeSplit
    config: RunConfig


def small_run(model: str, seed: int, features: bool, epochs: int = 2, test_fraction: float = 0.2,
              **train_flags):
    graph = community_graph(300, avg_degree=6, num_communities=4,
                            feature_dim=8 if features else 0, seed=3)
    src = torch.tensor(graph.edges["src"].to_numpy())
    dst = torch.tensor(graph.edges["dst"].to_numpy())
    edges = torch.stack([src, dst], 1)
    x = (torch.tensor(graph.features.drop("node").to_numpy()) if features else None)
    cfg = resolve_config(
        model,
        model_flags={"num_nodes": 300, "in_features": 8 if features else 0, "hidden": 16,
                     "probscale": 1.0, "proboffset": 0.0},
        train_flags={"epochs": epochs, "batch_size": 64, "seed": seed, **train_flags},
    )
    split = random_edge_split(edges, 300, 0.1, test_fraction, torch.Generator().manual_seed(seed))
    return SmallRun(train_model(cfg, x, split, torch.device("cpu"), progress=False), split, cfg)


def test_featureless_training_learns_the_embedding():
    result = small_run("ncn", seed=0, features=False).result
    embedding = result.model.encoder.embedding
    assert embedding is not None and embedding.weight.shape == (300, 16)
    torch.manual_seed(0)  # the same initialisation as the run
    from ncnc.trainer.model import LinkPredictionModel

    fresh = LinkPredictionModel(result.model.cfg)
    assert not torch.allclose(fresh.encoder.embedding.weight, embedding.weight)
    assert len(result.history) == 2 and all(r.loss > 0 for r in result.history)


@pytest.mark.parametrize("model", ["gae", "ncn", "ncnc"])
def test_training_is_reproducible_with_a_seed(model):
    first = small_run(model, seed=5, features=True).result
    second = small_run(model, seed=5, features=True).result
    other = small_run(model, seed=6, features=True).result
    for name, value in first.model.state_dict().items():
        assert torch.equal(value, second.model.state_dict()[name]), name
    assert [r.loss for r in first.history] == [r.loss for r in second.history]
    assert first.best_valid == second.best_valid
    assert [r.loss for r in first.history] != [r.loss for r in other.history]


def test_best_validation_epoch_weights_are_kept():
    result = small_run("ncn", seed=1, features=True, epochs=4).result
    best = max(result.history, key=lambda r: r.valid["hits@100"])
    assert result.best_epoch == best.epoch  # first epoch reaching the maximum
    assert result.best_valid == best.valid


@pytest.mark.parametrize("model", ["ncn", "ncnc"])
def test_test_metrics_of_the_best_weights_equal_those_of_the_best_epoch(model):
    once = small_run(model, seed=2, features=True, epochs=4).result
    every = small_run(model, seed=2, features=True, epochs=4, test_each_epoch=True).result
    assert all(r.test is None for r in once.history)
    assert every.best_epoch == once.best_epoch
    assert once.best_test == every.best_test == every.history[every.best_epoch - 1].test


def script_validation_hits(monkeypatch, values: list[float]) -> None:
    """Make the k-th evaluation report ``values[k]`` as hits@100 (a run without a test split
    evaluates only its validation split, once per epoch)."""
    real = training.evaluate_split
    calls = iter(values)

    def scripted(*args, **kwargs):
        return {**real(*args, **kwargs), "hits@100": next(calls)}

    monkeypatch.setattr(training, "evaluate_split", scripted)


def test_patience_stops_a_plateauing_run_and_keeps_the_best_epochs_weights(monkeypatch):
    # Best at epoch 2; epoch 4 only ties it, so epochs 3, 4, 5 bring nothing: patience 3 stops
    # after epoch 5, before the 0.9 of epoch 6.
    script_validation_hits(monkeypatch, [0.2, 0.5, 0.4, 0.5, 0.3, 0.9, 0.9])
    run = small_run("ncn", seed=4, features=True, epochs=7, test_fraction=0.0, patience=3).result
    assert [r.epoch for r in run.history] == [1, 2, 3, 4, 5]
    assert run.stopped == Stop(5, "patience") and run.history[-1].stopped == run.stopped
    assert all(r.stopped is None for r in run.history[:-1])
    assert run.best_epoch == 2 and run.best_valid["hits@100"] == 0.5
    assert json.loads(run.history[-1].as_json())["stopped"] == {"epoch": 5, "reason": "patience"}
    # Training is deterministic, so the weights after epoch 2 are those of a 2-epoch run.
    script_validation_hits(monkeypatch, [0.2, 0.5])
    two_epochs = small_run("ncn", seed=4, features=True, epochs=2, test_fraction=0.0,
                           patience=0).result
    assert two_epochs.stopped == Stop(2, "epochs")
    for name, value in two_epochs.model.state_dict().items():
        assert torch.equal(value, run.model.state_dict()[name]), name


def test_max_minutes_stops_at_the_first_epoch_end_past_the_limit(monkeypatch):
    now = [0.0]
    real_epoch = training._train_epoch

    def epoch_of_25_seconds(*args, **kwargs):
        now[0] += 25.0
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(training, "_train_epoch", epoch_of_25_seconds)
    graph = community_graph(120, avg_degree=6, num_communities=3, feature_dim=0, seed=1)
    edges = torch.tensor(graph.edges.to_numpy())
    cfg = resolve_config("ncn", model_flags={"num_nodes": 120, "hidden": 8},
                         train_flags={"epochs": 10, "batch_size": 64, "patience": 0,
                                      "max_minutes": 1.0})
    split = random_edge_split(edges, 120, 0.1, 0.0, torch.Generator().manual_seed(0))
    run = train_model(cfg, None, split, torch.device("cpu"), progress=False,
                      clock=lambda: now[0])
    # 25, 50, 75 s: epoch 3 runs to its end (limits are checked between epochs), then it stops.
    assert run.stopped == Stop(3, "max_minutes") and len(run.history) == 3
    assert run.best_epoch == max(run.history, key=lambda r: r.valid["hits@100"]).epoch


def test_a_non_finite_loss_stops_training_naming_the_epoch_and_batch(monkeypatch):
    real = training.link_loss
    calls = [0]

    def nan_at_the_fourth_batch(pos, neg):
        calls[0] += 1
        loss = real(pos, neg)
        return loss * float("nan") if calls[0] == 4 else loss

    monkeypatch.setattr(training, "link_loss", nan_at_the_fourth_batch)
    # 300 nodes, ~900 edges, 70% for training at 64 per batch: 9 batches an epoch.
    with pytest.raises(training.TrainingDivergedError,
                       match=r"^training diverged: the loss of epoch 1, batch 4 became NaN or "
                             r"infinite \(loss nan\); likely node features of huge magnitude "
                             r"\(largest \|x\| = .*\) or too high a learning rate \(learning "
                             r"rates gnnlr 0.0043, prelr 0.0024\)$"):
        small_run("ncn", seed=0, features=True, epochs=2)
    assert calls[0] == 4  # stopped there: no step was taken from the NaN loss


def test_weights_a_step_made_infinite_stop_training_after_the_epoch():
    # A learning rate of 1e38 turns the first step's weights infinite (a featureless model: the
    # cause named is the learning rate).
    with pytest.raises(training.TrainingDivergedError,
                       match=r"^training diverged: .*epoch 1.*; likely too high a learning rate "
                             r"\(learning rates gnnlr 1e\+38, prelr 0.0024\): lower them$"):
        small_run("ncn", seed=0, features=False, epochs=2, gnnlr=1e38)
