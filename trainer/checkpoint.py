"""Checkpoint directory: everything needed to evaluate or export a trained model.

Layout (nothing here is ever unpickled):

- ``config.json``: format tag and version, model and training configuration, best epoch, metrics,
  library versions, the input the model was trained on;
- ``model.safetensors``: weights (best-validation epoch);
- ``features.safetensors``: node features ``x`` when the graph has them;
- ``id_map.parquet``: contiguous index -> original node id;
- ``split.parquet``: train / valid / test edges and negatives in index space;
- ``metrics.jsonl`` and ``learning_curve.png``: per-epoch history.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from ncnc.core.errors import InputError, examples, first_line
from ncnc.trainer.config import RunConfig, run_config_from_json
from ncnc.trainer.data import IdMap
from ncnc.trainer.model import LinkPredictionModel
from ncnc.trainer.splits import EdgeSplit

CHECKPOINT_FORMAT = "ncnc-checkpoint"
CHECKPOINT_VERSION = 1


@dataclass
class Checkpoint:
    model: LinkPredictionModel
    config: RunConfig
    features: Tensor | None
    id_map: IdMap
    split: EdgeSplit
    summary: dict[str, Any]


def library_versions() -> dict[str, str]:
    import onnx
    import polars
    import pyarrow
    import torch_geometric

    return {"torch": torch.__version__, "torch_geometric": torch_geometric.__version__,
            "onnx": onnx.__version__, "polars": polars.__version__, "pyarrow": pyarrow.__version__}


def is_checkpoint(path: Path) -> bool:
    """Whether ``path`` is a folder ``ncnc train`` wrote (of any version): the only kind of
    folder a training run may replace."""
    try:
        meta = json.loads((Path(path) / "config.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return type(meta) is dict and meta.get("format") == CHECKPOINT_FORMAT


def save_checkpoint(
    directory: Path,
    model: LinkPredictionModel,
    config: RunConfig,
    features: Tensor | None,
    id_map: IdMap,
    split: EdgeSplit,
    summary: dict[str, Any],
) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / "model.safetensors"))
    if features is not None:
        save_file({"x": features.cpu().contiguous()}, str(directory / "features.safetensors"))
    id_map.save(directory / "id_map.parquet")
    split.save(directory / "split.parquet")
    meta = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "model": dataclasses.asdict(config.model),
        "train": dataclasses.asdict(config.train),
        "summary": summary,
        "versions": library_versions(),
    }
    (directory / "config.json").write_text(json.dumps(meta, indent=2, allow_nan=False))


def load_checkpoint(directory: Path, device: torch.device | str = "cpu") -> Checkpoint:
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise InputError(f"{directory} is not an ncnc checkpoint: config.json is missing")
    try:
        meta = json.loads(config_path.read_text())
    except json.JSONDecodeError as err:
        raise InputError(f"{config_path} is not valid JSON: {err}") from err
    if not isinstance(meta, dict):
        raise InputError(f"{config_path}: not an ncnc checkpoint (a JSON "
                         f"{type(meta).__name__}, not an object)")
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise InputError(f"{config_path}: not an ncnc checkpoint (format {meta.get('format')!r})")
    if meta.get("version") != CHECKPOINT_VERSION:
        raise InputError(
            f"{config_path}: checkpoint version {meta.get('version')} is not supported "
            f"(this ncnc reads version {CHECKPOINT_VERSION})"
        )
    config = run_config_from_json(meta, str(config_path))
    try:
        model = LinkPredictionModel(config.model)
    except (ValueError, TypeError, KeyError) as err:  # e.g. an unknown model or encoder kind
        raise InputError(f"{config_path}: the model settings describe no model ncnc builds "
                         f"({err})") from err
    weights_path = directory / "model.safetensors"
    weights = _load_tensors(weights_path)
    _check_finite(weights, weights_path)
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:  # missing, unexpected or misshapen tensors
        reason = str(err).strip().splitlines()
        raise InputError(f"{weights_path}: the weights do not fit the model config.json "
                         f"describes ({' '.join(line.strip() for line in reason[:2])})") from err
    model.to(device).eval()
    features_path = directory / "features.safetensors"
    features = None
    if features_path.exists():
        tables = _load_tensors(features_path)
        _check_finite(tables, features_path)
        if "x" not in tables:
            raise InputError(f"{features_path}: holds no tensor x (has {examples(list(tables))})")
        features = tables["x"].to(device)
    return Checkpoint(
        model=model,
        config=config,
        features=features,
        id_map=IdMap.load(directory / "id_map.parquet"),
        split=EdgeSplit.load(directory / "split.parquet"),
        summary=meta.get("summary", {}),
    )


def _load_tensors(path: Path) -> dict[str, Tensor]:
    """The tensors of a safetensors file, or a one-line InputError naming it."""
    if not path.is_file():
        raise InputError(f"{path}: no such file (the checkpoint is incomplete)")
    try:
        return load_file(str(path))
    except Exception as err:  # safetensors raises its own SafetensorError, OSError, ...
        raise InputError(f"{path}: cannot be read as safetensors ({first_line(err)})") from err


def _check_finite(tensors: dict[str, Tensor], path: Path) -> None:
    """Refuse a checkpoint whose weights or features hold NaN or infinite values (written by an
    older ncnc from a diverged run, or edited): everything made from it would be garbage."""
    bad = [name for name, t in tensors.items()
           if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise InputError(f"{path}: tensor(s) {examples(bad)} hold NaN or infinite values; "
                         "retrain the model")
