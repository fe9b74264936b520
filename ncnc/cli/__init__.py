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
# The rules of ncnc.trainer.inductive (listed here so that --help imports no training code).
NEW_NODES = click.Choice(["mean", "zero", "error"])
NEW_NODES_HELP = ("A node the checkpoint never saw, if the model has no node features, takes "
                  "the mean of its known neighbours' learned rows (iterated outwards), a zero "
                  "row, or is refused (error). Featured models embed it from its features.")


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


def strict_json(value: Any) -> str:
    """One JSON line, never with bare NaN or Infinity (not JSON): an undefined metric is null
    by the time it gets here, so a non-finite number is a bug and raises instead of printing."""
    return json.dumps(value, allow_nan=False)


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
@click.option("--epochs", type=click.IntRange(min=1),
              help="Most training epochs (default 100).")
@click.option("--patience", type=click.IntRange(min=0),
              help="Stop after N epochs without a better validation hits@100 (0: run all "
                   "epochs; default 10 for --edges, 0 for --dataset).")
@click.option("--max-minutes", type=click.FloatRange(min=0, min_open=True),
              help="Stop at the first epoch end past M minutes of training.")
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
          epochs: int | None, patience: int | None, max_minutes: float | None,
          seed: int | None, batch_size: int | None, hidden: int | None,
          val_fraction: float | None, test_fraction: float | None, device: str,
          quiet: bool) -> None:
    """Train a GAE, NCN or NCNC model and write a checkpoint directory.

    The weights of the best validation epoch are kept, whatever stopped the run."""
    summary = ncnc.train(ncnc.TrainRequest(
        model=model_kind, out=out, dataset=dataset, data_root=data_root, edges=edges,
        features=features, config_file=config_file, device=device, progress=not quiet,
        model_overrides={"hidden": hidden},
        train_overrides={"epochs": epochs, "patience": patience, "max_minutes": max_minutes,
                         "seed": seed, "batch_size": batch_size,
                         "val_fraction": val_fraction, "test_fraction": test_fraction},
    ))
    click.echo(strict_json(summary))


@cli.command()
@click.option("--model", "model_kind", type=click.Choice(["gae", "ncn", "ncnc"]), required=True,
              help="Which predictor to tune.")
@click.option("--edges", type=EXISTING_FILE, required=True,
              help="Parquet edge list with columns src, dst.")
@click.option("--features", type=EXISTING_FILE, help="Parquet node features, as for train.")
@click.option("--config", "config_file", type=EXISTING_FILE,
              help="TOML settings to start from (those not searched stay fixed).")
@click.option("--trials", type=click.IntRange(min=1), default=30, show_default=True,
              help="Finished trials the study should hold (a resumed study runs the rest).")
@click.option("--timeout", "timeout_minutes", type=click.FloatRange(min=0, min_open=True),
              help="Minutes: start no trial after this, and cut the running one here.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Study folder: study.db, best.toml, report.json, history.png, "
                   "importances.png.")
@click.option("--resume", is_flag=True, help="Continue the study in --out.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the split, every trial's training and the sampler.")
@click.option("--device", type=DEVICE, default="auto", show_default=True)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def tune(model_kind: str, edges: Path, features: Path | None, config_file: Path | None,
         trials: int, timeout_minutes: float | None, out: Path, resume: bool, seed: int,
         device: str, quiet: bool) -> None:
    """Search hyperparameters on validation hits@100 (Optuna; needs ncnc-toolchain[tune]).

    Writes best.toml for `ncnc train --config`; the test split is never scored."""
    from ncnc.trainer.tuning import TuneRequest
    from ncnc.trainer.tuning import tune as run_tune

    report = run_tune(TuneRequest(
        model=model_kind, edges=edges, out=out, features=features, config_file=config_file,
        trials=trials, timeout_minutes=timeout_minutes, resume=resume, seed=seed,
        device=device, progress=not quiet,
    ))
    click.echo(strict_json({k: report[k] for k in ("best", "importances", "trials",
                                                   "best_config", "plots")}))


@cli.command()
@click.option("--checkpoint", type=EXISTING_DIR, help="Checkpoint directory (scored on its "
              "training graph).")
@click.option("--bundle", type=EXISTING_DIR, help="Bundle directory (ncnc export), scored by the "
              "scorer's engine on the bundle's graph; needs --pos and --neg.")
@click.option("--pos", type=EXISTING_FILE, help="Parquet positive pairs (src, dst).")
@click.option("--neg", type=EXISTING_FILE, help="Parquet negative pairs (src, dst).")
@click.option("--new-nodes", type=NEW_NODES, default="mean", show_default=True,
              help="With --checkpoint. " + NEW_NODES_HELP + " Pairs a featured model cannot "
                   "embed are left out and counted in cold_start.")
@click.option("--device", type=DEVICE, default="auto", show_default=True)
def evaluate(checkpoint: Path | None, bundle: Path | None, pos: Path | None, neg: Path | None,
             new_nodes: str, device: str) -> None:
    """Print hits@20/50/100, mrr, auc as one JSON object (default: the checkpoint's test split)."""
    if (checkpoint is None) == (bundle is None):
        raise click.UsageError("give exactly one of --checkpoint or --bundle")
    if bundle is not None:
        if pos is None or neg is None:
            raise click.UsageError("--bundle needs --pos and --neg")
        click.echo(strict_json(ncnc.evaluate_bundle(bundle, pos, neg, device=device)))
        return
    click.echo(strict_json(ncnc.evaluate(checkpoint, pos, neg, device, new_nodes=new_nodes)))


