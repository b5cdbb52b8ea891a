"""Syncing a clinic with a patient's node: reconcile the records it may see, fetch what it lacks (spec 15.16).

The patient's node answers reconciliation rounds (``POST /v0/sync``) over the
*view* of the requester ([SYNC-10]): the records the requester may see, and
nothing else --

* the patient's state heads and tombstones, and every revocation it holds (what polling gives);
* the grants the patient issued to the requester;
* the accepted entry of each document the requester's chain reaches now
  (in scope, not restricted, not hidden): the entry names the document, whose
  body the requester then fetches with a receipt like any other read.

A device grant sees the whole record instead ([API-46]): every record the patient
signed and every grant and revocation held; hidden documents are the device's
too, and only a restriction naming the device keeps a document (and its entry)
from it.

Each item is (the record's ``iat``, its id); accepted entries carry no
``iat`` and sit at timestamp 0.  The view of one (requester, chain) is built
once and kept until records or documents change (the ``view_epoch`` count that
triggers keep in the database), so the rounds of one sync, and the next syncs of
an idle record, cost no rebuild; nonces and audit entries do not count.

The clinic (:func:`sync_with_patient`) reconciles the records it holds of
that patient's record -- never another patient's (:meth:`ClinicNode.sync_items`)
-- against the view, fetches what it lacks in batches
(``POST /v0/records``), verifies each record (the id asked for, of a type the
view holds, signed by the patient -- or, in a device's view, a grant another
device issued under its device grant, signed by that device) before storing
any of a batch, applies revocations and tombstones as a polled answer would
(:meth:`ClinicNode.apply_state`),
then fetches the bodies of the documents it does not hold yet: the small ones
in batches, each batch one request, one receipt and one key wrap
(``POST /v0/fetch-batch``, 15.21), the large ones alone, where a body cut
short resumes where it stopped ([API-42]).  Everything is idempotent: a sync
interrupted at any point is finished by the next one.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from fedrecord.core import (
    BATCH_MAX_DOCS,
    AcceptedEntry,
    Action,
    AuditCheckpoint,
    Code,
    DepositDecision,
    Grant,
    PrivateRestriction,
    RemoteProtocolError,
    Revocation,
    Signed,
    StateHead,
    Tombstone,
    open_any_record,
)
from fedrecord.core.errors import AuthenticationError, FedrecordError
from fedrecord.core.identity import EncryptionKeyPair
from fedrecord.core.reconcile import Item, Reconciler, SortedItems, respond
from fedrecord.core.sealed_box import open_sealed, seal

from .records_table import open_stored
from .wire import BATCH_MAX_BYTES, api_url

if TYPE_CHECKING:
    from .clinic import ClinicNode
    from .patient import PatientNode

MAX_IDS: Final = 512
"""Record ids asked for in one ``POST /v0/records`` (their records fit well within the 1 MiB body cap),
and records sent in one ``POST /v0/push``."""
PUSH_MAX_BYTES: Final = 786_432
"""The encoded records of one push: with the device's chain (one record of at most 64 KiB) and the
framing, its body stays within the 1 MiB cap."""
BODY_FETCHES: Final = 8
"""Fetch requests (of one document, or of a batch) a sync runs at once."""
BATCH_LARGEST: Final = 64 * 1024
"""Documents of a padded size up to this are fetched in batches; larger ones alone, resumably."""
MAX_ROUNDS: Final = 64
"""Reconciliation rounds one sync may take: a peer that never lets it finish is refused."""
VIEW_TYPES: Final = (StateHead, Revocation, Tombstone, Grant, AcceptedEntry)
DEVICE_TYPES: Final = (*VIEW_TYPES, PrivateRestriction, DepositDecision, AuditCheckpoint)
"""A device holding ``manage`` sees these too: the whole record the patient signed ([API-46])."""
CHAIN_REFUSALS: Final = frozenset(
    {Code.REVOKED, Code.EXPIRED, Code.NOT_YET_VALID, Code.BROKEN_CHAIN, Code.NOT_PATIENT_ROOT, Code.WIDENED}
)


VIEW_REFUSALS: Final = frozenset(
    {
        Code.ACTION_NOT_GRANTED,
        Code.NOT_DELEGABLE,
        Code.OUT_OF_SCOPE,
        Code.RESTRICTED,
        Code.ROLLBACK,
        Code.STALE,
        Code.WRONG_AUDIENCE,
        Code.NOT_FOUND,
    }
)
"""Refusals of one view by the patient's node's decision on its chain (those of CHAIN_REFUSALS aside, which a
pass answers by syncing the control records instead): the other views of the sync go on."""


def subject_of(signed: Signed[Any]) -> bytes | None:
    """What a synced record is kept under (``records.subject``), as the node keeps it when it makes it."""
    record = signed.record
    if isinstance(record, Grant):
        return record.audience.encode()
    if isinstance(record, Revocation):
        return record.grant
    if isinstance(record, (Tombstone, AcceptedEntry, DepositDecision)):
        return record.doc
    return None


def item_of(signed: Signed[Any]) -> Item:
    """The reconciliation item of a record: (its ``iat``, or 0 when it has none; its id)."""
    return (int(getattr(signed.record, "iat", 0)), signed.id)


@dataclass
class View:
    """What one requester may see of the patient's records: the index and the records by id."""

    items: SortedItems
    records: dict[bytes, bytes]
    version: int
    private: frozenset[bytes] = frozenset()  # ids of the private restrictions: sent sealed ([CAP-15])


