"""exporter/precision.py: bf16 and int8 bundles, their agreement with fp32 measured at export and
refused below the thresholds; the agreement figures on hand-made rankings."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from ncnc.cli import cli
from ncnc.exporter import AgreementError, ExportConfig, export_bundle
from ncnc.exporter.precision import AgreementPairs, agreement, per_source_overlap
from ncnc.scorer.bundle import load_bundle
from ncnc.scorer.engine import BatchScorer, OnnxHead, head_kind
from ncnc.scorer.torch_head import TorchHead

LOOSE = {"min_top100_overlap": 0.0, "min_per_source_top20_overlap": 0.0,
         "max_abs_delta_hits100": 1.0}  # a one-epoch checkpoint's ranking is mostly ties


@pytest.fixture(scope="module")
def fp32_bundle(checkpoints, tmp_path_factory):
    out = tmp_path_factory.mktemp("fp32") / "bundle"
    export_bundle(checkpoints["ncnc"], out)
    return out


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_a_reduced_bundle_records_its_precision_and_agreement(precision, checkpoints,
                                                              fp32_bundle, tmp_path):
    out = tmp_path / "bundle"
    manifest = export_bundle(checkpoints["ncnc"], out,
                             config=ExportConfig(precision=precision, **LOOSE))
    figures = manifest["parity"]["agreement"]
    assert manifest["spec"]["precision"] == precision and figures["thresholds"] == LOOSE
    assert figures["pairs"] > figures["validation_pairs"] > 0 and figures["candidate_sources"] > 0
    bundle, reference = load_bundle(out), load_bundle(fp32_bundle)
    assert all(t.dtype == torch.bfloat16 for t in bundle.levels)
    assert torch.equal(bundle.levels[1], reference.levels[1].to(torch.bfloat16))
    scorer = BatchScorer(bundle, device="cpu")
    kind = head_kind(bundle.spec, torch.device("cpu"))
    assert figures["head"] == kind
    assert isinstance(scorer.head, TorchHead if kind == "torch-bf16" else OnnxHead)
    pairs = torch.randint(0, bundle.num_nodes, (500, 2), generator=torch.Generator().manual_seed(0))
    got = scorer.score_logits(pairs)
    expected = BatchScorer(reference, device="cpu").score_logits(pairs)
    difference = (got - expected).abs()
    # Close to fp32 (the recorded bound holds on other pairs too, with room), never equal.
    assert 0 < float(difference.max()) < 4 * figures["max_abs_logit_diff"] + 0.05
    assert 0 < figures["mean_abs_logit_diff"] <= figures["max_abs_logit_diff"]


def test_below_the_thresholds_no_bundle_is_written_and_the_old_one_is_kept(checkpoints,
                                                                          fp32_bundle, tmp_path):
    out = tmp_path / "bundle"
    export_bundle(checkpoints["ncn"], out)
    before = (out / "manifest.json").read_text()
    with pytest.raises(AgreementError, match=r"--precision bf16: .*top-100 overlap [0-9.]+ < 1.01 "
                                             r"\(--min-top100-overlap\); no bundle written"):
        export_bundle(checkpoints["ncnc"], out,
                      config=ExportConfig(precision="bf16", min_top100_overlap=1.01))
    assert (out / "manifest.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]  # no staging left behind


def test_cli_precision_flags_and_refusal_exit_2(checkpoints, tmp_path):
    out = tmp_path / "bundle"
    result = CliRunner().invoke(cli, ["export", "--checkpoint", str(checkpoints["ncn"]), "--out",
                                      str(out), "--precision", "bf16", "--max-hits-delta", "1",
                                      "--min-top100-overlap", "1.01"])
    assert result.exit_code == 2 and "--min-top100-overlap" in result.output, result.output
    assert result.output.count("\n") == 1 and not out.exists()
    result = CliRunner().invoke(cli, ["export", "--checkpoint", str(checkpoints["ncn"]), "--out",
                                      str(out), "--precision", "bf16", "--min-top100-overlap",
                                      "0", "--min-top20-overlap", "0", "--max-hits-delta", "1"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["parity"]["agreement"]["thresholds"]["min_top100_overlap"] == 0
    assert load_bundle(out).spec.precision == "bf16"
    result = CliRunner().invoke(cli, ["export", "--checkpoint", str(checkpoints["ncn"]), "--out",
                                      str(tmp_path / "other"), "--precision", "fp16"])
    assert result.exit_code == 2 and "'fp16' is not one of 'fp32', 'bf16', 'int8'" in result.output


def test_per_source_overlap_counts_shared_top_rows_of_each_source():
    # Source 0: 22 rows, the two rankings share 19 of their top 20 (row 21 enters, row 19 leaves);
    # source 1: 21 rows ranked identically; source 2: too few rows to rank.
    sources = np.array([0] * 22 + [1] * 21 + [2] * 3)
    reference = np.concatenate([np.arange(22, 0, -1), np.arange(21, 0, -1), [3, 2, 1]]) * 1.0
    scores = reference.copy()
    scores[21] = 100.0  # the worst of source 0 becomes its best
    overlap, ranked = per_source_overlap(sources, reference, scores, k=20)
    assert ranked == 2 and overlap == pytest.approx((19 / 20 + 1.0) / 2)
    assert per_source_overlap(np.array([0, 0]), np.ones(2), np.ones(2), k=20) == (None, 0)


def test_agreement_figures_on_a_hand_made_ranking():
    # 2 positives, 2 negatives, 1 candidate; the reduced scores swap a positive below a negative.
    pairs = torch.tensor([[0, 1], [0, 2], [3, 4], [3, 5], [0, 6]])
    where = AgreementPairs(pairs, positives=2, negatives=2, sources=1)
    reference = torch.tensor([4.0, 3.0, 1.0, 0.0, 2.0])
    scores = torch.tensor([4.0, 0.5, 1.0, 0.0, 2.0])
    figures = agreement(reference, scores, where)
    assert figures["max_abs_logit_diff"] == 2.5 and figures["mean_abs_logit_diff"] == 0.5
    assert figures["top100_overlap"] == 1.0  # five pairs: all of them are the top "100"
    assert figures["auc_fp32"] == 1.0 and figures["delta_auc"] == -0.25
    assert figures["hits100_fp32"] == 1.0 and figures["delta_hits100"] == 0.0  # < 100 negatives
    assert figures["spearman"] == pytest.approx(0.7)  # 1 - 6 * (4 + 1 + 1) / (5 * 24)
    assert figures["per_source_top20_overlap"] is None
