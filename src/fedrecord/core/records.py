"""The protocol's record types: what each signed record says, and its own invariants.

Every record is the payload of a COSE_Sign1 (see :mod:`fedrecord.core.signed`).
Its signer -- issuer, author, reader -- is the ``kid`` of the protected
header and is *not* repeated in the payload, so a record can never claim one
author while being signed by another (spec [REC-2]).  Each payload carries the
protocol version under ``v`` (spec [REC-3]).

The field tables below are the single source of the wire layout; the CDDL in
``spec/fedrecord.cddl`` says the same thing for other implementations.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar, Final

from .errors import Code, LocalProtocolError
from .schema import (
    PROTOCOL_VERSION,
    ArrayOf,
    Blob,
    Did,
    Flag,
    Nested,
    OneOf,
    SetOf,
    Text,
    TextMap,
    Token,
    UInt,
    WireObject,
    wire,
)

__all__ = [
    "RecordType",
    "Record",
    "Action",
    "EncryptionKey",
    "NodeProfile",
    "Deposit",
    "AcceptedEntry",
    "DocumentHeader",
    "WrapSecret",
    "KeyWrap",
    "Scope",
    "Grant",
    "PrivateRestriction",
    "Revocation",
    "StateHead",
    "Tombstone",
    "AuditCheckpoint",
    "DeletionAttestation",
    "DepositDecision",
    "AccessReceipt",
    "BATCH_MAX_DOCS",
    "RECORD_CLASSES",
]

_ID: Final = Blob(size=32)  # record ids and document ids are SHA-256 digests
_VERSION: Final = UInt()
_MAX_SEALED: Final = 1024
BATCH_MAX_DOCS: Final = 256
"""At most this many documents in one receipt or key wrap: ``doc`` and up to 255 ``docs`` (15.21)."""
_MAX_BATCH_SEALED: Final = 20_480
"""A sealed wrap-secret of a batch: 256 keys and ids fit with room to spare."""
_OTHER_DOCS: Final = SetOf(_ID, max_items=BATCH_MAX_DOCS - 1, non_empty=True)


class RecordType(StrEnum):
    """The ``typ`` (COSE header 16) of each record; a signature for one never passes as another."""

    NODE_PROFILE = "fedrecord/node-profile"
    DEPOSIT = "fedrecord/deposit"
    ACCEPTED_ENTRY = "fedrecord/accepted-entry"
    DOCUMENT_HEADER = "fedrecord/document-header"
    KEY_WRAP = "fedrecord/key-wrap"
    GRANT = "fedrecord/grant"
    PRIVATE_RESTRICTION = "fedrecord/private-restriction"
    REVOCATION = "fedrecord/revocation"
    STATE_HEAD = "fedrecord/state-head"
    TOMBSTONE = "fedrecord/tombstone"
    DELETION_ATTESTATION = "fedrecord/deletion-attestation"
    DEPOSIT_DECISION = "fedrecord/deposit-decision"
    ACCESS_RECEIPT = "fedrecord/access-receipt"
    AUDIT_CHECKPOINT = "fedrecord/audit-checkpoint"


class Action(StrEnum):
    READ = "read"
    DEPOSIT = "deposit"
    DELEGATE = "delegate"
    MANAGE = "manage"


def _invalid(record: object, message: str) -> LocalProtocolError:
    return LocalProtocolError(Code.INVALID_RECORD, f"{type(record).__name__}: {message}")


class Record(WireObject):
    """A signed record's payload.  ``TYPE`` names it in the protected header."""

    TYPE: ClassVar[RecordType]
    v: int

    def validate(self) -> None:
        if self.v != PROTOCOL_VERSION:
            raise LocalProtocolError(Code.UNSUPPORTED_VERSION, f"protocol version {self.v} is not spoken")
        self.check_record()

    def check_record(self) -> None:
        """Cross-field rules of one record type."""


# --- node profile -----------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class EncryptionKey(WireObject):
    """One X25519 key of a node, with the window in which senders may use it (spec [ID-5])."""

    key: bytes = wire("key", Blob(size=32))
    nbf: int = wire("nbf", UInt())
    exp: int = wire("exp", UInt())

    def validate(self) -> None:
        if self.exp <= self.nbf:
            raise _invalid(self, "exp must be after nbf")


