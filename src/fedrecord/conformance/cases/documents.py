"""Invitations, deposits, document streams, key wraps, the audit log and deletion (Sections 8, 9, 15.4-15.11, 15.21).

The deposit cases build their streams by hand (:func:`stream_of`), so that a
chunk, a flag, a commitment or the framed document header can be wrong on
purpose while the deposit record still names the stream's true id: each
check of [API-13] is then reached on its own, in its order.  Every refused
deposit is followed by a look at the inbox, and most by the honest deposit
of the same document, which a node that kept anything of the refusal would
answer ``known`` or ``replay`` instead of ``inbox`` ([API-14]).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from aiohttp import web
from yarl import URL

from fedrecord.core import (
    AcceptedEntry,
    AccessReceipt,
    DeletionAttestation,
    DepositDecision,
    DocumentHeader,
    EncryptionKey,
    Grant,
    KeyWrap,
    NodeProfile,
    Scope,
    Signed,
    SigningIdentity,
    StateHead,
    Tombstone,
    cbor,
    open_record,
    sign_record,
)
from fedrecord.core.documents import DocumentReader
from fedrecord.core.errors import FedrecordError
from fedrecord.core.identity import EncryptionKeyPair, verify_ed25519
from fedrecord.core.key_wraps import make_deposit, unwrap_key, unwrap_keys
from fedrecord.core.records import Deposit, WrapSecret
from fedrecord.core.sealed_box import seal
from fedrecord.core.stream import MAGIC, aead_encrypt, key_commitment
from fedrecord.http.message_signatures import sign_response, verify_request

from ..actors import DAY, Actor, SealedDocument, now, pieces
from ..registry import Failed, Skipped, case
from ..session import Session, expect_refusal, expect_status
from ..wire import Answer, b64, body_of, raw_exchange, status_of, unb64

CHUNK = 65536
SEALED_CHUNK = CHUNK + 16
DOCUMENT_ID_TAG = b"fedrecord/v0/document-id"
AUDIT_TAG = b"fedrecord/v0/audit-entry"
FOUR_GIB = 4294967296
#: A point of order 4 on Curve25519 (RFC 7748 Section 6.1): X25519 with it gives the all-zero secret.
LOW_ORDER_POINT = bytes(32)
INVITATION_CODE = re.compile(r"^fr0-[A-Za-z0-9_-]+$")


def request_head(method: str, path: str, headers: Mapping[str, str], *, content_length: int) -> str:
    """The head of an HTTP/1.1 request written by hand, announcing ``content_length`` body bytes."""
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return head + f"Content-Length: {content_length}\r\nConnection: close\r\n\r\n"


def deposit_head(s: Session, author: Actor, sealed: SealedDocument, *, content_length: int) -> str:
    """The signed head of ``sealed``'s deposit, for bodies sent by hand (a lying length, a stall)."""
    path = f"/v0/documents/{sealed.hex}"
    headers = s.wire.signed_headers(
        author.identity,
        "PUT",
        path,
        None,
        headers={
            "Content-Type": "application/octet-stream",
            "Fedrecord-Streamed": "1",
            "Fedrecord-Deposit": b64(sealed.deposit.encoded),
        },
        streamed=True,
    )
    return request_head("PUT", path, headers, content_length=content_length)


# --- streams and deposits built by hand ------------------------------------------------------------


def document_id(stream: bytes) -> bytes:
    """[ENC-6]: SHA-256 of the tag and the whole stream."""
    return hashlib.sha256(DOCUMENT_ID_TAG + stream).digest()


def stream_of(
    key: bytes,
    prefix: bytes,
    plaintext: bytes,
    *,
    pieces: Sequence[bytes] | None = None,
    commitment: bytes | None = None,
    last_flags: Sequence[bool] | None = None,
) -> bytes:
    """A STREAM as Section 8.2 builds it, or with chosen chunks, final flags or commitment.

    ``pieces`` replaces the cut of ``plaintext`` into 64 KiB chunks (an empty final chunk);
    ``last_flags`` the final flag of each chunk; ``commitment`` the stream header's.
    """
    header = MAGIC + prefix + (commitment if commitment is not None else key_commitment(key, prefix))
    chunks = (
        list(pieces)
        if pieces is not None
        else [plaintext[i : i + CHUNK] for i in range(0, max(1, len(plaintext)), CHUNK)]
    )
    flags = list(last_flags) if last_flags is not None else [i == len(chunks) - 1 for i in range(len(chunks))]
    sealed = [
        aead_encrypt(key, prefix + i.to_bytes(7, "big") + (b"\x01" if flags[i] else b"\x00"), chunk, header)
        for i, chunk in enumerate(chunks)
    ]
    return header + b"".join(sealed)


def framed(header: Signed[DocumentHeader], content: bytes) -> bytes:
    """The plaintext of a document (Section 8.3): uint32be(len(H)) || H || content."""
    return len(header.encoded).to_bytes(4, "big") + header.encoded + content


def secret_sealed(rk: bytes, secret: WrapSecret | bytes) -> bytes:
    """A sealed box of a wrap-secret (or of any bytes) to ``rk``, from a fresh seed ([ENC-8])."""
    message = secret if isinstance(secret, bytes) else cbor.encode(secret.to_wire())
    return seal(message, rk, os.urandom(32))


def deposit_record(
    signer: SigningIdentity,
    *,
    patient: str,
    doc: bytes,
    size: int,
    rk: bytes,
    sealed: bytes,
    grant: bytes,
) -> Signed[Deposit]:
    record = Deposit(
        patient=patient, doc=doc, size=size, recipient_key=rk, sealed=sealed, grant=grant, iat=now()
    )
    return sign_record(record, signer)


def crafted(
    s: Session,
    author: Actor,
    grant: Signed[Grant],
    content: bytes = b"sodium 140 mmol/L",
    *,
    header_patient: str | None = None,
    header_size: int | None = None,
    header_commit: bytes | None = None,
    header_signer: SigningIdentity | None = None,
    plaintext: Callable[[Signed[DocumentHeader]], bytes] | None = None,
    pieces: Callable[[bytes], Sequence[bytes]] | None = None,
    commitment: bytes | None = None,
    last_flags: Sequence[bool] | None = None,
    edit: Callable[[bytes], bytes] | None = None,
) -> SealedDocument:
    """A document sealed by hand, its deposit naming the id and length of the stream as finally built.

    ``plaintext`` frames the signed header and content otherwise than Section 8.3; ``pieces``
    cuts the plaintext into chunks; ``edit`` changes the finished stream (before its id is taken).
    """
    key, prefix = os.urandom(32), os.urandom(16)
    header = DocumentHeader(
        patient=header_patient or s.patient.did,
        title="Conformance sodium",
        doc_type="lab-result",
        category="lab",
        labels=(),
        date=now(),
        media_type="text/plain",
        size=len(content) if header_size is None else header_size,
        commitment=header_commit if header_commit is not None else key_commitment(key, prefix),
    )
    signed = sign_record(header, header_signer or author.identity)
    data = plaintext(signed) if plaintext is not None else framed(signed, content)
    stream = stream_of(
        key,
        prefix,
        data,
        pieces=pieces(data) if pieces is not None else None,
        commitment=commitment,
        last_flags=last_flags,
    )
    if edit is not None:
        stream = edit(stream)
    doc = document_id(stream)
    deposit = make_deposit(
        depositor=author.identity,
        patient=s.patient.did,
        patient_key=s.patient.encryption_key(),
        doc=doc,
        size=len(stream),
        key=key,
        grant=grant.id,
        iat=now(),
        ephemeral_seed=os.urandom(32),
    )
    return SealedDocument(doc, key, content, stream, header, deposit)


def rebind(
    s: Session,
    author: Actor,
    document: SealedDocument,
    grant: bytes,
    *,
    signer: SigningIdentity | None = None,
    **changes: Any,
) -> Signed[Deposit]:
    """A deposit of ``document`` whose sealed wrap-secret (``secret_*``), box (``sealed``) or fields differ."""
    secret = WrapSecret(
        key=document.key,
        doc=changes.pop("secret_doc", document.doc),
        recipient=changes.pop("secret_recipient", s.patient.did),
        wrapper=changes.pop("secret_wrapper", author.did),
        purpose=changes.pop("secret_purpose", "deposit"),
        grant=changes.pop("secret_grant", grant),
    )
    rk = changes.pop("rk", s.patient.encryption_key())
    box = changes.pop("sealed", None)
    fields: dict[str, Any] = {
        "patient": s.patient.did,
        "doc": document.doc,
        "size": len(document.ciphertext),
        "grant": grant,
        **changes,
    }
    sealed = box if box is not None else secret_sealed(rk, secret)
    return deposit_record(signer or author.identity, rk=rk, sealed=sealed, **fields)


async def put_at(
    s: Session, author: Actor, path_doc: str, deposit: bytes, stream: bytes, *, signer: Actor | None = None
) -> Answer:
    """``PUT /v0/documents/{path_doc}`` with the deposit record and stream given."""
    path = f"/v0/documents/{path_doc}"
    headers = s.wire.signed_headers(
        (signer or author).identity,
        "PUT",
        path,
        None,
        headers={
            "Content-Type": "application/octet-stream",
            "Fedrecord-Streamed": "1",
            "Fedrecord-Deposit": b64(deposit),
        },
        streamed=True,
    )
    return await s.wire.request("PUT", path, data=stream, headers=headers)


async def inbox(s: Session) -> set[bytes]:
    return {item["doc"] for item in (await s.manage("inbox"))["items"]}


def _one_full_chunk(header: Signed[DocumentHeader]) -> bytes:
    """A plaintext of exactly one STREAM chunk: the length-prefixed header, then filler."""
    head = len(header.encoded).to_bytes(4, "big") + header.encoded
    return head + b"x" * (CHUNK - len(head))


