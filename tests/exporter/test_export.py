"""exporter/export.py: bundles that reproduce the eager model, today's snapshots (nodes that
joined, left or changed), atomic failure."""

from __future__ import annotations

import dataclasses
import json

import polars as pl
import pytest
import torch
from click.testing import CliRunner

from ncnc.cli import cli
from ncnc.core.errors import InputError
from ncnc.exporter import ExportConfig, ExportValidationError, export_bundle
from ncnc.scorer.bundle import PROGRAM_FILE, Bundle, load_bundle
from ncnc.scorer.engine import BatchScorer
from ncnc.trainer.checkpoint import load_checkpoint
from ncnc.trainer.data import load_edge_list
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
    expected = build_csr(bundle.graph.edge_index().t(), bundle.num_nodes)
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


def test_export_sign_key_signs_the_bundle_it_wrote(checkpoints, tmp_path):
    pytest.importorskip("model_signing")
    from click.testing import CliRunner

    from ncnc.cli import cli
    from ncnc.scorer.bundle import BundleError
    from tests.scorer.tampering import file_hashes, write_key_pair

    private, public = write_key_pair(tmp_path)
    _, other = write_key_pair(tmp_path, "other")
    out = tmp_path / "bundle"
    before = file_hashes(checkpoints["gae"], private)
    result = CliRunner().invoke(cli, ["export", "--checkpoint", str(checkpoints["gae"]), "--out",
                                      str(out), "--sign-key", str(private)])
    assert result.exit_code == 0, result.output
    assert file_hashes(checkpoints["gae"], private) == before
    assert json.loads((out / "manifest.json").read_text())["signature"] == "model.sig"
    assert (out / "model.sig").is_file()
    assert load_bundle(out, verify_key=public).spec.model == "gae"
    with pytest.raises(BundleError, match="signature does not verify"):
        load_bundle(out, verify_key=other)
    # A key that cannot sign is refused before any work; the earlier bundle stays.
    manifest = (out / "manifest.json").read_text()
    for bad, message in [(public, f"--sign-key {public}: not a PEM private key"),
                         (out / "model.sig", f"output {out}: holds {out / 'model.sig'}")]:
        result = CliRunner().invoke(cli, ["export", "--checkpoint", str(checkpoints["gae"]),
                                          "--out", str(out), "--sign-key", str(bad)])
        assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
        assert message in result.output
        assert (out / "manifest.json").read_text() == manifest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "ncnc-key.pem",
                                                          "ncnc-pub.pem", "other-key.pem",
                                                          "other-pub.pem"]


# --- Today's snapshot: nodes that joined, left, changed (conftest.featured_night) ---------------


def snapshot_graph(edges, features=None, nodes=None):
    graph = load_edge_list(edges, features, nodes)
    return graph, build_csr(graph.edges, graph.num_nodes)


def test_the_snapshot_defines_the_ids_and_the_graph(featured_night):
    bundle = load_bundle(featured_night.bundle)
    ids = set(bundle.id_map.ids.to_list())
    assert {"new_a", "new_b", "new_c"} <= ids and not ids & {f"n{k}" for k in range(5)}
    today, graph = snapshot_graph(featured_night.edges, featured_night.features)
    assert bundle.id_map == today.id_map
    assert torch.equal(bundle.graph.indptr, graph.indptr)
    assert torch.equal(bundle.graph.indices, graph.indices)
    assert featured_night.manifest["snapshot"] == {
        "nodes": 298, "known_nodes": 295, "new_nodes": 3, "removed_nodes": 5,
        "new_nodes_without_edges": 1, "new_node_rule": "features",
        "new_nodes_given_the_global_mean": None, "features_source": str(featured_night.features)}
    with pytest.raises(InputError, match="not nodes of the graph: 'n0'"):
        bundle.scorer(device="cpu").score(pl.DataFrame({"src": ["n0"], "dst": ["n10"]}))


def test_new_nodes_are_embedded_from_todays_features_as_known_ones(featured_night):
    ck = load_checkpoint(featured_night.checkpoint)
    today, graph = snapshot_graph(featured_night.edges, featured_night.features)
    with torch.no_grad():
        expected = ck.model.encoder(today.features, graph)
        old_features = today.features.clone()
        n20 = int(today.id_map.to_index(pl.Series(["n20"]), what="test")[0])
        old_features[n20] = ck.features[int(ck.id_map.to_index(pl.Series(["n20"]),
                                                               what="test")[0])]
        with_old_features = ck.model.encoder(old_features, graph)
    level0 = load_bundle(featured_night.bundle).levels[0]
    torch.testing.assert_close(level0, expected, atol=1e-6, rtol=0)
    assert not torch.allclose(level0[n20], with_old_features[n20])  # n20's new features count


