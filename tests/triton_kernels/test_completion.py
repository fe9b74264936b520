"""The completion's calibration: a sigmoid whose result does not depend on an element's position."""

from __future__ import annotations

import pytest
import torch

from ncnc.triton_kernels.completion import (
    Calibration,
    reproducible_sigmoid,
    reproducible_sigmoid_reference,
)


def test_agrees_with_torch_sigmoid_in_float64():
    z = torch.randn(200_000, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 20
    z = z[z.abs() < 100]
    expected = torch.sigmoid(z)
    relative = ((reproducible_sigmoid(z) - expected).abs() / expected).max()
    assert relative < 2e-15


def test_rounds_to_the_float32_of_the_exact_sigmoid():
    z = torch.randn(100_000, generator=torch.Generator().manual_seed(1)) * 8
    assert torch.equal(reproducible_sigmoid(z).float(), torch.sigmoid(z.double()).float())


def test_each_element_is_the_same_alone_and_in_a_run():
    # torch.sigmoid fails this on the CPU: the tail of a run takes a scalar path.
    z = torch.randn(999, generator=torch.Generator().manual_seed(2)) * 6
    together = reproducible_sigmoid(z)
    for width in (1, 3, 8, 17):
        parts = torch.cat([reproducible_sigmoid(z[k:k + width]) for k in range(0, len(z), width)])
        assert torch.equal(parts, together)


@pytest.mark.parametrize("z, expected", [
    (0.0, 0.5), (-0.0, 0.5), (1e6, 1.0), (-1e6, 0.0), (float("inf"), 1.0),
    (float("-inf"), 0.0),
])
def test_limits(z, expected):
    got = reproducible_sigmoid(torch.tensor([z], dtype=torch.float64)).item()
    assert got == pytest.approx(expected, abs=1e-45)


def test_nan_stays_nan():
    assert reproducible_sigmoid(torch.tensor([float("nan")])).isnan().all()


def test_calibration_formula_and_dtype():
    calibration = Calibration(probscale=4.3, proboffset=2.8, pt=0.75, alpha=0.9)
    logits = torch.linspace(-5, 5, 11)
    s = torch.sigmoid(4.3 * (logits.double() - 2.8))
    expected = 0.9 * 0.75 * s / (0.75 * s + 1 - s)
    got = calibration(logits)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), expected, rtol=1e-6, atol=1e-7)


SPECIAL = [0.0, -0.0, 1e-300, -1e-300, 0.5, -0.5, 36.7, -36.7, 109.9, 110.0, -110.0, 745.0,
           -745.0, float("inf"), float("-inf"), float("nan")]


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool(((a.view(torch.int64) == b.view(torch.int64)) | (a.isnan() & b.isnan())).all())


@pytest.mark.parametrize("size", [0, 1, 7, 4097, 65537])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_compiled_sigmoid_gives_the_reference_bits(size, dtype):
    generator = torch.Generator().manual_seed(size)
    z = torch.cat([torch.randn(size, generator=generator, dtype=torch.float64) * 40,
                   torch.tensor(SPECIAL, dtype=torch.float64)]).to(dtype)
    out = reproducible_sigmoid(z)
    assert out.dtype == torch.float64 and out.shape == z.shape
    assert same_bits(out, reproducible_sigmoid_reference(z))


def test_compiled_sigmoid_does_not_depend_on_an_elements_position():
    # The reason it exists: torch.sigmoid's vectorised and scalar paths differ in the last bit.
    z = torch.randn(1000, dtype=torch.float64) * 10
    whole = reproducible_sigmoid(z)
    for offset in (0, 1, 3, 17, 999):
        assert same_bits(reproducible_sigmoid(z[offset:].clone()), whole[offset:])
    torch.testing.assert_close(whole, torch.sigmoid(z), rtol=0, atol=1e-15)
