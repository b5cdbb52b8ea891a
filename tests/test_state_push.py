"""Push of the patient's state to subscribers (spec section 15.14, [API-34], [API-35]).

A patient node, a GP and a lab run in this process (tests/node_helpers.py); the GP follows the
patient's event stream as ``fedrecord serve`` does (:class:`StateSubscriptions`) and never polls,
so whatever it learns it learns from the stream.  A revocation made in-process, and one made by
``fedrecord revoke`` in another process, reach it within a second or two: copy destroyed, head
recorded.  Refused subscriptions (unsigned, replayed, from a stranger, one too many) leave the
patient's store as it was; a subscriber that leaves is forgotten.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace

import aiohttp
import pytest
import pytest_asyncio

from fedrecord.core import RemoteProtocolError, SigningIdentity
from fedrecord.http.event_stream import EventStreamReader, ServerEvent
from fedrecord.node import server
from fedrecord.node.client import unb64
from fedrecord.node.server import FEED
from fedrecord.node.state_feed import MAX_PER_REQUESTER, Subscription
from fedrecord.node.subscriptions import RECONNECT_MIN, StateSubscriptions
from fedrecord.node.wire import decode_body

from .node_helpers import (
    PASSPHRASE,
    ServedNode,
    Story,
    assert_unchanged,
    body,
    build_story,
    send,
    signed_headers,
    snapshot,
    stored_stream,
)

# Generous against a loaded machine; a push is typically a few milliseconds in-process and about
# a quarter of a second from another process (the database watch interval).
PUSH_DEADLINE = 2.0


pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(loop_scope="module")
async def story(tmp_path: Path) -> AsyncIterator[Story]:
    """Nodes of their own, for a test that revokes, deletes or stops something."""
    built = await build_story(tmp_path)
    yield built  # pytest runs what follows whatever the test did
    await built.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Story]:
    """Nodes shared by the tests that only open and close streams (or are refused one)."""
    built = await build_story(tmp_path_factory.mktemp("nodes"))
    yield built
    await built.close()


def events_url(story: Story) -> str:
    return story.patient.url + "/v0/events"


async def until(condition: Callable[[], Awaitable[bool]], *, timeout: float = PUSH_DEADLINE) -> float:
    """Seconds until ``condition()`` holds, checked every 5 ms; fails the test after ``timeout``."""
    start = time.monotonic()
    while not await condition():
        if time.monotonic() - start > timeout:
            pytest.fail(f"not within {timeout} s")
        await asyncio.sleep(0.005)
    return time.monotonic() - start


@contextlib.asynccontextmanager
async def following(clinic: ServedNode) -> AsyncIterator[StateSubscriptions]:
    """The clinic follows its patients' event streams, as ``fedrecord serve`` does (and polls never)."""
    subscriptions = StateSubscriptions(clinic.clinic, rescan_interval=0.05)
    stop = asyncio.Event()
    task = asyncio.create_task(subscriptions.run(stop))
    try:
        yield subscriptions
    finally:
        stop.set()
        await task


async def head_seq(clinic: ServedNode, patient: str) -> int:
    connection = await clinic.h.store.connection(patient)
    assert connection is not None
    return connection.head_seq


async def polled(clinic: ServedNode, patient: str) -> int:
    row = await clinic.h.db.fetchone("SELECT polled FROM connections WHERE patient = ?", (patient,))
    return int(row[0])


async def holds_copy(clinic: ServedNode, doc: bytes) -> bool:
    return await clinic.h.store.document_state(doc) == "shared"


async def ciphertext_gone(clinic: ServedNode, doc: bytes) -> bool:
    # Wherever it was kept: in its row (a small document) or its file.
    return await stored_stream(clinic, doc) is None


async def subscribed(story: Story, clinic: ServedNode, *, timeout: float = PUSH_DEADLINE) -> None:
    """Wait until the patient's node serves ``clinic`` a stream: from then on every change reaches it."""
    assert story.patient.app is not None
    feed = story.patient.app[FEED]

    async def open_() -> bool:
        return feed.count(clinic.did) == 1

    await until(open_, timeout=timeout)


# --- revocation and deletion, pushed ----------------------------------------------------------------------


