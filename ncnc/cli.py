"""The ``ncnc`` command line: a thin click group, each command one library call.

Stages are imported inside each command so that, e.g., ``ncnc score --help`` loads no training code.

Exit codes: 0 success; 1 internal failure (a bug or an environment problem, with traceback);
2 bad input or usage (one line naming the problem).
"""

from __future__ import annotations

import json
import logging
import sys
from functools import wraps
from pathlib import Path
from typing import Any, Callable

import click

from ncnc.errors import InputError

EXISTING_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)
EXISTING_DIR = click.Path(exists=True, file_okay=False, path_type=Path)
DEVICE = click.Choice(["auto", "cpu", "cuda"])


def _user_errors_exit_2(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn :class:`InputError` into a one-line message and exit code 2."""

    @wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except InputError as err:
            click.echo(f"error: {err}", err=True)
            sys.exit(InputError.exit_code)

    return wrapper


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log progress details to stderr.")
@click.version_option(package_name="ncnc")
def cli(verbose: bool) -> None:
    """Train, export and batch-score NCN / NCNC link-prediction models."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )


@cli.command()
@click.option("--model", "model_kind", type=click.Choice(["gae", "ncn", "ncnc"]), required=True,
              help="Which predictor to train.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Checkpoint directory to write.")
@click.option("--dataset", help="Built-in graph: cora, citeseer or pubmed.")
@click.option("--data-root", type=click.Path(file_okay=False, path_type=Path),
              help="Folder with <Name>/raw Planetoid files (default ~/.cache/ncnc/planetoid).")
@click.option("--edges", type=EXISTING_FILE, help="Parquet edge list with columns src, dst.")
@click.option("--features", type=EXISTING_FILE,
              help="Parquet node features: a node column plus numeric columns or one list column.")
@click.option("--config", "config_file", type=EXISTING_FILE,
              help="TOML file with [model] and [train] tables overriding the defaults.")
@click.option("--epochs", type=click.IntRange(min=1), help="Training epochs.")
@click.option("--seed", type=int, help="Seed of the split, the initialisation and the sampling.")
@click.option("--batch-size", type=click.IntRange(min=1), help="Positive edges per step.")
@click.option("--hidden", type=click.IntRange(min=1), help="Hidden width of encoder and predictor.")
@click.option("--val-fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              help="Share of --edges held out for validation (default 0.05).")
@click.option("--test-fraction", type=click.FloatRange(0, 1, max_open=True),
              help="Share of --edges held out for testing (default 0).")
@click.option("--device", type=DEVICE, default="auto", show_default=True)
@click.option("--quiet", is_flag=True, help="No progress bar.")
@_user_errors_exit_2
def train(model_kind: str, out: Path, dataset: str | None, data_root: Path | None,
          edges: Path | None, features: Path | None, config_file: Path | None,
          epochs: int | None, seed: int | None, batch_size: int | None, hidden: int | None,
          val_fraction: float | None, test_fraction: float | None, device: str,
          quiet: bool) -> None:
    """Train a GAE, NCN or NCNC model and write a checkpoint directory."""
    from trainer.api import TrainRequest
    from trainer.api import train as run_train

    summary = run_train(TrainRequest(
        model=model_kind, out=out, dataset=dataset, data_root=data_root, edges=edges,
        features=features, config_file=config_file, device=device, progress=not quiet,
        model_overrides={"hidden": hidden},
        train_overrides={"epochs": epochs, "seed": seed, "batch_size": batch_size,
                         "val_fraction": val_fraction, "test_fraction": test_fraction},
    ))
    click.echo(json.dumps(summary))


@cli.command()
@click.option("--checkpoint", type=EXISTING_DIR, required=True, help="Checkpoint directory.")
@click.option("--pos", type=EXISTING_FILE, help="Parquet positive pairs (src, dst).")
@click.option("--neg", type=EXISTING_FILE, help="Parquet negative pairs (src, dst).")
@click.option("--device", type=DEVICE, default="auto", show_default=True)
@_user_errors_exit_2
def evaluate(checkpoint: Path, pos: Path | None, neg: Path | None, device: str) -> None:
    """Print hits@20/50/100, mrr, auc as one JSON object (default: the checkpoint's test split)."""
    from trainer.api import evaluate as run_evaluate

    click.echo(json.dumps(run_evaluate(checkpoint, pos, neg, device)))


def main() -> None:
    cli(prog_name="ncnc")
