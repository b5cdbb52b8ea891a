"""Destruction that survives interruptions: deletions finished after a crash, copies never kept after their tombstone.

* A process killed between the commit that forgets a document and the
  destruction of its file (and of the log's old images) leaves the document
  listed as doomed; the next ``serve`` finishes it at start, whatever the
  file's age, and a running one after ``FINISH_AFTER`` seconds.
* A fetch that was under way when the patient deleted the document, and whose
  copy would be kept after this node applied the tombstone and attested its
  destruction, keeps nothing ([API-27]); nor does one under way when the
  grant it was made under was revoked, whose copies this node destroyed
  ([API-19]).

Real nodes over HTTP on loopback (:func:`tests.node_helpers.build_story`).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from fedrecord.core import KeyWrap, RemoteProtocolError, Scope
from fedrecord.node import clinic as clinic_module
from fedrecord.node import runner
from fedrecord.node.home import NodeHome
from fedrecord.storage.sqlite import table_digest

from .node_helpers import Story, build_story, now

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def story(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Story]:
    built = await build_story(tmp_path_factory.mktemp("destruction"))
    try:
        yield built
    finally:
        await built.close()


async def _killed_after_commit(*_docs: bytes) -> None:
    """In place of ``NodeHome.destroyed``: the process dies right after the commit that forgot the documents."""


async def _accepted(story: Story, content: bytes, title: str, category: str = "lab") -> bytes:
    doc = await story.lab.clinic.deposit(
        story.patient.did, content, title=title, category=category, doc_type="lab-result", now=now()
    )
    await story.lab.clinic.flush_outbox()
    await story.patient.patient.accept(doc, now=now())
    return doc


async def test_a_deletion_cut_after_its_commit_is_finished_by_the_next_start(
    story: Story, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file of a large document outlives a deletion killed after its commit; the next start destroys it."""
    home = story.patient.h
    doc = await _accepted(story, os.urandom(2_000_000), "Large scan")  # over 1 MiB: kept in a file
    assert home.files.path_of(doc).exists()

    with monkeypatch.context() as patched:
        patched.setattr(NodeHome, "destroyed", _killed_after_commit)
        await story.patient.patient.delete(doc, now=now())
    assert await home.store.doomed() == [doc] and home.files.path_of(doc).exists()
    # A running serve leaves it to the process that is destroying it, for FINISH_AFTER seconds.
    await runner.finish_destruction(home, before=now() - runner.FINISH_AFTER)
    assert home.files.path_of(doc).exists()
    await runner.finish_destruction(home)  # as serve does at start
    assert not home.files.path_of(doc).exists()
    assert await home.store.doomed() == []


