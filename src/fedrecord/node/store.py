"""The node's storage interface, and its SQLite adapter.

:class:`NodeStore` names what the node keeps, in intent-revealing methods;
the node logic (patient, clinic, runner, server) speaks only to it.
:class:`SqliteNodeStore` holds all of the SQL.  A PostgreSQL adapter will
implement the same protocol.

Writes are made inside :meth:`NodeStore.transaction`, so that the writes of
one acknowledged operation commit together; methods documented "call inside
a transaction" do not open one themselves.  Reads may be made anywhere.
Records read back are re-verified through the cache of
:mod:`fedrecord.node.records_table`.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Final, NamedTuple, Protocol, TypeVar

from fedrecord.core import (
    DeletionAttestation,
    DepositDecision,
    Grant,
    NodeProfile,
    Record,
    Revocation,
    RevocationSet,
    Signed,
    StateHead,
    Tombstone,
)
from fedrecord.core.lifecycle import DocumentState
from fedrecord.storage.sqlite import Database, transaction

from .records_table import open_stored

R = TypeVar("R", bound=Record)

# Expired nonces are purged at most this often per store: the purge scans the whole table (about
# 1.4 ms at 20,000 rows, inside the write transaction of every request), and keeping one longer is safe.
NONCE_PURGE_INTERVAL: Final = 10
MAX_IDS_PER_QUERY: Final = 500  # SQLite's default cap on bound parameters is 32,766 (999 before 3.32)


class InboxRow(NamedTuple):
    """A document waiting in the patient's inbox, as listed."""

    doc: bytes
    author: str
    title: str
    category: str
    labels: str  # JSON list
    date: int
    size: int


class DepositedRow(NamedTuple):
    """What accepting or rejecting a deposited document needs, with its state (the life cycle's to judge)."""

    deposit: bytes
    labels: str  # JSON list
    size: int
    author: str
    state: str


class AcceptedRow(NamedTuple):
    """A document of the patient's record."""

    doc: bytes
    author: str
    title: str
    doc_type: str
    category: str
    labels: str  # JSON list
    date: int
    added: int | None
    size: int
    hidden: int


class FactsRow(NamedTuple):
    """The facts a capability decision looks at."""

    category: str
    labels: str  # JSON list
    date: int
    added: int | None
    hidden: int


class ServedRow(NamedTuple):
    """What serving a document to a reader looks at: its facts, its key at rest and its stream."""

    facts: FactsRow
    sealed_key: bytes
    size: int
    stream: bytes | None  # the ciphertext of a small document kept in its row; None when kept as a file


class SharedCopy(NamedTuple):
    """The row of a copy fetched from a patient's node, as :meth:`NodeStore.upsert_shared` keeps it."""

    doc: bytes
    patient: str
    author: str
    grant_id: bytes
    title: str
    doc_type: str
    category: str
    labels: str  # JSON list
    date: int
    added: int
    size: int
    sealed_key: bytes
    stream: bytes | None  # the ciphertext of a small document, kept in the row instead of a file


class HeldRow(NamedTuple):
    """A document a clinic holds (authored or shared)."""

    doc: bytes
    patient: str
    state: str
    author: str
    title: str
    category: str
    labels: str  # JSON list
    date: int
    size: int


class AuditRow(NamedTuple):
    """An audit log entry, as listed."""

    seq: int
    reader: str
    doc: bytes
    grant: bytes
    purpose: str
    at: int
    entry_hash: bytes
    #: Every document the entry's receipt names, ``doc`` first (filled by ``audit_entries`` only).
    docs: tuple[bytes, ...] = ()


class AuditLink(NamedTuple):
    """An audit log entry, as the chain verification walks it."""

    seq: int
    receipt: bytes
    at: int
    prev_hash: bytes
    entry_hash: bytes
    countersignature: bytes


class OutboxItem(NamedTuple):
    """A queued message that is due."""

    id: int
    kind: str
    target: str
    payload: bytes
    attempts: int


class DueDecision(NamedTuple):
    """A patient's queued deposit decision that is due, with the peer it goes to."""

    id: int
    payload: bytes
    attempts: int
    endpoint: str
    did: str


class OutboxRow(NamedTuple):
    """A queued message, as listed."""

    id: int
    kind: str
    target: str
    attempts: int
    next_at: int
    last_error: str | None
    done: int


class ConnectionRow(NamedTuple):
    """A clinic's connection to a patient's node."""

    patient: str
    profile: bytes
    endpoint: str
    head_seq: int


class ConnectionDetail(NamedTuple):
    """One connection, with what depositing and polling need."""

    endpoint: str
    profile: bytes
    deposit_grant: bytes | None
    head_seq: int


