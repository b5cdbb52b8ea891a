"""The node's secret keys at rest: a small file encrypted under a passphrase.

Theory of operation.  The secrets (the Ed25519 signing seed and the X25519
encryption seeds, newest last) are CBOR-encoded and sealed with
XSalsa20-Poly1305 (``nacl.secret.SecretBox``) under a key stretched from the
passphrase by argon2id (``nacl.pwhash.argon2id.kdf``).  The file is one
deterministic CBOR map::

    {"v": 0, "kdf": "argon2id13", "ops": int, "mem": int,
     "salt": bstr .size 16, "nonce": bstr .size 24, "box": bstr}

The KDF parameters and salt are not authenticated separately: changing any of
them changes the derived key, so the box no longer opens.  A wrong passphrase
and a damaged file are therefore one error with one message.  The cost
parameters read from a file are bounded (at most argon2id's SENSITIVE
limits), so a planted file cannot make the node spend unbounded memory.

The file is written atomically (temporary file in the same directory, fsync,
rename, fsync of the directory) and created with mode 0600; a file that group
or others may read is refused rather than silently trusted, because its
secrets may already have leaked.  No function here logs, prints or puts a
secret or a passphrase in an exception message.
"""

from __future__ import annotations

import contextlib
import os
import stat
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Final

import nacl.utils
from nacl.exceptions import CryptoError
from nacl.pwhash import argon2id
from nacl.secret import SecretBox

from fedrecord.core import cbor
from fedrecord.core.errors import FedrecordError
from fedrecord.core.identity import EncryptionKeyPair, SigningIdentity

from ._files import fsync_directory

__all__ = [
    "KDF_NAME",
    "DEFAULT_OPS",
    "DEFAULT_MEM",
    "KeyFileError",
    "NodeSecrets",
    "write_key_file",
    "kdf_cost",
    "read_key_file",
    "passphrase_from_environment",
    "write_private_file",
]

KDF_NAME: Final = "argon2id13"
DEFAULT_OPS: Final[int] = argon2id.OPSLIMIT_MODERATE
DEFAULT_MEM: Final[int] = argon2id.MEMLIMIT_MODERATE

_FORMAT_VERSION: Final = 0
_SECRETS_VERSION: Final = 0
_SEED_SIZE: Final = 32
_SALT_SIZE: Final[int] = argon2id.SALTBYTES
_NONCE_SIZE: Final[int] = SecretBox.NONCE_SIZE
# Bounds on the cost read from a file: a planted file must not make us allocate gigabytes.
_MIN_OPS: Final[int] = argon2id.OPSLIMIT_MIN
_MAX_OPS: Final[int] = argon2id.OPSLIMIT_SENSITIVE
_MIN_MEM: Final[int] = argon2id.MEMLIMIT_MIN
_MAX_MEM: Final[int] = argon2id.MEMLIMIT_SENSITIVE
# A key file with a few hundred rotated keys stays far below this.
_MAX_FILE_SIZE: Final = 65_536
_MAX_PASSPHRASE_FILE_SIZE: Final = 4_096
_WRONG_PASSPHRASE: Final = "wrong passphrase or damaged key file"
_FILE_FIELDS: Final = frozenset({"v", "kdf", "ops", "mem", "salt", "nonce", "box"})


class KeyFileError(Exception):
    """A key file or passphrase file cannot be used; the message says why and never holds a secret."""


