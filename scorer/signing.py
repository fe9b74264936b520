"""Bundle signatures with the OpenSSF ``model-signing`` library (elliptic-curve keys, offline).

``ncnc export --sign-key KEY`` signs the finished bundle: model-signing hashes every file of the
folder (``manifest.json`` included, :data:`~ncnc.scorer.manifest.SIGNATURE_FILE` excluded) with
sha256 and signs that list with the private key, as a Sigstore bundle (a DSSE envelope of an
in-toto statement) written to ``model.sig`` inside the bundle. ``--verify-key PUB`` checks it:
the signature must verify with the public key and every file of the folder must hash to its
signed digest, with no file missing and none added.

Checksums in the manifest catch accidents; only a signature shows that the bundle is the one the
key's holder exported (``docs/bundle-format.md`` says what this does and does not protect).
Keys: PEM, on the curves model-signing supports (P-256, P-384, P-521), the private key without a
password. The library is the ``[sign]`` extra.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

from ncnc.core.errors import InputError, first_line
from ncnc.core.extras import require
from ncnc.scorer.manifest import SIGNATURE_FILE, BundleError

CURVES = ("secp256r1", "secp384r1", "secp521r1")  # what model-signing's key signer accepts


def _model_signing(purpose: str) -> Any:
    # model-signing 1.1 imports pyOpenSSL (OpenSSL) without declaring it: both are the extra.
    require("model_signing", "OpenSSL", extra="sign", purpose=purpose)
    import model_signing

    return model_signing


def _hashing(model_signing: Any) -> Any:
    """One hashing configuration for signing and verifying: sha256 of every file, no symlinks,
    nothing skipped but the signature itself (not even ``.git`` files)."""
    return (model_signing.hashing.Config()
            .use_file_serialization(hashing_algorithm="sha256", allow_symlinks=False)
            .set_ignored_paths(paths=[SIGNATURE_FILE], ignore_git_paths=False))


def _read_key(path: Path, flag: str, private: bool) -> Any:
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    path = Path(path)
    kind = "private" if private else "public"
    try:
        data = path.read_bytes()
    except OSError as err:
        raise InputError(f"{flag} {path}: cannot be read ({err.strerror or err})") from err
    try:
        if private:
            key = serialization.load_pem_private_key(data, password=None)
        else:
            key = serialization.load_pem_public_key(data)
    except TypeError as err:  # an encrypted private key
        raise InputError(f"{flag} {path}: a password-protected key; give the key without a "
                         "password") from err
    except (ValueError, UnsupportedAlgorithm) as err:
        raise InputError(f"{flag} {path}: not a PEM {kind} key ({first_line(err)})") from err
    public = key.public_key() if private else key
    if not isinstance(public, ec.EllipticCurvePublicKey) or public.curve.name not in CURVES:
        raise InputError(f"{flag} {path}: an {type(public).__name__}; bundles are signed with "
                         f"elliptic-curve keys on {', '.join(CURVES)}")
    return key


def check_signing_key(key: Path | str) -> None:
    """Refuse, before an export's work, a private key that :func:`sign_bundle` cannot use."""
    _model_signing("signing a bundle (--sign-key)")
    _read_key(Path(key), "--sign-key", private=True)


def sign_bundle(directory: Path, key: Path | str) -> None:
    """Sign every file of the bundle folder ``directory`` into ``directory / model.sig``."""
    model_signing = _model_signing("signing a bundle (--sign-key)")
    _read_key(Path(key), "--sign-key", private=True)
    (model_signing.signing.Config()
     .use_elliptic_key_signer(private_key=Path(key))
     .set_hashing_config(_hashing(model_signing))
     .sign(directory, directory / SIGNATURE_FILE))


def verify_signature(directory: Path, key: Path | str) -> None:
    """Check that ``directory`` is, file for file, the bundle that ``key``'s holder signed.

    Raises:
        InputError: the key is unreadable or of an unsupported kind; the ``[sign]`` extra is
            missing.
        BundleError: no signature, or it does not verify (wrong key, a file changed, added or
            removed after signing, a damaged signature file).
    """
    model_signing = _model_signing("verifying a bundle's signature (--verify-key)")
    _read_key(Path(key), "--verify-key", private=False)
    signature = directory / SIGNATURE_FILE
    if not signature.is_file():
        raise BundleError(f"bundle {directory}: not signed ({SIGNATURE_FILE} is missing); "
                          "export it with --sign-key")
    config = (model_signing.verifying.Config()
              .use_elliptic_key_verifier(public_key=Path(key))
              .set_hashing_config(_hashing(model_signing)))
    try:
        # The library prints warnings on stdout, which carries our JSON results.
        with contextlib.redirect_stdout(sys.stderr):
            config.verify(directory, signature)
    except Exception as err:  # any failure (parse, key, digests) means: not verified
        raise BundleError(f"bundle {directory}: signature does not verify with {key} "
                          f"({type(err).__name__}: {first_line(err)})") from err

