"""A clinic connected to several patients keeps each patient's records to that patient (spec 15.11, 15.7, 16).

A clinic may hold copies from one patient while it polls and syncs another, and any node it
connects to as a patient answers what it likes.  What one patient's node signs or sends reaches
only that patient's documents and grants: a tombstone withdraws only the signer's own document and
is attested to the signer, once per patient ([API-27]); a revocation counts only when an issuer
up the chain of the grant it names signed it ([CAP-7], [API-19]); and a sync with one patient
reconciles over that patient's records alone ([SYNC-10], section 16), so that it reveals nothing
of another patient's and agrees in one round.

Real nodes over HTTP on loopback (:func:`tests.node_helpers.build_story`): the patient, the GP
and the lab of the demo's story, and a second patient node M made here, which stands for any
node a clinic connects to as a patient -- a patient's node run by an attacker who learnt the id
of a document or a grant of the story's patient.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from fedrecord.core import (
    DeletionAttestation,
    Grant,
    Revocation,
    Scope,
    Signed,
    SigningIdentity,
    Tombstone,
    open_record,
    sign_record,
)
from fedrecord.node.clinic import ClinicNode
from fedrecord.node.schema import MIGRATIONS
from fedrecord.node.store import SqliteNodeStore
from fedrecord.node.sync import patient_view, subject_of
from fedrecord.storage.sqlite import open_database, table_digest, transaction

from .node_helpers import ServedNode, Story, enroll_device, node_tables, now

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(loop_scope="module")
async def mallory(story: Story, tmp_path: Path) -> AsyncIterator[ServedNode]:
    """M's patient node, which the GP and the lab are connected to (by M's invitations)."""
    node = await ServedNode.create(tmp_path / "mallory", role="patient", name="M (patient)")
    try:
        for clinic in (story.gp, story.lab):
            invitation = await node.patient.create_invitation(label=clinic.h.config.name, now=now())
            await clinic.clinic.connect(invitation.url(), now=now())
        yield node
    finally:
        await node.stop()


async def holds(node: ServedNode, record: Signed[Any]) -> None:
    """Make a patient's node hold a record as it holds its own (its state answers carry it): a node
    answers what it likes."""
    async with node.h.store.transaction():
        await node.h.store.put_record(record, now=now(), subject=subject_of(record))
        if isinstance(record.record, Tombstone):  # told to every clinic it knows ([API-16])
            clinics = [did for did, _name in await node.h.store.peers_with_role("clinic")]
            await node.h.store.tell_of_deletion(record.record.doc, clinics)


async def digests(node: ServedNode, *tables: str) -> dict[str, tuple[int, str]]:
    assert set(tables) <= set(await node_tables(node))
    return await table_digest(node.h.db, tables)


async def attestations_to(node: ServedNode, patient: str) -> list[DeletionAttestation]:
    """The attestations ``node`` queued for ``patient``, in the order it queued them."""
    rows = await node.h.db.execute_fetchall(
        "SELECT payload FROM outbox WHERE kind = 'attestation' AND target = ? ORDER BY id", (patient,)
    )
    return [open_record(row[0], DeletionAttestation).record for row in rows]


# --- tombstones: only the signer's document, attested to the signer ([API-27]) ------------------------


async def test_another_patients_tombstone_does_not_withdraw_this_patients_document(
    story: Story, mallory: ServedNode
) -> None:
    """M signs a tombstone of the id of the patient's blood count: the GP's copy stays, M is answered as
    for a document never held, the GP fetches the document again; the patient's own deletion is then
    applied and attested to the patient."""
    gp, patient, doc = story.gp, story.patient, story.docs["cbc"]
    await gp.clinic.sync(patient.did, now=now())
    assert await gp.h.store.held_copy(doc) is not None
    await holds(mallory, sign_record(Tombstone(doc=doc, iat=now()), mallory.identity))

    before = await digests(gp, "documents", "doomed", "delegations")
    files = gp.h.files.path_of(doc).exists(), await gp.h.store.document_stream(doc)
    answer = await gp.clinic.poll(mallory.did, now=now())
    assert answer["destroyed"] == 0 and answer["attested"] == 1
    assert await digests(gp, "documents", "doomed", "delegations") == before, "M's tombstone changed a copy"
    assert (gp.h.files.path_of(doc).exists(), await gp.h.store.document_stream(doc)) == files
    (to_mallory,) = await attestations_to(gp, mallory.did)
    assert (to_mallory.patient, to_mallory.doc, to_mallory.outcome) == (mallory.did, doc, "destroyed")
    assert await attestations_to(gp, patient.did) == []
    assert await gp.h.store.attested(doc, patient=mallory.did)
    assert not await gp.h.store.attested(doc, patient=patient.did)

    # M's tombstone is no bar to the patient's document: fetched and kept again (the receipt logged
    # in the patient's audit log is for a copy the GP keeps).
    assert await gp.clinic.fetch(patient.did, doc, now=now()) == b"Hemoglobin 14.1 g/dL\nLeukocytes 6.2 G/L\n"
    assert await gp.h.store.document_state(doc) == "shared"
    # The patient's own deletion: destroyed, and attested to the patient, who is owed it.
    await patient.patient.delete(doc, now=now())
    answer = await gp.clinic.poll(patient.did, now=now())
    assert answer["destroyed"] == 0 and answer["attested"] == 1
    assert await gp.h.store.held_copy(doc) is None
    (to_patient,) = await attestations_to(gp, patient.did)
    assert (to_patient.patient, to_patient.doc, to_patient.outcome) == (patient.did, doc, "destroyed")
    assert len(await attestations_to(gp, mallory.did)) == 1, "M's tombstone is attested once"
    await gp.clinic.flush_outbox()
    (received,) = await patient.h.store.records(DeletionAttestation, signer=gp.did)
    assert received.record.doc == doc


async def test_another_patients_tombstone_leaves_an_authored_document_as_it_was(
    story: Story, mallory: ServedNode
) -> None:
    """The lab authored the blood count for the patient: M's tombstone of its id is not the patient's
    deletion, and the patient's is then answered ``retained``, to the patient."""
    lab, patient, doc = story.lab, story.patient, story.docs["cbc"]
    assert await lab.h.store.document_state(doc) == "authored"
    await holds(mallory, sign_record(Tombstone(doc=doc, iat=now()), mallory.identity))

    before = await digests(lab, "documents", "doomed")
    await lab.clinic.poll(mallory.did, now=now())
    assert await digests(lab, "documents", "doomed") == before
    (to_mallory,) = await attestations_to(lab, mallory.did)
    assert (to_mallory.doc, to_mallory.outcome) == (doc, "destroyed")

    await patient.patient.delete(doc, now=now())
    await lab.clinic.poll(patient.did, now=now())
    (to_patient,) = await attestations_to(lab, patient.did)
    assert (to_patient.patient, to_patient.doc, to_patient.outcome) == (patient.did, doc, "retained")
    assert await lab.h.store.document_state(doc) == "authored"


