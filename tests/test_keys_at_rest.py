"""Document keys at rest (``fedrecord.node.keys_at_rest``): wrapped under a key derived from the node's X25519 secret.

Each node keeps the key of every document it holds in its ``documents`` row,
wrapped so that the database alone does not open it.  These tests prove that a
wrap opens with the key pair that made it and with no other, that a node with
rotated key pairs still opens what its older pair wrapped, that the sealed
boxes earlier versions kept (``seal`` to the node's own public key) still
open, that any change to a wrap is refused with the one opaque
``decrypt-failed``, and that the format is the one the module documents
(checked by decrypting with libsodium directly, not with the module).
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
WRAPPED_SIZE = 1 + 24 + 32 + 16


def refused_as_decrypt_failed(wrapped: bytes, keys: tuple[EncryptionKeyPair, ...]) -> None:
    with pytest.raises(LocalProtocolError) as caught:
        unwrap_at_rest(wrapped, keys)
    assert caught.value.code is Code.DECRYPT_FAILED


def test_round_trip() -> None:
    """A wrap is 73 bytes, opens to the key it was made of, and never repeats (a fresh nonce each time)."""
    wrapped = wrap_at_rest(KEY, NEW)
    assert len(wrapped) == WRAPPED_SIZE and wrapped[:1] == b"\x01"
    assert KEY not in wrapped
    assert unwrap_at_rest(wrapped, (NEW,)) == KEY
    again = wrap_at_rest(KEY, NEW)
    assert again != wrapped and unwrap_at_rest(again, (NEW,)) == KEY
    # A BLOB may come back from SQLite as a bytearray.
    key = os.urandom(32)
    assert unwrap_at_rest(bytearray(wrap_at_rest(key, NEW)), (NEW,)) == key


def test_format_is_the_documented_one() -> None:
    """``0x01 || nonce || XChaCha20-Poly1305(KEK, nonce, key, aad = 0x01 || public key)``, KEK a keyed BLAKE2b.

    Decrypted here with libsodium alone: a later change of the format (which would leave every key
    already stored unreadable) fails this test.  The personalisation is the 16 bytes the code uses,
    ``fedrecord/at-rst`` (the module docstring says ``fedrecord/at-rest``: 17 bytes, one too many).
    """
    wrapped = wrap_at_rest(KEY, NEW)
    kek = sodium.crypto_generichash_blake2b_salt_personal(
        b"", digest_size=32, key=NEW.secret_key, person=b"fedrecord/at-rst"
    )
    nonce, sealed = wrapped[1:25], wrapped[25:]
    opened = sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(sealed, b"\x01" + NEW.public_key, nonce, kek)
    assert opened == KEY


def test_a_wrap_does_not_open_with_another_key_pair() -> None:
    refused_as_decrypt_failed(wrap_at_rest(KEY, NEW), (STRANGER,))
    refused_as_decrypt_failed(wrap_at_rest(KEY, NEW), ())


def test_legacy_sealed_box_still_opens() -> None:
    """A key sealed to the node's own public key (as every version before keys_at_rest kept them)."""
    legacy = seal(KEY, NEW.public_key, os.urandom(32))
    assert len(legacy) != WRAPPED_SIZE
    assert unwrap_at_rest(legacy, (NEW,)) == KEY
    assert unwrap_at_rest(seal(KEY, OLD.public_key, os.urandom(32)), (OLD, NEW)) == KEY
    refused_as_decrypt_failed(legacy, (STRANGER,))
    tampered = bytearray(legacy)
    tampered[-1] ^= 0x01
    refused_as_decrypt_failed(bytes(tampered), (NEW,))


def test_rotated_key_pairs_open_what_the_older_one_wrapped() -> None:
    """A home keeps its pairs oldest first and wraps with the newest; each wrap opens with the set."""
    older, newer = wrap_at_rest(KEY, OLD), wrap_at_rest(KEY, NEW)
    assert unwrap_at_rest(older, (OLD, NEW)) == KEY
    assert unwrap_at_rest(newer, (OLD, NEW)) == KEY
    assert unwrap_at_rest(older, (OLD, STRANGER, NEW)) == KEY
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
    wrapped = bytearray(wrap_at_rest(KEY, NEW))
    wrapped[index] ^= 0x01
    refused_as_decrypt_failed(bytes(wrapped), (OLD, NEW))


@pytest.mark.parametrize(
    "cut", [0, 1, 25, WRAPPED_SIZE - 1], ids=["empty", "format-only", "no-key", "short-tag"]
)
def test_truncated_or_extended_wrap_is_refused(cut: int) -> None:
    wrapped = wrap_at_rest(KEY, NEW)
    refused_as_decrypt_failed(wrapped[:cut], (NEW,))
    refused_as_decrypt_failed(wrapped + b"\x00", (NEW,))


@pytest.mark.parametrize("size", [0, 16, 31, 33, 64])
def test_only_32_byte_keys_are_wrapped(size: int) -> None:
    with pytest.raises(LocalProtocolError) as caught:
        wrap_at_rest(bytes(size), NEW)
    assert caught.value.code is Code.BAD_KEY
