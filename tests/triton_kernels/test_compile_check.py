"""The Triton kernels compiled for sm_80 and sm_90 without a GPU, as their launchers launch them
(:mod:`ncnc.triton_kernels.compile_check`): every autotune and fixed configuration, every dtype a
launcher accepts, failing on compile errors, spills and shared memory beyond the target.

The interpreter tests run Python semantics; only these catch what the compiler does with the
kernels. The first test compiles the whole case set (184 compilations) in a pool of one worker per
core, at most 8; the others read its results. Measured on 2 cores with Triton's cache cold: 92 s
of CPU in all (so about 50 s wall when the cores are idle; 273 s wall with other jobs holding the
load at 5-11); with the cache warm, 21 s of CPU.
"""

from __future__ import annotations

import os

import pytest
import torch

from ncnc.triton_kernels import compile_check as cc

pytestmark = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") == "1", reason="the interpreter replaces the compiled kernels"
)

CASES = cc.covering_cases()
FORWARD_TILES = [c for c in CASES if c.launcher in ("cn_sum", "gather_sum")]


@pytest.fixture(scope="module")
def compiled() -> dict[str, cc.CompileResult]:
    workers = max(1, min(len(os.sched_getaffinity(0)), 8))
    return {r.case.id: r for r in cc.compile_cases(CASES, workers=workers)}


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_kernel_compiles_without_spills_or_too_much_shared_memory(compiled, case):
    result = compiled[case.id]
    assert not cc.problems(result), f"{case.id}: {'; '.join(cc.problems(result))}"
    assert 0 < result.registers <= cc.MAX_REGISTERS


@pytest.mark.parametrize("case", FORWARD_TILES, ids=lambda c: c.id)
def test_feature_tiles_are_read_in_16_byte_loads(compiled, case):
    result = compiled[case.id]
    assert cc.tile_vectorised(result), (
        f"{case.id}: {result.loads.get(16, 0)} 16-byte loads for a tile of {result.tile_bytes_per_thread} "
        f"bytes per thread; loads by width {result.loads}"
    )


@pytest.mark.parametrize("arch", cc.ARCHS)
def test_rows_of_a_width_not_a_multiple_of_16_are_read_in_vectors(arch):
    """Regression: at d = 100 Triton's JIT proves nothing about row offsets and the tiles were read
    one float per instruction; the launcher's ROW_ALIGN (4 here) gives 16-byte loads back."""
    dtypes = (("indices", "int32"), ("pairs", "int32"), ("x", "float32"))
    result = cc.compile_case(cc.CompileCase("cn_sum", dtypes, "K32-D128-w4-s3", arch, d=100))
    assert cc.tile_load_bytes(result.case) == 16 and cc.tile_vectorised(result), result.loads


@pytest.mark.parametrize(
    "sizes, align",
    [
        ((256, 256, 256), 16),
        ((100, 100, 100), 4),
        ((100, 300, 100), 4),
        ((37, 37, 37), 1),
        ((70, 70, 70), 2),
        ((8, 0, 0), 8),
        ((0, 0, 0), 16),
    ],
)
def test_row_align_is_the_largest_power_of_two_dividing_every_size(sizes, align):
    assert cc.kernels._row_align(*sizes) == align


def test_hopper_scatters_sum_float32_with_vector_reductions(compiled):
    """Regression: acq_rel atomics (``atom...acq_rel.add.f32``, one element each) where relaxed
    reductions suffice; relaxed ones are 16-byte ``red...v4.f32`` on sm_90."""
    hopper = [r for r in compiled.values() if r.case.arch == 90 and r.case.launcher.endswith("scatter")]
    float32 = [r for r in hopper if dict(r.case.dtypes)["grad"] == "float32"]
    assert float32 and all(set(r.atomics) == {16} for r in float32), [(r.case.id, r.atomics) for r in float32]
    assert not any("acq_rel" in op for r in hopper for op in r.global_ops)


