"""``POST /v0/manage`` on a clinic: the clinic drives its own node over HTTP with the node's key (spec 15.20).

A patient node, a GP and a lab run in this process (tests/node_helpers.py, the demo's story), and
the tests add clinics and patients of their own where an op changes what others rely on.  Every
op runs between a real clinic node and a real patient node ([API-62]); refusals ([API-60],
[API-61]) are checked as tests/test_patient_control.py checks them: the code, the status, and
every table and file of the clinic as it was, the request's nonce aside.  What the patient's node
did wrong comes back as the code of the manage answer ([API-63]): its refusal, the clinic's own
failed check, or ``unreachable`` (502) when it gave no answer -- a stopped node, a 5xx, an
unreadable error body, an unsigned answer ([API-5]), played by a small fake patient server.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web

from fedrecord.core import (
    Action,
    Grant,
    RemoteProtocolError,
    Scope,
    Signed,
    SigningIdentity,
    StateHead,
    cbor,
    open_record,
    sign_record,
)
from fedrecord.http.aiohttp_signing import signed_response, verified
from fedrecord.node.patient import PatientNode
from fedrecord.node.wire import Invitation, encode_body

from .node_helpers import (
    DAY,
    RESULTS,
    Answer,
    Impostor,
    ServedNode,
    Story,
    answered,
    assert_unchanged,
    body,
    build_story,
    now,
    refused,
    send_signed,
    snapshot,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

LARGE = 786_432 + 1  # one byte more than a manage answer carries


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def story(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Story]:
    built = await build_story(tmp_path_factory.mktemp("clinic-control"))
    try:
        yield built
    finally:
        await built.close()


@pytest.fixture
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("nodes")


# --- helpers ---------------------------------------------------------------------------------------


async def manage(
    story: Story,
    clinic: ServedNode,
    op: Any,
    *,
    signer: SigningIdentity | Impostor | None = None,
    **args: Any,
) -> Answer:
    """A manage request to ``clinic``, signed with its own key (or ``signer``'s)."""
    identity = clinic.identity if signer is None else signer
    fields = {} if op is None else {"op": op}
    return await send_signed(
        story.session, identity, "POST", clinic.url + "/v0/manage", body(**fields, **args)
    )




async def refused_unchanged(
    story: Story,
    clinic: ServedNode,
    op: Any,
    status: int,
    code: str,
    /,
    *,
    signer: SigningIdentity | Impostor | None = None,
    **args: Any,
) -> None:
    """The request is refused with ``code`` and leaves every table and file of ``clinic`` as it was.

    ``status`` and ``code`` are positional only: ``code`` is also the argument of ``connect``.
    """
    before = await snapshot(clinic)
    refused(await manage(story, clinic, op, signer=signer, **args), status, code, signed=True)
    await assert_unchanged(clinic, before, nonce_spent=True)


def stranger() -> str:
    return SigningIdentity.from_seed(os.urandom(32)).did


async def connected_clinic(
    story: Story, root: Path, name: str, patient: ServedNode | None = None
) -> ServedNode:
    """A new clinic connected through its own ``connect`` op to ``patient`` (the story's by default)."""
    clinic = await ServedNode.create(root / name, role="clinic", name=name)
    patient = patient or story.patient
    invitation = await patient.patient.create_invitation(label=name, now=now())
    answer = answered(await manage(story, clinic, "connect", code=invitation.code()))
    assert answer["patient"] == patient.did
    return clinic


async def read_grant(patient: PatientNode, clinic: ServedNode) -> Signed[Grant]:
    return await patient.grant(
        audience=clinic.did,
        scope=Scope(categories=("lab",), past=True, future=True),
        actions=("read",),
        purpose="treatment",
        days=30,
        now=now(),
    )


# --- every op between real nodes ([API-62]) ---------------------------------------------------------


async def test_connect_deposit_flush(story: Story, root: Path) -> None:
    """connect keeps the deposit grant; deposit only queues; flush delivers it to the patient's inbox."""
    clinic = await ServedNode.create(root / "radiology", role="clinic", name="Radiologie")
    try:
        invitation = await story.patient.patient.create_invitation(label="radiology", now=now())
        answer = answered(await manage(story, clinic, "connect", code=invitation.url()))
        assert set(answer) == {"patient", "grant"} and answer["patient"] == story.patient.did
        grant = open_record(answer["grant"], Grant)
        assert grant.signer == story.patient.did and grant.record.audience == clinic.did
        assert grant.record.actions == (Action.DEPOSIT.value,)
        assert [c.patient for c in await clinic.clinic.connections()] == [story.patient.did]

        content = b"No focal lesion.\n"
        answer = answered(
            await manage(
                story,
                clinic,
                "deposit",
                patient=story.patient.did,
                content=content,
                title="Chest CT",
                category="imaging",
                labels=["SEX", "PSY", "SEX"],
            )
        )
        assert set(answer) == {"doc"} and len(answer["doc"]) == 32
        doc = answer["doc"]
        assert doc not in {item.doc for item in await story.patient.patient.inbox()}, "deposit only queues"
        assert [(o["kind"], o["done"]) for o in await clinic.clinic.outbox()] == [("deposit", False)]
        assert answered(await manage(story, clinic, "held")) == {
            "docs": [{"doc": doc, "patient": story.patient.did}]
        }

        assert answered(await manage(story, clinic, "flush")) == {"sent": 1, "pending": 0}
        (item,) = [item for item in await story.patient.patient.inbox() if item.doc == doc]
        assert (item.author, item.title, item.category, tuple(item.labels)) == (
            clinic.did,
            "Chest CT",
            "imaging",
            ("PSY", "SEX"),
        )
        assert answered(await manage(story, clinic, "flush")) == {"sent": 0, "pending": 0}
        # The invitation was used: the patient's refusal comes back with its code, nothing kept.
        await refused_unchanged(story, clinic, "connect", 409, "replay", code=invitation.code())
    finally:
        await clinic.stop()


async def test_poll_fetch_held(story: Story) -> None:
    gp, patient = story.gp, story.patient.did
    answer = answered(await manage(story, gp, "poll", patient=patient))
    assert set(answer) == {"seq", "destroyed", "attested", "grants"}
    kept = await gp.h.store.connection(patient)
    assert kept is not None and answer["seq"] == kept.head_seq >= 0
    assert answer["grants"] >= 2 and answer["destroyed"] == answer["attested"] == 0  # deposit + read grants

    answer = answered(await manage(story, gp, "fetch", patient=patient, doc=story.docs["cbc"]))
    assert answer == {"content": RESULTS["cbc"][3]}
    held = answered(await manage(story, gp, "held", patient=patient))["docs"]
    assert {"doc": story.docs["cbc"], "patient": patient} in held
    assert answered(await manage(story, gp, "held"))["docs"] == held  # the GP holds nothing else

    # Outside what the grant lets the GP see (PSY is hidden): the patient's not-found, nothing kept.
    await refused_unchanged(story, gp, "fetch", 404, "not-found", patient=patient, doc=story.docs["lithium"])


async def test_a_document_over_the_answer_cap_answers_its_size(story: Story) -> None:
    doc = await story.lab.clinic.deposit(
        story.patient.did,
        b"x" * LARGE,
        title="Genome panel",
        category="lab",
        doc_type="lab-result",
        now=now(),
    )
    assert (await story.lab.clinic.flush_outbox())[1] == 0
    await story.patient.patient.accept(doc, now=now())
    answered(await manage(story, story.gp, "poll", patient=story.patient.did))
    answer = answered(await manage(story, story.gp, "fetch", patient=story.patient.did, doc=doc))
    assert answer == {"size": LARGE}
    assert {"doc": doc, "patient": story.patient.did} in answered(await manage(story, story.gp, "held"))[
        "docs"
    ]


async def test_sync_answers_the_counts_of_its_report(story: Story) -> None:
    answer = answered(await manage(story, story.gp, "sync", patient=story.patient.did, records_only=True))
    assert set(answer) == {
        "rounds",
        "bytes_sent",
        "bytes_received",
        "records_fetched",
        "records_stored",
        "records_pushed",
        "documents_fetched",
        "documents_failed",
    }
    assert all(type(value) is int and value >= 0 for value in answer.values())
    assert answer["rounds"] >= 1 and answer["documents_fetched"] == 0  # records only
    again = answered(await manage(story, story.gp, "sync", patient=story.patient.did))
    assert again["records_stored"] == 0


async def test_delegate(story: Story) -> None:
    answer = answered(
        await manage(
            story,
            story.gp,
            "delegate",
            patient=story.patient.did,
            to=story.lab.did,
            endpoint=story.lab.url,
            categories=["lab"],
            days=7,
        )
    )
    child = open_record(answer["grant"], Grant)
    assert child.signer == story.gp.did and child.record.audience == story.lab.did
    assert child.record.parent == story.gp_grant.id and child.record.actions == ("read",)
    assert child.record.exp <= now() + 7 * DAY
    assert await story.lab.h.store.delegation_count(story.patient.did) == 1
    # The lab's delegated chain does not allow delegation: its own refusal, nothing kept.
    await refused_unchanged(
        story,
        story.lab,
        "delegate",
        403,
        "not-delegable",
        patient=story.patient.did,
        to=story.gp.did,
        endpoint=story.gp.url,
    )
    # The delegate refuses a child wider than its parent ([CAP-6]): its code comes back, nothing kept.
    await refused_unchanged(
        story,
        story.gp,
        "delegate",
        403,
        "widened",
        patient=story.patient.did,
        to=story.lab.did,
        endpoint=story.lab.url,
        categories=["imaging"],
    )
    # A node that answers unsigned (the patient's node has no /v0/grants) gave no answer ([API-5]).
    await refused_unchanged(
        story,
        story.gp,
        "delegate",
        502,
        "unreachable",
        patient=story.patient.did,
        to=story.patient.did,
        endpoint=story.patient.url,
    )


# --- refusals of the manage request ([API-60], [API-61]) ------------------------------------------------


async def test_another_key_is_wrong_audience(story: Story) -> None:
    patient = story.patient.did
    requests: list[tuple[str, dict[str, Any]]] = [
        ("flush", {}),
        ("poll", {"patient": patient}),
        ("deposit", {"patient": patient, "content": b"x", "title": "t", "category": "lab"}),
        ("fetch", {"patient": patient, "doc": story.docs["cbc"]}),
        ("frobnicate", {}),
    ]
    for signer in (story.patient.identity, story.lab.identity, SigningIdentity.from_seed(os.urandom(32))):
        for op, args in requests:
            await refused_unchanged(story, story.gp, op, 403, "wrong-audience", signer=signer, **args)
    # Another key claiming the clinic's did is refused before: its signature does not verify.
    impostor = Impostor(story.gp.did, story.lab.identity)
    before = await snapshot(story.gp)
    answer = await manage(story, story.gp, "flush", signer=impostor)
    assert (answer.status, answer.code) == (401, "bad-signature")
    await assert_unchanged(story.gp, before, nonce_spent=False)


async def test_each_node_serves_the_ops_of_its_role(story: Story) -> None:
    """The patient's node keeps its own ops; on a clinic a patient op is unknown (malformed)."""
    answer = await send_signed(
        story.session, story.patient.identity, "POST", story.patient.url + "/v0/manage", body(op="inbox")
    )
    assert set(answered(answer)) == {"items"}
    answer = await send_signed(
        story.session, story.patient.identity, "POST", story.patient.url + "/v0/manage", body(op="flush")
    )
    refused(answer, 400, "malformed", signed=True)
    await refused_unchanged(story, story.gp, "inbox", 400, "malformed")


def _deposit(**changes: Any) -> dict[str, Any]:
    fields = {"content": b"x", "title": "Note", "category": "note"}
    return {**fields, **changes}


MALFORMED: list[tuple[Any, dict[str, Any], str]] = [
    (None, {}, "no op"),
    (7, {}, "op not text"),
    ("frobnicate", {}, "unknown op"),
    ("connect", {}, "connect without code"),
    ("connect", {"code": ""}, "empty code"),
    ("connect", {"code": "fr0-%%%"}, "not base64url"),
    ("connect", {"code": "https://patient.example/?x=1"}, "a URL without code"),
    ("deposit", {"patient": "did:web:patient.example", **_deposit()}, "a did of another method"),
    ("deposit", {"patient": "PATIENT", **_deposit(content="text")}, "content not bytes"),
    ("deposit", {"patient": "PATIENT", **_deposit(content=bytes(LARGE))}, "content over the cap"),
    ("deposit", {"patient": "PATIENT", **_deposit(title="")}, "empty title"),
    ("deposit", {"patient": "PATIENT", **_deposit(title="t" * 257)}, "title of 257 characters"),
    ("deposit", {"patient": "PATIENT", **_deposit(category="not a token")}, "category not a token"),
    ("deposit", {"patient": "PATIENT", **_deposit(type=3)}, "type not a token"),
    ("deposit", {"patient": "PATIENT", **_deposit(labels=["L"] * 33)}, "33 labels"),
    ("deposit", {"patient": "PATIENT", **_deposit(labels="PSY")}, "labels not an array"),
    ("deposit", {"patient": "PATIENT", **_deposit(media="m" * 129)}, "media of 129 characters"),
    ("deposit", {"patient": "PATIENT", "content": b"x", "category": "note"}, "deposit without title"),
    ("poll", {}, "poll without patient"),
    ("poll", {"patient": "did:key:z" + "1" * 47}, "a did that holds no key"),
    ("fetch", {"patient": "PATIENT", "doc": bytes(31)}, "31-byte doc"),
    ("fetch", {"patient": "PATIENT"}, "fetch without doc"),
    ("held", {"patient": 5}, "held patient not text"),
    ("sync", {"patient": "PATIENT", "records_only": 1}, "records_only not a boolean"),
    ("delegate", {"patient": "PATIENT", "to": "GP", "endpoint": "ftp://gp.example"}, "not an http URL"),
    ("delegate", {"patient": "PATIENT", "to": "GP", "endpoint": "http://gp", "days": 0}, "0 days"),
    ("delegate", {"patient": "PATIENT", "to": "GP", "endpoint": "http://gp", "days": 366}, "366 days"),
    ("delegate", {"patient": "PATIENT", "to": "GP", "endpoint": "http://gp", "days": True}, "days a boolean"),
    (
        "delegate",
        {"patient": "PATIENT", "to": "GP", "endpoint": "http://gp", "categories": ["a b"]},
        "bad category",
    ),
    ("delegate", {"patient": "PATIENT", "endpoint": "http://gp"}, "delegate without to"),
]


@pytest.mark.parametrize(("op", "args", "what"), MALFORMED, ids=[m[2] for m in MALFORMED])
async def test_malformed_arguments_change_nothing(
    story: Story, op: Any, args: dict[str, Any], what: str
) -> None:
    names = {"PATIENT": story.patient.did, "GP": story.gp.did}
    fields = {key: names.get(value, value) if type(value) is str else value for key, value in args.items()}
    await refused_unchanged(story, story.lab, op, 400, "malformed", **fields)


async def test_an_unknown_patient_is_not_found(story: Story) -> None:
    other = stranger()
    for op, args in (
        ("poll", {}),
        ("fetch", {"doc": story.docs["cbc"]}),
        ("sync", {}),
        ("held", {}),
        ("deposit", _deposit()),
        ("delegate", {"to": story.lab.did, "endpoint": story.lab.url}),
    ):
        await refused_unchanged(story, story.gp, op, 404, "not-found", patient=other, **args)


# --- what the patient's node did ([API-63]) -------------------------------------------------------------


async def test_a_refusal_of_the_patient_comes_back_with_its_code(story: Story, root: Path) -> None:
    reader = await connected_clinic(story, root, "reader")
    try:
        grant = await read_grant(story.patient.patient, reader)
        answered(await manage(story, reader, "poll", patient=story.patient.did))
        assert answered(
            await manage(story, reader, "fetch", patient=story.patient.did, doc=story.docs["cbc"])
        )
        await story.patient.patient.revoke(grant.id, now=now())
        # Not polled since: the clinic sends the fetch and the patient's node refuses it.
        await refused_unchanged(
            story, reader, "fetch", 403, "revoked", patient=story.patient.did, doc=story.docs["xray"]
        )
        answer = answered(await manage(story, reader, "poll", patient=story.patient.did))
        assert answer["destroyed"] == 1  # the copy of the blood count died with the grant
        assert answered(await manage(story, reader, "held", patient=story.patient.did)) == {"docs": []}
        # Polled: the clinic knows and refuses by itself, with the same code.
        await refused_unchanged(
            story, reader, "fetch", 403, "revoked", patient=story.patient.did, doc=story.docs["cbc"]
        )
    finally:
        await reader.stop()


@pytest.mark.parametrize(("code", "issued", "days"), [("not-yet-valid", DAY, 30), ("expired", -2 * DAY, 1)])
async def test_a_clinic_refuses_a_fetch_by_itself_with_its_grants_own_code(
    story: Story, root: Path, code: str, issued: int, days: int
) -> None:
    """Its only grant starts tomorrow, or ended yesterday: the clinic sends nothing and says which
    ([CAP-8]), as the patient's node would, not ``revoked``; a batch fetch too."""
    reader = await connected_clinic(story, root, "reader")
    try:
        await story.patient.patient.grant(
            audience=reader.did,
            scope=Scope(categories=("lab",), past=True, future=True),
            actions=("read",),
            purpose="treatment",
            days=days,
            now=now() + issued,
        )
        answered(await manage(story, reader, "poll", patient=story.patient.did))
        await refused_unchanged(story, reader, "fetch", 403, code, patient=story.patient.did, doc=story.docs["cbc"])
        before = await snapshot(reader)
        with pytest.raises(RemoteProtocolError) as caught:
            await reader.clinic.fetch_batch(story.patient.did, [story.docs["cbc"]], now=now())
        assert caught.value.code.value == code
        await assert_unchanged(reader, before, nonce_spent=False)
    finally:
        await reader.stop()


class FakePatient:
    """A server standing in for a patient's node that answers every POST as :attr:`answer` says."""

    def __init__(self, identity: SigningIdentity) -> None:
        self.identity = identity
        self.answer: Callable[[web.Request], Awaitable[web.StreamResponse]] = self.server_error
        self.runner: web.AppRunner | None = None
        self.url = ""
        self.state: dict[str, Any] = {}  # the real patient's last state answer, replayed

    async def start(self) -> FakePatient:
        app = web.Application()
        app.router.add_route("POST", "/{path:.*}", self._dispatch)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        return await self.answer(request)

    async def server_error(self, request: web.Request) -> web.StreamResponse:
        return web.Response(status=500, body=cbor.encode({"code": "malformed", "message": "internal error"}))

    async def unreadable_refusal(self, request: web.Request) -> web.StreamResponse:
        return await self.signed(request, 403, b"<html>Forbidden</html>")

    async def unsigned_state(self, request: web.Request) -> web.StreamResponse:
        return web.Response(status=200, body=encode_body(**self.state), content_type="application/cbor")

    async def state_with_a_forged_head(self, request: web.Request) -> web.StreamResponse:
        forged = open_record(self.state["head"], StateHead).record
        head = sign_record(forged, SigningIdentity.from_seed(os.urandom(32)))
        return await self.signed(request, 200, encode_body(**{**self.state, "head": head.encoded}))

    async def signed(self, request: web.Request, status: int, data: bytes) -> web.StreamResponse:
        """Signed by the patient's key and bound to the request, as the real node answers."""

        class Nonces:
            async def remember(self, signer: str, nonce: str, expires: int) -> bool:
                return True

        await verified(request, await request.read(), now=now(), nonces=Nonces(), authorities=[request.host])
        return signed_response(request, identity=self.identity, now=now(), status=status, body=data)


async def test_a_patient_that_gives_no_answer_is_unreachable(story: Story, root: Path) -> None:
    away = await ServedNode.create(root / "away", role="patient", name="Away (patient)")
    courier = await connected_clinic(story, root, "courier", away)
    fake = await FakePatient(away.identity).start()
    away_did = away.did
    try:
        doc = answered(
            await manage(
                story,
                courier,
                "deposit",
                patient=away_did,
                content=b"Ferritin 80\n",
                title="Ferritin",
                category="lab",
            )
        )["doc"]
        assert answered(await manage(story, courier, "flush")) == {"sent": 1, "pending": 0}
        await away.patient.accept(doc, now=now())
        await read_grant(away.patient, courier)
        answered(await manage(story, courier, "poll", patient=away_did))
        fake.state = await away.patient.state_for(courier.did, now=now())
        profile = away.h.profile.encoded
        await away.stop()

        # A stopped node: no answer.
        for op, args in (("poll", {}), ("fetch", {"doc": doc}), ("sync", {})):
            await refused_unchanged(story, courier, op, 502, "unreachable", patient=away_did, **args)
        # flush reports the deposit as pending instead, and waits its backoff before trying again.
        second = answered(
            await manage(
                story, courier, "deposit", patient=away_did, content=b"B12\n", title="B12", category="lab"
            )
        )["doc"]
        assert answered(await manage(story, courier, "flush")) == {"sent": 0, "pending": 1}
        (entry,) = [o for o in await courier.clinic.outbox() if not o["done"]]
        assert entry["attempts"] == 1 and entry["next_at"] > now() - 5
        # The first backoff is a second: a flush within it does not try again, one after it does (a
        # loaded machine may take that long between two requests).
        before = now()
        assert answered(await manage(story, courier, "flush")) == {"sent": 0, "pending": 1}
        after = now()
        (entry_after,) = [o for o in await courier.clinic.outbox() if not o["done"]]
        due = entry["next_at"]
        allowed = {1} if after < due else {2} if before >= due else {1, 2}  # the last: it was due meanwhile
        assert entry_after["attempts"] in allowed, (entry_after, before, after)
        assert second in {o["doc"] for o in answered(await manage(story, courier, "held"))["docs"]}

        # Answers that count as no answer ([API-5]), and one that fails the clinic's own check.
        async with courier.h.store.transaction():
            await courier.h.store.save_connection(away_did, endpoint=fake.url, profile=profile)
        for answer, status, code in (
            (fake.server_error, 502, "unreachable"),
            (fake.unreadable_refusal, 502, "unreachable"),
            (fake.unsigned_state, 502, "unreachable"),
            (fake.state_with_a_forged_head, 401, "bad-signature"),
        ):
            fake.answer = answer
            await refused_unchanged(story, courier, "poll", status, code, patient=away_did)
    finally:
        await fake.stop()
        await courier.stop()
        await away.stop()


@pytest.mark.parametrize("endpoint", ["http://[::1", "http://127.0.0.1:99999", "ftp://127.0.0.1"])
async def test_endpoints_that_are_no_urls_are_malformed(story: Story, endpoint: str) -> None:
    """From an invitation (the patient's choice) or the key holder's own: malformed, never a 500 ([API-74])."""
    invitation = Invitation(node=stranger(), endpoint=endpoint, token=os.urandom(32), expires=now() + 60)
    await refused_unchanged(story, story.gp, "connect", 400, "malformed", code=invitation.code())
    await refused_unchanged(
        story, story.gp, "delegate", 400, "malformed", patient=story.patient.did, to=story.lab.did, endpoint=endpoint
    )
