"""trainer/config.py: defaults < dataset preset < TOML < flags."""

import pytest

from ncnc.core.errors import InputError
from ncnc.trainer.config import (
    DEFAULT_TEST_CAP,
    TrainConfig,
    dump_toml,
    resolve_config,
)


def test_precedence_preset_then_toml_then_flags(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text("[model]\nxdp = 0.1\npredp = 0.2\n[train]\nepochs = 7\nprelr = 0.5\n")
    cfg = resolve_config("ncnc", dataset="citeseer", config_file=toml,
                         model_flags={"predp": 0.3, "hidden": None}, train_flags={"epochs": 9})
    assert cfg.model.gnndp == 0.75  # preset
    assert cfg.model.xdp == 0.1  # TOML over preset (0.4)
    assert cfg.model.predp == 0.3  # flag over TOML
    assert cfg.model.hidden == 256  # None flags are ignored
    assert cfg.train.prelr == 0.5 and cfg.train.epochs == 9
    assert cfg.model.twolayerlin is True  # CiteSeer preset


def test_cora_preset_is_the_reference_command():
    cfg = resolve_config("ncnc", dataset="Cora")
    assert (cfg.model.xdp, cfg.model.tdp, cfg.model.preedp, cfg.model.probscale) == (0.7, 0.3, 0.4, 4.3)
    assert (cfg.train.gnnlr, cfg.train.prelr, cfg.train.batch_size) == (0.0043, 0.0024, 1152)
    assert (cfg.train.val_fraction, cfg.train.test_fraction) == (0.1, 0.2)


@pytest.mark.parametrize("text, message", [
    ("[model]\nxdpp = 1\n", "unknown setting"),
    ("[model]\njk = 3\n", "jk must be true or false"),
    ("[train]\nepochs = 'many'\n", "epochs must be a number"),
    ("[optim]\nlr = 1\n", "unknown table"),
    ("[model\n", "cannot read config"),
    ("[train]\ngnnlr = nan\n", "gnnlr must be a finite number, got nan"),  # TOML spells nan
    ("[model]\nprobscale = -inf\n", "probscale must be a finite number, got -inf"),
])
def test_bad_toml_is_rejected_with_the_reason(tmp_path, text, message):
    toml = tmp_path / "bad.toml"
    toml.write_text(text)
    with pytest.raises(InputError, match=message):
        resolve_config("ncn", config_file=toml)


def test_planetoid_presets_keep_the_fixed_epochs_and_edge_lists_stop_early():
    for dataset in ("cora", "citeseer", "pubmed"):
        cfg = resolve_config("ncnc", dataset=dataset)
        assert (cfg.train.epochs, cfg.train.patience) == (100, 0)
    edges = resolve_config("ncnc")
    assert edges.train.patience == TrainConfig().patience == 10
    assert resolve_config("ncnc", train_flags={"patience": 0}).train.patience == 0


@pytest.mark.parametrize("flags, message", [
    ({"patience": -1}, "patience must be 0"), ({"max_minutes": -0.5}, "max_minutes must be 0"),
    ({"epochs": 0}, "epochs must be at least 1"),
])
def test_bad_stopping_settings_are_rejected(flags, message):
    with pytest.raises(InputError, match=message):
        resolve_config("ncn", train_flags=flags)


def test_an_unknown_select_metric_is_refused_before_training_not_a_key_error():
    with pytest.raises(InputError, match=r"select_metric must be one of hits@20, .*auc, got 'hits@30'"):
        resolve_config("ncnc", train_flags={"select_metric": "hits@30"})


def test_dump_toml_reads_back_as_the_same_settings(tmp_path):
    graph = {"num_nodes": 50, "in_features": 3}
    cfg = resolve_config("ncnc", dataset="citeseer",
                         model_flags={**graph, "test_cap": 16, "probscale": 1e-05},
                         train_flags={"select_metric": "mrr", "max_minutes": 2.5})
    path = tmp_path / "best.toml"
    path.write_text(dump_toml(cfg, header="tuned\nby a test"))
    assert path.read_text().startswith("# tuned\n# by a test\n")
    assert "num_nodes" not in path.read_text()  # taken from the graph at train time
    assert resolve_config("ncnc", config_file=path, model_flags=graph) == cfg


def test_planetoid_presets_keep_no_cap_and_edge_lists_get_the_measured_default():
    from ncnc.trainer.config import ModelConfig

    assert DEFAULT_TEST_CAP > 0
    for dataset in ("cora", "citeseer", "pubmed"):
        assert resolve_config("ncnc", dataset=dataset).model.test_cap == -1  # the paper's tstdeg
    assert resolve_config("ncnc").model.test_cap == ModelConfig().test_cap == DEFAULT_TEST_CAP
    assert resolve_config("ncnc", model_flags={"test_cap": -1}).model.test_cap == -1
