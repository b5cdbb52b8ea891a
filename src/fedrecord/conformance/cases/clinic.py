"""What a clinic does as a requester (15.4 to 15.16, 15.20): the suite plays the patient's node.

Each case serves a fresh fake patient's node (:mod:`..fake_patient`) on
127.0.0.1 and drives the clinic under test through its control endpoint
(``POST /v0/manage`` with the clinic's own key, 15.20): connect, deposit,
flush, poll, fetch, sync, delegate, held.  The fake records every request the
clinic sends, so a case reads what the clinic asked for; it crafts the
answers, honest or not, and reads from the manage answer what the clinic made
of them ([API-63]): the code of its own failed check, the fake's refusal, or
``unreachable`` (502) for an answer that counts as none ([API-5]).  What the
clinic kept is read back through the protocol: ``held`` lists its copies, a
later poll or fetch shows whether it is connected or holds a grant, and the
attestations and requests it sends show what it applied.

The clinic also polls and flushes in the background (every 5 s for the
reference clinic): a fake answers those requests as it answers the case's,
so they change nothing a case checks.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable
from typing import Any

from fedrecord.core import (
    AccessReceipt,
    DocumentHeader,
    Grant,
    NodeProfile,
    Revocation,
    Signed,
    SigningIdentity,
    open_record,
    sign_record,
)
from fedrecord.core.documents import DocumentReader
from fedrecord.core.errors import Code, FedrecordError
from fedrecord.core.key_wraps import open_deposit_key
from fedrecord.core.reconcile import END, Mode, decode_message

from ..actors import now, pieces
from ..fake_patient import (
    OTHER_REQUEST,
    OTHER_SIGNER,
    OVER_CAP_MODE,
    UNAVAILABLE,
    UNREADABLE,
    UNSIGNED,
    FakeDocument,
    FakeNode,
    Received,
)
from ..registry import Failed, Skipped, case
from ..session import Session, expect_refusal
from ..wire import Answer

#: Answers that count as no answer ([API-5], [HTTP-13]): the clinic must say ``unreachable``.
NO_ANSWER = (UNSIGNED, OTHER_SIGNER, OTHER_REQUEST, UNAVAILABLE, UNREADABLE)
UNREACHABLE = 502
#: How long a case waits for the clinic's outbox to retry an entry after its backoff (1 s, then 2 s...).
RETRY_WAIT = 12.0


# --- driving the clinic -----------------------------------------------------------------------------


def _identity(s: Session) -> SigningIdentity:
    s.require_peer()
    identity: SigningIdentity | None = s.peer_identity
    if identity is None:
        raise Skipped("needs the clinic's seed (--launch-peer, or --peer with --peer-seed)")
    return identity


def _did(s: Session) -> str:
    return _identity(s).did


async def _op(s: Session, op: str, **args: Any) -> Answer:
    """A manage op; its answer must be signed by the clinic and bound to the request ([API-60])."""
    answer = await s.clinic_manage(op, **args)
    if not answer.signed_by(_did(s)):
        raise Failed(f"the clinic's answer to manage {op} ({answer.describe()}) is not signed by it")
    return answer


async def _ok(s: Session, op: str, *, what: str = "set-up", **args: Any) -> dict[str, Any]:
    answer = await _op(s, op, **args)
    if answer.status != 200:
        raise Failed(f"{what}: manage {op} answered {answer.describe()}")
    return answer.data


async def _refused(
    s: Session, expected: str, op: str, *, status: int | None = None, what: str = "", **args: Any
) -> None:
    answer = await _op(s, op, **args)
    expect_refusal(answer, expected, status, what=what or f"manage {op}")


async def _connect(s: Session, fake: FakeNode) -> Signed[Grant]:
    """Connect the clinic to ``fake`` through a fresh invitation; the deposit grant it kept."""
    data = await _ok(s, "connect", code=fake.invitation())
    if data.get("patient") != fake.did or fake.deposit_grant is None:
        raise Failed(f"set-up: connect answered patient {data.get('patient')!r}, not the fake's {fake.did}")
    if data.get("grant") != fake.deposit_grant.encoded:
        raise Failed("connect does not answer the deposit grant the patient's node gave")
    return fake.deposit_grant


async def _reader(s: Session, fake: FakeNode, **grant: Any) -> Signed[Grant]:
    """Connect, give the clinic a read grant in the state answer, and poll so that it keeps it."""
    await _connect(s, fake)
    granted = fake.grant(_did(s), **grant)
    data = await _ok(s, "poll", patient=fake.did)
    if data.get("seq") != fake.heads[-1].record.seq:
        raise Failed(
            f"set-up: poll answered seq {data.get('seq')!r}, the fake's head is {fake.heads[-1].record.seq}"
        )
    return granted


async def _holding(s: Session, fake: FakeNode, content: bytes = b"sodium 140 mmol/L") -> FakeDocument:
    """A document of the fake's record, fetched by the clinic (which then holds a copy)."""
    if not any(g.record.audience == _did(s) and "read" in g.record.actions for g in fake.grants):
        await _reader(s, fake)
    document = fake.add_document(content)
    data = await _ok(s, "fetch", patient=fake.did, doc=document.doc)
    if data.get("content") != content:
        raise Failed("set-up: the fetched content is not the document's")
    if document.doc not in await _held(s, fake):
        raise Failed("set-up: held does not list a document the clinic fetched")
    return document


async def _held(s: Session, fake: FakeNode) -> set[bytes]:
    data = await _ok(s, "held", patient=fake.did)
    docs = data.get("docs")
    if type(docs) is not list or not all(type(d) is dict and d.get("patient") == fake.did for d in docs):
        raise Failed(f"held answered {data!r}")
    return {d["doc"] for d in docs}


