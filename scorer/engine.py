"""The batch engine: score node-index pairs with a loaded bundle.

Common neighbours run through :mod:`triton_kernels` (Triton on CUDA, the CPU twin otherwise), the
head through onnxruntime (CUDA provider when present and the device is CUDA, CPU otherwise).
``ncnc score``, the exporter's validation and the Ray adapter all call :class:`BatchScorer`.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ncnc.core.device import resolve_device
from ncnc.scorer.bundle import Bundle
from ncnc.triton_kernels.pair_scoring import pair_logits


class OnnxHead:
    """The bundle's ``head.onnx`` behind the :data:`ncnc.triton_kernels.pair_scoring.HeadFn` interface."""

    def __init__(self, path, device: torch.device, threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.device = device

    def __call__(self, cn: Tensor | None, xij: Tensor) -> Tensor:
        feeds = {"xij": _numpy(xij)}
        if "cn" in self.input_names:
            feeds["cn"] = _numpy(cn)
        (logits,) = self.session.run(None, feeds)
        return torch.from_numpy(logits).to(self.device)


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
        self.head = OnnxHead(bundle.head_path, self.device, threads)

    @torch.no_grad()
    def score_logits(self, pairs: Tensor) -> Tensor:
        """``[B, 2]`` node indices in ``[0, num_nodes)`` -> ``[B]`` float32 logits on the CPU
        (``sigmoid(logit)`` is the link probability); ``B = 0`` gives an empty tensor."""
        if pairs.numel() == 0:
            return torch.zeros(0, dtype=torch.float32)
        logits = pair_logits(self.bundle.spec.rule, self.head, self.graph, self.levels,
                             pairs.to(self.device, torch.int64))
        return logits.float().cpu()
