"""Blocking file steps shared by the ciphertext store, its partial downloads and the key file.

The store and its partial downloads both write a stream while hashing it into
a document id, and both destroy a file by overwriting it before unlinking it;
all three fsync the directories they rename into.  None of it may block the
event loop on the disk: the steps live here once, with the way to run them in
a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import os
from collections.abc import AsyncIterable, Callable
from pathlib import Path
from typing import Any, Final, TypeVar

from fedrecord.core.errors import Code, RemoteProtocolError

# The same tag as fedrecord.core.stream's document id (spec [ENC-6]).
DOCUMENT_ID_TAG: Final = b"fedrecord/v0/document-id"
WRITE_BLOCK: Final = 256 * 1024
"""Incoming bytes are gathered up to this size before one hash-and-write."""
INLINE_WRITES: Final = 1024 * 1024
"""The first bytes of an upload, up to this many, are hashed and written on the event loop; later ones in a thread."""

_ZEROS: Final = bytes(1024 * 1024)
_T = TypeVar("_T")


def document_digest() -> Any:
    """A SHA-256 state fed with the document-id tag: feed it the stream, compare it with the id."""
    return hashlib.sha256(DOCUMENT_ID_TAG)


def check_document_id(digest: Any, doc_id: bytes) -> None:
    """Raises:
    RemoteProtocolError: ``malformed`` when the hashed stream is not the one ``doc_id`` names.
    """
    # spec [ENC-6]: the id is the hash of the whole stream; nothing else may be stored under it.
    if not hmac.compare_digest(digest.digest(), doc_id):
        raise RemoteProtocolError(Code.MALFORMED, "ciphertext does not match its document id")


async def in_thread(function: Callable[..., _T], *args: Any) -> _T:
    """Run a blocking call in a worker thread and, even when cancelled, wait for it to finish.

    A cancelled ``asyncio.to_thread`` returns at once while the thread goes on;
    here the clean-up that follows a cancellation must not close a descriptor
    the thread is still writing to.
    """
    future = asyncio.ensure_future(asyncio.to_thread(function, *args))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        while not future.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait((future,))
        raise


def fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, block: bytes, digest: Any) -> None:
    """Write all of ``block`` (a write may take less), feeding ``digest`` with it unless it is None."""
    if digest is not None:
        digest.update(block)
    view = memoryview(block)
    while view:
        view = view[os.write(fd, view) :]


async def write_hashed(
    fd: int, chunks: AsyncIterable[bytes], digest: Any, *, written: int, max_size: int
) -> int:
    """Append ``chunks`` to ``fd`` while hashing them, in blocks of :data:`WRITE_BLOCK`.

    Args:
        fd: a descriptor open for writing at the end of its ``written`` bytes.
        chunks: the bytes to append.
        digest: the hash state, fed with every byte appended.
        written: bytes already in the file (they count towards ``max_size``).
        max_size: the cap, refused as soon as the bytes pass it.

    Returns:
        The file's size: ``written`` plus the bytes appended.

    Raises:
        RemoteProtocolError: ``too-large`` past ``max_size`` (what was appended stays).
        OSError: the disk failed.
        Exception: what reading ``chunks`` raised; every byte read before it is
            appended first, so that a resumed transfer asks only for the rest.
    """
    size = written
    pending: list[bytes] = []
    pending_size = 0
    iterator = aiter(chunks)
    while True:
        try:
            chunk = await anext(iterator)
        except StopAsyncIteration:
            break
        except BaseException:
            if pending:
                write_all(fd, b"".join(pending), digest)
            raise
        size += len(chunk)
        if size > max_size:
            raise RemoteProtocolError(Code.TOO_LARGE, f"document exceeds the cap of {max_size} bytes")
        if not chunk:
            continue
        pending.append(bytes(chunk))
        pending_size += len(chunk)
        if pending_size >= WRITE_BLOCK:
            block = b"".join(pending)
            pending, pending_size = [], 0
            # Small steps are taken inline (a trip to a worker thread costs about a hundred
            # microseconds, more than a page-cache write of a small document); big ones in a thread.
            if size <= INLINE_WRITES:
                write_all(fd, block, digest)
            else:
                await in_thread(write_all, fd, block, digest)
    if pending:
        write_all(fd, b"".join(pending), digest)
    return size


def overwrite(fd: int) -> None:
    """Overwrite a whole file with zeros and fsync it (before it is unlinked or cut)."""
    remaining, offset = os.fstat(fd).st_size, 0
    while remaining:
        written = os.pwrite(fd, _ZEROS[: min(remaining, len(_ZEROS))], offset)
        remaining -= written
        offset += written
    os.fsync(fd)


def overwrite_and_unlink(path: Path) -> bool:
    """Overwrite a file with zeros, fsync it, unlink it; False when there was none."""
    try:
        fd = os.open(path, os.O_WRONLY)
    except FileNotFoundError:
        return False
    try:
        overwrite(fd)
    finally:
        os.close(fd)
    # Another process finishing the same destruction (a serve and a CLI command) may unlink it first.
    path.unlink(missing_ok=True)
    fsync_directory(path.parent)
    return True
