"""Signed records: the recipe layer over COSE_Sign1 (spec section 5).

A record is signed as a tagged COSE_Sign1 whose protected header holds exactly
``alg`` (EdDSA), ``kid`` (the signer's did:key as UTF-8) and ``typ`` (the
record type), and whose unprotected header is empty.  The checks run in the
order of spec [SIG-11], so every implementation reports the same code for the
same bytes: decoding, tag and shape, algorithm, unprotected header, protected
header keys, typ is text, kid is bytes, signer key, signature, expected record
type, payload decoding, protocol version, payload fields.

A record's id is SHA-256 over a domain tag and the Sig_structure (the bytes
that were signed), not over the signature (spec [SIG-10]).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeVar

from . import cbor
from .cose import (
    ALG_EDDSA,
    HEADER_ALG,
    HEADER_KID,
    HEADER_TYP,
    parse_general_sign1,
    record_shaped,
    sig_structure,
    sign1,
)
from .errors import Code, RemoteProtocolError
from .identity import SigningIdentity, public_key_from_did, verify_ed25519
from .records import RECORD_CLASSES, Record, RecordType
from .schema import SUPPORTED_VERSIONS

__all__ = ["Signed", "RECORD_ID_DOMAIN", "record_id", "sign_record", "open_record", "open_any_record", "reopen_record"]

RECORD_ID_DOMAIN: Final = b"fedrecord/v0/record-id"
_HEADER_KEYS: Final = frozenset((HEADER_ALG, HEADER_KID, HEADER_TYP))

R = TypeVar("R", bound=Record)


def record_id(to_be_signed: bytes) -> bytes:
    """SHA-256(domain tag || Sig_structure): the id of the record signed over these bytes."""
    return hashlib.sha256(RECORD_ID_DOMAIN + to_be_signed).digest()


@dataclass(frozen=True, kw_only=True)
class Signed(Generic[R]):
    """A record together with its signer, id and the exact bytes it arrived as.

    Keep ``encoded`` and forward it unchanged: signatures are only ever
    checked over received bytes, never over a re-encoding.
    """

    record: R
    signer: str
    id: bytes
    encoded: bytes


def sign_record(record: R, identity: SigningIdentity) -> Signed[R]:
    """Sign ``record`` as ``identity``.

    Raises:
        LocalProtocolError: if the record cannot be encoded.
    """
    protected = {HEADER_ALG: ALG_EDDSA, HEADER_KID: identity.did.encode(), HEADER_TYP: record.TYPE.value}
    payload = cbor.encode(record.to_wire())
    encoded = sign1(identity, protected, payload)
    to_be_signed = sig_structure(cbor.encode(protected, int_keys=True), payload)
    return Signed(record=record, signer=identity.did, id=record_id(to_be_signed), encoded=encoded)


def open_record(data: bytes, expected: type[R], *, max_size: int = cbor.MAX_RECORD_SIZE) -> Signed[R]:
    """Decode and verify a signed record of type ``expected``.

    Raises:
        RemoteProtocolError: the code of the first rule broken (decoding
            codes, ``bad-header``, ``unsupported-algorithm``, ``wrong-type``,
            ``bad-key``, ``unsupported-version``, ``invalid-record``).
        AuthenticationError: ``bad-signature``.
    """
    data = _as_bytes(data)
    typ, signer, payload, to_be_signed = _verified_parts(data, max_size)
    if typ != expected.TYPE:
        raise RemoteProtocolError(Code.WRONG_TYPE, f"expected {expected.TYPE.value}, got {typ!r}")
    return _finish(expected, signer, payload, to_be_signed, data)


def reopen_record(data: bytes, expected: type[R], *, max_size: int = cbor.MAX_RECORD_SIZE) -> Signed[R]:
    """Decode a record that was verified before, as :func:`open_record` does but for its signature.

    Only for bytes this node verified when it stored them, and read back
    where a signature would protect nothing: records passed on to a peer
    (who verifies them itself) or read for their ids and dates.  Anything
    that decides what someone may do opens with :func:`open_record`.

    Raises:
        RemoteProtocolError: as :func:`open_record`, but never ``bad-signature``.
    """
    data = _as_bytes(data)
    typ, signer, payload, to_be_signed = _parts(data, max_size)
    if typ != expected.TYPE:
        raise RemoteProtocolError(Code.WRONG_TYPE, f"expected {expected.TYPE.value}, got {typ!r}")
    return _finish(expected, signer, payload, to_be_signed, data)


def open_any_record(data: bytes, *, max_size: int = cbor.MAX_RECORD_SIZE) -> Signed[Record]:
    """Decode and verify a signed record of any known type.

    Raises:
        RemoteProtocolError: as :func:`open_record`; ``wrong-type`` for an unknown type.
    """
    data = _as_bytes(data)
    typ, signer, payload, to_be_signed = _verified_parts(data, max_size)
    try:
        cls = RECORD_CLASSES[RecordType(typ)]
    except ValueError:
        raise RemoteProtocolError(Code.WRONG_TYPE, f"unknown record type {typ!r}") from None
    return _finish(cls, signer, payload, to_be_signed, data)


def _as_bytes(data: object) -> bytes:
    # A record comes from a peer's CBOR field, which may hold any type: bytes(5) would be five zero
    # bytes, bytes(2**40) a huge allocation, bytes("x") a TypeError (a 500 in a server).
    if type(data) is bytes:
        return data
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    raise RemoteProtocolError(Code.MALFORMED, "a signed record is a byte string")


def _verified_parts(data: bytes, max_size: int) -> tuple[Any, str, bytes, bytes]:
    return _parts(data, max_size, verify=True)


def _parts(data: bytes, max_size: int, *, verify: bool = False) -> tuple[Any, str, bytes, bytes]:
    if len(data) > max_size:
        raise RemoteProtocolError(Code.TOO_LARGE, f"{len(data)} bytes exceeds the cap of {max_size}")
    fast = record_shaped(data)
    if fast is not None:
        # The shape every record has: the header rules below hold by construction.
        _protected, kid, typ, payload, signature, to_be_signed = fast
    else:
        message = parse_general_sign1(data, max_size=max_size)
        if message.unprotected:
            raise RemoteProtocolError(Code.BAD_HEADER, "the unprotected header must be empty")
        if message.protected.keys() != _HEADER_KEYS:
            raise RemoteProtocolError(Code.BAD_HEADER, "the protected header holds exactly alg, kid and typ")
        typ = message.protected[HEADER_TYP]
        if type(typ) is not str:
            raise RemoteProtocolError(Code.WRONG_TYPE, "typ must be a text string")
        kid = message.protected[HEADER_KID]
        if type(kid) is not bytes:
            raise RemoteProtocolError(Code.BAD_HEADER, "kid must be a byte string")
        payload, signature, to_be_signed = message.payload, message.signature, message.to_be_signed
    try:
        signer = kid.decode("ascii")
    except UnicodeDecodeError:
        raise RemoteProtocolError(Code.BAD_KEY, "kid is not a did:key") from None
    public_key = public_key_from_did(signer)
    if verify:
        verify_ed25519(public_key, to_be_signed, signature)
    return typ, signer, payload, to_be_signed


def _finish(cls: type[R], signer: str, payload_bytes: bytes, to_be_signed: bytes, data: bytes) -> Signed[R]:
    payload = cbor.decode(payload_bytes)
    if type(payload) is not dict:
        raise RemoteProtocolError(Code.INVALID_RECORD, "a record payload is a map")
    version = payload.get("v")
    if type(version) is not int or version not in SUPPORTED_VERSIONS:
        raise RemoteProtocolError(Code.UNSUPPORTED_VERSION, f"protocol version {version!r} is not spoken")
    record = cls.from_wire(payload)
    return Signed(record=record, signer=signer, id=record_id(to_be_signed), encoded=data)
