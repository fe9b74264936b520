"""Scoring throughput side by side with the official NCN / NCNC code (GraphPKU/NeuralCommonNeighbor).

On Cora with the README's Cora settings (hidden 256), on the same seeded random pairs and the
same graph, in one run on one machine, this script measures

* the official code: its predictor's own forward (``cn1`` = NCN, ``incn1cn1`` = NCNC) over the
  pairs in memory, in batches of the README's ``--testbs 8192``, the way its ``test()`` scores
  them (the GNN run once first and not timed; no I/O), and
* ``ncnc score``: the CLI, Parquet in, Parquet out (reading the pairs, scoring, writing the
  scores), with a bundle exported from a checkpoint that ``ncnc train --dataset cora`` wrote,

and prints pairs/s of both and their ratio. Figures go to
``benchmarks/results/official_compare.json`` with the machine, the load average, the versions
and the commands.

Recipe (the official code and its dependencies stay outside this repository; nothing of it is
vendored here):

    git clone https://github.com/GraphPKU/NeuralCommonNeighbor /work/official   # 11d5970 measured
    python3 -m venv /work/official-venv
    /work/official-venv/bin/pip install torch==2.13.0          # the CPU build
    /work/official-venv/bin/pip install torch-geometric ogb setuptools wheel
    # no wheels for this torch on PyPI: a source build of 30 C++ files, about 16 minutes on
    # 2 idle cores, hours on a loaded machine (docs/official-compare.md)
    MAX_JOBS=2 nice -n 10 /work/official-venv/bin/pip install --no-build-isolation \
        torch-scatter torch-sparse
    make install                                               # ncnc's own .venv
    .venv/bin/python benchmarks/official_compare.py --official-code /work/official \
        --official-python /work/official-venv/bin/python --planetoid /work/shared/data/planetoid

Two processes, two virtual environments: this script runs in ncnc's venv and starts the official
side as ``OFFICIAL_PYTHON benchmarks/official_compare.py --official-side SPEC.json``, a
subprocess in the official code's venv. Only that subprocess puts ``--official-code`` on
``sys.path`` and imports the official ``model`` module from there (the official code, not ours);
the official-side half of this file uses the standard library, numpy and torch only.

What is fixed so that the two sides do the same work:

* The same weights: the official modules get the ncnc checkpoint's weights (1 epoch of
  ``ncnc train``, the README's Cora flags; the speed does not depend on training). The ncnc
  modules follow the official ones layer by layer, so the weights map name group by name group
  (``xlin``, ``xcnlin``, ``xijlin``, ``lin``, ``beta``, the encoder's input layer and JK weights);
  the script then checks the two sides' logits on the scored pairs (``max_abs_logit_diff``).
* The same graph: the bundle's CSR graph (the checkpoint's training + validation edges), made a
  ``SparseTensor`` the way the official ``loaddataset`` makes its ``adj_t``.
* The same pairs: uniform random node pairs (``--seed``, no self pairs), as int64 arrays for the
  official side and as a Parquet file of ids for ``ncnc score``.
* 2 threads on both sides (``torch.set_num_threads`` there, ``OMP_NUM_THREADS`` /
  ``NUMBA_NUM_THREADS`` for both); warm-up excluded on both (the official side scores the first
  batches once before the clock starts; ``ncnc score`` runs once on a prefix of the pairs first,
  then its report's ``seconds``, which leave out the process start and the bundle load, are
  used); ``--runs`` runs of each side, interleaved (official, ncnc, official, ncnc), the best kept.

The machine is shared: the load average is recorded before, after and at every run (at the
start of each official run, at the end of each ``ncnc score`` run), and the ratio measured side
by side is the figure to read, not the absolute pairs/s. If the official venv cannot import its
dependencies (torch-scatter / torch-sparse still building, say), the script stops with that exact
error; ``--official-optional`` measures the ncnc side alone and records it as
``official_side_error``. Recipe and measured tables: docs/official-compare.md.

    .venv/bin/python benchmarks/official_compare.py --official-code /work/official \
        --official-python /work/official-venv/bin/python [--pairs 2000000] [--models ncn ncnc] \
        [--memo-mib 256 0]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OFFICIAL_PREDICTORS = {"ncn": "cn1", "ncnc": "incn1cn1"}  # the README's $model names
OFFICIAL_TESTBS = 8192  # the README's Cora command: --testbs 8192
WARMUP_BATCHES = 4
# Weights whose names differ only by prefix, and the predictor's MLPs that both implementations
# build with the same attribute names and the same Linear / LayerNorm layers in the same order
# (only the parameter-free Identity / Dropout fillers between them differ, so the Sequential
# indices do not match: layers are paired by rank, their parameters by name).
RENAMED = {"encoder.input.1.weight": "xemb.1.weight", "encoder.input.1.bias": "xemb.1.bias",
           "encoder.jk": "jkparams", "predictor.beta": "beta"}
PREDICTOR_MLPS = ("xlin", "xcnlin", "xijlin", "lin")
# Buffers the official constructors set from the flags: incn1cn1's calibration and DropAdj's
# 1 / (1 - edge dropout) in the GNN and the predictor (edge dropout is off in eval anyway).
FROM_FLAGS = {"alpha", "pt", "scale", "offset", "adjdrop.ratio", "dropadj.ratio"}
UNUSED_PREFIX = "ptlin."  # incn1cn1's learnable-pt MLP, used only with --learnpt (not on Cora)


# --- the official side (runs in the official code's venv) -----------------------------------------


def mlp_layers(names, prefix: str) -> list[dict[str, str]]:
    """The parameterised layers of the Sequential ``prefix`` in order: one ``{param: name}`` per
    layer (``prefix.<index>.<param>``, indices compared as numbers)."""
    layers: dict[int, dict[str, str]] = {}
    for name in names:
        if name.startswith(prefix + "."):
            index, param = name[len(prefix) + 1:].split(".", 1)
            layers.setdefault(int(index), {})[param] = name
    return [layers[i] for i in sorted(layers)]


def official_weights(ncnc_state: dict, gnn, predictor) -> tuple[dict, dict]:
    """The ncnc checkpoint's tensors under the official modules' names: (gnn, predictor) state.

    Raises:
        ValueError: an MLP has other layers, parameters or shapes on the two sides (the two
            implementations no longer match layer by layer), or an official GNN tensor has no
            ncnc counterpart.
    """
    renamed = {RENAMED[k]: v for k, v in ncnc_state.items() if k in RENAMED}
    gnn_state = {k: v for k, v in renamed.items() if k in gnn.state_dict()}
    pred_state = {k: v for k, v in renamed.items() if k in predictor.state_dict()}
    official = predictor.state_dict()
    for mlp in PREDICTOR_MLPS:
        ours = mlp_layers(ncnc_state, f"predictor.{mlp}")
        theirs = mlp_layers(official, mlp)
        if [sorted(layer) for layer in ours] != [sorted(layer) for layer in theirs]:
            raise ValueError(f"{mlp}: ncnc layers {ours} do not match official {theirs}")
        for our_layer, their_layer in zip(ours, theirs):
            for param, name in their_layer.items():
                tensor = ncnc_state[our_layer[param]]
                if tuple(official[name].shape) != tuple(tensor.shape):
                    raise ValueError(f"{name}: official {tuple(official[name].shape)}, "
                                     f"ncnc {tuple(tensor.shape)}")
                pred_state[name] = tensor
    missing = set(gnn.state_dict()) - set(gnn_state) - FROM_FLAGS
    missing |= {k for k in set(official) - set(pred_state) - FROM_FLAGS
                if not k.startswith(UNUSED_PREFIX)}
    if missing:
        raise ValueError(f"official tensors without an ncnc counterpart: {sorted(missing)}")
    return gnn_state, pred_state


def official_side(spec_path: Path) -> None:
    """Score the pairs of ``spec`` with the official predictor's forward; print one JSON line."""
    import importlib
    from functools import partial

    import numpy as np
    import torch

    spec = json.loads(spec_path.read_text())
    sys.path.insert(0, spec["official_code"])  # the official code (GraphPKU), not ours
    official = importlib.import_module("model")
    from torch_sparse import SparseTensor
    from utils import PermIterator

    torch.set_num_threads(spec["threads"])
    m = spec["model_config"]
    arrays = np.load(spec["arrays"])
    indptr = torch.from_numpy(arrays["indptr"])
    n = indptr.numel() - 1
    rows = torch.repeat_interleave(torch.arange(n), indptr.diff())
    edge_index = torch.stack([rows, torch.from_numpy(arrays["indices"])])
    # as the official ogbdataset.loaddataset builds data.adj_t
    adj = SparseTensor.from_edge_index(edge_index, sparse_sizes=(n, n)).to_symmetric().coalesce()
    x = torch.from_numpy(arrays["features"])
    pairs = torch.from_numpy(arrays["pairs"])

    # NeighborOverlap.py main(): the GCN and the predictor from the README's flags
    gnn = official.GCN(x.size(1), m["hidden"], m["hidden"], m["mp_layers"], m["gnndp"],
                       m["ln_encoder"], m["res"], -1, m["encoder"], m["jk"], m["gnnedp"],
                       xdropout=m["xdp"], taildropout=m["tdp"])
    name = OFFICIAL_PREDICTORS[spec["model"]]
    predfn = partial(official.predictor_dict[name], cndeg=-1, use_xlin=m["use_xlin"],
                     tailact=m["tailact"], twolayerlin=m["twolayerlin"], beta=m["beta"])
    if name == "incn1cn1":
        predfn = partial(predfn, depth=m["depth"], splitsize=-1, scale=m["probscale"],
                         offset=m["proboffset"], trainresdeg=m["train_cap"],
                         testresdeg=m["test_cap"], pt=m["pt"], learnablept=False,
                         alpha=m["alpha"])
    predictor = predfn(m["hidden"], m["hidden"], 1, 3, m["predp"], m["preedp"],
                       m["ln_predictor"])
    ncnc_state = {k[len("w:"):]: torch.from_numpy(arrays[k]) for k in arrays.files
                  if k.startswith("w:")}
    gnn_state, pred_state = official_weights(ncnc_state, gnn, predictor)
    gnn.load_state_dict(gnn_state, strict=False)  # FROM_FLAGS stay (official_weights checks)
    predictor.load_state_dict(pred_state, strict=False)  # FROM_FLAGS and UNUSED_PREFIX stay
    gnn.eval()
    predictor.eval()

    with torch.no_grad():
        started = time.perf_counter()
        h = gnn(x, adj)
        encoder_seconds = time.perf_counter() - started
        for batch in pairs[:WARMUP_BATCHES * OFFICIAL_TESTBS].split(OFFICIAL_TESTBS):
            predictor(h, adj, batch.t())
        started = time.perf_counter()
        # test() in NeighborOverlap.py: PermIterator(training=False) over the pairs, testbs each
        chunks = [predictor(h, adj, pairs[perm].t()).view(-1).cpu()
                  for perm in PermIterator(pairs.device, pairs.size(0), OFFICIAL_TESTBS, False)]
        seconds = time.perf_counter() - started
    logits = torch.cat(chunks)
    if spec.get("logits_out"):
        np.save(spec["logits_out"], logits.numpy())
    print(json.dumps({"pairs": pairs.size(0), "seconds": seconds,
                      "pairs_per_second": pairs.size(0) / seconds,
                      "encoder_seconds": encoder_seconds, "threads": torch.get_num_threads()}))


