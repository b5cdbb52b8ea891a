"""Ciphertext files at rest, streamed in and out with their document id checked.

Theory of operation.  A document is stored as its STREAM ciphertext, exactly
the bytes whose SHA-256 (over the domain tag ``fedrecord/v0/document-id`` and
the bytes, as :mod:`fedrecord.core.stream` computes it) is its id, at
``<root>/<first 2 hex digits>/<64 hex digits>``.  Every node keeps documents
only in this encrypted form (brief section 4).  Small ones (up to
``fedrecord.node.home.INLINE_STREAM_MAX``) a node keeps in their database row
instead, where they ride the transaction that stores the row; this module
holds the others.

:meth:`DocumentFiles.put` writes the incoming chunks to a private temporary
file under ``<root>/tmp`` while hashing them, refuses the upload as soon as it
exceeds its cap, and compares the hash with the id only once the stream ends.
Only a file whose bytes match its id is fsynced and renamed into place, then
the directory is fsynced: after ``put`` returns, the file survives a crash,
and a file at a final path always matches its name.  Every failure (cap,
mismatch, cancellation, I/O error) removes the temporary file; what a crash
leaves in ``tmp`` is removed by :meth:`DocumentFiles.sweep_temporary` at start.
A crash after the rename and before the transaction that stores the row
naming the file leaves a file nothing names (its key died with the row): a
node destroys such files at start once they are an hour old
(``NodeHome.sweep_orphans``, through :meth:`DocumentFiles.stored_before` and
:meth:`DocumentFiles.destroy_if_before`).
Every upload holds a shared ``flock`` on ``tmp`` from its temporary file's
creation to its rename, and the sweep needs it exclusive (else it skips), so
a command opening a home never removes the file of an upload in flight in the
node serving it; the kernel drops the lock of a killed process.

Memory stays flat: incoming chunks are gathered into blocks of at most
:data:`WRITE_BLOCK` bytes, which are hashed and written in a worker thread
(``hashlib`` releases the GIL), so the event loop never waits on the disk.
Reading yields 64 KiB + 16 (one sealed STREAM chunk) at a time and checks the
hash again; the last piece is held back until the hash has matched, so a
corrupted file is never served as a complete stream.

Commits and destruction of one id are serialised within the process, so a
``destroy`` racing a ``put`` of the same id ends with the file either present
or absent, never half-overwritten.

A stored document can be read from an offset (the rest of a stream a peer
holds the beginning of, [API-40]): the bytes before it are read and hashed
too, so the check above holds for every read.  Downloads that may be cut and
resumed are written by :mod:`fedrecord.storage.partial`, which commits them
here with :meth:`DocumentFiles.adopt`.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hmac
import os
import secrets
from collections.abc import AsyncIterable, AsyncIterator, Iterator
from pathlib import Path
from typing import Any, BinaryIO, Final

from fedrecord.core.errors import Code, LocalProtocolError
from fedrecord.core.stream import CHUNK_SIZE, TAG_SIZE
from fedrecord.keyed_locks import KeyedLocks

from ._files import (
    WRITE_BLOCK,
    check_document_id,
    document_digest,
    fsync_directory,
    in_thread,
    overwrite_and_unlink,
    write_hashed,
)

__all__ = [
    "DOCUMENT_ID_SIZE",
    "READ_CHUNK",
    "WRITE_BLOCK",
    "CorruptDocumentError",
    "DocumentFiles",
]

DOCUMENT_ID_SIZE: Final = 32
READ_CHUNK: Final = CHUNK_SIZE + TAG_SIZE
"""Size of the pieces :meth:`DocumentFiles.open` yields: one sealed STREAM chunk."""
_SKIPPED_BLOCK: Final = 1024 * 1024
"""Bytes before the start of a ranged read are hashed in blocks of this size, not sent."""

_TEMPORARY: Final = "tmp"
_HEX_DIGITS: Final = "0123456789abcdef"


class CorruptDocumentError(Exception):
    """A stored file no longer matches its document id (disk corruption or tampering at rest)."""


def _hex(doc_id: bytes) -> str:
    if not isinstance(doc_id, bytes) or len(doc_id) != DOCUMENT_ID_SIZE:
        raise LocalProtocolError(Code.MALFORMED, "a document id is 32 bytes")
    return doc_id.hex()


def _check_cap(max_size: int) -> None:
    if max_size < 0:
        raise LocalProtocolError(Code.TOO_LARGE, "max_size must not be negative")


def _sync_and_close(fd: int) -> None:
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _discard(fd: int, temporary: Path) -> None:
    if fd >= 0:
        with contextlib.suppress(OSError):
            os.close(fd)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temporary)


INLINE_READ_MAX: Final = 256 * 1024
"""The first bytes of a stream read on the event loop's thread; the rest is read in a worker thread.

