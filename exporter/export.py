"""Checkpoint -> bundle: run the encoder once, export the head, validate, write atomically.

Validation follows huggingface/optimum's ONNX exporter and goes further: before the manifest is
written, >= 10,000 pairs (half of them with common neighbours) are scored through the bundle's
ONNX path (the real batch engine) and its ``torch.export`` program, at batch sizes other than the
traced one, and compared with the eager model. The measured max abs differences and the tolerance
go into the manifest; above the tolerance the export fails and leaves no bundle.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ncnc.core.errors import InputError
from ncnc.core.files import Publication, refuse_outputs_over_inputs, refuse_replacing_foreign_folder
from ncnc.core.ids import IdMap
from ncnc.exporter.precision import (
    Thresholds,
    agreement,
    agreement_pairs,
    calibration_inputs,
    check_agreement,
    quantize_head,
)
from ncnc.exporter.precision import score as score_pairs
from ncnc.scorer.bundle import (
    HEAD_FILE,
    PROGRAM_FILE,
    Bundle,
    ScoringSpec,
    is_bundle,
    write_arrays,
    write_manifest,
)
from ncnc.scorer.engine import BatchScorer, head_kind
from ncnc.scorer.manifest import PRECISIONS
from ncnc.scorer.signing import check_signing_key, sign_bundle
from ncnc.trainer.checkpoint import Checkpoint, library_versions, load_checkpoint
from ncnc.trainer.data import load_edge_list
from ncnc.trainer.inductive import (
    DEFAULT_NEW_NODE_RULE,
    NewNodeRule,
    SnapshotInputs,
    check_features_fit,
    check_rule,
    snapshot_inputs,
)
from ncnc.trainer.model import PairPredictor
from ncnc.triton_kernels import CSRGraph, build_csr
from ncnc.triton_kernels.pair_scoring import pair_logits

log = logging.getLogger("ncnc.exporter")


class ExportValidationError(RuntimeError):
    """The exported bundle does not reproduce the eager model within tolerance."""


@dataclass(frozen=True)
class ExportConfig:
    opset: int = 20
    validation_pairs: int = 10_000
    atol: float = 1e-4
    onnx_batch_size: int = 997  # validation batch sizes differ from the traced example (64)
    program_batch_size: int = 1_531
    trace_batch_size: int = 64
    seed: int = 0
    # NCNC's cap on each completion set (the paper's tstdeg; -1: none), recorded as spec.cap and
    # used by the validation too. None: the checkpoint's test_cap.
    cap: int | None = None
    # Reduced precision (docs/bundle-format.md): "fp32", "bf16" (bf16 tables and head) or "int8"
    # (bf16 tables, statically quantised int8 head), accepted only when it agrees with fp32.
    precision: str = "fp32"
    min_top100_overlap: float = Thresholds.min_top100_overlap
    min_per_source_top20_overlap: float = Thresholds.min_per_source_top20_overlap
    max_abs_delta_hits100: float = Thresholds.max_abs_delta_hits100
    agreement_sources: int = 200  # validation sources whose two-hop candidates are compared
    agreement_candidates: int = 100  # candidates per source (most common neighbours first)
    calibration_rows: int = 20_000  # head inputs the int8 scales are calibrated on

    @property
    def thresholds(self) -> Thresholds:
        return Thresholds(self.min_top100_overlap, self.min_per_source_top20_overlap,
                          self.max_abs_delta_hits100)

    def check(self) -> None:
        """Refuse a cap or a precision this ncnc cannot write (before any work)."""
        check_cap(self.cap)
        if self.precision not in PRECISIONS:
            raise InputError(f"--precision {self.precision!r}: must be one of "
                             f"{', '.join(PRECISIONS)}")


class HeadModule(nn.Module):
    """``(cn, xij) -> logits``; GAE's head takes ``xij`` only."""

    def __init__(self, predictor: PairPredictor) -> None:
        super().__init__()
        self.predictor = predictor

    def forward(self, cn: Tensor, xij: Tensor) -> Tensor:
        return self.predictor.head(cn, xij)


class GaeHeadModule(HeadModule):
    def forward(self, xij: Tensor) -> Tensor:  # type: ignore[override]
        return self.predictor.head(xij, xij)