# --- revocations: only an issuer up the chain of the grant named ([CAP-7], [API-19]) ----------------


async def test_a_revocation_signed_by_a_stranger_destroys_nothing(
    story: Story, mallory: ServedNode, tmp_path: Path
) -> None:
    """Revocations of the GP's grant and of its delegation to a cardiologist, signed by M (who learnt
    their ids, as every delegate of the GP does from its chain) or by the cardiologist itself, reach the
    GP and the cardiologist in the patient's own state answers and in M's: void, they destroy nothing.
    The GP's revocation of the grant it delegated still destroys the cardiologist's copy, and only it."""
    gp, patient, doc = story.gp, story.patient, story.docs["cbc"]
    await gp.clinic.sync(patient.did, now=now())
    async with ServedNode.running(tmp_path / "cardiology", role="clinic", name="Cardiologie") as cardiology:
        child = await gp.clinic.delegate(
            patient.did, to=cardiology.did, to_endpoint=cardiology.url, days=30, now=now()
        )
        assert await cardiology.clinic.fetch(patient.did, doc, now=now())
        clinics = (gp, cardiology)
        void = [
            sign_record(Revocation(grant=story.gp_grant.id, iat=now()), mallory.identity),
            sign_record(Revocation(grant=child.id, iat=now()), mallory.identity),
            sign_record(Revocation(grant=child.id, iat=now()), cardiology.identity),  # the link's own audience
        ]
        for revocation in void:
            await holds(patient, revocation)
            await holds(mallory, revocation)
        before = {clinic.did: await digests(clinic, "documents", "doomed") for clinic in clinics}
        for clinic in clinics:
            assert (await clinic.clinic.poll(patient.did, now=now()))["destroyed"] == 0
        await gp.clinic.poll(mallory.did, now=now())
        await gp.clinic.sync(patient.did, now=now(), bodies=False)  # applies what it holds from the patient
        for clinic in clinics:
            assert await digests(clinic, "documents", "doomed") == before[clinic.did], clinic.h.config.name
            assert await clinic.clinic.chains_from(patient.did, now=now())
            assert await clinic.h.store.held_copy(doc) is not None

        # The GP, up the cardiologist's chain, may revoke what it delegated: that copy dies, the GP's stays.
        await holds(patient, sign_record(Revocation(grant=child.id, iat=now()), gp.identity))
        assert (await cardiology.clinic.poll(patient.did, now=now()))["destroyed"] == 1
        assert await cardiology.h.store.held_copy(doc) is None
        assert (await gp.clinic.poll(patient.did, now=now()))["destroyed"] == 0
        assert await digests(gp, "documents", "doomed") == before[gp.did]


