"""trainer/checkpoint.py: a saved checkpoint scores exactly like the model that was trained."""

import json

import pytest
import torch

from ncnc.core.errors import InputError
from ncnc.trainer.checkpoint import load_checkpoint, save_checkpoint
from ncnc.trainer.data import IdMap
from ncnc.trainer.training import TrainingGraph
from tests.trainer.test_training import small_run


def test_round_trip_scores_identically(tmp_path):
    run = small_run("ncnc", seed=0, features=False, epochs=1)
    model, split = run.result.model, run.split
    save_checkpoint(tmp_path, model, run.config, None, IdMap.from_ids(range(300)), split, {})
    loaded = load_checkpoint(tmp_path)
    graph = TrainingGraph(split.train, 300).graph
    pairs = torch.cat([split.test, split.test_neg])
    torch.testing.assert_close(loaded.model.score(None, graph, pairs),
                               model.score(None, graph, pairs), rtol=0, atol=0)
    assert torch.equal(loaded.split.test_neg, split.test_neg)
    assert loaded.config == run.config


def test_unknown_version_is_refused(tmp_path):
    run = small_run("gae", seed=0, features=False, epochs=1)
    save_checkpoint(tmp_path, run.result.model, run.config, None, IdMap.from_ids(range(300)),
                    run.split, {})
    meta = json.loads((tmp_path / "config.json").read_text())
    meta["version"] = 99
    (tmp_path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match="version 99"):
        load_checkpoint(tmp_path)


def test_loading_never_unpickles(tmp_path, no_unpickling):
    run = small_run("ncn", seed=0, features=False, epochs=1)
    save_checkpoint(tmp_path, run.result.model, run.config, None, IdMap.from_ids(range(300)),
                    run.split, {})
    loaded = load_checkpoint(tmp_path)
    assert torch.equal(loaded.split.test, run.split.test)


def test_a_checkpoint_with_nan_weights_is_refused(tmp_path):
    # What an older ncnc wrote after a diverged run: every bundle made from it scored NaN.
    run = small_run("ncn", seed=0, features=False, epochs=1)
    model = run.result.model
    with torch.no_grad():
        model.encoder.embedding.weight[3, 1] = float("nan")
    save_checkpoint(tmp_path, model, run.config, None, IdMap.from_ids(range(300)), run.split, {})
    with pytest.raises(InputError, match=r"model.safetensors: tensor\(s\) 'encoder.embedding.weight' "
                                         r"hold NaN or infinite values"):
        load_checkpoint(tmp_path)


@pytest.fixture(scope="module")
def saved_ncn(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ncn_checkpoint")
    run = small_run("ncn", seed=0, features=False, epochs=1)
    save_checkpoint(folder, run.result.model, run.config, None, IdMap.from_ids(range(300)),
                    run.split, {})
    return folder


def edited_copy(saved, tmp_path, edit):
    import shutil

    folder = tmp_path / "ck"
    shutil.copytree(saved, folder)
    meta = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(edit(meta)))
    return folder


@pytest.mark.parametrize("edit, match", [
    (lambda meta: [meta], "a JSON list, not an object"),
    (lambda meta: {**meta, "model": "ncn"}, "model must be an object of settings, got 'ncn'"),
    (lambda meta: {k: v for k, v in meta.items() if k != "train"},
     "train must be an object of settings, got None"),
    (lambda meta: {**meta, "model": {**meta["model"], "hidden": "wide"}},
     "model: hidden must be a number, got 'wide'"),
    (lambda meta: {**meta, "model": {**meta["model"], "jk": 1}}, "jk must be true or false"),
    (lambda meta: {**meta, "model": {**meta["model"], "encoder": 3}},
     "encoder must be a string, got 3"),
    (lambda meta: {**meta, "model": {**meta["model"], "layers": 3}}, r"unknown setting\(s\)"),
    (lambda meta: {**meta, "model": {**meta["model"], "hidden": 17}},
     "the weights do not fit the model config.json describes"),
])
def test_a_checkpoint_config_of_wrong_shape_is_one_line_input_error(saved_ncn, tmp_path, edit,
                                                                   match):
    # Regression: config.json with settings of the wrong type or shape raised tracebacks
    # (TypeError, AttributeError, RuntimeError) from deep inside the model.
    folder = edited_copy(saved_ncn, tmp_path, edit)
    with pytest.raises(InputError, match=match) as caught:
        load_checkpoint(folder)
    message = str(caught.value)
    assert "\n" not in message
    assert "config.json" in message or "model.safetensors" in message


@pytest.mark.parametrize("damage, match", [
    (lambda path: path.unlink(), "no such file"),
    (lambda path: path.write_bytes(b"not a safetensors file"), "cannot be read as safetensors"),
])
def test_damaged_or_missing_weights_are_one_line_input_error(saved_ncn, tmp_path, damage, match):
    folder = edited_copy(saved_ncn, tmp_path, lambda meta: meta)
    damage(folder / "model.safetensors")
    with pytest.raises(InputError, match=match) as caught:
        load_checkpoint(folder)
    assert "\n" not in str(caught.value) and "model.safetensors" in str(caught.value)
