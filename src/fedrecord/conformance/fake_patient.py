"""A patient's node the suite serves itself, so that a clinic under test can be watched as a requester.

The clinic cases (``cases/clinic.py``) drive the clinic through its control
endpoint (spec section 15.20) against a :class:`FakeNode` served by aiohttp on
127.0.0.1 inside the suite's process.  The fake has a patient identity,
encryption keys and a signed profile of its own, whose endpoint is its own
URL; it serves the endpoints a clinic calls (profile, health, connect,
deposits, state, fetch with ``Range``, batch fetch, sync and records,
attestations, and, for a delegate, grants), verifies every request's
signature with the pure functions of :mod:`fedrecord.http.message_signatures`,
signs its answers (``sign_response``), and records every request it received
for the case to inspect.

Each behaviour can be switched to misbehave (:attr:`FakeNode.modes` for the
answer of an endpoint, the ``fetch_*`` and ``connect_*`` attributes for what
an answer carries): an answer signed by another key, unsigned, bound to
another request, a 503, one over the 1 MiB cap, an unreadable error body; a
grant or head signed by another key; a key wrap for another document, reader
or key, or signed by another key; a batch key wrap for other documents; a
tampered stream, a stream cut after N bytes; records not signed by the
patient.  The fake uses only the package's sans-I/O pieces: it is a
patient's node built from the spec, not the reference node's patient code.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from multidict import CIMultiDictProxy

from fedrecord.core import (
    AcceptedEntry,
    AccessReceipt,
    DeletionAttestation,
    Deposit,
    DocumentHeader,
    EncryptionKey,
    EncryptionKeyPair,
    FedrecordError,
    Grant,
    KeyWrap,
    NodeProfile,
    RemoteProtocolError,
    Revocation,
    Scope,
    Signed,
    SigningIdentity,
    StateHead,
    Tombstone,
    cbor,
    open_any_record,
    open_record,
    sign_record,
)
from fedrecord.core.documents import DocumentWriter, padded_size
from fedrecord.core.errors import AuthenticationError, Code
from fedrecord.core.key_wraps import wrap_key, wrap_keys
from fedrecord.core.reconcile import SortedItems, respond
from fedrecord.core.stream import key_commitment
from fedrecord.http.message_signatures import sign_response, verify_request

from .actors import DAY, now
from .wire import CBOR_TYPE, b64

#: What the fake reads of a request body at most (a deposit's stream included).
MAX_READ = 64 << 20
#: How long a cut answer waits, its first bytes sent, before it drops the connection.
CUT_PAUSE = 1.0
#: One byte past the 1 MiB cap on CBOR answers ([API-3]).
OVER_CAP = (1 << 20) + 1

#: Answer modes of :attr:`FakeNode.modes`.
HONEST = "honest"
UNSIGNED = "unsigned"  # the answer carries no signature
OTHER_SIGNER = "other-signer"  # signed by a key that is not the node's
OTHER_REQUEST = "other-request"  # signed by the node, bound to another request
UNAVAILABLE = "503"  # HTTP 503 with a signed error body whose code means something (not-found)
OVER_CAP_MODE = "over-cap"  # a signed 200/201 answer of more than 1 MiB
UNREADABLE = "unreadable"  # a signed 4xx answer whose body is no error body
MODES = (HONEST, UNSIGNED, OTHER_SIGNER, OTHER_REQUEST, UNAVAILABLE, OVER_CAP_MODE, UNREADABLE)

Handler = Callable[[web.Request, "Received"], Awaitable[web.StreamResponse]]
_RANGE = re.compile(r"bytes=(\d+)-")


class Refusal(Exception):
    """The fake refuses a request with ``code`` (its answer signed unless the request did not verify)."""

    def __init__(self, code: Code, message: str = "refused") -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Received:
    """One request the fake received, as it arrived."""

    method: str
    path: str
    headers: CIMultiDictProxy[str]
    body: bytes
    signer: str | None = None  # the did whose signature verified, None when it did not
    url: str = ""
    #: The reconciliation message the fake answered a sync request with.
    reply: bytes = b""

    @property
    def data(self) -> dict[str, Any]:
        """The body as a CBOR map ({} when it is not one)."""
        with contextlib.suppress(FedrecordError):
            decoded = cbor.decode(self.body, max_size=MAX_READ)
            if type(decoded) is dict:
                return decoded
        return {}


@dataclass
class FakeDocument:
    """A document of the fake patient's record: its stream, key and accepted entry."""

    doc: bytes
    key: bytes
    content: bytes
    ciphertext: bytes
    entry: Signed[AcceptedEntry]

    @property
    def hex(self) -> str:
        return self.doc.hex()