class PairProgram(nn.Module):
    """The whole pair scorer, for ``torch.export``: ``(indptr, indices, *levels, pairs)``."""

    def __init__(self, spec: ScoringSpec, predictor: PairPredictor) -> None:
        super().__init__()
        self.spec = spec
        self.predictor = predictor

    def forward(self, indptr: Tensor, indices: Tensor, pairs: Tensor, *levels: Tensor) -> Tensor:
        return pair_logits(self.spec.rule, self.predictor.head, CSRGraph(indptr, indices),
                           list(levels), pairs)


def export_bundle(
    checkpoint: Path,
    out: Path,
    edges: Path | None = None,
    *,
    features: Path | None = None,
    nodes: Path | None = None,
    new_nodes: NewNodeRule = DEFAULT_NEW_NODE_RULE,
    config: ExportConfig = ExportConfig(),
    sign_key: Path | str | None = None,
) -> dict[str, Any]:
    """Write a validated bundle directory at ``out`` (replacing an earlier one only on success).

    Runs the encoder once over the graph to tabulate the node levels, exports the pair head to
    ONNX and the whole pair scorer to ``torch.export``, and scores ``config.validation_pairs``
    pairs through both, comparing them with the eager model, before the manifest is written.
    No retraining happens.

    Args:
        checkpoint: a directory written by :func:`ncnc.trainer.api.train` (a :class:`~pathlib.Path`).
        out: the bundle directory (a :class:`~pathlib.Path`); built under a temporary name beside
            it and moved into place at the end.
        edges: today's graph snapshot (Parquet ``src``, ``dst``, ids of the checkpoint's kind),
            instead of the checkpoint's training + validation edges. The snapshot defines the
            bundle's graph and id map: checkpoint nodes absent from it are gone, nodes new to the
            checkpoint are embedded (see ``new_nodes``).
        features: today's node features (Parquet ``node`` plus the training's feature columns),
            with ``edges``: a row for every node of the snapshot; nodes listed here only join the
            graph without edges. Without it a featured model keeps the checkpoint's features for
            known nodes (and refuses new ones).
        nodes: with ``edges``: a Parquet ``node`` column of today's nodes, those without edges
            included (they join the graph without edges: the way a featureless model's bundle
            holds a node that has no edge yet).
        new_nodes: how a node new to the checkpoint is embedded: featured models always embed
            it from its features and edges; featureless models give it the ``"mean"`` of its
            known neighbours' learned rows (iterated outwards; default) or a ``"zero"`` row, see
            :mod:`ncnc.trainer.inductive`. ``"error"`` refuses new nodes.
        config: ONNX opset, validation pair count, tolerance, batch sizes; the completion cap
            the bundle scores with (``cap``: -1 none, N draws at most N members of each
            completion set; default the checkpoint's ``test_cap``); the precision (``"fp32"``,
            ``"bf16"``: bf16 tables and head, ``"int8"``: bf16 tables and a statically quantised
            head) and the agreement with fp32 a reduced one must reach
            (:mod:`ncnc.exporter.precision`; recorded as the manifest's ``parity.agreement``).
        sign_key: a PEM elliptic-curve private key (P-256, P-384 or P-521, no password): sign
            the bundle (``model.sig``, :mod:`ncnc.scorer.signing`) so that a reader can refuse
            one it did not come from (``load_bundle(..., verify_key=public key)``). Needs the
            ``[sign]`` extra. The key is checked before any work.

    Returns:
        The manifest written to ``out/manifest.json`` (docs/bundle-format.md); its ``snapshot``
        section counts known, new and removed nodes and names the rule that embedded new ones.

    Raises:
        InputError: a bad checkpoint, edges or features file (a snapshot node without a feature
            row, ids of the other kind, features of the wrong width), new nodes the model cannot
            embed, ``out`` exists and is not a bundle, or ``sign_key`` is unreadable or
            unsupported, or ``config.cap`` is 0 or below -1.
        ExportValidationError: the ONNX or ``torch.export`` logits differ from the eager model's
            by more than ``config.atol``; no bundle is left at ``out`` then.
        AgreementError: (an InputError) a bf16 or int8 bundle agrees with the fp32 scores less
            than ``config``'s thresholds; no bundle is left at ``out`` then.
    """
    started = time.perf_counter()
    out, checkpoint = Path(out), Path(checkpoint)
    check_rule(new_nodes)
    config.check()
    if (features is not None or nodes is not None) and edges is None:
        raise InputError("--features and --nodes go with --edges: today's snapshot is its edges, "
                         "its nodes and their features")
    inputs = [Path(p) for p in (edges, features, nodes, sign_key) if p is not None]
    refuse_outputs_over_inputs([out], inputs, [checkpoint])
    refuse_replacing_foreign_folder(out, "bundle", is_bundle)
    if sign_key is not None:
        check_signing_key(sign_key)
    with Publication() as publication:
        staging = publication.directory(out)  # locks out first: a second export is refused at once
        ck = load_checkpoint(checkpoint, "cpu")
        graph, id_map, snapshot = _inference_graph(ck, edges, features, nodes, new_nodes)
        spec = _spec(ck, len(id_map), config.cap, config.precision)
        predictor = ck.model.predictor.eval()
        # The eager model validates the bundle with the cap the bundle will score with.
        predictor.cfg = replace(predictor.cfg, test_cap=spec.cap)
        with torch.no_grad():
            h = ck.model.encoder(snapshot.inputs, graph)
            levels = [h]
            for _ in range(spec.num_levels - 1):
                levels.append(predictor.transform(levels[-1]))
        write_arrays(staging, graph, levels, id_map, spec.table_dtype)
        _export_onnx(predictor, spec, staging / HEAD_FILE, config)
        _export_program(predictor, spec, graph, levels, staging / PROGRAM_FILE, config)
        fp32 = replace(spec, precision="fp32")
        parity = _validate(id_map, predictor, fp32, graph, levels, h, staging, config)
        parity["agreement"] = (None if spec.precision == "fp32" else
                               _reduce_precision(ck, id_map, spec, graph, levels, staging, config))
        manifest = write_manifest(staging, spec, {
            "exported_from": str(checkpoint),
            "graph_source": str(edges) if edges else "checkpoint (training + validation edges)",
            "num_edges": graph.num_entries // 2,
            "snapshot": {**snapshot.report, "features_source": _features_source(ck, features)},
            "opset": config.opset,
            "parity": parity,
            "versions": {**library_versions(), **_runtime_versions()},
            "export_seconds": round(time.perf_counter() - started, 2),
        }, signed=sign_key is not None)
        if sign_key is not None:
            sign_bundle(staging, sign_key)
        publication.publish()
    return manifest


