"""What a node may learn of documents it may not read (US-6, [CAP-12], [CAP-15], [API-16], [API-17]).

Real nodes over HTTP.  Each test holds a rule that a whole-record grantee, a lost device, a clinic
connected today or a node that listed a document would otherwise break: none of them learns that a
document kept from it exists, or was deleted.
"""

from __future__ import annotations

import asyncio
import os
from itertools import pairwise
from typing import Any

import pytest

from fedrecord.core import (
    DepositDecision,
    EncryptionKeyPair,
    Grant,
    Scope,
    Signed,
    SigningIdentity,
    StateHead,
    Tombstone,
    cbor,
    open_any_record,
    open_record,
    sign_record,
)
from fedrecord.core.reconcile import Reconciler, SortedItems
from fedrecord.node.client import b64, unb64

from .node_helpers import (
    DAY,
    Answer,
    Story,
    answered,
    body,
    deposit_record,
    now,
    seal_document,
    send,
    send_signed,
    signed_headers,
    throwaway_profile,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")


# --- helpers -----------------------------------------------------------------------------------------


def whole_record_grant(patient: SigningIdentity, audience: str, actions: tuple[str, ...]) -> Signed[Grant]:
    t = now()
    return sign_record(
        Grant(
            audience=audience,
            scope=Scope(past=True, future=True),
            actions=actions,
            purpose="device" if "manage" in actions else "treatment",
            iat=t,
            nbf=t - 5,
            exp=t + 30 * DAY,
            nonce=os.urandom(16),
        ),
        patient,
    )


async def new_accepted_document(story: Story, content: bytes, *, labels: tuple[str, ...] = ()) -> bytes:
    """A lab result deposited by the lab over HTTP and accepted by the patient."""
    doc = await story.lab.clinic.deposit(
        story.patient.did,
        content,
        title="Result",
        category="lab",
        doc_type="lab-result",
        labels=labels,
        now=now(),
    )
    _sent, pending = await story.lab.clinic.flush_outbox()
    assert pending == 0
    await story.patient.patient.accept(doc, now=now())
    return doc


async def state_of(story: Story, who: SigningIdentity) -> dict[str, Any]:
    answer = await send_signed(story.session, who, "POST", f"{story.patient.url}/v0/state", body())
    return answered(answer)


async def view_over_http(story: Story, who: SigningIdentity, chain: list[bytes]) -> list[Signed[Any]]:
    """Every record ``who`` reaches through /v0/sync and /v0/records (plain ones), opened."""
    reconciler = Reconciler(SortedItems())
    message: bytes | None = reconciler.initiate()
    extra = {"chain": chain} if chain else {}
    while message is not None:
        answer = await send_signed(
            story.session, who, "POST", f"{story.patient.url}/v0/sync", body(message=message, **extra)
        )
        assert answer.status == 200, answer.body
        message = reconciler.receive(answer.decoded["message"])
    answer = await send_signed(
        story.session, who, "POST", f"{story.patient.url}/v0/records", body(ids=reconciler.need, **extra)
    )
    assert answer.status == 200, answer.body
    return [open_any_record(encoded) for encoded in answer.decoded["records"]]


async def first_event(story: Story, who: SigningIdentity) -> dict[str, Any]:
    """The state answer carried by the first ``state`` event of ``who``'s event stream (15.14)."""
    target = f"{story.patient.url}/v0/events"
    data = body()
    headers = signed_headers(who, "POST", target, data)
    async with story.session.post(target, data=data, headers=headers) as response:
        assert response.status == 200, await response.read()
        async with asyncio.timeout(10):
            async for line in response.content:
                if line.startswith(b"data: "):
                    decoded: dict[str, Any] = cbor.decode(unb64(line[6:].strip().decode()))
                    return decoded
    raise AssertionError("no event")


# --- 1. a revoked (lost) device is still told of every deletion ---------------------------------------


async def test_a_revoked_device_is_not_told_of_deletions_of_documents_it_never_saw(story: Story) -> None:
    """[API-16]: "It MUST NOT send a requester a tombstone of any other document [than those it read or
    deposited]"; the exception is for a requester that *holds a device grant* ([API-46]).  A lost device
    whose grant the patient revoked (or that expired) holds no device grant any more and no copy (it
    destroyed them on the revocation, [API-19]), yet ``state_for`` takes any device-shaped grant ever
    issued to it, revoked or expired, as a device grant: it is told of every later deletion, with the
    document id and time, of documents added after it was lost and kept from everyone."""
    patient = story.patient
    lost = SigningIdentity.from_seed(os.urandom(32))
    device_grant = whole_record_grant(patient.identity, lost.did, ("read", "delegate", "manage"))
    await patient.patient.keep_own([device_grant.encoded], now=now())
    await patient.patient.revoke(device_grant.id, now=now(), reason="phone lost")
    # After the loss: a document the lost phone never saw, hidden from everyone, then deleted.
    secret = await new_accepted_document(story, b"HIV viral load: undetectable\n", labels=("HIV",))
    await patient.patient.hide(secret)
    await patient.patient.delete(secret, now=now())
    state = await state_of(story, lost)  # still "known": it holds a grant the patient signed
    told = {open_record(t, Tombstone).record.doc for t in state["tombstones"]}
    # And in real time: the first event of its event stream ([API-34]) is the same state answer.
    streamed = {open_record(t, Tombstone).record.doc for t in (await first_event(story, lost))["tombstones"]}
    assert secret not in told | streamed, (
        "a revoked device is told of the deletion of a document it never saw"
    )


async def test_a_revoked_device_gets_from_state_what_its_chainless_sync_withholds(story: Story) -> None:
    """The same node asking the same question two ways ([API-44]: a view holds "the tombstones ... a state
    answer to the requester holds"): its chainless sync view leaves the tombstone out, its state answer
    (and every event of its event stream) carries it."""
    patient = story.patient
    lost = SigningIdentity.from_seed(os.urandom(32))
    device_grant = whole_record_grant(patient.identity, lost.did, ("read", "delegate", "manage"))
    await patient.patient.keep_own([device_grant.encoded], now=now())
    await patient.patient.revoke(device_grant.id, now=now())
    doc = await new_accepted_document(story, b"later result\n")
    await patient.patient.delete(doc, now=now())
    in_state = {open_record(t, Tombstone).record.doc for t in (await state_of(story, lost))["tombstones"]}
    in_view = {r.record.doc for r in await view_over_http(story, lost, []) if isinstance(r.record, Tombstone)}
    assert in_state == in_view, (in_state, in_view)


# --- 2. a deletion signs a head every grantee sees: it learns of documents kept from it ----------------


async def test_deleting_a_document_kept_from_a_grantee_changes_nothing_it_is_sent(story: Story) -> None:
    """US-6 ("A grantee cannot even learn that an excluded document exists"), [CAP-15] ("MUST NOT ... be
    inferable from what is sent"), 12.1 ("it is told of the deletion of a document only if it read or
    deposited it").  The head signed on each deletion ([API-17]) reaches every grantee: a whole-record
    grantee whose listing did not change, but whose head's seq went up with the same revocations
    (``nrevs``, ``revs``), knows that a document kept from it existed and was deleted, and when --
    exactly what [API-18] removed from accepts ("a head signed on each accept ... would tell a grantee
    when documents it may not see arrive").  Spec-level: [API-17] requires that head."""
    patient = story.patient
    reader = SigningIdentity.from_seed(os.urandom(32))
    grant = whole_record_grant(patient.identity, reader.did, ("read",))
    await patient.patient.keep_own([grant.encoded], now=now())
    kept = await new_accepted_document(story, b"psychiatric note\n", labels=("PSY",))
    await patient.patient.hide(kept)
    await patient.patient.revoke(story.gp_grant.id, now=now())  # so that a head exists and is not seq 0 only
    listed_before = answered(
        await send_signed(
            story.session, reader, "POST", f"{patient.url}/v0/list", body(chain=[grant.encoded])
        )
    )["documents"]
    before = await state_of(story, reader)
    await patient.patient.delete(kept, now=now())
    listed_after = answered(
        await send_signed(
            story.session, reader, "POST", f"{patient.url}/v0/list", body(chain=[grant.encoded])
        )
    )["documents"]
    after = await state_of(story, reader)
    assert listed_before == listed_after, "nothing the grantee may see changed"
    head_before = open_record(before["head"], StateHead).record
    head_after = open_record(after["head"], StateHead).record
    assert (head_after.revocation_count, head_after.revocations) == (
        head_before.revocation_count,
        head_before.revocations,
    )
    assert head_after.seq == head_before.seq, (
        f"head {head_before.seq} -> {head_after.seq} with the same revocations: the grantee learns that a "
        "document kept from it was deleted"
    )


# --- 3. the deposit endpoint tells "hidden from you" from "deleted" ------------------------------------


async def _deposit_probe(story: Story, doc: bytes) -> Answer:
    """The GP, which holds a deposit grant, deposits a record naming ``doc`` (step 9 of [API-13] answers
    before the body is read: the stream is a placeholder)."""
    sealed = seal_document(story.gp.identity, story.patient.did, b"probe\n")
    record = deposit_record(story, story.gp, doc, len(sealed.ciphertext), sealed.key)
    target = f"{story.patient.url}/v0/documents/{doc.hex()}"
    headers = signed_headers(
        story.gp.identity,
        "PUT",
        target,
        None,
        streamed=True,
        headers={"Fedrecord-Deposit": b64(record), "Content-Type": "application/octet-stream"},
    )
    return await send(story.session, "PUT", target, body=sealed.ciphertext, headers=headers)


async def test_a_deposit_does_not_tell_a_lister_hidden_from_deleted(story: Story) -> None:
    """[CAP-12] ("A node MUST answer a request refused with out-of-scope or restricted, and a request for a
    document it does not hold, identically"), 12.1 (a grantee "is told of the deletion of a document only
    if it read or deposited it").  The GP listed two lab results (never fetched them).  The patient hides
    one and deletes the other: both leave the GP's listing alike.  A deposit naming each tells them apart:
    ``replay`` "this document was already deposited" (still there, kept from you) against ``replay`` "this
    document was already rejected or deleted"."""
    hidden = await new_accepted_document(story, b"first\n")
    deleted = await new_accepted_document(story, b"second\n")
    listed = {item["doc"] for item in await story.gp.clinic.listing(story.patient.did, now=now())}
    assert {hidden, deleted} <= listed
    await story.patient.patient.hide(hidden)
    await story.patient.patient.delete(deleted, now=now())
    listed = {item["doc"] for item in await story.gp.clinic.listing(story.patient.did, now=now())}
    assert not {hidden, deleted} & listed
    on_hidden, on_deleted = await _deposit_probe(story, hidden), await _deposit_probe(story, deleted)
    assert (on_hidden.status, on_hidden.decoded) == (on_deleted.status, on_deleted.decoded), (
        on_hidden.decoded,
        on_deleted.decoded,
    )


# --- 4. what a restriction keeps from a device still reaches it through the deposit decisions ----------


async def test_a_device_view_holds_nothing_of_a_document_a_restriction_keeps_from_it(story: Story) -> None:
    """[API-46]: "a private restriction applies to a device only if it names the device's grant or node,
    so that the patient may keep documents from one device on purpose. The accepted entry of a document
    such a restriction keeps from the device is left out of the device's view, as from any view of a
    requester that may not fetch it".  The entry is left out, but the patient-signed ``accepted``
    deposit-decision of the same document (its id, its deposit record's id, when it was accepted) is in
    the device's view and served in its records."""
    patient = story.patient
    box = SigningIdentity.from_seed(os.urandom(32))
    device_grant = whole_record_grant(patient.identity, box.did, ("read", "delegate", "manage"))
    await patient.patient.keep_own([device_grant.encoded], now=now())
    await patient.patient.restrict(audience=box.did, labels=("PSY",), now=now())
    lithium = story.docs["lithium"]
    records = await view_over_http(story, box, [device_grant.encoded])
    about = [type(r.record).__name__ for r in records if getattr(r.record, "doc", None) == lithium]
    assert "AcceptedEntry" not in about
    assert not [r for r in records if isinstance(r.record, DepositDecision) and r.record.doc == lithium], (
        about
    )


async def test_a_clinic_connected_today_cannot_count_the_deletions_made_before(story: Story) -> None:
    """Same root as above, over history: a chainless sync view holds every head the patient signed
    ([API-44]).  A clinic that connects today (deposit-only grant: it may read nothing) finds in it one head
    per deletion ever made -- consecutive heads with the same revocations -- so it learns how many documents
    were deleted from the record before it ever met the patient, and when (each head's ``iat``)."""
    patient = story.patient
    for content in (b"one\n", b"two\n"):
        await patient.patient.delete(await new_accepted_document(story, content), now=now())
    newcomer = SigningIdentity.from_seed(os.urandom(32))
    invitation = await patient.patient.create_invitation(label="newcomer", now=now())
    profile = throwaway_profile(newcomer, EncryptionKeyPair.from_seed(os.urandom(32)).public_key)
    connected = await send_signed(
        story.session,
        newcomer,
        "POST",
        f"{patient.url}/v0/connect",
        body(token=invitation.token, profile=profile),
    )
    assert connected.status == 201, connected.body
    heads = sorted(
        (r.record for r in await view_over_http(story, newcomer, []) if isinstance(r.record, StateHead)),
        key=lambda head: head.seq,
    )
    deletions = [
        (older.seq, newer.seq, newer.iat)
        for older, newer in pairwise(heads)
        if (older.revocations, older.revocation_count) == (newer.revocations, newer.revocation_count)
    ]
    assert not deletions, f"a deposit-only newcomer counts {len(deletions)} past deletions: {deletions}"
