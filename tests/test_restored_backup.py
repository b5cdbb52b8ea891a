"""A patient's node restored from an older backup meets the grants it signed since ([API-75]).

Real nodes on loopback; the backup is ``fedrecord backup``'s (:func:`backup_home`), taken while the
patient's node serves, and restored over its home as an operator would.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from fedrecord.core import Code, RemoteProtocolError
from fedrecord.node.home import backup_home

from .node_helpers import ServedNode, lab_read_grant, now


async def test_a_grant_signed_after_the_backup_is_kept_when_presented_and_can_be_revoked(tmp_path: Path) -> None:
    patient = await ServedNode.create(tmp_path / "patient", role="patient", name="Camille")
    gp = await ServedNode.create(tmp_path / "gp", role="clinic", name="Cabinet")
    try:
        invitation = await patient.patient.create_invitation(label="Cabinet", now=now())
        await gp.clinic.connect(invitation.url(), now=now())
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
    finally:
        await gp.stop()
        await patient.stop()
