"""Node identities: ``did:key`` Ed25519 identifiers and the keys behind them.

A node's identity is its Ed25519 signing key, written as a ``did:key``
(W3C did:key method: ``did:key:z`` + base58btc(multicodec 0xed01 + key)).
It signs and nothing else.  Encryption uses separate X25519 keys published in
the node's signed profile (spec [ID-5]); they are never derived from the
signing key, so compromising one use does not compromise the other.

base58btc is written out here rather than taken from the ``base58`` package:
that package's decoder costs about 50 us per identifier, a third of an
Ed25519 verification, and every link of a grant chain decodes two of them.
"""

from __future__ import annotations

import functools
import hmac
from dataclasses import dataclass
from typing import Final

import nacl.bindings as sodium
from nacl.exceptions import BadSignatureError

try:
    # The cffi module nacl.bindings is written over: verify_ed25519 calls libsodium's
    # crypto_sign_open through it, as fedrecord.core.xchacha does its AEAD (see there why).
    from nacl._sodium import ffi as _ffi
    from nacl._sodium import lib as _lib
except ImportError:  # pragma: no cover - a PyNaCl without its cffi module under this name
    _ffi = _lib = None

from .errors import (
    AuthenticationError,
    Code,
    LocalProtocolError,
    RemoteProtocolError,
    mapped_libsodium_errors,
)

__all__ = [
    "DID_KEY_PREFIX",
    "SigningIdentity",
    "EncryptionKeyPair",
    "did_from_public_key",
    "public_key_from_did",
    "multibase_x25519",
    "check_ed25519_public_key",
    "verify_ed25519",
    "x25519_shared_secret",
]

DID_KEY_PREFIX: Final = "did:key:z"
_ED25519_CODEC: Final = b"\xed\x01"
_X25519_CODEC: Final = b"\xec\x01"
_MAX_DID_LENGTH: Final = 64

# Encodings of the eight small-order points of Ed25519 (and their
# non-canonical twins), compared with the sign bit cleared, as libsodium's
# ge25519_has_small_order does.  A key on this list lets anyone forge
# signatures that verify for many messages (spec [ID-3]).
_SMALL_ORDER: Final = frozenset(
    bytes.fromhex(h)
    for h in (
        "0000000000000000000000000000000000000000000000000000000000000000",
        "0100000000000000000000000000000000000000000000000000000000000000",
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    )
)


_ALPHABET: Final = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_DIGIT: Final = {c: i for i, c in enumerate(_ALPHABET)}


def _b58encode(raw: bytes) -> str:
    number = int.from_bytes(raw, "big")
    digits = []
    while number:
        number, digit = divmod(number, 58)
        digits.append(_ALPHABET[digit])
    leading_zeros = len(raw) - len(raw.lstrip(b"\0"))
    return "1" * leading_zeros + "".join(reversed(digits))


def _b58decode(text: str, size: int) -> bytes | None:
    """Decode base58btc text that must stand for exactly ``size`` bytes, or None."""
    number = 0
    try:
        for char in text:
            number = number * 58 + _DIGIT[char]
    except KeyError:
        return None
    # A leading "1" stands for a zero byte; our payloads start with a multicodec
    # byte that is never zero, so the canonical text has none and the number
    # alone determines the bytes.
    if text.startswith("1") or number.bit_length() > 8 * size:
        return None
    return number.to_bytes(size, "big")


def check_ed25519_public_key(public_key: bytes) -> None:
    """Refuse keys of the wrong length or of small order.

    Raises:
        RemoteProtocolError: ``bad-key``.
    """
    if len(public_key) != 32:
        raise RemoteProtocolError(Code.BAD_KEY, "an Ed25519 public key is 32 bytes")
    if public_key[:31] + bytes([public_key[31] & 0x7F]) in _SMALL_ORDER:
        raise RemoteProtocolError(Code.BAD_KEY, "Ed25519 public key of small order")


def verify_ed25519(public_key: bytes, message: bytes, signature: bytes) -> None:
    """Verify an Ed25519 signature (RFC 8032, as libsodium checks it: canonical, no small order).

    Raises:
        RemoteProtocolError: ``bad-key`` for a key of small order or not on
            the curve.
        AuthenticationError: ``bad-signature`` otherwise.
    """
    check_ed25519_public_key(public_key)
    if len(signature) != 64:
        raise AuthenticationError()
    if not _signature_opens(bytes(signature) + bytes(message), bytes(public_key)):
        # Only on failure do we pay for the full point check, to tell a key
        # that can never verify anything from a signature that is wrong.
        if not sodium.crypto_core_ed25519_is_valid_point(public_key):
            raise RemoteProtocolError(Code.BAD_KEY, "Ed25519 public key is not a valid point")
        raise AuthenticationError()


def _signature_opens(signed: bytes, public_key: bytes) -> bool:
    """libsodium's ``crypto_sign_open`` on signature || message, for a 32-byte key: whether it verifies.

    Straight through cffi: the bindings' checks and copy of the message cost about 1.5 us of the 54 a
    verification takes, on a path every record received goes through.
    """
    if _lib is None:  # pragma: no cover - see the import
        try:
            sodium.crypto_sign_open(signed, public_key)
        except BadSignatureError:
            return False
        return True
    opened = _ffi.new("unsigned char[]", len(signed))
    return bool(_lib.crypto_sign_open(opened, _ffi.NULL, signed, len(signed), public_key) == 0)


