"""Reduced-precision bundles: the int8 head's quantisation and the agreement an export measures.

A bf16 or int8 bundle is checked against the fp32 scores of the same checkpoint, computed in the
export with the fp32 tables and head (no second bundle is written), on the checkpoint's
validation pairs (positives and negatives) plus the two-hop candidates of their sources
(:func:`agreement_pairs`). :func:`agreement` measures max and mean abs logit difference, Spearman
correlation, the overlap of the global top 100, the mean per-source top-20 overlap, and the change
of hits@100 and AUC on the validation pairs; below the thresholds the export fails with
:class:`AgreementError` and leaves no bundle.

int8 heads are quantised statically (:func:`quantize_head`): onnxruntime's QDQ format with scales
calibrated on the head inputs of the validation pairs and of other sources' two-hop candidates
than those the agreement is measured on. Dynamic quantisation (``quantize_dynamic``)
computes each activation's scale from the batch it is in, so a pair's score would depend on the
other pairs of its batch (benchmarks/bench_precision.py measures both): static scales keep every
score bit-identical across batches.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from torch import Tensor

from ncnc.core.errors import InputError
from ncnc.core.ids import IdMap
from ncnc.scorer.candidates import two_hop_candidates
from ncnc.scorer.engine import BatchScorer
from ncnc.trainer.checkpoint import Checkpoint
from ncnc.trainer.metrics import hits_at_k, roc_auc
from ncnc.triton_kernels import CSRGraph
from ncnc.triton_kernels.pair_scoring import HeadFn, pair_logits


class AgreementError(InputError):
    """A reduced-precision bundle ranks too differently from fp32 (exit 2): export it in fp32,
    or loosen the thresholds knowingly."""


@dataclass(frozen=True)
class Thresholds:
    """The agreement a reduced-precision export must reach (``ncnc export`` flags)."""

    min_top100_overlap: float = 0.99
    min_per_source_top20_overlap: float = 0.97
    max_abs_delta_hits100: float = 0.005


@dataclass(frozen=True)
class AgreementPairs:
    """What the agreement is measured on: ``pairs`` ``[P, 2]`` node indices, the first
    ``positives`` validation positives, then ``negatives`` validation negatives, then two-hop
    candidates whose source is ``pairs[:, 0]``."""

    pairs: Tensor
    positives: int
    negatives: int
    sources: int

    @property
    def validation(self) -> int:
        return self.positives + self.negatives


def _bundle_pairs(ck: Checkpoint, id_map: IdMap, pairs: Tensor) -> Tensor:
    """Checkpoint-index pairs ``[P, 2]`` as bundle indices, those with a node the bundle lacks
    (removed from today's snapshot) dropped."""
    ids = [ck.id_map.ids.gather(pairs[:, k].numpy()) for k in range(2)]
    found = [id_map.lookup(column, what="validation pairs") for column in ids]
    keep = found[0][1] & found[1][1]
    return torch.stack([found[0][0], found[1][0]], 1)[keep]


def agreement_pairs(ck: Checkpoint, id_map: IdMap, graph: CSRGraph, *, sources: int,
                    per_source: int, seed: int) -> AgreementPairs:
    """The checkpoint's validation positives and negatives, and for up to ``sources`` of the
    positives' sources (drawn with ``seed``) their ``per_source`` two-hop candidates with the most
    common neighbours (:func:`ncnc.scorer.candidates.two_hop_candidates`)."""
    positives = _bundle_pairs(ck, id_map, ck.split.valid)
    negatives = _bundle_pairs(ck, id_map, ck.split.valid_neg)
    chosen = torch.unique(positives[:, 0])
    generator = torch.Generator().manual_seed(seed)
    chosen = chosen[torch.randperm(chosen.numel(), generator=generator)[:sources]].sort().values
    chunks = list(two_hop_candidates(graph, chosen, max_per_node=per_source))
    candidates = torch.cat([torch.zeros(0, 2, dtype=torch.int64)]
                           + [torch.stack([c.src, c.dst], 1) for c in chunks])
    return AgreementPairs(torch.cat([positives, negatives, candidates]), positives.size(0),
                          negatives.size(0), int(chosen.numel()))


def score(scorer: BatchScorer, pairs: Tensor, batch_size: int = 4096) -> Tensor:
    """``[P]`` float32 logits of ``pairs`` ``[P, 2]``."""
    if pairs.size(0) == 0:
        return torch.zeros(0)
    return torch.cat([scorer.score_logits(p) for p in pairs.split(batch_size)])


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` best scores, ties broken by the smaller index."""
    order = np.lexsort((np.arange(scores.size), -scores.astype(np.float64)))
    return order[:k]


def _per_source_top(sources: np.ndarray, scores: np.ndarray, k: int) -> np.ndarray:
    """Whether each row is among the ``k`` best of its source (ties: the smaller row)."""
    order = np.lexsort((np.arange(scores.size), -scores.astype(np.float64), sources))
    ranked = sources[order]
    starts = np.searchsorted(ranked, ranked, side="left")
    rank = np.arange(ranked.size) - starts
    inside = np.zeros(scores.size, dtype=bool)
    inside[order] = rank < k
    return inside


def per_source_overlap(sources: np.ndarray, reference: np.ndarray, scores: np.ndarray,
                       k: int = 20) -> tuple[float | None, int]:
    """The mean over sources with more than ``k`` rows of ``|top k of scores ∩ top k of
    reference| / k``, and how many sources that is (None, 0 when none has)."""
    counts = np.bincount(np.unique(sources, return_inverse=True)[1])
    if sources.size == 0 or not (counts > k).any():
        return None, 0
    both = _per_source_top(sources, reference, k) & _per_source_top(sources, scores, k)
    _, inverse = np.unique(sources, return_inverse=True)
    shared = np.bincount(inverse, weights=both, minlength=counts.size)
    ranked = counts > k
    return float((shared[ranked] / k).mean()), int(ranked.sum())


def agreement(reference: Tensor, scores: Tensor, where: AgreementPairs) -> dict[str, Any]:
    """The agreement of ``scores`` with the fp32 ``reference`` (both ``[P]`` logits of
    ``where.pairs``), as the manifest's ``parity.agreement`` records it (thresholds aside)."""
    ref, got = reference.double().numpy(), scores.double().numpy()
    diff = np.abs(ref - got)
    k = min(100, ref.size)
    top100 = len(set(_top(ref, k)) & set(_top(got, k))) / k if k else 1.0
    candidates = slice(where.validation, None)
    per_source, _ = per_source_overlap(where.pairs[candidates, 0].numpy(), ref[candidates],
                                       got[candidates])
    pos, neg = slice(0, where.positives), slice(where.positives, where.validation)
    hits = [hits_at_k(torch.from_numpy(s[pos]), torch.from_numpy(s[neg]), 100) for s in (ref, got)]
    auc = [roc_auc(torch.from_numpy(s[pos]), torch.from_numpy(s[neg])) for s in (ref, got)]
    spearman = pl.DataFrame({"a": ref, "b": got}).select(
        pl.corr("a", "b", method="spearman")).item() if ref.size > 1 else 1.0
    return {
        "pairs": int(ref.size),
        "validation_pairs": where.validation,
        "candidate_sources": where.sources,
        "max_abs_logit_diff": float(diff.max()) if diff.size else 0.0,
        "mean_abs_logit_diff": float(diff.mean()) if diff.size else 0.0,
        "spearman": 1.0 if spearman is None or np.isnan(spearman) else float(spearman),
        "top100_overlap": top100,
        "per_source_top20_overlap": per_source,
        "hits100_fp32": _finite(hits[0]),
        "delta_hits100": _finite(hits[1]) - _finite(hits[0]),
        "auc_fp32": _finite(auc[0], 0.5),
        "delta_auc": _finite(auc[1], 0.5) - _finite(auc[0], 0.5),
    }


def _finite(value: float, default: float = 0.0) -> float:
    """A metric of an empty validation set (NaN) as ``default``: the schema wants finite numbers."""
    return default if np.isnan(value) else float(value)


def check_agreement(figures: dict[str, Any], thresholds: Thresholds, precision: str) -> None:
    """Raise :class:`AgreementError` naming every threshold ``figures`` miss."""
    misses = []
    if figures["top100_overlap"] < thresholds.min_top100_overlap:
        misses.append(f"top-100 overlap {figures['top100_overlap']:.4f} < "
                      f"{thresholds.min_top100_overlap:g} (--min-top100-overlap)")
    per_source = figures["per_source_top20_overlap"]
    if per_source is not None and per_source < thresholds.min_per_source_top20_overlap:
        misses.append(f"per-source top-20 overlap {per_source:.4f} < "
                      f"{thresholds.min_per_source_top20_overlap:g} (--min-top20-overlap)")
    if abs(figures["delta_hits100"]) > thresholds.max_abs_delta_hits100:
        misses.append(f"|delta hits@100| {abs(figures['delta_hits100']):.4f} > "
                      f"{thresholds.max_abs_delta_hits100:g} (--max-hits-delta)")
    if misses:
        raise AgreementError(f"--precision {precision}: the bundle agrees too little with fp32 "
                             f"on {figures['pairs']} validation and candidate pairs: "
                             f"{'; '.join(misses)}; no bundle written")


class RecordingHead:
    """A head that keeps (a bounded sample of) the inputs it is called with: the calibration data
    of the int8 head (the inputs of the validation pairs and of their completion pairs)."""

    def __init__(self, head: HeadFn, max_rows: int) -> None:
        self.head, self.max_rows = head, max_rows
        self.inputs: list[dict[str, np.ndarray]] = []
        self.rows = 0

    def __call__(self, cn: Tensor | None, xij: Tensor) -> Tensor:
        if self.rows < self.max_rows:
            take = min(xij.size(0), self.max_rows - self.rows)
            feed = {"xij": xij[:take].float().numpy()}
            if cn is not None:
                feed["cn"] = cn[:take].float().numpy()
            self.inputs.append(feed)
            self.rows += take
        return self.head(cn, xij)


class _Feeds:
    """onnxruntime's CalibrationDataReader protocol over recorded head inputs."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._feeds: Iterator[dict[str, np.ndarray]] = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)

    def rewind(self) -> None:  # onnxruntime calls it between passes on some versions
        pass


def calibration_inputs(scorer: BatchScorer, pairs: Tensor, max_rows: int, seed: int,
                       batch_size: int = 4096) -> list[dict[str, np.ndarray]]:
    """Head inputs of ``pairs`` ``[P, 2]`` (shuffled with ``seed``: every kind of pair in the
    sample) and their completion pairs, at most ``max_rows``, from the fp32 ``scorer``'s head."""
    pairs = pairs[torch.randperm(pairs.size(0), generator=torch.Generator().manual_seed(seed))]
    recorder = RecordingHead(scorer.head, max_rows)
    with torch.no_grad():
        for block in pairs.split(batch_size):
            pair_logits(scorer.bundle.spec.rule, recorder, scorer.graph, scorer.levels, block)
            if recorder.rows >= max_rows:
                break
    return recorder.inputs


def _output_layers(head: Path) -> list[str]:
    """Names of the head's Gemm nodes with one output column (the logit layer): kept in float,
    where an int8 rounding would move every logit by the same step."""
    import onnx

    model = onnx.load(str(head))
    shapes = {init.name: list(init.dims) for init in model.graph.initializer}
    return [node.name for node in model.graph.node
            if node.op_type == "Gemm" and 1 in shapes.get(node.input[1], [])]


def quantize_head(fp32_head: Path, out: Path, feeds: list[dict[str, np.ndarray]]) -> None:
    """Write ``out``: ``fp32_head``'s matrix products statically quantised to int8 (QDQ,
    per-channel int8 weights, uint8 inputs with MinMax scales over ``feeds``, float outputs);
    layer norms, activations and the one-column logit layer stay float."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if not feeds:
        raise InputError("--precision int8: the checkpoint has no validation pairs to calibrate "
                         "the int8 head on")
    quantize_static(str(fp32_head), str(out), _Feeds(feeds), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                    op_types_to_quantize=["Gemm", "MatMul"],
                    nodes_to_exclude=_output_layers(fp32_head),
                    # Products leave in float (as a dynamic quantisation's do): requantising each
                    # layer's output to uint8 tripled the logit error (0.055 mean abs vs 0.022).
                    extra_options={"OpTypesToExcludeOutputQuantization": ["Gemm", "MatMul"]})
