"""CBOR bodies of the node HTTP API and the invitation code (spec/fedrecord.md, section 15).

Every body is a strict deterministic CBOR map carrying ``v`` (the protocol
version).  Errors are ``{"code": tstr, "message": tstr}`` with the HTTP
status of the code.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

from fedrecord.core import cbor
from fedrecord.core.errors import Code, FedrecordError, RemoteProtocolError
from fedrecord.core.schema import PROTOCOL_VERSION
from fedrecord.http.aiohttp_signing import endpoint_problem

CBOR_TYPE: Final = "application/cbor"
MAX_BODY: Final = 1 << 20  # small CBOR bodies; document streams have their own cap
BATCH_MAX_BYTES: Final = 786_432
"""The streams of one batch fetch add up to at most this (768 KiB): its answer stays a small body (15.21)."""
MAX_DOCUMENT: Final = 4 << 30  # 4 GiB; streams keep every path flat in memory [API-3]
INVITATION_PREFIX: Final = "fr0-"


def api_url(endpoint: str, path: str) -> str:
    """The URL of an API path under a node's base URL: ``path`` appended without the base's trailing ``/``
    (15.1), so ``http://host/`` and ``http://host`` name the same node, and ``https://host/fedrecord``
    serves ``/fedrecord/v0/...``."""
    return endpoint.rstrip("/") + path


def encode_body(**fields: Any) -> bytes:
    return cbor.encode({"v": PROTOCOL_VERSION, **fields})


def decode_body(data: bytes, *required: str, max_size: int = MAX_BODY) -> dict[str, Any]:
    """A request or answer body: strict CBOR map of our version with the ``required`` keys.

    Raises:
        RemoteProtocolError: the decoding code, ``unsupported-version``, or
            ``malformed`` for a missing key.
    """
    body = cbor.decode(data, max_size=max_size)
    if type(body) is not dict:
        raise RemoteProtocolError(Code.MALFORMED, "a body is a CBOR map")
    if type(body.get("v")) is not int or body.get("v") != PROTOCOL_VERSION:
        raise RemoteProtocolError(
            Code.UNSUPPORTED_VERSION, f"protocol version {body.get('v')!r} is not spoken"
        )
    missing = [key for key in required if key not in body]
    if missing:
        raise RemoteProtocolError(Code.MALFORMED, f"body lacks {', '.join(missing)}")
    return body


def checked_endpoint(endpoint: object, what: str = "endpoint") -> str:
    """``endpoint``, once it is a node's base URL ([API-74]).

    Raises:
        RemoteProtocolError: ``malformed`` for anything else (not text, not an
            absolute http(s) URL, a port out of range, a query or fragment).
    """
    if type(endpoint) is not str:
        raise RemoteProtocolError(Code.MALFORMED, f"{what} is text")
    problem = endpoint_problem(endpoint)
    if problem is not None:
        raise RemoteProtocolError(Code.MALFORMED, f"{what} {endpoint[:80]!r}: {problem}")
    return endpoint


def check_profile_endpoints(endpoints: tuple[str, ...]) -> None:
    """Refuse a node profile from another node whose endpoints are not all base URLs ([API-74]).

    Raises:
        RemoteProtocolError: ``malformed``, naming the first that is not.
    """
    for endpoint in endpoints:
        checked_endpoint(endpoint, "the profile's endpoint")


def error_body(error: FedrecordError) -> bytes:
    return cbor.encode({"code": error.code.value, "message": error.message})


def error_fields(data: bytes) -> tuple[Code | None, str | None] | None:
    """The code and message of an error body ([API-5]); None for a body that is not one.

    The code is None when it is text but not a code this node knows, the
    message when it is missing or not text.
    """
    try:
        body = cbor.decode(data)
    except FedrecordError:
        return None
    if type(body) is not dict or type(body.get("code")) is not str:
        return None
    try:
        code: Code | None = Code(body["code"])
    except ValueError:
        code = None
    message = body.get("message")
    return code, message if type(message) is str else None


def read_error(fields: tuple[Code | None, str | None] | None, status: int) -> RemoteProtocolError:
    """The error a peer answered with (its body's :func:`error_fields`), or a generic one when the body is
    unreadable or its code unknown."""
    if fields is None or fields[0] is None or fields[1] is None:
        return RemoteProtocolError(Code.MALFORMED, f"peer answered HTTP {status} without a readable error")
    return RemoteProtocolError(fields[0], fields[1])


@dataclass(frozen=True, kw_only=True)
class StateAnswer:
    """The fields of a ``state-answer`` (a polled state, or one event of the event stream), still encoded.

    Checked for shape only: the receiver opens each record (spec [API-19]).
    """

    head: bytes
    revocations: tuple[bytes, ...]
    tombstones: tuple[bytes, ...]
    grants: tuple[bytes, ...]

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> StateAnswer:
        """The state fields of a decoded body.

        Raises:
            RemoteProtocolError: ``malformed`` for a missing field or one of the wrong type.
        """
        lists = {}
        for key in ("revocations", "tombstones", "grants"):
            value = body.get(key)
            if type(value) is not list or not all(type(item) is bytes for item in value):
                raise RemoteProtocolError(Code.MALFORMED, f"{key} is an array of records")
            lists[key] = tuple(value)
        if type(body.get("head")) is not bytes:
            raise RemoteProtocolError(Code.MALFORMED, "head is a record")
        return cls(head=body["head"], **lists)


@dataclass(frozen=True)
class Invitation:
    """What a clinic needs to connect: the patient node's id and endpoint, a one-time token, an expiry."""

    node: str
    endpoint: str
    token: bytes
    expires: int

    def code(self) -> str:
        raw = cbor.encode(
            {
                "v": PROTOCOL_VERSION,
                "node": self.node,
                "endpoint": self.endpoint,
                "token": self.token,
                "exp": self.expires,
            }
        )
        return INVITATION_PREFIX + base64.urlsafe_b64encode(raw).decode().rstrip("=")

    def url(self) -> str:
        return api_url(self.endpoint, f"/v0/invitation?c={self.code()}")

    @classmethod
    def parse(cls, text: str) -> Invitation:
        """Read an invitation from its text code or its URL.

        Raises:
            RemoteProtocolError: ``malformed`` when it is neither.
        """
        text = text.strip()
        if not text.startswith(INVITATION_PREFIX):
            codes = parse_qs(urlsplit(text).query).get("c", [])
            text = codes[0] if codes else ""
        if not text.startswith(INVITATION_PREFIX):
            raise RemoteProtocolError(Code.MALFORMED, "not a fedrecord invitation code or URL")
        encoded = text[len(INVITATION_PREFIX) :]
        try:
            raw = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
        except ValueError:
            raise RemoteProtocolError(Code.MALFORMED, "invitation code is not base64url") from None
        body = decode_body(raw, "node", "endpoint", "token", "exp")
        if type(body["token"]) is not bytes or len(body["token"]) != 32 or type(body["exp"]) is not int:
            raise RemoteProtocolError(Code.MALFORMED, "invitation fields have the wrong types")
        endpoint = checked_endpoint(body["endpoint"], "the invitation's endpoint")
        return cls(node=str(body["node"]), endpoint=endpoint, token=body["token"], expires=body["exp"])
