"""The terms of the common-neighbour sum (``common_neighbor_terms``): the members a score sums,
checked against sets written out by hand, and summed back into the very logits ``pair_logits``
gives."""

from __future__ import annotations

import pytest
import torch

from ncnc.triton_kernels import weighted_gather_sum
from ncnc.triton_kernels.pair_scoring import PairRule, common_neighbor_terms, pair_logits
from tests.triton_kernels.hand_model import (
    CALIBRATION,
    NEIGHBOURS,
    completion_weight,
    hand_graph,
    hand_head,
    hand_levels,
)

PAIRS = [(0, 3), (0, 5), (6, 7), (1, 4), (0, 1), (3, 0)]


def test_ncn_terms_are_the_common_neighbours_and_sum_to_the_logits():
    rule, tables, pairs = PairRule("ncn"), hand_levels(), torch.tensor(PAIRS)
    terms = common_neighbor_terms(rule, hand_head, hand_graph(), tables, pairs)
    members = terms.members
    for b, (i, j) in enumerate(PAIRS):
        span = slice(int(members.offsets[b]), int(members.offsets[b + 1]))
        assert members.members[span].tolist() == sorted(NEIGHBOURS[i] & NEIGHBOURS[j])
        assert (members.weights[span] == 1).all()
    assert terms.x is tables[1]
    assert torch.equal(terms.xij, tables[0][pairs[:, 0]] * tables[0][pairs[:, 1]])
    cn = weighted_gather_sum(members.offsets, members.members, members.weights, terms.x)
    logits = pair_logits(rule, hand_head, hand_graph(), tables, pairs)
    assert torch.equal(hand_head(cn, terms.xij), logits)


def test_ncnc_terms_are_common_then_completed_neighbours_and_sum_to_the_logits():
    rule = PairRule("ncnc", depth=1, calibration=CALIBRATION)
    tables, pairs = hand_levels(), torch.tensor(PAIRS)
    terms = common_neighbor_terms(rule, hand_head, hand_graph(), tables, pairs)
    members = terms.members
    for b, (i, j) in enumerate(PAIRS):
        span = slice(int(members.offsets[b]), int(members.offsets[b + 1]))
        common = sorted(NEIGHBOURS[i] & NEIGHBOURS[j])
        only_i = sorted(NEIGHBOURS[i] - NEIGHBOURS[j])
        only_j = sorted(NEIGHBOURS[j] - NEIGHBOURS[i])
        assert members.members[span].tolist() == common + only_i + only_j
        expected = ([1.0] * len(common) + [completion_weight(tables, j, u) for u in only_i]
                    + [completion_weight(tables, i, u) for u in only_j])
        assert members.weights[span].tolist() == pytest.approx(expected, rel=1e-5)
    cn = weighted_gather_sum(members.offsets, members.members, members.weights, terms.x)
    logits = pair_logits(rule, hand_head, hand_graph(), tables, pairs)
    assert torch.equal(hand_head(cn, terms.xij), logits)


def test_gae_has_no_terms():
    with pytest.raises(ValueError, match="GAE"):
        common_neighbor_terms(PairRule("gae"), hand_head, hand_graph(), hand_levels(),
                              torch.tensor(PAIRS))
