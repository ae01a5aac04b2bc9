"""Token keys: an HMAC secret (``bytes``, at least :data:`MIN_SECRET_BYTES`) or an Ed25519 key, read from a file
(:func:`load_key`) or made afresh (:func:`generate_secret`)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

__all__ = ["MIN_SECRET_BYTES", "TokenKey", "generate_secret", "load_key"]

MIN_SECRET_BYTES = 32

TokenKey = bytes | Ed25519PrivateKey | Ed25519PublicKey


def load_key(path: str | os.PathLike[str]) -> TokenKey:
    """A token key from a file: a PEM Ed25519 private or public key, or else a raw secret (stripped, >= 32 bytes).

    Raises ValueError naming the file (never showing its content) when it holds neither.
    """
    data = Path(path).read_bytes()
    if data.lstrip().startswith(b"-----BEGIN"):
        try:
            if b"PRIVATE KEY" in data:
                key: object = serialization.load_pem_private_key(data, password=None)
            else:
                key = serialization.load_pem_public_key(data)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise ValueError(f"{path}: not a PEM key that can be read without a password") from exc
        if not isinstance(key, Ed25519PrivateKey | Ed25519PublicKey):
            raise ValueError(f"{path}: holds a {type(key).__name__}; a token key must be Ed25519")
        return key
    secret = data.strip()
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(
            f"{path}: a token secret must be at least {MIN_SECRET_BYTES} bytes, got {len(secret)}"
        )
    return secret


def generate_secret() -> bytes:
    """A fresh HMAC secret: 64 URL-safe characters (384 random bits), safe to write to a file as it is."""
    return secrets.token_urlsafe(48).encode("ascii")
