"""Compile the Triton kernels for GPUs that are not there, as their launchers launch them, and read
what the compiler made of them.

Nothing here runs a kernel or needs a driver: Triton lowers a kernel to PTX and a cubin for any
``GPUTarget`` with its bundled ``ptxas``. What is compiled is discovered, not described:

* **launches**: each launcher of :mod:`ncnc.triton_kernels.common_neighbors_triton` runs on small CPU
  tensors of the chosen dtypes with its kernel launch replaced by a recorder
  (:func:`record_launch`), so the argument types are the ones the launcher really passes (the
  count pass hands its ``int64`` counts in as ``x``; the backward launchers widen half gradients
  to float32). Dtype choices that launch the same kernel are compiled once
  (:func:`distinct_dtype_choices`).
* **specialisation**: the recorded arguments go through Triton's own JIT binder for the target
  (:func:`compile_launch`), so pointer alignment and ``% 16`` integer attributes, which decide
  whether loads are vectorised, are those a launch with the same arguments gets on a GPU
  (16-byte aligned tensors, ``d = 256``).
* **configurations**: every config of the launch's autotuner that its own pruning keeps for the
  recorded arguments, and the fixed meta that ``NCNC_TRITON_AUTOTUNE=0`` launches
  (``_fixed_meta``). The interpreter meta is not compiled: it only ever runs in the interpreter.

Each compiled case yields a :class:`CompileResult`: registers, stack frame and local memory, the
spill traffic in the SASS (``STL`` / ``LDL``, and how much of it sits inside loops), shared memory
(static + dynamic) and the global memory instructions by bytes per instruction. The figures come
from the cubin and PTX themselves (``cuobjdump``, bundled with Triton), so they hold for
compilations served from Triton's cache as well. :func:`problems` names what must not ship.

Uses Triton 3.9's JIT internals (``create_function_from_signature``, ``JITFunction._pack_args``):
another Triton version may need this module adjusted, and then fails loudly, not silently.
"""

from __future__ import annotations

import itertools
import multiprocessing
import re
import subprocess
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from unittest import mock

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend
from triton.runtime.jit import create_function_from_signature

from ncnc.triton_kernels import common_neighbors_triton as kernels

# Shared memory one block may use (with the opt-in carve-out): sm_80 163 KiB, sm_90 227 KiB.
SHARED_LIMIT_BYTES = {80: 163 * 1024, 90: 227 * 1024}
ARCHS = (80, 90)
FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")
INDEX_DTYPES = ("int32", "int64")
# Feature width of the recorded launches: the model's default hidden size, and wide enough that
# the tile pruning keeps every BLOCK_D (it drops tiles wider than the next power of two of d).
RECORDED_D = 256


# --- launches ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Launch:
    """One kernel launch as a launcher makes it: the autotuned kernel, its arguments and meta."""

    kernel: triton.runtime.Autotuner
    args: tuple
    meta: dict


@contextmanager
def _recorder() -> Iterator[list[Launch]]:
    """Launchers record their launches instead of running them; CPU tensors pass the device check
    (as under the interpreter). No kernel runs, so outputs stay uninitialised."""
    launches: list[Launch] = []

    def record(kernel, grid, *args, **meta) -> None:
        launches.append(Launch(kernel, args, meta))

    with mock.patch.object(kernels, "_launch", record), mock.patch.object(kernels, "INTERPRET", True):
        yield launches