async def test_a_copy_fetched_while_the_patient_deleted_it_is_not_kept(
    story: Story, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tombstone is applied (and destruction attested) between the download and the keep: nothing kept."""
    gp, patient = story.gp, story.patient
    doc = await _accepted(story, b"Ferritin 12 ug/L\n" * 100, "Ferritin")
    real = clinic_module.decrypt_stored

    async def meanwhile(*args: Any, **kwargs: Any) -> int:
        size = await real(*args, **kwargs)
        # What another process does at this moment: the patient deletes, the GP's serve applies it.
        await patient.patient.delete(doc, now=now())
        await gp.clinic.poll(patient.did, now=now())
        return size

    monkeypatch.setattr(clinic_module, "decrypt_stored", meanwhile)
    with pytest.raises(RemoteProtocolError) as caught:
        await gp.clinic.fetch(patient.did, doc, now=now())
    assert caught.value.code.value == "not-found"
    assert await gp.h.store.attested(doc, patient=patient.did)
    assert await gp.h.store.document_state(doc) is None
    assert not gp.h.files.path_of(doc).exists()


async def test_a_batch_keeps_none_of_what_the_patient_deleted_meanwhile(
    story: Story, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same between a batch's download and its keep: the deleted one is not kept, the others are."""
    gp, patient = story.gp, story.patient
    kept = await _accepted(story, b"Vitamin D 30 ng/mL\n", "Vitamin D")
    deleted = await _accepted(story, b"Vitamin B12 400 pg/mL\n", "Vitamin B12")
    real = clinic_module._checked_copies

    async def meanwhile(*args: Any, **kwargs: Any) -> Any:
        outcomes = await real(*args, **kwargs)
        await patient.patient.delete(deleted, now=now())
        await gp.clinic.poll(patient.did, now=now())
        return outcomes

    monkeypatch.setattr(clinic_module, "_checked_copies", meanwhile)
    failed = await gp.clinic.fetch_batch(patient.did, [kept, deleted], now=now())
    assert failed == {deleted: "not-found"}
    assert await gp.h.store.document_state(kept) == "shared"
    assert await gp.h.store.document_state(deleted) is None


async def test_a_copy_fetched_while_its_grant_was_revoked_is_not_kept(
    story: Story, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The revocation is applied (copies under the grant destroyed) between the download and the keep:
    nothing kept, ``revoked`` ([API-19]); the clinic's documents as they were."""
    gp, patient = story.gp, story.patient
    doc = await _accepted(story, b"Bone density T-score -1.2\n" * 100, "Densitometry", "imaging")
    grant = await patient.patient.grant(
        audience=gp.did, scope=Scope(ids=(doc,)), actions=("read",), purpose="treatment", days=30, now=now()
    )
    await gp.clinic.poll(patient.did, now=now())
    before = await table_digest(gp.h.db, ["documents", "doomed"])
    real = clinic_module.decrypt_stored

    async def meanwhile(*args: Any, **kwargs: Any) -> int:
        size = await real(*args, **kwargs)
        # What another process does at this moment: the patient revokes, the GP's serve applies it.
        await patient.patient.revoke(grant.id, now=now())
        await gp.clinic.poll(patient.did, now=now())
        return size

    monkeypatch.setattr(clinic_module, "decrypt_stored", meanwhile)
    with pytest.raises(RemoteProtocolError) as caught:
        await gp.clinic.fetch(patient.did, doc, now=now())
    assert caught.value.code.value == "revoked"
    assert await table_digest(gp.h.db, ["documents", "doomed"]) == before
    assert await gp.h.store.records(KeyWrap, subject=doc) == []
    assert not gp.h.files.path_of(doc).exists()


async def test_a_batch_keeps_nothing_under_a_grant_revoked_meanwhile(
    story: Story, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same between a batch's download and its keep: none of its documents is kept."""
    gp, patient = story.gp, story.patient
    docs = [
        await _accepted(story, f"Spirometry FEV1 {litres} L\n".encode(), f"Spirometry {litres}", "imaging")
        for litres in (3, 4)
    ]
    grant = await patient.patient.grant(
        audience=gp.did, scope=Scope(ids=tuple(docs)), actions=("read",), purpose="treatment", days=30, now=now()
    )
    await gp.clinic.poll(patient.did, now=now())
    before = await table_digest(gp.h.db, ["documents", "doomed"])
    real = clinic_module._checked_copies

    async def meanwhile(*args: Any, **kwargs: Any) -> Any:
        outcomes = await real(*args, **kwargs)
        await patient.patient.revoke(grant.id, now=now())
        await gp.clinic.poll(patient.did, now=now())
        return outcomes

    monkeypatch.setattr(clinic_module, "_checked_copies", meanwhile)
    failed = await gp.clinic.fetch_batch(patient.did, docs, now=now())
    assert failed == dict.fromkeys(docs, "revoked")
    assert await table_digest(gp.h.db, ["documents", "doomed"]) == before


async def test_a_copy_kept_again_is_struck_off_the_list(story: Story, monkeypatch: pytest.MonkeyPatch) -> None:
    """Revoked (the clinic killed after its commit), granted again, fetched again: the new copy survives."""
    gp, patient = story.gp, story.patient
    doc = await _accepted(story, os.urandom(2_000_000), "Scan", "imaging")  # outside the GP's own grant
    grant = await patient.patient.grant(
        audience=gp.did, scope=Scope(ids=(doc,)), actions=("read",), purpose="treatment", days=30, now=now()
    )
    await gp.clinic.poll(patient.did, now=now())
    await gp.clinic.fetch(patient.did, doc, now=now())
    await patient.patient.revoke(grant.id, now=now())

    with monkeypatch.context() as patched:
        patched.setattr(NodeHome, "destroyed", _killed_after_commit)
        await gp.clinic.poll(patient.did, now=now())
    assert await gp.h.store.doomed() == [doc]
    await patient.patient.grant(
        audience=gp.did, scope=Scope(ids=(doc,)), actions=("read",), purpose="treatment", days=30, now=now()
    )
    await gp.clinic.poll(patient.did, now=now())
    await gp.clinic.fetch(patient.did, doc, now=now())
    assert await gp.h.store.doomed() == [], "kept again: no longer to destroy"
    await runner.finish_destruction(gp.h)  # as the next serve does at start
    assert gp.h.files.path_of(doc).exists()
    assert await gp.clinic.read_held(doc, now=now())


async def test_an_attestation_goes_out_only_once_the_copy_is_destroyed(
    story: Story, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The GP killed after it applied a tombstone: whichever process sends the attestation destroys first."""
    gp, patient = story.gp, story.patient
    doc = await _accepted(story, os.urandom(2_000_000), "Large lab report")  # the GP reads lab results
    await gp.clinic.fetch(patient.did, doc, now=now())
    await patient.patient.delete(doc, now=now())

    with monkeypatch.context() as patched:
        patched.setattr(NodeHome, "destroyed", _killed_after_commit)
        await gp.clinic.poll(patient.did, now=now())  # applies the tombstone, queues the attestation
    assert gp.h.files.path_of(doc).exists() and await gp.h.store.doomed() == [doc]
    assert await gp.h.store.attested(doc, patient=patient.did)
    await gp.clinic.flush_outbox()
    assert not gp.h.files.path_of(doc).exists() and await gp.h.store.doomed() == []
    assert [o["done"] for o in await gp.clinic.outbox() if o["kind"] == "attestation"][-1]


async def test_a_tombstone_for_a_copy_in_a_state_a_clinic_never_writes_destroys_it(story: Story) -> None:
    """A damaged row (a state outside the life cycle table) does not fail every poll: destroyed, attested."""
    gp, patient = story.gp, story.patient
    doc = await _accepted(story, b"TSH 2.1 mU/L\n", "TSH")
    await gp.clinic.fetch(patient.did, doc, now=now())
    async with gp.h.store.transaction():
        await gp.h.db.execute("UPDATE documents SET state = 'archived' WHERE id = ?", (doc,))
    await patient.patient.delete(doc, now=now())
    await gp.clinic.poll(patient.did, now=now())
    assert await gp.h.store.attested(doc, patient=patient.did)
    assert await gp.h.store.document_state(doc) is None
