"""Document keys at rest (``fedrecord.node.keys_at_rest``): wrapped under a key derived from the node's X25519 secret.

Each node keeps the key of every document it holds in its ``documents`` row,
wrapped so that the database alone does not open it.  These tests prove that a
wrap opens with the key pair that made it and with no other, that a node with
rotated key pairs still opens what its older pair wrapped, that a wrap opens
for its own document only (copied into another row, it is refused), that the
sealed boxes earlier versions kept (``seal`` to the node's own public key)
still open -- as 32-byte keys only --, that any change to a wrap is refused
with the one opaque ``decrypt-failed``, and that the format is the one the
module documents (checked by decrypting with libsodium directly).
"""

from __future__ import annotations

import os

import nacl.bindings as sodium
import pytest

from fedrecord.core import Code, EncryptionKeyPair, LocalProtocolError
from fedrecord.core.sealed_box import seal
from fedrecord.node.keys_at_rest import unwrap_at_rest, wrap_at_rest

from .conftest import encryption_keys

OLD = encryption_keys("at-rest old pair")
NEW = encryption_keys("at-rest new pair")
STRANGER = encryption_keys("at-rest someone else's pair")
KEY = bytes(range(100, 132))
DOC = bytes(range(32))
OTHER_DOC = bytes(range(1, 33))
WRAPPED_SIZE = 1 + 24 + 32 + 16


def wrap(key: bytes, keys: EncryptionKeyPair, doc: bytes = DOC) -> bytes:
    return wrap_at_rest(key, keys, doc=doc)


def unwrap(wrapped: bytes, keys: tuple[EncryptionKeyPair, ...], doc: bytes = DOC) -> bytes:
    return unwrap_at_rest(wrapped, keys, doc=doc)


def refused_as_decrypt_failed(wrapped: bytes, keys: tuple[EncryptionKeyPair, ...], doc: bytes = DOC) -> None:
    with pytest.raises(LocalProtocolError) as caught:
        unwrap(wrapped, keys, doc)
    assert caught.value.code is Code.DECRYPT_FAILED


def test_round_trip() -> None:
    """A wrap is 73 bytes, opens to the key it was made of, and never repeats (a fresh nonce each time)."""
    wrapped = wrap(KEY, NEW)
    assert len(wrapped) == WRAPPED_SIZE and wrapped[:1] == b"\x02"
    assert KEY not in wrapped
    assert unwrap(wrapped, (NEW,)) == KEY
    again = wrap(KEY, NEW)
    assert again != wrapped and unwrap(again, (NEW,)) == KEY
    # A BLOB may come back from SQLite as a bytearray.
    key = os.urandom(32)
    assert unwrap(bytearray(wrap(key, NEW)), (NEW,)) == key


def test_format_is_the_documented_one() -> None:
    """``0x02 || nonce || XChaCha20-Poly1305(KEK, nonce, key, aad = 0x02 || public key || doc)``, KEK a keyed
    BLAKE2b personalised with the 16 bytes ``fedrecord/at-rst``.

    Decrypted here with libsodium alone: a later change of the format (which would leave every key
    already stored unreadable) fails this test.
    """
    wrapped = wrap(KEY, NEW)
    kek = sodium.crypto_generichash_blake2b_salt_personal(
        b"", digest_size=32, key=NEW.secret_key, person=b"fedrecord/at-rst"
    )
    nonce, sealed = wrapped[1:25], wrapped[25:]
    opened = sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(sealed, b"\x02" + NEW.public_key + DOC, nonce, kek)
    assert opened == KEY


def test_a_wrap_opens_for_its_own_document_only() -> None:
    """Copied from one row into another, a wrap does not give the first document's key for the second."""
    refused_as_decrypt_failed(wrap(KEY, NEW, DOC), (NEW,), OTHER_DOC)
    assert unwrap(wrap(KEY, NEW, OTHER_DOC), (NEW,), OTHER_DOC) == KEY


def test_a_legacy_box_that_is_not_a_32_byte_key_is_refused() -> None:
    """Anyone can seal to the node's public key: a box of another length never passes as a key."""
    for plaintext in (b"k", bytes(31), bytes(33), bytes(64)):
        refused_as_decrypt_failed(seal(plaintext, NEW.public_key, os.urandom(32)), (NEW,))


def test_a_wrap_does_not_open_with_another_key_pair() -> None:
    refused_as_decrypt_failed(wrap(KEY, NEW), (STRANGER,))
    refused_as_decrypt_failed(wrap(KEY, NEW), ())


def test_legacy_sealed_box_still_opens() -> None:
    """A key sealed to the node's own public key (as every version before keys_at_rest kept them)."""
    legacy = seal(KEY, NEW.public_key, os.urandom(32))
    assert len(legacy) != WRAPPED_SIZE
    assert unwrap(legacy, (NEW,)) == KEY
    assert unwrap(seal(KEY, OLD.public_key, os.urandom(32)), (OLD, NEW)) == KEY
    refused_as_decrypt_failed(legacy, (STRANGER,))
    tampered = bytearray(legacy)
    tampered[-1] ^= 0x01
    refused_as_decrypt_failed(bytes(tampered), (NEW,))


def test_rotated_key_pairs_open_what_the_older_one_wrapped() -> None:
    """A home keeps its pairs oldest first and wraps with the newest; each wrap opens with the set."""
    older, newer = wrap(KEY, OLD), wrap(KEY, NEW)
    assert unwrap(older, (OLD, NEW)) == KEY
    assert unwrap(newer, (OLD, NEW)) == KEY
    assert unwrap(older, (OLD, STRANGER, NEW)) == KEY
    # The older pair's wrap is bound to it: the newer pair alone does not open it, nor the other way.
    refused_as_decrypt_failed(older, (NEW,))
    refused_as_decrypt_failed(newer, (OLD,))


@pytest.mark.parametrize(
    "index",
    [0, 1, 12, 24, 25, 40, 56, WRAPPED_SIZE - 16, WRAPPED_SIZE - 1],
    ids=[
        "format",
        "nonce-first",
        "nonce-middle",
        "nonce-last",
        "key-first",
        "key-middle",
        "key-last",
        "tag-first",
        "tag-last",
    ],
)
def test_tampered_wrap_is_refused(index: int) -> None:
    wrapped = bytearray(wrap(KEY, NEW))
    wrapped[index] ^= 0x01
    refused_as_decrypt_failed(bytes(wrapped), (OLD, NEW))


@pytest.mark.parametrize(
    "cut", [0, 1, 25, WRAPPED_SIZE - 1], ids=["empty", "format-only", "no-key", "short-tag"]
)
def test_truncated_or_extended_wrap_is_refused(cut: int) -> None:
    wrapped = wrap(KEY, NEW)
    refused_as_decrypt_failed(wrapped[:cut], (NEW,))
    refused_as_decrypt_failed(wrapped + b"\x00", (NEW,))


@pytest.mark.parametrize("size", [0, 16, 31, 33, 64])
def test_only_32_byte_keys_are_wrapped(size: int) -> None:
    with pytest.raises(LocalProtocolError) as caught:
        wrap(bytes(size), NEW)
    assert caught.value.code is Code.BAD_KEY