OFFICIAL_VERSIONS = """
import json, sys, torch, torch_geometric, torch_scatter, torch_sparse
print(json.dumps({"python": sys.version.split()[0], "torch": torch.__version__,
                  "torch_geometric": torch_geometric.__version__,
                  "torch_scatter": torch_scatter.__version__,
                  "torch_sparse": torch_sparse.__version__}))
"""


# --- the ncnc side and the comparison (runs in ncnc's venv) ---------------------------------------


def thread_env(threads: int) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
            "NUMBA_NUM_THREADS": str(threads)}


def run_logged(command: list[str], log: list[str], env: dict[str, str]) -> str:
    """Run ``command`` (recorded in ``log``); its stdout. Raises with its stderr on failure."""
    log.append(" ".join(command))
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{command[0]} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return done.stdout


def ncnc_command() -> str:
    return str(Path(sys.executable).with_name("ncnc"))


def build_bundle(workdir: Path, data_root: Path, model: str, epochs: int, log: list[str],
                 env: dict[str, str]) -> tuple[Path, Path]:
    """``ncnc train`` on Cora (README settings: the dataset's preset) and ``ncnc export``."""
    checkpoint, bundle = workdir / f"checkpoint_{model}", workdir / f"bundle_{model}"
    for old in (checkpoint, bundle):
        shutil.rmtree(old, ignore_errors=True)
    run_logged([ncnc_command(), "train", "--model", model, "--dataset", "cora", "--data-root",
                str(data_root), "--epochs", str(epochs), "--seed", "0", "--device", "cpu",
                "--quiet", "--out", str(checkpoint)], log, env)
    run_logged([ncnc_command(), "export", "--checkpoint", str(checkpoint), "--out", str(bundle)],
               log, env)
    return checkpoint, bundle


