"""trainer/model.py: the common-neighbour input of each model, NCNC completion, calibration."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from ncnc.trainer.config import ModelConfig
from ncnc.trainer.model import Encoder, PairPredictor, gcn_propagate
from ncnc.triton_kernels import build_csr

# A graph small enough to check by hand:
#
#   0 - 1 - 3 - 4        N(0) = {1, 2}      N(3) = {1, 2, 4}
#    \  |  /             N(1) = {0, 2, 3}   N(4) = {3}
#      2                 N(2) = {0, 1, 3}
EDGES = torch.tensor([[0, 1], [0, 2], [1, 2], [1, 3], [2, 3], [3, 4]])
D = 8


@pytest.fixture
def graph():
    return build_csr(EDGES, 5)


@pytest.fixture
def h():
    return torch.randn(5, D, generator=torch.Generator().manual_seed(0))


def predictor(model: str, **overrides) -> PairPredictor:
    torch.manual_seed(0)
    # Calibration centred on logit 0 so that completion weights at initialisation are far from
    # zero (the Cora defaults make them ~1e-5, which would hide a wrong completion).
    overrides = {"probscale": 1.0, "proboffset": 0.0, **overrides}
    cfg = ModelConfig(model=model, num_nodes=5, in_features=0, hidden=D, use_xlin=False,
                      predp=0.0, preedp=0.0, **overrides)
    return PairPredictor(cfg).eval()


def captured_cn(pred: PairPredictor, h, graph, pairs) -> torch.Tensor:
    """Run the predictor and return the common-neighbour sum its head received."""
    seen = {}
    original = pred.head

    def spy(cn, xij):
        seen["cn"] = cn  # inner (completion) calls run first; the outermost call's head runs last
        return original(cn, xij)

    pred.head = spy
    pred(h, graph, pairs)
    return seen["cn"]


def test_ncn_sums_exactly_the_common_neighbours(graph, h):
    pairs = torch.tensor([[0, 3], [0, 4], [1, 2], [2, 2]])
    cn = captured_cn(predictor("ncn"), h, graph, pairs)
    expected = torch.stack([h[1] + h[2], torch.zeros(D), h[0] + h[3], h[0] + h[1] + h[3]])
    torch.testing.assert_close(cn, expected)


def test_ncn_sums_the_transformed_table_when_xlin_is_on(graph, h):
    pred = predictor("ncn")
    pred = PairPredictor(dataclasses.replace(pred.cfg, use_xlin=True)).eval()
    cn = captured_cn(pred, h, graph, torch.tensor([[0, 3]]))
    x = h + pred.xlin(h)
    torch.testing.assert_close(cn, (x[1] + x[2]).unsqueeze(0))


def test_gae_ignores_the_graph(graph, h):
    pred = predictor("gae")
    pairs = torch.tensor([[0, 3], [0, 4]])
    empty = build_csr(torch.zeros(0, 2, dtype=torch.long), 5)
    torch.testing.assert_close(pred(h, graph, pairs), pred(h, empty, pairs))
    assert not hasattr(pred, "xcnlin")


def test_ncnc_completes_with_calibrated_inner_probabilities(graph, h):
    # Pair (0, 4): no common neighbour; N(0) \ N(4) = {1, 2}, N(4) \ N(0) = {3}.
    pred = predictor("ncnc")
    cn = captured_cn(pred, h, graph, torch.tensor([[0, 4]]))
    inner = pred(h, graph, torch.tensor([[4, 1], [4, 2], [0, 3]]), depth=0)
    p = pred.calibration(inner)
    assert (p > 0.05).all()
    expected = p[0] * h[1] + p[1] * h[2] + p[2] * h[3]
    torch.testing.assert_close(cn, expected.unsqueeze(0))


def test_ncnc_inner_call_transforms_the_table_again(graph, h):
    # Fidelity with the reference: the inner NCN receives x~ = h + xlin(h) and applies xlin again.
    base = predictor("ncnc")
    pred = PairPredictor(dataclasses.replace(base.cfg, use_xlin=True)).eval()
    cn = captured_cn(pred, h, graph, torch.tensor([[0, 4]]))
    x = pred.transform(h)
    p = pred.calibration(pred(x, graph, torch.tensor([[4, 1], [4, 2], [0, 3]]), depth=0))
    torch.testing.assert_close(cn, (p[0] * x[1] + p[1] * x[2] + p[2] * x[3]).unsqueeze(0))


def test_ncnc_with_common_neighbours_keeps_them_at_weight_one(graph, h):
    # Pair (0, 3): common {1, 2}; N(0) \ N(3) = {} ; N(3) \ N(0) = {4} completed via pair (0, 4).
    pred = predictor("ncnc")
    cn = captured_cn(pred, h, graph, torch.tensor([[0, 3]]))
    p = pred.calibration(pred(h, graph, torch.tensor([[0, 4]]), depth=0))
    torch.testing.assert_close(cn, (h[1] + h[2] + p[0] * h[4]).unsqueeze(0))


def test_ncnc_cap_reweights_the_drawn_member(graph, h):
    # With cap 1, N(0) \ N(4) = {1, 2} becomes one drawn member weighted 2.
    pred = predictor("ncnc", test_cap=1)
    cn = captured_cn(pred, h, graph, torch.tensor([[0, 4]]))
    candidates = []
    for drawn in (1, 2):
        p = pred.calibration(pred(h, graph, torch.tensor([[4, drawn], [0, 3]]), depth=0))
        candidates.append(2 * p[0] * h[drawn] + p[1] * h[3])
    assert any(torch.allclose(cn[0], c, atol=1e-6) for c in candidates)
    torch.testing.assert_close(cn, captured_cn(pred, h, graph, torch.tensor([[0, 4]])))


def test_calibration_matches_the_formula_by_hand():
    pred = predictor("ncnc", alpha=1.0, pt=0.5, probscale=1.0, proboffset=0.0)
    # z = 0: s = 1/2, p = 0.5 * 0.5 / (0.25 + 0.5) = 1/3
    torch.testing.assert_close(pred.calibration(torch.tensor([0.0])), torch.tensor([1 / 3]))
    pred = predictor("ncnc", alpha=0.4, pt=0.75, probscale=2.0, proboffset=1.0)
    s = torch.sigmoid(torch.tensor(2.0 * (3.0 - 1.0)))
    torch.testing.assert_close(pred.calibration(torch.tensor([3.0])),
                               (0.4 * 0.75 * s / (0.75 * s + 1 - s)).reshape(1))


def test_ncnc_depth_two_runs_and_differs_from_depth_one(graph, h):
    pairs = torch.tensor([[0, 4], [1, 4]])
    one = predictor("ncnc", depth=1)(h, graph, pairs)
    two = predictor("ncnc", depth=2)(h, graph, pairs)
    assert torch.isfinite(two).all() and not torch.allclose(one, two)


def test_scores_do_not_depend_on_pair_order_or_batching(graph, h):
    pred = predictor("ncnc", test_cap=1)
    pairs = torch.tensor([[0, 4], [0, 3], [1, 4], [2, 4], [3, 3]])
    perm = torch.tensor([3, 0, 4, 2, 1])
    together = pred(h, graph, pairs)
    torch.testing.assert_close(pred(h, graph, pairs[perm]), together[perm])
    torch.testing.assert_close(torch.cat([pred(h, graph, p) for p in pairs.split(2)]), together)


def test_gcn_propagation_by_hand(graph):
    x = torch.eye(5)
    out = gcn_propagate(x, graph)
    degree = torch.tensor([2.0, 3, 3, 3, 1]) + 1
    adjacency = torch.zeros(5, 5)
    adjacency[EDGES[:, 0], EDGES[:, 1]] = 1
    adjacency = adjacency + adjacency.t() + torch.eye(5)
    expected = adjacency / torch.sqrt(degree[:, None] * degree[None, :])
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("encoder", ["puregcn", "gcn"])
@pytest.mark.parametrize("in_features", [0, 6])
def test_encoder_shapes_and_featureless_embedding(graph, encoder, in_features):
    torch.manual_seed(0)
    cfg = ModelConfig(num_nodes=5, in_features=in_features, hidden=D, encoder=encoder,
                      mp_layers=2, res=True, jk=True)
    enc = Encoder(cfg)
    x = torch.randn(5, in_features) if in_features else None
    out = enc(x, graph)
    assert out.shape == (5, D)
    assert (enc.embedding is not None) == (in_features == 0)
