"""A patient's node restored from an older backup meets the grants it signed since ([API-75]).

Real nodes on loopback; the backup is ``fedrecord backup``'s (:func:`backup_home`), taken while the
patient's node serves, and restored over its home as an operator would.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fedrecord.core import Code, RemoteProtocolError, open_any_record, sign_record
from fedrecord.node.home import backup_home
from fedrecord.node.wire import api_url

from .node_helpers import ServedNode, assert_unchanged, lab_read_grant, now, snapshot


@contextlib.asynccontextmanager
async def _connected(tmp_path: Path) -> AsyncIterator[tuple[ServedNode, ServedNode]]:
    """Camille's node and her GP's, served, the GP connected by invitation; both stopped after."""
    patient = await ServedNode.create(tmp_path / "patient", role="patient", name="Camille")
    gp = await ServedNode.create(tmp_path / "gp", role="clinic", name="Cabinet")
    try:
        invitation = await patient.patient.create_invitation(label="Cabinet", now=now())
        await gp.clinic.connect(invitation.url(), now=now())
        yield patient, gp
    finally:
        await gp.stop()
        await patient.stop()


async def test_a_grant_signed_after_the_backup_is_kept_when_presented_and_can_be_revoked(tmp_path: Path) -> None:
    async with _connected(tmp_path) as (patient, gp):
        backup_home(patient.path, tmp_path / "backup")

        grant = await lab_read_grant(patient.patient, gp.did, days=30)
        await gp.clinic.poll(patient.did, now=now())

        # The disk is lost; the operator restores yesterday's backup over the home.
        await patient.stop()
        shutil.rmtree(patient.path)
        shutil.copytree(tmp_path / "backup", patient.path)
        await patient.start()
        assert grant.id not in {g.id for g in await patient.patient.all_grants()}

        # The GP reads under it as before: the grant is the patient's signature, and now kept again.
        assert len(await gp.clinic.chains_from(patient.did, now=now())) == 1
        assert await gp.clinic.listing(patient.did, now=now()) == []
        assert grant.id in {g.id for g in await patient.patient.live_grants(now=now())}

        # So the patient sees it, and can revoke it.
        await patient.patient.revoke(grant.id, now=now())
        assert grant.id not in {g.id for g in await patient.patient.live_grants(now=now())}
        await gp.clinic.poll(patient.did, now=now())
        assert await gp.clinic.chains_from(patient.did, now=now()) == []
        # And the restored node refuses the chain itself, whoever presents it.
        with pytest.raises(RemoteProtocolError) as refused:
            await patient.patient.reading_chain(gp.did, [grant.encoded], now=now())
        assert refused.value.code is Code.REVOKED


async def test_a_restored_node_goes_on_from_the_newest_head_its_clinics_saw(tmp_path: Path) -> None:
    """Heads signed after the backup are lost with it; the GP saw them and shows the newest in its state
    requests ([API-16]): the restored node keeps it and signs the next head after it, so the GP takes
    the revocation made after the restore instead of refusing its head as a rollback."""
    async with _connected(tmp_path) as (patient, gp):
        kept = await lab_read_grant(patient.patient, gp.did, days=30)
        await gp.clinic.poll(patient.did, now=now())
        backup_home(patient.path, tmp_path / "backup")
        # Two revocations after the backup, two heads the GP sees.
        for _ in range(2):
            await patient.patient.revoke((await lab_read_grant(patient.patient, gp.did, days=30)).id, now=now())
        seen = (await gp.clinic.poll(patient.did, now=now()))["seq"]
        held = await gp.h.store.held_head(patient.did)
        assert held is not None and seen >= 2

        await patient.stop()
        shutil.rmtree(patient.path)
        shutil.copytree(tmp_path / "backup", patient.path)
        await patient.start()
        assert (await patient.patient.state_head(now=now())).record.seq < seen

        # The patient revokes again what it holds: alone, its next head would be older than the GP's.
        await patient.patient.revoke(kept.id, now=now())
        assert (await gp.clinic.poll(patient.did, now=now()))["seq"] == seen + 1
        head = await patient.patient.state_head(now=now())
        assert (head.record.seq, head.record.prev) == (seen + 1, open_any_record(held).id)
        assert await gp.clinic.chains_from(patient.did, now=now()) == [], "the revocation was applied"
        # Shown again, the same head changes nothing.
        assert (await gp.clinic.poll(patient.did, now=now()))["seq"] == seen + 1


@pytest.mark.parametrize(
    ("what", "code"),
    [("another signer", Code.BAD_SIGNATURE), ("text", Code.MALFORMED), ("not a head", Code.WRONG_TYPE)],
)
async def test_a_head_that_is_not_the_patients_is_refused_and_changes_nothing(
    tmp_path: Path, what: str, code: Code
) -> None:
    async with _connected(tmp_path) as (patient, gp):
        grant = await lab_read_grant(patient.patient, gp.did, days=30)
        head = (await patient.patient.state_head(now=now())).record
        # A head of a far greater seq, signed by the GP: it would make the patient's node skip ahead.
        forged = sign_record(dataclasses.replace(head, seq=head.seq + 1000, prev=bytes(32)), gp.identity)
        offered: object = {
            "another signer": forged.encoded,
            "text": "a head",
            "not a head": grant.encoded,
        }[what]
        endpoint = (await gp.h.store.connection(patient.did)).endpoint  # type: ignore[union-attr]
        before = await snapshot(patient)
        with pytest.raises(RemoteProtocolError) as refused:
            await gp.clinic.client.call(
                "POST", api_url(endpoint, "/v0/state"), expected_signer=patient.did, head=offered
            )
        assert refused.value.code is code
        await assert_unchanged(patient, before, nonce_spent=True)
