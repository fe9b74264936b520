"""scorer/manifest.py: the manifest is checked against a typed schema and its own digest (issue 14,
class 4). Every refusal is one BundleError line naming the manifest and the field."""

from __future__ import annotations

import json

import polars as pl
import pytest

from ncnc.scorer.bundle import BundleError, load_bundle
from ncnc.scorer.manifest import MAX_MANIFEST_BYTES, SCHEMA, canonical_bytes, check_manifest
from tests.scorer.tampering import (
    cli_score_and_candidates,
    copy_bundle,
    edit_manifest,
    file_hashes,
    one_line,
    reseal,
)

PAIRS = pl.DataFrame({"src": ["n0", "n1", "n3", "n2"], "dst": ["n3", "n4", "n0", "n5"]})


@pytest.fixture
def bundle_copy(bundle_dir, tmp_path):
    return copy_bundle(bundle_dir, tmp_path / "bundle")


def refused(bundle, match):
    before = file_hashes(bundle)
    with pytest.raises(BundleError, match=match) as caught:
        load_bundle(bundle).scorer(device="cpu").score(PAIRS)
    assert one_line(str(caught.value)), str(caught.value)
    assert file_hashes(bundle) == before


def set_field(path: str, value):
    def edit(manifest):
        *parents, last = path.split(".")
        for name in parents:
            manifest = manifest[name]
        manifest[last] = value

    return edit


CHANGED = "manifest.json: changed since export .its content does not match field manifest_sha256."


@pytest.mark.parametrize("field, value, match", [
    ("spec.probscale", float("nan"), r"field spec.probscale must be a finite number in "
                                     r"\[-1e\+06, 1e\+06\], got NaN"),
    ("spec.model", "ncn", "field spec.depth must be 0 for model 'ncn', got 1"),
    ("spec.depth", 2, CHANGED), ("spec.cap", 3, CHANGED), ("spec.cap_seed", 7, CHANGED),
    ("spec.probscale", 1.0, CHANGED), ("spec.alpha", 0.5, CHANGED), ("num_edges", 8, CHANGED),
    ("parity.atol", 1.0, CHANGED), ("exported_from", "x", CHANGED),
])
def test_a_hand_edited_manifest_is_refused_not_scored(bundle_copy, field, value, match):
    # Regression: editing depth, cap or model silently changed every score; NaN probscale gave
    # all-NaN scores with exit 0. Any edit is now refused: by the schema, naming the field, or
    # by the digest, which covers every field.
    edit_manifest(bundle_copy, set_field(field, value))
    refused(bundle_copy, match)


@pytest.mark.parametrize("edit, match", [
    (set_field("spec.probscale", float("nan")), "field spec.probscale must be a finite number"),
    (set_field("spec.pt", float("inf")), r"field spec.pt must be a finite number in \(0, 1e\+06\], "
                                          "got Infinity"),
    (set_field("spec.pt", 0), r"field spec.pt must be a finite number in \(0, 1e\+06\], got 0"),
    (set_field("spec.alpha", 10**400), r"field spec.alpha must be a finite number in \[-1e\+06, "
                                       r"1e\+06\], got 1000"),
    (set_field("spec.proboffset", -1e300), "field spec.proboffset must be a finite number"),
    (set_field("spec.depth", "1"), r"field spec.depth must be an integer in \[0, 2\], got \"1\""),
    (set_field("spec.depth", 1.0), r"field spec.depth must be an integer in \[0, 2\], got 1.0"),
    (set_field("spec.depth", 0), "field spec.depth must be 1 or 2 for model 'ncnc', got 0"),
    (set_field("spec.model", "ncn"), "field spec.depth must be 0 for model 'ncn', got 1"),
    (set_field("spec.model", "gcn"), "field spec.model must be one of 'gae', 'ncn', 'ncnc'"),
    (set_field("spec.hidden", True), r"field spec.hidden must be an integer in \[1, 1048576\]"),
    (set_field("spec.num_nodes", -1), "field spec.num_nodes must be an integer"),
    (set_field("spec.cap", 0), r"field spec.cap must be an integer in \[-1, 2147483647\] other "
                               "than 0, got 0"),
    (set_field("spec.cap_seed", 2**64), "field spec.cap_seed must be an integer"),
    (set_field("files", ["graph.safetensors"]), "field files must be an object with fields"),
    (lambda m: m["files"].update({"notes.txt": {}}), "field files holds an unknown file "
                                                     "'notes.txt'"),
    (lambda m: m["files"].pop("head.onnx"), "field files.head.onnx is missing"),
    (lambda m: m["files"]["head.onnx"].update(sha256="A" * 64),
     "field files.head.onnx.sha256 must be 64 lowercase hex digits"),
    (set_field("versions", {"torch": 2.13}), "field versions.torch must be a string"),
    (set_field("signature", "other.sig"), "field signature must be one of 'model.sig', or null"),
    (lambda m: m.pop("spec"), "field spec is missing"),
    (set_field("surprise", 1), "the manifest holds an unknown field 'surprise'"),
    (set_field("parity.batch_sizes", None), "field parity.batch_sizes must be an object"),
    (set_field("spec.precision", "fp16"), "field spec.precision must be one of 'fp32', 'bf16', "
                                          "'int8', got \"fp16\""),
    (lambda m: m["spec"].pop("precision"), "field spec.precision is missing"),
    (set_field("parity.agreement", {}), "field parity.agreement.head is missing"),
])
def test_a_malformed_manifest_is_refused_naming_the_field(bundle_copy, edit, match):
    # Resealed (the digest recomputed, as anyone can): the schema names the field.
    reseal(bundle_copy, edit)
    refused(bundle_copy, match)