class NodeStore(Protocol):
    """What a node keeps: records, peers, invitations, documents, audit log, outbox, connections, nonces."""

    def transaction(self) -> AbstractAsyncContextManager[None]:
        """One transaction: commit when the block exits normally (only then acknowledge), else roll back.

        Raises:
            StorageError: when the current task is already inside a transaction.
        """
        ...

    # --- records
    async def put_record(self, signed: Signed[Any], *, now: int, subject: bytes | None = None) -> None:
        """Keep a verified record (idempotent).  Call inside a transaction."""
        ...

    async def put_records(self, kept: Sequence[tuple[Signed[Any], bytes | None]], *, now: int) -> None:
        """Keep verified records, each with its subject, as :meth:`put_record` does one (in one call)."""
        ...

    async def records(
        self,
        cls: type[R],
        *,
        signer: str | None = None,
        subject: bytes | None = None,
        given_by: str | None = None,
        verify: bool = True,
    ) -> list[Signed[R]]:
        """The kept records of one type, oldest first, verified on the way out.

        With ``verify=False``, decoded only: for records passed on to a peer or
        read for their ids and dates (see :mod:`fedrecord.node.records_table`).

        Args:
            given_by: only those the node of this patient gave as part of its
                record (:meth:`keep_given`).

        Raises:
            RemoteProtocolError: when a stored record does not verify.
        """
        ...

    async def keep_given(self, patient: str, record_ids: Sequence[bytes]) -> None:
        """Note that ``patient``'s node gave these records (kept too) as part of its record.

        For records another node signed (a device's revocations): whose record they are is
        known only from where they came.  Idempotent.  Call inside a transaction.
        """
        ...

    async def record_rows(self, cls: type[R], *, signer: str) -> list[tuple[bytes, bytes | None, bytes]]:
        """(id, subject, encoded) of the kept records of one type by ``signer``, in the order they were kept.

        Nothing is decoded nor verified: for records passed on as they are (a sync
        view's), or picked by subject before any is decoded.
        """
        ...

    async def record(self, cls: type[R], record_id: bytes) -> Signed[R] | None:
        """One kept record of type ``cls`` by id, verified; ``None`` when absent."""
        ...

    async def newest_record(self, cls: type[R], *, signer: str) -> Signed[R] | None:
        """The record of type ``cls`` by ``signer`` kept last, verified; ``None`` when there is none."""
        ...

    async def decided(self, doc: bytes) -> bool:
        """Whether a deposit decision or tombstone about ``doc`` is kept (the patient decided)."""
        ...

    async def attested(self, doc: bytes, *, patient: str) -> bool:
        """Whether a deletion attestation to ``patient`` about ``doc`` is kept (this node attested that
        patient's tombstone; another patient's tombstone of the same id is not this one, [API-27])."""
        ...

    async def tell_of_deletion(self, doc: bytes, nodes: Iterable[str]) -> None:
        """Keep that the tombstone of ``doc`` goes to ``nodes`` ([API-16]).  Call inside a transaction."""
        ...

    async def told_docs(self, node: str) -> set[bytes]:
        """The documents whose tombstones go to ``node``."""
        ...

    async def told_nodes(self, doc: bytes) -> list[str]:
        """The nodes the tombstone of ``doc`` goes to, in did order."""
        ...

    async def state_mark(self) -> tuple[int, int]:
        """A value that changes whenever a grant, revocation, state head or tombstone is kept, by this
        process or another one writing the same database (what the patient's event streams watch)."""
        ...

    async def revocation_set(self) -> RevocationSet:
        """Every revocation this node holds, as a set (read again only after :meth:`state_mark` moved)."""
        ...

    # --- invitations and peers
    async def create_invitation(self, token_hash: bytes, *, label: str, expires: int) -> None:
        """Keep an invitation (by its token's hash).  Call inside a transaction."""
        ...

    async def invitation(self, token_hash: bytes) -> tuple[int, str | None] | None:
        """An invitation's (expiry, user or ``None``); ``None`` when unknown."""
        ...

    async def use_invitation(self, token_hash: bytes, *, used_by: str, grant_id: bytes) -> None:
        """Mark an invitation used by ``used_by`` for ``grant_id``.  Call inside a transaction."""
        ...

    async def remember_peer(self, profile: Signed[NodeProfile]) -> None:
        """Keep (or replace) a peer's signed profile.  Call inside a transaction."""
        ...

    async def peer_profile(self, did: str) -> Signed[NodeProfile] | None:
        """A peer's kept profile, verified; ``None`` for an unknown peer."""
        ...

    async def peer_name(self, did: str) -> str | None:
        """A peer's display name; ``None`` for an unknown peer."""
        ...

    async def peer_names(self) -> dict[str, str]:
        """Every known peer's display name, by did."""
        ...

    # --- documents
    async def insert_document(
        self,
        *,
        doc: bytes,
        patient: str,
        author: str,
        deposit: bytes,
        title: str,
        doc_type: str,
        category: str,
        labels: str,
        date: int,
        size: int,
        sealed_key: bytes,
        stream: bytes | None = None,
        added: int | None = None,
        state: DocumentState,
    ) -> None:
        """Keep a document that comes with its ``deposit``, in ``state``.

        On a patient's node, a deposit received (the inbox; a small one with its ``stream``); on a
        clinic's, a document it authored and deposits (``authored``, ``added`` when it was written).

        Call inside a transaction.
        """
        ...

    async def document_stream(self, doc: bytes) -> bytes | None:
        """The ciphertext of a small document kept in its row; ``None`` when absent or kept as a file."""
        ...

    async def upsert_shared(self, copies: Sequence[SharedCopy]) -> None:
        """Keep copies fetched under their ``grant_id`` as ``shared``; an existing row keeps its state, key
        and stream (the lifecycle's ``fetched``: a copy stays shared, an authored document authored).

        Call inside a transaction.
        """
        ...

    async def document_deposit(self, doc: bytes) -> tuple[bytes | None, str] | None:
        """The deposit record id a document came with (``None`` for a copy) and its state; ``None``
        when no such document."""
        ...

    async def document_state(self, doc: bytes, *, patient: str | None = None) -> str | None:
        """A document's state (``inbox``, ``accepted``, ``authored``, ``shared``); ``None`` when absent.

        Args:
            patient: when given, only a document of that patient's counts (a copy fetched from
                them, one authored for them): another patient's is absent.
        """
        ...

    async def document_states(self, docs: Sequence[bytes]) -> dict[bytes, str]:
        """The state of each of ``docs`` that has a row, by id (at most ``MAX_IDS_PER_QUERY`` at a time)."""
        ...

    async def document_author(self, doc: bytes) -> str | None:
        """The did of a document's author (its depositor, on a patient's node); ``None`` when absent."""
        ...

    async def documents_among(self, docs: Sequence[bytes]) -> set[bytes]:
        """Those of ``docs`` that have a row, in any state (at most ``MAX_IDS_PER_QUERY`` at a time)."""
        ...

    async def tombstoned_among(self, docs: Sequence[bytes], *, patient: str) -> set[bytes]:
        """Those of ``docs`` this node holds a tombstone of signed by ``patient`` (at most
        ``MAX_IDS_PER_QUERY`` at a time)."""
        ...

    async def doomed(self, *, before: int | None = None) -> list[bytes]:
        """Documents whose rows were forgotten and whose file and log images are still to destroy.

        Args:
            before: only those forgotten before this time (None: all).
        """
        ...

    async def undoom(self, docs: Sequence[bytes]) -> None:
        """Strike documents off the list once destroyed.  Call inside a transaction."""
        ...

    async def authored_for(self, doc: bytes) -> str | None:
        """The patient of a document this clinic authored; ``None`` when it authored no such document."""
        ...

    async def inbox_rows(self) -> list[InboxRow]:
        """The inbox, in arrival order."""
        ...

    async def deposited_row(self, doc: bytes) -> DepositedRow | None:
        """A deposited document's deposit, labels, size, author and state; ``None`` when not held."""
        ...

    async def accept_document(self, doc: bytes, *, labels: str, added: int, state: DocumentState) -> None:
        """Move a document into the record (``state``) with its labels.  Call inside a transaction."""
        ...

    async def accepted_documents(self) -> list[AcceptedRow]:
        """The record's documents, by date then id."""
        ...

    async def sealed_key(self, doc: bytes) -> bytes | None:
        """A document's key, sealed to this node; ``None`` when absent (or held without a key)."""
        ...

    async def key_and_patient(self, doc: bytes) -> tuple[bytes | None, str] | None:
        """A held document's sealed key and patient; ``None`` when absent."""
        ...

    async def held_copy(self, doc: bytes) -> tuple[bytes | None, str, str, int | None] | None:
        """A held document's sealed key, patient, state and when its patient's head was last polled."""
        ...

    async def document_labels(self, doc: bytes) -> str | None:
        """A document's labels (JSON list); ``None`` when absent."""
        ...

    async def set_labels(self, doc: bytes, labels: str) -> None:
        """Replace a document's labels (JSON list).  Call inside a transaction."""
        ...

    async def document_facts(self, doc: bytes) -> FactsRow | None:
        """What capability decisions look at; ``None`` when absent."""
        ...

    async def is_hidden(self, doc: bytes) -> bool:
        """Whether the patient hid a document (false for an absent one)."""
        ...

    async def served_rows(self, docs: Sequence[bytes]) -> dict[bytes, ServedRow]:
        """What serving each of ``docs`` looks at, by id, for those that have a row, in one read
        (at most ``MAX_IDS_PER_QUERY`` at a time)."""
        ...

    async def set_hidden(self, doc: bytes, hidden: bool) -> bool:
        """Hide or show a document; false when there is no such document.  Call inside a transaction."""
        ...

    async def forget_document(self, doc: bytes, keys_in: type[Record]) -> None:
        """Drop a document's row and the records of type ``keys_in`` about it (those holding its key).

        Call inside a transaction.
        """
        ...

    async def held_documents(self) -> list[HeldRow]:
        """Every document a clinic holds, in the order added."""
        ...

    async def shared_copies(self, patient: str) -> list[tuple[bytes, bytes]]:
        """(document, grant id) of each copy fetched from ``patient``."""
        ...

    # --- audit log
    async def audit_has(self, receipt_id: bytes) -> bool:
        """Whether an access receipt is already logged."""
        ...

    async def audit_tail(self) -> tuple[int, bytes] | None:
        """The last entry's (seq, entry hash); ``None`` for an empty log."""
        ...

    async def append_audit(
        self,
        receipt: Signed[Any],
        *,
        seq: int,
        at: int,
        prev_hash: bytes,
        entry_hash: bytes,
        countersignature: bytes,
    ) -> None:
        """Append a countersigned receipt to the log.  Call inside a transaction.

        Raises:
            sqlite3.IntegrityError: for a receipt or seq already logged.
        """
        ...

    async def audit_entries(self) -> list[AuditRow]:
        """The log, in order."""
        ...

    async def audit_links(self) -> list[AuditLink]:
        """The log with receipts, hashes and countersignatures, in order."""
        ...

    # --- nonces
    async def view_epoch(self) -> int:
        """A number that changes with every committed change to records or documents, from any process."""
        ...

    async def remember_nonce(self, signer: str, nonce: str, expires: int) -> bool:
        """Keep a request nonce in its own transaction (purging expired ones now and then).

        Returns:
            false when ``signer`` already used ``nonce`` (a replay).
        """
        ...

    # --- outbox
    async def queue_outbox(self, kind: str, *, target: str, payload: bytes, now: int) -> None:
        """Queue a message for ``target``, due now.  Call inside a transaction."""
        ...

    async def refused_outbox(self, kind: str) -> list[tuple[bytes, str]]:
        """(payload, reason) of the entries of ``kind`` the peer refused for good."""
        ...

    async def due_outbox(self, now: int) -> list[OutboxItem]:
        """Queued messages due by ``now``, in queue order."""
        ...

    async def due_decisions(self, now: int) -> list[DueDecision]:
        """Queued deposit decisions due by ``now``, with the endpoint of the peer each goes to."""
        ...

    async def outbox_done(self, item_id: int, error: str | None = None, *, keep_error: bool = False) -> None:
        """Stop sending a message: delivered, or refused for good with ``error``.

        With ``keep_error`` the last error is left as it was.  Call inside a transaction.
        """
        ...

    async def outbox_retry(self, item_id: int, *, next_at: int, error: str) -> None:
        """Count a failed attempt and set when to retry.  Call inside a transaction."""
        ...

    async def outbox_pending(self) -> int:
        """How many messages are still to send."""
        ...

    async def outbox_items(self) -> list[OutboxRow]:
        """Every queued message, sent or not, in queue order."""
        ...

    # --- connections and delegations
    async def connections(self) -> list[ConnectionRow]:
        """Every patient this clinic is connected to."""
        ...

    async def connection(self, patient: str) -> ConnectionDetail | None:
        """One connection; ``None`` when not connected to ``patient``."""
        ...

    async def delegated_only(self) -> list[str]:
        """The patients connected through delegations alone (no deposit grant from an invitation)."""
        ...

    async def forget_connection(self, patient: str) -> None:
        """Drop a connection and the chains delegated for it.  Call inside a transaction."""
        ...

    async def owes(self, patient: str) -> bool:
        """Whether anything is still to send to ``patient`` (an outbox entry not done)."""
        ...

    async def save_connection(
        self, patient: str, *, endpoint: str, profile: bytes, deposit_grant: bytes | None = None
    ) -> None:
        """Keep (or update) a connection; without ``deposit_grant`` a kept one stays.

        Call inside a transaction.
        """
        ...

    async def set_head(self, patient: str, *, seq: int, head: bytes, polled: int | None) -> None:
        """Record the newest state head seen from ``patient``, and when it was last polled.

        ``polled`` is ``None`` for a head that came another way (an event stream): the time of the
        last poll is left as it was.  A head older than the one kept changes nothing (another
        process may have kept a newer one meanwhile).  Call inside a transaction.
        """
        ...

    async def held_head(self, patient: str) -> bytes | None:
        """The newest state head of ``patient`` this node applied, as it was received; None before any."""
        ...

    async def delegations(self, patient: str) -> list[tuple[bytes, bytes]]:
        """(leaf grant id, encoded chain) of each chain from ``patient`` delegated to this node."""
        ...

    async def delegation_count(self, patient: str) -> int:
        """How many chains from ``patient`` were delegated to this node."""
        ...

    async def save_delegation(self, leaf: bytes, *, patient: str, chain: bytes) -> None:
        """Keep (or replace) a delegated chain.  Call inside a transaction."""
        ...

    async def invitations(self) -> list[InvitationRow]:
        """Every invitation this node made, newest expiry first: label, expiry, who used it (never the token)."""
        ...

    # --- the web page: the audit log by page and filter, its verification mark, peers by role

    async def audit_page(
        self, where: AuditFilter, *, before: int | None = None, after: int | None = None, limit: int
    ) -> list[AuditRow]:
        """Up to ``limit`` entries matching ``where``, newest first by (at, seq): the newest older than
        entry ``before`` (or the newest of all), or, with ``after``, the oldest newer than entry ``after``;
        none when the cursor names no entry."""
        ...

    async def audit_readers(self) -> list[str]:
        """Every reader that appears in the log."""
        ...

    async def audit_readers_of(self, doc: bytes) -> list[str]:
        """Every reader that read ``doc``."""
        ...

    async def audit_doc_counts(self, seqs: Sequence[int]) -> dict[int, int]:
        """How many documents each of the entries ``seqs`` covers (more than one for a batch, 15.21), by seq;
        an entry not in the log is left out."""
        ...

    async def audit_chain(self, *, after: int, limit: int) -> list[AuditChainRow]:
        """Up to ``limit`` entries above seq ``after``, in order, with all that their verification checks."""
        ...

    async def audit_entry_hash(self, seq: int) -> bytes | None:
        """The stored hash of entry ``seq``, or ``None`` when there is none."""
        ...

    async def meta_value(self, key: str) -> bytes | None:
        """A value the node keeps about itself (``meta`` table), or ``None``."""
        ...

    async def set_meta_value(self, key: str, value: bytes | None) -> None:
        """Keep (or, with ``None``, drop) a value of the ``meta`` table.  Call inside a transaction."""
        ...

    async def peers_with_role(self, role: str) -> list[tuple[str, str]]:
        """(did, name) of each known peer of ``role``."""
        ...

    # --- the web page: the record's timeline by page and filter

    async def record_page(self, where: RecordFilter, *, limit: int, offset: int) -> RecordPage:
        """The record's documents matching ``where``, newest first (by date, then id): ``limit`` of them
        after skipping ``offset``, and how many match in all."""
        ...

    async def record_facets(self) -> RecordFacets:
        """How many documents the record holds, and the categories and labels they use (sorted)."""
        ...

    async def accepted_document(self, doc: bytes) -> AcceptedRow | None:
        """One document of the record; ``None`` when ``doc`` is not in the record."""
        ...

    async def document_titles(self, docs: Sequence[bytes]) -> dict[bytes, str]:
        """The titles of those of ``docs`` this node holds, by id."""
        ...


