"""exporter/export.py: bundles that reproduce the eager model, refreshes, atomic failure."""

from __future__ import annotations

import json

import polars as pl
import pytest
import torch

from ncnc.core.errors import InputError
from ncnc.exporter import ExportConfig, ExportValidationError, export_bundle
from ncnc.scorer.bundle import PROGRAM_FILE, load_bundle
from ncnc.scorer.engine import BatchScorer
from ncnc.trainer.checkpoint import load_checkpoint
from ncnc.triton_kernels import build_csr


def eager_logits(checkpoint, graph, pairs):
    ck = load_checkpoint(checkpoint)
    return ck.model.score(ck.features, graph, pairs)


def bundle_graph_pairs(bundle, count=400, seed=0):
    gen = torch.Generator().manual_seed(seed)
    random_pairs = torch.randint(0, bundle.num_nodes, (count, 2), generator=gen)
    edges = bundle.graph.edge_index().t()[: count // 2]  # pairs that have common neighbours
    return torch.cat([random_pairs, edges, torch.tensor([[5, 5]])])



@pytest.mark.parametrize("model", ["gae", "ncn", "ncnc"])
def test_bundle_scores_match_the_eager_model_at_any_batch_size(model, checkpoints, tmp_path):
    out = tmp_path / "bundle"
    manifest = export_bundle(checkpoints[model], out)
    parity = manifest["parity"]
    assert parity["pairs"] >= 10_000 and parity["pairs_with_common_neighbors"] >= 4_000
    assert parity["onnx_max_abs_diff"] <= 1e-4 and parity["torch_export_max_abs_diff"] <= 1e-4
    bundle = load_bundle(out)
    pairs = bundle_graph_pairs(bundle)
    expected = eager_logits(checkpoints[model], bundle.graph, pairs)
    scorer = BatchScorer(bundle, device="cpu")
    for batch_size in (1, 7, 250, pairs.size(0)):
        got = torch.cat([scorer.score_logits(p) for p in pairs.split(batch_size)])
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    program = torch.export.load(str(out / PROGRAM_FILE)).module()
    got = program(bundle.graph.indptr, bundle.graph.indices, pairs[:37], *bundle.levels)
    torch.testing.assert_close(got, expected[:37], atol=1e-4, rtol=0)
    # The manifest describes every file with its checksum.
    files = json.loads((out / "manifest.json").read_text())["files"]
    assert set(files) == {"graph.safetensors", "tables.safetensors", "id_map.parquet",
                          "head.onnx", "program.pt2"}


def test_failed_validation_leaves_no_bundle_and_keeps_the_old_one(checkpoints, tmp_path):
    out = tmp_path / "bundle"
    export_bundle(checkpoints["ncn"], out)
    before = (out / "manifest.json").read_text()
    with pytest.raises(ExportValidationError, match="max abs diff"):
        export_bundle(checkpoints["ncnc"], out, config=ExportConfig(atol=-1.0))
    assert (out / "manifest.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]  # no staging left behind


def test_graph_refresh_uses_the_new_snapshot(checkpoints, graph_files, tmp_path):
    edges = pl.read_parquet(graph_files[0])
    extra = pl.DataFrame({"src": ["n0"], "dst": ["n299"]})
    snapshot = tmp_path / "today.parquet"
    pl.concat([edges, extra]).write_parquet(snapshot)
    export_bundle(checkpoints["ncnc"], tmp_path / "fresh", edges=snapshot)
    bundle = load_bundle(tmp_path / "fresh")
    index = bundle.id_map.to_index(pl.Series(["n0", "n299"]), what="test")
    pairs = bundle.graph.edge_index().t().tolist()
    assert [int(index[0]), int(index[1])] in pairs
    expected = build_csr(bundle.graph.edge_index(), bundle.num_nodes)
    assert torch.equal(bundle.graph.indices, expected.indices)
    assert bundle.graph.num_entries == 2 * edges.height + 2  # every snapshot edge, both ways


def test_a_new_node_of_a_featured_model_without_features_is_a_clear_error(checkpoints, tmp_path):
    snapshot = tmp_path / "today.parquet"
    pl.DataFrame({"src": ["n0", "stranger"], "dst": ["n1", "n2"]}).write_parquet(snapshot)
    with pytest.raises(InputError, match="new to the checkpoint.*--features.*stranger"):
        export_bundle(checkpoints["ncn"], tmp_path / "b", edges=snapshot)
    assert not (tmp_path / "b").exists()


def test_refuses_to_replace_a_folder_that_is_not_a_bundle(checkpoints, tmp_path):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "data.txt").write_text("keep me")
    with pytest.raises(InputError, match="not an ncnc bundle"):
        export_bundle(checkpoints["gae"], out)
    assert (out / "data.txt").read_text() == "keep me"
