"""Sealed boxes from a caller-given seed, interoperable with libsodium (spec [ENC-8])."""

from __future__ import annotations

import hashlib

import nacl.bindings as sodium
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.public import PrivateKey, PublicKey, SealedBox

from fedrecord.core.errors import AuthenticationError, Code, LocalProtocolError, RemoteProtocolError
from fedrecord.core.identity import EncryptionKeyPair
from fedrecord.core.sealed_box import SEAL_OVERHEAD, open_sealed, seal

RECIPIENT = EncryptionKeyPair.from_seed(bytes(range(32)))
OTHER = EncryptionKeyPair.from_seed(bytes(range(1, 33)))
SEED = bytes(range(64, 96))
MESSAGE = b"document key and its binding"

# X25519 public keys of small order (curve and twist), as in Wycheproof's x25519
# "low order public key" cases and libsodium's blacklist, each also with the
# ignored top bit set.  With any of them the shared secret is all zero.
_LOW_ORDER = [
    "0000000000000000000000000000000000000000000000000000000000000000",
    "0100000000000000000000000000000000000000000000000000000000000000",
    "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
    "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
]
LOW_ORDER_KEYS = [bytes.fromhex(h) for h in _LOW_ORDER] + [
    bytes.fromhex(h)[:31] + bytes([bytes.fromhex(h)[31] | 0x80]) for h in _LOW_ORDER
]


def test_libsodium_opens_ours() -> None:
    sealed = seal(MESSAGE, RECIPIENT.public_key, SEED)
    assert SealedBox(PrivateKey(RECIPIENT.secret_key)).decrypt(sealed) == MESSAGE


def test_we_open_libsodiums() -> None:
    sealed = SealedBox(PublicKey(RECIPIENT.public_key)).encrypt(MESSAGE)
    assert open_sealed(bytes(sealed), RECIPIENT) == MESSAGE


@pytest.mark.parametrize("message", [b"", b"x", bytes(1000)])
def test_round_trip(message: bytes) -> None:
    sealed = seal(message, RECIPIENT.public_key, SEED)
    assert len(sealed) == len(message) + SEAL_OVERHEAD
    assert open_sealed(sealed, RECIPIENT) == message


def test_deterministic_given_seed() -> None:
    """The ephemeral key pair is the seed's; the core draws no randomness (spec [ENC-8])."""
    sealed = seal(MESSAGE, RECIPIENT.public_key, SEED)
    assert sealed == seal(MESSAGE, RECIPIENT.public_key, SEED)
    assert sealed[:32] == sodium.crypto_box_seed_keypair(SEED)[0]
    assert sealed != seal(MESSAGE, RECIPIENT.public_key, bytes(32))


def test_wrong_recipient() -> None:
    sealed = seal(MESSAGE, RECIPIENT.public_key, SEED)
    with pytest.raises(AuthenticationError) as caught:
        open_sealed(sealed, OTHER)
    assert caught.value.code is Code.DECRYPT_FAILED


