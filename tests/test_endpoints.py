"""Endpoints that come from other nodes ([API-74], [API-31]).

A profile's endpoints, an invitation's and a delegation's are chosen by
another node: each must be a base URL, and a delegation must not move a
connection the delegate holds.  Real nodes on loopback
(:func:`tests.node_helpers.build_story`); every refusal leaves the store as
it was, but for the spent nonce.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from fedrecord.conformance.actors import NOWHERE, Actor
from fedrecord.core import Code, Grant, NodeProfile, RemoteProtocolError, Signed, SigningIdentity, sign_record
from fedrecord.http.aiohttp_signing import endpoint_problem
from fedrecord.node import clinic as clinic_module
from fedrecord.node import runner
from fedrecord.node.wire import Invitation

from .node_helpers import (
    ServedNode,
    Story,
    assert_unchanged,
    body,
    build_story,
    now,
    raw_head,
    refused,
    send_signed,
    signed_headers,
    snapshot,
)

ASYNC = pytest.mark.asyncio(loop_scope="module")

NOT_URLS = [
    "http://[::1",  # an unclosed IPv6 address: yarl raises ValueError for it
    "http://127.0.0.1:99999",  # a port out of range
    "http://127.0.0.1:0",
    "ftp://127.0.0.1",
    "127.0.0.1:8470",
    "http:///v0",
    "https://clinic.example/base?x=1",
    "https://clinic.example/#top",
    "",
]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def story(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Story]:
    built = await build_story(tmp_path_factory.mktemp("endpoints"))
    try:
        yield built
    finally:
        await built.close()


@pytest.mark.parametrize(
    "endpoint", ["http://127.0.0.1:8470", "https://clinic.example/fedrecord/", "http://[::1]:80"]
)
def test_base_urls(endpoint: str) -> None:
    assert endpoint_problem(endpoint) is None


@pytest.mark.parametrize("endpoint", NOT_URLS)
def test_not_base_urls(endpoint: str) -> None:
    assert endpoint_problem(endpoint) is not None


@pytest.mark.parametrize("endpoint", NOT_URLS)
def test_an_invitation_to_an_endpoint_that_is_no_url_is_malformed(endpoint: str) -> None:
    invitation = Invitation(node="did:key:z6Mk", endpoint=endpoint, token=os.urandom(32), expires=now() + 60)
    with pytest.raises(RemoteProtocolError) as caught:
        Invitation.parse(invitation.code())
    assert caught.value.code is Code.MALFORMED


def _profile(identity: SigningIdentity, record: NodeProfile, **changes: object) -> bytes:
    return sign_record(dataclasses.replace(record, **changes), identity).encoded  # type: ignore[arg-type]


@ASYNC
async def test_a_clinic_whose_profile_endpoint_is_no_url_cannot_connect(story: Story) -> None:
    """Its first endpoint is where rejections would go: refused at connect, the invitation still unused."""
    clinic = SigningIdentity.from_seed(os.urandom(32))
    lab_profile = story.lab.h.profile.record
    profile = _profile(clinic, lab_profile, endpoints=("http://[::1",))
    invitation = await story.patient.patient.create_invitation(label="odd clinic", now=now())
    before = await snapshot(story.patient)
    answer = await send_signed(
        story.session,
        clinic,
        "POST",
        story.patient.url + "/v0/connect",
        body(token=invitation.token, profile=profile),
    )
    refused(answer, 400, "malformed", signed=True)
    await assert_unchanged(story.patient, before, nonce_spent=True)


def _child_for_lab(story: Story) -> Signed[Grant]:
    parent = story.gp_grant
    return sign_record(
        Grant(
            audience=story.lab.did,
            scope=parent.record.scope,
            actions=("read",),
            purpose=parent.record.purpose,
            iat=now(),
            nbf=max(now(), parent.record.nbf),
            exp=parent.record.exp,
            parent=parent.id,
            nonce=os.urandom(16),
        ),
        story.gp.identity,
    )


async def _delegate(story: Story, endpoint: str, profile: bytes) -> tuple[int, object]:
    answer = await send_signed(
        story.session,
        story.gp.identity,
        "POST",
        story.lab.url + "/v0/grants",
        body(
            patient=story.patient.did,
            endpoint=endpoint,
            profile=profile,
            chain=[story.gp_grant.encoded, _child_for_lab(story).encoded],
        ),
    )
    return answer.status, answer


@ASYNC
@pytest.mark.parametrize("endpoint", ["http://127.0.0.1:9", "http://[::1"])
async def test_a_delegation_to_an_endpoint_the_patient_did_not_sign_is_refused(
    story: Story, endpoint: str
) -> None:
    """The delegating GP chose the endpoint: the lab's connection to the patient must not follow it."""
    before = await snapshot(story.lab)
    _status, answer = await _delegate(story, endpoint, story.patient.h.profile.encoded)
    refused(answer, 400, "malformed", signed=True)  # type: ignore[arg-type]
    await assert_unchanged(story.lab, before, nonce_spent=True)


