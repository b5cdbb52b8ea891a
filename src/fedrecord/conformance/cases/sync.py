"""Reconciliation, records, the event stream, resumed fetches, devices and patient control (15.14 to 15.19, 16).

The suite runs reconciliation as an initiator with the package's sans-I/O
:class:`~fedrecord.core.reconcile.Reconciler` (a second implementation of
Section 16 it trusts only to build messages), and judges what the target's
answers add up to: the records a requester finds must be exactly those of its
view ([SYNC-10], [API-44]), and hand-built messages check the target's items,
bounds and fingerprints directly ([SYNC-1] to [SYNC-3]).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from fedrecord.core import (
    AcceptedEntry,
    AuditCheckpoint,
    DepositDecision,
    Grant,
    PrivateRestriction,
    Revocation,
    Scope,
    Signed,
    StateHead,
    Tombstone,
    cbor,
    open_any_record,
    open_record,
    sign_record,
)
from fedrecord.core.errors import FedrecordError
from fedrecord.core.reconcile import (
    END,
    Bound,
    Message,
    Mode,
    Params,
    Range,
    Reconciler,
    SortedItems,
    decode_message,
    fingerprint,
)
from fedrecord.core.sealed_box import open_sealed
from fedrecord.vectors import sync_cases

from ..actors import Actor, now
from ..registry import Failed, case
from ..session import Session, expect_refusal, expect_status
from ..wire import CBOR_TYPE, Answer, body, unb64

#: Record ids one records request may name ([API-44]).
MAX_IDS = 512
#: The message cap of Section 16 (default of [SYNC-11]); what the suite sends over it must be refused.
MAX_MESSAGE = 131072
#: The most a node's cap may be: the body cap of the transport ([SYNC-5], [API-2]).
MAX_CAP = 1 << 20
#: Reconciliation rounds the suite allows a target before it calls it endless.
MAX_ROUNDS = 64
#: How long the suite waits for an event that must come (the spec asks for one second, [API-34]).
EVENT_WAIT = 5.0
VIEW_TYPES = (StateHead, Tombstone, Revocation, Grant, AcceptedEntry)
DEVICE_ACTIONS = ("read", "delegate", "manage")


# --- reconciliation as a requester -----------------------------------------------------------------


def _fields(chain: Sequence[Signed[Grant]] | None, **fields: Any) -> dict[str, Any]:
    if chain is not None:
        fields["chain"] = [g.encoded for g in chain]
    return fields


async def _sync(s: Session, actor: Actor, chain: Sequence[Signed[Grant]] | None, message: bytes) -> Answer:
    return await s.wire.call("/v0/sync", actor.identity, _fields(chain, message=message))


async def _round(s: Session, actor: Actor, chain: Sequence[Signed[Grant]] | None, message: bytes) -> bytes:
    """One reconciliation round: the target's answer message, checked as a signed sync-answer."""
    if actor.profile.record.role == "device":
        await s.make_known(actor)  # before its view is read: connecting adds a grant to it
    answer = await _sync(s, actor, chain, message)
    expect_status(answer, 200, what="sync")
    if not answer.signed_by(s.patient.did):
        raise Failed("the sync answer is not signed by the patient's node bound to the request")
    reply = answer.data.get("message")
    if type(reply) is not bytes:
        raise Failed("the sync answer carries no message")
    if len(reply) > MAX_CAP:
        raise Failed(f"the sync answer's message is {len(reply)} bytes, over any cap a node may use [SYNC-9]")
    return reply


async def _reconcile(
    s: Session,
    actor: Actor,
    chain: Sequence[Signed[Grant]] | None,
    items: Sequence[tuple[int, bytes]] = (),
    params: Params | None = None,
) -> tuple[set[bytes], set[bytes]]:
    """Reconcile ``items`` against the target as ``actor``: (ids the target has and we lack, ids we have only)."""
    reconciler = Reconciler(SortedItems(items), params or Params())
    message: bytes | None = reconciler.initiate()
    rounds = 0
    while message is not None:
        rounds += 1
        if rounds > MAX_ROUNDS:
            raise Failed(f"the reconciliation did not end in {MAX_ROUNDS} rounds")
        reply = await _round(s, actor, chain, message)
        try:
            message = reconciler.receive(reply)
        except FedrecordError as exc:
            raise Failed(f"the target's sync answer is refused by an initiator: {exc.code.value}") from None
    return set(reconciler.need), set(reconciler.have)


async def _records(
    s: Session, actor: Actor, chain: Sequence[Signed[Grant]] | None, ids: Sequence[bytes]
) -> dict[bytes, Signed[Any]]:
    """The records the target answers for ``ids``, verified, each one asked for."""
    if actor.profile.record.role == "device":
        # Its private restrictions come sealed to the key of its profile, which the target must hold.
        await s.make_known(actor)
    found: dict[bytes, Signed[Any]] = {}
    ids = list(ids)
    for start in range(0, len(ids), MAX_IDS):
        batch = ids[start : start + MAX_IDS]
        answer = await s.wire.call("/v0/records", actor.identity, _fields(chain, ids=batch))
        expect_status(answer, 200, what="records")
        records = answer.data.get("records")
        if type(records) is not list or not all(type(r) is bytes for r in records):
            raise Failed("the records answer is not an array of records")
        sealed = answer.data.get("sealed", [])
        if type(sealed) is not list or not all(type(r) is bytes for r in sealed):
            raise Failed("the records answer's sealed is not an array of sealed boxes")
        in_clear = len(records)
        for box in sealed:
            try:
                records.append(open_sealed(box, actor.keys))
            except FedrecordError:
                raise Failed("a sealed record of the records answer does not open with the requester's key") from None
        for position, encoded in enumerate(records):
            try:
                signed = open_any_record(encoded)
            except FedrecordError as exc:
                raise Failed(f"a record of the records answer does not open: {exc.code.value}") from None
            if position < in_clear and isinstance(signed.record, PrivateRestriction):
                raise Failed("a private restriction crossed the wire readable, not sealed ([CAP-15], [API-44])")
            if signed.id not in batch:
                raise Failed(
                    f"the records answer holds a {type(signed.record).__name__} that was not asked for"
                )
            found[signed.id] = signed
    return found


async def _view(s: Session, actor: Actor, chain: Sequence[Signed[Grant]] | None) -> dict[bytes, Signed[Any]]:
    """The requester's whole view: reconciled from an empty set, then every record fetched by id."""
    need, have = await _reconcile(s, actor, chain)
    if have:
        raise Failed("a reconciliation from an empty set found ids the initiator has")
    records = await _records(s, actor, chain, sorted(need))
    if set(records) != need:
        raise Failed(
            f"{len(need - set(records))} of the ids the reconciliation found are not served by records"
        )
    return records


async def _changes(
    s: Session, actor: Actor, chain: Sequence[Signed[Grant]] | None, before: dict[bytes, Signed[Any]]
) -> dict[bytes, Signed[Any]]:
    """What the view gained since ``before`` (reconciled from it), less new state heads of the patient.

    A node may sign a state head at any time; nothing else may appear or go unannounced.
    """
    need, have = await _reconcile(s, actor, chain, _items(before))
    if have:
        raise Failed(f"{len(have)} records of the earlier view left it")
    gained = await _records(s, actor, chain, sorted(need))
    if set(gained) != need:
        raise Failed("ids the reconciliation found are not served by records")
    return {
        i: r for i, r in gained.items() if not (isinstance(r.record, StateHead) and r.signer == s.patient.did)
    }


def _items(records: dict[bytes, Signed[Any]]) -> list[tuple[int, bytes]]:
    """The reconciliation items of records: (iat, or 0 without one; id) ([SYNC-1], [API-44])."""
    return sorted((int(getattr(r.record, "iat", 0)), i) for i, r in records.items())


def _fp(items: Sequence[tuple[int, bytes]], fp_len: int = 12) -> bytes:
    return fingerprint(sum(int.from_bytes(i, "little") for _, i in items), len(items), fp_len)


def _message(ranges: list[Range], *, fp_len: int = 12, prefix_len: int = 8) -> bytes:
    return Message(fp_len, prefix_len, ranges).encode()


def _decode(reply: bytes) -> Message:
    try:
        return decode_message(reply, max_size=MAX_CAP)
    except FedrecordError as exc:
        raise Failed(f"the target's sync answer is not a valid message: {exc.code.value}") from None


