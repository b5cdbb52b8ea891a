"""Capabilities: chains, attenuation, revocation, restrictions, state heads, listing and the fetch decision.

Sections 7, 15.7, 15.8 and 15.9.  The suite signs chain roots as the patient
(it knows the seed), hands the node the grants and restrictions it must hold
through ``POST /v0/manage`` (``keep``), and then reads as the grantees would.
Every refusal is also checked for what it must not let through: the refused
chain lists nothing and fetches nothing, and where a fetch is refused before
its receipt is logged, the same receipt is shown to still be unused.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from typing import Any

from fedrecord.core import (
    Grant,
    NodeProfile,
    Revocation,
    Scope,
    Signed,
    StateHead,
    Tombstone,
    open_record,
    sign_record,
)
from fedrecord.core.errors import FedrecordError
from fedrecord.core.identity import EncryptionKeyPair
from fedrecord.core.records import EncryptionKey, KeyWrap

from ..actors import DAY, Actor, SealedDocument, now
from ..registry import Failed, case
from ..session import Session, expect_refusal
from ..wire import Answer, unb64

WHOLE = Scope(past=True, future=True)
DEVICE_ACTIONS = ("read", "delegate", "manage")


# --- helpers ---------------------------------------------------------------------------------------


def _terms(**overrides: Any) -> dict[str, Any]:
    """Fixed times for every link of a chain, so that a child never outlives its parent by a clock tick."""
    t = now()
    return {"iat": t, "nbf": t - 5, "exp": t + DAY, **overrides}


def _chain(
    s: Session,
    length: int,
    *,
    leaf_actions: Sequence[str] = ("read",),
    scope: Scope = WHOLE,
    **terms: Any,
) -> tuple[Actor, list[Signed[Grant]]]:
    """A valid chain of ``length`` links, root signed by the patient; returns the leaf's audience and it."""
    fixed = _terms(**terms)
    actors = [Actor.create(f"Chain link {i}") for i in range(length)]
    chain: list[Signed[Grant]] = []
    for i, actor in enumerate(actors):
        actions = tuple(leaf_actions) if i == length - 1 else ("read", "delegate")
        if i == 0:
            chain.append(s.patient.grant(actor.did, actions=actions, scope=scope, **fixed))
        else:
            chain.append(
                actors[i - 1].grant(actor.did, actions=actions, scope=scope, parent=chain[-1].id, **fixed)
            )
    return actors[-1], chain


def _delegate(holder: Actor, upper: Signed[Grant], **terms: Any) -> tuple[Actor, Signed[Grant]]:
    """A fresh actor and a child grant to it signed by ``holder`` under ``upper``."""
    child = Actor.create("Delegate")
    fields: dict[str, Any] = {
        "iat": upper.record.iat,
        "nbf": upper.record.nbf,
        "exp": upper.record.exp,
        "scope": upper.record.scope,
        "purpose": upper.record.purpose,
        "actions": ("read",),
        "parent": upper.id,
    }
    fields.update(terms)
    return child, holder.grant(child.did, **fields)


async def _refused(
    s: Session, actor: Actor, chain: Sequence[Signed[Grant]], doc: bytes, code: str, *, what: str = ""
) -> None:
    """The chain is refused with ``code`` for a listing and for a fetch of ``doc``: nothing is readable."""
    expect_refusal(await s.listing(actor, chain), code, what=f"{what} listing".strip())
    expect_refusal(await s.fetch(actor, chain, doc), code, what=f"{what} fetch".strip())


async def _reads(s: Session, actor: Actor, chain: Sequence[Signed[Grant]], doc: SealedDocument) -> None:
    """The chain lists ``doc`` and fetches it, and the content is the one deposited."""
    if doc.doc not in await s.listed(actor, chain):
        raise Failed(f"the listing under the chain does not show {doc.hex[:16]}")
    content = s.open_fetched(actor, await s.fetch(actor, chain, doc.doc), doc.doc)
    if content != doc.content:
        raise Failed("the fetched document is not the one deposited")


async def _missing(s: Session, actor: Actor, chain: Sequence[Signed[Grant]]) -> Answer:
    """A fetch under ``chain`` of a document id nothing holds: the reference not-found answer."""
    answer = await s.fetch(actor, chain, os.urandom(32))
    expect_refusal(answer, "not-found", what="a fetch of a document that does not exist")
    return answer


async def _like_missing(
    s: Session, actor: Actor, chain: Sequence[Signed[Grant]], doc: bytes, *, what: str
) -> None:
    """``doc`` is not listed and its fetch is answered exactly as a document that does not exist ([CAP-12])."""
    if doc in await s.listed(actor, chain):
        raise Failed(f"{what}: the listing shows the document")
    answer = await s.fetch(actor, chain, doc)
    expect_refusal(answer, "not-found", what=what)
    reference = await _missing(s, actor, chain)
    if answer.body != reference.body or answer.headers.get("Content-Type") != reference.headers.get(
        "Content-Type"
    ):
        raise Failed(
            f"{what}: the refusal differs from that of a missing document "
            f"({answer.body!r} vs {reference.body!r})"
        )


async def _own_document(s: Session, content: bytes, **header: Any) -> tuple[Actor, SealedDocument]:
    """A fresh lab, connected, with one document of its own accepted into the record."""
    lab = Actor.create("Capabilities lab")
    grant = await s.connect(lab)
    accept_labels = header.pop("accept_labels", ())
    sealed = await s.accepted(
        lab, grant, content, title="Capabilities case", accept_labels=accept_labels, **header
    )
    return lab, sealed


def _state_records(state: dict[str, Any], key: str, kind: type) -> list[Signed[Any]]:
    try:
        return [open_record(r, kind) for r in state[key]]
    except (KeyError, TypeError, FedrecordError) as exc:
        raise Failed(f"the state answer's {key} do not open as {kind.__name__} records ({exc})") from None


def _head(s: Session, state: dict[str, Any]) -> Signed[StateHead]:
    try:
        head = open_record(state["head"], StateHead)
    except (KeyError, TypeError, FedrecordError) as exc:
        raise Failed(f"the state answer's head does not open as a state head ({exc})") from None
    if head.signer != s.patient.did:
        raise Failed("the state head is not signed by the patient's key")
    return head


def _revs(revocations: Sequence[Signed[Revocation]]) -> tuple[bytes, int]:
    """``revs`` and ``nrevs`` as [API-17] computes them from the revocations held."""
    named = sorted(r.record.grant for r in revocations)
    return hashlib.sha256(b"".join(named)).digest(), len(named)


