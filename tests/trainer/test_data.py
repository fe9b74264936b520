"""trainer/data.py: id maps, edge lists, features, bad input, Planetoid."""

from __future__ import annotations

import logging
import os
import shutil
import stat
from pathlib import Path

import polars as pl
import pytest
import torch

from ncnc.core.errors import InputError
from ncnc.trainer import data
from ncnc.trainer.data import (
    IdMap,
    load_edge_list,
    load_planetoid,
    read_pairs,
    warn_overlapping_pairs,
)
from tests.conftest import PLANETOID

needs_cora = pytest.mark.skipif(
    not (PLANETOID / "Cora" / "raw").is_dir(), reason="Cora raw files not available"
)


# --- IdMap ---------------------------------------------------------------------------------------


def test_id_map_string_ids_round_trip(tmp_path):
    id_map = IdMap.from_ids(["b", "a", "c", "a"])
    assert id_map.ids.to_list() == ["a", "b", "c"]
    assert id_map.is_string and len(id_map) == 3
    index = id_map.to_index(pl.Series(["c", "a", "c"]), what="test")
    assert index.dtype == torch.int64 and index.tolist() == [2, 0, 2]
    assert id_map.to_original(index).to_list() == ["c", "a", "c"]
    id_map.save(tmp_path / "ids.parquet")
    assert pl.read_parquet(tmp_path / "ids.parquet").columns == ["index", "id"]
    assert IdMap.load(tmp_path / "ids.parquet") == id_map


def test_id_map_integer_ids_round_trip(tmp_path):
    id_map = IdMap.from_ids(pl.Series([10, -3, 7, 10], dtype=pl.Int32))
    assert id_map.ids.dtype == pl.Int64 and id_map.ids.to_list() == [-3, 7, 10]
    assert not id_map.is_string
    index = id_map.to_index(pl.Series([10, -3], dtype=pl.Int16), what="test")
    assert index.tolist() == [2, 0]
    assert id_map.to_original(torch.tensor([[1, 2]])).to_list() == [7, 10]
    id_map.save(tmp_path / "ids.parquet")
    assert IdMap.load(tmp_path / "ids.parquet") == id_map
    assert IdMap.from_ids([1, 2]) != IdMap.from_ids(["1", "2"])


def test_id_map_unknown_ids_name_input_count_and_examples():
    id_map = IdMap.from_ids([1, 2, 3])
    with pytest.raises(InputError, match=r"pairs file p.parquet column src: 2 id\(s\).*9, 8"):
        id_map.to_index(pl.Series([1, 9, 8, 9]), what="pairs file p.parquet column src")


def test_id_map_rejects_the_other_id_kind():
    with pytest.raises(InputError, match="ids are string but the graph's node ids are integer"):
        IdMap.from_ids([1, 2]).to_index(pl.Series(["1"]), what="x")
    with pytest.raises(InputError, match="ids are integer but the graph's node ids are string"):
        IdMap.from_ids(["a"]).to_index(pl.Series([1]), what="x")


def test_id_map_to_original_rejects_out_of_range():
    with pytest.raises(IndexError):
        IdMap.from_ids([1, 2]).to_original(torch.tensor([2]))


def test_id_map_load_rejects_a_broken_index(write_parquet):
    path = write_parquet("ids.parquet", index=[0, 2], id=["a", "b"])
    with pytest.raises(InputError, match="column index"):
        IdMap.load(path)


# --- edge lists ----------------------------------------------------------------------------------


def test_edge_list_drops_and_counts_duplicates_and_self_loops(write_parquet, caplog):
    # (1,2), (2,1) and a second (1,2) are one edge; (2,2) is a self loop.
    path = write_parquet("e.parquet", src=[1, 2, 2, 3, 3, 1], dst=[2, 1, 2, 1, 40, 2])
    with caplog.at_level(logging.INFO, logger="ncnc.trainer"):
        graph = load_edge_list(path)
    assert graph.num_nodes == 4
    assert graph.id_map.ids.to_list() == [1, 2, 3, 40]
    assert graph.edges.dtype == torch.int64
    assert graph.edges.tolist() == [[0, 1], [0, 2], [2, 3]]
    assert graph.stats == {
        "rows_read": 6,
        "self_loops_dropped": 1,
        "duplicates_dropped": 2,
        "edges": 3,
    }
    assert graph.features is None
    assert "dropped 1 self loop(s) and 2 duplicate edge(s)" in caplog.text


