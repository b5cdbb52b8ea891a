"""STREAM document encryption (spec [ENC-1] to [ENC-7]).

An encryptor and a decryptor are the two peers; the "link" is the list of
byte strings between them, which the tests cut, reorder, extend and flip.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from itertools import islice

import nacl.bindings as sodium
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrecord.core import stream
from fedrecord.core.errors import AuthenticationError, Code, LocalProtocolError, RemoteProtocolError
from fedrecord.core.stream import (
    CHUNK_SIZE,
    HEADER_SIZE,
    MAGIC,
    PREFIX_SIZE,
    TAG_SIZE,
    BytesLike,
    StreamDecryptor,
    StreamEncryptor,
    ciphertext_size,
    decrypt_bytes,
    encrypt_bytes,
    key_commitment,
    stream_header,
)

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
PREFIX = bytes(range(100, 100 + PREFIX_SIZE))
SEALED_CHUNK = CHUNK_SIZE + TAG_SIZE
SIZES = [0, 1, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 3 * CHUNK_SIZE]


def document(size: int) -> bytes:
    """Deterministic, non-repeating-looking content (no randomness in tests)."""
    block = hashlib.sha256(size.to_bytes(8, "big")).digest() * 8
    return (block * (size // len(block) + 1))[:size]


def odd_pieces(data: bytes, sizes: Iterable[int] = (1, 13, 65535, 70001, 7)) -> Iterator[bytes]:
    """Cut ``data`` in pieces whose sizes cycle through ``sizes`` (never aligned on chunks)."""
    sizes = list(sizes)
    start, index = 0, 0
    while start < len(data):
        end = start + sizes[index % len(sizes)]
        yield data[start:end]
        start, index = end, index + 1


def stream_chunks(key: bytes, prefix: bytes, data: bytes) -> list[bytes]:
    """The encryptor's output as yielded: header, then one item per sealed chunk."""
    return list(StreamEncryptor(key, prefix).encrypt([data]))


def decrypt_all(chunks: Iterable[BytesLike], key: bytes = KEY) -> bytes:
    return b"".join(StreamDecryptor(key).decrypt(chunks))


def raises_code(code: Code, error: type[Exception] = RemoteProtocolError) -> pytest.RaisesExc[Exception]:
    return pytest.raises(error, match=f"^{code.value}:")


# --- round trips ---------------------------------------------------------------------------------


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("piece_sizes", [(1, 13, 65535, 70001, 7), (CHUNK_SIZE,), (10**7,)])
def test_round_trip_with_odd_pieces(size: int, piece_sizes: tuple[int, ...]) -> None:
    """Any cut of the input gives the same stream; any cut of the stream decrypts (spec [ENC-3])."""
    data = document(size)
    encryptor = StreamEncryptor(KEY, PREFIX)
    sealed = b"".join(encryptor.encrypt(odd_pieces(data, piece_sizes)))
    assert len(sealed) == ciphertext_size(size)
    assert (sealed, encryptor.document_id) == encrypt_bytes(KEY, PREFIX, data)

    decryptor = StreamDecryptor(KEY)
    plaintext = b"".join(decryptor.decrypt(odd_pieces(sealed, (7, 65551, 3, 100003))))
    assert plaintext == data
    assert decryptor.document_id == encryptor.document_id


@pytest.mark.parametrize("size", SIZES)
def test_chunk_layout(size: int) -> None:
    """Header, then full chunks, then one final chunk; empty input is one empty final chunk (spec [ENC-3])."""
    chunks = stream_chunks(KEY, PREFIX, document(size))
    assert chunks[0] == MAGIC + PREFIX + key_commitment(KEY, PREFIX)
    assert len(chunks[0]) == HEADER_SIZE == 52
    full, final = divmod(size, CHUNK_SIZE)
    if final == 0 and full:
        full, final = full - 1, CHUNK_SIZE
    assert [len(c) for c in chunks[1:]] == [SEALED_CHUNK] * full + [final + TAG_SIZE]


