"""Syncing a clinic with the patient's node over HTTP (spec section 16, [SYNC-10]; ``POST /v0/sync``, ``/v0/records``).

The demo's story between served nodes: the GP may read lab results except those labelled PSY.
A sync brings the GP the records of its view -- the patient's heads, revocations and tombstones,
its grant, the accepted entry of the blood count -- and the body of the blood count; never the
restricted lithium level or the X-ray report, whose ids it cannot even learn.  A second sync is
one round.  Forged, replayed and malformed rounds are refused with their codes and leave the
patient's store as it was.  Through a proxy that cuts connections at random points, a hundred
syncs each converge, with no duplicate row and nothing lost.
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import Any

import pytest

from fedrecord.core import (
    AcceptedEntry,
    AuditCheckpoint,
    Code,
    Grant,
    PrivateRestriction,
    RemoteProtocolError,
    Revocation,
    Scope,
    Signed,
    StateHead,
    Tombstone,
    cbor,
    open_any_record,
    sign_record,
)
from fedrecord.core.reconcile import Reconciler, SortedItems
from fedrecord.core.sealed_box import open_sealed
from fedrecord.node import sync
from fedrecord.node.client import PeerUnreachable
from fedrecord.node.sync import item_of, patient_view

from .node_helpers import (
    Impostor,
    ServedNode,
    Story,
    answered,
    assert_unchanged,
    body,
    cli_json,
    now,
    route_gp_through_proxy,
    send,
    send_signed,
    signed_headers,
    snapshot,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def imaging_grant(story: Story) -> Signed[Grant]:
    """A second grant to the GP, for a day: the imaging results, past ones included."""
    return await story.patient.patient.grant(
        audience=story.gp.did,
        scope=Scope(categories=("imaging",), past=True),
        actions=("read",),
        purpose="treatment",
        days=1,
        now=now(),
    )


async def entries_held(story: Story) -> set[bytes]:
    return {e.record.doc for e in await story.gp.h.store.records(AcceptedEntry, signer=story.patient.did)}


async def test_sync_brings_the_view_and_only_the_view(story: Story) -> None:
    gp, patient = story.gp.clinic, story.patient.did
    report = await gp.sync(patient, now=now())
    assert report.records_stored == report.records_fetched > 0
    assert await entries_held(story) == {story.docs["cbc"]}
    assert report.documents_fetched == 1 and not report.documents_failed
    assert await gp.read_held(story.docs["cbc"], now=now()) == b"Hemoglobin 14.1 g/dL\nLeukocytes 6.2 G/L\n"
    # Everything the GP holds from the patient is what the patient's node has in the GP's view.
    view = await patient_view(story.patient.patient, story.gp.did, [story.gp_grant], now=now())
    mine = await gp.sync_items(patient)
    assert {i for _, i in mine.items(0, len(mine))} == set(view.records)
    # The view's items, built without decoding the entries, are those of its records decoded.
    decoded = sorted(item_of(open_any_record(encoded)) for encoded in view.records.values())
    assert sorted(view.items.items(0, len(view.items))) == decoded
    hidden = {story.docs["lithium"], story.docs["xray"]}
    for entry in await story.patient.h.store.records(AcceptedEntry, signer=patient):
        assert (entry.id in view.records) == (entry.record.doc not in hidden)
    # Nothing new: one round, nothing fetched.
    again = await gp.sync(patient, now=now())
    assert (again.rounds, again.records_fetched, again.documents_fetched) == (1, 0, 0)


async def test_a_clinic_holding_two_grants_syncs_what_each_reaches(story: Story) -> None:
    """A view per live chain: the records and bodies a second grant opens come with the first's ([SYNC-10])."""
    gp, patient = story.gp.clinic, story.patient.did
    await gp.sync(patient, now=now())
    imaging = await imaging_grant(story)
    await gp.poll(patient, now=now())  # the new grant comes with the patient's state
    # And a new lab result, which the first grant reaches.
    lab = story.lab.clinic
    potassium = await lab.deposit(
        patient, b"K 4.1 mmol/L\n", title="K", category="lab", doc_type="lab-result", now=now()
    )
    assert (await lab.flush_outbox())[0] == 1
    await story.patient.patient.accept(potassium, now=now())
    told: list[tuple[str, int, int]] = []
    report = await gp.sync(patient, now=now(), progress=lambda *seen: told.append(seen))
    assert await entries_held(story) == {story.docs["cbc"], story.docs["xray"], potassium}
    assert report.documents_fetched == 2 and not report.documents_failed, report
    # One bar a stage for both views: counted up to both, never back.
    for stage in ("records", "documents"):
        counts = [(done, total) for seen, done, total in told if seen == stage]
        assert counts == sorted(counts) and counts[-1][0] == counts[-1][1], (stage, counts)
    assert [(done, total) for seen, done, total in told if seen == "documents"][-1] == (2, 2)
    assert await gp.read_held(story.docs["xray"], now=now()) == b"No focal consolidation.\n"
    # The X-ray was read under the grant that reaches it, as the patient's audit log says.
    audit = await story.patient.patient.audit_log()
    reads = [entry for entry in audit if story.docs["xray"] in entry.docs]
    assert [entry.grant for entry in reads] == [imaging.id], reads
    # Never the lithium level: no grant of the GP reaches it.
    assert story.docs["lithium"] not in {row.doc for row in await story.gp.h.store.held_documents()}
    assert await gp.read_held(potassium, now=now()) == b"K 4.1 mmol/L\n"
    again = await gp.sync(patient, now=now())
    assert (again.records_fetched, again.documents_fetched) == (0, 0), again


