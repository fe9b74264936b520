"""A bf16 bundle's head: ``head.onnx`` read with the ``onnx`` package and evaluated with torch ops
in bfloat16.

onnxruntime's CPU provider has no bfloat16 MatMul or Gemm kernel (a bf16 model fails to load
with "NOT_IMPLEMENTED: Could not find an implementation for MatMul(13)", measured with
onnxruntime 1.32), while torch multiplies bf16 matrices with oneDNN's AVX-512 BF16 / AMX kernels
where the CPU has them, and with cuBLAS on CUDA. So the head's own graph and weights (the
bundle's file, never the trainer's model: the scorer imports no training code) run through a
small interpreter of exactly the op types our exported heads contain; any other op is refused
when the bundle is loaded.

Weights and every op's output are bfloat16, products accumulate in float32 inside oneDNN /
cuBLAS, logits leave in float32. :func:`ncnc.scorer.engine.load_head` uses this head only where
torch has native bf16 GEMMs (:func:`native_bf16`: CUDA, or a CPU with AVX-512 BF16 / AMX as oneDNN
reports it). On other CPUs (AVX2 only, like the machine this was built on: torch's bf16 GEMM is
an emulation there, this head ran 7.5x slower than onnxruntime's fp32 one,
benchmarks/results/precision_heads_cpu.json) a bf16 bundle's head runs in fp32 with onnxruntime
on the exactly widened bf16 tables; the manifest's ``parity.agreement.head`` says which head the
export measured.

Scores stay bit-identical across batch sizes on the CPU (tests/scorer/test_determinism.py): the
head runs in fixed blocks of :data:`HEAD_BLOCK` rows, the last one padded, so every row meets the
same kernels whatever batch it came in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ncnc.core.errors import first_line
from ncnc.scorer.bundle import BundleError, ScoringSpec

HEAD_BLOCK = 4096  # rows per head evaluation: the same kernel shapes for every batch


@dataclass(frozen=True)
class HeadNode:
    """One node of the head's graph: its op type, input and output value names, attributes."""

    op: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attributes: dict[str, Any]


def _gemm(node: HeadNode, a: Tensor, b: Tensor, c: Tensor | None = None) -> Tensor:
    attrs = node.attributes
    if attrs.get("transA", 0):
        a = a.t()
    alpha, beta = attrs.get("alpha", 1.0), attrs.get("beta", 1.0)
    if attrs.get("transB", 0) and alpha == 1.0:  # torch.nn.Linear's layout: oneDNN's fast path
        out = F.linear(a, b)
    else:
        out = alpha * (a @ (b.t() if attrs.get("transB", 0) else b))
    return out if c is None else out + beta * c


def _layer_norm(node: HeadNode, x: Tensor, scale: Tensor, bias: Tensor | None = None) -> Tensor:
    axis = node.attributes.get("axis", -1)
    if axis not in (-1, x.dim() - 1):
        raise NotImplementedError(f"LayerNormalization over axis {axis}")
    return F.layer_norm(x, x.shape[-1:], scale, bias, node.attributes.get("epsilon", 1e-5))


def _squeeze(node: HeadNode, x: Tensor, axes: Tensor | None = None) -> Tensor:
    dims = axes.tolist() if axes is not None else node.attributes.get("axes")
    if dims is None:
        return x.squeeze()
    return x.squeeze(tuple(int(d) for d in dims))


def _reshape(node: HeadNode, x: Tensor, shape: Tensor) -> Tensor:
    wanted = [int(d) for d in shape.tolist()]
    if node.attributes.get("allowzero", 0) == 0:  # 0 copies the input's dimension
        wanted = [x.shape[k] if d == 0 else d for k, d in enumerate(wanted)]
    return x.reshape(wanted)


OPS: dict[str, Callable[..., Tensor]] = {
    "Gemm": _gemm,
    "MatMul": lambda node, a, b: a @ b,
    "Add": lambda node, a, b: a + b,
    "Sub": lambda node, a, b: a - b,
    "Mul": lambda node, a, b: a * b,
    "Relu": lambda node, x: torch.relu(x),
    "Sigmoid": lambda node, x: torch.sigmoid(x),
    "Identity": lambda node, x: x,
    "LayerNormalization": _layer_norm,
    "Squeeze": _squeeze,
    "Reshape": _reshape,
}
"""The op types our exported heads contain (Linear, LayerNorm, ReLU, the ``beta`` product and
the final squeeze), each as a torch function of the node and its input values."""