def write_pairs(workdir: Path, bundle: Path, count: int, seed: int):
    """``count`` seeded uniform random pairs without self pairs: ([count, 2] indices, the Parquet
    file of their ids, a Parquet prefix for the warm-up)."""
    import numpy as np
    import polars as pl

    ids = pl.read_parquet(bundle / "id_map.parquet").sort("index")["id"]
    rng = np.random.default_rng(seed)
    drawn = rng.integers(0, len(ids), (2 * count + 1024, 2))
    pairs = drawn[drawn[:, 0] != drawn[:, 1]][:count]
    frame = pl.DataFrame({"src": ids.gather(pairs[:, 0]), "dst": ids.gather(pairs[:, 1])})
    path, warm = workdir / "pairs.parquet", workdir / "pairs_warmup.parquet"
    frame.write_parquet(path, row_group_size=1 << 20)
    frame.head(WARMUP_BATCHES * OFFICIAL_TESTBS).write_parquet(warm)
    return pairs, path, warm


def official_arrays(workdir: Path, checkpoint: Path, bundle: Path, pairs, model: str) -> Path:
    """The official side's inputs as one ``.npz`` (no pickles): the bundle's graph, the
    checkpoint's features and weights (``w:`` + ncnc name) and the pairs."""
    import numpy as np
    from safetensors.numpy import load_file

    graph = load_file(bundle / "graph.safetensors")
    weights = load_file(checkpoint / "model.safetensors")
    features = load_file(checkpoint / "features.safetensors")
    (features_array,) = features.values()
    path = workdir / f"official_{model}.npz"
    np.savez(path, indptr=graph["indptr"].astype(np.int64),
             indices=graph["indices"].astype(np.int64),
             features=features_array.astype(np.float32), pairs=pairs.astype(np.int64),
             **{f"w:{k}": v for k, v in weights.items()})
    return path


