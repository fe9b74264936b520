"""scorer/bundle.py: a bundle is read only when it is intact and of a known format."""

from __future__ import annotations

import json
import shutil

import pytest

from scorer.bundle import BundleError, load_bundle


@pytest.fixture
def bundle_copy(bundle_dir, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(bundle_dir, copy)
    return copy


def edit_manifest(bundle, change):
    manifest = json.loads((bundle / "manifest.json").read_text())
    change(manifest)
    (bundle / "manifest.json").write_text(json.dumps(manifest))


def test_intact_bundle_loads(bundle_copy):
    bundle = load_bundle(bundle_copy)
    assert bundle.graph.num_nodes == bundle.num_nodes == len(bundle.id_map)
    assert len(bundle.levels) == bundle.spec.num_levels


def test_a_file_changed_after_export_is_refused(bundle_copy):
    with (bundle_copy / "tables.safetensors").open("r+b") as f:
        f.seek(-4, 2)
        f.write(b"\x00\x01\x02\x03")
    with pytest.raises(BundleError, match="tables.safetensors changed since export"):
        load_bundle(bundle_copy)


def test_a_missing_file_is_refused(bundle_copy):
    (bundle_copy / "head.onnx").unlink()
    with pytest.raises(BundleError, match="head.onnx is missing"):
        load_bundle(bundle_copy)


def test_unknown_format_version_is_refused(bundle_copy):
    edit_manifest(bundle_copy, lambda m: m.update(format_version=7))
    with pytest.raises(BundleError, match="format version 7 is not supported"):
        load_bundle(bundle_copy)


def test_loading_and_scoring_never_unpickles(bundle_dir, no_unpickling):
    import torch

    from scorer.engine import BatchScorer

    bundle = load_bundle(bundle_dir)
    logits = BatchScorer(bundle, "cpu").score_logits(torch.tensor([[0, 1], [2, 3], [1, 1]]))
    assert logits.shape == (3,) and torch.isfinite(logits).all()


def test_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match="manifest.json is missing"):
        load_bundle(tmp_path)


@pytest.mark.parametrize("name", ["../outside.parquet", "/etc/passwd", "sub/../../x"])
def test_manifest_paths_cannot_leave_the_bundle(bundle_copy, name):
    def add(manifest):
        manifest["files"][name] = {"sha256": "0" * 64, "bytes": 1}

    edit_manifest(bundle_copy, add)
    with pytest.raises(BundleError, match="points outside the bundle"):
        load_bundle(bundle_copy)
