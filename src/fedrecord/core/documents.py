"""Documents: the author's signed header and the content, encrypted together.

The plaintext of a document stream (:mod:`fedrecord.core.stream`) is::

    u32 big-endian length of the signed header || signed DocumentHeader || content

so that title, type, category, labels and author travel only inside the
encryption (spec [DOC-2]).  The header's ``commit`` field must equal the key
commitment in the stream header: the author vouches for this key, and a
reader refuses a header re-encrypted under another (spec [DOC-4]).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Final

from .errors import Code, LocalProtocolError, RemoteProtocolError
from .identity import SigningIdentity
from .records import DocumentHeader
from .signed import Signed, open_record, sign_record
from .stream import (
    HEADER_SIZE,
    MAGIC,
    PREFIX_SIZE,
    StreamDecryptor,
    StreamEncryptor,
    decrypt_whole_stream,
    key_commitment,
    stream_document_id,
)

__all__ = ["MAX_HEADER_SIZE", "DocumentWriter", "DocumentReader", "check_whole_stream", "padded_size"]

MAX_HEADER_SIZE: Final = 16_384
_LENGTH_SIZE: Final = 4
_STREAM_HEADER_SIZE: Final = HEADER_SIZE
# Where the key commitment sits in the stream header (spec [ENC-1]).
_COMMITMENT_AT: Final = len(MAGIC) + PREFIX_SIZE


def padded_size(size: int) -> int:
    """The size class an opaque record entry shows: the next power of two, at least 1 KiB."""
    return max(1024, 1 << max(0, size - 1).bit_length())


class DocumentWriter:
    """Encrypts one document: signs its header and streams header and content out.

    Usage::

        writer = DocumentWriter(author, header, key=key, prefix=prefix)
        for piece in writer.encrypt(content_pieces): ...
        writer.document_id   # once the iterator is exhausted
    """

    def __init__(self, author: SigningIdentity, header: DocumentHeader, *, key: bytes, prefix: bytes) -> None:
        """Raises:
        LocalProtocolError: ``bad-commitment`` when ``header.commitment`` is
            not the commitment of ``key`` and ``prefix``.
        """
        if header.commitment != key_commitment(key, prefix):
            raise LocalProtocolError(Code.BAD_COMMITMENT, "the header must commit to this key and prefix")
        self.signed_header = sign_record(header, author)
        self._stream = StreamEncryptor(key, prefix)

    def encrypt(self, content: Iterable[bytes]) -> Iterator[bytes]:
        """Yield the ciphertext stream of the header followed by ``content``.

        Raises:
            LocalProtocolError: ``invalid-record`` when the content length is
                not the size the header states.
        """
        encoded = self.signed_header.encoded
        header = self.signed_header.record

        def plaintext() -> Iterator[bytes]:
            yield len(encoded).to_bytes(_LENGTH_SIZE, "big") + encoded
            total = 0
            for piece in content:
                total += len(piece)
                yield piece
            if total != header.size:
                raise LocalProtocolError(
                    Code.INVALID_RECORD, f"content is {total} bytes, header says {header.size}"
                )

        return self._stream.encrypt(plaintext())

    @property
    def document_id(self) -> bytes:
        return self._stream.document_id


class DocumentReader:
    """Decrypts one document stream, verifying the author's header before any content.

    ``header`` is set once the signed header has been read and checked,
    before the first content byte is yielded.  Content yielded before the
    iterator ends is not yet authenticated as a whole (see
    :class:`~fedrecord.core.stream.StreamDecryptor`).
    """

    def __init__(
        self,
        key: bytes,
        *,
        expected_author: str | None = None,
        expected_patient: str | None = None,
        hash_stream: bool = True,
    ):
        """Args:
        hash_stream: as :class:`~fedrecord.core.stream.StreamDecryptor`'s.
        """
        self._key = key
        self._stream = StreamDecryptor(key, hash_stream=hash_stream)
        self._expected_author = expected_author
        self._expected_patient = expected_patient
        self.header: Signed[DocumentHeader] | None = None

    @property
    def document_id(self) -> bytes:
        return self._stream.document_id

    def decrypt(self, ciphertext: Iterable[bytes]) -> Iterator[bytes]:
        """Yield the content of the document.

        Raises:
            RemoteProtocolError: any stream error; ``bad-commitment`` when the
                signed header commits to another key; ``invalid-record`` when
                the header is unreadable, names another author or patient, or
                the content length differs from the header's size; the codes
                of :func:`~fedrecord.core.signed.open_record` for the header.
        """
        stream_header = bytearray()

        def capture(pieces: Iterable[bytes]) -> Iterator[bytes]:
            for piece in pieces:
                if len(stream_header) < _STREAM_HEADER_SIZE:
                    stream_header.extend(piece[: _STREAM_HEADER_SIZE - len(stream_header)])
                yield piece

        buffer = bytearray()
        content_size = 0
        for plaintext in self._stream.decrypt(capture(ciphertext)):
            piece = plaintext
            if self.header is None:
                buffer.extend(plaintext)
                if self._read_header(buffer, bytes(stream_header)) is None:
                    continue
                piece = bytes(buffer)
                buffer.clear()
            content_size += len(piece)
            if piece:
                yield piece
        if self.header is None:
            raise RemoteProtocolError(Code.TRUNCATED, "the document ends inside its header")
        if content_size != self.header.record.size:
            raise RemoteProtocolError(
                Code.INVALID_RECORD, f"content is {content_size} bytes, header says {self.header.record.size}"
            )

    def _read_header(self, buffer: bytearray, stream_header: bytes) -> Signed[DocumentHeader] | None:
        """Parse the header once ``buffer`` holds it; leave only content in ``buffer``."""
        opened = _open_header(
            buffer, stream_header[_COMMITMENT_AT:], self._expected_author, self._expected_patient
        )
        if opened is None:
            return None
        self.header, content_start = opened
        del buffer[:content_start]
        return self.header


def _open_header(
    plaintext: bytes | bytearray,
    commitment: bytes,
    expected_author: str | None,
    expected_patient: str | None,
) -> tuple[Signed[DocumentHeader], int] | None:
    """Open the signed header at the start of a document's plaintext, once the plaintext holds it.

    Args:
        plaintext: the document's plaintext so far.
        commitment: the key commitment of a stream header already checked
            against the key ([ENC-2]), so equal to the key's own.

    Returns:
        The header and where the content starts in ``plaintext``, or None
        while ``plaintext`` ends before the header does.

    Raises:
        RemoteProtocolError: ``too-large`` for a header length beyond
            :data:`MAX_HEADER_SIZE`; the codes of
            :func:`~fedrecord.core.signed.open_record`; ``bad-commitment``
            when the header commits to another key ([DOC-4]);
            ``invalid-record`` when it names another author or patient.
    """
    if len(plaintext) < _LENGTH_SIZE:
        return None
    length = int.from_bytes(plaintext[:_LENGTH_SIZE], "big")
    if length > MAX_HEADER_SIZE:
        raise RemoteProtocolError(Code.TOO_LARGE, f"document header of {length} bytes")
    end = _LENGTH_SIZE + length
    if len(plaintext) < end:
        return None
    header = open_record(bytes(plaintext[_LENGTH_SIZE:end]), DocumentHeader)
    if header.record.commitment != commitment:
        raise RemoteProtocolError(Code.BAD_COMMITMENT, "the signed header commits to another key")
    if expected_author is not None and header.signer != expected_author:
        raise RemoteProtocolError(Code.INVALID_RECORD, "the document is signed by another author")
    if expected_patient is not None and header.record.patient != expected_patient:
        raise RemoteProtocolError(Code.INVALID_RECORD, "the document is about another patient")
    return header, end


def check_whole_stream(
    stream: bytes,
    *,
    doc: bytes,
    key: bytes,
    expected_patient: str,
    expected_author: str | None = None,
    size: int | None = None,
) -> tuple[Signed[DocumentHeader], int]:
    """Check a whole stream held in memory: its id, its length, then every chunk and its signed header.

    In the order a node checks a document it receives ([API-13], [API-72]): the
    id first ([ENC-6]), so that a stream that is not the one named is told
    apart from one that does not decrypt.

    Args:
        size: the length the stream must have (a deposit's), if any.

    Returns:
        The signed header and the length of the content.

    Raises:
        RemoteProtocolError: ``malformed`` when the stream is not ``doc``;
            ``truncated`` when it is shorter than ``size``; the codes of
            :meth:`DocumentReader.decrypt`.
    """
    if stream_document_id(stream) != doc:
        raise RemoteProtocolError(Code.MALFORMED, "ciphertext does not match its document id")
    if size is not None and len(stream) != size:
        raise RemoteProtocolError(Code.TRUNCATED, "the document is shorter than its deposit says")
    # What DocumentReader.decrypt does, without its generators and buffer: the
    # chunks are sliced out of the stream, and the id was checked over the
    # whole stream just now, so it is not hashed again.  The header is opened
    # as soon as the plaintext holds it, before the next chunk is decrypted,
    # so the first rule broken is the same on both paths.
    header: Signed[DocumentHeader] | None = None
    head = b""  # the plaintext while it may end inside the header
    content = 0
    for plaintext in decrypt_whole_stream(key, stream):
        if header is not None:
            content += len(plaintext)
            continue
        head += plaintext
        # The first chunk opened: the stream header is checked, its commitment is the key's.
        opened = _open_header(
            head, bytes(stream[_COMMITMENT_AT:_STREAM_HEADER_SIZE]), expected_author, expected_patient
        )
        if opened is not None:
            header, content_start = opened
            content = len(head) - content_start
    if header is None:
        raise RemoteProtocolError(Code.TRUNCATED, "the document ends inside its header")
    if content != header.record.size:
        raise RemoteProtocolError(
            Code.INVALID_RECORD, f"content is {content} bytes, header says {header.record.size}"
        )
    return header, content
