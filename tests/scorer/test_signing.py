"""scorer/signing.py: integrity is not authenticity (issue 14, class 6). A bundle whose checksums
were recomputed after a change passes every check but the signature; with a verify key, any change
after signing, a missing signature or the wrong key is one BundleError line, on every path (API,
CLI score and candidates, the Ray engine's driver and actors)."""

from __future__ import annotations

import json
import sys

import polars as pl
import pytest
from click.testing import CliRunner

from ncnc.cli import cli
from ncnc.core.errors import InputError
from ncnc.core.extras import MissingExtraError
from ncnc.scorer.bundle import BundleError, load_bundle
from ncnc.scorer.manifest import SIGNATURE_FILE
from tests.scorer.tampering import (
    copy_bundle,
    file_hashes,
    one_line,
    onnx_head,
    reseal,
    write_key_pair,
)

pytest.importorskip("model_signing")

PAIRS = pl.DataFrame({"src": ["n0", "n1", "n3", "n2"], "dst": ["n3", "n4", "n0", "n5"]})


def scores(bundle, **load):
    return load_bundle(bundle, **load).scorer(device="cpu").score(PAIRS)


def refused(bundle, key, match, **load):
    before = file_hashes(bundle, key)
    with pytest.raises(BundleError, match=match) as caught:
        scores(bundle, verify_key=key, **load)
    assert one_line(str(caught.value)), str(caught.value)
    assert file_hashes(bundle, key) == before


@pytest.fixture
def signed_copy(signed_bundle, tmp_path):
    return copy_bundle(signed_bundle, tmp_path / "bundle")


def test_a_signed_bundle_verifies_and_scores_like_the_unsigned_one(signed_bundle, bundle_dir,
                                                                   key_pair):
    assert (signed_bundle / SIGNATURE_FILE).is_file()
    assert json.loads((signed_bundle / "manifest.json").read_text())["signature"] == "model.sig"
    assert scores(signed_bundle, verify_key=key_pair[1]).equals(scores(bundle_dir))
    assert scores(signed_bundle, verify_key=key_pair[1], verify=False).equals(scores(bundle_dir))


def test_a_rewritten_head_with_a_recomputed_checksum_is_refused_by_the_signature(signed_copy,
                                                                                 key_pair):
    # Regression: checksums in an unsigned manifest only catch accidents; a rewritten head.onnx
    # with its checksum recomputed was scored.
    onnx_head(signed_copy / "head.onnx", {"cn": ["n", 16], "xij": ["n", 16]}, ["n"])
    reseal(signed_copy)
    assert scores(signed_copy).height == len(PAIRS)  # every check without the key passes
    # model-signing lists its mismatches as the repr of a list of strings: a quote is escaped
    # (\\') when a digest's bytes put a double quote into the same element.
    refused(signed_copy, key_pair[1], "signature does not verify with .*Hash mismatch for "
                                      r"\\?'head\.onnx\\?'")


@pytest.mark.parametrize("name", ["graph.safetensors", "tables.safetensors", "id_map.parquet",
                                  "program.pt2", "manifest.json"])
def test_any_byte_changed_after_signing_is_refused(signed_copy, key_pair, name):
    path = signed_copy / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # in manifest.json: inside a digit or a name
    path.write_bytes(bytes(data))
    if name != "manifest.json":
        reseal(signed_copy)
    with pytest.raises(BundleError) as caught:
        scores(signed_copy, verify_key=key_pair[1])
    assert one_line(str(caught.value))


@pytest.mark.parametrize("change, match", [
    (lambda b: (b / "notes.txt").write_text("hi"), "Extra files found in model .*notes.txt"),
    (lambda b: (b / ".gitignore").write_text("*"), "Extra files found in model .*.gitignore"),
    (lambda b: (b / SIGNATURE_FILE).unlink(), r"not signed \(model.sig is missing\)"),
    (lambda b: (b / SIGNATURE_FILE).write_bytes((b / SIGNATURE_FILE).read_bytes()[:-40]),
     "signature does not verify"),
    (lambda b: (b / SIGNATURE_FILE).write_text("{}"), "signature does not verify"),
    (lambda b: reseal(b, lambda m: m.update(signature=None)), r"not signed \(exported without "
                                                               "--sign-key\\)"),
])
def test_a_changed_or_missing_signature_or_an_added_file_is_refused(signed_copy, key_pair,
                                                                    change, match):
    change(signed_copy)
    refused(signed_copy, key_pair[1], match)


