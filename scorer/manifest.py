"""``manifest.json``: its typed schema, its own digest, and the strict reading of JSON in a bundle.

A bundle's reader trusts nothing the manifest says until it passed, in this order:

1. :func:`strict_json`: at most :data:`MAX_MANIFEST_BYTES`, UTF-8, no duplicate keys, no nesting
   deep enough to exhaust the parser's stack;
2. the format tag and version (an older bundle gets the "re-export" message, whatever else it
   holds);
3. :data:`SCHEMA`: every field's type, range and known values, no field missing and none unknown,
   and the rules between fields (``depth`` vs ``model``, ``cap``, the file list);
4. the digest: ``manifest_sha256`` is the sha256 of the manifest's canonical content (every other
   field, :func:`canonical_bytes`), so an edit of any field is refused.

The digest protects against accidents (a hand edit, a bad merge, a sync tool that rewrote the
file): anyone can recompute it, so it proves nothing about who wrote the bundle. Signing
(:mod:`ncnc.scorer.signing`) is what protects against an attacker.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ncnc.core.errors import InputError, first_line

BUNDLE_FORMAT = "ncnc-bundle"
FORMAT_VERSION = 3  # 2: manifest_sha256, signature, a closed schema; 3: spec.precision, parity.agreement
MANIFEST = "manifest.json"
GRAPH_FILE = "graph.safetensors"
TABLES_FILE = "tables.safetensors"
ID_MAP_FILE = "id_map.parquet"
HEAD_FILE = "head.onnx"
PROGRAM_FILE = "program.pt2"
BUNDLE_FILES = (GRAPH_FILE, TABLES_FILE, ID_MAP_FILE, HEAD_FILE, PROGRAM_FILE)
SIGNATURE_FILE = "model.sig"  # model-signing's conventional name; not in `files` (it signs them)
DIGEST_FIELD = "manifest_sha256"
MAX_MANIFEST_BYTES = 1 << 20  # a real manifest is about 2 KB
MODELS = ("gae", "ncn", "ncnc")
DEPTHS = {"gae": (0,), "ncn": (0,), "ncnc": (1, 2)}
PRECISIONS = ("fp32", "bf16", "int8")
"""``spec.precision``: fp32 tables and head; bf16 tables and a bf16 head; bf16 tables and an
int8 (statically quantised) head."""
INT64_MAX = (1 << 63) - 1


class BundleError(InputError):
    """The bundle is missing, changed since export, malformed, or of an unknown format."""


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"duplicate key {next(k for k in keys if keys.count(k) > 1)!r}")
    return dict(pairs)


def strict_json(raw: bytes, what: Path | str) -> Any:
    """Parse ``raw`` as JSON without duplicate keys, or raise :class:`BundleError` naming
    ``what``. ``NaN``, ``Infinity`` (and ``1e999``) parse as floats so that the schema, which
    wants every number finite, can name the field that holds one."""
    try:
        return json.loads(raw.decode("utf-8"), object_pairs_hook=_refuse_duplicates)
    except (ValueError, UnicodeDecodeError, RecursionError) as err:
        raise BundleError(f"{what}: not valid JSON ({first_line(err)})") from err


# --- the schema: a field is one of these kinds -----------------------------------------------


@dataclass(frozen=True)
class Integer:
    low: int
    high: int
    excluded: tuple[int, ...] = ()

    def problem(self, value: Any) -> str | None:
        if type(value) is not int:  # bool is an int to Python, not to the schema
            return f"must be an integer in [{self.low}, {self.high}]"
        if not self.low <= value <= self.high or value in self.excluded:
            also = f" other than {', '.join(map(str, self.excluded))}" if self.excluded else ""
            return f"must be an integer in [{self.low}, {self.high}]{also}"
        return None


@dataclass(frozen=True)
class Number:
    low: float = -math.inf
    low_open: bool = False
    high: float = math.inf

    def problem(self, value: Any) -> str | None:
        wanted = "must be a finite number" + self._range()
        if type(value) not in (int, float) or not _finite_float(value):
            return wanted
        if not self.low <= value <= self.high or (self.low_open and value == self.low):
            return wanted
        return None

    def _range(self) -> str:
        if self.low > -math.inf and self.high < math.inf:
            return f" in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}]"
        if self.low > -math.inf:
            return f" {'>' if self.low_open else '>='} {self.low:g}"
        return f" <= {self.high:g}" if self.high < math.inf else ""


def _finite_float(value: int | float) -> bool:
    """Whether ``value`` is a finite float or an int a float can hold (10**400 cannot)."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


