"""Bundle signatures: who made a bundle, not just whether it arrived intact.

Checksums in the manifest catch corruption, but whoever can change a file can change the manifest
too. An Ed25519 signature over manifest.json's exact bytes (which pin every file's size and
sha256) ties the whole bundle to a key the user trusts. The signature sits beside the manifest in
`manifest.json.sig`:

    {"algorithm": "ed25519", "public_key": "<base64, 32 bytes>", "signature": "<base64, 64 bytes>"}

It is checked against the keys the caller trusts (never against the key the file carries, which
only says which key signed), before the manifest is parsed or any other file is read. Keys are
PEM files as `openssl genpkey -algorithm ed25519` writes them; `edgepack keygen` makes a pair.
The cryptography is the `cryptography` package's (OpenSSL), not edgepack's.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

from edgepack.errors import EdgepackError

SIGNATURE_SUFFIX = ".sig"
MAX_SIGNATURE_BYTES = 4096


def _crypto():
    try:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise EdgepackError("bundle signatures need the cryptography package: pip install cryptography") from None
    return ed25519, serialization, InvalidSignature


def generate_key(private: Path) -> Path:
    """Writes a new private key (PEM, readable by its owner only) and its public key beside it
    (`<name>.pub`); returns the public key's path."""
    ed25519, serialization, _ = _crypto()
    public = private.with_name(private.name + ".pub")
    for p in (private, public):
        if p.exists():
            raise EdgepackError(f"{p} already exists: not overwriting a key")
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return public


def sign(manifest: Path, private: Path) -> Path:
    """Signs manifest.json's bytes with the PEM private key; writes and returns manifest.json.sig."""
    ed25519, serialization, _ = _crypto()
    try:
        key = serialization.load_pem_private_key(private.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as e:
        raise EdgepackError(f"{private} is not an unencrypted PEM private key: {e}") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise EdgepackError(f"{private} is not an Ed25519 key")
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    body = {"algorithm": "ed25519", "public_key": base64.b64encode(raw).decode(),
            "signature": base64.b64encode(key.sign(manifest.read_bytes())).decode()}
    out = manifest.with_name(manifest.name + SIGNATURE_SUFFIX)
    out.write_text(json.dumps(body, indent=1) + "\n")
    return out


def load_public_key(path: Path) -> bytes:
    """The raw 32 bytes of a PEM (or raw base64) Ed25519 public key."""
    ed25519, serialization, _ = _crypto()
    try:
        data = path.read_bytes()
    except OSError as e:
        raise EdgepackError(f"trusted key {path}: {e.strerror}") from None
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        try:
            return ed25519.Ed25519PublicKey.from_public_bytes(base64.b64decode(data, validate=True)).public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        except ValueError:
            raise EdgepackError(f"trusted key {path} is not an Ed25519 public key (PEM or base64)") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise EdgepackError(f"trusted key {path} is not an Ed25519 key")
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def verify(manifest_bytes: bytes, signature_file: Path, trusted: list[bytes]) -> None:
    """Raises unless `signature_file` holds a valid signature of `manifest_bytes` by a trusted key."""
    ed25519, _, InvalidSignature = _crypto()
    where = signature_file
    if not signature_file.is_file():
        raise EdgepackError(f"{signature_file.parent} is not signed (no {signature_file.name}); "
                            "a trusted key was required")
    try:
        with open(signature_file, "rb") as f:
            body = json.loads(f.read(MAX_SIGNATURE_BYTES))
        if body.get("algorithm") != "ed25519":
            raise EdgepackError(f"{where}: unsupported signature algorithm {body.get('algorithm')!r}")
        key, sig = (base64.b64decode(body[k], validate=True) for k in ("public_key", "signature"))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise EdgepackError(f"{where} is not an edgepack signature ({type(e).__name__})") from None
    if key not in trusted:
        raise EdgepackError(f"{where}: signed by a key that is not trusted here")
    try:
        ed25519.Ed25519PublicKey.from_public_bytes(key).verify(sig, manifest_bytes)
    except (InvalidSignature, ValueError):
        raise EdgepackError(f"{where}: the signature does not match manifest.json (altered after signing?)") from None
