"""Reduced-precision bundles side by side: pairs/s and peak RSS of fp32, bf16 and int8, with the
agreement each export measured against fp32 (issue 19, item 4).

    python benchmarks/bench_precision.py                          # 1M-node graph and Cora
    python benchmarks/bench_precision.py --nodes 100000 --skip-cora --ncnc-pairs 20000   # quick

For each graph (the generated graph of ``bench_score.py``: 1M nodes, mean degree 10, 16 features,
hidden 256, untrained weights; and Cora, trained for ``--cora-epochs`` epochs with the README
settings otherwise) and each model (NCN, NCNC), one checkpoint is exported at every precision
(thresholds recorded, not enforced, so that every configuration is measured; whether the default
thresholds hold is reported beside it). Then ``ncnc score --device cpu`` scores the same pairs
file with each bundle, each run in its own process (its report's peak RSS is its own), the
precisions interleaved over ``--rounds`` rounds and the best round kept (the machine is shared:
the load averages before and after are recorded). Before that, the heads alone on the same
inputs: onnxruntime fp32, the bf16 head (torch), int8 static (the bundle's) and int8 dynamic
(not offered: its scores depend on the batch, measured here), with whether each row's logit is
the same alone and in a batch.

Writes ``benchmarks/results/precision_cpu.json`` (or ``--results``) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

from bench_score import build_bundle, build_inputs, prefix_file, run_bundle

ROOT = Path(__file__).resolve().parents[1]
# The project's shared/ folder beside the repository, as tests/conftest.py finds it.
SHARED = Path(os.environ.get("NCNC_SHARED", ROOT.parent / "shared"))
PRECISIONS = ("fp32", "bf16", "int8")
DEFAULTS = {"min_top100_overlap": 0.99, "min_per_source_top20_overlap": 0.97,
            "max_abs_delta_hits100": 0.005}
UNENFORCED = {"min_top100_overlap": 0.0, "min_per_source_top20_overlap": 0.0,
              "max_abs_delta_hits100": 1.0}


def export_precisions(checkpoint: Path, workdir: Path, name: str,
                      precisions: tuple[str, ...] = PRECISIONS) -> dict[str, dict]:
    """``checkpoint`` exported at each of ``precisions`` (cached): precision -> bundle path,
    export seconds and agreement figures (None for fp32)."""
    from ncnc.exporter import ExportConfig, export_bundle

    bundles = {}
    for precision in precisions:
        out = workdir / f"bundle_{name}_{precision}"
        if not (out / "manifest.json").exists():
            started = time.perf_counter()
            export_bundle(checkpoint, out, config=ExportConfig(precision=precision, **UNENFORCED))
            print(f"exported {name} {precision} in {time.perf_counter() - started:.0f} s",
                  flush=True)
        manifest = json.loads((out / "manifest.json").read_text())
        bundles[precision] = {"bundle": out, "export_seconds": manifest["export_seconds"],
                              "agreement": manifest["parity"]["agreement"]}
    return bundles


def meets_defaults(figures: dict | None) -> bool | None:
    """Whether an export's agreement figures reach the default thresholds (None for fp32)."""
    if figures is None:
        return None
    per_source = figures["per_source_top20_overlap"]
    return (figures["top100_overlap"] >= DEFAULTS["min_top100_overlap"]
            and (per_source is None or per_source >= DEFAULTS["min_per_source_top20_overlap"])
            and abs(figures["delta_hits100"]) <= DEFAULTS["max_abs_delta_hits100"])


def score_side_by_side(bundles: dict[str, dict], pairs: Path, workdir: Path, rounds: int,
                       batch_size: int) -> dict[str, dict]:
    """Best of ``rounds`` interleaved ``ncnc score`` runs of each precision on ``pairs``."""
    best: dict[str, dict] = {}
    for _ in range(rounds):
        for precision, entry in bundles.items():
            out = workdir / f"scored_{precision}.parquet"
            report = run_bundle(entry["bundle"], pairs, out, batch_size)
            if precision not in best or report["pairs_per_second"] > best[precision]["pairs_per_second"]:
                best[precision] = report
            out.unlink()
    return best


