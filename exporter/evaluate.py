"""Measure a bundle: score positive and negative pairs with the scorer's engine, compute the
trainer's link-prediction metrics (``ncnc evaluate --bundle``).

Why here: the metrics live in :mod:`ncnc.trainer.metrics` and the engine in
:mod:`ncnc.scorer.engine`, and trainer and scorer never import each other. The exporter is the
one floor below the CLI that bridges both (the CLI only parses flags and calls one function), so
the function that combines them sits here, and needs the ``[train]`` extra like the exporter.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ncnc.scorer.bundle import load_bundle
from ncnc.scorer.engine import BatchScorer
from ncnc.trainer.data import read_pairs, warn_overlapping_pairs
from ncnc.trainer.metrics import check_finite_scores, link_metrics

BATCH_SIZE = 65_536


def evaluate_bundle(bundle: Path | str, pos: Path | str, neg: Path | str, *,
                    device: str = "auto") -> dict[str, Any]:
    """Metrics of a bundle on positive and negative pairs, scored as ``ncnc score`` scores them.

    Every node of the bundle's graph has a score, those that joined after training and those
    without edges included (:func:`ncnc.exporter.export_bundle`).

    Args:
        bundle: a directory written by :func:`ncnc.exporter.export_bundle`.
        pos, neg: Parquet pairs (``src``, ``dst``) in the bundle's ids.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.

    Returns:
        ``hits@20``, ``hits@50``, ``hits@100``, ``mrr`` (fractions), ``auc``, ``num_pos``,
        ``num_neg``, ``pairs`` (``"files"``), ``bundle`` (the path) and ``snapshot`` (the
        manifest's section: known, new and removed nodes, the new-node rule).

    Raises:
        InputError: a bad or changed bundle, or bad pair files (missing columns, nulls, ids of
            the other kind, ids that are not nodes of the bundle's graph).
    """
    loaded = load_bundle(bundle)
    engine = BatchScorer(loaded, device)
    pairs = [read_pairs(Path(path), loaded.id_map) for path in (pos, neg)]
    warn_overlapping_pairs(*pairs, loaded.id_map, Path(pos), Path(neg))
    scores = []
    for path, side in zip((pos, neg), pairs, strict=True):
        chunks = [engine.score_logits(p) for p in side.split(BATCH_SIZE)]
        scores.append(torch.cat(chunks) if chunks else torch.zeros(0))
        check_finite_scores(scores[-1], f"bundle {bundle}: the scores of pairs file {path}")
    return {**link_metrics(*scores), "pairs": "files", "bundle": str(bundle),
            "snapshot": loaded.manifest.get("snapshot")}