async def refused_deposit(
    s: Session, answer: Answer, code: str, doc: bytes, *, what: str, status: int | None = None
) -> None:
    """The deposit was refused with ``code`` and the inbox does not hold ``doc`` ([API-14])."""
    expect_refusal(answer, code, status, what=what)
    if doc in await inbox(s):
        raise Failed(f"{what}: refused with {code}, yet the document is in the inbox")


async def honest_deposit_lands(s: Session, author: Actor, sealed: SealedDocument, *, after: str) -> None:
    """The true deposit of ``sealed`` is then taken as new: nothing of the refusal was kept ([API-14])."""
    answer = await s.put(author, sealed)
    if answer.status != 201 or answer.data.get("status") != "inbox":
        raise Failed(
            f"after {after}, the honest deposit of the same document answered {answer.describe()} "
            "instead of 201 inbox: something of the refused deposit was kept"
        )


async def connected(s: Session, name: str = "Conformance depositor") -> tuple[Actor, Signed[Grant]]:
    actor = Actor.create(name)
    return actor, await s.connect(actor)


async def connect_with(
    s: Session, actor: Actor, token: Any, *, profile: bytes | None = None, signer: Actor | None = None
) -> Answer:
    fields = {"token": token, "profile": actor.profile.encoded if profile is None else profile}
    return await s.wire.call("/v0/connect", (signer or actor).identity, fields)


async def grants_for(s: Session, actor: Actor) -> list[bytes]:
    return list(await s.grants_for(actor))


def code_payload(code: str) -> dict[str, Any]:
    """The payload of an invitation code, read as [API-9] reads it (strict CBOR, base64url, no padding)."""
    if not INVITATION_CODE.match(code):
        raise Failed(f"the invitation code {code[:24]!r}... is not fr0- and unpadded base64url")
    encoded = code[4:]
    if len(encoded) % 4 == 1:
        raise Failed("the invitation code's base64url has an impossible length")
    raw = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
    try:
        payload = cbor.decode(raw)
    except FedrecordError as exc:
        raise Failed(f"the invitation payload is not strict CBOR: {exc.code.value}") from None
    if type(payload) is not dict:
        raise Failed("the invitation payload is not a map")
    return payload


def fetched_wrap(answer: Answer) -> Signed[KeyWrap]:
    try:
        return open_record(unb64(answer.headers["Fedrecord-Key-Wrap"]), KeyWrap)
    except (KeyError, ValueError, FedrecordError) as exc:
        raise Failed(f"the fetch answer carries no key wrap that opens ({exc})") from None


async def audit_entries(s: Session) -> list[dict[str, Any]]:
    return list((await s.manage("audit"))["entries"])


def receipt_ids(entries: list[dict[str, Any]]) -> list[bytes]:
    return [open_record(entry["receipt"], AccessReceipt).id for entry in entries]


async def reader_of_all(s: Session, name: str = "Conformance reader") -> tuple[Actor, Signed[Grant]]:
    """A reader holding a patient grant over the whole record, kept by the target."""
    actor, grant = await s.reader(name)
    await s.keep(grant)
    return actor, grant


# --- invitations and connecting (15.4) -------------------------------------------------------------


@case("documents.invitation-code", requires=["API-8", "API-9"])
async def invitation_code(s: Session) -> None:
    """An invitation code parses as 15.4 says: this node, its endpoint, a 32-byte token, exp 7 days out."""
    before = now()
    answer = await s.manage("invite")
    code, exp = answer.get("code"), answer.get("exp")
    if type(code) is not str or type(exp) is not int:
        raise Failed(f"the invite answer is {answer!r}")
    payload = code_payload(code)
    if set(payload) != {"v", "node", "endpoint", "token", "exp"}:
        raise Failed(f"the invitation payload holds {sorted(payload)}")
    if payload["v"] != 0 or payload["node"] != s.patient.did or type(payload["endpoint"]) is not str:
        raise Failed(f"the invitation names v {payload['v']!r}, node {payload['node']!r}")
    if type(payload["token"]) is not bytes or len(payload["token"]) != 32:
        raise Failed("the invitation token is not 32 bytes")
    if payload["exp"] != exp or not before + 7 * DAY <= exp <= now() + 7 * DAY:
        raise Failed(f"the invitation expires at {payload['exp']}, not 7 days after it was made")
    if cbor.encode(payload) != base64.urlsafe_b64decode(code[4:] + "=" * (-len(code[4:]) % 4)):
        raise Failed("the invitation payload is not deterministically encoded")
    tokens = {payload["token"]} | {
        code_payload((await s.manage("invite"))["code"])["token"] for _ in range(3)
    }
    if len(tokens) != 4:
        raise Failed("two invitations carry the same token")
    ttl = await s.manage("invite", ttl=3600)
    if code_payload(ttl["code"])["exp"] != ttl["exp"] or not before + 3600 <= ttl["exp"] <= now() + 3600:
        raise Failed(f"an invitation of ttl 3600 expires at {ttl['exp']}")


@case("documents.connect-grant", requires=["API-10"])
async def connect_grant(s: Session) -> None:
    """A connect answers a deposit-only grant to the requester, signed by the patient, and its profile."""
    actor = Actor.create("Conformance clinic")
    token = (await s.invitation())["token"]
    before = now()
    answer = await connect_with(s, actor, token)
    expect_status(answer, 201, what="connect")
    if not answer.signed_by(s.patient.did):
        raise Failed("the connect answer is not signed by the patient's node")
    grant = open_record(answer.data["grant"], Grant)
    profile = open_record(answer.data["profile"], NodeProfile)
    if grant.signer != s.patient.did or profile.signer != s.patient.did:
        raise Failed("the grant or the profile of the connect answer is not signed by the patient")
    g = grant.record
    if g.audience != actor.did or g.actions != ("deposit",) or g.purpose != "treatment":
        raise Failed(f"the deposit grant is aud {g.audience}, act {g.actions}, purpose {g.purpose}")
    if g.scope != Scope(past=False, future=False) or g.parent is not None:
        raise Failed(f"the deposit grant's scope is {g.scope!r}")
    if not (before <= g.iat == g.nbf <= now()) or g.exp != g.nbf + 365 * DAY:
        raise Failed(f"the deposit grant runs from {g.nbf} (iat {g.iat}) to {g.exp}")
    if grant.encoded not in await grants_for(s, actor):
        raise Failed("the state answer to the clinic does not hold its deposit grant")


@case("documents.connect-token-used-once", requires=["API-8", "API-10"], adversarial=True)
async def connect_token_once(s: Session) -> None:
    """A used invitation token is refused with replay, to another clinic and to its first user alike."""
    first, second = Actor.create("Conformance first"), Actor.create("Conformance second")
    token = (await s.invitation())["token"]
    expect_status(await connect_with(s, first, token), 201, what="the first connect")
    expect_refusal(await connect_with(s, second, token), "replay", what="the token used again by another")
    expect_refusal(await connect_with(s, first, token), "replay", what="the token used again by its user")
    if await grants_for(s, second):
        raise Failed("the refused clinic holds a grant in its state answer")
    if len(await grants_for(s, first)) != 1:
        raise Failed("the clinic that connected once holds more than one grant")


@case("documents.connect-unknown-token", requires=["API-10"], adversarial=True)
async def connect_unknown_token(s: Session) -> None:
    """A token the node never made is not-found, a token that is not bytes malformed; nothing is granted."""
    actor = Actor.create("Conformance stranger")
    expect_refusal(await connect_with(s, actor, os.urandom(32)), "not-found", what="an unknown token")
    token = (await s.invitation())["token"]
    expect_refusal(await connect_with(s, actor, token.hex()), "malformed", what="the token as text")
    if await grants_for(s, actor):
        raise Failed("a refused clinic holds a grant in its state answer")
    expect_status(await connect_with(s, actor, token), 201, what="the token after the refusals")


@case("documents.connect-expired", requires=["API-10"], adversarial=True)
async def connect_expired(s: Session) -> None:
    """An invitation past its exp is refused with expired (a used one with replay, checked first)."""
    # Three seconds: whole-second clocks leave the first connect at least two of them before exp.
    unused, used = await s.manage("invite", ttl=3), await s.manage("invite", ttl=3)
    actor, early = Actor.create("Conformance late"), Actor.create("Conformance early")
    expect_status(await connect_with(s, early, code_payload(used["code"])["token"]), 201, what="connect")
    await asyncio.sleep(max(0.0, max(unused["exp"], used["exp"]) + 1.1 - time.time()))
    expect_refusal(
        await connect_with(s, actor, code_payload(unused["code"])["token"]),
        "expired",
        what="an expired token",
    )
    expect_refusal(
        await connect_with(s, actor, code_payload(used["code"])["token"]),
        "replay",
        what="a used and expired token",
    )
    if await grants_for(s, actor):
        raise Failed("the clinic refused for an expired invitation holds a grant")


@case("documents.connect-foreign-profile", requires=["API-10"], adversarial=True)
async def connect_foreign_profile(s: Session) -> None:
    """A connect carrying another node's profile is bad-signature, checked before the token; the token stays usable."""
    actor, other = Actor.create("Conformance relay"), Actor.create("Conformance victim")
    token = (await s.invitation())["token"]
    answer = await connect_with(s, actor, token, profile=other.profile.encoded)
    expect_refusal(answer, "bad-signature", what="another node's profile")
    expect_refusal(
        await connect_with(s, actor, os.urandom(32), profile=other.profile.encoded),
        "bad-signature",
        what="another node's profile with an unknown token (the profile is checked first)",
    )
    expect_refusal(
        await connect_with(s, actor, os.urandom(32), profile=s.patient.grant(actor.did).encoded),
        "wrong-type",
        what="a grant in place of the profile",
    )
    if await grants_for(s, actor) or await grants_for(s, other):
        raise Failed("a refused connect left a grant")
    expect_status(await connect_with(s, actor, token), 201, what="the token after the refusals")


