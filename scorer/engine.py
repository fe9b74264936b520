"""The batch engine: score node-index pairs with a loaded bundle.

Common neighbours run through :mod:`triton_kernels` (Triton on CUDA, the CPU twin otherwise), the
head through onnxruntime (CUDA provider when present and the device is CUDA, CPU otherwise).
``ncnc score``, the exporter's validation and the Ray adapter all call :class:`BatchScorer`.
"""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ncnc.core.device import resolve_device
from ncnc.scorer.bundle import Bundle, BundleError, ScoringSpec
from ncnc.scorer.manifest import first_line
from ncnc.triton_kernels.pair_scoring import pair_logits

log = logging.getLogger("ncnc.scorer")


class OnnxHead:
    """The bundle's ``head.onnx`` behind the :data:`ncnc.triton_kernels.pair_scoring.HeadFn` interface.

    The session is checked against the bundle's spec before it is used (:func:`check_head`).
    """

    def __init__(self, path: Path, spec: ScoringSpec, device: torch.device,
                 threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: a head's warnings would break our one line
        if threads is not None:
            options.intra_op_num_threads = threads
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        printed = io.StringIO()  # onnxruntime prints provider fallbacks on stdout: our JSON's
        try:
            with contextlib.redirect_stdout(printed):
                self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as err:  # onnxruntime raises its own types for a damaged model
            raise BundleError(f"{path}: onnxruntime cannot load the head ({first_line(err)})"
                              ) from err
        if printed.getvalue().strip():
            log.warning("onnxruntime: %s", " ".join(printed.getvalue().split()))
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.device = device
        check_head(self, path, spec)

    def __call__(self, cn: Tensor | None, xij: Tensor) -> Tensor:
        feeds = {"xij": _numpy(xij)}
        if "cn" in self.input_names:
            feeds["cn"] = _numpy(cn)
        (logits,) = self.session.run(None, feeds)
        return torch.from_numpy(logits).to(self.device)


def head_inputs(model: str) -> list[str]:
    """The inputs of a bundle's head: ``cn`` and ``xij``, GAE's ``xij`` alone."""
    return ["xij"] if model == "gae" else ["cn", "xij"]


def check_head(head: OnnxHead, path: Path, spec: ScoringSpec) -> None:
    """Refuse a head that the spec's pairs cannot run through: inputs named by
    :func:`head_inputs`, each float ``[num_pairs, hidden]`` with a dynamic batch axis, and one
    float output ``[num_pairs]``, checked on the session and by a two-pair probe.

    Raises:
        BundleError: naming ``path`` and what differs.
    """
    wanted = head_inputs(spec.model)
    inputs, outputs = head.session.get_inputs(), head.session.get_outputs()
    if sorted(head.input_names) != sorted(wanted):
        raise BundleError(f"{path}: the head takes inputs {head.input_names}; a {spec.model} "
                          f"bundle's head takes {wanted}")
    for node in inputs:
        shape = list(node.shape)
        if (node.type != "tensor(float)" or len(shape) != 2 or isinstance(shape[0], int)
                or shape[1] != spec.hidden):
            raise BundleError(f"{path}: head input {node.name} is {node.type} {shape}; expected "
                              f"tensor(float) ['num_pairs', {spec.hidden}] (spec.hidden)")
    if len(outputs) != 1 or outputs[0].type != "tensor(float)" or len(outputs[0].shape) != 1:
        found = [f"{o.name} {o.type} {list(o.shape)}" for o in outputs]
        raise BundleError(f"{path}: the head's outputs are {found}; expected one "
                          "tensor(float) ['num_pairs']")
    probe = torch.zeros(2, spec.hidden)
    try:
        logits = head(probe, probe)
    except Exception as err:  # onnxruntime's own types
        raise BundleError(f"{path}: the head fails on two pairs ({first_line(err)})") from err
    if tuple(logits.shape) != (2,) or logits.dtype != torch.float32:
        raise BundleError(f"{path}: the head gives {logits.dtype} {list(logits.shape)} for two "
                          "pairs; expected float32 [2]")



def _numpy(t: Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float32).contiguous().numpy()


class BatchScorer:
    """The batch engine: ``[B, 2]`` int64 node-index pairs -> float32 logits on the CPU.

    Node indices, not original ids: :func:`ncnc.scorer.job.score_table` maps ids through
    ``bundle.id_map`` and calls :meth:`score_logits`. On the CPU a pair's logit is bit-identical
    whatever batch it is scored in. ``device`` is ``"auto"`` (CUDA when available), ``"cpu"`` or
    ``"cuda"`` (the one place the device rule runs for a scorer); ``threads``: onnxruntime's
    intra-op threads (None: one per core), e.g. one per Ray actor when several share a machine.
    """

    def __init__(self, bundle: Bundle, device: str = "auto", threads: int | None = None) -> None:
        self.bundle = bundle
        self.device = resolve_device(device)
        self.graph, self.levels = bundle.arrays_for(self.device)
        self.head = OnnxHead(bundle.head_path, bundle.spec, self.device, threads)

    @torch.no_grad()
    def score_logits(self, pairs: Tensor) -> Tensor:
        """``[B, 2]`` node indices in ``[0, num_nodes)`` -> ``[B]`` float32 logits on the CPU
        (``sigmoid(logit)`` is the link probability); ``B = 0`` gives an empty tensor."""
        if pairs.numel() == 0:
            return torch.zeros(0, dtype=torch.float32)
        logits = pair_logits(self.bundle.spec.rule, self.head, self.graph, self.levels,
                             pairs.to(self.device, torch.int64))
        return logits.float().cpu()