def test_format_matches_the_spec_independently() -> None:
    """Rebuild nonces, AAD, commitment and document id by hand (spec [ENC-1], [ENC-2], [ENC-4], [ENC-6])."""
    data = document(CHUNK_SIZE + 5)
    sealed, document_id = encrypt_bytes(KEY, PREFIX, data)
    commitment = hashlib.sha256(b"fedrecord/v0/key-commitment" + KEY + PREFIX).digest()
    header = b"FRD\x00" + PREFIX + commitment
    assert sealed[:52] == header
    first = sealed[52 : 52 + SEALED_CHUNK]
    second = sealed[52 + SEALED_CHUNK :]
    decrypt = sodium.crypto_aead_xchacha20poly1305_ietf_decrypt
    assert decrypt(first, header, PREFIX + (0).to_bytes(7, "big") + b"\x00", KEY) == data[:CHUNK_SIZE]
    assert decrypt(second, header, PREFIX + (1).to_bytes(7, "big") + b"\x01", KEY) == data[CHUNK_SIZE:]
    assert document_id == hashlib.sha256(b"fedrecord/v0/document-id" + sealed).digest()


def test_deterministic_given_key_and_prefix() -> None:
    """Same key, prefix and plaintext give the same bytes and id (spec [ENC-3])."""
    data = document(CHUNK_SIZE + 1)
    assert encrypt_bytes(KEY, PREFIX, data) == encrypt_bytes(KEY, PREFIX, data)
    other_prefix = encrypt_bytes(KEY, bytes(PREFIX_SIZE), data)
    assert other_prefix[0] != encrypt_bytes(KEY, PREFIX, data)[0]
    assert other_prefix[1] != encrypt_bytes(KEY, PREFIX, data)[1]


def test_bytes_like_pieces_and_a_reused_buffer() -> None:
    """A producer may hand out a bytearray it refills (and resizes) between pieces."""
    data = document(2 * CHUNK_SIZE + 3)

    def refilled() -> Iterator[bytearray]:
        buffer = bytearray()
        for piece in odd_pieces(data, (5000, 70000)):
            buffer[:] = piece  # resizes: fails if the consumer still holds a view
            yield buffer

    sealed = b"".join(StreamEncryptor(KEY, PREFIX).encrypt(refilled()))
    assert sealed == encrypt_bytes(KEY, PREFIX, data)[0]
    views = (memoryview(piece) for piece in odd_pieces(sealed, (999, 65552)))
    assert decrypt_all(views) == data


def test_empty_pieces_are_ignored() -> None:
    data = document(CHUNK_SIZE)
    pieces = [b"", data[:10], b"", data[10:], b""]
    assert b"".join(StreamEncryptor(KEY, PREFIX).encrypt(pieces)) == encrypt_bytes(KEY, PREFIX, data)[0]


def test_both_directions_are_lazy() -> None:
    """Memory stays flat: an endless document streams through without being read ahead (spec [ENC-3])."""
    consumed = 0

    def endless() -> Iterator[bytes]:
        nonlocal consumed
        block = document(1000)
        while True:
            consumed += len(block)
            yield block

    encryptor = StreamEncryptor(KEY, PREFIX)
    first = list(islice(StreamDecryptor(KEY).decrypt(encryptor.encrypt(endless())), 3))
    assert [len(p) for p in first] == [CHUNK_SIZE] * 3
    # Three chunks out, the fourth one held back as look-ahead, the fifth begun.
    assert consumed <= 5 * CHUNK_SIZE
    with raises_code(Code.TRUNCATED, LocalProtocolError):
        _ = encryptor.document_id


