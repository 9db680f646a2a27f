"""Secrets at rest: AES-256-GCM with HQ's master key (DATA_DIR/keys/master.key,
never in the database). `aad` binds a ciphertext to what it belongs to (a
user id, a recording id), so one cannot be swapped for another."""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

NONCE = 12


class DecryptError(Exception):
    """Wrong key, wrong owner or tampered ciphertext."""


def seal(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    nonce = os.urandom(NONCE)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def unseal(key: bytes, sealed: bytes, aad: bytes) -> bytes:
    if len(sealed) < NONCE + 16:
        raise DecryptError("ciphertext too short")
    try:
        return AESGCM(key).decrypt(sealed[:NONCE], sealed[NONCE:], aad)
    except InvalidTag:
        raise DecryptError("ciphertext does not verify") from None