def _check_revs(s: Session, state: dict[str, Any]) -> Signed[StateHead]:
    """The newest head's ``revs``/``nrevs`` describe exactly the revocations the same answer lists."""
    head = _head(s, state)
    revs, nrevs = _revs(_state_records(state, "revocations", Revocation))
    if (head.record.revocations, head.record.revocation_count) != (revs, nrevs):
        raise Failed(
            f"the head (seq {head.record.seq}) says {head.record.revocation_count} revocations with digest "
            f"{head.record.revocations.hex()[:16]}, the answer holds {nrevs} with digest {revs.hex()[:16]}"
        )
    return head


async def _push(
    s: Session, device: Actor, chain: Sequence[Signed[Grant]], records: Sequence[Signed[Any]]
) -> Answer:
    return await s.wire.call(
        "/v0/push",
        device.identity,
        {"chain": [g.encoded for g in chain], "records": [r.encoded for r in records]},
    )


def _revocation(issuer: Actor, grant: Signed[Grant]) -> Signed[Revocation]:
    return sign_record(Revocation(grant=grant.id, iat=now()), issuer.identity)


def _tampered(link: Signed[Grant]) -> bytes:
    """A grant's bytes with the last byte (in the signature) changed."""
    encoded = bytearray(link.encoded)
    encoded[-1] ^= 0x01
    return bytes(encoded)


async def _list_raw(s: Session, actor: Actor, chain: Sequence[bytes]) -> Answer:
    return await s.wire.call("/v0/list", actor.identity, {"chain": list(chain)})


async def _fetch_raw(s: Session, actor: Actor, chain: Sequence[bytes], receipt: bytes) -> Answer:
    return await s.wire.call(
        "/v0/fetch",
        actor.identity,
        {"chain": list(chain), "receipt": receipt, "profile": actor.profile.encoded},
    )


# --- listing and reading --------------------------------------------------------------------------


@case("capabilities.listing-content", requires=["API-21", "CAP-19"])
async def listing_content(s: Session) -> None:
    """A whole-record grant lists {doc, size, category, date} per accepted document, ascending by (date, doc)."""
    world = await s.world()
    reader, grant = await s.reader()
    answer = await s.listing(reader, [grant])
    if answer.status != 200:
        raise Failed(f"the listing answered {answer.describe()}")
    entries = answer.data.get("documents")
    if type(entries) is not list:
        raise Failed("the list answer has no documents array")
    for entry in entries:
        if type(entry) is not dict or set(entry) != {"doc", "size", "category", "date"}:
            raise Failed(f"a listing entry is not exactly {{doc, size, category, date}}: {entry!r}")
    keys = [(e["date"], e["doc"]) for e in entries]
    if keys != sorted(keys) or len(set(keys)) != len(keys):
        raise Failed("the listing is not in ascending order of (date, doc), or names a document twice")
    by_doc = {e["doc"]: e for e in entries}
    for sealed in world.documents:
        entry = by_doc.get(sealed.doc)
        if entry is None:
            raise Failed(f"the listing does not show the accepted document {sealed.header.title!r}")
        expected = {
            "doc": sealed.doc,
            "size": len(sealed.ciphertext),
            "category": sealed.header.category,
            "date": sealed.header.date,
        }
        if entry != expected:
            raise Failed(f"the entry of {sealed.header.title!r} is {entry!r}, expected {expected!r}")


@case("capabilities.whole-record-read", requires=["API-22", "CAP-17"])
async def whole_record_read(s: Session) -> None:
    """A patient grant with read fetches every world document and its content decrypts."""
    world = await s.world()
    reader, grant = await s.reader()
    for sealed in world.documents:
        content = s.open_fetched(reader, await s.fetch(reader, [grant], sealed.doc), sealed.doc)
        if content != sealed.content:
            raise Failed(f"the fetched {sealed.header.title!r} is not the content deposited")


@case("capabilities.inbox-not-readable", requires=["API-21", "API-22", "CAP-12"], adversarial=True)
async def inbox_not_readable(s: Session) -> None:
    """A deposited but not yet accepted document is neither listed nor fetched, as if it did not exist."""
    lab = Actor.create("Inbox lab")
    deposit_grant = await s.connect(lab)
    sealed = await s.deposit(lab, deposit_grant, b"not yet accepted", title="Pending")
    reader, grant = await s.reader()
    await _like_missing(s, reader, [grant], sealed.doc, what="an inbox document")
    await s.manage("reject", doc=sealed.doc)


# --- chain structure (7.3) ---------------------------------------------------------------------------


@case("capabilities.not-patient-root", requires=["CAP-2"], adversarial=True)
async def not_patient_root(s: Session) -> None:
    """A chain whose root is signed by anyone but the patient is refused not-patient-root."""
    world = await s.world()
    forger, reader = Actor.create("Forger"), Actor.create("Reader")
    root = forger.grant(reader.did)
    await _refused(s, reader, [root], world.lab_result.doc, "not-patient-root")
    # A self-issued root: the requester grants itself the record.
    await _refused(s, reader, [reader.grant(reader.did)], world.lab_result.doc, "not-patient-root")


@case("capabilities.chain-length", requires=["CAP-3", "API-2"], adversarial=True)
async def chain_length(s: Session) -> None:
    """An empty chain is refused broken-chain, a 9-link one malformed; 8 links are read."""
    world = await s.world()
    reader = Actor.create("Reader")
    expect_refusal(await _list_raw(s, reader, []), "broken-chain", what="an empty chain, listing")
    receipt = reader.receipt(s.patient.did, world.lab_result.doc, s.patient.grant(reader.did)).encoded
    expect_refusal(await _fetch_raw(s, reader, [], receipt), "broken-chain", what="an empty chain, fetch")
    leaf_holder, nine = _chain(s, 9)
    expect_refusal(await s.listing(leaf_holder, nine), "malformed", what="a 9-link chain, listing")
    expect_refusal(await s.fetch(leaf_holder, nine, world.lab_result.doc), "malformed", what="9 links, fetch")
    leaf_holder, eight = _chain(s, 8)
    await _reads(s, leaf_holder, eight, world.lab_result)


@case("capabilities.root-with-parent", requires=["CAP-3"], adversarial=True)
async def root_with_parent(s: Session) -> None:
    """A root grant that names a parent is refused broken-chain."""
    world = await s.world()
    reader = Actor.create("Reader")
    other = s.patient.grant(reader.did)
    root = s.patient.grant(reader.did, parent=other.id)
    await _refused(s, reader, [root], world.lab_result.doc, "broken-chain")