@dataclass
class ViewCache:
    """Views by (requester, chain), dropped when records or documents change (at the next view built)."""

    views: dict[tuple[str, tuple[bytes, ...]], View] = field(default_factory=dict)
    limit: int = 64

    def get(self, key: tuple[str, tuple[bytes, ...]], version: int) -> View | None:
        """The view kept for ``key`` if it was read at ``version``; ``None`` otherwise."""
        view = self.views.get(key)
        return view if view is not None and view.version == version else None

    def keep(self, key: tuple[str, tuple[bytes, ...]], view: View) -> None:
        """Keep ``view``, dropping every view read at an earlier version, and all of them at the limit."""
        # A view read at an earlier epoch is never used again (the epoch only moves on): each holds a copy
        # of a whole view's records, so they are dropped now rather than kept until the cache is full.
        for stale in [k for k, v in self.views.items() if v.version < view.version]:
            del self.views[stale]
        if len(self.views) >= self.limit:
            self.views.clear()
        self.views[key] = view


def is_device_grant(grant: Grant) -> bool:
    """Whether a grant's terms are a device grant's ([API-46]): ``manage`` over the whole record."""
    scope = grant.scope
    whole = scope.past and scope.future and (scope.ids, scope.categories, scope.labels) == (None, None, None)
    return Action.MANAGE in grant.actions and whole and (scope.since, scope.until) == (None, None)


def is_device_chain(grants: Sequence[Signed[Grant]], patient: str) -> bool:
    """Whether a chain is a device grant ([API-46]): one link, the patient's, ``manage`` over the whole record.

    ``manage`` in any other chain -- a delegated leaf that kept it, or a
    patient's grant over less than the whole record -- gives nothing more than
    the chain's scope: the whole record is for the patient's own devices.
    """
    return len(grants) == 1 and grants[0].signer == patient and is_device_grant(grants[0].record)


def device_grants(grants: Iterable[Signed[Any]], patient: str) -> dict[bytes, str]:
    """The patient's device grants among ``grants``: each id to the did of its device ([API-46]).

    A device grant is a root: the patient's, without a parent, ``manage`` over the whole record.
    """
    return {
        g.id: g.record.audience
        for g in grants
        if isinstance(g.record, Grant) and g.record.parent is None and is_device_chain([g], patient)
    }


def is_device_issued(signed: Signed[Any], devices: Mapping[bytes, str]) -> bool:
    """Whether a record is a grant a device issued under its device grant ([API-48]).

    Args:
        devices: the patient's device grants, as :func:`device_grants` gives them.
    """
    record = signed.record
    return isinstance(record, Grant) and record.parent is not None and devices.get(record.parent) == signed.signer


