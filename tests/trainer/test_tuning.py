"""trainer/tuning.py: ncnc tune writes a config train takes, resumes, never reads the test split."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch
from click.testing import CliRunner

from ncnc.cli import cli
from ncnc.core.errors import InputError
from ncnc.trainer import tuning
from ncnc.trainer.api import TrainRequest, run_config, split_graph
from ncnc.trainer.data import load_edge_list
from ncnc.trainer.model import LinkPredictionModel
from ncnc.trainer.synthetic import community_graph
from ncnc.trainer.tuning import TuneRequest, tune

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def graph(tmp_path_factory) -> tuple[Path, Path]:
    """A 300-node featureless graph and short-training settings with a test split: 0.25 of the
    edges for validation, so that hits@100 is not saturated (more than 100 negatives)."""
    folder = tmp_path_factory.mktemp("tune")
    community_graph(300, avg_degree=6, num_communities=4, feature_dim=0, seed=3).edges \
        .write_parquet(folder / "edges.parquet")
    (folder / "short.toml").write_text(
        "[train]\nepochs = 2\nbatch_size = 128\nval_fraction = 0.25\ntest_fraction = 0.2\n")
    return folder / "edges.parquet", folder / "short.toml"


def request(graph, out: Path, **fields) -> TuneRequest:
    edges, config = graph
    return TuneRequest(**{"model": "ncnc", "edges": edges, "config_file": config, "out": out,
                          "progress": False, "device": "cpu", **fields})


def test_three_trial_tune_writes_a_config_that_train_takes(graph, tmp_path):
    edges, config = graph
    out = tmp_path / "study"
    result = CliRunner().invoke(cli, ["tune", "--model", "ncnc", "--edges", str(edges),
                                      "--config", str(config), "--trials", "3", "--out", str(out),
                                      "--device", "cpu", "--quiet"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    report = json.loads((out / "report.json").read_text())
    assert summary["best"] == report["best"] and report["trials"]["complete"] == 3
    assert {"hidden", "gnnlr", "prelr", "gnndp", "predp", "train_cap", "test_cap", "probscale",
            "proboffset", "pt", "alpha"} <= set(report["best"]["params"])
    assert "xdp" not in report["best"]["params"]  # a featureless graph has no input dropout
    for plot in ("history.png", "importances.png"):
        assert (out / plot).read_bytes()[:8] == PNG_MAGIC
    # Three trials are too few for PED-ANOVA: the report says so instead of equal shares.
    assert report["importances"] is None and "completed trials" in report["importances_note"]
    trained = CliRunner().invoke(cli, ["train", "--model", "ncnc", "--edges", str(edges),
                                       "--config", str(out / "best.toml"), "--out",
                                       str(tmp_path / "ck"), "--device", "cpu", "--quiet"])
    assert trained.exit_code == 0, trained.output
    # Same split, seed and settings: train reproduces the best trial's validation figure.
    assert json.loads(trained.stdout)["valid"]["hits@100"] == report["best"]["value"]
    assert json.loads(trained.stdout)["test"] is not None  # train does score its test split


def finished_trials(out: Path) -> list[tuple[int, str, float | None, dict]]:
    study = optuna.load_study(study_name=tuning.STUDY_NAME,
                              storage=f"sqlite:///{out / 'study.db'}")
    return [(t.number, t.state.name, t.value, t.params) for t in study.trials
            if t.state.name in ("COMPLETE", "PRUNED")]


def test_an_interrupted_study_resumes_where_it_stopped(graph, tmp_path, monkeypatch):
    ncn = {"model": "ncn"}  # NCN: the cheaper model, as the test trains 8 times
    tune(request(graph, tmp_path / "straight", trials=4, **ncn))
    straight = finished_trials(tmp_path / "straight")

    out = tmp_path / "interrupted"
    tune(request(graph, out, trials=2, **ncn))
    real_train = tuning.train_model

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(tuning, "train_model", interrupt)
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C in trial 2: it is marked failed
        tune(request(graph, out, trials=4, resume=True, **ncn))
    monkeypatch.setattr(tuning, "train_model", real_train)
    # A killed process leaves its trial running: resume must fail it and redo it.
    optuna.load_study(study_name=tuning.STUDY_NAME, storage=f"sqlite:///{out / 'study.db'}").ask()
    report = tune(request(graph, out, trials=4, resume=True, **ncn))
    assert report["trials"]["fail"] == 2 and report["trials"]["running"] == 0
    resumed = finished_trials(out)
    assert len(resumed) == 4
    # Same settings and values as the uninterrupted study, trial for trial (numbers shift by
    # the two failed ones).
    assert [t[1:] for t in resumed] == [t[1:] for t in straight]


def test_resume_refuses_a_missing_or_foreign_study(graph, tmp_path):
    out = tmp_path / "study"
    with pytest.raises(InputError, match="no study to continue"):
        tune(request(graph, out, trials=1, resume=True))
    tune(request(graph, out, trials=1, model="ncn"))
    with pytest.raises(InputError, match="already holds a study: pass --resume"):
        tune(request(graph, out, trials=2, model="ncn"))
    with pytest.raises(InputError, match="started with seed = 0, this call has 1"):
        tune(request(graph, out, trials=2, resume=True, seed=1, model="ncn"))
    with pytest.raises(InputError, match="started with model = 'ncn', this call has 'ncnc'"):
        tune(request(graph, out, trials=2, resume=True))


def test_the_tuner_never_reads_the_test_split(graph, tmp_path, monkeypatch):
    edges, config = graph
    data = load_edge_list(edges)
    cfg = run_config(TrainRequest(model="ncnc", out=tmp_path, edges=edges, config_file=config),
                     data)
    held_out = split_graph(data, cfg, None)  # the split ncnc train makes with these settings
    assert held_out.test.size(0) > 0
    trained_on, scored = [], []
    real_train, real_score = tuning.train_model, LinkPredictionModel.score

    def spy_train(cfg, features, split, *args, **kwargs):
        trained_on.append(split)
        return real_train(cfg, features, split, *args, **kwargs)

    def spy_score(self, x, graph, pairs, *args, **kwargs):
        scored.append(pairs)
        return real_score(self, x, graph, pairs, *args, **kwargs)

    monkeypatch.setattr(tuning, "train_model", spy_train)
    monkeypatch.setattr(LinkPredictionModel, "score", spy_score)
    tune(request(graph, tmp_path / "study", trials=2))

    def keys(pairs: torch.Tensor) -> set[tuple[int, int]]:
        return set(map(tuple, pairs.tolist()))

    test_edges = keys(held_out.test)
    validation = keys(held_out.valid) | keys(held_out.valid_neg)
    assert len(trained_on) == 2 and scored
    for split in trained_on:
        assert split.test.numel() == 0 and split.test_neg.numel() == 0
        assert torch.equal(split.valid, held_out.valid)
        assert not keys(split.train) & test_edges  # test edges are not in the training graph
    for pairs in scored:
        assert keys(pairs) <= validation  # only validation pairs are ever scored


def test_missing_optuna_is_a_one_line_install_hint(graph, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna now raises ImportError
    with pytest.raises(InputError, match=r"^ncnc tune needs optuna: pip install "
                                         r"'ncnc-toolchain\[tune\]'$"):
        tune(request(graph, tmp_path / "study", trials=1))
    assert not (tmp_path / "study").exists()


def test_training_and_the_cli_do_not_import_optuna():
    code = ("import sys, ncnc.cli, ncnc.trainer.api, ncnc.trainer.tuning; "
            "sys.exit('optuna' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_a_diverging_trial_is_pruned_and_the_study_goes_on(graph, tmp_path, monkeypatch):
    # Regression guard: a trial whose settings diverge (TPE draws learning rates up to 3e-2) must
    # not end the study with exit 2, as ncnc train does; it is pruned with the cause.
    real, calls = tuning.train_model, [0]

    def first_diverges(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 1:
            raise tuning.TrainingDivergedError("training diverged: the loss of epoch 1, batch 1 "
                                               "became NaN or infinite")
        return real(*args, **kwargs)

    monkeypatch.setattr(tuning, "train_model", first_diverges)
    report = tune(request(graph, tmp_path / "study", trials=2))
    assert report["trials"]["pruned"] == 1 and report["trials"]["complete"] == 1
    assert report["best"]["trial"] == 1
    json.loads((tmp_path / "study" / "report.json").read_text(),
               parse_constant=lambda c: pytest.fail(f"report.json holds {c}"))


def test_a_study_whose_every_trial_diverges_says_so(graph, tmp_path, monkeypatch):
    def diverges(*args, **kwargs):
        raise tuning.TrainingDivergedError("training diverged: the loss of epoch 1, batch 1")

    monkeypatch.setattr(tuning, "train_model", diverges)
    with pytest.raises(InputError, match=r"no trial of the study in .* completed \(2 diverged, the "
                                         r"first: training diverged: the loss of epoch 1"):
        tune(request(graph, tmp_path / "study", trials=2))