def test_edge_list_with_string_ids(write_parquet):
    path = write_parquet("e.parquet", src=["carol", "alice", "bob"], dst=["alice", "bob", "alice"])
    graph = load_edge_list(path)
    assert graph.id_map.ids.to_list() == ["alice", "bob", "carol"]
    assert graph.edges.tolist() == [[0, 1], [0, 2]]
    assert graph.stats["duplicates_dropped"] == 1


def test_features_as_columns_with_an_isolated_node(write_parquet):
    edges = write_parquet("e.parquet", src=[5, 7], dst=[7, 9])
    features = write_parquet(
        "f.parquet",
        node=[9, 7, 5, 6],
        a=[9, 7, 5, 6],
        b=[0.9, 0.7, 0.5, 0.6],
        dtypes={"a": pl.Int32},
    )
    graph = load_edge_list(edges, features)
    assert graph.num_nodes == 4  # node 6 appears only in the features file: an isolated node
    assert graph.id_map.ids.to_list() == [5, 6, 7, 9]
    assert graph.edges.tolist() == [[0, 2], [2, 3]]
    assert graph.features.dtype == torch.float32
    expected = torch.tensor([[5, 0.5], [6, 0.6], [7, 0.7], [9, 0.9]], dtype=torch.float32)
    torch.testing.assert_close(graph.features, expected)


@pytest.mark.parametrize("dtype", [pl.List(pl.Float32), pl.Array(pl.Float64, 3)])
def test_features_as_one_list_column(write_parquet, dtype):
    edges = write_parquet("e.parquet", src=["x"], dst=["y"])
    features = write_parquet(
        "f.parquet", node=["y", "x"], vec=[[4.0, 5.0, 6.0], [1.0, 2.0, 3.0]], dtypes={"vec": dtype}
    )
    graph = load_edge_list(edges, features)
    torch.testing.assert_close(graph.features, torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]))


def test_read_pairs_maps_original_ids(write_parquet):
    graph = load_edge_list(write_parquet("e.parquet", src=["a", "b"], dst=["b", "c"]))
    pairs = read_pairs(write_parquet("p.parquet", src=["c", "a"], dst=["a", "b"]), graph.id_map)
    assert pairs.tolist() == [[2, 0], [0, 1]]
    empty = read_pairs(
        write_parquet("q.parquet", src=[], dst=[], dtypes={"src": pl.String, "dst": pl.String}),
        graph.id_map,
    )
    assert empty.shape == (0, 2) and empty.dtype == torch.int64


def test_read_pairs_rejects_unknown_ids(write_parquet):
    graph = load_edge_list(write_parquet("e.parquet", src=[1], dst=[2]))
    with pytest.raises(InputError, match=r"pairs file .*p.parquet column dst: 1 id\(s\).*: 99"):
        read_pairs(write_parquet("p.parquet", src=[1, 2], dst=[99, 1]), graph.id_map)


# --- bad input -----------------------------------------------------------------------------------


def _not_parquet(tmp_path: Path) -> Path:
    path = tmp_path / "e.parquet"
    path.write_text("src,dst\n1,2\n")
    return path


BAD_EDGES = {
    "missing column": (
        lambda w, t: w("e.parquet", src=[1], target=[2]),
        r"missing column\(s\) dst \(columns present: src, target\)",
    ),
    "nulls": (
        lambda w, t: w("e.parquet", src=[1, None, 3], dst=[2, 3, 1]),
        r"column src: 1 null value\(s\), in rows 1",
    ),
    "not parquet": (lambda w, t: _not_parquet(t), "cannot be read as Parquet"),
    "no file": (lambda w, t: t / "nope.parquet", "no such file"),
    "mixed id kinds": (
        lambda w, t: w("e.parquet", src=[1, 2], dst=["a", "b"]),
        "src is integer .* dst is string",
    ),
    "float ids": (
        lambda w, t: w("e.parquet", src=[1.5], dst=[2.0]),
        r"column src: ids must be integers or strings, got Float64 \(examples: 1.5\)",
    ),
    "no rows": (
        lambda w, t: w("e.parquet", src=[], dst=[], dtypes={"src": pl.Int64, "dst": pl.Int64}),
        "has no rows",
    ),
    "only self loops": (
        lambda w, t: w("e.parquet", src=[1, 2], dst=[1, 2]),
        r"no edges left after dropping 2 self loop",
    ),
}


