"""Operating a node's home: ``fedrecord passphrase`` changes the key file's passphrase and the node
stays the same node; a home an older fedrecord made is upgraded, and the command says so."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from fedrecord.cli import main
from fedrecord.node import home as home_module
from fedrecord.node.schema import MIGRATIONS

OLD = {"FEDRECORD_PASSPHRASE": "the old one, not a secret", "FEDRECORD_KDF": "interactive"}


def run(home: Path, *arguments: str, env: dict[str, str]) -> Result:
    return CliRunner().invoke(main, ["--home", str(home), "--json", *arguments], env=env)


def test_the_new_passphrase_opens_the_same_node_and_the_old_one_no_longer_does(tmp_path: Path) -> None:
    home = tmp_path / "lab"
    made = run(home, "init", "--role", "clinic", "--name", "Lab", env=OLD)
    assert made.exit_code == 0, made.output
    did = json.loads(made.output)["did"]
    changed = run(home, "passphrase", env={**OLD, "FEDRECORD_NEW_PASSPHRASE": "the new one"})
    assert changed.exit_code == 0, changed.output
    assert "the new one" not in changed.output
    assert (home / "node.key").stat().st_mode & 0o777 == 0o600
    status = run(home, "status", env={**OLD, "FEDRECORD_PASSPHRASE": "the new one"})
    assert status.exit_code == 0, status.output
    assert json.loads(status.output)["did"] == did
    refused = run(home, "status", env=OLD)
    assert refused.exit_code == 1 and "wrong passphrase" in refused.output


def test_a_wrong_current_passphrase_changes_nothing(tmp_path: Path) -> None:
    home = tmp_path / "lab"
    assert run(home, "init", "--role", "clinic", "--name", "Lab", env=OLD).exit_code == 0
    before = (home / "node.key").read_bytes()
    wrong = {**OLD, "FEDRECORD_PASSPHRASE": "wrong", "FEDRECORD_NEW_PASSPHRASE": "the new one"}
    assert run(home, "passphrase", env=wrong).exit_code == 1
    assert (home / "node.key").read_bytes() == before


def test_a_home_made_by_an_older_fedrecord_is_upgraded_and_said_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first command after an upgrade applies the new migrations and says so on stderr, once."""
    home = tmp_path / "lab"
    with monkeypatch.context() as older:
        older.setattr(home_module, "MIGRATIONS", MIGRATIONS[:7])
        assert run(home, "init", "--role", "clinic", "--name", "Lab", env=OLD).exit_code == 0
    first = run(home, "status", env=OLD)
    assert first.exit_code == 0, first.output
    assert f"to schema version {MIGRATIONS[-1].version} (migrations 8 to" in first.output
    assert MIGRATIONS[7].description in first.output
    again = run(home, "status", env=OLD)
    assert again.exit_code == 0 and "upgraded" not in again.output
