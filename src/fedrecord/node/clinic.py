"""What a clinic node does: connect from an invitation, deposit through an outbox, fetch, poll.

Deposits go into the outbox inside the same transaction that stores the
authored document, so an acknowledged deposit is never lost: the outbox
retries with backoff while the patient's node is offline (US-11).  The
patient's state, polled or pushed on its event stream (:mod:`.subscriptions`),
is applied by one method, :meth:`ClinicNode.apply_state`: keys and copies
held under a revoked grant are destroyed, deleted documents are destroyed
and attested (US-5, US-7).

Documents of any size (up to the cap) stream through: a deposit is read and
encrypted from its file piece by piece, a fetch is written to disk as it
arrives and decrypted from there.  A fetch cut short keeps what arrived, and
the next fetch of the document asks only for the rest (spec section 15.15,
:mod:`fedrecord.node.resume`); those bytes die with the document or the grant
they came under, as a copy would.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Final, NamedTuple, TypeVar

from fedrecord.core import (
    AcceptedEntry,
    AccessReceipt,
    Action,
    Code,
    Decision,
    DeletionAttestation,
    Deposit,
    DepositDecision,
    DocumentHeader,
    Grant,
    KeyWrap,
    NodeProfile,
    Record,
    RemoteProtocolError,
    Revocation,
    RevocationSet,
    Signed,
    StateHead,
    Tombstone,
    cbor,
    decide,
    open_record,
    sign_record,
)
from fedrecord.core.documents import DocumentReader, DocumentWriter, check_whole_stream
from fedrecord.core.errors import AuthenticationError, LocalProtocolError
from fedrecord.core.key_wraps import make_deposit, unwrap_key, unwrap_keys
from fedrecord.core.lifecycle import DocumentState, Event, kept_state, next_state
from fedrecord.core.reconcile import SortedItems
from fedrecord.core.signed import reopen_record
from fedrecord.core.stream import CHUNK_SIZE, key_commitment
from fedrecord.storage.partial import PartialDownload

from .client import PeerClient, PeerUnreachable, Progress, b64, counted, unb64
from .home import NodeHome
from .keys_at_rest import unwrap_at_rest, wrap_at_rest
from .patient import decrypt_stored, read_stored
from .records_table import open_stored
from .resume import RESTARTABLE, KeptStream, resume_point, stream_span
from .store import SharedCopy
from .sync import DEVICE_TYPES, SyncReport, item_of, subject_of, sync_with_patient
from .sync import Progress as SyncProgress
from .wire import MAX_DOCUMENT, Invitation, StateAnswer, api_url, check_profile_endpoints

log = logging.getLogger("fedrecord.node")
R = TypeVar("R", bound=Record)

MAX_BACKOFF = 300
# How old the patient's state head may be for this node to read a shared copy it holds [HEAD-4].
MAX_HEAD_AGE = 300
# Authored documents are the clinic's own legal record: kept for ten years when the patient deletes.
RETENTION = 10 * 365 * 86_400


MAX_DELEGATED_PATIENTS: Final = 256
"""Patients a clinic may hold through delegations alone; one more delegation is ``too-many`` ([API-31]).