@case("documents.connect-profile-endpoint", requires=["API-10", "API-74"], adversarial=True)
async def connect_profile_endpoint(s: Session) -> None:
    """A connect whose profile lists an endpoint that is no base URL is malformed; the token stays usable."""
    actor = Actor.create("Conformance unreachable")
    token = (await s.invitation())["token"]
    for endpoint in ("http://[::1", "http://127.0.0.1:99999", "ftp://127.0.0.1", "https://clinic.example/?q=1"):
        profile = actor.profile_with(endpoints=(endpoint,))
        answer = await connect_with(s, actor, token, profile=profile)
        expect_refusal(answer, "malformed", what=f"a profile whose endpoint is {endpoint!r}")
    if await grants_for(s, actor):
        raise Failed("a clinic refused for its profile's endpoint holds a grant")
    expect_status(await connect_with(s, actor, token), 201, what="the token after the refusals")


# --- deposits (15.5): the record's checks ---------------------------------------------------------


@case("documents.deposit-known", requires=["API-13", "API-14"])
async def deposit_known(s: Session) -> None:
    """The same deposit sent twice is 201 inbox, then 200 known; the inbox holds it once, as deposited."""
    lab, grant = await connected(s)
    sealed = s.seal(lab, grant, b"creatinine 80 umol/L", title="Creatinine", labels=["SUD"])
    first = await s.put(lab, sealed)
    expect_status(first, 201, what="the deposit")
    if first.data != {"v": 0, "status": "inbox"} or not first.signed_by(s.patient.did):
        raise Failed(f"the deposit answered {first.data!r}, or unsigned")
    again = await s.put(lab, sealed)
    expect_status(again, 200, what="the same deposit again")
    if again.data != {"v": 0, "status": "known"}:
        raise Failed(f"the repeated deposit answered {again.data!r}")
    items = [i for i in (await s.manage("inbox"))["items"] if i["doc"] == sealed.doc]
    if len(items) != 1:
        raise Failed(f"the inbox holds the document {len(items)} times")
    item = items[0]
    if (item["author"], item["title"], item["labels"], item["size"]) != (
        lab.did,
        "Creatinine",
        ["SUD"],
        len(sealed.ciphertext),
    ):
        raise Failed(f"the inbox item is {item!r}")


@case("documents.deposit-replay", requires=["API-13", "API-14"], adversarial=True)
async def deposit_replay(s: Session) -> None:
    """Another deposit record for a document already held is replay, and the first deposit stays."""
    lab, grant = await connected(s)
    sealed = await s.deposit(lab, grant, b"urea 5 mmol/L", title="Urea")
    other = make_deposit(
        depositor=lab.identity,
        patient=s.patient.did,
        patient_key=s.patient.encryption_key(),
        doc=sealed.doc,
        size=len(sealed.ciphertext),
        key=sealed.key,
        grant=grant.id,
        iat=now() + 1,
        ephemeral_seed=os.urandom(32),
    )
    expect_refusal(await s.put(lab, sealed, deposit=other.encoded), "replay", what="a second deposit record")
    expect_status(await s.put(lab, sealed), 200, what="the first deposit record again")
    if sealed.doc not in await inbox(s):
        raise Failed("the first deposit left the inbox")


@case("documents.deposit-foreign-record", requires=["API-13", "API-14"], adversarial=True)
async def deposit_foreign_record(s: Session) -> None:
    """A deposit record signed by another node than the requester is bad-signature; nothing is kept."""
    lab, grant = await connected(s)
    thief, _ = await connected(s, "Conformance thief")
    sealed = s.seal(lab, grant, b"ferritin 80 ug/L", title="Ferritin")
    answer = await s.put(thief, sealed)
    await refused_deposit(s, answer, "bad-signature", sealed.doc, what="another node's deposit record")
    if answer.data.get("message") != "signature did not verify":
        raise Failed(f"bad-signature carries the message {answer.data.get('message')!r}")
    await honest_deposit_lands(s, lab, sealed, after="a relayed deposit record")


@case("documents.deposit-wrong-patient", requires=["API-13"], adversarial=True)
async def deposit_wrong_patient(s: Session) -> None:
    """A deposit record naming another patient is wrong-audience."""
    lab, grant = await connected(s)
    sealed = s.seal(lab, grant, b"tsh 2.1 mU/L", title="TSH")
    other = rebind(s, lab, sealed, grant.id, patient=Actor.create("Another patient").did)
    await refused_deposit(
        s,
        await s.put(lab, sealed, deposit=other.encoded),
        "wrong-audience",
        sealed.doc,
        what="another patient",
    )
    await honest_deposit_lands(s, lab, sealed, after="a deposit for another patient")


@case("documents.deposit-path", requires=["API-13"], adversarial=True)
async def deposit_path(s: Session) -> None:
    """A {doc} other than the deposit's doc, or not hexadecimal, is malformed; nothing is kept."""
    lab, grant = await connected(s)
    sealed = s.seal(lab, grant, b"crp 3 mg/L", title="CRP")
    deposit = sealed.deposit.encoded
    other = await put_at(s, lab, os.urandom(32).hex(), deposit, sealed.ciphertext)
    await refused_deposit(s, other, "malformed", sealed.doc, what="a path naming another document")
    not_hex = await put_at(s, lab, "zz" * 32, deposit, sealed.ciphertext)
    await refused_deposit(s, not_hex, "malformed", sealed.doc, what="a path that is not hexadecimal")
    await honest_deposit_lands(s, lab, sealed, after="deposits at the wrong path")


@case("documents.deposit-grant", requires=["API-13"], adversarial=True)
async def deposit_grant(s: Session) -> None:
    """A deposit under no grant of the node, another clinic's grant, a read grant or a revoked one is refused."""
    lab, grant = await connected(s)
    other_lab, other_grant = await connected(s, "Conformance other lab")
    sealed = s.seal(lab, grant, b"hba1c 38 mmol/mol", title="HbA1c")
    own = lab.grant(lab.did, actions=("deposit",), scope=Scope())
    cases = [
        (own.id, "not-found", "a grant the depositor signed itself"),
        (os.urandom(32), "not-found", "an unknown grant id"),
        (other_grant.id, "wrong-audience", "another clinic's deposit grant"),
    ]
    read = s.patient.grant(lab.did)
    await s.keep(read)
    cases.append((read.id, "action-not-granted", "a patient grant without deposit"))
    for grant_id, code, what in cases:
        deposit = rebind(s, lab, sealed, grant_id)
        await refused_deposit(
            s, await s.put(lab, sealed, deposit=deposit.encoded), code, sealed.doc, what=what
        )
    await s.manage("revoke", grant=other_grant.id)
    late = s.seal(other_lab, other_grant, b"hba1c 40 mmol/mol", title="HbA1c")
    await refused_deposit(
        s, await s.put(other_lab, late), "revoked", late.doc, what="a revoked deposit grant"
    )
    await honest_deposit_lands(s, lab, sealed, after="deposits under the wrong grants")


@case("documents.deposit-size-cap", requires=["API-3", "API-13"], adversarial=True)
async def deposit_size_cap(s: Session) -> None:
    """A deposit announcing more than 4 GiB, by its size or its Content-Length, is too-large before the body."""
    lab, grant = await connected(s)
    sealed = s.seal(lab, grant, b"iron 20 umol/L", title="Iron")
    huge = rebind(s, lab, sealed, grant.id, size=FOUR_GIB + 1)
    await refused_deposit(
        s, await s.put(lab, sealed, deposit=huge.encoded), "too-large", sealed.doc, what="a size over 4 GiB"
    )
    head = deposit_head(s, lab, sealed, content_length=FOUR_GIB + 1)
    target = URL(s.wire.base_url)
    # Only a first piece of the body is sent: the node must answer without waiting for the rest.
    raw = await raw_exchange(
        target.host or "127.0.0.1",
        target.port or 80,
        head.encode("latin-1") + sealed.ciphertext[:64],
        read_timeout=10,
    )
    answer = Answer(status_of(raw) or 0, {}, body_of(raw))
    await refused_deposit(s, answer, "too-large", sealed.doc, what="a Content-Length over 4 GiB")
    await honest_deposit_lands(s, lab, sealed, after="deposits over the cap")


# --- deposits: the sealed key ([WRAP-5], [SEAL-3]) -------------------------------------------------


@case("documents.deposit-key-elsewhere", requires=["API-13", "WRAP-5"], adversarial=True)
async def deposit_key_elsewhere(s: Session) -> None:
    """A deposit whose rk is not a key of the patient's node is wrap-mismatch; nothing is kept."""
    lab, grant = await connected(s)
    sealed = s.seal(lab, grant, b"lipase 30 U/L", title="Lipase")
    foreign = Actor.create("Conformance key holder").keys.public_key
    deposit = rebind(s, lab, sealed, grant.id, rk=foreign)
    await refused_deposit(
        s,
        await s.put(lab, sealed, deposit=deposit.encoded),
        "wrap-mismatch",
        sealed.doc,
        what="rk not the node's",
    )
    await honest_deposit_lands(s, lab, sealed, after="a deposit sealed to another key")