def run_official(args, spec: dict, spec_path: Path, log: list[str], env) -> dict:
    spec_path.write_text(json.dumps(spec))
    out = run_logged([str(args.official_python), str(Path(__file__).resolve()), "--official-side",
                      str(spec_path)], log, env)
    return json.loads(out.strip().splitlines()[-1])


def run_ncnc(bundle: Path, pairs: Path, out: Path, memo_mib: float, batch_size: int,
             log: list[str], env) -> dict:
    report = out.with_suffix(".report.json")
    started = time.perf_counter()
    run_logged([ncnc_command(), "score", "--bundle", str(bundle), "--pairs", str(pairs), "--out",
                str(out), "--batch-size", str(batch_size), "--memo-mib", f"{memo_mib:g}",
                "--device", "cpu", "--quiet", "--report", str(report)], log, env)
    wall = time.perf_counter() - started
    return {**json.loads(report.read_text()), "process_seconds": wall}


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version()}


def ncnc_versions() -> dict:
    from importlib.metadata import version

    return {name: version(dist) for name, dist in [
        ("ncnc", "ncnc-toolchain"), ("torch", "torch"), ("onnxruntime", "onnxruntime"),
        ("numba", "numba"), ("polars", "polars"), ("pyarrow", "pyarrow")]}


def git_commit(folder: Path) -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, text=True,
                              capture_output=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def official_environment(args, log: list[str], env) -> tuple[dict | None, str | None]:
    """The official venv's versions, or None and the exact reason it cannot run (the last line
    of its error, e.g. a missing torch_sparse whose source build has not finished)."""
    try:
        out = run_logged([str(args.official_python), "-c", OFFICIAL_VERSIONS], log, env)
    except (OSError, RuntimeError) as err:
        lines = [line for line in str(err).splitlines() if line.strip()]
        return None, lines[-1] if lines else type(err).__name__
    return json.loads(out.strip().splitlines()[-1]), None


