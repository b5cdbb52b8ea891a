"""Document files that no row names: what a crash between a file and its row leaves, swept at start.

A document file is renamed into place before the transaction that stores the
row naming it, so a node killed in between (tests/test_crash_safety.py kills
them there) keeps a file whose key is gone with the uncommitted row.  At start
``fedrecord serve`` destroys such files once they are older than
``ORPHAN_AGE`` (``NodeHome.sweep_orphans``); a file a row names, a file written
lately, and a file whose upload is in flight in any process are kept.

A real clinic node: its authored documents are files with their rows.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from fedrecord.core.lifecycle import DocumentState
from fedrecord.node.home import ORPHAN_AGE, NodeHome
from fedrecord.node.runner import sweep_orphans

from .node_helpers import ServedNode, now, snapshot

HOUR = 3600


@pytest_asyncio.fixture
async def lab(tmp_path: Path) -> AsyncIterator[ServedNode]:
    async with ServedNode.running(tmp_path / "lab", role="clinic", name="Laboratoire Pasteur") as node:
        yield node


async def orphan(home: NodeHome, content: bytes, *, age: float) -> bytes:
    """A file stored as a write interrupted before its row leaves it, last written ``age`` seconds ago."""

    async def chunks() -> AsyncIterator[bytes]:
        yield content

    doc, _size = await home.files.add(chunks(), max_size=1 << 20)
    aged(home, doc, age)
    return doc


def aged(home: NodeHome, doc: bytes, age: float) -> None:
    moment = time.time() - age
    os.utime(home.files.path_of(doc), (moment, moment))


async def authored(lab: ServedNode, content: bytes) -> bytes:
    """A document the lab wrote for a patient: its file and its row (the patient need not exist)."""
    home = lab.h
    # ClinicNode.deposit needs a connected patient; the file and the row are what matter here.
    doc = await orphan(home, content, age=0)
    async with home.store.transaction():
        await home.store.insert_document(
            doc=doc,
            patient="did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK",
            author=home.did,
            deposit=os.urandom(32),
            title="Complete blood count",
            doc_type="lab-result",
            category="lab",
            labels="[]",
            date=now(),
            added=now(),
            size=len(content),
            sealed_key=os.urandom(73),
            state=DocumentState.AUTHORED,
        )
    return doc


async def test_only_old_files_that_no_row_names_are_destroyed(lab: ServedNode) -> None:
    home = lab.h
    named = await authored(lab, b"kept: its row names it" * 100)
    aged(home, named, 2 * HOUR)
    old = await orphan(home, b"debris of a deposit never acknowledged" * 100, age=2 * HOUR)
    recent = await orphan(home, b"a write whose row is about to commit" * 100, age=ORPHAN_AGE - 60)
    before = await snapshot(lab)

    assert await home.sweep_orphans() == 1

    assert not home.files.path_of(old).exists()
    assert home.files.path_of(named).exists() and home.files.path_of(recent).exists()
    assert await home.store.document_state(named) == "authored"
    after = await snapshot(lab)
    assert after.digest == before.digest, "the database is not touched"
    assert before.files == sorted([*after.files, f"{old.hex()[:2]}/{old.hex()}"])
    assert await home.sweep_orphans() == 0, "nothing more to sweep"


async def test_a_file_written_again_after_it_was_listed_is_kept(lab: ServedNode) -> None:
    """The same document stored once more between the listing and the destruction (a new deposit)."""
    home = lab.h
    doc = await orphan(home, b"deposited again after a crash" * 100, age=2 * HOUR)
    moment = time.time() - ORPHAN_AGE
    assert await home.files.stored_before(moment) == [doc]
    aged(home, doc, 0)
    assert not await home.files.destroy_if_before(doc, moment)
    assert home.files.path_of(doc).exists()


async def test_an_upload_in_flight_in_another_process_keeps_the_sweep_off(lab: ServedNode) -> None:
    """An upload holds a shared lock on documents/tmp from its temporary file to its rename."""
    home = lab.h
    doc = await orphan(home, b"old debris" * 100, age=2 * HOUR)
    guard = os.open(home.files.root / "tmp", os.O_RDONLY)
    try:
        fcntl.flock(guard, fcntl.LOCK_SH)
        assert await home.sweep_orphans() == 0
        assert home.files.path_of(doc).exists()
    finally:
        os.close(guard)
    assert await home.sweep_orphans() == 1
    assert not home.files.path_of(doc).exists()


async def test_the_listing_skips_what_is_not_a_stored_file(lab: ServedNode) -> None:
    home = lab.h
    root = home.files.root
    doc = await orphan(home, b"the one stored file" * 10, age=2 * HOUR)
    strays = [root / "tmp" / ("ab" * 32), root / "zz" / ("zz" * 32), root / doc.hex()[:2] / "notes.txt"]
    for stray in strays:
        stray.parent.mkdir(exist_ok=True)
        stray.write_bytes(b"not a document")
        os.utime(stray, (0, 0))
    (root / "cd" / ("cd" * 32)).mkdir(parents=True)  # a directory named like a file
    assert await home.files.stored_before(time.time()) == [doc]
    assert await home.sweep_orphans() == 1
    assert all(stray.exists() for stray in strays)


async def test_serve_sweeps_at_start_and_logs_a_failure_without_stopping(
    lab: ServedNode, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = lab.h
    doc = await orphan(home, b"left by a killed node" * 100, age=2 * HOUR)
    with caplog.at_level(logging.INFO, logger="fedrecord.node"):
        await sweep_orphans(home)
    assert not home.files.path_of(doc).exists()
    assert "destroyed 1 document file(s) that no row names" in caplog.text

    async def failing(**_: object) -> int:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(home, "sweep_orphans", failing)
    with caplog.at_level(logging.WARNING, logger="fedrecord.node"):
        await sweep_orphans(home)
    assert "sweeping document files that no row names: [Errno 5] Input/output error" in caplog.text


async def test_many_candidates_are_checked_a_batch_at_a_time(
    lab: ServedNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = lab.h
    monkeypatch.setattr("fedrecord.node.home.MAX_IDS_PER_QUERY", 2)
    named = [await authored(lab, f"named {i}".encode() * 50) for i in range(3)]
    debris = [await orphan(home, f"debris {i}".encode() * 50, age=2 * HOUR) for i in range(4)]
    for doc in named:
        aged(home, doc, 2 * HOUR)
    assert await home.sweep_orphans() == len(debris)
    assert not any(home.files.path_of(doc).exists() for doc in debris)
    assert all(home.files.path_of(doc).exists() for doc in named)
