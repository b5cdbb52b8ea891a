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
from typing import Any, Final

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
    fast = _record_shaped(data)
    if fast is not None:
        return fast
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


def _byte_string(data: bytes, pos: int, major: int = 2) -> tuple[bytes, int] | None:
    """A byte (or text, major 3) string at ``pos`` with a shortest-form head, or None."""
    if pos >= len(data) or data[pos] >> 5 != major:
        return None
    info = data[pos] & 0x1F
    if info < 24:
        length, start = info, pos + 1
    elif info == 24 and pos + 1 < len(data) and data[pos + 1] >= 24:
        length, start = data[pos + 1], pos + 2
    elif info == 25 and pos + 2 < len(data) and data[pos + 1]:
        length, start = int.from_bytes(data[pos + 1 : pos + 3], "big"), pos + 3
    else:
        return None
    end = start + length
    return (data[start:end], end) if end <= len(data) else None


_RECORD_PROTECTED_START: Final = bytes([0xA3, HEADER_ALG, 0x27, HEADER_KID])  # {1: -8, 4: ...


def _record_shaped(data: bytes) -> Sign1 | None:
    """Parse the one shape every signed record has, or None to take the general decoder.

    A tagged COSE_Sign1 with shortest heads, an empty unprotected map and the
    protected header {1: -8, 4: kid, 16: typ}.  Only bytes that the strict
    decoder would accept with exactly this result are accepted here; any
    other input, valid or not, goes through :func:`cbor.decode`, which also
    names the rule an invalid input breaks.  This path exists because every
    record received goes through it (see benchmarks/core.py).
    """
    if data[:2] != b"\xd2\x84":
        return None
    parts = _byte_string(data, 2)
    if parts is None or parts[1] >= len(data) or data[parts[1]] != 0xA0:
        return None
    protected_bytes = parts[0]
    payload_part = _byte_string(data, parts[1] + 1)
    if payload_part is None:
        return None
    signature_part = _byte_string(data, payload_part[1])
    if signature_part is None or signature_part[1] != len(data):
        return None
    if protected_bytes[:4] != _RECORD_PROTECTED_START:
        return None
    kid = _byte_string(protected_bytes, 4)
    if kid is None or kid[1] >= len(protected_bytes) or protected_bytes[kid[1]] != HEADER_TYP:
        return None
    typ = _byte_string(protected_bytes, kid[1] + 1, major=3)
    if typ is None or typ[1] != len(protected_bytes):
        return None
    try:
        typ_text = typ[0].decode("utf-8")
    except UnicodeDecodeError:
        return None
    payload = payload_part[0]
    return Sign1(
        protected_bytes=protected_bytes,
        protected={HEADER_ALG: ALG_EDDSA, HEADER_KID: kid[0], HEADER_TYP: typ_text},
        unprotected={},
        payload=payload,
        signature=signature_part[0],
        to_be_signed=sig_structure(protected_bytes, payload),
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