def test_a_new_node_without_edges_gets_scores(featured_night):
    scorer = load_bundle(featured_night.bundle).scorer(device="cpu")
    pairs = pl.DataFrame({"src": ["new_c", "new_c", "new_b"], "dst": ["n10", "new_a", "n11"]})
    scored = scorer.score(pairs)
    assert scored.height == 3 and scored["score"].is_finite().all()
    assert scored["score"][0] != scored["score"][1]  # from its features, not a constant


def test_snapshot_equal_to_the_training_graph_leaves_every_score_unchanged(checkpoints,
                                                                           graph_files, tmp_path):
    ck = load_checkpoint(checkpoints["ncnc"])
    known = torch.cat([ck.split.train, ck.split.valid])
    edges = ck.id_map.to_original(known).to_numpy()
    pl.DataFrame({"src": edges[0::2], "dst": edges[1::2]}).write_parquet(tmp_path / "same.parquet")
    manifest = export_bundle(checkpoints["ncnc"], tmp_path / "after", tmp_path / "same.parquet",
                             features=graph_files[1])
    assert (manifest["snapshot"]["new_nodes"], manifest["snapshot"]["removed_nodes"]) == (0, 0)
    # What an export without --edges tabulates: the checkpoint's graph, ids and features.
    graph = build_csr(known, len(ck.id_map))
    after = load_bundle(tmp_path / "after")
    with torch.no_grad():
        levels = [ck.model.encoder(ck.features, graph)]
        for _ in range(after.spec.num_levels - 1):
            levels.append(ck.model.predictor.transform(levels[-1]))
    assert after.id_map == ck.id_map and torch.equal(after.graph.indices, graph.indices)
    assert all(torch.equal(a, b) for a, b in zip(after.levels, levels, strict=True))
    before = Bundle.in_memory(after.path, after.spec, graph, levels, ck.id_map)
    pairs = bundle_graph_pairs(after)
    assert torch.equal(BatchScorer(after, "cpu").score_logits(pairs),
                       BatchScorer(before, "cpu").score_logits(pairs))


def test_featureless_new_nodes_take_the_mean_of_their_known_neighbours(featureless_checkpoint,
                                                                       graph_files, tmp_path):
    joined = pl.DataFrame({"src": ["new_a", "new_a", "new_b"], "dst": ["n10", "n11", "new_a"]})
    pl.concat([pl.read_parquet(graph_files[0]), joined]).write_parquet(tmp_path / "today.parquet")
    pl.DataFrame({"node": ["new_c"]}).write_parquet(tmp_path / "nodes.parquet")
    result = CliRunner().invoke(cli, [
        "export", "--checkpoint", str(featureless_checkpoint), "--out", str(tmp_path / "b"),
        "--edges", str(tmp_path / "today.parquet"), "--nodes", str(tmp_path / "nodes.parquet")])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)["snapshot"]
    assert (printed["new_nodes"], printed["new_nodes_without_edges"],
            printed["new_nodes_given_the_global_mean"], printed["new_node_rule"]) == (3, 1, 1, "mean")
    # The input table by hand: learned rows, new_a the mean of n10's and n11's, new_b (whose one
    # neighbour is new) new_a's, new_c (no edges) the mean of every learned row.
    ck = load_checkpoint(featureless_checkpoint)
    today, graph = snapshot_graph(tmp_path / "today.parquet", nodes=tmp_path / "nodes.parquet")
    learned = ck.model.encoder.embedding.weight.detach()
    row = {i: learned[int(ck.id_map.to_index(pl.Series([i]), what="test")[0])]
           for i in ("n10", "n11")}
    table = []
    for node in today.id_map.ids.to_list():
        if node in ("new_a", "new_b"):
            table.append((row["n10"] + row["n11"]) / 2)
        elif node == "new_c":
            table.append(learned.mean(0))
        else:
            table.append(learned[int(ck.id_map.to_index(pl.Series([node]), what="test")[0])])
    with torch.no_grad():
        expected = ck.model.encoder(torch.stack(table), graph)
    torch.testing.assert_close(load_bundle(tmp_path / "b").levels[0], expected, atol=1e-6, rtol=0)


def write_edges(path, src, dst):
    pl.DataFrame({"src": src, "dst": dst}).write_parquet(path)
    return path


