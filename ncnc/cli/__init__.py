"""The ``ncnc`` command line: a thin click group, each command one call of the Python API.

The API (:mod:`ncnc`) imports each stage on first use, so that, e.g., ``ncnc score --help`` and
``ncnc score`` load no training code.

Exit codes (one place for all commands: :class:`NcncGroup`): 0 success; 1 internal failure (a
bug, with its traceback; or an environment problem such as a full disk, in one line); 2 bad input
or usage (one line naming the problem); 130 interrupted by SIGINT (Ctrl-C); 143 terminated by
SIGTERM. On 1, 130 and 143 nothing is published: every output keeps what it held before the run.
"""

from __future__ import annotations

import errno
import json
import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import click

import ncnc
from ncnc.core.errors import InputError

EXISTING_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)
EXISTING_DIR = click.Path(exists=True, file_okay=False, path_type=Path)
DEVICE = click.Choice(["auto", "cpu", "cuda"])


EXIT_INTERNAL, EXIT_SIGINT, EXIT_SIGTERM = 1, 128 + signal.SIGINT, 128 + signal.SIGTERM
# Environment problems, not bugs: one line instead of a traceback (still exit 1).
ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM,
                      errno.EIO, errno.EMFILE, errno.ENFILE}


class Terminated(BaseException):
    """SIGTERM arrived. A BaseException, like KeyboardInterrupt for SIGINT, so that every
    ``with`` block on the way out (staged outputs, locks) cleans up as for Ctrl-C."""


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated


class NcncGroup(click.Group):
    """The group that turns what any command raises into its exit code and one line on stderr:
    :class:`InputError` -> 2, SIGINT -> 130, SIGTERM -> 143, a full disk or a refused write -> 1.
    Other exceptions are bugs: their traceback is shown, exit 1."""

    def invoke(self, ctx: click.Context) -> Any:
        on_main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, _raise_terminated) if on_main_thread else None
        try:
            return super().invoke(ctx)
        except InputError as err:
            _fail(ctx, f"error: {err}", err.exit_code)
        except KeyboardInterrupt:
            _fail(ctx, "interrupted (SIGINT): nothing was published, earlier outputs are kept",
                  EXIT_SIGINT)
        except Terminated:
            _fail(ctx, "terminated (SIGTERM): nothing was published, earlier outputs are kept",
                  EXIT_SIGTERM)
        except OSError as err:
            if err.errno not in ENVIRONMENT_ERRNOS:
                raise
            where = f" ({err.filename})" if err.filename else ""
            _fail(ctx, f"error: {err.strerror or err}{where}: nothing was published, earlier "
                       "outputs are kept", EXIT_INTERNAL)
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        """As click's, but a usage error is one line too (click prints four), naming the
        command's --help."""
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            # Non-standalone click returns the code of a ctx.exit(code) (our commands return
            # None): exit with it, as standalone click would.
            code = super().main(*args, standalone_mode=False, **kwargs)
            sys.exit(code if isinstance(code, int) else 0)
        except click.UsageError as err:
            command = err.ctx.command_path if err.ctx is not None else "ncnc"
            click.echo(f"error: {err.format_message()} (see {command} --help)", err=True)
            sys.exit(err.exit_code)
        except click.ClickException as err:
            click.echo(f"error: {err.format_message()}", err=True)
            sys.exit(err.exit_code)
        except click.exceptions.Abort:
            click.echo("interrupted: nothing was published, earlier outputs are kept", err=True)
            sys.exit(EXIT_SIGINT)
        except click.exceptions.Exit as done:
            sys.exit(done.exit_code)


def _fail(ctx: click.Context, line: str, code: int) -> None:
    click.echo(line, err=True)
    ctx.exit(code)


