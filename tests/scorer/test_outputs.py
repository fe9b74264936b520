"""A job's outputs: the Parquet row writer (published through ncnc.core.files), scores."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest

from ncnc.core.files import Publication
from ncnc.core.ids import IdMap
from ncnc.scorer.outputs import ParquetRowWriter, with_scores

SCHEMA = {"a": pl.Int64(), "b": pl.String()}


def test_writer_writes_all_frames_in_row_groups(tmp_path):
    out = tmp_path / "sub" / "out.parquet"
    frames = [pl.DataFrame({"a": list(range(k, k + 5)), "b": ["x"] * 5}, schema=SCHEMA)
              for k in range(0, 50, 5)]
    with Publication() as publication:
        with ParquetRowWriter(publication.file(out), SCHEMA, row_group_rows=12) as writer:
            for frame in frames:
                writer.write(frame)
        assert not out.exists()
        publication.publish()
    assert pl.read_parquet(out).equals(pl.concat(frames))
    assert writer.rows_written == 50
    metadata = pq.ParquetFile(out).metadata
    assert [metadata.row_group(g).num_rows for g in range(metadata.num_row_groups)] == [
        12, 12, 12, 12, 2]
    assert [p.name for p in out.parent.iterdir()] == ["out.parquet"]


def test_empty_output_has_the_schema(tmp_path):
    with Publication() as publication:
        with ParquetRowWriter(publication.file(tmp_path / "out.parquet"), SCHEMA):
            pass
        publication.publish()
    assert pl.read_parquet(tmp_path / "out.parquet").schema == pl.Schema(SCHEMA)


def test_failure_keeps_the_earlier_output(tmp_path):
    out = tmp_path / "out.parquet"
    earlier = pl.DataFrame({"a": [1], "b": ["old"]})
    earlier.write_parquet(out)
    with pytest.raises(RuntimeError, match="boom"), Publication() as publication:
        with ParquetRowWriter(publication.file(out), SCHEMA, row_group_rows=1) as writer:
            writer.write(pl.DataFrame({"a": [2, 3], "b": ["new", "new"]}))
            raise RuntimeError("boom")
    assert pl.read_parquet(out).equals(earlier)
    assert [p.name for p in tmp_path.iterdir()] == ["out.parquet"]


def test_writer_rejects_another_schema(tmp_path):
    with pytest.raises(ValueError, match="differs"), Publication() as publication:
        with ParquetRowWriter(publication.file(tmp_path / "out.parquet"), SCHEMA) as writer:
            writer.write(pl.DataFrame({"a": [1.0], "b": ["x"]}))
    assert not any(tmp_path.iterdir())


def test_scores_are_added_with_the_graph_id_dtype():
    ids = IdMap.from_ids(range(10))
    frame = pl.DataFrame({"src": pl.Series([1, 2], dtype=pl.Int32), "dst": [3, 4], "x": [7, 8]})
    scored = with_scores(frame, np.array([0.0, 2.0]), ids)
    assert scored.schema == pl.Schema({"src": pl.Int64, "dst": pl.Int64, "x": pl.Int64,
                                       "score": pl.Float32, "prob": pl.Float32})
    assert scored["prob"].to_list() == pytest.approx([0.5, 1 / (1 + np.exp(-2.0))])
    with pytest.raises(RuntimeError, match="returned 1 logits for 2 pairs"):
        with_scores(frame, np.array([0.0]), ids)


def test_a_failing_sink_is_raised_in_the_writers_thread(tmp_path):
    """polars' sink runs in a thread of its own: its error (here a full disk, /dev/full) reaches
    the caller by the end of the ``with`` block at the latest."""
    with pytest.raises(Exception, match="No space left on device"):
        with ParquetRowWriter(Path("/dev/full"), SCHEMA) as writer:
            for k in range(100):
                writer.write(pl.DataFrame({"a": [k], "b": ["x"]}))


def test_a_folder_as_the_output_is_refused_before_any_thread_starts(tmp_path):
    out = tmp_path / "out.parquet"
    out.mkdir()
    with pytest.raises(IsADirectoryError, match="out.parquet"):
        ParquetRowWriter(out, SCHEMA)
    assert not [t for t in threading.enumerate() if t.name == "ncnc-parquet-sink"]


def test_a_writer_abandoned_on_error_stops_its_thread(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        with ParquetRowWriter(tmp_path / "out.parquet", SCHEMA) as writer:
            writer.write(pl.DataFrame({"a": [1], "b": ["x"]}))
            raise RuntimeError("boom")
    assert not [t for t in threading.enumerate() if t.name == "ncnc-parquet-sink"]
    with pytest.raises(ValueError, match="after the writer was closed"):
        writer.write(pl.DataFrame({"a": [1], "b": ["x"]}))
