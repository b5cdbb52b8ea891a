"""A node's home: ``init`` checks everything before it writes, ``open`` never makes a missing database afresh."""

from __future__ import annotations

from pathlib import Path

import pytest
from nacl.pwhash import argon2id

from fedrecord.node.home import DATABASE, HomeError, NodeHome, init_home

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