async def _not_connected(s: Session, fake: FakeNode) -> None:
    """The clinic kept no connection to ``fake``: poll and deposit are not-found, and it sent nothing."""
    before = len(fake.requests("/v0/state"))
    await _refused(s, "not-found", "poll", patient=fake.did, what="a poll of a patient the connect refused")
    await _refused(
        s,
        "not-found",
        "deposit",
        patient=fake.did,
        content=b"x",
        title="t",
        category="lab",
        what="a deposit for a patient the connect refused",
    )
    if len(fake.requests("/v0/state")) != before:
        raise Failed("the clinic polled a patient whose connect answer it refused")


async def _still_holds(s: Session, fake: FakeNode, document: FakeDocument, what: str) -> None:
    """Nothing of a refused state answer was applied: the copy is held and no attestation is sent."""
    if document.doc not in await _held(s, fake):
        raise Failed(f"{what}: the clinic destroyed its copy on a state answer it refused")
    await _ok(s, "flush")
    if fake.attestations:
        raise Failed(f"{what}: the clinic attested a tombstone of a state answer it refused")


async def _tombstone_applies(s: Session, fake: FakeNode, document: FakeDocument) -> None:
    """Once the fake answers honestly, the tombstone it held back applies (the case's control)."""
    fake.modes.pop("state", None)
    fake.served_head = None
    await _ok(s, "poll", patient=fake.did, what="an honest poll after the refused ones")
    if document.doc in await _held(s, fake):
        raise Failed("an honest state answer with the tombstone did not destroy the copy")


