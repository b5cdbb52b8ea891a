"""What the patient's home node does: invitations, the inbox, grants, fetches and the audit log.

Every method that a peer's request reaches first verifies with the core,
then writes inside one transaction that commits before the answer; a
refused request writes nothing.  Randomness and the clock come from here
(the adapter), never from the core.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import os
import time
import unicodedata
from collections import OrderedDict
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO, Final, NamedTuple

from fedrecord.core import (
    AcceptedEntry,
    AccessReceipt,
    Action,
    AuditCheckpoint,
    Code,
    DeletionAttestation,
    Deposit,
    DepositDecision,
    DocumentFacts,
    Grant,
    KeyWrap,
    NodeProfile,
    PrivateRestriction,
    RemoteProtocolError,
    Revocation,
    RevocationSet,
    Scope,
    Signed,
    StateHead,
    Tombstone,
    decide,
    open_any_record,
    open_record,
    sign_record,
)
from fedrecord.core.capabilities import Decision, document_refusal
from fedrecord.core.documents import DocumentReader, check_whole_stream, padded_size
from fedrecord.core.errors import AuthenticationError, LocalProtocolError
from fedrecord.core.identity import verify_ed25519
from fedrecord.core.key_wraps import open_deposit_key, wrap_key, wrap_keys
from fedrecord.core.lifecycle import REFUSALS, Event, kept_state, next_state
from fedrecord.core.schema import Token
from fedrecord.core.stream import HEADER_SIZE, MAGIC, PREFIX_SIZE, stream_header
from fedrecord.keyed_locks import KeyedLocks
from fedrecord.storage.documents import CorruptDocumentError

from .home import INLINE_STREAM_MAX, NodeHome
from .keys_at_rest import unwrap_at_rest, wrap_at_rest
from .records_table import open_stored
from .store import AuditChainRow, AuditRow, FactsRow, ServedRow
from .sync import ViewCache, device_grants, is_device_chain, is_device_grant, is_device_issued, subject_of
from .wire import BATCH_MAX_BYTES, MAX_DOCUMENT, Invitation, check_profile_endpoints

DAY = 86_400
GENESIS_HASH = bytes(32)
AUDIT_DOMAIN = b"fedrecord/v0/audit-entry"
# Key wraps served, by (document, reader, reader's key, grant, purpose): a reader reading a document again
# gets the wrap it got before, without the document key being unsealed and wrapped anew (three X25519
# operations and a signature).  The cache is looked up only after the request was decided allowed, and a
# deleted document has no row left to serve, so a kept wrap never outlives the right it was made under.
WRAP_CACHE_SIZE = 1024
# Audit entries read from the database at a time while the chain is verified.
AUDIT_BATCH = 1000
# What the web page keeps in the meta table: how far the audit chain verified, and where it broke.
AUDIT_VERIFIED_KEY = "audit.verified"
AUDIT_BROKEN_KEY = "audit.broken"
# Seconds one page load spends at most verifying new audit entries.
AUDIT_BUDGET = 0.5


@dataclass(frozen=True)
class InboxItem:
    doc: bytes
    author: str
    author_name: str
    title: str
    category: str
    labels: tuple[str, ...]
    date: int
    size: int


log = logging.getLogger("fedrecord.node")

BATCHES_IN_MEMORY: Final = 8
"""Batch fetches served at once: each holds its streams (up to ``BATCH_MAX_BYTES``) in memory."""
DEPOSITS_IN_MEMORY: Final = 16
"""Small deposits received into memory at once; beyond, a deposit streams to a file as a large one does."""
CHECK_INLINE_MAX: Final = 256 * 1024
"""Deposits up to this size are checked on the event loop's thread, larger ones in a worker thread.

