"""What the bundle tests do to bundles: copy, reseal (as someone without the key could), sign,
hash every file before and after a command, write keys and ONNX heads; the fuzzers' damages,
settings and verdict."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings

from ncnc.core.errors import InputError
from ncnc.scorer.manifest import MANIFEST, seal


def copy_bundle(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def file_hashes(*paths: Path) -> dict[Path, str]:
    """sha256 of every file under ``paths`` (files or folders): compare before and after a
    command to prove it changed none of what it read."""
    files: list[Path] = []
    for path in (p for p in paths if p.exists()):
        files.extend(sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path])
    return {f: hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def reseal(bundle: Path, edit: Callable[[dict[str, Any]], None] | None = None) -> None:
    """Recompute every listed file's size and sha256, apply ``edit`` to the manifest, and
    recompute its digest: what anyone who changed a bundle can do without the signing key."""
    manifest = json.loads((bundle / MANIFEST).read_text())
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if isinstance(files, dict):
        for name in files:
            if (bundle / name).is_file():
                data = (bundle / name).read_bytes()
                files[name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    if edit is not None:
        edit(manifest)
    if isinstance(manifest, dict):
        with contextlib.suppress(ValueError):  # NaN in a field: the schema refuses it first
            manifest = seal(manifest)
    (bundle / MANIFEST).write_text(json.dumps(manifest, indent=2))


def edit_manifest(bundle: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    """Apply ``edit`` to the manifest without resealing it (a hand edit)."""
    manifest = json.loads((bundle / MANIFEST).read_text())
    edit(manifest)
    (bundle / MANIFEST).write_text(json.dumps(manifest, indent=2))


def write_key_pair(folder: Path, name: str = "ncnc") -> tuple[Path, Path]:
    """A fresh P-256 key pair as PEM files ``name-key.pem``, ``name-pub.pem`` in ``folder``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    private = folder / f"{name}-key.pem"
    public = folder / f"{name}-pub.pem"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


def sign_copy(source: Path, target: Path, private_key: Path) -> Path:
    """A copy of ``source`` signed as ``ncnc export --sign-key`` signs: the manifest records the
    signature (resealed), then every file is signed."""
    from ncnc.scorer.manifest import SIGNATURE_FILE
    from ncnc.scorer.signing import sign_bundle

    copy_bundle(source, target)
    reseal(target, lambda m: m.update(signature=SIGNATURE_FILE))
    sign_bundle(target, private_key)
    return target


def one_line(message: str) -> bool:
    return bool(message) and "\n" not in message.strip() and "Traceback" not in message


# --- what the fuzzers do to a file's bytes --------------------------------------------------

DAMAGES = ("truncate", "flip", "set", "insert", "delete", "append")


def damaged(data: Any, raw: bytes) -> bytes:
    """``raw`` with one random damage drawn from Hypothesis' ``data`` (``st.data()``): a cut, a
    flipped bit, a set byte, inserted or deleted bytes, or garbage appended. Positions favour
    the first and last 256 bytes, where the headers and footers of our formats are."""
    from hypothesis import strategies as st

    n = len(raw)
    kind = data.draw(st.sampled_from(DAMAGES), label="damage")
    if n == 0 or kind == "append":
        return raw + data.draw(st.binary(min_size=1, max_size=64), label="appended")
    pos = data.draw(st.one_of(st.integers(0, min(255, n - 1)), st.integers(max(0, n - 256), n - 1),
                              st.integers(0, n - 1)), label="position")
    if kind == "truncate":
        return raw[:pos]
    if kind == "flip":
        bit = data.draw(st.integers(0, 7), label="bit")
        return raw[:pos] + bytes([raw[pos] ^ (1 << bit)]) + raw[pos + 1:]
    if kind == "set":
        return raw[:pos] + bytes([data.draw(st.integers(0, 255), label="byte")]) + raw[pos + 1:]
    if kind == "insert":
        return raw[:pos] + data.draw(st.binary(min_size=1, max_size=16), label="inserted") + raw[pos:]
    length = data.draw(st.integers(1, 16), label="deleted")
    return raw[:pos] + raw[pos + length:]


def cli_score_and_candidates(bundle: Path, pairs: Any, folder: Path, *extra: str) -> dict[str, Any]:
    """``ncnc score`` (of the polars frame ``pairs``, written to ``folder``) and ``ncnc
    candidates`` on ``bundle``, with ``extra`` options: their click results by command name.
    Asserts that neither changed a file it read."""
    from click.testing import CliRunner

    from ncnc.cli import cli

    path = folder / "pairs.parquet"
    pairs.write_parquet(path)
    before = file_hashes(bundle, path)
    commands = {"score": ["score", "--pairs", str(path), "--out", str(folder / "out.parquet")],
                "candidates": ["candidates", "--out", str(folder / "cands.parquet")]}
    results = {name: CliRunner().invoke(cli, [*command, "--bundle", str(bundle), "--quiet",
                                              *extra])
               for name, command in commands.items()}
    assert file_hashes(bundle, path) == before
    return results


def onnx_head(path: Path, inputs: dict[str, list], output_shape: list) -> Path:
    """A head that sums its inputs' rows: ``inputs`` name -> shape (``"n"`` = dynamic)."""
    import onnx
    from onnx import TensorProto, helper

    names = list(inputs)
    nodes = [helper.make_node("Concat", names, ["joined"], axis=1) if len(names) > 1
             else helper.make_node("Identity", names, ["joined"]),
             helper.make_node("ReduceSum", ["joined", "axes"], ["logit"], keepdims=0)]
    graph = helper.make_graph(
        nodes, "head",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs.items()],
        [helper.make_tensor_value_info("logit", TensorProto.FLOAT, output_shape)],
        initializer=[helper.make_tensor("axes", TensorProto.INT64, [1], [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 10
    onnx.save(model, str(path))
    return path


# --- the fuzzers' settings and verdict ------------------------------------------------------

EXAMPLES = int(os.environ.get("NCNC_FUZZ_EXAMPLES", "300"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                derandomize=os.environ.get("NCNC_FUZZ_RANDOM") is None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def outcome(run: Callable[[], Any]) -> tuple[str, Any]:
    """("refused", message) for an InputError, else ("ran", the result). Anything else raises:
    the fuzzer then fails with the traceback a user would have seen."""
    try:
        return "ran", run()
    except InputError as err:
        assert one_line(str(err)), f"not one line: {err!s}"
        return "refused", str(err)
