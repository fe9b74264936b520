"""The common-neighbour step as PyTorch custom operators in the ``ncnc`` namespace.

Each operation is one ``torch.library.triton_op``: its body launches the Triton kernels (CUDA
tensors), ``register_kernel("cpu")`` adds the numba twin, ``register_fake`` gives shapes for
``torch.export`` / ``torch.compile`` (the op stays one opaque node in an exported graph) and
``register_autograd`` makes the sums differentiable with respect to ``x``. The PyTorch dispatcher
picks the implementation from the device of the inputs; nothing here branches on devices.

==============================================  =================================================
operator                                        returns
==============================================  =================================================
``ncnc::common_neighbor_sum(indptr, indices,    ``(sums [B, d], counts [B] int64)``
x, pairs)``
``ncnc::neighbor_split(indptr, indices, pairs,  nine tensors: ``(offsets, members, weights)`` of
cap, seed)``                                    the common part, ``N(i) \\ N(j)``, ``N(j) \\ N(i)``
``ncnc::weighted_gather_sum(offsets, members,   ``[B, d]``
weights, x)``
``ncnc::common_neighbor_sum_backward``,         ``grad_x [num_rows, d]`` (used by autograd)
``ncnc::weighted_gather_sum_backward``
==============================================  =================================================

The operators check only what the kernels need to run safely on their device (dtypes, shapes,
devices); the data checks (sorted rows, id ranges) live in :mod:`ncnc.triton_kernels.ops`. Import this
module (``import ncnc.triton_kernels`` does) before ``torch.export.load`` of a program that uses them.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.library import triton_op

from ncnc.triton_kernels import common_neighbors_triton as gpu

try:
    from ncnc.triton_kernels import common_neighbors_cpu as cpu
except ImportError as missing:  # numba is a dependency, but a CUDA-only setup may lack it
    # The except block unbinds `missing` when it ends: keep its text for the closure below.
    _MISSING_REASON = str(missing)

    class _CPUUnavailable:
        def __getattr__(self, name: str):
            def unavailable(*args, **kwargs):
                raise RuntimeError(f"the CPU common-neighbour kernels need numba: "
                                   f"{_MISSING_REASON}")

            return unavailable

    cpu = _CPUUnavailable()

# (offsets, members, weights) of the common part, N(i) \ N(j) and N(j) \ N(i).
_Split = tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _scatter_op(name: str, triton_impl, cpu_impl):
    """A backward operator ``(a, b, c, grad, num_rows) -> grad_x [num_rows, d]``.

    ``a, b, c`` are the forward's index inputs: ``(indptr, indices, pairs)`` for the
    common-neighbour sum, ``(offsets, members, weights)`` for the gather.
    """

    def launch(a: Tensor, b: Tensor, c: Tensor, grad: Tensor, num_rows: int) -> Tensor:
        return triton_impl(a, b, c, grad, num_rows)

    op = triton_op(name, mutates_args=())(launch)
    op.register_kernel("cpu")(cpu_impl)
    op.register_fake(lambda a, b, c, grad, num_rows: grad.new_empty(num_rows, grad.size(1)))
    return op


def _differentiable_in_x(op, backward_name: str, x_at: int) -> None:
    """Autograd for a four-input op whose only differentiable input is ``x = inputs[x_at]``.

    The three other inputs, in order, are saved and handed to ``ncnc::<backward_name>(a, b, c,
    grad, num_rows)``; the gradient comes back in ``x``'s dtype.
    """

    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(*(t for k, t in enumerate(inputs) if k != x_at))
        ctx.x_rows, ctx.x_dtype = inputs[x_at].size(0), inputs[x_at].dtype

    def backward(ctx, grad: Tensor, *_unused_grads: Tensor):
        grads: list[Tensor | None] = [None] * 4
        if ctx.needs_input_grad[x_at]:
            a, b, c = ctx.saved_tensors
            scatter = getattr(torch.ops.ncnc, backward_name)
            grads[x_at] = scatter(a, b, c, grad.contiguous(), ctx.x_rows).to(ctx.x_dtype)
        return tuple(grads)

    op.register_autograd(backward, setup_context=setup_context)


# --- common_neighbor_sum ---------------------------------------------------------------------


@triton_op("ncnc::common_neighbor_sum", mutates_args=())
def common_neighbor_sum_op(
    indptr: Tensor, indices: Tensor, x: Tensor, pairs: Tensor
) -> tuple[Tensor, Tensor]:
    return gpu.common_neighbor_sum_triton(indptr, indices, x, pairs)


common_neighbor_sum_op.register_kernel("cpu")(cpu.common_neighbor_sum_cpu)


@common_neighbor_sum_op.register_fake
def _(indptr: Tensor, indices: Tensor, x: Tensor, pairs: Tensor) -> tuple[Tensor, Tensor]:
    sums = x.new_empty(pairs.size(0), x.size(1), dtype=_acc_dtype(x.dtype))
    return sums, pairs.new_empty(pairs.size(0), dtype=torch.int64)


common_neighbor_sum_backward_op = _scatter_op(
    "ncnc::common_neighbor_sum_backward",
    gpu.common_neighbor_sum_backward_triton,
    cpu.common_neighbor_sum_backward_cpu,
)


_differentiable_in_x(common_neighbor_sum_op, "common_neighbor_sum_backward", x_at=2)


# --- neighbor_split --------------------------------------------------------------------------


@triton_op("ncnc::neighbor_split", mutates_args=())
def neighbor_split_op(indptr: Tensor, indices: Tensor, pairs: Tensor, cap: int, seed: int) -> _Split:
    return gpu.neighbor_split_triton(indptr, indices, pairs, cap, seed)


neighbor_split_op.register_kernel("cpu")(cpu.neighbor_split_cpu)


@neighbor_split_op.register_fake
def _(indptr: Tensor, indices: Tensor, pairs: Tensor, cap: int, seed: int) -> _Split:
    ctx = torch.library.get_ctx()
    out = []
    for _ in range(3):  # common, only_i, only_j: sizes known only once the graph is read
        size = ctx.new_dynamic_size()
        out += [
            pairs.new_empty(pairs.size(0) + 1, dtype=torch.int64),
            pairs.new_empty(size, dtype=torch.int64),
            pairs.new_empty(size, dtype=torch.float32),
        ]
    return tuple(out)


# --- weighted_gather_sum ---------------------------------------------------------------------


@triton_op("ncnc::weighted_gather_sum", mutates_args=())
def weighted_gather_sum_op(offsets: Tensor, members: Tensor, weights: Tensor, x: Tensor) -> Tensor:
    return gpu.weighted_gather_sum_triton(offsets, members, weights, x)


weighted_gather_sum_op.register_kernel("cpu")(cpu.weighted_gather_sum_cpu)


@weighted_gather_sum_op.register_fake
def _(offsets: Tensor, members: Tensor, weights: Tensor, x: Tensor) -> Tensor:
    return x.new_empty(offsets.size(0) - 1, x.size(1), dtype=_acc_dtype(x.dtype))


weighted_gather_sum_backward_op = _scatter_op(
    "ncnc::weighted_gather_sum_backward",
    gpu.weighted_gather_sum_backward_triton,
    cpu.weighted_gather_sum_backward_cpu,
)
_differentiable_in_x(weighted_gather_sum_op, "weighted_gather_sum_backward", x_at=3)
