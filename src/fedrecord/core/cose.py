"""COSE_Sign1 (RFC 9052 section 4) with EdDSA over Ed25519, and nothing else.

This is the primitive layer: it builds and checks the Sig_structure and the
tagged four-element array.  :mod:`fedrecord.core.records` is the recipe layer
that adds the protocol's header rules (signer and record type protected,
unprotected header empty).  Signatures are always verified over the exact
bytes received, never over a re-serialisation (spec [SIG-8]).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

import cbor2

from . import cbor
from .errors import Code, LocalProtocolError, RemoteProtocolError
from .identity import SigningIdentity, verify_ed25519

__all__ = [
    "ALG_EDDSA",
    "HEADER_ALG",
    "HEADER_CONTENT_TYPE",
    "HEADER_KID",
    "HEADER_TYP",
    "Sign1",
    "sig_structure",
    "sign1",
    "parse_sign1",
    "parse_general_sign1",
    "record_shaped",
    "RecordSign1",
    "verify_signature",
    "verify_with_cose_key",
]

ALG_EDDSA: Final = -8
HEADER_ALG: Final = 1
HEADER_CONTENT_TYPE: Final = 3
HEADER_KID: Final = 4
HEADER_TYP: Final = 16  # RFC 9596 "typ": the type of the whole COSE object
_SIGNATURE1: Final = "Signature1"
# What the strict decoder gives for arrays and maps (cbor2 freezes them inside a tag).
_ARRAY_TYPES: Final = (list, tuple)
_MAP_TYPES: Final = (dict, cbor2.frozendict)


def sig_structure(protected: bytes, payload: bytes, external_aad: bytes = b"") -> bytes:
    """The to-be-signed bytes: ``["Signature1", protected, external_aad, payload]``."""
    # Three byte strings and a constant: nothing to check, encode directly.
    return cbor2.dumps([_SIGNATURE1, protected, external_aad, payload])


@dataclass(frozen=True, kw_only=True)
class Sign1:
    """A parsed COSE_Sign1 message, headers decoded, signature not yet checked."""

    protected_bytes: bytes
    protected: dict[int, Any]
    unprotected: Mapping[int, Any]
    payload: bytes
    signature: bytes
    to_be_signed: bytes


def sign1(
    identity: SigningIdentity,
    protected: dict[int, Any],
    payload: bytes,
    unprotected: Mapping[int, Any] | None = None,
) -> bytes:
    """Sign ``payload`` and return the tagged COSE_Sign1 encoding.

    Raises:
        LocalProtocolError: when the protected header does not name EdDSA.
    """
    if protected.get(HEADER_ALG) != ALG_EDDSA:
        raise LocalProtocolError(Code.UNSUPPORTED_ALGORITHM, "only EdDSA (-8) is supported")
    protected_bytes = cbor.encode(protected, int_keys=True)
    signature = identity.sign(sig_structure(protected_bytes, payload))
    message = [protected_bytes, unprotected or {}, payload, signature]
    return cbor.encode(cbor2.CBORTag(cbor.COSE_SIGN1_TAG, message), int_keys=True)


def parse_sign1(data: bytes, *, max_size: int = cbor.MAX_RECORD_SIZE) -> Sign1:
    """Decode a tagged COSE_Sign1 strictly and check its shape and algorithm.

    Raises:
        RemoteProtocolError: a decoding code; ``bad-header`` for a missing tag,
            a wrong shape or a header that is not a map;
            ``unsupported-algorithm`` when the protected ``alg`` is not EdDSA.
    """
    if len(data) > max_size:
        raise RemoteProtocolError(Code.TOO_LARGE, f"{len(data)} bytes exceeds the cap of {max_size}")
    fast = record_shaped(data)
    if fast is not None:
        protected_bytes, kid, typ, payload, signature, to_be_signed = fast
        return Sign1(
            protected_bytes=protected_bytes,
            protected={HEADER_ALG: ALG_EDDSA, HEADER_KID: kid, HEADER_TYP: typ},
            unprotected={},
            payload=payload,
            signature=signature,
            to_be_signed=to_be_signed,
        )
    return parse_general_sign1(data, max_size=max_size)


def parse_general_sign1(data: bytes, *, max_size: int = cbor.MAX_RECORD_SIZE) -> Sign1:
    """:func:`parse_sign1` through the strict decoder, for bytes :func:`record_shaped` did not take.

    Raises:
        RemoteProtocolError: as :func:`parse_sign1`.
    """
    value = cbor.decode(data, max_size=max_size, allow_sign1_tag=True, int_keys=True)
    if not isinstance(value, cbor2.CBORTag):
        raise RemoteProtocolError(Code.BAD_HEADER, "COSE_Sign1 must carry tag 18")
    message = value.value
    if not (
        type(message) in _ARRAY_TYPES
        and len(message) == 4
        and type(message[0]) is bytes
        and type(message[1]) in _MAP_TYPES
        and type(message[2]) is bytes
        and type(message[3]) is bytes
    ):
        raise RemoteProtocolError(
            Code.BAD_HEADER, "COSE_Sign1 is [protected bstr, unprotected map, payload bstr, signature bstr]"
        )
    protected_bytes, unprotected, payload, signature = message
    protected = cbor.decode(protected_bytes, int_keys=True) if protected_bytes else {}
    if type(protected) is not dict:
        raise RemoteProtocolError(Code.BAD_HEADER, "protected header is not a map")
    if protected.get(HEADER_ALG) != ALG_EDDSA:
        raise RemoteProtocolError(
            Code.UNSUPPORTED_ALGORITHM, f"algorithm {protected.get(HEADER_ALG)!r} is not EdDSA (-8)"
        )
    return Sign1(
        protected_bytes=protected_bytes,
        protected=protected,
        unprotected=unprotected,
        payload=payload,
        signature=signature,
        to_be_signed=sig_structure(protected_bytes, payload),
    )


_BYTES: Final = 0x40  # initial byte of a byte string of length 0; a text string's is 0x60
_TEXT: Final = 0x60


def _string_at(data: bytes, pos: int, end: int, initial: int) -> tuple[int, int] | None:
    """Where the string with a shortest-form head at ``pos`` starts and ends, or None.

    ``initial`` is :data:`_BYTES` or :data:`_TEXT`: the string's major type.
    The string must end by ``end``.
    """
    if pos >= end:
        return None
    info = data[pos] - initial
    if 0 <= info < 24:
        start = pos + 1
        stop = start + info
    elif info == 24:
        # One length byte: below 24 it would fit in the initial byte.
        if pos + 1 >= end or data[pos + 1] < 24:
            return None
        start = pos + 2
        stop = start + data[pos + 1]
    elif info == 25:
        # Two length bytes: with a zero first one it would fit in one.
        if pos + 2 >= end or not data[pos + 1]:
            return None
        start = pos + 3
        stop = start + (data[pos + 1] << 8 | data[pos + 2])
    else:
        return None
    return (start, stop) if stop <= end else None


_RECORD_PROTECTED_START: Final = bytes([0xA3, HEADER_ALG, 0x27, HEADER_KID])  # {1: -8, 4: ...
_SIGN1_START: Final = b"\xd2\x84"  # tag 18, array of four
# What cbor2 writes before the protected header in a Sig_structure: an array of four, "Signature1".
_SIG_STRUCTURE_START: Final = b"\x84\x6a" + _SIGNATURE1.encode()
_EMPTY_MAP: Final = 0xA0
_EMPTY_BYTES: Final = b"\x40"

RecordSign1: TypeAlias = tuple[bytes, bytes, str, bytes, bytes, bytes]
"""protected header bytes, kid, typ, payload, signature, to-be-signed bytes."""


def record_shaped(data: bytes) -> RecordSign1 | None:
    """Parse the one shape every signed record has, or None to take the general decoder.

    A tagged COSE_Sign1 with shortest heads, an empty unprotected map and the
    protected header {1: -8, 4: kid, 16: typ}.  Only bytes that the strict
    decoder would accept with exactly this result are accepted here; any
    other input, valid or not, goes through :func:`parse_general_sign1`,
    which also names the rule an invalid input breaks.  This path exists
    because every record received goes through it (see benchmarks/core.py).

    Returns:
        ``(protected_bytes, kid, typ, payload, signature, to_be_signed)``:
        the protected header is ``{1: -8, 4: kid, 16: typ}``, kid a byte
        string and typ a text string.
    """
    size = len(data)
    if data[:2] != _SIGN1_START:
        return None
    protected = _string_at(data, 2, size, _BYTES)
    if protected is None:
        return None
    protected_start, protected_end = protected
    if protected_end >= size or data[protected_end] != _EMPTY_MAP:
        return None
    payload = _string_at(data, protected_end + 1, size, _BYTES)
    if payload is None:
        return None
    signature = _string_at(data, payload[1], size, _BYTES)
    if signature is None or signature[1] != size:
        return None
    if (
        protected_end - protected_start < 4
        or data[protected_start : protected_start + 4] != _RECORD_PROTECTED_START
    ):
        return None
    kid = _string_at(data, protected_start + 4, protected_end, _BYTES)
    if kid is None or kid[1] >= protected_end or data[kid[1]] != HEADER_TYP:
        return None
    typ = _string_at(data, kid[1] + 1, protected_end, _TEXT)
    if typ is None or typ[1] != protected_end:
        return None
    try:
        typ_text = data[typ[0] : typ[1]].decode("utf-8")
    except UnicodeDecodeError:
        return None
    # The heads were checked to be shortest, as cbor2 writes them: the
    # Sig_structure holds the received protected header and payload, heads
    # included, so it is cut from the received bytes rather than encoded again.
    to_be_signed = (
        _SIG_STRUCTURE_START + data[2:protected_end] + _EMPTY_BYTES + data[protected_end + 1 : payload[1]]
    )
    return (
        data[protected_start:protected_end],
        data[kid[0] : kid[1]],
        typ_text,
        data[payload[0] : payload[1]],
        data[signature[0] : signature[1]],
        to_be_signed,
    )


def verify_signature(message: Sign1, public_key: bytes) -> None:
    """Verify the Ed25519 signature of ``message`` over its exact to-be-signed bytes.

    Raises:
        RemoteProtocolError: ``bad-key`` for a key of small order or not on the curve.
        AuthenticationError: ``bad-signature`` otherwise.
    """
    verify_ed25519(public_key, message.to_be_signed, message.signature)


def verify_with_cose_key(data: bytes, cose_key: dict[str, str]) -> Sign1:
    """Verify a COSE_Sign1 against a JSON-style COSE_Key (``kty``, ``crv``, ``x_hex``).

    Only OKP keys on Ed25519 are accepted; this is how an Ed448 message is
    refused before any signature arithmetic.

    Raises:
        RemoteProtocolError: ``unsupported-algorithm`` for any other key type
            or curve, plus everything :func:`parse_sign1` and
            :func:`verify_signature` raise.
    """
    if cose_key.get("kty") != "OKP" or cose_key.get("crv") != "Ed25519":
        raise RemoteProtocolError(
            Code.UNSUPPORTED_ALGORITHM, f"key type {cose_key.get('kty')}/{cose_key.get('crv')} is not Ed25519"
        )
    message = parse_sign1(data)
    verify_signature(message, bytes.fromhex(cose_key["x_hex"]))
    return message
