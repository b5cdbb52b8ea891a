"""A whole stream held in memory is checked as a streamed one is (spec [ENC-1] to [ENC-7], [DOC-2], [DOC-4]).

:func:`check_whole_stream` and :func:`decrypt_whole_stream` slice the chunks
out of the stream instead of re-cutting pieces as :class:`DocumentReader` and
:class:`StreamDecryptor` do.  Every test here runs both paths on the same bytes
and expects the same outcome: the same content, or the same first broken rule.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import nacl.bindings as sodium
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedrecord.core import stream
from fedrecord.core.documents import MAX_HEADER_SIZE, DocumentReader, DocumentWriter, check_whole_stream
from fedrecord.core.errors import Code, FedrecordError
from fedrecord.core.identity import SigningIdentity
from fedrecord.core.records import DocumentHeader
from fedrecord.core.signed import sign_record
from fedrecord.core.stream import (
    CHUNK_SIZE,
    HEADER_SIZE,
    TAG_SIZE,
    StreamDecryptor,
    StreamEncryptor,
    decrypt_whole_stream,
    key_commitment,
    stream_document_id,
    stream_header,
)

from .test_stream import KEY, OTHER_KEY, PREFIX

AUTHOR = SigningIdentity.from_seed(bytes([7]) * 32)
PATIENT = SigningIdentity.from_seed(bytes([9]) * 32)
# A small chunk size puts the signed header across several chunks, and makes many chunks cheap.
SMALL_CHUNK = 64

Outcome = tuple[Any, ...]


def content(size: int) -> bytes:
    block = hashlib.sha256(size.to_bytes(8, "big")).digest() * 8
    return (block * (size // len(block) + 1))[:size]


def header_for(size: int, *, key: bytes = KEY, patient: str = PATIENT.did) -> DocumentHeader:
    return DocumentHeader(
        patient=patient,
        title="Full blood count",
        doc_type="lab-result",
        category="lab",
        labels=("blood",),
        date=20261129,
        media_type="application/pdf",
        size=size,
        commitment=key_commitment(key, PREFIX),
    )


def document_stream(size: int) -> bytes:
    writer = DocumentWriter(AUTHOR, header_for(size), key=KEY, prefix=PREFIX)
    return b"".join(writer.encrypt([content(size)]))


def stream_of_plaintext(plaintext: bytes) -> bytes:
    """Any plaintext as a valid STREAM under KEY: for documents no DocumentWriter would write."""
    return b"".join(StreamEncryptor(KEY, PREFIX).encrypt([plaintext]))


def framed(signed_header: bytes, body: bytes) -> bytes:
    return len(signed_header).to_bytes(4, "big") + signed_header + body


def pieces(data: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def outcome(run: Any) -> Outcome:
    try:
        return ("ok", *run())
    except FedrecordError as exc:
        return (type(exc).__name__, exc.code)


def whole(data: bytes, *, key: bytes = KEY, author: str | None = None, patient: str = PATIENT.did) -> Outcome:
    def run() -> tuple[Any, ...]:
        header, size = check_whole_stream(
            data, doc=stream_document_id(data), key=key, expected_patient=patient, expected_author=author
        )
        return header.id, header.encoded, size

    return outcome(run)


def streamed(
    data: bytes, piece_size: int, *, key: bytes = KEY, author: str | None = None, patient: str = PATIENT.did
) -> Outcome:
    def run() -> tuple[Any, ...]:
        reader = DocumentReader(key, expected_author=author, expected_patient=patient)
        size = sum(len(piece) for piece in reader.decrypt(pieces(data, piece_size) if data else [data]))
        assert reader.header is not None
        return reader.header.id, reader.header.encoded, size

    return outcome(run)


def assert_same(data: bytes, **kwargs: Any) -> Outcome:
    """Both paths agree, whatever the stream is cut into on the streamed one; returns the outcome."""
    expected = whole(data, **kwargs)
    for piece_size in (len(data) or 1, 1, 13, 65_537):
        assert streamed(data, piece_size, **kwargs) == expected, piece_size
    chunks = outcome(lambda: (b"".join(decrypt_whole_stream(kwargs.get("key", KEY), data)),))
    assert outcome(lambda: (b"".join(StreamDecryptor(kwargs.get("key", KEY)).decrypt([data])),)) == chunks
    return expected


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stream, "CHUNK_SIZE", SMALL_CHUNK)
    monkeypatch.setattr(stream, "_SEALED_CHUNK_SIZE", SMALL_CHUNK + TAG_SIZE)


SIZES = [0, 1, 1024, CHUNK_SIZE, 2 * CHUNK_SIZE + 5]


@pytest.mark.parametrize("size", SIZES)
def test_valid_documents(size: int) -> None:
    result = assert_same(document_stream(size), author=AUTHOR.did)
    assert result[0] == "ok" and result[3] == size


def document_plaintext(total: int) -> bytes:
    """A valid document plaintext of exactly ``total`` bytes: framed signed header and content."""
    size = total
    while True:
        # The header's length depends on the size it states: settle both.
        signed = sign_record(header_for(size), AUTHOR).encoded
        body_size = total - len(framed(signed, b""))
        if body_size == size:
            return framed(signed, content(size))
        size = body_size


def test_a_final_chunk_that_is_full() -> None:
    """Content that fills the last chunk exactly: no partial chunk follows ([ENC-3])."""
    data = stream_of_plaintext(document_plaintext(2 * CHUNK_SIZE))
    assert (len(data) - HEADER_SIZE) % (CHUNK_SIZE + TAG_SIZE) == 0
    assert assert_same(data)[0] == "ok"


@pytest.mark.parametrize("size", [0, 5, SMALL_CHUNK, 10 * SMALL_CHUNK])
def test_header_across_chunks(small_chunks: None, size: int) -> None:
    data = document_stream(size)
    assert len(data) > HEADER_SIZE + 4 * (SMALL_CHUNK + TAG_SIZE)
    assert assert_same(data)[0] == "ok"


@pytest.mark.parametrize("cut", [0, 1, 3, 4, 30, HEADER_SIZE - 1, HEADER_SIZE, HEADER_SIZE + TAG_SIZE - 1])
def test_cut_in_the_stream_header_or_first_tag(cut: int) -> None:
    data = document_stream(100)[:cut]
    assert assert_same(data)[1] == Code.TRUNCATED


def test_cut_at_every_byte(small_chunks: None) -> None:
    data = document_stream(3 * SMALL_CHUNK)
    codes = {assert_same(data[:cut])[1] for cut in range(len(data))}
    assert codes == {Code.TRUNCATED, Code.DECRYPT_FAILED}


def test_cut_at_chunk_boundaries() -> None:
    data = document_stream(2 * CHUNK_SIZE + 5)
    for chunks in (1, 2):
        assert assert_same(data[: HEADER_SIZE + chunks * (CHUNK_SIZE + TAG_SIZE)])[1] == Code.TRUNCATED


def test_extended() -> None:
    # One full final chunk, then the second chunk of a longer stream under the same key and prefix.
    data = stream_of_plaintext(content(CHUNK_SIZE))
    other = stream_of_plaintext(content(CHUNK_SIZE) + b"more")
    assert assert_same(data + other[len(data) :])[1] == Code.EXTENDED
    assert assert_same(data + b"x")[1] == Code.EXTENDED
    assert assert_same(document_stream(10) + b"x")[1] == Code.DECRYPT_FAILED


def test_empty_final_chunk_after_data() -> None:
    """The other spelling of a document that fills its chunks: one more, empty, final chunk ([ENC-3])."""
    header = stream_header(KEY, PREFIX)
    encrypt = sodium.crypto_aead_xchacha20poly1305_ietf_encrypt
    first = encrypt(document_plaintext(CHUNK_SIZE), header, PREFIX + bytes(7) + b"\x00", KEY)
    empty = encrypt(b"", header, PREFIX + (1).to_bytes(7, "big") + b"\x01", KEY)
    assert assert_same(header + first + empty)[1] == Code.MALFORMED


def test_chunk_counter_limit(small_chunks: None, monkeypatch: pytest.MonkeyPatch) -> None:
    data = document_stream(10 * SMALL_CHUNK)
    monkeypatch.setattr(stream, "_MAX_CHUNKS", 3)
    assert assert_same(data)[1] == Code.TOO_LARGE


@pytest.mark.parametrize(
    ("where", "code"),
    [
        (0, Code.MALFORMED),
        (3, Code.MALFORMED),
        (HEADER_SIZE - 1, Code.BAD_COMMITMENT),
        (-1, Code.DECRYPT_FAILED),
    ],
)
def test_tampered_stream_header_and_chunks(where: int, code: Code) -> None:
    data = bytearray(document_stream(1024))
    data[where] ^= 0x01
    assert assert_same(bytes(data))[1] == code


# The fixture only lowers a constant: sharing it between examples is harmless.
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_any_single_bit_flip(small_chunks: None, data: st.DataObject) -> None:
    sealed = bytearray(document_stream(2 * SMALL_CHUNK))
    position = data.draw(st.integers(0, len(sealed) - 1))
    sealed[position] ^= 1 << data.draw(st.integers(0, 7))
    assert assert_same(bytes(sealed))[0] != "ok"


def test_wrong_key_and_bad_key() -> None:
    data = document_stream(10)
    assert assert_same(data, key=OTHER_KEY)[1] == Code.BAD_COMMITMENT
    assert assert_same(data, key=KEY[:31]) == ("LocalProtocolError", Code.BAD_KEY)


def test_other_author_and_patient() -> None:
    data = document_stream(10)
    assert assert_same(data, author=PATIENT.did)[1] == Code.INVALID_RECORD
    assert assert_same(data, patient=AUTHOR.did)[1] == Code.INVALID_RECORD


def test_header_committing_to_another_key() -> None:
    signed = sign_record(header_for(3, key=OTHER_KEY), AUTHOR).encoded
    assert assert_same(stream_of_plaintext(framed(signed, b"abc")))[1] == Code.BAD_COMMITMENT


@pytest.mark.parametrize("body", [b"", b"ab", b"abcd"])
def test_content_not_the_size_the_header_says(body: bytes) -> None:
    signed = sign_record(header_for(3), AUTHOR).encoded
    assert assert_same(stream_of_plaintext(framed(signed, body)))[1] == Code.INVALID_RECORD


@pytest.mark.parametrize(
    ("plaintext", "code"),
    [
        (b"", Code.TRUNCATED),
        (b"\x00\x00\x01", Code.TRUNCATED),
        ((MAX_HEADER_SIZE + 1).to_bytes(4, "big"), Code.TOO_LARGE),
        ((300).to_bytes(4, "big") + bytes(100), Code.TRUNCATED),
        ((3).to_bytes(4, "big") + b"\xa0\xa0\xa0", Code.TRAILING_BYTES),
    ],
)
def test_unreadable_document_headers(plaintext: bytes, code: Code) -> None:
    assert assert_same(stream_of_plaintext(plaintext))[1] == code


def test_header_too_large_is_found_before_a_later_chunk_fails(small_chunks: None) -> None:
    data = bytearray(stream_of_plaintext((MAX_HEADER_SIZE + 1).to_bytes(4, "big") + bytes(5 * SMALL_CHUNK)))
    data[-1] ^= 1
    assert assert_same(bytes(data))[1] == Code.TOO_LARGE


def test_a_stream_that_is_not_the_document_named() -> None:
    data = document_stream(10)
    with pytest.raises(FedrecordError, match=r"^malformed:"):
        check_whole_stream(data, doc=bytes(32), key=KEY, expected_patient=PATIENT.did)
    with pytest.raises(FedrecordError, match=r"^truncated:"):
        check_whole_stream(
            data, doc=stream_document_id(data), key=KEY, expected_patient=PATIENT.did, size=len(data) + 1
        )


def test_bytes_like_streams() -> None:
    data = document_stream(1024)
    doc = stream_document_id(data)
    for view in (bytearray(data), memoryview(data)):
        _header, size = check_whole_stream(view, doc=doc, key=KEY, expected_patient=PATIENT.did)  # type: ignore[arg-type]
        assert size == 1024
        assert b"".join(decrypt_whole_stream(KEY, view)) == b"".join(StreamDecryptor(KEY).decrypt([data]))


def test_stream_header_is_the_one_written() -> None:
    assert document_stream(0)[:HEADER_SIZE] == stream_header(KEY, PREFIX)