def test_document_id_only_when_complete() -> None:
    encryptor = StreamEncryptor(KEY, PREFIX)
    with raises_code(Code.TRUNCATED, LocalProtocolError):
        _ = encryptor.document_id
    chunks = encryptor.encrypt([b"abc"])
    next(chunks)
    with raises_code(Code.TRUNCATED, LocalProtocolError):
        _ = encryptor.document_id
    list(chunks)
    assert len(encryptor.document_id) == 32

    decryptor = StreamDecryptor(KEY)
    with raises_code(Code.TRUNCATED, LocalProtocolError):
        _ = decryptor.document_id
    truncated = stream_chunks(KEY, PREFIX, document(2 * CHUNK_SIZE))[:-1]
    with raises_code(Code.TRUNCATED):
        list(decryptor.decrypt(truncated))
    with raises_code(Code.TRUNCATED, LocalProtocolError):
        _ = decryptor.document_id


def test_each_instance_handles_one_stream() -> None:
    """A second encrypt() would reuse every nonce of the first."""
    encryptor = StreamEncryptor(KEY, PREFIX)
    encryptor.encrypt([b"a"])
    with raises_code(Code.REPLAY, LocalProtocolError):
        encryptor.encrypt([b"b"])
    decryptor = StreamDecryptor(KEY)
    decryptor.decrypt([])
    with raises_code(Code.REPLAY, LocalProtocolError):
        decryptor.decrypt([])


# --- misuse ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", [b"", bytes(31), bytes(33)])
def test_wrong_key_length(key: bytes) -> None:
    with raises_code(Code.BAD_KEY, LocalProtocolError):
        StreamEncryptor(key, PREFIX)
    with raises_code(Code.BAD_KEY, LocalProtocolError):
        StreamDecryptor(key)
    with raises_code(Code.BAD_KEY, LocalProtocolError):
        key_commitment(key, PREFIX)


@pytest.mark.parametrize("prefix", [b"", bytes(15), bytes(24)])
def test_wrong_prefix_length(prefix: bytes) -> None:
    with raises_code(Code.MALFORMED, LocalProtocolError):
        StreamEncryptor(KEY, prefix)
    with raises_code(Code.MALFORMED, LocalProtocolError):
        stream_header(KEY, prefix)


