"""The SQLite base every node store builds on: opening, migrations, transactions, checks.

Theory of operation.  A node has one database file and one :class:`Database`
for it, used from the node's event loop.  Statements run inline, on the
event loop's thread: they touch only SQLite's page cache and take
microseconds, whereas moving each one to a worker thread, as aiosqlite does,
costs about 120 microseconds of CPU per statement on a two-core machine
(thread wake-ups and the GIL changing hands) and was most of a fetch's cost.
What may wait goes to one worker thread: ``COMMIT`` (it syncs the log to
disk), ``BEGIN IMMEDIATE`` when another process holds the write lock (it
waits for it, up to :data:`BUSY_TIMEOUT_MS`; a free lock is taken inline),
plus long reads through :meth:`Database.run`.

Two connections: every write goes through :func:`transaction` on the
writer, which Python's sqlite3 module never commits behind our back
(``isolation_level=None``); reads made outside a transaction go to a
read-only reader, so they see only committed data and never wait for a sync.
Reads made inside a transaction, by the task that holds it, see its writes.

Durability comes from the pragmas set by :func:`open_database`: WAL with
``synchronous=FULL`` syncs the log on every commit (``NORMAL`` would lose the
last commits on power failure, which breaks "acknowledged means stored"), and
``secure_delete`` overwrites deleted content so destroyed keys do not linger
in free pages (brief section 4, "Deletion").  An answer that acknowledges a
write is sent only after its ``COMMIT`` has returned.

Group commit.  Transactions are serialised with one asyncio lock, and those
that queue up are committed as a group: each block runs in a ``SAVEPOINT`` of
one SQLite transaction, the last of the group has the one ``COMMIT`` (one log
sync) issued, and each block's ``async with`` exits only once that ``COMMIT``
has returned.  Under load, durability costs one sync per group, not per write.

The schema is versioned: ``schema_version`` holds one row per applied
migration and the highest is the current version.  Each migration runs in its
own ``BEGIN IMMEDIATE`` transaction that re-reads the version first, so two
processes opening the same new database apply each migration exactly once.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import sqlite3
import struct
from collections.abc import AsyncIterator, Callable, Coroutine, Generator, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

__all__ = [
    "BUSY_TIMEOUT_MS",
    "Database",
    "StorageError",
    "SchemaVersionError",
    "Migration",
    "open_database",
    "schema_version",
    "transaction",
    "integrity_check",
    "table_digest",
]

T = TypeVar("T")

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


GROUP_COMMIT_MAX: Final = 64
"""At most this many transactions share one ``COMMIT`` (one log sync)."""

Params = Sequence[Any]


class Cursor:
    """The outcome of one statement: its rows (already read) and what it changed."""

    def __init__(self, cursor: sqlite3.Cursor) -> None:
        self._rows = cursor.fetchall()
        self.rowcount: int = cursor.rowcount
        self.lastrowid: int | None = cursor.lastrowid
        cursor.close()

    async def fetchone(self) -> Any:
        return self._rows.pop(0) if self._rows else None

    async def fetchall(self) -> list[Any]:
        rows, self._rows = self._rows, []
        return rows

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Any]:
        while self._rows:
            yield self._rows.pop(0)


class _Statement:
    """``await db.execute(...)`` or ``async with db.execute(...) as cursor``: both run it once."""

    def __init__(self, run: Callable[[], Cursor]) -> None:
        self._run = run

    def __await__(self) -> Generator[Any, None, Cursor]:
        return self._result().__await__()

    async def _result(self) -> Cursor:
        return self._run()

    async def __aenter__(self) -> Cursor:
        return self._run()

    async def __aexit__(self, *_exc: object) -> None:
        return None


@dataclass
class _Group:
    """Transactions done but not yet committed: they share one ``BEGIN IMMEDIATE`` ... ``COMMIT``."""

    committed: asyncio.Future[None]
    size: int = 0


class Database:
    """One node database: a writer and a reader connection, and a worker thread for what may wait.

    Use it from one event loop.  Write only inside :meth:`transaction`; read
    anywhere.  Statements raise :class:`sqlite3.Error` subclasses as sqlite3
    does (a write outside a transaction fails: the reader is read-only).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._writer = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            self._reader = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except BaseException:
            self._writer.close()
            raise
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fedrecord-sqlite")
        self._lock = asyncio.Lock()
        self._owner: asyncio.Task[Any] | None = None
        self._waiting = 0  # tasks queued for the lock
        self._group: _Group | None = None  # the open SQLite transaction and the blocks sharing it
        self._begin: asyncio.Future[Any] | None = None
        self._finishing: set[asyncio.Task[None]] = set()
        self._savepoints = itertools.count()
        self._closed = False
        self._thread_reader: sqlite3.Connection | None = None  # created, used and closed in the thread
        #: ``COMMIT``\ s issued so far (each one log sync), for benchmarks and tests of group commit.
        self.commits = 0
        #: The migrations :func:`open_database` applied to a database that already had a schema.
        self.upgraded: list[Migration] = []

    # --- statements

    @property
    def isolation_level(self) -> str | None:
        return self._writer.isolation_level

    @property
    def in_transaction(self) -> bool:
        """Whether the writer holds an open SQLite transaction (a group may be waiting for its commit)."""
        return self._writer.in_transaction

    @property
    def reads_committed(self) -> bool:
        """Whether this task's reads see only what is committed (it holds no transaction of its own)."""
        return not (self._owner is not None and self._owner is asyncio.current_task())

    def _connection(self) -> sqlite3.Connection:
        return self._reader if self.reads_committed else self._writer

    def execute(self, sql: str, params: Params = ()) -> _Statement:
        """Run one statement (on the writer inside this task's transaction, else on the reader)."""
        connection = self._connection()
        return _Statement(lambda: Cursor(connection.execute(sql, params)))

    async def executemany(self, sql: str, rows: Iterable[Params]) -> None:
        """Run one writing statement once per parameter row, in this task's transaction.

        One call for many rows (a batch's), where a loop of :meth:`execute` would cost a
        Python round per row.

        Raises:
            sqlite3.Error: as :meth:`execute`; a write outside a transaction fails (the reader is read-only).
        """
        self._connection().executemany(sql, rows).close()

    async def execute_fetchall(self, sql: str, params: Params = ()) -> list[Any]:
        """Run one statement and return all its rows."""
        return self._connection().execute(sql, params).fetchall()

    async def fetchone(self, sql: str, params: Params = ()) -> Any:
        """Run one statement and return its first row, or ``None``."""
        return self._connection().execute(sql, params).fetchone()

    async def run(self, function: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``function(reader)`` in the worker thread, on a read-only connection of its own.

        For long reads that should not hold the event loop.
        """
        return await asyncio.get_running_loop().run_in_executor(self._thread, self._call_reader, function)

    def _call_reader(self, function: Callable[[sqlite3.Connection], T]) -> T:
        if self._thread_reader is None:
            self._thread_reader = sqlite3.connect(self.path, isolation_level=None)
            _set_reader_pragmas(self._thread_reader)
        return function(self._thread_reader)

    async def checkpoint(self) -> None:
        """Copy the log into the database file and truncate the log (``wal_checkpoint(TRUNCATE)``).

        After a transaction that destroyed something: until a checkpoint, the
        log keeps the old images of the pages it changed, where
        ``secure_delete`` does not reach.  Best effort: a reader of another
        process in the middle of a read can keep the log from being truncated
        this time; the next checkpoint does it.

        Raises:
            sqlite3.Error: the disk failed.
        """
        async with self._exclusive():
            await self._writer_job(_run_through, self._writer, "PRAGMA wal_checkpoint(TRUNCATE)")

    async def close(self) -> None:
        """Wait for pending commits, then close both connections and the worker thread."""
        if self._closed:
            return
        async with self._exclusive():
            self._closed = True
            await self._writer_job(self._close_connections)
        self._thread.shutdown(wait=True)

    def _close_connections(self) -> None:
        try:
            if self._writer.in_transaction:
                self._writer.rollback()
        finally:
            self._writer.close()
            self._reader.close()
            if self._thread_reader is not None:
                self._thread_reader.close()

    # --- the lock

    async def _acquire(self) -> None:
        task = asyncio.current_task()
        if self._owner is not None and self._owner is task:
            raise StorageError("transactions do not nest: this task already holds one on this database")
        self._waiting += 1
        try:
            await self._lock.acquire()
        except BaseException:
            self._waiting -= 1
            if not self._waiting and not self._lock.locked() and self._group is not None:
                # The group was left open for us: close it, or its blocks would wait for ever.
                self._spawn(self._flush())
            raise
        self._waiting -= 1
        self._owner = task

    def _release(self) -> None:
        self._owner = None
        self._lock.release()

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        # Referenced until done, so that a task finishing a group is never collected half-way.
        task = asyncio.ensure_future(coroutine)
        self._finishing.add(task)
        task.add_done_callback(self._finishing.discard)
        return task

    async def _flush(self) -> None:
        await self._acquire()
        await self._finish()

    @asynccontextmanager
    async def _exclusive(self) -> AsyncIterator[None]:
        """Hold the lock, any open group committed first."""
        await self._acquire()
        while self._group is not None:
            await asyncio.shield(self._spawn(self._finish()))
            await self._acquire()
        try:
            yield
        finally:
            self._release()

    # --- transactions

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Database]:
        """Run the block as one transaction: durable when the block exits normally, undone on any exception.

        See the module's "Group commit": the block runs in a savepoint of a
        transaction shared with the blocks queued behind it, and its ``async
        with`` exits once the group's ``COMMIT`` has returned -- only then
        acknowledge the write.  A block that raises is rolled back to its
        savepoint and leaves no trace; the others of its group are not
        affected.  Blocks of one group read each other's writes, as they would
        after a commit.

        Yields:
            the database, for convenience.

        Raises:
            StorageError: the current task already holds a transaction, or the
                database rolled the group back.
            sqlite3.OperationalError: ``database is locked`` after the busy timeout.
            sqlite3.Error: the group's ``COMMIT`` failed (disk full, I/O error):
                nothing of the group was stored.
            Whatever the block raises, after its rollback.
        """
        await self._acquire()
        savepoint: str | None = None
        try:
            if self._group is None:
                self._group = _Group(asyncio.get_running_loop().create_future())
                if not self._begin_at_once():
                    self._begin = self._in_thread(self._writer.execute, "BEGIN IMMEDIATE")
                    await asyncio.shield(self._begin)
            group = self._group
            savepoint = f"block{next(self._savepoints)}"
            self._writer.execute(f"SAVEPOINT {savepoint}")
            yield self
            self._writer.execute(f"RELEASE {savepoint}")
        except BaseException:
            # Also on cancellation: a half-done write must never be committed with the others.  The
            # lock goes to a task that cannot be interrupted half-way.
            await asyncio.shield(self._spawn(self._finish(undo=savepoint, failed=True)))
            raise
        group.size += 1
        if self._waiting and group.size < GROUP_COMMIT_MAX:
            # Someone is queued: let them join; the last of the group has the commit issued for all.
            self._release()
        else:
            self._spawn(self._finish())
        await asyncio.shield(group.committed)

    def _begin_at_once(self) -> bool:
        """``BEGIN IMMEDIATE`` on the event loop's thread if no other process holds the write lock.

        Taking a free lock takes microseconds, whereas the trip to the worker
        thread costs two thread wake-ups, as much CPU as the rest of a small
        write.  So the lock is tried without waiting (busy timeout 0); only
        when another process holds it does ``BEGIN`` go to the worker thread,
        which waits up to :data:`BUSY_TIMEOUT_MS` there.

        Returns:
            whether the transaction began.
        """
        writer = self._writer
        _run_through(writer, "PRAGMA busy_timeout = 0")
        try:
            writer.execute("BEGIN IMMEDIATE")
            return True
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY:
                raise
            return False  # another process holds the lock: wait for it in the worker thread
        finally:
            _run_through(writer, f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")

    async def _writer_job(self, function: Callable[..., T], *args: Any) -> T:
        """Run ``function(*args)``, which uses the writer, in the worker thread, to its end even if cancelled.

        Call with the lock held.  The job cannot be stopped once in the thread
        (a checkpoint may wait there for another process's readers); were the
        lock released while it runs, the next transaction would begin on the
        writer inline and wait on the event loop's thread for the job to end.
        So a cancellation is held back until the job ends, then raised.

        Raises:
            Whatever ``function`` raises; ``CancelledError`` once it ended, if cancelled meanwhile.
        """
        job = self._in_thread(function, *args)
        cancelled: asyncio.CancelledError | None = None
        while not job.done():
            try:
                await asyncio.shield(job)
            except asyncio.CancelledError as exc:
                cancelled = exc
            except BaseException:  # noqa: BLE001 - the job's own error, taken from it below
                break
        if cancelled is not None:
            raise cancelled
        result: T = job.result()
        return result

    def _in_thread(self, function: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        return asyncio.get_running_loop().run_in_executor(self._thread, function, *args)

    async def _finish(self, *, undo: str | None = None, failed: bool = False) -> None:
        """With the lock held: undo a failed block, commit the group unless someone queued will, release.

        ``undo`` is the failed block's savepoint (``None`` when it failed
        before making one).  Errors reach the group's blocks through their
        future, never up from here.
        """
        try:
            if self._begin is not None:
                with suppress(BaseException):
                    await self._begin  # a BEGIN whose caller was interrupted: let it end first
                self._begin = None
            if failed:
                self._undo(undo)
                if self._waiting:
                    return  # the next block will close the group
            await self._commit_group()
        finally:
            self._release()

    def _undo(self, savepoint: str | None) -> None:
        """Roll one block back to its savepoint; if SQLite has no transaction any more, fail the group."""
        if self._writer.in_transaction:
            if savepoint is None:
                return  # failed before touching anything
            try:
                self._writer.execute(f"ROLLBACK TO {savepoint}")
                self._writer.execute(f"RELEASE {savepoint}")
                return
            except sqlite3.Error:
                with suppress(sqlite3.Error):
                    self._writer.rollback()
        group, self._group = self._group, None
        if group is not None:
            _settle(group, StorageError("the transaction was rolled back by the database"))

    async def _commit_group(self) -> None:
        """``COMMIT`` the open group and tell its blocks; on failure roll back and give them the error."""
        group, self._group = self._group, None
        if group is None:
            return
        if not self._writer.in_transaction:
            _settle(group, StorageError("the transaction was rolled back by the database"))
            return
        error: Exception | None = StorageError("the commit did not complete")
        try:
            await self._in_thread(self._writer.execute, "COMMIT")
            error = None
            self.commits += 1
        except sqlite3.Error as exc:
            error = exc
            # A failed COMMIT (disk full, I/O error) can leave the transaction open: close it.
            if self._writer.in_transaction:
                with suppress(sqlite3.Error):
                    await self._in_thread(self._writer.rollback)
        finally:
            # Whatever happened, every block of the group is told (none may wait for ever).
            _settle(group, error)


def _run_through(connection: sqlite3.Connection, sql: str) -> None:
    """Run a statement that answers with rows to its end, so that it is not left open on the connection.

    A statement left open (its cursor kept alive, here by the futures that
    carried it back from the worker thread) would make the next ``SAVEPOINT``
    fail with "SQL statements in progress".
    """
    connection.execute(sql).fetchall()


def _settle(group: _Group, error: Exception | None) -> None:
    if group.committed.done():
        return
    if error is None:
        group.committed.set_result(None)
    else:
        group.committed.set_exception(error)
        group.committed.exception()  # marked retrieved: a group whose blocks all left warns no one


def transaction(db: Database) -> AbstractAsyncContextManager[Database]:
    """``db.transaction()``: one durable transaction (see :meth:`Database.transaction`)."""
    return db.transaction()


async def open_database(path: Path, migrations: Sequence[Migration]) -> Database:
    """Open (creating if needed) the database at ``path`` and bring its schema up to date.

    Args:
        path: the database file.
        migrations: every migration the code knows, versions strictly increasing.

    Returns:
        An open :class:`Database`.  Close it with ``await db.close()``.

    Raises:
        ValueError: ``migrations`` are not in strictly increasing version order.
        SchemaVersionError: the database's version is newer than the last migration.
        StorageError: WAL mode cannot be enabled (e.g. on a network file system).
        sqlite3.Error: a migration failed (it was rolled back; earlier ones stay).
    """
    versions = [m.version for m in migrations]
    if any(b <= a for a, b in itertools.pairwise(versions)):
        raise ValueError("migrations must be listed in strictly increasing version order")
    db = Database(Path(path))
    try:
        _set_pragmas(db._writer, db._reader)
        async with db.transaction():
            await db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        known = versions[-1] if versions else 0
        current = await schema_version(db)
        if current > known:
            raise SchemaVersionError(
                f"database {path} has schema version {current}, newer than the {known} this fedrecord "
                "knows; upgrade fedrecord (the database was left untouched)"
            )
        for migration in migrations:
            if migration.version > current and await _apply(db, migration) and current > 0:
                db.upgraded.append(migration)
    except BaseException:
        await db.close()
        raise
    return db


def _set_pragmas(writer: sqlite3.Connection, reader: sqlite3.Connection) -> None:
    writer.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    row = writer.execute("PRAGMA journal_mode = WAL").fetchone()
    if row is None or str(row[0]).lower() != "wal":
        raise StorageError(
            "cannot enable WAL journal mode on this database (is it on a network file system?)"
        )
    for pragma in ("synchronous = FULL", "secure_delete = ON", "foreign_keys = ON", "trusted_schema = OFF"):
        writer.execute(f"PRAGMA {pragma}")
    # Each block of a group commit runs in a SAVEPOINT, whose undo log (the sub-journal: the first
    # image of every page the block changes) SQLite writes to a temporary file by default: one
    # pwrite per page and per block, which was most of a sync's kernel time.  It lives only as long
    # as the transaction and is never needed after a crash (the WAL is): kept in memory instead.
    writer.execute("PRAGMA temp_store = MEMORY")
    _set_reader_pragmas(reader)


def _set_reader_pragmas(reader: sqlite3.Connection) -> None:
    # The same settings as the writer (tests read them back through either), and no writing at all.
    for pragma in ("synchronous = FULL", "secure_delete = ON", "foreign_keys = ON", "trusted_schema = OFF"):
        reader.execute(f"PRAGMA {pragma}")
    reader.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    reader.execute("PRAGMA query_only = ON")


async def schema_version(db: Database) -> int:
    """The highest migration applied to ``db`` (0 for a new database)."""
    row = await db.fetchone("SELECT coalesce(max(version), 0) FROM schema_version")
    return int(row[0]) if row is not None else 0


async def _apply(db: Database, migration: Migration) -> bool:
    """Apply one migration unless another process did meanwhile; whether this one applied it."""
    async with db.transaction():
        # Re-read under the write lock: another process may have applied it meanwhile.
        if await schema_version(db) >= migration.version:
            return False
        for statement in migration.statements:
            await db.execute(statement)
        await db.execute("INSERT INTO schema_version (version) VALUES (?)", (migration.version,))
    return True


async def integrity_check(db: Database) -> str:
    """``PRAGMA integrity_check``: ``"ok"`` for a sound database, else SQLite's findings, one per line."""
    rows = await db.run(lambda reader: reader.execute("PRAGMA integrity_check").fetchall())
    return "\n".join(str(row[0]) for row in rows)


async def table_digest(db: Database, tables: Sequence[str]) -> dict[str, tuple[int, str]]:
    """Row count and SHA-256 (hex) of the contents of each table, read in one committed snapshot.

    Rows are read in rowid order (primary-key order for ``WITHOUT ROWID``
    tables), rowid included, and every value is hashed with its type and
    length, so any insert, update or delete changes the digest.  Tests take it
    before and after a refused request to prove nothing was stored.

    Raises:
        StorageError: a name is not a table of ``db``, or the current task is
            inside a :func:`transaction` on ``db``.
    """
    if db._owner is not None and db._owner is asyncio.current_task():
        raise StorageError("table_digest reads committed data: call it outside the transaction")
    async with db._exclusive():
        return await db.run(lambda reader: _digests(reader, tables))


def _digests(reader: sqlite3.Connection, tables: Sequence[str]) -> dict[str, tuple[int, str]]:
    reader.execute("BEGIN")
    try:
        return {table: _digest_one(reader, table) for table in tables}
    finally:
        reader.execute("COMMIT")


def _digest_one(reader: sqlite3.Connection, table: str) -> tuple[int, str]:
    found = reader.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,))
    if found.fetchone() is None:
        raise StorageError(f"no table named {table!r}")
    quoted = '"' + table.replace('"', '""') + '"'
    try:
        reader.execute(f"SELECT rowid FROM {quoted} LIMIT 0").fetchall()
        query = f"SELECT rowid, * FROM {quoted} ORDER BY rowid"
    except sqlite3.OperationalError:
        # WITHOUT ROWID: order by the primary key columns.
        info = reader.execute(f"PRAGMA table_info({quoted})").fetchall()
        columns = sorted((row[5], row[1]) for row in info if row[5])
        order = ", ".join('"' + name.replace('"', '""') + '"' for _, name in columns)
        query = f"SELECT * FROM {quoted} ORDER BY {order}"
    digest = hashlib.sha256(b"fedrecord/v0/table-digest\0" + table.encode() + b"\0")
    count = 0
    for row in reader.execute(query):
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
