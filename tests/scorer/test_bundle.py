"""scorer/bundle.py: a bundle is read only when it is intact, of a known format, and its contents
are what the manifest says (issue 14, class 5): every problem is one BundleError naming the file,
before any scoring and at a cost bounded by the files' sizes, on every reading path."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import polars as pl
import pytest
import torch
from safetensors.torch import load_file, save_file

import ncnc
from ncnc.scorer.bundle import BundleError, load_bundle, map_safetensors, read_safetensors
from ncnc.triton_kernels.memory import HUGE_PAGE_MIN_BYTES
from tests.scorer.tampering import (
    cli_score_and_candidates,
    copy_bundle,
    file_hashes,
    one_line,
    onnx_head,
    reseal,
)

PAIRS = pl.DataFrame({"src": ["n0", "n1", "n3"], "dst": ["n3", "n4", "n0"]})


@pytest.fixture
def bundle_copy(bundle_dir, tmp_path):
    return copy_bundle(bundle_dir, tmp_path / "bundle")


# The three ways arrays are read: huge pages (ncnc score on the CPU), mapped (Ray actors,
# candidates), and mapped then copied off the CPU (CUDA; the meta device stands in for it here).
READS = {
    "huge_pages": lambda path: load_bundle(path).levels,
    "mapped": lambda path: load_bundle(path, huge_pages=False).levels,
    "off_cpu": lambda path: load_bundle(path).arrays_for(torch.device("meta")),
}
GRAPH_READS = {
    "huge_pages": lambda path: load_bundle(path).graph,
    "mapped": lambda path: load_bundle(path, huge_pages=False).graph,
    "off_cpu": lambda path: load_bundle(path).arrays_for(torch.device("meta")),
}


def refused(read, path: Path, match: str) -> None:
    """``read(path)`` raises a one-line BundleError matching ``match`` and changes no file."""
    before = file_hashes(path)
    with pytest.raises(BundleError, match=match) as caught:
        read(path)
    assert one_line(str(caught.value)), str(caught.value)
    assert file_hashes(path) == before


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


def test_read_and_map_safetensors_read_every_dtype_small_and_large(tmp_path):
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
    expected = {name: (t.dtype, tuple(t.shape)) for name, t in tensors.items()}
    for read in (read_safetensors, map_safetensors):
        got = read(tmp_path / "t.safetensors", expected)
        for name, want in tensors.items():
            assert got[name].dtype == want.dtype and torch.equal(got[name], want), name


def safetensors_file(path: Path, header: object, data: bytes = b"") -> Path:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


@pytest.mark.parametrize("header, data, match", [
    ({"level0": {"dtype": "F32", "shape": [2, 4], "data_offsets": [0, 32]}}, b"\0" * 31,
     r"data_offsets \[0, 32\] are not within the file's 31 data bytes"),
    ({"level0": {"dtype": "F32", "shape": [-2, 4], "data_offsets": [0, 32]}}, b"\0" * 32,
     "shape .* is not a list of non-negative integers"),
    ({"level0": {"dtype": "F64", "shape": [2, 4], "data_offsets": [0, 64]}}, b"\0" * 64,
     "is of dtype 'F64', expected F32"),
    ({"level0": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}}, b"\0" * 24,
     r"has shape \[2, 3\], the manifest needs \[2, 4\]"),
    ({"level0": {"dtype": "F32", "shape": [2, 4], "data_offsets": [0, 16]}}, b"\0" * 32,
     r"holds 16 bytes, its shape \[2, 4\] needs 32"),
    ({"level1": {"dtype": "F32", "shape": [2, 4], "data_offsets": [0, 32]}}, b"\0" * 32,
     r"holds tensors \['level1'\], expected \['level0'\]"),
    ([1, 2], b"", "the header is not a JSON object"),
])
def test_safetensors_headers_are_checked_before_anything_is_read(tmp_path, header, data, match):
    path = safetensors_file(tmp_path / "t.safetensors", header, data)
    for read in (read_safetensors, map_safetensors):
        with pytest.raises(BundleError, match=match):
            read(path, {"level0": (torch.float32, (2, 4))})


def test_a_header_claiming_2_62_bytes_is_refused_without_reading_it(tmp_path):
    # Regression: the header size was trusted, so a forged one asked for an 8 GiB+ read.
    path = tmp_path / "t.safetensors"
    path.write_bytes(struct.pack("<Q", 1 << 62) + b"{}")
    for read in (read_safetensors, map_safetensors):
        with pytest.raises(BundleError, match=r"header claims 4611686018427387904 bytes; the "
                                              "file holds 10"):
            read(path, {"level0": (torch.float32, (2, 4))})


def test_a_huge_shape_is_refused_before_allocating(bundle_copy):
    # Regression: the shape was allocated before the byte count was compared (a MemoryError).
    header = {name: {"dtype": "F32", "shape": [1 << 40, 1 << 20], "data_offsets": [0, 16]}
              for name in ("level0", "level1", "level2")}
    safetensors_file(bundle_copy / "tables.safetensors", header, b"\0" * 48)
    reseal(bundle_copy)
    for read in READS.values():
        refused(read, bundle_copy, r"tables.safetensors: tensor 'level0' has shape "
                                   r"\[1099511627776, 1048576\], the manifest needs \[300, 16\]")


def rewrite_graph(bundle: Path, indptr: torch.Tensor, indices: torch.Tensor) -> None:
    save_file({"indptr": indptr, "indices": indices}, str(bundle / "graph.safetensors"))
    reseal(bundle)


def graph_arrays(bundle: Path) -> tuple[torch.Tensor, torch.Tensor]:
    graph = load_file(str(bundle / "graph.safetensors"))
    return graph["indptr"].clone(), graph["indices"].clone()


@pytest.mark.parametrize("damage, match", [
    (lambda p, i: (p, torch.where(i == i.max(), 300, i)), r"outside \[0, 300\): min 0, max 300"),
    (lambda p, i: (p, torch.where(i == i.max(), -1, i)), r"outside \[0, 300\): min -1"),
    (lambda p, i: (p, i.flip(0)), "is not sorted without duplicates"),
    (lambda p, i: (torch.cat([p[:1] + 1, p[1:]]), i), "indptr must start at 0"),
    (lambda p, i: (torch.cat([p[:3], p[3:4] - 3, p[4:]]), i), "indptr must be non-decreasing"),
])
def test_a_damaged_csr_graph_is_refused_at_load_not_at_the_first_batch(bundle_copy, damage,
                                                                       match):
    # Regression: a resealed graph with bad indices was a traceback at the first batch (exit 1).
    rewrite_graph(bundle_copy, *damage(*graph_arrays(bundle_copy)))
    for read in GRAPH_READS.values():
        refused(read, bundle_copy, "graph.safetensors: not a valid CSR graph: .*" + match)


def test_a_graph_with_the_wrong_dtype_or_length_is_refused(bundle_copy):
    indptr, indices = graph_arrays(bundle_copy)
    rewrite_graph(bundle_copy, indptr, indices.int())
    refused(GRAPH_READS["mapped"], bundle_copy, "tensor 'indices' is of dtype 'I32', expected I64")
    rewrite_graph(bundle_copy, indptr[:-1].contiguous(), indices)
    refused(GRAPH_READS["huge_pages"], bundle_copy, r"'indptr' has shape \[300\], the manifest "
                                                    r"needs \[301\]")


def rewrite_tables(bundle: Path, change) -> None:
    tables = {name: t.clone() for name, t in load_file(str(bundle / "tables.safetensors")).items()}
    change(tables)
    save_file(tables, str(bundle / "tables.safetensors"))
    reseal(bundle)


@pytest.mark.parametrize("change, match", [
    (lambda t: t.update(level1=t["level1"][:299].contiguous()),
     r"'level1' has shape \[299, 16\], the manifest needs \[300, 16\]"),  # shorter than the graph
    (lambda t: t.update(level0=t["level0"][:, :8].contiguous()),
     r"'level0' has shape \[300, 8\], the manifest needs \[300, 16\]"),  # narrower than the head
    (lambda t: t.pop("level2"), r"holds tensors \['level0', 'level1'\], expected"),
    (lambda t: t["level2"].__setitem__((17, 3), float("nan")),
     "table level2: row 17 holds nan .column 3.; node tables must be finite"),
    (lambda t: t["level0"].__setitem__((299, 0), float("-inf")),
     "table level0: row 299 holds -inf"),
])
def test_bad_node_tables_are_refused_on_every_read_path(bundle_copy, change, match):
    # Regression: short, narrow or non-finite tables scored garbage or failed mid-run.
    rewrite_tables(bundle_copy, change)
    for read in READS.values():
        refused(read, bundle_copy, match)


def test_an_id_map_of_another_length_is_refused_from_its_footer(bundle_copy):
    ids = pl.read_parquet(bundle_copy / "id_map.parquet")
    ids.head(299).write_parquet(bundle_copy / "id_map.parquet")
    reseal(bundle_copy)
    refused(load_bundle, bundle_copy, r"id_map.parquet: holds 299 ids, the manifest's "
                                      r"spec.num_nodes is 300")
    (bundle_copy / "id_map.parquet").write_bytes(b"PAR1 not really PAR1")
    reseal(bundle_copy)
    refused(load_bundle, bundle_copy, "id_map.parquet: cannot be read as an id map")


def head_refused(bundle: Path, match: str) -> None:
    reseal(bundle)
    refused(lambda p: load_bundle(p).scorer(device="cpu"), bundle, match)


@pytest.mark.parametrize("inputs, output_shape, match", [
    ({"a": ["n", 16], "b": ["n", 16]}, ["n"],
     r"the head takes inputs \['a', 'b'\]; a ncnc bundle's head takes \['cn', 'xij'\]"),
    ({"xij": ["n", 16]}, ["n"], r"the head takes inputs \['xij'\]"),
    ({"cn": ["n", 8], "xij": ["n", 8]}, ["n"],
     r"head input cn is tensor\(float\) \['n', 8\]; expected tensor\(float\) \['num_pairs', "
     r"16\] \(spec.hidden\)"),
    ({"cn": [64, 16], "xij": [64, 16]}, [64], r"head input cn is tensor\(float\) \[64, 16\]"),
    ({"cn": ["n", 16], "xij": ["n", 16]}, ["n", 1], "the head's outputs are"),
])
def test_a_head_with_other_inputs_or_widths_is_refused_before_scoring(bundle_copy, inputs,
                                                                    output_shape, match):
    # Regression: a head with other input names was a traceback at the first batch.
    onnx_head(bundle_copy / "head.onnx", inputs, output_shape)
    head_refused(bundle_copy, "head.onnx: " + match)


def test_a_head_that_is_not_onnx_is_refused(bundle_copy):
    (bundle_copy / "head.onnx").write_bytes(b"\x08\x07garbage" * 50)
    head_refused(bundle_copy, "head.onnx: onnxruntime cannot load the head")


@pytest.mark.parametrize("target", [[3], [1, 2]])
def test_a_head_that_fails_or_misshapes_at_run_time_is_refused(bundle_copy, target):
    # Its declared outputs look right; the two-pair probe finds what running it gives.
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    model = onnx.load(str(onnx_head(bundle_copy / "head.onnx",
                                    {"cn": ["n", 16], "xij": ["n", 16]}, ["n"])))
    model.graph.node[1].output[0] = "summed"
    model.graph.node.append(helper.make_node("Reshape", ["summed", "target"], ["logit"]))
    model.graph.initializer.append(helper.make_tensor("target", TensorProto.INT64,
                                                      [len(target)], target))
    onnx.save(model, str(bundle_copy / "head.onnx"))
    head_refused(bundle_copy, r"head.onnx: the head( fails on two pairs|'s outputs are)")


def test_a_replacement_head_of_the_right_shape_scores(bundle_copy):
    # The checks refuse what cannot run, not what merely differs: a resealed head of the right
    # shape scores (only a signature can refuse it: tests/scorer/test_signing.py).
    onnx_head(bundle_copy / "head.onnx", {"cn": ["n", 16], "xij": ["n", 16]}, ["n"])
    reseal(bundle_copy)
    scored = load_bundle(bundle_copy).scorer(device="cpu").score(PAIRS)
    assert scored.height == 3 and scored["score"].is_finite().all()


def test_a_file_changed_after_export_is_refused(bundle_copy):
    with (bundle_copy / "tables.safetensors").open("r+b") as f:
        f.seek(-4, 2)
        f.write(b"\x00\x01\x02\x03")
    refused(load_bundle, bundle_copy, "tables.safetensors changed since export")


def test_a_truncated_file_is_refused_from_its_size_before_hashing(bundle_copy):
    data = (bundle_copy / "tables.safetensors").read_bytes()
    (bundle_copy / "tables.safetensors").write_bytes(data[:-10])
    refused(lambda p: load_bundle(p, verify=False), bundle_copy,
            r"tables.safetensors changed since export \(57814 bytes, the manifest says 57824\)")


def test_a_missing_file_is_refused(bundle_copy):
    (bundle_copy / "head.onnx").unlink()
    refused(load_bundle, bundle_copy, "head.onnx is missing")


def test_a_file_linked_from_outside_the_bundle_is_refused(bundle_copy, tmp_path):
    outside = tmp_path / "elsewhere.safetensors"
    (bundle_copy / "graph.safetensors").rename(outside)
    (bundle_copy / "graph.safetensors").symlink_to(outside)
    refused(load_bundle, bundle_copy, "graph.safetensors points outside the bundle")


def test_loading_and_scoring_never_unpickles(bundle_dir, no_unpickling):
    from ncnc.scorer.engine import BatchScorer

    bundle = load_bundle(bundle_dir)
    logits = BatchScorer(bundle, "cpu").score_logits(torch.tensor([[0, 1], [2, 3], [1, 1]]))
    assert logits.shape == (3,) and torch.isfinite(logits).all()


def test_not_a_bundle(tmp_path):
    refused(load_bundle, tmp_path, "manifest.json is missing")
    refused(load_bundle, tmp_path / "nothing", "no such directory")


@pytest.mark.parametrize("name", ["../outside.parquet", "/etc/passwd", "sub/../../x"])
def test_manifest_lists_only_the_bundle_files(bundle_copy, name):
    reseal(bundle_copy, lambda m: m["files"].update({name: {"sha256": "0" * 64, "bytes": 1}}))
    refused(load_bundle, bundle_copy, f"field files holds an unknown file '{name}'")


def test_cli_damaged_bundle_contents_exit_2_with_one_line(bundle_copy, tmp_path):
    rewrite_tables(bundle_copy, lambda t: t["level1"].__setitem__((3, 3), float("inf")))
    results = cli_score_and_candidates(bundle_copy, PAIRS, tmp_path)
    assert results["score"].exit_code == 2, results["score"].output
    assert results["score"].output.count("\n") == 1
    assert "table level1: row 3 holds inf" in results["score"].output
    assert not (tmp_path / "out.parquet").exists()
    # candidates reads the graph alone: the tables do not concern it; a bad graph does.
    assert results["candidates"].exit_code == 0, results["candidates"].output
    rewrite_graph(bundle_copy, *(lambda p, i: (p, i.flip(0)))(*graph_arrays(bundle_copy)))
    result = cli_score_and_candidates(bundle_copy, PAIRS, tmp_path)["candidates"]
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert "graph.safetensors: not a valid CSR graph" in result.output


def test_the_scorer_checks_before_any_scoring(bundle_copy, monkeypatch):
    # Nothing is scored from a bundle that fails a check: the engine is never asked.
    from ncnc.scorer import engine

    rewrite_tables(bundle_copy, lambda t: t["level0"].__setitem__((0, 0), float("nan")))
    calls = []
    monkeypatch.setattr(engine, "pair_logits", lambda *a, **k: calls.append(a))
    with pytest.raises(BundleError):
        ncnc.load_bundle(bundle_copy).scorer(device="cpu").score(PAIRS)
    assert calls == []


def test_the_ray_driver_refuses_bad_contents_before_any_actor(bundle_copy, tmp_path):
    # Regression guard: the driver once read the id map only, leaving the arrays to the actors,
    # whose failures reach the driver as Ray tracebacks.
    pytest.importorskip("ray")
    from ncnc.scorer.ray_engine import score_files_ray

    rewrite_tables(bundle_copy, lambda t: t["level0"].__setitem__((5, 1), float("nan")))
    pairs = tmp_path / "pairs.parquet"
    PAIRS.write_parquet(pairs)
    with pytest.raises(BundleError, match="table level0: row 5 holds nan"):
        score_files_ray(bundle_copy, [pairs], tmp_path / "out.parquet", progress=False)
    assert not (tmp_path / "out.parquet").exists()


@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), float("nan")])
def test_a_bf16_table_holding_a_non_finite_value_is_refused_naming_its_row(bad):
    from ncnc.scorer.bundle import _check_finite

    table = torch.randn(70_000, 3).to(torch.bfloat16)  # two blocks of the check
    table[66_000, 2] = bad
    with pytest.raises(BundleError, match=f"row 66000 holds {bad} .column 2.; node tables must "
                                          "be finite"):
        _check_finite(table, "tables.safetensors: table level0")
    table[66_000, 2] = 3.0e38  # the largest bf16 values are finite
    _check_finite(table, "tables.safetensors: table level0")