@case("documents.deposit-sealed-box", requires=["SEAL-3", "WRAP-2", "API-13", "ERR-3"], adversarial=True)
async def deposit_sealed_box(s: Session) -> None:
    """A sealed key that does not open (short, altered, low-order ephemeral key) is decrypt-failed, opaque."""
    lab, grant = await connected(s)
    sealed = s.seal(lab, grant, b"amylase 60 U/L", title="Amylase")
    good = sealed.deposit.record.sealed
    altered = good[:40] + bytes([good[40] ^ 1]) + good[41:]
    boxes = [
        (good[:47], "a sealed box of 47 bytes"),
        (altered, "a sealed box with one byte altered"),
        (LOW_ORDER_POINT + good[32:], "a sealed box whose ephemeral key is of low order"),
    ]
    for box, what in boxes:
        deposit = rebind(s, lab, sealed, grant.id, sealed=box)
        answer = await s.put(lab, sealed, deposit=deposit.encoded)
        await refused_deposit(s, answer, "decrypt-failed", sealed.doc, what=what)
        if answer.data.get("message") != "decryption failed":
            raise Failed(f"{what}: decrypt-failed carries the message {answer.data.get('message')!r}")
    await honest_deposit_lands(s, lab, sealed, after="deposits whose key does not open")


@case("documents.deposit-binding", requires=["WRAP-2", "WRAP-3", "WRAP-5", "API-13"], adversarial=True)
async def deposit_binding(s: Session) -> None:
    """A sealed key bound to another document, patient, depositor, purpose or grant is wrap-mismatch."""
    lab, grant = await connected(s)
    sealed = s.seal(lab, grant, b"albumin 40 g/L", title="Albumin")
    stranger = Actor.create("Conformance stranger")
    variants: list[tuple[dict[str, Any], str]] = [
        ({"secret_doc": os.urandom(32)}, "a secret bound to another document"),
        ({"secret_recipient": stranger.did}, "a secret bound to another patient"),
        ({"secret_wrapper": stranger.did}, "a secret naming another depositor"),
        ({"secret_purpose": "treatment"}, "a secret for purpose treatment"),
        ({"secret_grant": os.urandom(32)}, "a secret bound to another grant"),
        ({"secret_grant": None}, "a secret bound to no grant"),
        (
            {"sealed": secret_sealed(s.patient.encryption_key(), cbor.encode({"v": 0, "key": sealed.key}))},
            "a sealed plaintext that is not a wrap-secret",
        ),
        (
            {"sealed": secret_sealed(s.patient.encryption_key(), b"\xff\x00")},
            "a sealed plaintext that is not CBOR",
        ),
    ]
    for changes, what in variants:
        deposit = rebind(s, lab, sealed, grant.id, **changes)
        answer = await s.put(lab, sealed, deposit=deposit.encoded)
        await refused_deposit(s, answer, "wrap-mismatch", sealed.doc, what=what)
    await honest_deposit_lands(s, lab, sealed, after="deposits bound to something else")


# --- deposits: the stream ([API-13] steps 12 and 13, Section 8) ------------------------------------


@case("documents.deposit-length", requires=["API-3", "API-13", "ENC-6", "API-14"], adversarial=True)
async def deposit_length(s: Session) -> None:
    """A stream longer than its size is too-large, shorter is truncated, cut or altered is malformed (its id)."""
    lab, grant = await connected(s)
    sealed = s.seal(lab, grant, b"magnesium 0.9 mmol/L", title="Magnesium")
    stream = sealed.ciphertext
    longer = await s.put(lab, sealed, stream=stream + b"\x00" * 16)
    await refused_deposit(s, longer, "too-large", sealed.doc, what="bytes past the announced size")
    small = rebind(s, lab, sealed, grant.id, size=len(stream) - 1)
    await refused_deposit(
        s,
        await s.put(lab, sealed, deposit=small.encoded),
        "too-large",
        sealed.doc,
        what="a size one byte short",
    )
    big = rebind(s, lab, sealed, grant.id, size=len(stream) + 10)
    await refused_deposit(
        s, await s.put(lab, sealed, deposit=big.encoded), "truncated", sealed.doc, what="a size 10 bytes over"
    )
    cut = await s.put(lab, sealed, stream=stream[:-10])
    await refused_deposit(s, cut, "malformed", sealed.doc, what="the stream cut (its id differs)")
    altered = stream[:60] + bytes([stream[60] ^ 1]) + stream[61:]
    await refused_deposit(
        s,
        await s.put(lab, sealed, stream=altered),
        "malformed",
        sealed.doc,
        what="a byte altered (its id differs)",
    )
    await honest_deposit_lands(s, lab, sealed, after="streams of the wrong length or id")


@case(
    "documents.deposit-forged-chunk",
    requires=["ENC-4", "ENC-5", "ENC-9", "API-13", "API-14"],
    adversarial=True,
)
async def deposit_forged_chunk(s: Session) -> None:
    """A stream whose deposit names it but whose chunk is altered or moved is decrypt-failed, kept nowhere."""
    lab, grant = await connected(s)
    content = os.urandom(2 * CHUNK + 100)

    def flip_last(stream: bytes) -> bytes:
        return stream[:-5] + bytes([stream[-5] ^ 1]) + stream[-4:]

    def swap_first_two(stream: bytes) -> bytes:
        one, two = stream[52 : 52 + SEALED_CHUNK], stream[52 + SEALED_CHUNK : 52 + 2 * SEALED_CHUNK]
        return stream[:52] + two + one + stream[52 + 2 * SEALED_CHUNK :]

    def drop_middle(stream: bytes) -> bytes:
        return stream[: 52 + SEALED_CHUNK] + stream[52 + 2 * SEALED_CHUNK :]

    def repeat_first(stream: bytes) -> bytes:
        return stream[: 52 + SEALED_CHUNK] + stream[52 : 52 + SEALED_CHUNK] + stream[52 + 2 * SEALED_CHUNK :]

    for edit, what in (
        (flip_last, "the last chunk altered (the header chunk is sound)"),
        (swap_first_two, "two chunks swapped"),
        (drop_middle, "a chunk dropped"),
        (repeat_first, "a chunk repeated"),
    ):
        forged = crafted(s, lab, grant, content, edit=edit)
        answer = await s.put(lab, forged)
        await refused_deposit(s, answer, "decrypt-failed", forged.doc, what=what)
    sound = crafted(s, lab, grant, content)
    await honest_deposit_lands(s, lab, sound, after="forged streams")


@case("documents.deposit-truncated-extended", requires=["ENC-5", "API-13"], adversarial=True)
async def deposit_truncated_extended(s: Session) -> None:
    """A stream cut after a full chunk is truncated; one going on after a full final chunk is extended."""
    lab, grant = await connected(s)

    def cut_after_first(stream: bytes) -> bytes:
        return stream[: 52 + SEALED_CHUNK]

    cut = crafted(s, lab, grant, os.urandom(CHUNK + 300), edit=cut_after_first)
    await refused_deposit(s, await s.put(lab, cut), "truncated", cut.doc, what="a stream cut after a chunk")

    def cut_in_tag(stream: bytes) -> bytes:
        return stream[: 52 + SEALED_CHUNK + 10]

    tag = crafted(s, lab, grant, os.urandom(CHUNK + 300), edit=cut_in_tag)
    await refused_deposit(
        s, await s.put(lab, tag), "truncated", tag.doc, what="a final chunk shorter than a tag"
    )

    def extend(stream: bytes) -> bytes:
        return stream + os.urandom(40)

    extended = crafted(s, lab, grant, b"", plaintext=_one_full_chunk, edit=extend)
    await refused_deposit(
        s, await s.put(lab, extended), "extended", extended.doc, what="bytes after a full final chunk"
    )


@case("documents.deposit-stream-header", requires=["ENC-1", "ENC-2", "ENC-3", "API-13"], adversarial=True)
async def deposit_stream_header(s: Session) -> None:
    """A stream with another magic is malformed, one under 52 bytes truncated, a wrong commitment bad-commitment."""
    lab, grant = await connected(s)

    def other_magic(stream: bytes) -> bytes:
        return b"FRD\x01" + stream[4:]

    magic = crafted(s, lab, grant, edit=other_magic)
    await refused_deposit(s, await s.put(lab, magic), "malformed", magic.doc, what="magic FRD\\x01")

    def short(stream: bytes) -> bytes:
        return stream[:40]

    stub = crafted(s, lab, grant, edit=short)
    await refused_deposit(s, await s.put(lab, stub), "truncated", stub.doc, what="a stream of 40 bytes")
    committed = crafted(s, lab, grant, commitment=os.urandom(32))
    await refused_deposit(
        s,
        await s.put(lab, committed),
        "bad-commitment",
        committed.doc,
        what="a stream header committing elsewhere",
    )

    def empty_last(data: bytes) -> list[bytes]:
        return [data, b""]

    empty = crafted(s, lab, grant, b"", plaintext=_one_full_chunk, pieces=empty_last)
    await refused_deposit(
        s, await s.put(lab, empty), "malformed", empty.doc, what="an empty final chunk after data"
    )


@case("documents.deposit-document-header", requires=["DOC-3", "DOC-4", "API-13", "API-14"], adversarial=True)
async def deposit_document_header(s: Session) -> None:
    """A document header for another patient, author, size or key, or over 16384 bytes, is refused as [DOC-3] says."""
    lab, grant = await connected(s)
    stranger = Actor.create("Conformance stranger")

    def oversized(header: Signed[DocumentHeader]) -> bytes:
        return (16385).to_bytes(4, "big") + header.encoded + bytes(16385 - len(header.encoded))

    def cut_header(header: Signed[DocumentHeader]) -> bytes:
        return len(header.encoded).to_bytes(4, "big") + header.encoded[:-10]

    variants: list[tuple[SealedDocument, str, str]] = [
        (
            crafted(s, lab, grant, header_patient=stranger.did),
            "invalid-record",
            "a header naming another patient",
        ),
        (
            crafted(s, lab, grant, header_signer=stranger.identity),
            "invalid-record",
            "a header signed by another",
        ),
        (crafted(s, lab, grant, header_size=3), "invalid-record", "content longer than the header's size"),
        (crafted(s, lab, grant, header_size=400), "invalid-record", "content shorter than the header's size"),
        (
            crafted(s, lab, grant, header_commit=os.urandom(32)),
            "bad-commitment",
            "a header committing elsewhere",
        ),
        (crafted(s, lab, grant, plaintext=oversized), "too-large", "a header length of 16385"),
        (crafted(s, lab, grant, plaintext=cut_header), "truncated", "a stream ending inside the header"),
    ]
    for sealed, code, what in variants:
        await refused_deposit(s, await s.put(lab, sealed), code, sealed.doc, what=what)
    sound = crafted(s, lab, grant)
    await honest_deposit_lands(s, lab, sound, after="deposits with wrong headers")