async def test_a_revocation_is_pushed_and_the_copy_destroyed(story: Story) -> None:
    gp, patient = story.gp, story.patient
    await gp.clinic.fetch(patient.did, story.docs["cbc"], now=int(time.time()))
    assert await holds_copy(gp, story.docs["cbc"])
    async with following(gp):
        await subscribed(story, gp)
        freshness = await polled(gp, patient.did)
        await patient.patient.revoke(story.gp_grant.id, now=int(time.time()))
        new_seq = (await patient.patient.state_head(now=int(time.time()))).record.seq

        async def applied() -> bool:
            return await head_seq(gp, patient.did) == new_seq and not await holds_copy(gp, story.docs["cbc"])

        elapsed = await until(applied)
        await until(lambda: ciphertext_gone(gp, story.docs["cbc"]))
    assert elapsed < 1.0, f"pushed in {elapsed:.3f} s"
    with pytest.raises(RemoteProtocolError) as refused:
        await gp.clinic.fetch(patient.did, story.docs["cbc"], now=int(time.time()))
    assert refused.value.code.value == "revoked"
    # A pushed head is not bound to a request of the GP: it does not make its head fresh [HEAD-4].
    assert await polled(gp, patient.did) == freshness


async def test_a_revocation_from_the_command_line_is_pushed(story: Story) -> None:
    """``fedrecord revoke`` writes the patient's database from another process; the running node pushes it."""
    gp, patient = story.gp, story.patient
    await gp.clinic.fetch(patient.did, story.docs["cbc"], now=int(time.time()))
    async with following(gp):
        await subscribed(story, gp)
        seq = await head_seq(gp, patient.did)
        revoking = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "fedrecord",
            "--home",
            str(patient.path),
            "--json",
            "revoke",
            story.gp_grant.id.hex(),
            env={**os.environ, "FEDRECORD_PASSPHRASE": PASSPHRASE.decode()},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await revoking.communicate()
        assert revoking.returncode == 0, err.decode()
        assert bytes.fromhex(json.loads(out)["grant"]) == story.gp_grant.id

        async def applied() -> bool:
            return await head_seq(gp, patient.did) == seq + 1 and not await holds_copy(gp, story.docs["cbc"])

        elapsed = await until(applied)
    assert elapsed < PUSH_DEADLINE, f"pushed {elapsed:.3f} s after the command ended"


async def test_a_deletion_is_pushed_and_attested(story: Story) -> None:
    gp, patient = story.gp, story.patient
    doc = story.docs["cbc"]
    await gp.clinic.fetch(patient.did, doc, now=int(time.time()))
    async with following(gp):
        await subscribed(story, gp)
        await patient.patient.delete(doc, now=int(time.time()))

        async def attested() -> bool:
            return any(a.signer == gp.did for a in await patient.patient.attestations(doc))

        elapsed = await until(attested)
    assert elapsed < PUSH_DEADLINE, f"attested {elapsed:.3f} s after the deletion"
    assert not await holds_copy(gp, doc)
    outcomes = {a.signer: a.record.outcome for a in await patient.patient.attestations(doc)}
    assert outcomes == {gp.did: "destroyed"}


async def test_the_stream_is_reopened_after_the_patient_node_restarts(story: Story) -> None:
    gp, patient = story.gp, story.patient
    await gp.clinic.fetch(patient.did, story.docs["cbc"], now=int(time.time()))
    async with following(gp):
        await subscribed(story, gp)
        await patient.restart()
        # The stream ended with the node; the GP opens it again after its first backoff step.
        await subscribed(story, gp, timeout=RECONNECT_MIN + PUSH_DEADLINE)
        await patient.patient.revoke(story.gp_grant.id, now=int(time.time()))

        async def destroyed() -> bool:
            return not await holds_copy(gp, story.docs["cbc"])

        await until(destroyed)


async def test_a_replayed_old_event_changes_nothing(story: Story) -> None:
    """An old state pushed again (a stream replayed on the path) is refused as a rollback, like a poll."""
    gp, patient = story.gp, story.patient
    old = await first_event(story, gp.identity)
    await patient.patient.revoke(story.gp_grant.id, now=int(time.time()))
    await gp.clinic.poll(patient.did, now=int(time.time()))
    before = await snapshot(gp)
    with pytest.raises(RemoteProtocolError) as refused:
        await gp.clinic.apply_state(patient.did, old, now=int(time.time()), polled=False)
    assert refused.value.code.value == "rollback"
    await assert_unchanged(gp, before, nonce_spent=False)


# --- subscriptions refused, and subscribers gone -----------------------------------------------------


async def open_stream(
    session: aiohttp.ClientSession, story: Story, identity: SigningIdentity, headers: object = None
) -> aiohttp.ClientResponse:
    data = body()
    fields = headers or signed_headers(identity, "POST", events_url(story), data)
    return await session.post(events_url(story), data=data, headers=fields)  # type: ignore[arg-type]


async def next_event(response: aiohttp.ClientResponse) -> ServerEvent:
    reader = EventStreamReader(max_event=1 << 21)
    async for chunk in response.content.iter_any():
        for event in reader.feed(chunk):
            return event
    pytest.fail("the stream ended without an event")