@case("capabilities.parent-mismatch", requires=["CAP-4"], adversarial=True)
async def parent_mismatch(s: Session) -> None:
    """A child naming another grant as parent, or one not signed by the parent's audience: broken-chain."""
    world = await s.world()
    holder, chain = _chain(s, 1, leaf_actions=("read", "delegate"))
    elsewhere = s.patient.grant(holder.did, actions=("read", "delegate"), **_terms())
    child, wrong_parent = _delegate(holder, chain[0], parent=elsewhere.id)
    await _refused(
        s, child, [chain[0], wrong_parent], world.lab_result.doc, "broken-chain", what="wrong parent"
    )
    outsider = Actor.create("Outsider")
    child, wrong_issuer = _delegate(outsider, chain[0])
    await _refused(
        s, child, [chain[0], wrong_issuer], world.lab_result.doc, "broken-chain", what="wrong issuer"
    )
    # The same delegation signed by the parent's audience is read.
    child, good = _delegate(holder, chain[0])
    await _reads(s, child, [chain[0], good], world.lab_result)


@case("capabilities.not-delegable", requires=["CAP-5"], adversarial=True)
async def not_delegable(s: Session) -> None:
    """A delegation from a grant without delegate is refused not-delegable, at any depth of the chain."""
    world = await s.world()
    holder, chain = _chain(s, 1, leaf_actions=("read",))
    child, grant = _delegate(holder, chain[0])
    await _refused(s, child, [chain[0], grant], world.lab_result.doc, "not-delegable")
    holder, chain = _chain(s, 2, leaf_actions=("read",))
    child, grant = _delegate(holder, chain[-1])
    await _refused(s, child, [*chain, grant], world.lab_result.doc, "not-delegable", what="third link")


@case("capabilities.widened-actions-time-purpose", requires=["CAP-6"], adversarial=True)
async def widened_actions_time_purpose(s: Session) -> None:
    """A child with more actions, a wider window or another purpose than its parent is refused widened."""
    world = await s.world()
    holder, chain = _chain(s, 1, leaf_actions=("read", "delegate"))
    parent = chain[0]
    variants: dict[str, dict[str, Any]] = {
        "an extra action": {"actions": ("read", "manage")},
        "a later exp": {"exp": parent.record.exp + 1},
        "an earlier nbf": {"nbf": parent.record.nbf - 1},
        "another purpose": {"purpose": "research"},
    }
    for what, terms in variants.items():
        child, grant = _delegate(holder, parent, **terms)
        await _refused(s, child, [parent, grant], world.lab_result.doc, "widened", what=what)


@case("capabilities.widened-scope", requires=["CAP-6"], adversarial=True)
async def widened_scope(s: Session) -> None:
    """A child whose scope is wider than its parent's (category, future, dates, ids) is refused widened."""
    world = await s.world()
    t = now()
    parent_scope = Scope(past=True, categories=("lab",), since=t - 10 * DAY, until=t + DAY)
    holder, chain = _chain(s, 1, leaf_actions=("read", "delegate"), scope=parent_scope)
    parent = chain[0]
    variants = {
        "no category term": Scope(past=True, since=t - 10 * DAY, until=t + DAY),
        "an extra category": Scope(
            past=True, categories=("lab", "imaging"), since=t - 10 * DAY, until=t + DAY
        ),
        "future under a past-only parent": Scope(
            past=True, future=True, categories=("lab",), since=t - 10 * DAY, until=t + DAY
        ),
        "an earlier since": Scope(past=True, categories=("lab",), since=t - 11 * DAY, until=t + DAY),
        "no until": Scope(past=True, categories=("lab",), since=t - 10 * DAY),
    }
    for what, scope in variants.items():
        child, grant = _delegate(holder, parent, scope=scope)
        await _refused(s, child, [parent, grant], world.lab_result.doc, "widened", what=what)
    # ids under a parent that selects nothing must be among the parent's ids.
    ids_holder, ids_chain = _chain(
        s, 1, leaf_actions=("read", "delegate"), scope=Scope(ids=(world.lab_result.doc,))
    )
    child, grant = _delegate(
        ids_holder, ids_chain[0], scope=Scope(ids=(world.lab_result.doc, world.imaging.doc))
    )
    await _refused(s, child, [ids_chain[0], grant], world.imaging.doc, "widened", what="an extra id")


@case("capabilities.chain-scope-intersection", requires=["CAP-6", "CAP-11", "CAP-12"], adversarial=True)
async def chain_scope_intersection(s: Session) -> None:
    """A child naming by id a document its category-limited parent does not select still cannot read it."""
    world = await s.world()
    holder, chain = _chain(
        s, 1, leaf_actions=("read", "delegate"), scope=Scope(past=True, future=True, categories=("lab",))
    )
    child, grant = _delegate(holder, chain[0], scope=Scope(ids=(world.imaging.doc, world.lab_result.doc)))
    full = [chain[0], grant]
    await _like_missing(s, child, full, world.imaging.doc, what="an id outside the parent's categories")
    await _reads(s, child, full, world.lab_result)


# --- revocation (7.5) ------------------------------------------------------------------------------


@case("capabilities.revoked-root", requires=["CAP-7", "CAP-16", "API-17", "HEAD-2"], adversarial=True)
async def revoked_root(s: Session) -> None:
    """A revoked root is refused revoked, with every chain under it; the revocation signs a new head."""
    world = await s.world()
    holder, chain = _chain(s, 1, leaf_actions=("read", "delegate"))
    child, grant = _delegate(holder, chain[0])
    await s.keep(chain[0])
    await _reads(s, holder, chain, world.lab_result)
    before = _head(s, await s.state(holder))
    revocation = open_record((await s.manage("revoke", grant=chain[0].id))["revocation"], Revocation)
    if revocation.signer != s.patient.did or revocation.record.grant != chain[0].id:
        raise Failed("the revocation answered is not the patient's revocation of the grant")
    await _refused(s, holder, chain, world.lab_result.doc, "revoked")
    await _refused(s, child, [chain[0], grant], world.lab_result.doc, "revoked", what="a delegated chain")
    state = await s.state(holder)
    after = _check_revs(s, state)
    if after.record.seq != before.record.seq + 1 or after.record.prev != before.id:
        raise Failed(
            f"the revocation did not sign the next head: seq {before.record.seq} -> {after.record.seq}, "
            f"prev {'names' if after.record.prev == before.id else 'does not name'} the previous head"
        )
    if revocation.id not in {r.id for r in _state_records(state, "revocations", Revocation)}:
        raise Failed("the state answer does not hold the revocation")