def head_rates(bundles: dict[str, dict], rows: int) -> dict[str, dict]:
    """The heads alone on the same ``rows`` inputs (in-process, 2 threads): rows/s, max abs diff
    from the fp32 head, and whether a row's logit is the same alone as in the batch."""
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from ncnc.scorer.bundle import load_bundle
    from ncnc.scorer.engine import OnnxHead, load_head
    from ncnc.scorer.torch_head import TorchHead

    fp32 = load_bundle(bundles["fp32"]["bundle"])
    levels = fp32.levels
    generator = torch.Generator().manual_seed(0)
    index = torch.randint(0, fp32.num_nodes, (rows, 2), generator=generator)
    xij = levels[0][index[:, 0]] * levels[0][index[:, 1]]
    cn = levels[1][index[:, 0]] + levels[1][index[:, 1]]  # the scale of a two-member sum
    dynamic = bundles["fp32"]["bundle"].parent / "head_int8_dynamic.onnx"
    quantize_dynamic(str(fp32.head_path), str(dynamic), weight_type=QuantType.QInt8,
                     per_channel=True, op_types_to_quantize=["Gemm", "MatMul"])
    cpu = torch.device("cpu")
    loaded = {precision: load_bundle(entry["bundle"]) for precision, entry in bundles.items()}
    heads = {precision: load_head(b.head_path, b.spec, cpu, threads=2)
             for precision, b in loaded.items()}
    heads["int8_dynamic"] = OnnxHead(dynamic, fp32.spec, cpu, threads=2)
    # The torch bf16 head whatever the CPU (a bf16 bundle uses it only with native bf16 GEMMs).
    heads["bf16_torch"] = TorchHead(fp32.head_path, fp32.spec, cpu, threads=2)
    reference = heads["fp32"](cn, xij)
    figures = {}
    for name, head in heads.items():
        head(cn[:4096], xij[:4096])  # warm-up
        seconds = min(_timed(lambda h=head: h(cn, xij)) for _ in range(3))
        logits = head(cn, xij)
        alone = torch.cat([head(cn[k:k + 1], xij[k:k + 1]) for k in range(64)])
        figures[name] = {"rows_per_second": round(rows / seconds),
                         "max_abs_diff_vs_fp32": float((logits - reference).abs().max()),
                         "same_alone_and_in_batch": bool(torch.equal(alone, logits[:64]))}
    return figures


def _timed(run) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def cora_checkpoints(workdir: Path, epochs: int) -> dict[str, Path]:
    """NCN and NCNC Cora checkpoints (README settings, ``epochs`` epochs; cached)."""
    from ncnc.trainer.api import TrainRequest, train

    data = workdir / "planetoid"
    if not data.exists():  # PyG writes processed files beside raw ones: work on a copy
        shutil.copytree(SHARED / "data" / "planetoid" / "Cora", data / "Cora")
    checkpoints = {}
    for model in ("ncn", "ncnc"):
        checkpoints[model] = workdir / f"ck_cora_{model}"
        if not (checkpoints[model] / "config.json").exists():
            started = time.perf_counter()
            train(TrainRequest(model=model, out=checkpoints[model], dataset="cora",
                               data_root=data, progress=False, device="cpu",
                               train_overrides={"epochs": epochs}))
            print(f"trained Cora {model} in {time.perf_counter() - started:.0f} s", flush=True)
    return checkpoints


def cora_pairs(workdir: Path, bundle: Path, count: int) -> Path:
    """A file of ``count`` uniformly random pairs of the bundle's ids (cached)."""
    import numpy as np
    import polars as pl

    from ncnc.scorer.bundle import load_bundle

    path = workdir / f"cora_pairs_{count}.parquet"
    if not path.exists():
        ids = load_bundle(bundle).id_map.ids
        rng = np.random.default_rng(0)
        pl.DataFrame({"src": ids.gather(rng.integers(0, len(ids), count)),
                      "dst": ids.gather(rng.integers(0, len(ids), count))}).write_parquet(path)
    return path


def rows_of(graph: str, model: str, bundles: dict[str, dict], reports: dict[str, dict]) -> list:
    fp32 = reports["fp32"]
    rows = []
    for precision, entry in bundles.items():
        report = reports[precision]
        rows.append({
            "graph": graph, "model": model, "precision": precision,
            "pairs": report["rows_scored"], "pairs_per_second": round(report["pairs_per_second"]),
            "vs_fp32": round(report["pairs_per_second"] / fp32["pairs_per_second"], 3),
            "peak_rss_mib": report["peak_rss_mib"],
            "rss_vs_fp32": round(report["peak_rss_mib"] / fp32["peak_rss_mib"], 3),
            "engine_seconds": report.get("engine_seconds"),
            "memo_hit_rate": report.get("memo_hit_rate"),
            "export_seconds": entry["export_seconds"],
            "agreement": entry["agreement"], "meets_default_thresholds": meets_defaults(
                entry["agreement"])})
    return rows


