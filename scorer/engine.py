"""The batch engine: score node-index pairs with a loaded bundle.

Common neighbours run through :mod:`ncnc.triton_kernels` (Triton on CUDA, the CPU twin
otherwise), the head through onnxruntime with IOBinding (the CUDA provider when onnxruntime-gpu is
installed and the device is CUDA, the CPU provider otherwise), or, for a bf16 bundle, through
torch in bfloat16 (:mod:`ncnc.scorer.torch_head`).
``ncnc score``, the exporter's validation and the Ray adapter all call :class:`BatchScorer`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ncnc.core.device import resolve_device
from ncnc.core.errors import first_line
from ncnc.core.hashing import KeyTable
from ncnc.scorer.bundle import Bundle, BundleError, ScoringSpec
from ncnc.scorer.explain import Reasons, explain_pairs, refuse_unexplainable
from ncnc.scorer.torch_head import TorchHead, native_bf16
from ncnc.triton_kernels.pair_scoring import pair_logits

DEFAULT_MEMO_MIB = 256.0
log = logging.getLogger("ncnc.scorer")


class OnnxHead:
    """The bundle's ``head.onnx`` behind the :data:`ncnc.triton_kernels.pair_scoring.HeadFn`
    interface, run with onnxruntime's IOBinding on the torch tensors themselves.

    Inputs are bound by their data pointers and the logits are written into a torch tensor
    allocated here, so no numpy copy is made on the CPU; on CUDA (with onnxruntime-gpu, whose
    CUDA provider is then used) the head reads and writes device memory, after torch's stream
    has finished producing the inputs. Without a CUDA provider a CUDA scorer binds host copies
    (one round trip per call), which is what it did before IOBinding.

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
        on_gpu = device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers()
        if on_gpu:
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index or 0}))
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
        outputs = self.session.get_outputs()
        self.output_name = outputs[0].name if outputs else ""  # check_head refuses none
        self.device = device
        # Where the head's tensors live: the scorer's CUDA device, or the host.
        self.bound = device if on_gpu else torch.device("cpu")
        check_head(self, path, spec)

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


HeadEngine = OnnxHead | TorchHead


HEAD_KINDS = ("onnxruntime-fp32", "torch-bf16", "onnxruntime-int8")


def head_kind(spec: ScoringSpec, device: torch.device) -> str:
    """Which head runs ``spec.precision`` on ``device`` (one of :data:`HEAD_KINDS`): onnxruntime
    for fp32 and int8 (a statically quantised ``head.onnx``); for bf16, torch in bfloat16 where
    its GEMMs are native (:func:`ncnc.scorer.torch_head.native_bf16`; onnxruntime's CPU provider
    has no bf16 MatMul), else onnxruntime in fp32 on the widened tables."""
    if spec.precision == "int8":
        return "onnxruntime-int8"
    if spec.precision == "bf16" and native_bf16(device):
        return "torch-bf16"
    return "onnxruntime-fp32"


def load_head(path: Path, spec: ScoringSpec, device: torch.device,
              threads: int | None = None) -> HeadEngine:
    """The head of :func:`head_kind`, checked against ``spec``."""
    if head_kind(spec, device) == "torch-bf16":
        return TorchHead(path, spec, device, threads=threads)
    return OnnxHead(path, spec, device, threads)


def head_inputs(model: str) -> list[str]:
    """The inputs of a bundle's head: ``cn`` and ``xij``, GAE's ``xij`` alone."""
    return ["xij"] if model == "gae" else ["cn", "xij"]


def check_head(head: OnnxHead, path: Path, spec: ScoringSpec) -> None:
    """Refuse a head that the spec's pairs cannot run through: inputs named by
    :func:`head_inputs`, each float ``[num_pairs, hidden]`` with a dynamic batch axis, and one
    float output ``[num_pairs]``, checked on the session and by a two-pair probe (whose output
    buffer is bound as ``[2]``: a head that gives another shape fails there).

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
        head(probe, probe)
    except Exception as err:  # onnxruntime's own types
        raise BundleError(f"{path}: the head fails on two pairs ({first_line(err)})") from err


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
        self.head = load_head(bundle.head_path, bundle.spec, self.device, threads)

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