@dataclass(frozen=True)
class Text:
    choices: tuple[str, ...] = ()
    max_length: int = 4096

    def problem(self, value: Any) -> str | None:
        if self.choices:
            if value not in self.choices or type(value) is not str:
                return f"must be one of {', '.join(map(repr, self.choices))}"
            return None
        if type(value) is not str or len(value) > self.max_length:
            return f"must be a string of at most {self.max_length} characters"
        return None


@dataclass(frozen=True)
class Hex:
    length: int

    def problem(self, value: Any) -> str | None:
        if (type(value) is not str or len(value) != self.length
                or any(c not in "0123456789abcdef" for c in value)):
            return f"must be {self.length} lowercase hex digits"
        return None


@dataclass(frozen=True)
class Nullable:
    kind: Any

    def problem(self, value: Any) -> str | None:
        if value is None:
            return None
        inner = self.kind.problem(value)
        return None if inner is None else f"{inner}, or null"


@dataclass(frozen=True)
class Record:
    """A JSON object with exactly these fields (``noun`` names them in messages)."""

    fields: Mapping[str, Any]
    noun: str = "field"

    def problem(self, value: Any) -> str | None:
        if type(value) is not dict:
            return f"must be an object with fields {', '.join(self.fields)}"
        return None


@dataclass(frozen=True)
class StringMap:
    """A JSON object of up to ``max_items`` string keys, each value of one kind."""

    value: Any
    max_items: int = 64

    def problem(self, value: Any) -> str | None:
        if type(value) is not dict or len(value) > self.max_items:
            return f"must be an object of at most {self.max_items} entries"
        return None


