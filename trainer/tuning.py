"""``ncnc tune``: search an edge list's hyperparameters on validation HR@100 with Optuna.

Each trial trains one model with :func:`ncnc.trainer.training.train_model` on the split that
``ncnc train`` would make (same seed, same fractions), with the test edges held out of the graph
and never scored: trials see the training graph and the validation pairs only. TPE proposes the
settings; a median pruner stops a trial whose best validation HR@100 so far, after an epoch, is
below the median of earlier trials at that epoch.

The study lives in ``OUT/study.db`` (SQLite), so a killed run continues with ``--resume``. Trials
are reproducible: every trial trains with the same seed, and trial k's settings come from a TPE
sampler seeded with (seed, k finished trials before it), so a resumed study proposes what an
uninterrupted one would have. Optuna is imported only here, and only when tuning.

Outputs in ``OUT``: ``best.toml`` (the best trial's full settings, for ``ncnc train --config``),
``report.json`` (best trial, parameter importances, every trial), ``history.png`` and
``importances.png``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ncnc.core.device import resolve_device
from ncnc.core.errors import InputError
from ncnc.core.extras import MissingExtraError, install_hint
from ncnc.trainer.api import TrainRequest, run_config, split_graph
from ncnc.trainer.config import ModelKind, RunConfig, dump_toml
from ncnc.trainer.data import GraphData, load_edge_list
from ncnc.trainer.splits import EdgeSplit
from ncnc.trainer.training import EpochRecord, TrainingDivergedError, train_model

if TYPE_CHECKING:
    import optuna

log = logging.getLogger("ncnc.trainer")

OPTUNA_HINT = f"ncnc tune needs optuna: {install_hint('tune')}"
STUDY_NAME = "ncnc-tune"
SEARCH_SPACE_VERSION = 1  # bump when suggest_settings changes: old studies then refuse --resume
HIDDEN_CHOICES = [32, 64, 128, 256]
CAP_CHOICES = [8, 16, 32, 64, -1]  # -1: no cap
MIN_TRIALS_FOR_IMPORTANCES = 10


@dataclass(frozen=True)
class TuneRequest:
    """One ``ncnc tune`` invocation.

    Attributes:
        model: ``"gae"``, ``"ncn"`` or ``"ncnc"``.
        edges: Parquet edge list (``src``, ``dst``), as for ``ncnc train --edges``.
        out: study folder: ``study.db`` plus the outputs listed in the module docstring.
        features: optional Parquet node features, as for ``ncnc train --features``.
        config_file: TOML settings the search starts from (fixed unless tuned, e.g. ``epochs``,
            ``val_fraction``); they are also written into ``best.toml``.
        trials: finished (completed or pruned) trials the study should hold; a resumed study
            runs the missing ones.
        timeout_minutes: start no trial after this many minutes of this call, and cut a running
            trial at that point (between epochs); ``None``: no limit.
        resume: continue the study in ``out`` (which must exist and match this request).
        seed: seed of the split, every trial's training and the sampler.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        progress: a progress bar over trials on stderr.
    """

    model: ModelKind
    edges: Path
    out: Path
    features: Path | None = None
    config_file: Path | None = None
    trials: int = 30
    timeout_minutes: float | None = None
    resume: bool = False
    seed: int = 0
    device: str = "auto"
    progress: bool = True


def import_optuna() -> Any:
    """The optuna module, or the one-line install hint as an :class:`InputError`."""
    try:
        import optuna
    except ImportError as err:
        raise MissingExtraError(OPTUNA_HINT) from err
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def suggest_settings(trial: optuna.Trial, model: ModelKind,
                     has_features: bool) -> dict[str, dict[str, Any]]:
    """One trial's ``{"model": ..., "train": ...}`` overrides: learning rates, dropouts, width,
    and for NCNC the completion caps and calibration. Parameters a model cannot use (NCNC's for
    NCN, input dropout without features) are not searched."""
    settings: dict[str, dict[str, Any]] = {
        "model": {
            "hidden": trial.suggest_categorical("hidden", HIDDEN_CHOICES),
            "gnndp": trial.suggest_float("gnndp", 0.0, 0.8),
            "tdp": trial.suggest_float("tdp", 0.0, 0.8),
            "predp": trial.suggest_float("predp", 0.0, 0.8),
        },
        "train": {
            "gnnlr": trial.suggest_float("gnnlr", 1e-4, 3e-2, log=True),
            "prelr": trial.suggest_float("prelr", 1e-4, 3e-2, log=True),
        },
    }
    if has_features:
        settings["model"]["xdp"] = trial.suggest_float("xdp", 0.0, 0.8)
    if model != "gae":
        settings["model"]["preedp"] = trial.suggest_float("preedp", 0.0, 0.8)
    if model == "ncnc":
        settings["model"].update(
            train_cap=trial.suggest_categorical("train_cap", CAP_CHOICES),
            test_cap=trial.suggest_categorical("test_cap", CAP_CHOICES),
            probscale=trial.suggest_float("probscale", 1.0, 10.0),
            proboffset=trial.suggest_float("proboffset", 0.0, 6.0),
            pt=trial.suggest_float("pt", 0.05, 1.0),
            alpha=trial.suggest_float("alpha", 0.1, 1.5),
        )
    return settings


def without_test(split: EdgeSplit) -> EdgeSplit:
    """``split`` with its test pairs removed: a tuner must never score them. The test edges stay
    out of the training graph too, as in the ``ncnc train`` run the best settings are for."""
    empty = torch.empty(0, 2, dtype=torch.int64)
    return dataclasses.replace(split, test=empty, test_neg=empty)


def _fingerprint(request: TuneRequest) -> dict[str, Any]:
    """What a study's trials depend on; ``--resume`` refuses a study started with other values."""
    config = None if request.config_file is None else hashlib.sha256(
        request.config_file.read_bytes()).hexdigest()
    return {
        "model": request.model,
        "edges": str(request.edges.resolve()),
        "features": None if request.features is None else str(request.features.resolve()),
        "config_sha256": config,
        "seed": request.seed,
        "search_space_version": SEARCH_SPACE_VERSION,
    }


