"""exporter/evaluate.py: ``ncnc evaluate --bundle`` scores with the scorer's engine."""

from __future__ import annotations

import json

import polars as pl
import pytest
from click.testing import CliRunner

from ncnc.cli import cli
from ncnc.core.errors import InputError
from ncnc.exporter import evaluate_bundle
from ncnc.scorer.bundle import load_bundle
from ncnc.trainer.metrics import link_metrics

# Pairs touching nodes that joined after training, new_c among them (it has no edges).
POS = {"src": ["new_a", "new_b", "n10", "n30"], "dst": ["n12", "n11", "n11", "n31"]}
NEG = {"src": ["new_c", "new_c", "n40", "new_a"], "dst": ["n50", "n60", "n70", "n80"]}


def test_bundle_metrics_are_the_engines_scores_through_the_metrics(featured_night,
                                                                  write_parquet):
    pos, neg = write_parquet("pos.parquet", **POS), write_parquet("neg.parquet", **NEG)
    got = evaluate_bundle(featured_night.bundle, pos, neg, device="cpu")
    scorer = load_bundle(featured_night.bundle).scorer(device="cpu")
    scores = [scorer.score(pl.DataFrame(p))["score"].to_torch() for p in (POS, NEG)]
    assert got == {**link_metrics(*scores), "pairs": "files", "bundle": str(featured_night.bundle),
                   "snapshot": featured_night.manifest["snapshot"]}
    assert (got["num_pos"], got["num_neg"]) == (4, 4)


def test_cli_evaluate_bundle_and_its_usage_errors(featured_night, write_parquet):
    pos, neg = write_parquet("pos.parquet", **POS), write_parquet("neg.parquet", **NEG)
    bundle = str(featured_night.bundle)
    done = CliRunner().invoke(cli, ["evaluate", "--bundle", bundle, "--pos", str(pos),
                                    "--neg", str(neg), "--device", "cpu"])
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["snapshot"]["new_nodes"] == 3
    done = CliRunner().invoke(cli, ["evaluate", "--bundle", bundle])
    assert done.exit_code == 2 and "--bundle needs --pos and --neg" in done.output
    done = CliRunner().invoke(cli, ["evaluate", "--bundle", bundle, "--checkpoint",
                                    str(featured_night.checkpoint), "--pos", str(pos),
                                    "--neg", str(neg)])
    assert done.exit_code == 2 and "exactly one of --checkpoint or --bundle" in done.output


def test_a_pair_outside_the_bundles_graph_is_a_clear_error(featured_night, write_parquet):
    pos = write_parquet("pos.parquet", src=["n0"], dst=["n10"])  # n0 left the graph
    with pytest.raises(InputError, match="pos.parquet column src.*not nodes of the graph: 'n0'"):
        evaluate_bundle(featured_night.bundle, pos, pos, device="cpu")
