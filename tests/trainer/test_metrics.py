"""trainer/metrics.py on scores whose metrics are known by hand."""

import pytest
import torch

from ncnc.trainer.metrics import hits_at_k, link_metrics, mean_reciprocal_rank, roc_auc


def test_hits_at_k_counts_positives_strictly_above_the_kth_negative():
    neg = torch.tensor([0.9, 0.5, 0.1])
    pos = torch.tensor([1.0, 0.6, 0.5, 0.2])
    assert hits_at_k(pos, neg, 1) == 0.25  # above 0.9
    assert hits_at_k(pos, neg, 2) == 0.5  # above 0.5; the tie 0.5 does not count
    assert hits_at_k(pos, neg, 3) == 1.0  # above 0.1
    assert hits_at_k(pos, neg, 4) == 1.0  # fewer negatives than K


def test_mrr_and_auc_by_hand():
    neg = torch.tensor([0.9, 0.5, 0.1])
    pos = torch.tensor([1.0, 0.5])
    # ranks: 1.0 beats all -> 1/1; 0.5 has 0.9 and the tied 0.5 at or above -> 1/3
    assert mean_reciprocal_rank(pos, neg) == pytest.approx((1 + 1 / 3) / 2)
    # pairs won: 1.0 -> 3; 0.5 -> 1 (0.1) + 0.5 (tie) -> 4.5 of 6
    assert roc_auc(pos, neg) == pytest.approx(4.5 / 6)


def test_link_metrics_keys():
    out = link_metrics(torch.tensor([2.0, 1.0]), torch.tensor([0.0, 3.0, -1.0]))
    assert set(out) == {"hits@20", "hits@50", "hits@100", "mrr", "auc", "num_pos", "num_neg"}
    assert out["num_pos"] == 2 and out["num_neg"] == 3
