"""Regressions found by the conformance suite's capabilities cases (src/fedrecord/conformance/cases/capabilities.py).

- A revocation a device pushes changes the patient's revocation set: the node signs a new state
  head counting it, in the same transaction ([HEAD-2], [API-17]).
- A fetch's offered profile replaces the stored one when its ``seq`` is greater *or equal*
  ([API-22] step 7).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import unicodedata
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from fedrecord.core import (
    Code,
    Grant,
    LocalProtocolError,
    NodeProfile,
    Revocation,
    Scope,
    Signed,
    SigningIdentity,
    StateHead,
    sign_record,
)
from fedrecord.core.identity import EncryptionKeyPair
from fedrecord.core.records import EncryptionKey

from .node_helpers import (
    DAY,
    Story,
    answered,
    assert_unchanged,
    body,
    build_story,
    fetch_body,
    now,
    receipt_for,
    refused,
    send_signed,
    snapshot,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def story(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Story]:
    built = await build_story(tmp_path_factory.mktemp("decisions"))
    try:
        yield built
    finally:
        await built.close()


def grant(
    issuer: SigningIdentity, audience: str, actions: tuple[str, ...], parent: bytes | None = None
) -> Signed[Grant]:
    t = now()
    return sign_record(
        Grant(
            audience=audience,
            scope=Scope(past=True, future=True),
            actions=actions,
            purpose="treatment",
            iat=t,
            nbf=t - 5,
            exp=t + DAY,
            parent=parent,
            nonce=os.urandom(16),
        ),
        issuer,
    )


async def newest_head(story: Story) -> Signed[StateHead]:
    head = await story.patient.h.store.newest_record(StateHead, signer=story.patient.did)
    assert head is not None
    return head


async def test_a_pushed_revocation_signs_a_new_head(story: Story) -> None:
    device = SigningIdentity.from_seed(os.urandom(32))
    device_grant = grant(story.patient.identity, device.did, ("read", "delegate", "manage"))
    child = grant(device, SigningIdentity.from_seed(os.urandom(32)).did, ("read",), parent=device_grant.id)
    await story.patient.patient.keep_own([device_grant.encoded], now=now())
    await story.patient.patient.keep_pushed([child], now=now())
    before = await newest_head(story)
    revocation = sign_record(Revocation(grant=child.id, iat=now()), device)
    assert await story.patient.patient.keep_pushed([revocation], now=now()) == 1
    after = await newest_head(story)
    assert after.record.seq == before.record.seq + 1 and after.record.prev == before.id
    named = sorted(r.record.grant for r in await story.patient.h.store.records(Revocation))
    assert after.record.revocation_count == len(named)
    assert after.record.revocations == hashlib.sha256(b"".join(named)).digest()
    # The same revocation pushed again changes nothing: no new head.
    assert await story.patient.patient.keep_pushed([revocation], now=now()) == 0
    assert (await newest_head(story)).id == after.id


def profile(identity: SigningIdentity, key: bytes, *, seq: int, valid: bool) -> bytes:
    t = now()
    window = (t - DAY, t + DAY) if valid else (t - 2 * DAY, t - DAY)
    return sign_record(
        NodeProfile(
            name="Delegate",
            role="clinic",
            endpoints=("http://127.0.0.1:9",),
            enc_keys=(EncryptionKey(key=key, nbf=window[0], exp=window[1]),),
            versions=(0,),
            seq=seq,
            iat=t,
        ),
        identity,
    ).encoded


async def test_an_offered_profile_of_equal_seq_replaces_the_stored_one(story: Story) -> None:
    reader = SigningIdentity.from_seed(os.urandom(32))
    keys = EncryptionKeyPair.from_seed(os.urandom(32))
    chain = [grant(story.patient.identity, reader.did, ("read",))]
    doc = story.docs["cbc"]
    receipt = receipt_for(reader, patient=story.patient.did, doc=doc, grant=chain[0])
    url = story.patient.url + "/v0/fetch"
    encoded = [g.encoded for g in chain]
    stale = profile(reader, keys.public_key, seq=7, valid=False)
    answer = await send_signed(
        story.session, reader, "POST", url, body(chain=encoded, receipt=receipt, profile=stale)
    )
    assert (answer.status, answer.code) == (400, "bad-key")
    current = profile(reader, keys.public_key, seq=7, valid=True)
    answer = await send_signed(
        story.session, reader, "POST", url, body(chain=encoded, receipt=receipt, profile=current)
    )
    assert answer.status == 200, answer.body


@pytest.mark.parametrize("label", ["mental health", "sexual-health-ñ", "", "-PSY", "x" * 65])
async def test_labels_the_patient_adds_are_tokens(story: Story, label: str) -> None:
    """At accept and afterwards, as an author's labels are ([REC-7]): refused, nothing stored."""
    doc = await story.lab.clinic.deposit(
        story.patient.did, b"token labels", title="Labels", category="lab", doc_type="lab-result", now=now()
    )
    await story.lab.clinic.flush_outbox()
    patient = story.patient.patient
    with pytest.raises(LocalProtocolError) as caught:
        await patient.accept(doc, labels=["PSY", label], now=now())
    assert caught.value.code is Code.MALFORMED
    assert doc in {item.doc for item in await patient.inbox()}, "still waiting in the inbox"
    await patient.accept(doc, labels=["PSY"], now=now())
    with pytest.raises(LocalProtocolError):
        await patient.label(doc, [label])
    assert await patient.label(doc, ["SEX"]) == ["PSY", "SEX"]
    assert await patient.label(doc, [label], remove=True) == ["PSY", "SEX"], "removing checks nothing"