@ASYNC
async def test_a_delegation_does_not_move_a_held_connection(story: Story) -> None:
    """An older profile of the patient's, listing another endpoint: the chain is kept, the connection is not."""
    held = await story.lab.h.store.connection(story.patient.did)
    assert held is not None
    record = story.patient.h.profile.record
    older = _profile(
        story.patient.identity,
        record,
        seq=record.seq - 1,
        endpoints=("http://127.0.0.1:9", *record.endpoints),
    )
    status, answer = await _delegate(story, "http://127.0.0.1:9", older)
    assert status == 201, answer
    assert await story.lab.h.store.connection(story.patient.did) == held
    assert await story.lab.h.store.delegation_count(story.patient.did) >= 1


@ASYNC
async def test_a_stored_endpoint_that_is_no_url_keeps_the_deposit_queued(story: Story) -> None:
    """An endpoint kept by an older version: the entry waits and is retried, and goes once it is mended."""
    store = story.lab.h.store
    held = await store.connection(story.patient.did)
    assert held is not None
    async with store.transaction():
        await store.db.execute(
            "UPDATE connections SET endpoint = ? WHERE patient = ?", ("http://[::1", story.patient.did)
        )
    try:
        doc = await story.lab.clinic.deposit(
            story.patient.did, b"queued", title="Queued", category="lab", doc_type="lab-result", now=now()
        )
        sent, pending = await story.lab.clinic.flush_outbox(now=now())
        assert (sent, pending) == (0, 1)
        [entry] = [item for item in await story.lab.clinic.outbox() if not item["done"]]
        assert "malformed" in str(entry["error"])
    finally:
        async with store.transaction():
            await store.db.execute(
                "UPDATE connections SET endpoint = ? WHERE patient = ?", (held.endpoint, story.patient.did)
            )
    sent, pending = await story.lab.clinic.flush_outbox(now=now() + 3600)
    assert (sent, pending) == (1, 0)
    assert doc in {item.doc for item in await story.patient.patient.inbox()}


@ASYNC
async def test_a_request_cut_mid_body_leaves_one_log_line(
    story: Story, caplog: pytest.LogCaptureFixture
) -> None:
    """The requester went away: nothing stored, no traceback of a 500 in the node's log."""
    caplog.set_level(logging.INFO)
    data = body()
    url = story.patient.url + "/v0/state"
    headers = signed_headers(story.gp.identity, "POST", url, data)
    head = raw_head("POST", "/v0/state", {**headers, "Content-Length": str(len(data) + 100)})
    before = await snapshot(story.patient)
    reader, writer = await asyncio.open_connection("127.0.0.1", story.patient.port)
    writer.write(head.encode() + data)
    await writer.drain()
    await asyncio.sleep(0.2)
    writer.transport.abort()
    for _ in range(100):  # until the node has seen the connection go
        if "connection lost during" in caplog.text:
            break
        await asyncio.sleep(0.05)
    await assert_unchanged(story.patient, before, nonce_spent=False)
    assert "Traceback" not in caplog.text and "Error handling request" not in caplog.text
    assert "connection lost during POST /v0/state" in caplog.text
    del reader


async def _delegated_by_a_stranger(
    story: Story, *, endpoint: str = NOWHERE, lasting: int = 30 * 86_400
) -> tuple[Any, str]:
    """A stranger mints a patient of its own and delegates from it to the lab: (answer, made-up patient's did)."""
    made_up, stranger = Actor.create("Made-up patient", role="patient"), Actor.create("Stranger")
    root = made_up.grant(stranger.did, actions=("read", "delegate"), exp=now() + lasting)
    child = stranger.grant(story.lab.did, parent=root.id, nbf=root.record.nbf, exp=root.record.exp)
    answer = await send_signed(
        story.session,
        stranger.identity,
        "POST",
        story.lab.url + "/v0/grants",
        body(
            patient=made_up.did,
            endpoint=endpoint,
            profile=made_up.profile_with(endpoints=(endpoint,)),
            chain=[root.encoded, child.encoded],
        ),
    )
    return answer, made_up.did


