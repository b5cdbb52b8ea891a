"""Revocations of grants expired for a day leave the patient's revocation set ([API-17]).

A chain through an expired grant is refused as expired whatever else is known, so such a revocation
decides nothing any more.  Left in the set, it went in every state answer and every view, and some
thousands of revocations over the years would take a state answer past the 1 MiB cap of a body:
no node could poll the patient any more.  Set aside, the record stays (the patient's page still says
who was revoked, a decision still finds it); the head that follows describes the smaller set.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import pytest

from fedrecord.core import Grant, Revocation, Scope, Signed, StateHead, open_any_record
from fedrecord.node.client import PeerClient
from fedrecord.node.patient import DAY, LAPSED_AFTER
from fedrecord.node.runner import duties
from fedrecord.node.sync import patient_view

from .node_helpers import Story, now, snapshot

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def _revoked_grant(story: Story, *, granted: int, days: int) -> tuple[Signed[Grant], Signed[Revocation]]:
    """A grant to the GP signed at ``granted`` for ``days`` days, revoked now."""
    patient = story.patient.patient
    grant = await patient.grant(
        audience=story.gp.did,
        scope=Scope(categories=("lab",), past=True),
        actions=("read",),
        purpose="treatment",
        days=days,
        now=granted,
    )
    return grant, await patient.revoke(grant.id, now=now())


def _revoked_in(answer: dict[str, Any]) -> set[bytes]:
    return {open_any_record(encoded).record.grant for encoded in answer["revocations"]}


def _digest_matches(head: Signed[StateHead], answer: dict[str, Any]) -> bool:
    named = sorted(open_any_record(encoded).record.grant for encoded in answer["revocations"])
    return (head.record.revocations, head.record.revocation_count) == (
        hashlib.sha256(b"".join(named)).digest(),
        len(named),
    )


async def test_a_revocation_of_a_grant_expired_for_a_day_leaves_the_set(story: Story) -> None:
    patient, t = story.patient.patient, now()
    lapsed, _ = await _revoked_grant(story, granted=t - 3 * DAY, days=1)  # expired two days ago
    recent, _ = await _revoked_grant(story, granted=t - DAY - 600, days=1)  # expired ten minutes ago
    live, _ = await _revoked_grant(story, granted=t, days=1)
    before = await patient.state_for(story.gp.did, now=t)
    assert {lapsed.id, recent.id, live.id} <= _revoked_in(before)
    head_before = await patient.state_head(now=t)

    assert await patient.set_aside_lapsed_revocations(now=t) == 1
    after = await patient.state_for(story.gp.did, now=t)
    assert lapsed.id not in _revoked_in(after) and {recent.id, live.id} <= _revoked_in(after)
    # A new head, of the next seq, describes exactly what the answer now holds ([API-17]).
    head = await patient.state_head(now=t)
    assert head.record.seq == head_before.record.seq + 1 and head.record.prev == head_before.id
    assert _digest_matches(head, after)
    # Nor is it in the GP's sync view, which holds the revocations a state answer holds ([API-44]).
    view = await patient_view(patient, story.gp.did, [story.gp_grant], now=t)
    assert {open_any_record(encoded).record.grant for encoded in view.records.values()
            if open_any_record(encoded).record.TYPE is Revocation.TYPE} == _revoked_in(after)  # fmt: skip
    # Its record stays: the patient still revoked the grant, and a decision still says so.
    assert lapsed.id in (await story.patient.h.store.revocation_set()).revokers
    assert [r.record.grant for r in await story.patient.h.store.records(Revocation, subject=lapsed.id)] == [lapsed.id]


async def test_nothing_to_set_aside_changes_nothing(story: Story) -> None:
    patient, t = story.patient.patient, now()
    await _revoked_grant(story, granted=t - 3 * DAY, days=1)
    assert await patient.set_aside_lapsed_revocations(now=t) == 1
    before = await snapshot(story.patient)
    # Again: no revocation left to set aside, no new head, the store as it was.
    assert await patient.set_aside_lapsed_revocations(now=t) == 0
    assert await patient.set_aside_lapsed_revocations(now=t + LAPSED_AFTER - 1) == 0
    after = await snapshot(story.patient)
    assert after.digest == before.digest


async def test_the_gp_that_polls_takes_the_new_head_and_keeps_what_it_held(story: Story) -> None:
    patient, gp, t = story.patient.patient, story.gp.clinic, now()
    lapsed, revocation = await _revoked_grant(story, granted=t - 3 * DAY, days=1)
    await gp.poll(story.patient.did, now=t)
    held = {r.id for r in await story.gp.h.store.records(Revocation)}
    assert revocation.id in held
    await patient.set_aside_lapsed_revocations(now=t)
    assert lapsed.id not in _revoked_in(await patient.state_for(story.gp.did, now=t))
    await gp.poll(story.patient.did, now=t)  # a head of a higher seq, with one revocation fewer: taken
    connection = await story.gp.h.store.connection(story.patient.did)
    assert connection is not None and connection.head_seq == (await patient.state_head(now=t)).record.seq
    assert {r.id for r in await story.gp.h.store.records(Revocation)} == held  # nothing it held is dropped
    # The GP still reads what its live grant reaches.
    report = await gp.sync(story.patient.did, now=t)
    assert report.documents_fetched == 1 and not report.documents_failed


async def test_serve_looks_for_revocations_to_set_aside(story: Story) -> None:
    """The patient's node's background duties set them aside (once an hour; at once when it starts)."""
    patient, t = story.patient.patient, now()
    lapsed, _ = await _revoked_grant(story, granted=t - 3 * DAY, days=1)
    stop = asyncio.Event()
    client = PeerClient(story.patient.h.identity)
    task = asyncio.create_task(duties(story.patient.h, None, client, stop, patient=patient))
    try:
        for _ in range(100):
            if lapsed.id not in _revoked_in(await patient.state_for(story.gp.did, now=now())):
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("the background duties did not set the revocation aside")
    finally:
        stop.set()
        await task
        await client.close()