async def test_a_clinic_with_many_grants_reconciles_each_view_in_its_own_rounds(story: Story) -> None:
    """The cap on rounds is a reconciliation's: seventy views of one or two rounds each make one sync."""
    gp, patient = story.gp.clinic, story.patient.did
    for _ in range(70):
        await imaging_grant(story)
    await gp.poll(patient, now=now())
    report = await gp.sync(patient, now=now())
    assert report.rounds > sync.MAX_ROUNDS, report
    assert await entries_held(story) == {story.docs["cbc"], story.docs["xray"]}
    assert report.documents_fetched == 2 and not report.documents_failed, report


async def test_a_view_refused_leaves_the_others_synced_then_says_so(
    story: Story, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refusal of one view (a fault injected: no such refusal is easy to cause) stops neither the
    records nor the bodies of the others; the sync then raises it."""
    gp, patient = story.gp.clinic, story.patient.did
    imaging = await imaging_grant(story)
    await gp.poll(patient, now=now())
    reconcile = sync._reconcile

    async def refusing(clinic: Any, patient: str, endpoint: str, mine: Any, chain: list[bytes], report: Any) -> Any:
        if chain and chain[-1] == story.gp_grant.encoded:
            raise RemoteProtocolError(Code.STALE, "injected: this view is refused")
        return await reconcile(clinic, patient, endpoint, mine, chain, report)

    monkeypatch.setattr(sync, "_reconcile", refusing)
    with pytest.raises(RemoteProtocolError) as refused:
        await gp.sync(patient, now=now())
    assert refused.value.code is Code.STALE
    # The imaging view was synced all the same, its body fetched under its grant; not the lab view.
    assert await entries_held(story) == {story.docs["xray"]}
    assert {row.doc for row in await story.gp.h.store.held_documents()} == {story.docs["xray"]}
    assert imaging.id in {g.id for g in await gp.grants_from(patient, now=now())}


async def test_views_of_an_earlier_state_are_not_kept(story: Story) -> None:
    """A patient's node serving syncs for weeks keeps the views it can still use, not one per chain ever seen."""
    patient, gp = story.patient.patient, story.gp.did
    grants = [
        await patient.grant(
            audience=gp,
            scope=Scope(categories=("lab",), past=True),
            actions=("read",),
            purpose="treatment",
            days=1,
            now=now(),
        )
        for _ in range(3)
    ]
    for grant in grants:
        await patient_view(patient, gp, [grant], now=now())
    assert len(patient.sync_views.views) == 3
    # The record changes (a grant, a deposit, an acceptance...): those views will never be used again.
    await patient.revoke(grants[0].id, now=now())
    view = await patient_view(patient, gp, [story.gp_grant], now=now())
    assert len(patient.sync_views.views) == 1, "the three views of the earlier state are dropped"
    assert next(iter(patient.sync_views.views.values())) is view
    assert await patient_view(patient, gp, [story.gp_grant], now=now()) is view, "the current one is kept"


async def test_an_entry_no_longer_readable_does_not_turn_later_batches_into_single_fetches(story: Story) -> None:
    """A clinic keeps the entries of documents it could once read; every later sync asks for their bodies.

    The patient's node refuses a whole batch for one document it does not serve ([API-70]): the
    batch is split until that document is alone, not fetched again one document at a time.
    """
    patient, gp, lab = story.patient.patient, story.gp.clinic, story.lab.clinic
    grant_args: dict[str, Any] = {"audience": story.gp.did, "actions": ("read",), "purpose": "treatment", "days": 1}
    # For a while the GP reads every lab result, the lithium level (PSY) included...
    wide = await patient.grant(scope=Scope(categories=("lab",), past=True, future=True), now=now(), **grant_args)
    await patient.revoke(story.gp_grant.id, now=now())
    await gp.poll(story.patient.did, now=now())  # the grants come with the patient's state
    await gp.sync(story.patient.did, now=now())
    assert story.docs["lithium"] in {row.doc for row in await story.gp.h.store.held_documents()}
    # ...then again without it: the copies are destroyed, the entries stay.
    await patient.grant(
        scope=Scope(categories=("lab",), past=True, future=True), hide_labels=("PSY",), now=now(), **grant_args
    )
    await patient.revoke(wide.id, now=now())
    await gp.poll(story.patient.did, now=now())
    assert not await story.gp.h.store.held_documents()
    new = [
        await lab.deposit(
            story.patient.did, f"Potassium {i}\n".encode(), title="K", category="lab", doc_type="lab-result", now=now()
        )
        for i in range(40)
    ]
    assert (await lab.flush_outbox())[0] == len(new)
    for doc in new:
        await patient.accept(doc, now=now())
    before = len(await patient.audit_log())
    report = await gp.sync(story.patient.did, now=now())
    assert report.documents_fetched == len(new) + 1, report  # the new results and the blood count
    assert report.documents_failed == [f"{story.docs['lithium'].hex()}: not-found"]
    reads = len(await patient.audit_log()) - before
    assert reads <= 12, f"{reads} reads for {len(new) + 1} documents: the batch was fetched one by one"


async def test_bodies_left_by_a_records_only_sync_are_fetched_by_the_next(story: Story) -> None:
    """Entries stored by an earlier sync (not decoded by this one) still have their bodies fetched."""
    gp, patient = story.gp.clinic, story.patient.did
    first = await gp.sync(patient, now=now(), bodies=False)
    assert first.documents_fetched == 0 and await gp.missing_bodies(patient) == [story.docs["cbc"]]
    second = await gp.sync(patient, now=now())
    assert second.records_fetched == 0 and second.documents_fetched == 1
    assert await gp.missing_bodies(patient) == []
    assert await gp.read_held(story.docs["cbc"], now=now()) == b"Hemoglobin 14.1 g/dL\nLeukocytes 6.2 G/L\n"


async def test_sync_follows_new_documents_revocations_and_deletions(story: Story) -> None:
    gp, patient, lab = story.gp.clinic, story.patient.did, story.lab.clinic
    await gp.sync(patient, now=now())
    doc = await lab.deposit(
        patient,
        b"Potassium 4.1 mmol/L\n",
        title="Potassium",
        category="lab",
        doc_type="lab-result",
        now=now(),
    )
    assert await lab.flush_outbox() == (1, 0)
    await story.patient.patient.accept(doc, now=now())
    report = await gp.sync(patient, now=now())
    assert report.documents_fetched == 1 and await entries_held(story) == {story.docs["cbc"], doc}
    # Deleted: the tombstone arrives with the next sync, the copy is destroyed and attested.
    await story.patient.patient.delete(doc, now=now())
    await gp.sync(patient, now=now())
    assert await story.gp.h.store.held_copy(doc) is None
    assert doc in {t.record.doc for t in await story.gp.h.store.records(Tombstone, signer=patient)}
    # Revoked: the GP's chain is refused, it syncs the control records without it and learns why.
    await story.patient.patient.revoke(story.gp_grant.id, now=now())
    report = await gp.sync(patient, now=now())
    assert story.gp_grant.id in {r.record.grant for r in await story.gp.h.store.records(Revocation)}
    assert await story.gp.h.store.held_copy(story.docs["cbc"]) is None
    heads = await story.gp.h.store.records(StateHead, signer=patient)
    newest = max(h.record.seq for h in heads)
    assert (await story.gp.h.store.connection(patient)).head_seq == newest


def flip_last(encoded: bytes) -> bytes:
    return encoded[:-1] + bytes([encoded[-1] ^ 1])


async def test_bad_rounds_are_refused_and_change_nothing(story: Story) -> None:
    patient, url = story.patient, f"{story.patient.url}/v0/sync"
    gp = story.gp.identity
    chain = [story.gp_grant.encoded]
    first = Reconciler(SortedItems()).initiate()
    cases = [
        (gp, body(chain=chain, message=b"\x00"), 400, "malformed"),
        (
            gp,
            body(chain=chain, message=cbor.encode([1, 12, 8, [[None, b"", 0]]])),
            400,
            "unsupported-version",
        ),
        (gp, body(chain=chain, message=cbor.encode([0, 12, 8, [[5, b"", 0]]])), 400, "out-of-order"),
        (
            gp,
            body(chain=chain, message=cbor.encode([0, 12, 8, [[None, b"", 4, b"", b"", bytes(12)]]])),
            400,
            "out-of-order",
        ),
        (gp, body(chain=chain, message="not bytes"), 400, "malformed"),
        # The signature's last byte flipped (set to 0, it is unchanged one time in 256).
        (gp, body(chain=[flip_last(story.gp_grant.encoded)], message=first), 401, "bad-signature"),
        (Impostor(gp.did, story.lab.identity), body(chain=chain, message=first), 401, "bad-signature"),
    ]
    for signer, data, status, code in cases:
        before = await snapshot(patient)
        answer = await send_signed(story.session, signer, "POST", url, data)
        assert (answer.status, answer.code) == (status, code), code
        await assert_unchanged(patient, before, nonce_spent=not isinstance(signer, Impostor))
    # Unsigned, and replayed.
    before = await snapshot(patient)
    answer = await send(story.session, "POST", url, body=body(chain=chain, message=first))
    assert (answer.status, answer.code) == (401, "bad-signature")
    await assert_unchanged(patient, before, nonce_spent=False)
    data = body(chain=chain, message=first)
    headers = signed_headers(gp, "POST", url, data)
    assert (await send(story.session, "POST", url, body=data, headers=headers)).status == 200
    before = await snapshot(patient)
    replayed = await send(story.session, "POST", url, body=data, headers=headers)
    assert (replayed.status, replayed.code) == (409, "replay")
    await assert_unchanged(patient, before, nonce_spent=False)


async def test_records_outside_the_view_are_never_served(story: Story) -> None:
    hidden = [
        e.id
        for e in await story.patient.h.store.records(AcceptedEntry, signer=story.patient.did)
        if e.record.doc in (story.docs["lithium"], story.docs["xray"])
    ]
    answer = await send_signed(
        story.session,
        story.gp.identity,
        "POST",
        f"{story.patient.url}/v0/records",
        body(chain=[story.gp_grant.encoded], ids=hidden),
    )
    assert answer.status == 200 and answer.decoded["records"] == []
    too_many = body(chain=[story.gp_grant.encoded], ids=[bytes(32)] * 513)
    before = await snapshot(story.patient)
    answer = await send_signed(
        story.session, story.gp.identity, "POST", f"{story.patient.url}/v0/records", too_many
    )
    assert (answer.status, answer.code) == (400, "malformed")
    await assert_unchanged(story.patient, before, nonce_spent=True)


async def test_syncs_cut_at_random_points_converge(story: Story) -> None:
    proxy = await route_gp_through_proxy(story)
    gp, patient = story.gp.clinic, story.patient.did
    rnd = random.Random(7)
    try:
        cut = 0
        for i in range(100):
            if i % 10 == 0:
                # Something new on the patient's node now and then.
                doc = await story.lab.clinic.deposit(
                    patient,
                    f"Sodium {130 + i} mmol/L\n".encode(),
                    title=f"Sodium {i}",
                    category="lab",
                    doc_type="lab-result",
                    now=now(),
                )
                await story.lab.clinic.flush_outbox()
                await story.patient.patient.accept(doc, now=now())
            proxy.cut_after(rnd.randrange(50, 6000))
            try:
                await gp.sync(patient, now=now())
            except PeerUnreachable:
                cut += 1
        proxy.cut_after(1 << 40)  # no more faults: the last sync completes
        final = await gp.sync(patient, now=now())
        assert cut > 10, "the proxy cut too few syncs to mean anything"
        view = await patient_view(story.patient.patient, story.gp.did, [story.gp_grant], now=now())
        mine = await gp.sync_items(patient)
        assert {i for _, i in mine.items(0, len(mine))} == set(view.records)
        assert not final.documents_failed
        assert await gp.missing_bodies(patient) == []
        rows = await story.gp.h.db.execute_fetchall(
            "SELECT id, count(*) FROM records GROUP BY id HAVING count(*) > 1"
        )
        assert rows == []
    finally:
        await proxy.close()


async def test_a_depositing_clinic_syncs_the_control_records_only(story: Story) -> None:
    lab, patient = story.lab.clinic, story.patient.did
    report = await lab.sync(patient, now=now())
    assert report.records_stored > 0 and report.documents_fetched == 0
    assert await story.lab.h.store.records(AcceptedEntry, signer=patient) == []
    assert await story.lab.h.store.records(StateHead, signer=patient)


async def test_an_answer_with_records_not_asked_for_stores_nothing(
    story: Story, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A patient's node that lies cannot be made from ours: its answers are replaced here.
    gp, patient = story.gp.clinic, story.patient.did
    real_call = gp.client.call
    entries = await story.patient.h.store.records(AcceptedEntry, signer=patient)
    extra = next(e.encoded for e in entries if e.record.doc == story.docs["xray"])  # outside the GP's view

    async def lying(method: str, url: str, **fields: object) -> dict[str, object]:
        answer = await real_call(method, url, **fields)  # type: ignore[arg-type]
        if url.endswith("/v0/records"):
            answer = {**answer, "records": [*answer["records"], extra]}
        return answer

    monkeypatch.setattr(gp.client, "call", lying)
    before = await snapshot(story.gp)
    with pytest.raises(RemoteProtocolError) as caught:
        await gp.sync(patient, now=now())
    assert caught.value.code.value == "malformed"
    after = await snapshot(story.gp)
    changed = sorted(t for t in before.digest if t != "nonces" and before.digest[t] != after.digest[t])
    assert changed == [], changed


async def _granted_node(
    story: Story, path: Path, name: str, *, scope: Scope, actions: tuple[str, ...], purpose: str, days: int
) -> tuple[ServedNode, Signed[Grant]]:
    """A new node, served, connected by invitation, and granted ``actions`` over ``scope``; stop it when done."""
    patient = story.patient
    node = await ServedNode.create(path, role="clinic", name=name)
    try:
        invitation = await patient.patient.create_invitation(label=name, now=now())
        await node.clinic.connect(invitation.url(), now=now())
        grant = await patient.patient.grant(
            audience=node.did, scope=scope, actions=actions, purpose=purpose, days=days, now=now()
        )
    except BaseException:
        await node.stop()
        raise
    return node, grant


async def _enrolled_phone(
    story: Story, tmp_path: Path, name: str = "phone"
) -> tuple[ServedNode, Signed[Grant]]:
    """A device of the patient, served, connected and holding a device grant (US-12); stop it when done."""
    return await _granted_node(
        story,
        tmp_path / name,
        f"Camille's {name}",
        scope=Scope(past=True, future=True),
        actions=("read", "delegate", "manage"),
        purpose="device",
        days=365,
    )


async def test_a_device_syncs_the_whole_record_and_what_it_issued_lapses_with_it(
    story: Story, tmp_path: Path
) -> None:
    """US-12 with the decision of [API-46]: a device grant carries manage; what the device issued dies with it."""
    patient, lab = story.patient, story.lab
    phone, device_grant = await _enrolled_phone(story, tmp_path)
    try:
        await phone.clinic.poll(patient.did, now=now())
        report = await phone.clinic.sync(patient.did, now=now())
        # The whole record: every entry (the GP's restriction does not apply to the device), every
        # grant the patient issued, the private restriction, every body.
        assert {e.record.doc for e in await phone.h.store.records(AcceptedEntry, signer=patient.did)} == set(
            story.docs.values()
        )
        assert await phone.h.store.records(PrivateRestriction, signer=patient.did)
        assert story.gp_grant.id in {g.id for g in await phone.h.store.records(Grant, signer=patient.did)}
        # Its reads are in the patient's audit log; its next sync brings a checkpoint of that log, which
        # the log must go on matching.
        await phone.clinic.sync(patient.did, now=now())
        (checkpoint,) = await phone.h.store.records(AuditCheckpoint, signer=patient.did)
        assert checkpoint.record.entry_hash == (await patient.h.store.audit_tail())[1]
        assert (await patient.patient.verify_audit())[0]
        assert report.documents_fetched == len(story.docs) and not report.documents_failed
        # The device acts for the patient as far as its grant allows: it delegates lab results to the lab.
        child = await phone.clinic.delegate(
            patient.did, to=lab.did, to_endpoint=lab.url, categories=("lab",), days=30, now=now()
        )
        assert child.record.parent == device_grant.id
        assert await lab.clinic.fetch(patient.did, story.docs["cbc"], now=now())
        # Both ways: the device's next sync sends the patient's node the grant it issued.
        pushed = await phone.clinic.sync(patient.did, now=now())
        assert pushed.records_pushed == 1
        assert child.id in {g.id for g in await patient.h.store.records(Grant, signer=phone.did)}
        assert (await phone.clinic.sync(patient.did, now=now())).records_pushed == 0
        # A clinic cannot push: its chain has no manage.
        answer = await send_signed(
            story.session,
            story.gp.identity,
            "POST",
            f"{patient.url}/v0/push",
            body(chain=[story.gp_grant.encoded], records=[child.encoded]),
        )
        assert (answer.status, answer.code) == (403, "action-not-granted")
        # A device pushes only what it issued under its device grant: anything else stores nothing.
        stray = sign_record(dataclasses.replace(child.record, parent=story.gp_grant.id), phone.identity)
        forged = sign_record(dataclasses.replace(child.record, nonce=bytes(16)), lab.identity)
        device_chain = [device_grant.encoded]
        for record, status, code in ((stray, 400, "malformed"), (forged, 401, "bad-signature")):
            before = await snapshot(patient)
            answer = await send_signed(
                story.session,
                phone.identity,
                "POST",
                f"{patient.url}/v0/push",
                body(chain=device_chain, records=[record.encoded]),
            )
            assert (answer.status, answer.code) == (status, code)
            await assert_unchanged(patient, before, nonce_spent=True)
        # The phone is lost: the patient revokes its grant; what it issued lapses with it.
        await patient.patient.revoke(device_grant.id, now=now())
        with pytest.raises(RemoteProtocolError) as caught:
            await lab.clinic.fetch(patient.did, story.docs["cbc"], now=now())
        assert caught.value.code.value == "revoked"
        # And the phone itself learns it at its next sync: its copies are destroyed.
        await phone.clinic.sync(patient.did, now=now())
        assert await phone.h.store.held_copy(story.docs["cbc"]) is None
        # A log cut below a checkpoint still chains, but no longer matches what the devices keep.
        async with patient.h.store.transaction():
            await patient.h.db.execute("DELETE FROM audit WHERE seq >= ?", (checkpoint.record.seq,))
        ok, _count, message = await patient.patient.verify_audit()
        assert not ok and "checkpoint" in message
    finally:
        await phone.stop()


async def test_private_restrictions_travel_to_a_device_sealed(story: Story, tmp_path: Path) -> None:
    """[CAP-15]: between the patient's nodes a private restriction travels encrypted, never readable on the path."""
    patient = story.patient
    phone, device_grant = await _enrolled_phone(story, tmp_path)
    try:
        (restriction,) = await patient.h.store.records(PrivateRestriction, signer=patient.did)
        answer = await send_signed(
            story.session,
            phone.identity,
            "POST",
            f"{patient.url}/v0/records",
            body(chain=[device_grant.encoded], ids=[restriction.id]),
        )
        fields = answered(answer)
        assert restriction.encoded not in answer.body and b"PSY" not in answer.body
        assert fields["records"] == []
        (box,) = fields["sealed"]
        assert open_sealed(box, phone.h.encryption) == restriction.encoded
        # The device's sync opens it and keeps it as the patient signed it.
        await phone.clinic.sync(patient.did, now=now())
        assert [r.id for r in await phone.h.store.records(PrivateRestriction, signer=patient.did)] == [
            restriction.id
        ]
    finally:
        await phone.stop()


async def test_a_device_syncs_the_grants_another_device_issued_and_nothing_else_signed_by_others(
    story: Story, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """[API-46], [API-48], [API-45]: a grant the phone issued and pushed is in the tablet's view, signed by the
    phone; the tablet takes it (checked against the phone's device grant), even once the phone is revoked,
    and its syncs go on converging.  A grant signed by anyone else, or by the phone under another parent,
    is refused with ``bad-signature`` and nothing of that answer is stored."""
    patient, lab = story.patient, story.lab
    phone, phone_grant = await _enrolled_phone(story, tmp_path, "phone")
    tablet, _tablet_grant = await _enrolled_phone(story, tmp_path, "tablet")
    try:
        assert not (await tablet.clinic.sync(patient.did, now=now())).documents_failed
        await phone.clinic.poll(patient.did, now=now())
        child = await phone.clinic.delegate(
            patient.did, to=lab.did, to_endpoint=lab.url, categories=("lab",), days=30, now=now()
        )
        assert (await phone.clinic.sync(patient.did, now=now())).records_pushed == 1
        await tablet.clinic.sync(patient.did, now=now())
        assert child.id in {g.id for g in await tablet.h.store.records(Grant, signer=phone.did)}
        # The phone is lost: the tablet still syncs, and learns of the revocation.
        revocation = await patient.patient.revoke(phone_grant.id, now=now())
        await tablet.clinic.sync(patient.did, now=now())
        assert revocation.id in {r.id for r in await tablet.h.store.records(Revocation)}
        idle = await tablet.clinic.sync(patient.did, now=now())
        assert (idle.rounds, idle.records_fetched) == (1, 0), "the tablet holds its whole view"
        # A third device, whose records come one per answer, the phone's grant first: it waits for the
        # phone's device grant, then is taken.
        real_reconcile = sync._reconcile

        async def child_first(*args: Any) -> tuple[list[bytes], list[bytes]]:
            need, have = await real_reconcile(*args)
            return sorted(need, key=lambda record_id: record_id != child.id), have

        laptop, _laptop_grant = await _enrolled_phone(story, tmp_path, "laptop")
        try:
            with monkeypatch.context() as patched:
                patched.setattr(sync, "_reconcile", child_first)
                patched.setattr(sync, "MAX_IDS", 1)
                await laptop.clinic.sync(patient.did, now=now(), bodies=False)
            assert child.id in {g.id for g in await laptop.h.store.records(Grant, signer=phone.did)}
        finally:
            await laptop.stop()
        # What the view may not hold: a grant under the phone's device grant signed by the lab, and one the
        # phone signed under another parent.  (Only a patient's node that lies would serve them.)
        t = now()
        forged = sign_record(dataclasses.replace(child.record, nonce=bytes(16), iat=t), lab.identity)
        stray = sign_record(
            dataclasses.replace(child.record, parent=story.gp_grant.id, nonce=bytes(16), iat=t),
            phone.identity,
        )
        for record in (forged, stray):
            await tablet.clinic.sync(patient.did, now=now())  # the refused record is the only one it lacks
            async with patient.h.store.transaction():
                await patient.h.store.put_record(record, now=t, subject=lab.did.encode())
            try:
                before = await snapshot(tablet)
                with pytest.raises(RemoteProtocolError) as caught:
                    await tablet.clinic.sync(patient.did, now=now())
                assert caught.value.code.value == "bad-signature"
                after = await snapshot(tablet)
                changed = sorted(
                    t for t in before.digest if t != "nonces" and before.digest[t] != after.digest[t]
                )
                assert changed == [], changed
            finally:
                async with patient.h.store.transaction():
                    await patient.h.db.execute("DELETE FROM records WHERE id = ?", (record.id,))
    finally:
        await phone.stop()
        await tablet.stop()


async def test_a_device_pushes_what_it_issued_in_pushes_of_at_most_512_records(
    story: Story, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """[API-48]: a push holds at most 512 records; a device that issued more since its last sync pushes them
    in several pushes, each revocation with or after its grant, and its next sync pushes nothing."""
    patient = story.patient
    phone, device_grant = await _enrolled_phone(story, tmp_path)
    try:
        await phone.clinic.sync(patient.did, now=now(), bodies=False)
        t = now()
        issued = [
            sign_record(
                Grant(
                    audience=story.gp.did,
                    scope=Scope(categories=("lab",), past=True, future=True),
                    actions=("read",),
                    purpose="device",
                    iat=t,
                    nbf=t,
                    exp=t + 86_400,
                    parent=device_grant.id,
                    nonce=i.to_bytes(16, "big"),
                ),
                phone.identity,
            )
            for i in range(513)
        ]
        revocations = [
            sign_record(Revocation(grant=g.id, iat=t), phone.identity) for g in (issued[0], issued[-1])
        ]
        async with phone.h.store.transaction():  # as 513 calls of ClinicNode.delegate would keep them
            for grant in issued:
                await phone.h.store.put_record(grant, now=t, subject=story.gp.did.encode())
            for revocation in revocations:
                await phone.h.store.put_record(revocation, now=t, subject=revocation.record.grant)
        pushes: list[list[bytes]] = []
        real_call = phone.clinic.client.call

        async def counting(method: str, url: str, **fields: Any) -> dict[str, Any]:
            if url.endswith("/v0/push"):
                pushes.append(fields["records"])
            return await real_call(method, url, **fields)

        monkeypatch.setattr(phone.clinic.client, "call", counting)
        report = await phone.clinic.sync(patient.did, now=now(), bodies=False)
        assert report.records_pushed == 515
        assert len(pushes) == 2 and all(len(records) <= 512 for records in pushes)
        # Each revocation in the same push as its grant, or a later one.
        order = [open_any_record(encoded).id for records in pushes for encoded in records]
        for revocation in revocations:
            assert order.index(revocation.record.grant) < order.index(revocation.id)
        held = {g.id for g in await patient.h.store.records(Grant, signer=phone.did)}
        assert {g.id for g in issued} <= held
        assert {r.id for r in revocations} <= {r.id for r in await patient.h.store.records(Revocation)}
        assert (await phone.clinic.sync(patient.did, now=now(), bodies=False)).records_pushed == 0
    finally:
        await phone.stop()


async def test_the_patient_sees_and_revokes_the_grants_its_device_gave(story: Story, tmp_path: Path) -> None:
    """[API-48]: what a device gives appears in the patient's record; 7.5: any issuer up the chain revokes.
    ``fedrecord grants`` lists the grant the phone gave the lab (given by the phone), ``fedrecord inbox``
    names the lab among those who would see a new lab result, and ``fedrecord revoke`` ends it."""
    patient, lab = story.patient, story.lab
    phone, _device_grant = await _enrolled_phone(story, tmp_path)
    try:
        await phone.clinic.poll(patient.did, now=now())
        child = await phone.clinic.delegate(
            patient.did, to=lab.did, to_endpoint=lab.url, categories=("lab",), days=30, now=now()
        )
        assert (await phone.clinic.sync(patient.did, now=now(), bodies=False)).records_pushed == 1
        rows = {row["grant"]: row for row in await cli_json(patient, "grants")}
        row = rows[child.id.hex()]
        assert (row["by"], row["by_name"], row["to"], row["state"]) == (
            phone.did,
            "Camille's phone",
            lab.did,
            "active",
        )
        assert rows[story.gp_grant.id.hex()]["by"] is None
        doc = await lab.clinic.deposit(
            patient.did,
            b"Ferritin 80 ug/L\n",
            title="Ferritin",
            category="lab",
            doc_type="lab-result",
            now=now(),
        )
        await lab.clinic.flush_outbox()
        (waiting,) = [item for item in await cli_json(patient, "inbox") if item["doc"] == doc.hex()]
        assert "Laboratoire Pasteur" in waiting["would_be_seen_by"]
        await patient.patient.reject(doc, now=now())
        # An id that names no grant of the record: not-found, nothing revoked.
        before = await snapshot(patient)
        with pytest.raises(AssertionError, match="not-found"):
            await cli_json(patient, "revoke", "ab" * 32)
        await assert_unchanged(patient, before, nonce_spent=False)
        answer = await cli_json(patient, "revoke", child.id.hex()[:16])
        assert answer["grant"] == child.id.hex()
        with pytest.raises(RemoteProtocolError) as caught:
            await lab.clinic.fetch(patient.did, story.docs["cbc"], now=now())
        assert caught.value.code.value == "revoked"
        rows = {row["grant"]: row for row in await cli_json(patient, "grants")}
        assert rows[child.id.hex()]["state"] == "revoked"
    finally:
        await phone.stop()


async def test_a_device_holds_the_documents_the_patient_hid_but_not_what_a_restriction_keeps_from_it(
    story: Story, tmp_path: Path
) -> None:
    """US-12, [API-46], [API-22] step 6: hiding keeps a document from others, not from the patient's own
    devices: a backup box lists, fetches and holds the hidden X-ray, and its sync reports no failure.  A
    restriction naming the box keeps the lithium level from it on purpose: its entry is not in the box's
    view, and a fetch of it is answered not-found, storing nothing."""
    patient = story.patient
    xray, lithium = story.docs["xray"], story.docs["lithium"]
    await patient.patient.hide(xray)
    box, device_grant = await _enrolled_phone(story, tmp_path, "backup box")
    try:
        await patient.patient.restrict(audience=box.did, labels=("PSY",), now=now())
        report = await box.clinic.sync(patient.did, now=now())
        assert report.documents_failed == [], report.documents_failed
        entries = {e.record.doc for e in await box.h.store.records(AcceptedEntry, signer=patient.did)}
        assert xray in entries and lithium not in entries
        assert await box.h.store.held_copy(xray) is not None
        await box.clinic.poll(patient.did, now=now())
        assert await box.clinic.read_held(xray, now=now()) == b"No focal consolidation.\n"
        answer = await send_signed(
            story.session, box.identity, "POST", f"{patient.url}/v0/list", body(chain=[device_grant.encoded])
        )
        listed = {item["doc"] for item in answer.decoded["documents"]}
        assert xray in listed and lithium not in listed
        # Still hidden from everyone else: a grantee of the whole record neither lists nor fetches it.
        lab = story.lab
        whole = await patient.patient.grant(
            audience=lab.did, scope=Scope(past=True, future=True), actions=("read",), purpose="treatment",
            days=1, now=now(),
        )  # fmt: skip
        await lab.clinic.poll(patient.did, now=now())
        answer = await send_signed(
            story.session, lab.identity, "POST", f"{patient.url}/v0/list", body(chain=[whole.encoded])
        )
        assert xray not in {item["doc"] for item in answer.decoded["documents"]}
        for reader, doc in ((lab, xray), (box, lithium)):
            before = await snapshot(patient)
            with pytest.raises(RemoteProtocolError) as caught:
                await reader.clinic.fetch(patient.did, doc, now=now())
            assert caught.value.code.value == "not-found"
            await assert_unchanged(patient, before, nonce_spent=True)
        await patient.patient.revoke(whole.id, now=now())
    finally:
        await patient.patient.hide(xray, False)
        await box.stop()


async def _view_over_http(story: Story, requester: ServedNode, chain: list[bytes]) -> list[Any]:
    """Every record a requester's chain reaches through ``/v0/sync`` and ``/v0/records``, opened."""
    reconciler = Reconciler(SortedItems())
    message = reconciler.initiate()
    while message is not None:
        answer = await send_signed(
            story.session,
            requester.identity,
            "POST",
            f"{story.patient.url}/v0/sync",
            body(chain=chain, message=message),
        )
        assert answer.status == 200, answer.body
        message = reconciler.receive(answer.decoded["message"])
    answer = await send_signed(
        story.session,
        requester.identity,
        "POST",
        f"{story.patient.url}/v0/records",
        body(chain=chain, ids=reconciler.need),
    )
    assert answer.status == 200, answer.body
    return [open_any_record(encoded) for encoded in answer.decoded["records"]]


async def test_manage_outside_a_device_grant_gives_only_the_chains_scope(
    story: Story, tmp_path: Path
) -> None:
    """A narrow child that kept manage, or a patient's narrow grant with manage: no whole record, no push."""
    patient, lab = story.patient, story.lab
    phone, device_grant = await _enrolled_phone(story, tmp_path)
    try:
        t = now()
        narrow = Scope(categories=("lab",), past=True, future=True)
        child = sign_record(
            Grant(
                audience=lab.did,
                scope=narrow,
                actions=("manage", "read"),
                purpose="device",
                iat=t,
                nbf=t,
                exp=t + 30 * 86_400,
                parent=device_grant.id,
                nonce=bytes(16),
            ),
            phone.identity,
        )
        patients_own = await patient.patient.grant(
            audience=lab.did, scope=narrow, actions=("manage", "read"), purpose="device", days=30, now=now()
        )
        for chain in ([device_grant.encoded, child.encoded], [patients_own.encoded]):
            records = await _view_over_http(story, lab, chain)
            entries = {r.record.doc for r in records if isinstance(r.record, AcceptedEntry)}
            lab_results = {
                story.docs["cbc"],
                story.docs["lithium"],
            }  # category lab; no restriction names the lab
            assert entries == lab_results, "the chain's scope, not the whole record"
            assert not [r for r in records if isinstance(r.record, PrivateRestriction)]
            assert story.gp_grant.id not in {r.id for r in records}, "nobody else's grants"
            before = await snapshot(patient)
            answer = await send_signed(
                story.session,
                lab.identity,
                "POST",
                f"{patient.url}/v0/push",
                body(chain=chain, records=[child.encoded]),
            )
            assert (answer.status, answer.code) == (403, "action-not-granted")
            await assert_unchanged(patient, before, nonce_spent=True)
    finally:
        await phone.stop()


async def test_fedrecord_sync_command(story: Story) -> None:
    """``fedrecord sync --json`` in a process of its own, against the GP's home, while its node serves."""
    report = (await cli_json(story.gp, "sync"))["patients"][story.patient.did]
    assert report["documents_fetched"] == 1 and report["records_stored"] > 0
    assert await story.gp.clinic.read_held(story.docs["cbc"], now=now())


async def test_the_sync_that_brings_a_first_grant_also_syncs_what_it_opens(
    story: Story, tmp_path: Path
) -> None:
    """A clinic granted access since it last synced gets the documents in that same sync, not the next."""
    patient = story.patient
    lab_results = Scope(categories=("lab",), past=True, future=True)
    clinic, _grant = await _granted_node(
        story,
        tmp_path / "radiology",
        "Radiologie",
        scope=lab_results,
        actions=("read",),
        purpose="treatment",
        days=30,
    )
    try:
        report = await clinic.clinic.sync(patient.did, now=now())
        assert report.documents_fetched == 2 and not report.documents_failed  # the two lab results
        assert await clinic.h.store.held_copy(story.docs["cbc"]) is not None
    finally:
        await clinic.stop()


async def test_a_clinic_whose_grant_lists_manage_syncs_without_pushing(story: Story, tmp_path: Path) -> None:
    """manage in a narrow grant makes no device: its holder pushes nothing, and its sync goes through."""
    patient = story.patient
    lab_results = Scope(categories=("lab",), past=True, future=True)
    clinic, _grant = await _granted_node(
        story,
        tmp_path / "cardiology",
        "Cardiologie",
        scope=lab_results,
        actions=("manage", "delegate", "read"),
        purpose="treatment",
        days=30,
    )
    try:
        await clinic.clinic.poll(patient.did, now=now())
        await clinic.clinic.delegate(
            patient.did, to=story.gp.did, to_endpoint=story.gp.url, days=10, now=now()
        )
        report = await clinic.clinic.sync(patient.did, now=now())
        assert report.records_pushed == 0 and report.documents_fetched == 2 and not report.documents_failed
    finally:
        await clinic.stop()


async def test_a_grantee_that_synced_an_entry_is_told_of_its_deletion(story: Story) -> None:
    """A grantee holding a document's entry without its body (a records-only sync) learns of its deletion:
    the tombstone goes to the nodes whose grants reach it ([API-16]), and its syncs stop asking for the body."""
    gp, patient = story.gp.clinic, story.patient.did
    doc = await story.lab.clinic.deposit(
        patient, b"Sodium 140 mmol/L\n", title="Sodium", category="lab", doc_type="lab-result", now=now()
    )
    await story.lab.clinic.flush_outbox()
    await story.patient.patient.accept(doc, now=now())
    await gp.sync(patient, now=now(), bodies=False)
    assert doc in await gp.missing_bodies(patient)
    await story.patient.patient.delete(doc, now=now())
    assert story.gp.did in await story.patient.patient.expected_attestations(doc)
    await gp.poll(patient, now=now())
    report = await gp.sync(patient, now=now())
    assert not report.documents_failed and doc not in await gp.missing_bodies(patient)
