"""The direct libsodium calls of ``fedrecord.core.xchacha`` against ``nacl.bindings``: same bytes, same refusals."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.exceptions import CryptoError

from fedrecord.core import xchacha

VECTORS = json.loads(
    (Path(__file__).parent / "data" / "external" / "wycheproof" / "xchacha20_poly1305_test.json").read_text()
)
VALID = [
    test
    for group in VECTORS["testGroups"]
    for test in group["tests"]
    if test["result"] == "valid"
]
PAIRS = [
    (xchacha._encrypt_lib, xchacha._decrypt_lib),
    (xchacha._encrypt_bindings, xchacha._decrypt_bindings),
]
IDS = ["direct", "bindings"]


def test_the_direct_calls_are_the_ones_used() -> None:
    # The PyNaCl this project installs has its cffi module where xchacha looks for it.
    assert xchacha.DIRECT
    assert xchacha.encrypt is xchacha._encrypt_lib and xchacha.decrypt is xchacha._decrypt_lib


@pytest.mark.parametrize(("encrypt", "decrypt"), PAIRS, ids=IDS)
@pytest.mark.parametrize("test", VALID, ids=[str(t["tcId"]) for t in VALID])
def test_wycheproof_valid_vectors(encrypt: Any, decrypt: Any, test: dict[str, Any]) -> None:
    key, nonce, aad, msg, ct, tag = (bytes.fromhex(test[name]) for name in ("key", "iv", "aad", "msg", "ct", "tag"))
    assert encrypt(msg, aad, nonce, key) == ct + tag
    assert decrypt(ct + tag, aad, nonce, key) == msg


@settings(max_examples=200, deadline=None)
@given(
    message=st.binary(max_size=3000),
    aad=st.binary(max_size=100),
    nonce=st.binary(min_size=24, max_size=24),
    key=st.binary(min_size=32, max_size=32),
    flip=st.integers(min_value=0),
)
def test_both_ways_agree(message: bytes, aad: bytes, nonce: bytes, key: bytes, flip: int) -> None:
    sealed = xchacha._encrypt_lib(message, aad, nonce, key)
    assert sealed == xchacha._encrypt_bindings(message, aad, nonce, key)
    assert xchacha._decrypt_lib(sealed, aad, nonce, key) == message
    # One bit changed anywhere: both refuse it.
    tampered = bytearray(sealed)
    tampered[flip % len(sealed)] ^= 1 << (flip % 8)
    for _encrypt, decrypt in PAIRS:
        with pytest.raises(CryptoError):
            decrypt(bytes(tampered), aad, nonce, key)


@pytest.mark.parametrize(("encrypt", "decrypt"), PAIRS, ids=IDS)
def test_short_ciphertexts_do_not_open(encrypt: Any, decrypt: Any) -> None:
    for size in (0, 1, 15):
        with pytest.raises(CryptoError):
            decrypt(bytes(size), b"", bytes(24), bytes(32))
    # A tag alone is the sealing of the empty message.
    assert decrypt(encrypt(b"", b"aad", bytes(24), bytes(32)), b"aad", bytes(24), bytes(32)) == b""


@pytest.mark.parametrize(("encrypt", "decrypt"), PAIRS, ids=IDS)
def test_keys_and_nonces_of_the_wrong_size_are_refused(encrypt: Any, decrypt: Any) -> None:
    # libsodium reads them by their fixed sizes: a shorter one must never reach it.
    for key, nonce in ((bytes(31), bytes(24)), (bytes(33), bytes(24)), (bytes(32), bytes(23)), (bytes(32), bytes(12))):
        # As the bindings refuse them: errors that are CryptoError too, which callers catch.
        with pytest.raises(CryptoError) as refused:
            encrypt(b"message", b"", nonce, key)
        assert isinstance(refused.value, (ValueError, TypeError))
        with pytest.raises(CryptoError) as refused:
            decrypt(bytes(40), b"", nonce, key)
        assert isinstance(refused.value, (ValueError, TypeError))


@pytest.mark.parametrize(("encrypt", "decrypt"), PAIRS, ids=IDS)
def test_byte_like_arguments_are_taken_and_others_refused(encrypt: Any, decrypt: Any) -> None:
    sealed = encrypt(bytearray(b"message"), memoryview(b"aad"), bytearray(24), memoryview(bytes(32)))
    assert decrypt(memoryview(sealed), bytearray(b"aad"), bytearray(24), bytearray(32)) == b"message"
    for bad in ("text", 7, None):
        with pytest.raises(TypeError):
            encrypt(bad, b"", bytes(24), bytes(32))
        with pytest.raises(TypeError):
            decrypt(sealed, bad, bytes(24), bytes(32))


def test_documents_go_through_either_way(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stream sealed one way opens the other: what a PyNaCl without the cffi module would do."""
    from fedrecord.core import stream

    key, prefix, content = bytes(range(32)), bytes(range(16)), bytes(range(256)) * 300  # three chunks
    direct = stream.encrypt_bytes(key, prefix, content)
    monkeypatch.setattr(stream, "_encrypt_chunk", xchacha._encrypt_bindings)
    monkeypatch.setattr(stream, "_decrypt_chunk", xchacha._decrypt_bindings)
    assert stream.encrypt_bytes(key, prefix, content) == direct
    assert b"".join(stream.decrypt_whole_stream(key, direct[0])) == content
    assert stream.decrypt_bytes(key, direct[0]) == (content, direct[1])