Reading and hashing a piece from the page cache takes tens of microseconds, the
trip to a worker thread about a hundred: a small document is read inline.
"""


def _open_for_reading(path: Path) -> BinaryIO:
    return open(path, "rb", buffering=0)  # closed by the reading generator


class DocumentFiles:
    """The ciphertext files of one node, under ``root``.

    The directories are created (mode 0700) on first use.  Call
    :meth:`sweep_temporary` at start, before serving.
    """

    def __init__(self, root: Path) -> None:
        self._root = Path(root)
        self._root_text = os.fspath(self._root)
        self._tmp = self._root / _TEMPORARY
        self._locks: KeyedLocks[bytes] = KeyedLocks()

    @property
    def root(self) -> Path:
        return self._root

    def path_of(self, doc_id: bytes) -> Path:
        """Where the document's ciphertext lives (whether or not it exists).

        Raises:
            LocalProtocolError: ``malformed`` when ``doc_id`` is not 32 bytes.
        """
        return Path(self._path_text(doc_id))

    def _path_text(self, doc_id: bytes) -> str:
        # A string, not a Path: the stat of every small deposit and fetch goes through here, and
        # joining Path objects costs several times the stat itself.
        name = _hex(doc_id)
        return f"{self._root_text}/{name[:2]}/{name}"

    def _locked(self, doc_id: bytes) -> contextlib.AbstractAsyncContextManager[None]:
        return self._locks.hold(doc_id)

    async def put(self, doc_id: bytes, chunks: AsyncIterable[bytes], *, max_size: int) -> int:
        """Store a ciphertext streamed in ``chunks``, checking it against ``doc_id``.

        Idempotent: when the document is already stored, returns its size
        without reading ``chunks`` (the stored file was checked when written).

        Args:
            doc_id: the 32-byte document id the ciphertext must hash to.
            chunks: the ciphertext, in pieces of any size (the caller keeps
                them small, at most 1 MiB, for flat memory).
            max_size: the cap in bytes; the upload is refused as soon as it is
                exceeded, without reading further.

        Returns:
            The size of the stored ciphertext, in bytes.

        Raises:
            LocalProtocolError: ``malformed`` for a ``doc_id`` that is not 32 bytes,
                ``too-large`` for a negative ``max_size``.
            RemoteProtocolError: ``too-large`` past ``max_size``; ``malformed``
                when the bytes do not hash to ``doc_id``.  Nothing is stored then.
            OSError: the disk failed; nothing is stored either.
        """
        final = self.path_of(doc_id)
        _check_cap(max_size)
        # A stat is cheaper inline than a trip to a worker thread (about a hundred microseconds).
        with contextlib.suppress(FileNotFoundError):
            return os.stat(final).st_size
        _doc, size = await self._store(chunks, max_size=max_size, expected=doc_id)
        return size

    async def add(self, chunks: AsyncIterable[bytes], *, max_size: int) -> tuple[bytes, int]:
        """Store a ciphertext under the id its bytes hash to: a document this node has just encrypted.

        The id of a document is known only once its whole stream is
        written; this stores a stream of any size without holding it, where
        :meth:`put` needs the id first.

        Returns:
            The document id and the size of the stored ciphertext.

        Raises:
            LocalProtocolError: ``too-large`` for a negative ``max_size``.
            RemoteProtocolError: ``too-large`` past ``max_size``; nothing is stored then.
            OSError: the disk failed; nothing is stored either.
        """
        return await self._store(chunks, max_size=max_size, expected=None)

    async def _store(
        self, chunks: AsyncIterable[bytes], *, max_size: int, expected: bytes | None
    ) -> tuple[bytes, int]:
        _check_cap(max_size)
        name = self.path_of(expected).name if expected is not None else "new"
        temporary, fd, writing = await in_thread(self._create_temporary, name)
        try:
            digest = document_digest()
            size = await write_hashed(fd, chunks, digest, written=0, max_size=max_size)
            if expected is not None:
                check_document_id(digest, expected)
            # Forget the descriptor first: it is closed even when fsync fails.
            closing, fd = fd, -1
            doc_id = digest.digest()
            await self.adopt(doc_id, closing, temporary)
        except BaseException:
            await in_thread(_discard, fd, temporary)
            raise
        finally:
            os.close(writing)  # from now on a sweep may clean tmp again
        return doc_id, size

    async def adopt(self, doc_id: bytes, fd: int, path: Path) -> None:
        """Commit a checked ciphertext written elsewhere: fsync and close ``fd``, rename ``path`` into place.

        The caller has hashed every byte of the file into ``doc_id``; ``fd`` is
        closed whatever happens.  When the document is stored already, ``path``
        is removed instead (a file at a final path always matches its name).

        Raises:
            LocalProtocolError: ``malformed`` for a ``doc_id`` that is not 32 bytes.
            OSError: the disk failed, or ``path`` is gone (destroyed meanwhile):
                nothing is committed.
        """
        final = self.path_of(doc_id)
        async with self._locked(doc_id):
            await in_thread(self._sync_and_commit, fd, path, final)

    def _sync_and_commit(self, fd: int, temporary: Path, final: Path) -> None:
        _sync_and_close(fd)
        self._commit(temporary, final)

    def _create_temporary(self, name: str) -> tuple[Path, int, int]:
        self._tmp.mkdir(mode=0o700, parents=True, exist_ok=True)
        writing = os.open(self._tmp, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            fcntl.flock(writing, fcntl.LOCK_SH)
            temporary = self._tmp / f"{name}.{secrets.token_hex(8)}.part"
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except BaseException:
            os.close(writing)
            raise
        return temporary, fd, writing

    def _commit(self, temporary: Path, final: Path) -> None:
        if final.exists():
            # A concurrent put of the same id won; a file at a final path always matches its name.
            os.unlink(temporary)
            return
        shard = final.parent
        if not shard.is_dir():
            shard.mkdir(mode=0o700, parents=True, exist_ok=True)
            fsync_directory(self._root)
        os.replace(temporary, final)
        fsync_directory(shard)

    async def open(
        self, doc_id: bytes, *, verify: bool = True, start: int = 0
    ) -> AsyncIterator[bytes] | None:
        """The stored ciphertext as an async iterator of pieces of 64 KiB + 16, or None if absent.

        The file is opened now, so the iterator reads it even if it is
        destroyed meanwhile (it then reads the zeros ``destroy`` wrote, which
        fail the check).  Close the iterator (``aclose``) when stopping early.

        Args:
            doc_id: the document id.
            verify: hash the bytes while reading and hold back the last piece
                until the hash matches ``doc_id``.
            start: yield the bytes from this offset on (the rest of a stream
                whose beginning the reader holds already).  With ``verify``
                the bytes before it are read and hashed too, not yielded.

        Raises:
            LocalProtocolError: ``malformed`` for a ``doc_id`` that is not 32
                bytes or a negative ``start``.

        The iterator raises:
            CorruptDocumentError: the file no longer matches its id (with ``verify``).
        """
        path = self.path_of(doc_id)
        if start < 0:
            raise LocalProtocolError(Code.MALFORMED, "a stream is read from a non-negative offset")
        try:
            # Opening and the first pieces are done inline: they take microseconds when the file is in the
            # page cache, whereas a trip to a worker thread costs about a hundred.  Pieces past
            # INLINE_READ_MAX are read in a worker thread.
            file = _open_for_reading(path)
        except FileNotFoundError:
            return None
        return self._read(file, doc_id, verify, start)

    @staticmethod
    async def _read(file: BinaryIO, doc_id: bytes, verify: bool, start: int) -> AsyncIterator[bytes]:
        try:
            digest = document_digest() if verify else None
            if start:
                await asyncio.to_thread(_skip, file, start, digest)
            held: bytes | None = None
            piece = _read_piece(file, digest)
            read = len(piece)
            while piece:
                if held is not None:
                    yield held
                held = piece
                if len(piece) < READ_CHUNK:
                    break  # a short piece is the last one
                if read < INLINE_READ_MAX:
                    piece = _read_piece(file, digest)
                else:
                    piece = await asyncio.to_thread(_read_piece, file, digest)
                read += len(piece)
            if digest is not None and not hmac.compare_digest(digest.digest(), doc_id):
                raise CorruptDocumentError(f"stored document {doc_id.hex()} does not match its id")
            # An empty file is never a valid STREAM; yield nothing for it.
            if held is not None:
                yield held
        finally:
            file.close()

    async def size(self, doc_id: bytes) -> int | None:
        """The stored ciphertext's size in bytes, or None if absent.

        Raises:
            LocalProtocolError: ``malformed`` for a ``doc_id`` that is not 32 bytes.
        """
        path = self._path_text(doc_id)
        try:
            # Inline: a stat of a local file takes microseconds, a trip to a worker thread far more.
            info = os.stat(path)
        except FileNotFoundError:
            return None
        return info.st_size

    async def destroy(self, doc_id: bytes) -> bool:
        """Overwrite the ciphertext with zeros, fsync, and unlink it.

        Documents are encrypted already, so destroying the key destroys the
        document; overwriting is belt and braces against the ciphertext
        outliving a later key compromise.  (Copy-on-write file systems and SSD
        wear levelling may keep old blocks; that is why the key matters most.)

        Returns:
            True when a file was destroyed, False when there was none.

        Raises:
            LocalProtocolError: ``malformed`` for a ``doc_id`` that is not 32 bytes.
            OSError: the disk failed.
        """
        path = self.path_of(doc_id)
        async with self._locked(doc_id):
            return await asyncio.to_thread(overwrite_and_unlink, path)

    async def sweep_temporary(self) -> int:
        """Remove what interrupted uploads left in ``<root>/tmp``; call it before serving.

        Returns:
            How many files were removed.
        """
        return await asyncio.to_thread(self._sweep)

    async def stored_before(self, moment: float) -> list[bytes]:
        """The ids of the stored files last written before ``moment`` (seconds since the epoch)."""
        return await asyncio.to_thread(self._stored_before, moment)

    def _stored_before(self, moment: float) -> list[bytes]:
        found: list[bytes] = []
        try:
            shards = os.scandir(self._root)
        except FileNotFoundError:
            return found
        with shards:
            for shard in shards:
                if len(shard.name) != 2 or not shard.is_dir(follow_symlinks=False):
                    continue  # tmp, partial downloads and anything else that is not a stored file
                with os.scandir(shard.path) as entries:
                    for entry in entries:
                        name = entry.name
                        if (
                            len(name) == 2 * DOCUMENT_ID_SIZE
                            and name.startswith(shard.name)
                            and not name.strip(_HEX_DIGITS)
                            and entry.is_file(follow_symlinks=False)
                            and entry.stat(follow_symlinks=False).st_mtime < moment
                        ):
                            found.append(bytes.fromhex(name))
        return found

    async def destroy_if_before(self, doc_id: bytes, moment: float) -> bool:
        """Destroy a stored file as :meth:`destroy` does, only if it was last written before ``moment``.

        For debris no row names: checked again under this id's lock, and
        while no upload of this or another process is between its temporary
        file and its rename (the exclusive lock on ``tmp`` of
        :meth:`sweep_temporary`), so a file written again meanwhile -- the
        same document deposited once more -- is kept.  Uploads starting
        meanwhile wait for the overwrite of this one file.

        Returns:
            Whether a file was destroyed (False also when an upload was in flight).

        Raises:
            LocalProtocolError: ``malformed`` for a ``doc_id`` that is not 32 bytes.
            OSError: the disk failed.
        """
        path = self.path_of(doc_id)
        async with self._locked(doc_id):
            return await asyncio.to_thread(self._destroy_if_before, path, moment)

    def _destroy_if_before(self, path: Path, moment: float) -> bool:
        with self._no_upload_in_flight() as free:
            if not free:
                return False
            try:
                if os.stat(path).st_mtime >= moment:
                    return False
            except FileNotFoundError:
                return False
            return overwrite_and_unlink(path)

    def _sweep(self) -> int:
        self._root.mkdir(mode=0o700, parents=True, exist_ok=True)
        with self._no_upload_in_flight() as free:
            if not free:
                return 0  # an upload is in flight, here or in another process: its file is no debris
            removed = 0
            for entry in os.scandir(self._tmp):
                if not entry.is_dir(follow_symlinks=False):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)
                        removed += 1
            return removed

    @contextlib.contextmanager
    def _no_upload_in_flight(self) -> Iterator[bool]:
        """Hold ``tmp`` exclusive for the block if no upload (of any process) holds it; yields whether held.

        Every upload holds it shared from its temporary file's creation to its rename.
        """
        self._tmp.mkdir(mode=0o700, parents=True, exist_ok=True)
        guard = os.open(self._tmp, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            try:
                fcntl.flock(guard, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(guard)


def _skip(file: BinaryIO, start: int, digest: Any) -> None:
    """Move past the first ``start`` bytes, hashing them when there is a digest to feed."""
    if digest is None:
        file.seek(start)
        return
    left = start
    while left:
        block = file.read(min(left, _SKIPPED_BLOCK))
        if not block:
            return  # a short file: the digest will not match
        digest.update(block)
        left -= len(block)


def _read_piece(file: BinaryIO, digest: Any) -> bytes:
    # A raw (unbuffered) read may return less than asked: fill the piece.
    parts: list[bytes] = []
    missing = READ_CHUNK
    while missing:
        part = file.read(missing)
        if not part:
            break
        parts.append(part)
        missing -= len(part)
    piece = b"".join(parts)
    if digest is not None:
        digest.update(piece)
    return piece