def _inference_graph(ck: Checkpoint, edges: Path | None, features: Path | None,
                     nodes: Path | None, new_nodes: NewNodeRule
                     ) -> tuple[CSRGraph, IdMap, SnapshotInputs]:
    """The bundle's graph, id map and encoder input: the checkpoint's training + validation
    edges over its own nodes, or today's snapshot (its nodes embedded by
    :func:`ncnc.trainer.inductive.snapshot_inputs`)."""
    if edges is None:
        known = torch.cat([ck.split.train, ck.split.valid])
        graph = build_csr(known, len(ck.id_map))
        snapshot = snapshot_inputs(ck, ck.id_map, graph, None, new_nodes,
                                   source="the checkpoint's graph")
        return graph, ck.id_map, snapshot
    if features is not None:  # before reading it: its rows do not matter to such a model
        check_features_fit(ck, features, f"features file {features}")
    today = load_edge_list(edges, features, nodes)
    graph = build_csr(today.edges, today.num_nodes)
    snapshot = snapshot_inputs(ck, today.id_map, graph, today.features, new_nodes,
                               source=f"edges file {edges}")
    return graph, today.id_map, snapshot


def _features_source(ck: Checkpoint, features: Path | None) -> str | None:
    if ck.features is None:
        return None
    return str(features) if features is not None else "checkpoint"


def check_cap(cap: int | None) -> None:
    """Refuse a completion cap other than -1 (none), a positive count or None (the
    checkpoint's)."""
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int)
                            or not (cap == -1 or 1 <= cap < 1 << 31)):
        raise InputError(f"--cap {cap!r}: the completion cap is -1 (no cap) or a positive number "
                         "of members drawn from each completion set, e.g. 16")