async def test_peers_that_read_alike_are_told_apart(story: Story) -> None:
    """A clinic that takes the GP's name (or it with a zero-width space) shows with the end of its did, as the GP does."""
    patient = story.patient.patient
    gp_name = story.gp.h.config.name
    assert await patient.peer_name(story.gp.did) == gp_name
    impostors = []
    decomposed = unicodedata.normalize("NFD", gp_name.upper())  # accents written apart, other case
    for name in (
        gp_name,
        gp_name.replace(" ", " \u200b", 1),
        "\u202eevil\u202c lab",
        decomposed,
        "Dr X (…abcdefgh)",
    ):
        identity = SigningIdentity.from_seed(os.urandom(32))
        keys = EncryptionKeyPair.from_seed(os.urandom(32))
        t = now()
        profile = NodeProfile(
            name=name,
            role="clinic",
            endpoints=("http://127.0.0.1:9",),
            enc_keys=(EncryptionKey(key=keys.public_key, nbf=t - DAY, exp=t + DAY),),
            versions=(0,),
            seq=t,
            iat=t,
        )
        async with story.patient.h.store.transaction():
            await story.patient.h.store.remember_peer(sign_record(profile, identity))
        impostors.append(identity.did)
    shown = [await patient.peer_name(did) for did in (story.gp.did, *impostors)]
    assert shown[0] == f"{gp_name} (…{story.gp.did[-8:]})"
    assert shown[1] == f"{gp_name} (…{impostors[0][-8:]})"
    assert shown[2] == f"{gp_name} (…{impostors[1][-8:]})", "the zero-width space is gone, the name is a twin"
    assert shown[3] == "evil lab", "no direction override reaches the page"
    assert shown[4].endswith(f"(…{impostors[3][-8:]})"), "the same name in another case and form is a twin"
    assert shown[5] == f"Dr X (…abcdefgh) (…{impostors[4][-8:]})", "a name imitating the mark is marked"


async def test_the_records_table_indexes_do_not_decide(story: Story) -> None:
    """A grant row whose subject or signer column was changed is not taken for what the column says."""
    patient = story.patient.patient
    lab_grant = next(g for g in await patient.all_grants() if g.record.audience == story.lab.did)
    stranger = SigningIdentity.from_seed(os.urandom(32))
    forged = sign_record(dataclasses.replace(lab_grant.record, nonce=os.urandom(16)), stranger)
    db = story.patient.h.db
    async with db.transaction():
        await db.execute("UPDATE records SET subject = ? WHERE id = ?", (story.gp.did.encode(), lab_grant.id))
        await db.execute(
            "INSERT INTO records (id, typ, signer, subject, encoded, received) VALUES (?, ?, ?, ?, ?, ?)",
            (forged.id, Grant.TYPE.value, story.patient.did, story.gp.did.encode(), forged.encoded, now()),
        )
    try:
        state = await patient.state_for(story.gp.did, now=now())
        assert lab_grant.encoded not in state["grants"], "another audience's grant is not handed out"
        assert forged.encoded not in state["grants"] and forged.id not in {
            g.id for g in await patient.all_grants()
        }
    finally:
        async with db.transaction():
            await db.execute(
                "UPDATE records SET subject = ? WHERE id = ?", (story.lab.did.encode(), lab_grant.id)
            )
            await db.execute("DELETE FROM records WHERE id = ?", (forged.id,))


async def test_a_restriction_by_audience_follows_the_grants_it_delegates(story: Story) -> None:
    """The patient hides PSY from a node: a child grant that node signs, even to a key of its own, hides it too."""
    patient = story.patient.patient
    cardiologist, alias = (SigningIdentity.from_seed(os.urandom(32)) for _ in range(2))
    parent = await patient.grant(
        audience=cardiologist.did,
        scope=Scope(categories=("lab",), past=True, future=True),
        actions=("delegate", "read"),
        purpose="treatment",
        days=30,
        now=now(),
    )
    await patient.restrict(audience=cardiologist.did, labels=("PSY",), now=now())
    t = now()
    child = sign_record(
        dataclasses.replace(
            parent.record,
            audience=alias.did,
            actions=("read",),
            iat=t,
            nbf=max(t, parent.record.nbf),
            parent=parent.id,
            nonce=os.urandom(16),
        ),
        cardiologist,
    )
    url = story.patient.url
    for reader, chain in ((cardiologist, [parent]), (alias, [parent, child])):
        listing = await send_signed(
            story.session, reader, "POST", f"{url}/v0/list", body(chain=[g.encoded for g in chain])
        )
        listed = {item["doc"] for item in answered(listing)["documents"]}
        assert story.docs["cbc"] in listed and story.docs["lithium"] not in listed, reader
        hidden = fetch_body(reader, story, story.docs["lithium"], chain)
        refused(
            await send_signed(story.session, reader, "POST", f"{url}/v0/fetch", hidden),
            404,
            "not-found",
            signed=True,
        )