@cli.command()
@click.option("--checkpoint", type=EXISTING_DIR, required=True, help="Checkpoint directory.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Bundle directory to write (an earlier bundle there is replaced on success).")
@click.option("--edges", type=EXISTING_FILE,
              help="Today's graph snapshot (src, dst): it defines the bundle's graph and ids; "
                   "nodes new to the checkpoint are embedded, absent ones dropped.")
@click.option("--features", type=EXISTING_FILE,
              help="With --edges: today's node features (node + the training's feature "
                   "columns), a row for every node of the snapshot.")
@click.option("--nodes", type=EXISTING_FILE,
              help="With --edges: Parquet column node listing today's nodes, those without "
                   "edges included (they join the graph without edges).")
@click.option("--new-nodes", type=NEW_NODES, default="mean", show_default=True,
              help=NEW_NODES_HELP)
@click.option("--sign-key", type=EXISTING_FILE, metavar="KEY",
              help="Sign the bundle with this PEM elliptic-curve private key (P-256/384/521, no "
                   "password), so that score --verify-key can refuse bundles you did not make "
                   "(pip install 'ncnc-toolchain[sign]').")
@click.option("--cap", type=int, metavar="N",
              help="NCNC: score with at most N members of each completion set (the paper's "
                   "tstdeg; -1: no cap), recorded in the manifest. Default: the checkpoint's "
                   "test_cap (README: the cap curve).")
@click.option("--precision", type=click.Choice(["fp32", "bf16", "int8"]), default="fp32",
              show_default=True,
              help="Node tables and head: fp32; bf16 (bf16 tables, a torch bf16 head); int8 (bf16 "
                   "tables, an onnxruntime int8 head calibrated on the validation pairs). A "
                   "reduced precision must agree with fp32 (the thresholds below) or no bundle "
                   "is written.")
@click.option("--min-top100-overlap", type=click.FloatRange(0.0), default=0.99, show_default=True,
              metavar="FRACTION",
              help="Reduced precision: least overlap of the global top 100 with fp32's.")
@click.option("--min-top20-overlap", type=click.FloatRange(0.0), default=0.97, show_default=True,
              metavar="FRACTION",
              help="Reduced precision: least mean per-source top-20 overlap with fp32's.")
@click.option("--max-hits-delta", type=click.FloatRange(0.0), default=0.005, show_default=True,
              metavar="FRACTION",
              help="Reduced precision: largest |hits@100 - fp32's hits@100| on the validation "
                   "pairs.")
def export(checkpoint: Path, out: Path, edges: Path | None, features: Path | None,
           nodes: Path | None, new_nodes: str, sign_key: Path | None, cap: int | None,
           precision: str, min_top100_overlap: float, min_top20_overlap: float,
           max_hits_delta: float) -> None:
    """Export a checkpoint into a validated, self-contained scoring bundle."""
    config = ncnc.ExportConfig(cap=cap, precision=precision, min_top100_overlap=min_top100_overlap,
                               min_per_source_top20_overlap=min_top20_overlap,
                               max_abs_delta_hits100=max_hits_delta)
    manifest = ncnc.export(checkpoint, out, edges, features=features, nodes=nodes,
                           new_nodes=new_nodes, sign_key=sign_key, config=config)
    click.echo(strict_json({"bundle": str(out), "snapshot": manifest["snapshot"],
                            "parity": manifest["parity"]}))


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
@click.option("--memo-mib", type=click.FloatRange(min=0), default=256,
              help="Memory for NCNC's memo of completion-pair logits across batches (the same "
                   "scores, fewer head evaluations); 0 turns it off.")
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
@click.option("--verify-key", type=EXISTING_FILE, metavar="PUB",
              help="Refuse the bundle unless its signature (export --sign-key) verifies with "
                   "this PEM public key (pip install 'ncnc-toolchain[sign]').")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def score(bundle: Path, pairs: tuple[str, ...], more_pairs: tuple[str, ...], out: Path,
          top_k: int | None, per_source: bool, explain: int | None, batch_size: int,
          device: str, memo_mib: float, on_unknown: str, report: Path | None, resume: bool,
          resume_every: int, engine: str, ray_address: str | None, num_workers: int | None,
          verify_key: Path | None, quiet: bool) -> None:
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
                                 options=RayOptions(ray_address, num_workers),
                                 verify_key=verify_key, **options)
    else:
        scorer = ncnc.load_bundle(bundle, verify_key=verify_key).scorer(device=device,
                                                                       memo_mib=memo_mib)
        result = scorer.score_parquet([*pairs, *more_pairs], out, resume=resume,
                                      resume_every=resume_every, **options)
    click.echo(strict_json(result))


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
@click.option("--verify-key", type=EXISTING_FILE, metavar="PUB",
              help="Refuse the bundle unless its signature (export --sign-key) verifies with "
                   "this PEM public key (pip install 'ncnc-toolchain[sign]').")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def candidates(bundle: Path, out: Path, nodes: Path | None, both_directions: bool,
               max_per_node: int | None, common_neighbors: bool, verify_key: Path | None,
               quiet: bool) -> None:
    """Write the non-adjacent node pairs two hops apart (the pairs worth scoring)."""
    click.echo(strict_json(ncnc.candidates(
        bundle, out, nodes=nodes, both_directions=both_directions, max_per_node=max_per_node,
        common_neighbors=common_neighbors, progress=not quiet, verify_key=verify_key,
    )))

def main() -> None:
    cli(prog_name="ncnc")