def test_the_wrong_key_or_an_unsigned_bundle_is_refused(signed_bundle, bundle_dir, tmp_path):
    _, other = write_key_pair(tmp_path, "other")
    refused(signed_bundle, other, "signature does not verify with .*other-pub.pem .*Key mismatch")
    refused(bundle_dir, other, r"not signed \(exported without --sign-key\)")


def test_keys_that_cannot_be_used_are_named(signed_bundle, key_pair, tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    from ncnc.scorer.signing import check_signing_key

    rsa_pub = tmp_path / "rsa.pem"
    rsa_pub.write_bytes(rsa.generate_private_key(65537, 2048).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    locked = tmp_path / "locked.pem"
    locked.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret")))
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a key")
    for key, match in [(rsa_pub, "an _?RSAPublicKey; bundles are signed with elliptic-curve"),
                       (garbage, "not a PEM public key"),
                       (key_pair[0], "not a PEM public key")]:  # the private key by mistake
        with pytest.raises(InputError, match=f"--verify-key {key}: {match}"):
            load_bundle(signed_bundle, verify_key=key)
    for key, match in [(locked, "a password-protected key"), (key_pair[1], "not a PEM private")]:
        with pytest.raises(InputError, match=f"--sign-key {key}: {match}"):
            check_signing_key(key)


def test_without_the_sign_extra_the_hint_names_it(signed_bundle, key_pair, monkeypatch):
    monkeypatch.setitem(sys.modules, "model_signing", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'ncnc-toolchain\[sign\]'"):
        load_bundle(signed_bundle, verify_key=key_pair[1])
    assert len(scores(signed_bundle)) == len(PAIRS)  # without a key nothing needs the extra


def test_cli_score_and_candidates_verify_key(signed_bundle, key_pair, tmp_path):
    pairs = tmp_path / "pairs.parquet"
    PAIRS.write_parquet(pairs)
    _, other = write_key_pair(tmp_path, "other")
    before = file_hashes(signed_bundle, pairs, *key_pair, other)
    runner = CliRunner()
    commands = {
        "score": ["score", "--bundle", str(signed_bundle), "--pairs", str(pairs), "--quiet"],
        "candidates": ["candidates", "--bundle", str(signed_bundle), "--quiet"],
    }
    for name, command in commands.items():
        out = tmp_path / f"{name}.parquet"
        good = runner.invoke(cli, [*command, "--out", str(out), "--verify-key", str(key_pair[1])])
        assert good.exit_code == 0, good.output
        plain = runner.invoke(cli, [*command, "--out", str(tmp_path / "plain.parquet")])
        assert pl.read_parquet(out).equals(pl.read_parquet(tmp_path / "plain.parquet"))
        out.unlink()
        bad = runner.invoke(cli, [*command, "--out", str(out), "--verify-key", str(other)])
        assert bad.exit_code == 2 and bad.output.count("\n") == 1, bad.output
        assert "signature does not verify" in bad.output and not out.exists()
        over_key = runner.invoke(cli, [*command, "--out", str(key_pair[1]), "--verify-key",
                                       str(key_pair[1])])
        assert over_key.exit_code == 2 and "is also an input" in over_key.output, over_key.output
        assert plain.exit_code == 0
    assert file_hashes(signed_bundle, pairs, *key_pair, other) == before


def test_ray_driver_verifies_and_actors_check_the_verified_digest(signed_bundle, key_pair,
                                                                  tmp_path):
    pytest.importorskip("ray")
    from ncnc.scorer.ray_engine import _load, score_files_ray

    pairs = tmp_path / "pairs.parquet"
    PAIRS.write_parquet(pairs)
    _, other = write_key_pair(tmp_path, "other")
    # The driver refuses before any Ray is started (this test starts none).
    with pytest.raises(BundleError, match="signature does not verify"):
        score_files_ray(signed_bundle, [pairs], tmp_path / "out.parquet", verify_key=other,
                        progress=False)
    assert not (tmp_path / "out.parquet").exists()
    # An actor scores only the bundle the driver verified: the same manifest digest.
    verified = load_bundle(signed_bundle, verify_key=key_pair[1]).checksum
    scorer, _ = _load(signed_bundle, "cpu", 1, checksum=verified)
    assert scorer.bundle.checksum == verified
    with pytest.raises(BundleError, match="changed since the driver verified it"):
        _load(signed_bundle, "cpu", 1, checksum="0" * 64)