async def patient_view(
    node: PatientNode, requester: str, grants: Sequence[Signed[Grant]], *, now: int
) -> View:
    """The requester's view ([SYNC-10]), from the cache when the database has not changed.

    ``grants`` is the requester's chain, already decided allowed for reading;
    an empty chain gives the control records only (a depositing clinic).
    """
    device = is_device_chain(grants, node.home.did)
    if device:
        # A device syncs: it takes a checkpoint of the audit log along ([API-46]).
        await node.checkpoint_audit(now=now)
    version = await node.store.view_epoch()
    cache: ViewCache = node.sync_views
    key = (requester, tuple(g.id for g in grants))
    view = cache.get(key, version)
    if view is not None:
        return view
    patient = node.home.did
    records: dict[bytes, Signed[Any]] = {}
    if device:
        # One of the patient's devices: the whole record ([API-46]).
        for cls in DEVICE_TYPES:
            # Grants and revocations whoever signed them: a device's own are part of the record ([API-48]).
            anyone = cls in (Revocation, Grant)
            for signed in await node.store.records(cls, signer=None if anyone else patient, verify=False):
                records[signed.id] = signed
    else:
        # Passed on, not acted on: the requester verifies each record it takes ([API-45]).
        for head in await node.store.records(StateHead, signer=patient, verify=False):
            records[head.id] = head
        # The tombstones its state answer holds: of documents it read, deposited or could list ([API-16]).
        for tombstone in await node.tombstones_for(requester, device=False, verify=False):
            records[tombstone.id] = tombstone
        # Every revocation, as a state answer has them: a delegating clinic revokes what it delegated.
        for revocation in await node.store.records(Revocation, verify=False):
            records[revocation.id] = revocation
        for grant in await node.store.records(Grant, signer=patient, subject=requester.encode(), verify=False):
            records[grant.id] = grant
    if device:
        # Hidden documents are the device's too; those a restriction naming the device keeps from it are
        # not: their entries and deposit decisions stay out of its view, which would name them ([API-46]).
        _shown, kept_from = await node.document_reach(grants)
        for record_id, signed in list(records.items()):
            if isinstance(signed.record, (AcceptedEntry, DepositDecision)) and signed.record.doc in kept_from:
                del records[record_id]
    items = [item_of(s) for s in records.values()]
    encoded = {i: s.encoded for i, s in records.items()}
    if grants and not device:
        # The chain was decided allowed by the caller (reading_chain): only its reach is listed.
        reachable = {item["doc"] for item in await node.reachable_documents(grants)}
        # Not decoded: an entry's subject is its document and, having no iat, its item is (0, id).
        for record_id, doc, entry in await node.store.record_rows(AcceptedEntry, signer=patient):
            if doc in reachable:
                items.append((0, record_id))
                encoded[record_id] = entry
    private = frozenset(i for i, s in records.items() if isinstance(s.record, PrivateRestriction))
    view = View(SortedItems(items), encoded, version, private)
    cache.keep(key, view)
    return view


async def answer_round(
    node: PatientNode, requester: str, chain: Sequence[bytes], message: bytes, *, now: int
) -> bytes:
    """The responder's answer to one reconciliation message of ``requester``.

    Raises:
        RemoteProtocolError: the chain's refusal (as a listing's); the message's codes ([SYNC-5]).
    """
    view = await patient_view(node, requester, await node.reading_chain(requester, chain, now=now), now=now)
    return respond(view.items, message)