class SqliteNodeStore:
    """:class:`NodeStore` on the node's :class:`~fedrecord.storage.sqlite.Database` to the node database (see :mod:`.schema`)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._nonces_purged = 0
        self._revocation_set: tuple[tuple[int, int], RevocationSet] | None = None

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT``; see :func:`fedrecord.storage.sqlite.transaction`.

        Raises:
            StorageError: when the current task is already inside a transaction.
            sqlite3.OperationalError: ``database is locked`` after the busy timeout.
        """
        async with transaction(self.db):
            yield

    async def _one(self, query: str, params: Sequence[Any] = ()) -> Any:
        return await self.db.fetchone(query, params)

    async def _all(self, query: str, params: Sequence[Any] = ()) -> list[Any]:
        return await self.db.execute_fetchall(query, params)

    # --- records

    async def put_record(self, signed: Signed[Any], *, now: int, subject: bytes | None = None) -> None:
        await self.put_records([(signed, subject)], now=now)

    async def put_records(self, kept: Sequence[tuple[Signed[Any], bytes | None]], *, now: int) -> None:
        await self.db.executemany(
            "INSERT OR IGNORE INTO records (id, typ, signer, subject, encoded, received) VALUES (?, ?, ?, ?, ?, ?)",
            [(signed.id, signed.record.TYPE.value, signed.signer, subject, signed.encoded, now) for signed, subject in kept],
        )

    async def records(
        self,
        cls: type[R],
        *,
        signer: str | None = None,
        subject: bytes | None = None,
        given_by: str | None = None,
        verify: bool = True,
    ) -> list[Signed[R]]:
        if given_by is not None:
            # Driven from record_sets, one patient's few: not a walk over every record of the type.
            query = "SELECT r.encoded FROM record_sets s JOIN records r ON r.id = s.id WHERE s.patient = ? AND r.typ = ?"
            params: list[object] = [given_by, cls.TYPE.value]
        else:
            query = "SELECT r.encoded FROM records r WHERE r.typ = ?"
            params = [cls.TYPE.value]
        if signer is not None:
            query += " AND r.signer = ?"
            params.append(signer)
        if subject is not None:
            query += " AND r.subject = ?"
            params.append(subject)
        rows = await self.db.execute_fetchall(query + " ORDER BY r.received, r.id", params)
        opened = [open_stored(row[0], cls, verify=verify) for row in rows]
        # The columns are indexes, not the signature: a row whose record another key signed, or a
        # grant's row whose subject is not the grant's audience, is not what the query asked for.
        if signer is not None:
            opened = [record for record in opened if record.signer == signer]
        if subject is not None and cls is Grant:
            opened = [g for g in opened if g.record.audience.encode() == subject]  # type: ignore[attr-defined]
        return opened

    async def keep_given(self, patient: str, record_ids: Sequence[bytes]) -> None:
        await self.db.executemany(
            "INSERT OR IGNORE INTO record_sets (patient, id) VALUES (?, ?)",
            [(patient, record_id) for record_id in record_ids],
        )

    async def tell_of_deletion(self, doc: bytes, nodes: Iterable[str]) -> None:
        await self.db.executemany(
            "INSERT OR IGNORE INTO told (doc, node) VALUES (?, ?)", [(doc, node) for node in nodes]
        )

    async def told_docs(self, node: str) -> set[bytes]:
        return {row[0] for row in await self._all("SELECT doc FROM told WHERE node = ?", (node,))}

    async def told_nodes(self, doc: bytes) -> list[str]:
        return [row[0] for row in await self._all("SELECT node FROM told WHERE doc = ? ORDER BY node", (doc,))]

    async def record_rows(self, cls: type[R], *, signer: str) -> list[tuple[bytes, bytes | None, bytes]]:
        rows = await self.db.execute_fetchall(
            # The order of records_by_type's rows (rowid within a type and signer): no sort of every row,
            # as ORDER BY received would need.
            "SELECT id, subject, encoded FROM records WHERE typ = ? AND signer = ? ORDER BY rowid",
            (cls.TYPE.value, signer),
        )
        return [(row[0], row[1], row[2]) for row in rows]

    async def newest_record(self, cls: type[R], *, signer: str) -> Signed[R] | None:
        row = await self._one(
            "SELECT encoded FROM records WHERE typ = ? AND signer = ? ORDER BY rowid DESC LIMIT 1",
            (cls.TYPE.value, signer),
        )
        return open_stored(row[0], cls) if row is not None else None

    async def record(self, cls: type[R], record_id: bytes) -> Signed[R] | None:
        rows = list(
            await self.db.execute_fetchall(
                "SELECT encoded FROM records WHERE id = ? AND typ = ?", (record_id, cls.TYPE.value)
            )
        )
        return open_stored(rows[0][0], cls) if rows else None

    async def decided(self, doc: bytes) -> bool:
        row = await self._one(
            "SELECT 1 FROM records WHERE subject = ? AND typ IN (?, ?)",
            (doc, DepositDecision.TYPE.value, Tombstone.TYPE.value),
        )
        return row is not None

    async def attested(self, doc: bytes, *, patient: str) -> bool:
        # Usually one row, verified once and then from the cache: every state answer repeats its tombstones.
        return any(
            attestation.record.patient == patient
            for attestation in await self.records(DeletionAttestation, subject=doc)
        )

    async def revocation_set(self) -> RevocationSet:
        # Every fetch and listing decides against the whole set: read and decoded again only when a
        # revocation may have been kept since (by this process or another), not at each request.
        # Inside the task's own transaction its uncommitted writes count, and the mark would not see
        # them: read afresh there.
        if not self.db.reads_committed:
            return RevocationSet.from_records(await self.records(Revocation))
        mark = await self.state_mark()
        if self._revocation_set is None or self._revocation_set[0] != mark:
            self._revocation_set = (mark, RevocationSet.from_records(await self.records(Revocation)))
        return self._revocation_set[1]

    async def state_mark(self) -> tuple[int, int]:
        # These records are never deleted, so their count and highest rowid only grow.  Read on the
        # reader connection, it sees what any connection or process committed.
        row = await self._one(
            "SELECT count(*), coalesce(max(rowid), 0) FROM records WHERE typ IN (?, ?, ?, ?)",
            tuple(cls.TYPE.value for cls in (Grant, Revocation, StateHead, Tombstone)),
        )
        return (int(row[0]), int(row[1])) if row is not None else (0, 0)

    # --- invitations and peers

    async def create_invitation(self, token_hash: bytes, *, label: str, expires: int) -> None:
        await self.db.execute(
            "INSERT INTO invitations (token_hash, label, expires) VALUES (?, ?, ?)",
            (token_hash, label, expires),
        )

    async def invitation(self, token_hash: bytes) -> tuple[int, str | None] | None:
        row = await self._one("SELECT expires, used_by FROM invitations WHERE token_hash = ?", (token_hash,))
        return (row[0], row[1]) if row is not None else None

    async def use_invitation(self, token_hash: bytes, *, used_by: str, grant_id: bytes) -> None:
        await self.db.execute(
            "UPDATE invitations SET used_by = ?, grant_id = ? WHERE token_hash = ?",
            (used_by, grant_id, token_hash),
        )

    async def remember_peer(self, profile: Signed[NodeProfile]) -> None:
        record = profile.record
        await self.db.execute(
            "INSERT INTO peers (did, name, role, endpoint, profile) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (did) DO UPDATE SET name = excluded.name, role = excluded.role,"
            " endpoint = excluded.endpoint, profile = excluded.profile",
            (
                profile.signer,
                record.name,
                record.role,
                record.endpoints[0] if record.endpoints else "",
                profile.encoded,
            ),
        )

    async def peer_profile(self, did: str) -> Signed[NodeProfile] | None:
        rows = list(await self.db.execute_fetchall("SELECT profile FROM peers WHERE did = ?", (did,)))
        return open_stored(rows[0][0], NodeProfile) if rows else None

    async def peer_name(self, did: str) -> str | None:
        row = await self._one("SELECT name FROM peers WHERE did = ?", (did,))
        return str(row[0]) if row else None

    async def peer_names(self) -> dict[str, str]:
        return {str(did): str(name) for did, name in await self._all("SELECT did, name FROM peers")}

    # --- documents

    async def insert_document(
        self,
        *,
        doc: bytes,
        patient: str,
        author: str,
        deposit: bytes,
        title: str,
        doc_type: str,
        category: str,
        labels: str,
        date: int,
        size: int,
        sealed_key: bytes,
        stream: bytes | None = None,
        added: int | None = None,
        state: DocumentState,
    ) -> None:
        await self.db.execute(
            "INSERT INTO documents (id, patient, state, author, deposit, title, doc_type, category, labels,"
            " date, added, size, sealed_key, stream) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                doc,
                patient,
                state.value,
                author,
                deposit,
                title,
                doc_type,
                category,
                labels,
                date,
                added,
                size,
                sealed_key,
                stream,
            ),
        )

    async def document_stream(self, doc: bytes) -> bytes | None:
        row = await self._one("SELECT stream FROM documents WHERE id = ?", (doc,))
        return bytes(row[0]) if row is not None and row[0] is not None else None

    async def upsert_shared(self, copies: Sequence[SharedCopy]) -> None:
        await self.db.executemany(
            "INSERT INTO documents (id, patient, state, author, grant_id, title, doc_type, category, labels,"
            " date, added, size, sealed_key, stream) VALUES (?, ?, 'shared', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (id) DO UPDATE SET grant_id = excluded.grant_id,"
            " sealed_key = COALESCE(documents.sealed_key, excluded.sealed_key),"
            " stream = COALESCE(documents.stream, excluded.stream)",
            copies,
        )

    async def document_deposit(self, doc: bytes) -> tuple[bytes | None, str] | None:
        row = await self._one("SELECT deposit, state FROM documents WHERE id = ?", (doc,))
        return (row[0], str(row[1])) if row is not None else None

    async def document_state(self, doc: bytes, *, patient: str | None = None) -> str | None:
        row = await self._one("SELECT state, patient FROM documents WHERE id = ?", (doc,))
        if row is None or (patient is not None and row[1] != patient):
            return None
        return str(row[0])

    async def document_states(self, docs: Sequence[bytes]) -> dict[bytes, str]:
        return {row[0]: str(row[1]) for row in await self._rows_among("SELECT id, state FROM documents WHERE id", docs)}

    async def document_author(self, doc: bytes) -> str | None:
        row = await self._one("SELECT author FROM documents WHERE id = ?", (doc,))
        return str(row[0]) if row is not None else None

    async def authored_for(self, doc: bytes) -> str | None:
        row = await self._one("SELECT patient FROM documents WHERE id = ? AND state = 'authored'", (doc,))
        return str(row[0]) if row is not None else None

    async def inbox_rows(self) -> list[InboxRow]:
        rows = await self._all(
            "SELECT id, author, title, category, labels, date, size FROM documents WHERE state = 'inbox'"
            " ORDER BY rowid"
        )
        return [InboxRow(*row) for row in rows]

    async def tombstoned_among(self, docs: Sequence[bytes], *, patient: str) -> set[bytes]:
        return await self._among(
            "SELECT subject FROM records WHERE typ = ? AND signer = ? AND subject", docs, Tombstone.TYPE.value, patient
        )

    async def documents_among(self, docs: Sequence[bytes]) -> set[bytes]:
        return await self._among("SELECT id FROM documents WHERE id", docs)

    async def _among(self, select: str, docs: Sequence[bytes], *params: object) -> set[bytes]:
        """The ids ``select`` (ending in the column compared) finds among ``docs`` (at most MAX_IDS_PER_QUERY)."""
        return {row[0] for row in await self._rows_among(select, docs, *params)}

    async def _rows_among(self, select: str, docs: Sequence[bytes], *params: object) -> list[Any]:
        """The rows ``select`` (ending in the column compared) finds among ``docs``, ``params`` bound first.

        Raises:
            ValueError: for more than ``MAX_IDS_PER_QUERY`` ids (SQLite's cap on bound parameters).
        """
        if len(docs) > MAX_IDS_PER_QUERY:
            raise ValueError(f"at most {MAX_IDS_PER_QUERY} ids at a time")
        if not docs:
            return []
        marks = ", ".join("?" * len(docs))
        return await self._all(f"{select} IN ({marks})", (*params, *docs))

    async def deposited_row(self, doc: bytes) -> DepositedRow | None:
        row = await self._one(
            "SELECT deposit, labels, size, author, state FROM documents WHERE id = ? AND deposit IS NOT NULL",
            (doc,),
        )
        return DepositedRow(*row) if row is not None else None

    async def accept_document(
        self, doc: bytes, *, labels: str, added: int, state: DocumentState
    ) -> None:
        await self.db.execute(
            "UPDATE documents SET state = ?, labels = ?, added = ? WHERE id = ?",
            (state.value, labels, added, doc),
        )

    async def accepted_documents(self) -> list[AcceptedRow]:
        rows = await self._all(
            "SELECT id, author, title, doc_type, category, labels, date, added, size, hidden FROM documents"
            " WHERE state = 'accepted' ORDER BY date, id"
        )
        return [AcceptedRow(*row) for row in rows]

    async def sealed_key(self, doc: bytes) -> bytes | None:
        row = await self._one("SELECT sealed_key FROM documents WHERE id = ?", (doc,))
        return row[0] if row is not None else None

    async def key_and_patient(self, doc: bytes) -> tuple[bytes | None, str] | None:
        row = await self._one("SELECT sealed_key, patient FROM documents WHERE id = ?", (doc,))
        return (row[0], row[1]) if row is not None else None

    async def held_copy(self, doc: bytes) -> tuple[bytes | None, str, str, int | None] | None:
        row = await self._one(
            "SELECT d.sealed_key, d.patient, d.state, c.polled FROM documents d"
            " LEFT JOIN connections c ON c.patient = d.patient WHERE d.id = ?",
            (doc,),
        )
        return (row[0], row[1], row[2], row[3]) if row is not None else None

    async def document_labels(self, doc: bytes) -> str | None:
        row = await self._one("SELECT labels FROM documents WHERE id = ?", (doc,))
        return str(row[0]) if row is not None else None

    async def set_labels(self, doc: bytes, labels: str) -> None:
        await self.db.execute("UPDATE documents SET labels = ? WHERE id = ?", (labels, doc))

    async def document_facts(self, doc: bytes) -> FactsRow | None:
        row = await self._one(
            "SELECT category, labels, date, added, hidden FROM documents WHERE id = ?", (doc,)
        )
        return FactsRow(*row) if row is not None else None

    async def is_hidden(self, doc: bytes) -> bool:
        row = await self._one("SELECT hidden FROM documents WHERE id = ?", (doc,))
        return bool(row and row[0])

    async def served_rows(self, docs: Sequence[bytes]) -> dict[bytes, ServedRow]:
        rows = await self._rows_among(
            "SELECT id, category, labels, date, added, hidden, sealed_key, size, stream FROM documents WHERE id",
            docs,
        )
        return {
            row[0]: ServedRow(FactsRow(*row[1:6]), row[6], row[7], bytes(row[8]) if row[8] is not None else None)
            for row in rows
        }

    async def set_hidden(self, doc: bytes, hidden: bool) -> bool:
        cursor = await self.db.execute("UPDATE documents SET hidden = ? WHERE id = ?", (int(hidden), doc))
        return cursor.rowcount != 0

    async def forget_document(self, doc: bytes, keys_in: type[Record]) -> None:
        await self.db.execute("DELETE FROM documents WHERE id = ?", (doc,))
        await self.db.execute("DELETE FROM records WHERE typ = ? AND subject = ?", (keys_in.TYPE.value, doc))
        # In the same transaction: should the process die before the file and the log are destroyed,
        # the next start finds what is left to do (NodeHome.finish_destruction).
        await self.db.execute(
            "INSERT OR REPLACE INTO doomed (doc, at) VALUES (?, CAST(strftime('%s', 'now') AS INTEGER))", (doc,)
        )

    async def doomed(self, *, before: int | None = None) -> list[bytes]:
        if before is None:
            return [row[0] for row in await self._all("SELECT doc FROM doomed")]
        return [row[0] for row in await self._all("SELECT doc FROM doomed WHERE at < ?", (before,))]

    async def undoom(self, docs: Sequence[bytes]) -> None:
        for doc in docs:
            await self.db.execute("DELETE FROM doomed WHERE doc = ?", (doc,))

    async def held_documents(self) -> list[HeldRow]:
        rows = await self._all(
            "SELECT id, patient, state, author, title, category, labels, date, size FROM documents ORDER BY added"
        )
        return [HeldRow(*row) for row in rows]

    async def shared_copies(self, patient: str) -> list[tuple[bytes, bytes]]:
        rows = await self._all(
            "SELECT id, grant_id FROM documents WHERE patient = ? AND state = 'shared'", (patient,)
        )
        return [(row[0], row[1]) for row in rows]

    # --- audit log

    async def audit_has(self, receipt_id: bytes) -> bool:
        return await self._one("SELECT 1 FROM audit WHERE receipt_id = ?", (receipt_id,)) is not None

    async def audit_tail(self) -> tuple[int, bytes] | None:
        row = await self._one("SELECT seq, entry_hash FROM audit ORDER BY seq DESC LIMIT 1")
        return (row[0], row[1]) if row is not None else None

    async def append_audit(
        self,
        receipt: Signed[Any],
        *,
        seq: int,
        at: int,
        prev_hash: bytes,
        entry_hash: bytes,
        countersignature: bytes,
    ) -> None:
        await self.db.execute(
            "INSERT INTO audit (seq, receipt_id, receipt, reader, doc, grant_id, purpose, at, prev_hash,"
            " entry_hash, countersignature) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                seq,
                receipt.id,
                receipt.encoded,
                receipt.signer,
                receipt.record.doc,
                receipt.record.grant,
                receipt.record.purpose,
                at,
                prev_hash,
                entry_hash,
                countersignature,
            ),
        )
        # Every document the receipt names, so that listings by document find a batch's entry too.
        await self.db.executemany(
            "INSERT INTO audit_docs (doc, at, seq) VALUES (?, ?, ?)", [(doc, at, seq) for doc in receipt.record.documents]
        )

    async def audit_entries(self) -> list[AuditRow]:
        rows = await self._all(
            f"SELECT seq, reader, doc, grant_id, purpose, at, entry_hash, {_LISTED} FROM audit ORDER BY seq"
        )
        entries = []
        for seq, reader, doc, grant, purpose, at, entry_hash, listed in rows:
            others = {listed_doc for listed_doc, _at in _listed(listed)} - {doc}
            entries.append(AuditRow(seq, reader, doc, grant, purpose, at, entry_hash, (doc, *sorted(others))))
        return entries

    async def audit_links(self) -> list[AuditLink]:
        rows = await self._all(
            "SELECT seq, receipt, at, prev_hash, entry_hash, countersignature FROM audit ORDER BY seq"
        )
        return [AuditLink(*row) for row in rows]

    # --- nonces

    async def view_epoch(self) -> int:
        row = await self._one("SELECT n FROM view_epoch")
        return int(row[0])

    async def remember_nonce(self, signer: str, nonce: str, expires: int) -> bool:
        now = int(time.time())
        async with transaction(self.db):
            if self._nonces_purged + NONCE_PURGE_INTERVAL <= now:
                await self.db.execute("DELETE FROM nonces WHERE expires < ?", (now - 60,))
                self._nonces_purged = now
            cursor = await self.db.execute(
                "INSERT OR IGNORE INTO nonces (signer, nonce, expires) VALUES (?, ?, ?)",
                (signer, nonce, expires),
            )
            return cursor.rowcount == 1

    # --- outbox

    async def queue_outbox(self, kind: str, *, target: str, payload: bytes, now: int) -> None:
        await self.db.execute(
            "INSERT INTO outbox (kind, target, payload, next_at) VALUES (?, ?, ?, ?)",
            (kind, target, payload, now),
        )

    async def refused_outbox(self, kind: str) -> list[tuple[bytes, str]]:
        rows = await self._all(
            "SELECT payload, last_error FROM outbox WHERE kind = ? AND done = 1 AND last_error IS NOT NULL",
            (kind,),
        )
        return [(row[0], row[1]) for row in rows]

    async def due_outbox(self, now: int) -> list[OutboxItem]:
        rows = await self._all(
            "SELECT id, kind, target, payload, attempts FROM outbox WHERE done = 0 AND next_at <= ? ORDER BY id",
            (now,),
        )
        return [OutboxItem(*row) for row in rows]

    async def due_decisions(self, now: int) -> list[DueDecision]:
        rows = await self._all(
            "SELECT o.id, o.payload, o.attempts, p.endpoint, p.did FROM outbox o JOIN peers p ON p.did = o.target"
            " WHERE o.done = 0 AND o.next_at <= ? AND o.kind = 'decision'",
            (now,),
        )
        return [DueDecision(*row) for row in rows]

    async def outbox_done(self, item_id: int, error: str | None = None, *, keep_error: bool = False) -> None:
        if keep_error:
            await self.db.execute("UPDATE outbox SET done = 1 WHERE id = ?", (item_id,))
        else:
            await self.db.execute("UPDATE outbox SET done = 1, last_error = ? WHERE id = ?", (error, item_id))

    async def outbox_retry(self, item_id: int, *, next_at: int, error: str) -> None:
        await self.db.execute(
            "UPDATE outbox SET attempts = attempts + 1, next_at = ?, last_error = ? WHERE id = ?",
            (next_at, error, item_id),
        )

    async def outbox_pending(self) -> int:
        row = await self._one("SELECT count(*) FROM outbox WHERE done = 0")
        return int(row[0]) if row else 0

    async def outbox_items(self) -> list[OutboxRow]:
        rows = await self._all(
            "SELECT id, kind, target, attempts, next_at, last_error, done FROM outbox ORDER BY id"
        )
        return [OutboxRow(*row) for row in rows]

    # --- connections and delegations

    async def connections(self) -> list[ConnectionRow]:
        rows = await self._all("SELECT patient, profile, endpoint, head_seq FROM connections")
        return [ConnectionRow(*row) for row in rows]

    async def delegated_only(self) -> list[str]:
        return [row[0] for row in await self._all("SELECT patient FROM connections WHERE deposit_grant IS NULL")]

    async def forget_connection(self, patient: str) -> None:
        await self.db.execute("DELETE FROM delegations WHERE patient = ?", (patient,))
        await self.db.execute("DELETE FROM connections WHERE patient = ?", (patient,))

    async def owes(self, patient: str) -> bool:
        row = await self._one("SELECT 1 FROM outbox WHERE target = ? AND done = 0 LIMIT 1", (patient,))
        return row is not None

    async def connection(self, patient: str) -> ConnectionDetail | None:
        row = await self._one(
            "SELECT endpoint, profile, deposit_grant, head_seq FROM connections WHERE patient = ?", (patient,)
        )
        return ConnectionDetail(*row) if row is not None else None

    async def save_connection(
        self, patient: str, *, endpoint: str, profile: bytes, deposit_grant: bytes | None = None
    ) -> None:
        if deposit_grant is not None:
            await self.db.execute(
                "INSERT INTO connections (patient, endpoint, profile, deposit_grant) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (patient) DO UPDATE SET endpoint = excluded.endpoint, profile = excluded.profile,"
                " deposit_grant = excluded.deposit_grant",
                (patient, endpoint, profile, deposit_grant),
            )
        else:
            await self.db.execute(
                "INSERT INTO connections (patient, endpoint, profile) VALUES (?, ?, ?) ON CONFLICT (patient)"
                " DO UPDATE SET endpoint = excluded.endpoint, profile = excluded.profile",
                (patient, endpoint, profile),
            )

    async def set_head(self, patient: str, *, seq: int, head: bytes, polled: int | None) -> None:
        await self.db.execute(
            "UPDATE connections SET head_seq = ?, head = ?, polled = coalesce(?, polled)"
            " WHERE patient = ? AND head_seq <= ?",
            (seq, head, polled, patient, seq),
        )

    async def held_head(self, patient: str) -> bytes | None:
        row = await self._one("SELECT head FROM connections WHERE patient = ?", (patient,))
        return bytes(row[0]) if row is not None and row[0] is not None else None

    async def delegations(self, patient: str) -> list[tuple[bytes, bytes]]:
        rows = await self._all("SELECT leaf, chain FROM delegations WHERE patient = ?", (patient,))
        return [(row[0], row[1]) for row in rows]

    async def delegation_count(self, patient: str) -> int:
        row = await self._one("SELECT count(*) FROM delegations WHERE patient = ?", (patient,))
        return int(row[0]) if row else 0

    async def save_delegation(self, leaf: bytes, *, patient: str, chain: bytes) -> None:
        await self.db.execute(
            "INSERT OR REPLACE INTO delegations (leaf, patient, chain) VALUES (?, ?, ?)",
            (leaf, patient, chain),
        )

    async def invitations(self) -> list[InvitationRow]:
        rows = await self._all(
            "SELECT token_hash, label, expires, used_by, grant_id FROM invitations ORDER BY expires DESC, rowid DESC"
        )
        return [InvitationRow(row[0], row[1], row[2], row[3], row[4]) for row in rows]

    # --- the web page: the audit log by page and filter, its verification mark, peers by role

    async def audit_page(
        self, where: AuditFilter, *, before: int | None = None, after: int | None = None, limit: int
    ) -> list[AuditRow]:
        # By document, the walk is over audit_docs (doc, at, seq): a batch entry covers several.
        by_doc = where.doc is not None
        clauses, params = _audit_where(where)
        cursor = after if after is not None else before
        if cursor is not None:
            at = await self._one("SELECT at FROM audit WHERE seq = ?", (cursor,))
            if at is None:
                return []
            # Row values: the walk starts at the cursor in the (at, seq) index, whatever the filters.
            clauses.append("(w.at, w.seq) > (?, ?)" if after is not None else "(w.at, w.seq) < (?, ?)")
            params.extend((at[0], cursor))
        condition = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        order = "ASC" if after is not None else "DESC"
        source = "audit_docs w JOIN audit a ON a.seq = w.seq" if by_doc else "audit w"
        columns = "a.seq, a.reader, a.doc, a.grant_id, a.purpose, a.at, a.entry_hash" if by_doc else (
            "seq, reader, doc, grant_id, purpose, at, entry_hash"
        )
        rows = await self._all(
            f"SELECT {columns} FROM {source}{condition} ORDER BY w.at {order}, w.seq {order} LIMIT ?",
            (*params, limit),
        )
        entries = [AuditRow(*row) for row in rows]
        return entries[::-1] if order == "ASC" else entries

    async def audit_readers(self) -> list[str]:
        # One index probe per reader (audit_by_reader), not a walk over every entry.
        rows = await self._all(
            "WITH RECURSIVE r (reader) AS (SELECT min(reader) FROM audit UNION ALL"
            " SELECT (SELECT min(reader) FROM audit WHERE reader > r.reader) FROM r WHERE r.reader IS NOT NULL)"
            " SELECT reader FROM r WHERE reader IS NOT NULL"
        )
        return [row[0] for row in rows]

    async def audit_readers_of(self, doc: bytes) -> list[str]:
        rows = await self._all(
            "SELECT DISTINCT reader FROM audit WHERE seq IN (SELECT seq FROM audit_docs WHERE doc = ?)", (doc,)
        )
        return [row[0] for row in rows]

    async def audit_doc_counts(self, seqs: Sequence[int]) -> dict[int, int]:
        if not seqs:
            return {}
        rows = await self._all(
            f"SELECT seq, count(*) FROM audit_docs WHERE seq IN ({', '.join('?' * len(seqs))}) GROUP BY seq",
            list(seqs),
        )
        return {row[0]: row[1] for row in rows}

    async def audit_chain(self, *, after: int, limit: int) -> list[AuditChainRow]:
        rows = await self._all(
            "SELECT seq, receipt, at, prev_hash, entry_hash, countersignature, reader, doc, grant_id, purpose,"
            f" {_LISTED}, receipt_id FROM audit WHERE seq > ? ORDER BY seq LIMIT ?",
            (after, limit),
        )
        return [
            AuditChainRow(
                seq,
                receipt,
                at,
                prev_hash,
                entry_hash,
                countersignature,
                reader,
                doc,
                grant,
                purpose,
                _listed(listed),
                receipt_id,
            )
            for seq, receipt, at, prev_hash, entry_hash, countersignature, reader, doc, grant, purpose, listed, receipt_id in rows
        ]

    async def audit_entry_hash(self, seq: int) -> bytes | None:
        row = await self._one("SELECT entry_hash FROM audit WHERE seq = ?", (seq,))
        return bytes(row[0]) if row is not None else None

    async def meta_value(self, key: str) -> bytes | None:
        row = await self._one("SELECT value FROM meta WHERE key = ?", (key,))
        return bytes(row[0]) if row is not None else None

    async def set_meta_value(self, key: str, value: bytes | None) -> None:
        if value is None:
            await self.db.execute("DELETE FROM meta WHERE key = ?", (key,))
        else:
            await self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    async def peers_with_role(self, role: str) -> list[tuple[str, str]]:
        rows = await self._all("SELECT did, name FROM peers WHERE role = ? ORDER BY name", (role,))
        return [(row[0], row[1]) for row in rows]

    # --- the web page: the record's timeline by page and filter

    #: What the record's pages read, kept with the view epoch they were read at: a change to the
    #: documents (by any process) moves the epoch, and what was kept under an older one is not used.
    _record_facets: tuple[int, RecordFacets] | None = None
    _record_matches: OrderedDict[tuple[int, RecordFilter], int | list[bytes]] | None = None

    async def _record_epoch(self) -> int | None:
        """The view epoch to key kept results by; ``None`` (keep nothing) while the writer is inside a
        transaction, whose epoch may be rolled back and come again with other documents."""
        return None if self.db.in_transaction else await self.view_epoch()

    def _kept(self, key: tuple[int, RecordFilter] | None) -> int | list[bytes] | None:
        if key is None or self._record_matches is None or key not in self._record_matches:
            return None
        self._record_matches.move_to_end(key)
        return self._record_matches[key]

    def _keep(self, key: tuple[int, RecordFilter] | None, value: int | list[bytes]) -> None:
        if key is None:
            return
        if self._record_matches is None:
            self._record_matches = OrderedDict()
        self._record_matches[key] = value
        while len(self._record_matches) > RECORD_MATCHES_KEPT:
            self._record_matches.popitem(last=False)

    async def record_page(self, where: RecordFilter, *, limit: int, offset: int) -> RecordPage:
        clauses, params = _record_where(where)
        condition = " AND ".join(clauses)
        epoch = await self._record_epoch()
        key = (epoch, where) if epoch is not None else None
        if not where.words:
            rows = await self._all(
                f"SELECT {_ACCEPTED_COLUMNS} FROM documents WHERE {condition} ORDER BY date DESC, id DESC"
                " LIMIT ? OFFSET ?",
                (*params, limit, offset),
            )
            kept = self._kept(key)
            if offset == 0 and len(rows) < limit:
                matching = len(rows)
            elif where == RecordFilter():
                matching = (await self.record_facets()).total
            elif isinstance(kept, int):
                matching = kept
            else:
                counted = await self._one(f"SELECT count(*) FROM documents WHERE {condition}", params)
                matching = int(counted[0])
                self._keep(key, matching)
            return RecordPage([AcceptedRow(*row) for row in rows], matching)
        # Words match as str.casefold() says (SQLite's lower() and LIKE know only ASCII): the titles of
        # the documents the other filters leave are folded here, in order, and the page read by id.
        kept = self._kept(key)
        if isinstance(kept, list):
            ids = kept
        else:
            words = [word.casefold() for word in where.words]
            ids = [
                row[0]
                for row in await self._all(
                    f"SELECT id, title FROM documents WHERE {condition} ORDER BY date DESC, id DESC", params
                )
                if all(word in row[1].casefold() for word in words)
            ]
            self._keep(key, ids)
        shown = ids[offset : offset + limit]
        rows = (
            await self._all(
                # By primary key ("+state": not a walk of the state index in date order).
                f"SELECT {_ACCEPTED_COLUMNS} FROM documents WHERE id IN ({', '.join('?' * len(shown))})"
                " AND +state = 'accepted' ORDER BY date DESC, id DESC",
                shown,
            )
            if shown
            else []
        )
        return RecordPage([AcceptedRow(*row) for row in rows], len(ids))

    async def record_facets(self) -> RecordFacets:
        # Kept until the view epoch moves (any change to documents, by any process).  Not while the
        # writer is inside a transaction: an epoch read there may be rolled back, and come again.
        epoch = await self._record_epoch()
        if epoch is not None and self._record_facets is not None and self._record_facets[0] == epoch:
            return self._record_facets[1]
        total = await self._one("SELECT count(*) FROM documents WHERE state = 'accepted'")
        categories = await self._all(
            "SELECT DISTINCT category FROM documents WHERE state = 'accepted' ORDER BY category"
        )
        labels = await self._all(
            "SELECT DISTINCT label.value FROM documents, json_each(documents.labels) AS label"
            " WHERE documents.state = 'accepted' ORDER BY label.value"
        )
        facets = RecordFacets(int(total[0]), [row[0] for row in categories], [str(row[0]) for row in labels])
        if epoch is not None:
            self._record_facets = (epoch, facets)
        return facets

    async def accepted_document(self, doc: bytes) -> AcceptedRow | None:
        row = await self._one(
            f"SELECT {_ACCEPTED_COLUMNS} FROM documents WHERE id = ? AND state = 'accepted'", (doc,)
        )
        return AcceptedRow(*row) if row is not None else None

    async def document_titles(self, docs: Sequence[bytes]) -> dict[bytes, str]:
        unique = list(dict.fromkeys(docs))
        titles: dict[bytes, str] = {}
        for start in range(0, len(unique), 500):
            part = unique[start : start + 500]
            rows = await self._all(
                f"SELECT id, title FROM documents WHERE id IN ({', '.join('?' * len(part))})", part
            )
            titles.update((bytes(row[0]), str(row[1])) for row in rows)
        return titles


