"""The storage base (brief section 4, "Storage" and "Deletion"; issue 3, deliverable 1).

Three parts, each tested against the real disk in a temporary directory:
the passphrase-encrypted key file, the SQLite base (pragmas, migrations,
transactions, digests), and the ciphertext files checked against their id.
Every refusal is followed by a check that nothing was stored (brief section 5).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sqlite3
import stat
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import pytest
from nacl.pwhash import argon2id

from fedrecord.core import cbor
from fedrecord.core.errors import Code, LocalProtocolError, RemoteProtocolError
from fedrecord.core.stream import CHUNK_SIZE, TAG_SIZE, decrypt_bytes, encrypt_bytes
from fedrecord.storage import (
    CorruptDocumentError,
    DocumentFiles,
    KeyFileError,
    Migration,
    NodeSecrets,
    SchemaVersionError,
    StorageError,
    integrity_check,
    open_database,
    passphrase_from_environment,
    read_key_file,
    schema_version,
    table_digest,
    transaction,
    write_key_file,
)
from fedrecord.storage import sqlite as sqlite_module

from .conftest import encryption_keys, identity, seed

FAST = {"ops": argon2id.OPSLIMIT_INTERACTIVE, "mem": argon2id.MEMLIMIT_INTERACTIVE}
PASSPHRASE = b"correct horse battery staple"


def secrets_for(name: str) -> NodeSecrets:
    return NodeSecrets(
        signing_seed=seed(name), encryption_seeds=(seed("enc-old:" + name), seed("enc:" + name))
    )


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- key file --------------------------------------------------------------------------------------------


def test_key_file_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    secrets = secrets_for("clinic")
    write_key_file(path, secrets, PASSPHRASE, **FAST)
    assert mode_of(path) == 0o600
    loaded = read_key_file(path, PASSPHRASE)
    assert loaded == secrets
    assert loaded.identity.did == identity("clinic").did
    assert loaded.current_encryption_key.public_key == encryption_keys("clinic").public_key
    assert [k.public_key for k in loaded.encryption_keys] == [k.public_key for k in secrets.encryption_keys]
    # Text passphrases are their UTF-8 bytes.
    assert read_key_file(path, PASSPHRASE.decode()) == secrets


def test_key_file_format_is_the_documented_cbor_map(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    write_key_file(path, secrets_for("clinic"), PASSPHRASE, **FAST)
    value = cbor.decode(path.read_bytes())
    assert set(value) == {"v", "kdf", "ops", "mem", "salt", "nonce", "box"}
    assert (value["v"], value["kdf"], value["ops"], value["mem"]) == (
        0,
        "argon2id13",
        FAST["ops"],
        FAST["mem"],
    )
    assert len(value["salt"]) == 16 and len(value["nonce"]) == 24
    # The seeds are nowhere in clear.
    for secret in (seed("clinic"), seed("enc:clinic")):
        assert secret not in path.read_bytes()


def test_secrets_never_appear_in_repr(tmp_path: Path) -> None:
    secrets = secrets_for("patient")
    shown = repr(secrets) + str(secrets)
    for secret in (secrets.signing_seed, *secrets.encryption_seeds):
        assert secret.hex() not in shown and repr(secret) not in shown
    assert secrets.identity.did in shown


def test_node_secrets_checks_its_seeds() -> None:
    with pytest.raises(ValueError):
        NodeSecrets(signing_seed=b"short", encryption_seeds=(seed("a"),))
    with pytest.raises(ValueError):
        NodeSecrets(signing_seed=seed("a"), encryption_seeds=())
    with pytest.raises(ValueError):
        NodeSecrets(signing_seed=seed("a"), encryption_seeds=(seed("b"), b"x" * 31))
    rotated = secrets_for("a").with_encryption_seed(seed("new"))
    assert rotated.encryption_seeds[-1] == seed("new") and len(rotated.encryption_seeds) == 3


def test_wrong_passphrase_refused(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    write_key_file(path, secrets_for("clinic"), PASSPHRASE, **FAST)
    with pytest.raises(KeyFileError, match=r"^wrong passphrase or damaged key file$"):
        read_key_file(path, b"incorrect horse")


def test_damaged_key_file_refused_like_a_wrong_passphrase(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    write_key_file(path, secrets_for("clinic"), PASSPHRASE, **FAST)
    content = bytearray(path.read_bytes())
    content[-5] ^= 0x01  # inside the box
    path.write_bytes(bytes(content))
    with pytest.raises(KeyFileError, match="wrong passphrase or damaged key file"):
        read_key_file(path, PASSPHRASE)
    path.write_bytes(b"\xa0")  # an empty CBOR map
    with pytest.raises(KeyFileError, match="wrong passphrase or damaged key file"):
        read_key_file(path, PASSPHRASE)


def test_key_file_readable_by_others_refused(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    write_key_file(path, secrets_for("clinic"), PASSPHRASE, **FAST)
    path.chmod(0o644)
    with pytest.raises(KeyFileError, match="chmod 600") as refused:
        read_key_file(path, PASSPHRASE)
    assert "0644" in str(refused.value)
    path.chmod(0o640)
    with pytest.raises(KeyFileError, match="chmod 600"):
        read_key_file(path, PASSPHRASE)
    path.chmod(0o600)
    assert read_key_file(path, PASSPHRASE) == secrets_for("clinic")


def test_missing_key_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="does not exist"):
        read_key_file(tmp_path / "absent.key", PASSPHRASE)


def test_planted_key_file_cannot_demand_unbounded_memory(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    write_key_file(path, secrets_for("clinic"), PASSPHRASE, **FAST)
    value = dict(cbor.decode(path.read_bytes()))
    value["mem"] = 2**42
    path.write_bytes(cbor.encode(value))
    with pytest.raises(KeyFileError, match="outside the accepted range"):
        read_key_file(path, PASSPHRASE)


def test_empty_passphrase_refused_when_writing(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="empty"):
        write_key_file(tmp_path / "node.key", secrets_for("clinic"), b"", **FAST)
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_leaves_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    write_key_file(path, secrets_for("first"), PASSPHRASE, **FAST)
    write_key_file(path, secrets_for("second"), b"new passphrase", **FAST)
    assert [p.name for p in tmp_path.iterdir()] == ["node.key"]
    assert read_key_file(path, b"new passphrase") == secrets_for("second")


def test_failed_write_keeps_the_old_file_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "node.key"
    write_key_file(path, secrets_for("first"), PASSPHRASE, **FAST)
    before = path.read_bytes()

    def failing_replace(source: object, target: object) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk on fire"):
        write_key_file(path, secrets_for("second"), PASSPHRASE, **FAST)
    assert [p.name for p in tmp_path.iterdir()] == ["node.key"]
    assert path.read_bytes() == before


def test_key_file_is_0600_whatever_the_umask(tmp_path: Path) -> None:
    previous = os.umask(0)
    try:
        write_key_file(tmp_path / "node.key", secrets_for("clinic"), PASSPHRASE, **FAST)
    finally:
        os.umask(previous)
    assert mode_of(tmp_path / "node.key") == 0o600


def write_private(path: Path, content: bytes, mode: int = 0o600) -> Path:
    path.write_bytes(content)
    path.chmod(mode)
    return path


def test_unattended_passphrase_from_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDRECORD_PASSPHRASE", "from the environment")
    file = write_private(tmp_path / "passphrase", PASSPHRASE + b"\n")
    # The file wins over the environment, and loses exactly its trailing newline.
    assert passphrase_from_environment(file) == PASSPHRASE
    write_private(file, b"  spaces kept  \r\n")
    assert passphrase_from_environment(file) == b"  spaces kept  "
    write_private(file, b"no newline")
    assert passphrase_from_environment(file) == b"no newline"
    # And it unlocks a key file.
    write_key_file(tmp_path / "node.key", secrets_for("lab"), b"no newline", **FAST)
    unlocked = passphrase_from_environment(file)
    assert unlocked is not None
    assert read_key_file(tmp_path / "node.key", unlocked) == secrets_for("lab")


def test_unattended_passphrase_file_must_be_private(tmp_path: Path) -> None:
    file = write_private(tmp_path / "passphrase", PASSPHRASE, mode=0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        passphrase_from_environment(file)
    write_private(file, b"\n")
    with pytest.raises(KeyFileError, match="empty"):
        passphrase_from_environment(file)
    with pytest.raises(KeyFileError, match="does not exist"):
        passphrase_from_environment(tmp_path / "absent")


def test_unattended_passphrase_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FEDRECORD_PASSPHRASE", raising=False)
    assert passphrase_from_environment(None) is None
    monkeypatch.setenv("FEDRECORD_PASSPHRASE", "")
    assert passphrase_from_environment(None) is None
    monkeypatch.setenv("FEDRECORD_PASSPHRASE", "clinic secret é")
    assert passphrase_from_environment(None) == "clinic secret é".encode()
    monkeypatch.setenv("OTHER_VAR", "other")
    assert passphrase_from_environment(None, env_var="OTHER_VAR") == b"other"


# --- SQLite base -------------------------------------------------------------------------------------------

M1 = Migration(
    version=1,
    description="notes",
    statements=(
        "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL, blob BLOB)",
        "CREATE TABLE tags (name TEXT PRIMARY KEY, note INTEGER REFERENCES notes (id)) WITHOUT ROWID",
    ),
)
M2 = Migration(version=2, description="note dates", statements=("ALTER TABLE notes ADD COLUMN at INTEGER",))


async def test_migrations_applied_once_and_idempotent_on_reopen(tmp_path: Path) -> None:
    path = tmp_path / "node.db"
    db = await open_database(path, [M1])
    try:
        assert await schema_version(db) == 1
        async with transaction(db):
            await db.execute("INSERT INTO notes (body) VALUES ('kept')")
    finally:
        await db.close()
    # Reapplying M1 would fail ("table notes already exists"); reopening must not.
    db = await open_database(path, [M1, M2])
    try:
        assert await schema_version(db) == 2
        async with db.execute("SELECT version FROM schema_version ORDER BY version") as cursor:
            assert [row[0] for row in await cursor.fetchall()] == [1, 2]
        async with db.execute("SELECT body, at FROM notes") as cursor:
            assert list(await cursor.fetchall()) == [("kept", None)]
    finally:
        await db.close()
    db = await open_database(path, [M1, M2])
    try:
        async with db.execute("SELECT count(*) FROM schema_version") as cursor:
            assert await cursor.fetchone() == (2,)
    finally:
        await db.close()


async def test_executemany_writes_every_row_in_the_transaction_and_nothing_outside_one(tmp_path: Path) -> None:
    """A batch's rows in one call: all kept with the transaction, none when it is undone, and refused
    outside a transaction (reads outside one go to the read-only reader)."""
    db = await open_database(tmp_path / "node.db", [M1])
    try:
        async with transaction(db):
            await db.executemany("INSERT INTO notes (body) VALUES (?)", [("a",), ("b",), ("c",)])
        with pytest.raises(RuntimeError, match="undone"):
            async with transaction(db):
                await db.executemany("INSERT INTO notes (body) VALUES (?)", [("d",), ("e",)])
                raise RuntimeError("undone")
        with pytest.raises(sqlite3.OperationalError):
            await db.executemany("INSERT INTO notes (body) VALUES (?)", [("f",)])
        assert [row[0] for row in await db.execute_fetchall("SELECT body FROM notes ORDER BY id")] == ["a", "b", "c"]
    finally:
        await db.close()


async def test_database_newer_than_the_code_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "node.db"
    db = await open_database(path, [M1, M2])
    before = await table_digest(db, ["notes", "tags", "schema_version"])
    await db.close()
    with pytest.raises(SchemaVersionError, match="newer"):
        await open_database(path, [M1])
    db = await open_database(path, [M1, M2])
    try:
        assert await table_digest(db, ["notes", "tags", "schema_version"]) == before
    finally:
        await db.close()


async def test_failed_migration_is_rolled_back(tmp_path: Path) -> None:
    path = tmp_path / "node.db"
    broken = Migration(
        version=2,
        description="broken",
        statements=("CREATE TABLE half (x INTEGER)", "THIS IS NOT SQL"),
    )
    with pytest.raises(sqlite3.OperationalError):
        await open_database(path, [M1, broken])
    db = await open_database(path, [M1])
    try:
        assert await schema_version(db) == 1
        async with db.execute("SELECT name FROM sqlite_master WHERE name = 'half'") as cursor:
            assert await cursor.fetchone() is None
    finally:
        await db.close()


async def test_migrations_must_be_in_order(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        await open_database(tmp_path / "node.db", [M2, M1])
    with pytest.raises(ValueError):
        Migration(version=0, description="zero", statements=())
    with pytest.raises(ValueError):
        Migration(version=1, description="list", statements=["CREATE TABLE t (x)"])  # type: ignore[arg-type]


async def test_pragmas_set(tmp_path: Path) -> None:
    db = await open_database(tmp_path / "node.db", [M1])
    try:
        expected = {"journal_mode": "wal", "secure_delete": 1, "synchronous": 2, "foreign_keys": 1}
        for pragma, value in expected.items():
            async with db.execute(f"PRAGMA {pragma}") as cursor:
                row = await cursor.fetchone()
            assert row is not None and row[0] == value, pragma
        async with db.execute("PRAGMA busy_timeout") as cursor:
            row = await cursor.fetchone()
        assert row is not None and row[0] >= 1000
        assert db.isolation_level is None
        # The writer keeps the undo logs of its savepoints (one per block of a group commit) in memory.
        assert db._writer.execute("PRAGMA temp_store").fetchone()[0] == 2
    finally:
        await db.close()


async def test_a_transaction_waits_for_another_process_s_write_lock(tmp_path: Path) -> None:
    """A free write lock is taken inline; a held one is waited for in the worker thread, loop free."""
    path = tmp_path / "node.db"
    db = await open_database(path, [M1])
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        async with transaction(db):  # uncontended: begun on the loop's thread
            await db.execute("INSERT INTO notes (body) VALUES ('first')")
        other.execute("BEGIN IMMEDIATE")  # another process's writer holds the lock
        other.execute("INSERT INTO notes (body) VALUES ('other')")

        async def write() -> None:
            async with transaction(db):
                await db.execute("INSERT INTO notes (body) VALUES ('second')")

        waiting = asyncio.ensure_future(write())
        ticks = 0
        while ticks < 20:  # the event loop keeps running while the transaction waits for the lock
            await asyncio.sleep(0.01)
            ticks += 1
        assert not waiting.done()
        other.execute("COMMIT")
        await asyncio.wait_for(waiting, 5)
        async with db.execute("SELECT body FROM notes ORDER BY id") as cursor:
            assert [row[0] for row in await cursor.fetchall()] == ["first", "other", "second"]
        async with db.execute("PRAGMA busy_timeout") as cursor:
            row = await cursor.fetchone()
        assert row is not None and row[0] >= 1000  # not left at 0 by the attempt without waiting
        assert db._writer.execute("PRAGMA busy_timeout").fetchone()[0] >= 1000
    finally:
        other.close()
        await db.close()


async def test_a_transaction_right_after_a_checkpoint(tmp_path: Path) -> None:
    """The checkpoint's answer row is read to its end: no statement stays open to block a savepoint."""
    db = await open_database(tmp_path / "node.db", [M1])
    try:
        for body in ("before", "after"):
            async with transaction(db):
                await db.execute("INSERT INTO notes (body) VALUES (?)", (body,))
            await db.checkpoint()
        async with transaction(db):
            await db.execute("DELETE FROM notes WHERE body = 'before'")
        async with db.execute("SELECT body FROM notes") as cursor:
            assert [row[0] for row in await cursor.fetchall()] == ["after"]
    finally:
        await db.close()