def _graph(dtypes: dict[str, str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """indptr, indices, pairs of a 4-node path graph; the values do not matter, the dtypes do."""
    indptr = torch.tensor([0, 1, 3, 5, 6])
    indices = torch.tensor([1, 0, 2, 1, 3, 2], dtype=getattr(torch, dtypes["indices"]))
    pairs = torch.tensor([[0, 2], [1, 3]], dtype=getattr(torch, dtypes["pairs"]))
    return indptr, indices, pairs


def _ragged(dtypes: dict[str, str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """offsets, members, weights of two segments over 4 nodes."""
    offsets = torch.tensor([0, 2, 3])
    members = torch.tensor([1, 3, 0], dtype=getattr(torch, dtypes["members"]))
    weights = torch.ones(3, dtype=getattr(torch, dtypes["weights"]))
    return offsets, members, weights


def _rows(dtypes: dict[str, str], role: str, d: int) -> torch.Tensor:
    return torch.zeros(4, d, dtype=getattr(torch, dtypes[role]))


def _split(dtypes: dict[str, str], d: int) -> None:
    indptr, indices, pairs = _graph(dtypes)
    # The split lays out its second launch from the counts of its first: with launches only
    # recorded, its count pass answers "no common neighbours" (the count pass is its own launcher).
    def no_commons(indptr: torch.Tensor, indices: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
        return torch.zeros(pairs.size(0), dtype=torch.int64)

    with mock.patch.object(kernels, "common_neighbor_count_triton", no_commons):
        kernels.neighbor_split_triton(indptr, indices, pairs, cap=1, seed=0)


@dataclass(frozen=True)
class Launcher:
    """A launcher, the dtype roles it accepts, and how to call it on small inputs."""

    name: str
    roles: dict[str, tuple[str, ...]]  # role -> dtypes the launcher accepts for it
    call: Callable[[dict[str, str], int], object]  # (dtypes, feature width d)

    def dtype_choices(self) -> list[dict[str, str]]:
        names = list(self.roles)
        return [dict(zip(names, combo)) for combo in itertools.product(*self.roles.values())]


_GRAPH_ROLES = {"indices": INDEX_DTYPES, "pairs": INDEX_DTYPES}
_RAGGED_ROLES = {"members": INDEX_DTYPES, "weights": FLOAT_DTYPES}

LAUNCHERS = {
    launcher.name: launcher
    for launcher in (
        Launcher(
            "cn_sum",
            {**_GRAPH_ROLES, "x": FLOAT_DTYPES},
            lambda t, d: kernels.common_neighbor_sum_triton(*_graph(t)[:2], _rows(t, "x", d), _graph(t)[2]),
        ),
        Launcher(
            "cn_scatter",
            {**_GRAPH_ROLES, "grad": FLOAT_DTYPES},
            lambda t, d: kernels.common_neighbor_sum_backward_triton(*_graph(t), _rows(t, "grad", d)[:2], 4),
        ),
        Launcher("cn_count", _GRAPH_ROLES, lambda t, d: kernels.common_neighbor_count_triton(*_graph(t))),
        Launcher("split_fill", _GRAPH_ROLES, _split),
        Launcher(
            "gather_sum",
            {**_RAGGED_ROLES, "x": FLOAT_DTYPES},
            lambda t, d: kernels.weighted_gather_sum_triton(*_ragged(t), _rows(t, "x", d)),
        ),
        Launcher(
            "gather_scatter",
            {**_RAGGED_ROLES, "grad": FLOAT_DTYPES},
            lambda t, d: kernels.weighted_gather_sum_backward_triton(*_ragged(t), _rows(t, "grad", d)[:2], 4),
        ),
    )
}


def record_launch(launcher: str, dtypes: dict[str, str], d: int = RECORDED_D) -> Launch:
    """The single kernel launch ``launcher`` makes for inputs of ``dtypes`` and ``d`` features."""
    with _recorder() as launches:
        LAUNCHERS[launcher].call(dtypes, d)
    if len(launches) != 1:
        raise RuntimeError(f"{launcher} made {len(launches)} launches, expected one")
    return launches[0]


_DEFAULT_STAGES = 3  # Triton's default num_stages (triton.Config and the CUDA backend's options)


def config_label(config: dict) -> str:
    """``K32-D128-w4-s3``: tile sizes, warps and pipeline stages of a configuration."""
    tiles = "-".join(f"{k[-1]}{config[k]}" for k in ("BLOCK_K", "BLOCK_D") if k in config)
    return f"{tiles}-w{config['num_warps']}-s{config.get('num_stages', _DEFAULT_STAGES)}"


def configs(launch: Launch) -> dict[str, dict]:
    """Label -> meta of every configuration the launch can run with: the autotuner's configs its
    own pruning keeps for the launch's arguments, and the fixed meta of ``NCNC_TRITON_AUTOTUNE=0``
    (which may equal one of them: the same compilation, listed once)."""
    kernel = launch.kernel
    named = dict(zip(kernel.arg_names, launch.args))
    keep = kernel.configs
    if kernel.early_config_prune:
        keep = kernel.early_config_prune(kernel.configs, named, **launch.meta)
    metas = [c.all_kwargs() for c in keep] + [kernels._fixed_meta(kernel, interpret=False)]
    return {config_label(m): m for m in metas}


# --- compiling ---------------------------------------------------------------------------------


def compile_launch(launch: Launch, config: dict, arch: int):
    """Triton's ``CompiledKernel`` for ``launch`` in ``config`` on ``sm_<arch>``, specialised by
    the JIT's own binder exactly as a launch with these arguments would be on that GPU."""
    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    fn = launch.kernel.fn
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    kwargs = {**launch.meta, **config}
    with warnings.catch_warnings():
        # Triton 3.9 warns once that its fp-fusion default will change; launches take the default.
        warnings.filterwarnings("ignore", message="TRITON_DEFAULT_FP_FUSION is unset")
        bound, specialization, options = binder(*launch.args, **kwargs)
        options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, specialization, options)
        return triton.compile(
            ASTSource(fn, signature, constexprs, attrs), target=target, options=options.__dict__
        )


_RES_USAGE = re.compile(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")


def cubin_resources(cubin: bytes) -> dict[str, int]:
    """Registers per thread, stack frame, static shared and local memory bytes of a one-kernel
    cubin, read by the ``cuobjdump`` bundled with Triton."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run(
            [triton.knobs.nvidia.cuobjdump.path, "-res-usage", f.name],
            check=True, capture_output=True, text=True,
        ).stdout
    found = _RES_USAGE.findall(text)
    if len(found) != 1:
        raise RuntimeError(f"expected one function in cuobjdump -res-usage, got:\n{text}")
    registers, stack, shared, local = map(int, found[0])
    return {"registers": registers, "stack_bytes": stack, "static_shared_bytes": shared, "local_bytes": local}


# ld.global.v4.b32, red.global.gpu.relaxed.add.f32, atom.relaxed.gpu.global.cas.b32, ...
_MEMORY_OP = re.compile(r"^\s*(?:@!?%p\d+\s+)?((?:ld|st|red|atom)(?:\.\w+)*?\.global[.\w]*)", re.MULTILINE)
_ELEMENT_BITS = re.compile(r"\.(?:bf|[bfsu])(8|16|32|64)(x2)?\b")


def global_memory_ops(ptx: str) -> Counter:
    """Global loads, stores, reductions and atomics of ``ptx``: instruction -> count."""
    return Counter(m.group(1) for m in _MEMORY_OP.finditer(ptx))


def bytes_per_op(instruction: str) -> int:
    """Bytes one thread moves with ``instruction``: vector width x element size
    (``ld.global.v4.b32`` 16, ``red.global.gpu.relaxed.add.noftz.f16x2`` 4, ``ld.global.b64`` 8)."""
    lanes = next((int(w) for w in ("8", "4", "2") if f".v{w}." in instruction), 1)
    bits = _ELEMENT_BITS.findall(instruction)
    if not bits:
        raise ValueError(f"no element type in {instruction!r}")
    size, packed = bits[-1]
    return lanes * int(size) // 8 * (2 if packed else 1)


def by_width(ops: Counter, kinds: tuple[str, ...]) -> dict[int, int]:
    """Bytes per instruction -> count, over the instructions of ``kinds`` (``ld``, ``st``, ...)."""
    out: Counter = Counter()
    for op, n in ops.items():
        if op.split(".")[0] in kinds:
            out[bytes_per_op(op)] += n
    return dict(sorted(out.items()))


@dataclass(frozen=True)
class CompileCase:
    """One compilation: a launcher at one dtype choice, in one configuration, for one target.
    Plain values only, so that cases travel to worker processes."""

    launcher: str
    dtypes: tuple[tuple[str, str], ...]
    config: str
    arch: int
    d: int = RECORDED_D

    @property
    def id(self) -> str:
        width = "" if self.d == RECORDED_D else f"-d{self.d}"
        return f"{self.launcher}-{'-'.join(v for _, v in self.dtypes)}-{self.config}{width}-sm{self.arch}"


@dataclass
class CompileResult:
    """What the compiler made of one case. Widths are bytes one thread moves per instruction."""

    case: CompileCase
    compile_s: float
    error: str | None = None
    registers: int = 0  # per thread
    stack_bytes: int = 0  # per-thread stack frame: where ptxas puts spilled registers
    local_bytes: int = 0
    spill_store_bytes: int = 0  # the frame's traffic in the SASS (STL / LDL), when there is a frame
    spill_load_bytes: int = 0
    spill_in_loop_bytes: int = 0  # of those, inside loops
    shared_bytes: int = 0  # per block, static + dynamic
    num_warps: int = 0
    num_stages: int = 0
    block: dict[str, int] = field(default_factory=dict)
    tile_bytes_per_thread: int = 0  # of the [BLOCK_K, BLOCK_D] feature tile, 0 without one
    loads: dict[int, int] = field(default_factory=dict)  # width -> count of ld.global
    atomics: dict[int, int] = field(default_factory=dict)  # width -> count of red/atom.global
    global_ops: dict[str, int] = field(default_factory=dict)  # instruction -> count

    def as_json(self) -> dict:
        out = asdict(self)
        case = out.pop("case")
        return {"id": self.case.id, **case, "dtypes": dict(self.case.dtypes), **out}


def _element_bytes(case: CompileCase) -> int:
    dtypes = dict(case.dtypes)
    role = next((r for r in ("x", "grad") if r in dtypes), None)
    return getattr(torch, dtypes[role]).itemsize if role else 0


_SASS_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?([A-Z][\w.]*)\s*([^;]*);")


def spill_traffic(sass: str) -> dict[str, int]:
    """Bytes per thread that the local stores / loads (``STL`` / ``LDL``: spills) of ``sass``
    move, in all and inside loops (between a backward branch and its target: paid per iteration)."""
    instructions = [(int(a, 16), op, args) for a, op, args in _SASS_LINE.findall(sass)]
    loops = []
    for address, op, args in instructions:
        target = re.findall(r"0x([0-9a-f]+)\s*$", args.strip())
        if op.startswith("BRA") and target and int(target[0], 16) <= address:
            loops.append((int(target[0], 16), address))
    out = {"store_bytes": 0, "load_bytes": 0, "in_loop_bytes": 0}
    for address, op, _ in instructions:
        kind = op.split(".")[0]
        if kind not in ("STL", "LDL"):
            continue
        width = next((int(w) for w in ("128", "64") if f".{w}" in op), 32) // 8
        out["store_bytes" if kind == "STL" else "load_bytes"] += width
        if any(start <= address <= end for start, end in loops):
            out["in_loop_bytes"] += width
    return out


def sass(cubin: bytes) -> str:
    """The SASS of a cubin, by the ``cuobjdump`` bundled with Triton."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run(
            [triton.knobs.nvidia.cuobjdump.path, "-sass", f.name], check=True, capture_output=True, text=True
        ).stdout


def compile_case(case: CompileCase) -> CompileResult:
    """Compile one case and read what the compiler made; a compile error is returned, not raised."""
    start = time.perf_counter()
    launch = record_launch(case.launcher, dict(case.dtypes), case.d)
    config = configs(launch)[case.config]
    try:
        compiled = compile_launch(launch, config, case.arch)
    except Exception as error:
        first_line = (str(error).strip().splitlines() or [""])[0]
        return CompileResult(case, time.perf_counter() - start, error=f"{type(error).__name__}: {first_line}")
    return read_compiled(case, config, compiled, time.perf_counter() - start)


def read_compiled(case: CompileCase, config: dict, compiled, seconds: float) -> CompileResult:
    """A :class:`CompileResult` from Triton's ``CompiledKernel`` of ``case`` in ``config``."""
    resources = cubin_resources(compiled.asm["cubin"])
    spills = {"store_bytes": 0, "load_bytes": 0, "in_loop_bytes": 0}
    if resources["stack_bytes"] or resources["local_bytes"]:
        spills = spill_traffic(sass(compiled.asm["cubin"]))
    ops = global_memory_ops(compiled.asm["ptx"])
    block = {k: v for k, v in config.items() if k.startswith("BLOCK")}
    tile = block.get("BLOCK_K", 0) * block.get("BLOCK_D", 0) * _element_bytes(case)
    return CompileResult(
        case,
        compile_s=seconds,
        registers=resources["registers"],
        stack_bytes=resources["stack_bytes"],
        local_bytes=resources["local_bytes"],
        spill_store_bytes=spills["store_bytes"],
        spill_load_bytes=spills["load_bytes"],
        spill_in_loop_bytes=spills["in_loop_bytes"],
        shared_bytes=resources["static_shared_bytes"] + (compiled.metadata.shared or 0),
        num_warps=compiled.metadata.num_warps,
        num_stages=compiled.metadata.num_stages,
        block=block,
        tile_bytes_per_thread=tile // (32 * compiled.metadata.num_warps),
        loads=by_width(ops, ("ld",)),
        atomics=by_width(ops, ("red", "atom")),
        global_ops=dict(ops),
    )


# ptxas sometimes parks one or two 32-bit values in a single 8-byte stack slot although registers
# are plentiful (<= 168 of 255 in every such case here): on sm_90 a rematerialisable value such
# as ``tid * 16`` around the loop, which the same PTX assembled without the
# ``--regAllocOptLevel=2`` that Triton 3.9 always passes does not do. One slot is an L1-resident
# word or two per thread, not register pressure; more than one slot, or a kernel at the register
# cap, is. Each parked slot is still listed (CompileResult.stack_bytes, benchmarks/ptx_report.py).
PARKED_SLOT_BYTES = 8
MAX_REGISTERS = 255


def problems(result: CompileResult) -> list[str]:
    """What must not ship: a compile error, register spills beyond one parked slot (or any at the
    register cap), shared memory beyond the target's limit per block."""
    if result.error:
        return [f"does not compile: {result.error}"]
    found = []
    spilled = result.stack_bytes or result.local_bytes
    if (
        result.stack_bytes > PARKED_SLOT_BYTES
        or result.local_bytes
        or (spilled and result.registers >= MAX_REGISTERS)
    ):
        found.append(
            f"spills: {result.stack_bytes} bytes stack frame, {result.local_bytes} bytes local memory, "
            f"{result.spill_store_bytes} bytes stored / {result.spill_load_bytes} loaded per thread "
            f"({result.spill_in_loop_bytes} inside loops), {result.registers} registers"
        )
    limit = SHARED_LIMIT_BYTES[result.case.arch]
    if result.shared_bytes > limit:
        found.append(f"shared memory {result.shared_bytes} bytes > {limit} on sm_{result.case.arch}")
    return found


def tile_load_bytes(case: CompileCase) -> int:
    """The widest load a forward kernel's feature tile can use: 16 bytes, or less when the
    feature width is a multiple of fewer elements (d = 100 in float16: 4 elements, 8 bytes)."""
    return min(16, kernels._row_align(case.d) * _element_bytes(case))


def tile_vectorised(result: CompileResult) -> bool | None:
    """Whether a forward kernel (``cn_sum``, ``gather_sum``) reads its feature tile with loads of
    :func:`tile_load_bytes` only: at least tile bytes per thread / that width of them. ``None``
    for the other kernels."""
    if (
        result.error
        or not result.tile_bytes_per_thread
        or result.case.launcher not in ("cn_sum", "gather_sum")
    ):
        return None
    width = tile_load_bytes(result.case)
    return result.loads.get(width, 0) >= result.tile_bytes_per_thread // width


# --- case sets ---------------------------------------------------------------------------------


def launched_dtypes(launcher: str, dtypes: dict[str, str]) -> dict[str, str]:
    """The dtypes the kernel receives for each role when ``launcher`` is called with ``dtypes``
    (roles are named after the kernel arguments they feed)."""
    launch = record_launch(launcher, dtypes)
    named = dict(zip(launch.kernel.arg_names, launch.args))
    return {role: str(named[role].dtype).removeprefix("torch.") for role in dtypes}


def distinct_dtype_choices(launcher: str) -> list[tuple[dict[str, str], list[dict[str, str]]]]:
    """``(launched dtypes, the dtype choices that launch them)`` for every distinct kernel the
    launcher launches: a backward launcher called with float16, bfloat16 or float32 gradients
    launches one float32 kernel, for example."""
    groups: dict[tuple, list[dict[str, str]]] = {}
    for dtypes in LAUNCHERS[launcher].dtype_choices():
        groups.setdefault(tuple(launched_dtypes(launcher, dtypes).items()), []).append(dtypes)
    return [(dict(key), same) for key, same in groups.items()]


def _case_configs(launcher: str, dtypes: dict[str, str]) -> list[str]:
    return list(configs(record_launch(launcher, dtypes)))


def _cases(
    launcher: str, picked: list[tuple[str, dict[str, str]]], archs: Sequence[int]
) -> list[CompileCase]:
    roles = LAUNCHERS[launcher].roles
    return [
        CompileCase(launcher, tuple((role, dtypes[role]) for role in roles), config, arch)
        for config, dtypes in picked
        for arch in archs
    ]


def all_cases(archs: Sequence[int] = ARCHS) -> list[CompileCase]:
    """Every launcher x every distinct dtype choice x every configuration x every target."""
    out = []
    for name in LAUNCHERS:
        for dtypes, _ in distinct_dtype_choices(name):
            out += _cases(name, [(config, dtypes) for config in _case_configs(name, dtypes)], archs)
    return out


def covering_cases(archs: Sequence[int] = ARCHS) -> list[CompileCase]:
    """Every configuration of every launcher with every dtype of its feature role (``x`` or
    ``grad``: its element type sizes the tiles, hence registers and shared memory) on every
    target. The other roles (index and weight dtypes: one narrow load each) rotate: the k-th
    feature dtype in configuration c takes the (k + c)-th of the distinct choices with that
    feature dtype, and any distinct choice the rotation misses is added in the first
    configuration, so every kernel a launcher can launch is compiled at least once per target.
    Launchers without a feature role get the full product. :func:`all_cases` is the full product
    everywhere (for the report)."""
    out = []
    for name, launcher in LAUNCHERS.items():
        choices = [dtypes for dtypes, _ in distinct_dtype_choices(name)]
        config_names = _case_configs(name, choices[0])
        lead = next((r for r in ("x", "grad") if r in launcher.roles), None)
        if lead is None:
            out += _cases(name, [(config, dtypes) for config in config_names for dtypes in choices], archs)
            continue
        by_lead: dict[str, list[dict[str, str]]] = {}
        for dtypes in choices:
            by_lead.setdefault(dtypes[lead], []).append(dtypes)
        picked = [
            (config, same[(k + c) % len(same)])
            for c, config in enumerate(config_names)
            for k, same in enumerate(by_lead.values())
        ]
        picked += [(config_names[0], d) for d in choices if all(d != p for _, p in picked)]
        out += _cases(name, picked, archs)
    return out


def compile_cases(cases: Sequence[CompileCase], workers: int = 2) -> list[CompileResult]:
    """Compile ``cases`` in a pool of ``workers`` processes (spawned: no forked torch state);
    results in the order of ``cases``."""
    if workers <= 1:
        return [compile_case(c) for c in cases]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        return list(pool.map(compile_case, cases, chunksize=4))
