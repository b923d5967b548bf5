"""Model signatures: the fleet's Ed25519 key signs what a model is, and every vehicle checks it before loading.

The signed message binds the model's name and version to the sha256 of its ONNX file and of its manifest, so
neither file can be swapped, and a signed model cannot be passed off under another name or version. Keys are
PEM files (private: PKCS#8, public: SubjectPublicKeyInfo); signatures travel as hex.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from protocols._errors import ProtocolError

DOMAIN = b"fleetedge-model-v1"


class SignatureError(ProtocolError):
    """A signature that does not verify, or a key that cannot be read."""


def signed_message(name: str, version: str, onnx_sha256: str, manifest_sha256: str) -> bytes:
    return b"\n".join((DOMAIN, name.encode(), version.encode(), onnx_sha256.encode(), manifest_sha256.encode()))


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def generate_key() -> tuple[bytes, bytes]:
    """A new fleet key: ``(private PEM, public PEM)``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, public


def sign(private_pem: bytes, message: bytes) -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = serialization.load_pem_private_key(private_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise SignatureError(f"not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError("the private key is not an Ed25519 key")
    return key.sign(message).hex()


def verify(public_pem: bytes, message: bytes, signature_hex: str) -> None:
    """Raises SignatureError unless ``signature_hex`` is the fleet key's signature of ``message``."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        key = serialization.load_pem_public_key(public_pem)
    except (ValueError, TypeError) as exc:
        raise SignatureError(f"not a PEM public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError("the public key is not an Ed25519 key")
    try:
        raw = bytes.fromhex(signature_hex)
    except ValueError:
        raise SignatureError("the signature is not hex") from None
    try:
        key.verify(raw, message)
    except InvalidSignature:
        raise SignatureError("the signature does not match the fleet key") from None


def read_key(path: str | Path) -> bytes:
    """Raises SignatureError naming the file."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise SignatureError(f"cannot read key {path}: {exc.strerror or exc}") from None
