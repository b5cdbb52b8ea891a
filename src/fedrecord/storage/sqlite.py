"""The SQLite base every node store builds on: opening, migrations, transactions, checks.

Theory of operation.  A node has one database file, opened once through
aiosqlite with ``isolation_level=None`` so that Python's sqlite3 module never
opens or commits a transaction behind our back: every write goes through
:func:`transaction`, which issues ``BEGIN IMMEDIATE`` (taking the write lock
up front, so two writers never deadlock half-way) and ``COMMIT``.  An answer
that acknowledges a write is sent only after that ``COMMIT`` has returned.

Durability comes from the pragmas set by :func:`open_database`: WAL with
``synchronous=FULL`` syncs the log on every commit (``NORMAL`` would lose the
last commits on power failure, which breaks "acknowledged means stored"), and
``secure_delete`` overwrites deleted content so destroyed keys do not linger
in free pages (brief section 4, "Deletion").

The schema is versioned: ``schema_version`` holds one row per applied
migration and the highest is the current version.  Each migration runs in its
own ``BEGIN IMMEDIATE`` transaction that re-reads the version first, so two
processes opening the same new database apply each migration exactly once.

A single connection is shared by the coroutines of a node, so
:func:`transaction` also serialises them with one asyncio lock per
connection: a second writer waits for the first to commit instead of failing
with "cannot start a transaction within a transaction".
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import struct
import weakref
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import aiosqlite

__all__ = [
    "BUSY_TIMEOUT_MS",
    "StorageError",
    "SchemaVersionError",
    "Migration",
    "open_database",
    "schema_version",
    "transaction",
    "integrity_check",
    "table_digest",
]

BUSY_TIMEOUT_MS: Final = 10_000
"""How long a connection waits for another process's write lock before failing."""


class StorageError(Exception):
    """The database cannot be used as asked; the message says why."""


class SchemaVersionError(StorageError):
    """The database was written by a newer fedrecord than this one (its schema is unknown to us)."""


@dataclass(frozen=True)
class Migration:
    """One step of the schema, applied once, in its own transaction.

    Attributes:
        version: the schema version after this step (1 for the first).
        description: what it changes, for humans.
        statements: SQL statements run in order.  No ``BEGIN``/``COMMIT`` and
            no pragmas that are no-ops inside a transaction (``foreign_keys``).

    Raises:
        ValueError: from the constructor, for a version below 1 or statements
            that are not a tuple of strings.
    """

    version: int
    description: str
    statements: tuple[str, ...]

    def __post_init__(self) -> None:
        if isinstance(self.version, bool) or not isinstance(self.version, int) or self.version < 1:
            raise ValueError("a migration version is an integer >= 1")
        if not isinstance(self.statements, tuple) or not all(isinstance(s, str) for s in self.statements):
            raise ValueError("migration statements are a tuple of SQL strings")


async def open_database(path: Path, migrations: Sequence[Migration]) -> aiosqlite.Connection:
    """Open (creating if needed) the database at ``path`` and bring its schema up to date.

    Args:
        path: the database file.
        migrations: every migration the code knows, versions strictly increasing.

    Returns:
        An open connection in autocommit mode (``isolation_level=None``); write
        through :func:`transaction`.  Close it with ``await db.close()``.

    Raises:
        ValueError: ``migrations`` are not in strictly increasing version order.
        SchemaVersionError: the database's version is newer than the last migration.
        StorageError: WAL mode cannot be enabled (e.g. on a network file system).
        sqlite3.Error: a migration failed (it was rolled back; earlier ones stay).
    """
    versions = [m.version for m in migrations]
    if any(b <= a for a, b in itertools.pairwise(versions)):
        raise ValueError("migrations must be listed in strictly increasing version order")
    db = await aiosqlite.connect(Path(path), isolation_level=None)
    try:
        await _set_pragmas(db)
        await db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        known = versions[-1] if versions else 0
        current = await schema_version(db)
        if current > known:
            raise SchemaVersionError(
                f"database {path} has schema version {current}, newer than the {known} this fedrecord "
                "knows; upgrade fedrecord (the database was left untouched)"
            )
        for migration in migrations:
            if migration.version > current:
                await _apply(db, migration)
    except BaseException:
        await db.close()
        raise
    return db


async def _set_pragmas(db: aiosqlite.Connection) -> None:
    await db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    async with db.execute("PRAGMA journal_mode = WAL") as cursor:
        row = await cursor.fetchone()
    if row is None or str(row[0]).lower() != "wal":
        raise StorageError(
            "cannot enable WAL journal mode on this database (is it on a network file system?)"
        )
    for pragma in ("synchronous = FULL", "secure_delete = ON", "foreign_keys = ON", "trusted_schema = OFF"):
        await db.execute(f"PRAGMA {pragma}")


async def schema_version(db: aiosqlite.Connection) -> int:
    """The highest migration applied to ``db`` (0 for a new database)."""
    async with db.execute("SELECT coalesce(max(version), 0) FROM schema_version") as cursor:
        row = await cursor.fetchone()
    return int(row[0]) if row is not None else 0


async def _apply(db: aiosqlite.Connection, migration: Migration) -> None:
    async with transaction(db):
        # Re-read under the write lock: another process may have applied it meanwhile.
        if await schema_version(db) >= migration.version:
            return
        for statement in migration.statements:
            await db.execute(statement)
        await db.execute("INSERT INTO schema_version (version) VALUES (?)", (migration.version,))


