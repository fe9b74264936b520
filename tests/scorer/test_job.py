"""The score job: per-table scoring, streaming equals one pass, top K, report, bad input, CLI."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from click.testing import CliRunner

from ncnc.cli import cli
from ncnc.core.errors import InputError
from ncnc.core.ids import IdMap
from ncnc.scorer.job import score_files, score_table
from tests.scorer.conftest import random_pairs
from tests.scorer.test_ranking import full_sort_top_k


def expected_scores(id_map, pairs: pl.DataFrame) -> pl.DataFrame:
    """What the fake scorer gives, computed in one in-memory pass."""
    src = id_map.to_index(pairs["src"], what="src")
    dst = id_map.to_index(pairs["dst"], what="dst")
    score = ((31 * src + 17 * dst) % 7).to(torch.float32)
    return pairs.with_columns(
        pl.Series("score", score.numpy(), dtype=pl.Float32),
        pl.Series("prob", torch.sigmoid(score.double()).float().numpy(), dtype=pl.Float32),
    )


# IdMap.lookup, the per-batch id mapping -----------------------------------------------------

@pytest.mark.parametrize("ids", [
    list(range(-5, 95)),  # compact integers: dense table
    [k * 1000 for k in range(100)],  # sparse integers: binary search
    [f"id{k}" for k in range(100)],  # strings: binary search
], ids=["dense", "sparse", "strings"])
@pytest.mark.parametrize("sorted_ids", [True, False])
def test_id_lookup_agrees_with_a_dict(ids, sorted_ids):
    id_map = IdMap.from_ids(ids)
    if not sorted_ids:  # a map read from a file need not be sorted: the hash path
        id_map = IdMap(id_map.ids.reverse())
    position = {v: i for i, v in enumerate(id_map.ids.to_list())}
    rng = np.random.default_rng(0)
    strays = ["nope", "id", "zzz"] if isinstance(ids[0], str) else [
        -6, 95, 999, 2**63 - 1, -(2**63), 7]
    values = [ids[i] for i in rng.integers(0, 100, 200)] + strays + [None]
    index, known = id_map.lookup(pl.Series(values), what="x")
    assert index.tolist() == [position.get(v, -1) for v in values]
    assert known.tolist() == [v in position for v in values]


# score_table ---------------------------------------------------------------------------------

def test_score_table_keeps_rows_and_extra_columns(fake_scorer, string_ids):
    pairs = random_pairs(string_ids, 9).with_columns(label=pl.int_range(9))
    scored = score_table(fake_scorer, string_ids, pairs)
    assert scored.columns == ["src", "dst", "label", "score", "prob"]
    assert scored.equals(expected_scores(string_ids, pairs))


def test_score_table_of_no_rows(fake_scorer, int_ids):
    empty = pl.DataFrame(schema={"src": pl.Int32, "dst": pl.Int32})
    scored = score_table(fake_scorer, int_ids, empty)
    assert scored.height == 0 and scored.schema["src"] == pl.Int64  # the graph's id dtype


def test_score_table_unknown_ids_error_or_skip(fake_scorer, int_ids):
    pairs = pl.DataFrame({"src": [1000, 5, 1001, 1002], "dst": [1003, 1004, 7, 1005]})
    with pytest.raises(InputError, match="x.parquet column src: 1 id\\(s\\) are not nodes of the "
                                         "graph: 5"):
        score_table(fake_scorer, int_ids, pairs, what="x.parquet")
    scored = score_table(fake_scorer, int_ids, pairs, on_unknown="skip")
    assert scored.select("src", "dst").rows() == [(1000, 1003), (1002, 1005)]


def test_score_table_rejects_missing_columns_nulls_and_id_kind(fake_scorer, int_ids):
    with pytest.raises(InputError, match=r"missing column\(s\) dst"):
        score_table(fake_scorer, int_ids, pl.DataFrame({"src": [1000]}))
    with pytest.raises(InputError, match=r"column src: 1 null value\(s\), in rows 1"):
        score_table(fake_scorer, int_ids, pl.DataFrame({"src": [1000, None], "dst": [1001, 1002]}))
    with pytest.raises(InputError, match="ids are string but the graph's node ids are integer"):
        score_table(fake_scorer, int_ids, pl.DataFrame({"src": ["1000"], "dst": ["1001"]}))


# score_files with a fake scorer --------------------------------------------------------------

def run(fake_scorer, id_map, pairs, out, **kwargs) -> dict:
    return score_files(fake_scorer, id_map, pairs, out, progress=False, **kwargs)


@pytest.fixture
def three_files(write_pairs, string_ids) -> tuple[list[Path], pl.DataFrame]:
    """Three files (61, 0 and 130 rows, row groups of 9) and their concatenation."""
    frames = [random_pairs(string_ids, n, seed=k) for k, n in enumerate([61, 0, 130])]
    files = [write_pairs(f, f"in/part{k}.parquet", row_group_size=9) for k, f in enumerate(frames)]
    return files, pl.concat(frames)


@pytest.mark.parametrize("batch_size", [1, 10, 64, 100_000])
def test_streamed_output_equals_one_in_memory_pass(fake_scorer, string_ids, three_files, tmp_path,
                                                   batch_size):
    files, pairs = three_files
    out = tmp_path / "scored.parquet"
    report = run(fake_scorer, string_ids, files, out, batch_size=batch_size)
    assert pl.read_parquet(out).equals(expected_scores(string_ids, pairs))
    assert max(fake_scorer.calls) <= batch_size
    assert report["rows_read"] == report["rows_scored"] == report["rows_written"] == 191


def test_folder_and_glob_inputs_read_files_in_name_order(fake_scorer, string_ids, three_files,
                                                         tmp_path):
    files, pairs = three_files
    folder = files[0].parent
    for given in ([folder], [str(folder / "part*.parquet")], [files[2], files[0]]):
        out = tmp_path / "scored.parquet"
        run(fake_scorer, string_ids, given, out, batch_size=50)
        ordered = pairs if given != [files[2], files[0]] else pl.concat(
            [pl.read_parquet(files[2]), pl.read_parquet(files[0])])
        assert pl.read_parquet(out).equals(expected_scores(string_ids, ordered))


@pytest.mark.parametrize("per_source", [False, True])
@pytest.mark.parametrize("k", [1, 5, 1000])
def test_top_k_equals_a_full_sort_with_the_tie_rule(fake_scorer, string_ids, three_files,
                                                    tmp_path, per_source, k):
    files, pairs = three_files
    out = tmp_path / "top.parquet"
    report = run(fake_scorer, string_ids, files, out, top_k=k, per_source=per_source,
                 batch_size=17)
    every = expected_scores(string_ids, pairs).with_columns(row=pl.int_range(pairs.height))
    assert pl.read_parquet(out).equals(full_sort_top_k(every, k, per_source).drop("row"))
    assert report["rows_written"] == pl.read_parquet(out).height


def test_skip_unknown_ids_counts_them_in_the_report(fake_scorer, string_ids, write_pairs,
                                                    tmp_path):
    pairs = pl.DataFrame({"src": ["v001", "zz", "v002", "v003"], "dst": ["v004", "v005", "yy",
                                                                         "v006"]})
    path = write_pairs(pairs, "pairs.parquet")
    report = run(fake_scorer, string_ids, [path], tmp_path / "out.parquet", on_unknown="skip")
    assert report["rows_read"] == 4 and report["rows_scored"] == 2
    assert report["rows_skipped"] == 2 and report["skipped"] == {"unknown_id": 2}
    assert pl.read_parquet(tmp_path / "out.parquet")["src"].to_list() == ["v001", "v003"]


def test_empty_input_writes_an_empty_file_with_the_schema(fake_scorer, int_ids, write_pairs,
                                                          tmp_path):
    path = write_pairs(pl.DataFrame(schema={"src": pl.Int64, "dst": pl.Int64}), "e.parquet")
    out = tmp_path / "out.parquet"
    run(fake_scorer, int_ids, [path], out, top_k=3)
    assert pl.read_parquet(out).schema == pl.Schema(
        {"src": pl.Int64, "dst": pl.Int64, "score": pl.Float32, "prob": pl.Float32,
         "rank": pl.Int64})


BAD_CASES = ["missing column", "nulls", "unknown ids", "wrong type", "not parquet", "truncated"]


def bad_files(tmp_path: Path, write_pairs, a: str = "v001", b: str = "v002"
              ) -> dict[str, tuple[Path, str]]:
    """Bad pair files (``a``, ``b``: known ids) and the message each must give."""
    not_parquet = tmp_path / "bad" / "text.parquet"
    not_parquet.parent.mkdir(parents=True, exist_ok=True)
    not_parquet.write_text(f"src,dst\n{a},{b}\n")
    truncated = write_pairs(pl.DataFrame({"src": [a] * 500, "dst": [b] * 500}),
                            "bad/truncated.parquet")
    truncated.write_bytes(truncated.read_bytes()[:-100])
    return {
        "missing column": (write_pairs(pl.DataFrame({"src": [a], "to": [b]}),
                                       "bad/missing.parquet"), r"missing column\(s\) dst"),
        "nulls": (write_pairs(pl.DataFrame({"src": [a] * 30, "dst": [b] * 29 + [None]}),
                              "bad/nulls.parquet", row_group_size=4),
                  r"nulls.parquet column dst: 1 null value\(s\), in rows 29"),
        "unknown ids": (write_pairs(pl.DataFrame({"src": [a, "x9", "x8"], "dst": [b] * 3}),
                                    "bad/unknown.parquet"),
                        r"unknown.parquet column src: 2 id\(s\) are not nodes of the graph: "
                        r"'x9', 'x8'"),
        "wrong type": (write_pairs(pl.DataFrame({"src": [1.0], "dst": [2.0]}),
                                   "bad/floats.parquet"), "column src: ids are Float64"),
        "not parquet": (not_parquet, "text.parquet: cannot be read as Parquet"),
        "truncated": (truncated, "truncated.parquet: cannot be read as Parquet"),
    }


@pytest.mark.parametrize("case", BAD_CASES)
def test_one_bad_file_among_several_keeps_the_earlier_output(fake_scorer, string_ids, three_files,
                                                             write_pairs, tmp_path, case):
    files, _ = three_files
    bad, message = bad_files(tmp_path, write_pairs)[case]
    out = tmp_path / "out" / "scored.parquet"
    out.parent.mkdir()
    out.write_bytes(b"earlier output")
    with pytest.raises(InputError, match=message):
        run(fake_scorer, string_ids, [files[0], bad, files[2]], out, batch_size=8)
    assert out.read_bytes() == b"earlier output"
    assert [p.name for p in out.parent.iterdir()] == ["scored.parquet"]


def test_refuses_to_write_over_an_input(fake_scorer, string_ids, three_files):
    files, _ = three_files
    before = files[2].read_bytes()
    with pytest.raises(InputError, match="is also an input"):
        run(fake_scorer, string_ids, [files[0].parent], files[2])
    assert files[2].read_bytes() == before


def test_report_fields(fake_scorer, string_ids, three_files, tmp_path):
    files, _ = three_files
    report = run(fake_scorer, string_ids, files, tmp_path / "out.parquet", top_k=4,
                 per_source=True, batch_size=32)
    assert report["inputs"] == [str(f) for f in files]
    assert report["output"] == str(tmp_path / "out.parquet")
    assert (report["rows_read"], report["rows_scored"], report["rows_skipped"]) == (191, 191, 0)
    assert report["skipped"] == {} and report["top_k"] == 4 and report["per_source"] is True
    assert report["batch_size"] == 32 and report["seconds"] >= 0
    assert report["pairs_per_second"] > 0 and report["peak_rss_mib"] > 10


# the CLI on a real bundle --------------------------------------------------------------------

def invoke(*args: str):
    return CliRunner().invoke(cli, ["score", "--quiet", *args])


@pytest.fixture
def bundle_pairs(write_pairs) -> list[Path]:
    rng = np.random.default_rng(3)
    ids = [f"n{k}" for k in range(300)]
    frames = [pl.DataFrame({"src": rng.choice(ids, n), "dst": rng.choice(ids, n)})
              for n in (700, 333)]
    return [write_pairs(f, f"pairs/{k}.parquet", row_group_size=100) for k, f in enumerate(frames)]


def test_cli_score_matches_the_engine_and_writes_the_report(bundle_dir, bundle_pairs, tmp_path):
    from ncnc.scorer.bundle import load_bundle
    from ncnc.scorer.engine import BatchScorer

    out, report_path = tmp_path / "scored.parquet", tmp_path / "report.json"
    # Two paths after one --pairs (the second a quoted glob).
    result = invoke("--bundle", str(bundle_dir), "--pairs", str(bundle_pairs[0]),
                    str(bundle_pairs[1].parent / "1*.parquet"), "--out", str(out),
                    "--batch-size", "256", "--device", "cpu", "--report", str(report_path))
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report == json.loads(report_path.read_text())
    assert report["bundle"] == str(bundle_dir) and report["rows_scored"] == 1033

    bundle = load_bundle(bundle_dir)
    pairs = pl.concat([pl.read_parquet(p) for p in bundle_pairs])
    index = torch.stack([bundle.id_map.to_index(pairs[c], what=c) for c in ("src", "dst")], 1)
    expected = BatchScorer(bundle, "cpu").score_logits(index)
    scored = pl.read_parquet(out)
    assert scored.select("src", "dst").equals(pairs)
    got = torch.tensor(scored["score"].to_numpy())
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.tensor(scored["prob"].to_numpy()), torch.sigmoid(got))


def test_cli_score_top_k_per_source(bundle_dir, bundle_pairs, tmp_path):
    out = tmp_path / "top.parquet"
    result = invoke("--bundle", str(bundle_dir), "--pairs", str(bundle_pairs[0].parent),
                    "--out", str(out), "--top-k", "3", "--per-source")
    assert result.exit_code == 0, result.output
    top = pl.read_parquet(out)
    assert top.columns == ["src", "dst", "score", "prob", "rank"]
    assert top.group_by("src").len()["len"].max() <= 3
    assert top.filter(pl.col("rank") == 1).height == top["src"].n_unique()


@pytest.mark.parametrize("case", BAD_CASES)
def test_cli_score_bad_input_exits_2_and_keeps_the_earlier_output(bundle_dir, bundle_pairs,
                                                                  tmp_path, write_pairs, case):
    bad, message = bad_files(tmp_path, write_pairs, "n1", "n2")[case]
    out = tmp_path / "out" / "scored.parquet"
    out.parent.mkdir()
    out.write_bytes(b"earlier output")
    result = invoke("--bundle", str(bundle_dir), "--pairs", str(bundle_pairs[0]), str(bad),
                    str(bundle_pairs[1]), "--out", str(out))
    assert result.exit_code == 2, result.output
    assert re.search(message, result.output) and "Traceback" not in result.output
    assert out.read_bytes() == b"earlier output"
    assert [p.name for p in out.parent.iterdir()] == ["scored.parquet"]


def test_an_internal_failure_exits_1_with_a_traceback(bundle_dir, bundle_pairs, tmp_path):
    """A failure that is no fault of the input (here a scoring step that raises, standing in for a
    bug) is not the user's input error: exit 1, with the traceback for the bug report. (A head
    onnxruntime cannot load is a damaged bundle, exit 2: tests/scorer/test_bundle.py.)"""
    import subprocess
    import sys

    out = tmp_path / "scored.parquet"
    crash = ("import sys, ncnc.scorer.engine as engine\n"
             "def broken(*args, **kwargs):\n    raise RuntimeError('a bug')\n"
             "engine.pair_logits = broken\n"
             "from ncnc.cli import main\nsys.argv[0] = 'ncnc'\nmain()\n")
    result = subprocess.run(
        [sys.executable, "-c", crash, "score", "--bundle", str(bundle_dir), "--pairs",
         str(bundle_pairs[0]), "--out", str(out), "--quiet"], capture_output=True, text=True)
    assert result.returncode == 1 and "Traceback" in result.stderr, result.stderr
    assert "RuntimeError: a bug" in result.stderr
    assert not out.exists()


def test_cli_score_usage_errors_exit_2(bundle_dir, bundle_pairs, tmp_path):
    result = invoke("--bundle", str(bundle_dir), "--pairs", str(bundle_pairs[0]),
                    "--out", str(bundle_pairs[0]))
    assert result.exit_code == 2 and "is also an input" in result.output
    result = invoke("--bundle", str(bundle_dir), "--pairs", str(bundle_pairs[0]),
                    "--out", str(tmp_path / "o.parquet"), "--per-source")
    assert result.exit_code == 2 and "--per-source needs --top-k" in result.output
    assert not (tmp_path / "o.parquet").exists()


def test_cli_score_help_loads_no_training_code():
    """``--help`` imports neither torch nor the scorer; scoring imports no trainer code."""
    import subprocess
    import sys

    code = (
        "import sys; from ncnc.cli import cli; from click.testing import CliRunner\n"
        "heavy = lambda names: sorted({m.split('.')[0] for m in sys.modules} & set(names))\n"
        "r = CliRunner().invoke(cli, ['score', '--help']); assert r.exit_code == 0, r.output\n"
        "assert '--per-source' in r.output\n"
        "print(heavy(['trainer', 'scorer', 'torch', 'torch_geometric']))\n"
        "import ncnc.scorer.job, ncnc.scorer.candidates, ncnc.scorer.engine, ncnc.scorer.bundle\n"
        "print(heavy(['trainer', 'torch_geometric', 'exporter']))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.split() == ["[]", "[]"]


# The pipeline: reading, scoring and writing overlap -------------------------------------------

class OverlapProbe:
    """A scorer and a writer that only finish if the stages overlap: scoring batch k waits
    until batch k + 1 has been read, and writing batch k waits until batch k + 1 is being
    scored. Run one after the other, each wait would time out."""

    def __init__(self, batches: int) -> None:
        self.batches = batches
        self.read = [threading.Event() for _ in range(batches + 1)]
        self.scoring = [threading.Event() for _ in range(batches + 1)]
        self.waited_in_vain: list[str] = []
        self.calls = 0

    def reading(self, batches):
        for k, batch in enumerate(batches):
            self.read[k].set()
            yield batch
        self.read[self.batches].set()

    def score_logits(self, pairs: torch.Tensor) -> torch.Tensor:
        k = self.calls
        self.calls += 1
        self.scoring[k].set()
        if not self.read[k + 1].wait(timeout=10):
            self.waited_in_vain.append(f"scoring {k} before reading {k + 1}")
        return torch.zeros(pairs.size(0))

    def write(self, frame: pl.DataFrame) -> None:
        k = self.written = getattr(self, "written", -1) + 1
        if k + 1 < self.batches and not self.scoring[k + 1].wait(timeout=10):
            self.waited_in_vain.append(f"writing {k} before scoring {k + 1}")


def test_reading_scoring_and_writing_overlap(string_ids, write_pairs):
    from ncnc.scorer.inputs import iter_pair_batches
    from ncnc.scorer.job import ScoringJob
    from ncnc.scorer.outputs import OutputSpec

    path = write_pairs(random_pairs(string_ids, 50, seed=3), "pairs.parquet")
    probe = OverlapProbe(batches=5)
    job = ScoringJob(probe, OutputSpec(string_ids), "error")
    read, scored, kept = job.score(probe.reading(iter_pair_batches([path], 10)), probe)
    assert (read, scored, kept) == (50, 50, None)
    assert probe.waited_in_vain == []


def test_an_error_in_any_stage_stops_the_job_and_is_raised(string_ids):
    from ncnc.scorer.job import run_pipeline

    consumed = []

    def failing_reader():
        yield 1
        yield 2
        raise InputError("pairs file x.parquet: damaged")

    with pytest.raises(InputError, match="damaged"):
        run_pipeline(failing_reader(), lambda item: item * 10, consumed.append)
    assert consumed in ([], [10], [10, 20])  # what came before the error, in order

    def failing_writer(item):
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        run_pipeline(iter(range(100)), lambda item: item, failing_writer)
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C arrives in the caller's thread
        run_pipeline(iter(range(100)), lambda item: (_ for _ in ()).throw(KeyboardInterrupt()),
                     consumed.append)
    assert threading.active_count() < 20  # the stages' threads ended