def test_every_launcher_and_config_is_covered_on_both_targets():
    for name in cc.LAUNCHERS:
        choices = [d for d, _ in cc.distinct_dtype_choices(name)]
        configs = cc.configs(cc.record_launch(name, choices[0]))
        for arch in cc.ARCHS:
            mine = [c for c in CASES if c.launcher == name and c.arch == arch]
            assert {c.config for c in mine} == set(configs), name
            assert {c.dtypes for c in mine} == {tuple(d.items()) for d in choices}, name


def test_launches_are_recorded_with_the_arguments_the_launchers_pass():
    count = cc.record_launch("cn_count", {"indices": "int32", "pairs": "int64"})
    named = dict(zip(count.kernel.arg_names, count.args))
    assert named["x"].dtype == torch.int64 and named["indices"].dtype == torch.int32  # counts stand in for x
    assert list(cc.configs(count)) == ["K16-D64-w2-s3", "K32-D128-w4-s3"]  # d = 1 prunes the wide tiles
    # Half gradients are scattered in float32, and gather weights take the accumulation dtype.
    assert (
        cc.launched_dtypes("cn_scatter", {"indices": "int64", "pairs": "int32", "grad": "bfloat16"})["grad"]
        == "float32"
    )
    widened = cc.launched_dtypes("gather_sum", {"members": "int32", "weights": "float16", "x": "float64"})
    assert widened == {"members": "int32", "weights": "float64", "x": "float64"}


def test_problems_catch_a_kernel_that_spills_under_register_pressure():
    """The check can fail: the widest float64 tile held to 64 registers spills heavily."""
    case = cc.CompileCase(
        "cn_sum", (("indices", "int32"), ("pairs", "int32"), ("x", "float64")), "K64-D256-w8-s3", 80
    )
    launch = cc.record_launch(case.launcher, dict(case.dtypes))
    config = {**cc.configs(launch)[case.config], "maxnreg": 64}
    result = cc.read_compiled(case, config, cc.compile_launch(launch, config, case.arch), 0.0)
    assert result.registers <= 64 and result.stack_bytes > cc.PARKED_SLOT_BYTES
    assert result.spill_in_loop_bytes > 0
    assert any(p.startswith("spills") for p in cc.problems(result))


def test_problems_catch_shared_memory_beyond_the_target():
    case = cc.CompileCase("cn_sum", (("indices", "int32"),), "K16-D64-w2-s3", 80)
    result = cc.CompileResult(case, 0.0, registers=40, shared_bytes=163 * 1024 + 1)
    assert cc.problems(result) == [f"shared memory {163 * 1024 + 1} bytes > {163 * 1024} on sm_80"]
    assert cc.problems(cc.CompileResult(case, 0.0, registers=40, shared_bytes=163 * 1024)) == []


SASS = """
        /*0000*/                   MOV R1, c[0x0][0x28] ;
        /*0010*/                   STL [R1], R2 ;
        /*0020*/              @!P0 LDG.E.128 R4, desc[UR4][R2.64] ;
        /*0030*/                   LDL.LU.64 R6, [R1+0x8] ;
        /*0040*/               @P1 BRA 0x20 ;
        /*0050*/                   LDL R3, [R1] ;
        /*0060*/                   BRA.DIV ~URZ, 0x90 ;
        /*0070*/                   STL.128 [R1+0x10], R8 ;
        /*0080*/                   EXIT ;
"""


def test_spill_traffic_separates_loop_bodies_from_the_rest():
    # One loop, 0x20..0x40 (the backward branch); BRA.DIV jumps forward.
    assert cc.spill_traffic(SASS) == {"store_bytes": 4 + 16, "load_bytes": 8 + 4, "in_loop_bytes": 8}


@pytest.mark.parametrize(
    "instruction, width",
    [
        ("ld.global.v4.b32", 16),
        ("ld.global.v2.b64", 16),
        ("ld.global.b16", 2),
        ("red.global.gpu.relaxed.add.noftz.f16x2", 4),
        ("red.global.gpu.relaxed.add.noftz.v8.bf16", 16),
        ("atom.relaxed.gpu.global.cas.b32", 4),
    ],
)
def test_bytes_per_instruction(instruction, width):
    assert cc.bytes_per_op(instruction) == width
    assert cc.global_memory_ops(f"\t@%p3 {instruction} \t{{ %r1 }}, [ %rd2 + 0 ];\n") == {instruction: 1}
