"""The runtime: the bundle format, the batch engine, Parquet streaming, ranking, candidates.

It never imports training code (``make test`` enforces it with import-linter), so a deployment
image needs this package, ncnc.triton_kernels and onnxruntime, not PyG.
"""

from ncnc.scorer.api import Scorer, top_k
from ncnc.scorer.bundle import Bundle, BundleError, ScoringSpec, load_bundle
from ncnc.scorer.candidates import write_candidates

__all__ = ["Bundle", "BundleError", "Scorer", "ScoringSpec", "load_bundle", "top_k",
           "write_candidates"]