def _open_study(optuna: Any, request: TuneRequest, storage: str) -> optuna.Study:
    """Create the study, or load it for ``--resume`` after checking it belongs to this request.

    A trial still marked running belongs to a killed process: it is marked failed, and the
    trial that replaces it gets the same settings (same seed, same finished trials)."""
    path = request.out / "study.db"
    fingerprint = _fingerprint(request)
    if not request.resume:
        if path.exists():
            raise InputError(f"{path} already holds a study: pass --resume to continue it, or "
                             f"choose another --out")
        request.out.mkdir(parents=True, exist_ok=True)
        study = optuna.create_study(storage=storage, study_name=STUDY_NAME, direction="maximize")
        for key, value in fingerprint.items():
            study.set_user_attr(key, value)
        return study
    if not path.exists():
        raise InputError(f"--resume: no study to continue at {path} (run without --resume first)")
    study = optuna.load_study(storage=storage, study_name=STUDY_NAME)
    for key, value in fingerprint.items():
        if study.user_attrs.get(key) != value:
            raise InputError(f"--resume: the study in {path} was started with {key} = "
                             f"{study.user_attrs.get(key)!r}, this call has {value!r}")
    for trial in study.get_trials(deepcopy=False, states=[optuna.trial.TrialState.RUNNING]):
        log.warning("trial %d was interrupted; it is marked failed and run again", trial.number)
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
    return study