@click.group(cls=NcncGroup)
@click.option("-v", "--verbose", is_flag=True, help="Log progress details to stderr.")
@click.version_option(package_name="ncnc-toolchain")
def cli(verbose: bool) -> None:
    """Train, export and batch-score NCN / NCNC link-prediction models."""
    # force: a process that runs several commands (a notebook, CliRunner) logs to the current
    # stderr, not to the stream of the first command.
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s", force=True,
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
def train(model_kind: str, out: Path, dataset: str | None, data_root: Path | None,
          edges: Path | None, features: Path | None, config_file: Path | None,
          epochs: int | None, seed: int | None, batch_size: int | None, hidden: int | None,
          val_fraction: float | None, test_fraction: float | None, device: str,
          quiet: bool) -> None:
    """Train a GAE, NCN or NCNC model and write a checkpoint directory."""
    summary = ncnc.train(ncnc.TrainRequest(
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
def evaluate(checkpoint: Path, pos: Path | None, neg: Path | None, device: str) -> None:
    """Print hits@20/50/100, mrr, auc as one JSON object (default: the checkpoint's test split)."""
    click.echo(json.dumps(ncnc.evaluate(checkpoint, pos, neg, device)))


@cli.command()
@click.option("--checkpoint", type=EXISTING_DIR, required=True, help="Checkpoint directory.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Bundle directory to write (an earlier bundle there is replaced on success).")
@click.option("--edges", type=EXISTING_FILE,
              help="A newer graph snapshot (src, dst) in the checkpoint's id space.")
def export(checkpoint: Path, out: Path, edges: Path | None) -> None:
    """Export a checkpoint into a validated, self-contained scoring bundle."""
    manifest = ncnc.export(checkpoint, out, edges)
    click.echo(json.dumps({"bundle": str(out), "parity": manifest["parity"]}))


@cli.command(context_settings={"show_default": True})
@click.option("--bundle", type=EXISTING_DIR, required=True, help="Bundle directory (ncnc export).")
@click.option("--pairs", "pairs", multiple=True, required=True, metavar="PATH [PATH ...]",
              help="Parquet pairs (src, dst): files, folders (their *.parquet, sorted) or quoted "
                   "glob patterns; several may follow one --pairs.")
@click.argument("more_pairs", nargs=-1, metavar="")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Parquet file to write (src, dst, score, prob[, rank][, because]); replaced on "
                   "success.")
@click.option("--top-k", type=click.IntRange(min=1),
              help="Keep only the K best pairs (ties: earlier input row first) and add rank.")
@click.option("--per-source", is_flag=True, help="With --top-k: the K best of each src node.")
@click.option("--explain", type=click.IntRange(min=1), metavar="N",
              help="With --top-k: add column because, the N common (NCNC: and completed) "
                   "neighbours behind each score as {id, weight, contribution}, the largest "
                   "contribution (drop of the logit without it) first; NCN/NCNC bundles only.")
@click.option("--batch-size", type=click.IntRange(min=1), default=65536,
              help="Pairs read and scored at a time.")
@click.option("--device", type=DEVICE, default="auto")
@click.option("--on-unknown", type=click.Choice(["error", "skip"]), default="error",
              help="What to do with ids that are not nodes of the graph.")
@click.option("--report", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the run report (rows, skips, time, pairs/s, peak memory) as JSON.")
@click.option("--resume", is_flag=True,
              help="Keep finished work beside --out (.<name>.resume/) and continue from it: a "
                   "killed run started again with --resume redoes only the unfinished part.")
@click.option("--resume-every", type=click.IntRange(min=1), default=1 << 20,
              help="With --resume: input rows per committed chunk of work.")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local",
              help="local: this process; ray: actors of a Ray cluster (pip install 'ncnc-toolchain[ray]'), "
                   "same output.")
@click.option("--ray-address", metavar="ADDR",
              help="With --engine ray: the cluster to join (e.g. auto, ray://head:10001); default "
                   "$RAY_ADDRESS, else a local Ray.")
@click.option("--num-workers", type=click.IntRange(min=1),
              help="With --engine ray: scoring actors (default one per GPU, else per CPU).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def score(bundle: Path, pairs: tuple[str, ...], more_pairs: tuple[str, ...], out: Path,
          top_k: int | None, per_source: bool, explain: int | None, batch_size: int,
          device: str, on_unknown: str, report: Path | None, resume: bool, resume_every: int,
          engine: str,
          ray_address: str | None, num_workers: int | None, quiet: bool) -> None:
    """Score candidate pairs from Parquet into Parquet, streaming; print the report as JSON."""
    if per_source and top_k is None:
        raise click.UsageError("--per-source needs --top-k")
    if explain is not None and top_k is None:
        raise click.UsageError("--explain needs --top-k (only the rows a top K keeps are explained)")
    if engine == "local" and (ray_address is not None or num_workers is not None):
        raise click.UsageError("--ray-address and --num-workers need --engine ray")
    if engine == "ray" and resume:
        raise click.UsageError("--resume works with --engine local only")
    options = dict(top_k=top_k, per_source=per_source, explain=explain, batch_size=batch_size,
                   on_unknown=on_unknown, report=report, progress=not quiet)
    if engine == "ray":
        from ncnc.scorer.ray_engine import RayOptions, score_files_ray

        result = score_files_ray(bundle, [*pairs, *more_pairs], out, device=device,
                                 options=RayOptions(ray_address, num_workers), **options)
    else:
        scorer = ncnc.load_bundle(bundle).scorer(device=device)
        result = scorer.score_parquet([*pairs, *more_pairs], out, resume=resume,
                                      resume_every=resume_every, **options)
    click.echo(json.dumps(result))


@cli.command()
@click.option("--bundle", type=EXISTING_DIR, required=True, help="Bundle directory (ncnc export).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Parquet file to write (src, dst[, common_neighbors]); replaced on success.")
@click.option("--nodes", type=EXISTING_FILE,
              help="Parquet file whose column node lists the sources (default: every node, each "
                   "unordered pair once with src < dst).")
@click.option("--both-directions", is_flag=True,
              help="Without --nodes: list each pair from both ends, so that score --per-source "
                   "ranks every node's candidates.")
@click.option("--max-per-node", type=click.IntRange(min=1),
              help="Keep the N candidates with the most common neighbours per src.")
@click.option("--common-neighbors/--no-common-neighbors", default=True, show_default=True,
              help="Write the common_neighbors count column.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def candidates(bundle: Path, out: Path, nodes: Path | None, both_directions: bool,
               max_per_node: int | None, common_neighbors: bool, quiet: bool) -> None:
    """Write the non-adjacent node pairs two hops apart (the pairs worth scoring)."""
    click.echo(json.dumps(ncnc.candidates(
        bundle, out, nodes=nodes, both_directions=both_directions, max_per_node=max_per_node,
        common_neighbors=common_neighbors, progress=not quiet,
    )))

def main() -> None:
    cli(prog_name="ncnc")
