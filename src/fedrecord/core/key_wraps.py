"""Key wraps: how a document key reaches one reader, bound to what it is for.

A wrap is a sealed box to the reader's X25519 key whose *plaintext* is a
:class:`~fedrecord.core.records.WrapSecret`: the key together with the
document id, recipient, wrapper, purpose and grant it was wrapped for.  The
sealed box sits in a record signed by the wrapper.  On opening, every bound
field must equal the signed outer record and what the reader expected, so a
wrap cannot be replayed for another document, reader or purpose even by
someone who can re-sign the outer record (spec [WRAP-1] .. [WRAP-5]).

A deposit carries its key the same way, sealed to the patient with purpose
``deposit``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from . import cbor
from .errors import Code, LocalProtocolError, RemoteProtocolError
from .identity import EncryptionKeyPair, SigningIdentity
from .records import Deposit, KeyWrap, WrapSecret
from .sealed_box import open_sealed, seal
from .signed import Signed, sign_record

__all__ = [
    "DEPOSIT_PURPOSE",
    "UnwrappedKey",
    "wrap_key",
    "wrap_keys",
    "unwrap_key",
    "unwrap_keys",
    "make_deposit",
    "open_deposit_key",
]

DEPOSIT_PURPOSE: Final = "deposit"


@dataclass(frozen=True, kw_only=True, repr=False)
class UnwrappedKey:
    """A document key and the binding it arrived with.  ``repr`` hides the key."""

    key: bytes
    secret: WrapSecret

    def __repr__(self) -> str:
        return f"UnwrappedKey(doc={self.secret.doc.hex()[:16]}, purpose={self.secret.purpose})"


def wrap_key(
    *,
    wrapper: SigningIdentity,
    recipient: str,
    recipient_key: bytes,
    doc: bytes,
    key: bytes,
    purpose: str,
    grant: bytes | None,
    iat: int,
    ephemeral_seed: bytes,
) -> Signed[KeyWrap]:
    """Seal ``key`` to ``recipient`` for ``doc`` and sign the wrap as ``wrapper``.

    Raises:
        LocalProtocolError: ``invalid-record`` for a malformed field.
        RemoteProtocolError: ``bad-key`` when ``recipient_key`` is unusable.
    """
    return wrap_keys(
        wrapper=wrapper,
        recipient=recipient,
        recipient_key=recipient_key,
        keys=[(doc, key)],
        purpose=purpose,
        grant=grant,
        iat=iat,
        ephemeral_seed=ephemeral_seed,
    )


def wrap_keys(
    *,
    wrapper: SigningIdentity,
    recipient: str,
    recipient_key: bytes,
    keys: Sequence[tuple[bytes, bytes]],
    purpose: str,
    grant: bytes | None,
    iat: int,
    ephemeral_seed: bytes,
) -> Signed[KeyWrap]:
    """Seal the keys of several documents to ``recipient`` in one wrap, signed once ([WRAP-6]).

    Args:
        keys: (document id, document key) pairs; the first is the wrap's
            ``doc``, the others its ``docs`` -- in ascending order of id, as a
            set is written ([REC-5]).  One pair gives a wrap of one document,
            as :func:`wrap_key` makes.

    Raises:
        LocalProtocolError: ``invalid-record`` for a malformed field, no pair,
            more than ``BATCH_MAX_DOCS`` or a document named twice.
        RemoteProtocolError: ``bad-key`` when ``recipient_key`` is unusable.
    """
    if not keys:
        raise LocalProtocolError(Code.INVALID_RECORD, "a key wrap carries at least one key")
    (doc, key), others = keys[0], sorted(keys[1:])
    docs = tuple(d for d, _ in others) or None
    secret = WrapSecret(
        key=key,
        doc=doc,
        recipient=recipient,
        wrapper=wrapper.did,
        purpose=purpose,
        grant=grant,
        docs=docs,
        keys=tuple(k for _, k in others) or None,
    )
    sealed = seal(cbor.encode(secret.to_wire()), recipient_key, ephemeral_seed)
    wrap = KeyWrap(
        recipient=recipient,
        doc=doc,
        docs=docs,
        purpose=purpose,
        grant=grant,
        recipient_key=recipient_key,
        sealed=sealed,
        iat=iat,
    )
    return sign_record(wrap, wrapper)


def unwrap_keys(
    wrap: Signed[KeyWrap], *, recipient: str, keys: EncryptionKeyPair, documents: Sequence[bytes]
) -> dict[bytes, bytes]:
    """Open a verified wrap of several documents: their keys by document id ([WRAP-3], [WRAP-6]).

    Args:
        documents: the documents asked for, first the wrap's ``doc``, then the
            others in any order; the wrap must carry exactly these.

    Raises:
        RemoteProtocolError, AuthenticationError: as :func:`unwrap_key`.
    """
    record = wrap.record
    if record.recipient != recipient or record.recipient_key != keys.public_key:
        raise RemoteProtocolError(Code.WRAP_MISMATCH, "the key wrap is addressed to another reader or key")
    if not documents or record.doc != documents[0] or set(record.docs or ()) != set(documents[1:]):
        raise RemoteProtocolError(Code.WRAP_MISMATCH, "the key wrap is for other documents")
    expected = (record.doc, record.recipient, wrap.signer, record.purpose, record.grant, record.docs)
    opened = _open_secret(record.sealed, keys, expected)
    found = {record.doc: opened.key}
    found.update(zip(opened.secret.docs or (), opened.secret.keys or (), strict=True))
    return found


def unwrap_key(
    wrap: Signed[KeyWrap], *, recipient: str, keys: EncryptionKeyPair, doc: bytes | None = None
) -> UnwrappedKey:
    """Open a verified key wrap addressed to ``recipient``.

    Args:
        wrap: a wrap opened with :func:`fedrecord.core.signed.open_record`.
        recipient: our own did.
        keys: the encryption key pair the wrap names.
        doc: the document we asked for; the wrap must be for it.

    Raises:
        RemoteProtocolError: ``wrap-mismatch`` when the wrap is for someone or
            something else, or its sealed binding disagrees with its outer record.
        AuthenticationError: ``decrypt-failed`` when the sealed box does not open.
    """
    record = wrap.record
    if record.recipient != recipient or record.recipient_key != keys.public_key:
        raise RemoteProtocolError(Code.WRAP_MISMATCH, "the key wrap is addressed to another reader or key")
    if doc is not None and record.doc != doc:
        raise RemoteProtocolError(Code.WRAP_MISMATCH, "the key wrap is for another document")
    if record.docs is not None:
        raise RemoteProtocolError(Code.WRAP_MISMATCH, "the key wrap carries several documents' keys")
    expected = (record.doc, record.recipient, wrap.signer, record.purpose, record.grant, None)
    return _open_secret(record.sealed, keys, expected)


def make_deposit(
    *,
    depositor: SigningIdentity,
    patient: str,
    patient_key: bytes,
    doc: bytes,
    size: int,
    key: bytes,
    grant: bytes,
    iat: int,
    ephemeral_seed: bytes,
) -> Signed[Deposit]:
    """Offer document ``doc`` to ``patient``'s inbox, its key sealed to the patient (US-3).

    ``grant`` is the id of the deposit-only grant the patient gave the depositor.
    """
    secret = WrapSecret(
        key=key, doc=doc, recipient=patient, wrapper=depositor.did, purpose=DEPOSIT_PURPOSE, grant=grant
    )
    sealed = seal(cbor.encode(secret.to_wire()), patient_key, ephemeral_seed)
    deposit = Deposit(
        patient=patient, doc=doc, size=size, recipient_key=patient_key, sealed=sealed, grant=grant, iat=iat
    )
    return sign_record(deposit, depositor)


def open_deposit_key(deposit: Signed[Deposit], *, patient: str, keys: EncryptionKeyPair) -> UnwrappedKey:
    """The document key of a verified deposit addressed to ``patient``.

    Raises:
        RemoteProtocolError: ``wrap-mismatch``, as :func:`unwrap_key`.
        AuthenticationError: ``decrypt-failed``.
    """
    record = deposit.record
    if record.patient != patient or record.recipient_key != keys.public_key:
        raise RemoteProtocolError(Code.WRAP_MISMATCH, "the deposit is addressed to another patient or key")
    expected = (record.doc, patient, deposit.signer, DEPOSIT_PURPOSE, record.grant, None)
    return _open_secret(record.sealed, keys, expected)


def _open_secret(
    sealed: bytes,
    keys: EncryptionKeyPair,
    expected: tuple[bytes, str, str, str, bytes | None, tuple[bytes, ...] | None],
) -> UnwrappedKey:
    plaintext = open_sealed(sealed, keys)
    try:
        payload = cbor.decode(plaintext)
        if not isinstance(payload, dict):
            raise RemoteProtocolError(Code.INVALID_RECORD, "a sealed key is a map")
        secret = WrapSecret.from_wire(payload)
    except RemoteProtocolError as exc:
        # The wrapper sealed garbage: authentic, but not a key we can use.
        raise RemoteProtocolError(
            Code.WRAP_MISMATCH, f"sealed key binding unreadable ({exc.code.value})"
        ) from None
    bound = (secret.doc, secret.recipient, secret.wrapper, secret.purpose, secret.grant, secret.docs)
    if bound != expected:
        raise RemoteProtocolError(Code.WRAP_MISMATCH, "the sealed binding does not match the wrap")
    return UnwrappedKey(key=secret.key, secret=secret)
