"""The ``records`` table: signed records kept exactly as received, found by type, signer or subject.

Records read back from our own database are re-verified on the way out (the
database is not trusted blindly), but a record's verification is pure: the
same bytes opened as the same type always give the same result.  So the
verified records are kept in a bounded in-process cache keyed by type and
the exact stored bytes (which fix the record id: records are immutable and
content-addressed), and a row whose bytes were verified before is not
verified again.  Nothing is ever invalidated: a changed row has other bytes
and is verified afresh.  Records arriving over the wire never go through
this cache; they are opened with ``open_record`` on every request.  Deposit
records (whose sealed box holds a document key that deletion must destroy)
are never cached.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Final, TypeVar

import aiosqlite

from fedrecord.core import Deposit, Record, Signed, open_record

R = TypeVar("R", bound=Record)

CACHE_SIZE: Final = 4096
_verified: OrderedDict[tuple[type[Record], bytes], Signed[Any]] = OrderedDict()


def open_stored(encoded: bytes, cls: type[R]) -> Signed[R]:
    """``open_record`` for bytes read from our own database, through the cache of verified records."""
    key = (cls, bytes(encoded))
    hit = _verified.get(key)
    if hit is not None:
        _verified.move_to_end(key)
        return hit
    signed = open_record(key[1], cls)
    if cls is not Deposit:
        _verified[key] = signed
        if len(_verified) > CACHE_SIZE:
            _verified.popitem(last=False)
    return signed


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
    """The stored records of one type, verified on the way out (the database is not trusted blindly)."""
    query = "SELECT encoded FROM records WHERE typ = ?"
    params: list[object] = [cls.TYPE.value]
    if signer is not None:
        query += " AND signer = ?"
        params.append(signer)
    if subject is not None:
        query += " AND subject = ?"
        params.append(subject)
    rows = await db.execute_fetchall(query + " ORDER BY received, id", params)
    return [open_stored(row[0], cls) for row in rows]


async def load_record(db: aiosqlite.Connection, cls: type[R], record_id: bytes) -> Signed[R] | None:
    rows = list(
        await db.execute_fetchall(
            "SELECT encoded FROM records WHERE id = ? AND typ = ?", (record_id, cls.TYPE.value)
        )
    )
    return open_stored(rows[0][0], cls) if rows else None
