"""The clinic node under test (``--peer``): its profile, and the checks of decisions and delegations (15.6, 15.12).

The suite plays the other side of each endpoint: a patient's node of its
own, with a fake patient key, posting deposit-decisions, and a delegating
node, posting chains rooted at that fake patient.  The clinic's endpoints
reveal nothing of what it keeps, so a refused request is judged by its code,
its status and its signature; where a refusal could have stored something,
the case sends the request that would then behave differently.
"""

from __future__ import annotations

import os
from typing import Any

from fedrecord.core import DepositDecision, Grant, NodeProfile, Scope, Signed, cbor, open_record, sign_record
from fedrecord.core.errors import FedrecordError

from ..actors import NOWHERE, Actor, now
from ..registry import Failed, case
from ..session import Session, expect_refusal, expect_status
from ..wire import Answer, Wire

#: What every bad-signature refusal says ([ERR-3]).
OPAQUE = "signature did not verify"


async def _clinic(s: Session) -> tuple[Wire, str]:
    """The peer's wire and did, from its own signed profile."""
    peer = s.require_peer()
    answer = await peer.get("/v0/profile")
    expect_status(answer, 200, what="GET /v0/profile of the peer")
    try:
        profile = open_record(answer.body, NodeProfile)
    except FedrecordError as exc:
        raise Failed(f"the peer's profile does not open: {exc.code.value}") from None
    return peer, profile.signer


def _signed(answer: Answer, did: str) -> None:
    if not answer.signed_by(did):
        raise Failed(
            f"the clinic's answer ({answer.describe()}) is not signed by it and bound to the request"
        )


def _decision(patient: Actor, *, doc: bytes | None = None) -> Signed[DepositDecision]:
    record = DepositDecision(
        deposit=os.urandom(32), doc=doc or os.urandom(32), decision="rejected", iat=now(), reason=None
    )
    return sign_record(record, patient.identity)


class _Delegation:
    """A fake patient, a grantee that may delegate, and the chain it passes to the clinic."""

    def __init__(self, clinic: str) -> None:
        self.patient = Actor.create("Fake patient", role="patient")
        self.delegator = Actor.create("Delegating clinic")
        self.clinic = clinic
        self.root = self.patient.grant(self.delegator.did, actions=("read", "delegate"))

    def leaf(
        self, *, parent: Signed[Grant] | None = None, signer: Actor | None = None, **terms: Any
    ) -> Signed[Grant]:
        parent = parent or self.root
        terms.setdefault("nbf", parent.record.nbf)
        terms.setdefault("exp", parent.record.exp)
        terms.setdefault("actions", ("read",))
        return (signer or self.delegator).grant(terms.pop("audience", self.clinic), parent=parent.id, **terms)

    def fields(self, links: list[Signed[Grant]], **overrides: Any) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "patient": self.patient.did,
            "endpoint": NOWHERE,
            "profile": self.patient.profile.encoded,
            "chain": [g.encoded for g in links],
        }
        fields.update(overrides)
        return fields

    async def send(
        self, peer: Wire, links: list[Signed[Grant]], *, signer: Actor | None = None, **overrides: Any
    ) -> Answer:
        return await peer.call(
            "/v0/grants", (signer or self.delegator).identity, self.fields(links, **overrides)
        )


@case("peer.profile-and-health", requires=["API-1", "API-7", "API-60"])
async def profile_and_health(s: Session) -> None:
    """The clinic's profile and health say role clinic, and it does not serve the patient endpoints."""
    peer, did = await _clinic(s)
    profile = open_record((await peer.get("/v0/profile")).body, NodeProfile)
    if profile.record.role != "clinic" or 0 not in profile.record.versions:
        raise Failed(
            f"the peer's profile says role {profile.record.role!r}, versions {profile.record.versions!r}"
        )
    answer = await peer.get("/v0/health")
    expect_status(answer, 200, what="GET /v0/health")
    try:
        health = cbor.decode(answer.body)
    except FedrecordError as exc:
        raise Failed(f"the health answer is not strict CBOR: {exc.code.value}") from None
    if type(health) is not dict or (health.get("v"), health.get("node"), health.get("role")) != (
        0,
        did,
        "clinic",
    ):
        raise Failed(f"the clinic's health answer is {health!r}")
    someone = Actor.create("Conformance node")
    for path in ("/v0/state", "/v0/list", "/v0/fetch", "/v0/sync"):
        expect_refusal(await peer.call(path, someone.identity, {}), "not-found", what=f"{path} on a clinic")
    # Both roles serve the control endpoint, each for its own key only (15.19, 15.20).
    expect_refusal(await peer.call("/v0/manage", someone.identity, {"op": "held"}), "wrong-audience")


