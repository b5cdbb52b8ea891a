"""Storage adapters: what a node keeps on its own disk.

Unlike :mod:`fedrecord.core`, this package does I/O (files, SQLite) and draws randomness (salts, nonces, temporary names).  Modules:

* :mod:`.keyfile` -- the node's secret keys in a file encrypted under a passphrase
  (argon2id + XSalsa20-Poly1305), mode 0600, and unattended unlocking;
* :mod:`.sqlite` -- opening a database (WAL, ``synchronous=FULL``,
  ``secure_delete``), versioned migrations, transactions around every
  acknowledged write, and the integrity and digest checks tests rely on;
* :mod:`.documents` -- ciphertext files at rest, streamed in and out with
  their document id checked;
* :mod:`.partial` -- downloads cut short, kept to be resumed and checked
  whole before they join the files at rest.
"""

from .documents import CorruptDocumentError, DocumentFiles
from .keyfile import KeyFileError, NodeSecrets, passphrase_from_environment, read_key_file, write_key_file
from .sqlite import (
    Database,
    Migration,
    SchemaVersionError,
    StorageError,
    integrity_check,
    open_database,
    schema_version,
    table_digest,
    transaction,
)

__all__ = [
    "CorruptDocumentError",
    "Database",
    "DocumentFiles",
    "KeyFileError",
    "Migration",
    "NodeSecrets",
    "SchemaVersionError",
    "StorageError",
    "integrity_check",
    "open_database",
    "passphrase_from_environment",
    "read_key_file",
    "schema_version",
    "table_digest",
    "transaction",
    "write_key_file",
]