class TorchHead:
    """``head.onnx`` evaluated by torch in bfloat16 arithmetic on ``device``, behind the
    :data:`ncnc.triton_kernels.pair_scoring.HeadFn` interface.

    Raises:
        BundleError: the file is not an ONNX model, holds an op outside :data:`OPS`, or its
            inputs and output do not fit ``spec`` (:func:`check_head_signature`).
    """

    def __init__(self, path: Path, spec: ScoringSpec, device: torch.device,
                 threads: int | None = None) -> None:
        import onnx
        from onnx import numpy_helper

        try:
            model = onnx.load(str(path))  # protobuf: nothing is unpickled
        except Exception as err:  # protobuf raises its own DecodeError
            raise BundleError(f"{path}: not an ONNX model ({first_line(err)})") from err
        graph = model.graph
        self.nodes = [_node(path, node) for node in graph.node]
        self.device, self.dtype = device, torch.bfloat16
        self.values: dict[str, Tensor] = {}
        for initializer in graph.initializer:
            array = torch.from_numpy(numpy_helper.to_array(initializer).copy())
            self.values[initializer.name] = (array.to(device, self.dtype)
                                             if array.is_floating_point()
                                             else array)  # shapes and axes stay integer, on host
        self.input_names = [i.name for i in graph.input if i.name not in self.values]
        self.output_name = graph.output[0].name if len(graph.output) == 1 else ""
        if threads is not None:
            torch.set_num_threads(threads)  # torch's pool is the process's: one per Ray actor
        check_head_signature(path, spec, self.input_names,
                             [(_dims(i), i.type.tensor_type.elem_type) for i in graph.input
                              if i.name not in self.values],
                             [_dims(o) for o in graph.output])
        try:
            self(torch.zeros(2, spec.hidden), torch.zeros(2, spec.hidden))
        except Exception as err:  # an op's attributes or shapes it cannot evaluate
            raise BundleError(f"{path}: the bf16 head fails on two pairs ({first_line(err)})"
                              ) from err

    def __call__(self, cn: Tensor | None, xij: Tensor) -> Tensor:
        """``cn`` ``[B, d]`` (None for GAE), ``xij`` ``[B, d]`` float32 -> ``[B]`` float32."""
        feeds = {"xij": xij} if cn is None else {"cn": cn, "xij": xij}
        rows = xij.size(0)
        blocks = []
        for start in range(0, rows, HEAD_BLOCK):
            block = {name: _padded(t[start:start + HEAD_BLOCK].to(self.device, self.dtype))
                     for name, t in feeds.items() if name in self.input_names}
            blocks.append(self._run(block)[: min(HEAD_BLOCK, rows - start)])
        if not blocks:
            return torch.zeros(0, dtype=torch.float32, device=xij.device)
        return torch.cat(blocks).float().to(xij.device)

    def _run(self, feeds: dict[str, Tensor]) -> Tensor:
        values = {**self.values, **feeds}
        for node in self.nodes:
            result = OPS[node.op](node, *(values[name] if name else None for name in node.inputs))
            values[node.outputs[0]] = result
        return values[self.output_name]


def native_bf16(device: torch.device) -> bool:
    """Whether torch multiplies bf16 matrices natively on ``device`` (CUDA; a CPU with AVX-512
    BF16 or AMX, as oneDNN reports it)."""
    return device.type == "cuda" or bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def _padded(block: Tensor) -> Tensor:
    """``block`` grown to :data:`HEAD_BLOCK` rows with zeros (a full block is returned as is)."""
    if block.size(0) == HEAD_BLOCK:
        return block
    pad = block.new_zeros(HEAD_BLOCK - block.size(0), *block.shape[1:])
    return torch.cat([block, pad])


def _node(path: Path, node: Any) -> HeadNode:
    from onnx import helper

    if node.op_type not in OPS or node.domain not in ("", "ai.onnx"):
        raise BundleError(f"{path}: the head holds op {node.domain or 'ai.onnx'}.{node.op_type} "
                          f"(node {node.name!r}), which a bf16 head cannot evaluate (it knows "
                          f"{', '.join(sorted(OPS))}); export with --precision fp32")
    if len(node.output) != 1:
        raise BundleError(f"{path}: head node {node.name!r} ({node.op_type}) has "
                          f"{len(node.output)} outputs; a bf16 head evaluates one per node")
    attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    return HeadNode(node.op_type, tuple(node.input), tuple(node.output), attributes)


def _dims(value: Any) -> list[int | str]:
    """An ONNX value's shape: integers for fixed dimensions, names for dynamic ones."""
    return [d.dim_param if d.dim_param or not d.HasField("dim_value") else d.dim_value
            for d in value.type.tensor_type.shape.dim]


def check_head_signature(path: Path, spec: ScoringSpec, input_names: list[str],
                         inputs: list[tuple[list[int | str], int]],
                         outputs: list[list[int | str]]) -> None:
    """The head takes ``cn`` and ``xij`` (GAE: ``xij``), each float ``[num_pairs, hidden]`` with a
    dynamic batch axis, and gives one ``[num_pairs]`` output.

    Raises:
        BundleError: naming ``path`` and what differs.
    """
    from onnx import TensorProto

    from ncnc.scorer.engine import head_inputs

    wanted = head_inputs(spec.model)
    if sorted(input_names) != sorted(wanted):
        raise BundleError(f"{path}: the head takes inputs {input_names}; a {spec.model} "
                          f"bundle's head takes {wanted}")
    for name, (shape, elem) in zip(input_names, inputs):
        if (elem != TensorProto.FLOAT or len(shape) != 2 or isinstance(shape[0], int)
                or shape[1] != spec.hidden):
            raise BundleError(f"{path}: head input {name} is {shape}; expected tensor(float) "
                              f"['num_pairs', {spec.hidden}] (spec.hidden)")
    if len(outputs) != 1 or len(outputs[0]) != 1:
        raise BundleError(f"{path}: the head's outputs are {outputs}; expected one "
                          "tensor(float) ['num_pairs']")