@case("capabilities.revoked-middle-link", requires=["CAP-7"], adversarial=True)
async def revoked_middle_link(s: Session) -> None:
    """Revoking a device's grant to a clinic refuses that clinic's chain and its delegates, not the device's."""
    world = await s.world()
    device, device_grant = await s.reader("Patient device", actions=DEVICE_ACTIONS, **_terms())
    await s.keep(device_grant)
    clinic, clinic_grant = _delegate(device, device_grant, actions=("read", "delegate"))
    delegate, delegate_grant = _delegate(clinic, clinic_grant)
    pushed = await _push(s, device, [device_grant], [clinic_grant])
    if pushed.status != 200:
        raise Failed(f"set-up: the device's push of its grant answered {pushed.describe()}")
    await _reads(s, delegate, [device_grant, clinic_grant, delegate_grant], world.lab_result)
    revocation = _revocation(device, clinic_grant)
    pushed = await _push(s, device, [device_grant], [revocation])
    if pushed.status != 200:
        raise Failed(f"set-up: the device's push of its revocation answered {pushed.describe()}")
    await _refused(s, clinic, [device_grant, clinic_grant], world.lab_result.doc, "revoked")
    await _refused(
        s,
        delegate,
        [device_grant, clinic_grant, delegate_grant],
        world.lab_result.doc,
        "revoked",
        what="below",
    )
    await _reads(s, device, [device_grant], world.lab_result)
    state = await s.state(device)
    if revocation.id not in {r.id for r in _state_records(state, "revocations", Revocation)}:
        raise Failed("the state answer does not hold the device's revocation")


@case("capabilities.revocation-set-head", requires=["HEAD-2", "API-17"])
async def revocation_set_head(s: Session) -> None:
    """A revocation a device pushes changes the revocation set, so the newest head counts it."""
    device, device_grant = await s.reader("Patient device", actions=DEVICE_ACTIONS, **_terms())
    await s.keep(device_grant)
    _clinic, clinic_grant = _delegate(device, device_grant)
    before = _check_revs(s, await s.state(device))
    for records in ([clinic_grant], [_revocation(device, clinic_grant)]):
        pushed = await _push(s, device, [device_grant], records)
        if pushed.status != 200:
            raise Failed(f"set-up: the device's push answered {pushed.describe()}")
    after = _check_revs(s, await s.state(device))
    if after.record.seq <= before.record.seq:
        raise Failed("the revocation set changed but no new state head was signed")


@case("capabilities.outsider-revocation-void", requires=["CAP-7", "API-48"], adversarial=True)
async def outsider_revocation_void(s: Session) -> None:
    """A device cannot revoke a grant it did not issue: the push is refused and the grant still reads."""
    world = await s.world()
    device, device_grant = await s.reader("Patient device", actions=DEVICE_ACTIONS, **_terms())
    reader, reader_grant = await s.reader()
    await s.keep(device_grant, reader_grant)
    forged = _revocation(device, reader_grant)
    expect_refusal(
        await _push(s, device, [device_grant], [forged]), "malformed", what="a push of a void revocation"
    )
    # The grantee revoking its own grant is no revocation either (7.5): it cannot push at all.
    self_revocation = _revocation(reader, reader_grant)
    expect_refusal(
        await _push(s, reader, [reader_grant], [self_revocation]),
        "action-not-granted",
        what="a grantee pushing the revocation of its own grant",
    )
    await _reads(s, reader, [reader_grant], world.lab_result)
    held = {r.record.grant for r in _state_records(await s.state(reader), "revocations", Revocation)}
    if reader_grant.id in held:
        raise Failed("the state answer holds a revocation of the grant that nobody up its chain signed")


# --- time, audience, action (7.8) ------------------------------------------------------------------


@case("capabilities.expired", requires=["CAP-8"], adversarial=True)
async def expired(s: Session) -> None:
    """A chain with a link past its exp is refused expired, root or leaf."""
    world = await s.world()
    t = now()
    reader = Actor.create("Reader")
    old = s.patient.grant(reader.did, iat=t - 200, nbf=t - 200, exp=t - 100)
    await _refused(s, reader, [old], world.lab_result.doc, "expired", what="an expired root")
    holder, chain = _chain(s, 1, leaf_actions=("read", "delegate"))
    child, grant = _delegate(holder, chain[0], exp=t - 1, nbf=chain[0].record.nbf)
    await _refused(s, child, [chain[0], grant], world.lab_result.doc, "expired", what="an expired leaf")
    # exp is the first second of invalidity.
    edge = s.patient.grant(reader.did, iat=t - 200, nbf=t - 200, exp=t)
    await _refused(s, reader, [edge], world.lab_result.doc, "expired", what="exp equal to now")


@case("capabilities.not-yet-valid", requires=["CAP-8"], adversarial=True)
async def not_yet_valid(s: Session) -> None:
    """A chain with a link before its nbf is refused not-yet-valid, root or leaf."""
    world = await s.world()
    t = now()
    reader = Actor.create("Reader")
    later = s.patient.grant(reader.did, nbf=t + 3600, exp=t + DAY)
    await _refused(s, reader, [later], world.lab_result.doc, "not-yet-valid", what="a future root")
    holder, chain = _chain(s, 1, leaf_actions=("read", "delegate"))
    child, grant = _delegate(holder, chain[0], nbf=t + 3600)
    await _refused(s, child, [chain[0], grant], world.lab_result.doc, "not-yet-valid", what="a future leaf")


@case("capabilities.wrong-audience", requires=["CAP-9"], adversarial=True)
async def wrong_audience(s: Session) -> None:
    """A chain used by anyone but its leaf's audience is refused wrong-audience."""
    world = await s.world()
    _owner, grant = await s.reader()
    thief = Actor.create("Thief")
    await _refused(s, thief, [grant], world.lab_result.doc, "wrong-audience")
    # The root's audience cannot use a chain whose leaf is someone else's.
    holder, chain = _chain(s, 1, leaf_actions=("read", "delegate"))
    _child, child_grant = _delegate(holder, chain[0])
    await _refused(
        s, holder, [chain[0], child_grant], world.lab_result.doc, "wrong-audience", what="the parent"
    )


@case("capabilities.action-not-granted", requires=["CAP-10", "CAP-17"], adversarial=True)
async def action_not_granted(s: Session) -> None:
    """A leaf without read lists and fetches nothing, whatever other actions it holds."""
    world = await s.world()
    for actions in (("deposit",), ("delegate", "manage", "deposit")):
        reader, grant = await s.reader(actions=actions)
        await _refused(s, reader, [grant], world.lab_result.doc, "action-not-granted", what="+".join(actions))
    # A chain whose root reads but whose leaf only delegates.
    holder, chain = _chain(s, 1, leaf_actions=("read", "delegate"))
    child, grant = _delegate(holder, chain[0], actions=("delegate",))
    await _refused(
        s, child, [chain[0], grant], world.lab_result.doc, "action-not-granted", what="delegate leaf"
    )


