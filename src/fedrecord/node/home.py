"""A node's data directory: configuration, key file, database, document files and signed profile.

Layout of ``<home>``::

    node.json      role, display name, public endpoint, listening address (not secret)
    node.key       signing and encryption seeds, encrypted with the passphrase (mode 0600)
    node.db        the SQLite database (WAL)
    documents/     ciphertext files, named by document id (partial/: downloads to resume)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import sqlite3
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Final

from fedrecord.core import EncryptionKey, NodeProfile, Signed, SigningIdentity, sign_record
from fedrecord.core.identity import EncryptionKeyPair
from fedrecord.core.stream import stream_document_id
from fedrecord.http.aiohttp_signing import endpoint_problem
from fedrecord.storage.documents import CorruptDocumentError, DocumentFiles
from fedrecord.storage.keyfile import NodeSecrets, kdf_cost, read_key_file, write_key_file
from fedrecord.storage.partial import PartialDownloads
from fedrecord.storage.sqlite import Database, open_database

from .schema import MIGRATIONS
from .store import MAX_IDS_PER_QUERY, NodeStore, SqliteNodeStore

ROLES = ("patient", "clinic")
ENCRYPTION_KEY_LIFETIME = 2 * 365 * 86_400
DATABASE: Final = "node.db"
"""The database file in a home; ``init`` creates it and ``open`` requires it."""
ORPHAN_AGE: Final = 3600
"""Seconds a document file must have gone unwritten before :meth:`NodeHome.sweep_orphans` may take it for debris.

