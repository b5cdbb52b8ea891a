"""Partial downloads and ranged reads of ciphertext files (storage for spec section 15.15, [API-42], [API-43]).

The storage side of a resumed fetch, without nodes: a download cut short keeps
a prefix of the stream (every byte that arrived), the next attempt re-hashes
that prefix from the disk and appends the rest, and only a stream whose whole
hash is its id reaches its final path; a mismatch or an overlong stream
destroys what was kept.  One download of an id at a time holds the lock; the
start-up sweep leaves partial downloads alone.  Reading a stored document from
an offset still checks the whole file against its id.
"""

from __future__ import annotations

import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fedrecord.core import Code, LocalProtocolError, RemoteProtocolError
from fedrecord.core.stream import CHUNK_SIZE, encrypt_bytes
from fedrecord.storage.documents import CorruptDocumentError, DocumentFiles
from fedrecord.storage.partial import PartialDownloads

KEY = bytes(range(32))
PREFIX = bytes(16)


async def pieces(data: bytes, size: int = 50_000) -> AsyncIterator[bytes]:
    for offset in range(0, len(data), size):
        yield data[offset : offset + size]


async def cut_after(data: bytes, cut: int) -> AsyncIterator[bytes]:
    """The first ``cut`` bytes in small pieces, then a dropped connection."""
    async for piece in pieces(data[:cut], 10_000):
        yield piece
    raise ConnectionResetError("the link went down")


async def kept_after_a_cut(partials: PartialDownloads, doc: bytes, ciphertext: bytes, cut: int) -> None:
    """A download of ``doc`` whose link goes down after ``cut`` bytes, with b"meta" kept beside them."""
    async with partials.begin(doc) as download:
        assert download is not None
        await download.keep(b"meta")
        with pytest.raises(ConnectionResetError):
            await download.finish(cut_after(ciphertext, cut), start=0, max_size=len(ciphertext))


def stores(tmp_path: Path) -> tuple[DocumentFiles, PartialDownloads]:
    files = DocumentFiles(tmp_path / "documents")
    return files, PartialDownloads(files)


def a_document(size: int = 5 * CHUNK_SIZE) -> tuple[bytes, bytes]:
    return encrypt_bytes(KEY, PREFIX, os.urandom(size))


async def test_a_cut_download_keeps_every_byte_that_arrived_and_resumes(tmp_path: Path) -> None:
    ciphertext, doc = a_document()
    files, partials = stores(tmp_path)
    await kept_after_a_cut(partials, doc, ciphertext, 123_456)
    assert await files.size(doc) is None
    [kept] = await partials.kept()
    assert (kept.doc, kept.held, kept.meta) == (doc, 123_456, b"meta")
    # Private like every document file: the bytes, and the key wrap the clinic keeps beside them.
    assert {stat.S_IMODE(path.stat().st_mode) for path in (files.root / "partial").iterdir()} == {0o600}
    async with partials.begin(doc) as download:
        assert download is not None and (download.held, download.meta) == (123_456, b"meta")
        rest = pieces(ciphertext[download.held :])
        assert await download.finish(rest, start=download.held, max_size=len(ciphertext)) == len(ciphertext)
    assert files.path_of(doc).read_bytes() == ciphertext
    assert await partials.kept() == []
    assert not any((files.root / "partial").iterdir())


async def test_resuming_before_the_end_of_what_is_held_cuts_the_rest(tmp_path: Path) -> None:
    ciphertext, doc = a_document()
    files, partials = stores(tmp_path)
    await kept_after_a_cut(partials, doc, ciphertext, 200_000)
    async with partials.begin(doc) as download:
        assert download is not None
        # Bytes held past the resume point are dropped, then the stream goes on from there.
        await download.finish(pieces(ciphertext[150_000:]), start=150_000, max_size=len(ciphertext))
    assert files.path_of(doc).read_bytes() == ciphertext


async def test_changed_bytes_held_are_found_and_destroyed(tmp_path: Path) -> None:
    ciphertext, doc = a_document()
    files, partials = stores(tmp_path)
    await kept_after_a_cut(partials, doc, ciphertext, 100_000)
    part = files.root / "partial" / f"{doc.hex()}.part"
    damaged = bytearray(part.read_bytes())
    damaged[5000] ^= 1
    part.write_bytes(bytes(damaged))
    async with partials.begin(doc) as download:
        assert download is not None
        with pytest.raises(RemoteProtocolError) as refused:
            await download.finish(pieces(ciphertext[100_000:]), start=100_000, max_size=len(ciphertext))
        assert refused.value.code is Code.MALFORMED
        assert (download.held, download.meta) == (0, None)
        # The same lock, from byte 0 again.
        await download.finish(pieces(ciphertext), start=0, max_size=len(ciphertext))
    assert files.path_of(doc).read_bytes() == ciphertext