def _finished(optuna: Any, study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    states = optuna.trial.TrialState
    return study.get_trials(deepcopy=False, states=[states.COMPLETE, states.PRUNED])


def _trial_sampler(optuna: Any, seed: int, finished: int) -> optuna.samplers.BaseSampler:
    """A TPE sampler seeded by (seed, trials finished so far): the same history asks the same."""
    trial_seed = int(np.random.SeedSequence([seed, finished]).generate_state(1)[0])
    return optuna.samplers.TPESampler(seed=trial_seed, multivariate=True, n_startup_trials=8)


def _run_trial(optuna: Any, study: optuna.Study, request: TuneRequest, graph: GraphData,
               split: EdgeSplit, device: torch.device, time_left: float | None) -> None:
    """Ask the study for settings, train with them, and tell it the best validation HR@100."""
    trial = study.ask()
    try:
        cfg = trial_config(request, graph, suggest_settings(trial, request.model,
                                                            graph.features is not None))
        if time_left is not None:  # the study's deadline also cuts this trial, between epochs
            limit = time_left / 60 if cfg.train.max_minutes == 0 else min(
                cfg.train.max_minutes, time_left / 60)
            cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, max_minutes=limit))
        metric, best_so_far = cfg.train.select_metric, [float("-inf")]

        def report(record: EpochRecord) -> None:
            best_so_far[0] = max(best_so_far[0], float(record.valid[metric]))
            trial.report(best_so_far[0], record.epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned after epoch {record.epoch}")

        result = train_model(cfg, graph.features, split, device, on_epoch=report, progress=False)
    except optuna.TrialPruned:
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        return
    except TrainingDivergedError as err:  # these settings cannot train: prune, search on
        log.warning("trial %d: %s; pruned", trial.number, err)
        trial.set_user_attr("diverged", str(err))
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        return
    except BaseException:  # a bug or Ctrl-C: the trial failed, the study stays consistent
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        raise
    trial.set_user_attr("best_epoch", result.best_epoch)
    trial.set_user_attr("stopped", dataclasses.asdict(result.stopped))
    trial.set_user_attr("seconds", round(result.seconds, 2))
    study.tell(trial, float(result.best_valid[metric]))


def trial_config(request: TuneRequest, graph: GraphData,
                 settings: dict[str, dict[str, Any]]) -> RunConfig:
    """The settings ``ncnc train --edges ... --config best.toml`` would resolve for a trial."""
    return run_config(TrainRequest(
        model=request.model, out=request.out, edges=request.edges, features=request.features,
        config_file=request.config_file, model_overrides=settings["model"],
        train_overrides={**settings["train"], "seed": request.seed},
    ), graph)


def tune(request: TuneRequest, clock: Callable[[], float] = time.monotonic) -> dict[str, Any]:
    """Run (or continue) a study until it holds ``trials`` finished trials or time runs out.

    Returns:
        The report also written to ``OUT/report.json``: ``best`` (trial number, validation
        value, parameters, best epoch, where it stopped), ``importances`` (parameter ->
        share, or ``None`` with ``importances_note`` when there are too few trials), ``trials``
        counts by state, every trial's summary under ``all_trials``, and the output paths.

    Raises:
        InputError: optuna missing, bad input files or settings, a study already in ``out``
            without ``resume`` (or none with it, or one started for other inputs), or no
            completed trial when the time is up.
    """
    optuna = import_optuna()
    if request.trials < 1:
        raise InputError(f"--trials must be at least 1, got {request.trials}")
    started = clock()
    graph = load_edge_list(request.edges, request.features)
    base = trial_config(request, graph, {"model": {}, "train": {}})
    split = without_test(split_graph(graph, base, None))
    device = resolve_device(request.device)
    study = _open_study(optuna, request, f"sqlite:///{(request.out / 'study.db').resolve()}")
    pruner = optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=2)
    study.pruner = pruner
    bar = tqdm(total=request.trials, initial=len(_finished(optuna, study)), unit="trial",
               desc=f"tune {request.model}", disable=not request.progress)
    while (done := len(_finished(optuna, study))) < request.trials:
        time_left = None
        if request.timeout_minutes is not None:
            time_left = request.timeout_minutes * 60 - (clock() - started)
            if time_left <= 0:
                log.warning("--timeout reached after %d of %d trials", done, request.trials)
                break
        study.sampler = _trial_sampler(optuna, request.seed, done)
        _run_trial(optuna, study, request, graph, split, device, time_left)
        bar.update()
        if any(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials):
            bar.set_postfix(best=f"{study.best_value:.4f}")
    bar.close()
    return write_outputs(optuna, study, request, graph)


