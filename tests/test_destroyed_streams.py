"""What a batch fetch and a deletion leave behind, now that small documents live in their database row.

* Deleting a small document on the patient's node leaves its ciphertext in
  neither ``node.db`` nor its write-ahead log: the row goes with the
  transaction, ``secure_delete`` zeroes the freed cells, and the log is
  checkpointed and truncated (``NodeHome.destroyed``).
* A batch fetch decided before a change that commits while its streams are read
  (here: the patient hides one of its documents) is decided again where its
  receipt is logged, and refused as ``not-found`` with nothing logged.

Real nodes over HTTP on loopback, as in tests/test_batch_fetch.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from .node_helpers import Story, build_story, now, refused, snapshot, stored_stream
from .test_batch_fetch import Setting, audit_count, deposit_and_accept, fetch_batch_as

CONTENTS = [f"Ferritin {i}: {30 + i} ug/L\n".encode() * (3 + i) for i in range(4)]


@pytest_asyncio.fixture
async def setting(tmp_path: Path) -> AsyncIterator[Setting]:
    story: Story = await build_story(tmp_path / "nodes")
    try:
        docs = await deposit_and_accept(story, CONTENTS, title="Ferritin")
        yield Setting(story, dict(zip(docs, CONTENTS, strict=True)))
    finally:
        await story.close()


async def test_a_deleted_small_document_leaves_no_ciphertext_in_the_database_or_its_log(setting: Setting) -> None:
    patient = setting.story.patient
    doc = setting.small[1]
    stream = await stored_stream(patient, doc)
    assert stream is not None and not patient.h.files.path_of(doc).exists(), "kept in its row"
    database = patient.path / "node.db"
    log = patient.path / "node.db-wal"
    await patient.patient.delete(doc, now=now())
    assert await stored_stream(patient, doc) is None
    assert not log.exists() or log.stat().st_size == 0, "the log is checkpointed and truncated"
    # Any 64 bytes of the ciphertext (past its header) would betray it.
    probe = stream[60:124]
    assert probe not in database.read_bytes()
    assert not log.exists() or probe not in log.read_bytes()


async def test_a_change_while_a_batch_is_read_is_decided_again(
    setting: Setting, monkeypatch: pytest.MonkeyPatch
) -> None:
    story = setting.story
    patient = story.patient
    hidden = setting.small[2]
    opened = patient.h.whole_stream
    hid: list[bytes] = []

    async def hide_then_open(doc: bytes, **options: Any) -> Any:
        if not hid:
            # The patient hides a document of the batch after it was decided, before it is logged.
            hid.append(hidden)
            await patient.patient.hide(hidden)
        return await opened(doc, **options)

    monkeypatch.setattr(patient.h, "whole_stream", hide_then_open)
    entries = await audit_count(patient)
    before = await snapshot(patient)
    answer = await fetch_batch_as(setting, [setting.small[0], hidden, setting.small[3]])
    refused(answer, 404, "not-found")
    assert hid and await audit_count(patient) == entries, "nothing logged"
    after = await snapshot(patient)
    assert after.digest["audit"] == before.digest["audit"]