async def _wait_for(condition: Any, *, flush: Session | None = None, timeout: float = RETRY_WAIT) -> bool:
    """Wait (bounded) until ``condition()`` holds, flushing the clinic's outbox every half second."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.5)
        if flush is not None:
            await _ok(flush, "flush")
    return True


def _range_of(request: Received) -> str | None:
    ranges = request.headers.getall("Range", [])
    if len(ranges) > 1:
        raise Failed(f"a fetch request carries {len(ranges)} Range fields")
    return ranges[0] if ranges else None


def _receipt(request: Received) -> Signed[AccessReceipt]:
    try:
        return open_record(request.data.get("receipt", b""), AccessReceipt)
    except FedrecordError as exc:
        raise Failed(f"the fetch request's receipt does not open: {exc.code.value}") from None


def _signed_by_clinic(s: Session, requests: Iterable[Received], what: str) -> None:
    for request in requests:
        if request.signer != _did(s):
            raise Failed(f"{what}: a request ({request.method} {request.path}) is not signed by the clinic")


# --- connecting (15.4) ------------------------------------------------------------------------------


@case("clinic.connect", requires=["API-11"], tags=("peer",))
async def connect(s: Session) -> None:
    """The clinic connects through an invitation code: signed request, token and profile, grant kept."""
    async with FakeNode.serve() as fake:
        grant = await _connect(s, fake)
        requests = fake.requests("/v0/connect")
        if len(requests) != 1:
            raise Failed(f"the clinic sent {len(requests)} connect requests for one invitation")
        _signed_by_clinic(s, requests, "connect")
        data = requests[0].data
        profile = open_record(data.get("profile", b""), NodeProfile)
        if profile.signer != _did(s) or type(data.get("token")) is not bytes or len(data["token"]) != 32:
            raise Failed("the connect request does not carry the token and the clinic's own profile")
        if grant.record.audience != _did(s):
            raise Failed("set-up: the fake's deposit grant is not addressed to the clinic")
        await _ok(s, "poll", patient=fake.did, what="a poll of a connected patient")
        if await _held(s, fake):
            raise Failed("a clinic that only connected holds documents of the patient")


@case("clinic.connect-forged-grant", requires=["API-11", "API-63"], tags=("peer",), adversarial=True)
async def connect_forged_grant(s: Session) -> None:
    """A connect answer whose grant is signed by another key is refused bad-signature; nothing is kept."""
    async with FakeNode.serve() as fake:
        fake.connect_grant_signer = fake.imposter
        await _refused(
            s, "bad-signature", "connect", code=fake.invitation(), what="a grant signed by another key"
        )
        await _not_connected(s, fake)


@case("clinic.connect-forged-profile", requires=["API-11", "API-63"], tags=("peer",), adversarial=True)
async def connect_forged_profile(s: Session) -> None:
    """A connect answer whose profile is signed by another key is refused bad-signature; nothing is kept."""
    async with FakeNode.serve() as fake:
        fake.connect_profile_signer = fake.imposter
        await _refused(
            s, "bad-signature", "connect", code=fake.invitation(), what="a profile signed by another key"
        )
        await _not_connected(s, fake)


@case("clinic.connect-not-a-deposit-grant", requires=["API-11", "API-63"], tags=("peer",), adversarial=True)
async def connect_not_a_deposit_grant(s: Session) -> None:
    """A grant to another node, or one without deposit, is refused wrong-audience; nothing is kept."""
    async with FakeNode.serve() as fake:
        fake.connect_grant_audience = fake.imposter.did
        await _refused(s, "wrong-audience", "connect", code=fake.invitation(), what="a grant to another node")
        fake.connect_grant_audience = None
        fake.connect_grant_actions = ("delegate",)
        await _refused(s, "wrong-audience", "connect", code=fake.invitation(), what="a grant without deposit")
        await _not_connected(s, fake)


@case(
    "clinic.connect-no-answer",
    requires=["API-11", "HTTP-13", "API-5", "API-63"],
    tags=("peer",),
    adversarial=True,
)
async def connect_no_answer(s: Session) -> None:
    """A connect answer unsigned, signed by another key, bound elsewhere, 503 or unreadable is no answer."""
    async with FakeNode.serve() as fake:
        for mode in NO_ANSWER:
            fake.modes["connect"] = mode
            await _refused(
                s,
                "unreachable",
                "connect",
                status=UNREACHABLE,
                code=fake.invitation(),
                what=f"a connect answer that is {mode}",
            )
        await _not_connected(s, fake)


# --- depositing (15.5, 15.13) -----------------------------------------------------------------------


def _check_deposit(
    s: Session,
    fake: FakeNode,
    request: Received,
    doc: bytes,
    content: bytes,
    title: str,
    grant: Signed[Grant],
) -> tuple[bytes, bytes]:
    """One deposit request as [API-12] and [DOC-1] to [DOC-5] say; returns (its key, its prefix)."""
    clinic = _did(s)
    if request.path != f"/v0/documents/{doc.hex()}":
        raise Failed(f"the deposit went to {request.path}, not /v0/documents/<lowercase hex of the doc id>")
    if request.signer != clinic or request.headers.get("Fedrecord-Streamed") != "1":
        raise Failed("the deposit request is not signed by the clinic as a streamed request")
    deposit = next((d for d, _ in fake.deposits if d.record.doc == doc), None)
    if deposit is None:
        raise Failed("the deposit request's Fedrecord-Deposit field does not hold the deposit record")
    stream = request.body
    record = deposit.record
    if deposit.signer != clinic or record.patient != fake.did or record.grant != grant.id:
        raise Failed("the deposit record is not the clinic's, for this patient, under its deposit grant")
    if record.recipient_key != fake.keys.public_key or record.size != len(stream):
        raise Failed(
            "the deposit's key is not sealed to the patient's profile key, or its size is not the stream's"
        )
    try:
        key = open_deposit_key(deposit, patient=fake.did, keys=fake.keys).key
        reader = DocumentReader(key, expected_author=clinic, expected_patient=fake.did)
        plaintext = b"".join(reader.decrypt(pieces(stream)))
    except FedrecordError as exc:
        raise Failed(
            f"the deposited document does not open as the patient would open it: {exc.code.value}"
        ) from None
    if reader.document_id != doc:
        raise Failed("the deposited stream's document id is not the deposit's doc")
    header: Signed[DocumentHeader] | None = reader.header
    assert header is not None
    if plaintext != content or header.record.size != len(content):
        raise Failed(
            "the deposited content, or the size its header states, is not what was deposited ([DOC-5])"
        )
    if header.record.title != title or header.record.category != "lab":
        raise Failed("the document header does not say what the deposit op asked for")
    outside = [deposit.encoded, stream, *(v.encode() for v in request.headers.values())]
    if any(title.encode() in part for part in outside):
        raise Failed("the document's title travels outside its encryption ([DOC-2])")
    return key, stream[4:20]


@case("clinic.deposit", requires=["API-12", "DOC-1", "DOC-2", "DOC-5", "API-62"], tags=("peer",))
async def deposit(s: Session) -> None:
    """A deposit is sent as a signed streamed PUT under the deposit grant, key sealed to the patient."""
    async with FakeNode.serve() as fake:
        grant = await _connect(s, fake)
        content, title = b"HbA1c 6.1 % (43 mmol/mol)", "Conformance-title-7f3a"
        docs = []
        for _ in range(2):  # the same document twice: two keys, two prefixes ([DOC-1])
            data = await _ok(s, "deposit", patient=fake.did, content=content, title=title, category="lab")
            docs.append(data["doc"])
        if docs[0] == docs[1]:
            raise Failed("two deposits of the same content have the same document id: key and prefix reused")
        flushed = await _ok(s, "flush")
        if type(flushed.get("sent")) is not int or type(flushed.get("pending")) is not int:
            raise Failed(f"flush answered {flushed!r}")
        puts = fake.requests("/v0/documents/", "PUT")
        seen = []
        for doc in docs:
            request = next((r for r in puts if r.path.endswith(doc.hex())), None)
            if request is None:
                raise Failed("after a flush the patient's node has not received the deposit")
            seen.append(_check_deposit(s, fake, request, doc, content, title, grant))
        if seen[0][0] == seen[1][0] or seen[0][1] == seen[1][1]:
            raise Failed("two documents share a key or a nonce prefix ([DOC-1])")
        held = await _held(s, fake)
        if not set(docs) <= held:
            raise Failed("held does not list the clinic's own deposited documents")


@case(
    "clinic.deposit-no-answer",
    requires=["API-5", "HTTP-13", "API-32", "API-63"],
    tags=("peer",),
    adversarial=True,
)
async def deposit_no_answer(s: Session) -> None:
    """A deposit answered 503, unsigned, by another key or unreadably stays queued and is sent again."""
    async with FakeNode.serve() as fake:
        await _connect(s, fake)
        docs: dict[str, bytes] = {}
        for mode in (UNAVAILABLE, UNSIGNED, OTHER_SIGNER, UNREADABLE):
            fake.modes["deposit"] = mode
            data = await _ok(
                s, "deposit", patient=fake.did, content=mode.encode(), title=mode, category="lab"
            )
            docs[mode] = data["doc"]
            await _ok(s, "flush", what=f"flush of a deposit answered {mode}")  # never unreachable ([API-63])
        fake.modes.pop("deposit")

        def puts(doc: bytes) -> int:
            return sum(1 for r in fake.requests("/v0/documents/", "PUT") if r.path.endswith(doc.hex()))

        for mode, doc in docs.items():
            if puts(doc) < 1:
                raise Failed(f"flush did not send the deposit whose answer was to be {mode}")
        if not await _wait_for(lambda: all(puts(d) >= 2 for d in docs.values()), flush=s):
            lost = [m for m, d in docs.items() if puts(d) < 2]
            raise Failed(
                f"a deposit whose answer counts as none ({', '.join(lost)}) was not sent again: "
                "the clinic took it for an answer"
            )


@case("clinic.deposit-refused", requires=["API-32", "API-63"], tags=("peer",), adversarial=True)
async def deposit_refused(s: Session) -> None:
    """A deposit the patient's node refuses (signed wrong-audience) is done: it is not sent again."""
    async with FakeNode.serve() as fake:
        await _connect(s, fake)
        fake.refusals["deposit"] = Code("wrong-audience")
        data = await _ok(s, "deposit", patient=fake.did, content=b"refused", title="Refused", category="lab")
        flushed = await _ok(s, "flush")
        doc = data["doc"]
        sent = [r for r in fake.requests("/v0/documents/", "PUT") if r.path.endswith(doc.hex())]
        if len(sent) != 1:
            raise Failed(f"flush sent the deposit {len(sent)} times")
        await asyncio.sleep(2.5)  # past the first backoffs (1 s, 2 s) of an entry kept by mistake
        again = await _ok(s, "flush")
        sent = [r for r in fake.requests("/v0/documents/", "PUT") if r.path.endswith(doc.hex())]
        if len(sent) != 1:
            raise Failed("a deposit the patient's node refused was sent again")
        if again.get("pending", 0) > flushed.get("pending", 0):
            raise Failed("a refused deposit is still counted as pending")


