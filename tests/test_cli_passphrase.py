"""``fedrecord passphrase``: the key file's passphrase changes, the node stays the same node."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner, Result

from fedrecord.cli import main

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
