"""The batch engine: score node-index pairs with a loaded bundle.

Common neighbours run through :mod:`ncnc.triton_kernels` (Triton on CUDA, the CPU twin
otherwise), the head through onnxruntime with IOBinding (the CUDA provider when onnxruntime-gpu is
installed and the device is CUDA, the CPU provider otherwise).
``ncnc score``, the exporter's validation and the Ray adapter all call :class:`BatchScorer`.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import Tensor

from ncnc.core.device import resolve_device
from ncnc.core.hashing import KeyTable
from ncnc.scorer.bundle import Bundle
from ncnc.triton_kernels.pair_scoring import pair_logits

DEFAULT_MEMO_MIB = 256.0


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


MEMO_SLOT_BYTES = 16  # a key table slot: uint64 key and int64 position
MEMO_VALUE_BYTES = 4  # a float32 logit


class InnerLogitMemo:
    """NCNC's completion-pair logits kept across batches, in at most ``mib`` MiB.

    Completion pairs repeat across the batches of a job (on Cora, about three in four of 2M random
    target pairs' completion pairs were seen in an earlier batch): the memo serves those exactly
    (a pair's logit does not depend on its batch), so scores are the same bits with it or without
    it. When full it starts over (the pairs of recent batches are the likeliest repeats,
    especially for candidate files grouped by source).
    """

    def __init__(self, mib: float) -> None:
        budget = int(mib * (1 << 20))
        # The largest table of power-of-two slots (load at most 2/3) with its values in budget.
        slots = 16
        while (2 * slots) * MEMO_SLOT_BYTES + (2 * slots * 2 // 3) * MEMO_VALUE_BYTES <= budget:
            slots *= 2
        self.table = KeyTable(slots * 2 // 3)
        self.values = np.empty(self.table.capacity, dtype=np.float32)
        self.lookups = self.hits = 0

    @property
    def stats(self) -> dict[str, float | int]:
        return {"memo_lookups": self.lookups, "memo_hits": self.hits,
                "memo_hit_rate": round(self.hits / self.lookups, 4) if self.lookups else None}

    def cached(self, keys: Tensor) -> tuple[Tensor, Tensor]:
        position = self.table.find(keys.cpu().numpy().view(np.uint64))
        hit = position >= 0
        logits = np.zeros(position.size, dtype=np.float32)
        logits[hit] = self.values[position[hit]]
        self.lookups += position.size
        self.hits += int(hit.sum())
        return (torch.from_numpy(logits).to(keys.device), torch.from_numpy(hit).to(keys.device))

    def store(self, keys: Tensor, logits: Tensor) -> None:
        keys = keys.cpu().numpy().view(np.uint64)[: self.table.capacity]
        if self.table.size + keys.size > self.table.capacity:
            self.table.clear()
        position = self.table.insert(keys)
        self.values[position] = logits.detach().cpu().numpy()[: keys.size]


class BatchScorer:
    """The batch engine: ``[B, 2]`` int64 node-index pairs -> float32 logits on the CPU.

    Node indices, not original ids: :func:`ncnc.scorer.job.score_table` maps ids through
    ``bundle.id_map`` and calls :meth:`score_logits`. On the CPU a pair's logit is bit-identical
    whatever batch it is scored in. ``device`` is ``"auto"`` (CUDA when available), ``"cpu"`` or
    ``"cuda"`` (the one place the device rule runs for a scorer); ``threads``: onnxruntime's
    intra-op threads (None: one per core), e.g. one per Ray actor when several share a machine;
    ``memo_mib``: the NCNC completion-pair memo's size (:class:`InnerLogitMemo`; 0: none).
    """

    def __init__(self, bundle: Bundle, device: str = "auto", threads: int | None = None,
                 memo_mib: float = DEFAULT_MEMO_MIB) -> None:
        self.bundle = bundle
        self.device = resolve_device(device)
        self.graph, self.levels = bundle.arrays_for(self.device)
        self.memo = (InnerLogitMemo(memo_mib) if memo_mib > 0 and bundle.spec.model == "ncnc"
                     else None)
        self.engine_seconds = 0.0  # wall time inside score_logits: the device's share of a job
        self.head = OnnxHead(bundle.head_path, self.device, threads)

    @property
    def stats(self) -> dict[str, float | int | None]:
        """What the engine reports beside the job's counts: the seconds spent scoring (the rest of
        a job's time is the host's: reading, ids, writing) and the memo's lookups and hits."""
        memo = self.memo.stats if self.memo is not None else {}
        return {"engine_seconds": round(self.engine_seconds, 3), **memo}

    @torch.no_grad()
    def score_logits(self, pairs: Tensor) -> Tensor:
        """``[B, 2]`` node indices in ``[0, num_nodes)`` -> ``[B]`` float32 logits on the CPU
        (``sigmoid(logit)`` is the link probability); ``B = 0`` gives an empty tensor."""
        if pairs.numel() == 0:
            return torch.zeros(0, dtype=torch.float32)
        started = time.perf_counter()
        logits = pair_logits(self.bundle.spec.rule, self.head, self.graph, self.levels,
                             pairs.to(self.device, torch.int64), cache=self.memo)
        logits = logits.float().cpu()  # waits for the device: the time below includes its work
        self.engine_seconds += time.perf_counter() - started
        return logits