# --- polling (15.7) ---------------------------------------------------------------------------------


@case(
    "clinic.poll-rollback",
    requires=["API-19", "HEAD-3", "API-63", "API-27"],
    tags=("peer",),
    adversarial=True,
)
async def poll_rollback(s: Session) -> None:
    """A state head older than one seen is refused rollback and nothing of its answer is applied."""
    async with FakeNode.serve() as fake:
        document = await _holding(s, fake)
        fake.advance()
        fake.advance()
        data = await _ok(s, "poll", patient=fake.did)
        seen = fake.heads[-1].record.seq
        if data.get("seq") != seen:
            raise Failed(f"poll answered seq {data.get('seq')!r}, the head served was {seen}")
        fake.tombstone(document.doc)
        fake.advance(seq=seen - 2)  # served from now on: a rolled-back head, with the tombstone
        await _refused(s, "rollback", "poll", patient=fake.did, what="a head older than the one seen")
        await _still_holds(s, fake, document, "a rolled-back head")
        await _tombstone_applies(s, fake, document)
        await _ok(s, "flush")
        if not await _wait_for(lambda: bool(fake.attestations), flush=s):
            raise Failed("the tombstone applied, but no attestation reached the patient's node ([API-27])")


@case("clinic.poll-forged-head", requires=["API-19", "API-63"], tags=("peer",), adversarial=True)
async def poll_forged_head(s: Session) -> None:
    """A state head signed by another key is refused bad-signature and nothing of its answer is applied."""
    async with FakeNode.serve() as fake:
        document = await _holding(s, fake)
        fake.tombstone(document.doc)
        fake.advance(seq=fake.heads[-1].record.seq + 1, signer=fake.imposter)
        await _refused(s, "bad-signature", "poll", patient=fake.did, what="a head signed by another key")
        await _still_holds(s, fake, document, "a forged head")
        await _tombstone_applies(s, fake, document)


@case(
    "clinic.poll-no-answer",
    requires=["API-19", "HTTP-13", "API-5", "API-63"],
    tags=("peer",),
    adversarial=True,
)
async def poll_no_answer(s: Session) -> None:
    """A state answer unsigned, by another key, bound elsewhere, 503 or unreadable is unreachable, unapplied."""
    async with FakeNode.serve() as fake:
        document = await _holding(s, fake)
        fake.tombstone(document.doc)
        for mode in NO_ANSWER:
            fake.modes["state"] = mode
            await _refused(
                s,
                "unreachable",
                "poll",
                status=UNREACHABLE,
                patient=fake.did,
                what=f"a state answer that is {mode}",
            )
        await _still_holds(s, fake, document, "a state answer that counts as none")
        await _tombstone_applies(s, fake, document)


@case("clinic.poll-over-cap", requires=["API-3", "API-19", "API-63"], tags=("peer",), adversarial=True)
async def poll_over_cap(s: Session) -> None:
    """A state answer of more than 1 MiB is refused too-large and nothing of it is applied."""
    async with FakeNode.serve() as fake:
        document = await _holding(s, fake)
        fake.tombstone(document.doc)
        fake.modes["state"] = OVER_CAP_MODE
        await _refused(s, "too-large", "poll", patient=fake.did, what="a state answer over 1 MiB")
        await _still_holds(s, fake, document, "a state answer over 1 MiB")
        await _tombstone_applies(s, fake, document)


@case("clinic.poll-forged-grant", requires=["API-19", "API-61"], tags=("peer",), adversarial=True)
async def poll_forged_grant(s: Session) -> None:
    """A read grant in the state answer signed by another key is not kept: the clinic cannot fetch."""
    async with FakeNode.serve() as fake:
        await _connect(s, fake)
        fake.grant(_did(s), signer=fake.imposter)
        document = fake.add_document(b"forged grant")
        await _ok(s, "poll", patient=fake.did)
        await _refused(
            s,
            "not-found",
            "fetch",
            patient=fake.did,
            doc=document.doc,
            what="a fetch under a grant signed by another key",
        )
        if fake.requests("/v0/fetch"):
            raise Failed("the clinic fetched under a grant the patient did not sign")
        if document.doc in await _held(s, fake):
            raise Failed("the clinic holds a document no grant of the patient's lets it read")


# --- tombstones (15.11) -----------------------------------------------------------------------------