def _spec(ck: Checkpoint, num_nodes: int, cap: int | None, precision: str) -> ScoringSpec:
    m = ck.config.model
    return ScoringSpec(
        model=m.model, depth=m.depth if m.model == "ncnc" else 0, hidden=m.hidden,
        num_nodes=num_nodes, probscale=m.probscale, proboffset=m.proboffset, pt=m.pt,
        alpha=m.alpha, cap=m.test_cap if cap is None else cap, cap_seed=m.cap_seed,
        precision=precision,
    )


def _reduce_precision(ck: Checkpoint, id_map: IdMap, spec: ScoringSpec, graph: CSRGraph,
                      levels: list[Tensor], staging: Path, config: ExportConfig
                      ) -> dict[str, Any]:
    """Make the staged bundle's head ``spec.precision``'s (int8: quantised in place) and measure
    its agreement with the fp32 scores of the same tables and head, on the checkpoint's
    validation pairs and their sources' two-hop candidates (:mod:`ncnc.exporter.precision`).

    Raises:
        AgreementError: below ``config.thresholds``.
    """
    where = agreement_pairs(ck, id_map, graph, sources=config.agreement_sources,
                            per_source=config.agreement_candidates, seed=config.seed)
    fp32 = BatchScorer(Bundle.in_memory(staging, replace(spec, precision="fp32"), graph, levels,
                                        id_map), device="cpu", memo_mib=0)
    reference = score_pairs(fp32, where.pairs)
    if spec.precision == "int8":
        calibration = agreement_pairs(ck, id_map, graph, sources=config.agreement_sources,
                                      per_source=config.agreement_candidates, seed=config.seed + 1)
        feeds = calibration_inputs(fp32, calibration.pairs, config.calibration_rows, config.seed)
        fp32_head = staging / f"fp32.{HEAD_FILE}"
        (staging / HEAD_FILE).rename(fp32_head)
        quantize_head(fp32_head, staging / HEAD_FILE, feeds)
        fp32_head.unlink()
    del fp32
    reduced = [t.to(spec.table_dtype) for t in levels]
    scorer = BatchScorer(Bundle.in_memory(staging, spec, graph, reduced, id_map), device="cpu",
                         memo_mib=0)
    figures = {"head": head_kind(spec, scorer.device),
               **agreement(reference, score_pairs(scorer, where.pairs), where)}
    log.info("%s agreement: %s", spec.precision, figures)
    check_agreement(figures, config.thresholds, spec.precision)
    return {**figures, "thresholds": asdict(config.thresholds)}


def _export_onnx(predictor: PairPredictor, spec: ScoringSpec, path: Path,
                 config: ExportConfig) -> None:
    batch = torch.export.Dim("num_pairs", min=1)
    # Two distinct example tensors: passing one tensor twice makes the tracer alias the inputs.
    cn, xij = torch.randn(2, config.trace_batch_size, spec.hidden)
    if spec.model == "gae":
        module, args, names = GaeHeadModule(predictor), (xij,), ["xij"]
        dynamic = {"xij": {0: batch}}
    else:
        module, args, names = HeadModule(predictor), (cn, xij), ["cn", "xij"]
        dynamic = {"cn": {0: batch}, "xij": {0: batch}}
    program = torch.onnx.export(
        module.eval(), args, dynamo=True, opset_version=config.opset, input_names=names,
        output_names=["logit"], dynamic_shapes=dynamic, verbose=False,
    )
    program.save(str(path))


def _export_program(predictor: PairPredictor, spec: ScoringSpec, graph: CSRGraph,
                    levels: list[Tensor], path: Path, config: ExportConfig) -> None:
    module = PairProgram(spec, predictor).eval()
    # torch.export saves its example inputs in the program: trace on a small sub-graph so the
    # file holds weights only, not a copy of the node tables.
    graph, levels = _example_subgraph(graph, levels)
    pairs = _validation_pairs(graph, config.trace_batch_size, config.seed + 1)
    dims = {"indptr": {0: torch.export.Dim("nodes_plus_one", min=2)},
            "indices": {0: torch.export.Dim("entries", min=2)},
            "pairs": {0: torch.export.Dim("num_pairs", min=1)},
            "levels": tuple({0: torch.export.Dim(f"nodes{k}", min=2)} for k in range(len(levels)))}
    exported = torch.export.export(module, (graph.indptr, graph.indices, pairs, *levels),
                                   dynamic_shapes=dims, strict=False)
    torch.export.save(exported, str(path))