async def first_event(story: Story, identity: SigningIdentity) -> dict[str, object]:
    async with aiohttp.ClientSession() as session:
        response = await open_stream(session, story, identity)
        assert response.status == 200 and response.content_type == "text/event-stream"
        event = await next_event(response)
        response.close()
    assert event.name == "state"
    return decode_body(unb64(event.data), "head", "revocations", "tombstones", "grants")


async def test_the_first_event_is_the_state_a_poll_gets(shared: Story) -> None:
    pushed = await first_event(shared, shared.gp.identity)
    polled_answer = await shared.gp.client.call(
        "POST", f"{shared.patient.url}/v0/state", expected_signer=shared.patient.did
    )
    assert pushed == polled_answer


async def test_an_unsigned_subscription_is_refused(shared: Story) -> None:
    before = await snapshot(shared.patient)
    answer = await send(
        shared.session, "POST", events_url(shared), body=body(), headers={"Content-Type": "application/cbor"}
    )
    assert (answer.status, answer.code) == (401, "bad-signature")
    await assert_unchanged(shared.patient, before, nonce_spent=False)


async def test_a_replayed_subscription_is_refused(shared: Story) -> None:
    data = body()
    headers = signed_headers(shared.gp.identity, "POST", events_url(shared), data)
    async with aiohttp.ClientSession() as session:
        first = await open_stream(session, shared, shared.gp.identity, headers)
        assert first.status == 200
        await next_event(first)
        first.close()
    before = await snapshot(shared.patient)
    answer = await send(shared.session, "POST", events_url(shared), body=data, headers=headers)
    assert (answer.status, answer.code) == (409, "replay")
    await assert_unchanged(shared.patient, before, nonce_spent=False)


async def test_a_subscription_from_a_stranger_is_refused(shared: Story) -> None:
    stranger = SigningIdentity.from_seed(os.urandom(32))
    data = body()
    before = await snapshot(shared.patient)
    answer = await send(
        shared.session,
        "POST",
        events_url(shared),
        body=data,
        headers=signed_headers(stranger, "POST", events_url(shared), data),
    )
    assert (answer.status, answer.code) == (404, "not-found")
    await assert_unchanged(shared.patient, before, nonce_spent=True)


async def test_one_subscription_too_many_is_refused_and_leavers_are_forgotten(shared: Story) -> None:
    assert shared.patient.app is not None
    feed = shared.patient.app[FEED]

    async def forgotten() -> bool:
        return feed.count() == 0

    # The handlers of streams closed by the tests before notice within a liveness check.
    await until(forgotten, timeout=server.LIVENESS_INTERVAL + PUSH_DEADLINE)
    async with aiohttp.ClientSession() as session:
        streams = [await open_stream(session, shared, shared.gp.identity) for _ in range(MAX_PER_REQUESTER)]
        for stream in streams:
            assert stream.status == 200
            await next_event(stream)
        assert feed.count(shared.gp.did) == MAX_PER_REQUESTER
        before = await snapshot(shared.patient)
        data = body()
        answer = await send(
            shared.session,
            "POST",
            events_url(shared),
            body=data,
            headers=signed_headers(shared.gp.identity, "POST", events_url(shared), data),
        )
        assert (answer.status, answer.code) == (429, "too-many")
        await assert_unchanged(shared.patient, before, nonce_spent=True)
        # Another node still gets its stream.
        other = await open_stream(session, shared, shared.lab.identity)
        assert other.status == 200
        for stream in [*streams, other]:
            stream.close()
    await until(forgotten, timeout=server.LIVENESS_INTERVAL + PUSH_DEADLINE)


async def test_stopping_the_patient_node_ends_its_streams(story: Story) -> None:
    async with aiohttp.ClientSession() as session:
        stream = await open_stream(session, story, story.gp.identity)
        await next_event(stream)
        start = time.monotonic()
        await story.patient.stop()
        assert time.monotonic() - start < 5
        assert await stream.content.read() == b""


async def test_a_reader_that_takes_nothing_is_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    """A write that does not complete within SEND_TIMEOUT cuts the connection instead of queueing."""
    monkeypatch.setattr(server, "SEND_TIMEOUT", 0.05)
    aborted = []
    request = SimpleNamespace(transport=SimpleNamespace(abort=lambda: aborted.append(True)))

    class Stuck:
        async def write(self, data: bytes) -> None:
            await asyncio.Event().wait()

    subscription = Subscription("did:key:z6MkSlowReader")
    assert await server._send(request, Stuck(), b"event", subscription) is False  # type: ignore[arg-type]
    assert aborted == [True]