COUNT = Integer(0, 1 << 53)
CALIBRATION = Number(-1e6, high=1e6)
FILE_ENTRY = Record({"sha256": Hex(64), "bytes": Integer(0, 1 << 62)})
SPEC = Record({
    "model": Text(MODELS),
    "depth": Integer(0, 2),
    "hidden": Integer(1, 1 << 20),
    "num_nodes": Integer(1, 1 << 48),
    # The calibration's magnitudes stay far inside float32 (the trained ones are below 10), so
    # that no finite table can give an infinite completion weight.
    "probscale": CALIBRATION,
    "proboffset": CALIBRATION,
    "pt": Number(0.0, low_open=True, high=CALIBRATION.high),  # p divides by pt * s + 1 - s
    "alpha": CALIBRATION,
    "cap": Integer(-1, (1 << 31) - 1, excluded=(0,)),  # -1: no cap; 0 would divide by zero
    "cap_seed": Integer(-INT64_MAX - 1, INT64_MAX),
    "precision": Text(PRECISIONS),
})
FRACTION = Number(0.0, high=1.0)
AGREEMENT = Record({  # a reduced-precision bundle against the fp32 scores of its checkpoint
    # The head the export scored with (ncnc.scorer.engine.head_kind): a bf16 bundle runs a bf16
    # head only where the device has native bf16 GEMMs.
    "head": Text(("onnxruntime-fp32", "torch-bf16", "onnxruntime-int8")),
    "pairs": COUNT,
    "validation_pairs": COUNT,
    "candidate_sources": COUNT,
    "max_abs_logit_diff": Number(0.0),
    "mean_abs_logit_diff": Number(0.0),
    "spearman": Number(-1.0, high=1.0),
    "top100_overlap": FRACTION,
    "per_source_top20_overlap": Nullable(FRACTION),  # null: no source has more than 20
    "hits100_fp32": FRACTION,
    "delta_hits100": Number(-1.0, high=1.0),
    "auc_fp32": FRACTION,
    "delta_auc": Number(-1.0, high=1.0),
    "thresholds": Record({"min_top100_overlap": Number(0.0),
                          "min_per_source_top20_overlap": Number(0.0),
                          "max_abs_delta_hits100": Number(0.0)}),
})
SCHEMA = Record({
    "format": Text((BUNDLE_FORMAT,)),
    "format_version": Integer(FORMAT_VERSION, FORMAT_VERSION),
    DIGEST_FIELD: Hex(64),
    "spec": SPEC,
    "files": Record({name: FILE_ENTRY for name in BUNDLE_FILES}, noun="file"),
    "signature": Nullable(Text((SIGNATURE_FILE,))),
    "exported_from": Text(),
    "graph_source": Text(),
    "num_edges": Integer(0, 1 << 61),
    "snapshot": Record({  # the graph exported against the checkpoint (docs/growing-graphs.md)
        "nodes": Integer(1, 1 << 48),
        "known_nodes": COUNT,
        "new_nodes": COUNT,
        "removed_nodes": COUNT,
        "new_nodes_without_edges": COUNT,
        "new_node_rule": Text(("features", "mean", "zero", "error")),
        "new_nodes_given_the_global_mean": Nullable(COUNT),
        "features_source": Nullable(Text()),
    }),
    "opset": Integer(7, 1000),
    "parity": Record({
        "pairs": COUNT,
        "pairs_with_common_neighbors": COUNT,
        "onnx_max_abs_diff": Number(0.0),
        "torch_export_max_abs_diff": Number(0.0),
        "atol": Number(0.0, low_open=True),
        "batch_sizes": Record({"onnx": COUNT, "torch_export": COUNT, "traced": COUNT}),
        "agreement": Nullable(AGREEMENT),  # null for an fp32 bundle
    }),
    "versions": StringMap(Text(max_length=256)),
    "export_seconds": Number(0.0),
})
"""Every field of ``manifest.json`` (``docs/bundle-format.md`` describes each)."""


def check_fields(kind: Any, value: Any, where: str, path: Path) -> None:
    """Raise :class:`BundleError` naming the first field of ``value`` that ``kind`` refuses."""
    problem = kind.problem(value)
    if problem is not None:
        raise BundleError(f"{path}: field {where} {problem}, got {_shown(value)}")
    if isinstance(kind, Nullable) and value is not None:
        check_fields(kind.kind, value, where, path)
    elif isinstance(kind, Record):
        missing = [name for name in kind.fields if name not in value]
        unknown = [name for name in value if name not in kind.fields]
        if missing:
            raise BundleError(f"{path}: field {_join(where, missing[0])} is missing")
        if unknown:
            holder = f"field {where}" if where else "the manifest"
            raise BundleError(f"{path}: {holder} holds an unknown {kind.noun} {unknown[0]!r} "
                              f"(known: {', '.join(kind.fields)})")
        for name, field_kind in kind.fields.items():
            check_fields(field_kind, value[name], _join(where, name), path)
    elif isinstance(kind, StringMap):
        for name, item in value.items():
            check_fields(kind.value, item, _join(where, name), path)


def _join(where: str, name: str) -> str:
    """``where.name``; a name with spaces or unprintable characters in JSON quotes (a message
    stays one line whatever the keys hold)."""
    shown = name if name.isprintable() and name.strip() == name and name else json.dumps(name)
    return f"{where}.{shown}" if where else shown


