"""trainer/dropout.py: nn.Dropout's distribution with a hashed CPU mask."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ncnc.trainer.dropout import Dropout, hashed_dropout_mask_apply


@pytest.mark.parametrize("p", [0.05, 0.5, 0.75])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_keeps_each_element_with_probability_1_minus_p_and_scales_it(p, dtype):
    x = torch.rand(400, 2500, dtype=dtype) + 1.0  # no zeros of its own
    y = hashed_dropout_mask_apply(x, p, seed=123)
    kept = y != 0
    n = x.numel()
    sigma = (p * (1 - p) / n) ** 0.5
    assert abs(kept.double().mean().item() - (1 - p)) < 5 * sigma
    torch.testing.assert_close(y[kept], x[kept] / (1 - p))
    # No structure along the layout: rows, columns, even and odd positions all keep 1 - p.
    for part in (kept[:, ::2], kept[:, 1::2], kept[:200], kept[200:]):
        assert abs(part.double().mean().item() - (1 - p)) < 5 * sigma * 2 ** 0.5
    # Neighbouring elements are independent.
    both = (kept[:, :-1] & kept[:, 1:]).double().mean().item()
    assert abs(both - (1 - p) ** 2) < 0.01


def test_the_mask_is_a_function_of_the_seed():
    x = torch.ones(10_000)
    first = hashed_dropout_mask_apply(x, 0.5, seed=7)
    assert torch.equal(first, hashed_dropout_mask_apply(x, 0.5, seed=7))
    assert not torch.equal(first, hashed_dropout_mask_apply(x, 0.5, seed=8))


def test_gradient_is_the_same_mask_scaled():
    dropout = Dropout(0.3).train()
    x = torch.randn(300, 70, requires_grad=True)
    y = dropout(x)
    y.backward(torch.ones_like(y))
    mask = (y != 0).to(x.dtype)
    torch.testing.assert_close(x.grad, mask / 0.7)


def test_reproducible_under_manual_seed_and_identity_in_eval():
    dropout = Dropout(0.5)
    x = torch.randn(50, 50)
    torch.manual_seed(3)
    a = dropout(x)
    torch.manual_seed(3)
    assert torch.equal(a, dropout(x))
    assert torch.equal(dropout.eval()(x), x)
    assert torch.equal(Dropout(0.0).train()(x), x)


def test_other_dtypes_fall_back_to_torch_dropout():
    x = torch.ones(1000, dtype=torch.bfloat16)
    y = Dropout(0.5).train()(x)
    assert y.dtype == torch.bfloat16
    assert set(y.unique().tolist()) <= {0.0, 2.0}


def test_matches_nn_dropout_in_distribution_of_kept_counts():
    x = torch.ones(200_000)
    ours = (Dropout(0.4).train()(x) != 0).double().mean().item()
    torch_rate = (F.dropout(x, 0.4, True) != 0).double().mean().item()
    assert abs(ours - torch_rate) < 0.01


def test_rejects_bad_probabilities():
    with pytest.raises(ValueError, match="dropout probability"):
        Dropout(1.0)
