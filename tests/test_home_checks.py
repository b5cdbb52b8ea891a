"""A node's home: ``init`` checks everything before it writes, ``open`` never makes a missing database afresh."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from nacl.pwhash import argon2id

from fedrecord.node.home import DATABASE, HomeError, NodeHome, backup_home, init_home

PASSPHRASE = b"home checks, not a secret"
FAST = (argon2id.OPSLIMIT_INTERACTIVE, argon2id.MEMLIMIT_INTERACTIVE)


def _init(home: Path, **changes: object) -> None:
    options: dict[str, object] = {
        "role": "clinic",
        "name": "Laboratoire",
        "endpoint": "http://127.0.0.1:8480",
        "passphrase": PASSPHRASE,
        "port": 8480,
        "kdf_limits": FAST,
    }
    options.update(changes)
    init_home(home, **options)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("changes", "said"),
    [
        ({"name": ""}, "name"),
        ({"name": "x" * 129}, "name"),
        ({"endpoint": "not a url"}, "endpoint"),
        ({"endpoint": "http://[::1"}, "endpoint"),
        ({"port": 99_999}, "port"),
        ({"port": -1}, "port"),
        ({"role": "pharmacy"}, "role"),
    ],
)
def test_a_refused_init_leaves_nothing(tmp_path: Path, changes: dict[str, object], said: str) -> None:
    """Nothing is written, so the same command with the mistake fixed works at once."""
    home = tmp_path / "lab"
    with pytest.raises(HomeError, match=said):
        _init(home, **changes)
    assert not home.exists() or not any(home.iterdir())
    _init(home)
    assert (home / "node.key").is_file() and (home / DATABASE).is_file()


async def test_a_home_whose_database_is_missing_is_refused(tmp_path: Path) -> None:
    """A database moved away (a backup being restored) is never replaced by an empty one."""
    home = tmp_path / "lab"
    _init(home)
    opened = await NodeHome.open(home, PASSPHRASE)
    await opened.close()
    (home / DATABASE).rename(tmp_path / "away.db")
    with pytest.raises(HomeError, match="missing"):
        await NodeHome.open(home, PASSPHRASE)
    assert not (home / DATABASE).exists()
    (tmp_path / "away.db").rename(home / DATABASE)
    opened = await NodeHome.open(home, PASSPHRASE)
    await opened.close()


def test_init_over_a_database_left_without_its_key_file_writes_nothing(tmp_path: Path) -> None:
    """A node's database whose key file is gone (a lost passphrase, the key file deleted) is refused
    before anything is written: no new key file beside another node's records, no half-made node."""
    home = tmp_path / "lab"
    home.mkdir()
    (home / DATABASE).write_bytes(b"")
    with pytest.raises(HomeError, match="database"):
        _init(home)
    assert sorted(p.name for p in home.iterdir()) == [DATABASE]


async def test_the_database_and_its_log_are_the_owners_alone(tmp_path: Path) -> None:
    """Titles and labels are in the clear in node.db: 0600 from init on, whatever the umask, and a
    database an older fedrecord left readable by others is made the owner's alone when opened."""
    home = tmp_path / "lab"
    previous = os.umask(0o022)
    try:
        _init(home)
        opened = await NodeHome.open(home, PASSPHRASE)
        try:
            async with opened.store.transaction():
                await opened.db.execute("INSERT INTO nonces (signer, nonce, expires) VALUES ('did:key:z', 'n', 0)")
            for name in (DATABASE, f"{DATABASE}-wal", f"{DATABASE}-shm"):
                assert (home / name).stat().st_mode & 0o777 == 0o600, name
        finally:
            await opened.close()
        (home / DATABASE).chmod(0o644)
        opened = await NodeHome.open(home, PASSPHRASE)
        await opened.close()
        assert (home / DATABASE).stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(previous)


async def _row(home: NodeHome, doc: bytes) -> None:
    """A documents row kept as a file (no stream in the row), as a clinic's copy is."""
    async with home.store.transaction():
        await home.db.execute(
            "INSERT INTO documents (id, patient, state, author, title, doc_type, category, labels, date, size)"
            " VALUES (?, 'did:key:z', 'held', 'did:key:z', 't', 'note', 'lab', '[]', 0, 3)",
            (doc,),
        )


async def test_a_backup_of_a_running_node_holds_what_it_committed(tmp_path: Path) -> None:
    """Commits still in the database's log (which a copy of node.db alone misses) are in the backup, and
    the files its rows name; the copy opens as the same node, from another path."""
    home, copy = tmp_path / "lab", tmp_path / "elsewhere" / "lab-copy"
    _init(home)
    opened = await NodeHome.open(home, PASSPHRASE)
    try:
        doc = bytes(range(32))
        opened.files.path_of(doc).parent.mkdir(parents=True)
        opened.files.path_of(doc).write_bytes(b"abc")
        await _row(opened, doc)
        assert (home / f"{DATABASE}-wal").stat().st_size > 0  # the row is in the log, node still open
        result = backup_home(home, copy)
        did = opened.did
    finally:
        await opened.close()
    assert (result.documents, result.files, result.missing) == (1, 1, 0)
    assert (copy / "node.key").stat().st_mode & 0o777 == 0o600
    assert (copy / DATABASE).stat().st_mode & 0o777 == 0o600
    restored = await NodeHome.open(copy, PASSPHRASE)
    try:
        assert await restored.store.documents_among([doc]) == {doc}
        assert restored.files.path_of(doc).read_bytes() == b"abc"
        assert restored.did == did
    finally:
        await restored.close()


async def test_a_backup_counts_the_files_deleted_meanwhile_and_never_writes_into_a_full_directory(
    tmp_path: Path,
) -> None:
    home = tmp_path / "lab"
    _init(home)
    opened = await NodeHome.open(home, PASSPHRASE)
    try:
        await _row(opened, bytes(32))  # its file is gone, as after a deletion racing the backup
    finally:
        await opened.close()
    assert backup_home(home, tmp_path / "b1").missing == 1
    with pytest.raises(HomeError, match="not empty"):
        backup_home(home, tmp_path / "b1")


async def test_a_home_not_yet_upgraded_is_backed_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Made by a fedrecord whose documents had no stream column (before migration 6), not opened since."""
    from fedrecord.node import home as home_module
    from fedrecord.node.schema import MIGRATIONS

    home = tmp_path / "lab"
    _init(home)
    monkeypatch.setattr(home_module, "MIGRATIONS", MIGRATIONS[:5])
    opened = await NodeHome.open(home, PASSPHRASE)
    await opened.close()
    assert backup_home(home, tmp_path / "copy").documents == 0


async def test_a_backup_makes_no_folder_for_a_document_kept_in_its_row(tmp_path: Path) -> None:
    """A small document lives in its database row: the copied database holds it, and the backup's
    ``documents/`` gets no empty folder for a file there is not."""
    home = tmp_path / "patient"
    _init(home, role="patient")
    opened = await NodeHome.open(home, PASSPHRASE)
    try:
        async with opened.store.transaction():
            await opened.db.execute(
                "INSERT INTO documents (id, patient, state, author, title, doc_type, category, labels, date, size,"
                " stream) VALUES (?, 'did:key:z', 'accepted', 'did:key:z', 't', 'note', 'lab', '[]', 0, 3, x'616263')",
                (bytes(range(32)),),
            )
        result = backup_home(home, tmp_path / "copy")
    finally:
        await opened.close()
    assert (result.documents, result.files, result.missing) == (1, 0, 0)
    assert list((tmp_path / "copy" / "documents").iterdir()) == []