def write_outputs(optuna: Any, study: optuna.Study, request: TuneRequest,
                  graph: GraphData) -> dict[str, Any]:
    """``best.toml``, ``report.json`` and the two plots, each replaced whole (temp + rename)."""
    complete = study.get_trials(deepcopy=False, states=[optuna.trial.TrialState.COMPLETE])
    if not complete:
        diverged = [t.user_attrs["diverged"] for t in study.trials if "diverged" in t.user_attrs]
        why = (f" ({len(diverged)} diverged, the first: {diverged[0]})" if diverged else "")
        raise InputError(f"no trial of the study in {request.out} completed{why}; give more "
                         f"--trials or a longer --timeout")
    best = study.best_trial
    settings = suggest_settings(optuna.trial.FixedTrial(best.params), request.model,
                                graph.features is not None)
    cfg = trial_config(request, graph, settings)
    metric = cfg.train.select_metric
    header = (f"ncnc tune: trial {best.number} of the study in {request.out / 'study.db'}, "
              f"validation {metric} {best.value:.4f}\n"
              f"use: ncnc train --model {request.model} --edges {request.edges} "
              f"--config {request.out / 'best.toml'}")
    importances, note = _importances(optuna, study)
    report = {
        "model": request.model,
        "edges": str(request.edges),
        "metric": f"validation {metric}",
        "best": {"trial": best.number, "value": best.value, "params": best.params,
                 **best.user_attrs},
        "importances": importances,
        "importances_note": note,
        "trials": {state.name.lower(): sum(t.state == state for t in study.trials)
                   for state in optuna.trial.TrialState},
        "all_trials": [{"trial": t.number, "state": t.state.name.lower(), "value": t.value,
                        "epochs": len(t.intermediate_values), "params": t.params}
                       for t in study.trials],
        "best_config": str(request.out / "best.toml"),
        "plots": [str(request.out / "history.png"), str(request.out / "importances.png")],
    }
    _replace(request.out / "best.toml", lambda p: p.write_text(dump_toml(cfg, header)))
    text = json.dumps(report, indent=2, allow_nan=False)  # a NaN here is a bug: never write it
    _replace(request.out / "report.json", lambda p: p.write_text(text))
    _replace(request.out / "history.png", lambda p: _plot_history(optuna, study, metric, p))
    _replace(request.out / "importances.png", lambda p: _plot_importances(importances, note, p))
    return report


def _importances(optuna: Any, study: optuna.Study) -> tuple[dict[str, float] | None, str | None]:
    """PED-ANOVA importances (optuna's default evaluator), or why there are none.

    PED-ANOVA contrasts the best 10% of the completed trials (at least two) with all of them:
    below :data:`MIN_TRIALS_FOR_IMPORTANCES` that contrast is two trials against a handful, noise
    that would read as a finding, so none are reported."""
    complete = len(study.get_trials(deepcopy=False, states=[optuna.trial.TrialState.COMPLETE]))
    if complete < MIN_TRIALS_FOR_IMPORTANCES:
        return None, (f"no importances from {complete} completed trials: they need at least "
                      f"{MIN_TRIALS_FOR_IMPORTANCES} (20 or more to be stable)")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        values = optuna.importance.get_param_importances(study)
    degenerate = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    if degenerate:  # e.g. all values equal: the top and the rest are the same trials
        return None, f"no importances from {complete} completed trials: {degenerate[0]}"
    return {name: round(float(v), 4) for name, v in values.items()}, None


def _replace(path: Path, write: Callable[[Path], None]) -> None:
    """Write ``path`` through a temporary sibling, so a reader never sees half a file."""
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_history(optuna: Any, study: optuna.Study, metric: str, path: Path) -> None:
    """Each trial's best validation value (pruned trials at their last report), and the best so
    far."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    states = optuna.trial.TrialState
    for state, marker, label in ((states.COMPLETE, "o", "completed"),
                                 (states.PRUNED, "x", "pruned (last report)")):
        trials = [t for t in study.trials if t.state == state and
                  (t.value is not None or t.intermediate_values)]
        values = [t.value if t.value is not None else t.intermediate_values[max(
            t.intermediate_values)] for t in trials]
        ax.scatter([t.number for t in trials], values, marker=marker, label=label)
    complete = sorted((t.number, t.value) for t in study.trials if t.state == states.COMPLETE)
    best = np.maximum.accumulate([v for _, v in complete])
    ax.step([n for n, _ in complete], best, where="post", color="black", label="best so far")
    ax.set(xlabel="trial", ylabel=f"validation {metric}", title="optimisation history")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)


def _plot_importances(importances: dict[str, float] | None, note: str | None, path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    if importances:
        names = list(importances)[::-1]  # most important on top
        ax.barh(names, [importances[n] for n in names])
        ax.set(xlabel="importance (PED-ANOVA, sums to 1)", title="parameter importances")
    else:
        ax.text(0.5, 0.5, note or "no importances", ha="center", va="center", wrap=True)
        ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)
