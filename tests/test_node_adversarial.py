"""Adversarial HTTP tests against real nodes (issue 3, "Acceptance"): every refusal has its code and stores nothing.

A patient node, a GP and a lab run in this process, each with its own home,
SQLite file and loopback socket (tests/node_helpers.py).  Each test crafts
requests by hand -- unsigned, signed by the wrong key, replayed, out of their
time window, under a grant that is expired, revoked, someone else's or
widened, with bodies that are too large, malformed, compressed or tampered --
and checks the HTTP status, the CBOR error body's ``code``, and that the
refused request left the node's tables (``table_digest``), document files and
temporary files as they were.  Refusals that come after the signature
verified legitimately spend the request's nonce: the ``nonces`` table then has
exactly one more row, and every other table is unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gzip
import os
import random
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from multidict import CIMultiDict

from fedrecord.core import (
    Code,
    Grant,
    KeyWrap,
    RemoteProtocolError,
    Scope,
    SigningIdentity,
    StateHead,
    cbor,
    open_record,
    sign_record,
)
from fedrecord.core.key_wraps import wrap_key
from fedrecord.node.client import b64, unb64
from fedrecord.node.wire import MAX_BODY, MAX_DOCUMENT
from fedrecord.storage.sqlite import integrity_check, transaction

from .node_helpers import (
    DAY,
    Answer,
    Impostor,
    ServedNode,
    Story,
    assert_unchanged,
    body,
    build_story,
    chunked,
    deposit_record,
    document_id_of,
    fetch_body,
    issue_grant,
    now,
    random_doc,
    raw_head,
    raw_request,
    refused,
    seal_document,
    send,
    send_signed,
    signed_headers,
    snapshot,
    stored_stream,
    throwaway_profile,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def story(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Story]:
    built = await build_story(tmp_path_factory.mktemp("nodes"))
    try:
        yield built
    finally:
        await built.close()


def url(story: Story, path: str) -> str:
    return story.patient.url + path


# --- the baseline the refusals are measured against -----------------------------------------------------


async def test_story_baseline_gp_reads_only_the_blood_count(story: Story) -> None:
    """Positive control: the crafted requests used below work when nothing is wrong."""
    gp = story.gp.identity
    listing = await send_signed(
        story.session, gp, "POST", url(story, "/v0/list"), body(chain=[story.gp_grant.encoded])
    )
    assert listing.status == 200
    assert [item["doc"] for item in listing.decoded["documents"]] == [story.docs["cbc"]]
    before = await snapshot(story.patient)
    fetched = await send_signed(
        story.session,
        gp,
        "POST",
        url(story, "/v0/fetch"),
        fetch_body(gp, story, story.docs["cbc"], [story.gp_grant]),
    )
    assert fetched.status == 200 and "Fedrecord-Key-Wrap" in fetched.headers
    assert len(fetched.body) > 0
    after = await snapshot(story.patient)
    assert after.digest["audit"][0] == before.digest["audit"][0] + 1, "the read was receipted"


# --- signatures ------------------------------------------------------------------------------------------

ENDPOINTS = [
    ("POST", "/v0/state"),
    ("POST", "/v0/list"),
    ("POST", "/v0/fetch"),
    ("POST", "/v0/connect"),
    ("POST", "/v0/attestations"),
]


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
async def test_unsigned_request(story: Story, method: str, path: str) -> None:
    before = await snapshot(story.patient)
    answer = await send(
        story.session,
        method,
        url(story, path),
        body=body(chain=[story.gp_grant.encoded]),
        headers={"Content-Type": "application/cbor"},
    )
    refused(answer, 401, "bad-signature")
    await assert_unchanged(story.patient, before, nonce_spent=False)


async def test_unsigned_deposit(story: Story) -> None:
    sealed = seal_document(story.lab.identity, story.patient.did, b"unsigned")
    record = deposit_record(story, story.lab, sealed.doc, len(sealed.ciphertext), sealed.key)
    before = await snapshot(story.patient)
    answer = await send(
        story.session,
        "PUT",
        url(story, f"/v0/documents/{sealed.doc.hex()}"),
        body=sealed.ciphertext,
        headers={"Fedrecord-Deposit": b64(record), "Fedrecord-Streamed": "1"},
    )
    refused(answer, 401, "bad-signature")
    await assert_unchanged(story.patient, before, nonce_spent=False)


async def test_request_signed_by_another_key_than_its_keyid(story: Story) -> None:
    """The GP's did as keyid, the lab's key signing: refused, and the nonce store is not touched."""
    impostor = Impostor(did=story.gp.did, key_of=story.lab.identity)
    before = await snapshot(story.patient)
    answer = await send_signed(
        story.session, impostor, "POST", url(story, "/v0/list"), body(chain=[story.gp_grant.encoded])
    )
    refused(answer, 401, "bad-signature")
    await assert_unchanged(story.patient, before, nonce_spent=False)


async def test_request_with_keyid_swapped_after_signing(story: Story) -> None:
    target = url(story, "/v0/list")
    data = body(chain=[story.gp_grant.encoded])
    headers = signed_headers(story.gp.identity, "POST", target, data)
    headers["Signature-Input"] = headers["Signature-Input"].replace(story.gp.did, story.lab.did)
    before = await snapshot(story.patient)
    refused(await send(story.session, "POST", target, body=data, headers=headers), 401, "bad-signature")
    await assert_unchanged(story.patient, before, nonce_spent=False)


async def test_body_swapped_under_a_signature(story: Story) -> None:
    target = url(story, "/v0/list")
    headers = signed_headers(story.gp.identity, "POST", target, body(chain=[story.gp_grant.encoded]))
    before = await snapshot(story.patient)
    other = body(chain=[story.gp_grant.encoded, story.gp_grant.encoded])
    refused(await send(story.session, "POST", target, body=other, headers=headers), 401, "bad-signature")
    await assert_unchanged(story.patient, before, nonce_spent=False)


async def test_request_signed_for_another_node(story: Story) -> None:
    """Signed for the lab's authority, sent to the patient: the Host is not the patient's."""
    data = body()
    headers = signed_headers(story.gp.identity, "POST", story.lab.url + "/v0/state", data)
    before = await snapshot(story.patient)
    refused(
        await send(story.session, "POST", url(story, "/v0/state"), body=data, headers=headers),
        401,
        "bad-signature",
    )
    await assert_unchanged(story.patient, before, nonce_spent=False)


async def test_replayed_request(story: Story) -> None:
    target = url(story, "/v0/list")
    data = body(chain=[story.gp_grant.encoded])
    headers = signed_headers(story.gp.identity, "POST", target, data)
    first = await send(story.session, "POST", target, body=data, headers=headers)
    assert first.status == 200
    before = await snapshot(story.patient)
    refused(await send(story.session, "POST", target, body=data, headers=headers), 409, "replay")
    await assert_unchanged(story.patient, before, nonce_spent=False)


async def test_replayed_request_after_a_restart(story: Story) -> None:
    """The nonce store is durable: the same signed bytes are refused by the restarted node."""
    target = url(story, "/v0/list")
    data = body(chain=[story.gp_grant.encoded])
    headers = signed_headers(story.gp.identity, "POST", target, data, lifetime=300)
    first = await send(story.session, "POST", target, body=data, headers=headers)
    assert first.status == 200
    port = story.patient.port
    await story.patient.restart()
    assert story.patient.port == port
    before = await snapshot(story.patient)
    refused(await send(story.session, "POST", target, body=data, headers=headers), 409, "replay")
    await assert_unchanged(story.patient, before, nonce_spent=False)
    # The restarted node still serves honest requests.
    fresh = await send_signed(story.session, story.gp.identity, "POST", target, data)
    assert fresh.status == 200


@pytest.mark.parametrize(
    ("created", "lifetime", "code"),
    [(+120, 60, "not-yet-valid"), (+3600, 300, "not-yet-valid"), (-400, 60, "expired"), (-61, 60, "expired")],
    ids=["future-2min", "future-1h", "expired-long-ago", "expired-just-now"],
)
async def test_request_outside_its_time_window(story: Story, created: int, lifetime: int, code: str) -> None:
    target = url(story, "/v0/list")
    before = await snapshot(story.patient)
    answer = await send_signed(
        story.session,
        story.gp.identity,
        "POST",
        target,
        body(chain=[story.gp_grant.encoded]),
        at=now() + created,
        lifetime=lifetime,
    )
    refused(answer, 403, code)
    await assert_unchanged(story.patient, before, nonce_spent=False)


# --- grants ------------------------------------------------------------------------------------------------


async def _fetch_as_gp(story: Story, doc: bytes, chain: list | None = None) -> Answer:
    chain = chain or [story.gp_grant]
    return await send_signed(
        story.session,
        story.gp.identity,
        "POST",
        url(story, "/v0/fetch"),
        fetch_body(story.gp.identity, story, doc, chain),
    )


async def test_expired_grant(story: Story) -> None:
    with pytest.raises(Exception, match="exp must be after nbf"):
        # A grant of 0 days would end when it starts: the record itself refuses that.
        await issue_grant(story, story.gp.did, days=0)
    expired = await issue_grant(story, story.gp.did, issued=now() - 2 * DAY, days=1)
    assert expired.record.exp < now()
    before = await snapshot(story.patient)
    listing = await send_signed(
        story.session, story.gp.identity, "POST", url(story, "/v0/list"), body(chain=[expired.encoded])
    )
    refused(listing, 403, "expired")
    await assert_unchanged(story.patient, before, nonce_spent=True)
    before = await snapshot(story.patient)
    refused(await _fetch_as_gp(story, story.docs["cbc"], [expired]), 403, "expired")
    await assert_unchanged(story.patient, before, nonce_spent=True)


async def test_revoked_grant(story: Story) -> None:
    grant = await issue_grant(story, story.gp.did)
    await story.patient.patient.revoke(grant.id, now=now())
    before = await snapshot(story.patient)
    listing = await send_signed(
        story.session, story.gp.identity, "POST", url(story, "/v0/list"), body(chain=[grant.encoded])
    )
    refused(listing, 403, "revoked")
    await assert_unchanged(story.patient, before, nonce_spent=True)
    before = await snapshot(story.patient)
    fetched = await send_signed(
        story.session,
        story.gp.identity,
        "POST",
        url(story, "/v0/fetch"),
        fetch_body(story.gp.identity, story, story.docs["cbc"], [grant]),
    )
    refused(fetched, 403, "revoked")
    await assert_unchanged(story.patient, before, nonce_spent=True)


async def test_grant_presented_by_another_audience(story: Story) -> None:
    """The lab presents the GP's grant (with its own signature and receipt)."""
    lab = story.lab.identity
    before = await snapshot(story.patient)
    listing = await send_signed(
        story.session, lab, "POST", url(story, "/v0/list"), body(chain=[story.gp_grant.encoded])
    )
    refused(listing, 403, "wrong-audience")
    await assert_unchanged(story.patient, before, nonce_spent=True)
    before = await snapshot(story.patient)
    fetched = await send_signed(
        story.session,
        lab,
        "POST",
        url(story, "/v0/fetch"),
        fetch_body(lab, story, story.docs["cbc"], [story.gp_grant]),
    )
    refused(fetched, 403, "wrong-audience")
    await assert_unchanged(story.patient, before, nonce_spent=True)