@case("peer.decision-unknown-deposit", requires=["API-15"], adversarial=True)
async def decision_unknown_deposit(s: Session) -> None:
    """A deposit-decision for a document the clinic never deposited for the requester is not-found."""
    peer, did = await _clinic(s)
    patient = Actor.create("Fake patient", role="patient")
    decision = _decision(patient)
    answer = await peer.call("/v0/decisions", patient.identity, {"decision": decision.encoded})
    expect_refusal(answer, "not-found")
    _signed(answer, did)
    # Nothing was kept in its place: the same decision, sent again, is refused the same way.
    again = await peer.call("/v0/decisions", patient.identity, {"decision": decision.encoded})
    expect_refusal(again, "not-found", what="the decision sent again")


@case("peer.decision-foreign-signer", requires=["API-15", "API-6", "ERR-3"], adversarial=True)
async def decision_foreign_signer(s: Session) -> None:
    """A deposit-decision signed by another node than the one posting it is bad-signature, before the doc."""
    peer, did = await _clinic(s)
    patient, relay = Actor.create("Fake patient", role="patient"), Actor.create("Relay", role="patient")
    answer = await peer.call("/v0/decisions", relay.identity, {"decision": _decision(patient).encoded})
    expect_refusal(answer, "bad-signature")
    if cbor.decode(answer.body).get("message") != OPAQUE:
        raise Failed("a bad-signature refusal does not carry the opaque message [ERR-3]")
    _signed(answer, did)


@case("peer.decision-not-a-decision", requires=["API-15", "API-2"], adversarial=True)
async def decision_not_a_decision(s: Session) -> None:
    """A decision field holding another record type is wrong-type; one that is no byte string is malformed."""
    peer, _did = await _clinic(s)
    patient = Actor.create("Fake patient", role="patient")
    grant = patient.grant(Actor.create("Someone").did)
    expect_refusal(
        await peer.call("/v0/decisions", patient.identity, {"decision": grant.encoded}),
        "wrong-type",
        what="a grant",
    )
    expect_refusal(
        await peer.call("/v0/decisions", patient.identity, {"decision": "rejected"}),
        "malformed",
        what="a text",
    )
    expect_refusal(await peer.call("/v0/decisions", patient.identity, {}), "malformed", what="no decision")


@case("peer.delegation-accepted", requires=["API-30"])
async def delegation_accepted(s: Session) -> None:
    """A valid delegation rooted at a patient is answered 201 with the leaf's id, signed by the clinic."""
    peer, did = await _clinic(s)
    d = _Delegation(did)
    leaf = d.leaf(scope=Scope(past=True, future=True, categories=("lab",)))
    answer = await d.send(peer, [d.root, leaf])
    expect_status(answer, 201, what="a valid delegation")
    _signed(answer, did)
    if answer.data.get("grant") != leaf.id:
        raise Failed("the delegation answer does not name the leaf's record id")
    # A three-link chain: the clinic's grantee delegated again to it.
    middle_actor = Actor.create("Second delegator")
    middle = d.leaf(audience=middle_actor.did, actions=("read", "delegate"))
    last = d.leaf(parent=middle, signer=middle_actor)
    answer = await d.send(peer, [d.root, middle, last], signer=middle_actor)
    expect_status(answer, 201, what="a three-link delegation")
    if answer.data.get("grant") != last.id:
        raise Failed("the delegation answer does not name the leaf's record id")


@case("peer.delegation-broken-chain", requires=["API-30", "CAP-3", "CAP-4"], adversarial=True)
async def delegation_broken_chain(s: Session) -> None:
    """A delegation of one link, or whose leaf the requester did not sign, is broken-chain."""
    peer, did = await _clinic(s)
    d = _Delegation(did)
    expect_refusal(
        await d.send(peer, [d.patient.grant(did)], signer=d.patient), "broken-chain", what="a one-link chain"
    )
    stranger = Actor.create("Stranger")
    leaf = d.leaf()
    expect_refusal(
        await d.send(peer, [d.root, leaf], signer=stranger), "broken-chain", what="sent by another node"
    )
    # The leaf check comes before the decision: a widened leaf by another node is still broken-chain.
    wide = d.leaf(signer=stranger, actions=("read", "manage"))
    expect_refusal(await d.send(peer, [d.root, wide]), "broken-chain", what="a leaf signed by another node")
    orphan = d.leaf(parent=d.patient.grant(did))
    expect_refusal(await d.send(peer, [d.root, orphan]), "broken-chain", what="a leaf naming another parent")
    expect_refusal(await d.send(peer, []), "broken-chain", what="an empty chain")


@case("peer.delegation-widened", requires=["API-30", "CAP-5", "CAP-6"], adversarial=True)
async def delegation_widened(s: Session) -> None:
    """A delegated grant wider than its parent is widened; one under a parent without delegate, not-delegable."""
    peer, did = await _clinic(s)
    d = _Delegation(did)
    for leaf, what in (
        (d.leaf(actions=("read", "manage")), "an action the parent lacks"),
        (d.leaf(exp=d.root.record.exp + 60), "a later expiry"),
        (d.leaf(purpose="research"), "another purpose"),
    ):
        expect_refusal(await d.send(peer, [d.root, leaf]), "widened", what=what)
    narrow = d.patient.grant(
        d.delegator.did,
        scope=Scope(past=True, future=True, categories=("lab",)),
        actions=("read", "delegate"),
    )
    leaf = d.leaf(parent=narrow, scope=Scope(past=True, future=True))
    expect_refusal(await d.send(peer, [narrow, leaf]), "widened", what="categories dropped")
    plain = d.patient.grant(d.delegator.did, actions=("read",))
    expect_refusal(await d.send(peer, [plain, d.leaf(parent=plain)]), "not-delegable")