@ASYNC
async def test_patients_held_through_delegations_alone_are_bounded(
    story: Story, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stranger can mint a patient of its own and delegate from it: such patients are bounded ([API-31]).

    The bound counts live delegations: once a made-up patient's chain expired, its place is free.
    """
    monkeypatch.setattr(clinic_module, "MAX_DELEGATED_PATIENTS", 1)
    monkeypatch.setattr(clinic_module, "DELEGATION_SWEEP_EVERY", 0)

    first, short_lived = await _delegated_by_a_stranger(story, lasting=2)
    assert first.status == 201
    before = await snapshot(story.lab)
    second, _ = await _delegated_by_a_stranger(story, lasting=3600)
    refused(second, 429, "too-many", signed=True)
    await assert_unchanged(story.lab, before, nonce_spent=True)
    await asyncio.sleep(3)  # the first made-up patient's chain expires
    third, kept = await _delegated_by_a_stranger(story, lasting=3600)
    assert third.status == 201, third.body
    assert await story.lab.h.store.connection(short_lived) is None, "the dead one was forgotten"
    assert await story.lab.h.store.connection(kept) is not None


@ASYNC
async def test_a_stalling_patient_node_holds_up_no_other_poll(story: Story, monkeypatch: pytest.MonkeyPatch) -> None:
    """A made-up patient whose endpoint accepts and never answers: the real patient is still polled at once."""
    monkeypatch.setattr(runner, "POLL_DEADLINE", 0.5)

    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)
        writer.close()

    trap = await asyncio.start_server(stall, "127.0.0.1", 0)
    try:
        endpoint = f"http://127.0.0.1:{trap.sockets[0].getsockname()[1]}"
        answer, _patient = await _delegated_by_a_stranger(story, endpoint=endpoint)
        assert answer.status == 201, answer.body
        started = asyncio.get_running_loop().time()
        await runner.poll_all(story.lab.clinic, now=now())
        assert asyncio.get_running_loop().time() - started < 10
        held = await story.lab.h.store.connection(story.patient.did)
        assert held is not None and held.head_seq >= 0
    finally:
        trap.close()


@ASYNC
def _one_patient_clinic(poll: Any) -> Any:
    """A clinic connected to one patient, ``did:key:zPatient``, whose polls are ``poll``: what
    :func:`runner.poll_all` reads of it."""
    from types import SimpleNamespace

    async def connections() -> list[Any]:
        return [SimpleNamespace(patient="did:key:zPatient")]

    async def delegated_only() -> list[str]:
        return []

    return SimpleNamespace(poll=poll, connections=connections, store=SimpleNamespace(delegated_only=delegated_only))


async def test_a_patient_node_offline_is_one_warning_until_it_answers_again(caplog: pytest.LogCaptureFixture) -> None:
    """Offline is normal (US-11): a clinic polling every 5 s says so once, not 17,000 times a day."""
    from fedrecord.node.client import PeerUnreachable

    offline = {"did:key:zPatient"}

    async def poll(patient: str, *, now: int) -> None:
        if patient in offline:
            raise PeerUnreachable("http://127.0.0.1:1/v0/state", "connection refused")

    clinic = _one_patient_clinic(poll)
    failing: dict[str, str] = {}
    caplog.set_level(logging.INFO, logger="fedrecord.node")
    for _ in range(3):
        await runner.poll_all(clinic, now=now(), failing=failing)
    offline.clear()
    await runner.poll_all(clinic, now=now(), failing=failing)
    await runner.poll_all(clinic, now=now(), failing=failing)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert "connection refused" in lines[0] and "answered again" in lines[1]


async def test_a_poll_failure_whose_text_moves_is_still_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    """A restored patient's node answers heads older than the clinic's, with a number that moves at
    each poll: the same failure going on, said once."""
    polls = 0

    async def poll(patient: str, *, now: int) -> None:
        nonlocal polls
        polls += 1
        raise RemoteProtocolError(Code.ROLLBACK, f"state head 3 is older than {40 + polls}")

    clinic = _one_patient_clinic(poll)
    failing: dict[str, str] = {}
    caplog.set_level(logging.INFO, logger="fedrecord.node")
    for _ in range(3):
        await runner.poll_all(clinic, now=now(), failing=failing)
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warned == ["polling did:key:zPatient: rollback: state head 3 is older than 41"], warned


async def test_an_event_stream_of_a_patient_away_is_one_warning(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As for polls: a clinic following the event stream of a patient's node that is away says so once,
    not every minute of the backoff, and again only after the stream has opened."""
    from types import SimpleNamespace

    from fedrecord.node import subscriptions
    from fedrecord.node.client import PeerUnreachable

    attempts = 0

    async def events(url: str, **_fields: Any) -> Any:
        nonlocal attempts
        attempts += 1
        raise PeerUnreachable(url, "connection refused")
        yield  # an async generator, as PeerClient.events is

    async def connection(_patient: str) -> Any:
        return SimpleNamespace(endpoint="http://127.0.0.1:1")

    async def held_head(_patient: str) -> dict[str, bytes]:
        return {}

    clinic: Any = SimpleNamespace(
        client=SimpleNamespace(events=events), store=SimpleNamespace(connection=connection), held_head=held_head
    )
    monkeypatch.setattr(subscriptions, "RECONNECT_MIN", 0.001)
    monkeypatch.setattr(subscriptions, "RECONNECT_MAX", 0.001)
    caplog.set_level(logging.DEBUG, logger="fedrecord.node")
    follower = asyncio.create_task(subscriptions.StateSubscriptions(clinic).follow("did:key:zPatient"))
    while attempts < 4:
        await asyncio.sleep(0.005)
    follower.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await follower
    warned = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warned) == 1 and "connection refused" in warned[0].getMessage(), warned