A write renames its file into place before it commits the row that names it:
a moment before, or the few seconds it takes to check a large document read
back from its file.  An hour leaves any process's write in flight far out of reach.
"""
SEED_FILE_MAX = 4096  # a seed file holds 64 hex digits and white space; anything larger is not one
_SEED_HEX = re.compile(rb"[0-9A-Fa-f]{64}")


class HomeError(Exception):
    """The data directory cannot be created or opened; the message says why."""


@dataclass(frozen=True)
class NodeConfig:
    role: str
    name: str
    endpoint: str
    host: str = "127.0.0.1"
    port: int = 0
    poll_interval: float = 5.0
    #: The patient's web page (patient nodes): loopback only unless the patient says otherwise.
    web_host: str = "127.0.0.1"
    #: Its port; None: the API's port plus one (no web page when the API's port is 0).
    web_port: int | None = None

    @classmethod
    def load(cls, home: Path) -> NodeConfig:
        """The configuration kept in ``home``.

        Raises:
            HomeError: ``home`` is not a directory, holds no node, or its node.json is damaged.
        """
        if home.exists() and not home.is_dir():
            raise HomeError(f"{home} is not a directory (a node's home is its data directory)")
        try:
            data = json.loads((home / "node.json").read_text(encoding="utf-8"))
            if type(data) is not dict:
                raise TypeError("not a JSON object")
            return cls(**data)
        except FileNotFoundError:
            raise HomeError(f"{home} is not a fedrecord node (no node.json); run `fedrecord init`") from None
        except (ValueError, TypeError) as exc:
            # Not JSON, not UTF-8 (ValueError), or not the fields of a configuration (TypeError).
            raise HomeError(f"{home / 'node.json'} is damaged ({exc}); restore it from a backup") from None

    def save(self, home: Path) -> None:
        (home / "node.json").write_text(json.dumps(asdict(self), indent=2) + "\n")


def init_home(
    home: Path,
    *,
    role: str,
    name: str,
    endpoint: str,
    passphrase: bytes,
    host: str = "127.0.0.1",
    port: int = 0,
    kdf_limits: tuple[int, int] | None = None,
    signing_seed: bytes | None = None,
) -> SigningIdentity:
    """Create a node: fresh keys (drawn here, the adapter), the key file and the configuration.

    Args:
        signing_seed: the 32-byte Ed25519 seed of the node's signing identity, when the caller
            holds it already (a patient key kept elsewhere, a conformance suite acting as the
            patient); drawn here when absent.  The encryption seed is always drawn here.

    Everything is checked before anything is written: a refused ``init`` leaves
    no half-made node behind.  The database file is created here, empty (its
    schema comes with the first :meth:`NodeHome.open`): from then on a home
    without it is a damaged one, which :meth:`NodeHome.open` refuses.

    Raises:
        HomeError: when ``home`` already holds a node or a node's database, ``role`` is unknown,
            ``name`` is not 1 to 128 characters, ``endpoint`` is not an
            absolute http(s) base URL, ``port`` is not 0 to 65535, or
            ``signing_seed`` is not 32 bytes.
    """
    if role not in ROLES:
        raise HomeError(f"role must be one of {', '.join(ROLES)}")
    if signing_seed is not None and (type(signing_seed) is not bytes or len(signing_seed) != 32):
        raise HomeError("a signing seed is 32 bytes")
    if not 0 < len(name) <= 128:
        raise HomeError("a node's name is 1 to 128 characters")
    problem = endpoint_problem(endpoint, unbound=True)
    if problem is not None:
        raise HomeError(f"endpoint {endpoint!r}: {problem}")
    if not 0 <= port <= 65535:
        raise HomeError("a port is a number from 0 to 65535")
    if (home / "node.key").exists():
        raise HomeError(f"{home} already holds a node")
    if (home / DATABASE).exists():
        # Another node's database, its key file gone: checked here, before the key file is written.
        raise HomeError(f"{home} already holds a node's database ({DATABASE}); make the node in a new directory")
    home.mkdir(parents=True, exist_ok=True)
    # The database holds titles and labels in the clear (documents are encrypted, their facts are not):
    # the home is the owner's alone, whatever the umask.
    home.chmod(0o700)
    seed = os.urandom(32) if signing_seed is None else signing_seed
    secrets = NodeSecrets(signing_seed=seed, encryption_seeds=(os.urandom(32),))
    write_key_file(home / "node.key", secrets, passphrase, **kdf_cost(kdf_limits))
    NodeConfig(role=role, name=name, endpoint=endpoint, host=host, port=port).save(home)
    # Made the owner's alone before SQLite opens it: its log and shared-memory files take its mode.
    os.close(os.open(home / DATABASE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    sqlite3.connect(home / DATABASE).close()
    return secrets.identity


def _owner_only(database: Path) -> None:
    """Make a database made readable by others (by an older fedrecord, under the umask) its owner's alone.

    Its titles and labels are in the clear; a copy of the home made with other tools keeps modes.
    """
    for path in (database, database.with_name(database.name + "-wal"), database.with_name(database.name + "-shm")):
        with contextlib.suppress(FileNotFoundError):
            if path.stat().st_mode & 0o077:
                path.chmod(0o600)


def read_signing_seed(path: Path) -> bytes:
    """The 32-byte signing seed a file holds as 64 hexadecimal digits, white space allowed around them.

    The messages never quote the file's content: it is a secret key.

    Raises:
        HomeError: when the file cannot be read or holds anything else.
    """
    try:
        with path.open("rb") as file:
            content = file.read(SEED_FILE_MAX + 1)
    except OSError as error:
        raise HomeError(f"cannot read the signing seed file {path}: {error.strerror}") from None
    text = content.strip()
    if len(content) > SEED_FILE_MAX or not _SEED_HEX.fullmatch(text):
        raise HomeError(f"{path} does not hold a signing seed: 64 hexadecimal digits are expected")
    return bytes.fromhex(text.decode("ascii"))


@dataclass(frozen=True)
class BackupResult:
    """What :func:`backup_home` copied."""

    documents: int
    """Documents the copied database holds (in their rows or as files)."""
    files: int
    """Document files copied."""
    size: int
    """Bytes copied: the database and the document files."""
    missing: int
    """Document files the copied database names that were gone when they were to be copied."""


BACKUP_SIDE_FILES: Final = ("node.json", "web.json")
"""Files of a home copied as they are besides the key file (the web page's credential if set)."""


def backup_home(home: Path, dest: Path) -> BackupResult:
    """Copy a node's home to ``dest``, consistently, whether or not the node is running.

    The database is copied with SQLite's online backup (a snapshot of one moment, the log's
    committed pages included, which a plain copy of ``node.db`` misses), then the document
    files the copied database names; files written after the snapshot are not needed by it.
    A file deleted between the two is counted in ``missing``: run the backup again.  Nothing
    is decrypted, so no passphrase is needed; the key file is copied encrypted as it is.

    Raises:
        HomeError: ``home`` holds no node, or ``dest`` exists and is not an empty directory.
        OSError, sqlite3.Error: reading or writing failed (``dest`` is then incomplete).
    """
    NodeConfig.load(home)
    if not (home / DATABASE).is_file():
        raise HomeError(f"{home / DATABASE} is missing: there is no database to back up")
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise HomeError(f"{dest} already exists and is not empty: back up into a new directory")
    dest.mkdir(parents=True, exist_ok=True)
    dest.chmod(0o700)
    shutil.copyfile(home / "node.key", dest / "node.key")
    (dest / "node.key").chmod(0o600)
    for name in BACKUP_SIDE_FILES:
        if (home / name).is_file():
            shutil.copyfile(home / name, dest / name)
            (dest / name).chmod(0o600)
    source = sqlite3.connect(home / DATABASE, timeout=30)
    try:
        target = sqlite3.connect(dest / DATABASE)
        try:
            source.backup(target)
            # A home an older fedrecord made, not opened since the upgrade, has no stream column yet.
            columns = {row[1] for row in target.execute("PRAGMA table_info(documents)")}
            in_file = "stream IS NULL" if "stream" in columns else "1"
            rows = target.execute(f"SELECT id, {in_file} FROM documents").fetchall()
        finally:
            target.close()
    finally:
        source.close()
    (dest / DATABASE).chmod(0o600)
    size = (dest / DATABASE).stat().st_size
    files = DocumentFiles(home / "documents")
    copies = DocumentFiles(dest / "documents")
    (dest / "documents").mkdir(mode=0o700, exist_ok=True)
    copied = missing = 0
    for doc, in_file in rows:
        origin = files.path_of(bytes(doc))
        copy = copies.path_of(bytes(doc))
        if not in_file and not origin.exists():
            continue  # kept in its row (in the copied database): no file, no folder for one
        try:
            copy.parent.mkdir(mode=0o700, exist_ok=True)
            shutil.copyfile(origin, copy)
        except FileNotFoundError:
            if in_file:
                missing += 1
            continue
        copy.chmod(0o600)
        copied += 1
        size += copy.stat().st_size
    return BackupResult(documents=len(rows), files=copied, size=size, missing=missing)


@dataclass
class NodeHome:
    """An opened node: its identity, keys, database and files."""

    path: Path
    config: NodeConfig
    identity: SigningIdentity
    encryption_keys: tuple[EncryptionKeyPair, ...]
    db: Database
    files: DocumentFiles
    profile: Signed[NodeProfile]
    #: The storage interface the node logic uses, built from ``db`` (kept for tests reading tables).
    store: NodeStore = field(init=False)
    #: Fetches cut short, kept to be resumed (spec [API-42]).
    partials: PartialDownloads = field(init=False)

    def __post_init__(self) -> None:
        self.store = SqliteNodeStore(self.db)
        self.partials = PartialDownloads(self.files)

    @property
    def did(self) -> str:
        return self.identity.did

    @property
    def encryption(self) -> EncryptionKeyPair:
        """The current encryption key pair (the newest)."""
        return self.encryption_keys[-1]

    def keys_for(self, public_key: bytes) -> EncryptionKeyPair | None:
        return next((k for k in self.encryption_keys if k.public_key == public_key), None)

    async def destroyed(self, *docs: bytes) -> None:
        """Finish destroying documents whose rows a committed transaction deleted (US-7).

        A large document's file is overwritten and removed; the database's log
        is checkpointed and truncated, so that no old image of a deleted row --
        a small document's stream, a wrapped key -- stays in it.

        Raises:
            OSError, sqlite3.Error: the disk failed.
        """
        for doc in docs:
            await self.files.destroy(doc)
        if docs:
            async with self.store.transaction():
                await self.store.undoom(docs)
            # Last, so that the log holds nothing after it; a crash before it leaves old images in
            # the database file, which the checkpoint serve makes at start overwrites.
            await self.db.checkpoint()

    async def finish_destruction(self, *, before: int | None = None) -> int:
        """Finish the destructions a process began and did not end (killed between commit and file).

        The transaction that forgets a document's rows lists it as doomed; :meth:`destroyed`
        strikes it off once its file and the log's old images are gone.  What is still listed
        is destroyed here, whatever the file's age (unlike :meth:`sweep_orphans`).

        Args:
            before: only documents forgotten before this time, so as not to race a process
                destroying them right now (None: all, and a checkpoint in any case, at start).

        Returns:
            How many documents were finished.

        Raises:
            OSError, sqlite3.Error: the disk failed.
        """
        finished: list[bytes] = []
        kept: list[bytes] = []
        for doc in await self.store.doomed(before=before):
            # Never a document with a row (the trigger kept_again strikes those off; this is the
            # second guard, looked at just before each file): its file is a live copy's.
            if await self.store.documents_among([doc]):
                kept.append(doc)
                continue
            await self.files.destroy(doc)
            finished.append(doc)
        if finished or kept:
            async with self.store.transaction():
                await self.store.undoom(finished + kept)
        if finished or before is None:
            await self.db.checkpoint()  # and the images a crash left between a destruction and its checkpoint
        return len(finished)

    async def sweep_orphans(self, *, now: float | None = None) -> int:
        """Destroy the document files no row names that are older than :data:`ORPHAN_AGE`.

        A file is written and renamed into place before the transaction that
        stores its row (nothing is acknowledged before both are durable), so a
        crash between the two leaves a file that nothing names: a deposit never
        acknowledged, or the file of a document whose row a committed deletion
        removed before its file was overwritten.  Either
        way its key is gone and no one can read it; this frees the disk and
        finishes the deletion.  Only files older than :data:`ORPHAN_AGE` are
        considered, so the file of a write in flight in any process (renamed
        a moment before its row commits) is never taken for debris.

        Returns:
            How many files were destroyed.

        Raises:
            OSError, sqlite3.Error: the disk failed.
        """
        moment = (time.time() if now is None else now) - ORPHAN_AGE
        candidates = await self.files.stored_before(moment)
        destroyed = 0
        for start in range(0, len(candidates), MAX_IDS_PER_QUERY):
            batch = candidates[start : start + MAX_IDS_PER_QUERY]
            named = await self.store.documents_among(batch)
            for doc in batch:
                if doc not in named and await self.files.destroy_if_before(doc, moment):
                    destroyed += 1
            await asyncio.sleep(0)  # a node with many files serves meanwhile
        return destroyed

    async def open_stream(self, doc: bytes, *, start: int = 0) -> AsyncIterator[bytes] | None:
        """A stored document's ciphertext from ``start`` on, checked against its id; None when absent.

        A small document's stream is kept in its ``documents`` row (``INLINE_STREAM_MAX``), a
        larger one in its file (:meth:`DocumentFiles.open`, which checks as it reads).

        The iterator raises:
            CorruptDocumentError: the stored bytes no longer match the id.
        """
        stream = await self.store.document_stream(doc)
        if stream is None:
            return await self.files.open(doc, start=start)
        try:
            _check_kept(doc, stream)
        except CorruptDocumentError as exc:
            return _refused(exc)
        return _pieces(stream[start:])

    async def whole_stream(self, doc: bytes, *, kept: bytes | None) -> bytes | None:
        """A stored document's whole ciphertext, checked against its id; None when absent.

        Args:
            kept: the stream its row holds, already read with the row (``None`` when kept as a file).

        Raises:
            CorruptDocumentError: the stored bytes no longer match the id.
        """
        if kept is not None:
            _check_kept(doc, kept)
            return kept
        chunks = await self.files.open(doc)
        return None if chunks is None else b"".join([chunk async for chunk in chunks])

    @classmethod
    async def open(cls, path: Path, passphrase: bytes, *, now: int | None = None) -> NodeHome:
        """Unlock the key file and open the database (applying migrations).

        Raises:
            HomeError: when the directory holds no node, or its database is missing.
            KeyFileError: wrong passphrase or damaged key file.
        """
        config = NodeConfig.load(path)
        secrets = read_key_file(path / "node.key", passphrase)
        if not (path / DATABASE).is_file():
            # Never made afresh: an empty database would disown every document file (the orphan
            # sweep destroys files no row names), and hide the record from its patient.
            raise HomeError(
                f"{path / DATABASE} is missing: this node's database was moved or deleted; "
                "put it back (or restore it from a backup) before using the node"
            )
        _owner_only(path / DATABASE)
        db = await open_database(path / DATABASE, MIGRATIONS)
        files = DocumentFiles(path / "documents")
        await files.sweep_temporary()
        now = int(time.time()) if now is None else now
        keys = tuple(secrets.encryption_keys)
        profile = sign_record(
            NodeProfile(
                name=config.name,
                role=config.role,
                endpoints=(config.endpoint,),
                enc_keys=tuple(
                    EncryptionKey(key=k.public_key, nbf=now - 86_400, exp=now + ENCRYPTION_KEY_LIFETIME)
                    for k in keys
                ),
                versions=(0,),
                seq=now,
                iat=now,
            ),
            secrets.identity,
        )
        return cls(path, config, secrets.identity, keys, db, files, profile)

    async def close(self) -> None:
        await self.db.close()

    def with_endpoint(self, endpoint: str) -> None:
        """Record the endpoint the node really listens on (when the port was chosen by the system)."""
        if endpoint != self.config.endpoint:
            self.config = NodeConfig(**{**asdict(self.config), "endpoint": endpoint})
            self.config.save(self.path)
            record = self.profile.record
            self.profile = sign_record(
                NodeProfile(
                    name=record.name,
                    role=record.role,
                    endpoints=(endpoint,),
                    enc_keys=record.enc_keys,
                    versions=record.versions,
                    seq=record.seq + 1,
                    iat=record.iat,
                ),
                self.identity,
            )


INLINE_STREAM_MAX: Final = 1 << 20
"""Ciphertexts up to this size are kept in their ``documents`` row, larger ones as files.

Why: a small document as a file costs a create, a rename and syncs of the file and its
directory -- more CPU than checking its signatures -- where in its row it rides the
transaction that stores the row anyway (one log sync for a whole group).  Large ones are
streamed to files and back, with flat memory, and can be resumed.
"""


def _check_kept(doc: bytes, stream: bytes) -> None:
    """Raises CorruptDocumentError when a stream kept in a row is not the document it is kept as."""
    if stream_document_id(stream) != doc:
        raise CorruptDocumentError(f"stored document {doc.hex()} no longer matches its id")


async def _pieces(stream: bytes) -> AsyncIterator[bytes]:
    if stream:
        yield stream


async def _refused(error: Exception) -> AsyncIterator[bytes]:
    raise error
    yield b""  # an async generator, which raises when read
