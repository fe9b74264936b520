"""The batch engine: the head runs through onnxruntime's IOBinding on torch tensors, with the
same logits as a plain session run; the engine scores any batch size with the same bits."""

from __future__ import annotations

import numpy as np
import torch

import ncnc
from ncnc.scorer.engine import OnnxHead


def test_the_bound_head_gives_the_plain_runs_logits(bundle_dir):
    spec = ncnc.load_bundle(bundle_dir).spec
    head = OnnxHead(bundle_dir / "head.onnx", spec, torch.device("cpu"))
    generator = torch.Generator().manual_seed(0)
    hidden = spec.hidden
    for batch in (1, 7, 1000):
        cn, xij = torch.randn(2, batch, hidden, generator=generator)
        bound = head(cn, xij)
        (plain,) = head.session.run(None, {"cn": cn.numpy(), "xij": xij.numpy()})
        assert bound.dtype == torch.float32 and bound.shape == (batch,)
        assert np.array_equal(bound.numpy(), plain)


def test_non_contiguous_and_float64_inputs_are_bound_as_float32(bundle_dir):
    spec = ncnc.load_bundle(bundle_dir).spec
    head = OnnxHead(bundle_dir / "head.onnx", spec, torch.device("cpu"))
    hidden = spec.hidden
    cn = torch.randn(hidden, 20, dtype=torch.float64).t()  # a transposed view
    xij = torch.randn(20, hidden, dtype=torch.float64)
    (plain,) = head.session.run(None, {"cn": cn.float().numpy().copy(),
                                       "xij": xij.float().numpy()})
    assert np.array_equal(head(cn, xij).numpy(), plain)


def test_the_memo_serves_repeated_completion_pairs_with_the_same_bits(bundle_dir):
    bundle = ncnc.load_bundle(bundle_dir)
    from ncnc.scorer.engine import BatchScorer

    generator = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, 6, (400, 2), generator=generator) for _ in range(5)]
    plain = BatchScorer(bundle, "cpu", memo_mib=0)
    memo = BatchScorer(bundle, "cpu")
    tiny = BatchScorer(bundle, "cpu", memo_mib=0.001)  # full after a few pairs: starts over
    assert plain.memo is None and memo.memo is not None
    for pairs in batches:
        expected = plain.score_logits(pairs)
        assert torch.equal(memo.score_logits(pairs), expected)
        assert torch.equal(tiny.score_logits(pairs), expected)
    stats = memo.memo.stats
    # Six nodes have few distinct completion pairs: after the first batch, all are repeats.
    assert stats["memo_lookups"] > 0 and stats["memo_hit_rate"] > 0.5
