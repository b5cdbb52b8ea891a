"""``POST /v0/manage``: the patient drives its own node over HTTP with the node's key (spec 15.19).

A patient node, a GP and a lab run in this process (tests/node_helpers.py, the demo's story).  The
tests sign ``manage-request`` bodies with the patient node's own key -- as the patient's CLI on
another machine, or a conformance suite acting as the patient, would -- and check each op's
effect on the node and on what the clinics then get from it.  Refusals ([API-50], [API-51],
[API-53]) are checked as tests/test_node_adversarial.py checks them: the code, the status, and
every table and file as it was, the request's nonce aside.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_asyncio

from fedrecord.core import (
    AcceptedEntry,
    AccessReceipt,
    DepositDecision,
    Grant,
    PrivateRestriction,
    Revocation,
    Scope,
    Signed,
    SigningIdentity,
    StateHead,
    Tombstone,
    open_record,
    sign_record,
)
from fedrecord.core.identity import EncryptionKeyPair
from fedrecord.node.wire import Invitation

from .node_helpers import (
    DAY,
    Answer,
    Impostor,
    Story,
    answered,
    assert_unchanged,
    body,
    build_story,
    fetch_body,
    now,
    refused,
    send_signed,
    snapshot,
    throwaway_profile,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def story(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Story]:
    built = await build_story(tmp_path_factory.mktemp("control"))
    try:
        yield built
    finally:
        await built.close()


# --- helpers ---------------------------------------------------------------------------------------


async def manage(
    story: Story, op: Any, *, signer: SigningIdentity | Impostor | None = None, **args: Any
) -> Answer:
    """A manage request signed with the patient node's own key (or ``signer``'s)."""
    identity = story.patient.identity if signer is None else signer
    fields = {} if op is None else {"op": op}
    return await send_signed(
        story.session, identity, "POST", story.patient.url + "/v0/manage", body(**fields, **args)
    )




async def refused_unchanged(
    story: Story, op: Any, status: int, code: str, *, signer: SigningIdentity | None = None, **args: Any
) -> None:
    """The request is refused with ``code`` and leaves every table and file as it was ([API-51])."""
    before = await snapshot(story.patient)
    refused(await manage(story, op, signer=signer, **args), status, code)
    await assert_unchanged(story.patient, before, nonce_spent=True)


async def deposit_from_lab(story: Story, title: str, *, labels: tuple[str, ...] = ()) -> bytes:
    """A new lab result in the patient's inbox."""
    doc = await story.lab.clinic.deposit(
        story.patient.did,
        f"{title}: within range\n".encode(),
        title=title,
        category="lab",
        doc_type="lab-result",
        labels=labels,
        now=now(),
    )
    sent, pending = await story.lab.clinic.flush_outbox()
    assert pending == 0 and sent >= 1
    return doc


def patient_grant(story: Story, audience: str, scope: Scope, *, days: int = 30) -> Signed[Grant]:
    """A grant the suite signs as the patient (it holds the patient's key)."""
    t = now()
    return sign_record(
        Grant(
            audience=audience,
            scope=scope,
            actions=("read",),
            purpose="treatment",
            iat=t,
            nbf=t,
            exp=t + days * DAY,
            nonce=os.urandom(16),
        ),
        story.patient.identity,
    )


async def as_gp(story: Story, path: str, **fields: Any) -> Answer:
    return await send_signed(
        story.session, story.gp.identity, "POST", story.patient.url + path, body(**fields)
    )


async def gp_listing(story: Story, grant: Signed[Grant]) -> list[bytes]:
    answer = await as_gp(story, "/v0/list", chain=[grant.encoded])
    return [entry["doc"] for entry in answered(answer)["documents"]]


async def gp_fetch(story: Story, grant: Signed[Grant], doc: bytes) -> Answer:
    data = fetch_body(story.gp.identity, story, doc, [grant])
    return await send_signed(story.session, story.gp.identity, "POST", story.patient.url + "/v0/fetch", data)


async def newest_head(story: Story) -> Signed[StateHead]:
    head = await story.patient.h.store.newest_record(StateHead, signer=story.patient.did)
    assert head is not None
    return head


# --- each op ---------------------------------------------------------------------------------------