@dataclass
class FakeNode:
    """A patient's node (or, with role ``clinic``, a delegate) played by the suite."""

    name: str
    role: str
    identity: SigningIdentity
    keys: EncryptionKeyPair
    url: str
    profile: Signed[NodeProfile]
    #: Another key, for answers and records signed by someone else.
    imposter: SigningIdentity = field(default_factory=lambda: SigningIdentity.from_seed(os.urandom(32)))
    #: Every request received, in order.
    received: list[Received] = field(default_factory=list)
    #: How each endpoint answers (``connect``, ``deposit``, ``state``, ``fetch``, ``fetch_batch``, ``sync``,
    #: ``records``, ``attestations``, ``events``, ``grants``): one of :data:`MODES`; absent is honest.
    modes: dict[str, str] = field(default_factory=dict)
    # --- what the patient holds
    heads: list[Signed[StateHead]] = field(default_factory=list)
    #: The head the state answer carries, when not the newest (a rolled-back or forged head).
    served_head: Signed[StateHead] | None = None
    grants: list[Signed[Grant]] = field(default_factory=list)
    revocations: list[Signed[Revocation]] = field(default_factory=list)
    tombstones: list[Signed[Any]] = field(default_factory=list)
    documents: dict[bytes, FakeDocument] = field(default_factory=dict)
    #: Endpoints refused with a signed error body of this code (the node's refusal of the request).
    refusals: dict[str, Code] = field(default_factory=dict)
    #: Records the sync view holds beside the honest ones (e.g. one signed by another key).
    extra_view: list[Signed[Any]] = field(default_factory=list)
    #: Encoded records every records answer carries beside those asked for.
    records_extra: list[bytes] = field(default_factory=list)
    # --- connecting
    tokens: set[bytes] = field(default_factory=set)
    clinic_profile: Signed[NodeProfile] | None = None
    deposit_grant: Signed[Grant] | None = None
    connect_grant_signer: SigningIdentity | None = None
    connect_profile_signer: SigningIdentity | None = None
    connect_grant_audience: str | None = None
    connect_grant_actions: tuple[str, ...] = ("deposit",)
    # --- fetching
    #: ``honest``, ``other-doc``, ``other-key``, ``other-recipient``, ``other-signer``.
    fetch_wrap: str = HONEST
    #: Flip one byte of every stream served (the document id no longer matches).
    fetch_tamper: bool = False
    #: Flip one byte of the streams of these documents, in fetch and batch answers alike.
    tampered: set[bytes] = field(default_factory=set)
    #: ``honest``, or ``other-docs``: the batch key wrap names another document in place of one asked for.
    batch_wrap: str = HONEST
    #: Cut the next fetch answer after this many bytes of its body (one-shot).
    fetch_cut_after: int | None = None
    #: Corrupt a byte of the next cut answer's bytes (one-shot, with the cut).
    fetch_corrupt_cut: bool = False
    #: Refuse every fetch with a Range with a signed bad-range.
    fetch_refuse_range: bool = False
    # --- what arrived
    deposits: list[tuple[Signed[Deposit], bytes]] = field(default_factory=list)
    attestations: list[Signed[DeletionAttestation]] = field(default_factory=list)
    _nonces: set[tuple[str, str]] = field(default_factory=set)
    _runner: web.AppRunner | None = None

    # --- serving -------------------------------------------------------------------------------------

    @classmethod
    @contextlib.asynccontextmanager
    async def serve(
        cls, name: str = "Conformance fake patient", *, role: str = "patient"
    ) -> AsyncIterator[FakeNode]:
        """Serve a fresh node on a free port of 127.0.0.1 for the time of the ``async with``."""
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        identity = SigningIdentity.from_seed(os.urandom(32))
        keys = EncryptionKeyPair.from_seed(os.urandom(32))
        url = f"http://127.0.0.1:{port}"
        t = now()
        profile = sign_record(
            NodeProfile(
                name=name,
                role=role,
                endpoints=(url,),
                enc_keys=(EncryptionKey(key=keys.public_key, nbf=t - DAY, exp=t + 365 * DAY),),
                versions=(0,),
                seq=1,
                iat=t,
            ),
            identity,
        )
        node = cls(name, role, identity, keys, url, profile)
        if role == "patient":
            node.advance()
        app = web.Application(client_max_size=MAX_READ)
        app.router.add_route("*", "/{tail:.*}", node._handle)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.SockSite(runner, sock)
        await site.start()
        node._runner = runner
        try:
            yield node
        finally:
            await runner.cleanup()
            sock.close()

    @property
    def did(self) -> str:
        return self.identity.did

    @property
    def authority(self) -> str:
        return self.url.removeprefix("http://")

    def requests(self, path: str, method: str = "POST") -> list[Received]:
        """The requests received at ``path`` (a prefix when it ends with ``/``)."""
        return [
            r
            for r in self.received
            if r.method == method and (r.path == path or (path.endswith("/") and r.path.startswith(path)))
        ]

    # --- the patient's state ---------------------------------------------------------------------------

    def advance(self, *, seq: int | None = None, signer: SigningIdentity | None = None) -> Signed[StateHead]:
        """Sign the next state head (or one of ``seq``, by ``signer``: a rolled-back or forged one).

        A head made with ``seq`` or ``signer`` is served in state answers
        (:attr:`served_head`) without becoming the newest; an honest one is
        served from then on.
        """
        previous = self.heads[-1] if self.heads else None
        next_seq = (previous.record.seq + 1 if previous else 0) if seq is None else seq
        revoked = sorted(r.record.grant for r in self.revocations)
        head = sign_record(
            StateHead(
                seq=next_seq,
                iat=now(),
                revocations=hashlib.sha256(b"".join(revoked)).digest(),
                revocation_count=len(revoked),
                prev=None if next_seq == 0 else (previous.id if previous else os.urandom(32)),
            ),
            signer or self.identity,
        )
        if seq is None and signer is None:
            self.heads.append(head)
            self.served_head = None
        else:
            self.served_head = head
        return head

    def grant(
        self,
        audience: str,
        *,
        actions: Sequence[str] = ("read",),
        signer: SigningIdentity | None = None,
        **scope: Any,
    ) -> Signed[Grant]:
        """A grant of the patient to ``audience`` (whole record by default), served in its state answers."""
        t = now()
        grant = sign_record(
            Grant(
                audience=audience,
                scope=Scope(**scope) if scope else Scope(past=True, future=True),
                actions=tuple(actions),
                purpose="treatment",
                iat=t - 5,
                nbf=t - 5,
                exp=t + 30 * DAY,
                nonce=os.urandom(16),
            ),
            signer or self.identity,
        )
        self.grants.append(grant)
        self.advance()
        return grant

    def revoke(self, grant: Signed[Grant]) -> Signed[Revocation]:
        revocation = sign_record(Revocation(grant=grant.id, iat=now()), self.identity)
        self.revocations.append(revocation)
        self.advance()
        return revocation

    def tombstone(self, doc: bytes, *, signer: SigningIdentity | None = None) -> Signed[Tombstone]:
        """Withdraw ``doc`` (signed by ``signer`` instead of the patient: a forged tombstone)."""
        tombstone = sign_record(Tombstone(doc=doc, iat=now()), signer or self.identity)
        self.tombstones.append(tombstone)
        if signer is None:
            self.documents.pop(doc, None)
            self.advance()
        return tombstone

    def add_document(
        self,
        content: bytes,
        *,
        title: str = "Fake lab result",
        patient: str | None = None,
        category: str = "lab",
    ) -> FakeDocument:
        """A document of the record, authored by a lab of the fake's own (its header naming ``patient``)."""
        author = SigningIdentity.from_seed(os.urandom(32))
        key, prefix = os.urandom(32), os.urandom(16)
        header = DocumentHeader(
            patient=patient or self.did,
            title=title,
            doc_type="lab-result",
            category=category,
            labels=(),
            date=now(),
            media_type="text/plain",
            size=len(content),
            commitment=key_commitment(key, prefix),
        )
        writer = DocumentWriter(author, header, key=key, prefix=prefix)
        ciphertext = b"".join(writer.encrypt([content]))
        month = int(time.strftime("%Y%m", time.gmtime()))
        entry = sign_record(
            AcceptedEntry(doc=writer.document_id, padded_size=padded_size(len(ciphertext)), month=month),
            self.identity,
        )
        document = FakeDocument(writer.document_id, key, content, ciphertext, entry)
        self.documents[document.doc] = document
        self.advance()
        return document

    def view(self, requester: str, chain: Sequence[bytes]) -> dict[bytes, Signed[Any]]:
        """The records a requester may see ([API-44]), with :attr:`extra_view`."""
        records: list[Signed[Any]] = [*self.heads, *self.tombstones, *self.revocations]
        records += [g for g in self.grants if g.record.audience == requester]
        if chain:
            records += [d.entry for d in self.documents.values()]
        records += self.extra_view
        return {r.id: r for r in records}

    def invitation(self, *, endpoint: str | None = None) -> str:
        """A fresh invitation code of this node (15.4)."""
        token = os.urandom(32)
        self.tokens.add(token)
        payload = {
            "v": 0,
            "node": self.did,
            "endpoint": endpoint or self.url,
            "token": token,
            "exp": now() + 7 * DAY,
        }
        return "fr0-" + b64(cbor.encode(payload))

    # --- the HTTP side ---------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        received = Received(request.method, request.path, request.headers, body)
        self.received.append(received)
        route = ROUTES.get((request.method, request.path))
        if route is None and request.method == "PUT" and request.path.startswith("/v0/documents/"):
            route = "deposit"
        if route in ("profile", "health"):
            if route == "profile":
                return web.Response(body=self.profile.encoded, content_type=CBOR_TYPE)
            return web.Response(
                body=cbor.encode({"v": 0, "node": self.did, "role": self.role, "versions": [0]}),
                content_type=CBOR_TYPE,
            )
        if route is None:
            return self._unsigned(404, Code.NOT_FOUND)
        try:
            streamed = route == "deposit"
            received.signer = self._verify(request, None if streamed else body)
            received.url = f"http://{self.authority}{request.raw_path}"
        except FedrecordError as exc:
            return self._unsigned(exc.status, exc.code)
        handler: Handler = getattr(self, f"_{route}")
        try:
            if route in self.refusals:
                raise Refusal(self.refusals[route])
            return await handler(request, received)
        except Refusal as refusal:
            return self.answer(request, route, status=_status(refusal.code), fields=_error(refusal.code))
        except FedrecordError as exc:
            return self.answer(request, route, status=exc.status, fields=_error(exc.code))

    def _verify(self, request: web.Request, body: bytes | None) -> str:
        hosts = request.headers.getall("Host", [])
        if len(hosts) != 1 or hosts[0] != self.authority:
            raise AuthenticationError()
        verified = verify_request(
            method=request.method,
            url=f"http://{self.authority}{request.raw_path}",
            headers=request.headers,
            body=body or None,
            now=now(),
        )
        if (verified.signer, verified.nonce) in self._nonces:
            raise RemoteProtocolError(Code.REPLAY, "nonce seen before")
        self._nonces.add((verified.signer, verified.nonce))
        return verified.signer

    def _unsigned(self, status: int, code: Code) -> web.Response:
        return web.Response(status=status, body=cbor.encode(_error(code)), content_type=CBOR_TYPE)

    def answer(
        self, request: web.Request, endpoint: str, *, status: int = 200, fields: dict[str, Any] | None = None
    ) -> web.Response:
        """A CBOR answer to a verified request, signed and bound as the endpoint's mode says."""
        mode = self.modes.get(endpoint, HONEST)
        data = dict(fields or {})
        if mode == UNAVAILABLE:
            status, data = 503, _error(Code.NOT_FOUND)
        elif mode == OVER_CAP_MODE and status < 300:
            data["padding"] = bytes(OVER_CAP)
        body = cbor.encode(data) if "code" in data else cbor.encode({"v": 0, **data})
        if mode == UNREADABLE:
            status, body = 403, b"\xff not an error body"
        headers: dict[str, str] = {"Content-Type": CBOR_TYPE}
        if mode != UNSIGNED:
            url = f"http://{self.authority}{request.raw_path}"
            if mode == OTHER_REQUEST:
                url += "?another-request"
            headers.update(
                sign_response(
                    identity=self.imposter if mode == OTHER_SIGNER else self.identity,
                    status=status,
                    headers=headers,
                    body=body,
                    request_method=request.method,
                    request_url=url,
                    request_signature=", ".join(request.headers.getall("Signature", [])),
                    request_signature_input=", ".join(request.headers.getall("Signature-Input", [])),
                    now=now(),
                )
            )
        return web.Response(status=status, body=body, headers=headers)

    # --- endpoints -----------------------------------------------------------------------------------

    async def _connect(self, request: web.Request, received: Received) -> web.Response:
        data = received.data
        profile = open_record(data.get("profile", b""), NodeProfile)
        if profile.signer != received.signer:
            raise AuthenticationError()
        token = data.get("token")
        if type(token) is not bytes or token not in self.tokens:
            raise Refusal(Code.NOT_FOUND)
        self.tokens.discard(token)
        t = now()
        grant = sign_record(
            Grant(
                audience=self.connect_grant_audience or profile.signer,
                scope=Scope(past=False, future=False),
                actions=self.connect_grant_actions,
                purpose="treatment",
                iat=t,
                nbf=t,
                exp=t + 365 * DAY,
                nonce=os.urandom(16),
            ),
            self.connect_grant_signer or self.identity,
        )
        self.clinic_profile, self.deposit_grant = profile, grant
        own = self.profile
        if self.connect_profile_signer is not None:
            own = sign_record(own.record, self.connect_profile_signer)
        return self.answer(
            request, "connect", status=201, fields={"grant": grant.encoded, "profile": own.encoded}
        )

    async def _deposit(self, request: web.Request, received: Received) -> web.Response:
        try:
            deposit = open_record(_unb64(request.headers.get("Fedrecord-Deposit", "")), Deposit)
        except (ValueError, FedrecordError):
            raise Refusal(Code.MALFORMED) from None
        if deposit.signer != received.signer:
            raise AuthenticationError()
        self.deposits.append((deposit, received.body))
        return self.answer(request, "deposit", status=201, fields={"status": "inbox"})

    async def _state(self, request: web.Request, received: Received) -> web.Response:
        return self.answer(request, "state", fields=self.state_fields(received.signer or ""))

    def state_fields(self, requester: str) -> dict[str, Any]:
        head = self.served_head or self.heads[-1]
        return {
            "head": head.encoded,
            "revocations": [r.encoded for r in self.revocations],
            "tombstones": [t.encoded for t in self.tombstones],
            "grants": [g.encoded for g in self.grants if g.record.audience == requester],
        }

    async def _events(self, request: web.Request, received: Received) -> web.Response:
        # The event stream is optional (15.14): the cases poll, so that what applies when is theirs to say.
        raise Refusal(Code.NOT_FOUND)

    async def _attestations(self, request: web.Request, received: Received) -> web.Response:
        attestation = open_record(received.data.get("attestation", b""), DeletionAttestation)
        if attestation.signer != received.signer or attestation.record.patient != self.did:
            raise AuthenticationError()
        if attestation.record.tombstone not in {t.id for t in self.tombstones}:
            raise Refusal(Code.NOT_FOUND)
        self.attestations.append(attestation)
        return self.answer(request, "attestations", status=201, fields={"status": "stored"})

    async def _grants(self, request: web.Request, received: Received) -> web.Response:
        chain = received.data.get("chain")
        if type(chain) is not list or not chain:
            raise Refusal(Code.MALFORMED)
        leaf = open_record(chain[-1], Grant)
        return self.answer(request, "grants", status=201, fields={"grant": leaf.id})

    async def _sync(self, request: web.Request, received: Received) -> web.Response:
        data = received.data
        view = self.view(received.signer or "", data.get("chain") or [])
        items = SortedItems((int(getattr(r.record, "iat", 0)), i) for i, r in view.items())
        reply = respond(items, data.get("message", b""))
        received.reply = reply
        return self.answer(request, "sync", fields={"message": reply})

    async def _records(self, request: web.Request, received: Received) -> web.Response:
        data = received.data
        view = self.view(received.signer or "", data.get("chain") or [])
        ids = data.get("ids") or []
        records = [view[i].encoded for i in ids if i in view]
        return self.answer(request, "records", fields={"records": records + self.records_extra})

    def _checked_fetch(
        self, received: Received
    ) -> tuple[Signed[AccessReceipt], list[FakeDocument], EncryptionKey]:
        """A fetch's receipt, chain and reader key, checked ([API-22], [API-70]): receipt, documents, key."""
        data = received.data
        receipt = open_record(data.get("receipt", b""), AccessReceipt)
        if receipt.signer != received.signer:
            raise AuthenticationError()
        chain = data.get("chain")
        if type(chain) is not list or not chain or open_any_record(chain[-1]).id != receipt.record.grant:
            raise Refusal(Code.BROKEN_CHAIN)
        documents = [self.documents.get(doc) for doc in receipt.record.documents]
        if any(document is None for document in documents):
            raise Refusal(Code.NOT_FOUND)
        profile = open_record(data["profile"], NodeProfile) if "profile" in data else self.clinic_profile
        if profile is None or profile.signer != received.signer:
            raise Refusal(Code.BAD_KEY)
        key = profile.record.encryption_key_at(now())
        if key is None:
            raise Refusal(Code.BAD_KEY)
        return receipt, [d for d in documents if d is not None], key

    def _stream(self, document: FakeDocument) -> bytearray:
        stream = bytearray(document.ciphertext)
        if self.fetch_tamper or document.doc in self.tampered:
            stream[len(stream) // 2] ^= 1
        return stream

    async def _fetch_batch(self, request: web.Request, received: Received) -> web.Response:
        receipt, documents, key = self._checked_fetch(received)
        keys = [(d.doc, d.key) for d in documents]
        if self.batch_wrap == "other-docs":
            keys[-1] = (os.urandom(32), os.urandom(32))
        wrap = wrap_keys(
            wrapper=self.identity,
            recipient=received.signer or "",
            recipient_key=key.key,
            keys=keys,
            purpose=receipt.record.purpose,
            grant=receipt.record.grant,
            iat=now(),
            ephemeral_seed=os.urandom(32),
        )
        streams = [bytes(self._stream(d)) for d in documents]
        return self.answer(request, "fetch_batch", fields={"wrap": wrap.encoded, "streams": streams})

    async def _fetch(self, request: web.Request, received: Received) -> web.StreamResponse:
        receipt, documents, key = self._checked_fetch(received)
        if receipt.record.docs is not None:
            raise Refusal(Code.MALFORMED)
        document = documents[0]
        stream = self._stream(document)
        ranges = request.headers.getall("Range", [])
        start = 0
        if ranges:
            match = _RANGE.fullmatch(ranges[0]) if len(ranges) == 1 else None
            if match is None or self.fetch_refuse_range or int(match[1]) >= len(stream):
                raise Refusal(Code.BAD_RANGE)
            start = int(match[1])
        wrap = self._wrap(received.signer or "", key.key, document, receipt)
        headers = {"Content-Type": "application/octet-stream", "Fedrecord-Key-Wrap": b64(wrap.encoded)}
        if start:
            headers["Content-Range"] = f"bytes {start}-{len(stream) - 1}/{len(stream)}"
        cut, self.fetch_cut_after = self.fetch_cut_after, None
        if cut is not None and self.fetch_corrupt_cut:
            self.fetch_corrupt_cut = False
            stream[start + cut // 2] ^= 1
        body = bytes(stream[start:])
        response = web.StreamResponse(status=206 if start else 200, headers=headers)
        response.content_length = len(body)
        await response.prepare(request)
        if cut is None:
            await response.write(body)
            await response.write_eof()
            return response
        await response.write(body[:cut])
        # Let the requester take in what was sent before the connection drops: an HTTP client may
        # throw away bytes it had not read yet when it learns of the cut, and then holds fewer.
        await asyncio.sleep(CUT_PAUSE)
        transport = request.transport
        if transport is not None:
            transport.close()
        return response

    def _wrap(
        self, requester: str, reader_key: bytes, document: FakeDocument, receipt: Signed[AccessReceipt]
    ) -> Signed[KeyWrap]:
        mode = self.fetch_wrap
        return wrap_key(
            wrapper=self.imposter if mode == OTHER_SIGNER else self.identity,
            recipient=self.imposter.did if mode == "other-recipient" else requester,
            recipient_key=EncryptionKeyPair.from_seed(os.urandom(32)).public_key
            if mode == "other-key"
            else reader_key,
            doc=os.urandom(32) if mode == "other-doc" else document.doc,
            key=document.key,
            purpose=receipt.record.purpose,
            grant=receipt.record.grant,
            iat=now(),
            ephemeral_seed=os.urandom(32),
        )


ROUTES = {
    ("GET", "/v0/profile"): "profile",
    ("GET", "/v0/health"): "health",
    ("POST", "/v0/connect"): "connect",
    ("POST", "/v0/state"): "state",
    ("POST", "/v0/events"): "events",
    ("POST", "/v0/fetch"): "fetch",
    ("POST", "/v0/fetch-batch"): "fetch_batch",
    ("POST", "/v0/sync"): "sync",
    ("POST", "/v0/records"): "records",
    ("POST", "/v0/attestations"): "attestations",
    ("POST", "/v0/grants"): "grants",
}


def _error(code: Code) -> dict[str, Any]:
    return {"code": code.value, "message": "refused by the suite's fake node"}


def _status(code: Code) -> int:
    return RemoteProtocolError(code, "").status


def _unb64(text: str) -> bytes:
    import base64

    if not text:
        raise ValueError("empty")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


__all__ = ["FakeDocument", "FakeNode", "Received", "MODES"]