async def test_receipt_signed_by_someone_else(story: Story) -> None:
    """The GP's request carrying a receipt the lab signed: refused, nothing audited."""
    receipt_body = fetch_body(story.lab.identity, story, story.docs["cbc"], [story.gp_grant])
    before = await snapshot(story.patient)
    answer = await send_signed(
        story.session, story.gp.identity, "POST", url(story, "/v0/fetch"), receipt_body
    )
    refused(answer, 401, "bad-signature")
    await assert_unchanged(story.patient, before, nonce_spent=True)


@pytest.mark.parametrize("which", ["xray", "lithium"], ids=["outside-scope", "restricted-label-PSY"])
async def test_document_kept_from_the_grant_is_answered_as_missing(story: Story, which: str) -> None:
    """Out of scope (imaging) and privately restricted (PSY): byte for byte a missing document."""
    missing = await _fetch_as_gp(story, random_doc())
    before = await snapshot(story.patient)
    kept = await _fetch_as_gp(story, story.docs[which])
    refused(kept, 404, "not-found")
    assert (kept.status, kept.content_type, kept.body) == (missing.status, missing.content_type, missing.body)
    await assert_unchanged(story.patient, before, nonce_spent=True)


async def test_hidden_document_is_answered_as_missing(story: Story) -> None:
    await story.patient.patient.hide(story.docs["cbc"])
    try:
        missing = await _fetch_as_gp(story, random_doc())
        before = await snapshot(story.patient)
        hidden = await _fetch_as_gp(story, story.docs["cbc"])
        refused(hidden, 404, "not-found")
        assert (hidden.status, hidden.body) == (missing.status, missing.body)
        await assert_unchanged(story.patient, before, nonce_spent=True)
    finally:
        await story.patient.patient.hide(story.docs["cbc"], hidden=False)


