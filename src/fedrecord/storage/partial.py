"""Downloads that survive an interruption: what a cut transfer received, kept to be finished later.

Theory of operation.  A download of document ``<id>`` is written to
``<root>/partial/<hex>.part``, with ``<hex>.meta`` beside it: bytes the caller
keeps with the download (the clinic keeps the patient, the stream's length
and the key wrap the bytes came with; this module never reads them).  The
``.part`` file only ever holds the stream as received from its first byte, so
what a cut connection or a killed process leaves is a prefix of the stream,
at worst ending in a torn write.

While a download runs it holds an exclusive ``flock`` on its ``.part`` file:
one download of an id at a time, across processes.
:meth:`PartialDownloads.begin` yields None when another download holds it
(the caller then downloads without resuming); the kernel drops the lock of a
killed process, so the next download resumes.

Finishing from offset N (:meth:`PartialDownload.finish`): the first N bytes
are read back from the disk and hashed -- a hash from an earlier run is never
trusted --, the file is cut to N bytes, the rest of the stream is appended
while hashed, and only a file whose whole hash is the document id is fsynced
and renamed to its final place (:meth:`DocumentFiles.adopt`).  A mismatch or
an overlong stream destroys the kept bytes: they were not the stream, and the
caller starts again from byte 0.

Nothing here is swept at start (:meth:`DocumentFiles.sweep_temporary` only
cleans ``tmp``): a partial download stays until it is finished, discarded, or
destroyed with the grant or the document it was received under (the clinic
does that when it polls the patient's state).  Destroying one overwrites its
bytes with zeros first, as for a stored document.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from fedrecord.core.errors import Code, LocalProtocolError, RemoteProtocolError

from ._files import (
    check_document_id,
    document_digest,
    in_thread,
    overwrite,
    overwrite_and_unlink,
    write_all,
    write_hashed,
)
from .documents import DOCUMENT_ID_SIZE, DocumentFiles

__all__ = ["KeptDownload", "PartialDownload", "PartialDownloads"]

_PARTIAL: Final = "partial"
_PART: Final = ".part"
_META: Final = ".meta"
_REHASH_BLOCK: Final = 1024 * 1024


@dataclass(frozen=True)
class KeptDownload:
    """A partial download on disk: its document id, its size and what its caller kept with it."""

    doc: bytes
    held: int
    meta: bytes | None


class PartialDownload:
    """One download of a document, holding its lock; see the module's theory of operation.

    Attributes:
        doc_id: the document id its bytes must hash to.
        held: bytes kept from earlier attempts (a prefix of the stream, unchecked).
        meta: what the caller kept with those bytes, or None.
    """

    def __init__(
        self, files: DocumentFiles, doc_id: bytes, part: Path, fd: int, held: int, meta: bytes | None
    ):
        self.doc_id = doc_id
        self.held = held
        self.meta = meta
        self._files = files
        self._part = part
        self._meta = part.with_suffix(_META)
        self._fd = fd

    async def keep(self, meta: bytes) -> None:
        """Keep ``meta`` with the download (replacing what was kept), before its bytes are written.

        Raises:
            OSError: the disk failed.
        """
        await in_thread(_replace_file, self._meta, meta)
        self.meta = meta

    async def finish(self, chunks: AsyncIterable[bytes], *, start: int, max_size: int) -> int:
        """Append the stream from byte ``start`` on to the kept bytes, check it whole, and commit it.

        Idempotent as :meth:`DocumentFiles.put`: when the document is stored
        already, its size is returned and ``chunks`` are not read.

        Args:
            chunks: the stream from byte ``start`` to its end.
            start: where ``chunks`` begin, at most :attr:`held`; kept bytes past
                it are cut off.
            max_size: the length of the whole stream may not pass this.

        Returns:
            The size of the stored ciphertext.

        Raises:
            LocalProtocolError: ``malformed`` for a ``start`` past the bytes held;
                ``not-found`` when :meth:`PartialDownloads.destroy` removed the
                download while it ran (nothing is committed).
            RemoteProtocolError: ``too-large`` past ``max_size``; ``malformed``
                when the whole stream does not hash to the document id.  The
                kept bytes are destroyed then: start again from byte 0.
            Exception: whatever reading ``chunks`` raised (a cut connection):
                the bytes received so far are kept for the next attempt.
        """
        if not 0 <= start <= self.held:
            raise LocalProtocolError(Code.MALFORMED, f"cannot resume at {start} with {self.held} bytes held")
        stored = await self._files.size(self.doc_id)
        if stored is not None:
            await self.discard()
            return stored
        digest = document_digest()
        await in_thread(_rehash_and_cut, self._fd, start, digest)
        self.held = start
        try:
            size = await write_hashed(self._fd, chunks, digest, written=start, max_size=max_size)
            check_document_id(digest, self.doc_id)
        except RemoteProtocolError:
            await self.discard()
            raise
        finally:
            self.held = os.fstat(self._fd).st_size if self._fd >= 0 else 0
        # adopt closes the descriptor, and so drops the lock, once the file has its final name.
        closing, self._fd = self._fd, -1
        try:
            await self._files.adopt(self.doc_id, closing, self._part)
        except FileNotFoundError:
            raise LocalProtocolError(
                Code.NOT_FOUND, "the partial download was destroyed while it ran (revoked or deleted)"
            ) from None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._meta)
        return size

    async def discard(self) -> None:
        """Destroy the kept bytes (overwritten with zeros) and what was kept with them; keep the lock.

        Raises:
            OSError: the disk failed.
        """
        if self._fd >= 0:
            await in_thread(_wipe, self._fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._meta)
        self.held, self.meta = 0, None

    def _close(self) -> None:
        if self._fd < 0:
            return
        try:
            if os.fstat(self._fd).st_size == 0:
                # Nothing to resume: leave no empty file behind (the lock is still ours).
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._part)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._meta)
        finally:
            os.close(self._fd)
            self._fd = -1


class PartialDownloads:
    """The partial downloads of one node, under ``<documents root>/partial``."""

    def __init__(self, files: DocumentFiles) -> None:
        self._files = files
        self._root = files.root / _PARTIAL

    def _part_of(self, doc_id: bytes) -> Path:
        return self._root / (self._files.path_of(doc_id).name + _PART)

    @contextlib.asynccontextmanager
    async def begin(self, doc_id: bytes) -> AsyncIterator[PartialDownload | None]:
        """Take the download of ``doc_id``, with what earlier attempts kept, for the ``async with`` block.

        Yields:
            The download, or None when another one of the same document holds it.

        Raises:
            LocalProtocolError: ``malformed`` for a ``doc_id`` that is not 32 bytes.
            OSError: the disk failed.
        """
        part = self._part_of(doc_id)
        opened = await in_thread(_open_locked, part)
        if opened is None:
            yield None
            return
        fd, held, meta = opened
        download = PartialDownload(self._files, doc_id, part, fd, held, meta)
        try:
            yield download
        finally:
            download._close()

    async def kept(self) -> list[KeptDownload]:
        """Every partial download on disk, finished or not, in flight or not."""
        return await in_thread(self._list)

    def _list(self) -> list[KeptDownload]:
        found = []
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self._root):
                name = entry.name
                if not name.endswith(_PART):
                    continue
                try:
                    doc = bytes.fromhex(name[: -len(_PART)])
                    held = entry.stat().st_size
                except (ValueError, FileNotFoundError):
                    continue
                if len(doc) == DOCUMENT_ID_SIZE:
                    found.append(KeptDownload(doc, held, _read_file(Path(entry.path).with_suffix(_META))))
        return found

    async def destroy(self, doc_id: bytes) -> bool:
        """Destroy a partial download (its bytes overwritten with zeros), in flight or not.

        A download in flight then fails when it commits: its file is gone.

        Returns:
            True when there was one.

        Raises:
            LocalProtocolError: ``malformed`` for a ``doc_id`` that is not 32 bytes.
            OSError: the disk failed.
        """
        part = self._part_of(doc_id)
        with contextlib.suppress(FileNotFoundError):
            await in_thread(os.unlink, part.with_suffix(_META))
        return await in_thread(overwrite_and_unlink, part)


def _open_locked(part: Path) -> tuple[int, int, bytes | None] | None:
    part.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(part, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd, os.fstat(fd).st_size, _read_file(part.with_suffix(_META))


def _read_file(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _replace_file(path: Path, data: bytes) -> None:
    # A kill mid-write leaves the old content or the new, never half of one.
    fresh = path.with_suffix(path.suffix + ".new")
    fd = os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        write_all(fd, data, None)
    finally:
        os.close(fd)
    os.replace(fresh, path)


def _rehash_and_cut(fd: int, start: int, digest: Any) -> None:
    offset = 0
    while offset < start:
        block = os.pread(fd, min(_REHASH_BLOCK, start - offset), offset)
        if not block:
            raise LocalProtocolError(Code.MALFORMED, "the kept bytes are shorter than the resume point")
        digest.update(block)
        offset += len(block)
    os.ftruncate(fd, start)
    os.lseek(fd, start, os.SEEK_SET)


def _wipe(fd: int) -> None:
    overwrite(fd)
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