async def records_by_id(
    node: PatientNode, requester: str, chain: Sequence[bytes], ids: Sequence[bytes], *, now: int
) -> tuple[list[bytes], list[bytes]]:
    """The records of ``ids`` that are in the requester's view; ids outside it are left out silently.

    Returns:
        The records sent as they are, and those sealed to the requester's current
        encryption key: a device's private restrictions travel encrypted ([CAP-15],
        [API-44]); without a known key for the device they are left out until it
        shows its profile.

    Raises:
        RemoteProtocolError: the chain's refusal; ``malformed`` for more than
            :data:`MAX_IDS` ids or an id that is not 32 bytes.
    """
    if len(ids) > MAX_IDS or not all(type(i) is bytes and len(i) == 32 for i in ids):
        raise RemoteProtocolError(Code.MALFORMED, f"ids is an array of at most {MAX_IDS} record ids")
    view = await patient_view(node, requester, await node.reading_chain(requester, chain, now=now), now=now)
    found = [i for i in ids if i in view.records]
    private = {i for i in found if i in view.private}
    plain = [view.records[i] for i in found if i not in private]
    if not private:
        return plain, []
    profile = await node.peer_profile(requester)
    key = profile.record.encryption_key_at(now) if profile is not None else None
    if key is None:
        return plain, []
    return plain, [seal(view.records[i], key.key, os.urandom(32)) for i in found if i in private]


# --- the clinic's side -------------------------------------------------------------------------------------


@dataclass
class SyncReport:
    """What one sync did."""

    rounds: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    records_fetched: int = 0
    records_stored: int = 0
    records_pushed: int = 0
    documents_fetched: int = 0
    documents_failed: list[str] = field(default_factory=list)


Progress = Callable[[str, int, int], None]
"""``progress(stage, done, total)``: called as records and documents arrive."""


def _opened(sealed: Any, keys: Sequence[EncryptionKeyPair]) -> list[bytes]:
    """The records a records answer sealed to this node (a device's private restrictions, [CAP-15]).

    Raises:
        RemoteProtocolError: ``malformed`` for ``sealed`` that is not an array of byte
            strings; ``decrypt-failed`` for a box that opens with none of this node's keys ([SEAL-3]).
    """
    if type(sealed) is not list or not all(type(box) is bytes for box in sealed):
        raise RemoteProtocolError(Code.MALFORMED, "sealed is an array of sealed records")
    opened = []
    for box in sealed:
        for pair in reversed(keys):  # the newest key first: the one the profile names now
            try:
                opened.append(open_sealed(box, pair))
                break
            except FedrecordError:
                continue
        else:
            raise RemoteProtocolError(Code.DECRYPT_FAILED, "a sealed record opens with none of this node's keys")
    return opened


async def sync_with_patient(
    clinic: ClinicNode, patient: str, *, now: int, bodies: bool = True, progress: Progress | None = None
) -> SyncReport:
    """Reconcile with ``patient``'s node, fetch and store the missing records, then the missing bodies.

    Raises:
        RemoteProtocolError: ``not-found`` when not connected; the patient
            node's refusal; ``bad-signature`` for a record not signed by the
            patient; ``malformed`` for an answer with records not asked for or
            a reconciliation that does not end.
        PeerUnreachable: the patient's node did not answer (what was stored so far stays).
    """
    report = SyncReport()
    views: list[_SyncedView] = []
    passed: set[tuple[bytes, ...]] = set()  # the chains synced under (the empty one: the control records)
    refused: RemoteProtocolError | None = None
    # The chains held, then those the first passes brought (a first grant, a grant given meanwhile):
    # the views they open are synced now, not at the next sync.
    for _ in range(2):
        endpoint, chains = await clinic.sync_targets(patient, now=now)
        for chain in chains:
            if tuple(chain) in passed:
                continue
            passed.add(tuple(chain))
            before = report.records_fetched
            shown = None if progress is None else _offset(progress, before)
            try:
                view = await _sync_pass(clinic, patient, endpoint, chain, report, now=now, progress=shown)
            except RemoteProtocolError as exc:
                if exc.code not in VIEW_REFUSALS:
                    raise  # an answer that does not hold together, or not signed by the patient: stop
                # The patient's node refused this view (say its chain was narrowed past what it holds):
                # the others still sync, and the refusal is raised once they have.
                refused = refused or exc
                continue
            views.append(view)
            if view.leaf is None:
                passed.add(())  # its chain died: it synced the control records instead
    if bodies and views:
        synced = [signed for view in views for signed in view.synced]
        missing = await clinic.missing_entries(patient, known=synced)
        # Each body under a chain whose view holds its entry: a batch one chain does not wholly reach is
        # refused ([API-70]).  Then, when no view was refused, those no live view holds (entries of
        # documents this node could read once): each is asked for still, and fails with its code.
        groups: list[tuple[bytes | None, list[AcceptedEntry]]] = [
            (view.leaf, [missing.pop(entry) for entry in list(missing) if entry in view.ids])
            for view in views
            if view.leaf is not None
        ]
        if refused is None:
            groups.append((None, list(missing.values())))
        total = sum(len(entries) for _, entries in groups)
        done = 0
        for under, entries in groups:
            # One bar for the documents of every group: each group's counts start where the last ended.
            shown = None if progress is None else _offset(progress, done, total)
            await _fetch_bodies(clinic, patient, entries, report, now=now, progress=shown, under=under)
            done += len(entries)
    if refused is not None:
        raise refused
    return report