def _example_subgraph(graph: CSRGraph, levels: list[Tensor],
                      nodes: int = 64) -> tuple[CSRGraph, list[Tensor]]:
    """A hub and its first neighbours, relabelled 0..k-1: small, and never without edges."""
    hub = int(torch.argmax(graph.degree()))
    neighbours = graph.indices[graph.indptr[hub]:graph.indptr[hub + 1]].long()
    keep = torch.cat([torch.tensor([hub]), neighbours[: nodes - 1]])
    relabel = torch.full((graph.num_nodes,), -1, dtype=torch.long)
    relabel[keep] = torch.arange(keep.numel())
    entries = relabel[graph.edge_index().t()]
    inside = (entries >= 0).all(1)
    return build_csr(entries[inside], keep.numel()), [t[keep].clone() for t in levels]


def _validation_pairs(graph: CSRGraph, count: int, seed: int) -> Tensor:
    """Half random pairs, half pairs with at least one common neighbour (two neighbours of u)."""
    gen = torch.Generator().manual_seed(seed)
    n = graph.num_nodes
    random_pairs = torch.randint(0, n, (count - count // 2, 2), generator=gen)
    degree = graph.degree()
    hubs = torch.nonzero(degree >= 2).flatten()
    if hubs.numel() == 0:
        return torch.randint(0, n, (count, 2), generator=gen)
    u = hubs[torch.randint(0, hubs.numel(), (count // 2,), generator=gen)]
    start, deg = graph.indptr[u], degree[u]
    a = graph.indices[start + (torch.rand(u.numel(), generator=gen) * deg).long()]
    b = graph.indices[start + (torch.rand(u.numel(), generator=gen) * deg).long()]
    return torch.cat([random_pairs, torch.stack([a, b], 1).long()])


def _validate(id_map: IdMap, predictor: PairPredictor, spec: ScoringSpec, graph: CSRGraph,
              levels: list[Tensor], h: Tensor, staging: Path,
              config: ExportConfig) -> dict[str, Any]:
    pairs = _validation_pairs(graph, config.validation_pairs, config.seed)
    with torch.no_grad():
        eager = torch.cat([predictor(h, graph, p) for p in pairs.split(4096)])
    bundle = Bundle.in_memory(staging, spec, graph, levels, id_map)
    scorer = BatchScorer(bundle, device="cpu")
    onnx_logits = torch.cat([scorer.score_logits(p) for p in pairs.split(config.onnx_batch_size)])
    program = torch.export.load(str(staging / PROGRAM_FILE)).module()
    with torch.no_grad():
        program_logits = torch.cat([
            program(graph.indptr, graph.indices, p, *levels)
            for p in pairs.split(config.program_batch_size)
        ])
    with_cn = int((_common_counts(graph, pairs) > 0).sum())
    parity = {
        "pairs": int(pairs.size(0)),
        "pairs_with_common_neighbors": with_cn,
        "onnx_max_abs_diff": float((onnx_logits - eager).abs().max()),
        "torch_export_max_abs_diff": float((program_logits - eager).abs().max()),
        "atol": config.atol,
        "batch_sizes": {"onnx": config.onnx_batch_size, "torch_export": config.program_batch_size,
                        "traced": config.trace_batch_size},
    }
    failures = [f"{name} max abs diff {parity[key]:.3g} > {config.atol:g}"
                for name, key in (("ONNX", "onnx_max_abs_diff"),
                                  ("torch.export", "torch_export_max_abs_diff"))
                if not parity[key] <= config.atol]
    if failures:
        raise ExportValidationError("export validation failed: " + "; ".join(failures))
    log.info("parity: %s", parity)
    return parity


def _common_counts(graph: CSRGraph, pairs: Tensor) -> Tensor:
    from ncnc.triton_kernels import common_neighbor_sum

    _, counts = common_neighbor_sum(graph.indptr, graph.indices,
                                    torch.zeros(graph.num_nodes, 1), pairs)
    return counts


def _runtime_versions() -> dict[str, str]:
    import onnxruntime

    return {"onnxruntime": onnxruntime.__version__}


