"""Link-prediction metrics over one set of positive and one set of negative scores."""

from __future__ import annotations

import torch
from torch import Tensor

HITS_AT = (20, 50, 100)


def hits_at_k(pos: Tensor, neg: Tensor, k: int) -> float:
    """OGB hits@K: fraction of positives scoring strictly above the K-th highest negative."""
    if pos.numel() == 0:
        return float("nan")
    if neg.numel() < k:
        return 1.0
    threshold = torch.topk(neg, k).values[-1]
    return float((pos > threshold).float().mean())


def mean_reciprocal_rank(pos: Tensor, neg: Tensor) -> float:
    """Mean over positives of ``1 / (1 + #negatives scoring >= it)`` (ties count against it)."""
    if pos.numel() == 0:
        return float("nan")
    neg_sorted = torch.sort(neg).values
    at_least = neg.numel() - torch.searchsorted(neg_sorted, pos, right=False)
    return float((1.0 / (1.0 + at_least.double())).mean())


def roc_auc(pos: Tensor, neg: Tensor) -> float:
    """Probability that a random positive outscores a random negative (ties count half)."""
    if pos.numel() == 0 or neg.numel() == 0:
        return float("nan")
    neg_sorted = torch.sort(neg.double()).values
    pos = pos.double()
    below = torch.searchsorted(neg_sorted, pos, right=False).double()
    below_or_equal = torch.searchsorted(neg_sorted, pos, right=True).double()
    return float(((below + below_or_equal) / 2).sum() / (pos.numel() * neg.numel()))


def link_metrics(pos: Tensor, neg: Tensor) -> dict[str, float | int]:
    """The metrics ``ncnc evaluate`` prints: hits@20/50/100, mrr, auc, num_pos, num_neg."""
    pos, neg = pos.detach().float().cpu(), neg.detach().float().cpu()
    out: dict[str, float | int] = {f"hits@{k}": hits_at_k(pos, neg, k) for k in HITS_AT}
    out["mrr"] = mean_reciprocal_rank(pos, neg)
    out["auc"] = roc_auc(pos, neg)
    out["num_pos"] = int(pos.numel())
    out["num_neg"] = int(neg.numel())
    return out