def print_rows(rows: list[dict]) -> None:
    print(f"{'graph':8} {'model':5} {'prec':5} {'pairs/s':>10} {'x fp32':>7} {'RSS MiB':>8} "
          f"{'x fp32':>7} {'top100':>7} {'src@20':>7} {'dHR@100':>8} {'max|d|':>7}")
    for row in rows:
        def shown(key: str, form: str, a: dict = row["agreement"] or {}) -> str:
            return format(a[key], form) if a.get(key) is not None else "-"

        print(f"{row['graph']:8} {row['model']:5} {row['precision']:5} "
              f"{row['pairs_per_second']:>10,} {row['vs_fp32']:>7.2f} {row['peak_rss_mib']:>8.0f} "
              f"{row['rss_vs_fp32']:>7.2f} {shown('top100_overlap', '.3f'):>7} "
              f"{shown('per_source_top20_overlap', '.3f'):>7} {shown('delta_hits100', '+.4f'):>8} "
              f"{shown('max_abs_logit_diff', '.4f'):>7}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1_000_000)
    parser.add_argument("--degree", type=float, default=10.0)
    parser.add_argument("--ncn-pairs", type=int, default=1_000_000)
    parser.add_argument("--ncnc-pairs", type=int, default=100_000,
                        help="NCNC pairs on the generated graph (about 5k pairs/s on 2 cores)")
    parser.add_argument("--cora-pairs", type=int, default=500_000)
    parser.add_argument("--cora-ncnc-pairs", type=int, default=100_000)
    parser.add_argument("--cora-epochs", type=int, default=20)
    parser.add_argument("--head-rows", type=int, default=65_536)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=65_536)
    parser.add_argument("--skip-generated", action="store_true")
    parser.add_argument("--skip-cora", action="store_true")
    parser.add_argument("--heads-only", action="store_true",
                        help="measure the heads alone (on the generated graph's bundles) and stop")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/ncnc-bench-precision"))
    parser.add_argument("--results", type=Path,
                        default=ROOT / "benchmarks" / "results" / "precision_cpu.json")
    args = parser.parse_args()
    import torch

    args.workdir.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    rows, heads = [], {}
    if not args.skip_generated:
        graph_dir = build_inputs(args.workdir, args.nodes, args.degree, args.ncn_pairs, seed=0)
        full = args.workdir / f"pairs_{args.ncn_pairs}.parquet"
        for model, count in (("ncn", args.ncn_pairs), ("ncnc", args.ncnc_pairs)):
            checkpoint, _ = build_bundle(args.workdir, graph_dir, model)
            bundles = export_precisions(checkpoint, args.workdir, f"generated_{model}")
            if model == "ncn":
                heads = head_rates(bundles, args.head_rows)
                print(f"heads alone, {args.head_rows} rows: {json.dumps(heads)}", flush=True)
                if args.heads_only:
                    break
            pairs = prefix_file(args.workdir, full, count)
            reports = score_side_by_side(bundles, pairs, args.workdir, args.rounds,
                                         args.batch_size)
            rows += rows_of(f"{args.nodes // 1000}k", model, bundles, reports)
            print_rows(rows[-3:])
    if not args.skip_cora and not args.heads_only:
        checkpoints = cora_checkpoints(args.workdir, args.cora_epochs)
        for model, count in (("ncn", args.cora_pairs), ("ncnc", args.cora_ncnc_pairs)):
            bundles = export_precisions(checkpoints[model], args.workdir, f"cora_{model}")
            pairs = cora_pairs(args.workdir, bundles["fp32"]["bundle"], count)
            reports = score_side_by_side(bundles, pairs, args.workdir, args.rounds,
                                         args.batch_size)
            rows += rows_of("cora", model, bundles, reports)
            print_rows(rows[-3:])
    load_after = os.getloadavg()
    print(f"load averages (1, 5, 15 min): before {load_before}, after {load_after}")
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps({
        "command": " ".join(["python", *sys.argv]), "measured": time.strftime("%Y-%m-%d %H:%M"),
        "torch": torch.__version__, "cpu_bf16_native": bool(
            torch.ops.mkldnn._is_mkldnn_bf16_supported()),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cores": os.cpu_count(),
        "load_average_before": load_before, "load_average_after": load_after,
        "rounds": args.rounds, "heads": heads, "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