def _offset(progress: Progress, before: int, total: int | None = None) -> Progress:
    """``progress`` told of one part of a stage: its counts after the ``before`` done in earlier parts.

    Args:
        total: the whole stage's, when known; else the part's own after ``before``.
    """

    def told(stage: str, done: int, part_total: int) -> None:
        progress(stage, before + done, total if total is not None else before + part_total)

    return told


@dataclass
class _SyncedView:
    """What one pass of a sync reconciled: under which chain, the ids of the view, the records it stored."""

    leaf: bytes | None
    """The id of the chain's last grant; None for a pass without a chain (none held, or it died)."""
    ids: set[bytes]
    synced: list[Signed[Any]]


async def _sync_pass(
    clinic: ClinicNode,
    patient: str,
    endpoint: str,
    chain: list[bytes],
    report: SyncReport,
    *,
    now: int,
    progress: Progress | None,
) -> _SyncedView:
    """Reconcile with the view of one chain (none: the control records), and store the records it lacks."""
    mine = await clinic.sync_items(patient)
    try:
        need, reconciler_have = await _reconcile(clinic, patient, endpoint, mine, chain, report)
    except RemoteProtocolError as exc:
        if not chain or exc.code not in CHAIN_REFUSALS:
            raise
        # Our chain died (a revocation we have not learnt of yet): sync the control records without
        # it, which is how we learn of the revocation and destroy what it covered.
        chain = []
        try:
            need, reconciler_have = await _reconcile(clinic, patient, endpoint, mine, chain, report)
        except RemoteProtocolError as again:
            if again.code is not Code.NOT_FOUND:
                raise
            # Not known to the patient's node (a delegate that never fetched there, [API-16]): it holds
            # no copy under the dead chain, so there is nothing to learn or destroy.
            return _SyncedView(None, set(), [])
    # The view: what this node holds and the patient's node did not say it lacks, and what it lacks.
    ids = {record_id for _, record_id in mine.items(0, len(mine))}.difference(reconciler_have).union(need)
    links = [open_stored(link, Grant) for link in chain]
    device = bool(links) and is_device_chain(links, patient)
    # A device's view holds the grants the patient's other devices issued ([API-46]): each is checked
    # against its parent, a device grant of this patient, held already or brought by this sync.
    devices = device_grants(await clinic.store.records(Grant, signer=patient), patient) if device else None
    expected = _Expected(patient=patient, requester=clinic.home.did, devices=devices)
    synced: list[Signed[Any]] = []

    async def take(batch: list[bytes], *, last: bool) -> list[bytes]:
        """Fetch, verify and keep one batch of records; the ids left for later."""
        answer = await clinic.client.call(
            "POST", api_url(endpoint, "/v0/records"), expected_signer=patient, chain=chain, ids=batch
        )
        plain = answer.get("records")
        if "sealed" in answer and type(plain) is list:
            plain = [*plain, *_opened(answer["sealed"], clinic.home.encryption_keys)]
        records, later = _verified_batch(plain, set(batch), expected, last=last)
        report.records_fetched += len(records)
        report.records_stored += await clinic.keep_synced(patient, records, now=now)
        synced.extend(records)
        return later

    deferred: list[bytes] = []
    for start in range(0, len(need), MAX_IDS):
        deferred += await take(need[start : start + MAX_IDS], last=False)
        if progress is not None:
            progress("records", min(start + MAX_IDS, len(need)), len(need))
    # A grant whose parent came in a later answer than its own: every parent the view holds is here now.
    for start in range(0, len(deferred), MAX_IDS):
        await take(deferred[start : start + MAX_IDS], last=True)
    await clinic.apply_held_state(patient, now=now, synced=synced)
    if device and reconciler_have:
        report.records_pushed += await _push_own(clinic, patient, endpoint, chain, reconciler_have)
    return _SyncedView(links[-1].id if links else None, ids, synced)