def _child_grant(story: Story, specialist: SigningIdentity, **changes: object) -> Grant:
    parent = story.gp_grant.record
    fields = {
        "audience": specialist.did,
        "scope": parent.scope,
        "actions": ("read",),
        "purpose": parent.purpose,
        "iat": now(),
        "nbf": parent.nbf,
        "exp": parent.exp,
        "parent": story.gp_grant.id,
        "nonce": os.urandom(16),
    }
    fields.update(changes)
    return sign_record(Grant(**fields), story.gp.identity)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "change",
    ["all-categories", "outlives-parent", "adds-delegate"],
)
async def test_delegated_grant_wider_than_its_parent(story: Story, change: str) -> None:
    specialist = SigningIdentity.from_seed(os.urandom(32))
    parent = story.gp_grant.record
    changes: dict[str, object] = {
        "all-categories": {"scope": Scope(past=True, future=True)},
        "outlives-parent": {"exp": parent.exp + DAY},
        "adds-delegate": {"actions": ("delegate", "read", "deposit")},
    }[change]
    child = _child_grant(story, specialist, **changes)
    before = await snapshot(story.patient)
    listing = await send_signed(
        story.session,
        specialist,
        "POST",
        url(story, "/v0/list"),
        body(chain=[story.gp_grant.encoded, child.encoded]),
    )
    refused(listing, 403, "widened")
    await assert_unchanged(story.patient, before, nonce_spent=True)
    before = await snapshot(story.patient)
    fetched = await send_signed(
        story.session,
        specialist,
        "POST",
        url(story, "/v0/fetch"),
        fetch_body(specialist, story, story.docs["cbc"], [story.gp_grant, child]),
    )
    refused(fetched, 403, "widened")
    await assert_unchanged(story.patient, before, nonce_spent=True)


async def test_narrower_delegated_grant_is_honoured(story: Story) -> None:
    """Control for the test above: the same chain, narrowed properly, lists the blood count."""
    specialist = SigningIdentity.from_seed(os.urandom(32))
    child = _child_grant(story, specialist, exp=story.gp_grant.record.exp - DAY)
    listing = await send_signed(
        story.session,
        specialist,
        "POST",
        url(story, "/v0/list"),
        body(chain=[story.gp_grant.encoded, child.encoded]),
    )
    assert listing.status == 200, listing.body
    assert [item["doc"] for item in listing.decoded["documents"]] == [story.docs["cbc"]]


async def test_refusals_under_a_bad_chain_do_not_reveal_which_documents_exist(story: Story) -> None:
    """A revoked, expired, foreign or widened chain gets the same answer for a real and a random id."""
    revoked = await issue_grant(story, story.gp.did)
    await story.patient.patient.revoke(revoked.id, now=now())
    expired = await issue_grant(story, story.gp.did, issued=now() - 2 * DAY, days=1)
    specialist = SigningIdentity.from_seed(os.urandom(32))
    widened = _child_grant(story, specialist, scope=Scope(past=True, future=True))
    cases = [
        ("revoked", story.gp.identity, [revoked]),
        ("expired", story.gp.identity, [expired]),
        ("wrong-audience", story.lab.identity, [story.gp_grant]),
        ("widened", specialist, [story.gp_grant, widened]),
    ]
    for name, identity, chain in cases:
        answers = []
        for doc in (story.docs["cbc"], story.docs["lithium"], random_doc()):
            answers.append(
                await send_signed(
                    story.session,
                    identity,
                    "POST",
                    url(story, "/v0/fetch"),
                    fetch_body(identity, story, doc, chain),
                )
            )
        assert len({(a.status, a.body) for a in answers}) == 1, (name, [(a.status, a.code) for a in answers])
        assert answers[0].code == name


# --- the clinic side: rolled-back state, tampered key wraps ----------------------------------------------


async def test_rolled_back_state_head_in_the_database(story: Story) -> None:
    gp = story.gp
    await gp.clinic.poll(story.patient.did, now=now())
    async with transaction(gp.h.db):
        await gp.h.db.execute(
            "UPDATE connections SET head_seq = head_seq + 5 WHERE patient = ?", (story.patient.did,)
        )
    before = await snapshot(gp)
    with pytest.raises(RemoteProtocolError) as refusal:
        await gp.clinic.poll(story.patient.did, now=now())
    assert refusal.value.code.value == "rollback"
    await assert_unchanged(gp, before, nonce_spent=False)
    async with transaction(gp.h.db):
        await gp.h.db.execute(
            "UPDATE connections SET head_seq = head_seq - 5 WHERE patient = ?", (story.patient.did,)
        )


async def test_rolled_back_state_head_served_again(story: Story, monkeypatch: pytest.MonkeyPatch) -> None:
    """A genuine, older signed state answer replayed to the GP (a patient node restored from a backup)."""
    gp, patient = story.gp, story.patient
    old_answer = await gp.client.call("POST", f"{patient.url}/v0/state")
    throwaway = await issue_grant(story, SigningIdentity.from_seed(os.urandom(32)).did)
    await patient.patient.revoke(throwaway.id, now=now())  # signs a newer head
    result = await gp.clinic.poll(patient.did, now=now())
    assert result["seq"] == open_record(old_answer["head"], StateHead).record.seq + 1
    original = gp.client.call

    async def stale_state(method: str, target: str, **fields: object) -> dict:
        if target.endswith("/v0/state"):
            return old_answer
        return await original(method, target, **fields)

    monkeypatch.setattr(gp.client, "call", stale_state)
    before = await snapshot(gp)
    with pytest.raises(RemoteProtocolError) as refusal:
        await gp.clinic.poll(patient.did, now=now())
    assert refusal.value.code.value == "rollback"
    await assert_unchanged(gp, before, nonce_spent=False)