@dataclass(frozen=True, repr=False)
class NodeSecrets:
    """Every secret a node holds: its signing seed and its X25519 seeds.

    Attributes:
        signing_seed: the 32-byte Ed25519 seed behind the node's did:key.
        encryption_seeds: 32-byte X25519 seeds, oldest first and the current
            one last; old ones are kept so wraps sealed to them still open.

    Raises:
        ValueError: from the constructor, for a seed that is not 32 bytes or
            when there is no encryption seed.
    """

    signing_seed: bytes
    encryption_seeds: tuple[bytes, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.signing_seed, bytes) or len(self.signing_seed) != _SEED_SIZE:
            raise ValueError("the signing seed is 32 bytes")
        if not isinstance(self.encryption_seeds, tuple) or not self.encryption_seeds:
            raise ValueError("at least one encryption seed is needed (a tuple, newest last)")
        if any(not isinstance(s, bytes) or len(s) != _SEED_SIZE for s in self.encryption_seeds):
            raise ValueError("every encryption seed is 32 bytes")

    @cached_property
    def identity(self) -> SigningIdentity:
        """The node's signing identity (derived once)."""
        return SigningIdentity.from_seed(self.signing_seed)

    @cached_property
    def encryption_keys(self) -> tuple[EncryptionKeyPair, ...]:
        """The X25519 key pairs, in the order of :attr:`encryption_seeds` (current last)."""
        return tuple(EncryptionKeyPair.from_seed(s) for s in self.encryption_seeds)

    @property
    def current_encryption_key(self) -> EncryptionKeyPair:
        """The newest X25519 key pair, the one the node publishes as current."""
        return self.encryption_keys[-1]

    def with_encryption_seed(self, seed: bytes) -> NodeSecrets:
        """A copy with ``seed`` appended as the new current encryption key (key rotation)."""
        return NodeSecrets(signing_seed=self.signing_seed, encryption_seeds=(*self.encryption_seeds, seed))

    def __repr__(self) -> str:
        return f"NodeSecrets({self.identity.did}, {len(self.encryption_seeds)} encryption key(s))"

    def _encode(self) -> bytes:
        return cbor.encode(
            {"v": _SECRETS_VERSION, "sign": self.signing_seed, "enc": list(self.encryption_seeds)}
        )

    @classmethod
    def _decode(cls, data: bytes) -> NodeSecrets:
        try:
            value = cbor.decode(data, max_size=_MAX_FILE_SIZE)
        except FedrecordError:
            raise KeyFileError("the key file's content is not valid") from None
        if (
            not isinstance(value, dict)
            or set(value) != {"v", "sign", "enc"}
            or value["v"] != _SECRETS_VERSION
            or not isinstance(value["enc"], list)
        ):
            raise KeyFileError("the key file's content is not valid (or from an unknown version)")
        try:
            return cls(signing_seed=value["sign"], encryption_seeds=tuple(value["enc"]))
        except ValueError:
            raise KeyFileError("the key file's content is not valid") from None


def _as_bytes(passphrase: bytes | str) -> bytes:
    return passphrase.encode("utf-8") if isinstance(passphrase, str) else bytes(passphrase)


def _derive_key(passphrase: bytes, salt: bytes, ops: int, mem: int) -> bytes:
    key: bytes = argon2id.kdf(SecretBox.KEY_SIZE, passphrase, salt, opslimit=ops, memlimit=mem)
    return key


def kdf_cost(limits: tuple[int, int] | None) -> dict[str, int]:
    """The cost arguments of :func:`write_key_file` for argon2id limits (ops, mem); none (its defaults) for None."""
    return {} if limits is None else {"ops": limits[0], "mem": limits[1]}


def write_key_file(
    path: Path,
    secrets: NodeSecrets,
    passphrase: bytes | str,
    *,
    ops: int = DEFAULT_OPS,
    mem: int = DEFAULT_MEM,
) -> None:
    """Encrypt ``secrets`` under ``passphrase`` and write them atomically to ``path`` with mode 0600.

    Blocking (argon2id takes about a second at the default MODERATE cost):
    call it through ``asyncio.to_thread`` from a running node.

    Args:
        path: the key file; replaced atomically if it exists.
        secrets: what to store.
        passphrase: bytes, or text (encoded as UTF-8); must not be empty.
        ops, mem: argon2id cost (defaults: MODERATE; tests pass INTERACTIVE).

    Raises:
        KeyFileError: empty passphrase, or cost outside argon2id's accepted range.
        OSError: when the directory cannot be written.
    """
    secret = _as_bytes(passphrase)
    if not secret:
        raise KeyFileError("the passphrase must not be empty")
    if not (_MIN_OPS <= ops <= _MAX_OPS and _MIN_MEM <= mem <= _MAX_MEM):
        raise KeyFileError(
            f"argon2id cost must be ops in [{_MIN_OPS}, {_MAX_OPS}] and mem in [{_MIN_MEM}, {_MAX_MEM}]"
        )
    salt = nacl.utils.random(_SALT_SIZE)
    nonce = nacl.utils.random(_NONCE_SIZE)
    box = SecretBox(_derive_key(secret, salt, ops, mem)).encrypt(secrets._encode(), nonce).ciphertext
    content = cbor.encode(
        {
            "v": _FORMAT_VERSION,
            "kdf": KDF_NAME,
            "ops": ops,
            "mem": mem,
            "salt": salt,
            "nonce": nonce,
            "box": box,
        }
    )
    write_private_file(Path(path), content)


def write_private_file(path: Path, content: bytes) -> None:
    """Replace ``path`` with ``content`` at once, readable by its owner only (0600), synced to disk.

    Used for every secret a node keeps in a file: the key file, the web page's credential.
    """
    directory = path.parent
    temporary = directory / f".{path.name}.{nacl.utils.random(8).hex()}.tmp"
    # O_EXCL: never write through a file (or symlink) someone else put there.
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            # The umask can only remove bits; fchmod makes 0600 exact whatever it is.
            os.fchmod(fd, 0o600)
            view = memoryview(content)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    fsync_directory(directory)