async def test_invite_gives_the_code_a_clinic_connects_with(story: Story) -> None:
    answer = answered(await manage(story, "invite", label="radiology", ttl=2 * DAY))
    assert set(answer) == {"code", "exp"}
    invitation = Invitation.parse(answer["code"])
    assert answer["code"] == invitation.code()
    assert (invitation.node, invitation.endpoint) == (story.patient.did, story.patient.h.config.endpoint)
    assert invitation.expires == answer["exp"] and abs(answer["exp"] - (now() + 2 * DAY)) <= 5
    # The token is the node's own: a clinic presenting it gets its deposit grant ([API-10]).
    clinic = SigningIdentity.from_seed(os.urandom(32))
    profile = throwaway_profile(clinic, EncryptionKeyPair.from_seed(os.urandom(32)).public_key)
    grant = await story.patient.patient.connect(
        requester=clinic.did, token=invitation.token, profile=profile, now=now()
    )
    assert grant.record.audience == clinic.did and grant.record.actions == ("deposit",)
    # Without a ttl, seven days, as `fedrecord invite`.
    default = answered(await manage(story, "invite"))
    assert abs(default["exp"] - (now() + 7 * DAY)) <= 5
    token = Invitation.parse(default["code"]).token
    assert await story.patient.h.store.invitation(hashlib.sha256(token).digest()) is not None


async def test_inbox_and_accept_with_labels(story: Story) -> None:
    doc = await deposit_from_lab(story, "Vitamin D")
    items = answered(await manage(story, "inbox"))["items"]
    item = next(i for i in items if i["doc"] == doc)
    assert item == {
        "doc": doc,
        "author": story.lab.did,
        "title": "Vitamin D",
        "category": "lab",
        "labels": [],
        "date": item["date"],
        "size": item["size"],
    }
    before = await newest_head(story)
    entry = open_record(
        answered(await manage(story, "accept", doc=doc, labels=["PSY"]))["entry"], AcceptedEntry
    )
    assert entry.signer == story.patient.did and entry.record.doc == doc
    accepted = {d["doc"]: d for d in await story.patient.patient.documents()}
    assert accepted[doc]["labels"] == ["PSY"]
    assert doc not in [i["doc"] for i in answered(await manage(story, "inbox"))["items"]]
    assert (await newest_head(story)).id == before.id, "an accept signs no head ([API-18])"
    # Accepted already: no longer in the inbox.
    await refused_unchanged(story, "accept", 404, "not-found", doc=doc)
    await refused_unchanged(story, "reject", 404, "not-found", doc=doc)


async def test_reject_destroys_and_tells_the_depositor(story: Story) -> None:
    doc = await deposit_from_lab(story, "Duplicate sample")
    decision = open_record(answered(await manage(story, "reject", doc=doc))["decision"], DepositDecision)
    assert decision.signer == story.patient.did
    assert (decision.record.doc, decision.record.decision) == (doc, "rejected")
    assert await story.patient.h.store.document_state(doc) is None
    assert not story.patient.h.files.path_of(doc).exists()
    async with story.patient.h.db.execute(
        "SELECT target, payload FROM outbox WHERE kind = 'decision'"
    ) as cursor:
        queued = [tuple(row) for row in await cursor.fetchall()]
    assert (story.lab.did, decision.encoded) in queued


async def test_label_adds_and_removes(story: Story) -> None:
    doc = story.docs["xray"]
    assert answered(await manage(story, "label", doc=doc, labels=["SEX", "HIV"]))["labels"] == ["HIV", "SEX"]
    assert answered(await manage(story, "label", doc=doc, labels=["SEX"], remove=True))["labels"] == ["HIV"]
    assert answered(await manage(story, "label", doc=doc, labels=["HIV"], remove=True))["labels"] == []


async def test_hide_keeps_a_document_from_every_grant(story: Story) -> None:
    cbc = story.docs["cbc"]
    assert cbc in await gp_listing(story, story.gp_grant)
    assert answered(await manage(story, "hide", doc=cbc, hidden=True)) == {}
    assert cbc not in await gp_listing(story, story.gp_grant)
    refused(await gp_fetch(story, story.gp_grant, cbc), 404, "not-found")
    assert answered(await manage(story, "hide", doc=cbc, hidden=False)) == {}
    assert cbc in await gp_listing(story, story.gp_grant)


async def test_keep_grants_and_restrictions_the_patient_signed_elsewhere(story: Story) -> None:
    grant = patient_grant(story, story.gp.did, Scope(categories=("lab",), past=True))
    assert answered(await manage(story, "keep", records=[grant.encoded])) == {"stored": 1}
    # The grant is the node's own now: decisions, the GP's state and its sync view use it.
    listed = await gp_listing(story, grant)
    assert {story.docs["cbc"], story.docs["lithium"]} <= set(listed)
    state = answered(await as_gp(story, "/v0/state"))
    assert grant.encoded in state["grants"]
    records = answered(await as_gp(story, "/v0/records", ids=[grant.id]))["records"]
    assert records == [grant.encoded]
    restriction = sign_record(
        PrivateRestriction(grants=(grant.id,), labels=("PSY",), iat=now()), story.patient.identity
    )
    answer = answered(await manage(story, "keep", records=[grant.encoded, restriction.encoded]))
    assert answer == {"stored": 1}, "the grant was kept before"
    listed = await gp_listing(story, grant)
    assert story.docs["cbc"] in listed and story.docs["lithium"] not in listed
    refused(await gp_fetch(story, grant, story.docs["lithium"]), 404, "not-found")
    assert answered(await manage(story, "keep", records=[])) == {"stored": 0}


