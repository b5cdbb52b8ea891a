"""The sans-I/O protocol core: encoding, identities, signed records, capabilities, encryption.

Nothing in this package performs I/O, reads a clock or draws randomness:
``now`` and random bytes are arguments, so every result is reproducible and
every vector in ``spec/vectors`` can be replayed.  Modules, from primitives to
recipes:

* :mod:`.errors` -- the error hierarchy and wire codes;
* :mod:`.cbor` -- strict deterministic CBOR;
* :mod:`.identity` -- did:key identities, signing and encryption key pairs;
* :mod:`.cose` -- COSE_Sign1 with Ed25519;
* :mod:`.schema`, :mod:`.records` -- the record types;
* :mod:`.signed` -- signing and opening records;
* :mod:`.capabilities` -- where grants are verified;
* :mod:`.lifecycle` -- a document's states on a node and every move between them, as one table;
* :mod:`.stream`, :mod:`.sealed_box`, :mod:`.key_wraps`, :mod:`.documents` --
  document encryption and key distribution.
"""

from .capabilities import Decision, DocumentFacts, Freshness, RevocationSet, decide
from .errors import AuthenticationError, Code, FedrecordError, LocalProtocolError, RemoteProtocolError
from .identity import EncryptionKeyPair, SigningIdentity
from .records import (
    BATCH_MAX_DOCS,
    AcceptedEntry,
    AccessReceipt,
    Action,
    AuditCheckpoint,
    DeletionAttestation,
    Deposit,
    DepositDecision,
    DocumentHeader,
    EncryptionKey,
    Grant,
    KeyWrap,
    NodeProfile,
    PrivateRestriction,
    Record,
    RecordType,
    Revocation,
    Scope,
    StateHead,
    Tombstone,
)
from .schema import PROTOCOL_VERSION, SUPPORTED_VERSIONS
from .signed import Signed, open_any_record, open_record, sign_record

__all__ = [
    "PROTOCOL_VERSION",
    "SUPPORTED_VERSIONS",
    "AccessReceipt",
    "BATCH_MAX_DOCS",
    "AuditCheckpoint",
    "AcceptedEntry",
    "Action",
    "AuthenticationError",
    "Code",
    "Decision",
    "DeletionAttestation",
    "Deposit",
    "DepositDecision",
    "DocumentFacts",
    "DocumentHeader",
    "EncryptionKey",
    "EncryptionKeyPair",
    "FedrecordError",
    "Freshness",
    "Grant",
    "KeyWrap",
    "LocalProtocolError",
    "NodeProfile",
    "PrivateRestriction",
    "Record",
    "RecordType",
    "RemoteProtocolError",
    "Revocation",
    "RevocationSet",
    "Scope",
    "Signed",
    "SigningIdentity",
    "StateHead",
    "Tombstone",
    "decide",
    "open_any_record",
    "open_record",
    "sign_record",
]
