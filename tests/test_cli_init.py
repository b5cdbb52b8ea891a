"""``fedrecord init --signing-seed-file``: a node made from a signing key the caller already holds (15.19).

A conformance suite that acts as the patient against a node it reaches only over HTTP needs the
patient node's signing key; it writes the seed to a file and creates the node from it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from fedrecord.cli import main
from fedrecord.core import SigningIdentity
from fedrecord.node.home import HomeError, init_home

ENVIRONMENT = {"FEDRECORD_PASSPHRASE": "cli test, not a secret", "FEDRECORD_KDF": "interactive"}


def init(home: Path, *options: str, role: str = "patient") -> Result:
    return CliRunner().invoke(
        main,
        ["--home", str(home), "--json", "init", "--role", role, "--name", "Camille", *options],
        env=ENVIRONMENT,
    )


@pytest.mark.parametrize("role", ["patient", "clinic"])
@pytest.mark.parametrize("layout", ["{}", "{}\n", "  \n\t{}\r\n  ", "{upper}\n"])
def test_the_node_signs_with_the_seed_of_the_file(tmp_path: Path, role: str, layout: str) -> None:
    seed = os.urandom(32)
    seed_file = tmp_path / "seed.hex"
    seed_file.write_text(layout.format(seed.hex(), upper=seed.hex().upper()))
    result = init(tmp_path / "node", "--signing-seed-file", str(seed_file), role=role)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["did"] == SigningIdentity.from_seed(seed).did
    assert seed.hex() not in result.output.lower()
    status = CliRunner().invoke(main, ["--home", str(tmp_path / "node"), "--json", "status"], env=ENVIRONMENT)
    assert status.exit_code == 0, status.output
    assert json.loads(status.output)["did"] == SigningIdentity.from_seed(seed).did


def test_without_the_option_the_seed_is_random(tmp_path: Path) -> None:
    first, second = init(tmp_path / "a"), init(tmp_path / "b")
    assert first.exit_code == second.exit_code == 0
    assert json.loads(first.output)["did"] != json.loads(second.output)["did"]


SECRET = "ab" * 32


@pytest.mark.parametrize(
    "content",
    [
        SECRET[:-1],  # 63 digits
        SECRET + "c",  # 65 digits
        SECRET[:-1] + "g",  # not hexadecimal
        SECRET[:32] + " " + SECRET[32:],  # white space inside
        "0x" + SECRET,
        "",
        SECRET + "\n" + SECRET,  # two seeds
    ],
)
def test_a_file_that_is_not_one_seed_is_refused(tmp_path: Path, content: str) -> None:
    seed_file = tmp_path / "seed.hex"
    seed_file.write_text(content)
    result = init(tmp_path / "node", "--signing-seed-file", str(seed_file))
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "64 hexadecimal digits" in lines[0]
    assert SECRET[:16] not in result.output, "the seed is never echoed"
    assert not (tmp_path / "node" / "node.key").exists()


def test_a_binary_or_missing_file_is_refused(tmp_path: Path) -> None:
    raw = tmp_path / "seed.bin"
    raw.write_bytes(os.urandom(32))
    for path in (raw, tmp_path / "absent"):
        result = init(tmp_path / "node", "--signing-seed-file", str(path))
        assert result.exit_code != 0
        assert len(result.output.strip().splitlines()) == 1 and result.output.startswith("error: ")
        assert not (tmp_path / "node" / "node.key").exists()


def test_init_home_takes_only_32_byte_seeds(tmp_path: Path) -> None:
    with pytest.raises(HomeError):
        init_home(
            tmp_path / "node",
            role="patient",
            name="Camille",
            endpoint="http://127.0.0.1:9",
            passphrase=b"not a secret",
            signing_seed=bytes(31),
        )
    assert not (tmp_path / "node").exists()


def test_the_home_is_the_owners_alone(tmp_path: Path) -> None:
    """The database holds titles and labels in the clear: the home is not readable by others, whatever the umask."""
    old = os.umask(0o022)
    try:
        result = init(tmp_path / "home")
    finally:
        os.umask(old)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "home").stat().st_mode & 0o077 == 0