@dataclass(frozen=True, kw_only=True)
class NodeProfile(Record):
    """A node's signed self-description (US-1): name, role, endpoints, encryption keys."""

    TYPE: ClassVar[RecordType] = RecordType.NODE_PROFILE
    v: int = wire("v", _VERSION, default=PROTOCOL_VERSION)
    name: str = wire("name", Text(128))
    role: str = wire("role", OneOf("patient", "clinic", "device"))
    endpoints: tuple[str, ...] = wire("endpoints", SetOf(Text(512), max_items=8))
    enc_keys: tuple[EncryptionKey, ...] = wire(
        "enc", ArrayOf(Nested(EncryptionKey), max_items=8, non_empty=True)
    )
    versions: tuple[int, ...] = wire("versions", SetOf(UInt(), max_items=8, non_empty=True))
    seq: int = wire("seq", UInt())
    iat: int = wire("iat", UInt())
    patient: str | None = wire("patient", Did(), optional=True)

    def check_record(self) -> None:
        if PROTOCOL_VERSION not in self.versions:
            raise _invalid(self, "versions must include the version of this profile")
        if (self.role == "device") != (self.patient is not None):
            raise _invalid(self, "a device profile, and only a device profile, names its patient")

    def encryption_key_at(self, now: int) -> EncryptionKey | None:
        """The newest key valid at ``now``, or None."""
        valid = [k for k in self.enc_keys if k.nbf <= now < k.exp]
        return max(valid, key=lambda k: k.nbf) if valid else None


# --- documents ----------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class DocumentHeader(Record):
    """The author's signed description of a document; travels only inside its encryption."""

    TYPE: ClassVar[RecordType] = RecordType.DOCUMENT_HEADER
    v: int = wire("v", _VERSION, default=PROTOCOL_VERSION)
    patient: str = wire("patient", Did())
    title: str = wire("title", Text(256))
    doc_type: str = wire("type", Token())
    category: str = wire("category", Token())
    labels: tuple[str, ...] = wire("labels", SetOf(Token(), max_items=32))
    date: int = wire("date", UInt())
    media_type: str = wire("media", Text(128))
    size: int = wire("size", UInt())
    commitment: bytes = wire("commit", Blob(size=32))
    fhir: tuple[tuple[str, str], ...] | None = wire("fhir", TextMap(), optional=True)


@dataclass(frozen=True, kw_only=True)
class WrapSecret(WireObject):
    """The plaintext of a sealed key: the key and everything it is bound to (spec [WRAP-2]).

    Not a signed record: it is sealed inside a :class:`KeyWrap` or a
    :class:`Deposit`, whose outer fields must agree with it.
    """

    v: int = wire("v", _VERSION, default=PROTOCOL_VERSION)
    key: bytes = wire("key", Blob(size=32))
    doc: bytes = wire("doc", _ID)
    recipient: str = wire("recipient", Did())
    wrapper: str = wire("wrapper", Did())
    purpose: str = wire("purpose", Token())
    grant: bytes | None = wire("grant", _ID, optional=True)
    docs: tuple[bytes, ...] | None = wire("docs", _OTHER_DOCS, optional=True)
    keys: tuple[bytes, ...] | None = wire(
        "keys", ArrayOf(Blob(size=32), max_items=BATCH_MAX_DOCS - 1, non_empty=True), optional=True
    )

    def validate(self) -> None:
        # Sealed, so not a signed record, but versioned all the same (spec [WRAP-2]).
        if self.v != PROTOCOL_VERSION:
            raise LocalProtocolError(Code.UNSUPPORTED_VERSION, f"protocol version {self.v} is not spoken")
        # One key per further document, in the same order ([WRAP-6]).
        if (self.docs is None) != (self.keys is None) or (
            self.docs is not None and self.keys is not None and len(self.docs) != len(self.keys)
        ):
            raise _invalid(self, "keys holds one key for each id of docs")
        _check_other_docs(self, self.doc, self.docs)