async def test_revoke_makes_the_clinics_next_fetch_fail(story: Story) -> None:
    grant = patient_grant(story, story.gp.did, Scope(categories=("lab",), past=True))
    answered(await manage(story, "keep", records=[grant.encoded]))
    assert (await gp_fetch(story, grant, story.docs["cbc"])).status == 200
    before = await newest_head(story)
    revocation = open_record(
        answered(await manage(story, "revoke", grant=grant.id, reason="moved away"))["revocation"], Revocation
    )
    assert revocation.signer == story.patient.did
    assert (revocation.record.grant, revocation.record.reason) == (grant.id, "moved away")
    head = await newest_head(story)
    assert head.record.seq == before.record.seq + 1 and head.record.prev == before.id
    refused(await gp_fetch(story, grant, story.docs["cbc"]), 403, "revoked")
    refused(await as_gp(story, "/v0/list", chain=[grant.encoded]), 403, "revoked")
    # The GP learns it by polling, as from a revocation made on the node itself ([API-19]).
    assert revocation.encoded in answered(await as_gp(story, "/v0/state"))["revocations"]


async def test_delete_withdraws_a_document(story: Story) -> None:
    doc = await deposit_from_lab(story, "Glucose")
    answered(await manage(story, "accept", doc=doc))
    before = await newest_head(story)
    tombstone = open_record(answered(await manage(story, "delete", doc=doc))["tombstone"], Tombstone)
    assert tombstone.signer == story.patient.did and tombstone.record.doc == doc
    assert await story.patient.h.store.document_state(doc) is None
    assert not story.patient.h.files.path_of(doc).exists()
    assert (await newest_head(story)).id == before.id, "a deletion signs no head ([API-17])"
    # The tombstone goes to the lab, which deposited the document, and to the GP, whose grant of lab results
    # reaches it ([API-16]); a node whose grant does not reach it is not told.
    as_lab = await send_signed(story.session, story.lab.identity, "POST", story.patient.url + "/v0/state", body())
    assert tombstone.encoded in answered(as_lab)["tombstones"]
    assert tombstone.encoded in answered(await as_gp(story, "/v0/state"))["tombstones"]
    assert set(await story.patient.patient.expected_attestations(doc)) == {story.lab.did, story.gp.did}
    await refused_unchanged(story, "delete", 404, "not-found", doc=doc)


async def test_audit_reads_the_log_as_stored(story: Story) -> None:
    """The audit op answers every entry of the log in seq order, as stored (15.10, 15.19)."""
    grant = patient_grant(story, story.gp.did, Scope(past=True, future=True))
    answered(await manage(story, "keep", records=[grant.encoded]))
    fetched = await gp_fetch(story, grant, story.docs["cbc"])
    assert fetched.status == 200, (fetched.status, fetched.body)
    entries = answered(await manage(story, "audit"))["entries"]
    links = await story.patient.h.store.audit_links()
    assert [e["seq"] for e in entries] == [link.seq for link in links] and entries
    for entry, link in zip(entries, links, strict=True):
        assert entry == {
            "seq": link.seq,
            "receipt": link.receipt,
            "at": link.at,
            "prev_hash": link.prev_hash,
            "entry_hash": link.entry_hash,
            "countersignature": link.countersignature,
        }
    assert open_record(entries[-1]["receipt"], AccessReceipt).signer == story.gp.did
    assert await story.patient.patient.verify_audit() == (True, len(entries), "the audit chain verifies")


# --- refusals ---------------------------------------------------------------------------------------

SOME_DOC = bytes(range(32))


# Requests that the patient's own key would have succeed with, built from the story.
ANOTHER_KEY: dict[str, Callable[[Story], dict[str, Any]]] = {
    "inbox": lambda story: {},
    "invite": lambda story: {"label": "intruder"},
    "hide": lambda story: {"doc": story.docs["cbc"], "hidden": True},
    "label": lambda story: {"doc": story.docs["cbc"], "labels": ["PSY"]},
    "delete": lambda story: {"doc": story.docs["cbc"]},
    "revoke": lambda story: {"grant": story.gp_grant.id},
    "keep": lambda story: {"records": [patient_grant(story, story.gp.did, Scope(past=True)).encoded]},
}


@pytest.mark.parametrize("op", sorted(ANOTHER_KEY))
async def test_another_nodes_key_is_refused(story: Story, op: str) -> None:
    """Signed by the GP or the lab, whose requests verify: wrong-audience, nothing changes ([API-50])."""
    args = ANOTHER_KEY[op](story)
    await refused_unchanged(story, op, 403, "wrong-audience", signer=story.gp.identity, **args)
    await refused_unchanged(story, op, 403, "wrong-audience", signer=story.lab.identity, **args)


