"""Link-prediction metrics over one set of positive and one set of negative scores."""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from ncnc.core.errors import EXAMPLES, InputError, examples

log = logging.getLogger("ncnc.trainer")

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


Metrics = dict[str, float | int | None]
"""``hits@20/50/100``, ``mrr``, ``auc`` (``None`` where undefined), ``num_pos``, ``num_neg``."""

RANKING_METRICS = (*(f"hits@{k}" for k in HITS_AT), "mrr", "auc")


def check_finite_scores(scores: Tensor, what: str) -> None:
    """Refuse NaN or infinite scores: metrics over them would be numbers that mean nothing.

    Args:
        scores: ``[B]`` the logits of the pairs ``what`` names.
    """
    bad = ~torch.isfinite(scores)
    if bool(bad.any()):
        raise InputError(f"{what}: {int(bad.sum())} of {scores.numel()} score(s) are NaN or "
                         f"infinite (e.g. {examples(scores[bad][:EXAMPLES + 1].tolist())})")


def link_metrics(pos: Tensor, neg: Tensor) -> Metrics:
    """The metrics ``ncnc evaluate`` prints: hits@20/50/100, mrr, auc, num_pos, num_neg.

    Without positive pairs, or without negative ones, no ranking metric is defined (there is
    nothing to rank, or nothing to rank against): they are ``None`` (JSON ``null``), with one
    warning saying which and why, never NaN (which is not JSON) nor a convention's 1.0.

    Args:
        pos: ``[P]`` scores of positive pairs; neg: ``[Q]`` scores of negative pairs.
    """
    pos, neg = pos.detach().float().cpu(), neg.detach().float().cpu()
    out: Metrics = {f"hits@{k}": hits_at_k(pos, neg, k) for k in HITS_AT}
    out["mrr"] = mean_reciprocal_rank(pos, neg)
    out["auc"] = roc_auc(pos, neg)
    missing = [side for side, scores in (("positive", pos), ("negative", neg))
               if scores.numel() == 0]
    if missing:
        out.update(dict.fromkeys(RANKING_METRICS))
        log.warning("metrics %s are null (undefined): no %s pairs were scored",
                    ", ".join(RANKING_METRICS), " and no ".join(missing))
    out["num_pos"] = int(pos.numel())
    out["num_neg"] = int(neg.numel())
    return out