@settings(max_examples=200, deadline=None)
@given(bit=st.integers(0, 8 * (len(MESSAGE) + SEAL_OVERHEAD) - 1))
def test_any_single_bit_flip_is_rejected(bit: int) -> None:
    sealed = bytearray(seal(MESSAGE, RECIPIENT.public_key, SEED))
    sealed[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(AuthenticationError) as caught:
        open_sealed(bytes(sealed), RECIPIENT)
    assert caught.value.code is Code.DECRYPT_FAILED


@pytest.mark.parametrize("length", [0, 1, 32, SEAL_OVERHEAD - 1])
def test_too_short_is_opaque(length: int) -> None:
    sealed = seal(b"", RECIPIENT.public_key, SEED)[:length]
    with pytest.raises(AuthenticationError) as caught:
        open_sealed(sealed, RECIPIENT)
    assert caught.value.code is Code.DECRYPT_FAILED


@pytest.mark.parametrize("key", LOW_ORDER_KEYS, ids=lambda k: k.hex()[:8] + k.hex()[-2:])
def test_low_order_recipient_is_bad_key(key: bytes) -> None:
    """A low-order recipient key makes the box readable by anyone: bad-key, never a RuntimeError."""
    with pytest.raises(RemoteProtocolError) as caught:
        seal(MESSAGE, key, SEED)
    assert caught.value.code is Code.BAD_KEY
    assert not isinstance(caught.value, AuthenticationError)


def _hsalsa20(key: bytes, nonce16: bytes) -> bytes:
    """HSalsa20 (XSalsa20 paper, section 2), which turns an X25519 secret into a crypto_box key.

    PyNaCl does not expose it; the box forged below needs the key of an
    all-zero shared secret, which libsodium refuses to compute.
    """

    def words(data: bytes) -> list[int]:
        return [int.from_bytes(data[i : i + 4], "little") for i in range(0, len(data), 4)]

    def rotl(v: int, n: int) -> int:
        return ((v << n) | (v >> (32 - n))) & 0xFFFFFFFF

    sigma = words(b"expand 32-byte k")
    k, n = words(key), words(nonce16)
    x = [sigma[0], *k[:4], sigma[1], *n, sigma[2], *k[4:], sigma[3]]
    for _ in range(10):
        for a, b, c, d in (
            (0, 4, 8, 12), (5, 9, 13, 1), (10, 14, 2, 6), (15, 3, 7, 11),
            (0, 1, 2, 3), (5, 6, 7, 4), (10, 11, 8, 9), (15, 12, 13, 14),
        ):  # fmt: skip
            x[b] ^= rotl((x[a] + x[d]) & 0xFFFFFFFF, 7)
            x[c] ^= rotl((x[b] + x[a]) & 0xFFFFFFFF, 9)
            x[d] ^= rotl((x[c] + x[b]) & 0xFFFFFFFF, 13)
            x[a] ^= rotl((x[d] + x[c]) & 0xFFFFFFFF, 18)
    return b"".join(x[i].to_bytes(4, "little") for i in (0, 5, 10, 15, 6, 7, 8, 9))


def test_hsalsa20_is_libsodium_box_key() -> None:
    """The helper below derives crypto_box keys exactly as libsodium does (for a normal key pair)."""
    secret = sodium.crypto_scalarmult(OTHER.secret_key, RECIPIENT.public_key)
    assert _hsalsa20(secret, bytes(16)) == sodium.crypto_box_beforenm(RECIPIENT.public_key, OTHER.secret_key)


@pytest.mark.parametrize("key", LOW_ORDER_KEYS, ids=lambda k: k.hex()[:8] + k.hex()[-2:])
def test_low_order_ephemeral_key_is_opaque(key: bytes) -> None:
    """A box whose ephemeral key is of low order does not open, even one made to open under it.

    With a low-order ephemeral key the shared secret is all zero whatever the
    recipient's key, so anyone can make a box that authenticates under it: the
    second box below does.  open_sealed relies on libsodium refusing such a key
    (crypto_box_seal_open fails on an all-zero secret); this test holds it to that.
    """
    blank = key + bytes(16 + len(MESSAGE))
    zero_secret_key = _hsalsa20(bytes(32), bytes(16))
    nonce = hashlib.blake2b(key + RECIPIENT.public_key, digest_size=24).digest()
    authentic = key + sodium.crypto_box_easy_afternm(MESSAGE, nonce, zero_secret_key)
    assert sodium.crypto_box_open_easy_afternm(authentic[32:], nonce, zero_secret_key) == MESSAGE
    for forged in (blank, authentic):
        with pytest.raises(AuthenticationError) as caught:
            open_sealed(forged, RECIPIENT)
        assert caught.value.code is Code.DECRYPT_FAILED


@settings(max_examples=200, deadline=None)
@given(key=st.binary(min_size=32, max_size=32))
def test_any_recipient_key_seals_or_is_bad_key(key: bytes) -> None:
    """Whatever 32 bytes a peer publishes, libsodium's RuntimeError never escapes."""
    try:
        seal(MESSAGE, key, SEED)
    except RemoteProtocolError as error:
        assert error.code is Code.BAD_KEY


@pytest.mark.parametrize("key", [b"", bytes(31), bytes(33)])
def test_wrong_length_recipient_key(key: bytes) -> None:
    with pytest.raises(RemoteProtocolError) as caught:
        seal(MESSAGE, key, SEED)
    assert caught.value.code is Code.BAD_KEY


@pytest.mark.parametrize("seed", [b"", bytes(31), bytes(33)])
def test_wrong_length_seed(seed: bytes) -> None:
    with pytest.raises(LocalProtocolError) as caught:
        seal(MESSAGE, RECIPIENT.public_key, seed)
    assert caught.value.code is Code.BAD_KEY


def test_invalid_key_pair_is_our_bug() -> None:
    broken = EncryptionKeyPair(secret_key=bytes(31), public_key=RECIPIENT.public_key)
    with pytest.raises(LocalProtocolError) as caught:
        open_sealed(seal(MESSAGE, RECIPIENT.public_key, SEED), broken)
    assert caught.value.code is Code.BAD_KEY
