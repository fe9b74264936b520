"""The batch engine: score node-index pairs with a loaded bundle.

Common neighbours run through :mod:`ncnc.triton_kernels` (Triton on CUDA, the CPU twin
otherwise), the head through onnxruntime with IOBinding (the CUDA provider when onnxruntime-gpu is
installed and the device is CUDA, the CPU provider otherwise).
``ncnc score``, the exporter's validation and the Ray adapter all call :class:`BatchScorer`.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ncnc.core.device import resolve_device
from ncnc.scorer.bundle import Bundle
from ncnc.scorer.explain import Reasons, explain_pairs, refuse_unexplainable
from ncnc.triton_kernels.pair_scoring import pair_logits


class OnnxHead:
    """The bundle's ``head.onnx`` behind the :data:`ncnc.triton_kernels.pair_scoring.HeadFn`
    interface, run with onnxruntime's IOBinding on the torch tensors themselves.

    Inputs are bound by their data pointers and the logits are written into a torch tensor
    allocated here, so no numpy copy is made on the CPU; on CUDA (with onnxruntime-gpu, whose
    CUDA provider is then used) the head reads and writes device memory, after torch's stream
    has finished producing the inputs. Without a CUDA provider a CUDA scorer binds host copies
    (one round trip per call), which is what it did before IOBinding.
    """

    def __init__(self, path, device: torch.device, threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        providers = ["CPUExecutionProvider"]
        on_gpu = device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers()
        if on_gpu:
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index or 0}))
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_name = self.session.get_outputs()[0].name
        self.device = device
        # Where the head's tensors live: the scorer's CUDA device, or the host.
        self.bound = device if on_gpu else torch.device("cpu")

    def _bind(self, binding, name: str, tensor: Tensor, *, output: bool = False) -> None:
        kind = self.bound.type
        index = self.bound.index or 0
        if output:
            binding.bind_output(name, kind, index, np.float32, tuple(tensor.shape),
                                tensor.data_ptr())
        else:
            binding.bind_input(name, kind, index, np.float32, tuple(tensor.shape),
                               tensor.data_ptr())

    def __call__(self, cn: Tensor | None, xij: Tensor) -> Tensor:
        feeds = {"xij": xij}
        if "cn" in self.input_names:
            feeds["cn"] = cn
        # Contiguous float32 on the bound device; kept referenced until the run returns.
        feeds = {name: t.detach().to(self.bound, torch.float32).contiguous()
                 for name, t in feeds.items()}
        logits = torch.empty(xij.size(0), dtype=torch.float32, device=self.bound)
        binding = self.session.io_binding()
        for name, tensor in feeds.items():
            self._bind(binding, name, tensor)
        self._bind(binding, self.output_name, logits, output=True)
        if self.bound.type == "cuda":
            torch.cuda.current_stream(self.bound).synchronize()  # the inputs are written
        self.session.run_with_iobinding(binding)
        return logits.to(self.device)


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

    @torch.no_grad()
    def explain_pairs(self, pairs: Tensor, k: int) -> Reasons:
        """The ``k`` best reasons (common and completed neighbours by contribution) of each of
        ``[B, 2]`` node-index pairs, on the CPU; see :mod:`ncnc.scorer.explain`.

        Raises:
            InputError: the bundle's model is GAE (no common-neighbour term).
        """
        refuse_unexplainable(self.bundle.spec.model)
        return explain_pairs(self.bundle.spec.rule, self.head, self.graph, self.levels,
                             pairs.to(self.device, torch.int64), k)