@case("capabilities.deposit-grant-cannot-read", requires=["CAP-17", "CAP-10"], adversarial=True)
async def deposit_grant_cannot_read(s: Session) -> None:
    """The deposit grant a connected clinic receives cannot list or fetch, not even its own documents."""
    lab = Actor.create("Depositing lab")
    deposit_grant = await s.connect(lab)
    if "read" in deposit_grant.record.actions:
        raise Failed("the deposit grant lists read")
    sealed = await s.accepted(lab, deposit_grant, b"own result", title="Own result")
    await _refused(s, lab, [deposit_grant], sealed.doc, "action-not-granted")


# --- scope and facts (7.2, [CAP-19]) -------------------------------------------------------------


@case("capabilities.out-of-scope-like-missing", requires=["CAP-11", "CAP-12", "CAP-20"], adversarial=True)
async def out_of_scope_like_missing(s: Session) -> None:
    """A document outside a category-limited grant is unlisted and answered exactly as a missing one."""
    world = await s.world()
    reader, grant = await s.reader(scope=Scope(past=True, future=True, categories=("lab",)))
    await _like_missing(s, reader, [grant], world.imaging.doc, what="an imaging document under a lab grant")
    await _like_missing(s, reader, [grant], world.psy_note.doc, what="a note under a lab grant")
    await _reads(s, reader, [grant], world.lab_result)


@case("capabilities.scope-by-id-and-label", requires=["CAP-20", "CAP-11"], adversarial=True)
async def scope_by_id_and_label(s: Session) -> None:
    """ids select documents outright; labels select by label; nothing else leaks."""
    world = await s.world()
    reader, grant = await s.reader(scope=Scope(ids=(world.imaging.doc,)))
    listed = await s.listed(reader, [grant])
    if listed != {world.imaging.doc}:
        raise Failed(f"a grant naming one id lists {len(listed)} documents, or not that one")
    await _reads(s, reader, [grant], world.imaging)
    await _like_missing(s, reader, [grant], world.lab_result.doc, what="a document not among the ids")
    reader, grant = await s.reader(scope=Scope(past=True, future=True, labels=("PSY",)))
    await _reads(s, reader, [grant], world.psy_note)
    await _like_missing(s, reader, [grant], world.lab_result.doc, what="an unlabelled document under PSY")


@case("capabilities.scope-added-and-date", requires=["CAP-20", "CAP-19", "CAP-11"], adversarial=True)
async def scope_added_and_date(s: Session) -> None:
    """past/future split on when the patient accepted a document; since/until bound its clinical date."""
    _lab, sealed = await _own_document(s, b"added after the grant's iat")
    t = now()
    issued: dict[str, Any] = {"iat": t - 1000, "nbf": t - 5, "exp": t + DAY}
    reader, past_only = await s.reader(scope=Scope(past=True), **issued)
    await _like_missing(
        s, reader, [past_only], sealed.doc, what="a past-only grant, document added after its iat"
    )
    reader, future_only = await s.reader(scope=Scope(future=True), **issued)
    await _reads(s, reader, [future_only], sealed)
    reader, later = await s.reader(scope=Scope(past=True, future=True, since=t + 1000))
    await _like_missing(s, reader, [later], sealed.doc, what="a document dated before since")
    reader, earlier = await s.reader(scope=Scope(past=True, future=True, until=sealed.header.date))
    await _like_missing(s, reader, [earlier], sealed.doc, what="a document dated at until")
    reader, window = await s.reader(
        scope=Scope(past=True, future=True, since=sealed.header.date, until=sealed.header.date + 1)
    )
    await _reads(s, reader, [window], sealed)


@case("capabilities.patient-labels-count", requires=["CAP-19", "CAP-13", "CAP-20"], adversarial=True)
async def patient_labels_count(s: Session) -> None:
    """Labels the patient gives a document join its author's labels for scope and restrictions."""
    _lab, sealed = await _own_document(s, b"labelled twice", labels=["GEN"], accept_labels=["HIV"])
    for label in ("GEN", "HIV"):
        reader, grant = await s.reader(scope=Scope(past=True, future=True, labels=(label,)))
        await _reads(s, reader, [grant], sealed)
    reader, grant = await s.reader(scope=Scope(past=True, future=True, labels=("OTHER",)))
    await _like_missing(s, reader, [grant], sealed.doc, what="a label the document lacks")
    reader, grant = await s.reader()
    await s.keep(s.restriction(labels=["HIV"], grant=grant.id))
    await _like_missing(s, reader, [grant], sealed.doc, what="a patient label a restriction hides")


# --- restrictions and hiding (7.7, 15.8) -----------------------------------------------------------


@case("capabilities.restriction-by-grant", requires=["CAP-13", "CAP-12", "CAP-15"], adversarial=True)
async def restriction_by_grant(s: Session) -> None:
    """A restriction naming a grant hides PSY from it alone, without a trace in listing or state."""
    world = await s.world()
    reader, grant = await s.reader()
    other, other_grant = await s.reader()
    restriction = s.restriction(labels=["PSY"], grant=grant.id)
    await s.keep(grant, restriction)
    await _like_missing(s, reader, [grant], world.psy_note.doc, what="a PSY note restricted from the grant")
    await _reads(s, reader, [grant], world.lab_result)
    await _reads(s, other, [other_grant], world.psy_note)
    state = await s.state(reader)
    for key in ("revocations", "tombstones", "grants"):
        for encoded in state.get(key, []):
            if encoded == restriction.encoded or restriction.id in bytes(encoded):
                raise Failed(f"the state answer's {key} carries the private restriction")
    if restriction.encoded in (await s.listing(reader, [grant])).body:
        raise Failed("the listing carries the private restriction")


@case("capabilities.restriction-by-audience", requires=["CAP-13", "CAP-12"], adversarial=True)
async def restriction_by_audience(s: Session) -> None:
    """A restriction naming a node hides its categories from every chain that node uses, delegated ones too."""
    world = await s.world()
    holder, chain = _chain(s, 1, leaf_actions=("read", "delegate"))
    child, grant = _delegate(holder, chain[0])
    await s.keep(s.restriction(node=child.did, labels=["PSY"]))
    await _like_missing(
        s, child, [chain[0], grant], world.psy_note.doc, what="a PSY note restricted from a node"
    )
    await _reads(s, holder, chain, world.psy_note)


@case("capabilities.restriction-follows-delegation", requires=["CAP-13", "CAP-12"], adversarial=True)
async def restriction_follows_delegation(s: Session) -> None:
    """A restriction naming a node also hides the document from the grants that node delegates (7.7).

    Else the node reads what is hidden from it through a child grant to a key of its own.
    """
    world = await s.world()
    holder, chain = _chain(s, 1, leaf_actions=("read", "delegate"))
    child, grant = _delegate(holder, chain[0])
    await s.keep(s.restriction(node=holder.did, labels=["PSY"]))
    await _like_missing(s, holder, chain, world.psy_note.doc, what="a PSY note restricted from a node")
    await _like_missing(
        s,
        child,
        [chain[0], grant],
        world.psy_note.doc,
        what="the same note, through a grant that node delegated",
    )