# --- the inbox and the record (15.6, 8.4) -----------------------------------------------------------


@case("documents.accepted-entry", requires=["DOC-6", "DOC-7", "DOC-9", "DOC-8"])
async def accepted_entry(s: Session) -> None:
    """Acceptance signs an opaque accepted-entry: doc, psize (size class, at least 1024) and month, nothing else."""
    lab, grant = await connected(s)
    for content in (b"k 4.0", os.urandom(3000)):
        sealed = await s.deposit(lab, grant, content, title="Potassium", labels=["PSY"])
        before = now()
        entry = open_record((await s.manage("accept", doc=sealed.doc))["entry"], AcceptedEntry)
        after = now()
        if entry.signer != s.patient.did or entry.record.doc != sealed.doc:
            raise Failed("the accepted-entry is not the patient's, for this document")
        size = len(sealed.ciphertext)
        psize = max(1024, 1 << (size - 1).bit_length())
        if entry.record.padded_size != psize:
            raise Failed(f"a stream of {size} bytes has psize {entry.record.padded_size}, not {psize}")
        months = {int(time.strftime("%Y%m", time.gmtime(t))) for t in (before, after)}
        if entry.record.month not in months:
            raise Failed(f"the entry's month is {entry.record.month}, acceptance was in {sorted(months)}")
        envelope = cbor.decode(entry.encoded, allow_sign1_tag=True)
        payload = cbor.decode(getattr(envelope, "value", envelope)[2])
        if set(payload) != {"v", "doc", "psize", "month"}:
            raise Failed(f"the accepted-entry holds {sorted(payload)}")


@case("documents.inbox-until-accepted", requires=["DOC-8", "API-14"])
async def inbox_until_accepted(s: Session) -> None:
    """A deposited document is neither listed nor fetchable until accepted; a rejected one is destroyed."""
    lab, grant = await connected(s)
    reader, chain = await reader_of_all(s)
    kept = await s.deposit(lab, grant, b"glucose 5.2 mmol/L", title="Glucose")
    dropped = await s.deposit(lab, grant, b"glucose 52 mmol/L", title="Glucose (typo)")
    if {kept.doc, dropped.doc} - await inbox(s):
        raise Failed("a deposited document is not in the inbox")
    for sealed in (kept, dropped):
        if sealed.doc in await s.listed(reader, [chain]):
            raise Failed("a document of the inbox is listed before the patient accepted it")
        expect_refusal(
            await s.fetch(reader, [chain], sealed.doc), "not-found", what="fetching an inbox document"
        )
    decision = (await s.manage("reject", doc=dropped.doc))["decision"]
    opened = open_record(decision, DepositDecision)
    if (opened.signer, opened.record.doc, opened.record.decision, opened.record.deposit) != (
        s.patient.did,
        dropped.doc,
        "rejected",
        dropped.deposit.id,
    ):
        raise Failed("the rejection is not the patient's rejected decision of that deposit")
    if dropped.doc in await inbox(s):
        raise Failed("a rejected document stays in the inbox")
    await s.accept(kept.doc)
    if kept.doc not in await s.listed(reader, [chain]):
        raise Failed("an accepted document is not listed under a grant over the whole record")
    if s.open_fetched(reader, await s.fetch(reader, [chain], kept.doc), kept.doc) != kept.content:
        raise Failed("the accepted document does not read back as deposited")
    expect_refusal(
        await s.fetch(reader, [chain], dropped.doc), "not-found", what="fetching a rejected document"
    )
    answer = await s.wire.call("/v0/manage", s.patient.identity, {"op": "accept", "doc": dropped.doc})
    expect_refusal(answer, "not-found", what="accepting a rejected document")


# --- fetching: the key wrap (15.9, Section 9.3) ---------------------------------------------------


@case("documents.fetch-key-wrap", requires=["API-23", "WRAP-1", "WRAP-3", "ENC-6", "ENC-8"])
async def fetch_key_wrap(s: Session) -> None:
    """A fetch answers the stored stream and a patient-signed key wrap bound to reader, document, grant, purpose."""
    world = await s.world()
    reader, grant = await reader_of_all(s)
    doc = world.lab_result
    receipt = reader.receipt(s.patient.did, doc.doc, grant, purpose="research")
    answer = await s.fetch(reader, [grant], doc.doc, receipt=receipt.encoded)
    expect_status(answer, 200, what="the fetch")
    if answer.headers.get("Content-Type", "").split(";")[0].strip() != "application/octet-stream":
        raise Failed(f"the fetch answer's Content-Type is {answer.headers.get('Content-Type')!r}")
    if answer.headers.get("Content-Length") not in (None, str(len(answer.body))):
        raise Failed("the fetch answer's Content-Length is not the length of its stream")
    if answer.body != doc.ciphertext or document_id(answer.body) != doc.doc:
        raise Failed("the fetched stream is not the stream deposited under that id")
    wrap = fetched_wrap(answer)
    w = wrap.record
    expected = (s.patient.did, reader.did, reader.keys.public_key, doc.doc, grant.id, "research")
    got = (wrap.signer, w.recipient, w.recipient_key, w.doc, w.grant, w.purpose)
    if got != expected:
        names = ("signer", "recipient", "rk", "doc", "grant", "purpose")
        wrong = [n for n, a, b in zip(names, got, expected, strict=True) if a != b]
        raise Failed(f"the key wrap's {', '.join(wrong)} differ from the reader's request")
    try:
        opened = unwrap_key(wrap, recipient=reader.did, keys=reader.keys, doc=doc.doc)
    except FedrecordError as exc:
        raise Failed(f"the key wrap does not open for its reader: {exc.code.value}") from None
    if opened.key != doc.key or opened.secret.wrapper != s.patient.did:
        raise Failed("the sealed wrap-secret does not hold the document key, wrapped by the patient")
    if s.open_fetched(reader, answer, doc.doc) != doc.content:
        raise Failed("the fetched document does not decrypt to what was deposited")


@case("documents.fetch-fresh-seals", requires=["SEAL-1", "WRAP-1"])
async def fetch_fresh_seals(s: Session) -> None:
    """Key wraps of one document to other readers, grants or purposes are sealed from different ephemeral keys."""
    world = await s.world()
    doc = world.imaging.doc
    first, first_grant = await reader_of_all(s, "Conformance reader one")
    second_grant = s.patient.grant(first.did, purpose="research")
    await s.keep(second_grant)
    other, other_grant = await reader_of_all(s, "Conformance reader two")
    wraps = []
    for actor, grant, purpose in (
        (first, first_grant, "treatment"),
        (first, first_grant, "audit"),
        (first, second_grant, "research"),
        (other, other_grant, "treatment"),
    ):
        receipt = actor.receipt(s.patient.did, doc, grant, purpose=purpose)
        answer = await s.fetch(actor, [grant], doc, receipt=receipt.encoded)
        expect_status(answer, 200, what=f"the fetch under {purpose}")
        wraps.append(fetched_wrap(answer).record)
    ephemeral = {w.sealed[:32] for w in wraps}
    if len(ephemeral) != len(wraps):
        raise Failed("two key wraps of different secrets are sealed from the same ephemeral key")


@case("documents.fetch-low-order-key", requires=["SEAL-2", "API-22"], adversarial=True)
async def fetch_low_order_key(s: Session) -> None:
    """A reader whose only encryption key is of low order gets bad-key, no key wrap and no log entry."""
    world = await s.world()
    reader, grant = await reader_of_all(s, "Conformance weak reader")
    t = now()
    weak = NodeProfile(
        name="Conformance weak reader",
        role="clinic",
        endpoints=(),
        enc_keys=(EncryptionKey(key=LOW_ORDER_POINT, nbf=t - DAY, exp=t + DAY),),
        versions=(0,),
        seq=2,
        iat=t,
    )
    profile = sign_record(weak, reader.identity)
    receipt = reader.receipt(s.patient.did, world.lab_result.doc, grant)
    answer = await s.fetch(
        reader, [grant], world.lab_result.doc, receipt=receipt.encoded, profile=profile.encoded
    )
    expect_refusal(answer, "bad-key", what="a reader key of low order")
    if "Fedrecord-Key-Wrap" in answer.headers:
        raise Failed("the refusal carries a key wrap")
    if receipt.id in receipt_ids(await audit_entries(s)):
        raise Failed("the refused fetch's receipt is in the audit log")


@case("documents.fetch-out-of-scope", requires=["WRAP-4", "API-23"], adversarial=True)
async def fetch_out_of_scope(s: Session) -> None:
    """A document the chain does not reach is not-found: no key wrap, no byte, no log entry."""
    world = await s.world()
    reader, grant = await s.reader("Conformance narrow reader", scope=Scope(ids=(world.imaging.doc,)))
    await s.keep(grant)
    receipt = reader.receipt(s.patient.did, world.lab_result.doc, grant)
    answer = await s.fetch(reader, [grant], world.lab_result.doc, receipt=receipt.encoded)
    expect_refusal(answer, "not-found", what="a document outside the grant's ids")
    if "Fedrecord-Key-Wrap" in answer.headers:
        raise Failed("the refusal carries a key wrap")
    if receipt.id in receipt_ids(await audit_entries(s)):
        raise Failed("the refused fetch's receipt is in the audit log")
    expect_status(await s.fetch(reader, [grant], world.imaging.doc), 200, what="the document the grant names")


