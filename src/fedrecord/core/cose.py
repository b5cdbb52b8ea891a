"""COSE_Sign1 (RFC 9052 section 4) with EdDSA over Ed25519, and nothing else.

This is the primitive layer: it builds and checks the Sig_structure and the
tagged four-element array.  :mod:`fedrecord.core.records` is the recipe layer
that adds the protocol's header rules (signer and record type protected,
unprotected header empty).  Signatures are always verified over the exact
bytes received, never over a re-serialisation (spec [SIG-6]).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
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


def sig_structure(protected: bytes, payload: bytes, external_aad: bytes = b"") -> bytes:
    """The to-be-signed bytes: ``["Signature1", protected, external_aad, payload]``."""
    # Three byte strings and a constant: nothing to check, encode directly.
    return cbor2.dumps([_SIGNATURE1, protected, external_aad, payload])


@dataclass(frozen=True, kw_only=True, eq=False)
class Sign1:
    """A parsed COSE_Sign1 message, headers decoded, signature not yet checked."""

    protected_bytes: bytes
    protected: dict[int, Any]
    unprotected: Mapping[int, Any]
    payload: bytes
    signature: bytes

    @cached_property
    def to_be_signed(self) -> bytes:
        return sig_structure(self.protected_bytes, self.payload)


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
    value = cbor.decode(data, max_size=max_size, allow_sign1_tag=True, int_keys=True)
    if not isinstance(value, cbor2.CBORTag):
        raise RemoteProtocolError(Code.BAD_HEADER, "COSE_Sign1 must carry tag 18")
    message = value.value
    if not (
        isinstance(message, (list, tuple))
        and len(message) == 4
        and isinstance(message[0], bytes)
        and isinstance(message[1], Mapping)
        and isinstance(message[2], bytes)
        and isinstance(message[3], bytes)
    ):
        raise RemoteProtocolError(
            Code.BAD_HEADER, "COSE_Sign1 is [protected bstr, unprotected map, payload bstr, signature bstr]"
        )
    protected_bytes, unprotected, payload, signature = message
    protected = cbor.decode(protected_bytes, int_keys=True) if protected_bytes else {}
    if not isinstance(protected, dict):
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