async def test_state_and_views_are_for_nodes_the_patient_knows(story: Story) -> None:
    """Revocations (with the patient's reasons) and the times of the record's changes go to nodes the patient
    connected, granted or let read; a node never met is answered not-found and leaves only its nonce."""
    patient, url = story.patient.patient, story.patient.url
    stranger = SigningIdentity.from_seed(os.urandom(32))
    for path, fields in (
        ("/v0/state", {}),
        ("/v0/sync", {"message": bytes(3)}),
        ("/v0/records", {"ids": []}),
    ):
        before = await snapshot(story.patient)
        answer = await send_signed(story.session, stranger, "POST", f"{url}{path}", body(**fields))
        refused(answer, 404, "not-found", signed=True)
        await assert_unchanged(story.patient, before, nonce_spent=True)
    # Granted by the patient, never connected, never read: known.
    await patient.grant(
        audience=stranger.did,
        scope=Scope(categories=("lab",), past=True),
        actions=("read",),
        purpose="treatment",
        days=1,
        now=now(),
    )
    state = answered(await send_signed(story.session, stranger, "POST", f"{url}/v0/state", body()))
    assert len(state["grants"]) == 1


async def test_the_inbox_names_a_grant_that_starts_tomorrow(story: Story) -> None:
    """Before accepting, the patient sees which grants will read the document: one that starts tomorrow too."""
    patient, t = story.patient, now() - 5  # issued a little before: the deposit is a future document
    tomorrow = sign_record(
        Grant(
            audience=SigningIdentity.from_seed(os.urandom(32)).did,
            scope=Scope(categories=("lab",), future=True),
            actions=("read",),
            purpose="treatment",
            iat=t,
            nbf=t + DAY,
            exp=t + 30 * DAY,
            nonce=os.urandom(16),
        ),
        patient.identity,
    )
    assert await patient.patient.keep_own([tomorrow.encoded], now=now()) == 1
    doc = await story.lab.clinic.deposit(
        patient.did, b"Ferritin 80 ug/L\n", title="Ferritin", category="lab", doc_type="lab-result", now=now()
    )
    await story.lab.clinic.flush_outbox()
    assert tomorrow.id in {g.id for g in await patient.patient.grants_that_would_see(doc, now=now())}


async def test_a_head_signed_before_api_18_still_opens(story: Story) -> None:
    """A node that signed heads with recs and nrecs, upgraded: its newest head opens, and the next one follows it."""
    patient = story.patient.patient
    newest = await newest_head(story)
    legacy = sign_record(
        StateHead(
            seq=newest.record.seq + 1,
            iat=now(),
            revocations=newest.record.revocations,
            revocation_count=newest.record.revocation_count,
            prev=newest.id,
            legacy_records=os.urandom(32),
            legacy_record_count=3,
        ),
        story.patient.identity,
    )
    async with story.patient.h.store.transaction():
        await story.patient.h.store.put_record(legacy, now=now())
    assert answered(
        await send_signed(story.session, story.gp.identity, "POST", f"{story.patient.url}/v0/state", body())
    )
    throwaway = await patient.grant(
        audience=SigningIdentity.from_seed(os.urandom(32)).did,
        scope=Scope(categories=("lab",), past=True),
        actions=("read",),
        purpose="treatment",
        days=1,
        now=now(),
    )
    await patient.revoke(throwaway.id, now=now())
    after = await newest_head(story)
    assert (after.record.seq, after.record.prev, after.record.legacy_records) == (
        legacy.record.seq + 1,
        legacy.id,
        None,
    )


async def test_hiding_psy_in_lower_case_hides_what_the_lab_labelled_psy(story: Story) -> None:
    """Labels match exactly ([REC-7]); the patient who writes ``psy`` means the lab's ``PSY``: it is hidden."""
    reader = SigningIdentity.from_seed(os.urandom(32))
    grant = await story.patient.patient.grant(
        audience=reader.did,
        scope=Scope(categories=("lab",), past=True, future=True),
        actions=("read",),
        purpose="treatment",
        days=1,
        now=now(),
        hide_labels=("psy",),
    )
    listing = await send_signed(
        story.session, reader, "POST", f"{story.patient.url}/v0/list", body(chain=[grant.encoded])
    )
    listed = {item["doc"] for item in answered(listing)["documents"]}
    assert story.docs["cbc"] in listed and story.docs["lithium"] not in listed
