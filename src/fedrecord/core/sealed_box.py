"""Sealed boxes that libsodium's ``crypto_box_seal_open`` opens, from a caller-given seed.

libsodium's ``crypto_box_seal`` draws its ephemeral key pair itself; the core
draws no randomness, so this module rebuilds the same construction with the
ephemeral key pair derived from 32 bytes the caller supplies (spec [ENC-8])::

    ephemeral_pk, ephemeral_sk = crypto_box_seed_keypair(seed)
    nonce  = BLAKE2b-192(ephemeral_pk || recipient_pk)       (unkeyed, 24-byte digest)
    sealed = ephemeral_pk || crypto_box_easy(message, nonce, recipient_pk, ephemeral_sk)

which is byte for byte what libsodium's ``crypto_box_seal`` does once its
ephemeral key is fixed, so either side may be libsodium.  A seed must never be
reused for two different messages: that repeats the (key, nonce) pair.

Key wraps (a document key sealed to one reader) are built on this; the
binding of document id, recipient, wrapper and purpose lives in the wrap's
plaintext, not here.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Final

import nacl.bindings as sodium
from nacl.exceptions import CryptoError

from .errors import (
    AuthenticationError,
    Code,
    LocalProtocolError,
    RemoteProtocolError,
    mapped_libsodium_errors,
)
from .identity import EncryptionKeyPair

__all__ = [
    "SEAL_OVERHEAD",
    "seal",
    "open_sealed",
]

_KEY_SIZE: Final = 32
_NONCE_SIZE: Final = 24
# The ephemeral public key in front plus the Poly1305 tag (libsodium's crypto_box_SEALBYTES).
SEAL_OVERHEAD: Final = _KEY_SIZE + 16
_ZERO_KEY: Final = bytes(_KEY_SIZE)


def _seal_nonce(ephemeral_public_key: bytes, recipient_public_key: bytes) -> bytes:
    # libsodium's _crypto_box_seal_nonce: crypto_generichash (BLAKE2b), no key, 24-byte output.
    return hashlib.blake2b(ephemeral_public_key + recipient_public_key, digest_size=_NONCE_SIZE).digest()


def seal(message: bytes, recipient_public_key: bytes, ephemeral_seed: bytes) -> bytes:
    """Seal ``message`` so that only the holder of the recipient's X25519 key can open it.

    Args:
        message: the plaintext.
        recipient_public_key: the recipient's 32-byte X25519 public key, as
            published in its signed profile.
        ephemeral_seed: 32 fresh random bytes from the caller, used once.

    Returns:
        ``ephemeral_pk || box``, ``len(message) + SEAL_OVERHEAD`` bytes, which
        libsodium's ``crypto_box_seal_open`` opens.

    Raises:
        LocalProtocolError: ``bad-key`` when the seed is not 32 bytes.
        RemoteProtocolError: ``bad-key`` when the recipient key is not 32 bytes or
            is a low-order point (the shared secret would be public).
    """
    if not isinstance(ephemeral_seed, bytes) or len(ephemeral_seed) != _KEY_SIZE:
        raise LocalProtocolError(Code.BAD_KEY, "an ephemeral seed is 32 bytes")
    if not isinstance(recipient_public_key, bytes) or len(recipient_public_key) != _KEY_SIZE:
        raise RemoteProtocolError(Code.BAD_KEY, "an X25519 public key is 32 bytes")
    if not isinstance(message, bytes):
        raise LocalProtocolError(Code.MALFORMED, "a sealed message is bytes")
    # The recipient key comes from a peer's profile: libsodium's refusal of a
    # low-order point is the peer's fault, answered bad-key, never a RuntimeError.
    with mapped_libsodium_errors(Code.BAD_KEY):
        ephemeral_public_key, ephemeral_secret_key = sodium.crypto_box_seed_keypair(ephemeral_seed)
        shared_secret = sodium.crypto_scalarmult(ephemeral_secret_key, recipient_public_key)
    # libsodium already refuses a low-order point (PyNaCl raises RuntimeError,
    # mapped above); sealing is rare, so the all-zero secret is checked here as
    # well.  open_sealed, on every deposit, relies on libsodium's refusal alone
    # and test_low_order_ephemeral_key_is_opaque holds the library to it.
    if hmac.compare_digest(shared_secret, _ZERO_KEY):
        raise RemoteProtocolError(Code.BAD_KEY, "X25519 public key of low order")
    with mapped_libsodium_errors(Code.BAD_KEY):
        shared_key = sodium.crypto_box_beforenm(recipient_public_key, ephemeral_secret_key)
    nonce = _seal_nonce(ephemeral_public_key, recipient_public_key)
    box: bytes = sodium.crypto_box_easy_afternm(message, nonce, shared_key)
    return ephemeral_public_key + box


def open_sealed(sealed: bytes, recipient: EncryptionKeyPair) -> bytes:
    """Open a sealed box addressed to ``recipient`` (ours or libsodium's).

    Every failure, from a short input to a low-order ephemeral key to a bad tag,
    is the same opaque error, so a forger learns nothing from it.

    Args:
        sealed: ``ephemeral_pk || box`` as received.
        recipient: our X25519 key pair.

    Returns:
        The plaintext.

    Raises:
        LocalProtocolError: ``bad-key`` when the key pair does not hold two 32-byte keys.
        AuthenticationError: ``decrypt-failed`` when the box does not open.
    """
    if len(recipient.secret_key) != _KEY_SIZE or len(recipient.public_key) != _KEY_SIZE:
        raise LocalProtocolError(Code.BAD_KEY, "an X25519 key pair holds two 32-byte keys")
    if not isinstance(sealed, bytes) or len(sealed) < SEAL_OVERHEAD:
        raise AuthenticationError(Code.DECRYPT_FAILED)
    try:
        # A low-order ephemeral key would make the box openable by anyone.  libsodium
        # refuses it inside crypto_box_seal_open (its X25519 fails on an all-zero shared
        # secret), like any other bad box; test_low_order_ephemeral_key_is_opaque holds
        # it to that for every low-order key, so the product is not computed twice here.
        plaintext: bytes = sodium.crypto_box_seal_open(sealed, recipient.public_key, recipient.secret_key)
    except (CryptoError, RuntimeError):
        raise AuthenticationError(Code.DECRYPT_FAILED) from None
    return plaintext