@case("clinic.tombstone", requires=["API-27", "API-19"], tags=("peer",))
async def tombstone(s: Session) -> None:
    """A tombstone destroys the copy and is attested destroyed, once; also for a document never held."""
    async with FakeNode.serve() as fake:
        document = await _holding(s, fake)
        never = os.urandom(32)
        held_stone = fake.tombstone(document.doc)
        never_stone = fake.tombstone(never)
        await _ok(s, "poll", patient=fake.did)
        if document.doc in await _held(s, fake):
            raise Failed("the clinic still holds a document the patient deleted")
        await _ok(s, "flush")
        if not await _wait_for(lambda: len(fake.attestations) >= 2, flush=s):
            raise Failed(f"{len(fake.attestations)} attestations reached the patient's node for 2 tombstones")
        for stone in (held_stone, never_stone):
            made = [a for a in fake.attestations if a.record.doc == stone.record.doc]
            if len(made) != 1:
                raise Failed(f"{len(made)} attestations of one tombstone")
            record = made[0].record
            if (made[0].signer, record.patient, record.tombstone) != (_did(s), fake.did, stone.id):
                raise Failed("the attestation is not the clinic's, for this patient and tombstone")
            if record.outcome != "destroyed":
                raise Failed(
                    f"a copy fetched from the patient (or never held) is attested {record.outcome!r}"
                )
        _signed_by_clinic(s, fake.requests("/v0/attestations"), "attestations")
        await _ok(s, "poll", patient=fake.did)
        await _ok(s, "flush")
        if len(fake.attestations) != 2:
            raise Failed("a tombstone seen again was attested again")


@case("clinic.tombstone-authored", requires=["API-27"], tags=("peer",))
async def tombstone_authored(s: Session) -> None:
    """A tombstone of the clinic's own deposited document keeps it and attests retained with until and basis."""
    async with FakeNode.serve() as fake:
        await _connect(s, fake)
        doc = (await _ok(s, "deposit", patient=fake.did, content=b"own record", title="Own", category="lab"))[
            "doc"
        ]
        stone = fake.tombstone(doc)
        await _ok(s, "poll", patient=fake.did)
        await _ok(s, "flush")
        if not await _wait_for(lambda: bool(fake.attestations), flush=s):
            raise Failed("no attestation of the tombstone reached the patient's node")
        record = fake.attestations[0].record
        if record.tombstone != stone.id or record.outcome != "retained":
            raise Failed(f"the clinic's own authored document is attested {record.outcome!r}, not retained")
        if record.retain_until is None or record.retain_until <= now() or not record.basis:
            raise Failed("a retention attestation without a future until and a basis")
        if doc not in await _held(s, fake):
            raise Failed("the clinic destroyed its own authored record on the patient's tombstone")


@case("clinic.tombstone-forged", requires=["API-19", "API-27"], tags=("peer",))
async def tombstone_forged(s: Session) -> None:
    """A tombstone signed by another key in an honest state answer is not applied and not attested."""
    async with FakeNode.serve() as fake:
        document = await _holding(s, fake)
        fake.tombstone(document.doc, signer=fake.imposter)
        fake.advance()
        await _ok(s, "poll", patient=fake.did)
        await _still_holds(s, fake, document, "a tombstone signed by another key")


# --- fetching (15.9, 15.15) -------------------------------------------------------------------------


@case("clinic.fetch", requires=["API-24"], tags=("peer",))
async def fetch(s: Session) -> None:
    """A fetch is signed, carries the chain, a receipt for the document and grant, and the clinic's profile."""
    async with FakeNode.serve() as fake:
        grant = await _reader(s, fake)
        document = await _holding(s, fake, b"creatinine 80 umol/L")
        requests = fake.requests("/v0/fetch")
        if len(requests) != 1:
            raise Failed(f"one fetch op sent {len(requests)} fetch requests")
        _signed_by_clinic(s, requests, "fetch")
        data = requests[0].data
        receipt = _receipt(requests[0])
        if (receipt.signer, receipt.record.patient, receipt.record.doc, receipt.record.grant) != (
            _did(s),
            fake.did,
            document.doc,
            grant.id,
        ):
            raise Failed("the receipt is not the clinic's, for this patient, document and grant")
        if data.get("chain") != [grant.encoded] or _range_of(requests[0]) is not None:
            raise Failed(
                "the fetch does not carry the grant as its chain, or asks for a range of a new document"
            )


@case("clinic.fetch-bad-wrap", requires=["API-24", "API-63"], tags=("peer",), adversarial=True)
async def fetch_bad_wrap(s: Session) -> None:
    """A key wrap for another document, reader or key is wrap-mismatch, by another signer bad-signature."""
    async with FakeNode.serve() as fake:
        await _reader(s, fake)
        expected = {
            "other-doc": "wrap-mismatch",
            "other-key": "wrap-mismatch",
            "other-recipient": "wrap-mismatch",
            OTHER_SIGNER: "bad-signature",
        }
        for mode, code in expected.items():
            document = fake.add_document(f"wrap {mode}".encode())
            fake.fetch_wrap = mode
            await _refused(s, code, "fetch", patient=fake.did, doc=document.doc, what=f"a key wrap {mode}")
            if document.doc in await _held(s, fake):
                raise Failed(f"the clinic keeps a document whose key wrap is {mode}")
        fake.fetch_wrap = "honest"
        data = await _ok(s, "fetch", patient=fake.did, doc=document.doc, what="an honest fetch afterwards")
        if data.get("content") != document.content:
            raise Failed("an honest fetch after the refused ones does not give the document")