# --- the audit log (15.10) ---------------------------------------------------------------------------


def verify_log(s: Session, entries: list[dict[str, Any]]) -> None:
    """Walk the log as [API-26] says, from the genesis value."""
    prev = bytes(32)
    for number, entry in enumerate(entries, start=1):
        if entry.get("seq") != number:
            raise Failed(f"entry {number} of the audit log has seq {entry.get('seq')!r}")
        try:
            receipt = open_record(entry["receipt"], AccessReceipt)
            verify_ed25519(s.patient.identity.public_key, entry["entry_hash"], entry["countersignature"])
        except FedrecordError as exc:
            raise Failed(f"audit entry {number}: {exc.code.value}") from None
        if entry["prev_hash"] != prev:
            raise Failed(f"audit entry {number}: prev_hash is not the previous entry's hash")
        at = entry["at"]
        recomputed = hashlib.sha256(
            AUDIT_TAG + number.to_bytes(8, "big") + prev + receipt.id + at.to_bytes(8, "big")
        ).digest()
        if entry["entry_hash"] != recomputed:
            raise Failed(f"audit entry {number}: entry_hash differs from the value recomputed")
        prev = entry["entry_hash"]


@case("documents.audit-log", requires=["API-23", "API-25", "API-26"])
async def audit_log(s: Session) -> None:
    """Each served receipt is appended once to a hash chain the patient countersigns; a replayed one is not."""
    world = await s.world()
    reader, grant = await reader_of_all(s, "Conformance audited reader")
    receipts = []
    started = now()
    for sealed in (world.lab_result, world.imaging):
        receipt = reader.receipt(s.patient.did, sealed.doc, grant)
        expect_status(
            await s.fetch(reader, [grant], sealed.doc, receipt=receipt.encoded), 200, what="a fetch"
        )
        receipts.append(receipt)
        entries = await audit_entries(s)
        if not entries or receipt_ids(entries[-1:]) != [receipt.id]:
            raise Failed("once the fetch was answered, its receipt is not the newest audit entry")
    ended = now()
    verify_log(s, entries)
    ids = receipt_ids(entries)
    if ids[-2:] != [r.id for r in receipts] or len(set(ids)) != len(ids):
        raise Failed("the receipts are not logged once each, in the order served")
    for entry in entries[-2:]:
        if not started <= entry["at"] <= ended or entry["receipt"] not in {r.encoded for r in receipts}:
            raise Failed("a logged receipt is not as received, or its time is not when it was served")
    replay = await s.fetch(reader, [grant], world.lab_result.doc, receipt=receipts[0].encoded)
    expect_refusal(replay, "replay", what="a receipt used again")
    if await audit_entries(s) != entries:
        raise Failed("the refused replay changed the audit log")


# --- fetching in a batch (15.21, [WRAP-6]) ------------------------------------------------------------


async def fetch_batch(
    s: Session, actor: Actor, chain: Sequence[Signed[Grant]], receipt: Signed[AccessReceipt]
) -> Answer:
    """``POST /v0/fetch-batch`` (15.21) with ``receipt`` and the actor's profile."""
    fields = {
        "chain": [g.encoded for g in chain],
        "receipt": receipt.encoded,
        "profile": actor.profile.encoded,
    }
    return await s.wire.call("/v0/fetch-batch", actor.identity, fields)


async def batch_documents(
    s: Session, count: int, name: str
) -> tuple[Actor, Signed[Grant], list[SealedDocument]]:
    """A fresh lab, its deposit grant, and ``count`` small documents of it accepted into the record."""
    lab, grant = await connected(s, name)
    documents = [
        await s.accepted(lab, grant, f"{name} {i}: sodium 14{i} mmol/L".encode(), title=f"{name} {i}")
        for i in range(count)
    ]
    return lab, grant, documents


def ordered(documents: Sequence[SealedDocument]) -> list[SealedDocument]:
    """The documents as a receipt names them: the greatest id as ``doc``, then ``docs`` ascending.

    ``doc`` is then not the least id: streams answered in plain id order are out of the receipt's.
    """
    by_id = sorted(documents, key=lambda d: d.doc)
    return [by_id[-1], *by_id[:-1]]


def batch_receipt(
    s: Session, reader: Actor, grant: Signed[Grant], documents: Sequence[SealedDocument], **terms: Any
) -> Signed[AccessReceipt]:
    """A receipt naming ``documents``: the first as ``doc``, the others as ``docs``."""
    return reader.receipt(
        s.patient.did, documents[0].doc, grant, docs=[d.doc for d in documents[1:]], **terms
    )


def opened_batch(
    s: Session,
    reader: Actor,
    answer: Answer,
    receipt: Signed[AccessReceipt],
    documents: Sequence[SealedDocument],
) -> Signed[KeyWrap]:
    """Check a batch answer as its requester must ([API-72]) and against what was deposited ([API-71]).

    ``documents`` are in the receipt's order (``doc``, then ``docs``).  Returns the key wrap.
    """
    expect_status(answer, 200, what="the batch fetch")
    if not answer.signed_by(s.patient.did):
        raise Failed("the batch answer is not signed by the patient and bound to its request ([HTTP-12])")
    data = answer.data
    streams = data.get("streams")
    if (
        type(streams) is not list
        or len(streams) != len(documents)
        or any(type(x) is not bytes for x in streams)
    ):
        raise Failed(f"the batch answer does not hold one stream for each of the {len(documents)} documents")
    try:
        wrap = open_record(data.get("wrap", b""), KeyWrap)
    except FedrecordError as exc:
        raise Failed(f"the batch answer's wrap does not open as a key wrap: {exc.code.value}") from None
    w, r = wrap.record, receipt.record
    expected = (s.patient.did, reader.did, reader.keys.public_key, r.doc, r.docs, r.grant, r.purpose)
    got = (wrap.signer, w.recipient, w.recipient_key, w.doc, w.docs, w.grant, w.purpose)
    if got != expected:
        names = ("signer", "recipient", "rk", "doc", "docs", "grant", "purpose")
        wrong = [n for n, a, b in zip(names, got, expected, strict=True) if a != b]
        raise Failed(f"the batch key wrap's {', '.join(wrong)} differ from the reader's receipt")
    try:
        keys = unwrap_keys(wrap, recipient=reader.did, keys=reader.keys, documents=r.documents)
    except FedrecordError as exc:
        raise Failed(f"the batch key wrap does not open for its reader: {exc.code.value}") from None
    if keys != {d.doc: d.key for d in documents}:
        raise Failed("the batch key wrap does not carry exactly the key of each document named ([WRAP-6])")
    for number, (sealed, stream) in enumerate(zip(documents, streams, strict=True), start=1):
        if stream != sealed.ciphertext or document_id(stream) != sealed.doc:
            raise Failed(f"stream {number} of the batch is not the stored stream of document {number} named")
        try:
            opener = DocumentReader(keys[sealed.doc], expected_patient=s.patient.did)
            content = b"".join(opener.decrypt(pieces(stream)))
        except FedrecordError as exc:
            raise Failed(f"stream {number} of the batch does not open: {exc.code.value}") from None
        if content != sealed.content or opener.document_id != sealed.doc:
            raise Failed(f"stream {number} of the batch does not decrypt to what was deposited")
    return wrap


async def nothing_logged(s: Session, before: list[dict[str, Any]], what: str) -> None:
    if await audit_entries(s) != before:
        raise Failed(f"{what}: the audit log changed")


@case("documents.fetch-batch", requires=["API-70", "API-71", "API-72", "WRAP-6"])
async def fetch_batch_served(s: Session) -> None:
    """A batch of 3 is answered signed: one wrap with every key, the streams in order, one audit entry."""
    _, _, documents = await batch_documents(s, 3, "Conformance batch")
    reader, grant = await reader_of_all(s, "Conformance batch reader")
    documents = ordered(documents)
    receipt = batch_receipt(s, reader, grant, documents, purpose="research")
    before = await audit_entries(s)
    started = now()
    opened_batch(s, reader, await fetch_batch(s, reader, [grant], receipt), receipt, documents)
    after = await audit_entries(s)
    if after[: len(before)] != before or len(after) != len(before) + 1:
        raise Failed(f"the batch made {len(after) - len(before)} audit entries, not one")
    verify_log(s, after)
    if after[-1]["receipt"] != receipt.encoded or not started <= after[-1]["at"] <= now():
        raise Failed("the batch's audit entry is not its receipt as received, when served")