class InvitationRow(NamedTuple):
    """An invitation the node made, as listed (only its token's hash is kept)."""

    token_hash: bytes
    label: str
    expires: int
    used_by: str | None
    grant_id: bytes | None


class AuditFilter(NamedTuple):
    """Which audit entries a page lists: by reader, by document, by time (``since`` <= at < ``until``)."""

    reader: str | None = None
    doc: bytes | None = None
    since: int | None = None
    until: int | None = None


class AuditChainRow(NamedTuple):
    """An audit entry with all its verification checks: the chain's links and what the log lists."""

    seq: int
    receipt: bytes
    at: int
    prev_hash: bytes
    entry_hash: bytes
    countersignature: bytes
    reader: str
    doc: bytes
    grant: bytes
    purpose: str
    #: The (document, time) pairs the log lists for this entry (``audit_docs``): one per document
    #: its receipt names, at the entry's time.
    listed: frozenset[tuple[bytes, int]] = frozenset()
    #: The receipt's id as the log indexes it (``audit_has``, which refuses a receipt used twice).
    receipt_id: bytes = b""


_LISTED: Final = "(SELECT group_concat(hex(d.doc) || ':' || d.at) FROM audit_docs d WHERE d.seq = audit.seq)"
"""The (document, time) pairs ``audit_docs`` lists for an audit row, as one text :func:`_listed` reads."""