@case("clinic.fetch-bad-stream", requires=["API-24", "API-63"], tags=("peer",), adversarial=True)
async def fetch_bad_stream(s: Session) -> None:
    """A tampered stream is refused malformed and one naming another patient invalid-record; nothing kept."""
    async with FakeNode.serve() as fake:
        await _reader(s, fake)
        tampered = fake.add_document(os.urandom(3000))
        fake.fetch_tamper = True
        await _refused(s, "malformed", "fetch", patient=fake.did, doc=tampered.doc, what="a tampered stream")
        fake.fetch_tamper = False
        other = fake.add_document(
            b"someone else's result", patient=SigningIdentity.from_seed(os.urandom(32)).did
        )
        await _refused(
            s,
            "invalid-record",
            "fetch",
            patient=fake.did,
            doc=other.doc,
            what="a document whose header names another patient",
        )
        held = await _held(s, fake)
        if tampered.doc in held or other.doc in held:
            raise Failed("the clinic keeps a document whose stream failed its checks")
        data = await _ok(
            s, "fetch", patient=fake.did, doc=tampered.doc, what="the stream served intact afterwards"
        )
        if data.get("content") != tampered.content:
            raise Failed("the intact stream of a document once served tampered does not open")


@case("clinic.fetch-no-answer", requires=["API-5", "HTTP-13", "API-63"], tags=("peer",), adversarial=True)
async def fetch_no_answer(s: Session) -> None:
    """A fetch refusal unsigned, by another key, bound elsewhere, 503 or unreadable is unreachable."""
    async with FakeNode.serve() as fake:
        await _reader(s, fake)
        unknown = os.urandom(32)  # the fake refuses it not-found
        for mode in NO_ANSWER:
            fake.modes["fetch"] = mode
            await _refused(
                s,
                "unreachable",
                "fetch",
                status=UNREACHABLE,
                patient=fake.did,
                doc=unknown,
                what=f"a fetch refusal that is {mode}",
            )
        fake.modes.pop("fetch")
        await _refused(s, "not-found", "fetch", patient=fake.did, doc=unknown, what="a signed not-found")


@case("clinic.fetch-resume", requires=["API-42", "API-63"], tags=("peer", "resume"), adversarial=True)
async def fetch_resume(s: Session) -> None:
    """A fetch cut short is unreachable; the next asks for the rest with a signed Range and a new receipt."""
    async with FakeNode.serve() as fake:
        await _reader(s, fake)
        document = fake.add_document(os.urandom(300_000))
        cut = 150_000
        fake.fetch_cut_after = cut
        await _refused(
            s,
            "unreachable",
            "fetch",
            status=UNREACHABLE,
            patient=fake.did,
            doc=document.doc,
            what="a fetch whose stream was cut",
        )
        if document.doc in await _held(s, fake):
            raise Failed("the clinic lists a document whose stream was cut as held")
        data = await _ok(s, "fetch", patient=fake.did, doc=document.doc, what="the fetch after the cut")
        if data.get("content") != document.content:
            raise Failed("the resumed fetch does not give the document")
        first, second = fake.requests("/v0/fetch")[-2:]
        asked = _range_of(second)
        if asked is None:
            raise Failed(
                "the fetch after a cut does not resume (no Range): declare --skip resume if intended"
            )
        start = asked.removeprefix("bytes=").removesuffix("-")
        if not asked.startswith("bytes=") or not asked.endswith("-") or not start.isdigit():
            raise Failed(f"the resumed fetch asks Range: {asked}, not bytes=N-")
        if not 0 < int(start) <= cut:
            raise Failed(f"the resumed fetch asks from byte {start}; {cut} bytes were sent")
        # The fake verified the request with its Range among the covered components ([HTTP-4]).
        _signed_by_clinic(s, [second], "the resumed fetch")
        if _receipt(first).id == _receipt(second).id:
            raise Failed("the resumed fetch repeats the first attempt's receipt")


@case("clinic.fetch-resume-mismatch", requires=["API-42"], tags=("peer", "resume"), adversarial=True)
async def fetch_resume_mismatch(s: Session) -> None:
    """Kept bytes that do not complete the document, or a bad-range, make the clinic fetch again from byte 0."""
    async with FakeNode.serve() as fake:
        await _reader(s, fake)
        for variant in ("corrupted kept bytes", "bad-range"):
            document = fake.add_document(os.urandom(300_000))
            fake.fetch_cut_after = 150_000
            fake.fetch_corrupt_cut = variant == "corrupted kept bytes"
            await _refused(
                s,
                "unreachable",
                "fetch",
                status=UNREACHABLE,
                patient=fake.did,
                doc=document.doc,
                what="a fetch whose stream was cut",
            )
            fake.fetch_refuse_range = variant == "bad-range"
            before = len(fake.requests("/v0/fetch"))
            data = await _ok(
                s, "fetch", patient=fake.did, doc=document.doc, what=f"the fetch after {variant}"
            )
            fake.fetch_refuse_range = False
            if data.get("content") != document.content:
                raise Failed(f"the fetch after {variant} does not give the document")
            attempts = fake.requests("/v0/fetch")[before:]
            ranges = [_range_of(r) for r in attempts]
            if ranges[0] is None:
                raise Failed(
                    "the fetch after a cut does not resume (no Range): declare --skip resume if intended"
                )
            if len(attempts) != 2 or ranges[1] not in (None, "bytes=0-"):
                raise Failed(
                    f"after {variant} the clinic asked {ranges}, not the rest and then the whole stream"
                )


