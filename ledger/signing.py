"""Signed tree heads: Ed25519 keys in PEM files (`cryptography`).

A run given a private key signs the tree head after each commit; whoever holds the public
key checks that every head the ledger passed through was signed by it, so a rewrite needs the
key as well as the hashes.
"""

from __future__ import annotations

from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ledger.merkle import TreeHead


class BadKey(ValueError):
    """A key file that is missing, unreadable or not an Ed25519 key of the expected kind."""


def generate(path: Path) -> Path:
    """Write a new private key to `path` (PEM, owner-only) and its public key to `path`.pub."""
    if path.exists():
        raise BadKey(f"{path} exists: refusing to overwrite a key")
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(private)
    path.chmod(0o600)
    public = path.with_name(path.name + ".pub")
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return public


class Signer:
    """Signs tree heads with an Ed25519 private key."""

    def __init__(self, path: Path) -> None:
        try:
            key = serialization.load_pem_private_key(_read(path, "private"), None)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            raise BadKey(f"{path}: not a PEM private key without a password") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise BadKey(f"{path}: not an Ed25519 private key")
        self._key = key

    def sign(self, head: TreeHead) -> str:
        return self._key.sign(head.message()).hex()


class Verifier:
    """Checks tree heads' signatures with an Ed25519 public key."""

    def __init__(self, path: Path) -> None:
        try:
            key = serialization.load_pem_public_key(_read(path, "public"))
        except (ValueError, UnsupportedAlgorithm):
            raise BadKey(f"{path}: not a PEM public key") from None
        if not isinstance(key, Ed25519PublicKey):
            raise BadKey(f"{path}: not an Ed25519 public key")
        self._key = key

    def signed(self, head: TreeHead, signature: str | None) -> bool:
        if signature is None:
            return False
        try:
            self._key.verify(bytes.fromhex(signature), head.message())
        except (InvalidSignature, ValueError):
            return False
        return True


def _read(path: Path, kind: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise BadKey(f"{path}: cannot read the {kind} key ({e.strerror})") from None