@case("capabilities.restriction-on-parent", requires=["CAP-13", "CAP-12"], adversarial=True)
async def restriction_on_parent(s: Session) -> None:
    """A restriction naming a link up the chain hides the document from every delegate below it."""
    world = await s.world()
    holder, chain = _chain(s, 1, leaf_actions=("read", "delegate"))
    child, grant = _delegate(holder, chain[0])
    await s.keep(s.restriction(labels=["PSY"], grant=chain[0].id))
    await _like_missing(s, child, [chain[0], grant], world.psy_note.doc, what="restricted on the parent")
    await _like_missing(s, holder, chain, world.psy_note.doc, what="restricted on the grant itself")


@case("capabilities.hidden-document", requires=["API-21", "API-22", "API-46", "CAP-12"], adversarial=True)
async def hidden_document(s: Session) -> None:
    """A document the patient hides is unlisted and fetched as missing under any grant but a device grant,
    which acts for the patient ([API-46]); shown again, it reads."""
    _lab, sealed = await _own_document(s, b"to be hidden")
    reader, grant = await s.reader()
    await _reads(s, reader, [grant], sealed)
    await s.manage("hide", doc=sealed.doc, hidden=True)
    await _like_missing(s, reader, [grant], sealed.doc, what="a hidden document")
    by_id, id_grant = await s.reader(scope=Scope(ids=(sealed.doc,)))
    await _like_missing(s, by_id, [id_grant], sealed.doc, what="a hidden document named by id")
    device, device_grant = await s.reader("Patient device", actions=DEVICE_ACTIONS, **_terms())
    await _reads(s, device, [device_grant], sealed)
    await s.manage("hide", doc=sealed.doc, hidden=False)
    await _reads(s, reader, [grant], sealed)


# --- the fetch decision (15.9) ---------------------------------------------------------------------


@case("capabilities.fetch-receipt-signer", requires=["API-22", "API-6"], adversarial=True)
async def fetch_receipt_signer(s: Session) -> None:
    """A receipt signed by anyone but the requester is bad-signature, before any chain check."""
    world = await s.world()
    reader, grant = await s.reader()
    other = Actor.create("Other reader")
    foreign = other.receipt(s.patient.did, world.lab_result.doc, grant).encoded
    expect_refusal(await s.fetch(reader, [grant], world.lab_result.doc, receipt=foreign), "bad-signature")
    forged_root = reader.grant(reader.did)
    expect_refusal(
        await s.fetch(
            reader,
            [forged_root],
            world.lab_result.doc,
            receipt=other.receipt(s.patient.did, b"\0" * 32, forged_root).encoded,
        ),
        "bad-signature",
        what="under a chain not rooted in the patient",
    )
    # The receipt was not logged: the genuine one for the same read still works.
    await _reads(s, reader, [grant], world.lab_result)


@case("capabilities.fetch-receipt-patient", requires=["API-22"], adversarial=True)
async def fetch_receipt_patient(s: Session) -> None:
    """A receipt naming another patient is wrong-audience, before any chain check; it is not logged."""
    world = await s.world()
    reader, grant = await s.reader()
    elsewhere = Actor.create("Another patient").did
    receipt = reader.receipt(elsewhere, world.lab_result.doc, grant).encoded
    expect_refusal(await s.fetch(reader, [grant], world.lab_result.doc, receipt=receipt), "wrong-audience")
    forged_root = reader.grant(reader.did)
    receipt = reader.receipt(elsewhere, world.lab_result.doc, forged_root).encoded
    expect_refusal(
        await s.fetch(reader, [forged_root], world.lab_result.doc, receipt=receipt),
        "wrong-audience",
        what="under a chain not rooted in the patient",
    )


@case("capabilities.fetch-receipt-grant", requires=["API-22"], adversarial=True)
async def fetch_receipt_grant(s: Session) -> None:
    """A receipt naming a grant other than the chain's leaf is broken-chain, and stays unused."""
    world = await s.world()
    holder, chain = _chain(s, 1, leaf_actions=("read", "delegate"))
    child, grant = _delegate(holder, chain[0])
    full = [chain[0], grant]
    receipt = child.receipt(s.patient.did, world.lab_result.doc, chain[0]).encoded
    expect_refusal(await s.fetch(child, full, world.lab_result.doc, receipt=receipt), "broken-chain")
    own = s.patient.grant(child.did)
    receipt = child.receipt(s.patient.did, world.lab_result.doc, own).encoded
    expect_refusal(
        await s.fetch(child, full, world.lab_result.doc, receipt=receipt), "broken-chain", what="other"
    )
    # That receipt was not logged: under the chain it names, it serves its one read.
    answer = await s.fetch(child, [own], world.lab_result.doc, receipt=receipt)
    if s.open_fetched(child, answer, world.lab_result.doc) != world.lab_result.content:
        raise Failed("the fetched document is not the one deposited")


@case("capabilities.fetch-chain-before-document", requires=["API-22", "CAP-12", "CAP-14"], adversarial=True)
async def fetch_chain_before_document(s: Session) -> None:
    """A refused chain gets its own code whether or not the document exists; a good chain gets not-found."""
    t = now()
    reader = Actor.create("Reader")
    missing = os.urandom(32)
    bad_chains = {
        "not-patient-root": [reader.grant(reader.did)],
        "expired": [s.patient.grant(reader.did, iat=t - 200, nbf=t - 200, exp=t - 100)],
        "wrong-audience": [s.patient.grant(Actor.create("Someone").did)],
        "action-not-granted": [s.patient.grant(reader.did, actions=("deposit",))],
    }
    for code, chain in bad_chains.items():
        expect_refusal(await s.fetch(reader, chain, missing), code, what=f"{code} for a missing document")
    await _missing(s, reader, [s.patient.grant(reader.did)])


@case("capabilities.fetch-replay", requires=["API-22"], adversarial=True)
async def fetch_replay(s: Session) -> None:
    """An access receipt serves one fetch: the same receipt in a fresh request is refused replay."""
    world = await s.world()
    reader, grant = await s.reader()
    receipt = reader.receipt(s.patient.did, world.lab_result.doc, grant).encoded
    first = await s.fetch(reader, [grant], world.lab_result.doc, receipt=receipt)
    s.open_fetched(reader, first, world.lab_result.doc)
    again = await s.fetch(reader, [grant], world.lab_result.doc, receipt=receipt)
    expect_refusal(again, "replay")
    if b"potassium" in again.body or "Fedrecord-Key-Wrap" in again.headers:
        raise Failed("the replay refusal carries the document or a key wrap")