async def _fetch_bodies(
    clinic: ClinicNode,
    patient: str,
    missing: Sequence[AcceptedEntry],
    report: SyncReport,
    *,
    now: int,
    progress: Progress | None,
    under: bytes | None,
) -> None:
    """Fetch the missing documents: the small ones in batches (15.21), the others one by one.

    Each is asked for under the chain whose last grant is ``under`` first (the view that holds its
    entry), then under the others, as :meth:`ClinicNode.fetch` does.

    A few requests run at once, so that their commits are grouped on both
    sides and their syncs overlap.  A batch the patient's node refuses for
    anything but a dead chain is fetched again in halves, down to single
    fetches, which name the document that fails.
    """
    singles = [[entry.doc] for entry in missing if entry.padded_size > BATCH_LARGEST]
    batches = _batches([entry for entry in missing if entry.padded_size <= BATCH_LARGEST])
    # Each item is a batch (fetched with one request) or, alone in its list, a large document.
    pending = iter([*((True, batch) for batch in batches), *((False, single) for single in singles)])
    done = 0

    def advance(count: int) -> None:
        nonlocal done
        done += count
        if progress is not None:
            progress("documents", done, len(missing))

    async def fetch_one(doc: bytes) -> None:
        try:
            await clinic.fetch(patient, doc, now=now, under=under)
            report.documents_fetched += 1
        except RemoteProtocolError as exc:
            report.documents_failed.append(f"{doc.hex()}: {exc.code.value}")
        advance(1)

    async def fetch_batch(docs: list[bytes]) -> None:
        if len(docs) == 1:
            await fetch_one(docs[0])
            return
        try:
            failed = await clinic.fetch_batch(patient, docs, now=now, under=under)
        except RemoteProtocolError as exc:
            if exc.code in CHAIN_REFUSALS:
                report.documents_failed.extend(f"{doc.hex()}: {exc.code.value}" for doc in docs)
                advance(len(docs))
                return
            # One document the patient's node does not serve refuses the whole batch ([API-70]): an
            # entry kept from a grant since revoked is asked for at every sync.  Halves are fetched
            # again, down to the document alone, so the others still come a batch at a time.
            middle = len(docs) // 2
            await fetch_batch(docs[:middle])
            await fetch_batch(docs[middle:])
            return
        report.documents_fetched += len(docs) - len(failed)
        report.documents_failed.extend(f"{doc.hex()}: {code}" for doc, code in failed.items())
        advance(len(docs))

    async def worker() -> None:
        for batched, docs in pending:
            if batched:
                await fetch_batch(docs)
            else:
                await fetch_one(docs[0])

    await asyncio.gather(*(worker() for _ in range(min(BODY_FETCHES, len(batches) + len(singles)))))


def _batches(entries: Sequence[AcceptedEntry]) -> list[list[bytes]]:
    """Documents grouped for batch fetches: at most ``BATCH_MAX_DOCS``, their streams within the byte cap."""
    batches: list[list[bytes]] = []
    batch: list[bytes] = []
    size = 0
    for entry in entries:
        # The padded size is the stream's length rounded up to a power of two ([DOC-9]): it bounds it.
        estimate = entry.padded_size
        if batch and (len(batch) == BATCH_MAX_DOCS or size + estimate > BATCH_MAX_BYTES):
            batches.append(batch)
            batch, size = [], 0
        batch.append(entry.doc)
        size += estimate
    if batch:
        batches.append(batch)
    return batches


