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