async def test_an_overlong_stream_is_refused_and_destroyed(tmp_path: Path) -> None:
    ciphertext, doc = a_document()
    files, partials = stores(tmp_path)
    async with partials.begin(doc) as download:
        assert download is not None
        with pytest.raises(RemoteProtocolError) as refused:
            await download.finish(pieces(ciphertext + b"more"), start=0, max_size=len(ciphertext))
        assert refused.value.code is Code.TOO_LARGE
    assert await partials.kept() == [] and await files.size(doc) is None


async def test_resuming_past_what_is_held_is_a_caller_error(tmp_path: Path) -> None:
    ciphertext, doc = a_document()
    _files, partials = stores(tmp_path)
    async with partials.begin(doc) as download:
        assert download is not None
        with pytest.raises(LocalProtocolError):
            await download.finish(pieces(ciphertext[10:]), start=10, max_size=len(ciphertext))


async def test_one_download_of_an_id_at_a_time(tmp_path: Path) -> None:
    _ciphertext, doc = a_document()
    files, partials = stores(tmp_path)
    other = PartialDownloads(files)  # as another process would: its own descriptor
    async with partials.begin(doc) as download, other.begin(doc) as second:
        assert download is not None and second is None
    async with other.begin(doc) as download:
        assert download is not None


async def test_a_stored_document_is_not_downloaded_again(tmp_path: Path) -> None:
    ciphertext, doc = a_document()
    files, partials = stores(tmp_path)
    await files.put(doc, pieces(ciphertext), max_size=len(ciphertext))
    async with partials.begin(doc) as download:
        assert download is not None
        assert await download.finish(cut_after(ciphertext, 0), start=0, max_size=len(ciphertext)) == len(
            ciphertext
        )
    assert await partials.kept() == []


async def test_the_sweep_leaves_partial_downloads_and_destroy_removes_them(tmp_path: Path) -> None:
    ciphertext, doc = a_document()
    files, partials = stores(tmp_path)
    await kept_after_a_cut(partials, doc, ciphertext, 70_000)
    assert await files.sweep_temporary() == 0
    assert [kept.held for kept in await partials.kept()] == [70_000]
    assert await partials.destroy(doc) is True
    assert await partials.kept() == [] and not any((files.root / "partial").iterdir())
    assert await partials.destroy(doc) is False


async def test_an_empty_attempt_leaves_no_file(tmp_path: Path) -> None:
    _ciphertext, doc = a_document()
    files, partials = stores(tmp_path)
    async with partials.begin(doc):
        pass
    assert await partials.kept() == [] and not any((files.root / "partial").iterdir())


async def test_added_stream_is_stored_under_the_id_it_hashes_to(tmp_path: Path) -> None:
    ciphertext, doc = a_document()
    files, _partials = stores(tmp_path)
    assert await files.add(pieces(ciphertext), max_size=len(ciphertext)) == (doc, len(ciphertext))
    assert files.path_of(doc).read_bytes() == ciphertext
    with pytest.raises(RemoteProtocolError):
        await files.add(pieces(ciphertext), max_size=len(ciphertext) - 1)


async def test_reading_from_an_offset_checks_the_whole_file(tmp_path: Path) -> None:
    ciphertext, doc = a_document()
    files, _partials = stores(tmp_path)
    await files.put(doc, pieces(ciphertext), max_size=len(ciphertext))
    for start in (1, CHUNK_SIZE + 16, len(ciphertext) - 1):
        stream = await files.open(doc, start=start)
        assert stream is not None
        assert b"".join([piece async for piece in stream]) == ciphertext[start:]
    path = files.path_of(doc)
    damaged = bytearray(path.read_bytes())
    damaged[3] ^= 1  # before the offset: not sent, still checked
    path.write_bytes(bytes(damaged))
    stream = await files.open(doc, start=CHUNK_SIZE)
    assert stream is not None
    with pytest.raises(CorruptDocumentError):
        [piece async for piece in stream]
    with pytest.raises(LocalProtocolError):
        await files.open(doc, start=-1)