async def test_wrong_audience_comes_before_the_op(story: Story) -> None:
    await refused_unchanged(story, "no-such-op", 403, "wrong-audience", signer=story.gp.identity)


async def test_the_patients_did_with_another_key_is_not_the_patient(story: Story) -> None:
    """Claiming the node's did without its key fails at the signature ([HTTP-7]), before any op."""
    before = await snapshot(story.patient)
    impostor = Impostor(story.patient.did, story.gp.identity)
    refused(await manage(story, "inbox", signer=impostor), 401, "bad-signature")
    await assert_unchanged(story.patient, before, nonce_spent=False)


@pytest.mark.parametrize(
    ("op", "args"),
    [
        (None, {}),
        ("no-such-op", {}),
        (7, {}),
        ("INVITE", {}),
        ("invite", {"ttl": 0}),
        ("invite", {"ttl": 30 * DAY + 1}),
        ("invite", {"ttl": True}),
        ("invite", {"ttl": "3600"}),
        ("invite", {"label": ""}),
        ("invite", {"label": 5}),
        ("accept", {}),
        ("accept", {"doc": bytes(31)}),
        ("accept", {"doc": SOME_DOC.hex()}),
        ("accept", {"doc": SOME_DOC, "labels": "PSY"}),
        ("accept", {"doc": SOME_DOC, "labels": ["not a token"]}),
        ("accept", {"doc": SOME_DOC, "labels": ["L"] * 65}),
        ("reject", {}),
        ("label", {"doc": SOME_DOC}),
        ("label", {"doc": SOME_DOC, "labels": ["PSY"], "remove": 1}),
        ("hide", {"doc": SOME_DOC}),
        ("hide", {"doc": SOME_DOC, "hidden": 0}),
        ("revoke", {}),
        ("revoke", {"grant": bytes(33)}),
        ("revoke", {"grant": SOME_DOC, "reason": "x" * 257}),
        ("delete", {"doc": None}),
        ("keep", {}),
        ("keep", {"records": b"not an array"}),
        ("keep", {"records": ["text"]}),
        ("keep", {"records": [b""] * 513}),
    ],
)
async def test_malformed_requests_change_nothing(story: Story, op: Any, args: dict[str, Any]) -> None:
    await refused_unchanged(story, op, 400, "malformed", **args)


@pytest.mark.parametrize("op", ["accept", "reject", "label", "hide", "delete", "revoke"])
async def test_unknown_document_or_grant(story: Story, op: str) -> None:
    unknown = os.urandom(32)
    args: dict[str, Any] = {"grant": unknown} if op == "revoke" else {"doc": unknown}
    args |= {"label": {"labels": ["PSY"]}, "hide": {"hidden": True}}.get(op, {})
    await refused_unchanged(story, op, 404, "not-found", **args)


async def test_keep_refuses_a_record_signed_by_another_node(story: Story) -> None:
    """One foreign record refuses the whole batch: the patient's grant before it is not stored ([API-53])."""
    own = patient_grant(story, story.gp.did, Scope(past=True))
    t = now()
    foreign = sign_record(
        Grant(
            audience=story.lab.did,
            scope=Scope(past=True),
            actions=("read",),
            purpose="treatment",
            iat=t,
            nbf=t,
            exp=t + DAY,
            nonce=os.urandom(16),
        ),
        story.gp.identity,
    )
    await refused_unchanged(story, "keep", 401, "bad-signature", records=[own.encoded, foreign.encoded])
    assert await story.patient.h.store.record(Grant, own.id) is None


async def test_keep_refuses_other_record_types(story: Story) -> None:
    own = patient_grant(story, story.gp.did, Scope(past=True))
    # A revocation signed by the patient is the patient's, but not a type keep takes.
    revocation = sign_record(Revocation(grant=own.id, iat=now()), story.patient.identity)
    await refused_unchanged(story, "keep", 400, "wrong-type", records=[own.encoded, revocation.encoded])
    head = await newest_head(story)
    await refused_unchanged(story, "keep", 400, "wrong-type", records=[head.encoded])
    assert await story.patient.h.store.record(Grant, own.id) is None


@pytest.mark.parametrize(
    ("garbage", "code"), [(b"", "malformed"), (b"\xff", "malformed"), (b"\x00", "bad-header")]
)
async def test_keep_refuses_a_malformed_record(story: Story, garbage: bytes, code: str) -> None:
    own = patient_grant(story, story.gp.did, Scope(past=True))
    await refused_unchanged(story, "keep", 400, code, records=[own.encoded, garbage])
    assert await story.patient.h.store.record(Grant, own.id) is None