@case("capabilities.fetch-profile-and-key", requires=["API-22", "API-6"], adversarial=True)
async def fetch_profile_and_key(s: Session) -> None:
    """A profile signed by another is bad-signature; no key known is bad-key; neither logs the receipt."""
    world = await s.world()
    reader, grant = await s.reader()
    receipt = reader.receipt(s.patient.did, world.lab_result.doc, grant).encoded
    stranger = Actor.create("Stranger")
    expect_refusal(
        await s.fetch(
            reader, [grant], world.lab_result.doc, receipt=receipt, profile=stranger.profile.encoded
        ),
        "bad-signature",
        what="a profile signed by another node",
    )
    expect_refusal(
        await s.fetch(reader, [grant], world.lab_result.doc, receipt=receipt, profile=None),
        "bad-key",
        what="an unconnected reader without a profile",
    )
    t = now()
    stale = sign_record(
        NodeProfile(
            name="Stale keys",
            role="clinic",
            endpoints=reader.profile.record.endpoints,
            enc_keys=(EncryptionKey(key=reader.keys.public_key, nbf=t - 2 * DAY, exp=t - DAY),),
            versions=(0,),
            seq=1,
            iat=t,
        ),
        reader.identity,
    )
    expect_refusal(
        await s.fetch(reader, [grant], world.lab_result.doc, receipt=receipt, profile=stale.encoded),
        "bad-key",
        what="a profile whose only key has expired",
    )
    answer = await s.fetch(reader, [grant], world.lab_result.doc, receipt=receipt)
    if s.open_fetched(reader, answer, world.lab_result.doc) != world.lab_result.content:
        raise Failed("the fetched document is not the one deposited")


# --- decision order and links that do not open (7.8) ------------------------------------------------


@case("capabilities.links-must-open", requires=["CAP-1"], adversarial=True)
async def links_must_open(s: Session) -> None:
    """A link that does not open as a grant is refused with its own code, the first such link winning."""
    world = await s.world()
    holder, chain = _chain(s, 1, leaf_actions=("read", "delegate"))
    child, grant = _delegate(holder, chain[0])
    revocation = _revocation(holder, chain[0])
    cases: dict[str, list[bytes]] = {
        "bad-signature": [_tampered(chain[0]), grant.encoded],
        "wrong-type": [chain[0].encoded, revocation.encoded],
        "bad-header": [chain[0].encoded, b"\xa0"],
    }
    for code, links in cases.items():
        expect_refusal(await _list_raw(s, child, links), code, what=f"{code} link, listing")
    # Root first: a root with a bad signature wins over a child of the wrong type.
    expect_refusal(
        await _list_raw(s, child, [_tampered(chain[0]), revocation.encoded]),
        "bad-signature",
        what="root first",
    )
    receipt = child.receipt(s.patient.did, world.lab_result.doc, grant).encoded
    expect_refusal(
        await _fetch_raw(s, child, [_tampered(chain[0]), grant.encoded], receipt),
        "bad-signature",
        what="fetch",
    )
    # Not logged: the same receipt reads under the genuine chain.
    answer = await _fetch_raw(s, child, [chain[0].encoded, grant.encoded], receipt)
    s.open_fetched(child, answer, world.lab_result.doc)


@case("capabilities.decision-order", requires=["CAP-14"], adversarial=True)
async def decision_order(s: Session) -> None:
    """A chain with several faults is refused with the code of the rule that comes first in 7.8."""
    world = await s.world()
    doc = world.lab_result.doc
    t = now()
    reader = Actor.create("Reader")
    forger = Actor.create("Forger")
    # Root not the patient's, and naming a parent: not-patient-root (step 4 before 5).
    root = forger.grant(reader.did, parent=os.urandom(32))
    await _refused(s, reader, [root], doc, "not-patient-root", what="root")
    # Wrong parent and no delegate: broken-chain ([CAP-4] before [CAP-5]).
    holder, chain = _chain(s, 1, leaf_actions=("read",))
    child, grant = _delegate(holder, chain[0], parent=os.urandom(32))
    await _refused(s, child, [chain[0], grant], doc, "broken-chain", what="parent link")
    # No delegate and widened: not-delegable ([CAP-5] before [CAP-6]).
    child, grant = _delegate(holder, chain[0], actions=("read", "manage"))
    await _refused(s, child, [chain[0], grant], doc, "not-delegable", what="delegation")
    # Widened under a revoked root: widened (step 6 before 7).
    holder, chain = _chain(s, 1, leaf_actions=("read", "delegate"), exp=t + DAY)
    await s.keep(chain[0])
    await s.manage("revoke", grant=chain[0].id)
    child, grant = _delegate(holder, chain[0], exp=t + 2 * DAY)
    await _refused(s, child, [chain[0], grant], doc, "widened", what="attenuation")
    # Revoked and expired: revoked (step 7 before 8).
    expired_root = s.patient.grant(reader.did, iat=t - 200, nbf=t - 200, exp=t - 100)
    await s.keep(expired_root)
    await s.manage("revoke", grant=expired_root.id)
    await _refused(s, reader, [expired_root], doc, "revoked", what="revocation")
    # Expired and someone else's: expired (step 8 before 9).
    lapsed = s.patient.grant(reader.did, iat=t - 200, nbf=t - 200, exp=t - 100)
    await _refused(s, Actor.create("Thief"), [lapsed], doc, "expired", what="audience")
    # Someone else's and without read: wrong-audience (step 9 before 10).
    deposit_only = s.patient.grant(reader.did, actions=("deposit",))
    await _refused(s, Actor.create("Thief"), [deposit_only], doc, "wrong-audience", what="action")
    # Without read and the document out of scope: action-not-granted (step 10 before 11).
    narrow = s.patient.grant(reader.did, actions=("deposit",), scope=Scope(ids=(os.urandom(32),)))
    await _refused(s, reader, [narrow], doc, "action-not-granted", what="scope")


# --- state answers and heads (15.7, 7.6) -----------------------------------------------------------