@dataclass(frozen=True, kw_only=True)
class Deposit(Record):
    """A document offered to a patient's inbox, its key sealed to the patient (US-3)."""

    TYPE: ClassVar[RecordType] = RecordType.DEPOSIT
    v: int = wire("v", _VERSION, default=PROTOCOL_VERSION)
    patient: str = wire("patient", Did())
    doc: bytes = wire("doc", _ID)
    size: int = wire("size", UInt())
    recipient_key: bytes = wire("rk", Blob(size=32))
    sealed: bytes = wire("sealed", Blob(max_size=_MAX_SEALED))
    grant: bytes = wire("grant", _ID)
    iat: int = wire("iat", UInt())


@dataclass(frozen=True, kw_only=True)
class AcceptedEntry(Record):
    """The patient's opaque entry for an accepted document: no author, title, type or label."""

    TYPE: ClassVar[RecordType] = RecordType.ACCEPTED_ENTRY
    v: int = wire("v", _VERSION, default=PROTOCOL_VERSION)
    doc: bytes = wire("doc", _ID)
    padded_size: int = wire("psize", UInt())
    month: int = wire("month", UInt())

    def check_record(self) -> None:
        # Padded sizes are powers of two from 1 KiB up (spec [DOC-9]).
        if self.padded_size < 1024 or self.padded_size & (self.padded_size - 1):
            raise _invalid(self, "psize must be a power of two of at least 1024")
        if not 1 <= self.month % 100 <= 12:
            raise _invalid(self, "month is YYYYMM")


@dataclass(frozen=True, kw_only=True)
class KeyWrap(Record):
    """A document key sealed to one reader, signed by whoever wraps it (spec [WRAP-1])."""

    TYPE: ClassVar[RecordType] = RecordType.KEY_WRAP
    v: int = wire("v", _VERSION, default=PROTOCOL_VERSION)
    recipient: str = wire("recipient", Did())
    doc: bytes = wire("doc", _ID)
    purpose: str = wire("purpose", Token())
    grant: bytes | None = wire("grant", _ID, optional=True)
    recipient_key: bytes = wire("rk", Blob(size=32))
    sealed: bytes = wire("sealed", Blob(max_size=_MAX_BATCH_SEALED))
    iat: int = wire("iat", UInt())
    docs: tuple[bytes, ...] | None = wire("docs", _OTHER_DOCS, optional=True)

    def check_record(self) -> None:
        if self.docs is None and len(self.sealed) > _MAX_SEALED:
            raise _invalid(self, f"the sealed key of one document is at most {_MAX_SEALED} bytes")
        _check_other_docs(self, self.doc, self.docs)

    @property
    def documents(self) -> tuple[bytes, ...]:
        """Every document whose key the wrap carries: ``doc``, then ``docs``."""
        return (self.doc, *(self.docs or ()))


# --- capabilities -------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Scope(WireObject):
    """Which documents a grant covers (spec [CAP-20]).

    A document is in scope when its id is listed in ``ids``, or when the
    selector applies: ``past`` (documents that joined the record at or before
    the grant's ``iat``) or ``future`` (after it) is set, and the document's
    category is in ``categories`` (if given), it carries one of ``labels`` (if
    given) and its date lies in ``[since, until)`` (bounds if given).
    A scope shows only positive terms; exclusions are private restrictions.
    """

    ids: tuple[bytes, ...] | None = wire("ids", SetOf(_ID, max_items=256, non_empty=True), optional=True)
    categories: tuple[str, ...] | None = wire("cats", SetOf(Token(), non_empty=True), optional=True)
    labels: tuple[str, ...] | None = wire("labels", SetOf(Token(), non_empty=True), optional=True)
    since: int | None = wire("since", UInt(), optional=True)
    until: int | None = wire("until", UInt(), optional=True)
    past: bool = wire("past", Flag(), default=False)
    future: bool = wire("future", Flag(), default=False)

    @property
    def selects(self) -> bool:
        return self.past or self.future

    def validate(self) -> None:
        filtered = (self.categories, self.labels, self.since, self.until) != (None, None, None, None)
        if filtered and not self.selects:
            raise _invalid(self, "categories, labels or dates need past or future set")
        if self.since is not None and self.until is not None and self.until <= self.since:
            raise _invalid(self, "until must be after since")


