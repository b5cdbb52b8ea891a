"""``DocumentFiles.put_many``: several small ciphertexts stored at once, each checked against its id (15.21).

A batch fetch brings up to 256 small documents; the clinic keeps them with one
call that checks every ciphertext against its document id ([ENC-6]) before
writing any, and makes them durable with one sync of the file system instead
of two fsyncs each.  These tests prove that what it stores sits at the final
path its id names with exactly the bytes that hash to that id, that a second
call changes nothing, that one ciphertext that does not match its id refuses
the whole call with ``malformed`` and stores nothing of it, and that no
temporary file is left behind -- on success, on refusal, with or without
``syncfs``, and when the disk fails half-way through the renames.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fedrecord.core import Code, LocalProtocolError, RemoteProtocolError
from fedrecord.storage import _files
from fedrecord.storage.documents import DocumentFiles

from .node_helpers import document_id_of


def ciphertexts(count: int, *, size: int = 700) -> list[tuple[bytes, bytes]]:
    """(id, bytes) pairs; put_many only hashes, so any bytes stand for a ciphertext."""
    pairs = []
    for i in range(count):
        data = os.urandom(size + 37 * i)
        pairs.append((document_id_of(data), data))
    return pairs


def stored(files: DocumentFiles) -> tuple[dict[str, bytes], list[str]]:
    """(final files by name, with their bytes; names left in tmp/)."""
    finals, temporary = {}, []
    for path in sorted(files.root.rglob("*")):
        if path.is_file():
            if path.parent.name == "tmp":
                temporary.append(path.name)
            else:
                finals[path.name] = path.read_bytes()
    return finals, temporary


def assert_holds_exactly(files: DocumentFiles, pairs: list[tuple[bytes, bytes]]) -> None:
    """Every file at its final path hashes to its name, and they are ``pairs``; tmp/ is empty."""
    finals, temporary = stored(files)
    assert temporary == [], temporary
    assert finals == {doc.hex(): data for doc, data in pairs}
    for name, data in finals.items():
        assert document_id_of(data).hex() == name
        assert files.path_of(bytes.fromhex(name)).read_bytes() == data


async def read_back(files: DocumentFiles, doc: bytes) -> bytes:
    chunks = await files.open(doc)
    assert chunks is not None
    return b"".join([chunk async for chunk in chunks])


async def test_stores_several_at_their_final_paths(tmp_path: Path) -> None:
    files = DocumentFiles(tmp_path / "documents")
    pairs = ciphertexts(12)
    await files.put_many(pairs)
    assert_holds_exactly(files, pairs)
    for doc, data in pairs:
        # Read back through the store, which hashes the file again on the way out.
        assert await read_back(files, doc) == data
        assert os.stat(files.path_of(doc)).st_mode & 0o777 == 0o600


async def test_second_call_is_idempotent(tmp_path: Path) -> None:
    """The same batch again leaves the files as they were (same inodes); a batch mixing old and new adds the new."""
    files = DocumentFiles(tmp_path / "documents")
    pairs = ciphertexts(5)
    await files.put_many(pairs)
    inodes = {doc: os.stat(files.path_of(doc)).st_ino for doc, _ in pairs}
    await files.put_many(pairs)
    assert_holds_exactly(files, pairs)
    assert {doc: os.stat(files.path_of(doc)).st_ino for doc, _ in pairs} == inodes
    more = ciphertexts(3, size=2000)
    await files.put_many([*pairs[:2], *more])
    assert_holds_exactly(files, [*pairs, *more])
    assert {doc: os.stat(files.path_of(doc)).st_ino for doc, _ in pairs} == inodes


async def test_a_document_named_twice_in_one_batch_is_stored_once(tmp_path: Path) -> None:
    files = DocumentFiles(tmp_path / "documents")
    pairs = ciphertexts(3)
    await files.put_many([*pairs, pairs[1]])
    assert_holds_exactly(files, pairs)


async def test_empty_batch_does_nothing(tmp_path: Path) -> None:
    files = DocumentFiles(tmp_path / "documents")
    await files.put_many([])
    assert stored(files) == ({}, [])


@pytest.mark.parametrize("where", [0, 2, 4], ids=["first", "middle", "last"])
async def test_a_ciphertext_not_matching_its_id_refuses_the_batch(tmp_path: Path, where: int) -> None:
    """One pair whose bytes do not hash to its id: ``malformed``, and nothing of the batch is stored."""
    files = DocumentFiles(tmp_path / "documents")
    earlier = ciphertexts(2, size=300)
    await files.put_many(earlier)
    pairs = ciphertexts(5)
    doc, data = pairs[where]
    tampered = bytearray(data)
    tampered[len(tampered) // 2] ^= 0x01
    pairs[where] = (doc, bytes(tampered))
    with pytest.raises(RemoteProtocolError) as caught:
        await files.put_many(pairs)
    assert caught.value.code is Code.MALFORMED
    assert_holds_exactly(files, earlier)
    # Another document's genuine bytes under this id: refused the same way.
    pairs[where] = (doc, earlier[0][1])
    with pytest.raises(RemoteProtocolError) as caught:
        await files.put_many(pairs)
    assert caught.value.code is Code.MALFORMED
    assert_holds_exactly(files, earlier)


@pytest.mark.parametrize("bad_id", [b"", bytes(31), bytes(33)], ids=["empty", "31-bytes", "33-bytes"])
async def test_an_id_that_is_not_32_bytes_is_malformed(tmp_path: Path, bad_id: bytes) -> None:
    files = DocumentFiles(tmp_path / "documents")
    pairs = [*ciphertexts(2), (bad_id, b"whatever")]
    with pytest.raises(LocalProtocolError) as caught:
        await files.put_many(pairs)
    assert caught.value.code is Code.MALFORMED
    assert stored(files)[0] == {}


async def test_without_syncfs_every_file_is_fsynced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where syncfs is missing (not Linux), each file and each directory gets its own fsync: same result."""
    monkeypatch.setattr(_files, "_SYNCFS", None)
    synced: list[int] = []
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(_files.os, "fsync", counting_fsync)
    files = DocumentFiles(tmp_path / "documents")
    pairs = ciphertexts(4)
    await files.put_many(pairs)
    assert_holds_exactly(files, pairs)
    shards = {doc.hex()[:2] for doc, _ in pairs}
    # One per file, one per shard directory written to, and the root for the shards it created.
    assert len(synced) == len(pairs) + len(shards) + 1


async def test_a_disk_failure_while_renaming_leaves_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The third rename fails: the two renamed stay (each matches its id), the rest are removed from tmp/."""
    files = DocumentFiles(tmp_path / "documents")
    pairs = ciphertexts(5)
    real_replace = os.replace
    renames = 0

    def failing_replace(source: object, target: object) -> None:
        nonlocal renames
        renames += 1
        if renames == 3:
            raise OSError(28, "No space left on device")
        real_replace(source, target)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError):
        await files.put_many(pairs)
    monkeypatch.setattr(os, "replace", real_replace)
    finals, temporary = stored(files)
    assert temporary == []
    assert len(finals) == 2
    for name, data in finals.items():
        assert document_id_of(data).hex() == name
    # The next attempt completes the batch.
    await files.put_many(pairs)
    assert_holds_exactly(files, pairs)


async def test_sweep_finds_nothing_after_put_many(tmp_path: Path) -> None:
    files = DocumentFiles(tmp_path / "documents")
    await files.put_many(ciphertexts(6))
    assert await files.sweep_temporary() == 0
