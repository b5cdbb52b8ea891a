"""One error hierarchy for the whole protocol, with stable wire codes.

Every failure the core can report is a :class:`FedrecordError` carrying a
``code`` (a short stable string that goes on the wire, spec section "Error
codes") and the HTTP ``status`` an adapter answers with.  Two families, as in
h11:

* :class:`LocalProtocolError` -- *we* misused the API (built an invalid record,
  passed a key of the wrong length).  A bug on our side.
* :class:`RemoteProtocolError` -- the *peer* sent something we refuse (bad
  CBOR, forged signature, revoked grant).  Expected; answered with its code.

Authentication failures (a signature or an AEAD tag that does not verify) are
one opaque error each with no detail, so that a forger learns nothing from the
message: :class:`AuthenticationError`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from typing import Final

__all__ = [
    "Code",
    "FedrecordError",
    "LocalProtocolError",
    "RemoteProtocolError",
    "AuthenticationError",
    "mapped_libsodium_errors",
    "as_remote",
]


class Code(StrEnum):
    """Stable wire error codes.  Values never change once published (spec [ERR-1])."""

    # Decoding (spec section 3, "Strict deterministic CBOR").
    TOO_LARGE = "too-large"
    MALFORMED = "malformed"
    TRAILING_BYTES = "trailing-bytes"
    INDEFINITE_LENGTH = "indefinite-length"
    DUPLICATE_KEY = "duplicate-key"
    NON_CANONICAL = "non-canonical"
    FORBIDDEN_TAG = "forbidden-tag"
    TOO_DEEP = "too-deep"
    UNSUPPORTED_TYPE = "unsupported-type"
    INVALID_MAP_KEY = "invalid-map-key"
    INVALID_UTF8 = "invalid-utf8"
    # Signed records.
    BAD_SIGNATURE = "bad-signature"
    BAD_KEY = "bad-key"
    UNSUPPORTED_ALGORITHM = "unsupported-algorithm"
    BAD_HEADER = "bad-header"
    WRONG_TYPE = "wrong-type"
    INVALID_RECORD = "invalid-record"
    UNSUPPORTED_VERSION = "unsupported-version"
    # Capabilities.
    EXPIRED = "expired"
    NOT_YET_VALID = "not-yet-valid"
    REVOKED = "revoked"
    NOT_PATIENT_ROOT = "not-patient-root"
    BROKEN_CHAIN = "broken-chain"
    NOT_DELEGABLE = "not-delegable"
    WIDENED = "widened"
    WRONG_AUDIENCE = "wrong-audience"
    ACTION_NOT_GRANTED = "action-not-granted"
    OUT_OF_SCOPE = "out-of-scope"
    RESTRICTED = "restricted"
    STALE = "stale"
    ROLLBACK = "rollback"
    # Encryption.
    DECRYPT_FAILED = "decrypt-failed"
    TRUNCATED = "truncated"
    EXTENDED = "extended"
    BAD_COMMITMENT = "bad-commitment"
    WRAP_MISMATCH = "wrap-mismatch"
    # Node level (used by the adapters).
    NOT_FOUND = "not-found"
    REPLAY = "replay"
    TIMEOUT = "timeout"
    TOO_MANY = "too-many"
    BAD_RANGE = "bad-range"
    # A clinic's control endpoint reporting that the peer it had to ask gave no answer ([API-5], [API-63]).
    UNREACHABLE = "unreachable"
    # Reconciliation (spec section 16).
    OUT_OF_ORDER = "out-of-order"


# HTTP status an adapter answers with, per code (spec section "Error codes").
# Capability refusals that would reveal a document's existence are answered
# as not-found by the node, not with these statuses (spec [CAP-12]).
HTTP_STATUS: Final[dict[Code, int]] = {
    Code.TOO_LARGE: 413,
    Code.BAD_SIGNATURE: 401,
    Code.BAD_KEY: 400,
    Code.EXPIRED: 403,
    Code.NOT_YET_VALID: 403,
    Code.REVOKED: 403,
    Code.NOT_PATIENT_ROOT: 403,
    Code.BROKEN_CHAIN: 403,
    Code.NOT_DELEGABLE: 403,
    Code.WIDENED: 403,
    Code.WRONG_AUDIENCE: 403,
    Code.ACTION_NOT_GRANTED: 403,
    Code.OUT_OF_SCOPE: 404,
    Code.RESTRICTED: 404,
    Code.NOT_FOUND: 404,
    Code.STALE: 409,
    Code.ROLLBACK: 409,
    Code.REPLAY: 409,
    Code.TIMEOUT: 408,
    Code.OUT_OF_ORDER: 400,
    Code.TOO_MANY: 429,
    Code.BAD_RANGE: 416,
    Code.UNREACHABLE: 502,
    Code.UNSUPPORTED_VERSION: 400,
}


class FedrecordError(Exception):
    """Root of every error the core raises.

    Attributes:
        code: the stable wire code.
        message: a human-readable explanation (never contains secrets).
        status: the HTTP status an adapter answers with.
    """

    def __init__(self, code: Code, message: str) -> None:
        super().__init__(f"{code.value}: {message}")
        self.code = code
        self.message = message

    @property
    def status(self) -> int:
        return HTTP_STATUS.get(self.code, 400)


class LocalProtocolError(FedrecordError):
    """We asked the core for something invalid (a bug in the caller)."""


class RemoteProtocolError(FedrecordError):
    """The peer sent something the protocol refuses."""


class AuthenticationError(RemoteProtocolError):
    """A signature or AEAD tag did not verify.  Deliberately carries no detail."""

    def __init__(self, code: Code = Code.BAD_SIGNATURE) -> None:
        message = "decryption failed" if code is Code.DECRYPT_FAILED else "signature did not verify"
        super().__init__(code, message)


def as_remote(error: FedrecordError) -> RemoteProtocolError:
    """Re-raise a validation failure found while decoding peer input as the peer's fault."""
    if isinstance(error, RemoteProtocolError):
        return error
    remote = RemoteProtocolError(error.code, error.message)
    remote.__cause__ = error
    return remote


@contextmanager
def mapped_libsodium_errors(code: Code = Code.BAD_KEY) -> Iterator[None]:
    """Turn libsodium's exceptions on invalid points into a protocol error.

    PyNaCl raises ``RuntimeError`` (or its own ``CryptoError``) when a public
    key is a low-order point or otherwise unusable.  Letting that escape
    would become a 500 in a server; the peer gets ``bad-key`` instead.
    """
    from nacl.exceptions import BadSignatureError, CryptoError

    try:
        yield
    except BadSignatureError:
        raise AuthenticationError(Code.BAD_SIGNATURE) from None
    except (RuntimeError, CryptoError) as exc:
        raise RemoteProtocolError(code, "key or point refused by libsodium") from exc