async def _reconcile(
    clinic: ClinicNode, patient: str, endpoint: str, mine: SortedItems, chain: list[bytes], report: SyncReport
) -> tuple[list[bytes], list[bytes]]:
    """Run the reconciliation rounds over ``mine``.

    Returns:
        The ids the patient's node has and we lack, and those we have and it lacks.
    """
    reconciler = Reconciler(mine)
    message: bytes | None = reconciler.initiate()
    rounds = 0  # of this view's reconciliation: a sync reconciles once per chain
    while message is not None:
        if rounds >= MAX_ROUNDS:
            raise RemoteProtocolError(Code.MALFORMED, f"reconciliation did not end in {MAX_ROUNDS} rounds")
        answer = await clinic.client.call(
            "POST", api_url(endpoint, "/v0/sync"), expected_signer=patient, chain=chain, message=message
        )
        reply = answer.get("message")
        if type(reply) is not bytes:
            raise RemoteProtocolError(Code.MALFORMED, "a sync answer carries a message")
        rounds += 1
        report.rounds += 1
        message = reconciler.receive(reply)
    report.bytes_sent += reconciler.bytes_sent
    report.bytes_received += reconciler.bytes_received
    return reconciler.need, reconciler.have


async def _push_own(
    clinic: ClinicNode, patient: str, endpoint: str, chain: list[bytes], have: list[bytes]
) -> int:
    """A device sends the patient's node the grants and revocations it issued there ([API-48]).

    ``chain`` is the device's device grant (the patient's node takes pushes from its devices only).
    """
    leaf = open_stored(chain[-1], Grant)
    stored = 0
    for piece in push_pieces(await clinic.issued_under(leaf.id, set(have))):
        answer = await clinic.client.call(
            "POST", api_url(endpoint, "/v0/push"), expected_signer=patient, chain=chain, records=[r.encoded for r in piece]
        )
        count = answer.get("stored")
        stored += count if type(count) is int else 0
    return stored


def push_pieces(own: Sequence[Signed[Any]]) -> list[list[Signed[Any]]]:
    """A device's grants and revocations cut into pushes the patient's node takes ([API-48]).

    Each push holds at most :data:`MAX_IDS` records of at most :data:`PUSH_MAX_BYTES` bytes.  The
    revocations of grants the patient's node holds already go first ([CAP-16]); every other
    revocation goes with its grant, or after it when they do not fit in one push: a push never
    revokes a grant the patient's node does not hold, and a revoked grant arrives with its
    revocation whenever one push holds both.
    """
    grants = [s for s in own if isinstance(s.record, Grant)]
    pushed = {g.id for g in grants}
    revocations_of: dict[bytes, list[Signed[Any]]] = {}
    first: list[list[Signed[Any]]] = []
    for signed in own:
        if isinstance(signed.record, Revocation):
            if signed.record.grant in pushed:
                revocations_of.setdefault(signed.record.grant, []).append(signed)
            else:
                first.append([signed])
    units = [*first, *([g, *revocations_of.get(g.id, [])] for g in grants)]
    pieces: list[list[Signed[Any]]] = []
    piece: list[Signed[Any]] = []
    size = 0
    for unit in units:
        if piece and (len(piece) + len(unit) > MAX_IDS or size + sum(len(s.encoded) for s in unit) > PUSH_MAX_BYTES):
            pieces.append(piece)
            piece, size = [], 0
        for signed in unit:
            if piece and (len(piece) == MAX_IDS or size + len(signed.encoded) > PUSH_MAX_BYTES):
                pieces.append(piece)
                piece, size = [], 0
            piece.append(signed)
            size += len(signed.encoded)
    if piece:
        pieces.append(piece)
    return pieces