def x25519_shared_secret(secret_key: bytes, public_key: bytes) -> bytes:
    """The raw X25519 shared secret, refusing low-order public keys.

    Raises:
        LocalProtocolError: ``bad-key`` when ``secret_key`` is not 32 bytes.
        RemoteProtocolError: ``bad-key`` when ``public_key`` is not 32 bytes
            or the result is all zero (a low-order point, RFC 7748 section 6.1).
    """
    if len(secret_key) != 32:
        raise LocalProtocolError(Code.BAD_KEY, "an X25519 secret key is 32 bytes")
    if len(public_key) != 32:
        raise RemoteProtocolError(Code.BAD_KEY, "an X25519 public key is 32 bytes")
    with mapped_libsodium_errors():
        shared: bytes = sodium.crypto_scalarmult(secret_key, public_key)
    if hmac.compare_digest(shared, bytes(32)):
        raise RemoteProtocolError(Code.BAD_KEY, "X25519 public key of low order")
    return shared


def did_from_public_key(public_key: bytes) -> str:
    """The ``did:key`` identifier of an Ed25519 public key."""
    if len(public_key) != 32:
        raise LocalProtocolError(Code.BAD_KEY, "an Ed25519 public key is 32 bytes")
    return DID_KEY_PREFIX + _b58encode(_ED25519_CODEC + public_key)


def multibase_x25519(public_key: bytes) -> str:
    """The multibase (``z`` + base58btc, multicodec 0xec01) form of an X25519 key."""
    if len(public_key) != 32:
        raise LocalProtocolError(Code.BAD_KEY, "an X25519 public key is 32 bytes")
    return "z" + _b58encode(_X25519_CODEC + public_key)


def public_key_from_did(did: str) -> bytes:
    """The Ed25519 public key named by a ``did:key`` identifier.

    Raises:
        RemoteProtocolError: ``bad-key`` when the text is not a did:key for an
            Ed25519 key of large order.
    """
    if not (isinstance(did, str) and did.startswith(DID_KEY_PREFIX) and len(did) <= _MAX_DID_LENGTH):
        raise RemoteProtocolError(Code.BAD_KEY, "not an Ed25519 did:key identifier")
    # The same few signers come back with every record: their keys are decoded once.
    return _ed25519_key_of(did)


@functools.lru_cache(maxsize=1024)
def _ed25519_key_of(did: str) -> bytes:
    # Only valid keys are cached: a refused did raises, and lru_cache keeps no exception.
    raw = _b58decode(did[len(DID_KEY_PREFIX) :], 34)
    if raw is None or raw[:2] != _ED25519_CODEC:
        raise RemoteProtocolError(Code.BAD_KEY, "did:key does not hold an Ed25519 key in canonical base58btc")
    public_key = raw[2:]
    check_ed25519_public_key(public_key)
    return public_key


@dataclass(frozen=True, repr=False)
class SigningIdentity:
    """An Ed25519 key pair and its did:key.  ``repr`` never shows the secret."""

    seed: bytes
    public_key: bytes
    secret_key: bytes
    did: str

    @classmethod
    def from_seed(cls, seed: bytes) -> SigningIdentity:
        """Derive the key pair from 32 caller-supplied random bytes (the core draws none).

        Raises:
            LocalProtocolError: ``bad-key`` when the seed is not 32 bytes.
        """
        if len(seed) != 32:
            raise LocalProtocolError(Code.BAD_KEY, "an Ed25519 seed is 32 bytes")
        public_key, secret_key = sodium.crypto_sign_seed_keypair(seed)
        return cls(bytes(seed), public_key, secret_key, did_from_public_key(public_key))

    def sign(self, message: bytes) -> bytes:
        """The 64-byte Ed25519 signature of ``message``."""
        signed: bytes = sodium.crypto_sign(message, self.secret_key)
        return signed[:64]

    def __repr__(self) -> str:
        return f"SigningIdentity({self.did})"


@dataclass(frozen=True, repr=False)
class EncryptionKeyPair:
    """An X25519 key pair for sealed boxes.  Generated from its own seed, never from a signing key."""

    secret_key: bytes
    public_key: bytes

    @classmethod
    def from_seed(cls, seed: bytes) -> EncryptionKeyPair:
        """Derive the pair as libsodium's ``crypto_box_seed_keypair`` does.

        Raises:
            LocalProtocolError: ``bad-key`` when the seed is not 32 bytes.
        """
        if len(seed) != 32:
            raise LocalProtocolError(Code.BAD_KEY, "an X25519 seed is 32 bytes")
        with mapped_libsodium_errors():
            public_key, secret_key = sodium.crypto_box_seed_keypair(seed)
        return cls(secret_key, public_key)

    def __repr__(self) -> str:
        return f"EncryptionKeyPair({multibase_x25519(self.public_key)})"