def _all_skip(reply: bytes, what: str) -> None:
    ranges = _decode(reply).ranges
    if [(r.upper, r.mode) for r in ranges] != [(END, Mode.SKIP)]:
        raise Failed(
            f"{what}: expected one skip (the fingerprints agree), got modes {[r.mode.name for r in ranges]}"
        )


def _below(item: tuple[int, bytes], bound: Bound) -> bool:
    """Whether ``item`` is below ``bound`` as [SYNC-2] places it (computed here, not by the package)."""
    if bound.timestamp is None:
        return True
    ts, item_id = item
    return ts < bound.timestamp or (ts == bound.timestamp and item_id < bound.prefix.ljust(32, b"\0"))


async def _expect_agreement(
    s: Session,
    actor: Actor,
    chain: Sequence[Signed[Grant]] | None,
    items: list[tuple[int, bytes]],
    bound: Bound,
) -> None:
    """Split the space at ``bound``; the target's fingerprints of both sides must equal ours ([SYNC-2], [SYNC-3])."""
    lower = [i for i in items if _below(i, bound)]
    upper = [i for i in items if not _below(i, bound)]
    message = _message([Range(bound, Mode.FINGERPRINT, _fp(lower)), Range(END, Mode.FINGERPRINT, _fp(upper))])
    _all_skip(await _round(s, actor, chain, message), f"split at ({bound.timestamp}, {bound.prefix.hex()})")


def _device(s: Session, name: str) -> Actor:
    """One of the patient's devices: a node of its own whose profile names the patient (15.17)."""
    return Actor.create(name, role="device", patient=s.patient.did)


def _device_grant(s: Session, device: Actor) -> Signed[Grant]:
    return s.patient.grant(device.did, actions=DEVICE_ACTIONS, scope=Scope(past=True, future=True))


def _child(issuer: Actor, parent: Signed[Grant], audience: str, **terms: Any) -> Signed[Grant]:
    """A grant by ``issuer`` under ``parent``, inside its window."""
    terms.setdefault("nbf", parent.record.nbf)
    terms.setdefault("exp", parent.record.exp)
    terms.setdefault("scope", Scope(past=True, future=True))
    return issuer.grant(audience, parent=parent.id, **terms)


async def _push(
    s: Session, device: Actor, chain: Sequence[Signed[Grant]], records: Sequence[bytes]
) -> Answer:
    return await s.wire.call(
        "/v0/push", device.identity, {"chain": [g.encoded for g in chain], "records": list(records)}
    )


def _summary(state: dict[str, Any]) -> tuple[Any, ...]:
    """What a state answer says of the record, whatever head a node signed meanwhile."""
    head = open_record(state["head"], StateHead).record
    lists = tuple(frozenset(state[key]) for key in ("revocations", "tombstones", "grants"))
    return (head.revocations, head.revocation_count, *lists)


async def _revoked_ids(s: Session, actor: Actor) -> set[bytes]:
    """The grant ids named by the revocations of ``actor``'s state answer."""
    state = await s.state(actor)
    return {open_record(r, Revocation).record.grant for r in state["revocations"]}


async def _state_grants(s: Session, actor: Actor) -> set[bytes]:
    state = await s.state(actor)
    return {open_record(g, Grant).id for g in state["grants"]}


# --- reconciliation ------------------------------------------------------------------------------------


@case("sync.view-of-a-reader", requires=["SYNC-1", "SYNC-4", "SYNC-6", "SYNC-10", "API-44"])
async def view_of_a_reader(s: Session) -> None:
    """Reconciling from an empty set finds exactly the reader's view: control records, its grants, its documents."""
    world = await s.world()
    reader, grant = await s.reader(scope=Scope(past=True, future=True, categories=("imaging",)))
    other = Actor.create("Someone else")
    foreign = s.patient.grant(other.did)
    await s.keep(grant, foreign)
    await s.make_known(reader)  # its state answer is compared with its view ([API-16])
    # A document of the case's own, read by the reader, then deleted: its tombstone is the reader's.
    lab = Actor.create("Conformance lab of a withdrawn scan")
    sealed = await s.accepted(lab, await s.connect(lab), b"withdrawn scan", title="Withdrawn", category="imaging")
    expect_status(await s.fetch(reader, [grant], sealed.doc), 200, what="the reader's fetch before the deletion")
    tombstone = open_any_record((await s.manage("delete", doc=sealed.doc))["tombstone"])
    records = await _view(s, reader, [grant])
    listed = await s.listed(reader, [grant])
    state = await s.state(reader)
    for signed in records.values():
        record = signed.record
        if not isinstance(record, VIEW_TYPES):
            raise Failed(f"the view of a reader holds a {type(record).__name__} [API-44]")
        if not isinstance(record, Revocation) and signed.signer != s.patient.did:
            raise Failed(f"the view holds a {type(record).__name__} the patient did not sign")
        if isinstance(record, Grant) and record.audience != reader.did:
            raise Failed("the view of a reader holds a grant addressed to another node [SYNC-10]")
    entries = {r.record.doc for r in records.values() if isinstance(r.record, AcceptedEntry)}
    if entries != listed:
        raise Failed(
            f"the view's accepted entries name {len(entries)} documents, the listing {len(listed)}: "
            "they must be the documents the chain reaches [API-44]"
        )
    if world.imaging.doc not in entries or {world.lab_result.doc, world.psy_note.doc} & entries:
        raise Failed("the view's accepted entries are not those of the imaging grant's scope")
    if grant.id not in records or foreign.id in records:
        raise Failed("the view must hold the reader's grant and no grant to another node")
    expected = {open_any_record(state["head"]).id}
    expected |= {open_any_record(r).id for key in ("revocations", "tombstones", "grants") for r in state[key]}
    missing = expected - set(records)
    if missing:
        raise Failed(f"{len(missing)} records of the reader's state answer are not in its view [API-44]")
    if tombstone.id not in records:
        raise Failed("the view lacks the tombstone of a document the reader read [API-16], [API-44]")


@case("sync.view-without-chain", requires=["SYNC-10", "API-44"])
async def view_without_chain(s: Session) -> None:
    """A sync without a chain is refused to a node the target does not know; a node it knows sees the
    control records and its own grants, and no document."""
    await s.world()
    stranger = Actor.create("Stranger")
    message = Reconciler(SortedItems()).initiate()
    expect_refusal(await _sync(s, stranger, None, message), "not-found", what="a sync of a node never met")
    answer = await s.wire.call("/v0/records", stranger.identity, _fields(None, ids=[os.urandom(32)]))
    expect_refusal(answer, "not-found", what="a records request of a node never met")
    await s.make_known(stranger)
    records = await _view(s, stranger, None)
    kinds = {type(r.record) for r in records.values()}
    own = {s.known_grant(stranger)}
    if not kinds <= {StateHead, Tombstone, Revocation, Grant} or {
        i for i, r in records.items() if isinstance(r.record, Grant)
    } - own:
        raise Failed(f"a requester without a chain sees {sorted(k.__name__ for k in kinds)} beyond its own grant")
    if not any(isinstance(r.record, StateHead) for r in records.values()):
        raise Failed("the view has no state head")
    grant = s.patient.grant(stranger.did)
    await s.keep(grant)
    if set(await _changes(s, stranger, [], records)) != {grant.id}:
        raise Failed(
            "after a grant to the requester, reconciling from its previous view must find exactly that grant"
        )