@pytest.mark.parametrize(
    ("value", "level"),
    [(None, logging.INFO), ("debug", logging.DEBUG), (" WARNING ", logging.WARNING), ("loud", logging.INFO)],
)
def test_serve_logs_at_the_level_the_operator_sets(
    monkeypatch: pytest.MonkeyPatch, value: str | None, level: int
) -> None:
    if value is None:
        monkeypatch.delenv(runner.LOG_LEVEL_VARIABLE, raising=False)
    else:
        monkeypatch.setenv(runner.LOG_LEVEL_VARIABLE, value)
    assert runner.log_level() == level


@ASYNC
@pytest.mark.parametrize("base", ["/fedrecord", "/fedrecord/", "/", "/clínica", "/my%20lab", "/{x}"])
async def test_a_node_whose_endpoint_has_a_path_serves_the_api_under_it(
    tmp_path_factory: pytest.TempPathFactory, base: str
) -> None:
    """15.1: an endpoint's path is appended to the base URL as written there, without its trailing
    ``/``.  A patient's node at ``http://host/fedrecord`` answers ``/fedrecord/v0/...`` (as a reverse
    proxy passing paths on unchanged hands them over), and a clinic connects, deposits and polls
    through it; a trailing ``/`` names the same node, and a path with characters written
    percent-encoded (non-ASCII ones always are) is served too."""
    root = tmp_path_factory.mktemp("base")
    patient = await ServedNode.create(root / "patient", role="patient", name="Camille", base=base)
    lab = await ServedNode.create(root / "lab", role="clinic", name="Laboratoire")
    try:
        invitation = await patient.patient.create_invitation(label="Laboratoire", now=now())
        await lab.clinic.connect(invitation.url(), now=now())
        doc = await lab.clinic.deposit(
            patient.did, b"Ferritin 80 ug/L\n", title="Ferritin", category="lab", doc_type="lab-result", now=now()
        )
        assert await lab.clinic.flush_outbox() == (1, 0)
        await patient.patient.accept(doc, now=now())
        assert (await lab.clinic.poll(patient.did, now=now()))["seq"] >= 0
        prefix = base.rstrip("/")
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{patient.port}{prefix}/v0/profile") as served:
                assert served.status == 200
            if prefix:
                async with session.get(f"http://127.0.0.1:{patient.port}/v0/profile") as elsewhere:
                    assert elsewhere.status == 404
                # The base is matched as written: `{x}` in it is no pattern taking any segment.
                async with session.get(f"http://127.0.0.1:{patient.port}/other/v0/profile") as elsewhere:
                    assert elsewhere.status == 404
    finally:
        await lab.stop()
        await patient.stop()