# --- syncing: one patient's records only (section 16, [SYNC-10]) -------------------------------------


@contextmanager
def sync_messages(clinic: ClinicNode) -> Iterator[list[bytes]]:
    """The reconciliation messages ``clinic`` sends (``POST /v0/sync``) inside the block."""
    sent: list[bytes] = []
    real_call = clinic.client.call

    async def spying(method: str, url: str, **fields: Any) -> dict[str, Any]:
        if url.endswith("/v0/sync"):
            sent.append(fields["message"])
        return await real_call(method, url, **fields)

    clinic.client.call = spying  # type: ignore[method-assign]
    try:
        yield sent
    finally:
        del clinic.client.call


async def ids_of(clinic: ClinicNode, patient: str) -> set[bytes]:
    items = await clinic.sync_items(patient)
    return {record_id for _, record_id in items.items(0, len(items))}


async def test_a_sync_with_one_patient_carries_nothing_of_another_patients_records(
    story: Story, mallory: ServedNode
) -> None:
    """The GP holds M's records too: M's revocation of M's grant to it, M's void revocation of the
    patient's grant, and a revocation someone else signed that M's node gave it.  A sync with the
    patient reveals none of their ids and agrees in one round; so does a sync with M, over M's."""
    gp, patient = story.gp, story.patient
    granted = await mallory.patient.grant(
        audience=gp.did, scope=Scope(past=True, future=True), actions=("read",), purpose="treatment", days=30, now=now()
    )
    await holds(mallory, sign_record(Revocation(grant=story.gp_grant.id, iat=now()), mallory.identity))
    await holds(mallory, sign_record(Revocation(grant=granted.id, iat=now()), story.lab.identity))
    await mallory.patient.revoke(granted.id, now=now())
    await gp.clinic.poll(mallory.did, now=now())
    malloryish = {r.id for r in await mallory.h.store.records(Revocation)}
    assert len(malloryish) == 3 and malloryish <= {r.id for r in await gp.h.store.records(Revocation)}

    with sync_messages(gp.clinic) as sent:
        await gp.clinic.sync(patient.did, now=now())
        again = await gp.clinic.sync(patient.did, now=now())
    leaked = [r.hex()[:16] for r in malloryish if any(r[:8] in message for message in sent)]
    assert sent and not leaked, f"the patient's node was sent id prefixes of M's records: {leaked}"
    assert again.rounds == 1
    view = await patient_view(patient.patient, gp.did, [story.gp_grant], now=now())
    assert await ids_of(gp.clinic, patient.did) == set(view.records)
    # M's records are M's: its sync is one round too (control records: the GP's grant from M is revoked).
    await gp.clinic.sync(mallory.did, now=now())
    assert (await gp.clinic.sync(mallory.did, now=now())).rounds == 1
    assert malloryish <= await ids_of(gp.clinic, mallory.did)


