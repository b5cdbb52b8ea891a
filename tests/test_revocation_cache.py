"""The revocation set a node decides against, read again only when a revocation may have been kept.

Two openings of one home stand for two processes on one database (``serve`` and a CLI command):
a revocation committed by either is in the other's next decision ([CAP-16]).
"""

from __future__ import annotations

from pathlib import Path

from nacl.pwhash import argon2id

from fedrecord.core import Revocation, SigningIdentity, sign_record
from fedrecord.node.home import NodeHome, init_home
from fedrecord.node.patient import PatientNode

from .node_helpers import lab_read_grant, now

PASSPHRASE = b"revocation cache, not a secret"


async def test_a_revocation_committed_elsewhere_or_in_the_own_transaction_is_in_the_set(tmp_path: Path) -> None:
    init_home(
        tmp_path / "patient",
        role="patient",
        name="Camille",
        endpoint="http://127.0.0.1:8470",
        passphrase=PASSPHRASE,
        kdf_limits=(argon2id.OPSLIMIT_INTERACTIVE, argon2id.MEMLIMIT_INTERACTIVE),
    )
    serve = await NodeHome.open(tmp_path / "patient", PASSPHRASE)
    command = await NodeHome.open(tmp_path / "patient", PASSPHRASE)
    try:
        served, cli = PatientNode(serve), PatientNode(command)
        reader = SigningIdentity.from_seed(bytes(32))
        first, second = [(await lab_read_grant(served, reader.did, days=30)).id for _ in range(2)]
        assert first != second

        unchanged = await serve.store.revocation_set()
        assert unchanged.revokers == {}
        assert await serve.store.revocation_set() is unchanged  # nothing kept since: not read again

        await cli.revoke(first, now=now())  # another process
        assert (await serve.store.revocation_set()).revoked_by(first) == {serve.did}

        async with serve.store.transaction():
            revocation = sign_record(Revocation(grant=second, iat=now()), serve.identity)
            await serve.store.put_record(revocation, now=now(), subject=second)
            # Its own write, not yet committed, counts inside the transaction ...
            assert (await serve.store.revocation_set()).revoked_by(second) == {serve.did}
        # ... and after it, for every process.
        assert (await command.store.revocation_set()).revoked_by(second) == {serve.did}
    finally:
        await command.close()
        await serve.close()