@case("documents.fetch-batch-not-found", requires=["API-70", "CAP-12"], adversarial=True)
async def fetch_batch_not_found(s: Session) -> None:
    """A batch naming one document out of scope, absent or in the inbox is not-found whole; nothing logged."""
    lab, deposit_grant, documents = await batch_documents(s, 3, "Conformance narrow batch")
    reachable, outside = documents[:2], documents[2]
    reader, grant = await s.reader(
        "Conformance narrow batch reader", scope=Scope(ids=tuple(sorted(d.doc for d in reachable)))
    )
    await s.keep(grant)
    pending = await s.deposit(lab, deposit_grant, b"sodium 150 mmol/L", title="Not yet accepted")
    single = await s.fetch(reader, [grant], os.urandom(32))
    expect_refusal(single, "not-found", what="a single fetch of a document that does not exist")
    before = await audit_entries(s)
    variants = [
        (outside.doc, "a document outside the grant's ids"),
        (os.urandom(32), "a document that does not exist"),
        (pending.doc, "a document still in the inbox"),
    ]
    refused = []
    for bad, what in variants:
        for place in ("doc", "docs"):
            ids = [bad, reachable[0].doc, reachable[1].doc]
            if place == "docs":
                ids[0], ids[1] = ids[1], ids[0]
            receipt = reader.receipt(s.patient.did, ids[0], grant, docs=ids[1:])
            answer = await fetch_batch(s, reader, [grant], receipt)
            where = f"a batch naming {what} in {place}"
            expect_refusal(answer, "not-found", what=where)
            if answer.body != single.body or answer.signed_by(s.patient.did) != single.signed_by(
                s.patient.did
            ):
                raise Failed(
                    f"{where}: the refusal is not identical to a single fetch's not-found ([CAP-12])"
                )
            refused.append(receipt)
    await nothing_logged(s, before, "after batches refused not-found")
    again = await fetch_batch(s, reader, [grant], refused[0])
    expect_refusal(again, "not-found", what="a refused batch's receipt sent again (it was never logged)")
    control = batch_receipt(s, reader, grant, reachable)
    answer = await fetch_batch(s, reader, [grant], control)
    opened_batch(s, reader, answer, control, reachable)


@case("documents.fetch-batch-replay", requires=["API-70", "API-71", "API-22"], adversarial=True)
async def fetch_batch_replay(s: Session) -> None:
    """A batch's receipt used again is replay, at either fetch endpoint; it is logged once."""
    _, _, documents = await batch_documents(s, 2, "Conformance replayed batch")
    reader, grant = await reader_of_all(s, "Conformance replaying reader")
    documents = ordered(documents)
    receipt = batch_receipt(s, reader, grant, documents)
    before = await audit_entries(s)
    opened_batch(s, reader, await fetch_batch(s, reader, [grant], receipt), receipt, documents)
    served = await audit_entries(s)
    if len(served) != len(before) + 1 or receipt_ids(served).count(receipt.id) != 1:
        raise Failed("the batch's receipt is not logged once")
    expect_refusal(await fetch_batch(s, reader, [grant], receipt), "replay", what="the batch's receipt again")
    await nothing_logged(s, served, "a replayed batch")
    # A receipt without docs is a batch of one (its wrap without docs); it too serves once only.
    one = batch_receipt(s, reader, grant, documents[:1])
    opened_batch(s, reader, await fetch_batch(s, reader, [grant], one), one, documents[:1])
    logged = await audit_entries(s)
    again = await s.fetch(reader, [grant], documents[0].doc, receipt=one.encoded)
    expect_refusal(again, "replay", what="a batch of one's receipt at POST /v0/fetch")
    if "Fedrecord-Key-Wrap" in again.headers:
        raise Failed("the replay refusal carries a key wrap")
    fetched = reader.receipt(s.patient.did, documents[1].doc, grant)
    expect_status(
        await s.fetch(reader, [grant], documents[1].doc, receipt=fetched.encoded), 200, what="a fetch"
    )
    logged = await audit_entries(s)
    expect_refusal(
        await fetch_batch(s, reader, [grant], fetched),
        "replay",
        what="a fetched receipt at POST /v0/fetch-batch",
    )
    await nothing_logged(s, logged, "a replayed receipt")
    ids = receipt_ids(logged)
    if len(set(ids)) != len(ids):
        raise Failed("a receipt appears twice in the audit log")


@case("documents.fetch-batch-receipt-at-fetch", requires=["API-73", "API-22"], adversarial=True)
async def fetch_batch_receipt_at_fetch(s: Session) -> None:
    """A receipt with docs at POST /v0/fetch is malformed before any other check; it is not used up."""
    _, _, documents = await batch_documents(s, 2, "Conformance misdirected batch")
    reader, grant = await reader_of_all(s, "Conformance misdirected reader")
    documents = ordered(documents)
    first, others = documents[0].doc, [documents[1].doc]
    receipt = batch_receipt(s, reader, grant, documents)
    stranger, elsewhere = Actor.create("Conformance receipt signer"), Actor.create("Another patient").did
    variants: list[tuple[Signed[AccessReceipt], list[Signed[Grant]], str]] = [
        (receipt, [grant], "a receipt naming two documents"),
        (receipt, [], "a receipt naming two documents, with no chain"),
        (stranger.receipt(s.patient.did, first, grant, docs=others), [grant], "one signed by another node"),
        (reader.receipt(elsewhere, first, grant, docs=others), [grant], "one for another patient"),
        (
            reader.receipt(s.patient.did, first, reader.grant(reader.did), docs=others),
            [grant],
            "one off the chain",
        ),
    ]
    before = await audit_entries(s)
    for record, chain, what in variants:
        answer = await s.fetch(reader, chain, first, receipt=record.encoded)
        expect_refusal(answer, "malformed", what=f"POST /v0/fetch with {what}")
        if "Fedrecord-Key-Wrap" in answer.headers:
            raise Failed(f"POST /v0/fetch with {what}: the refusal carries a key wrap")
    await nothing_logged(s, before, "after receipts with docs at POST /v0/fetch")
    # Refused before anything was logged, the receipt still serves its batch, once.
    opened_batch(s, reader, await fetch_batch(s, reader, [grant], receipt), receipt, documents)
    if receipt_ids((await audit_entries(s))[len(before) :]) != [receipt.id]:
        raise Failed("the batch after the refusals is not logged as its one receipt")


# --- deletion (15.11) --------------------------------------------------------------------------------


async def deleted_document(s: Session) -> tuple[Actor, SealedDocument, Signed[Tombstone]]:
    lab, grant = await connected(s, "Conformance deleting lab")
    sealed = await s.accepted(lab, grant, b"withdrawn result", title="Withdrawn")
    tombstone = open_record((await s.manage("delete", doc=sealed.doc))["tombstone"], Tombstone)
    return lab, sealed, tombstone


def attestation(
    signer: Actor, patient: str, doc: bytes, tombstone: bytes, outcome: str = "destroyed"
) -> Signed[DeletionAttestation]:
    record = DeletionAttestation(
        patient=patient,
        doc=doc,
        tombstone=tombstone,
        outcome=outcome,
        retain_until=now() + 3650 * DAY if outcome == "retained" else None,
        basis="medical records retention duty" if outcome == "retained" else None,
        iat=now(),
    )
    return sign_record(record, signer.identity)


async def attest(s: Session, sender: Actor, record: bytes) -> Answer:
    return await s.wire.call("/v0/attestations", sender.identity, {"attestation": record})


@case("documents.delete", requires=["API-16", "API-17", "API-22", "CAP-15"])
async def delete(s: Session) -> None:
    """Deleting a document signs a tombstone that the state answers of its reader and depositor carry, and
    no one else's; it is no longer listed or fetched."""
    reader, chain = await reader_of_all(s, "Conformance reader of a deleted document")
    lab, grant = await connected(s, "Conformance deleting lab")
    sealed = await s.accepted(lab, grant, b"withdrawn result", title="Withdrawn")
    expect_status(await s.fetch(reader, [chain], sealed.doc), 200, what="the document before deletion")
    before = open_record((await s.state(reader))["head"], StateHead)
    tombstone = open_record((await s.manage("delete", doc=sealed.doc))["tombstone"], Tombstone)
    after = open_record((await s.state(reader))["head"], StateHead)
    if after.id != before.id:
        raise Failed(f"the deletion signed a new state head after seq {before.record.seq} ([API-17])")
    if tombstone.signer != s.patient.did or tombstone.record.doc != sealed.doc:
        raise Failed("the tombstone is not the patient's, for this document")
    for actor in (reader, lab):
        if tombstone.encoded not in (await s.state(actor))["tombstones"]:
            raise Failed(f"the state answer of the document's {actor.name} does not carry the tombstone")
    # A node that never read it is not told a document existed ([API-16], [CAP-15]).
    unseen_reader, _chain = await reader_of_all(s, "Conformance reader that never read it")
    for actor in (unseen_reader, Actor.create("Conformance bystander")):
        if tombstone.encoded in (await s.state(actor))["tombstones"]:
            raise Failed(f"the state answer of a {actor.name} carries the tombstone of a document it never read")
    if sealed.doc in await s.listed(reader, [chain]):
        raise Failed("a deleted document is still listed")
    expect_refusal(
        await s.fetch(reader, [chain], sealed.doc), "not-found", what="fetching a deleted document"
    )
    again = await s.wire.call("/v0/manage", s.patient.identity, {"op": "delete", "doc": sealed.doc})
    expect_refusal(again, "not-found", what="deleting it again")


@case("documents.attestation", requires=["API-28"])
async def attestation_stored(s: Session) -> None:
    """A node's deletion-attestation of a tombstone of the patient is stored, whatever its outcome."""
    lab, sealed, tombstone = await deleted_document(s)
    answer = await attest(
        s, lab, attestation(lab, s.patient.did, sealed.doc, tombstone.id, "retained").encoded
    )
    expect_status(answer, 201, what="the author's retained attestation")
    if answer.data != {"v": 0, "status": "stored"} or not answer.signed_by(s.patient.did):
        raise Failed(f"the attestation answered {answer.data!r}, or unsigned")
    bystander = Actor.create("Conformance bystander")
    answer = await attest(
        s, bystander, attestation(bystander, s.patient.did, sealed.doc, tombstone.id).encoded
    )
    expect_status(answer, 201, what="a destroyed attestation from a node that never held it")