def _read_private_file(path: Path, what: str, max_size: int) -> bytes:
    """Read a small file that must be readable by its owner only.

    The mode is checked on the opened descriptor, so the file checked is the file read.

    Raises:
        KeyFileError: missing, not a regular file, too large, or mode allowing group/other access.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise KeyFileError(f"{what} {path} does not exist") from None
    except PermissionError:
        raise KeyFileError(f"{what} {path} cannot be read (permission denied)") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise KeyFileError(f"{what} {path} is not a regular file")
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o077:
            raise KeyFileError(
                f"{what} {path} is accessible by group or others (mode {mode:04o}); "
                f"its secrets may have leaked; run: chmod 600 {path}"
            )
        if info.st_size > max_size:
            raise KeyFileError(f"{what} {path} is too large to be one ({info.st_size} bytes)")
        pieces: list[bytes] = []
        total = 0
        while piece := os.read(fd, max_size + 1 - total):
            pieces.append(piece)
            total += len(piece)
            if total > max_size:
                raise KeyFileError(f"{what} {path} is too large to be one")
        return b"".join(pieces)
    finally:
        os.close(fd)


def _int_field(value: dict[Any, Any], name: str) -> int:
    field = value.get(name)
    if not isinstance(field, int) or isinstance(field, bool):
        raise KeyFileError(_WRONG_PASSPHRASE)
    return field


def _bytes_field(value: dict[Any, Any], name: str, size: int | None = None) -> bytes:
    field = value.get(name)
    if not isinstance(field, bytes) or (size is not None and len(field) != size):
        raise KeyFileError(_WRONG_PASSPHRASE)
    return field


def read_key_file(path: Path, passphrase: bytes | str) -> NodeSecrets:
    """Unlock the key file at ``path``.

    Blocking (argon2id): call it through ``asyncio.to_thread`` from a running node.

    Raises:
        KeyFileError: "wrong passphrase or damaged key file" when the box does
            not open or the file is not a key file; a message asking to
            ``chmod 600`` when group or others may access it; a message when it
            does not exist, is from an unknown format version or names an
            unknown KDF, or asks for a cost beyond argon2id's SENSITIVE limits.
    """
    path = Path(path)
    content = _read_private_file(path, "key file", _MAX_FILE_SIZE)
    try:
        value = cbor.decode(content, max_size=_MAX_FILE_SIZE)
    except FedrecordError:
        raise KeyFileError(_WRONG_PASSPHRASE) from None
    if not isinstance(value, dict):
        raise KeyFileError(_WRONG_PASSPHRASE)
    if not isinstance(value.get("v"), int) or not isinstance(value.get("kdf"), str):
        raise KeyFileError(_WRONG_PASSPHRASE)
    if value["v"] != _FORMAT_VERSION:
        raise KeyFileError(f"key file {path} has an unknown format version")
    if value["kdf"] != KDF_NAME:
        raise KeyFileError(f"key file {path} uses an unknown key derivation")
    ops = _int_field(value, "ops")
    mem = _int_field(value, "mem")
    salt = _bytes_field(value, "salt", _SALT_SIZE)
    nonce = _bytes_field(value, "nonce", _NONCE_SIZE)
    box = _bytes_field(value, "box")
    if set(value) != _FILE_FIELDS:
        raise KeyFileError(_WRONG_PASSPHRASE)
    if not (_MIN_OPS <= ops <= _MAX_OPS and _MIN_MEM <= mem <= _MAX_MEM):
        raise KeyFileError(f"key file {path} asks for an argon2id cost outside the accepted range")
    key = _derive_key(_as_bytes(passphrase), salt, ops, mem)
    try:
        plaintext: bytes = SecretBox(key).decrypt(box, nonce)
    except CryptoError:
        raise KeyFileError(_WRONG_PASSPHRASE) from None
    return NodeSecrets._decode(plaintext)


def passphrase_from_environment(file: Path | None, env_var: str = "FEDRECORD_PASSPHRASE") -> bytes | None:
    """The passphrase for unattended start (clinic nodes), or None when none is configured.

    ``file`` wins when given: its content without the trailing newline (LF or
    CRLF); it must be mode 0600 like the key file.  Otherwise the environment
    variable ``env_var``, when set and not empty.

    Raises:
        KeyFileError: the file is missing, too large, empty, or accessible by
            group or others.
    """
    if file is not None:
        content = _read_private_file(Path(file), "passphrase file", _MAX_PASSPHRASE_FILE_SIZE)
        for ending in (b"\r\n", b"\n"):
            if content.endswith(ending):
                content = content[: -len(ending)]
                break
        if not content:
            raise KeyFileError(f"passphrase file {file} is empty")
        return content
    value = os.environ.get(env_var)
    if not value:
        return None
    return os.fsencode(value)
