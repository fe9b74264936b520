"""scorer/torch_head.py: the bf16 head interprets head.onnx with torch ops; close to the fp32
onnxruntime head, the same bits whatever batch a row is in, and refusing ops it does not know."""

from __future__ import annotations

import pytest
import torch

from ncnc.scorer.bundle import BundleError, load_bundle
from ncnc.scorer.engine import OnnxHead
from ncnc.scorer.torch_head import HEAD_BLOCK, TorchHead


@pytest.fixture(scope="module")
def heads(bundle_dir):
    spec = load_bundle(bundle_dir).spec
    cpu = torch.device("cpu")
    return (TorchHead(bundle_dir / "head.onnx", spec, cpu),
            OnnxHead(bundle_dir / "head.onnx", spec, cpu), spec)


def inputs(rows: int, hidden: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(rows, hidden, generator=generator), torch.randn(rows, hidden,
                                                                        generator=generator)


def test_the_bf16_head_is_the_fp32_head_to_bf16_precision(heads):
    bf16, fp32, spec = heads
    cn, xij = inputs(300, spec.hidden)
    got, expected = bf16(cn, xij), fp32(cn, xij)
    assert got.dtype == torch.float32 and got.shape == (300,)
    difference = (got - expected).abs()
    # bf16 keeps 8 significant bits: a few parts in a thousand of the logits' scale, not zero.
    assert 0 < float(difference.max()) < 0.02 * (1 + float(expected.abs().max()))


def test_a_row_scores_the_same_bits_alone_in_any_batch_and_across_blocks(heads):
    bf16, _, spec = heads
    cn, xij = inputs(HEAD_BLOCK + 37, spec.hidden, seed=1)
    together = bf16(cn, xij)
    alone = torch.cat([bf16(cn[k:k + 1], xij[k:k + 1]) for k in range(HEAD_BLOCK - 3,
                                                                       HEAD_BLOCK + 3)])
    assert torch.equal(alone, together[HEAD_BLOCK - 3:HEAD_BLOCK + 3])
    shuffled = torch.randperm(cn.size(0), generator=torch.Generator().manual_seed(0))
    assert torch.equal(bf16(cn[shuffled], xij[shuffled]), together[shuffled])
    assert bf16(cn[:0], xij[:0]).shape == (0,)


def test_an_op_the_interpreter_does_not_know_is_refused_at_load(bundle_dir, tmp_path, heads):
    import onnx

    *_, spec = heads
    model = onnx.load(str(bundle_dir / "head.onnx"))
    relu = next(node for node in model.graph.node if node.op_type == "Relu")
    relu.op_type = "Elu"  # a valid ONNX op our heads never hold
    onnx.save(model, str(tmp_path / "head.onnx"))
    with pytest.raises(BundleError, match=r"head.onnx: the head holds op ai.onnx.Elu \(node .*\), "
                                          r"which a bf16 head cannot evaluate .*--precision fp32"):
        TorchHead(tmp_path / "head.onnx", spec, torch.device("cpu"))
    (tmp_path / "head.onnx").write_bytes(b"not a model")
    with pytest.raises(BundleError, match="head.onnx: not an ONNX model"):
        TorchHead(tmp_path / "head.onnx", spec, torch.device("cpu"))