@case("peer.delegation-endpoint", requires=["API-31", "API-74"], adversarial=True)
async def delegation_endpoint(s: Session) -> None:
    """A delegation whose endpoint the patient's profile does not list, or that is no URL, is malformed."""
    peer, did = await _clinic(s)
    d = _Delegation(did)
    for endpoint in ("http://127.0.0.1:10", "http://[::1", NOWHERE + "?q=1"):
        answer = await d.send(peer, [d.root, d.leaf()], endpoint=endpoint)
        expect_refusal(answer, "malformed", what=f"the endpoint {endpoint!r}")
    # Listed, but no base URL: the profile's endpoints are checked too.
    odd = d.patient.profile_with(endpoints=(NOWHERE, "http://[::1"))
    answer = await d.send(peer, [d.root, d.leaf()], profile=odd)
    expect_refusal(answer, "malformed", what="a profile listing an endpoint that is no URL")
    expect_status(await d.send(peer, [d.root, d.leaf()]), 201, what="the delegation after the refusals")


@case("peer.delegation-not-patient-root", requires=["API-30", "CAP-2"], adversarial=True)
async def delegation_not_patient_root(s: Session) -> None:
    """A chain not rooted at the patient the delegation names is not-patient-root."""
    peer, did = await _clinic(s)
    d = _Delegation(did)
    other = Actor.create("Another patient", role="patient")
    root = other.grant(d.delegator.did, actions=("read", "delegate"))
    expect_refusal(await d.send(peer, [root, d.leaf(parent=root)]), "not-patient-root")
    # Naming the other patient with the first patient's profile fails on the profile's signer first.
    answer = await d.send(peer, [root, d.leaf(parent=root)], patient=other.did)
    expect_refusal(answer, "bad-signature", what="a profile not signed by the patient named")


@case("peer.delegation-audience-and-time", requires=["API-30", "CAP-8", "CAP-9", "CAP-10"], adversarial=True)
async def delegation_audience_and_time(s: Session) -> None:
    """A leaf for another node is wrong-audience, without read action-not-granted, expired expired."""
    peer, did = await _clinic(s)
    d = _Delegation(did)
    expect_refusal(
        await d.send(peer, [d.root, d.leaf(audience=Actor.create("Other clinic").did)]), "wrong-audience"
    )
    expect_refusal(await d.send(peer, [d.root, d.leaf(actions=("delegate",))]), "action-not-granted")
    t = now()
    old = d.patient.grant(d.delegator.did, actions=("read", "delegate"), iat=t - 100, nbf=t - 100, exp=t - 10)
    expect_refusal(await d.send(peer, [old, d.leaf(parent=old)]), "expired")
    later = d.patient.grant(d.delegator.did, actions=("read", "delegate"), nbf=t + 3600, exp=t + 7200)
    expect_refusal(await d.send(peer, [later, d.leaf(parent=later)]), "not-yet-valid")


@case("peer.delegation-malformed", requires=["API-30", "API-2"], adversarial=True)
async def delegation_malformed(s: Session) -> None:
    """Fields of the wrong type are malformed; a profile of another type is wrong-type; a forged one bad-signature."""
    peer, did = await _clinic(s)
    d = _Delegation(did)
    chain = [d.root, d.leaf()]
    for overrides, what in (
        ({"patient": 7}, "a patient that is not text"),
        ({"endpoint": b"http://x"}, "an endpoint that is not text"),
        ({"profile": "profile"}, "a profile that is not bytes"),
        ({"chain": "chain"}, "a chain that is not an array"),
    ):
        expect_refusal(await d.send(peer, chain, **overrides), "malformed", what=what)
    expect_refusal(
        await d.send(peer, chain, profile=d.root.encoded), "wrong-type", what="a grant as the profile"
    )
    expect_refusal(
        await d.send(peer, [d.root, d.patient.profile], profile=d.patient.profile.encoded),  # type: ignore[list-item]
        "wrong-type",
        what="a profile as a link",
    )
    impostor = Actor.create("Impostor", role="patient")
    answer = await d.send(peer, chain, profile=impostor.profile.encoded)
    expect_refusal(answer, "bad-signature", what="a profile signed by another key than the patient's")
    # The profile is checked before the chain's length.
    answer = await d.send(peer, [d.root], profile=impostor.profile.encoded)
    expect_refusal(answer, "bad-signature", what="a forged profile and a one-link chain")
