"""Vectors for capability verification (spec section 7, [CAP-*] and [HEAD-*])."""

from __future__ import annotations

from typing import Any

from fedrecord.core import (
    Grant,
    PrivateRestriction,
    Revocation,
    Scope,
    Signed,
    SigningIdentity,
    StateHead,
    sign_record,
)
from fedrecord.core.capabilities import DocumentFacts

from .format import VectorFile, fixed_seed
from .record_cases import forge
from .samples import DAY, GP, MALLORY, NOW, PATIENT, SPECIALIST

NOTES = {
    "Allowed": {"bugType": "BASIC", "description": "A request the chain allows."},
    "Root": {"bugType": "AUTH_BYPASS", "description": "The chain does not start at the patient ([CAP-2])."},
    "Chain": {
        "bugType": "AUTH_BYPASS",
        "description": "Links not joined parent to child ([CAP-3], [CAP-4]).",
    },
    "Delegation": {
        "bugType": "AUTH_BYPASS",
        "description": "Delegation without the delegate action ([CAP-5]).",
    },
    "Attenuation": {
        "bugType": "AUTH_BYPASS",
        "description": "A delegated grant wider than its parent ([CAP-6]).",
    },
    "Revocation": {
        "bugType": "AUTH_BYPASS",
        "description": "A link revoked by an issuer up the chain ([CAP-7]).",
    },
    "VoidRevocation": {
        "bugType": "EDGE_CASE",
        "description": "A revocation by someone outside the chain is void.",
    },
    "Time": {"bugType": "EXPIRED", "description": "Outside a link's [nbf, exp) window ([CAP-8])."},
    "Audience": {
        "bugType": "AUTH_BYPASS",
        "description": "The requester is not the last link's audience ([CAP-9]).",
    },
    "Action": {"bugType": "AUTH_BYPASS", "description": "The action is not granted ([CAP-10])."},
    "Scope": {"bugType": "AUTH_BYPASS", "description": "The document is outside a link's scope ([CAP-11])."},
    "Restriction": {
        "bugType": "AUTH_BYPASS",
        "description": "A private restriction hides the document ([CAP-13]).",
    },
    "Freshness": {"bugType": "ROLLBACK", "description": "No, foreign or stale state head ([HEAD-4])."},
    "Rollback": {"bugType": "ROLLBACK", "description": "State head older than one seen before ([HEAD-3])."},
    "Signature": {"bugType": "MODIFIED_SIGNATURE", "description": "A link that does not verify ([CAP-1])."},
}

LAB_DOC = {
    "id": fixed_seed("doc:lab").hex(),
    "category": "lab",
    "labels": ["lab"],
    "date": NOW - 30 * DAY,
    "added": NOW - 20 * DAY,
}
PSY_DOC = {
    "id": fixed_seed("doc:psy").hex(),
    "category": "note",
    "labels": ["PSY"],
    "date": NOW - 5 * DAY,
    "added": NOW - 5 * DAY,
}
NEW_LAB_DOC = {**LAB_DOC, "id": fixed_seed("doc:lab-new").hex(), "date": NOW - DAY, "added": NOW - DAY}
OLD_LAB_DOC = {
    **LAB_DOC,
    "id": fixed_seed("doc:lab-old").hex(),
    "date": NOW - 400 * DAY,
    "added": NOW - 399 * DAY,
}


def facts(document: dict[str, Any]) -> DocumentFacts:
    """The DocumentFacts a vector's `document` object stands for."""
    return DocumentFacts(
        id=bytes.fromhex(document["id"]),
        category=document["category"],
        labels=frozenset(document["labels"]),
        date=document["date"],
        added=document["added"],
    )


def grant(
    issuer: SigningIdentity = PATIENT,
    audience: SigningIdentity = GP,
    parent: Signed[Grant] | None = None,
    **changes: Any,
) -> Signed[Grant]:
    fields: dict[str, Any] = {
        "audience": audience.did,
        "scope": Scope(categories=("lab",), since=NOW - 365 * DAY, past=True, future=True),
        "actions": ("delegate", "read"),
        "purpose": "treatment",
        "iat": NOW - 10 * DAY,
        "nbf": NOW - 10 * DAY,
        "exp": NOW + 80 * DAY,
        "parent": parent.id if parent is not None else None,
        "nonce": fixed_seed(f"grant-nonce:{issuer.did}:{audience.did}:{sorted(changes)}")[:16],
    }
    fields.update(changes)
    return sign_record(Grant(**fields), issuer)


def head(seq: int, iat: int, signer: SigningIdentity = PATIENT) -> Signed[StateHead]:
    return sign_record(
        StateHead(
            seq=seq,
            iat=iat,
            revocations=fixed_seed("revs"),
            revocation_count=0,
            prev=None if seq == 0 else fixed_seed(f"head{seq}"),
        ),
        signer,
    )