@pytest.mark.parametrize("text, match", [
    ("[1, 2, 3]", "not an ncnc bundle manifest .a JSON list, not an object."),
    ('"ncnc-bundle"', "a JSON str, not an object"),
    ("{", "not valid JSON"),
    ('{"format": "ncnc-bundle", "format": "x"}', "not valid JSON .duplicate key 'format'."),
    ("[" * 100_000 + "]" * 100_000, "not valid JSON"),
    (b"\xff\xfe{}", "not valid JSON"),
    ('{"format": "ncnc-bundle", "format_version": 1}', "format version 1 is not supported .this "
                                                        "ncnc reads version 3.; re-export"),
    # Regression name: a version 2 bundle (no spec.precision) must be re-exported, not guessed.
    ('{"format": "ncnc-bundle", "format_version": 2}', "format version 2 is not supported"),
    ('{"format": "other"}', r'not an ncnc bundle \(format "other"\)'),
    ('{"format_version": 2}', "not an ncnc bundle .format null."),
    (" " * (MAX_MANIFEST_BYTES + 1), "larger than 1048576 bytes"),
])
def test_a_manifest_that_is_not_one_is_refused_in_one_line(bundle_copy, text, match):
    # Regression: a JSON array or a field of the wrong type gave a traceback.
    path = bundle_copy / "manifest.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    refused(bundle_copy, match)


def shrink_nodes(manifest):
    """299 nodes everywhere in the manifest (the snapshot section must agree with the spec)."""
    manifest["spec"]["num_nodes"] = manifest["snapshot"]["nodes"] = 299
    manifest["snapshot"]["known_nodes"] -= 1


def test_consistency_with_the_files_is_checked(bundle_copy, tmp_path):
    # Resealed edits that the schema alone cannot see: the files disagree with the manifest.
    for edit, match in [
        (shrink_nodes, "id_map.parquet: holds 300 ids, the manifest's spec.num_nodes is 299"),
        (set_field("spec.hidden", 8), r"'level0' has shape \[300, 16\], the manifest needs "
                                      r"\[300, 8\]"),
        (set_field("spec.depth", 2), r"holds tensors \['level0', 'level1', 'level2'\], expected "
                                     r"\['level0', 'level1', 'level2', 'level3'\]"),
        (set_field("num_edges", 8), r"'indices' has shape \[14\], the manifest needs \[16\]"),
    ]:
        copy = copy_bundle(bundle_copy, tmp_path / f"b{len(list(tmp_path.iterdir()))}")
        reseal(copy, edit)
        refused(copy, match)


def test_a_precision_that_disagrees_with_the_tables_or_the_agreement_is_refused(bundle_copy,
                                                                               tmp_path):
    # An fp32 bundle relabelled bf16: its F32 tables are refused naming spec.precision; the
    # agreement figures must be present exactly when the precision is reduced.
    relabelled = copy_bundle(bundle_copy, tmp_path / "bf16")
    agreement = {"head": "onnxruntime-fp32", "pairs": 1, "validation_pairs": 1, "candidate_sources": 0,
                 "max_abs_logit_diff": 0.0, "mean_abs_logit_diff": 0.0, "spearman": 1.0,
                 "top100_overlap": 1.0, "per_source_top20_overlap": None, "hits100_fp32": 1.0,
                 "delta_hits100": 0.0, "auc_fp32": 1.0, "delta_auc": 0.0,
                 "thresholds": {"min_top100_overlap": 0.99, "min_per_source_top20_overlap": 0.97,
                                "max_abs_delta_hits100": 0.005}}

    def as_bf16(manifest):
        manifest["spec"]["precision"] = "bf16"
        manifest["parity"]["agreement"] = agreement

    reseal(relabelled, as_bf16)
    refused(relabelled, r"tables.safetensors: tensor 'level0' is of dtype 'F32', expected BF16, "
                        r"as field spec.precision 'bf16' of .*manifest.json needs")
    reseal(bundle_copy, set_field("parity.agreement", agreement))
    refused(bundle_copy, "field parity.agreement must be null exactly for an fp32 bundle")


def test_whitespace_and_key_order_leave_the_bundle_as_it_was(bundle_copy, bundle_dir):
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    reordered = dict(reversed(list(manifest.items())))
    (bundle_copy / "manifest.json").write_text(json.dumps(reordered, separators=(",", ":")))
    copy, original = load_bundle(bundle_copy), load_bundle(bundle_dir)
    assert copy.checksum == original.checksum == manifest["manifest_sha256"]
    assert copy.scorer(device="cpu").score(PAIRS).equals(
        original.scorer(device="cpu").score(PAIRS))


def test_the_digest_covers_every_field_but_itself(bundle_dir):
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    content = json.loads(canonical_bytes(manifest))
    assert set(content) == set(SCHEMA.fields) - {"manifest_sha256"}
    assert check_manifest(manifest, bundle_dir / "manifest.json") is manifest


def test_cli_edited_manifest_exit_2_with_one_line(bundle_copy, tmp_path):
    edit_manifest(bundle_copy, set_field("spec.cap", 2))
    for result in cli_score_and_candidates(bundle_copy, PAIRS, tmp_path).values():
        assert result.exit_code == 2, result.output
        assert result.output.count("\n") == 1 and "changed since export" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "pairs.parquet"]