def test_counter_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past 2**56 chunks the counter would wrap and repeat nonces (spec [ENC-7]); shown with a limit of 2."""
    data = document(2 * CHUNK_SIZE + 1)
    sealed = encrypt_bytes(KEY, PREFIX, data)[0]
    monkeypatch.setattr(stream, "_MAX_CHUNKS", 2)
    assert encrypt_bytes(KEY, PREFIX, data[: 2 * CHUNK_SIZE])[0]
    with raises_code(Code.TOO_LARGE, LocalProtocolError):
        encrypt_bytes(KEY, PREFIX, data)
    with raises_code(Code.TOO_LARGE):
        decrypt_bytes(KEY, sealed)
    with raises_code(Code.TOO_LARGE, LocalProtocolError):
        ciphertext_size(len(data))
    with raises_code(Code.TOO_LARGE, LocalProtocolError):
        ciphertext_size(-1)


# --- attacks on the stream ------------------------------------------------------------------------


def test_wrong_key_is_bad_commitment() -> None:
    """The header commits to the key; another key is refused before any chunk (spec [ENC-2])."""
    sealed = encrypt_bytes(KEY, PREFIX, document(100))[0]
    with raises_code(Code.BAD_COMMITMENT):
        decrypt_bytes(OTHER_KEY, sealed)


def test_commitment_checked_before_any_chunk() -> None:
    """Nothing is decrypted, or even read, past the header under the wrong key."""

    def header_then_fail() -> Iterator[bytes]:
        yield stream_header(KEY, PREFIX)
        raise AssertionError("read past the header")

    with raises_code(Code.BAD_COMMITMENT):
        list(StreamDecryptor(OTHER_KEY).decrypt(header_then_fail()))


@pytest.mark.parametrize("size", [CHUNK_SIZE, 2 * CHUNK_SIZE, 3 * CHUNK_SIZE, 2 * CHUNK_SIZE + 9])
def test_truncated_at_chunk_boundary(size: int) -> None:
    """Dropping whole chunks leaves a last chunk sealed as a middle one (spec [ENC-5])."""
    chunks = stream_chunks(KEY, PREFIX, document(size))
    for keep in range(2, len(chunks)):
        with raises_code(Code.TRUNCATED):
            decrypt_all(odd_pieces(b"".join(chunks[:keep])))


@pytest.mark.parametrize("size", [0, 100, 3 * CHUNK_SIZE])
def test_header_without_chunks_is_truncated(size: int) -> None:
    """Even an empty document has a final chunk (spec [ENC-3])."""
    chunks = stream_chunks(KEY, PREFIX, document(size))
    with raises_code(Code.TRUNCATED):
        decrypt_all(chunks[:1])


@pytest.mark.parametrize("cut", range(0, HEADER_SIZE))
def test_truncated_inside_header(cut: int) -> None:
    sealed = encrypt_bytes(KEY, PREFIX, document(10))[0]
    with raises_code(Code.TRUNCATED):
        decrypt_all(odd_pieces(sealed[:cut], (1, 2)))


@pytest.mark.parametrize("lost", [1, TAG_SIZE, 1000, SEALED_CHUNK - TAG_SIZE])
def test_truncated_inside_a_chunk(lost: int) -> None:
    """Cut inside a chunk: the remainder does not authenticate (spec [ENC-5])."""
    sealed = encrypt_bytes(KEY, PREFIX, document(2 * CHUNK_SIZE))[0]
    with raises_code(Code.DECRYPT_FAILED, AuthenticationError):
        decrypt_all([sealed[:-lost]])


@pytest.mark.parametrize("left", [0, 1, TAG_SIZE - 1])
def test_final_chunk_shorter_than_a_tag(left: int) -> None:
    sealed = encrypt_bytes(KEY, PREFIX, document(CHUNK_SIZE + 100))[0]
    # left == 0 is a clean cut at the chunk boundary; otherwise a stub too short to be a chunk.
    with raises_code(Code.TRUNCATED):
        decrypt_all([sealed[: HEADER_SIZE + SEALED_CHUNK + left]])


def test_reordered_chunks() -> None:
    """Each chunk's position is in its nonce (spec [ENC-4])."""
    chunks = stream_chunks(KEY, PREFIX, document(3 * CHUNK_SIZE))
    header, first, second, third = chunks
    orders = [[header, second, first, third], [header, first, third, second], [header, third, first, second]]
    for order in orders:
        with raises_code(Code.DECRYPT_FAILED, AuthenticationError):
            decrypt_all(order)


def test_chunk_from_another_stream() -> None:
    """The header is every chunk's AAD: chunks do not move between streams, even under one key."""
    ours = stream_chunks(KEY, PREFIX, document(2 * CHUNK_SIZE))
    theirs = stream_chunks(KEY, bytes(PREFIX_SIZE), document(2 * CHUNK_SIZE))
    with raises_code(Code.DECRYPT_FAILED, AuthenticationError):
        decrypt_all([ours[0], theirs[1], ours[2]])


def test_extended_with_a_valid_chunk() -> None:
    """A chunk of a longer document, same key and prefix, appended after the true end (spec [ENC-5])."""
    short = stream_chunks(KEY, PREFIX, document(3 * CHUNK_SIZE)[: 2 * CHUNK_SIZE])
    longer = stream_chunks(KEY, PREFIX, document(3 * CHUNK_SIZE))
    assert short[:2] == longer[:2]  # the streams share header and first chunk
    with raises_code(Code.EXTENDED):
        decrypt_all(odd_pieces(b"".join(short + longer[3:])))
    # The mirror image, the longer stream cut after its second chunk, is a truncation.
    with raises_code(Code.TRUNCATED):
        decrypt_all(longer[:3])