def _listed(text: str | None) -> frozenset[tuple[bytes, int]]:
    pairs = []
    for item in (text or "").split(","):
        if item:
            doc, _, at = item.partition(":")
            pairs.append((bytes.fromhex(doc), int(at)))
    return frozenset(pairs)


def _audit_where(where: AuditFilter) -> tuple[list[str], list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    # ``w`` is the table walked: audit, or audit_docs when listing one document's reads.
    reader = "a.reader = ?" if where.doc is not None else "w.reader = ?"
    for clause, value in (
        (reader, where.reader),
        ("w.doc = ?", where.doc),
        ("w.at >= ?", where.since),
        ("w.at < ?", where.until),
    ):
        if value is not None:
            clauses.append(clause)
            params.append(value)
    return clauses, params


class RecordFilter(NamedTuple):
    """Which documents of the record a page lists: of a category, with a label, with words in the title."""

    category: str | None = None
    label: str | None = None
    #: Each must appear in the title, ignoring case (``str.casefold``).
    words: tuple[str, ...] = ()


class RecordPage(NamedTuple):
    """A page of the record's documents, and how many match the filter in all."""

    documents: list[AcceptedRow]
    matching: int


class RecordFacets(NamedTuple):
    """The whole record, as its filters offer it."""

    total: int
    categories: list[str]
    labels: list[str]


#: How many counts and word matches of the record's filters a store keeps (see ``record_page``).
RECORD_MATCHES_KEPT: Final = 32
_ACCEPTED_COLUMNS: Final = "id, author, title, doc_type, category, labels, date, added, size, hidden"


def _record_where(where: RecordFilter) -> tuple[list[str], list[Any]]:
    clauses = ["state = 'accepted'"]
    params: list[Any] = []
    if where.category:
        clauses.append("category = ?")
        params.append(where.category)
    if where.label:
        # The JSON text is searched first (cheap), then its items compared exactly.
        clauses.append(
            "instr(labels, ?) > 0 AND EXISTS (SELECT 1 FROM json_each(documents.labels) WHERE value = ?)"
        )
        params.extend((json.dumps(where.label), where.label))
    return clauses, params