@case("capabilities.state-answer", requires=["API-16", "HEAD-1", "API-17"], adversarial=True)
async def state_answer(s: Session) -> None:
    """The state answer holds a patient-signed head, every revocation, and the requester's grants only."""
    t = now()
    reader = Actor.create("Reader")
    live = s.patient.grant(reader.did)
    lapsed = s.patient.grant(reader.did, iat=t - 200, nbf=t - 200, exp=t - 100)
    revoked = s.patient.grant(reader.did)
    someone_else = s.patient.grant(Actor.create("Someone else").did)
    await s.keep(live, lapsed, revoked, someone_else)
    revocation = open_record((await s.manage("revoke", grant=revoked.id))["revocation"], Revocation)
    await s.make_known(reader)  # state is answered to nodes the target knows ([API-16])
    answer = await s.wire.call("/v0/state", reader.identity, {})
    if answer.status != 200:
        raise Failed(f"the state request answered {answer.describe()}")
    if not answer.signed_by(s.patient.did):
        raise Failed("the state answer is not signed by the patient's node")
    state = answer.data
    for key in ("head", "revocations", "tombstones", "grants"):
        if key not in state:
            raise Failed(f"the state answer has no {key}")
    head = _check_revs(s, state)
    if head.record.iat < t - 60:
        raise Failed("the newest head predates the revocation just made")
    grants = {g.id for g in _state_records(state, "grants", Grant)} - {s.known_grant(reader)}
    if grants != {live.id, lapsed.id, revoked.id}:
        raise Failed(
            "the state answer's grants are not exactly the requester's (live, expired and revoked): "
            f"{len(grants)} given, the other node's included: {someone_else.id in grants}"
        )
    if revocation.id not in {r.id for r in _state_records(state, "revocations", Revocation)}:
        raise Failed("the state answer lacks the revocation")
    for tombstone in _state_records(state, "tombstones", Tombstone):
        if tombstone.signer != s.patient.did:
            raise Failed("the state answer holds a tombstone not signed by the patient")
    stranger = Actor.create("Stranger")
    expect_refusal(
        await s.wire.call("/v0/state", stranger.identity, {}),
        "not-found",
        what="a state request of a node the target does not know ([API-16])",
    )
    if await s.grants_for(stranger):
        raise Failed("a node without grants is answered grants")


@case("capabilities.no-head-on-accept", requires=["API-18", "CAP-15"], adversarial=True)
async def no_head_on_accept(s: Session) -> None:
    """A document joining the record leaves the state answer as it was: no grantee learns it arrived."""
    reader, grant = await s.reader()
    await s.keep(grant)
    before = await s.state(reader)
    await _own_document(s, b"arrives unseen")
    after = await s.state(reader)
    if _head(s, after).id != _head(s, before).id:
        raise Failed("accepting a document signed a new state head, which every grantee receives")


@case("capabilities.no-head-on-delete", requires=["API-17", "API-16", "CAP-15"], adversarial=True)
async def no_head_on_delete(s: Session) -> None:
    """Deleting a document signs no head (every known node would see it move); its tombstone is in the state
    of the node that read it."""
    _lab, sealed = await _own_document(s, b"to be deleted")
    reader, grant = await s.reader()
    await _reads(s, reader, [grant], sealed)
    before = _head(s, await s.state(reader))
    tombstone = open_record((await s.manage("delete", doc=sealed.doc))["tombstone"], Tombstone)
    state = await s.state(reader)
    after = _check_revs(s, state)
    if after.id != before.id:
        raise Failed(f"the deletion signed a new head (seq {before.record.seq} -> {after.record.seq})")
    if tombstone.id not in {t.id for t in _state_records(state, "tombstones", Tombstone)}:
        raise Failed("the state answer lacks the deletion's tombstone")
    await _like_missing(s, reader, [grant], sealed.doc, what="a deleted document")


@case("capabilities.head-chain", requires=["HEAD-2", "HEAD-1", "API-46"])
async def head_chain(s: Session) -> None:
    """Walking back from the newest head, each names its predecessor, seq falling by one, down to seq 0."""
    device, device_grant = await s.reader("Patient device", actions=DEVICE_ACTIONS, **_terms())
    head = _head(s, await s.state(device))
    steps = 0
    while head.record.prev is not None:
        steps += 1
        if steps > 5000:
            raise Failed("more than 5000 heads: the walk was stopped")
        answer = await s.wire.call(
            "/v0/records", device.identity, {"ids": [head.record.prev], "chain": [device_grant.encoded]}
        )
        if answer.status != 200:
            raise Failed(
                f"the records request for head seq {head.record.seq - 1} answered {answer.describe()}"
            )
        found = answer.data.get("records")
        if type(found) is not list or len(found) != 1:
            raise Failed(f"the head named as prev of seq {head.record.seq} is not served to a device")
        previous = open_record(found[0], StateHead)
        if previous.id != head.record.prev or previous.signer != s.patient.did:
            raise Failed("the record served as the previous head is not it, or not the patient's")
        if previous.record.seq != head.record.seq - 1:
            raise Failed(f"head seq {head.record.seq} names a head of seq {previous.record.seq} as prev")
        head = previous
    if head.record.seq != 0:
        raise Failed(f"the first head of the chain has seq {head.record.seq} and no prev")


@case("capabilities.child-own-iat", requires=["CAP-20", "CAP-11"])
async def child_own_iat(s: Session) -> None:
    """`past` and `future` of a delegated link are taken at its own `iat`, not its parent's ([CAP-20])."""
    t = now()
    holder, chain = _chain(s, 1, leaf_actions=("read", "delegate"), iat=t - 1000)
    await s.keep(chain[0])
    _lab, sealed = await _own_document(s, b"added between the two iats")
    # Added after the root's iat (future for it) and before the child's (past for the child).
    reader, past_child = _delegate(holder, chain[0], iat=t + 1000, scope=Scope(past=True))
    await _reads(s, reader, [chain[0], past_child], sealed)
    other, future_child = _delegate(holder, chain[0], iat=t + 1000, scope=Scope(future=True))
    await _like_missing(
        s, other, [chain[0], future_child], sealed.doc, what="a future-only child issued after the document came"
    )


@case("capabilities.older-profile-kept-out", requires=["API-22"])
async def older_profile_kept_out(s: Session) -> None:
    """A profile offered in a fetch with a lower `seq` than the one held does not replace it (step 7)."""
    world = await s.world()
    reader, grant = await s.reader()
    t = now()
    other_key = EncryptionKeyPair.from_seed(os.urandom(32))
    newer = reader.profile_with(seq=5)
    older = reader.profile_with(
        seq=3, enc_keys=(EncryptionKey(key=other_key.public_key, nbf=t - 60, exp=t + DAY),)
    )
    for offered in (newer, older):
        answer = await s.fetch(reader, [grant], world.lab_result.doc, profile=offered)
        if answer.status != 200:
            raise Failed(f"set-up: a fetch offering a profile answered {answer.describe()}")
    answer = await s.fetch(reader, [grant], world.lab_result.doc, profile=None)
    if answer.status != 200:
        raise Failed(f"a fetch without a profile answered {answer.describe()}")
    wrap = open_record(unb64(answer.headers["Fedrecord-Key-Wrap"]), KeyWrap)
    if wrap.record.recipient_key != reader.keys.public_key:
        raise Failed("a profile of a lower seq replaced the one held: the key wrap is sealed to its key")