@pytest.mark.parametrize("case", ["error rule", "integer ids", "mixed ids", "missing feature row",
                                  "features of a featureless model", "features without edges"])
def test_snapshot_mistakes_are_one_line_errors_and_write_nothing(case, checkpoints,
                                                                 featureless_checkpoint,
                                                                 featured_night, tmp_path):
    featured, featureless = checkpoints["ncn"], featureless_checkpoint
    today = write_edges(tmp_path / "today.parquet", ["n1", "new_a"], ["n2", "n1"])
    features = tmp_path / "features.parquet"
    pl.read_parquet(featured_night.features).filter(pl.col("node") != "n50").write_parquet(features)
    calls = {
        "error rule": (featureless, dict(edges=today, new_nodes="error"), "error.*'new_a'"),
        "integer ids": (featured, dict(edges=write_edges(tmp_path / "i.parquet", [1], [2])),
                        "ids are integer but the checkpoint's are string"),
        "mixed ids": (featured, dict(edges=write_edges(tmp_path / "m.parquet", [1], ["n2"])),
                      "same kind of id"),
        "missing feature row": (featured, dict(edges=featured_night.edges, features=features),
                                "no feature row: 'n50'"),
        "features of a featureless model": (featureless, dict(edges=today,
                                                              features=featured_night.features),
                                            "trained without node features"),
        "features without edges": (featured, dict(features=features), "go with --edges"),
    }
    checkpoint, kwargs, message = calls[case]
    with pytest.raises(InputError, match=message) as raised:
        export_bundle(checkpoint, tmp_path / "bundle", **kwargs)
    assert "\n" not in str(raised.value)
    assert not (tmp_path / "bundle").exists()


# --- The completion cap (export --cap, the paper's tstdeg) --------------------------------------


def test_export_cap_is_recorded_in_the_manifest_and_defaults_to_the_checkpoints(checkpoints,
                                                                                 tmp_path):
    for flags, expected in [([], 3), (["--cap", "16"], 16)]:  # -1: the next test's bundles
        out = tmp_path / f"bundle{expected}"
        result = CliRunner().invoke(cli, ["export", "--checkpoint", str(checkpoints["ncnc"]),
                                          "--out", str(out), *flags])
        assert result.exit_code == 0, result.output
        assert json.loads((out / "manifest.json").read_text())["spec"]["cap"] == expected
        assert load_bundle(out).spec.cap == expected


@pytest.mark.parametrize("cap", ["0", "-2"])
def test_a_bad_cap_is_one_line_exit_2_and_writes_nothing(cap, checkpoints, tmp_path):
    result = CliRunner().invoke(cli, ["export", "--checkpoint", str(checkpoints["ncnc"]),
                                      "--out", str(tmp_path / "bundle"), "--cap", cap])
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert f"--cap {cap}: the completion cap is -1 (no cap) or a positive number" in result.output
    assert not (tmp_path / "bundle").exists()


def test_the_scorer_uses_the_manifests_cap(checkpoints, tmp_path):
    # Hand graph: n1 - n2, n3, n4 and n5 - n2. The pair (n1, n5) has common neighbour n2, and n1's
    # completion set N(n1) \ N(n5) = {n3, n4} has two members: cap 1 draws one of them (weight 2).
    today = tmp_path / "today.parquet"
    pl.DataFrame({"src": ["n1", "n1", "n1", "n5"], "dst": ["n2", "n3", "n4", "n2"]}
                 ).write_parquet(today)
    bundles = {}
    for cap in (1, -1):
        export_bundle(checkpoints["ncnc"], tmp_path / f"cap{cap}", today,
                      config=ExportConfig(cap=cap))
        bundles[cap] = load_bundle(tmp_path / f"cap{cap}")
    pair = bundles[1].id_map.to_index(pl.Series(["n1", "n5"]), what="pair")[None]
    capped, uncapped = (BatchScorer(bundles[cap], device="cpu").score_logits(pair)
                        for cap in (1, -1))
    assert (capped - uncapped).abs().item() > 1e-3
    # The eager model with test_cap=1, on the bundle's graph and node table, agrees.
    predictor = load_checkpoint(checkpoints["ncnc"]).model.predictor.eval()
    predictor.cfg = dataclasses.replace(predictor.cfg, test_cap=1)
    with torch.no_grad():
        eager = predictor(bundles[1].levels[0], bundles[1].graph, pair)
    torch.testing.assert_close(capped, eager, atol=1e-5, rtol=0)
