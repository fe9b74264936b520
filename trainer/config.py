"""Model and training configuration: dataclasses, per-dataset presets, TOML overrides.

Precedence: built-in defaults < dataset preset < ``--config FILE.toml`` < command-line flags.
The built-in defaults are those of an ``--edges`` graph, with or without node features
(docs/training.md: the featureless benchmark found no reason to give featureless graphs others).
Field names follow the official NCNC code's flags where one exists (``xdp``, ``preedp``, ...), so
its README commands translate one to one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ncnc.core.errors import InputError
from ncnc.trainer.metrics import RANKING_METRICS

ModelKind = Literal["gae", "ncn", "ncnc"]

# NCNC's completion cap for --edges graphs: the smallest cap within 0.5 HR@100 points of no cap
# on the graphs measured by benchmarks/cap_curve.py (README: "The completion cap").
DEFAULT_TEST_CAP = 4
EncoderKind = Literal["puregcn", "gcn"]


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of the encoder and the pair predictor (see docs: the NCN / NCNC model)."""

    model: ModelKind = "ncnc"
    num_nodes: int = 0
    in_features: int = 0  # 0: the graph has no features, learn a node embedding instead
    hidden: int = 256
    encoder: EncoderKind = "puregcn"
    mp_layers: int = 1
    jk: bool = True
    res: bool = False
    ln_encoder: bool = True
    ln_predictor: bool = True
    use_xlin: bool = True
    tailact: bool = True
    twolayerlin: bool = False
    beta: float = 1.0
    xdp: float = 0.7  # input feature dropout
    tdp: float = 0.3  # dropout after the last propagation step
    gnndp: float = 0.05  # encoder dropout
    gnnedp: float = 0.0  # encoder edge dropout
    predp: float = 0.05  # predictor dropout
    preedp: float = 0.4  # predictor edge dropout (adjacency read by the common-neighbour step)
    # NCNC completion (ignored by gae / ncn)
    depth: int = 1
    probscale: float = 4.3
    proboffset: float = 2.8
    pt: float = 0.75
    alpha: float = 1.0
    train_cap: int = -1  # reference --trndeg: cap on each difference set while training
    test_cap: int = DEFAULT_TEST_CAP  # reference --tstdeg: cap while evaluating and scoring
    cap_seed: int = 0  # salt of the deterministic capping draws at evaluation time


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and protocol settings."""

    epochs: int = 100
    batch_size: int = 1152
    eval_batch_size: int = 8192
    gnnlr: float = 0.0043
    prelr: float = 0.0024
    seed: int = 0
    target_link_removal: bool = True
    val_fraction: float = 0.05  # held out from --edges input
    test_fraction: float = 0.0  # held out from --edges input (datasets use the reference 0.2)
    select_metric: str = "hits@100"
    # Test metrics of every epoch (for the learning curve). Off, the test split is scored once,
    # with the best-validation weights: the same figures, without a test pass per epoch.
    test_each_epoch: bool = False
    # Early stopping. `epochs` is then a ceiling: training stops after `patience` epochs without a
    # better validation select_metric (0: never), or at the first epoch end past `max_minutes`
    # (0: no limit). The best-validation weights are kept either way. The Planetoid presets turn
    # patience off (the paper's fixed 100 epochs). docs/training.md: how 10 was measured.
    patience: int = 10
    max_minutes: float = 0.0


@dataclass(frozen=True)
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# Reference hyperparameters (README of GraphPKU/NeuralCommonNeighbor), one entry per dataset.
# The paper ran the Planetoid graphs without a completion cap (tstdeg -1).
_PLANETOID_COMMON: dict[str, Any] = {
    "hidden": 256, "encoder": "puregcn", "mp_layers": 1, "jk": True, "use_xlin": True,
    "tailact": True, "ln_encoder": True, "ln_predictor": True, "test_cap": -1,
}
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "cora": {
        "model": {**_PLANETOID_COMMON, "xdp": 0.7, "tdp": 0.3, "pt": 0.75, "gnnedp": 0.0,
                  "preedp": 0.4, "predp": 0.05, "gnndp": 0.05, "probscale": 4.3,
                  "proboffset": 2.8, "alpha": 1.0},
        "train": {"gnnlr": 0.0043, "prelr": 0.0024, "batch_size": 1152, "eval_batch_size": 8192,
                  "epochs": 100, "val_fraction": 0.1, "test_fraction": 0.2, "patience": 0},
    },
    "citeseer": {
        "model": {**_PLANETOID_COMMON, "xdp": 0.4, "tdp": 0.0, "pt": 0.75, "gnnedp": 0.0,
                  "preedp": 0.0, "predp": 0.55, "gnndp": 0.75, "probscale": 6.5,
                  "proboffset": 4.4, "alpha": 0.4, "twolayerlin": True},
        "train": {"gnnlr": 0.0085, "prelr": 0.0078, "batch_size": 384, "eval_batch_size": 4096,
                  "epochs": 100, "val_fraction": 0.1, "test_fraction": 0.2, "patience": 0},
    },
    "pubmed": {
        "model": {**_PLANETOID_COMMON, "xdp": 0.3, "tdp": 0.0, "pt": 0.5, "gnnedp": 0.0,
                  "preedp": 0.0, "predp": 0.05, "gnndp": 0.1, "probscale": 5.3,
                  "proboffset": 0.5, "alpha": 0.3},
        "train": {"gnnlr": 0.0097, "prelr": 0.002, "batch_size": 2048, "eval_batch_size": 8192,
                  "epochs": 100, "val_fraction": 0.1, "test_fraction": 0.2, "patience": 0},
    },
}

def _apply(section: Any, overrides: dict[str, Any], where: str) -> Any:
    known = {f.name: f for f in dataclasses.fields(section)}
    unknown = sorted(set(overrides) - set(known))
    if unknown:
        raise InputError(f"{where}: unknown setting(s) {unknown}; known: {sorted(known)}")
    typed = {}
    for name, value in overrides.items():
        default = getattr(section, name)
        if isinstance(default, str) and not isinstance(value, str):
            raise InputError(f"{where}: {name} must be a string, got {value!r}")
        if isinstance(default, bool) and not isinstance(value, bool):
            raise InputError(f"{where}: {name} must be true or false, got {value!r}")
        if isinstance(default, (int, float)) and not isinstance(default, bool):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise InputError(f"{where}: {name} must be a number, got {value!r}")
            value = type(default)(value) if isinstance(default, float) else value
            if not math.isfinite(value):  # TOML spells nan and inf; no setting means them
                raise InputError(f"{where}: {name} must be a finite number, got {value!r}")
        typed[name] = value
    return dataclasses.replace(section, **typed)


def run_config_from_json(document: Any, where: str) -> RunConfig:
    """The :class:`RunConfig` a checkpoint's ``config.json`` holds (its ``model`` and ``train``
    objects), every setting checked as a config file's are.

    Raises:
        InputError: a section is missing or not an object, a setting is unknown or of the wrong
            type (``where`` names the file).
    """
    sections = {}
    for name in ("model", "train"):
        section = document.get(name) if isinstance(document, dict) else None
        if not isinstance(section, dict):
            raise InputError(f"{where}: {name} must be an object of settings, got {section!r}")
        sections[name] = section
    return RunConfig(_apply(ModelConfig(), sections["model"], f"{where} model"),
                     _apply(TrainConfig(), sections["train"], f"{where} train"))


def load_toml(path: Path) -> dict[str, dict[str, Any]]:
    """Read ``[model]`` and ``[train]`` tables from a TOML file."""
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise InputError(f"cannot read config {path}: {err}") from err
    extra = sorted(set(data) - {"model", "train"})
    if extra:
        raise InputError(f"config {path}: unknown table(s) {extra}; use [model] and [train]")
    return {"model": data.get("model", {}), "train": data.get("train", {})}


GRAPH_DERIVED = ("num_nodes", "in_features")
"""ModelConfig fields every run takes from its graph, never from a config file."""


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)  # Python's int and float spellings are valid TOML
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string, escapes included
    raise TypeError(f"no TOML spelling for {value!r}")


def dump_toml(run: RunConfig, header: str = "") -> str:
    """``run`` as the ``[model]`` / ``[train]`` TOML that :func:`load_toml` reads back, every
    field but :data:`GRAPH_DERIVED` spelled out (so it means the same under later defaults).
    ``header`` lines become comments at the top."""
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    for table, section in (("model", run.model), ("train", run.train)):
        lines += ["", f"[{table}]"]
        lines += [f"{name} = {_toml_value(value)}"
                  for name, value in dataclasses.asdict(section).items()
                  if name not in GRAPH_DERIVED]
    return "\n".join(lines).lstrip("\n") + "\n"


def resolve_config(
    model: ModelKind,
    dataset: str | None = None,
    config_file: Path | None = None,
    model_flags: dict[str, Any] | None = None,
    train_flags: dict[str, Any] | None = None,
) -> RunConfig:
    """Defaults < dataset preset < TOML file < flags (``None`` flag values are ignored)."""
    run = RunConfig(ModelConfig(model=model), TrainConfig())
    layers: list[tuple[str, dict[str, dict[str, Any]]]] = []
    if dataset is not None:
        layers.append((f"preset {dataset}", PRESETS.get(dataset.lower(), {})))
    if config_file is not None:
        layers.append((str(config_file), load_toml(config_file)))
    flags = {"model": model_flags or {}, "train": train_flags or {}}
    layers.append(("flags", {k: {n: v for n, v in d.items() if v is not None}
                             for k, d in flags.items()}))
    for where, layer in layers:
        run = RunConfig(
            _apply(run.model, layer.get("model", {}), where),
            _apply(run.train, layer.get("train", {}), where),
        )
    if run.model.model != model:
        raise InputError(f"--model {model} conflicts with model = {run.model.model!r} in config")
    if run.model.depth not in (1, 2):
        raise InputError(f"depth must be 1 or 2, got {run.model.depth}")
    for name in ("epochs", "batch_size", "eval_batch_size"):
        if getattr(run.train, name) < 1:
            raise InputError(f"{name} must be at least 1, got {getattr(run.train, name)}")
    for name in ("patience", "max_minutes"):
        if getattr(run.train, name) < 0:
            raise InputError(f"{name} must be 0 (off) or positive, got {getattr(run.train, name)}")
    if run.train.select_metric not in RANKING_METRICS:
        raise InputError(f"select_metric must be one of {', '.join(RANKING_METRICS)}, got "
                         f"{run.train.select_metric!r}")
    return run
