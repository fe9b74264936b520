"""trainer/metrics.py on scores whose metrics are known by hand."""

import json

import pytest
import torch

from ncnc.core.errors import InputError
from ncnc.trainer.metrics import (
    RANKING_METRICS,
    check_finite_scores,
    hits_at_k,
    link_metrics,
    mean_reciprocal_rank,
    roc_auc,
)


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


@pytest.mark.parametrize("pos, neg, missing", [
    ([], [0.0, 1.0], "no positive pairs"),
    ([1.0, 2.0], [], "no negative pairs"),
    ([], [], "no positive and no negative pairs"),
])
def test_metrics_without_positives_or_negatives_are_null_with_one_warning(pos, neg, missing,
                                                                          caplog):
    # Regression: an empty --pos gave NaN, which `ncnc evaluate` printed as bare NaN (not JSON).
    out = link_metrics(torch.tensor(pos), torch.tensor(neg))
    assert {k: out[k] for k in RANKING_METRICS} == dict.fromkeys(RANKING_METRICS)
    assert (out["num_pos"], out["num_neg"]) == (len(pos), len(neg))
    json.dumps(out, allow_nan=False)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == ["metrics hits@20, hits@50, hits@100, mrr, auc are null (undefined): "
                        f"{missing} were scored"]


def test_non_finite_scores_are_refused_naming_the_pairs():
    with pytest.raises(InputError, match=r"^the pairs: 2 of 3 score\(s\) are NaN or infinite "
                                         r"\(e.g. nan, inf\)$"):
        check_finite_scores(torch.tensor([float("nan"), 1.0, float("inf")]), "the pairs")
    check_finite_scores(torch.tensor([1e30, -1e30]), "the pairs")
