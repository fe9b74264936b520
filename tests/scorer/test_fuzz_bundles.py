"""Property-based fuzzing of bundles (issue 14): random truncations, byte flips and field edits of
every bundle file, random manifest JSON.

The property, on the Python API in-process (``load_bundle(...).scorer().score(pairs)``, the path
of ``ncnc score``): one one-line :class:`~ncnc.core.errors.InputError`, or exactly the untampered
scores; never another exception (a traceback), a hang, a different score, or a changed file.
Where the checksums and the manifest digest were recomputed after the damage (as anyone without
the signing key can), a clean result may differ (the bundle is a valid other bundle; only a
signature tells it apart), and with the verify key every such change is refused.

``NCNC_FUZZ_EXAMPLES`` sets the examples per fuzzer (300 in ``make test``);
``NCNC_FUZZ_RANDOM=1`` draws new examples instead of the fixed ones ``make test`` replays.
``benchmarks/fuzz_bundles.py`` runs long campaigns and prints the counts.
"""

from __future__ import annotations

import contextlib
import functools
import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from ncnc.scorer.bundle import load_bundle
from ncnc.scorer.manifest import (
    BUNDLE_FILES,
    FORMAT_VERSION,
    MANIFEST,
    SCHEMA,
    SIGNATURE_FILE,
    seal,
)
from tests.scorer.tampering import FUZZ, damaged, file_hashes, outcome, reseal

pytest.importorskip("model_signing")

# Pairs with and without common neighbours (the hand graph of tests/conftest.py), i == j, repeats.
PAIRS = pl.DataFrame({"src": ["n0", "n1", "n3", "n2", "n0", "n4", "n1"],
                      "dst": ["n3", "n4", "n0", "n5", "n0", "n1", "n4"]})
ALL_FILES = (*BUNDLE_FILES, MANIFEST, SIGNATURE_FILE)

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers()
    | st.sampled_from([2**63, 2**64 - 1, 10**400, -(10**400)])  # beyond int64, beyond float
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=3),
    max_leaves=6,
)


@pytest.fixture(scope="module")
def pristine(signed_bundle, key_pair) -> dict[str, Any]:
    """The signed bundle, its public key and its scores of :data:`PAIRS`."""
    reference = load_bundle(signed_bundle, verify_key=key_pair[1]).scorer(device="cpu")
    return {"bundle": signed_bundle, "key": key_pair[1], "scores": reference.score(PAIRS)}


def score(bundle: Path, **load: Any) -> pl.DataFrame:
    return load_bundle(bundle, **load).scorer(device="cpu").score(PAIRS)


class Workspace:
    """A fresh copy of the pristine bundle for one example, removed afterwards."""

    def __init__(self, source: Path) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="ncnc-fuzz-"))
        self.bundle = self.root / "bundle"
        shutil.copytree(source, self.bundle)

    def __enter__(self) -> Workspace:
        return self

    def __exit__(self, *exc: object) -> None:
        shutil.rmtree(self.root)


def check_untouched(bundle: Path, run: Callable[[], Any]) -> tuple[str, Any]:
    """``outcome(run)``, asserting that it changed no file of ``bundle``."""
    before = file_hashes(bundle)
    result = outcome(run)
    assert file_hashes(bundle) == before, "a file the command read was changed"
    return result


@FUZZ
@given(data=st.data(), name=st.sampled_from(ALL_FILES))
def test_fuzz_damaged_bundle_file_is_refused_or_scores_the_same(pristine, data, name):
    with Workspace(pristine["bundle"]) as work:
        path = work.bundle / name
        path.write_bytes(damaged(data, path.read_bytes()))
        for load in ({}, {"verify_key": pristine["key"]}):
            kind, result = check_untouched(work.bundle, functools.partial(score, work.bundle,
                                                                          **load))
            event(f"{kind} ({'key' if load else 'no key'})")
            if kind == "ran":
                assert result.equals(pristine["scores"]), f"{name}: a different score"


@FUZZ
@given(data=st.data(), name=st.sampled_from(BUNDLE_FILES))
def test_fuzz_damage_with_recomputed_checksums_is_refused_or_runs_cleanly(pristine, data, name):
    with Workspace(pristine["bundle"]) as work:
        path = work.bundle / name
        raw = path.read_bytes()
        changed = damaged(data, raw)
        path.write_bytes(changed)
        reseal(work.bundle)
        kind, result = check_untouched(work.bundle, lambda: score(work.bundle))
        event(f"no key: {kind}")
        if kind == "ran":
            assert result.columns == pristine["scores"].columns and result.height == PAIRS.height
            if name == "program.pt2":  # the scorer never reads it
                assert result.equals(pristine["scores"])
        kind, _ = check_untouched(work.bundle,
                                  lambda: score(work.bundle, verify_key=pristine["key"]))
        assert kind == "refused" or changed == raw, "a changed bundle verified"


