"""scorer/bundle.py: a bundle is read only when it is intact and of a known format."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from ncnc.scorer.bundle import BundleError, load_bundle, read_safetensors
from ncnc.triton_kernels.memory import HUGE_PAGE_MIN_BYTES


@pytest.fixture
def bundle_copy(bundle_dir, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(bundle_dir, copy)
    return copy


def edit_manifest(bundle, change):
    manifest = json.loads((bundle / "manifest.json").read_text())
    change(manifest)
    (bundle / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("huge_pages", [True, False])
def test_intact_bundle_loads(bundle_copy, huge_pages):
    bundle = load_bundle(bundle_copy, huge_pages=huge_pages)
    assert bundle.graph.num_nodes == bundle.num_nodes == len(bundle.id_map)
    assert len(bundle.levels) == bundle.spec.num_levels
    tables = load_file(str(bundle_copy / "tables.safetensors"))
    for k, level in enumerate(bundle.levels):
        assert torch.equal(level, tables[f"level{k}"])
    graph = load_file(str(bundle_copy / "graph.safetensors"))
    assert torch.equal(bundle.graph.indices, graph["indices"])
    assert torch.equal(bundle.graph.indptr, graph["indptr"])


def test_read_safetensors_reads_every_dtype_small_and_large(tmp_path):
    g = torch.Generator().manual_seed(0)
    large_rows = HUGE_PAGE_MIN_BYTES // (4 * 8) + 3  # over the huge-page threshold
    tensors = {
        "large": torch.randn(large_rows, 8, generator=g),
        "f64": torch.randn(3, 5, generator=g, dtype=torch.float64),
        "bf16": torch.randn(7, generator=g).bfloat16(),
        "f16": torch.randn(2, 2, generator=g).half(),
        "i32": torch.arange(-5, 6, dtype=torch.int32),
        "i64": torch.arange(10).view(2, 5) * 10**12,
        "empty": torch.zeros(0, 4),
    }
    save_file(tensors, str(tmp_path / "t.safetensors"))
    got = read_safetensors(tmp_path / "t.safetensors", list(tensors))
    for name, want in tensors.items():
        assert got[name].dtype == want.dtype and torch.equal(got[name], want), name


def test_read_safetensors_names_what_is_missing_or_cut(tmp_path):
    path = tmp_path / "t.safetensors"
    save_file({"level0": torch.ones(100, 4)}, str(path))
    with pytest.raises(BundleError, match=r"no readable tensor 'level1' \(found \['level0'\]\)"):
        read_safetensors(path, ["level1"])
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(BundleError, match="file ends inside tensor 'level0'"):
        read_safetensors(path, ["level0"])


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

    from ncnc.scorer.engine import BatchScorer

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
