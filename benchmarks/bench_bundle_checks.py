"""What the load-time checks of a bundle cost, next to the reads they guard (issue 14).

Builds a synthetic bundle (random symmetric graph, random float32 tables, a tiny ONNX head that
fits the spec; no training) of ``--nodes`` nodes, ``--degree`` average degree and ``--hidden``
width with NCNC depth 1 (three tables), signs it, and times, in interleaved rounds, each step of
``load_bundle(...).scorer()`` on the CPU:

- manifest and id map: schema, digest, file sizes and the id map (``load_bundle(verify=False)``,
  no arrays);
- checksums: the sha256 pass over every file (``verify=True`` minus the above);
- signature: model-signing's verification (hashes every file again, checks the signature);
- graph read (huge pages) and its ``validate_csr``; tables read and their finite check;
- head: onnxruntime session, input checks and the two-pair probe.

Prints one JSON object: sizes, and the median seconds of each step over ``--rounds`` rounds.

    python benchmarks/bench_bundle_checks.py --nodes 500000 --degree 10 --hidden 64
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def build(folder: Path, nodes: int, degree: int, hidden: int, seed: int) -> Path:
    import onnx
    from onnx import TensorProto, helper

    from ncnc.core.ids import IdMap
    from ncnc.scorer.bundle import ScoringSpec, write_arrays, write_manifest
    from ncnc.scorer.signing import sign_bundle
    from ncnc.triton_kernels import build_csr

    rng = np.random.default_rng(seed)
    edges = torch.from_numpy(rng.integers(0, nodes, (nodes * degree // 2, 2)))
    graph = build_csr(edges, nodes)
    levels = [torch.from_numpy(rng.standard_normal((nodes, hidden), dtype=np.float32))
              for _ in range(3)]
    bundle = folder / "bundle"
    bundle.mkdir()
    write_arrays(bundle, graph, levels, IdMap.from_ids(range(nodes)))
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["num_pairs", hidden])
              for n in ("cn", "xij")]
    model = helper.make_model(helper.make_graph(
        [helper.make_node("Concat", ["cn", "xij"], ["both"], axis=1),
         helper.make_node("ReduceSum", ["both", "axes"], ["logit"], keepdims=0)], "head", inputs,
        [helper.make_tensor_value_info("logit", TensorProto.FLOAT, ["num_pairs"])],
        initializer=[helper.make_tensor("axes", TensorProto.INT64, [1], [1])]),
        opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 10
    onnx.save(model, str(bundle / "head.onnx"))
    (bundle / "program.pt2").write_bytes(b"not used by the scorer")
    spec = ScoringSpec("ncnc", 1, hidden, nodes, 4.3, 2.8, 0.75, 1.0, -1, 0)
    parity = {"pairs": 0, "pairs_with_common_neighbors": 0, "onnx_max_abs_diff": 0.0,
              "torch_export_max_abs_diff": 0.0, "atol": 1e-4,
              "batch_sizes": {"onnx": 1, "torch_export": 1, "traced": 1}}
    write_manifest(bundle, spec, {"exported_from": "synthetic", "graph_source": "synthetic",
                                  "num_edges": graph.num_entries // 2, "opset": 20,
                                  "parity": parity, "versions": {}, "export_seconds": 0.0},
                   signed=True)
    key = _write_key(folder)
    sign_bundle(bundle, key)
    return bundle


def _write_key(folder: Path) -> Path:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    private = ec.generate_private_key(ec.SECP256R1())
    (folder / "key.pem").write_bytes(private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    (folder / "pub.pem").write_bytes(private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return folder / "key.pem"


def one_round(bundle: Path, public: Path) -> dict[str, float]:
    from ncnc.scorer import bundle as bundle_module
    from ncnc.scorer.engine import OnnxHead
    from ncnc.triton_kernels import validate_csr

    def timed(step):
        started = time.perf_counter()
        result = step()
        return result, time.perf_counter() - started

    loaded, manifest_s = timed(lambda: bundle_module.load_bundle(bundle, verify=False))
    _, verified_s = timed(lambda: bundle_module.load_bundle(bundle))
    _, signed_s = timed(lambda: bundle_module.load_bundle(bundle, verify_key=public))
    n, hidden = loaded.spec.num_nodes, loaded.spec.hidden
    graph_spec = {"indptr": (torch.int64, (n + 1,)),
                  "indices": (torch.int64, (2 * loaded.manifest["num_edges"],))}
    graph, graph_read_s = timed(lambda: bundle_module.read_safetensors(
        bundle / "graph.safetensors", graph_spec))
    _, csr_s = timed(lambda: validate_csr(graph["indptr"], graph["indices"]))
    names = [f"level{k}" for k in range(loaded.spec.num_levels)]
    tables, tables_read_s = timed(lambda: bundle_module.read_safetensors(
        bundle / "tables.safetensors", {name: (torch.float32, (n, hidden)) for name in names}))
    _, finite_s = timed(lambda: [bundle_module._check_finite(tables[k], k) for k in names])
    _, head_s = timed(lambda: OnnxHead(bundle / "head.onnx", loaded.spec, torch.device("cpu")))
    return {"manifest_and_id_map": manifest_s, "checksums": verified_s - manifest_s,
            "signature": signed_s - verified_s, "graph_read": graph_read_s,
            "validate_csr": csr_s, "tables_read": tables_read_s, "finite_check": finite_s,
            "head_checks": head_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=500_000)
    parser.add_argument("--degree", type=int, default=10)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ncnc-bench-checks-") as tmp:
        folder = Path(tmp)
        bundle = build(folder, args.nodes, args.degree, args.hidden, seed=0)
        rounds = [one_round(bundle, folder / "pub.pem") for _ in range(args.rounds)]
        sizes = {p.name: p.stat().st_size for p in sorted(bundle.iterdir())}
    print(json.dumps({
        "nodes": args.nodes, "degree": args.degree, "hidden": args.hidden,
        "bundle_mib": round(sum(sizes.values()) / 2**20, 1),
        "median_seconds": {step: round(statistics.median(r[step] for r in rounds), 4)
                           for step in rounds[0]},
        "rounds": args.rounds, "torch_threads": torch.get_num_threads(),
        "load_average": round(os.getloadavg()[0], 1), "cores": os.cpu_count(),
    }, indent=2))


if __name__ == "__main__":
    main()