@case("sync.items-and-bounds", requires=["SYNC-1", "SYNC-2", "SYNC-3", "SYNC-6"])
async def items_and_bounds(s: Session) -> None:
    """The target's fingerprints agree with the spec's on ranges split by timestamp and by id prefix."""
    await s.world()
    reader, grant = await s.reader()
    await s.keep(grant)
    items = _items(await _view(s, reader, [grant]))
    _all_skip(
        await _round(s, reader, [grant], _message([Range(END, Mode.FINGERPRINT, _fp(items))])), "whole view"
    )
    _all_skip(
        await _round(s, reader, [grant], _message([Range(END, Mode.FINGERPRINT, _fp(items, 32))], fp_len=32)),
        "whole view, 32-byte fingerprint",
    )
    entries = [i for i in items if i[0] == 0]
    if len(entries) < 2:
        raise Failed("set-up: the reader's view should hold at least two accepted entries (timestamp 0)")
    # Accepted entries sit at timestamp 0 and sort by id ([SYNC-1], [API-44]).
    await _expect_agreement(s, reader, [grant], items, Bound(1, b""))
    second = entries[1][1]
    bounds = [Bound(0, second[:1]), Bound(0, second), Bound(items[-1][0], b"")]
    if second[-1] < 255:
        bounds.append(Bound(0, second[:-1] + bytes([second[-1] + 1])))
    timed = [i for i in items if i[0] > 0]
    if timed:
        ts, item_id = timed[len(timed) // 2]
        bounds += [Bound(ts, b""), Bound(ts, item_id[:2]), Bound(ts + 1, b"")]
    for bound in bounds:
        if bound.key > (0, bytes(32)):  # a first bound at the start is out of order
            await _expect_agreement(s, reader, [grant], items, bound)


@case("sync.diff-answers", requires=["SYNC-4", "SYNC-6"])
async def diff_answers(s: Session) -> None:
    """A list of ids sent to the responder is answered with a diff: its ids, the lacks bitmap and its check."""
    await s.world()
    reader, grant = await s.reader()
    await s.keep(grant)
    items = _items(await _view(s, reader, [grant]))
    ids = [i for _, i in items]
    dropped, fake = ids[0], os.urandom(32)
    sent = [*ids[1:], fake]
    for mode, unit in ((Mode.ID_LIST, 32), (Mode.ID_PREFIXES, 8)):
        payload = b"".join(i[:unit] for i in sent)
        reply = await _round(s, reader, [grant], _message([Range(END, mode, payload)]))
        ranges = _decode(reply).ranges
        if len(ranges) != 1 or ranges[0].mode is not Mode.DIFF or ranges[0].upper != END:
            raise Failed(f"a {mode.name} of the whole space is answered with {[r.mode.name for r in ranges]}")
        diff = ranges[0]
        lacks = bytearray((len(sent) + 7) // 8)
        lacks[(len(sent) - 1) // 8] |= 1 << ((len(sent) - 1) % 8)
        if diff.payload != dropped:
            raise Failed(f"the {mode.name} diff's ids are not exactly the one id the list left out")
        if diff.lacks != bytes(lacks):
            raise Failed(f"the {mode.name} diff's lacks bitmap does not mark exactly the unknown entry")
        if diff.check != _fp(items):
            raise Failed(f"the {mode.name} diff's check is not the responder's fingerprint of the range")


@case("sync.reconcile-partial", requires=["SYNC-6", "SYNC-10", "API-44"])
async def reconcile_partial(s: Session) -> None:
    """From a partial set with extra ids, reconciliation finds exactly what is missing each way."""
    await s.world()
    reader, grant = await s.reader()
    extra = [s.patient.grant(reader.did, scope=Scope(ids=(os.urandom(32),))) for _ in range(40)]
    await s.keep(grant, *extra)
    view = _items(await _view(s, reader, [grant]))
    dropped = {i for n, (_, i) in enumerate(view) if n % 3 == 0}
    ours = [it for it in view if it[1] not in dropped]
    foreign = [(view[len(view) // 2][0], os.urandom(32)) for _ in range(5)] + [(1, os.urandom(32))]
    for params in (Params(), Params(branching=4, id_list_threshold=4)):
        need, have = await _reconcile(s, reader, [grant], ours + foreign, params)
        if need != dropped:
            raise Failed(f"need holds {len(need)} ids, {len(dropped)} were left out of the view")
        if have != {i for _, i in foreign}:
            raise Failed(f"have holds {len(have)} ids, the initiator added {len(foreign)} the target lacks")


@case("sync.account-of-a-range", requires=["SYNC-6", "SYNC-7"])
async def account_of_a_range(s: Session) -> None:
    """A differing fingerprint is answered with a list, or split at the target's own items into fingerprints."""
    await s.world()
    reader, grant = await s.reader()
    extra = [s.patient.grant(reader.did, scope=Scope(ids=(os.urandom(32),))) for _ in range(48)]
    await s.keep(grant, *extra)
    items = _items(await _view(s, reader, [grant]))
    for fp_len in (12, 16):
        bogus = _message([Range(END, Mode.FINGERPRINT, bytes(fp_len))], fp_len=fp_len)
        ranges = _decode(await _round(s, reader, [grant], bogus)).ranges
        if [r.mode for r in ranges] == [Mode.ID_LIST]:
            if ranges[0].payload != b"".join(i for _, i in items):
                raise Failed("the responder's list of the range is not its ids in item order")
            continue
        if any(r.mode is not Mode.FINGERPRINT for r in ranges) or ranges[-1].upper != END:
            raise Failed(f"a split account is not fingerprints to the end: {[r.mode.name for r in ranges]}")
        count, parts = len(items), len(ranges)
        cuts = [count * j // parts for j in range(1, parts)]
        for j, (cut, r) in enumerate(zip(cuts, ranges, strict=False)):
            ts, item_id = items[cut]
            before_ts, before_id = items[cut - 1]
            if before_ts != ts:
                expected = Bound(ts, b"")
            else:
                shared = next(k for k in range(32) if before_id[k] != item_id[k])
                expected = Bound(ts, item_id[: shared + 1])
            if r.upper != expected:
                raise Failed(
                    f"sub-range {j} ends at ({r.upper.timestamp}, {r.upper.prefix.hex()}), not at item {cut}"
                )
        lower = 0
        for r, upper in zip(ranges, [*cuts, count], strict=True):
            if r.payload != _fp(items[lower:upper], fp_len):
                raise Failed(
                    f"the fingerprint of items {lower} to {upper} is not the spec's ({fp_len} bytes)"
                )
            lower = upper


@case("sync.outside-the-view", requires=["SYNC-10", "API-44"], adversarial=True)
async def outside_the_view(s: Session) -> None:
    """Records outside a reader's view are neither reconciled nor served when asked for by id."""
    await s.world()
    device = _device(s, "Conformance phone")
    device_grant = _device_grant(s, device)
    reader, grant = await s.reader(scope=Scope(past=True, future=True, categories=("imaging",)))
    other = Actor.create("Someone else")
    restriction = s.restriction(labels=["HIV"], node=other.did)
    await s.keep(device_grant, grant, s.patient.grant(other.did), restriction)
    everything = await _view(s, device, [device_grant])
    own = await _view(s, reader, [grant])
    outside = set(everything) - set(own)
    if restriction.id not in outside:
        raise Failed("set-up: the device's view should hold the private restriction [API-46]")
    for chain in ([grant], None):
        served = await _records(s, reader, chain, sorted(everything))
        leaked = set(served) - set(own)
        if leaked:
            kinds = sorted({type(served[i].record).__name__ for i in leaked})
            raise Failed(f"a records request served {len(leaked)} records outside the view: {kinds}")
    # Records added outside the view do not enter it ([SYNC-10]).
    await s.keep(s.patient.grant(other.did), s.restriction(labels=["PSY"], node=other.did))
    gained = await _changes(s, reader, [grant], own)
    if gained:
        kinds = sorted({type(r.record).__name__ for r in gained.values()})
        raise Failed(f"records added outside the reader's view entered it: {kinds}")


@case("sync.records-limits", requires=["API-44"], adversarial=True)
async def records_limits(s: Session) -> None:
    """A records request with more than 512 ids, or an id that is not 32 bytes, is malformed."""
    await s.world()
    reader, grant = await s.reader()
    await s.keep(grant)
    chain = [grant.encoded]
    good = [grant.id]
    for ids, what in (
        (good + [os.urandom(32) for _ in range(512)], "513 ids"),
        ([*good, os.urandom(31)], "a 31-byte id"),
        ([*good, os.urandom(33)], "a 33-byte id"),
        ([*good, "not an id"], "an id that is text"),
    ):
        answer = await s.wire.call("/v0/records", reader.identity, {"chain": chain, "ids": ids})
        expect_refusal(answer, "malformed", what=what)
    answer = await s.wire.call("/v0/records", reader.identity, {"chain": chain, "ids": good})
    expect_status(answer, 200, what="512 ids or fewer")
    if answer.data.get("records") != [grant.encoded]:
        raise Failed("a records request for the reader's own grant does not answer it exactly as signed")


def _invalid_vectors(code: str) -> list[tuple[str, bytes]]:
    """The package's invalid reconciliation messages refused with ``code`` ([SYNC-5])."""
    built = sync_cases.build()
    found = []
    for group in built.groups:
        if group["type"] != "SyncRespond":  # what a responder refuses; SyncInitiator's are the initiator's
            continue
        for test in group["tests"]:
            # The 4 KiB cap of the vector is the vector's own; the target's cap is checked apart.
            if test.get("result") == "invalid" and test.get("error") == code and "cap" not in test["comment"]:
                found.append((test["comment"], bytes.fromhex(test["message"])))
    if not found:
        raise Failed(f"set-up: the package has no invalid sync vectors refused with {code}")
    return found


async def _refused_messages(s: Session, code: str) -> None:
    await s.world()
    reader, grant = await s.reader()
    await s.keep(grant)
    for comment, message in _invalid_vectors(code):
        expect_refusal(await _sync(s, reader, [grant], message), code, what=comment)
    # The refusals left nothing behind: a reconciliation still runs and finds the view.
    if grant.id not in await _view(s, reader, [grant]):
        raise Failed("after the refused messages, the reader's view does not hold its grant")


@case("sync.malformed-messages", requires=["SYNC-4", "SYNC-5"], adversarial=True)
async def malformed_messages(s: Session) -> None:
    """Reconciliation messages of the wrong shape are refused with malformed (the package's vectors)."""
    await _refused_messages(s, "malformed")


@case("sync.out-of-order-messages", requires=["SYNC-5", "SYNC-6"], adversarial=True)
async def out_of_order_messages(s: Session) -> None:
    """Bounds that do not increase, a first bound at the start, or a diff sent to the responder: out-of-order."""
    await _refused_messages(s, "out-of-order")


@case("sync.message-version-and-encoding", requires=["SYNC-5"], adversarial=True)
async def message_version_and_encoding(s: Session) -> None:
    """A message of version 1 is unsupported-version; one that is not strict CBOR has its decoding code."""
    for code in ("unsupported-version", "non-canonical"):
        await _refused_messages(s, code)
    reader, grant = await s.reader()
    await s.keep(grant)
    expect_refusal(
        await _sync(s, reader, [grant], cbor.encode([0, 12, 8, [[None, b"", 0]]]) + b"\x00"),
        "trailing-bytes",
        what="a message with a byte after it",
    )
    answer = await s.wire.call("/v0/sync", reader.identity, {"chain": [grant.encoded], "message": "text"})
    expect_refusal(answer, "malformed", what="a message that is not a byte string")


@case("sync.message-too-large", requires=["SYNC-5"], adversarial=True)
async def message_too_large(s: Session) -> None:
    """A message over the 131072-byte cap is refused with too-large, inside a body under the body cap."""
    reader, grant = await s.reader()
    await s.keep(grant)
    big = _message([Range(END, Mode.ID_PREFIXES, os.urandom(8) * (MAX_MESSAGE // 8 + 8))])
    expect_refusal(await _sync(s, reader, [grant], big), "too-large")


@case("sync.answers-within-the-cap", requires=["SYNC-6", "SYNC-7", "SYNC-9"])
async def answers_within_the_cap(s: Session) -> None:
    """A message of thousands of ranges is answered within the cap, the rest as one fingerprint of the rest."""
    await s.world()
    reader, grant = await s.reader()
    await s.keep(grant)
    items = _items(await _view(s, reader, [grant]))
    # 6000 bogus fingerprints of ranges below every real timestamp but 0: each differs, each must be answered.
    ranges = [Range(Bound(ts, b""), Mode.FINGERPRINT, bytes(12)) for ts in range(1, 6001)]
    ranges.append(Range(END, Mode.FINGERPRINT, _fp([i for i in items if i[0] >= 6000])))
    reply = _decode(await _round(s, reader, [grant], _message(ranges)))
    agreed = Bound(6000, b"")  # only the last range's fingerprint was right
    lower = Bound(0, b"")
    for r in reply.ranges:
        inside = [i for i in items if not _below(i, lower) and _below(i, r.upper)]
        if r.mode is Mode.ID_LIST and r.payload != b"".join(i for _, i in inside):
            raise Failed(f"the id-list up to ({r.upper.timestamp}) is not the responder's ids of the range")
        if r.mode is Mode.FINGERPRINT and r.payload != _fp(inside):
            raise Failed(
                f"the fingerprint up to ({r.upper.timestamp}) is not the responder's of the range [SYNC-9]"
            )
        if r.mode in (Mode.ID_PREFIXES, Mode.DIFF):
            raise Failed(f"a responder answered fingerprints with {r.mode.name}")
        if r.mode is Mode.SKIP and lower.key < agreed.key:
            raise Failed(
                f"a skip answers a range from ({lower.timestamp}) whose fingerprint differed [SYNC-6]"
            )
        lower = r.upper
    if reply.ranges[-1].upper != END:
        raise Failed("the answer does not cover the space to its end")


@case("sync.chain-refused", requires=["API-44"], adversarial=True)
async def chain_refused(s: Session) -> None:
    """A sync or records request under a refused chain gets the decision's code and no record."""
    await s.world()
    reader, grant = await s.reader()
    stranger = Actor.create("Not the patient")
    await s.keep(grant)
    message = Reconciler(SortedItems()).initiate()
    forged = stranger.grant(reader.did)
    for chain, code, what in (
        ([forged], "not-patient-root", "a chain rooted at another key"),
        ([s.patient.grant(stranger.did)], "wrong-audience", "another node's grant"),
        (
            [s.patient.grant(reader.did, exp=now() - 10, nbf=now() - 100, iat=now() - 100)],
            "expired",
            "expired",
        ),
    ):
        expect_refusal(await _sync(s, reader, chain, message), code, what=f"sync, {what}")
        answer = await s.wire.call(
            "/v0/records", reader.identity, _fields(chain, ids=[grant.id, chain[-1].id])
        )
        expect_refusal(answer, code, what=f"records, {what}")
    await s.manage("revoke", grant=grant.id)
    expect_refusal(await _sync(s, reader, [grant], message), "revoked", what="sync under a revoked grant")
    answer = await s.wire.call("/v0/records", reader.identity, _fields([grant], ids=[grant.id]))
    expect_refusal(answer, "revoked", what="records under a revoked grant")
    # Without the dead chain the requester learns of the revocation, and sees no document ([API-45]).
    view = await _view(s, reader, None)
    if any(isinstance(r.record, AcceptedEntry) for r in view.values()):
        raise Failed("a requester without a chain is served accepted entries")
    if not any(isinstance(r.record, Revocation) and r.record.grant == grant.id for r in view.values()):
        raise Failed("the view without a chain does not hold the revocation of the requester's grant")


@case("sync.view-follows-the-record", requires=["SYNC-10", "API-44"])
async def view_follows_the_record(s: Session) -> None:
    """A hidden or restricted document's entry leaves the view; shown again, it comes back."""
    world = await s.world()
    lab = Actor.create("Conformance clinic")
    deposit_grant = await s.connect(lab)
    doc = await s.accepted(lab, deposit_grant, b"ferritin 80 ug/L", title="Ferritin", category="lab")
    reader, grant = await s.reader()
    restriction = s.restriction(labels=["PSY"], grant=grant.id)
    await s.keep(grant, restriction)

    def entries(view: dict[bytes, Signed[Any]]) -> set[bytes]:
        return {r.record.doc for r in view.values() if isinstance(r.record, AcceptedEntry)}

    seen = entries(await _view(s, reader, [grant]))
    if world.psy_note.doc in seen:
        raise Failed("the entry of a document a private restriction hides is in the reader's view [SYNC-10]")
    if doc.doc not in seen or world.lab_result.doc not in seen:
        raise Failed("the reader's view lacks the entries of documents its grant reaches")
    await s.manage("hide", doc=doc.doc, hidden=True)
    if doc.doc in entries(await _view(s, reader, [grant])):
        raise Failed("the entry of a hidden document is in the reader's view")
    await s.manage("hide", doc=doc.doc, hidden=False)
    if doc.doc not in entries(await _view(s, reader, [grant])):
        raise Failed("the entry of a document shown again is not back in the view")


# --- the event stream ------------------------------------------------------------------------------------


@dataclass
class _Stream:
    """An open event stream: the answer being read, and a reader of its events."""

    response: aiohttp.ClientResponse
    headers: CIMultiDict[str]

    async def event(self, timeout: float) -> tuple[str, str]:
        """The next event (name, data), comments skipped, as the server-sent events format says."""
        name, data = "message", list[str]()
        async with asyncio.timeout(timeout):
            while True:
                raw = await self.response.content.readline()
                if not raw:
                    raise Failed("the event stream ended")
                line = raw.decode("utf-8").rstrip("\n").removesuffix("\r")
                if not line:
                    if data:
                        return name, "\n".join(data)
                    name = "message"
                    continue
                if line.startswith(":"):
                    continue
                field, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if field == "event":
                    name = value
                elif field == "data":
                    data.append(value)

    async def state(self, s: Session, timeout: float = EVENT_WAIT) -> dict[str, Any]:
        """The next state event, decoded and its head checked as a subscriber checks it ([API-35])."""
        while True:
            try:
                name, data = await self.event(timeout)
            except TimeoutError:
                raise Failed(f"no state event within {timeout:.0f} s") from None
            if name == "state":
                break
        try:
            decoded = cbor.decode(unb64(data), max_size=1 << 20)
        except (ValueError, FedrecordError) as exc:
            raise Failed(f"a state event's data is not base64url of a CBOR body ({exc})") from None
        if type(decoded) is not dict or decoded.get("v") != 0:
            raise Failed("a state event's data is not a state-answer map of version 0")
        try:
            head = open_record(decoded["head"], StateHead)
            for key, kind in (("revocations", Revocation), ("tombstones", Tombstone), ("grants", Grant)):
                for record in decoded[key]:
                    open_record(record, kind)
        except (KeyError, TypeError, FedrecordError) as exc:
            raise Failed(f"a state event is not a state answer whose records open ({exc})") from None
        if head.signer != s.patient.did:
            raise Failed("a state event's head is not signed by the patient")
        return decoded


@contextlib.asynccontextmanager
async def _subscribe(s: Session, actor: Actor) -> AsyncIterator[_Stream | Answer]:
    """``POST /v0/events`` as ``actor``: an open stream, or the refusal when it is not 200."""
    data = body()
    headers = s.wire.signed_headers(
        actor.identity, "POST", "/v0/events", data, headers={"Content-Type": CBOR_TYPE}
    )
    session = await s.wire.session()
    url = s.wire.url("/v0/events")
    response = await session.post(
        URL(url, encoded=True), data=data, headers=headers, skip_auto_headers=("Content-Type",)
    )
    try:
        if response.status != 200:
            content = await response.read()
            yield Answer(response.status, response.headers, content, "POST", url, dict(headers))
        else:
            if response.headers.get("Content-Type", "").split(";")[0].strip() != "text/event-stream":
                raise Failed(f"the event stream's Content-Type is {response.headers.get('Content-Type')!r}")
            yield _Stream(response, headers)
    finally:
        response.close()


async def _open(s: Session, actor: Actor, stack: contextlib.AsyncExitStack) -> _Stream:
    opened = await stack.enter_async_context(_subscribe(s, actor))
    if not isinstance(opened, _Stream):
        raise Failed(f"the subscription of a connected node answered {opened.describe()}")
    return opened


@case("sync.events-unknown-requester", requires=["API-34"], adversarial=True)
async def events_unknown_requester(s: Session) -> None:
    """A node the patient's node does not know is refused an event stream with not-found."""
    stranger = Actor.create("Stranger")
    async with _subscribe(s, stranger) as opened:
        if isinstance(opened, _Stream):
            raise Failed("an unknown node was given an event stream")
        expect_refusal(opened, "not-found")
        if not opened.signed_by(s.patient.did):
            raise Failed("the refusal of a verified subscription is not signed [API-5]")


@case("sync.events-state-and-changes", requires=["API-34", "API-35", "API-16", "API-52"])
async def events_state_and_changes(s: Session) -> None:
    """The stream starts with the requester's state, and a revocation arrives as a new state event."""
    clinic = Actor.create("Conformance subscriber")
    deposit_grant = await s.connect(clinic)
    async with contextlib.AsyncExitStack() as stack:
        stream = await _open(s, clinic, stack)
        first = await stream.state(s)
        polled = await s.state(clinic)
        if deposit_grant.encoded not in first["grants"]:
            raise Failed("the first state event lacks the grant to the requester [API-16]")
        if _summary(first) != _summary(polled):
            raise Failed("the first state event is not the state answer of the moment")
        seq = open_record(first["head"], StateHead).record.seq
        done = await s.manage("revoke", grant=deposit_grant.id, reason="conformance")
        revocation = open_record(done["revocation"], Revocation)
        if revocation.signer != s.patient.did or revocation.record.grant != deposit_grant.id:
            raise Failed("the manage revoke answer is not the patient's revocation of the grant [API-52]")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + EVENT_WAIT
        while True:
            event = await stream.state(s, timeout=max(0.1, deadline - loop.time()))
            if revocation.encoded in event["revocations"]:
                break
        if open_record(event["head"], StateHead).record.seq <= seq:
            raise Failed("the event with the revocation carries no newer state head [API-17]")


@case("sync.events-replayed", requires=["API-34"], adversarial=True)
async def events_replayed(s: Session) -> None:
    """A subscription request sent again byte for byte is refused with replay."""
    clinic = Actor.create("Conformance subscriber")
    await s.connect(clinic)
    data = body()
    async with contextlib.AsyncExitStack() as stack:
        stream = await _open(s, clinic, stack)
        await stream.state(s)
        original = Answer(200, {}, b"", "POST", s.wire.url("/v0/events"), dict(stream.headers))
        try:
            # A node that takes the replay opens a second stream, which never ends: wait a bounded time.
            replayed = await asyncio.wait_for(s.wire.resend(original, data), timeout=5)
        except TimeoutError:
            raise Failed("the replayed subscription was answered with a stream, not refused") from None
        expect_refusal(replayed, "replay")


@case("sync.events-too-many", requires=["API-34"], adversarial=True)
async def events_too_many(s: Session) -> None:
    """Streams beyond what the node allows one requester are refused with too-many (429)."""
    clinic = Actor.create("Conformance subscriber")
    await s.connect(clinic)
    async with contextlib.AsyncExitStack() as stack:
        for opened_before in range(17):
            opened = await stack.enter_async_context(_subscribe(s, clinic))
            if isinstance(opened, _Stream):
                await opened.state(s)
                continue
            if opened_before == 0:
                raise Failed(f"the first subscription answered {opened.describe()}")
            expect_refusal(opened, "too-many")
            return
    raise Failed("the node served a 17th stream to one requester; [API-34] allows at most 16")


# --- resuming a fetch -----------------------------------------------------------------------------------


async def _whole(s: Session) -> tuple[Actor, Signed[Grant], bytes, bytes]:
    """A reader, its grant, the lab result's id and its whole stream (fetched once, 200)."""
    world = await s.world()
    reader, grant = await s.reader()
    answer = await s.fetch(reader, [grant], world.lab_result.doc)
    expect_status(answer, 200, what="a fetch without Range")
    s.open_fetched(reader, answer, world.lab_result.doc)
    if len(answer.body) < 4:
        raise Failed("set-up: the stream is too short to cut")
    return reader, grant, world.lab_result.doc, answer.body


async def _ranged(
    s: Session, reader: Actor, chain: list[Signed[Grant]], doc: bytes, value: str | None, **call: Any
) -> tuple[Answer, bytes]:
    """A fetch with ``Range: value`` signed; returns the answer and the receipt it used."""
    receipt = reader.receipt(s.patient.did, doc, chain[-1]).encoded
    fields = {"chain": [g.encoded for g in chain], "receipt": receipt, "profile": reader.profile.encoded}
    extra = {"Range": value} if value is not None else None
    return await s.wire.call("/v0/fetch", reader.identity, fields, extra=extra, **call), receipt


async def _plain_fetch(
    s: Session, reader: Actor, chain: list[Signed[Grant]], doc: bytes, receipt: bytes
) -> Answer:
    return await s.fetch(reader, chain, doc, receipt=receipt)


@case("sync.resume-a-fetch", requires=["API-40", "API-23", "API-25"])
async def resume_a_fetch(s: Session) -> None:
    """Range bytes=N- is answered 206 with the rest, Content-Range and a key wrap, and logs its receipt."""
    reader, grant, doc, whole = await _whole(s)
    size = len(whole)
    for start, spelling in ((size // 2, "bytes"), (size - 1, "bytes"), (0, "bytes"), (1, "BYTES")):
        answer, receipt = await _ranged(s, reader, [grant], doc, f"{spelling}={start}-")
        expect_status(answer, 206, what=f"Range {spelling}={start}-")
        if answer.headers.get("Content-Range") != f"bytes {start}-{size - 1}/{size}":
            raise Failed(
                f"Content-Range is {answer.headers.get('Content-Range')!r} for a stream of {size} bytes"
            )
        if answer.headers.get("Content-Length") != str(size - start) or answer.body != whole[start:]:
            raise Failed(f"the 206 answer does not carry bytes {start} to {size - 1} of the stream")
        joined = Answer(200, answer.headers, whole[:start] + answer.body)
        s.open_fetched(reader, joined, doc)
        # The resumed read was logged as any fetch: its receipt serves no second fetch ([API-25]).
        expect_refusal(
            await _plain_fetch(s, reader, [grant], doc, receipt), "replay", what="the receipt again"
        )


@case("sync.range-forms", requires=["API-41"], adversarial=True)
async def range_forms(s: Session) -> None:
    """Range forms other than one bytes=N- are refused with bad-range (416), before the receipt is looked at."""
    reader, grant, doc, _whole_stream = await _whole(s)
    for value in ("bytes=-5", "bytes=0-10", "bytes=1-,3-", "items=1-", "bytes = 1-", "bytes=x-", "bytes=1"):
        answer, receipt = await _ranged(s, reader, [grant], doc, value)
        expect_refusal(answer, "bad-range", what=f"Range: {value}")
        # Nothing was logged: the same receipt still serves a fetch.
        expect_status(
            await _plain_fetch(s, reader, [grant], doc, receipt), 200, what=f"the receipt after {value}"
        )

    def two_fields(sent: CIMultiDict[str]) -> None:
        sent.popall("Range")
        sent.add("Range", "bytes=1-")
        sent.add("Range", "bytes=2-")

    # Signed over the two lines combined (Section 14.5), sent as two fields.
    answer, receipt = await _ranged(s, reader, [grant], doc, "bytes=1-, bytes=2-", tamper=two_fields)
    expect_refusal(answer, "bad-range", what="two Range fields")
    expect_status(
        await _plain_fetch(s, reader, [grant], doc, receipt), 200, what="the receipt after two fields"
    )
    # The form is checked before step 1 of the fetch: a receipt that does not open does not come first.
    fields = {"chain": [grant.encoded], "receipt": b"not a receipt", "profile": reader.profile.encoded}
    answer = await s.wire.call("/v0/fetch", reader.identity, fields, extra={"Range": "bytes=0-9"})
    expect_refusal(answer, "bad-range", what="a closed range with a receipt that does not open")


@case("sync.range-past-the-end", requires=["API-41", "CAP-12"], adversarial=True)
async def range_past_the_end(s: Session) -> None:
    """A start at or past the end is bad-range and logs nothing; a document out of scope is still not-found."""
    reader, grant, doc, whole = await _whole(s)
    for start in (len(whole), len(whole) + 1, 10**15):
        answer, receipt = await _ranged(s, reader, [grant], doc, f"bytes={start}-")
        expect_refusal(answer, "bad-range", what=f"bytes={start}- of a {len(whole)}-byte stream")
        if "Fedrecord-Key-Wrap" in answer.headers:
            raise Failed("a refused range carries a key wrap")
        expect_status(
            await _plain_fetch(s, reader, [grant], doc, receipt), 200, what="the receipt after bad-range"
        )
    # The start is checked after the document (step 8): one the reader may not see is not-found.
    world = await s.world()
    narrow = s.patient.grant(reader.did, scope=Scope(past=True, future=True, categories=("imaging",)))
    bodies = []
    for target, what in ((world.lab_result.doc, "out of scope"), (os.urandom(32), "absent")):
        answer, _ = await _ranged(s, reader, [narrow], target, f"bytes={10**15}-")
        expect_refusal(answer, "not-found", what=f"a range past the end of a document {what}")
        bodies.append(answer.body)
    if bodies[0] != bodies[1]:
        raise Failed("a document out of scope and an absent one are refused with different bodies [CAP-12]")


@case("sync.range-is-signed", requires=["API-40", "HTTP-4"], adversarial=True)
async def range_is_signed(s: Session) -> None:
    """A Range field added, changed or removed after signing fails the signature, and nothing is logged."""
    reader, grant, doc, whole = await _whole(s)
    half = len(whole) // 2

    def add(sent: CIMultiDict[str]) -> None:
        sent["Range"] = f"bytes={half}-"

    def change(sent: CIMultiDict[str]) -> None:
        sent["Range"] = f"bytes={half + 1}-"

    def remove(sent: CIMultiDict[str]) -> None:
        sent.popall("Range")

    for value, tamper, what in (
        (None, add, "added"),
        (f"bytes={half}-", change, "changed"),
        (f"bytes={half}-", remove, "removed"),
    ):
        answer, receipt = await _ranged(s, reader, [grant], doc, value, tamper=tamper)
        expect_refusal(answer, "bad-signature", what=f"a Range field {what} after signing")
        expect_status(
            await _plain_fetch(s, reader, [grant], doc, receipt), 200, what=f"the receipt, Range {what}"
        )


# --- devices ----------------------------------------------------------------------------------------------


@case("sync.device-sees-the-record", requires=["API-46", "CAP-13"])
async def device_sees_the_record(s: Session) -> None:
    """A device chain syncs restrictions, decisions and a new audit checkpoint after each read."""
    world = await s.world()
    device = _device(s, "Conformance phone")
    device_grant = _device_grant(s, device)
    other = Actor.create("Someone else")
    restriction = s.restriction(labels=["HIV"], node=other.did)
    await s.keep(device_grant, restriction)
    before = await _view(s, device, [device_grant])
    if restriction.id not in before:
        raise Failed("the device's view lacks a private restriction the patient signed")
    decisions = [r for r in before.values() if isinstance(r.record, DepositDecision)]
    if not any(d.record.doc == world.lab_result.doc and d.record.decision == "accepted" for d in decisions):
        raise Failed("the device's view lacks the patient's accepted deposit-decision of a document")
    if any(
        r.signer != s.patient.did for r in before.values() if not isinstance(r.record, (Grant, Revocation))
    ):
        raise Failed("the device's view holds records of other types that the patient did not sign")
    checkpoints = [r.record.seq for r in before.values() if isinstance(r.record, AuditCheckpoint)]
    # A read adds an entry to the audit log; the device's next sync carries a checkpoint of it.
    reader, grant = await s.reader()
    s.open_fetched(reader, await s.fetch(reader, [grant], world.imaging.doc), world.imaging.doc)
    fresh = await _changes(s, device, [device_grant], before)
    new = [r for r in fresh.values() if isinstance(r.record, AuditCheckpoint)]
    if len(new) != 1 or new[0].signer != s.patient.did:
        raise Failed(f"after a read, the device's sync found {len(new)} new audit checkpoints, not one")
    if checkpoints and new[0].record.seq <= max(checkpoints):
        raise Failed("the new audit checkpoint is not of a later log entry than the previous ones")
    # The reader's grant, signed by the patient's key and never kept on the node, may be kept by the
    # read that presented it ([API-75], SHOULD): nothing else may come.
    if set(fresh) - {grant.id} != {new[0].id}:
        raise Failed("a read changed more of the device's view than the audit checkpoint")
    # A restriction applies to a device only when it names the device's grant or node.
    entries = {r.record.doc for r in before.values() if isinstance(r.record, AcceptedEntry)}
    if not {d.doc for d in world.documents} <= entries:
        raise Failed("the device's view lacks accepted entries of the record")
    note = world.psy_note.doc
    s.open_fetched(device, await s.fetch(device, [device_grant], note), note)
    await s.keep(s.restriction(labels=["PSY"], node=device.did))
    expect_refusal(
        await s.fetch(device, [device_grant], note), "not-found", what="a note restricted for the device"
    )


@case("sync.device-push", requires=["API-48"])
async def device_push(s: Session) -> None:
    """A device pushes a grant it issued and its revocation: stored once, visible, and in force."""
    await s.world()
    device, second = _device(s, "Phone"), _device(s, "Tablet")
    device_grant, second_grant = _device_grant(s, device), _device_grant(s, second)
    await s.keep(device_grant, second_grant)
    reader = Actor.create("Delegate")
    child = _child(device, device_grant, reader.did, actions=("read",))
    chain = [device_grant]
    answer = await _push(s, device, chain, [child.encoded])
    expect_status(answer, 200, what="push of a grant the device issued")
    if answer.data.get("stored") != 1:
        raise Failed(f"the push of one new grant answered stored {answer.data.get('stored')!r}")
    again = await _push(s, device, chain, [child.encoded])
    if again.status != 200 or again.data.get("stored") != 0:
        raise Failed(f"the same grant pushed again answered {again.describe()}, not stored 0")
    if child.id not in await _records(s, second, [second_grant], [child.id]):
        raise Failed("the pushed grant is not in the view of the patient's other device [API-48]")
    await s.listed(reader, [device_grant, child])
    revocation = sign_record(Revocation(grant=child.id, iat=now()), device.identity)
    answer = await _push(s, device, chain, [revocation.encoded])
    if answer.status != 200 or answer.data.get("stored") != 1:
        raise Failed(f"the push of the device's revocation answered {answer.describe()}")
    if child.id not in await _revoked_ids(s, reader):
        raise Failed("the pushed revocation is not in the state answer")
    expect_refusal(
        await s.listing(reader, [device_grant, child]), "revoked", what="a listing under the revoked grant"
    )


@case("sync.device-push-foreign-signer", requires=["API-48"], adversarial=True)
async def device_push_foreign_signer(s: Session) -> None:
    """A push holding one record the device did not sign is refused with bad-signature, and nothing is stored."""
    await s.world()
    device, second = _device(s, "Phone"), _device(s, "Tablet")
    device_grant, second_grant = _device_grant(s, device), _device_grant(s, second)
    await s.keep(device_grant, second_grant)
    other = Actor.create("Impostor")
    good = _child(device, device_grant, Actor.create("Delegate").did, actions=("read",))
    forged = _child(other, device_grant, Actor.create("Delegate").did, actions=("read",))
    by_patient = sign_record(Revocation(grant=os.urandom(32), iat=now()), s.patient.identity)
    for records, what in (
        ([good.encoded, forged.encoded], "a grant signed by another node"),
        ([good.encoded, by_patient.encoded], "a revocation signed by the patient"),
    ):
        expect_refusal(await _push(s, device, [device_grant], records), "bad-signature", what=what)
    held = await _records(s, second, [second_grant], [good.id, forged.id, by_patient.id])
    if held:
        raise Failed(f"a refused push stored {len(held)} of its records")
    if by_patient.record.grant in await _revoked_ids(s, other):
        raise Failed("a refused push stored its revocation")


@case("sync.device-push-foreign-type", requires=["API-48"], adversarial=True)
async def device_push_foreign_type(s: Session) -> None:
    """A push of what the device did not issue under its device grant is malformed, and nothing is stored."""
    await s.world()
    device, second = _device(s, "Phone"), _device(s, "Tablet")
    device_grant, second_grant = _device_grant(s, device), _device_grant(s, second)
    reader, reader_grant = await s.reader()
    await s.keep(device_grant, second_grant, reader_grant)
    good = _child(device, device_grant, Actor.create("Delegate").did, actions=("read",))
    orphan = device.grant(Actor.create("Delegate").did)  # no parent: not under the device grant
    under_other = _child(device, second_grant, Actor.create("Delegate").did, actions=("read",))
    not_its_own = sign_record(Revocation(grant=reader_grant.id, iat=now()), device.identity)
    restriction = sign_record(
        PrivateRestriction(grants=None, audiences=(reader.did,), labels=("PSY",), iat=now()), device.identity
    )
    receipt = device.receipt(s.patient.did, os.urandom(32), device_grant)
    for bad, what in (
        (orphan, "a grant without a parent"),
        (under_other, "a grant under another device's grant"),
        (not_its_own, "a revocation of the patient's grant"),
        (restriction, "a private restriction"),
        (receipt, "an access receipt"),
    ):
        expect_refusal(
            await _push(s, device, [device_grant], [good.encoded, bad.encoded]), "malformed", what=what
        )
    held = await _records(
        s, second, [second_grant], [good.id, orphan.id, under_other.id, not_its_own.id, restriction.id]
    )
    if held:
        raise Failed(f"a refused push stored {len(held)} of its records")
    if reader_grant.id in await _revoked_ids(s, reader):
        raise Failed("a device's revocation of the patient's grant was stored")
    await s.listed(reader, [reader_grant])


@case("sync.device-push-without-manage", requires=["API-48"], adversarial=True)
async def device_push_without_manage(s: Session) -> None:
    """A push under a chain without manage is action-not-granted; under a revoked one, revoked."""
    await s.world()
    device, second = _device(s, "Phone"), _device(s, "Tablet")
    weak = s.patient.grant(device.did, actions=("read", "delegate"), scope=Scope(past=True, future=True))
    second_grant = _device_grant(s, second)
    await s.keep(weak, second_grant)
    child = _child(device, weak, Actor.create("Delegate").did, actions=("read",))
    expect_refusal(await _push(s, device, [weak], [child.encoded]), "action-not-granted")
    revoked = _device_grant(s, device)
    await s.keep(revoked)
    await s.manage("revoke", grant=revoked.id)
    late = _child(device, revoked, Actor.create("Delegate").did, actions=("read",))
    expect_refusal(await _push(s, device, [revoked], [late.encoded]), "revoked")
    if await _records(s, second, [second_grant], [child.id, late.id]):
        raise Failed("a refused push stored its grant")


@case("sync.manage-outside-a-device-grant", requires=["API-46", "API-48"], adversarial=True)
async def manage_outside_a_device_grant(s: Session) -> None:
    """manage in a narrower grant, or kept by a delegated leaf, gives the chain's scope only, and no push."""
    world = await s.world()
    device, other = _device(s, "Phone"), Actor.create("Lab that kept manage")
    device_grant = _device_grant(s, device)
    restriction = s.restriction(labels=["HIV"], node=Actor.create("Someone else").did)
    narrow = Scope(past=True, future=True, categories=("lab",))
    patients_own = s.patient.grant(other.did, actions=("manage", "read"), scope=narrow)
    await s.keep(device_grant, patients_own, restriction)
    kept = _child(device, device_grant, other.did, actions=("manage", "read"), scope=narrow)
    expect_status(await _push(s, device, [device_grant], [kept.encoded]), 200, what="the device's push of its grant")
    for chain, what in (([patients_own], "the patient's narrow grant"), ([device_grant, kept], "a delegated leaf")):
        view = await _view(s, other, chain)
        if restriction.id in view or any(isinstance(r.record, DepositDecision) for r in view.values()):
            raise Failed(f"{what} with manage synced the whole record (a restriction or a decision)")
        entries = {r.record.doc for r in view.values() if isinstance(r.record, AcceptedEntry)}
        if world.imaging.doc in entries:
            raise Failed(f"{what} with manage synced an entry outside its categories")
        child = _child(other, chain[-1], Actor.create("Delegate").did, actions=("read",), scope=narrow)
        expect_refusal(await _push(s, other, chain, [child.encoded]), "action-not-granted", what=what)


@case("sync.device-grants-lapse", requires=["API-47", "CAP-7"], adversarial=True)
async def device_grants_lapse(s: Session) -> None:
    """Once the patient revokes a device grant, every grant the device issued is refused with revoked."""
    world = await s.world()
    device = _device(s, "Lost phone")
    device_grant = _device_grant(s, device)
    await s.keep(device_grant)
    reader = Actor.create("Delegate")
    child = _child(device, device_grant, reader.did, actions=("read",))
    expect_status(await _push(s, device, [device_grant], [child.encoded]), 200, what="push")
    chain = [device_grant, child]
    if world.lab_result.doc not in await s.listed(reader, chain):
        raise Failed("set-up: the device's delegate does not see the lab result")
    await s.manage("revoke", grant=device_grant.id, reason="lost")
    expect_refusal(await s.listing(reader, chain), "revoked", what="listing")
    expect_refusal(await s.fetch(reader, chain, world.lab_result.doc), "revoked", what="fetch")
    message = Reconciler(SortedItems()).initiate()
    expect_refusal(await _sync(s, reader, chain, message), "revoked", what="sync")
    late = _child(device, device_grant, Actor.create("Delegate").did, actions=("read",))
    expect_refusal(
        await _push(s, device, [device_grant], [late.encoded]), "revoked", what="push by the lost device"
    )


# --- patient control -------------------------------------------------------------------------------------


@case("sync.manage-other-signer", requires=["API-50"], adversarial=True)
async def manage_other_signer(s: Session) -> None:
    """A manage request signed by any key but the node's own is wrong-audience, before its op, and changes nothing."""
    await s.world()
    device = _device(s, "Phone")
    device_grant = _device_grant(s, device)
    reader, grant = await s.reader()
    await s.keep(device_grant, grant)
    newcomer = Actor.create("Newcomer")
    gift = s.patient.grant(newcomer.did)
    for signer, what in (
        (device, "a device holding manage"),
        (reader, "a grantee"),
        (Actor.create("X"), "a stranger"),
    ):
        for fields in (
            {"op": "revoke", "grant": grant.id},
            {"op": "keep", "records": [gift.encoded]},
            {"op": "invite"},
            {"op": 42},
            {},
        ):
            answer = await s.wire.call("/v0/manage", signer.identity, fields)
            expect_refusal(answer, "wrong-audience", what=f"{what}, {fields.get('op', 'no op')!r}")
    if grant.id in await _revoked_ids(s, reader):
        raise Failed("a refused manage request revoked the grant")
    await s.listed(reader, [grant])
    if gift.id in await _state_grants(s, newcomer):
        raise Failed("a refused manage request kept a grant")


@case("sync.manage-malformed", requires=["API-51"], adversarial=True)
async def manage_malformed(s: Session) -> None:
    """Unknown ops and ill-typed arguments are malformed, unknown documents and grants not-found; nothing changes."""
    await s.world()
    reader, grant = await s.reader()
    await s.keep(grant)
    before = await s.state(reader)
    for fields, code in (
        ({"op": "frobnicate"}, "malformed"),
        ({}, "malformed"),
        ({"op": 7}, "malformed"),
        ({"op": "REVOKE", "grant": grant.id}, "malformed"),
        ({"op": "revoke"}, "malformed"),
        ({"op": "revoke", "grant": grant.id[:31]}, "malformed"),
        ({"op": "revoke", "grant": grant.id, "reason": ""}, "malformed"),
        ({"op": "hide", "doc": os.urandom(32), "hidden": "yes"}, "malformed"),
        ({"op": "invite", "ttl": 0}, "malformed"),
        ({"op": "keep", "records": "nothing"}, "malformed"),
        ({"op": "revoke", "grant": os.urandom(32)}, "not-found"),
        ({"op": "delete", "doc": os.urandom(32)}, "not-found"),
        ({"op": "accept", "doc": os.urandom(32)}, "not-found"),
        ({"op": "reject", "doc": os.urandom(32)}, "not-found"),
        ({"op": "label", "doc": os.urandom(32), "labels": ["X"]}, "not-found"),
    ):
        answer = await s.wire.call("/v0/manage", s.patient.identity, fields)
        expect_refusal(answer, code, what=repr({k: v for k, v in fields.items() if k != "v"}))
    after = await s.state(reader)
    if _summary(after) != _summary(before):
        raise Failed("refused manage requests changed the state")
    await s.listed(reader, [grant])


@case("sync.manage-keep-checks", requires=["API-53"], adversarial=True)
async def manage_keep_checks(s: Session) -> None:
    """keep refuses a record not signed by the patient (bad-signature) or of another type (wrong-type), storing none."""
    await s.world()
    target = Actor.create("Grantee")
    other = Actor.create("Impostor")
    valid = s.patient.grant(target.did)
    foreign = other.grant(target.did)
    revocation = sign_record(Revocation(grant=valid.id, iat=now()), s.patient.identity)
    tampered = bytearray(valid.encoded)
    tampered[-1] ^= 1
    cases: list[tuple[list[Signed[Any]], str, str]] = [
        ([valid, foreign], "bad-signature", "a grant signed by another key"),
        ([valid, revocation], "wrong-type", "a revocation"),
        ([revocation, foreign], "wrong-type", "a revocation before a foreign grant (array order)"),
        ([foreign, revocation], "bad-signature", "a foreign grant before a revocation (array order)"),
    ]
    for records, code, what in cases:
        answer = await s.wire.call(
            "/v0/manage", s.patient.identity, {"op": "keep", "records": [r.encoded for r in records]}
        )
        expect_refusal(answer, code, what=what)
    answer = await s.wire.call(
        "/v0/manage", s.patient.identity, {"op": "keep", "records": [valid.encoded, bytes(tampered)]}
    )
    expect_refusal(answer, "bad-signature", what="a grant whose signature was changed")
    if valid.id in await _state_grants(s, target):
        raise Failed("a refused keep stored the valid grant beside the refused record")
    if valid.id in await _revoked_ids(s, target):
        raise Failed("a refused keep stored the revocation")
    expect_refusal(await s.listing(target, [foreign]), "not-patient-root", what="the foreign grant")


@case("sync.manage-keep-and-revoke", requires=["API-50", "API-52", "API-53"])
async def manage_keep_and_revoke(s: Session) -> None:
    """keep stores the patient's grants once, counting new ones; revoke signs a revocation and a new head."""
    await s.world()
    target = Actor.create("Grantee")
    grant = s.patient.grant(target.did)
    restriction = s.restriction(labels=["PSY"], grant=grant.id)
    answer = await s.wire.call(
        "/v0/manage", s.patient.identity, {"op": "keep", "records": [grant.encoded, restriction.encoded]}
    )
    expect_status(answer, 200, what="keep")
    if not answer.signed_by(s.patient.did):
        raise Failed("the manage answer is not signed by the node bound to the request [API-50]")
    if answer.data.get("stored") != 2:
        raise Failed(f"keep of two new records answered stored {answer.data.get('stored')!r}")
    again = await s.manage("keep", records=[grant.encoded, grant.encoded, restriction.encoded])
    if again.get("stored") != 0:
        raise Failed(f"keep of records already held answered stored {again.get('stored')!r}")
    if grant.id not in await _state_grants(s, target):
        raise Failed("a kept grant is not in the state answer of its audience [API-53]")
    world = await s.world()
    if world.psy_note.doc in await s.listed(target, [grant]):
        raise Failed("a kept private restriction does not apply to listings [API-53]")
    seq = open_record((await s.state(target))["head"], StateHead).record.seq
    done = await s.manage("revoke", grant=grant.id)
    revocation = open_record(done["revocation"], Revocation)
    if revocation.signer != s.patient.did or revocation.record.grant != grant.id:
        raise Failed("the revoke answer is not the patient's revocation of the grant")
    state = await s.state(target)
    if revocation.encoded not in state["revocations"]:
        raise Failed("the revocation the answer carries is not the one stored")
    if open_record(state["head"], StateHead).record.seq <= seq:
        raise Failed("a revocation did not sign a new state head [API-17]")
    expect_refusal(await s.listing(target, [grant]), "revoked")


@case("sync.delegated-whole-manage", requires=["API-46", "API-48"], adversarial=True)
async def delegated_whole_manage(s: Session) -> None:
    """A delegated leaf that kept `manage` over the whole record is no device grant: it syncs its scope's
    view, without the private restrictions or inbox decisions, and may not push ([API-46]: one link)."""
    await s.world()
    device, other = _device(s, "Phone delegating everything"), Actor.create("Kept everything")
    device_grant = _device_grant(s, device)
    restriction = s.restriction(labels=["HIV"], node=Actor.create("Someone else").did)
    await s.keep(device_grant, restriction)
    kept = _child(device, device_grant, other.did, actions=("manage", "read", "delegate"))
    expect_status(await _push(s, device, [device_grant], [kept.encoded]), 200, what="the device's push of it")
    view = await _view(s, other, [device_grant, kept])
    if restriction.id in view or any(isinstance(r.record, DepositDecision) for r in view.values()):
        raise Failed("a delegated whole-record manage leaf synced the whole record, restrictions included")
    grandchild = _child(other, kept, Actor.create("Its delegate").did, actions=("read",))
    expect_refusal(
        await _push(s, other, [device_grant, kept], [grandchild.encoded]),
        "action-not-granted",
        what="a push under a delegated manage leaf",
    )