def _shown(value: Any) -> str:
    try:
        text = json.dumps(value)
    except (TypeError, ValueError, RecursionError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_manifest(manifest: Any, path: Path) -> dict[str, Any]:
    """Check a parsed manifest against :data:`SCHEMA` and the rules between its fields.

    Raises:
        BundleError: naming the first field that is missing, unknown, of the wrong type or out
            of range (``path`` names the file).
    """
    if type(manifest) is not dict:
        raise BundleError(f"{path}: not an ncnc bundle manifest (a JSON "
                          f"{type(manifest).__name__}, not an object)")
    check_fields(SCHEMA, manifest, "", path)
    spec = manifest["spec"]
    if spec["depth"] not in DEPTHS[spec["model"]]:
        raise BundleError(f"{path}: field spec.depth must be "
                          f"{' or '.join(map(str, DEPTHS[spec['model']]))} for model "
                          f"{spec['model']!r}, got {spec['depth']}")
    if (manifest["parity"]["agreement"] is None) != (spec["precision"] == "fp32"):
        raise BundleError(f"{path}: field parity.agreement must be null exactly for an fp32 "
                          f"bundle (spec.precision is {spec['precision']!r})")
    snapshot = manifest["snapshot"]
    if snapshot["nodes"] != spec["num_nodes"]:
        raise BundleError(f"{path}: field snapshot.nodes must equal spec.num_nodes "
                          f"({spec['num_nodes']}), got {snapshot['nodes']}")
    if snapshot["known_nodes"] + snapshot["new_nodes"] != snapshot["nodes"]:
        raise BundleError(f"{path}: field snapshot.new_nodes must be snapshot.nodes - "
                          f"snapshot.known_nodes ({snapshot['nodes'] - snapshot['known_nodes']}), "
                          f"got {snapshot['new_nodes']}")
    return manifest


def canonical_bytes(manifest: Mapping[str, Any]) -> bytes:
    """The manifest's content without its digest, in one canonical spelling (sorted keys, no
    spaces, ASCII): whitespace or key order alone do not change it."""
    content = {key: value for key, value in manifest.items() if key != DIGEST_FIELD}
    return json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode()


def seal(manifest: dict[str, Any]) -> dict[str, Any]:
    """``manifest`` with its ``manifest_sha256`` (over every other field)."""
    return {**manifest, DIGEST_FIELD: hashlib.sha256(canonical_bytes(manifest)).hexdigest()}


def read_manifest_bytes(path: Path) -> bytes:
    """The bytes of ``path / manifest.json``, at most :data:`MAX_MANIFEST_BYTES` of them."""
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise BundleError(f"{path} is not an ncnc bundle: {MANIFEST} is missing")
    with manifest_path.open("rb") as f:
        raw = f.read(MAX_MANIFEST_BYTES + 1)
    if len(raw) > MAX_MANIFEST_BYTES:
        raise BundleError(f"{manifest_path}: larger than {MAX_MANIFEST_BYTES} bytes; not a "
                          "bundle manifest")
    return raw


def parse_manifest(path: Path) -> dict[str, Any]:
    """Read and check ``path / manifest.json`` (steps 1-4 of the module docstring).

    Raises:
        BundleError: missing, not strict JSON, another format or version, a field the schema
            refuses, or content that does not match ``manifest_sha256``.
    """
    manifest_path = path / MANIFEST
    manifest = strict_json(read_manifest_bytes(path), manifest_path)
    if type(manifest) is dict and manifest.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{manifest_path}: not an ncnc bundle (format "
                          f"{_shown(manifest.get('format'))})")
    if type(manifest) is dict and manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(
            f"{manifest_path}: bundle format version {_shown(manifest.get('format_version'))} "
            f"is not supported (this ncnc reads version {FORMAT_VERSION}); re-export the model"
        )
    check_manifest(manifest, manifest_path)
    if seal(manifest)[DIGEST_FIELD] != manifest[DIGEST_FIELD]:
        raise BundleError(f"{manifest_path}: changed since export (its content does not match "
                          f"field {DIGEST_FIELD}); re-export the model")
    return manifest


def is_bundle(path: Path) -> bool:
    """Whether ``path`` is a folder ``ncnc export`` wrote (of any format version): the only kind
    of folder an export may replace."""
    try:
        manifest = strict_json(read_manifest_bytes(Path(path)), Path(path) / MANIFEST)
    except (BundleError, OSError):
        return False
    return type(manifest) is dict and manifest.get("format") == BUNDLE_FORMAT