@case("clinic.fetch-resume-revoked", requires=["API-43"], tags=("peer", "resume"), adversarial=True)
async def fetch_resume_revoked(s: Session) -> None:
    """The kept bytes of a cut fetch die with the grant: under a new grant the clinic fetches from byte 0."""
    async with FakeNode.serve() as fake:
        grant = await _reader(s, fake)
        document = fake.add_document(os.urandom(300_000))
        fake.fetch_cut_after = 150_000
        await _refused(
            s,
            "unreachable",
            "fetch",
            status=UNREACHABLE,
            patient=fake.did,
            doc=document.doc,
            what="a fetch whose stream was cut",
        )
        fake.revoke(grant)
        await _ok(s, "poll", patient=fake.did)
        await _refused(
            s, "revoked", "fetch", patient=fake.did, doc=document.doc, what="a fetch under a revoked grant"
        )
        fake.grant(_did(s))
        await _ok(s, "poll", patient=fake.did)
        data = await _ok(s, "fetch", patient=fake.did, doc=document.doc, what="the fetch under a new grant")
        if data.get("content") != document.content:
            raise Failed("the fetch under a new grant does not give the document")
        last = fake.requests("/v0/fetch")[-1]
        if _range_of(last) not in (None, "bytes=0-"):
            raise Failed(f"bytes kept under a revoked grant were resumed ({_range_of(last)}) ([API-43])")


# --- syncing (15.16, 16) ----------------------------------------------------------------------------


def _asked(fake: FakeNode, since: int) -> set[bytes]:
    asked: set[bytes] = set()
    for request in fake.requests("/v0/records")[since:]:
        asked |= set(request.data.get("ids") or [])
    return asked


@case("clinic.sync-forged-record", requires=["API-45", "API-63"], tags=("peer",), adversarial=True)
async def sync_forged_record(s: Session) -> None:
    """A records answer with a record not signed by the patient, or not asked for, stores nothing."""
    async with FakeNode.serve() as fake:
        document = await _holding(s, fake)
        fake.modes["state"] = UNAVAILABLE  # the tombstone below reaches the clinic only by the sync
        fake.tombstone(document.doc)
        forged = sign_record(Revocation(grant=os.urandom(32), iat=now()), fake.imposter)
        forged_grant = fake.grant(_did(s), signer=fake.imposter)
        fake.grants.remove(forged_grant)
        fake.extra_view = [forged_grant]
        before = len(fake.requests("/v0/records"))
        await _refused(
            s,
            "bad-signature",
            "sync",
            patient=fake.did,
            records_only=True,
            what="a records answer with a grant not signed by the patient",
        )
        first = _asked(fake, before) - {forged_grant.id}
        if not first:
            raise Failed("the clinic asked for no record the patient's node holds")
        await _still_holds(s, fake, document, "a refused records answer")
        fake.extra_view = []
        fake.records_extra = [forged.encoded]
        before = len(fake.requests("/v0/records"))
        await _refused(
            s,
            "malformed",
            "sync",
            patient=fake.did,
            records_only=True,
            what="a records answer with a record not asked for",
        )
        if _asked(fake, before) != first:
            raise Failed(
                "after a refused records answer the clinic no longer asks for all its records: it kept some"
            )
        await _still_holds(s, fake, document, "a refused records answer")
        fake.records_extra = []
        before = len(fake.requests("/v0/records"))
        data = await _ok(s, "sync", patient=fake.did, records_only=True, what="an honest sync afterwards")
        if _asked(fake, before) != first or data.get("records_stored") != len(first):
            raise Failed("the honest sync after refused answers does not bring every record")
        if document.doc in await _held(s, fake):
            raise Failed("the tombstone the honest sync brought was not applied")


@case("clinic.sync-first-message", requires=["SYNC-8", "API-45"], tags=("peer",))
async def sync_first_message(s: Session) -> None:
    """The clinic's first sync message is one account of the whole space: a fingerprint or a list of all."""
    async with FakeNode.serve() as fake:
        await _reader(s, fake)
        for _ in range(40):
            fake.revocations.append(sign_record(Revocation(grant=os.urandom(32), iat=now()), fake.identity))
        fake.advance()
        synced: set[bytes] = set()
        for round_ in ("first", "second"):
            before = len(fake.requests("/v0/sync"))
            data = await _ok(s, "sync", patient=fake.did, records_only=True, what=f"the {round_} sync")
            messages = fake.requests("/v0/sync")[before:]
            if not messages:
                raise Failed("a sync sent no reconciliation message")
            _signed_by_clinic(s, messages, "sync")
            try:
                opening = decode_message(messages[0].data.get("message", b""), max_size=1 << 20)
            except FedrecordError as exc:
                raise Failed(f"the first sync message does not decode: {exc.code.value}") from None
            if len(opening.ranges) != 1 or opening.ranges[0].upper != END:
                raise Failed(
                    f"the {round_} sync opens with {len(opening.ranges)} ranges, not one over the space"
                )
            only = opening.ranges[0]
            if only.mode not in (Mode.FINGERPRINT, Mode.ID_PREFIXES):
                raise Failed(f"the {round_} sync opens with a range of mode {only.mode.name}")
            if only.mode is Mode.ID_PREFIXES:
                size = opening.prefix_len
                listed = {only.payload[i : i + size] for i in range(0, len(only.payload), size)}
                if any(i[:size] not in listed for i in synced):
                    raise Failed(
                        "the opening list leaves out records the clinic synced: not all of its items"
                    )
            for sent in messages[:-1]:
                reply = decode_message(sent.reply, max_size=1 << 20)
                if all(r.mode is Mode.SKIP for r in reply.ranges):
                    raise Failed(
                        "the clinic went on after an answer of skips only: reconciliation was complete"
                    )
            if round_ == "first":
                synced = set(fake.view(_did(s), [b""]))
                if data.get("records_stored", 0) < 40:
                    raise Failed(f"the first sync stored {data.get('records_stored')} records of 40+")
            elif data.get("records_stored") != 0:
                raise Failed("a second sync of an unchanged record stored records again")


