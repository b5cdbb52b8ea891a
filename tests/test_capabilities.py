"""Capability verification (spec section 7, [CAP-*]): every rule, in its order."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from fedrecord.core import Code, Grant, PrivateRestriction, Revocation, Scope, StateHead, sign_record
from fedrecord.core.capabilities import (
    DocumentFacts,
    Freshness,
    RevocationSet,
    decide,
    document_refusal,
    narrowing_problem,
)

from .conftest import DAY, NOW, identity, seed

PATIENT = identity("patient")
GP = identity("gp")
SPECIALIST = identity("specialist")
MALLORY = identity("mallory")

LAB_RESULT = DocumentFacts(
    id=seed("doc:lab"), category="lab", labels=frozenset({"lab"}), date=NOW - 30 * DAY, added=NOW - 20 * DAY
)
PSY_NOTE = DocumentFacts(
    id=seed("doc:psy"), category="note", labels=frozenset({"PSY"}), date=NOW - 5 * DAY, added=NOW - 5 * DAY
)


def grant(issuer=PATIENT, audience=GP, parent=None, **changes):
    fields = dict(
        audience=audience.did,
        scope=Scope(categories=("lab",), since=NOW - 365 * DAY, past=True, future=True),
        actions=("delegate", "read"),
        purpose="treatment",
        iat=NOW - 10 * DAY,
        nbf=NOW - 10 * DAY,
        exp=NOW + 80 * DAY,
        parent=parent.id if parent is not None else None,
        nonce=seed(f"nonce:{issuer.did}:{audience.did}")[:16],
    )
    fields.update(changes)
    return sign_record(Grant(**fields), issuer)


def check(chain, requester=GP, action="read", document=LAB_RESULT, **kwargs):
    return decide(
        chain,
        patient=PATIENT.did,
        requester=requester.did,
        action=action,
        now=NOW,
        document=document,
        **kwargs,
    )


def test_patient_grant_allows_reading_a_document_in_scope():
    root = grant()
    decision = check([root])
    assert decision.allowed and decision.grant == root


def test_delegated_grant_allows_the_specialist():
    root = grant()
    child = grant(issuer=GP, audience=SPECIALIST, parent=root, actions=("read",), exp=NOW + 10 * DAY)
    assert check([root, child], requester=SPECIALIST).allowed


def test_root_not_issued_by_patient_is_refused():
    assert check([grant(issuer=MALLORY)]).reason is Code.NOT_PATIENT_ROOT


def test_empty_and_overlong_chains_are_broken():
    assert check([]).reason is Code.BROKEN_CHAIN
    root = grant()
    assert check([root] * 9).reason is Code.BROKEN_CHAIN


def test_child_not_issued_by_parent_audience_is_broken():
    root = grant()
    child = grant(issuer=MALLORY, audience=SPECIALIST, parent=root, actions=("read",))
    assert check([root, child], requester=SPECIALIST).reason is Code.BROKEN_CHAIN


def test_child_naming_another_parent_is_broken():
    root = grant()
    other = grant(nonce=b"\x01" * 16)
    child = grant(issuer=GP, audience=SPECIALIST, parent=other, actions=("read",))
    assert check([root, child], requester=SPECIALIST).reason is Code.BROKEN_CHAIN


def test_delegation_needs_the_delegate_action():
    root = grant(actions=("read",))
    child = grant(issuer=GP, audience=SPECIALIST, parent=root, actions=("read",))
    assert check([root, child], requester=SPECIALIST).reason is Code.NOT_DELEGABLE


def test_delegation_that_widens_is_refused():
    root = grant()
    for changes in (
        {"exp": NOW + 81 * DAY},
        {"nbf": NOW - 11 * DAY},
        {"purpose": "research"},
        {"actions": ("manage", "read")},
        {"scope": Scope(past=True, future=True)},
        {"scope": Scope(categories=("imaging", "lab"), since=NOW - 365 * DAY, past=True)},
        {"scope": Scope(categories=("lab",), since=NOW - 400 * DAY, past=True)},
    ):
        child = grant(issuer=GP, audience=SPECIALIST, parent=root, **changes)
        assert check([root, child], requester=SPECIALIST).reason is Code.WIDENED, changes


def test_revocation_by_an_issuer_up_the_chain_kills_the_child():
    root = grant()
    child = grant(issuer=GP, audience=SPECIALIST, parent=root, actions=("read",))
    revocation = sign_record(Revocation(grant=root.id, iat=NOW - 1), PATIENT)
    revocations = RevocationSet.from_records([revocation])
    assert check([root, child], requester=SPECIALIST, revocations=revocations).reason is Code.REVOKED
    assert check([root], revocations=revocations).reason is Code.REVOKED


def test_revocation_by_someone_outside_the_chain_is_void():
    root = grant()
    revocations = RevocationSet.from_records([sign_record(Revocation(grant=root.id, iat=NOW), MALLORY)])
    assert check([root], revocations=revocations).allowed
    # The audience itself is not an issuer of the root grant either.
    revocations = RevocationSet.from_records([sign_record(Revocation(grant=root.id, iat=NOW), GP)])
    assert check([root], revocations=revocations).allowed


def test_the_revoked_link_of_a_chain_is_the_one_decide_refuses():
    """RevocationSet.revoked_link: what a holder of copies checks against (a clinic, [API-19])."""
    root = grant()
    child = grant(issuer=GP, audience=SPECIALIST, parent=root, actions=("read",))
    chain = [root, child]
    for signer, revoked, expected in (
        (PATIENT, child, child),  # the root's issuer is up every link
        (GP, child, child),
        (GP, root, None),  # the root's audience is not up the root
        (SPECIALIST, child, None),  # nor is the child's
        (MALLORY, root, None),
    ):
        revocations = RevocationSet.from_records([sign_record(Revocation(grant=revoked.id, iat=NOW), signer)])
        assert revocations.revoked_link(chain) == expected, (signer.did, revoked is root)
        refused = check(chain, requester=SPECIALIST, revocations=revocations).reason is Code.REVOKED
        assert refused == (expected is not None)
    assert RevocationSet().revoked_link([]) is None


def test_time_window():
    assert check([grant(nbf=NOW + 1)]).reason is Code.NOT_YET_VALID
    assert check([grant(exp=NOW)]).reason is Code.EXPIRED
    assert check([grant(exp=NOW + 1)]).allowed


def test_audience_and_action():
    assert check([grant()], requester=MALLORY).reason is Code.WRONG_AUDIENCE
    assert check([grant()], action="manage").reason is Code.ACTION_NOT_GRANTED


def test_scope_and_restrictions():
    root = grant(scope=Scope(past=True, future=True))
    assert check([root], document=PSY_NOTE).allowed
    restriction = sign_record(PrivateRestriction(grants=(root.id,), labels=("PSY", "SEX"), iat=NOW), PATIENT)
    assert check([root], document=PSY_NOTE, restrictions=[restriction]).reason is Code.RESTRICTED
    assert check([root], document=LAB_RESULT, restrictions=[restriction]).allowed
    forged = sign_record(PrivateRestriction(grants=(root.id,), labels=("PSY",), iat=NOW), MALLORY)
    assert check([root], document=PSY_NOTE, restrictions=[forged]).allowed
    assert check([grant()], document=PSY_NOTE).reason is Code.OUT_OF_SCOPE


def test_past_and_future_documents():
    old = replace(LAB_RESULT, added=NOW - 20 * DAY)
    new = replace(LAB_RESULT, added=NOW - DAY)
    past_only = grant(scope=Scope(categories=("lab",), past=True))
    future_only = grant(scope=Scope(categories=("lab",), future=True))
    assert check([past_only], document=old).allowed
    assert check([past_only], document=new).reason is Code.OUT_OF_SCOPE
    assert check([future_only], document=new).allowed
    assert check([future_only], document=old).reason is Code.OUT_OF_SCOPE


def test_document_ids_scope():
    root = grant(scope=Scope(ids=(LAB_RESULT.id,)))
    assert check([root]).allowed
    assert check([root], document=PSY_NOTE).reason is Code.OUT_OF_SCOPE


def test_state_head_freshness_and_rollback():
    def head(seq, iat, signer=PATIENT):
        return sign_record(
            StateHead(
                seq=seq,
                iat=iat,
                revocations=bytes(32),
                revocation_count=0,
                prev=None if seq == 0 else bytes(32),
            ),
            signer,
        )

    root = grant()
    fresh = Freshness(head=head(5, NOW - 10), highest_seq=5, max_age=60)
    assert check([root], freshness=fresh).allowed
    assert check([root], freshness=replace(fresh, highest_seq=6)).reason is Code.ROLLBACK
    assert check([root], freshness=replace(fresh, max_age=5)).reason is Code.STALE
    assert check([root], freshness=replace(fresh, head=None)).reason is Code.STALE
    foreign = replace(fresh, head=head(9, NOW, signer=MALLORY))
    assert check([root], freshness=foreign).reason is Code.STALE


_tokens = st.sampled_from(["lab", "imaging", "note", "PSY", "HIV"])
_RESTRICTED_LABELS = ("HIV", "PSY")


@st.composite
def scopes(draw):
    ids = draw(st.none() | st.frozensets(st.sampled_from([seed("a"), seed("b")]), min_size=1))
    past, future = draw(st.booleans()), draw(st.booleans())
    selects = past or future
    if not selects and ids is None:
        ids = frozenset({seed("a")})
    return Scope(
        ids=tuple(sorted(ids)) if ids else None,
        categories=draw(st.none() | st.frozensets(_tokens, min_size=1)) if selects else None,
        labels=draw(st.none() | st.frozensets(_tokens, min_size=1)) if selects else None,
        since=draw(st.none() | st.integers(0, 100)) if selects else None,
        past=past,
        future=future,
    )


@st.composite
def documents(draw):
    return DocumentFacts(
        id=draw(st.sampled_from([seed("a"), seed("b"), seed("c")])),
        category=draw(_tokens),
        labels=draw(st.frozensets(_tokens)),
        date=draw(st.integers(0, 200)),
        added=draw(st.integers(0, 200)),
    )


@settings(max_examples=300, deadline=None)
@given(
    parent_scope=scopes(),
    child_scope=scopes(),
    document=documents(),
    parent_iat=st.integers(0, 200),
    child_iat=st.integers(0, 200),
)
def test_delegation_never_widens(parent_scope, child_scope, document, parent_iat, child_iat):
    """Property: whatever a verified delegated chain allows, the parent alone allows too."""
    root = grant(scope=parent_scope, iat=parent_iat, nbf=0, exp=NOW + DAY)
    child = grant(
        issuer=GP, audience=SPECIALIST, parent=root, scope=child_scope, iat=child_iat, nbf=0, exp=NOW + DAY
    )
    if narrowing_problem(child.record, root.record) is not None:
        assert check([root, child], requester=SPECIALIST, document=document).reason is Code.WIDENED
        return
    if check([root, child], requester=SPECIALIST, document=document).allowed:
        assert check([root], document=document).allowed


@settings(max_examples=300, deadline=None)
@given(
    scope=scopes(),
    document=documents(),
    iat=st.integers(0, 200),
    restricted=st.sampled_from(["none", "patient", "mallory"]),
)
def test_a_chain_decided_once_then_each_document_decides_as_decide_does(scope, document, iat, restricted):
    """Property: for a chain allowed without a document, ``document_refusal`` refuses a document exactly
    when ``decide`` with that document does, with the same code (a listing or a batch decides the chain once)."""
    root = grant(scope=scope, iat=iat, nbf=0, exp=NOW + DAY)
    signer = {"patient": PATIENT, "mallory": MALLORY}.get(restricted)
    restrictions = (
        [sign_record(PrivateRestriction(grants=(root.id,), labels=_RESTRICTED_LABELS, iat=NOW), signer)]
        if signer is not None
        else []
    )
    assert check([root], document=None, restrictions=restrictions).allowed
    refusal = document_refusal([root], document, patient=PATIENT.did, restrictions=restrictions)
    decision = check([root], document=document, restrictions=restrictions)
    assert (refusal is None) == decision.allowed
    assert refusal is None or refusal.reason is decision.reason