async def test_a_cancelled_checkpoint_keeps_the_writer_and_the_loop_stays_free(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkpoint waiting for another process's reader runs on in the thread when its caller is
    cancelled: the lock is kept until it ends, so the next transaction waits off the event loop."""
    monkeypatch.setattr(sqlite_module, "BUSY_TIMEOUT_MS", 1000)
    path = tmp_path / "node.db"
    db = await open_database(path, [M1])
    other = sqlite3.connect(path, isolation_level=None)
    try:
        async with transaction(db):
            await db.execute("INSERT INTO notes (body) VALUES ('one')")
        other.execute("BEGIN")
        other.execute("SELECT count(*) FROM notes").fetchall()  # a snapshot the TRUNCATE must wait for
        async with transaction(db):
            await db.execute("INSERT INTO notes (body) VALUES ('two')")
        checkpoint = asyncio.ensure_future(db.checkpoint())
        await asyncio.sleep(0.1)
        checkpoint.cancel()
        longest, stop = 0.0, asyncio.Event()

        async def ticker() -> None:
            nonlocal longest
            loop = asyncio.get_running_loop()
            while not stop.is_set():
                before = loop.time()
                await asyncio.sleep(0.01)
                longest = max(longest, loop.time() - before)

        ticking = asyncio.ensure_future(ticker())
        async with transaction(db):
            await db.execute("INSERT INTO notes (body) VALUES ('three')")
        stop.set()
        await ticking
        assert longest < 0.3, f"the event loop stood still for {longest:.2f} s"
        with pytest.raises(asyncio.CancelledError):
            await checkpoint
        other.execute("COMMIT")
        async with db.execute("SELECT body FROM notes ORDER BY id") as cursor:
            assert [row[0] for row in await cursor.fetchall()] == ["one", "two", "three"]
    finally:
        other.close()
        await db.close()


async def test_transaction_commits_durably_and_rolls_back_on_error(tmp_path: Path) -> None:
    path = tmp_path / "node.db"
    db = await open_database(path, [M1])
    try:
        async with transaction(db):
            await db.execute("INSERT INTO notes (body, blob) VALUES ('a', x'00ff')")
        before = await table_digest(db, ["notes", "tags"])
        assert before["notes"][0] == 1 and before["tags"][0] == 0

        with pytest.raises(RuntimeError, match="refused"):
            async with transaction(db):
                await db.execute("INSERT INTO notes (body) VALUES ('b')")
                await db.execute("UPDATE notes SET body = 'changed'")
                await db.execute("INSERT INTO tags (name, note) VALUES ('x', 1)")
                raise RuntimeError("refused")
        assert not db.in_transaction
        assert await table_digest(db, ["notes", "tags"]) == before

        # A foreign key violation is refused inside the transaction and leaves nothing either.
        with pytest.raises(sqlite3.IntegrityError):
            async with transaction(db):
                await db.execute("INSERT INTO notes (body) VALUES ('c')")
                await db.execute("INSERT INTO tags (name, note) VALUES ('y', 99)")
        assert await table_digest(db, ["notes", "tags"]) == before

        # What was committed is visible to another connection at once.
        other = sqlite3.connect(path)
        try:
            assert other.execute("SELECT body FROM notes").fetchall() == [("a",)]
        finally:
            other.close()
        assert await integrity_check(db) == "ok"
    finally:
        await db.close()


async def test_cancelled_transaction_rolls_back(tmp_path: Path) -> None:
    db = await open_database(tmp_path / "node.db", [M1])
    try:
        before = await table_digest(db, ["notes"])
        inserted = asyncio.Event()

        async def writer() -> None:
            async with transaction(db):
                await db.execute("INSERT INTO notes (body) VALUES ('never')")
                inserted.set()
                await asyncio.sleep(10)

        task = asyncio.create_task(writer())
        await inserted.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await table_digest(db, ["notes"]) == before
    finally:
        await db.close()


async def test_concurrent_transactions_on_one_connection_are_serialised(tmp_path: Path) -> None:
    db = await open_database(tmp_path / "node.db", [M1])
    try:

        async def writer(i: int) -> None:
            async with transaction(db):
                await db.execute("INSERT INTO notes (body) VALUES (?)", (f"n{i}",))
                await asyncio.sleep(0)
                await db.execute("UPDATE notes SET blob = ? WHERE body = ?", (bytes([i]), f"n{i}"))

        await asyncio.gather(*(writer(i) for i in range(20)))
        async with db.execute("SELECT count(*), count(blob) FROM notes") as cursor:
            assert await cursor.fetchone() == (20, 20)

        with pytest.raises(StorageError, match="do not nest"):
            async with transaction(db), transaction(db):
                pass
        assert not db.in_transaction
    finally:
        await db.close()


async def test_queued_transactions_share_one_commit(tmp_path: Path) -> None:
    db = await open_database(tmp_path / "node.db", [M1])
    try:
        before = db.commits

        async def writer(i: int) -> None:
            async with transaction(db):
                await db.execute("INSERT INTO notes (body) VALUES (?)", (f"n{i}",))

        await asyncio.gather(*(writer(i) for i in range(32)))
        # Every block returned only after a COMMIT, yet far fewer COMMITs (log syncs) than blocks.
        assert 1 <= db.commits - before < 8
        other = sqlite3.connect(tmp_path / "node.db")
        try:
            assert other.execute("SELECT count(*) FROM notes").fetchone() == (32,)
        finally:
            other.close()
    finally:
        await db.close()


async def test_a_failing_block_leaves_its_group_unharmed(tmp_path: Path) -> None:
    db = await open_database(tmp_path / "node.db", [M1])
    try:

        async def writer(i: int) -> None:
            async with transaction(db):
                await db.execute("INSERT INTO notes (body) VALUES (?)", (f"n{i}",))
                await asyncio.sleep(0)
                if i % 3 == 0:
                    raise RuntimeError(f"block {i} refused")

        outcomes = await asyncio.gather(*(writer(i) for i in range(12)), return_exceptions=True)
        assert [isinstance(o, RuntimeError) for o in outcomes] == [i % 3 == 0 for i in range(12)]
        rows = await db.execute_fetchall("SELECT body FROM notes ORDER BY id")
        assert [row[0] for row in rows] == [f"n{i}" for i in range(12) if i % 3]
        assert not db.in_transaction
    finally:
        await db.close()


async def test_reads_outside_a_transaction_see_only_committed_data(tmp_path: Path) -> None:
    db = await open_database(tmp_path / "node.db", [M1])
    try:
        inserted, seen = asyncio.Event(), asyncio.Event()
        counts: list[int] = []

        async def writer() -> None:
            async with transaction(db):
                await db.execute("INSERT INTO notes (body) VALUES ('pending')")
                counts.append((await db.fetchone("SELECT count(*) FROM notes"))[0])  # its own write
                inserted.set()
                await seen.wait()

        task = asyncio.create_task(writer())
        await inserted.wait()
        counts.append((await db.fetchone("SELECT count(*) FROM notes"))[0])  # another task: not yet
        seen.set()
        await task
        counts.append((await db.fetchone("SELECT count(*) FROM notes"))[0])
        assert counts == [1, 0, 1]
    finally:
        await db.close()


async def test_a_write_outside_a_transaction_is_refused(tmp_path: Path) -> None:
    db = await open_database(tmp_path / "node.db", [M1])
    try:
        before = await table_digest(db, ["notes"])
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            await db.execute("INSERT INTO notes (body) VALUES ('stray')")
        assert await table_digest(db, ["notes"]) == before
    finally:
        await db.close()


class _FailingCommit:
    """The writer connection, except that ``COMMIT`` fails as a full disk would make it."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection

    def execute(self, sql: str, *args: object) -> sqlite3.Cursor:
        if sql == "COMMIT":
            raise sqlite3.OperationalError("database or disk is full")
        return self._connection.execute(sql, *args)

    def __getattr__(self, name: str) -> object:
        return getattr(self._connection, name)


async def test_a_failed_commit_fails_every_block_of_its_group(tmp_path: Path) -> None:
    db = await open_database(tmp_path / "node.db", [M1])
    try:
        before = await table_digest(db, ["notes"])
        real = db._writer
        db._writer = _FailingCommit(real)  # type: ignore[assignment]

        async def writer(i: int) -> None:
            async with transaction(db):
                await db.execute("INSERT INTO notes (body) VALUES (?)", (f"n{i}",))

        outcomes = await asyncio.gather(*(writer(i) for i in range(8)), return_exceptions=True)
        assert all(isinstance(o, sqlite3.OperationalError) for o in outcomes), outcomes
        db._writer = real
        assert not db.in_transaction
        assert await table_digest(db, ["notes"]) == before
        async with transaction(db):  # the database is usable again
            await db.execute("INSERT INTO notes (body) VALUES ('after')")
        assert (await table_digest(db, ["notes"]))["notes"][0] == 1
    finally:
        await db.close()


async def test_table_digest_sees_every_change(tmp_path: Path) -> None:
    db = await open_database(tmp_path / "node.db", [M1])
    try:
        async with transaction(db):
            await db.execute("INSERT INTO notes (body, blob) VALUES ('ab', x'01')")
            await db.execute("INSERT INTO tags (name, note) VALUES ('t', 1)")
        first = await table_digest(db, ["notes", "tags"])
        async with transaction(db):
            await db.execute("UPDATE notes SET blob = x'02'")
        second = await table_digest(db, ["notes", "tags"])
        assert second["notes"][0] == first["notes"][0] and second["notes"][1] != first["notes"][1]
        assert second["tags"] == first["tags"]
        async with transaction(db):
            await db.execute("UPDATE tags SET name = 'u'")
        assert (await table_digest(db, ["tags"]))["tags"] != first["tags"]
        with pytest.raises(StorageError, match="no table"):
            await table_digest(db, ["notes; DROP TABLE notes"])
    finally:
        await db.close()


async def test_integrity_check_ok_on_a_fresh_database(tmp_path: Path) -> None:
    db = await open_database(tmp_path / "node.db", [M1, M2])
    try:
        assert await integrity_check(db) == "ok"
    finally:
        await db.close()


# --- document files ------------------------------------------------------------------------------------

KEY = hashlib.sha256(b"document key").digest()
PREFIX = bytes(range(16))


async def pieces(
    data: bytes, sizes: Iterable[int], consumed: list[int] | None = None
) -> AsyncIterator[bytes]:
    """Yield ``data`` in pieces of the given sizes (cycled), counting what was taken."""
    sizes = list(sizes)
    offset, i = 0, 0
    while offset < len(data):
        piece = data[offset : offset + sizes[i % len(sizes)]]
        offset += len(piece)
        i += 1
        if consumed is not None:
            consumed.append(len(piece))
        yield piece


def nothing_left(files: DocumentFiles, doc_id: bytes) -> bool:
    tmp = files.root / "tmp"
    return not files.path_of(doc_id).exists() and (not tmp.exists() or not any(tmp.iterdir()))


async def read_all(files: DocumentFiles, doc_id: bytes) -> list[bytes]:
    stream = await files.open(doc_id)
    assert stream is not None
    return [piece async for piece in stream]


async def test_document_round_trip_of_a_real_stream(tmp_path: Path) -> None:
    plaintext = os.urandom(3 * CHUNK_SIZE + 1000)
    ciphertext, doc_id = encrypt_bytes(KEY, PREFIX, plaintext)
    # The storage computes the id exactly as the core does.
    assert doc_id == hashlib.sha256(b"fedrecord/v0/document-id" + ciphertext).digest()
    files = DocumentFiles(tmp_path / "documents")
    assert await files.sweep_temporary() == 0
    size = await files.put(doc_id, pieces(ciphertext, [1, 7000, 65_552, 100_000]), max_size=len(ciphertext))
    assert size == len(ciphertext) == await files.size(doc_id)
    path = files.path_of(doc_id)
    assert path == tmp_path / "documents" / doc_id.hex()[:2] / doc_id.hex()
    assert mode_of(path) == 0o600
    got = await read_all(files, doc_id)
    assert all(len(piece) == CHUNK_SIZE + TAG_SIZE for piece in got[:-1])
    assert b"".join(got) == ciphertext
    assert decrypt_bytes(KEY, b"".join(got)) == (plaintext, doc_id)
    assert nothing_left(files, doc_id) is False and not any((files.root / "tmp").iterdir())


async def test_put_is_idempotent(tmp_path: Path) -> None:
    ciphertext, doc_id = encrypt_bytes(KEY, PREFIX, b"lab result")
    files = DocumentFiles(tmp_path)
    assert await files.put(doc_id, pieces(ciphertext, [10]), max_size=1 << 20) == len(ciphertext)
    consumed: list[int] = []
    assert await files.put(doc_id, pieces(ciphertext, [10], consumed), max_size=1 << 20) == len(ciphertext)
    assert consumed == []  # already stored: the body is not even read
    assert b"".join(await read_all(files, doc_id)) == ciphertext


async def test_wrong_id_refused_with_nothing_left(tmp_path: Path) -> None:
    ciphertext, doc_id = encrypt_bytes(KEY, PREFIX, os.urandom(100_000))
    files = DocumentFiles(tmp_path)
    tampered = bytearray(ciphertext)
    tampered[-1] ^= 1
    with pytest.raises(RemoteProtocolError) as refused:
        await files.put(doc_id, pieces(bytes(tampered), [30_000]), max_size=1 << 20)
    assert refused.value.code is Code.MALFORMED
    assert "does not match its document id" in refused.value.message
    assert nothing_left(files, doc_id)
    other_id = hashlib.sha256(b"another").digest()
    with pytest.raises(RemoteProtocolError):
        await files.put(other_id, pieces(ciphertext, [30_000]), max_size=1 << 20)
    assert nothing_left(files, other_id) and await files.size(other_id) is None


async def test_over_cap_refused_mid_stream_with_nothing_left(tmp_path: Path) -> None:
    ciphertext, doc_id = encrypt_bytes(KEY, PREFIX, os.urandom(10 * CHUNK_SIZE))
    files = DocumentFiles(tmp_path)
    consumed: list[int] = []
    cap = 300_000
    with pytest.raises(RemoteProtocolError) as refused:
        await files.put(doc_id, pieces(ciphertext, [50_000], consumed), max_size=cap)
    assert refused.value.code is Code.TOO_LARGE and refused.value.status == 413
    # Refused on the first piece past the cap, not after reading the whole body.
    assert sum(consumed) == 350_000
    assert nothing_left(files, doc_id)
    # Exactly at the cap is allowed.
    assert await files.put(doc_id, pieces(ciphertext, [50_000]), max_size=len(ciphertext)) == len(ciphertext)


async def test_interrupted_upload_leaves_nothing(tmp_path: Path) -> None:
    ciphertext, doc_id = encrypt_bytes(KEY, PREFIX, os.urandom(600_000))
    files = DocumentFiles(tmp_path)

    async def disconnecting() -> AsyncIterator[bytes]:
        yield ciphertext[:300_000]
        raise ConnectionResetError("peer went away")

    with pytest.raises(ConnectionResetError):
        await files.put(doc_id, disconnecting(), max_size=1 << 20)
    assert nothing_left(files, doc_id)

    started = asyncio.Event()

    async def stalling() -> AsyncIterator[bytes]:
        yield ciphertext[:300_000]
        started.set()
        await asyncio.sleep(10)
        yield ciphertext[300_000:]

    task = asyncio.create_task(files.put(doc_id, stalling(), max_size=1 << 20))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert nothing_left(files, doc_id)


async def test_destroy_removes_the_document(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ciphertext, doc_id = encrypt_bytes(KEY, PREFIX, os.urandom(200_000))
    files = DocumentFiles(tmp_path)
    await files.put(doc_id, pieces(ciphertext, [65_552]), max_size=1 << 20)
    # Record what is written before the unlink: zeros over the whole file.
    overwritten: list[bytes] = []
    real_unlink = os.unlink

    def spying_unlink(path: str | os.PathLike[str]) -> None:
        overwritten.append(Path(path).read_bytes())
        real_unlink(path)

    monkeypatch.setattr(os, "unlink", spying_unlink)
    assert await files.destroy(doc_id) is True
    assert overwritten == [bytes(len(ciphertext))]
    assert await files.size(doc_id) is None
    assert await files.open(doc_id) is None
    assert nothing_left(files, doc_id)
    assert await files.destroy(doc_id) is False


async def test_concurrent_puts_of_the_same_id_are_safe(tmp_path: Path) -> None:
    ciphertext, doc_id = encrypt_bytes(KEY, PREFIX, os.urandom(700_000))
    files = DocumentFiles(tmp_path)
    sizes = await asyncio.gather(
        *(
            files.put(doc_id, pieces(ciphertext, [size]), max_size=1 << 20)
            for size in (4096, 65_552, 300_000, 1 << 20)
        )
    )
    assert sizes == [len(ciphertext)] * 4
    assert b"".join(await read_all(files, doc_id)) == ciphertext
    assert not any((files.root / "tmp").iterdir())
    assert [p.name for p in files.path_of(doc_id).parent.iterdir()] == [doc_id.hex()]


async def test_concurrent_put_and_destroy_end_in_a_consistent_state(tmp_path: Path) -> None:
    ciphertext, doc_id = encrypt_bytes(KEY, PREFIX, os.urandom(100_000))
    files = DocumentFiles(tmp_path)
    for _ in range(5):
        await asyncio.gather(
            files.put(doc_id, pieces(ciphertext, [8192]), max_size=1 << 20), files.destroy(doc_id)
        )
        size = await files.size(doc_id)
        if size is not None:
            assert b"".join(await read_all(files, doc_id)) == ciphertext
        await files.destroy(doc_id)


async def test_corrupted_file_is_never_served_whole(tmp_path: Path) -> None:
    ciphertext, doc_id = encrypt_bytes(KEY, PREFIX, os.urandom(3 * CHUNK_SIZE))
    files = DocumentFiles(tmp_path)
    await files.put(doc_id, pieces(ciphertext, [65_552]), max_size=1 << 20)
    path = files.path_of(doc_id)
    damaged = bytearray(path.read_bytes())
    damaged[10] ^= 1
    path.write_bytes(bytes(damaged))
    stream = await files.open(doc_id)
    assert stream is not None
    received: list[bytes] = []
    with pytest.raises(CorruptDocumentError):
        async for piece in stream:
            received.append(piece)
    # The last piece is held back until the hash matches, so the reader never sees a complete stream.
    assert len(b"".join(received)) < len(ciphertext)


async def test_sweep_removes_leftovers_of_a_crash(tmp_path: Path) -> None:
    files = DocumentFiles(tmp_path)
    await files.sweep_temporary()
    for i in range(3):
        (tmp_path / "tmp" / f"leftover{i}.part").write_bytes(b"partial")
    assert await files.sweep_temporary() == 3
    assert not any((tmp_path / "tmp").iterdir())


async def test_malformed_document_id_is_a_caller_error(tmp_path: Path) -> None:
    files = DocumentFiles(tmp_path)
    with pytest.raises(LocalProtocolError):
        await files.size(b"short")
    with pytest.raises(LocalProtocolError):
        await files.put(b"x" * 31, pieces(b"abc", [1]), max_size=10)
    assert not (tmp_path / "tmp").exists() or not any((tmp_path / "tmp").iterdir())


def test_key_file_from_an_unknown_version_or_kdf_is_named(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    write_key_file(path, secrets_for("clinic"), PASSPHRASE, **FAST)
    value = dict(cbor.decode(path.read_bytes()))
    write_private(path, cbor.encode({**value, "v": 1}))
    with pytest.raises(KeyFileError, match="unknown format version"):
        read_key_file(path, PASSPHRASE)
    write_private(path, cbor.encode({**value, "kdf": "scrypt"}))
    with pytest.raises(KeyFileError, match="unknown key derivation"):
        read_key_file(path, PASSPHRASE)
