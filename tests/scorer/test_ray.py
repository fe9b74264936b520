"""The Ray engine: the same output as the single-process scorer, bit for bit and tie for tie.

Each Ray job starts its actors afresh (seconds each on a 2-core machine), so the tests run few
jobs, each covering several things.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner

from ncnc.cli import cli
from ncnc.core.errors import InputError
from ncnc.scorer.job import score_files, score_table
from ncnc.scorer.ray_engine import RayOptions, ScoreBatches, plan_partitions, score_files_ray

# Small batches and partitions, so that 60k rows make several partitions per actor.
BATCH = 2048
PARTITION = 4 * BATCH
RAY = RayOptions(num_workers=2, partition_rows=PARTITION)
ROWS = 60_000
STRAYS = 4000  # rows with an unknown id, skipped


def string_pairs(rng: np.random.Generator, rows: int) -> pl.DataFrame:
    ids = np.array([f"n{k}" for k in range(300)])
    return pl.DataFrame({"src": ids[rng.integers(0, 300, rows)],
                         "dst": ids[rng.integers(0, 300, rows)]})


@pytest.fixture(scope="module")
def pair_files(tmp_path_factory) -> list[Path]:
    """60,000 pairs of n0..n299 in four files (one empty, odd sizes, small row groups), then a
    file of 6,000 rows of which 4,000 hold an unknown id.

    Random pairs over 300 nodes repeat (a quarter of them: 90,000 possible pairs), so equal
    scores at different input positions abound: the tie rule decides many ranks.
    """
    folder = tmp_path_factory.mktemp("ray_pairs")
    rng = np.random.default_rng(7)
    frames = [string_pairs(rng, rows) for rows in (24_000, 0, 18_001, 17_999)]
    frames.append(pl.DataFrame({"src": ["n1", "zz", "n2"] * 2000, "dst": ["n4", "n5", "yy"] * 2000}))
    files = [folder / f"part{k}.parquet" for k in range(len(frames))]
    for frame, path in zip(frames, files):
        frame.write_parquet(path, row_group_size=10_000)
    return files


@pytest.fixture(scope="module")
def local_scorer(bundle_dir):
    from ncnc.scorer.bundle import load_bundle
    from ncnc.scorer.engine import BatchScorer

    bundle = load_bundle(bundle_dir)
    return BatchScorer(bundle, "cpu"), bundle.id_map


def assert_same_file(got: Path, expected: Path) -> None:
    got_frame, expected_frame = pl.read_parquet(got), pl.read_parquet(expected)
    assert got_frame.schema == expected_frame.schema
    assert got_frame.select("src", "dst").equals(expected_frame.select("src", "dst"))
    for column in ("score", "prob"):  # the same bits, not merely close values
        assert np.array_equal(got_frame[column].to_numpy().view(np.uint32),
                              expected_frame[column].to_numpy().view(np.uint32))
    assert got_frame.equals(expected_frame)


@pytest.mark.parametrize("top_k", [None, 500], ids=["all rows", "global top 500"])
def test_ray_output_equals_the_single_process_scorer(ray_runtime, bundle_dir, pair_files,
                                                     local_scorer, tmp_path, top_k):
    scorer, id_map = local_scorer
    expected, got = tmp_path / "local.parquet", tmp_path / "ray.parquet"
    local = score_files(scorer, id_map, pair_files, expected, top_k=top_k, batch_size=BATCH,
                        on_unknown="skip", progress=False)
    report = score_files_ray(bundle_dir, pair_files, got, top_k=top_k, batch_size=BATCH,
                             on_unknown="skip", device="cpu", progress=False, options=RAY)
    assert_same_file(got, expected)
    if top_k is not None:  # ties really decided ranks: equal scores among the kept rows
        assert pl.read_parquet(got)["score"].is_duplicated().any()
    assert report["engine"] == "ray" and report["num_workers"] == 2
    for key in ("inputs", "rows_read", "rows_scored", "rows_skipped", "skipped", "rows_written",
                "top_k", "per_source", "batch_size"):
        assert report[key] == local[key], key
    assert report["rows_read"] == ROWS + 6000 and report["rows_skipped"] == STRAYS
    assert sorted(p.name for p in tmp_path.iterdir()) == ["local.parquet", "ray.parquet"]


def test_cli_engine_ray_per_source_top_k(ray_runtime, bundle_dir, pair_files, tmp_path):
    common = ["score", "--quiet", "--bundle", str(bundle_dir), "--pairs",
              str(pair_files[0].parent), "--top-k", "2", "--per-source", "--batch-size",
              str(BATCH), "--device", "cpu", "--on-unknown", "skip"]
    local = CliRunner().invoke(cli, [*common, "--out", str(tmp_path / "local.parquet")])
    assert local.exit_code == 0, local.output
    result = CliRunner().invoke(cli, [*common, "--out", str(tmp_path / "ray.parquet"),
                                      "--engine", "ray", "--num-workers", "2",
                                      "--report", str(tmp_path / "report.json")])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report == json.loads((tmp_path / "report.json").read_text())
    assert report["bundle"] == str(bundle_dir) and report["device"] == "cpu"
    assert report["rows_written"] == 600  # 300 sources x 2
    assert_same_file(tmp_path / "ray.parquet", tmp_path / "local.parquet")
    ranked = pl.read_parquet(tmp_path / "ray.parquet")
    assert ranked.select("src", "score").is_duplicated().any()  # ties within a source


def test_bad_input_found_by_an_actor_is_the_local_one_line_error(ray_runtime, bundle_dir,
                                                                 pair_files, local_scorer,
                                                                 tmp_path):
    scorer, id_map = local_scorer
    good = tmp_path / "good.parquet"
    pl.read_parquet(pair_files[2]).head(3000).write_parquet(good)
    inputs = [good, pair_files[-1]]
    with pytest.raises(InputError) as local_error:
        score_files(scorer, id_map, inputs, tmp_path / "x.parquet", progress=False)
    out = tmp_path / "out.parquet"
    out.write_bytes(b"earlier output")
    with pytest.raises(InputError) as ray_error:
        score_files_ray(bundle_dir, inputs, out, device="cpu", progress=False,
                        options=RayOptions(num_workers=1))
    assert str(ray_error.value) == str(local_error.value)
    assert str(ray_error.value).endswith(
        "part4.parquet column src: 1 id(s) are not nodes of the graph: 'zz'")
    assert out.read_bytes() == b"earlier output"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.parquet", "out.parquet"]


def test_ray_with_verify_key_scores_the_verified_bundle(ray_runtime, signed_bundle, key_pair,
                                                        pair_files, local_scorer, tmp_path):
    # The driver verifies the signature; the actors (no key given to them) check the digest.
    scorer, id_map = local_scorer
    pairs = tmp_path / "pairs.parquet"
    pl.read_parquet(pair_files[2]).head(3000).write_parquet(pairs)
    score_files(scorer, id_map, [pairs], tmp_path / "local.parquet", progress=False)
    score_files_ray(signed_bundle, [pairs], tmp_path / "ray.parquet", device="cpu",
                    progress=False, options=RayOptions(num_workers=1), verify_key=key_pair[1])
    assert_same_file(tmp_path / "ray.parquet", tmp_path / "local.parquet")
    scored = ScoreBatches(signed_bundle, "cpu", verify_key=key_pair[1])(
        pl.read_parquet(pairs).to_arrow())
    assert pl.DataFrame(pl.from_arrow(scored)).equals(pl.read_parquet(tmp_path / "local.parquet"))


@pytest.mark.parametrize("batch_format", ["pyarrow", "pandas"])
def test_score_batches_scores_arrow_and_pandas_like_score_table(bundle_dir, pair_files,
                                                                local_scorer, batch_format):
    scorer, id_map = local_scorer
    pairs = pl.read_parquet(pair_files[2]).head(3000).with_columns(i=pl.int_range(3000))
    batch = pairs.to_pandas() if batch_format == "pandas" else pairs.to_arrow()
    scored = ScoreBatches(bundle_dir, "cpu")(batch)
    assert type(scored) is type(batch)
    got = pl.from_pandas(scored) if batch_format == "pandas" else pl.DataFrame(
        pl.from_arrow(scored))
    assert got.equals(score_table(scorer, id_map, pairs))


def test_score_batches_in_map_batches(ray_runtime, bundle_dir, pair_files, local_scorer):
    scorer, id_map = local_scorer
    pairs = pl.read_parquet(pair_files[2]).head(5000).with_columns(i=pl.int_range(5000))
    ds = ray_runtime.data.from_arrow(pairs.to_arrow(compat_level=pl.CompatLevel.oldest()))
    scored = ds.map_batches(ScoreBatches, fn_constructor_args=(str(bundle_dir), "cpu"),
                            batch_size=700, batch_format="pyarrow",
                            compute=ray_runtime.data.ActorPoolStrategy(size=1))
    blocks = scored.iter_batches(batch_size=None, batch_format="pyarrow")
    got = pl.concat([pl.DataFrame(pl.from_arrow(b)) for b in blocks]).sort("i")
    assert got.equals(score_table(scorer, id_map, pairs))


def test_plan_partitions_cover_every_row_once_within_files():
    parts = plan_partitions([10, 0, 7, 4], batch_size=2, partition_rows=4)
    assert [(p.index, p.start, p.stop) for p in parts] == [
        (0, 0, 4), (1, 4, 8), (2, 8, 10), (3, 10, 14), (4, 14, 17), (5, 17, 21)]
    with pytest.raises(ValueError, match="not a multiple"):
        plan_partitions([10], batch_size=4, partition_rows=6)


def test_engine_ray_without_ray_installed_exits_2_with_the_install_hint(monkeypatch, tmp_path):
    for name in [m for m in sys.modules if m == "ray" or m.startswith("ray.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    out = tmp_path / "out.parquet"
    result = CliRunner().invoke(cli, ["score", "--quiet", "--bundle", str(tmp_path), "--pairs",
                                      str(tmp_path / "p.parquet"), "--out", str(out),
                                      "--engine", "ray"])
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines() == [
        "error: --engine ray needs Ray Data, which is not installed: pip install 'ncnc-toolchain[ray]'"]
    assert not out.exists()


def test_ray_only_options_need_engine_ray(tmp_path):
    result = CliRunner().invoke(cli, ["score", "--bundle", str(tmp_path), "--pairs", "p.parquet",
                                      "--out", str(tmp_path / "o.parquet"), "--num-workers", "2"])
    assert result.exit_code == 2 and "need --engine ray" in result.output


def test_importing_the_scorer_and_the_cli_does_not_import_ray():
    import subprocess

    code = ("import sys, ncnc.cli, ncnc.scorer.job, ncnc.scorer.inputs, ncnc.scorer.engine, "
            "ncnc.scorer.ray_engine\n"
            "print('ray' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "False"