def _tamper_flip(wrap: bytes, story: Story) -> bytes:
    tampered = bytearray(wrap)
    tampered[len(tampered) // 2] ^= 0x01
    return bytes(tampered)


def _tamper_signed_by_lab(wrap: bytes, story: Story) -> bytes:
    record = open_record(wrap, KeyWrap).record
    return sign_record(record, story.lab.identity).encoded


def _tamper_other_document(wrap: bytes, story: Story) -> bytes:
    """A genuine patient-signed wrap, but for another document."""
    record = open_record(wrap, KeyWrap).record
    return wrap_key(
        wrapper=story.patient.identity,
        recipient=record.recipient,
        recipient_key=record.recipient_key,
        doc=story.docs["lithium"],
        key=os.urandom(32),
        purpose=record.purpose,
        grant=record.grant,
        iat=now(),
        ephemeral_seed=os.urandom(32),
    ).encoded


def _tamper_wrong_key(wrap: bytes, story: Story) -> bytes:
    """A genuine patient-signed wrap for the right document carrying a key that does not decrypt it."""
    record = open_record(wrap, KeyWrap).record
    return wrap_key(
        wrapper=story.patient.identity,
        recipient=record.recipient,
        recipient_key=record.recipient_key,
        doc=record.doc,
        key=os.urandom(32),
        purpose=record.purpose,
        grant=record.grant,
        iat=now(),
        ephemeral_seed=os.urandom(32),
    ).encoded


def _tamper_sealed_binding(wrap: bytes, story: Story) -> bytes:
    """The outer record re-signed by the patient with another purpose than the sealed binding."""
    from dataclasses import replace

    record = open_record(wrap, KeyWrap).record
    return sign_record(replace(record, purpose="research"), story.patient.identity).encoded


@pytest.mark.parametrize(
    ("tamper", "codes"),
    [
        (_tamper_flip, {"bad-signature"}),
        (_tamper_signed_by_lab, {"bad-signature"}),
        (_tamper_other_document, {"wrap-mismatch"}),
        (_tamper_sealed_binding, {"wrap-mismatch"}),
        (_tamper_wrong_key, {"bad-commitment"}),
    ],
    ids=["flipped-byte", "signed-by-lab", "other-document", "sealed-binding", "wrong-key"],
)
async def test_tampered_key_wrap(
    story: Story, monkeypatch: pytest.MonkeyPatch, tamper, codes: set[str]
) -> None:
    gp = story.gp
    original = gp.client.download

    async def tampering_download(target: str, **fields: object):
        answer = await original(target, **fields)
        headers = CIMultiDict(answer.headers)
        headers["Fedrecord-Key-Wrap"] = b64(tamper(unb64(headers["Fedrecord-Key-Wrap"]), story))
        return dataclasses.replace(answer, headers=headers)

    monkeypatch.setattr(gp.client, "download", tampering_download)
    before = await snapshot(gp)
    with pytest.raises(RemoteProtocolError) as refusal:
        await gp.clinic.fetch(story.patient.did, story.docs["cbc"], now=now())
    assert refusal.value.code.value in codes, refusal.value
    await assert_unchanged(gp, before, nonce_spent=False)
    async with gp.h.db.execute("SELECT count(*) FROM documents WHERE id = ?", (story.docs["cbc"],)) as cursor:
        assert (await cursor.fetchone())[0] == 0
    assert not gp.h.files.path_of(story.docs["cbc"]).exists()


# --- invitations ----------------------------------------------------------------------------------------------


async def _connect(story: Story, identity: SigningIdentity, token: bytes) -> Answer:
    from nacl.public import PrivateKey

    profile = throwaway_profile(identity, bytes(PrivateKey.generate().public_key))
    return await send_signed(
        story.session, identity, "POST", url(story, "/v0/connect"), body(token=token, profile=profile)
    )


async def test_reused_invitation_token(story: Story) -> None:
    invitation = await story.patient.patient.create_invitation(label="one use", now=now())
    first_user = SigningIdentity.from_seed(os.urandom(32))
    first = await _connect(story, first_user, invitation.token)
    assert first.status == 201
    for user in (first_user, SigningIdentity.from_seed(os.urandom(32))):  # the same clinic again, another one
        before = await snapshot(story.patient)
        refused(await _connect(story, user, invitation.token), 409, "replay")
        await assert_unchanged(story.patient, before, nonce_spent=True)


async def test_expired_invitation_token(story: Story) -> None:
    invitation = await story.patient.patient.create_invitation(label="too late", now=now(), ttl=0)
    before = await snapshot(story.patient)
    refused(
        await _connect(story, SigningIdentity.from_seed(os.urandom(32)), invitation.token), 403, "expired"
    )
    await assert_unchanged(story.patient, before, nonce_spent=True)


async def test_unknown_invitation_token(story: Story) -> None:
    before = await snapshot(story.patient)
    refused(
        await _connect(story, SigningIdentity.from_seed(os.urandom(32)), os.urandom(32)), 404, "not-found"
    )
    await assert_unchanged(story.patient, before, nonce_spent=True)


async def test_invitation_profile_of_someone_else(story: Story) -> None:
    from nacl.public import PrivateKey

    invitation = await story.patient.patient.create_invitation(label="stolen profile", now=now())
    owner = SigningIdentity.from_seed(os.urandom(32))
    profile = throwaway_profile(owner, bytes(PrivateKey.generate().public_key))
    before = await snapshot(story.patient)
    answer = await send_signed(
        story.session,
        SigningIdentity.from_seed(os.urandom(32)),
        "POST",
        url(story, "/v0/connect"),
        body(token=invitation.token, profile=profile),
    )
    refused(answer, 401, "bad-signature")
    await assert_unchanged(story.patient, before, nonce_spent=True)


# --- deposits: tampered ciphertext, sizes ---------------------------------------------------------------------


async def _deposit(
    story: Story, doc: bytes, record: bytes, payload, *, depositor: ServedNode | None = None
) -> Answer:
    target = url(story, f"/v0/documents/{doc.hex()}")
    headers = signed_headers(
        (depositor or story.lab).identity,
        "PUT",
        target,
        None,
        streamed=True,
        headers={"Fedrecord-Deposit": b64(record), "Content-Type": "application/octet-stream"},
    )
    return await send(story.session, "PUT", target, body=payload, headers=headers)


def _flip(data: bytes, index: int) -> bytes:
    tampered = bytearray(data)
    tampered[index] ^= 0x01
    return bytes(tampered)


async def test_honest_deposit_control(story: Story) -> None:
    """Control: the crafted deposit request is accepted when nothing is tampered with."""
    sealed = seal_document(story.lab.identity, story.patient.did, b"control result\n")
    record = deposit_record(story, story.lab, sealed.doc, len(sealed.ciphertext), sealed.key)
    answer = await _deposit(story, sealed.doc, record, sealed.ciphertext)
    assert answer.status == 201, answer.body
    await story.patient.patient.reject(sealed.doc, now=now())


@pytest.mark.parametrize("where", ["stream-header", "first-chunk", "last-byte"])
async def test_tampered_ciphertext(story: Story, where: str) -> None:
    """One flipped byte: refused, and no row, file or temporary file is left."""
    sealed = seal_document(story.lab.identity, story.patient.did, os.urandom(100_000))
    index = {"stream-header": 5, "first-chunk": 200, "last-byte": len(sealed.ciphertext) - 1}[where]
    tampered = _flip(sealed.ciphertext, index)
    record = deposit_record(story, story.lab, sealed.doc, len(sealed.ciphertext), sealed.key)
    before = await snapshot(story.patient)
    answer = await _deposit(story, sealed.doc, record, chunked(tampered))
    refused(answer, 400, "malformed")  # the bytes do not hash to the document id
    await assert_unchanged(story.patient, before, nonce_spent=True)
    assert not story.patient.h.files.path_of(sealed.doc).exists()


@pytest.mark.parametrize("where", ["first-chunk", "last-byte"])
async def test_tampered_ciphertext_under_a_matching_id(story: Story, where: str) -> None:
    """The depositor names the tampered bytes' hash: the STREAM tag fails, the stored file is destroyed."""
    sealed = seal_document(story.lab.identity, story.patient.did, os.urandom(100_000))
    index = {"first-chunk": 200, "last-byte": len(sealed.ciphertext) - 1}[where]
    tampered = _flip(sealed.ciphertext, index)
    doc = document_id_of(tampered)
    record = deposit_record(story, story.lab, doc, len(tampered), sealed.key)
    before = await snapshot(story.patient)
    answer = await _deposit(story, doc, record, chunked(tampered))
    refused(answer, 400, "decrypt-failed")
    await assert_unchanged(story.patient, before, nonce_spent=True)
    assert not story.patient.h.files.path_of(doc).exists()


async def _slowly(data: bytes, *, stop_at: int | None = None, piece: int = 1 << 16) -> Any:
    """The stream in pieces with a pause between them; raises half-way when ``stop_at`` is given."""
    for start in range(0, len(data), piece):
        if stop_at is not None and start >= stop_at:
            raise ConnectionResetError("the depositor went away")
        yield data[start : start + piece]
        await asyncio.sleep(0.01)


async def test_the_same_deposit_sent_twice_at_once(story: Story) -> None:
    """An outbox flushed by two processes: one deposit stored, the other answered known, the file kept."""
    sealed = seal_document(story.lab.identity, story.patient.did, os.urandom(3_000_000))  # kept in a file
    record = deposit_record(story, story.lab, sealed.doc, len(sealed.ciphertext), sealed.key)
    answers = await asyncio.gather(
        _deposit(story, sealed.doc, record, _slowly(sealed.ciphertext)),
        _deposit(story, sealed.doc, record, _slowly(sealed.ciphertext)),
    )
    assert sorted(a.status for a in answers) == [200, 201], [a.body for a in answers]
    assert sorted(a.decoded["status"] for a in answers) == ["inbox", "known"]
    assert await stored_stream(story.patient, sealed.doc) == sealed.ciphertext
    await story.patient.patient.reject(sealed.doc, now=now())


async def test_a_cut_copy_of_a_deposit_leaves_the_other_whole(story: Story) -> None:
    """A slow copy is cut after a fast one was stored meanwhile: the stored file stays whole."""
    sealed = seal_document(story.lab.identity, story.patient.did, os.urandom(3_000_000))
    record = deposit_record(story, story.lab, sealed.doc, len(sealed.ciphertext), sealed.key)
    cut = asyncio.ensure_future(
        _deposit(story, sealed.doc, record, _slowly(sealed.ciphertext, stop_at=len(sealed.ciphertext) * 3 // 4))
    )
    await asyncio.sleep(0.1)  # the slow copy is past its checks and streaming to its file
    whole = await _deposit(story, sealed.doc, record, sealed.ciphertext)
    with contextlib.suppress(Exception):
        await cut
    assert whole.status == 201, whole.body
    assert await stored_stream(story.patient, sealed.doc) == sealed.ciphertext
    await story.patient.patient.reject(sealed.doc, now=now())


async def test_deposit_signed_by_another_depositor(story: Story) -> None:
    """The lab's deposit record sent in a request the GP signed."""
    sealed = seal_document(story.lab.identity, story.patient.did, b"whose is it\n")
    record = deposit_record(story, story.lab, sealed.doc, len(sealed.ciphertext), sealed.key)
    before = await snapshot(story.patient)
    refused(
        await _deposit(story, sealed.doc, record, sealed.ciphertext, depositor=story.gp), 401, "bad-signature"
    )
    await assert_unchanged(story.patient, before, nonce_spent=True)


async def test_deposit_of_a_document_sealed_for_another_patient(story: Story) -> None:
    """The header inside the encryption names another patient: refused after decryption, file destroyed."""
    other_patient = SigningIdentity.from_seed(os.urandom(32)).did
    sealed = seal_document(story.lab.identity, other_patient, b"for someone else\n")
    record = deposit_record(story, story.lab, sealed.doc, len(sealed.ciphertext), sealed.key)
    before = await snapshot(story.patient)
    answer = await _deposit(story, sealed.doc, record, sealed.ciphertext)
    refused(answer, 400, "invalid-record")
    await assert_unchanged(story.patient, before, nonce_spent=True)
    assert not story.patient.h.files.path_of(sealed.doc).exists()


# --- bodies over the cap ---------------------------------------------------------------------------------------


async def test_cbor_body_over_the_cap(story: Story) -> None:
    big = body(chain=[], pad=b"\0" * MAX_BODY)
    assert len(big) > MAX_BODY
    before = await snapshot(story.patient)
    answer = await send_signed(story.session, story.gp.identity, "POST", url(story, "/v0/list"), big)
    refused(answer, 413, "too-large")
    await assert_unchanged(story.patient, before, nonce_spent=False)


async def test_chunked_cbor_body_over_the_cap(story: Story) -> None:
    big = body(chain=[], pad=b"\0" * MAX_BODY)
    target = url(story, "/v0/list")
    headers = signed_headers(story.gp.identity, "POST", target, big)
    before = await snapshot(story.patient)
    refused(await send(story.session, "POST", target, body=chunked(big), headers=headers), 413, "too-large")
    await assert_unchanged(story.patient, before, nonce_spent=False)


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_streamed_deposit_longer_than_its_record(story: Story, framing: str) -> None:
    sealed = seal_document(story.lab.identity, story.patient.did, os.urandom(20_000))
    record = deposit_record(story, story.lab, sealed.doc, len(sealed.ciphertext), sealed.key)
    longer = sealed.ciphertext + os.urandom(300_000)
    payload = longer if framing == "content-length" else chunked(longer)
    before = await snapshot(story.patient)
    refused(await _deposit(story, sealed.doc, record, payload), 413, "too-large")
    await assert_unchanged(story.patient, before, nonce_spent=True)
    assert not story.patient.h.files.path_of(sealed.doc).exists()


async def test_deposit_record_over_the_document_cap(story: Story) -> None:
    sealed = seal_document(story.lab.identity, story.patient.did, b"claims to be huge\n")
    record = deposit_record(story, story.lab, sealed.doc, MAX_DOCUMENT + 1, sealed.key)
    before = await snapshot(story.patient)
    refused(await _deposit(story, sealed.doc, record, chunked(sealed.ciphertext)), 413, "too-large")
    await assert_unchanged(story.patient, before, nonce_spent=True)


async def test_deposit_announcing_more_than_the_cap(story: Story) -> None:
    """A Content-Length over the document cap is refused before a byte of the body is read."""
    sealed = seal_document(story.lab.identity, story.patient.did, b"lying length\n")
    record = deposit_record(story, story.lab, sealed.doc, len(sealed.ciphertext), sealed.key)
    path = f"/v0/documents/{sealed.doc.hex()}"
    headers = signed_headers(
        story.lab.identity,
        "PUT",
        url(story, path),
        None,
        streamed=True,
        headers={"Fedrecord-Deposit": b64(record), "Content-Type": "application/octet-stream"},
    )
    headers["Content-Length"] = str(MAX_DOCUMENT + 1)
    before = await snapshot(story.patient)
    status, answer = await raw_request(story.patient.port, raw_head("PUT", path, headers), sealed.ciphertext)
    assert (status, cbor.decode(answer)["code"]) == (413, "too-large")
    await assert_unchanged(story.patient, before, nonce_spent=True)


# --- malformed and compressed bodies -----------------------------------------------------------------------------

MALFORMED = [
    (b"\xa1\x61v\x18\x00", "non-canonical"),
    (b"\xa2\x65chain\x80\x61v\x00", "non-canonical"),
    (b"\xbf\x61v\x00\xff", "indefinite-length"),
    (b"\xa2\x61v\x00\x61v\x00", "duplicate-key"),
    (cbor.encode({"v": 0, "chain": []}) + b"\x00", "trailing-bytes"),
    (cbor.encode({"v": 0, "chain": []})[:-1], "malformed"),
    (b"\xc1\x00", "forbidden-tag"),
    (b"\xf9\x3c\x00", "unsupported-type"),
    (b"\x81" * 20 + b"\x00", "too-deep"),
    (b"\xa1\x61v\x62\xff\xfe", "invalid-utf8"),
    (b"\xa1\x00\x00", "invalid-map-key"),
    (cbor.encode([0]), "malformed"),
    (cbor.encode({"v": 7, "chain": []}), "unsupported-version"),
    (cbor.encode({"v": 0}), "malformed"),
    (cbor.encode({"v": 0, "chain": "grants"}), "malformed"),
]


@pytest.mark.parametrize(("data", "code"), MALFORMED, ids=[f"{i}-{c}" for i, (_, c) in enumerate(MALFORMED)])
async def test_malformed_cbor_body(story: Story, data: bytes, code: str) -> None:
    before = await snapshot(story.patient)
    answer = await send_signed(story.session, story.gp.identity, "POST", url(story, "/v0/list"), data)
    refused(answer, 400, code)
    await assert_unchanged(story.patient, before, nonce_spent=True)


async def test_empty_body_where_one_is_required(story: Story) -> None:
    before = await snapshot(story.patient)
    answer = await send_signed(story.session, story.gp.identity, "POST", url(story, "/v0/list"), None)
    refused(answer, 400, "malformed")
    await assert_unchanged(story.patient, before, nonce_spent=True)


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", "identity, gzip"])
async def test_compressed_request_body(story: Story, encoding: str) -> None:
    plain = body(chain=[story.gp_grant.encoded])
    compressed = gzip.compress(plain)
    target = url(story, "/v0/list")
    headers = signed_headers(
        story.gp.identity, "POST", target, compressed, headers={"Content-Encoding": encoding}
    )
    before = await snapshot(story.patient)
    refused(await send(story.session, "POST", target, body=compressed, headers=headers), 400, "malformed")
    await assert_unchanged(story.patient, before, nonce_spent=False)


async def test_compressed_deposit(story: Story) -> None:
    sealed = seal_document(story.lab.identity, story.patient.did, b"squeezed\n")
    record = deposit_record(story, story.lab, sealed.doc, len(sealed.ciphertext), sealed.key)
    target = url(story, f"/v0/documents/{sealed.doc.hex()}")
    headers = signed_headers(
        story.lab.identity,
        "PUT",
        target,
        None,
        streamed=True,
        headers={"Fedrecord-Deposit": b64(record), "Content-Encoding": "gzip"},
    )
    before = await snapshot(story.patient)
    answer = await send(story.session, "PUT", target, body=gzip.compress(sealed.ciphertext), headers=headers)
    refused(answer, 400, "malformed")
    await assert_unchanged(story.patient, before, nonce_spent=False)
    assert not story.patient.h.files.path_of(sealed.doc).exists()


# --- fields of the wrong type ---------------------------------------------------------------------------------

WRONG_TYPES = [5, 2**40, -1, "text", None, [b"x"], {"a": b"x"}, True]


@pytest.mark.parametrize(
    "value", WRONG_TYPES, ids=[type(v).__name__ + str(i) for i, v in enumerate(WRONG_TYPES)]
)
async def test_record_fields_of_the_wrong_type(story: Story, value: object) -> None:
    """A validly signed body whose record fields are not byte strings: 400, never a 500, nothing stored."""
    from nacl.public import PrivateKey

    newcomer = SigningIdentity.from_seed(os.urandom(32))
    invitation = await story.patient.patient.create_invitation(label="typed", now=now())
    good_profile = throwaway_profile(newcomer, bytes(PrivateKey.generate().public_key))
    cases = [
        (newcomer, "/v0/connect", body(token=value, profile=good_profile)),
        (newcomer, "/v0/connect", body(token=invitation.token, profile=value)),
        (story.gp.identity, "/v0/fetch", body(chain=[story.gp_grant.encoded], receipt=value)),
        (story.gp.identity, "/v0/fetch", body(chain=value, receipt=b"")),
        (story.gp.identity, "/v0/list", body(chain=[value])),
        (story.lab.identity, "/v0/attestations", body(attestation=value)),
    ]
    for identity, path, data in cases:
        before = await snapshot(story.patient)
        answer = await send_signed(story.session, identity, "POST", url(story, path), data)
        assert answer.status == 400 and answer.code == "malformed", (path, value, answer.status, answer.body)
        await assert_unchanged(story.patient, before, nonce_spent=True)


# --- never a 500 --------------------------------------------------------------------------------------------------

FUZZ_ENDPOINTS = [
    ("GET", "/v0/profile", ()),
    ("GET", "/v0/health", ()),
    ("POST", "/v0/connect", ("token", "profile")),
    ("PUT", "/v0/documents/{doc}", ()),
    ("POST", "/v0/state", ()),
    ("POST", "/v0/list", ("chain",)),
    ("POST", "/v0/fetch", ("chain", "receipt")),
    ("POST", "/v0/attestations", ("attestation",)),
    ("POST", "/v0/nowhere", ("chain",)),
]


def _random_value(rng: random.Random, story: Story, depth: int = 0) -> object:
    choices = [
        lambda: rng.randrange(-(2**63), 2**64),
        lambda: rng.choice([0, -1, 2**64 - 1, 10**18, 2**40]),
        lambda: "".join(rng.choice("abcé\u2603\0 ") for _ in range(rng.randrange(0, 40))),
        lambda: rng.randbytes(rng.randrange(0, 80)),
        lambda: None,
        lambda: rng.choice([True, False]),
        lambda: story.gp_grant.encoded,
        lambda: story.patient.h.profile.encoded,
        lambda: _flip(story.gp_grant.encoded, rng.randrange(len(story.gp_grant.encoded))),
    ]
    if depth < 3:
        choices.append(lambda: [_random_value(rng, story, depth + 1) for _ in range(rng.randrange(0, 4))])
        choices.append(lambda: {str(rng.randrange(5)): _random_value(rng, story, depth + 1)})
    return rng.choice(choices)()


def _fuzz_case(rng: random.Random, story: Story, method: str, path: str, fields: tuple[str, ...]):
    """(method, url, body, headers) of one garbage request."""
    target = url(story, path.replace("{doc}", rng.randbytes(32).hex() if rng.random() < 0.8 else "zz"))
    signer = rng.choice([story.gp.identity, story.lab.identity, SigningIdentity.from_seed(rng.randbytes(32))])
    kind = rng.randrange(8)
    if kind == 0:  # random bytes, unsigned
        return method, target, rng.randbytes(rng.randrange(0, 3000)), {"Content-Type": "application/cbor"}
    if kind == 1:  # random bytes, validly signed
        data = rng.randbytes(rng.randrange(1, 3000))
        return method, target, data, signed_headers(signer, method, target, data)
    if kind in (2, 3, 4):  # well-formed CBOR with fields of random types, validly signed
        payload: dict[str, object] = {"v": 0}
        for name in fields + tuple(rng.sample(["chain", "receipt", "token", "profile", "x"], 2)):
            payload[name] = _random_value(rng, story)
        if rng.random() < 0.2:
            payload["v"] = _random_value(rng, story)
        try:
            data = cbor.encode(payload)
        except Exception:  # noqa: BLE001 - a value the encoder refuses: send raw bytes instead
            data = rng.randbytes(50)
        if method == "PUT":
            headers = signed_headers(
                signer, method, target, None, streamed=True, headers={"Fedrecord-Deposit": b64(data)}
            )
            return method, target, rng.randbytes(rng.randrange(0, 5000)), headers
        return method, target, data, signed_headers(signer, method, target, data)
    if kind == 5:  # garbage signature fields
        alphabet = 'abcdefghijklmnopqrstuvwxyz0123456789=;:,()"*-_ ?@'
        headers = {
            "Signature-Input": "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 200))),
            "Signature": "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 200))),
        }
        if rng.random() < 0.5:
            headers["Signature-Input"] = (
                f'fr=("@method" "@target-uri" "@authority");created={rng.randrange(-5, 2**63)}'
            )
        return method, target, rng.randbytes(rng.randrange(0, 100)), headers
    if kind == 6:  # a valid signature with one character of its fields changed
        data = body(chain=[story.gp_grant.encoded])
        headers = signed_headers(signer, method, target, data)
        name = rng.choice(["Signature-Input", "Signature", "Content-Digest", "Host"])
        value = headers[name]
        position = rng.randrange(len(value))
        headers[name] = value[:position] + rng.choice('a0=;",:*') + value[position + 1 :]
        return method, target, data, headers
    # odd header values around a valid signature
    data = body(chain=[story.gp_grant.encoded])
    extra = rng.choice(
        [
            {"Fedrecord-Streamed": rng.choice(["0", "2", "yes", "", "1, 1"])},
            {"Fedrecord-Deposit": rng.choice(["", "!!!", "AAAA", "a" * 5000, b64(rng.randbytes(100))])},
            {"Content-Encoding": rng.choice(["gzip", "x", "identity"])},
            {"Content-Type": rng.choice(["text/plain", "multipart/form-data; boundary=x", ""])},
        ]
    )
    headers = signed_headers(signer, method, target, data, headers=extra)
    headers.update(extra)
    return method, target, data, headers


async def test_garbage_never_gets_a_500(story: Story) -> None:
    rng = random.Random(20240903)
    before = await snapshot(story.patient)
    failures = []
    seen: Counter[tuple[int, str | None]] = Counter()
    sent = 0
    for method, path, fields in FUZZ_ENDPOINTS:
        for _ in range(30):
            method_, target, data, headers = _fuzz_case(rng, story, method, path, fields)
            answer = await send(story.session, method_, target, body=data, headers=headers)
            sent += 1
            seen[(answer.status, answer.code)] += 1
            if answer.status >= 500:
                failures.append(
                    (method_, target.rsplit("/", 1)[-1], data[:60], answer.status, answer.body[:80])
                )
            elif answer.status >= 400:
                assert answer.code is not None, (method_, target, answer.status, answer.body[:100])
    assert not failures, f"{len(failures)} of {sent} garbage requests got a 5xx: {failures[:5]}"
    # The garbage reached past the signature check into the handlers, not only the first gate.
    assert len(seen) >= 8, seen
    assert sum(n for (status, code), n in seen.items() if code not in (None, "bad-signature")) >= 60, seen
    # Garbage stored nothing but (validly signed) nonces.
    after = await snapshot(story.patient)
    changed = sorted(t for t in before.digest if t != "nonces" and before.digest[t] != after.digest[t])
    assert not changed, changed
    assert after.files == before.files
    assert await integrity_check(story.patient.h.db) == "ok"


async def test_raw_http_garbage_never_gets_a_500(story: Story) -> None:
    """Broken HTTP framing is answered by aiohttp itself, never by a server error."""
    port = story.patient.port
    heads = [
        "POST /v0/list HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        "POST /v0/list HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        "POST /v0/list HTTP/1.1\r\nHost: a\r\nHost: b\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        "PUT /v0/documents/%00 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        "POST http://evil.example/v0/list HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    ]
    for head in heads:
        try:
            status, _ = await raw_request(port, head, timeout=5)
        except (ConnectionError, ValueError, IndexError, EOFError, TimeoutError):
            continue  # the server closed the connection: also not a 500
        assert status < 500, head
    assert await integrity_check(story.patient.h.db) == "ok"


async def test_a_stalled_document_stream_times_out(story: Story, monkeypatch: pytest.MonkeyPatch) -> None:
    """[API-33]: a deposit whose stream goes silent is refused with `timeout`; nothing is stored."""
    from fedrecord.node import server

    monkeypatch.setattr(server, "STREAM_IDLE_TIMEOUT", 0.5)
    sealed = seal_document(story.lab.identity, story.patient.did, os.urandom(200_000))
    record = deposit_record(story, story.lab, sealed.doc, len(sealed.ciphertext), sealed.key)
    path = f"/v0/documents/{sealed.doc.hex()}"
    headers = signed_headers(
        story.lab.identity,
        "PUT",
        url(story, path),
        None,
        streamed=True,
        headers={"Fedrecord-Deposit": b64(record), "Content-Type": "application/octet-stream"},
    )
    head = raw_head("PUT", path, {**headers, "Content-Length": str(len(sealed.ciphertext))})
    before = await snapshot(story.patient)
    # A quarter of the document, then silence: the connection stays open, no byte comes.
    status, body_bytes = await raw_request(story.patient.port, head, sealed.ciphertext[:50_000])
    assert status == 408 and cbor.decode(body_bytes)["code"] == "timeout"
    await assert_unchanged(story.patient, before, nonce_spent=True)
    assert not story.patient.h.files.path_of(sealed.doc).exists()


async def test_a_shared_copy_is_not_read_on_a_stale_state_head(story: Story) -> None:
    """[HEAD-4]: the GP reads its copy only while it holds a recent head from the patient."""
    gp = story.gp.clinic
    doc = story.docs["cbc"]
    await gp.poll(story.patient.did, now=now())
    await gp.fetch(story.patient.did, doc, now=now())
    assert (await gp.read_held(doc, now=now())).startswith(b"Hemoglobin")
    with pytest.raises(RemoteProtocolError) as caught:
        await gp.read_held(doc, now=now() + 3600)
    assert caught.value.code is Code.STALE


@pytest.mark.parametrize("change", ["revoke", "hide"])
async def test_a_change_committed_while_a_fetch_is_decided_refuses_it(
    story: Story, monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    """A revocation or hide committed (by any process) between the decision and the receipt: refused, nothing logged."""
    patient = story.patient
    grant = await issue_grant(story, story.gp.did)
    doc = story.docs["cbc"]
    node_type = type(patient.patient)
    real = node_type._reader_key  # called once the read is decided, before its receipt is logged

    async def meanwhile(self: Any, *args: Any, **kwargs: Any) -> Any:
        monkeypatch.setattr(node_type, "_reader_key", real)
        if change == "revoke":
            await patient.patient.revoke(grant.id, now=now())
        else:
            await patient.patient.hide(doc)
        return await real(self, *args, **kwargs)

    monkeypatch.setattr(node_type, "_reader_key", meanwhile)
    before = await snapshot(patient)
    try:
        answer = await send_signed(
            story.session, story.gp.identity, "POST", url(story, "/v0/fetch"), fetch_body(story.gp.identity, story, doc, [grant])
        )
        if change == "revoke":
            refused(answer, 403, "revoked", signed=True)
        else:
            refused(answer, 404, "not-found", signed=True)
        after = await snapshot(patient)
        assert after.digest["audit"] == before.digest["audit"], "nothing logged"
    finally:
        if change == "hide":
            await patient.patient.hide(doc, False)
