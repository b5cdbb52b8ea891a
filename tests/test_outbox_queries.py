"""The outbox keeps what it delivered: the queries a running node makes every few seconds must not read it.

A clinic's ``serve`` flushes its outbox every ``poll_interval`` (and ``fedrecord deposit`` after each
deposit); a patient's node delivers its decisions as often.  Delivered rows stay (``done = 1``, with
their payload: ``fedrecord status`` counts them, a refused deposit's reason is read from its row), so
after a year a lab's outbox holds hundreds of thousands of rows.  Each query of a flush must then go
through the rows still to send, not through the table.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from fedrecord.node.home import NodeHome, init_home

from .node_helpers import KDF_LIMITS, PASSPHRASE

PATIENT = "did:key:z6MkpatientPatientPatientPatientPatientPatient"


async def test_a_flush_reads_only_the_rows_still_to_send(tmp_path: Path) -> None:
    path = tmp_path / "lab"
    init_home(
        path,
        role="clinic",
        name="lab",
        endpoint="http://127.0.0.1:0",
        passphrase=PASSPHRASE,
        kdf_limits=KDF_LIMITS,
    )
    home = await NodeHome.open(path, PASSPHRASE)
    try:
        store = home.store
        async with store.transaction():
            for n in range(200):
                await store.queue_outbox("deposit", target=PATIENT, payload=bytes(600), now=n)
            await home.db.execute("UPDATE outbox SET done = 1 WHERE id <= 195")
        statements: list[str] = []
        for connection in (home.db._writer, home.db._reader):
            connection.set_trace_callback(statements.append)
        try:
            due = await store.due_outbox(1000)
            pending = await store.outbox_pending()
            owes = await store.owes(PATIENT)
            decisions = await store.due_decisions(1000)
        finally:
            for connection in (home.db._writer, home.db._reader):
                connection.set_trace_callback(None)
        assert [item[0] for item in due] == [196, 197, 198, 199, 200] and pending == 5 and owes
        assert decisions == []
    finally:
        await home.close()
    reads = [s for s in statements if s.lstrip().upper().startswith("SELECT") and "outbox" in s]
    assert len(reads) == 4, statements
    db = sqlite3.connect(f"file:{path / 'node.db'}?mode=ro", uri=True)
    try:
        for statement in reads:
            plan = [row[3] for row in db.execute(f"EXPLAIN QUERY PLAN {statement}")]
            outbox_steps = [step for step in plan if " outbox" in f" {step}" or step.startswith(("SCAN o", "SEARCH o"))]
            assert outbox_steps and all("USING INDEX outbox_pending" in step for step in outbox_steps), (
                statement,
                plan,
            )
    finally:
        db.close()