def build() -> VectorFile:
    file = VectorFile(
        algorithm="fedrecord-capabilities",
        header=[
            "Capability decisions (spec section 7). Open every `chain` link (root first) as a grant, the",
            "`revocations`, the optional `head` and the `restrictions`; then decide whether `requester`",
            "may do `action` on `document` (or on nothing when null) at time `now` for `patient`. When",
            "`maxHeadAge` is not null the head must be the patient's, no older than that many seconds,",
            "with seq >= `highestSeq`. `result` valid means allowed; invalid cases name the first rule",
            "broken in `error`, in the order of spec [CAP-*].",
        ],
        notes=NOTES,
    )
    tests = file.group("CapabilityDecision", "decisions on grant chains")

    def case(
        comment: str,
        flag: str,
        error: str | None,
        chain: list[Signed[Grant]],
        *,
        requester: SigningIdentity = GP,
        action: str = "read",
        document: dict[str, Any] | None = LAB_DOC,
        revocations: list[Signed[Revocation] | bytes] = (),  # type: ignore[assignment]
        restrictions: list[Signed[PrivateRestriction] | bytes] = (),  # type: ignore[assignment]
        state_head: Signed[StateHead] | bytes | None = None,
        highest_seq: int = 0,
        max_head_age: int | None = None,
        raw_chain: list[bytes] | None = None,
    ) -> None:
        encoded_head = state_head.encoded if isinstance(state_head, Signed) else state_head
        file.case(
            tests,
            comment,
            result="valid" if error is None else "invalid",
            flags=[flag],
            error=error,
            patient=PATIENT.did,
            requester=requester.did,
            action=action,
            now=NOW,
            chain=[c.hex() for c in raw_chain] if raw_chain else [link.encoded.hex() for link in chain],
            revocations=[_encoded(r).hex() for r in revocations],
            restrictions=[_encoded(r).hex() for r in restrictions],
            head=encoded_head.hex() if encoded_head is not None else None,
            highestSeq=highest_seq,
            maxHeadAge=max_head_age,
            document=document,
        )

    root = grant()
    child = grant(issuer=GP, audience=SPECIALIST, parent=root, actions=("read",), exp=NOW + 10 * DAY)
    everything = grant(scope=Scope(past=True, future=True))

    case("patient grant, lab result in scope", "Allowed", None, [root])
    case("patient grant, no document (listing)", "Allowed", None, [root], document=None)
    case("delegated read for the specialist", "Allowed", None, [root, child], requester=SPECIALIST)
    case("grant by document id", "Allowed", None, [grant(scope=Scope(ids=(fixed_seed("doc:lab"),)))])
    case(
        "future documents: one added after the grant",
        "Allowed",
        None,
        [grant(scope=Scope(categories=("lab",), future=True))],
        document=NEW_LAB_DOC,
    )
    case(
        "past documents: one added before the grant",
        "Allowed",
        None,
        [grant(scope=Scope(categories=("lab",), past=True))],
    )
    case("label selector", "Allowed", None, [grant(scope=Scope(labels=("lab", "imaging"), past=True))])
    case(
        "fresh head required and held",
        "Allowed",
        None,
        [root],
        state_head=head(5, NOW - 10),
        highest_seq=5,
        max_head_age=60,
    )

    case("root issued by someone else", "Root", "not-patient-root", [grant(issuer=MALLORY)])
    case("root issued by the GP to itself", "Root", "not-patient-root", [grant(issuer=GP)])
    case("chain of the specialist's grant alone", "Root", "not-patient-root", [child], requester=SPECIALIST)
    case("empty chain", "Chain", "broken-chain", [])
    case("nine links", "Chain", "broken-chain", [root] * 9)
    case("root names a parent", "Chain", "broken-chain", [grant(parent=root)])
    case(
        "child issued by someone other than the parent's audience",
        "Chain",
        "broken-chain",
        [root, grant(issuer=MALLORY, audience=SPECIALIST, parent=root, actions=("read",))],
        requester=SPECIALIST,
    )
    case(
        "child names another parent",
        "Chain",
        "broken-chain",
        [root, grant(issuer=GP, audience=SPECIALIST, parent=everything, actions=("read",))],
        requester=SPECIALIST,
    )
    case("links in the wrong order", "Root", "not-patient-root", [child, root], requester=SPECIALIST)
    no_delegate = grant(actions=("read",))
    case(
        "parent without delegate",
        "Delegation",
        "not-delegable",
        [no_delegate, grant(issuer=GP, audience=SPECIALIST, parent=no_delegate, actions=("read",))],
        requester=SPECIALIST,
    )

    for comment, changes in (
        ("child outlives its parent", {"exp": NOW + 81 * DAY}),
        ("child starts before its parent", {"nbf": NOW - 11 * DAY}),
        ("child adds an action", {"actions": ("manage", "read")}),
        ("child changes the purpose", {"purpose": "research"}),
        ("child drops the category filter", {"scope": Scope(since=NOW - 365 * DAY, past=True)}),
        (
            "child adds a category",
            {"scope": Scope(categories=("imaging", "lab"), since=NOW - 365 * DAY, past=True)},
        ),
        (
            "child starts the date window earlier",
            {"scope": Scope(categories=("lab",), since=NOW - 400 * DAY, past=True)},
        ),
    ):
        widened = grant(issuer=GP, audience=SPECIALIST, parent=root, **changes)
        case(comment, "Attenuation", "widened", [root, widened], requester=SPECIALIST)
    ids_only = grant(scope=Scope(ids=(fixed_seed("doc:lab"),)))
    case(
        "child names documents outside an id-only parent",
        "Attenuation",
        "widened",
        [
            ids_only,
            grant(
                issuer=GP,
                audience=SPECIALIST,
                parent=ids_only,
                scope=Scope(ids=(fixed_seed("doc:lab"), fixed_seed("doc:psy"))),
            ),
        ],
        requester=SPECIALIST,
    )
    future_only = grant(scope=Scope(categories=("lab",), past=True))
    case(
        "child asks for future documents of a past-only parent",
        "Attenuation",
        "widened",
        [
            future_only,
            grant(
                issuer=GP,
                audience=SPECIALIST,
                parent=future_only,
                scope=Scope(categories=("lab",), future=True),
            ),
        ],
        requester=SPECIALIST,
    )

    revoke_root = sign_record(Revocation(grant=root.id, iat=NOW - 1), PATIENT)
    case("root revoked by the patient", "Revocation", "revoked", [root], revocations=[revoke_root])
    case(
        "parent revoked: the child dies too",
        "Revocation",
        "revoked",
        [root, child],
        requester=SPECIALIST,
        revocations=[revoke_root],
    )
    case(
        "child revoked by the GP who issued it",
        "Revocation",
        "revoked",
        [root, child],
        requester=SPECIALIST,
        revocations=[sign_record(Revocation(grant=child.id, iat=NOW - 1), GP)],
    )
    case(
        "child revoked by the patient up the chain",
        "Revocation",
        "revoked",
        [root, child],
        requester=SPECIALIST,
        revocations=[sign_record(Revocation(grant=child.id, iat=NOW - 1), PATIENT)],
    )
    case(
        "revocation by someone outside the chain is void",
        "VoidRevocation",
        None,
        [root],
        revocations=[sign_record(Revocation(grant=root.id, iat=NOW), MALLORY)],
    )
    case(
        "a revocation whose signature does not verify is void",
        "VoidRevocation",
        None,
        [root],
        revocations=[_broken(sign_record(Revocation(grant=root.id, iat=NOW), PATIENT))],
    )
    case(
        "the audience cannot revoke its own root grant",
        "VoidRevocation",
        None,
        [root],
        revocations=[sign_record(Revocation(grant=root.id, iat=NOW), GP)],
    )
    case(
        "the specialist cannot revoke the GP's root grant",
        "VoidRevocation",
        None,
        [root, child],
        requester=SPECIALIST,
        revocations=[sign_record(Revocation(grant=root.id, iat=NOW), SPECIALIST)],
    )

    case("not yet valid", "Time", "not-yet-valid", [grant(nbf=NOW + 1)])
    case("expired at exactly now", "Time", "expired", [grant(exp=NOW)])
    case(
        "delegated link expired",
        "Time",
        "expired",
        [root, grant(issuer=GP, audience=SPECIALIST, parent=root, actions=("read",), exp=NOW - 1)],
        requester=SPECIALIST,
    )
    case("last second of validity", "Time", None, [grant(exp=NOW + 1)])

    case("requester is not the audience", "Audience", "wrong-audience", [root], requester=MALLORY)
    case("the GP uses the specialist's grant", "Audience", "wrong-audience", [root, child])
    case("manage not granted", "Action", "action-not-granted", [root], action="manage")
    case("deposit not granted", "Action", "action-not-granted", [root], action="deposit")
    case(
        "delegated grant without delegate asks to delegate",
        "Action",
        "action-not-granted",
        [root, child],
        requester=SPECIALIST,
        action="delegate",
    )

    case("category outside scope", "Scope", "out-of-scope", [root], document=PSY_DOC)
    case("date before the window", "Scope", "out-of-scope", [root], document=OLD_LAB_DOC)
    case(
        "past-only grant, document added later",
        "Scope",
        "out-of-scope",
        [grant(scope=Scope(categories=("lab",), past=True))],
        document=NEW_LAB_DOC,
    )
    case(
        "future-only grant, document added before",
        "Scope",
        "out-of-scope",
        [grant(scope=Scope(categories=("lab",), future=True))],
    )
    case("label not selected", "Scope", "out-of-scope", [grant(scope=Scope(labels=("imaging",), past=True))])
    case("id not listed", "Scope", "out-of-scope", [grant(scope=Scope(ids=(fixed_seed("doc:other"),)))])
    case(
        "in the child's scope but not in the parent's (ids meet selectors)",
        "Scope",
        "out-of-scope",
        [
            root,
            grant(
                issuer=GP,
                audience=SPECIALIST,
                parent=root,
                scope=Scope(ids=(fixed_seed("doc:psy"),)),
                actions=("read",),
            ),
        ],
        requester=SPECIALIST,
        document=PSY_DOC,
    )

    restrict = sign_record(
        PrivateRestriction(grants=(everything.id,), labels=("PSY", "SEX"), iat=NOW), PATIENT
    )
    case(
        "everything grant, PSY restricted",
        "Restriction",
        "restricted",
        [everything],
        document=PSY_DOC,
        restrictions=[restrict],
    )
    case(
        "a restriction whose signature does not verify has no effect",
        "Restriction",
        None,
        [everything],
        document=PSY_DOC,
        restrictions=[_broken(restrict)],
    )
    case(
        "everything grant, restriction does not touch a lab result",
        "Restriction",
        None,
        [everything],
        restrictions=[restrict],
    )
    case(
        "restriction by audience and category",
        "Restriction",
        "restricted",
        [everything],
        document=PSY_DOC,
        restrictions=[
            sign_record(PrivateRestriction(audiences=(GP.did,), categories=("note",), iat=NOW), PATIENT)
        ],
    )
    case(
        "restriction by document id",
        "Restriction",
        "restricted",
        [everything],
        restrictions=[
            sign_record(
                PrivateRestriction(audiences=(GP.did,), ids=(fixed_seed("doc:lab"),), iat=NOW), PATIENT
            )
        ],
    )
    everything_to_specialist = grant(
        issuer=GP, audience=SPECIALIST, parent=everything, scope=Scope(past=True, future=True), actions=("read",)
    )
    case(
        "restriction of the parent applies to the delegate",
        "Restriction",
        "restricted",
        [everything, everything_to_specialist],
        requester=SPECIALIST,
        document=PSY_DOC,
        restrictions=[restrict],
    )
    case(
        "restriction of the parent's audience applies to the delegate",
        "Restriction",
        "restricted",
        [everything, everything_to_specialist],
        requester=SPECIALIST,
        document=PSY_DOC,
        restrictions=[
            sign_record(PrivateRestriction(audiences=(GP.did,), labels=("PSY",), iat=NOW), PATIENT)
        ],
    )
    case(
        "restriction not signed by the patient has no effect",
        "Restriction",
        None,
        [everything],
        document=PSY_DOC,
        restrictions=[
            sign_record(PrivateRestriction(grants=(everything.id,), labels=("PSY",), iat=NOW), MALLORY)
        ],
    )

    case("no state head", "Freshness", "stale", [root], max_head_age=60)
    case(
        "state head too old",
        "Freshness",
        "stale",
        [root],
        state_head=head(5, NOW - 61),
        highest_seq=5,
        max_head_age=60,
    )
    case(
        "state head signed by someone else",
        "Freshness",
        "stale",
        [root],
        state_head=head(9, NOW, MALLORY),
        highest_seq=5,
        max_head_age=60,
    )
    case(
        "state head older than one seen before",
        "Rollback",
        "rollback",
        [root],
        state_head=head(4, NOW),
        highest_seq=5,
        max_head_age=60,
    )

    forged = forge({1: -8, 4: PATIENT.did.encode(), 16: "fedrecord/grant"}, root.record.to_wire(), MALLORY)
    case(
        "root signed by someone else under the patient's kid",
        "Signature",
        "bad-signature",
        [],
        raw_chain=[forged],
    )
    tampered = bytearray(root.encoded)
    tampered[-1] ^= 1
    case("root signature altered", "Signature", "bad-signature", [], raw_chain=[bytes(tampered)])
    case(
        "a revocation record as a chain link", "Signature", "wrong-type", [], raw_chain=[revoke_root.encoded]
    )
    return file


def _encoded(record: Signed[Any] | bytes) -> bytes:
    return record.encoded if isinstance(record, Signed) else record


def _broken(record: Signed[Any]) -> bytes:
    """The record with the last byte of its signature changed: it no longer opens ([CAP-7], [CAP-13])."""
    return record.encoded[:-1] + bytes([record.encoded[-1] ^ 1])