@case("documents.attestation-forged", requires=["API-28"], adversarial=True)
async def attestation_forged(s: Session) -> None:
    """Attestations relayed, for another patient, of no tombstone or of another document are refused."""
    lab, sealed, tombstone = await deleted_document(s)
    relay = Actor.create("Conformance relay")
    other_patient = Actor.create("Another patient").did
    head = (await s.state(relay))["head"]
    refusals = [
        (attestation(lab, s.patient.did, sealed.doc, tombstone.id), "bad-signature", "relayed"),
        (attestation(relay, other_patient, sealed.doc, tombstone.id), "bad-signature", "for another patient"),
        (attestation(relay, s.patient.did, sealed.doc, os.urandom(32)), "not-found", "of no tombstone"),
        (attestation(relay, s.patient.did, os.urandom(32), tombstone.id), "not-found", "of another document"),
    ]
    for record, code, what in refusals:
        expect_refusal(await attest(s, relay, record.encoded), code, what=f"an attestation {what}")
    grant = relay.grant(relay.did)
    expect_refusal(await attest(s, relay, grant.encoded), "wrong-type", what="a grant as attestation")
    if (await s.state(relay))["head"] != head:
        raise Failed("a refused attestation changed the patient's state head")


# --- the rejection notice (15.6, 15.13) ---------------------------------------------------------------


class DecisionEndpoint:
    """A depositor's endpoint the suite serves: it keeps each ``POST /v0/decisions`` and answers as scripted.

    The first ``failures`` requests are answered 503 (no answer, [API-5]); the next ones 201,
    signed by the depositor and bound to the request ([HTTP-12]).
    """

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.received: list[tuple[str, bytes]] = []
        self.arrived = asyncio.Event()
        self.actor: Actor | None = None
        self._runner: web.AppRunner | None = None

    async def start(self, name: str) -> Actor:
        app = web.Application()
        app.router.add_post("/v0/decisions", self._decision)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.actor = listening_actor(name, f"http://127.0.0.1:{port}")
        return self.actor

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _decision(self, request: web.Request) -> web.Response:
        assert self.actor is not None
        data = await request.read()
        try:
            check = verify_request(
                method=request.method, url=str(request.url), headers=request.headers, body=data, now=now()
            )
            signer = check.signer
        except FedrecordError:
            signer = ""
        self.received.append((signer, data))
        self.arrived.set()
        if len(self.received) <= self.failures:
            return web.Response(status=503, body=cbor.encode({"code": "busy", "message": "try later"}))
        answer = cbor.encode({"v": 0, "status": "stored"})
        headers = {"Content-Type": "application/cbor"}
        headers |= sign_response(
            identity=self.actor.identity,
            status=201,
            headers=headers,
            body=answer,
            request_method=request.method,
            request_url=str(request.url),
            request_signature=request.headers.get("Signature", ""),
            request_signature_input=request.headers.get("Signature-Input", ""),
            now=now(),
        )
        return web.Response(status=201, body=answer, headers=headers)

    async def next_request(self, deadline: float, what: str) -> tuple[str, bytes]:
        """The next request received, waiting until ``deadline`` (monotonic) at most."""
        count = len(self.received)
        while len(self.received) <= count:
            self.arrived.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Failed(f"{what}: no POST /v0/decisions arrived at the depositor's endpoint in time")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), remaining)
        return self.received[count]


def listening_actor(name: str, endpoint: str) -> Actor:
    """An actor whose signed profile names ``endpoint``, where the suite listens."""
    identity, keys, t = (
        SigningIdentity.from_seed(os.urandom(32)),
        EncryptionKeyPair.from_seed(os.urandom(32)),
        now(),
    )
    profile = NodeProfile(
        name=name,
        role="clinic",
        endpoints=(endpoint,),
        enc_keys=(EncryptionKey(key=keys.public_key, nbf=t - DAY, exp=t + 365 * DAY),),
        versions=(0,),
        seq=1,
        iat=t,
    )
    return Actor(name, identity, keys, sign_record(profile, identity))


#: How long the case waits for each delivery: the reference node delivers its outbox every 5 s.
DELIVERY_WAIT = 20.0


@case("documents.rejection-delivered", requires=["API-15", "API-32"])
async def rejection_delivered(s: Session) -> None:
    """A rejected deposit's decision is sent to the depositor's endpoint, and sent again after no answer."""
    if URL(s.wire.base_url).host not in ("127.0.0.1", "localhost", "::1"):
        raise Skipped("the target must reach an endpoint the suite serves on 127.0.0.1")
    endpoint = DecisionEndpoint(failures=1)
    try:
        lab = await endpoint.start("Conformance listening lab")
        grant = await s.connect(lab)
        sealed = await s.deposit(lab, grant, b"bilirubin 12 umol/L", title="Bilirubin")
        rejected = (await s.manage("reject", doc=sealed.doc))["decision"]
        first = await endpoint.next_request(time.monotonic() + DELIVERY_WAIT, "after the rejection")
        second = await endpoint.next_request(time.monotonic() + DELIVERY_WAIT, "after a 503 answer")
    finally:
        await endpoint.close()
    for number, (signer, data) in enumerate((first, second), start=1):
        if signer != s.patient.did:
            raise Failed(f"delivery {number} is not a request signed by the patient's node")
        try:
            request = cbor.decode(data)
            decision = open_record(request["decision"], DepositDecision)
        except (FedrecordError, KeyError, TypeError) as exc:
            raise Failed(f"delivery {number} does not carry a deposit-decision ({exc})") from None
        if request["decision"] != rejected or decision.record.decision != "rejected":
            raise Failed(f"delivery {number} is not the rejection the patient signed")
        if (decision.record.doc, decision.record.deposit) != (sealed.doc, sealed.deposit.id):
            raise Failed(f"delivery {number} names another document or deposit")


# --- slow senders ([API-33]) ------------------------------------------------------------------------

#: The spec's limit: a CBOR body fully arrived, or a stream's next byte, within 30 seconds.
SLOW_LIMIT = 30.0
#: How long the suite's slow sender stalls: past the limit, with room for the node's timer to fire.
STALL = SLOW_LIMIT + 3


async def _stalled(s: Session, head: str, first: bytes) -> Answer:
    """Send ``head`` and ``first``, then nothing for :data:`STALL` seconds; the node's answer meanwhile."""
    target = URL(s.wire.base_url)
    raw = await raw_exchange(
        target.host or "127.0.0.1",
        target.port or 80,
        head.encode("latin-1") + first,
        pause_after=len(head) + len(first),
        pause=STALL,
        read_timeout=10,
    )
    return Answer(status_of(raw) or 0, {}, body_of(raw))


@case("documents.slow-senders", requires=["API-33", "ERR-4"], tags=("slow",), adversarial=True)
async def slow_senders(s: Session) -> None:
    """A CBOR body or a document stream that stalls for 30 s is refused with timeout; nothing is kept."""
    lab, grant = await connected(s)
    sealed = s.seal(lab, grant, b"ferritin 80 ug/L", title="Ferritin")
    stream_head = deposit_head(s, lab, sealed, content_length=len(sealed.ciphertext))
    invitation = await s.invitation()
    stranger = Actor.create("Conformance slow clinic")
    data = cbor.encode({"v": 0, "token": invitation["token"], "profile": stranger.profile.encoded})
    signed = s.wire.signed_headers(
        stranger.identity, "POST", "/v0/connect", data, headers={"Content-Type": "application/cbor"}
    )
    cbor_head = request_head("POST", "/v0/connect", signed, content_length=len(data))
    # Both stall at once: the run waits the limit once, not twice.
    stream_answer, cbor_answer = await asyncio.gather(
        _stalled(s, stream_head, sealed.ciphertext[:100]), _stalled(s, cbor_head, data[:10])
    )
    await refused_deposit(s, stream_answer, "timeout", sealed.doc, what="a stream stalled for 30 s")
    expect_refusal(cbor_answer, "timeout", what="a connect body stalled for 30 s")
    # The stalled connect stored nothing: its invitation still connects the clinic once.
    retry = await s.wire.call(
        "/v0/connect", stranger.identity, {"token": invitation["token"], "profile": stranger.profile.encoded}
    )
    expect_status(retry, 201, what="the invitation of a timed-out connect")
    await honest_deposit_lands(s, lab, sealed, after="a stalled stream")


@case("documents.receipt-before-bytes", requires=["API-23"])
async def receipt_before_bytes(s: Session) -> None:
    """The receipt of a fetch is in the audit log while the requester has taken only the first bytes of
    a document far larger than any socket buffer: logged before any byte was sent, not after the last."""
    lab, grant = await connected(s, "Conformance lab of a large scan")
    sealed = await s.accepted(lab, grant, os.urandom(24 << 20), title="Large scan", category="imaging")
    reader, chain = await reader_of_all(s, "Conformance slow reader")
    receipt = reader.receipt(s.patient.did, sealed.doc, chain)
    data = cbor.encode({"v": 0, "chain": [chain.encoded], "receipt": receipt.encoded, "profile": reader.profile.encoded})
    headers = s.wire.signed_headers(
        reader.identity, "POST", "/v0/fetch", data, headers={"Content-Type": "application/cbor"}
    )
    url = URL(s.wire.base_url)
    stream_reader, writer = await asyncio.open_connection(url.host, url.port)
    try:
        head = f"POST /v0/fetch HTTP/1.1\r\nContent-Length: {len(data)}\r\n"
        head += "".join(f"{name}: {value}\r\n" for name, value in headers.items()) + "\r\n"
        writer.write(head.encode() + data)
        await writer.drain()
        async with asyncio.timeout(30):
            status = await stream_reader.readline()
            await stream_reader.read(1000)  # a first piece; the rest stays unread
        await asyncio.sleep(1)
        logged = receipt_ids(await audit_entries(s))
    finally:
        writer.close()
    if status_of(status) != 200:
        raise Failed(f"set-up: the fetch of the large scan answered {status!r}")
    if receipt.id not in logged:
        raise Failed("the first bytes of the document came while its receipt was not yet in the audit log")