def manifest_paths(value: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every key path into the manifest's objects."""
    if not isinstance(value, dict):
        return []
    paths = []
    for key, inner in value.items():
        paths.append((*prefix, key))
        paths.extend(manifest_paths(inner, (*prefix, key)))
    return paths


def nudged(data: Any, value: Any) -> Any:
    """A value of the same type, slightly off: what a hand edit of a valid field gives."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + data.draw(st.sampled_from([-2, -1, 1, 2, 10**6, -(value * 2) - 1]))
    if isinstance(value, float):
        return data.draw(st.sampled_from([value * (1 + 1e-9), -value, 0.0, value + 1]))
    if isinstance(value, str):
        return value + data.draw(st.text(min_size=1, max_size=2))
    return data.draw(JSON_VALUES)


def edit_field(data: Any, manifest: dict[str, Any]) -> None:
    path = data.draw(st.sampled_from(manifest_paths(manifest)), label="field")
    *parents, last = path
    holder = manifest
    for key in parents:
        holder = holder[key]
    action = data.draw(st.sampled_from(["nudge", "replace", "delete", "add"]), label="action")
    if action == "nudge":
        holder[last] = nudged(data, holder[last])
    elif action == "replace":
        holder[last] = data.draw(JSON_VALUES, label="value")
    elif action == "delete":
        del holder[last]
    else:
        holder[data.draw(st.text(min_size=1, max_size=8), label="key")] = data.draw(JSON_VALUES)


@FUZZ
@given(data=st.data(), resealed=st.booleans())
def test_fuzz_manifest_field_edits_are_refused_naming_the_field(pristine, data, resealed):
    with Workspace(pristine["bundle"]) as work:
        path = work.bundle / MANIFEST
        raw = path.read_bytes()
        if resealed:
            reseal(work.bundle, lambda m: edit_field(data, m))
        else:
            manifest = json.loads(raw)
            edit_field(data, manifest)
            path.write_text(json.dumps(manifest, indent=2))
        same = json.loads(path.read_bytes()) == json.loads(raw)
        kind, result = check_untouched(work.bundle, lambda: score(work.bundle))
        event(f"{'resealed' if resealed else 'hand edit'}: {kind}")
        if kind == "ran":
            assert resealed or same, "an edited manifest was scored"
            if same:
                assert result.equals(pristine["scores"])
        kind, _ = check_untouched(work.bundle,
                                  lambda: score(work.bundle, verify_key=pristine["key"]))
        assert kind == "refused" or path.read_bytes() == raw, "an edited manifest verified"


def manifest_like(data: Any) -> bytes:
    """Random manifest files: any bytes, any JSON, or an object with the manifest's field names
    (format and version right, values random), sealed or not."""
    choice = data.draw(st.sampled_from(["bytes", "json", "fields"]), label="kind")
    if choice == "bytes":
        return data.draw(st.binary(max_size=300), label="bytes")
    if choice == "json":
        return json.dumps(data.draw(JSON_VALUES, label="json")).encode()
    names = st.sampled_from(sorted(SCHEMA.fields)) | st.text(max_size=8)
    fields = data.draw(st.dictionaries(names, JSON_VALUES, max_size=14), label="fields")
    fields.update(format="ncnc-bundle", format_version=FORMAT_VERSION)
    if data.draw(st.booleans(), label="sealed"):
        with contextlib.suppress(ValueError):  # NaN somewhere cannot be sealed: write it as is
            fields = seal(fields)
    return json.dumps(fields).encode()


@FUZZ
@given(data=st.data())
def test_fuzz_random_manifest_json_is_refused_in_one_line(pristine, data):
    from ncnc.scorer.manifest import is_bundle

    with Workspace(pristine["bundle"]) as work:
        content = manifest_like(data)
        (work.bundle / MANIFEST).write_bytes(content)
        kind, message = check_untouched(work.bundle, lambda: score(work.bundle))
        assert kind == "refused", "a random manifest was scored"
        event("refused: " + message.split(": ", 1)[1].split(" ", 2)[0])
        assert isinstance(is_bundle(work.bundle), bool)