@dataclass
class _Lock:
    lock: asyncio.Lock
    owner: asyncio.Task[object] | None = None


# One lock per connection, dropped with the connection.
_locks: weakref.WeakKeyDictionary[aiosqlite.Connection, _Lock] = weakref.WeakKeyDictionary()


@asynccontextmanager
async def _exclusive(db: aiosqlite.Connection) -> AsyncIterator[None]:
    entry = _locks.get(db)
    if entry is None:
        entry = _locks[db] = _Lock(asyncio.Lock())
    task = asyncio.current_task()
    if entry.owner is not None and entry.owner is task:
        raise StorageError("transactions do not nest: this task already holds one on this connection")
    async with entry.lock:
        entry.owner = task
        try:
            yield
        finally:
            entry.owner = None


@asynccontextmanager
async def transaction(db: aiosqlite.Connection) -> AsyncIterator[aiosqlite.Connection]:
    """Run the block in one ``BEGIN IMMEDIATE`` transaction: commit on success, roll back on any exception.

    Coroutines sharing ``db`` are serialised (one transaction at a time per
    connection).  Commit has returned, and so the write is durable, when the
    ``async with`` block exits normally: only then acknowledge it.

    Yields:
        ``db``, for convenience.

    Raises:
        StorageError: when the current task is already inside a transaction on ``db``.
        sqlite3.OperationalError: ``database is locked`` after the busy timeout.
        Whatever the block raises, after the rollback.
    """
    async with _exclusive(db):
        await db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            # Also on cancellation: a half-done write must never be committed later by someone else.
            if db.in_transaction:
                with suppress(Exception):
                    await db.rollback()
            raise
        await _commit(db)


async def _commit(db: aiosqlite.Connection) -> None:
    try:
        await db.execute("COMMIT")
    except BaseException:
        # A failed COMMIT (disk full, I/O error) can leave the transaction open: close it.
        if db.in_transaction:
            with suppress(Exception):
                await db.rollback()
        raise


async def integrity_check(db: aiosqlite.Connection) -> str:
    """``PRAGMA integrity_check``: ``"ok"`` for a sound database, else SQLite's findings, one per line."""
    async with db.execute("PRAGMA integrity_check") as cursor:
        rows = await cursor.fetchall()
    return "\n".join(str(row[0]) for row in rows)


async def table_digest(db: aiosqlite.Connection, tables: Sequence[str]) -> dict[str, tuple[int, str]]:
    """Row count and SHA-256 (hex) of the contents of each table, read in one snapshot.

    Rows are read in rowid order (primary-key order for ``WITHOUT ROWID``
    tables), rowid included, and every value is hashed with its type and
    length, so any insert, update or delete changes the digest.  Tests take it
    before and after a refused request to prove nothing was stored.

    Raises:
        StorageError: a name is not a table of ``db``, or the current task is
            inside a :func:`transaction` on ``db``.
    """
    async with _exclusive(db):
        snapshot = not db.in_transaction
        if snapshot:
            await db.execute("BEGIN")
        try:
            return {table: await _digest_one(db, table) for table in tables}
        finally:
            if snapshot:
                await db.execute("COMMIT")


async def _digest_one(db: aiosqlite.Connection, table: str) -> tuple[int, str]:
    async with db.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
    ) as cursor:
        if await cursor.fetchone() is None:
            raise StorageError(f"no table named {table!r}")
    quoted = '"' + table.replace('"', '""') + '"'
    try:
        async with db.execute(f"SELECT rowid FROM {quoted} LIMIT 0"):
            pass
        query = f"SELECT rowid, * FROM {quoted} ORDER BY rowid"
    except aiosqlite.OperationalError:
        # WITHOUT ROWID: order by the primary key columns.
        async with db.execute(f"PRAGMA table_info({quoted})") as cursor:
            columns = sorted((row[5], row[1]) for row in await cursor.fetchall() if row[5])
        order = ", ".join('"' + name.replace('"', '""') + '"' for _, name in columns)
        query = f"SELECT * FROM {quoted} ORDER BY {order}"
    digest = hashlib.sha256(b"fedrecord/v0/table-digest\0" + table.encode() + b"\0")
    count = 0
    async with db.execute(query) as cursor:
        async for row in cursor:
            count += 1
            digest.update(b"r" + struct.pack(">I", len(row)))
            for value in row:
                digest.update(_encode_value(value))
    return count, digest.hexdigest()


def _encode_value(value: object) -> bytes:
    # Type tag + length prefix: ("ab", "c") and ("a", "bc") hash differently, and so do 1 and "1".
    if value is None:
        return b"n"
    if isinstance(value, int):
        raw = str(value).encode()
        return b"i" + struct.pack(">I", len(raw)) + raw
    if isinstance(value, float):
        return b"f" + struct.pack(">d", value)
    if isinstance(value, str):
        raw = value.encode("utf-8", "surrogatepass")
        return b"s" + struct.pack(">Q", len(raw)) + raw
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        return b"b" + struct.pack(">Q", len(raw)) + raw
    raise StorageError(f"unexpected SQLite value of type {type(value).__name__}")