Checking a 100 KiB stream (hash, decryption, one signature) takes about half a
millisecond; the trip to a worker thread and back costs a deposit about as much
CPU again (two thread wake-ups on each side of the GIL).  Up to this size the
loop pauses no longer than a busy handler does; beyond, the check is long
enough for the trip to be worth the loop's freedom.
"""

async def _gathered(chunks: AsyncIterable[bytes], size: int) -> bytes:
    """The whole deposited stream, refused as soon as it passes the ``size`` its deposit record gives.

    Raises:
        RemoteProtocolError: ``too-large`` past ``size``.
    """
    pieces: list[bytes] = []
    received = 0
    async for chunk in chunks:
        received += len(chunk)
        if received > size:
            raise RemoteProtocolError(Code.TOO_LARGE, f"document exceeds the cap of {size} bytes")
        pieces.append(chunk)
    return b"".join(pieces)


@dataclass(frozen=True)
class GivenGrant:
    """A grant of the patient's record: one the patient signed, or one a device of the patient gave.

    A device gives grants as children of its device grant and pushes them to the patient's node
    ([API-47], [API-48]); the patient, issuer of that device grant, sees them and may revoke them
    (7.5: any issuer up the chain).
    """

    grant: Signed[Grant]
    device: Signed[Grant] | None = None
    """The device grant it was given under; None for a grant the patient signed."""

    @property
    def chain(self) -> list[Signed[Grant]]:
        """The chain its audience uses, root first."""
        return [self.device, self.grant] if self.device is not None else [self.grant]

    @property
    def expires(self) -> int:
        """When the chain ends: the earliest ``exp`` of its links."""
        return min(link.record.exp for link in self.chain)

    def revoked(self, revocations: RevocationSet) -> bool:
        """Whether a link is revoked by its issuer or an issuer above it ([CAP-7])."""
        return revocations.revoked_link(self.chain) is not None

    def live(self, revocations: RevocationSet, *, now: int) -> bool:
        """Neither expired nor revoked (a grant that starts later is live)."""
        return now < self.expires and not self.revoked(revocations)


class _ChainDecision(NamedTuple):
    """A chain decided allowed for reading, and what it was decided against (for each document's step)."""

    grants: list[Signed[Grant]]
    revocations: RevocationSet
    restrictions: list[Signed[PrivateRestriction]]


def _not_found() -> RemoteProtocolError:
    # One answer for "absent", "outside your grant" and "hidden from you" (spec [CAP-12]).
    return RemoteProtocolError(Code.NOT_FOUND, "no such document")


def _facts_of(
    doc: bytes, row: FactsRow, *, extra_labels: Sequence[str] = (), added: int | None = None
) -> DocumentFacts | None:
    """What a capability decision looks at of a document's row; ``None`` for one not accepted yet."""
    when = added if added is not None else row.added
    if when is None:
        return None
    labels = _labels_of(row.labels)
    if extra_labels:
        labels = labels | frozenset(extra_labels)
    return DocumentFacts(id=doc, category=row.category, labels=labels, date=row.date, added=when)


@functools.lru_cache(maxsize=1024)
def _labels_of(stored: str) -> frozenset[str]:
    # A row's labels as stored (a JSON array): a patient's documents share a few sets of labels, and
    # every document of a listing or a batch is decided on them.
    return frozenset(json.loads(stored))


def readable_name(name: str) -> str:
    """A name another node chose, as people may read it safely.

    Without control, format and unassigned characters: direction overrides (which reverse the
    rest of a sentence on screen), zero-width characters (which make two names that read the
    same differ), and white space runs collapsed.
    """
    kept = "".join(c for c in name if unicodedata.category(c) not in ("Cc", "Cf", "Cn", "Co", "Cs"))
    return unicodedata.normalize("NFC", " ".join(kept.split())) or "?"


def _name_key(name: str) -> str:
    """What two names that read alike share: compatibility forms folded (full-width letters, accents
    written apart), case ignored.  Letters of other scripts that look alike are not caught."""
    return unicodedata.normalize("NFKC", name).casefold()


async def _after(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """``first``, then what ``rest`` yields."""
    if first:
        yield first
    async for piece in rest:
        yield piece


def _check_labels(labels: Sequence[str]) -> None:
    """Labels the patient adds are tokens, as the author's are ([REC-7]): grants and restrictions match them.

    Raises:
        LocalProtocolError: ``malformed`` for the first that is not.
    """
    for label in labels:
        problem = Token().check(label)
        if problem is not None:
            raise LocalProtocolError(Code.MALFORMED, f"label {problem}")


class PatientNode:
    """The patient's side of the protocol, over an opened :class:`NodeHome`."""

    def __init__(self, home: NodeHome, *, state_changed: Callable[[], None] | None = None) -> None:
        """The patient's side over ``home``.

        Args:
            state_changed: called after each commit that changes what
                :meth:`state_for` answers (a grant, a revocation, a deletion, a
                new head): the event streams then push it at once rather than at
                their next look at the database (:mod:`.state_feed`).
        """
        self.home = home
        self.store = home.store
        self._state_changed = state_changed or (lambda: None)
        self._wraps: OrderedDict[tuple[bytes, str, bytes, bytes, str], Signed[KeyWrap]] = OrderedDict()
        self.sync_views = ViewCache()
        # What may be held in memory at once (see BATCHES_IN_MEMORY, DEPOSITS_IN_MEMORY).
        self._batches = asyncio.Semaphore(BATCHES_IN_MEMORY)
        self._deposits_in_memory = DEPOSITS_IN_MEMORY
        self._deposit_locks: KeyedLocks[bytes] = KeyedLocks()
        # Grants of this node's own that are known to be kept here (see _learn_own_grants).
        self._own_grants_kept: set[bytes] = set()

    # --- connecting ----------------------------------------------------------------

    async def create_invitation(self, *, label: str, now: int, ttl: int = 7 * DAY) -> Invitation:
        token = os.urandom(32)
        invitation = Invitation(
            node=self.home.did, endpoint=self.home.config.endpoint, token=token, expires=now + ttl
        )
        async with self.store.transaction():
            await self.store.create_invitation(
                hashlib.sha256(token).digest(), label=label, expires=invitation.expires
            )
        return invitation

    async def connect(self, *, requester: str, token: bytes, profile: bytes, now: int) -> Signed[Grant]:
        """A clinic presents an invitation token: it gets a deposit-only grant (US-2).

        Raises:
            RemoteProtocolError: ``not-found`` for an unknown token, ``replay``
                for a used one, ``expired`` for an expired one, the record
                codes for a bad profile, ``malformed`` for a profile whose
                endpoints are not base URLs ([API-74]).
        """
        clinic = open_record(profile, NodeProfile)
        if clinic.signer != requester:
            raise AuthenticationError()
        # Its first endpoint is where rejections are delivered: an unusable one is refused here.
        check_profile_endpoints(clinic.record.endpoints)
        if type(token) is not bytes:
            raise RemoteProtocolError(Code.MALFORMED, "an invitation token is a byte string")
        token_hash = hashlib.sha256(token).digest()
        async with self.store.transaction():
            row = await self.store.invitation(token_hash)
            if row is None:
                raise RemoteProtocolError(Code.NOT_FOUND, "unknown invitation")
            if row[1] is not None:
                raise RemoteProtocolError(Code.REPLAY, "invitation already used")
            if now >= row[0]:
                raise RemoteProtocolError(Code.EXPIRED, "invitation expired")
            grant = sign_record(
                Grant(
                    audience=requester,
                    scope=Scope(),
                    actions=(Action.DEPOSIT.value,),
                    purpose="treatment",
                    iat=now,
                    nbf=now,
                    exp=now + 365 * DAY,
                    nonce=os.urandom(16),
                ),
                self.home.identity,
            )
            await self.store.put_record(grant, now=now, subject=requester.encode())
            await self.store.use_invitation(token_hash, used_by=requester, grant_id=grant.id)
            await self.store.remember_peer(clinic)
        self._state_changed()
        return grant

    async def peer_profile(self, did: str) -> Signed[NodeProfile] | None:
        return await self.store.peer_profile(did)

    async def require_known(self, requester: str) -> None:
        """State and event streams are for nodes the patient connected, granted or let read ([API-16]).

        Revocations -- with the reasons the patient gave -- and the times of the record's changes
        are nobody else's business: a node never met is answered as for a path that is not there.

        Raises:
            RemoteProtocolError: ``not-found`` for a node that neither connected with an
                invitation, nor holds a grant the patient signed, nor showed its profile in a fetch.
        """
        if await self.store.peer_profile(requester) is not None:
            return
        if not await self.store.records(Grant, signer=self.home.did, subject=requester.encode()):
            raise RemoteProtocolError(Code.NOT_FOUND, "this node does not know you")

    async def peer_name(self, did: str) -> str:
        """How a peer is shown to the patient: the name it gives itself, made safe to read.

        The name is the peer's own choice, so it is shown without the characters that hide or
        reorder text (:func:`readable_name`), and with the end of its did when another peer's
        name reads the same: a clinic cannot pass for the GP by taking the GP's name.
        """
        names = {peer: readable_name(name) for peer, name in (await self.store.peer_names()).items()}
        name = names.get(did)
        if name is None:
            return did[:24] + "..."
        same = _name_key(name)
        twin = any(other != did and _name_key(shown) == same for other, shown in names.items())
        if twin or "…" in name:  # "…": a name that imitates the mark below is always marked
            return f"{name} (…{did[-8:]})"
        return name

    # --- inbox -----------------------------------------------------------------------

    async def receive_deposit(
        self,
        *,
        requester: str,
        deposit: bytes,
        ciphertext: AsyncIterable[bytes],
        now: int,
        expected_doc: bytes | None = None,
    ) -> str:
        """A clinic deposits a document into the inbox (US-3).  Returns ``inbox`` or ``known``.

        Raises:
            RemoteProtocolError: the code of the first check that fails; nothing is stored then.
        """
        signed = open_record(deposit, Deposit)
        record = signed.record
        if signed.signer != requester:
            raise AuthenticationError()
        if record.patient != self.home.did:
            raise RemoteProtocolError(Code.WRONG_AUDIENCE, "the deposit is for another patient")
        if expected_doc is not None and expected_doc != record.doc:
            raise RemoteProtocolError(Code.MALFORMED, "the path names another document than the deposit")
        grant = await self.store.record(Grant, record.grant)
        if grant is None:
            raise RemoteProtocolError(Code.NOT_FOUND, "unknown deposit grant")
        verdict = decide(
            [grant],
            patient=self.home.did,
            requester=requester,
            action=Action.DEPOSIT,
            now=now,
            revocations=await self._revocations(),
        )
        verdict.require()
        async with self._depositing(record.doc):
            return await self._store_deposit(signed, requester, ciphertext, now=now)

    def _depositing(self, doc: bytes) -> contextlib.AbstractAsyncContextManager[None]:
        """Hold the block for one deposit of ``doc`` at a time.

        A clinic's outbox may send a deposit twice at once (its ``serve`` and a
        ``fedrecord deposit`` of another process both flushing).  Without this,
        both pass the "known" check, the second fails on the row the first
        committed, and its cleanup destroys the file the first one's row names.
        Serialised, the second finds the first's row and is answered ``known``.
        """
        return self._deposit_locks.hold(doc)

    async def _store_deposit(
        self, signed: Signed[Deposit], requester: str, ciphertext: AsyncIterable[bytes], *, now: int
    ) -> str:
        """The rest of :meth:`receive_deposit`, for one deposit of its document at a time."""
        record = signed.record
        known = await self.store.document_deposit(record.doc)
        if known is not None and known[0] == signed.id:
            return "known"
        # Held, or rejected or deleted (the same document does not come back): one answer for all, or a
        # node that listed a document would tell one hidden from it from one deleted ([CAP-12]).
        if await self.store.decided(record.doc):
            raise RemoteProtocolError(*REFUSALS[Event.DEPOSITED])
        state = kept_state(known[1] if known is not None else None, Event.DEPOSITED)
        if record.size > MAX_DOCUMENT:
            raise RemoteProtocolError(Code.TOO_LARGE, f"documents are capped at {MAX_DOCUMENT} bytes")
        keys = self.home.keys_for(record.recipient_key)
        if keys is None:
            raise RemoteProtocolError(
                Code.WRAP_MISMATCH, "the deposit is sealed to a key this node does not hold"
            )
        document_key = open_deposit_key(signed, patient=self.home.did, keys=keys).key
        stream: bytes | None = None
        if (
            record.size <= INLINE_STREAM_MAX
            and self._deposits_in_memory > 0
            and not await self.home.files.size(record.doc)
        ):
            # Held in memory, checked whole (CHECK_INLINE_MAX), kept in its row (committed with it); a
            # larger one, or one beyond DEPOSITS_IN_MEMORY, is streamed to its file and read back.
            self._deposits_in_memory -= 1
            try:
                stream = await _gathered(ciphertext, record.size)
                check = functools.partial(
                    check_whole_stream,
                    stream,
                    doc=record.doc,
                    key=document_key,
                    expected_patient=self.home.did,
                    expected_author=requester,
                    size=record.size,
                )
                signed_header, _content = (
                    check() if record.size <= CHECK_INLINE_MAX else await asyncio.to_thread(check)
                )
                header = signed_header.record
            finally:
                self._deposits_in_memory += 1
            size = len(stream)
        else:
            size = await self.home.files.put(record.doc, ciphertext, max_size=record.size)
        try:
            if size != record.size:
                raise RemoteProtocolError(Code.TRUNCATED, "the document is shorter than its deposit says")
            if stream is None:
                header = await self._read_header(record.doc, document_key, author=requester)
            async with self.store.transaction():
                await self.store.put_record(signed, now=now, subject=record.doc)
                await self.store.insert_document(
                    doc=record.doc,
                    patient=self.home.did,
                    author=requester,
                    deposit=signed.id,
                    title=header.title,
                    doc_type=header.doc_type,
                    category=header.category,
                    labels=json.dumps(list(header.labels)),
                    date=header.date,
                    size=size,
                    sealed_key=self._seal_to_self(document_key, record.doc),
                    stream=stream,
                    state=state,
                )
        except BaseException:
            await self.home.files.destroy(record.doc)
            raise
        return "inbox"

    async def _read_header(self, doc: bytes, key: bytes, *, author: str | None) -> Any:
        reader = DocumentReader(key, expected_author=author, expected_patient=self.home.did)
        await decrypt_stored(self.home, doc, reader)
        if reader.document_id != doc:
            raise RemoteProtocolError(Code.MALFORMED, "ciphertext does not match its document id")
        assert reader.header is not None
        return reader.header.record

    def _seal_to_self(self, key: bytes, doc: bytes) -> bytes:
        return wrap_at_rest(key, self.home.encryption, doc=doc)

    def _unseal(self, sealed: bytes, doc: bytes) -> bytes:
        return unwrap_at_rest(sealed, self.home.encryption_keys, doc=doc)

    async def inbox(self) -> list[InboxItem]:
        rows = await self.store.inbox_rows()
        return [
            InboxItem(
                doc=row.doc,
                author=row.author,
                author_name=await self.peer_name(row.author),
                title=row.title,
                category=row.category,
                labels=tuple(json.loads(row.labels)),
                date=row.date,
                size=row.size,
            )
            for row in rows
        ]

    async def grants_that_would_see(
        self, doc: bytes, *, labels: Sequence[str] = (), now: int
    ) -> list[Signed[Grant]]:
        """The live grants that would let their audience read ``doc`` once accepted now (shown before accepting).

        The grants the patient's devices gave are among them, each decided with its device grant.  A
        grant that starts later is decided as it will be then: it will read the document too.
        """
        facts = await self._facts(doc, extra_labels=labels, added=now)
        return [] if facts is None else await self._grants_reaching(facts, now=now)

    async def _grants_reaching(self, facts: DocumentFacts, *, now: int) -> list[Signed[Grant]]:
        """The live grants, the patient's and those its devices gave, that read the document of ``facts``."""
        revocations = await self._revocations()
        restrictions = await self._restrictions()
        return [
            given.grant
            for given in await self.live_given_grants(now=now)
            if decide(
                given.chain,
                patient=self.home.did,
                requester=given.grant.record.audience,
                action=Action.READ,
                now=max(now, *(link.record.nbf for link in given.chain)),
                revocations=revocations,
                document=facts,
                restrictions=restrictions,
            ).allowed
        ]

    async def accept(self, doc: bytes, *, labels: Sequence[str] = (), now: int) -> Signed[AcceptedEntry]:
        """Accept a deposit into the record, with the labels the patient adds (US-3, US-6).

        Raises:
            LocalProtocolError: ``malformed`` for a label that is not a token ([REC-7]).
            RemoteProtocolError: ``not-found`` when ``doc`` is not in the inbox.
        """
        _check_labels(labels)
        async with self.store.transaction():
            row = await self.store.deposited_row(doc)
            state = kept_state(row.state if row is not None else None, Event.ACCEPT)
            assert row is not None  # the table moves no document on `accept` from no row
            merged = sorted(set(json.loads(row.labels)) | set(labels))
            decision = sign_record(
                DepositDecision(deposit=row.deposit, doc=doc, decision="accepted", iat=now),
                self.home.identity,
            )
            month = int(_month(now))
            entry = sign_record(
                AcceptedEntry(doc=doc, padded_size=padded_size(row.size), month=month), self.home.identity
            )
            await self.store.put_record(decision, now=now, subject=doc)
            await self.store.put_record(entry, now=now, subject=doc)
            await self.store.accept_document(doc, labels=json.dumps(merged), added=now, state=state)
            # No new state head: a head signed on each accept would tell every grantee when documents
            # arrive that it may not see ([API-18]).
        self._state_changed()
        return entry

    async def reject(self, doc: bytes, *, now: int) -> Signed[DepositDecision]:
        """Reject a deposit: destroyed here, and the depositor is told through the outbox (US-3)."""
        async with self.store.transaction():
            row = await self.store.deposited_row(doc)
            next_state(row.state if row is not None else None, Event.REJECT)  # no row after: forgotten below
            assert row is not None  # the table moves no document on `reject` from no row
            decision = sign_record(
                DepositDecision(deposit=row.deposit, doc=doc, decision="rejected", iat=now),
                self.home.identity,
            )
            await self.store.put_record(decision, now=now, subject=doc)
            await self._forget_document(doc)
            await self.store.queue_outbox("decision", target=row.author, payload=decision.encoded, now=now)
        await self.home.destroyed(doc)
        return decision

    async def _forget_document(self, doc: bytes) -> None:
        """Drop every copy of a document's key this node holds: its row and its deposit record (whose
        sealed box holds the key).  Decisions, tombstones and attestations stay.  In a transaction."""
        await self.store.forget_document(doc, Deposit)

    # --- the record ------------------------------------------------------------------

    async def documents(self, *, include_hidden: bool = True) -> list[dict[str, Any]]:
        rows = await self.store.accepted_documents()
        return [
            {
                "doc": row.doc,
                "author": row.author,
                "title": row.title,
                "type": row.doc_type,
                "category": row.category,
                "labels": json.loads(row.labels),
                "date": row.date,
                "added": row.added,
                "size": row.size,
                "hidden": bool(row.hidden),
            }
            for row in rows
            if include_hidden or not row.hidden
        ]

    async def read_own(self, doc: bytes) -> bytes:
        """The patient reads a document of the record (decrypted by the node)."""
        return await read_stored(self.home, doc, await self._own_reader(doc))

    async def read_own_into(self, doc: bytes, into: BinaryIO) -> int:
        """Read a document of the record into ``into``, piece by piece (flat memory for any size).

        Returns:
            The content's size.  When this raises, what was written is not the
            document: discard it.
        """
        return await decrypt_stored(self.home, doc, await self._own_reader(doc), sink=into.write)

    async def _own_reader(self, doc: bytes) -> DocumentReader:
        sealed = await self.store.sealed_key(doc)
        if sealed is None:
            raise _not_found()
        return DocumentReader(self._unseal(sealed, doc), expected_patient=self.home.did)

    async def label(self, doc: bytes, labels: Sequence[str], *, remove: bool = False) -> list[str]:
        """Add ``labels`` to a document of the record (or remove them); returns its labels after.

        Raises:
            LocalProtocolError: ``malformed`` for a label that is not a token ([REC-7]).
            RemoteProtocolError: ``not-found`` for a document not in the record.
        """
        if not remove:
            _check_labels(labels)
        async with self.store.transaction():
            stored = await self.store.document_labels(doc)
            if stored is None:
                raise _not_found()
            current = set(json.loads(stored))
            merged = sorted(current - set(labels) if remove else current | set(labels))
            await self.store.set_labels(doc, json.dumps(merged))
        return merged

    async def _facts(
        self, doc: bytes, *, extra_labels: Sequence[str] = (), added: int | None = None
    ) -> DocumentFacts | None:
        row = await self.store.document_facts(doc)
        return None if row is None else _facts_of(doc, row, extra_labels=extra_labels, added=added)

    # --- grants, restrictions, revocations, state ---------------------------------------

    async def grant(
        self,
        *,
        audience: str,
        scope: Scope,
        actions: Sequence[str],
        purpose: str,
        days: int,
        now: int,
        hide_labels: Sequence[str] = (),
    ) -> Signed[Grant]:
        """Issue a grant, and the private restriction that hides ``hide_labels`` from it (US-4, US-6).

        Raises:
            LocalProtocolError: ``malformed`` for a grant to the patient's own node, which reads the
                record without one (most likely a did pasted in the wrong place).
        """
        if audience == self.home.did:
            raise LocalProtocolError(Code.MALFORMED, "this is your own node's id: it needs no grant")
        grant = sign_record(
            Grant(
                audience=audience,
                scope=scope,
                actions=tuple(actions),
                purpose=purpose,
                iat=now,
                nbf=now,
                exp=now + days * DAY,
                nonce=os.urandom(16),
            ),
            self.home.identity,
        )
        async with self.store.transaction():
            await self.store.put_record(grant, now=now, subject=audience.encode())
            if hide_labels:
                restriction = sign_record(
                    PrivateRestriction(grants=(grant.id,), labels=await self._hidden_forms(hide_labels), iat=now),
                    self.home.identity,
                )
                await self.store.put_record(restriction, now=now, subject=grant.id)
        self._state_changed()
        return grant

    async def restrict(
        self,
        *,
        grant: bytes | None = None,
        audience: str | None = None,
        labels: Sequence[str] = (),
        categories: Sequence[str] = (),
        now: int,
    ) -> Signed[PrivateRestriction]:
        restriction = sign_record(
            PrivateRestriction(
                grants=(grant,) if grant else None,
                audiences=(audience,) if audience else None,
                labels=await self._hidden_forms(labels) or None,
                categories=tuple(categories) or None,
                iat=now,
            ),
            self.home.identity,
        )
        async with self.store.transaction():
            await self.store.put_record(restriction, now=now, subject=grant)
        return restriction

    async def _hidden_forms(self, labels: Sequence[str]) -> tuple[str, ...]:
        """The labels a restriction hides: those asked for, in upper and lower case, and every label of the
        record or inbox that reads the same but for case.

        Labels match exactly ([REC-7]), and the patient who writes ``psy`` means the ``PSY`` a lab wrote:
        hiding too much is the safe side of that mistake, hiding nothing is not.
        """
        if not labels:
            return ()
        wanted = {label.casefold() for label in labels}
        known = set((await self.store.record_facets()).labels)
        known |= {label for row in await self.store.inbox_rows() for label in json.loads(row.labels)}
        forms = {*labels, *(label.upper() for label in labels), *(label.lower() for label in labels)}
        forms |= {label for label in known if label.casefold() in wanted}
        return tuple(sorted(forms))

    async def live_grants(self, *, now: int) -> list[Signed[Grant]]:
        revoked = await self._revocations()
        return [
            grant
            for grant in await self.store.records(Grant, signer=self.home.did)
            if now < grant.record.exp and not revoked.revoked_by(grant.id)
        ]

    async def all_grants(self) -> list[Signed[Grant]]:
        return await self.store.records(Grant, signer=self.home.did)

    async def given_grants(self) -> list[GivenGrant]:
        """Every grant of the record: the patient's own, then those its devices gave and pushed ([API-48]).

        A device's grant is one whose parent is a device grant of the patient and whose signer is
        that device (what :func:`fedrecord.node.sync.receive_pushed` keeps).
        """
        own = await self.store.records(Grant, signer=self.home.did)
        audiences = device_grants(own, self.home.did)
        devices = {g.id: g for g in own if g.id in audiences}
        given = [GivenGrant(grant) for grant in own]
        for grant in await self.store.records(Grant):
            if grant.signer != self.home.did and is_device_issued(grant, audiences):
                given.append(GivenGrant(grant, devices[grant.record.parent or b""]))
        return given

    async def live_given_grants(self, *, now: int) -> list[GivenGrant]:
        """The grants of :meth:`given_grants` that are neither expired nor revoked."""
        revocations = await self._revocations()
        return [given for given in await self.given_grants() if given.live(revocations, now=now)]

    async def revoke(self, grant_id: bytes, *, now: int, reason: str | None = None) -> Signed[Revocation]:
        """Revoke a grant (and so every grant delegated from it) and sign a new state head (US-5).

        A grant the patient revoked already is answered with that revocation: no second record, no
        new head.
        """
        if await self.store.record(Grant, grant_id) is None:
            raise _not_found()
        async with self.store.transaction():
            earlier = await self.store.records(Revocation, signer=self.home.did, subject=grant_id)
            if earlier:
                return earlier[0]
            revocation = sign_record(Revocation(grant=grant_id, iat=now, reason=reason), self.home.identity)
            await self.store.put_record(revocation, now=now, subject=grant_id)
            await self._sign_head(now)
        self._state_changed()
        return revocation

    async def _revocations(self) -> RevocationSet:
        return await self.store.revocation_set()

    async def _restrictions(self) -> list[Signed[PrivateRestriction]]:
        return await self.store.records(PrivateRestriction, signer=self.home.did)

    async def state_head(self, *, now: int) -> Signed[StateHead]:
        # This node signs its heads one after the other, each in the transaction that keeps it: the
        # head kept last is the newest (reading them all made every accept cost one per head before).
        head = await self.store.newest_record(StateHead, signer=self.home.did)
        if head is not None:
            return head
        async with self.store.transaction():
            return await self._sign_head(now)

    async def _sign_head(self, now: int) -> Signed[StateHead]:
        """A new head summarising the revocations.  Call inside a transaction."""
        previous = await self.store.newest_record(StateHead, signer=self.home.did)
        revoked = sorted(r.record.grant for r in await self.store.records(Revocation))
        head = sign_record(
            StateHead(
                seq=previous.record.seq + 1 if previous else 0,
                iat=now,
                revocations=hashlib.sha256(b"".join(revoked)).digest(),
                revocation_count=len(revoked),
                prev=previous.id if previous else None,
            ),
            self.home.identity,
        )
        await self.store.put_record(head, now=now)
        return head

    async def catch_up_head(self, offered: object, *, requester: str, now: int) -> None:
        """Take the newest head a requester holds of this patient's ([API-16]): after a restore, go on from it.

        A node restored from an older copy of its home lost the heads it signed since: every node
        that saw them would refuse its next heads as a rollback ([HEAD-3]) until it had signed as
        many again, and would learn of no revocation meanwhile.  A head this patient signed with a
        greater ``seq`` than this node's newest is such a head: it is kept, and the next head is
        signed after it (``prev`` its id, [HEAD-2]) over the revocation set, in one transaction.
        A head not newer changes nothing.

        Raises:
            RemoteProtocolError: ``malformed`` for ``offered`` that is not a byte string; the codes of
                :func:`~fedrecord.core.open_record` for one that is not a state head.
            AuthenticationError: ``bad-signature`` for a head this patient did not sign.
        """
        if type(offered) is not bytes:
            raise RemoteProtocolError(Code.MALFORMED, "head is an encoded state head")
        # Every poll shows the same head: verified once, then from the cache of verified records.
        head = open_stored(offered, StateHead)
        if head.signer != self.home.did:
            raise AuthenticationError()
        newest = await self.state_head(now=now)
        if head.record.seq <= newest.record.seq:
            return
        async with self.store.transaction():
            # Read again under the write lock: another request may have caught up meanwhile.  A head
            # is held by now (state_head above signed the first one if there was none).
            newest_now = await self.store.newest_record(StateHead, signer=self.home.did)
            if newest_now is not None and head.record.seq <= newest_now.record.seq:
                return
            await self.store.put_record(head, now=now)
            signed = await self._sign_head(now)
        log.warning(
            "%s holds state head %d of this patient, newer than this node's %d: this home was restored from"
            " an older copy; head %d is signed after it (revoke again what was revoked since that copy)",
            requester,
            head.record.seq,
            newest.record.seq,
            signed.record.seq,
        )
        self._state_changed()

    async def state_for(self, requester: str, *, now: int) -> dict[str, Any]:
        """What a peer polls: the newest head, revocations, the tombstones it needs, the grants addressed to it."""
        head = await self.state_head(now=now)
        grants = await self.store.records(Grant, signer=self.home.did, subject=requester.encode())
        # A live device grant: a lost device, once revoked, is told only what any other node is.
        revocations = await self._revocations()
        device = any(
            is_device_grant(g.record) and g.record.nbf <= now and GivenGrant(g).live(revocations, now=now)
            for g in grants
        )
        return {
            "head": head.encoded,
            "revocations": [r.encoded for r in await self.store.records(Revocation)],
            "tombstones": [t.encoded for t in await self.tombstones_for(requester, device=device)],
            "grants": [g.encoded for g in grants],
        }

    async def tombstones_for(self, requester: str, *, device: bool, verify: bool = True) -> list[Signed[Tombstone]]:
        """The tombstones a requester is told of ([API-16]): those of documents it read, deposited or could list.

        A tombstone of any other document would tell it of a document it never
        saw -- with a whole-record grant, one the patient kept from it ([CAP-15]).
        A device, which holds the whole record, is told of every one.
        """
        tombstones = await self.store.records(Tombstone, signer=self.home.did, verify=verify)
        if device:
            return tombstones
        told = await self.store.told_docs(requester)
        return [t for t in tombstones if t.record.doc in told]

    # --- reads by other nodes -----------------------------------------------------------

    @staticmethod
    def _open_chain(chain: Sequence[bytes]) -> list[Signed[Grant]]:
        # The same chain comes with every request of a grantee: verified once, then from the cache.
        return [open_stored(link, Grant) for link in chain]

    async def _decide(
        self,
        requester: str,
        grants: Sequence[Signed[Grant]],
        *,
        now: int,
        document: DocumentFacts | None = None,
        revocations: RevocationSet | None = None,
        restrictions: Sequence[Signed[PrivateRestriction]] | None = None,
    ) -> Decision:
        return decide(
            grants,
            patient=self.home.did,
            requester=requester,
            action=Action.READ,
            now=now,
            revocations=revocations if revocations is not None else await self._revocations(),
            document=document,
            restrictions=restrictions if restrictions is not None else await self._restrictions(),
        )

    async def checkpoint_audit(self, *, now: int) -> Signed[AuditCheckpoint] | None:
        """Sign a checkpoint of the audit log's newest entry, unless the newest checkpoint is of it already."""
        last = await self.store.audit_tail()
        if last is None:
            return None
        # Signed in audit order, one after the other: the one kept last is of the highest entry.
        newest = await self.store.newest_record(AuditCheckpoint, signer=self.home.did)
        if newest is not None and newest.record.seq >= last[0]:
            return None
        checkpoint = sign_record(
            AuditCheckpoint(seq=last[0], entry_hash=last[1], iat=now), self.home.identity
        )
        async with self.store.transaction():
            await self.store.put_record(checkpoint, now=now)
        return checkpoint

    async def keep_pushed(self, records: Sequence[Signed[Any]], *, now: int) -> int:
        """Store what a device pushed (checked by the caller) in one transaction; how many were new."""
        fresh = [s for s in records if await self.store.record(type(s.record), s.id) is None]
        revoked = any(isinstance(s.record, Revocation) for s in fresh)
        async with self.store.transaction():
            for signed in records:
                await self.store.put_record(signed, now=now, subject=subject_of(signed))
            if revoked:
                # The revocation set changed: a new head, in the same transaction ([HEAD-2], [API-17]).
                await self._sign_head(now)
        if revoked:
            self._state_changed()
        return len(fresh)

    async def keep_own(self, records: Sequence[bytes], *, now: int) -> int:
        """Keep grants and private restrictions signed with this node's key elsewhere ([API-53]).

        Every record is verified before any is stored; they are then kept, in one transaction, as
        the ones :meth:`grant` and :meth:`restrict` sign here, so listings, decisions, state
        answers and sync views use them.

        Returns:
            How many of them were new.

        Raises:
            RemoteProtocolError: the code of the first record that does not open (Section 5.2);
                ``bad-signature`` for one not signed by this node's key; ``wrong-type`` for one
                that is neither a grant nor a private restriction.  Nothing is stored then.
        """
        opened: dict[bytes, Signed[Any]] = {}
        for encoded in records:
            signed = open_any_record(encoded)
            if signed.signer != self.home.did:
                raise AuthenticationError()
            if not isinstance(signed.record, (Grant, PrivateRestriction)):
                raise RemoteProtocolError(
                    Code.WRONG_TYPE, "only grants and private restrictions are kept this way"
                )
            opened[signed.id] = signed
        async with self.store.transaction():
            fresh = [s for s in opened.values() if await self.store.record(type(s.record), s.id) is None]
            for signed in opened.values():
                await self.store.put_record(signed, now=now, subject=_own_subject(signed))
        if any(isinstance(s.record, Grant) for s in fresh):
            self._state_changed()  # a grant is in the state answer of its audience
        return len(fresh)

    async def reading_chain(self, requester: str, chain: Sequence[bytes], *, now: int) -> list[Signed[Grant]]:
        """The requester's chain, opened and decided allowed for reading; empty for no chain.

        Raises:
            RemoteProtocolError: the chain's refusal, with the decision's code;
                ``not-found`` for no chain from a node this node does not know
                (a view without a chain is what a state answer holds, [API-16]).
        """
        if not chain:
            await self.require_known(requester)
            return []
        grants = self._open_chain(chain)
        (await self._decide(requester, grants, now=now)).require()
        await self._learn_own_grants(grants, now=now)
        return grants

    async def _learn_own_grants(self, grants: Sequence[Signed[Grant]], *, now: int) -> None:
        """Keep a grant signed with this node's key that an allowed chain brought and this node lacks ([API-75]).

        Only a node restored from an older copy of its home (or a key used elsewhere) lacks one: kept
        as :meth:`keep_own` keeps it, the patient sees it in the listings and can revoke it.  Checked
        once per grant and process: after that, from memory.  Call outside a transaction: a grant
        learned is committed in its own.

        Raises:
            StorageError, sqlite3.Error: the grant could not be committed (a busy or full database).
        """
        for grant in grants:
            if grant.signer != self.home.did or grant.id in self._own_grants_kept:
                continue
            if await self.store.record(Grant, grant.id) is None:
                async with self.store.transaction():
                    await self.store.put_record(grant, now=now, subject=_own_subject(grant))
                log.warning(
                    "kept grant %s: signed by this node, not held here (restored from a backup?)", grant.id.hex()[:16]
                )
                self._state_changed()  # a grant is in the state answer of its audience
            self._own_grants_kept.add(grant.id)

    async def documents_for(
        self, requester: str, chain: Sequence[bytes], *, now: int
    ) -> list[dict[str, Any]]:
        """The listing a grantee may see: only documents its chain reaches; hidden ones leave no trace.

        A device grant sees the documents the patient hid too: hiding keeps documents from others,
        not from the patient's own devices ([API-46]).
        """
        grants = self._open_chain(chain)
        revocations, restrictions = await self._revocations(), await self._restrictions()
        (
            await self._decide(requester, grants, now=now, revocations=revocations, restrictions=restrictions)
        ).require()
        await self._learn_own_grants(grants, now=now)
        return await self.reachable_documents(grants, restrictions=restrictions)

    async def reachable_documents(
        self, grants: Sequence[Signed[Grant]], *, restrictions: Sequence[Signed[PrivateRestriction]] | None = None
    ) -> list[dict[str, Any]]:
        """The listing of :meth:`documents_for` under a chain already decided allowed for reading.

        Args:
            restrictions: the patient's restrictions, when read already (else read here).
        """
        listing, _out_of_reach = await self.document_reach(grants, restrictions=restrictions)
        return listing

    async def document_reach(
        self, grants: Sequence[Signed[Grant]], *, restrictions: Sequence[Signed[PrivateRestriction]] | None = None
    ) -> tuple[list[dict[str, Any]], set[bytes]]:
        """:meth:`reachable_documents`, and the ids of the record's other documents, from one read of the record.

        Args:
            restrictions: the patient's restrictions, when read already (else read here).
        """
        if restrictions is None:
            restrictions = await self._restrictions()
        include_hidden = is_device_chain(grants, self.home.did)
        listing = []
        out_of_reach = set()
        for row in await self.store.accepted_documents():
            if row.added is None or (row.hidden and not include_hidden):
                out_of_reach.add(row.doc)
                continue
            # The listing's row holds the facts already: not read again, document by document.
            facts = DocumentFacts(
                id=row.doc, category=row.category, labels=_labels_of(row.labels), date=row.date, added=row.added
            )
            # The chain was decided allowed above: each document only has to be in its reach.
            if document_refusal(grants, facts, patient=self.home.did, restrictions=restrictions) is None:
                listing.append({"doc": row.doc, "size": row.size, "category": row.category, "date": row.date})
            else:
                out_of_reach.add(row.doc)
        return listing, out_of_reach

    async def fetch(
        self,
        requester: str,
        chain: Sequence[bytes],
        receipt: bytes,
        *,
        now: int,
        offered_profile: bytes | None = None,
        start: int = 0,
    ) -> tuple[Signed[KeyWrap], int, AsyncIterator[bytes]]:
        """Serve a document under a grant: the receipt is committed to the audit log before any byte (US-8).

        Args:
            start: serve the stream from this byte on (a resumed fetch, [API-40]).
                The fetch is decided and receipted as any other.

        Returns:
            The key wrap for the requester, the length of the whole stream, and
            the stream from ``start`` on.

        Raises:
            RemoteProtocolError: ``not-found`` for absent, out-of-scope and
                restricted documents alike; the decision's code otherwise;
                ``malformed`` for a receipt naming several documents
                ([API-73]); ``bad-range`` for a ``start`` not below the
                stream's length ([API-41]), before anything is logged.
        """
        # What the decision is made on: a revocation, hide or deletion committed meanwhile (by any
        # process) moves it, and the fetch is decided again where its receipt is logged.
        epoch = await self.store.view_epoch()
        signed_receipt, decision = await self._checked_receipt(requester, chain, receipt, now=now, batch=False)
        await self._learn_own_grants(decision.grants, now=now)
        request = signed_receipt.record
        row = (await self._require_servable(decision, request.documents))[request.doc]
        reader_key = await self._reader_key(requester, offered_profile, now=now)
        if start and start >= row.size:
            # Refused before the receipt is logged: a read that sends nothing leaves no entry [API-41].
            raise RemoteProtocolError(Code.BAD_RANGE, "the range starts at or past the end of the stream")
        wrap = self._wrap_for(requester, reader_key, request, sealed_key=row.sealed_key, now=now)
        # The first piece is read before the receipt is logged: a stream found damaged at rest then
        # (a small one is checked whole) logs nothing, as a read that sends nothing should not.
        chunks = await self.home.open_stream(request.doc, start=start)
        if chunks is None:
            raise _not_found()
        try:
            first = await anext(chunks, b"")
        except CorruptDocumentError:
            log.error("stored document %s no longer matches its id: not served", request.doc.hex())
            raise _not_found() from None
        await self._log_receipt(signed_receipt, epoch, requester, chain, receipt, now=now, batch=False)
        return wrap, row.size, _after(first, chunks)

    async def fetch_batch(
        self,
        requester: str,
        chain: Sequence[bytes],
        receipt: bytes,
        *,
        now: int,
        offered_profile: bytes | None = None,
    ) -> tuple[Signed[KeyWrap], list[bytes]]:
        """Serve several small documents under one receipt, one audit entry and one key wrap (15.21).

        Every document the receipt names must be servable, or none is
        ([API-70]); the streams are read and checked before the receipt is
        logged, and the receipt is committed before any of them is sent
        ([API-71]).

        Returns:
            The key wrap of every named document, and their streams in the
            receipt's order (``doc``, then ``docs``).

        Raises:
            RemoteProtocolError: as :meth:`fetch` (``not-found`` when any named
                document is not servable, whichever); ``too-large`` when the
                streams add up to more than ``BATCH_MAX_BYTES``; ``replay``.
        """
        async with self._batches:
            return await self._fetch_batch(requester, chain, receipt, now=now, offered_profile=offered_profile)

    async def _fetch_batch(
        self, requester: str, chain: Sequence[bytes], receipt: bytes, *, now: int, offered_profile: bytes | None
    ) -> tuple[Signed[KeyWrap], list[bytes]]:
        # What the decisions below were made on: a change meanwhile (a deletion, a revocation, a
        # hidden document) is caught by deciding again where the receipt is logged.
        epoch = await self.store.view_epoch()
        signed_receipt, decision = await self._checked_receipt(requester, chain, receipt, now=now, batch=True)
        await self._learn_own_grants(decision.grants, now=now)
        request = signed_receipt.record
        documents = request.documents
        # One read for every document of the batch: its facts, key, size and (a small one's) stream.
        rows = await self._require_servable(decision, documents)
        reader_key = await self._reader_key(requester, offered_profile, now=now)
        if sum(rows[doc].size for doc in documents) > BATCH_MAX_BYTES:
            raise RemoteProtocolError(
                Code.TOO_LARGE, f"the documents of a batch add up to at most {BATCH_MAX_BYTES} bytes"
            )
        if await self.store.audit_has(signed_receipt.id):
            # Checked again where it is logged; here so that a replay costs no reading or sealing.
            raise RemoteProtocolError(Code.REPLAY, "this access receipt was already used")
        streams = []
        for doc in documents:
            try:
                stream = await self.home.whole_stream(doc, kept=rows[doc].stream)
            except CorruptDocumentError:
                # Read before anything is logged or sent: the batch is refused as if the document
                # were missing, and the patient's node says why in its log.
                log.error("stored document %s no longer matches its id: not served", doc.hex())
                raise _not_found() from None
            if stream is None:
                raise _not_found()
            streams.append(stream)
        keys = [self._unseal(rows[doc].sealed_key, doc) for doc in documents]
        for doc, key, stream in zip(documents, keys, streams, strict=True):
            # The stored key must be the one its stream commits to ([ENC-2]): a row given another
            # document's key is never wrapped for a reader.
            if stream[:HEADER_SIZE] != stream_header(key, stream[len(MAGIC) : len(MAGIC) + PREFIX_SIZE]):
                log.error("stored key of document %s is not the one its stream commits to: not served", doc.hex())
                raise _not_found()
        wrap = wrap_keys(
            wrapper=self.home.identity,
            recipient=requester,
            recipient_key=reader_key,
            keys=list(zip(documents, keys, strict=True)),
            purpose=request.purpose,
            grant=request.grant,
            iat=now,
            ephemeral_seed=os.urandom(32),
        )
        await self._log_receipt(signed_receipt, epoch, requester, chain, receipt, now=now, batch=True)
        return wrap, streams

    async def _log_receipt(
        self,
        signed_receipt: Signed[AccessReceipt],
        epoch: int,
        requester: str,
        chain: Sequence[bytes],
        receipt: bytes,
        *,
        now: int,
        batch: bool,
    ) -> None:
        """Commit a read's receipt to the audit log, deciding the read again if the view moved since ``epoch``.

        Transactions are serialised: a revocation, hide or deletion committed (by any process)
        after the read was decided is seen here, and nothing can change before the commit
        ([CAP-16]: refused from the moment a revocation is committed, whoever committed it).

        Raises:
            RemoteProtocolError: the read's refusal when decided again (a deleted document has no
                row any more: ``not-found``); ``replay``.
        """
        async with self.store.transaction():
            if await self.store.view_epoch() != epoch:
                _receipt, decision = await self._checked_receipt(requester, chain, receipt, now=now, batch=batch)
                await self._require_servable(decision, signed_receipt.record.documents)
            await self._append_audit(signed_receipt, now=now)

    async def _checked_receipt(
        self, requester: str, chain: Sequence[bytes], receipt: bytes, *, now: int, batch: bool
    ) -> tuple[Signed[AccessReceipt], _ChainDecision]:
        """Steps 1 to 5 of [API-22] ([API-70]): the receipt and the chain, without the documents."""
        signed_receipt = open_record(receipt, AccessReceipt)
        request = signed_receipt.record
        if request.docs is not None and not batch:
            raise RemoteProtocolError(Code.MALFORMED, "a receipt for several documents goes to /v0/fetch-batch")
        if signed_receipt.signer != requester:
            raise AuthenticationError()
        if request.patient != self.home.did:
            raise RemoteProtocolError(Code.WRONG_AUDIENCE, "the receipt names another patient")
        grants = self._open_chain(chain)
        if not grants or grants[-1].id != request.grant:
            raise RemoteProtocolError(Code.BROKEN_CHAIN, "the receipt does not name the chain's last grant")
        decision = _ChainDecision(grants, await self._revocations(), await self._restrictions())
        # Chain refusals first, without the document: they must not depend on whether it exists [CAP-12].
        (
            await self._decide(
                requester,
                grants,
                now=now,
                revocations=decision.revocations,
                restrictions=decision.restrictions,
            )
        ).require()
        return signed_receipt, decision

    async def _require_servable(self, decision: _ChainDecision, documents: Sequence[bytes]) -> dict[bytes, ServedRow]:
        """Step 6 of [API-22]: ``not-found`` unless every document is accepted, shown and in the chain's reach.

        A document the patient hid is shown to its device grants ([API-46]).

        Returns:
            The row of each document, read once for the decision and for serving it.
        """
        grants, _revocations, restrictions = decision
        # The chain alone was decided allowed (steps 1 to 5, _checked_receipt) for this requester, now:
        # each document only has to be in its reach.
        device = is_device_chain(grants, self.home.did)
        rows = await self.store.served_rows(documents)
        for doc in documents:
            row = rows.get(doc)
            facts = _facts_of(doc, row.facts) if row is not None else None
            if facts is None or (row is not None and row.facts.hidden and not device):
                raise _not_found()
            if document_refusal(grants, facts, patient=self.home.did, restrictions=restrictions) is not None:
                raise _not_found()
        return rows

    async def _reader_key(self, requester: str, offered_profile: bytes | None, *, now: int) -> bytes:
        """Steps 7 and 8 of [API-22]: the requester's X25519 key valid at ``now``."""
        profile = await self.peer_profile(requester)
        if offered_profile is not None:
            # A delegate is not a connected peer: it shows its signed profile with the request (US-9).
            offered = open_stored(offered_profile, NodeProfile)
            if offered.signer != requester:
                raise AuthenticationError()
            check_profile_endpoints(offered.record.endpoints)
            if profile is None or (offered.record.seq >= profile.record.seq and offered.id != profile.id):
                # A greater or equal seq replaces the stored profile ([API-22] step 7).
                profile = offered
                async with self.store.transaction():
                    await self.store.remember_peer(offered)
        reader_key = profile.record.encryption_key_at(now) if profile else None
        if reader_key is None:
            raise RemoteProtocolError(Code.BAD_KEY, "no encryption key known for the reader")
        return reader_key.key

    def _wrap_for(
        self, requester: str, reader_key: bytes, request: AccessReceipt, *, sealed_key: bytes, now: int
    ) -> Signed[KeyWrap]:
        """The document key wrapped for an allowed reader (see ``WRAP_CACHE_SIZE``)."""
        index = (request.doc, requester, reader_key, request.grant, request.purpose)
        wrap = self._wraps.get(index)
        if wrap is not None:
            self._wraps.move_to_end(index)
            return wrap
        wrap = wrap_key(
            wrapper=self.home.identity,
            recipient=requester,
            recipient_key=reader_key,
            doc=request.doc,
            key=self._unseal(sealed_key, request.doc),
            purpose=request.purpose,
            grant=request.grant,
            iat=now,
            ephemeral_seed=os.urandom(32),
        )
        self._wraps[index] = wrap
        if len(self._wraps) > WRAP_CACHE_SIZE:
            self._wraps.popitem(last=False)
        return wrap

    async def hide(self, doc: bytes, hidden: bool = True) -> None:
        async with self.store.transaction():
            if not await self.store.set_hidden(doc, hidden):
                raise _not_found()

    # --- audit log -------------------------------------------------------------------------

    async def _append_audit(self, receipt: Signed[AccessReceipt], *, now: int) -> None:
        """Countersign a receipt into the hash chain.  Call inside a transaction.

        Raises:
            RemoteProtocolError: ``replay`` for a receipt already logged (each read is one receipt).
        """
        if await self.store.audit_has(receipt.id):
            raise RemoteProtocolError(Code.REPLAY, "this access receipt was already used")
        last = await self.store.audit_tail()
        seq, prev_hash = (last[0] + 1, last[1]) if last else (1, GENESIS_HASH)
        entry_hash = _audit_hash(seq, prev_hash, receipt.id, now)
        await self.store.append_audit(
            receipt,
            seq=seq,
            at=now,
            prev_hash=prev_hash,
            entry_hash=entry_hash,
            countersignature=self.home.identity.sign(entry_hash),
        )

    async def audit_log(self) -> list[AuditRow]:
        return await self.store.audit_entries()

    async def verify_audit(self) -> tuple[bool, int, str]:
        """Walk the chain: every receipt verifies, every hash links, every countersignature holds.

        What it finds is kept for :meth:`verify_audit_since_last` (the web
        page): how far the chain verified, or where it broke.

        Returns:
            (ok, entries checked, message naming the first broken entry).
        """
        prev_hash = GENESIS_HASH
        count = after = 0
        hashes: dict[int, bytes] = {}
        receipts: set[bytes] = set()
        while rows := await self.store.audit_chain(after=after, limit=AUDIT_BATCH):
            for row in rows:
                problem = self._audit_entry_problem(row, prev_hash)
                if problem is None and row.receipt_id in receipts:
                    problem = "its receipt was already used by an earlier entry"
                receipts.add(row.receipt_id)
                if problem is not None:
                    await self._audit_broken(row.seq, problem, 0)
                    return False, count, f"entry {row.seq}: {problem}"
                prev_hash = row.entry_hash
                hashes[row.seq] = row.entry_hash
                count += 1
            after = rows[-1].seq
        # Checkpoints shared with the devices: the log must still hold what each vouched for.
        for checkpoint in await self.store.records(AuditCheckpoint, signer=self.home.did):
            if hashes.get(checkpoint.record.seq) != checkpoint.record.entry_hash:
                seq = checkpoint.record.seq
                await self._audit_broken(seq, "differs from its checkpoint", 0, verified=min(seq - 1, after))
                return False, count, f"entry {checkpoint.record.seq}: differs from its checkpoint"
        async with self.store.transaction():
            await self.store.set_meta_value(AUDIT_BROKEN_KEY, None)
            await self.store.set_meta_value(
                AUDIT_VERIFIED_KEY, after.to_bytes(8, "big") + prev_hash if after else None
            )
        return True, count, "the audit chain verifies"

    def _audit_entry_problem(self, row: AuditChainRow, prev_hash: bytes) -> str | None:
        """What is wrong with one entry following ``prev_hash``, or None: its receipt verifies, its hash
        links, its countersignature holds, and what the log lists of it is what its receipt says."""
        try:
            signed = open_record(row.receipt, AccessReceipt)
            verify_ed25519(self.home.identity.public_key, row.entry_hash, row.countersignature)
        except RemoteProtocolError as exc:
            return exc.code.value
        if row.prev_hash != prev_hash or row.entry_hash != _audit_hash(row.seq, prev_hash, signed.id, row.at):
            return "the hash chain is broken"
        record = signed.record
        if (row.reader, row.doc, row.grant, row.purpose) != (
            signed.signer,
            record.doc,
            record.grant,
            record.purpose,
        ):
            return "the entry differs from its receipt"
        if row.receipt_id != signed.id:
            # The index a replay is refused by: outside the hash chain, so checked against the receipt.
            return "the receipt id the log indexes differs from the receipt's"
        if row.listed != {(doc, row.at) for doc in record.documents}:
            # The listing by document (audit_docs) is outside the hash chain: checked against the receipt.
            return "the documents the log lists for the entry differ from its receipt"
        return None

    # --- deletion -----------------------------------------------------------------------

    async def delete(self, doc: bytes, *, now: int) -> Signed[Tombstone]:
        """Withdraw a document: tombstone, key and ciphertext destroyed here (US-7).

        No new state head: every node the patient knows receives the head, and one signed here would
        tell them all that a document was deleted -- one kept from them too ([API-17]).
        """
        next_state(await self.store.document_state(doc), Event.DELETE)  # no row after: forgotten below
        tombstone = sign_record(Tombstone(doc=doc, iat=now), self.home.identity)
        async with self.store.transaction():
            # To whom the tombstone goes ([API-16]): those who may hold a copy, its author and its readers,
            # and those whose grants reach it, who may hold its entry (told nothing they could not list).
            author = await self.store.document_author(doc)
            readers = await self.store.audit_readers_of(doc)
            facts = None if await self.store.is_hidden(doc) else await self._facts(doc)  # hidden: reaches none
            reaching = [g.record.audience for g in await self._grants_reaching(facts, now=now)] if facts else []
            await self.store.tell_of_deletion(doc, [*readers, *reaching, *([author] if author else [])])
            await self.store.put_record(tombstone, now=now, subject=doc)
            await self._forget_document(doc)
        self._state_changed()
        await self.home.destroyed(doc)
        return tombstone

    async def receive_attestation(self, requester: str, attestation: bytes, *, now: int) -> None:
        signed = open_record(attestation, DeletionAttestation)
        if signed.signer != requester or signed.record.patient != self.home.did:
            raise AuthenticationError()
        tombstone = await self.store.record(Tombstone, signed.record.tombstone)
        if tombstone is None or tombstone.record.doc != signed.record.doc:
            raise _not_found()
        async with self.store.transaction():
            await self.store.put_record(signed, now=now, subject=signed.record.doc)

    async def attestations(self, doc: bytes) -> list[Signed[DeletionAttestation]]:
        return await self.store.records(DeletionAttestation, subject=doc)

    # --- the web page: the audit chain verified a little at a time, deletions and who answers them

    async def verify_audit_since_last(self, *, budget: float = AUDIT_BUDGET) -> AuditStanding:
        """Verify the entries logged since the last call, with the checks of :meth:`verify_audit`.

        How far the chain verified (the highest seq and its entry hash) is kept
        in the database, so each call checks only new entries, and that the
        entry last verified is still there unchanged.  Every call also compares
        each audit checkpoint this node signed (what its devices vouch for) with
        the stored hash of its entry: a log cut short or rewritten below one is
        found whether or not there was anything new.  Older entries are not read
        again.  A failure is kept too and answered by every later call, until
        :meth:`forget_audit_verification`.  A long backlog is verified ``budget``
        seconds at a time (an entry costs two signature checks, some 0.2 ms): the
        standing says how far it got.

        What a call finds is kept only if the progress mark is still the one it
        started from (and no failure was kept meanwhile): a verification that
        overlaps :meth:`forget_audit_verification`, or another one, does not
        write back what it started from.
        """
        tail = await self.store.audit_tail()
        total = tail[0] if tail else 0
        kept = await self.store.meta_value(AUDIT_BROKEN_KEY)
        if kept is not None:
            broken = json.loads(kept)
            seq = int(broken["seq"])
            return AuditStanding(
                verified=int(broken.get("verified", seq - 1)),
                total=total,
                broken=seq,
                problem=str(broken["problem"]),
            )
        mark = await self.store.meta_value(AUDIT_VERIFIED_KEY)
        after, prev_hash = (int.from_bytes(mark[:8], "big"), mark[8:]) if mark else (0, GENESIS_HASH)
        if after and await self.store.audit_entry_hash(after) != prev_hash:
            return await self._remember_audit(
                mark, after, prev_hash, total, broken=(after, "differs from when it was verified")
            )
        deadline = time.monotonic() + budget
        failure: tuple[int, str] | None = None
        while after < total and time.monotonic() < deadline:
            rows = await self.store.audit_chain(after=after, limit=AUDIT_BATCH)
            if not rows:
                break
            checked, failure = await asyncio.to_thread(self._check_audit_run, rows, prev_hash)
            if checked:
                after, prev_hash = checked[-1]
            if failure is not None:
                break
        # Checkpoints shared with the devices (few): the log must still hold what each vouched for.
        for checkpoint in await self.store.records(AuditCheckpoint, signer=self.home.did):
            seq = checkpoint.record.seq
            if (failure is None or seq < failure[0]) and await self.store.audit_entry_hash(
                seq
            ) != checkpoint.record.entry_hash:
                failure = (seq, "differs from its checkpoint")
        return await self._remember_audit(mark, after, prev_hash, total, broken=failure)

    async def forget_audit_verification(self) -> None:
        """Forget how far the audit chain verified (and any failure): the next check walks it all again."""
        async with self.store.transaction():
            await self.store.set_meta_value(AUDIT_VERIFIED_KEY, None)
            await self.store.set_meta_value(AUDIT_BROKEN_KEY, None)

    def _check_audit_run(
        self, rows: Sequence[AuditChainRow], prev_hash: bytes
    ) -> tuple[list[tuple[int, bytes]], tuple[int, str] | None]:
        """The (seq, entry hash) of the entries that verify, in order, and the first failure (seq, problem)."""
        checked: list[tuple[int, bytes]] = []
        for row in rows:
            problem = self._audit_entry_problem(row, prev_hash)
            if problem is not None:
                return checked, (row.seq, problem)
            checked.append((row.seq, row.entry_hash))
            prev_hash = row.entry_hash
        return checked, None

    async def _remember_audit(
        self,
        start: bytes | None,
        seq: int,
        entry_hash: bytes,
        total: int,
        *,
        broken: tuple[int, str] | None = None,
    ) -> AuditStanding:
        """Keep how far the chain verified (entry ``seq`` and its hash) and any failure ``broken`` (seq,
        problem), compare-and-set: only if the stored mark is still ``start``, the one this verification
        started from, and no failure was kept meanwhile.  The standing of what this verification found."""
        verified = seq if broken is None else min(seq, broken[0] - 1)
        mark = seq.to_bytes(8, "big") + entry_hash if seq else None
        if mark != start or broken is not None:
            async with self.store.transaction():
                if (
                    await self.store.meta_value(AUDIT_VERIFIED_KEY) == start
                    and await self.store.meta_value(AUDIT_BROKEN_KEY) is None
                ):
                    if mark != start:
                        await self.store.set_meta_value(AUDIT_VERIFIED_KEY, mark)
                    if broken is not None:
                        await self._keep_audit_failure(broken[0], broken[1], verified)
        if broken is None:
            return AuditStanding(verified=seq, total=total, broken=None, problem="")
        return AuditStanding(verified=verified, total=total, broken=broken[0], problem=broken[1])

    async def _keep_audit_failure(self, seq: int, problem: str, verified: int) -> None:
        """Keep where the chain broke, and how far it verified before.  Call inside a transaction."""
        await self.store.set_meta_value(
            AUDIT_BROKEN_KEY, json.dumps({"seq": seq, "problem": problem, "verified": verified}).encode()
        )

    async def _audit_broken(
        self, seq: int, problem: str, total: int, *, verified: int | None = None
    ) -> AuditStanding:
        verified = seq - 1 if verified is None else verified
        async with self.store.transaction():
            await self._keep_audit_failure(seq, problem, verified)
        return AuditStanding(verified=verified, total=total, broken=seq, problem=problem)

    async def tombstone_of(self, doc: bytes) -> Signed[Tombstone] | None:
        """This node's tombstone of ``doc``, or None when the patient has not deleted it."""
        found = await self.store.records(Tombstone, signer=self.home.did, subject=doc)
        return found[0] if found else None

    async def expected_attestations(self, doc: bytes) -> list[str]:
        """Who should answer the deletion of ``doc`` with an attestation: those its tombstone goes to,
        the nodes that read the document and its author ([API-16])."""
        return await self.store.told_nodes(doc)


def distinct_labels(labels: Iterable[str]) -> list[str]:
    """Labels as a patient reads them: once each whatever the case (a restriction hides every case of
    what the patient asked, :meth:`PatientNode._hidden_forms`), the upper-case form first."""
    shown: dict[str, str] = {}
    for label in sorted(labels):  # upper case sorts first
        shown.setdefault(label.casefold(), label)
    return sorted(shown.values())


def _own_subject(signed: Signed[Any]) -> bytes | None:
    """What a grant or restriction this node signed is kept under, as :meth:`PatientNode.grant` keeps it."""
    record = signed.record
    if isinstance(record, Grant):
        return record.audience.encode()
    if isinstance(record, PrivateRestriction) and record.grants is not None and len(record.grants) == 1:
        return record.grants[0]
    return None


def _audit_hash(seq: int, prev_hash: bytes, receipt_id: bytes, at: int) -> bytes:
    return hashlib.sha256(
        AUDIT_DOMAIN + seq.to_bytes(8, "big") + prev_hash + receipt_id + at.to_bytes(8, "big")
    ).digest()


def _month(now: int) -> str:
    return time.strftime("%Y%m", time.gmtime(now))


async def decrypt_stored(
    home: NodeHome, doc: bytes, reader: DocumentReader, *, sink: Callable[[bytes], object] | None = None
) -> int:
    """Decrypt a stored ciphertext file with the core's (synchronous) reader, in a worker thread.

    The file is read and decrypted 64 KiB at a time, so memory stays flat for
    any size.  Each piece of content goes to ``sink`` (called in the worker
    thread) as it is decrypted; without one the content is only checked.
    Pieces are authenticated as a whole only once this returns: a caller that
    writes them out discards them when it raises ([ENC-9]).

    Returns:
        The size of the content.

    Raises:
        RemoteProtocolError: ``not-found`` when the file is missing; the reader's codes.
        LocalProtocolError: ``malformed`` when the stream decrypts but is not ``doc``'s.
    """
    path = home.files.path_of(doc)
    stream = await home.store.document_stream(doc)

    def pieces_of(ciphertext: Iterable[bytes]) -> int:
        size = 0
        for piece in reader.decrypt(ciphertext):
            size += len(piece)
            if sink is not None:
                sink(piece)
        return size

    def run() -> int:
        if stream is not None:
            # A small document kept in its row (INLINE_STREAM_MAX).
            size = pieces_of((stream,))
        else:
            try:
                with path.open("rb") as file:
                    size = pieces_of(iter(lambda: file.read(1 << 16), b""))
            except FileNotFoundError:
                raise _not_found() from None
        if reader.document_id != doc:
            # The reader hashed the stream as it decrypted it: bytes that decrypt under the stored key
            # but are another stream (put in the row or file at rest) are not this document [ENC-6].
            raise LocalProtocolError(
                Code.MALFORMED, f"stored document {doc.hex()[:16]} no longer matches its id (damaged at rest)"
            )
        return size

    return await asyncio.to_thread(run)


async def read_stored(home: NodeHome, doc: bytes, reader: DocumentReader) -> bytes:
    """The content of a stored document, decrypted whole into memory (small documents; see :func:`decrypt_stored`).

    Raises:
        RemoteProtocolError: as :func:`decrypt_stored`.
    """
    pieces: list[bytes] = []
    await decrypt_stored(home, doc, reader, sink=pieces.append)
    return b"".join(pieces)


@dataclass(frozen=True)
class AuditStanding:
    """How far the audit chain verified (:meth:`PatientNode.verify_audit_since_last`)."""

    #: Entries 1 to ``verified`` verify.
    verified: int
    #: The log's last entry.
    total: int
    #: The entry where verification failed, or None.
    broken: int | None
    #: What failed there (a protocol code or a sentence), empty when nothing did.
    problem: str

    @property
    def complete(self) -> bool:
        """The whole log verified."""
        return self.broken is None and self.verified >= self.total