async def receive_pushed(
    node: PatientNode, requester: str, chain: Sequence[bytes], records: Sequence[bytes], *, now: int
) -> int:
    """Keep the grants and revocations a device issued under its device grant ([API-48]); how many were new.

    Raises:
        RemoteProtocolError: the chain's refusal; ``action-not-granted`` when
            it is not a device grant (:func:`is_device_chain`); ``malformed`` for more than
            :data:`MAX_IDS` records or a record that is not the requester's
            grant under its device grant, or its revocation of one.
    """
    grants = await node.reading_chain(requester, chain, now=now)
    if not is_device_chain(grants, node.home.did):
        raise RemoteProtocolError(
            Code.ACTION_NOT_GRANTED, "only a device grant (the patient's, manage over the whole record) may push"
        )
    if len(records) > MAX_IDS or not all(type(r) is bytes for r in records):
        raise RemoteProtocolError(Code.MALFORMED, f"records is an array of at most {MAX_IDS} encoded records")
    device_grant = grants[-1].id
    opened = [open_any_record(encoded) for encoded in records]
    issued = {s.id for s in opened if isinstance(s.record, Grant)}
    issued |= {g.id for g in await node.store.records(Grant, signer=requester)}
    for signed in opened:
        if signed.signer != requester:
            raise AuthenticationError()
        record = signed.record
        ok = (isinstance(record, Grant) and record.parent == device_grant) or (
            isinstance(record, Revocation) and record.grant in issued
        )
        if not ok:
            raise RemoteProtocolError(
                Code.MALFORMED, "a device pushes only what it issued under its device grant"
            )
    return await node.keep_pushed(opened, now=now)


@dataclass
class _Expected:
    """What the view a sync reconciles against may hold ([API-44], [API-46]), for checking its records."""

    patient: str
    requester: str
    devices: dict[bytes, str] | None
    """For a device's sync, the patient's device grants known so far (:func:`device_grants`); else None."""


def _verified_batch(
    records: object, asked: set[bytes], expected: _Expected, *, last: bool
) -> tuple[list[Signed[Any]], list[bytes]]:
    """The records of an answer, each verified, asked for and one the requester's view may hold ([API-45]).

    A view holds records the patient signed (for a clinic, of the types of :data:`VIEW_TYPES`
    and grants to itself only; for a device, of :data:`DEVICE_TYPES`), revocations whoever signed
    them, and, for a device, the grants another device of the patient issued under its device
    grant ([API-46], [API-48]), signed by that device.  Such a grant whose parent is neither known
    nor in the answer is left for later (its parent may come in another answer of the sync).

    Args:
        last: the parents of the view are all known now: a grant whose parent is unknown is refused.

    Returns:
        The verified records, and the ids of those left for later.

    Raises:
        RemoteProtocolError: ``malformed`` for a record not asked for or of a type the view does
            not hold, or a grant to another node in a clinic's view; ``bad-signature`` for one
            signed by someone the view does not take it from.  Nothing of the answer is kept then.
    """
    if type(records) is not list or not all(type(r) is bytes for r in records):
        raise RemoteProtocolError(Code.MALFORMED, "records is an array of encoded records")
    devices = expected.devices
    types = DEVICE_TYPES if devices is not None else VIEW_TYPES
    opened = []
    for encoded in records:
        signed = open_any_record(encoded)
        if not isinstance(signed.record, types) or signed.id not in asked:
            raise RemoteProtocolError(Code.MALFORMED, "an answer holds a record that was not asked for")
        opened.append(signed)
    known = {**devices, **device_grants(opened, expected.patient)} if devices is not None else {}
    verified: list[Signed[Any]] = []
    later: list[bytes] = []
    for signed in opened:
        record = signed.record
        if signed.signer == expected.patient:
            if devices is None and isinstance(record, Grant) and record.audience != expected.requester:
                raise RemoteProtocolError(Code.MALFORMED, "a clinic's view holds only the grants to it")
            verified.append(signed)
        elif isinstance(record, Revocation):
            verified.append(signed)  # by an issuer up a chain, or void: the decision tells ([CAP-7])
        elif devices is not None and is_device_issued(signed, known):
            verified.append(signed)
        elif devices is not None and isinstance(record, Grant) and record.parent not in known and not last:
            later.append(signed.id)
        else:
            raise AuthenticationError()
    if devices is not None:
        devices.update(known)
    return verified, later