async def test_a_devices_revocation_is_in_the_set_of_the_patient_whose_node_gave_it(
    story: Story, tmp_path: Path
) -> None:
    """A revocation the patient's phone signed of a grant it issued, pushed to the patient's node
    ([API-48]), is one of the patient's records though the patient did not sign it: the GP, which
    holds neither the phone's grant nor its device grant, learns so from where it came, and its syncs
    with the patient still agree in one round."""
    gp, patient, lab = story.gp, story.patient, story.lab
    async with ServedNode.running(tmp_path / "phone", role="clinic", name="Camille's phone") as phone:
        await enroll_device(patient, phone)
        await phone.clinic.poll(patient.did, now=now())
        child = await phone.clinic.delegate(patient.did, to=lab.did, to_endpoint=lab.url, days=30, now=now())
        revocation = sign_record(Revocation(grant=child.id, iat=now()), phone.identity)
        async with phone.h.store.transaction():  # as the phone keeps a revocation it signs
            await phone.h.store.put_record(revocation, now=now(), subject=child.id)
        assert (await phone.clinic.sync(patient.did, now=now())).records_pushed == 2
        assert revocation.id in {r.id for r in await patient.h.store.records(Revocation, signer=phone.did)}

    await gp.clinic.sync(patient.did, now=now())
    assert await gp.h.store.record(Grant, child.id) is None
    assert revocation.id in await ids_of(gp.clinic, patient.did)
    assert (await gp.clinic.sync(patient.did, now=now())).rounds == 1
    view = await patient_view(patient.patient, gp.did, [story.gp_grant], now=now())
    assert await ids_of(gp.clinic, patient.did) == set(view.records)

    # A database from before migration 9 does not know where its records came from: the patient's
    # next state answer, which holds every revocation its node holds, says it again.
    async with gp.h.store.transaction():
        await gp.h.db.execute("DELETE FROM record_sets")
    assert revocation.id not in await ids_of(gp.clinic, patient.did)
    await gp.clinic.poll(patient.did, now=now())
    assert await ids_of(gp.clinic, patient.did) == set(view.records)


async def test_migration_9_adds_record_sets_and_changes_no_row(tmp_path: Path) -> None:
    """A database at schema 8 with a revocation another node signed: kept as it was, in no patient's
    set until a patient's node gives it (correct, if incomplete: see the previous test)."""
    path = tmp_path / "node.db"
    db = await open_database(path, MIGRATIONS[:8])
    revocation = sign_record(Revocation(grant=bytes(32), iat=now()), SigningIdentity.from_seed(bytes(32)))
    try:
        async with transaction(db):
            await SqliteNodeStore(db).put_record(revocation, now=now(), subject=bytes(32))
        before = await table_digest(db, ["records"])
    finally:
        await db.close()
    db = await open_database(path, MIGRATIONS)
    try:
        assert await table_digest(db, ["records"]) == before
        assert await db.execute_fetchall("SELECT * FROM record_sets") == []
        assert [r.id for r in await SqliteNodeStore(db).records(Revocation)] == [revocation.id]
    finally:
        await db.close()