def load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def compare_model(args, model: str, data_root: Path, log: list[str], env,
                  official_available: bool) -> dict:
    """Build the bundle, write the pairs, then the interleaved runs of both sides for ``model``
    (the ncnc side alone when ``official_available`` is false)."""
    import numpy as np
    import polars as pl

    workdir = args.workdir
    checkpoint, bundle = build_bundle(workdir, data_root, model, args.epochs, log, env)
    pairs, pairs_file, warm_file = write_pairs(workdir, bundle, args.pairs, args.seed)
    config = json.loads((checkpoint / "config.json").read_text())
    spec = {"official_code": str(args.official_code.resolve()), "model": model,
            "threads": args.threads, "model_config": config["model"],
            "arrays": str(official_arrays(workdir, checkpoint, bundle, pairs, model))}
    spec_path = workdir / f"official_{model}.json"
    logits_file = workdir / f"official_{model}_logits.npy"
    official_runs, ncnc_runs = [], {memo: [] for memo in args.memo_mib}
    run_ncnc(bundle, warm_file, workdir / "warmup.parquet", args.memo_mib[0], args.batch_size,
             log, env)
    for run in range(args.runs):
        if official_available:
            first = {"logits_out": str(logits_file)} if run == 0 else {}
            official_runs.append({"load": load(), **run_official(
                args, {**spec, **first}, spec_path, log, env)})
            print(f"{model} official run {run + 1}: "
                  f"{official_runs[-1]['pairs_per_second']:,.0f} pairs/s", flush=True)
        for memo in args.memo_mib:
            out = workdir / f"scores_{model}_memo{memo:g}.parquet"
            report = run_ncnc(bundle, pairs_file, out, memo, args.batch_size, log, env)
            ncnc_runs[memo].append({"load": load(), **report})
            print(f"{model} ncnc score (memo {memo:g} MiB) run {run + 1}: "
                  f"{report['pairs_per_second']:,.0f} pairs/s", flush=True)
    official_logits = np.load(logits_file) if official_available else None
    best_official = max((r["pairs_per_second"] for r in official_runs), default=None)
    row = {
        "pairs": args.pairs,
        "official_predictor": OFFICIAL_PREDICTORS[model],
        "official_pairs_per_s": round(best_official) if best_official else None,
        "official_runs_pairs_per_s": [round(r["pairs_per_second"]) for r in official_runs],
        "official_encoder_seconds": (round(official_runs[0]["encoder_seconds"], 3)
                                     if official_runs else None),
        "official_batch_size": OFFICIAL_TESTBS,
        "ncnc_batch_size": args.batch_size,
        "load_at_runs": {"official": [r["load"] for r in official_runs],
                         **{f"ncnc_memo{m:g}": [r["load"] for r in runs]
                            for m, runs in ncnc_runs.items()}},
        "bundle": str(bundle), "checkpoint_epochs": args.epochs,
    }
    for memo, runs in ncnc_runs.items():
        best = max(runs, key=lambda r: r["pairs_per_second"])
        scores = pl.read_parquet(workdir / f"scores_{model}_memo{memo:g}.parquet")["score"]
        key = f"ncnc_memo{memo:g}"
        row[key] = {
            "pairs_per_s": round(best["pairs_per_second"]),
            "runs_pairs_per_s": [round(r["pairs_per_second"]) for r in runs],
            "ratio_vs_official": (round(best["pairs_per_second"] / best_official, 2)
                                  if best_official else None),
            "seconds": best["seconds"], "process_seconds": round(best["process_seconds"], 2),
            "peak_rss_mib": best["peak_rss_mib"],
            "memo_hit_rate": best.get("memo_hit_rate"),
            "max_abs_logit_diff": (float(np.abs(scores.to_numpy() - official_logits).max())
                                   if official_logits is not None else None),
        }
        if best_official:
            print(f"{model}: official {best_official:,.0f} pairs/s, ncnc score (memo {memo:g} "
                  f"MiB) {best['pairs_per_second']:,.0f} pairs/s = "
                  f"{row[key]['ratio_vs_official']}x; "
                  f"max |logit diff| {row[key]['max_abs_logit_diff']:.2e}", flush=True)
        else:
            print(f"{model}: ncnc score (memo {memo:g} MiB) {best['pairs_per_second']:,.0f} "
                  f"pairs/s; no official figure (its side did not run)", flush=True)
    return row


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--official-side":
        official_side(Path(sys.argv[2]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official-code", type=Path, required=True,
                        help="checkout of GraphPKU/NeuralCommonNeighbor (its model.py, utils.py)")
    parser.add_argument("--official-python", type=Path, required=True,
                        help="python of a venv with torch, torch_geometric, torch_scatter, "
                             "torch_sparse")
    parser.add_argument("--models", nargs="+", choices=sorted(OFFICIAL_PREDICTORS),
                        default=["ncn", "ncnc"])
    parser.add_argument("--pairs", type=int, default=2_000_000)
    parser.add_argument("--runs", type=int, default=2, help="runs of each side, interleaved")
    parser.add_argument("--epochs", type=int, default=1, help="ncnc train epochs")
    parser.add_argument("--memo-mib", type=float, nargs="+", default=[256.0],
                        help="ncnc score --memo-mib values, each measured (0: no memo)")
    parser.add_argument("--batch-size", type=int, default=65_536, help="ncnc score --batch-size")
    parser.add_argument("--official-optional", action="store_true",
                        help="if the official venv cannot import its dependencies, measure the "
                             "ncnc side alone and record the reason (default: exit)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0, help="seed of the random pairs")
    parser.add_argument("--planetoid", type=Path,
                        default=ROOT.parent / "shared" / "data" / "planetoid",
                        help="folder with Cora/raw (copied: PyG writes beside it)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/ncnc-official-compare"))
    parser.add_argument("--results", type=Path,
                        default=ROOT / "benchmarks" / "results" / "official_compare.json")
    args = parser.parse_args()
    if not (args.official_code / "model.py").is_file():
        sys.exit(f"error: {args.official_code}/model.py not found (--official-code: a checkout "
                 f"of GraphPKU/NeuralCommonNeighbor)")
    if not (args.planetoid / "Cora" / "raw").is_dir():
        sys.exit(f"error: {args.planetoid}/Cora/raw not found (--planetoid: the folder with "
                 f"Cora/raw, e.g. /work/shared/data/planetoid)")

    load_before = load()
    env = thread_env(args.threads)
    log: list[str] = []
    official_versions, official_error = official_environment(args, log, env)
    if official_error and not args.official_optional:
        sys.exit(f"error: the official side cannot run: {official_error} (--official-optional "
                 f"measures the ncnc side alone and records this reason)")
    args.workdir.mkdir(parents=True, exist_ok=True)
    data_root = args.workdir / "planetoid"
    shutil.copytree(args.planetoid / "Cora" / "raw", data_root / "Cora" / "raw",
                    dirs_exist_ok=True)
    started = time.perf_counter()
    models = {model: compare_model(args, model, data_root, log, env, not official_error)
              for model in args.models}
    results = {
        "benchmark": "scoring throughput: ncnc score (Parquet to Parquet) vs the official "
                     "GraphPKU/NeuralCommonNeighbor predictor forward (in memory), Cora",
        "weights": f"the ncnc checkpoint's ({args.epochs} epoch of ncnc train --dataset cora, "
                   f"README Cora settings), loaded into both sides",
        "pairs": f"{args.pairs} uniform random node pairs, seed {args.seed}, no self pairs",
        "threads": args.threads, "runs": args.runs, "best_of": args.runs,
        "machine": machine(),
        "load_average_before": load_before, "load_average_after": load(),
        "seconds": round(time.perf_counter() - started, 1),
        "official_side_error": official_error,
        "versions": {"ncnc_side": ncnc_versions(), "official_side": official_versions,
                     "ncnc_commit": git_commit(ROOT),
                     "official_commit": git_commit(args.official_code)},
        "models": models,
        "command": " ".join(["python", *sys.argv]),
        "commands": log,
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({m: {k: v for k, v in row.items() if k.startswith(("official_pairs", "ncnc_"))}
                      for m, row in models.items()}, indent=2))


if __name__ == "__main__":
    main()
