"""The ``records`` table: signed records kept exactly as received, found by type, signer or subject."""

from __future__ import annotations

from typing import TypeVar

import aiosqlite

from fedrecord.core import Record, Signed, open_record

R = TypeVar("R", bound=Record)


async def store_record(
    db: aiosqlite.Connection, signed: Signed[R], *, now: int, subject: bytes | None = None
) -> None:
    """Insert a verified record (idempotent).  Call inside a transaction."""
    await db.execute(
        "INSERT OR IGNORE INTO records (id, typ, signer, subject, encoded, received) VALUES (?, ?, ?, ?, ?, ?)",
        (signed.id, signed.record.TYPE.value, signed.signer, subject, signed.encoded, now),
    )


async def load_records(
    db: aiosqlite.Connection, cls: type[R], *, signer: str | None = None, subject: bytes | None = None
) -> list[Signed[R]]:
    """The stored records of one type, re-verified on the way out (the database is not trusted blindly)."""
    query = "SELECT encoded FROM records WHERE typ = ?"
    params: list[object] = [cls.TYPE.value]
    if signer is not None:
        query += " AND signer = ?"
        params.append(signer)
    if subject is not None:
        query += " AND subject = ?"
        params.append(subject)
    async with db.execute(query + " ORDER BY received, id", params) as cursor:
        rows = await cursor.fetchall()
    return [open_record(row[0], cls) for row in rows]


async def load_record(db: aiosqlite.Connection, cls: type[R], record_id: bytes) -> Signed[R] | None:
    async with db.execute(
        "SELECT encoded FROM records WHERE id = ? AND typ = ?", (record_id, cls.TYPE.value)
    ) as cur:
        row = await cur.fetchone()
    return open_record(row[0], cls) if row else None
