"""Document keys at rest: each kept wrapped under a key-encryption key derived from the node's X25519 secret.

Every node keeps documents encrypted; the key of each sits in its
``documents`` row, wrapped so that the database alone does not open it, and
destroying that row destroys the document (brief section 4, "Deletion").

Why not a sealed box to the node's own X25519 key, as earlier versions kept
them: sealing costs a key pair and a Diffie-Hellman (about 90 microseconds),
opening another (about 45), for every document stored and every read, and a
sync of thousands of small documents spent more time sealing keys to itself
than checking their signatures.  A symmetric wrap under a key derived from the
same secret is as strong -- whoever unlocks the key file opens both, nobody
else opens either -- and costs a few microseconds.

A wrap is bound to its document: the document id is in the associated data, so
a wrap copied from one row into another does not open.  (A sealed box to the
node's public key, which anyone can make, bound nothing; sealed boxes written by
earlier versions are still opened, but only as 32-byte keys from 80-byte boxes,
and a key served from a row is checked against its stream's commitment where
the stream is at hand.)

Format (73 bytes)::

    0x02 || nonce (24 random bytes)
         || XChaCha20-Poly1305(KEK, nonce, key, aad = 0x02 || X25519 public key || document id)
    KEK = BLAKE2b-256(key = X25519 secret key, personalisation = "fedrecord/at-rst", 16 bytes)

The public key in the associated data ties a wrap to the key pair whose
secret made its KEK, so that a node holding several (rotated) pairs finds the
right one by trying each.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from typing import Final

import nacl.bindings as sodium
from nacl.exceptions import CryptoError

from fedrecord.core import Code, EncryptionKeyPair, LocalProtocolError, RemoteProtocolError, xchacha
from fedrecord.core.sealed_box import open_sealed

__all__ = ["wrap_at_rest", "unwrap_at_rest"]

_FORMAT: Final = b"\x02"
_NONCE_SIZE: Final = 24
_WRAPPED_SIZE: Final = 1 + _NONCE_SIZE + 32 + 16
_LEGACY_SEALED_SIZE: Final = 32 + 32 + 16  # a sealed box of a 32-byte key
_PERSONALISATION: Final = b"fedrecord/at-rst"  # BLAKE2b takes exactly 16 bytes


@functools.lru_cache(maxsize=16)
def _kek(secret_key: bytes) -> bytes:
    # Derived once per key pair for the life of the process, as the key pair itself is kept.
    return bytes(
        sodium.crypto_generichash_blake2b_salt_personal(
            b"", digest_size=32, key=secret_key, person=_PERSONALISATION
        )
    )


def _aad(keys: EncryptionKeyPair, doc: bytes) -> bytes:
    return _FORMAT + keys.public_key + doc


def wrap_at_rest(key: bytes, keys: EncryptionKeyPair, *, doc: bytes) -> bytes:
    """Wrap document ``doc``'s 32-byte key for this node's own storage, under ``keys``' secret.

    Raises:
        LocalProtocolError: ``bad-key`` for a key that is not 32 bytes, ``malformed``
            for a document id that is not 32 bytes.
    """
    if len(key) != 32:
        raise LocalProtocolError(Code.BAD_KEY, "a document key is 32 bytes")
    if len(doc) != 32:
        raise LocalProtocolError(Code.MALFORMED, "a document id is 32 bytes")
    nonce = os.urandom(_NONCE_SIZE)
    sealed = xchacha.encrypt(key, _aad(keys, doc), nonce, _kek(keys.secret_key))
    return _FORMAT + nonce + sealed


def unwrap_at_rest(wrapped: bytes, keys: Sequence[EncryptionKeyPair], *, doc: bytes) -> bytes:
    """The key of document ``doc`` from its wrap (or from a sealed box of an earlier version).

    Args:
        keys: every key pair of this node; the newest is tried first.

    Raises:
        LocalProtocolError: ``decrypt-failed`` when no key pair opens it for ``doc``.
    """
    wrapped = bytes(wrapped)
    for pair in reversed(keys):
        if len(wrapped) == _WRAPPED_SIZE and wrapped[:1] == _FORMAT:
            nonce, sealed = wrapped[1 : 1 + _NONCE_SIZE], wrapped[1 + _NONCE_SIZE :]
            try:
                return xchacha.decrypt(sealed, _aad(pair, doc), nonce, _kek(pair.secret_key))
            except CryptoError:
                continue
        if len(wrapped) == _LEGACY_SEALED_SIZE:
            try:
                key = open_sealed(wrapped, pair)
            except RemoteProtocolError:
                continue
            if len(key) == 32:
                return key
    raise LocalProtocolError(Code.DECRYPT_FAILED, "a stored document key does not open with our keys")