@pytest.mark.parametrize("junk", [b"\x00", b"x" * 17, bytes(SEALED_CHUNK), bytes(SEALED_CHUNK + 1)])
def test_extended_with_junk_after_a_full_final_chunk(junk: bytes) -> None:
    chunks = stream_chunks(KEY, PREFIX, document(2 * CHUNK_SIZE))
    with raises_code(Code.EXTENDED):
        decrypt_all([*chunks, junk])


def test_junk_after_a_short_final_chunk_fails_authentication() -> None:
    """Junk shifts the chunk boundaries, so the chunk read does not authenticate at all."""
    chunks = stream_chunks(KEY, PREFIX, document(CHUNK_SIZE + 10))
    with raises_code(Code.DECRYPT_FAILED, AuthenticationError):
        decrypt_all([*chunks, bytes(1000)])


def test_empty_final_chunk_after_data_is_refused() -> None:
    """Only an empty document ends with an empty chunk; the other spelling is non-canonical (spec [ENC-3])."""
    header = stream_header(KEY, PREFIX)
    encrypt = sodium.crypto_aead_xchacha20poly1305_ietf_encrypt
    first = encrypt(document(CHUNK_SIZE), header, PREFIX + bytes(7) + b"\x00", KEY)
    empty = encrypt(b"", header, PREFIX + (1).to_bytes(7, "big") + b"\x01", KEY)
    with raises_code(Code.MALFORMED):
        decrypt_all([header, first, empty])


@pytest.mark.parametrize("magic", [b"FRD\x01", b"XRD\x00", b"frd\x00"])
def test_bad_magic(magic: bytes) -> None:
    sealed = encrypt_bytes(KEY, PREFIX, document(10))[0]
    with raises_code(Code.MALFORMED):
        decrypt_all([magic + sealed[4:]])
    # Refused as soon as the bytes seen disagree, even if the stream ends there.
    with raises_code(Code.MALFORMED):
        decrypt_all([magic])


def test_short_junk_is_malformed_not_truncated() -> None:
    with raises_code(Code.MALFORMED):
        decrypt_all([b"X"])
    with raises_code(Code.TRUNCATED):
        decrypt_all([b"FR"])


@settings(max_examples=300, deadline=None)
@given(data=st.data(), size=st.sampled_from([0, 1, 31, 200, CHUNK_SIZE, CHUNK_SIZE + 3]))
def test_any_single_bit_flip_is_rejected(data: st.DataObject, size: int) -> None:
    """No bit of the stream can change without the decryptor refusing it (spec [ENC-5])."""
    sealed = bytearray(encrypt_bytes(KEY, PREFIX, document(size))[0])
    bit = data.draw(st.integers(0, 8 * len(sealed) - 1), label="bit")
    sealed[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(RemoteProtocolError) as caught:
        decrypt_all([bytes(sealed)])
    offset = bit // 8
    if offset < len(MAGIC):
        assert caught.value.code is Code.MALFORMED
    elif offset < HEADER_SIZE:
        assert caught.value.code is Code.BAD_COMMITMENT
    else:
        assert isinstance(caught.value, AuthenticationError)
        assert caught.value.code is Code.DECRYPT_FAILED


def test_a_decryptor_that_does_not_hash_decrypts_the_same_and_has_no_id() -> None:
    """hash_stream=False (the id was checked over the whole stream first): same plaintext, no id."""
    key, prefix = bytes(range(32)), bytes(16)
    ciphertext, doc = stream.encrypt_bytes(key, prefix, b"x" * (stream.CHUNK_SIZE + 5))
    hashing, plain = stream.StreamDecryptor(key), stream.StreamDecryptor(key, hash_stream=False)
    assert b"".join(plain.decrypt([ciphertext])) == b"".join(hashing.decrypt([ciphertext])) == b"x" * (
        stream.CHUNK_SIZE + 5
    )
    assert hashing.document_id == doc == stream.stream_document_id(ciphertext)
    with pytest.raises(LocalProtocolError) as raised:
        _ = plain.document_id
    assert raised.value.code is Code.MALFORMED