A delegation may come from a node this clinic never met, about a patient it
never met (US-9), whose profile -- and so the endpoint this clinic then polls --
that node may have made itself.  Nothing tells such a patient from a real one,
so their number is bounded: a stranger cannot grow the database or the polling
without end.
"""
DELEGATION_SWEEP_EVERY: Final = 60
"""Seconds between two looks for dead delegations when the bound is reached."""
CHECK_SLICE: Final = 32
"""Fetched copies checked between two turns of the event loop (about 5 ms for 1 KiB documents)."""
CHECK_SLICE_BYTES: Final = 256 * 1024
"""Bytes of fetched streams checked between two turns of the event loop (about 1 ms of decryption)."""


@dataclass(frozen=True)
class Connection:
    patient: str
    name: str
    endpoint: str
    head_seq: int


@dataclass(frozen=True)
class _Fetch:
    """A fetch of one document under one chain: what each of its attempts sends, and to whom."""

    endpoint: str
    patient: str
    doc: bytes
    chain: list[Signed[Grant]]
    now: int
    progress: Progress | None


class ClinicNode:
    """The clinic's side of the protocol, over an opened :class:`NodeHome`."""

    def __init__(self, home: NodeHome, client: PeerClient | None = None) -> None:
        self.home = home
        self.store = home.store
        self.client = client or PeerClient(home.identity)
        self._applying: dict[str, asyncio.Lock] = {}
        self._delegations_swept = 0  # when dead delegations were last looked for
        self._flushing = asyncio.Lock()

    # --- connecting ---------------------------------------------------------------------

    async def connect(self, invitation_text: str, *, now: int) -> Connection:
        """Present an invitation to the patient's node; keep the deposit-only grant it returns (US-2)."""
        invitation = Invitation.parse(invitation_text)
        answer = await self.client.call(
            "POST",
            api_url(invitation.endpoint, "/v0/connect"),
            expected_signer=invitation.node,
            token=invitation.token,
            profile=self.home.profile.encoded,
        )
        grant = open_record(answer["grant"], Grant)
        profile = open_record(answer["profile"], NodeProfile)
        if grant.signer != invitation.node or profile.signer != invitation.node:
            raise AuthenticationError()
        if grant.record.audience != self.home.did or Action.DEPOSIT not in grant.record.actions:
            raise RemoteProtocolError(Code.WRONG_AUDIENCE, "the grant is not a deposit grant for this node")
        async with self.store.transaction():
            await self.store.save_connection(
                invitation.node,
                endpoint=invitation.endpoint,
                profile=profile.encoded,
                deposit_grant=grant.encoded,
            )
            await self.store.put_record(grant, now=now, subject=self.home.did.encode())
        return Connection(invitation.node, profile.record.name, invitation.endpoint, -1)

    async def connections(self) -> list[Connection]:
        rows = await self.store.connections()
        return [
            Connection(
                row.patient, open_record(row.profile, NodeProfile).record.name, row.endpoint, row.head_seq
            )
            for row in rows
        ]

    async def _connection(self, patient: str) -> dict[str, Any]:
        row = await self.store.connection(patient)
        if row is None:
            raise RemoteProtocolError(Code.NOT_FOUND, "not connected to this patient")
        # Our own stored records, the same bytes on every call: verified once, then from the cache.
        return {
            "endpoint": row.endpoint,
            "profile": open_stored(row.profile, NodeProfile),
            "deposit_grant": open_stored(row.deposit_grant, Grant) if row.deposit_grant is not None else None,
            "head_seq": row.head_seq,
        }

    # --- depositing -----------------------------------------------------------------------

    async def deposit(
        self,
        patient: str,
        content: bytes | Path,
        *,
        title: str,
        category: str,
        doc_type: str,
        labels: Sequence[str] = (),
        media_type: str = "text/plain",
        date: int | None = None,
        now: int,
    ) -> bytes:
        """Encrypt a document for ``patient`` and queue its deposit (US-3).  Returns the document id.

        The document is stored as this clinic's own record and the deposit
        is in the outbox once this returns: it survives a crash or an
        offline patient node.

        Args:
            content: the document, or the path of a file holding it, read and
                encrypted 64 KiB at a time in a worker thread (flat memory for
                any size up to the cap).

        Raises:
            RemoteProtocolError: ``not-found`` when not connected to ``patient``,
                ``bad-key`` when its profile has no current encryption key.
            LocalProtocolError: ``too-large`` for a document over the cap,
                ``invalid-record`` for a file that changed size while read.
            OSError: the file cannot be read.
        """
        connection = await self._connection(patient)
        patient_key = connection["profile"].record.encryption_key_at(now)
        if patient_key is None:
            raise RemoteProtocolError(Code.BAD_KEY, "the patient's profile has no current encryption key")
        with contextlib.ExitStack() as closing:
            if isinstance(content, Path):
                file = closing.enter_context(content.open("rb"))
                length = os.fstat(file.fileno()).st_size
                pieces: Iterable[bytes] = iter(lambda: file.read(CHUNK_SIZE), b"")
            else:
                length, pieces = len(content), [content]
            if length > MAX_DOCUMENT:
                raise LocalProtocolError(Code.TOO_LARGE, f"documents are capped at {MAX_DOCUMENT} bytes")
            key, prefix = os.urandom(32), os.urandom(16)
            header = DocumentHeader(
                patient=patient,
                title=title,
                doc_type=doc_type,
                category=category,
                labels=tuple(labels),
                date=now if date is None else date,
                media_type=media_type,
                size=length,
                commitment=key_commitment(key, prefix),
            )
            writer = DocumentWriter(self.home.identity, header, key=key, prefix=prefix)
            # The id is the hash of the whole ciphertext: the files store names it once it is written.
            doc, size = await self.home.files.add(
                pulled_in_thread(writer.encrypt(pieces)), max_size=MAX_DOCUMENT
            )
        deposit = make_deposit(
            depositor=self.home.identity,
            patient=patient,
            patient_key=patient_key.key,
            doc=doc,
            size=size,
            key=key,
            grant=connection["deposit_grant"].id,
            iat=now,
            ephemeral_seed=os.urandom(32),
        )
        async with self.store.transaction():
            state = kept_state(await self.store.document_state(doc), Event.AUTHOR)
            await self.store.insert_document(
                state=state,
                doc=doc,
                patient=patient,
                author=self.home.did,
                deposit=deposit.id,
                title=title,
                doc_type=doc_type,
                category=category,
                labels=json.dumps(sorted(labels)),
                date=header.date,
                added=now,
                size=size,
                sealed_key=wrap_at_rest(key, self.home.encryption, doc=doc),
            )
            await self.store.put_record(deposit, now=now, subject=doc)
            await self.store.queue_outbox("deposit", target=patient, payload=deposit.encoded, now=now)
        return doc

    async def deposit_refusal(self, doc: bytes) -> str | None:
        """Why the patient's node refused the deposit of ``doc`` for good (the outbox stopped), or None."""
        for payload, reason in await self.store.refused_outbox("deposit"):
            if open_stored(payload, Deposit).record.doc == doc:
                return reason
        return None

    async def flush_outbox(
        self, *, now: int | None = None, progress: Progress | None = None
    ) -> tuple[int, int]:
        """Send what is due; returns (sent, still pending).  Unreachable peers are retried with backoff."""
        # One flush at a time: the serve loop and an event stream's attestations may both ask for one.
        async with self._flushing:
            return await self._flush_outbox(now=int(time.time()) if now is None else now, progress=progress)

    async def _flush_outbox(self, *, now: int, progress: Progress | None) -> tuple[int, int]:
        due = await self.store.due_outbox(now)
        sent = 0
        for item_id, kind, target, payload, attempts in due:
            try:
                await self._send(kind, target, payload, progress)
            except PeerUnreachable as exc:
                delay = min(MAX_BACKOFF, 2**attempts)
                async with self.store.transaction():
                    await self.store.outbox_retry(item_id, next_at=now + delay, error=str(exc))
                continue
            except (AuthenticationError, LocalProtocolError) as exc:
                # An answer we cannot authenticate is no answer (a forger must not cancel a deposit);
                # an entry not sent at all (an endpoint kept by an older version that is no URL) is
                # kept too, so that nothing queued is lost and the other entries still go [API-74].
                why = "unauthenticated answer" if isinstance(exc, AuthenticationError) else exc.message
                delay = min(MAX_BACKOFF, 2**attempts)
                async with self.store.transaction():
                    await self.store.outbox_retry(item_id, next_at=now + delay, error=f"{exc.code.value}: {why}")
                continue
            except RemoteProtocolError as exc:
                # Refused for good: keep the reason, stop retrying.
                async with self.store.transaction():
                    await self.store.outbox_done(item_id, f"{exc.code.value}: {exc.message}")
                continue
            async with self.store.transaction():
                await self.store.outbox_done(item_id)
            sent += 1
        return sent, await self.store.outbox_pending()

    async def _send(self, kind: str, target: str, payload: bytes, progress: Progress | None = None) -> None:
        connection = await self._connection(target)
        if kind == "deposit":
            # Our own record, signed when it was queued, read for its document id: the patient's node
            # verifies it (reopen_record).
            deposit = reopen_record(payload, Deposit)
            chunks = await self.home.files.open(deposit.record.doc)
            if chunks is None:
                raise RemoteProtocolError(Code.NOT_FOUND, "the deposited document is gone")
            await self.client.upload(
                api_url(connection["endpoint"], f"/v0/documents/{deposit.record.doc.hex()}"),
                chunks,
                {"Fedrecord-Deposit": b64(payload)},
                progress=progress,
                total=deposit.record.size,
                expected_signer=target,
            )
        elif kind == "attestation":
            # "destroyed" is said only once it is true: what a process killed after the commit left
            # of the copy is destroyed first, by whichever process sends ([API-27]).
            doc = reopen_record(payload, DeletionAttestation).record.doc
            if doc in await self.store.doomed():
                await self.home.destroyed(doc)
            await self.client.call(
                "POST",
                api_url(connection["endpoint"], "/v0/attestations"),
                expected_signer=target,
                attestation=payload,
            )

    async def outbox(self) -> list[dict[str, Any]]:
        rows = await self.store.outbox_items()
        return [
            {
                "id": r.id,
                "kind": r.kind,
                "target": r.target,
                "attempts": r.attempts,
                "next_at": r.next_at,
                "error": r.last_error,
                "done": bool(r.done),
            }
            for r in rows
        ]

    async def receive_decision(self, requester: str, decision: bytes, *, now: int) -> None:
        signed = open_record(decision, DepositDecision)
        if signed.signer != requester:
            raise AuthenticationError()
        author_for = await self.store.authored_for(signed.record.doc)
        if author_for is None or author_for != requester:
            raise RemoteProtocolError(Code.NOT_FOUND, "no such deposit")
        async with self.store.transaction():
            await self.store.put_record(signed, now=now, subject=signed.record.doc)

    # --- reading ---------------------------------------------------------------------------

    async def _held_chains(self, patient: str) -> list[list[Signed[Grant]]]:
        """Every grant chain from ``patient`` this node holds, live or not: its own grants, then delegations."""
        chains = [
            [grant]
            for grant in await self.store.records(Grant, signer=patient, subject=self.home.did.encode())
        ]
        for _leaf, encoded in await self.store.delegations(patient):
            chains.append([open_record(link, Grant) for link in cbor.decode(encoded)])
        return chains

    async def chains_from(self, patient: str, *, now: int) -> list[list[Signed[Grant]]]:
        """The live grant chains that let this node read from ``patient``: its own grants, then delegations."""
        return [chain for chain, decision in await self._decided_chains(patient, now=now) if decision.allowed]

    async def _decided_chains(self, patient: str, *, now: int) -> list[tuple[list[Signed[Grant]], Decision]]:
        """Every chain held from ``patient``, with the decision of reading under it now."""
        revocations = await self.store.revocation_set()
        # The same decision the patient's node makes, without a document: only revocations by an
        # issuer up the chain count [CAP-7].
        return [
            (
                chain,
                decide(
                    chain,
                    patient=patient,
                    requester=self.home.did,
                    action=Action.READ,
                    now=now,
                    revocations=revocations,
                ),
            )
            for chain in await self._held_chains(patient)
        ]

    async def _chains_to_read(
        self, patient: str, *, now: int, under: bytes | None = None
    ) -> list[list[Signed[Grant]]]:
        """The live chains to read from ``patient`` under, as :meth:`chains_from` (the one whose last grant
        is ``under`` first); never none.

        Raises:
            RemoteProtocolError: when none is live, the code the patient's node would refuse the
                newest chain that lists ``read`` with (``revoked``, ``expired``,
                ``not-yet-valid``...); ``not-found`` when no chain lists ``read``.
        """
        decided = await self._decided_chains(patient, now=now)
        chains = [chain for chain, decision in decided if decision.allowed]
        if chains:
            return sorted(chains, key=lambda chain: chain[-1].id != under)  # stable: the others keep their order
        readers = [(chain, decision) for chain, decision in decided if Action.READ in chain[-1].record.actions]
        if not readers:
            raise RemoteProtocolError(Code.NOT_FOUND, "no read grant from this patient")
        _, refusal = max(readers, key=lambda decided: decided[0][-1].record.iat)
        assert refusal.reason is not None
        raise RemoteProtocolError(refusal.reason, refusal.message)

    async def grants_from(self, patient: str, *, now: int) -> list[Signed[Grant]]:
        """The last link of each live chain from ``patient``."""
        return [chain[-1] for chain in await self.chains_from(patient, now=now)]

    async def listing(self, patient: str, *, now: int) -> list[dict[str, Any]]:
        """What this node may fetch from ``patient``, under each of its read grants."""
        connection = await self._connection(patient)
        result = []
        for chain in await self.chains_from(patient, now=now):
            answer = await self.client.call(
                "POST",
                api_url(connection["endpoint"], "/v0/list"),
                expected_signer=patient,
                chain=[link.encoded for link in chain],
                profile=self.home.profile.encoded,
            )
            for item in answer["documents"]:
                result.append({**item, "grant": chain[-1].id})
        return result

    async def fetch(
        self, patient: str, doc: bytes, *, now: int, progress: Progress | None = None, under: bytes | None = None
    ) -> bytes:
        """Fetch, verify and decrypt a document under a grant; the signed request is the receipt (US-4, US-8).

        A transfer cut short is resumed by the next fetch of the document
        ([API-42]); see :meth:`fetch_into` for documents too large to hold.

        Args:
            under: the id of the last grant of the chain to ask under first (a sync knows which view
                holds the document's entry); the other live chains are tried after it.

        Raises:
            RemoteProtocolError: ``not-found`` when no grant lists ``read``; the decision's code
                (``revoked``, ``expired``, ``not-yet-valid``...) when none is live; the patient
                node's refusal.
            PeerUnreachable: the patient's node did not answer, or the transfer was cut.
        """
        pieces: list[bytes] = []
        await self._fetch(patient, doc, pieces.append, now=now, progress=progress, under=under)
        return b"".join(pieces)

    async def fetch_batch(
        self, patient: str, docs: Sequence[bytes], *, now: int, under: bytes | None = None
    ) -> dict[bytes, str]:
        """Fetch several small documents with one request, one receipt and one key wrap (15.21), under the
        first live chain that reaches them all (the one whose last grant is ``under`` first, as :meth:`fetch`).

        Every stream is checked on its own ([API-72]): a document whose stream
        or header fails is not kept, the others are, each as a copy as
        :meth:`fetch` keeps it.  The batch key wrap itself is not kept: it
        carries the keys of every document of the batch, and destroying one
        copy must destroy that copy's key (each copy keeps its own key, sealed
        to this node, as a single fetch does).

        Returns:
            The refusal code of each document that was not kept, by id (empty
            when all were).

        Raises:
            RemoteProtocolError: as :meth:`fetch` when no grant is live; the
                patient node's refusal of the whole batch; ``malformed`` or a
                wrap code for an answer that does not hold together.
            PeerUnreachable: the patient's node did not answer.
        """
        connection = await self._connection(patient)
        chains = await self._chains_to_read(patient, now=now, under=under)
        last_error: RemoteProtocolError | None = None
        for chain in chains:
            # As a single fetch does: a chain the patient's node refuses gives way to the next one.
            try:
                return await self._fetch_batch_under(connection["endpoint"], patient, chain, docs, now=now)
            except RemoteProtocolError as exc:
                last_error = exc
        assert last_error is not None
        raise last_error

    async def _fetch_batch_under(
        self, endpoint: str, patient: str, chain: Sequence[Signed[Grant]], docs: Sequence[bytes], *, now: int
    ) -> dict[bytes, str]:
        leaf = chain[-1]
        first, others = docs[0], tuple(sorted(set(docs[1:]) - {docs[0]}))
        documents = (first, *others)
        receipt = sign_record(
            AccessReceipt(
                patient=patient,
                doc=first,
                docs=others or None,
                grant=leaf.id,
                action="read",
                purpose=leaf.record.purpose,
                iat=now,
                nonce=os.urandom(16),
            ),
            self.home.identity,
        )
        answer = await self.client.call(
            "POST",
            api_url(endpoint, "/v0/fetch-batch"),
            expected_signer=patient,
            chain=[link.encoded for link in chain],
            receipt=receipt.encoded,
            profile=self.home.profile.encoded,
        )
        # [API-72]: the key wrap first, then the streams.
        wrap = open_record(answer.get("wrap", b""), KeyWrap)
        if wrap.signer != patient:
            raise AuthenticationError()
        keys = self.home.keys_for(wrap.record.recipient_key)
        if keys is None:
            raise RemoteProtocolError(Code.WRAP_MISMATCH, "the key wrap is sealed to a key we do not hold")
        document_keys = unwrap_keys(wrap, recipient=self.home.did, keys=keys, documents=documents)
        streams = answer.get("streams")
        if type(streams) is not list or len(streams) != len(documents) or any(type(x) is not bytes for x in streams):
            raise RemoteProtocolError(Code.MALFORMED, "a batch answer holds one stream per document asked for")
        outcomes = await _checked_copies(documents, streams, document_keys, patient)
        checked = [outcome for outcome in outcomes if isinstance(outcome, _CheckedCopy)]
        failed = {doc: outcome for doc, outcome in zip(documents, outcomes, strict=True) if isinstance(outcome, str)}
        failed.update(await self._keep_copies(patient, chain, checked, now=now))
        return failed

    async def _keep_copies(
        self,
        patient: str,
        chain: Sequence[Signed[Grant]],
        checked: Sequence[_CheckedCopy],
        *,
        now: int,
    ) -> dict[bytes, str]:
        """Keep checked streams as copies, each in its row, in one transaction.

        A batch answer is a CBOR body under ``MAX_BODY`` (1 MiB), so each of its
        streams is small enough to be kept in its row (``INLINE_STREAM_MAX``).
        A document whose tombstone this node holds by then is not kept ([API-27]),
        nor is any when the chain was revoked meanwhile ([API-19]).

        Returns:
            The refusal code of each document not kept: ``revoked``, ``not-found``
            when the patient deleted it.
        """
        docs = [copy.doc for copy in checked]
        async with self.store.transaction():
            # Under the write lock, which serialises this with a revocation or a tombstone applied by
            # any process.
            if await self._revoked_link(chain) is not None:
                return dict.fromkeys(docs, Code.REVOKED.value)
            deleted = await self.store.tombstoned_among(docs, patient=patient)
            states = await self.store.document_states(docs)
            await self.store.upsert_shared(
                [
                    self._shared_copy(
                        patient,
                        chain[-1],
                        copy.doc,
                        copy.key,
                        copy.header,
                        copy.size,
                        state=states.get(copy.doc),
                        now=now,
                        stream=copy.stream,
                    )
                    for copy in checked
                    if copy.doc not in deleted
                ]
            )
        return dict.fromkeys(deleted, Code.NOT_FOUND.value)

    async def _revoked_link(self, chain: Sequence[Signed[Grant]]) -> Signed[Grant] | None:
        """The link of ``chain`` that a revocation held now revokes ([CAP-7]), or None."""
        held = [r for link in chain for r in await self.store.records(Revocation, subject=link.id)]
        return RevocationSet.from_records(held).revoked_link(chain)

    async def fetch_into(
        self, patient: str, doc: bytes, into: BinaryIO, *, now: int, progress: Progress | None = None
    ) -> int:
        """Fetch as :meth:`fetch` does, writing the content into ``into`` as it is decrypted (flat memory).

        Returns:
            The size of the content.  When this raises, what was written is
            not the document: discard it.

        Raises:
            RemoteProtocolError, PeerUnreachable: as :meth:`fetch`.
        """
        return await self._fetch(patient, doc, into.write, now=now, progress=progress)

    async def _fetch(
        self,
        patient: str,
        doc: bytes,
        sink: Callable[[bytes], object],
        *,
        now: int,
        progress: Progress | None,
        under: bytes | None = None,
    ) -> int:
        connection = await self._connection(patient)
        chains = await self._chains_to_read(patient, now=now, under=under)
        last_error: RemoteProtocolError | None = None
        for chain in chains:
            try:
                wrap, key = await self._transfer(
                    _Fetch(connection["endpoint"], patient, doc, chain, now=now, progress=progress)
                )
            except RemoteProtocolError as exc:
                last_error = exc
                continue
            return await self._keep_copy(patient, doc, chain, wrap, key, sink, now=now)
        assert last_error is not None
        raise last_error

    async def delegate(
        self, patient: str, *, to: str, to_endpoint: str, categories: Sequence[str] = (), days: int, now: int
    ) -> Signed[Grant]:
        """Pass a narrower grant to another node, when the patient's grant allows it (US-9).

        The child keeps the parent's scope (narrowed to ``categories`` when
        given), reads only, and ends no later than its parent; the chain is
        sent to the delegate, which uses it against the patient's node.

        Raises:
            RemoteProtocolError: ``not-delegable`` when no live grant allows delegation.
        """
        from fedrecord.core import Scope

        parents = [
            c for c in await self.chains_from(patient, now=now) if Action.DELEGATE in c[-1].record.actions
        ]
        if not parents:
            raise RemoteProtocolError(Code.NOT_DELEGABLE, "no live grant from this patient allows delegation")
        chain = parents[0]
        parent = chain[-1].record
        scope = parent.scope
        if categories:
            scope = Scope(
                ids=scope.ids,
                categories=tuple(categories),
                labels=scope.labels,
                since=scope.since,
                until=scope.until,
                past=scope.past,
                future=scope.future,
            )
        child = sign_record(
            Grant(
                audience=to,
                scope=scope,
                actions=(Action.READ.value,),
                purpose=parent.purpose,
                iat=now,
                nbf=max(now, parent.nbf),
                exp=min(parent.exp, now + days * 86_400),
                parent=chain[-1].id,
                nonce=os.urandom(16),
            ),
            self.home.identity,
        )
        connection = await self._connection(patient)
        full_chain = [*chain, child]
        await self.client.call(
            "POST",
            api_url(to_endpoint, "/v0/grants"),
            expected_signer=to,
            patient=patient,
            endpoint=connection["endpoint"],
            profile=connection["profile"].encoded,
            chain=[link.encoded for link in full_chain],
        )
        async with self.store.transaction():
            await self.store.put_record(child, now=now, subject=to.encode())
        return child

    async def receive_delegation(
        self, requester: str, *, patient: str, endpoint: str, profile: bytes, chain: Sequence[bytes], now: int
    ) -> Signed[Grant]:
        """Keep a chain delegated to this node, after checking it as the patient's node will (US-9).

        The endpoint must be one the patient's profile lists, and a connection
        this node already holds is not moved by a delegation ([API-31]): its
        endpoint and profile stay, unless the profile sent is newer.

        Raises:
            RemoteProtocolError: the codes of [API-30], in its order; then
                ``malformed`` for an endpoint the patient's profile does not list;
                ``too-many`` for a new patient beyond ``MAX_DELEGATED_PATIENTS``.
        """
        links = [open_record(link, Grant) for link in chain]
        patient_profile = open_record(profile, NodeProfile)
        if patient_profile.signer != patient:
            raise AuthenticationError()
        if len(links) < 2 or links[-1].signer != requester:
            raise RemoteProtocolError(
                Code.BROKEN_CHAIN, "a delegation ends with a grant issued by its sender"
            )
        verdict = decide(links, patient=patient, requester=self.home.did, action=Action.READ, now=now)
        verdict.require()
        if endpoint not in patient_profile.record.endpoints:
            # Chosen by the delegating node: only an endpoint the patient signed is trusted [API-31].
            raise RemoteProtocolError(Code.MALFORMED, "the endpoint is not one of the patient profile's endpoints")
        check_profile_endpoints(patient_profile.record.endpoints)
        async with self.store.transaction():
            held = await self.store.connection(patient)
            if held is None:
                if not await self._room_for_a_delegated_patient(now=now):
                    log.warning(
                        "refused a delegation from %s: %d patients held through live delegations alone",
                        requester,
                        MAX_DELEGATED_PATIENTS,
                    )
                    raise RemoteProtocolError(
                        Code.TOO_MANY, "this clinic holds as many patients through delegations as it takes"
                    )
                await self.store.save_connection(patient, endpoint=endpoint, profile=patient_profile.encoded)
            elif patient_profile.record.seq > open_record(held.profile, NodeProfile).record.seq:
                kept = held.endpoint if held.endpoint in patient_profile.record.endpoints else endpoint
                await self.store.save_connection(patient, endpoint=kept, profile=patient_profile.encoded)
            await self.store.save_delegation(links[-1].id, patient=patient, chain=cbor.encode(list(chain)))
            for link in links:
                await self.store.put_record(link, now=now, subject=link.record.audience.encode())
        return links[-1]

    async def _room_for_a_delegated_patient(self, *, now: int) -> bool:
        """Whether one more patient may be held through delegations alone (``MAX_DELEGATED_PATIENTS``).

        At the bound, the patients whose every delegated chain is dead (expired, revoked), of
        whom no copy is held and to whom nothing is owed are forgotten first (at most once every
        ``DELEGATION_SWEEP_EVERY`` seconds), so the bound counts live delegations only.
        Call inside a transaction.
        """
        patients = await self.store.delegated_only()
        if len(patients) < MAX_DELEGATED_PATIENTS:
            return True
        if now < self._delegations_swept + DELEGATION_SWEEP_EVERY:
            return False  # swept a moment ago: a stream of delegations must not make each pay for a sweep
        self._delegations_swept = now
        held = len(patients)
        for patient in patients:
            dead = not await self.chains_from(patient, now=now)
            if dead and not await self.store.shared_copies(patient) and not await self.store.owes(patient):
                # Owed nothing: an attestation still queued for it must not be dropped ([API-27]).
                await self.store.forget_connection(patient)
                held -= 1
        return held < MAX_DELEGATED_PATIENTS

    async def _transfer(self, fetch: _Fetch) -> tuple[Signed[KeyWrap], bytes]:
        """Bring the document's ciphertext to its final file under one chain: resumed when bytes are kept.

        Returns:
            The key wrap and the document key it carried.
        """
        async with self.home.partials.begin(fetch.doc) as partial:
            start = resume_point(partial, fetch.patient)
            try:
                return await self._download(fetch, partial, start)
            except RemoteProtocolError as exc:
                if not start or exc.code not in RESTARTABLE:
                    raise
            # The kept bytes do not complete into the document: start again from byte 0 [API-42].
            assert partial is not None
            await partial.discard()
            return await self._download(fetch, partial, 0)

    async def _download(
        self, fetch: _Fetch, partial: PartialDownload | None, start: int
    ) -> tuple[Signed[KeyWrap], bytes]:
        """One fetch request, with its own receipt, for the stream from ``start``; the bytes into ``partial``."""
        leaf = fetch.chain[-1]
        receipt = sign_record(
            AccessReceipt(
                patient=fetch.patient,
                doc=fetch.doc,
                grant=leaf.id,
                action="read",
                purpose=leaf.record.purpose,
                iat=fetch.now,
                nonce=os.urandom(16),
            ),
            self.home.identity,
        )
        answer = await self.client.download(
            api_url(fetch.endpoint, "/v0/fetch"),
            start=start or None,
            expected_signer=fetch.patient,
            chain=[link.encoded for link in fetch.chain],
            receipt=receipt.encoded,
            profile=self.home.profile.encoded,
        )
        try:
            wrap, key = self._open_wrap(answer.headers, fetch.patient, fetch.doc)
            first, size = stream_span(answer, start)
            body = counted(answer.body, fetch.progress, size, done=first)
            if partial is None:
                # Another download of this document holds its kept bytes: this one is not resumable.
                await self.home.files.put(fetch.doc, body, max_size=size)
            else:
                await partial.keep(KeptStream(patient=fetch.patient, size=size, wrap=wrap).encode())
                await partial.finish(body, start=first, max_size=size)
        finally:
            answer.release()
        return wrap, key

    def _open_wrap(
        self, headers: Mapping[str, str], patient: str, doc: bytes
    ) -> tuple[Signed[KeyWrap], bytes]:
        """The key wrap of a fetch answer and the key it carries, checked as [API-24] says."""
        try:
            encoded = unb64(headers["Fedrecord-Key-Wrap"])
        except (KeyError, ValueError):
            raise RemoteProtocolError(Code.MALFORMED, "the fetch answer carries no key wrap") from None
        wrap = open_record(encoded, KeyWrap)
        if wrap.signer != patient:
            raise AuthenticationError()
        keys = self.home.keys_for(wrap.record.recipient_key)
        if keys is None:
            raise RemoteProtocolError(Code.WRAP_MISMATCH, "the key wrap is sealed to a key we do not hold")
        return wrap, unwrap_key(wrap, recipient=self.home.did, keys=keys, doc=doc).key

    async def _keep_copy(
        self,
        patient: str,
        doc: bytes,
        chain: Sequence[Signed[Grant]],
        wrap: Signed[KeyWrap],
        key: bytes,
        sink: Callable[[bytes], object],
        *,
        now: int,
    ) -> int:
        """Decrypt a fetched ciphertext into ``sink`` and keep the copy; nothing is kept when it fails.

        Raises:
            RemoteProtocolError: the decryption's codes; ``not-found`` when this node holds the
                document's tombstone by the time the copy would be kept, ``revoked`` when it
                holds a revocation of the chain it was fetched under by then.
        """
        try:
            reader = DocumentReader(key, expected_patient=patient)
            size = await decrypt_stored(self.home, doc, reader, sink=sink)
            assert reader.header is not None
            header = reader.header
            async with self.store.transaction():
                if await self.store.tombstoned_among([doc], patient=patient):
                    # Deleted while it was fetched (a tombstone applied by any process, serialised by
                    # the write lock): a copy kept now would outlive the attestation sent ([API-27]).
                    raise RemoteProtocolError(Code.NOT_FOUND, "the patient deleted this document")
                if await self._revoked_link(chain) is not None:
                    # Revoked while it was fetched: a copy kept now would outlive the revocation
                    # applied, which destroyed the copies held under this chain ([API-19]).
                    raise RemoteProtocolError(Code.REVOKED, "the grant was revoked while the document was fetched")
                state = await self.store.document_state(doc)
                await self.store.upsert_shared(
                    [self._shared_copy(patient, chain[-1], doc, key, header, size, state=state, now=now)]
                )
                await self.store.put_record(wrap, now=now, subject=doc)
        except BaseException:
            await self._forget_copy(doc)
            raise
        return size

    def _shared_copy(
        self,
        patient: str,
        grant: Signed[Grant],
        doc: bytes,
        key: bytes,
        header: Signed[DocumentHeader],
        size: int,
        *,
        state: str | None,
        now: int,
        stream: bytes | None = None,
    ) -> SharedCopy:
        """The row of a fetched copy, its key wrapped at rest (and a small one's stream).

        For a document known not to be tombstoned, whose row's state (``None`` when it has none) was
        read in the transaction that keeps it.

        Raises:
            RemoteProtocolError, LocalProtocolError: as :func:`~fedrecord.core.lifecycle.kept_state`
                when that state does not take a fetched copy.
        """
        kept_state(state, Event.FETCHED)  # the row keeps the state it has
        return SharedCopy(
            doc=doc,
            patient=patient,
            author=header.signer,
            grant_id=grant.id,
            title=header.record.title,
            doc_type=header.record.doc_type,
            category=header.record.category,
            labels=_stored_labels(header.record.labels),
            date=header.record.date,
            added=now,
            size=size,
            sealed_key=wrap_at_rest(key, self.home.encryption, doc=doc),
            stream=stream,
        )

    async def _forget_copy_records(self, doc: bytes) -> None:
        """Drop a shared copy's row and the key wraps that carried its key.  In a transaction."""
        await self.store.forget_document(doc, KeyWrap)

    async def _forget_copy(self, doc: bytes) -> None:
        state = await self.store.document_state(doc)
        if state is None or state == DocumentState.SHARED:
            await self.home.files.destroy(doc)

    async def held(self) -> list[dict[str, Any]]:
        rows = await self.store.held_documents()
        return [
            {
                "doc": r[0],
                "patient": r[1],
                "state": r[2],
                "author": r[3],
                "title": r[4],
                "category": r[5],
                "labels": json.loads(r[6]),
                "date": r[7],
                "size": r[8],
            }
            for r in rows
        ]

    async def read_held(self, doc: bytes, *, now: int, max_head_age: int = MAX_HEAD_AGE) -> bytes:
        """Read a copy this node holds: its own authored documents always; a copy shared by a patient
        only while this node holds a recent state head from that patient [HEAD-4], so that a
        revocation it has not yet learnt of cannot be outrun for long.

        Raises:
            RemoteProtocolError: ``not-found``; ``stale`` when the patient's head is too old (poll first).
        """
        return await read_stored(self.home, doc, await self._held_reader(doc, now, max_head_age))

    async def read_held_into(
        self, doc: bytes, into: BinaryIO, *, now: int, max_head_age: int = MAX_HEAD_AGE
    ) -> int:
        """Read a copy this node holds, as :meth:`read_held` does, into ``into`` piece by piece.

        Returns:
            The content's size.  When this raises, what was written is not the
            document: discard it.

        Raises:
            RemoteProtocolError: as :meth:`read_held`.
        """
        reader = await self._held_reader(doc, now, max_head_age)
        return await decrypt_stored(self.home, doc, reader, sink=into.write)

    async def _held_reader(self, doc: bytes, now: int, max_head_age: int) -> DocumentReader:
        row = await self.store.held_copy(doc)
        if row is None:
            raise RemoteProtocolError(Code.NOT_FOUND, "no such document")
        sealed_key, patient, state, polled = row
        if sealed_key is None:
            raise RemoteProtocolError(Code.NOT_FOUND, "no such document")
        if state == DocumentState.SHARED and (polled is None or now - polled > max_head_age):
            raise RemoteProtocolError(Code.STALE, "the patient's state head is too old to use a shared copy")
        key = unwrap_at_rest(sealed_key, self.home.encryption_keys, doc=doc)
        return DocumentReader(key, expected_patient=patient)

    # --- syncing with a patient's node (spec 15.16, :mod:`.sync`) ----------------------------------

    async def sync(
        self, patient: str, *, now: int, bodies: bool = True, progress: SyncProgress | None = None
    ) -> SyncReport:
        """Reconcile with ``patient``'s node, then fetch the records and bodies this node lacks.

        Raises:
            as :func:`fedrecord.node.sync.sync_with_patient`.
        """
        return await sync_with_patient(self, patient, now=now, bodies=bodies, progress=progress)

    async def sync_targets(self, patient: str, *, now: int) -> tuple[str, list[list[bytes]]]:
        """The patient node's endpoint and each chain to sync under: every live one, as a view is one
        chain's ([API-44]); one empty chain (the control records only) when none is live.

        Raises:
            RemoteProtocolError: ``not-found`` when not connected to ``patient``.
        """
        connection = await self._connection(patient)
        chains = await self.chains_from(patient, now=now)
        return connection["endpoint"], [[link.encoded for link in chain] for chain in chains] or [[]]

    async def sync_items(self, patient: str) -> SortedItems:
        """The reconciliation items of ``patient``'s records this node holds ([SYNC-1]).

        A sync is between two sets of records for one patient (section 16): the patient's node
        reconciles over what this node may see of that patient's ([SYNC-10]), and this node over
        what it holds of that patient's -- never another patient's records, which that node does
        not hold and should not learn the ids of.  Grants this node issued under the patient's
        grants to it, and its revocations of them, are among them: a device pushes them to the
        patient's node ([API-48]).
        """
        # Read for their ids and dates only: what reconciliation compares.
        held: dict[bytes, Signed[Any]] = {}
        for cls in DEVICE_TYPES:
            held.update((s.id, s) for s in await self._record_set(cls, patient, verify=False))
        mine = {
            g.id
            for g in await self.store.records(Grant, signer=patient, subject=self.home.did.encode(), verify=False)
        }
        issued = [
            g for g in await self.store.records(Grant, signer=self.home.did, verify=False) if g.record.parent in mine
        ]
        ids = {g.id for g in issued}
        held.update((g.id, g) for g in issued)
        held.update(
            (r.id, r)
            for r in await self.store.records(Revocation, signer=self.home.did, verify=False)
            if r.record.grant in ids
        )
        return SortedItems(item_of(signed) for signed in held.values())

    async def _record_set(self, cls: type[R], patient: str, *, verify: bool = True) -> list[Signed[R]]:
        """The records of type ``cls`` this node holds of ``patient``'s record.

        Those the patient signed, and those another node signed that the patient's node gave
        this one in its state answers and syncs (a device's revocations, [API-48]): a record
        another patient's node gave is not this patient's, whatever it names.
        """
        return [
            *await self.store.records(cls, signer=patient, verify=verify),
            *[s for s in await self.store.records(cls, given_by=patient, verify=verify) if s.signer != patient],
        ]

    async def issued_under(self, grant_id: bytes, among: set[bytes]) -> list[Signed[Any]]:
        """The grants this node issued under ``grant_id``, and its revocations of them, among ``among`` ids."""
        issued = [
            g for g in await self.store.records(Grant, signer=self.home.did) if g.record.parent == grant_id
        ]
        ids = {g.id for g in issued}
        revocations = [
            r
            for r in await self.store.records(Revocation)
            if r.signer == self.home.did and r.record.grant in ids
        ]
        found: list[Signed[Any]] = [*issued, *revocations]
        return [s for s in found if s.id in among]

    async def keep_synced(self, patient: str, records: Sequence[Signed[Any]], *, now: int) -> int:
        """Store verified records of ``patient`` in one transaction (idempotent); how many were kept.

        The records are those reconciliation found missing here, so each is new unless another
        process of this node stored it meanwhile (then it is kept once).
        """
        async with self.store.transaction():
            await self.store.put_records([(signed, subject_of(signed)) for signed in records], now=now)
            await self.store.keep_given(patient, [s.id for s in records if s.signer != patient])
        return len(records)

    async def apply_held_state(
        self, patient: str, *, now: int, synced: Sequence[Signed[Any]] = ()
    ) -> None:
        """Apply the revocations and tombstones just synced, as a pushed answer (no freshness, [API-35]).

        Args:
            synced: the records the sync just verified and stored.  When they
                hold a state head, the newest of them is applied; else the
                newest of those held (one stored by a sync cut short before it
                applied them).
        """
        heads: list[Signed[StateHead]] = [s for s in synced if isinstance(s.record, StateHead) and s.signer == patient]
        if not heads:
            # Read for their seq only: the newest is verified again when it is applied (apply_state).
            heads = await self.store.records(StateHead, signer=patient, verify=False)
        if not heads:
            return
        head = max(heads, key=lambda h: h.record.seq)
        connection = await self.store.connection(patient)
        if connection is None or head.record.seq < connection.head_seq:
            return  # a poll or a push already applied a newer head
        answer = {
            "v": 0,
            "head": head.encoded,
            "revocations": [r.encoded for r in await self._record_set(Revocation, patient)],
            "tombstones": [t.encoded for t in await self.store.records(Tombstone, signer=patient)],
            "grants": [
                g.encoded
                for g in await self.store.records(Grant, signer=patient, subject=self.home.did.encode())
            ],
        }
        await self.apply_state(patient, answer, now=now, polled=False)

    async def missing_bodies(self, patient: str) -> list[bytes]:
        """Documents whose accepted entry was synced but whose body this node does not hold."""
        return [entry.doc for entry in (await self.missing_entries(patient)).values()]

    async def missing_entries(
        self, patient: str, *, known: Iterable[Signed[Any]] = ()
    ) -> dict[bytes, AcceptedEntry]:
        """The accepted entries of :meth:`missing_bodies`, by record id: with each document's padded size.

        Args:
            known: records just verified and stored (a sync's): their entries
                are taken as they are instead of being decoded again.
        """
        # Read for their ids and sizes only: a body is checked against its id when it comes.
        withdrawn = {t.record.doc for t in await self.store.records(Tombstone, signer=patient, verify=False)}
        held = {row.doc for row in await self.store.held_documents()}
        entries = {s.id: s.record for s in known if isinstance(s.record, AcceptedEntry) and s.signer == patient}
        # Picked by subject (the document) first: only a missing entry not just synced is decoded.
        return {
            record_id: entries[record_id] if record_id in entries else reopen_record(encoded, AcceptedEntry).record
            for record_id, doc, encoded in await self.store.record_rows(AcceptedEntry, signer=patient)
            if doc not in withdrawn and doc not in held
        }

    # --- the patient's state: polled, or pushed on its event stream -------------------------------

    async def poll(self, patient: str, *, now: int) -> dict[str, int]:
        """Fetch the patient's state and apply it (US-5, US-7; [API-19]).

        Returns:
            as :meth:`apply_state`.

        Raises:
            PeerUnreachable: no answer.
            RemoteProtocolError: ``not-found`` when not connected to ``patient``;
                the patient's refusal; as :meth:`apply_state`.
        """
        connection = await self._connection(patient)
        try:
            answer = await self.client.call(
                "POST",
                api_url(connection["endpoint"], "/v0/state"),
                expected_signer=patient,
                **await self.held_head(patient),
            )
        except RemoteProtocolError as exc:
            if exc.code is not Code.NOT_FOUND or connection["deposit_grant"] is not None:
                raise
            # Held through a delegation alone: the patient's node answers this node's state once it
            # fetched there ([API-16]).  Before that it holds no copy, and there is nothing to apply.
            return {"seq": connection["head_seq"], "destroyed": 0, "attested": 0, "grants": 0}
        return await self.apply_state(patient, answer, now=now, polled=True)

    async def held_head(self, patient: str) -> dict[str, bytes]:
        """The fields of a state request that show ``patient``'s node the newest of its heads this node holds
        ([API-16]: a node restored from an older copy goes on from it); none before any head."""
        head = await self.store.held_head(patient)
        return {"head": head} if head is not None else {}

    async def apply_state(
        self, patient: str, answer: dict[str, Any], *, now: int, polled: bool
    ) -> dict[str, int]:
        """Apply a state answer of ``patient``: revocations, tombstones, its grants to us, its head.

        The answer was polled ([API-19]) or pushed on the patient's event
        stream ([API-35]); either way every record in it is verified here, and
        nothing of an answer that fails a check is applied.  Only a polled
        answer, signed and bound to our own request, refreshes the time the
        head's freshness is measured from ([HEAD-4]): a pushed one could be an
        old stream replayed by someone on the path.

        Returns:
            ``{"seq": head seq, "destroyed": copies destroyed, "attested":
            tombstones attested, "grants": grants in the answer}``.

        Raises:
            RemoteProtocolError: ``not-found`` when not connected to ``patient``;
                ``malformed`` for an answer of the wrong shape; ``bad-signature``
                for a head not signed by the patient; ``rollback`` for a head
                older than one seen before; the record codes for bad records.
        """
        state = StateAnswer.from_body(answer)
        # One application at a time per patient: a push and a poll racing must not interleave.
        async with self._applying.setdefault(patient, asyncio.Lock()):
            connection = await self.store.connection(patient)
            if connection is None:
                raise RemoteProtocolError(Code.NOT_FOUND, "not connected to this patient")
            seen = connection.head_seq
            head = open_stored(state.head, StateHead)
            if head.signer != patient:
                raise AuthenticationError()
            if head.record.seq < seen:
                raise RemoteProtocolError(Code.ROLLBACK, f"state head {head.record.seq} is older than {seen}")
            # The same records come with every answer: verified once, then from the cache.
            grants = [open_stored(g, Grant) for g in state.grants]
            revocations = [open_stored(r, Revocation) for r in state.revocations]
            tombstones = [open_stored(t, Tombstone) for t in state.tombstones]
            destroyed = await self._apply_revocations(
                patient, head, grants, revocations, now=now, polled=polled
            )
            withdrawn = {t.record.doc for t in tombstones if t.signer == patient}
            destroyed += await self._destroy_dead_partials(patient, withdrawn, now=now)
            attested = 0
            for tombstone in tombstones:
                if tombstone.signer == patient and await self._apply_tombstone(patient, tombstone, now=now):
                    attested += 1
        if head.record.seq > seen:
            log.info(
                "state head %d of %s applied (%s): %d copies destroyed, %d tombstones attested",
                head.record.seq,
                patient,
                "polled" if polled else "pushed",
                destroyed,
                attested,
            )
        return {"seq": head.record.seq, "destroyed": destroyed, "attested": attested, "grants": len(grants)}

    async def _apply_revocations(
        self,
        patient: str,
        head: Signed[StateHead],
        grants: Sequence[Signed[Grant]],
        revocations: Sequence[Signed[Revocation]],
        *,
        now: int,
        polled: bool,
    ) -> int:
        """Keep grants, revocations and the head in one transaction, destroying the copies revoked.

        A revocation counts only against a chain it names a link of and that
        an issuer up that link signed ([CAP-7]): one signed by anyone else --
        another patient's node, the link's own audience -- destroys nothing.

        Returns the number of copies destroyed.
        """
        revoked = RevocationSet.from_records(revocations)
        async with self.store.transaction():
            for grant in grants:
                if grant.signer == patient and grant.record.audience == self.home.did:
                    await self.store.put_record(grant, now=now, subject=self.home.did.encode())
            for revocation in revocations:
                await self.store.put_record(revocation, now=now, subject=revocation.record.grant)
            await self.store.keep_given(patient, [r.id for r in revocations if r.signer != patient])
            await self.store.set_head(
                patient, seq=head.record.seq, head=head.encoded, polled=now if polled else None
            )
            shared = await self.store.shared_copies(patient)
            # Every copy was kept under a chain held here: grants are never forgotten, nor delegations
            # while a copy is held under them.  Read in the transaction, this answer's grants included.
            chains = {chain[-1].id: chain for chain in await self._held_chains(patient)}
            # A copy dies with any grant up its chain (US-9: revoking the parent kills the child); only
            # shared copies are read, an authored document is not (lifecycle: `revoked` moves `shared` only).
            doomed = [
                doc for doc, grant_id in shared if revoked.revoked_link(chains.get(grant_id, ())) is not None
            ]
            for doc in doomed:
                await self._forget_copy_records(doc)
        await self.home.destroyed(*doomed)
        return len(doomed)

    async def _destroy_dead_partials(self, patient: str, withdrawn: set[bytes], *, now: int) -> int:
        """Destroy the partial downloads from ``patient`` that no live chain of ours reaches any more [API-43].

        A partial download lives as long as its document (not in
        ``withdrawn``, the documents the patient deleted) and the grant it was
        fetched under (the leaf named by its key wrap), which must head a
        live chain: withdrawn, revoked up the chain or expired, its bytes are
        destroyed as a whole copy would be.

        Returns:
            How many were destroyed.
        """
        kept = await self.home.partials.kept()
        if not kept:
            return 0
        live = {chain[-1].id for chain in await self.chains_from(patient, now=now)}
        destroyed = 0
        for download in kept:
            stream = KeptStream.decode(download.meta)
            if stream is not None and stream.patient != patient:
                continue  # another patient's document: this patient's grants and tombstones do not reach it
            dead = stream is not None and stream.wrap.record.grant not in live
            if dead or download.doc in withdrawn:
                destroyed += await self.home.partials.destroy(download.doc)
        return destroyed

    async def _apply_tombstone(self, patient: str, tombstone: Signed[Tombstone], *, now: int) -> bool:
        """Destroy a withdrawn document (or keep our own authored copy) and attest it, once [API-27].

        The tombstone is ``patient``'s and withdraws only ``patient``'s document: a copy this node
        holds of another patient's document under the same id (fetched from them, authored for
        them) is not touched, and ``patient`` is answered as for a document never held.
        """
        doc = tombstone.record.doc
        if await self.store.attested(doc, patient=patient):
            return False  # the usual case, every answer repeats the tombstones it holds: no write lock taken
        async with self.store.transaction():
            # Again under the write lock: another process (`fedrecord poll`) may have attested it meanwhile.
            if await self.store.attested(doc, patient=patient):
                return False
            state = await self.store.document_state(doc, patient=patient)
            # A copy is destroyed, an authored document retained; one not held is attested destroyed.
            try:
                destroyed = state is not None and next_state(state, Event.WITHDRAWN) is None
            except RemoteProtocolError:
                # A row in a state a clinic never writes (damaged): destroyed, as the tombstone asks,
                # rather than failing every poll of this patient until the row is mended.
                log.warning("document %s is held in an unknown state %r: destroyed", doc.hex()[:16], state)
                destroyed = True
            if state is not None and not destroyed:
                outcome: dict[str, Any] = {
                    "outcome": "retained",
                    "retain_until": now + RETENTION,
                    "basis": "author's legal duty to keep its medical record",
                }
            else:
                outcome = {"outcome": "destroyed"}
            attestation = sign_record(
                DeletionAttestation(patient=patient, doc=doc, tombstone=tombstone.id, iat=now, **outcome),
                self.home.identity,
            )
            await self.store.put_record(tombstone, now=now, subject=doc)
            await self.store.put_record(attestation, now=now, subject=doc)
            if destroyed:
                await self._forget_copy_records(doc)
            await self.store.queue_outbox("attestation", target=patient, payload=attestation.encoded, now=now)
        if destroyed:
            await self.home.destroyed(doc)
        return True