@dataclass(frozen=True, kw_only=True)
class Grant(Record):
    """A capability: the issuer lets ``audience`` do ``actions`` on ``scope`` for a while (US-4)."""

    TYPE: ClassVar[RecordType] = RecordType.GRANT
    v: int = wire("v", _VERSION, default=PROTOCOL_VERSION)
    audience: str = wire("aud", Did())
    scope: Scope = wire("scope", Nested(Scope))
    actions: tuple[str, ...] = wire("act", SetOf(OneOf(*(a.value for a in Action)), non_empty=True))
    purpose: str = wire("purpose", Token())
    iat: int = wire("iat", UInt())
    nbf: int = wire("nbf", UInt())
    exp: int = wire("exp", UInt())
    parent: bytes | None = wire("parent", _ID, optional=True)
    nonce: bytes = wire("nonce", Blob(size=16))

    def check_record(self) -> None:
        if self.exp <= self.nbf:
            raise _invalid(self, "exp must be after nbf")
        if Action.READ.value in self.actions and not (self.scope.ids or self.scope.selects):
            raise _invalid(self, "a read grant must cover some documents")


@dataclass(frozen=True, kw_only=True)
class PrivateRestriction(Record):
    """What the patient hides from some grants or audiences; never shown to them (US-6)."""

    TYPE: ClassVar[RecordType] = RecordType.PRIVATE_RESTRICTION
    v: int = wire("v", _VERSION, default=PROTOCOL_VERSION)
    grants: tuple[bytes, ...] | None = wire("grants", SetOf(_ID, non_empty=True), optional=True)
    audiences: tuple[str, ...] | None = wire("auds", SetOf(Did(), non_empty=True), optional=True)
    labels: tuple[str, ...] | None = wire("labels", SetOf(Token(), non_empty=True), optional=True)
    categories: tuple[str, ...] | None = wire("cats", SetOf(Token(), non_empty=True), optional=True)
    ids: tuple[bytes, ...] | None = wire("ids", SetOf(_ID, max_items=256, non_empty=True), optional=True)
    iat: int = wire("iat", UInt())

    def check_record(self) -> None:
        if self.grants is None and self.audiences is None:
            raise _invalid(self, "name the grants or audiences it applies to")
        if self.labels is None and self.categories is None and self.ids is None:
            raise _invalid(self, "name the labels, categories or documents it hides")


@dataclass(frozen=True, kw_only=True)
class Revocation(Record):
    """Ends a grant and every grant delegated from it (US-5)."""

    TYPE: ClassVar[RecordType] = RecordType.REVOCATION
    v: int = wire("v", _VERSION, default=PROTOCOL_VERSION)
    grant: bytes = wire("grant", _ID)
    iat: int = wire("iat", UInt())
    reason: str | None = wire("reason", Text(256), optional=True)


@dataclass(frozen=True, kw_only=True)
class StateHead(Record):
    """The patient's sequence-numbered summary of its revocations (spec [HEAD-1]).

    It says nothing of the documents of the record: every grantee receives the head, and a count or
    digest of the record set would tell one how many documents are kept from it ([API-18]).
    """

    TYPE: ClassVar[RecordType] = RecordType.STATE_HEAD
    v: int = wire("v", _VERSION, default=PROTOCOL_VERSION)
    seq: int = wire("seq", UInt())
    iat: int = wire("iat", UInt())
    revocations: bytes = wire("revs", _ID)
    revocation_count: int = wire("nrevs", UInt())
    prev: bytes | None = wire("prev", _ID, optional=True)
    # Written by nodes of before [API-18]: read, so that the heads they signed still open, and ignored.
    legacy_records: bytes | None = wire("recs", _ID, optional=True)
    legacy_record_count: int | None = wire("nrecs", UInt(), optional=True)

    def check_record(self) -> None:
        if (self.seq == 0) != (self.prev is None):
            raise _invalid(self, "every head but the first names its predecessor")
        if (self.legacy_records is None) != (self.legacy_record_count is None):
            raise _invalid(self, "recs and nrecs come together")