@pytest.mark.parametrize("case", BAD_EDGES, ids=list(BAD_EDGES))
def test_bad_edges_file_is_rejected(case, write_parquet, tmp_path):
    make, message = BAD_EDGES[case]
    path = make(write_parquet, tmp_path)
    with pytest.raises(InputError, match=message) as info:
        load_edge_list(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


BAD_FEATURES = {
    "missing nodes": (
        dict(node=[1], f=[1.0]),
        r"column node: 2 node\(s\) of the edges file have no feature row: 2, 3",
    ),
    "no node column": (dict(id=[1, 2, 3], f=[1.0, 2.0, 3.0]), "missing column node"),
    "id kind mismatch": (
        dict(node=["1", "2", "3"], f=[1.0, 2.0, 3.0]),
        "ids are string but the edges file's ids are integer",
    ),
    "non-numeric column": (
        dict(node=[1, 2, 3], f=["a", "b", "c"]),
        "column f: feature columns must be numeric, got String",
    ),
    "nulls": (dict(node=[1, 2, 3], f=[1.0, None, 3.0]), r"column f: 1 null value\(s\), in rows 1"),
    "NaN": (
        dict(node=[1, 2, 3], f=[1.0, float("nan"), 3.0]),
        r"1 node\(s\) have NaN or infinite features: 2",
    ),
    "ragged lists": (
        dict(node=[1, 2, 3], v=[[1.0], [1.0, 2.0], [3.0]]),
        "lists have different lengths .* nodes with another length: 2",
    ),
    "null inside a list": (
        dict(node=[1, 2, 3], v=[[1.0], [None], [3.0]]),
        "lists hold null values, for nodes 2",
    ),
    "list and columns": (
        dict(node=[1, 2, 3], v=[[1.0]] * 3, f=[1.0] * 3),
        "either one list column or numeric columns",
    ),
    "duplicate nodes": (
        dict(node=[1, 2, 3, 3], f=[1.0] * 4),
        r"1 node\(s\) have more than one row: 3",
    ),
    "no feature columns": (dict(node=[1, 2, 3]), "no feature columns"),
}


@pytest.mark.parametrize("case", BAD_FEATURES, ids=list(BAD_FEATURES))
def test_bad_features_file_is_rejected(case, write_parquet):
    columns, message = BAD_FEATURES[case]
    edges = write_parquet("e.parquet", src=[1, 2], dst=[2, 3])
    features = write_parquet("f.parquet", **columns)
    with pytest.raises(InputError, match=message) as info:
        load_edge_list(edges, features)
    assert str(features) in str(info.value) and "\n" not in str(info.value)


# --- Planetoid -----------------------------------------------------------------------------------


def test_unknown_planetoid_name_lists_the_choices(tmp_path):
    with pytest.raises(
        InputError, match="unknown Planetoid dataset 'corra'; choose one of cora, citeseer, pubmed"
    ):
        load_planetoid("corra", tmp_path)


@pytest.fixture(scope="module")
def cora_root(tmp_path_factory) -> Path:
    """A writable copy of the shared Cora raw files (the shared folder is read-only in CI)."""
    root = tmp_path_factory.mktemp("planetoid")
    shutil.copytree(PLANETOID / "Cora" / "raw", root / "Cora" / "raw")
    return root


def _assert_is_cora(graph) -> None:
    assert graph.num_nodes == 2708
    assert graph.edges.shape == (5278, 2) and graph.stats["edges"] == 5278
    assert bool((graph.edges[:, 0] < graph.edges[:, 1]).all())
    assert graph.features.shape == (2708, 1433) and graph.features.dtype == torch.float32
    assert graph.id_map.ids.to_list()[:3] == [0, 1, 2] and not graph.id_map.is_string


@needs_cora
def test_cora_loads_from_raw_files(cora_root):
    _assert_is_cora(load_planetoid("CORA", cora_root))
    assert (cora_root / "Cora" / "processed" / "data.pt").is_file()


@needs_cora
def test_cora_loads_from_a_read_only_folder(tmp_path, monkeypatch):
    read_only = tmp_path / "read_only"
    shutil.copytree(PLANETOID / "Cora" / "raw", read_only / "Cora" / "raw")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    if os.geteuid() == 0:  # root writes through permission bits: fake the read-only mount instead
        is_writable = data._is_writable
        monkeypatch.setattr(
            data, "_is_writable", lambda p: read_only not in p.parents and is_writable(p)
        )
    for folder in (read_only / "Cora", read_only):
        folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        _assert_is_cora(load_planetoid("cora", read_only))
    finally:
        for folder in (read_only, read_only / "Cora"):
            folder.chmod(stat.S_IRWXU)
    assert not (read_only / "Cora" / "processed").exists()
    assert (
        tmp_path / "cache" / "ncnc" / "planetoid-copy" / "Cora" / "processed" / "data.pt"
    ).is_file()


# --- checked after the cast to float32 ----------------------------------------------------------


@pytest.mark.parametrize("columns, dtypes, named", [
    (dict(node=[1, 2, 3], a=[0.5, 0.5, 0.5], f=[1.0, 1e39, -3e300]), None, "'f'"),
    (dict(node=[1, 2, 3], v=[[0.0, 1.0], [0.0, 1e39], [0.0, -3e300]]),
     {"v": pl.Array(pl.Float64, 2)}, "'v[1]'"),
    (dict(node=[1, 2, 3], v=[[0.0, 1.0], [0.0, 1e39], [0.0, -3e300]]),
     {"v": pl.List(pl.Float64)}, "'v[1]'"),
], ids=["columns", "array column", "list column"])
def test_float64_features_that_overflow_float32_are_refused(write_parquet, columns, dtypes,
                                                            named):
    # Regression: the finite check ran on float64, before the cast to float32 made these
    # infinite, and training then learnt NaN weights and exited 0.
    edges = write_parquet("e.parquet", src=[1, 2], dst=[2, 3])
    features = write_parquet("f.parquet", dtypes=dtypes, **columns)
    with pytest.raises(InputError) as info:
        load_edge_list(edges, features)
    message = str(info.value)
    assert f"features file {features} column {named}: 2 node(s) have features beyond " \
           "float32's range" in message
    assert "2, 3 (values: 1e+39, -3e+300)" in message and "\n" not in message


def test_float64_features_inside_float32s_range_are_kept_as_float32(write_parquet):
    edges = write_parquet("e.parquet", src=[1], dst=[2])
    features = write_parquet("f.parquet", node=[1, 2], f=[3e38, -1e-50])  # -1e-50 underflows
    graph = load_edge_list(edges, features)
    assert graph.features.dtype == torch.float32
    assert graph.features[:, 0].tolist() == [pytest.approx(3e38, rel=1e-6), 0.0]


def test_overlapping_pairs_warn_once_with_the_count_and_examples(write_parquet, caplog):
    graph = load_edge_list(write_parquet("e.parquet", src=["a", "b", "c"], dst=["b", "c", "d"]))
    pos = torch.tensor([[0, 1], [2, 1], [0, 3], [2, 1]])  # a-b, c-b twice, a-d
    neg = torch.tensor([[1, 2], [3, 2], [1, 0]])  # b-c (= c-b reversed), d-c, b-a
    assert warn_overlapping_pairs(pos, neg, graph.id_map, Path("p"), Path("n")) == 3
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == ["pairs files p and n: 3 positive pair(s) are also negatives (the same "
                        "unordered pair in both): ('a', 'b'), ('c', 'b'); each counts as both, "
                        "which lowers every metric"]
    caplog.clear()
    assert warn_overlapping_pairs(pos[2:3], neg, graph.id_map, Path("p"), Path("n")) == 0
    assert not caplog.records
