"""STREAM encryption of document bodies: XChaCha20-Poly1305 in 64 KiB chunks.

Theory of operation.  A document is encrypted under a fresh 32-byte key and a
16-byte nonce prefix, both chosen by the caller (the core draws no randomness),
so encryption is deterministic given key, prefix and plaintext.  The stream is::

    header  = MAGIC (b"FRD" + format version 0) || prefix (16) || commitment (32)
    chunk i = XChaCha20-Poly1305(key, nonce_i, aad=header, plaintext_i)
    nonce_i = prefix || i as 7-byte big-endian || 0x01 if final else 0x00

as in the age file format's STREAM construction (Hoang, Reyhanitabar, Rogaway,
Vizár, "Online Authenticated-Encryption and its Nonce-Reuse Misuse-Resistance").
Every chunk but the last holds exactly :data:`CHUNK_SIZE` plaintext bytes; the
last may be full-size and is empty only when the whole document is.  Because
the counter and the final flag are inside the nonce, a stream that was cut at
a chunk boundary (no chunk with the final flag), extended past its end (data
after the final-flagged chunk) or reordered does not decrypt.  The header is
the associated data of every chunk, so it cannot be swapped either.

The commitment, SHA-256 over a domain tag, the key and the prefix, makes the
ciphertext bind one key: Poly1305 alone is not key-committing, so without it a
stream could be crafted that decrypts to two different documents under two
keys (the "invisible salamanders" attack).  It is checked before any chunk.

A document's id is SHA-256 over a domain tag and the whole ciphertext stream,
header included, computed on the fly on both sides.

Both directions are generators that hold at most one full chunk of look-ahead
plus one partial chunk, so memory stays flat for any document size.  A chunk
is known to be the final one only when the input ends right after it, which is
why one complete chunk is always held back until one more byte arrives.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Iterator
from itertools import chain
from typing import Final, TypeAlias

from nacl.exceptions import CryptoError

from . import xchacha
from .errors import AuthenticationError, Code, LocalProtocolError, RemoteProtocolError

__all__ = [
    "CHUNK_SIZE",
    "TAG_SIZE",
    "PREFIX_SIZE",
    "KEY_SIZE",
    "MAGIC",
    "HEADER_SIZE",
    "BytesLike",
    "key_commitment",
    "stream_header",
    "ciphertext_size",
    "stream_document_id",
    "StreamEncryptor",
    "StreamDecryptor",
    "decrypt_whole_stream",
    "encrypt_bytes",
    "decrypt_bytes",
    "aead_encrypt",
    "aead_decrypt",
]

CHUNK_SIZE: Final = 65536
TAG_SIZE: Final = 16
PREFIX_SIZE: Final = 16
KEY_SIZE: Final = 32
MAGIC: Final = b"FRD\x00"
_COMMITMENT_SIZE: Final = 32
HEADER_SIZE: Final = len(MAGIC) + PREFIX_SIZE + _COMMITMENT_SIZE

_SEALED_CHUNK_SIZE: Final = CHUNK_SIZE + TAG_SIZE
_COUNTER_SIZE: Final = 7
# A module global, not a literal in the loops, so tests can lower it.
_MAX_CHUNKS = 2 ** (8 * _COUNTER_SIZE)
_NOT_LAST: Final = b"\x00"
_LAST: Final = b"\x01"
_COMMITMENT_TAG: Final = b"fedrecord/v0/key-commitment"
_DOCUMENT_ID_TAG: Final = b"fedrecord/v0/document-id"

# What the input iterables may hold: anything ``memoryview`` accepts as a flat byte buffer.
BytesLike: TypeAlias = bytes | bytearray | memoryview

_NONCE_SIZE: Final = 24

_encrypt_chunk = xchacha.encrypt
_decrypt_chunk = xchacha.decrypt


def _checked_key(key: bytes) -> bytes:
    if not isinstance(key, (bytes, bytearray)) or len(key) != KEY_SIZE:
        raise LocalProtocolError(Code.BAD_KEY, "a document key is 32 bytes")
    return bytes(key)


def _checked_prefix(prefix: bytes) -> bytes:
    if not isinstance(prefix, (bytes, bytearray)) or len(prefix) != PREFIX_SIZE:
        raise LocalProtocolError(Code.MALFORMED, "a STREAM nonce prefix is 16 bytes")
    return bytes(prefix)


def aead_encrypt(key: bytes, nonce: bytes, plaintext: bytes, aad: bytes = b"") -> bytes:
    """One XChaCha20-Poly1305 (IETF) encryption: ciphertext || 16-byte tag.

    The primitive under STREAM, exposed so that published AEAD vectors run
    through the same checked call.

    Raises:
        LocalProtocolError: ``bad-key`` for a key that is not 32 bytes,
            ``malformed`` for a nonce that is not 24 bytes.
    """
    if len(nonce) != _NONCE_SIZE:
        raise LocalProtocolError(Code.MALFORMED, "an XChaCha20-Poly1305 nonce is 24 bytes")
    sealed: bytes = _encrypt_chunk(bytes(plaintext), bytes(aad), bytes(nonce), _checked_key(key))
    return sealed


def aead_decrypt(key: bytes, nonce: bytes, sealed: bytes, aad: bytes = b"") -> bytes:
    """Open one XChaCha20-Poly1305 (IETF) ciphertext || tag.

    Raises:
        LocalProtocolError: as :func:`aead_encrypt`.
        AuthenticationError: ``decrypt-failed`` when the tag does not verify.
    """
    if len(nonce) != _NONCE_SIZE:
        raise LocalProtocolError(Code.MALFORMED, "an XChaCha20-Poly1305 nonce is 24 bytes")
    key = _checked_key(key)
    if len(sealed) < TAG_SIZE:
        raise AuthenticationError(Code.DECRYPT_FAILED)
    try:
        plaintext: bytes = _decrypt_chunk(bytes(sealed), bytes(aad), bytes(nonce), key)
    except CryptoError:
        raise AuthenticationError(Code.DECRYPT_FAILED) from None
    return plaintext


def key_commitment(key: bytes, prefix: bytes) -> bytes:
    """The 32-byte commitment to ``key`` carried in the stream header (spec [ENC-2]).

    Args:
        key: the 32-byte document key.
        prefix: the 16-byte nonce prefix of the stream.

    Returns:
        SHA-256(b"fedrecord/v0/key-commitment" || key || prefix).

    Raises:
        LocalProtocolError: ``bad-key`` for a key that is not 32 bytes,
            ``malformed`` for a prefix that is not 16 bytes.
    """
    return hashlib.sha256(_COMMITMENT_TAG + _checked_key(key) + _checked_prefix(prefix)).digest()


def stream_header(key: bytes, prefix: bytes) -> bytes:
    """The 52-byte stream header: MAGIC || prefix || key commitment (spec [ENC-1]).

    Raises:
        LocalProtocolError: as :func:`key_commitment`.
    """
    return MAGIC + _checked_prefix(prefix) + key_commitment(key, prefix)


def ciphertext_size(plaintext_size: int) -> int:
    """The exact length of the stream that encrypts ``plaintext_size`` bytes.

    Lets an adapter announce a Content-Length before streaming a body.

    Raises:
        LocalProtocolError: ``too-large`` for a negative size or one beyond the chunk counter.
    """
    chunks = max(1, -(-plaintext_size // CHUNK_SIZE))
    if plaintext_size < 0 or chunks > _MAX_CHUNKS:
        raise LocalProtocolError(Code.TOO_LARGE, "plaintext size out of range for one stream")
    return HEADER_SIZE + plaintext_size + chunks * TAG_SIZE


def _rechunk(pieces: Iterable[BytesLike], size: int) -> Iterator[tuple[bytes, bool]]:
    """Cut a sequence of byte strings of any lengths into ``size``-byte chunks.

    Yields ``(chunk, is_last)``.  Every chunk but the last is exactly ``size``
    bytes; the last is 0 to ``size`` bytes (empty only when all input was).
    A full chunk is held back until another byte arrives, because only then is
    it known not to be the last.  Pieces that are ``bytes`` of exactly ``size``
    bytes pass through without a copy (the common case when a decryptor reads
    an encryptor's output); anything else is copied once into fresh ``bytes``,
    which is what the libsodium bindings accept.
    """
    held: bytes | None = None  # a full chunk whose finality is not yet known
    partial = bytearray()  # always empty while ``held`` is set
    for piece in pieces:
        # A ``with`` releases the view before the producer runs again, so a
        # producer may resize a bytearray it hands us piece after piece.
        with memoryview(piece) as view:
            length = len(view)
            if not length:
                continue
            if held is not None:
                yield held, False
                held = None
            start = 0
            if partial:
                start = size - len(partial)
                partial += view[:start]
                if len(partial) < size:
                    continue
                if start >= length:
                    held = bytes(partial)
                    partial.clear()
                    continue
                yield bytes(partial), False
                partial.clear()
            while length - start > size:
                yield bytes(view[start : start + size]), False
                start += size
            if length - start == size:
                held = piece if start == 0 and type(piece) is bytes else bytes(view[start:])
            else:
                partial += view[start:]
    if held is not None:
        yield held, True
    else:
        yield bytes(partial), True


class StreamEncryptor:
    """Encrypts one document as a STREAM, chunk by chunk.

    One instance encrypts one stream: a (key, prefix) pair must never encrypt
    two different plaintexts, since the nonces would repeat.
    """

    def __init__(self, key: bytes, prefix: bytes) -> None:
        """Prepare the stream header.

        Args:
            key: the 32-byte document key (fresh random bytes from the caller).
            prefix: the 16-byte nonce prefix (fresh random bytes from the caller).

        Raises:
            LocalProtocolError: ``bad-key`` for a key that is not 32 bytes,
                ``malformed`` for a prefix that is not 16 bytes.
        """
        self._key = _checked_key(key)
        self._prefix = _checked_prefix(prefix)
        self._header = stream_header(self._key, self._prefix)
        self._started = False
        self._document_id: bytes | None = None

    @property
    def header(self) -> bytes:
        """The 52-byte stream header, the first bytes :meth:`encrypt` yields."""
        return self._header

    @property
    def document_id(self) -> bytes:
        """SHA-256 over the document-id tag and the whole stream (spec [ENC-6]).

        Set when the final chunk is yielded, so at the latest once the
        :meth:`encrypt` iterator is exhausted.

        Raises:
            LocalProtocolError: ``truncated`` before that.
        """
        if self._document_id is None:
            raise LocalProtocolError(Code.TRUNCATED, "the document id is known once the stream is complete")
        return self._document_id

    def encrypt(self, plaintext: Iterable[BytesLike]) -> Iterator[bytes]:
        """Encrypt ``plaintext`` lazily.

        Args:
            plaintext: byte strings of any lengths (empty ones allowed); they are
                re-cut into 64 KiB chunks and consumed one at a time.

        Returns:
            An iterator yielding the header, then each ciphertext chunk as soon as
            it is complete.  :attr:`document_id` is set once it is exhausted.

        Raises:
            LocalProtocolError: ``replay`` when called a second time on the same
                instance (it would reuse nonces); from the iterator, ``too-large``
                when the plaintext needs more than 2**56 chunks (spec [ENC-7]).
        """
        if self._started:
            raise LocalProtocolError(Code.REPLAY, "a StreamEncryptor encrypts exactly one stream")
        self._started = True
        return self._encrypt(plaintext)

    def _encrypt(self, plaintext: Iterable[BytesLike]) -> Iterator[bytes]:
        header, key, prefix = self._header, self._key, self._prefix
        digest = hashlib.sha256(_DOCUMENT_ID_TAG)
        digest.update(header)
        yield header
        max_chunks = _MAX_CHUNKS
        for counter, (chunk, last) in enumerate(_rechunk(plaintext, CHUNK_SIZE)):
            if counter >= max_chunks:
                raise LocalProtocolError(Code.TOO_LARGE, "document exceeds the STREAM chunk counter")
            # spec [ENC-4]: prefix || counter || final flag; the header is the AAD of every chunk.
            nonce = prefix + counter.to_bytes(_COUNTER_SIZE, "big") + (_LAST if last else _NOT_LAST)
            sealed = _encrypt_chunk(chunk, header, nonce, key)
            digest.update(sealed)
            if last:
                # Set before the final yield so the id is ready even for a
                # consumer that stops right after the last chunk.
                self._document_id = digest.digest()
            yield sealed


class StreamDecryptor:
    """Decrypts and authenticates one STREAM, chunk by chunk.

    Warning: the plaintext pieces it yields are authenticated one chunk at a
    time, not as a whole.  A stream cut short or extended is only detected when
    its end is reached, so the document is authentic only if the iterator
    finishes without raising.  Write the pieces to a temporary place and commit
    (rename, mark accepted, show to a user) only after that.
    """

    def __init__(self, key: bytes, *, hash_stream: bool = True) -> None:
        """Prepare to decrypt a stream under ``key``.

        Args:
            hash_stream: False when the caller has checked the document id over
                the whole stream already (:func:`stream_document_id`): the
                stream is then not hashed a second time, and
                :attr:`document_id` stays unknown.

        Raises:
            LocalProtocolError: ``bad-key`` for a key that is not 32 bytes.
        """
        self._key = _checked_key(key)
        self._hash_stream = hash_stream
        self._started = False
        self._document_id: bytes | None = None

    @property
    def document_id(self) -> bytes:
        """SHA-256 over the document-id tag and the whole stream received (spec [ENC-6]).

        Set when the final chunk, the one the input ends with, has been
        authenticated and its plaintext is yielded.

        Raises:
            LocalProtocolError: ``truncated`` before that; ``malformed`` when
                made with ``hash_stream=False``.
        """
        if not self._hash_stream:
            raise LocalProtocolError(Code.MALFORMED, "made with hash_stream=False: the stream is not hashed")
        if self._document_id is None:
            raise LocalProtocolError(Code.TRUNCATED, "the document id is known once the stream is complete")
        return self._document_id

    def decrypt(self, ciphertext: Iterable[BytesLike]) -> Iterator[bytes]:
        """Decrypt ``ciphertext`` lazily.

        Args:
            ciphertext: the stream, as byte strings of any lengths.

        Returns:
            An iterator yielding plaintext pieces (one per chunk; the piece of an
            empty document is ``b""``).  See the class docstring: nothing is
            authentic until the iterator is exhausted.

        Raises:
            LocalProtocolError: ``replay`` when called a second time on the same instance.

        The iterator raises:
            RemoteProtocolError: ``malformed`` when the stream does not start with
                MAGIC; ``truncated`` when it ends inside the header, has no final
                chunk (cut at a chunk boundary) or ends with less than a tag;
                ``extended`` when data follows the final chunk; ``bad-commitment``
                when the header commits to another key; ``too-large`` past 2**56
                chunks; ``malformed`` for an empty final chunk after data, which
                no encryptor produces.
            AuthenticationError: ``decrypt-failed`` when a chunk does not
                authenticate (tampered, reordered, cut inside a chunk).
        """
        if self._started:
            raise LocalProtocolError(Code.REPLAY, "a StreamDecryptor decrypts exactly one stream")
        self._started = True
        return self._decrypt(ciphertext)

    def _decrypt(self, ciphertext: Iterable[BytesLike]) -> Iterator[bytes]:
        key = self._key
        pieces = iter(ciphertext)
        header, rest = _read_header(pieces)
        prefix = _checked_commitment(header, key)
        digest = hashlib.sha256(_DOCUMENT_ID_TAG) if self._hash_stream else None
        if digest is not None:
            digest.update(header)
        for counter, (sealed, last) in enumerate(_rechunk(chain((rest,), pieces), _SEALED_CHUNK_SIZE)):
            plaintext = _open_chunk(sealed, header, prefix, counter, key, last=last)
            if digest is not None:
                digest.update(sealed)
                if last:
                    self._document_id = digest.digest()
            yield plaintext


def decrypt_whole_stream(key: bytes, stream: BytesLike) -> Iterator[bytes]:
    """Decrypt a whole stream held in memory, chunk by chunk, without hashing it.

    The same rules as :meth:`StreamDecryptor.decrypt`, applied in the same
    order by the same helpers, but the chunks are sliced straight out of
    ``stream`` instead of being re-cut from pieces: for a caller that holds
    the stream already and has checked its id (:func:`stream_document_id`).

    Returns:
        An iterator yielding the plaintext of each chunk, as
        :meth:`StreamDecryptor.decrypt` does.

    Raises:
        LocalProtocolError: ``bad-key`` for a key that is not 32 bytes (at once).

    The iterator raises:
        RemoteProtocolError, AuthenticationError: as :meth:`StreamDecryptor.decrypt`.
    """
    key = _checked_key(key)
    if type(stream) is not bytes:
        stream = bytes(stream)
    return _decrypt_whole(key, stream)


def _decrypt_whole(key: bytes, stream: bytes) -> Iterator[bytes]:
    header, _rest = _read_header(iter((stream,)))
    prefix = _checked_commitment(header, key)
    # Read when called, as _decrypt passes it to _rechunk, so that both cut the same chunks.
    sealed_size = _SEALED_CHUNK_SIZE
    end = len(stream)
    start = HEADER_SIZE
    counter = 0
    while True:
        # As _rechunk cuts one buffer: full chunks, the last one is whatever
        # remains (a full chunk when the body is a multiple, empty when there is no body).
        stop = start + sealed_size
        last = stop >= end
        yield _open_chunk(stream[start:stop], header, prefix, counter, key, last=last)
        if last:
            return
        start = stop
        counter += 1


def _checked_commitment(header: bytes, key: bytes) -> bytes:
    """The nonce prefix of a stream header whose commitment names ``key``.

    Raises:
        RemoteProtocolError: ``bad-commitment`` when the header commits to another key.
    """
    prefix = header[len(MAGIC) : len(MAGIC) + PREFIX_SIZE]
    # spec [ENC-2]: refuse a stream committing to another key before decrypting anything.
    if not hmac.compare_digest(header[len(MAGIC) + PREFIX_SIZE :], key_commitment(key, prefix)):
        raise RemoteProtocolError(Code.BAD_COMMITMENT, "the stream is committed to another key")
    return prefix


def _read_header(pieces: Iterator[BytesLike]) -> tuple[bytes, memoryview]:
    """Take the 52-byte header off the front of the stream.

    Returns the header and whatever followed it in the last piece read.

    Raises:
        RemoteProtocolError: ``malformed`` as soon as the bytes seen differ from
            MAGIC, ``truncated`` when the stream ends before the header does.
    """
    magic_size = len(MAGIC)
    head = b""
    for piece in pieces:
        # Joining is bounded: the loop stops once 52 bytes are in.  A large
        # first piece is kept as it is and its tail only viewed, not copied.
        if head:
            head += bytes(piece)
        else:
            head = piece if type(piece) is bytes else bytes(piece)
        seen = min(len(head), magic_size)
        # spec [ENC-1]: the magic carries the format version; anything else is not our stream.
        if head[:seen] != MAGIC[:seen]:
            raise RemoteProtocolError(Code.MALFORMED, "not a fedrecord document stream (bad magic)")
        if len(head) >= HEADER_SIZE:
            return head[:HEADER_SIZE], memoryview(head)[HEADER_SIZE:]
    raise RemoteProtocolError(Code.TRUNCATED, "the stream ends inside its header")


def _open_chunk(
    sealed: bytes, header: bytes, prefix: bytes, counter: int, key: bytes, *, last: bool
) -> bytes:
    """Decrypt chunk number ``counter``, the final one when ``last`` (spec [ENC-3], [ENC-4], [ENC-5]).

    Telling truncation and extension apart from tampering: when the chunk
    fails with the flag its position implies, the other flag is tried.  That
    only costs time on a path that fails anyway, and it names the attack for
    the peer's error report.

    Raises:
        RemoteProtocolError: ``too-large`` past the chunk counter; ``truncated``
            when the last chunk is shorter than a tag (a header with no chunk
            at all included: even an empty document has one) or was sealed as
            a middle chunk; ``extended`` when a middle chunk was sealed as the
            final one; ``malformed`` for an empty final chunk after data.
        AuthenticationError: ``decrypt-failed`` otherwise.
    """
    if counter >= _MAX_CHUNKS:
        raise RemoteProtocolError(Code.TOO_LARGE, "stream exceeds the STREAM chunk counter")
    # spec [ENC-4]: prefix || counter || final flag.
    nonce_stem = prefix + counter.to_bytes(_COUNTER_SIZE, "big")
    if last and len(sealed) < TAG_SIZE:
        raise RemoteProtocolError(Code.TRUNCATED, "the stream ends inside a chunk tag")
    try:
        plaintext: bytes = _decrypt_chunk(sealed, header, nonce_stem + (_LAST if last else _NOT_LAST), key)
    except CryptoError:
        pass
    else:
        if last and not plaintext and counter:
            # spec [ENC-3]: only an empty document has an empty final chunk;
            # refusing the other spelling keeps one stream per plaintext.
            raise RemoteProtocolError(Code.MALFORMED, "empty final chunk after data")
        return plaintext
    try:
        _decrypt_chunk(sealed, header, nonce_stem + (_NOT_LAST if last else _LAST), key)
    except CryptoError:
        raise AuthenticationError(Code.DECRYPT_FAILED) from None
    if last:
        raise RemoteProtocolError(Code.TRUNCATED, "the stream was cut at a chunk boundary")
    raise RemoteProtocolError(Code.EXTENDED, "data follows the final chunk of the stream")


def stream_document_id(stream: bytes) -> bytes:
    """The document id of a whole stream held in memory: SHA-256 of the id tag and its bytes ([ENC-6])."""
    digest = hashlib.sha256(_DOCUMENT_ID_TAG)
    digest.update(stream)  # not the tag + stream concatenated: that copies the stream first
    return digest.digest()


def encrypt_bytes(key: bytes, prefix: bytes, data: bytes) -> tuple[bytes, bytes]:
    """Encrypt a whole document held in memory.

    Returns:
        ``(ciphertext, document_id)``.

    Raises:
        LocalProtocolError: as :class:`StreamEncryptor`.
    """
    encryptor = StreamEncryptor(key, prefix)
    ciphertext = b"".join(encryptor.encrypt((data,)))
    return ciphertext, encryptor.document_id


def decrypt_bytes(key: bytes, ciphertext: bytes) -> tuple[bytes, bytes]:
    """Decrypt a whole stream held in memory.

    Returns:
        ``(plaintext, document_id)``.

    Raises:
        LocalProtocolError, RemoteProtocolError, AuthenticationError: as
            :meth:`StreamDecryptor.decrypt`.
    """
    decryptor = StreamDecryptor(key)
    plaintext = b"".join(decryptor.decrypt((ciphertext,)))
    return plaintext, decryptor.document_id