# --- deletion, inbox decisions, audit -------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Tombstone(Record):
    """The patient withdraws a document from the shared record (US-7)."""

    TYPE: ClassVar[RecordType] = RecordType.TOMBSTONE
    v: int = wire("v", _VERSION, default=PROTOCOL_VERSION)
    doc: bytes = wire("doc", _ID)
    iat: int = wire("iat", UInt())


@dataclass(frozen=True, kw_only=True)
class AuditCheckpoint(Record):
    """The patient's node vouches for its audit log up to an entry; shared with the patient's devices."""

    TYPE: ClassVar[RecordType] = RecordType.AUDIT_CHECKPOINT
    v: int = wire("v", _VERSION, default=PROTOCOL_VERSION)
    seq: int = wire("seq", UInt())
    entry_hash: bytes = wire("hash", _ID)
    iat: int = wire("iat", UInt())

    def check_record(self) -> None:
        if self.seq < 1:
            raise _invalid(self, "seq counts audit entries from 1")


@dataclass(frozen=True, kw_only=True)
class DeletionAttestation(Record):
    """A node's answer to a tombstone: destroyed, or retained by its author until a date."""

    TYPE: ClassVar[RecordType] = RecordType.DELETION_ATTESTATION
    v: int = wire("v", _VERSION, default=PROTOCOL_VERSION)
    patient: str = wire("patient", Did())
    doc: bytes = wire("doc", _ID)
    tombstone: bytes = wire("tombstone", _ID)
    outcome: str = wire("outcome", OneOf("destroyed", "retained"))
    retain_until: int | None = wire("until", UInt(), optional=True)
    basis: str | None = wire("basis", Text(256), optional=True)
    iat: int = wire("iat", UInt())

    def check_record(self) -> None:
        retained = self.outcome == "retained"
        if retained != (self.retain_until is not None) or retained != (self.basis is not None):
            raise _invalid(self, "a retention, and only a retention, gives until and basis")


@dataclass(frozen=True, kw_only=True)
class DepositDecision(Record):
    """The patient accepts a deposit into the record or rejects it (US-3)."""

    TYPE: ClassVar[RecordType] = RecordType.DEPOSIT_DECISION
    v: int = wire("v", _VERSION, default=PROTOCOL_VERSION)
    deposit: bytes = wire("deposit", _ID)
    doc: bytes = wire("doc", _ID)
    decision: str = wire("decision", OneOf("accepted", "rejected"))
    iat: int = wire("iat", UInt())
    reason: str | None = wire("reason", Text(256), optional=True)


@dataclass(frozen=True, kw_only=True)
class AccessReceipt(Record):
    """A reader's signed request for a document; the patient logs it before sending a byte (US-8)."""

    TYPE: ClassVar[RecordType] = RecordType.ACCESS_RECEIPT
    v: int = wire("v", _VERSION, default=PROTOCOL_VERSION)
    patient: str = wire("patient", Did())
    doc: bytes = wire("doc", _ID)
    grant: bytes = wire("grant", _ID)
    action: str = wire("action", OneOf(Action.READ.value))
    purpose: str = wire("purpose", Token())
    iat: int = wire("iat", UInt())
    nonce: bytes = wire("nonce", Blob(size=16))
    docs: tuple[bytes, ...] | None = wire("docs", _OTHER_DOCS, optional=True)

    def check_record(self) -> None:
        _check_other_docs(self, self.doc, self.docs)

    @property
    def documents(self) -> tuple[bytes, ...]:
        """Every document the receipt asks for: ``doc``, then ``docs`` (a batch, 15.21)."""
        return (self.doc, *(self.docs or ()))


def _check_other_docs(record: object, doc: bytes, docs: tuple[bytes, ...] | None) -> None:
    # A batch names each document once: ``docs`` is a set and never repeats ``doc``.
    if docs is not None and doc in docs:
        raise _invalid(record, "docs must not repeat doc")


RECORD_CLASSES: Final[dict[RecordType, type[Record]]] = {
    cls.TYPE: cls
    for cls in (
        NodeProfile,
        Deposit,
        AcceptedEntry,
        DocumentHeader,
        KeyWrap,
        Grant,
        PrivateRestriction,
        Revocation,
        StateHead,
        Tombstone,
        DeletionAttestation,
        DepositDecision,
        AccessReceipt,
        AuditCheckpoint,
    )
}