class _CheckedCopy(NamedTuple):
    """A fetched stream that checked, with what its copy is kept with."""

    doc: bytes
    stream: bytes
    key: bytes
    header: Signed[DocumentHeader]
    size: int


@functools.lru_cache(maxsize=1024)
def _stored_labels(labels: tuple[str, ...]) -> str:
    # A header's labels as a row keeps them (a JSON array): the documents of a sync share a few sets.
    return json.dumps(list(labels))


async def _checked_copies(
    documents: Sequence[bytes], streams: Sequence[bytes], keys: Mapping[bytes, bytes], patient: str
) -> list[_CheckedCopy | str]:
    """Each stream checked on its own: its copy, or the code it failed with ([API-72]).

    Checked on the event loop's thread, a slice at a time (at most
    ``CHECK_SLICE`` documents or about ``CHECK_SLICE_BYTES``), yielding to the
    loop between slices.  Not in a worker thread: for streams this small the
    trip costs more CPU than the check itself (the initial sync benchmark used
    about a fifth more CPU that way).
    """
    outcomes: list[_CheckedCopy | str] = []
    slice_documents = slice_bytes = 0
    for doc, stream in zip(documents, streams, strict=True):
        if slice_documents == CHECK_SLICE or slice_bytes >= CHECK_SLICE_BYTES:
            await asyncio.sleep(0)
            slice_documents = slice_bytes = 0
        slice_documents += 1
        slice_bytes += len(stream)
        try:
            outcomes.append(_checked_copy(doc, stream, keys[doc], patient))
        except RemoteProtocolError as exc:
            outcomes.append(exc.code.value)
    return outcomes


def _checked_copy(doc: bytes, stream: bytes, key: bytes, patient: str) -> _CheckedCopy:
    """A fetched stream, once its id, every chunk and its signed header check ([API-72]).

    Raises:
        RemoteProtocolError: as :func:`fedrecord.core.documents.check_whole_stream`.
    """
    header, size = check_whole_stream(stream, doc=doc, key=key, expected_patient=patient)
    return _CheckedCopy(doc, stream, key, header, size)


async def pulled_in_thread(pieces: Iterator[bytes], batch: int = 1 << 20) -> AsyncIterator[bytes]:
    """Pull a blocking iterator (file reads and encryption) in a worker thread, about ``batch`` bytes a trip.

    The event loop keeps serving while a large document is encrypted; a trip
    to the thread costs about a hundred microseconds, so pieces travel in
    batches rather than one by one.
    """

    def next_batch() -> list[bytes]:
        taken: list[bytes] = []
        size = 0
        for piece in pieces:
            taken.append(piece)
            size += len(piece)
            if size >= batch:
                break
        return taken

    while taken := await asyncio.to_thread(next_batch):
        for piece in taken:
            yield piece


__all__ = ["ClinicNode", "Connection"]
