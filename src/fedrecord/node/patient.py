"""What the patient's home node does: invitations, the inbox, grants, fetches and the audit log.

Every method that a peer's request reaches first verifies with the core,
then writes inside one transaction that commits before the answer; a
refused request writes nothing.  Randomness and the clock come from here
(the adapter), never from the core.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from fedrecord.core import (
    AcceptedEntry,
    AccessReceipt,
    Action,
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
    open_record,
    sign_record,
)
from fedrecord.core.capabilities import Decision
from fedrecord.core.documents import DocumentReader, padded_size
from fedrecord.core.errors import AuthenticationError, LocalProtocolError
from fedrecord.core.identity import verify_ed25519
from fedrecord.core.key_wraps import open_deposit_key, wrap_key
from fedrecord.core.sealed_box import open_sealed, seal
from fedrecord.storage.sqlite import transaction

from .home import NodeHome
from .records_table import load_record, load_records, open_stored, store_record
from .wire import MAX_DOCUMENT, Invitation

DAY = 86_400
GENESIS_HASH = bytes(32)
AUDIT_DOMAIN = b"fedrecord/v0/audit-entry"


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


@dataclass(frozen=True)
class AuditEntry:
    seq: int
    reader: str
    doc: bytes
    grant: bytes
    purpose: str
    at: int
    entry_hash: bytes


def _not_found() -> RemoteProtocolError:
    # One answer for "absent", "outside your grant" and "hidden from you" (spec [CAP-12]).
    return RemoteProtocolError(Code.NOT_FOUND, "no such document")


class PatientNode:
    """The patient's side of the protocol, over an opened :class:`NodeHome`."""

    def __init__(self, home: NodeHome) -> None:
        self.home = home
        self.db = home.db

    # --- connecting ----------------------------------------------------------------

    async def create_invitation(self, *, label: str, now: int, ttl: int = 7 * DAY) -> Invitation:
        token = os.urandom(32)
        invitation = Invitation(
            node=self.home.did, endpoint=self.home.config.endpoint, token=token, expires=now + ttl
        )
        async with transaction(self.db):
            await self.db.execute(
                "INSERT INTO invitations (token_hash, label, expires) VALUES (?, ?, ?)",
                (hashlib.sha256(token).digest(), label, invitation.expires),
            )
        return invitation

    async def connect(self, *, requester: str, token: bytes, profile: bytes, now: int) -> Signed[Grant]:
        """A clinic presents an invitation token: it gets a deposit-only grant (US-2).

        Raises:
            RemoteProtocolError: ``not-found`` for an unknown token, ``replay``
                for a used one, ``expired`` for an expired one, the record
                codes for a bad profile.
        """
        clinic = open_record(profile, NodeProfile)
        if clinic.signer != requester:
            raise AuthenticationError()
        if type(token) is not bytes:
            raise RemoteProtocolError(Code.MALFORMED, "an invitation token is a byte string")
        token_hash = hashlib.sha256(token).digest()
        async with transaction(self.db):
            async with self.db.execute(
                "SELECT expires, used_by FROM invitations WHERE token_hash = ?", (token_hash,)
            ) as cursor:
                row = await cursor.fetchone()
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
            await store_record(self.db, grant, now=now, subject=requester.encode())
            await self.db.execute(
                "UPDATE invitations SET used_by = ?, grant_id = ? WHERE token_hash = ?",
                (requester, grant.id, token_hash),
            )
            await self._remember_peer(clinic)
        return grant

    async def _remember_peer(self, profile: Signed[NodeProfile]) -> None:
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

    async def peer_name(self, did: str) -> str:
        async with self.db.execute("SELECT name FROM peers WHERE did = ?", (did,)) as cursor:
            row = await cursor.fetchone()
        return str(row[0]) if row else did[:24] + "..."

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
        grant = await load_record(self.db, Grant, record.grant)
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
        if not verdict.allowed:
            assert verdict.reason is not None
            raise RemoteProtocolError(verdict.reason, verdict.message)
        async with self.db.execute("SELECT deposit FROM documents WHERE id = ?", (record.doc,)) as cursor:
            known = await cursor.fetchone()
        if known is not None:
            if known[0] == signed.id:
                return "known"
            raise RemoteProtocolError(Code.REPLAY, "this document was already deposited")
        async with self.db.execute(
            "SELECT 1 FROM records WHERE subject = ? AND typ IN (?, ?)",
            (record.doc, DepositDecision.TYPE.value, Tombstone.TYPE.value),
        ) as cursor:
            if await cursor.fetchone() is not None:
                # Rejected or deleted: the patient decided; the same document does not come back.
                raise RemoteProtocolError(Code.REPLAY, "this document was already rejected or deleted")
        if record.size > MAX_DOCUMENT:
            raise RemoteProtocolError(Code.TOO_LARGE, f"documents are capped at {MAX_DOCUMENT} bytes")
        keys = self.home.keys_for(record.recipient_key)
        if keys is None:
            raise RemoteProtocolError(
                Code.WRAP_MISMATCH, "the deposit is sealed to a key this node does not hold"
            )
        document_key = open_deposit_key(signed, patient=self.home.did, keys=keys).key
        size = await self.home.files.put(record.doc, ciphertext, max_size=record.size)
        try:
            if size != record.size:
                raise RemoteProtocolError(Code.TRUNCATED, "the document is shorter than its deposit says")
            header = await self._read_header(record.doc, document_key, author=requester)
            async with transaction(self.db):
                await store_record(self.db, signed, now=now, subject=record.doc)
                await self.db.execute(
                    "INSERT INTO documents (id, patient, state, author, deposit, title, doc_type, category,"
                    " labels, date, size, sealed_key) VALUES (?, ?, 'inbox', ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        record.doc,
                        self.home.did,
                        requester,
                        signed.id,
                        header.title,
                        header.doc_type,
                        header.category,
                        json.dumps(list(header.labels)),
                        header.date,
                        size,
                        self._seal_to_self(document_key),
                    ),
                )
        except BaseException:
            await self.home.files.destroy(record.doc)
            raise
        return "inbox"

    async def _read_header(self, doc: bytes, key: bytes, *, author: str | None) -> Any:
        reader = DocumentReader(key, expected_author=author, expected_patient=self.home.did)
        await decrypt_stored(self.home, doc, reader, keep=False)
        if reader.document_id != doc:
            raise RemoteProtocolError(Code.MALFORMED, "ciphertext does not match its document id")
        assert reader.header is not None
        return reader.header.record

    def _seal_to_self(self, key: bytes) -> bytes:
        return seal(key, self.home.encryption.public_key, os.urandom(32))

    def _unseal(self, sealed: bytes) -> bytes:
        for keys in reversed(self.home.encryption_keys):
            try:
                return open_sealed(sealed, keys)
            except RemoteProtocolError:
                continue
        raise LocalProtocolError(Code.DECRYPT_FAILED, "a stored document key does not open with our keys")

    async def inbox(self) -> list[InboxItem]:
        async with self.db.execute(
            "SELECT id, author, title, category, labels, date, size FROM documents WHERE state = 'inbox'"
            " ORDER BY rowid"
        ) as cursor:
            rows = await cursor.fetchall()
        return [
            InboxItem(
                doc=row[0],
                author=row[1],
                author_name=await self.peer_name(row[1]),
                title=row[2],
                category=row[3],
                labels=tuple(json.loads(row[4])),
                date=row[5],
                size=row[6],
            )
            for row in rows
        ]

    async def grants_that_would_see(
        self, doc: bytes, *, labels: Sequence[str] = (), now: int
    ) -> list[Signed[Grant]]:
        """The live grants that would let their audience read ``doc`` once accepted now (shown before accepting)."""
        facts = await self._facts(doc, extra_labels=labels, added=now)
        if facts is None:
            return []
        revocations = await self._revocations()
        restrictions = await self._restrictions()
        return [
            grant
            for grant in await self.live_grants(now=now)
            if decide(
                [grant],
                patient=self.home.did,
                requester=grant.record.audience,
                action=Action.READ,
                now=now,
                revocations=revocations,
                document=facts,
                restrictions=restrictions,
            ).allowed
        ]

    async def accept(self, doc: bytes, *, labels: Sequence[str] = (), now: int) -> Signed[AcceptedEntry]:
        """Accept a deposit into the record, with the labels the patient adds (US-3, US-6).

        Raises:
            RemoteProtocolError: ``not-found`` when ``doc`` is not in the inbox.
        """
        async with transaction(self.db):
            row = await self._inbox_row(doc)
            merged = sorted(set(json.loads(row["labels"])) | set(labels))
            decision = sign_record(
                DepositDecision(deposit=row["deposit"], doc=doc, decision="accepted", iat=now),
                self.home.identity,
            )
            month = int(_month(now))
            entry = sign_record(
                AcceptedEntry(doc=doc, padded_size=padded_size(row["size"]), month=month), self.home.identity
            )
            await store_record(self.db, decision, now=now, subject=doc)
            await store_record(self.db, entry, now=now, subject=doc)
            await self.db.execute(
                "UPDATE documents SET state = 'accepted', labels = ?, added = ? WHERE id = ?",
                (json.dumps(merged), now, doc),
            )
            await self._sign_head(now)
        return entry

    async def reject(self, doc: bytes, *, now: int) -> Signed[DepositDecision]:
        """Reject a deposit: destroyed here, and the depositor is told through the outbox (US-3)."""
        async with transaction(self.db):
            row = await self._inbox_row(doc)
            decision = sign_record(
                DepositDecision(deposit=row["deposit"], doc=doc, decision="rejected", iat=now),
                self.home.identity,
            )
            await store_record(self.db, decision, now=now, subject=doc)
            await self._forget_document(doc)
            await self.db.execute(
                "INSERT INTO outbox (kind, target, payload, next_at) VALUES ('decision', ?, ?, ?)",
                (row["author"], decision.encoded, now),
            )
        await self.home.files.destroy(doc)
        return decision

    async def _forget_document(self, doc: bytes) -> None:
        """Drop every copy of a document's key this node holds: its row and its deposit record (whose
        sealed box holds the key).  Decisions, tombstones and attestations stay.  In a transaction."""
        await self.db.execute("DELETE FROM documents WHERE id = ?", (doc,))
        await self.db.execute("DELETE FROM records WHERE typ = ? AND subject = ?", (Deposit.TYPE.value, doc))

    async def _inbox_row(self, doc: bytes) -> dict[str, Any]:
        async with self.db.execute(
            "SELECT deposit, labels, size, author FROM documents WHERE id = ? AND state = 'inbox'", (doc,)
        ) as cursor:
            row = await cursor.fetchone()
        if row is None:
            raise _not_found()
        return {"deposit": row[0], "labels": row[1], "size": row[2], "author": row[3]}

    # --- the record ------------------------------------------------------------------

    async def documents(self, *, include_hidden: bool = True) -> list[dict[str, Any]]:
        async with self.db.execute(
            "SELECT id, author, title, doc_type, category, labels, date, added, size, hidden FROM documents"
            " WHERE state = 'accepted' ORDER BY date, id"
        ) as cursor:
            rows = await cursor.fetchall()
        return [
            {
                "doc": row[0],
                "author": row[1],
                "title": row[2],
                "type": row[3],
                "category": row[4],
                "labels": json.loads(row[5]),
                "date": row[6],
                "added": row[7],
                "size": row[8],
                "hidden": bool(row[9]),
            }
            for row in rows
            if include_hidden or not row[9]
        ]

    async def read_own(self, doc: bytes) -> bytes:
        """The patient reads a document of the record (decrypted by the node)."""
        async with self.db.execute("SELECT sealed_key FROM documents WHERE id = ?", (doc,)) as cursor:
            row = await cursor.fetchone()
        if row is None or row[0] is None:
            raise _not_found()
        reader = DocumentReader(self._unseal(row[0]), expected_patient=self.home.did)
        return await decrypt_stored(self.home, doc, reader)

    async def label(self, doc: bytes, labels: Sequence[str], *, remove: bool = False) -> list[str]:
        async with transaction(self.db):
            async with self.db.execute("SELECT labels FROM documents WHERE id = ?", (doc,)) as cursor:
                row = await cursor.fetchone()
            if row is None:
                raise _not_found()
            current = set(json.loads(row[0]))
            merged = sorted(current - set(labels) if remove else current | set(labels))
            await self.db.execute("UPDATE documents SET labels = ? WHERE id = ?", (json.dumps(merged), doc))
        return merged

    async def _facts(
        self, doc: bytes, *, extra_labels: Sequence[str] = (), added: int | None = None
    ) -> DocumentFacts | None:
        async with self.db.execute(
            "SELECT category, labels, date, added, hidden FROM documents WHERE id = ?", (doc,)
        ) as cursor:
            row = await cursor.fetchone()
        if row is None:
            return None
        labels = frozenset(json.loads(row[1])) | frozenset(extra_labels)
        when = added if added is not None else row[3]
        if when is None:
            return None
        return DocumentFacts(id=doc, category=row[0], labels=labels, date=row[2], added=when)

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
        """Issue a grant, and the private restriction that hides ``hide_labels`` from it (US-4, US-6)."""
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
        async with transaction(self.db):
            await store_record(self.db, grant, now=now, subject=audience.encode())
            if hide_labels:
                restriction = sign_record(
                    PrivateRestriction(grants=(grant.id,), labels=tuple(hide_labels), iat=now),
                    self.home.identity,
                )
                await store_record(self.db, restriction, now=now, subject=grant.id)
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
                labels=tuple(labels) or None,
                categories=tuple(categories) or None,
                iat=now,
            ),
            self.home.identity,
        )
        async with transaction(self.db):
            await store_record(self.db, restriction, now=now, subject=grant)
        return restriction

    async def live_grants(self, *, now: int) -> list[Signed[Grant]]:
        revoked = await self._revocations()
        return [
            grant
            for grant in await load_records(self.db, Grant, signer=self.home.did)
            if now < grant.record.exp and not revoked.revoked_by(grant.id)
        ]

    async def all_grants(self) -> list[Signed[Grant]]:
        return await load_records(self.db, Grant, signer=self.home.did)

    async def revoke(self, grant_id: bytes, *, now: int, reason: str | None = None) -> Signed[Revocation]:
        """Revoke a grant (and so every grant delegated from it) and sign a new state head (US-5)."""
        if await load_record(self.db, Grant, grant_id) is None:
            raise _not_found()
        revocation = sign_record(Revocation(grant=grant_id, iat=now, reason=reason), self.home.identity)
        async with transaction(self.db):
            await store_record(self.db, revocation, now=now, subject=grant_id)
            await self._sign_head(now)
        return revocation

    async def _revocations(self) -> RevocationSet:
        return RevocationSet.from_records(await load_records(self.db, Revocation))

    async def _restrictions(self) -> list[Signed[PrivateRestriction]]:
        return await load_records(self.db, PrivateRestriction, signer=self.home.did)

    async def state_head(self, *, now: int) -> Signed[StateHead]:
        heads = await load_records(self.db, StateHead, signer=self.home.did)
        if heads:
            return max(heads, key=lambda head: head.record.seq)
        async with transaction(self.db):
            return await self._sign_head(now)

    async def _sign_head(self, now: int) -> Signed[StateHead]:
        """A new head summarising revocations and the record set.  Call inside a transaction."""
        heads = await load_records(self.db, StateHead, signer=self.home.did)
        previous = max(heads, key=lambda head: head.record.seq) if heads else None
        revoked = sorted(r.record.grant for r in await load_records(self.db, Revocation))
        async with self.db.execute("SELECT id FROM documents WHERE state = 'accepted' ORDER BY id") as cursor:
            docs = [row[0] for row in await cursor.fetchall()]
        head = sign_record(
            StateHead(
                seq=previous.record.seq + 1 if previous else 0,
                iat=now,
                revocations=hashlib.sha256(b"".join(revoked)).digest(),
                revocation_count=len(revoked),
                records=hashlib.sha256(b"".join(docs)).digest(),
                record_count=len(docs),
                prev=previous.id if previous else None,
            ),
            self.home.identity,
        )
        await store_record(self.db, head, now=now)
        return head

    async def state_for(self, requester: str, *, now: int) -> dict[str, Any]:
        """What a peer polls: the newest head, revocations, tombstones and the grants addressed to it."""
        head = await self.state_head(now=now)
        return {
            "head": head.encoded,
            "revocations": [r.encoded for r in await load_records(self.db, Revocation)],
            "tombstones": [t.encoded for t in await load_records(self.db, Tombstone, signer=self.home.did)],
            "grants": [
                g.encoded
                for g in await load_records(self.db, Grant, signer=self.home.did, subject=requester.encode())
            ],
        }

    # --- reads by other nodes -----------------------------------------------------------

    async def _decide(
        self, requester: str, chain: Sequence[bytes], *, now: int, document: DocumentFacts | None = None
    ) -> Decision:
        grants = [open_record(link, Grant) for link in chain]
        return decide(
            grants,
            patient=self.home.did,
            requester=requester,
            action=Action.READ,
            now=now,
            revocations=await self._revocations(),
            document=document,
            restrictions=await self._restrictions(),
        )

    async def documents_for(
        self, requester: str, chain: Sequence[bytes], *, now: int
    ) -> list[dict[str, Any]]:
        """The listing a grantee may see: only documents its chain reaches; hidden ones leave no trace."""
        verdict = await self._decide(requester, chain, now=now)
        if not verdict.allowed:
            assert verdict.reason is not None
            raise RemoteProtocolError(verdict.reason, verdict.message)
        listing = []
        for item in await self.documents(include_hidden=False):
            facts = await self._facts(item["doc"])
            if facts is not None and (await self._decide(requester, chain, now=now, document=facts)).allowed:
                listing.append(
                    {
                        "doc": item["doc"],
                        "size": item["size"],
                        "category": item["category"],
                        "date": item["date"],
                    }
                )
        return listing

    async def fetch(
        self,
        requester: str,
        chain: Sequence[bytes],
        receipt: bytes,
        *,
        now: int,
        offered_profile: bytes | None = None,
    ) -> tuple[Signed[KeyWrap], int, AsyncIterator[bytes]]:
        """Serve a document under a grant: the receipt is committed to the audit log before any byte (US-8).

        Raises:
            RemoteProtocolError: ``not-found`` for absent, out-of-scope and
                restricted documents alike; the decision's code otherwise.
        """
        signed_receipt = open_record(receipt, AccessReceipt)
        request = signed_receipt.record
        if signed_receipt.signer != requester:
            raise AuthenticationError()
        if request.patient != self.home.did:
            raise RemoteProtocolError(Code.WRONG_AUDIENCE, "the receipt names another patient")
        if not chain or open_record(chain[-1], Grant).id != request.grant:
            raise RemoteProtocolError(Code.BROKEN_CHAIN, "the receipt does not name the chain's last grant")
        # Chain refusals first, without the document: they must not depend on whether it exists [CAP-12].
        chain_verdict = await self._decide(requester, chain, now=now)
        if not chain_verdict.allowed:
            assert chain_verdict.reason is not None
            raise RemoteProtocolError(chain_verdict.reason, chain_verdict.message)
        facts = await self._facts(request.doc)
        hidden = await self._is_hidden(request.doc)
        verdict = await self._decide(requester, chain, now=now, document=facts) if facts else None
        if verdict is None or hidden or verdict.reason in (Code.OUT_OF_SCOPE, Code.RESTRICTED):
            raise _not_found()
        if not verdict.allowed:
            assert verdict.reason is not None
            raise RemoteProtocolError(verdict.reason, verdict.message)
        profile = await self.peer_profile(requester)
        if offered_profile is not None:
            # A delegate is not a connected peer: it shows its signed profile with the request (US-9).
            offered = open_record(offered_profile, NodeProfile)
            if offered.signer != requester:
                raise AuthenticationError()
            if profile is None or offered.record.seq >= profile.record.seq:
                profile = offered
                async with transaction(self.db):
                    await self._remember_peer(offered)
        reader_key = profile.record.encryption_key_at(now) if profile else None
        if reader_key is None:
            raise RemoteProtocolError(Code.BAD_KEY, "no encryption key known for the reader")
        async with self.db.execute(
            "SELECT sealed_key, size FROM documents WHERE id = ?", (request.doc,)
        ) as cur:
            row = await cur.fetchone()
        assert row is not None
        key = self._unseal(row[0])
        wrap = wrap_key(
            wrapper=self.home.identity,
            recipient=requester,
            recipient_key=reader_key.key,
            doc=request.doc,
            key=key,
            purpose=request.purpose,
            grant=request.grant,
            iat=now,
            ephemeral_seed=os.urandom(32),
        )
        async with transaction(self.db):
            await self._append_audit(signed_receipt, now=now)
        chunks = await self.home.files.open(request.doc)
        if chunks is None:
            raise _not_found()
        return wrap, row[1], chunks

    async def _is_hidden(self, doc: bytes) -> bool:
        async with self.db.execute("SELECT hidden FROM documents WHERE id = ?", (doc,)) as cursor:
            row = await cursor.fetchone()
        return bool(row and row[0])

    async def hide(self, doc: bytes, hidden: bool = True) -> None:
        async with transaction(self.db):
            cursor = await self.db.execute("UPDATE documents SET hidden = ? WHERE id = ?", (int(hidden), doc))
            if cursor.rowcount == 0:
                raise _not_found()

    # --- audit log -------------------------------------------------------------------------

    async def _append_audit(self, receipt: Signed[AccessReceipt], *, now: int) -> None:
        """Countersign a receipt into the hash chain.  Call inside a transaction.

        Raises:
            RemoteProtocolError: ``replay`` for a receipt already logged (each read is one receipt).
        """
        async with self.db.execute("SELECT 1 FROM audit WHERE receipt_id = ?", (receipt.id,)) as cursor:
            if await cursor.fetchone() is not None:
                raise RemoteProtocolError(Code.REPLAY, "this access receipt was already used")
        async with self.db.execute("SELECT seq, entry_hash FROM audit ORDER BY seq DESC LIMIT 1") as cursor:
            last = await cursor.fetchone()
        seq, prev_hash = (last[0] + 1, last[1]) if last else (1, GENESIS_HASH)
        entry_hash = _audit_hash(seq, prev_hash, receipt.id, now)
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
                now,
                prev_hash,
                entry_hash,
                self.home.identity.sign(entry_hash),
            ),
        )

    async def audit_log(self) -> list[AuditEntry]:
        async with self.db.execute(
            "SELECT seq, reader, doc, grant_id, purpose, at, entry_hash FROM audit ORDER BY seq"
        ) as cursor:
            rows = await cursor.fetchall()
        return [AuditEntry(*row) for row in rows]

    async def verify_audit(self) -> tuple[bool, int, str]:
        """Walk the chain: every receipt verifies, every hash links, every countersignature holds.

        Returns:
            (ok, entries checked, message naming the first broken entry).
        """
        prev_hash = GENESIS_HASH
        count = 0
        async with self.db.execute(
            "SELECT seq, receipt, at, prev_hash, entry_hash, countersignature FROM audit ORDER BY seq"
        ) as cursor:
            rows = await cursor.fetchall()
        for seq, receipt, at, stored_prev, entry_hash, countersignature in rows:
            try:
                signed = open_record(receipt, AccessReceipt)
                verify_ed25519(self.home.identity.public_key, entry_hash, countersignature)
            except RemoteProtocolError as exc:
                return False, count, f"entry {seq}: {exc.code.value}"
            if stored_prev != prev_hash or entry_hash != _audit_hash(seq, prev_hash, signed.id, at):
                return False, count, f"entry {seq}: the hash chain is broken"
            prev_hash = entry_hash
            count += 1
        return True, count, "the audit chain verifies"

    # --- deletion -----------------------------------------------------------------------

    async def delete(self, doc: bytes, *, now: int) -> Signed[Tombstone]:
        """Withdraw a document: tombstone, key and ciphertext destroyed here, new state head (US-7)."""
        async with self.db.execute("SELECT state FROM documents WHERE id = ?", (doc,)) as cursor:
            if await cursor.fetchone() is None:
                raise _not_found()
        tombstone = sign_record(Tombstone(doc=doc, iat=now), self.home.identity)
        async with transaction(self.db):
            await store_record(self.db, tombstone, now=now, subject=doc)
            await self._forget_document(doc)
            await self._sign_head(now)
        await self.home.files.destroy(doc)
        return tombstone

    async def receive_attestation(self, requester: str, attestation: bytes, *, now: int) -> None:
        signed = open_record(attestation, DeletionAttestation)
        if signed.signer != requester or signed.record.patient != self.home.did:
            raise AuthenticationError()
        tombstone = await load_record(self.db, Tombstone, signed.record.tombstone)
        if tombstone is None or tombstone.record.doc != signed.record.doc:
            raise _not_found()
        async with transaction(self.db):
            await store_record(self.db, signed, now=now, subject=signed.record.doc)

    async def attestations(self, doc: bytes) -> list[Signed[DeletionAttestation]]:
        return await load_records(self.db, DeletionAttestation, subject=doc)


def _audit_hash(seq: int, prev_hash: bytes, receipt_id: bytes, at: int) -> bytes:
    return hashlib.sha256(
        AUDIT_DOMAIN + seq.to_bytes(8, "big") + prev_hash + receipt_id + at.to_bytes(8, "big")
    ).digest()


def _month(now: int) -> str:
    return time.strftime("%Y%m", time.gmtime(now))


async def decrypt_stored(home: NodeHome, doc: bytes, reader: DocumentReader, *, keep: bool = True) -> bytes:
    """Decrypt a stored ciphertext file with the core's (synchronous) reader, in a worker thread.

    Returns the content, or nothing when ``keep`` is false (the caller only
    wants the checks and the header).

    Raises:
        RemoteProtocolError: ``not-found`` when the file is missing; the reader's codes.
    """
    path = home.files.path_of(doc)

    def run() -> bytes:
        try:
            with path.open("rb") as file:
                pieces = reader.decrypt(iter(lambda: file.read(1 << 16), b""))
                if keep:
                    return b"".join(pieces)
                for _piece in pieces:
                    pass
                return b""
        except FileNotFoundError:
            raise _not_found() from None

    return await asyncio.to_thread(run)
