"""ncnc: train, export and batch-score NCN / NCNC link-prediction models.

Neural Common Neighbor with Completion (Wang, Yang & Zhang, ICLR 2024). The Python API mirrors
the ``ncnc`` command line::

    import ncnc

    ncnc.train(ncnc.TrainRequest(model="ncnc", edges="edges.parquet", out="checkpoint"))
    ncnc.export("checkpoint", "bundle", edges="today.parquet")    # today's graph, new nodes too
    scorer = ncnc.load_bundle("bundle").scorer()
    scored = scorer.score(pairs)                  # polars, pandas or Arrow in; the same kind out
    best = ncnc.top_k(scored, 20, per_source=True)
    scorer.score_parquet("candidates.parquet", "recs.parquet", top_k=20, per_source=True)

Names are imported on first use, so ``import ncnc`` is cheap and a scoring-only install never
imports the training stack (PyG, matplotlib, onnxscript): ``ncnc.load_bundle`` loads the runtime
(:mod:`ncnc.scorer`) alone; ``ncnc.train``, ``ncnc.evaluate``, ``ncnc.evaluate_bundle`` and
``ncnc.export`` need the ``[train]`` extra.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# name -> (module, attribute): one obvious import per public name.
_EXPORTS: dict[str, tuple[str, str]] = {
    "load_bundle": ("ncnc.scorer", "load_bundle"),
    "Bundle": ("ncnc.scorer", "Bundle"),
    "Scorer": ("ncnc.scorer", "Scorer"),
    "top_k": ("ncnc.scorer", "top_k"),
    "candidates": ("ncnc.scorer", "write_candidates"),
    "train": ("ncnc.trainer", "train"),
    "evaluate": ("ncnc.trainer", "evaluate"),
    "TrainRequest": ("ncnc.trainer", "TrainRequest"),
    "ModelConfig": ("ncnc.trainer", "ModelConfig"),
    "TrainConfig": ("ncnc.trainer", "TrainConfig"),
    "export": ("ncnc.exporter", "export_bundle"),
    "evaluate_bundle": ("ncnc.exporter", "evaluate_bundle"),
    "ExportConfig": ("ncnc.exporter", "ExportConfig"),
    "InputError": ("ncnc.core.errors", "InputError"),
}

__all__ = [
    "Bundle", "ExportConfig", "InputError", "ModelConfig", "Scorer", "TrainConfig",
    "TrainRequest", "candidates", "evaluate", "evaluate_bundle", "export", "load_bundle", "top_k",
    "train",
]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time __getattr__ imports on first use
    from ncnc.core.errors import InputError
    from ncnc.exporter import ExportConfig, evaluate_bundle
    from ncnc.exporter import export_bundle as export
    from ncnc.scorer import Bundle, Scorer, load_bundle, top_k
    from ncnc.scorer import write_candidates as candidates
    from ncnc.trainer import ModelConfig, TrainConfig, TrainRequest, evaluate, train


def __getattr__(name: str) -> Any:
    try:
        module, attribute = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'ncnc' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