@case("clinic.sync-batch-bad-answer", requires=["API-72", "API-45"], tags=("peer",), adversarial=True)
async def sync_batch_bad_answer(s: Session) -> None:
    """A batch with a tampered stream, or a key wrap for other documents: the clinic keeps nothing failing."""
    async with FakeNode.serve() as fake:
        await _reader(s, fake)
        good = [fake.add_document(f"batch {i}: urea 5.{i} mmol/L".encode()) for i in range(3)]
        bad = fake.add_document(b"tampered in the batch")
        fake.tampered.add(bad.doc)  # in a batch and in a single fetch alike
        answer = await _op(s, "sync", patient=fake.did)
        batches = fake.requests("/v0/fetch-batch")
        if not batches:
            raise Skipped(
                "the clinic's sync fetches no batch (POST /v0/fetch-batch), so [API-72] is not reached"
            )
        _signed_by_clinic(s, batches, "batch fetch")
        asked = set(_receipt(batches[0]).record.documents)
        if bad.doc not in asked or _receipt(batches[0]).record.patient != fake.did:
            raise Failed("the batch fetch does not name the missing documents of this patient")
        if answer.status != 200 and answer.code != "malformed":
            raise Failed(f"a sync whose batch holds a tampered stream answered {answer.describe()}")
        if bad.doc in await _held(s, fake):
            raise Failed("the clinic keeps a document whose stream in a batch answer is tampered ([API-72])")
        # A wrap for other documents: nothing of the batch opens; single fetches are refused meanwhile.
        fake.tampered.clear()
        fake.batch_wrap = "other-docs"
        fake.refusals["fetch"] = Code.NOT_FOUND
        more = [fake.add_document(f"wrapped elsewhere {i}".encode()) for i in range(2)]
        before = len(fake.requests("/v0/fetch-batch"))
        answer = await _op(s, "sync", patient=fake.did)
        if len(fake.requests("/v0/fetch-batch")) == before:
            raise Failed("the second sync fetched no batch of the documents it lacks")
        if answer.status != 200 and answer.code != "wrap-mismatch":
            raise Failed(f"a sync whose batch key wrap is for other documents answered {answer.describe()}")
        held = await _held(s, fake)
        if held & {d.doc for d in (bad, *more)}:
            raise Failed("the clinic keeps a document of a batch whose key wrap names other documents")
        fake.batch_wrap = "honest"
        fake.refusals.clear()
        await _ok(s, "sync", patient=fake.did, what="an honest sync afterwards")
        if {d.doc for d in (*good, bad, *more)} - await _held(s, fake):
            raise Failed("an honest sync after the refused batches does not bring every document")


# --- delegating (15.12) -----------------------------------------------------------------------------


@case("clinic.delegate", requires=["API-29"], tags=("peer",))
async def delegate(s: Session) -> None:
    """A delegation sends the delegate the full chain, the patient's did, endpoint and signed profile."""
    async with (
        FakeNode.serve() as fake,
        FakeNode.serve("Conformance delegate", role="clinic") as delegate_node,
    ):
        root = await _reader(s, fake, actions=("read", "delegate"))
        data = await _ok(
            s,
            "delegate",
            patient=fake.did,
            to=delegate_node.did,
            endpoint=delegate_node.url,
            categories=["lab"],
            days=7,
        )
        requests = delegate_node.requests("/v0/grants")
        if len(requests) != 1:
            raise Failed(f"the delegate received {len(requests)} delegation requests")
        _signed_by_clinic(s, requests, "delegation")
        sent = requests[0].data
        if sent.get("patient") != fake.did or sent.get("endpoint") != fake.url:
            raise Failed("the delegation does not name the patient's did and endpoint")
        if sent.get("profile") != fake.profile.encoded:
            raise Failed("the delegation does not carry the patient's signed profile")
        chain = sent.get("chain")
        if type(chain) is not list or len(chain) != 2 or chain[0] != root.encoded:
            raise Failed("the delegation does not carry the full chain, root first")
        child = open_record(chain[1], Grant)
        record = child.record
        if child.signer != _did(s) or record.parent != root.id or record.audience != delegate_node.did:
            raise Failed("the chain's leaf is not the clinic's grant to the delegate under the patient's")
        if (
            record.actions != ("read",)
            or record.scope.categories != ("lab",)
            or record.exp > now() + 7 * 86_400 + 5
        ):
            raise Failed("the child grant is not the read grant asked for (categories, days)")
        if data.get("grant") != chain[1]:
            raise Failed("the delegate op does not answer the child grant it sent")


@case(
    "clinic.delegate-no-answer",
    requires=["API-29", "HTTP-13", "API-5", "API-63"],
    tags=("peer",),
    adversarial=True,
)
async def delegate_no_answer(s: Session) -> None:
    """A delegate's answer unsigned, by another key, bound elsewhere, 503 or unreadable is unreachable."""
    async with (
        FakeNode.serve() as fake,
        FakeNode.serve("Conformance delegate", role="clinic") as delegate_node,
    ):
        await _reader(s, fake, actions=("read", "delegate"))
        for mode in NO_ANSWER:
            delegate_node.modes["grants"] = mode
            await _refused(
                s,
                "unreachable",
                "delegate",
                status=UNREACHABLE,
                patient=fake.did,
                to=delegate_node.did,
                endpoint=delegate_node.url,
                what=f"a delegate's answer that is {mode}",
            )
        delegate_node.modes.pop("grants")
        delegate_node.refusals["grants"] = Code("broken-chain")
        await _refused(
            s,
            "broken-chain",
            "delegate",
            patient=fake.did,
            to=delegate_node.did,
            endpoint=delegate_node.url,
            what="the delegate's signed refusal",
        )
        if len(delegate_node.requests("/v0/grants")) != len(NO_ANSWER) + 1:
            raise Failed("the clinic did not send each delegation once")
