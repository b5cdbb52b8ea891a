"""Signed node-to-node HTTP messages: RFC 9421 signatures, fedrecord profile (spec/fedrecord.md, section 14).

Requirement ids ``[HTTP-n]`` are those of section 14 of spec/fedrecord.md,
"HTTP message signatures".

Theory of operation
-------------------
Every request from one node to another carries one signature, label ``fr``,
whose covered components and parameters are fixed by the protocol:

* components ``"@method" "@target-uri" "@authority"``, then ``"content-digest"``
  when the request has a (buffered, non-empty) body, or ``"fedrecord-streamed"``
  when the body is streamed ([HTTP-11]), then ``"range"`` when the request
  carries a ``Range`` field (a resumed fetch, [API-40]);
* parameters ``created``, ``keyid`` (the signer's did:key), ``alg="ed25519"``,
  ``expires`` (created + lifetime, at most 300 s), ``nonce`` and
  ``tag="fedrecord/v0"``.

A streamed body (a document upload or download of any size) is declared with
the covered header ``Fedrecord-Streamed: 1`` and is *not* digested: it is
authenticated by the signed record it travels with and by the STREAM chunks
of spec section 8, so neither side buffers it.  The header being covered
means a signature made for a bodiless request cannot be reused with a body.
A ``Range`` field is covered for the same reason: added, removed or changed on
the path, it makes the signature fail, so nobody between the nodes can make a
node send a document from another offset than the one its requester asked for.

An answer that matters (revocation, state head, not-found) is signed by the
answering node, bound to the request it answers (RFC 9421 section 2.4):
``"@status" "content-digest" "@method";req "@target-uri";req
"signature";req;key="fr"``.  A signed answer moved to another request does not
verify.

The signature base (RFC 9421 section 2.5) is built here, for the components
this profile covers: ``@method``, ``@target-uri``, ``@authority`` (and the
other request-derived components ``@scheme``, ``@path``, ``@query``,
``@request-target``), ``@status``, header fields, ``;req`` components and
dictionary members selected with ``key``; then ``@signature-params``
(section 2.3) is serialised from the parameters.  Signing and verifying share
that one function, and Ed25519 goes through PyNaCl (``SigningIdentity.sign``
and ``verify_ed25519``), one verifier in the whole project.

Why not the ``http-message-signatures`` package, which did this before: its
generality cost about 0.5 ms per signature made or checked (message
adapters, every field parsed two or three times, a prepare/apply round that
builds the base twice), against 0.06 ms for Ed25519 itself, on every
request and signed answer of a node; the profile fixes components and
parameters, so the general resolver added nothing we use.  The base built
here is byte-for-byte the package's for every message the profile signs or
accepts (tests/test_message_signatures.py holds a fixed vector), including
its strict checks: an encoded absolute URL (RFC 3986), upper-case method,
no line breaks or control characters in values, an ASCII base, both
signature fields naming the same well-formed labels.

We parse ``Signature-Input`` and ``Signature`` with ``http_sf`` (RFC 8941)
and enforce the profile: label, exact component list, parameter set, tag,
algorithm, did:key, time window, with the distinct stable codes the protocol
answers with (``malformed``, ``expired``, ``not-yet-valid``, ``bad-key``,
``bad-signature``).  Times are checked against the caller's ``now``; no
clock is read.

Replay is not checked here, as this module holds no state: the caller hands
``VerifiedRequest.nonce``/``expires`` to its durable :class:`NonceStore`
after the signature verified (``aiohttp_signing.verified`` does).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import http_sf
from http_sf.innerlist import ser_item_or_inner_list

from fedrecord.core.errors import AuthenticationError, Code, LocalProtocolError, RemoteProtocolError
from fedrecord.core.identity import SigningIdentity, public_key_from_did, verify_ed25519

__all__ = [
    "LABEL",
    "TAG",
    "ALGORITHM",
    "STREAMED_HEADER",
    "DEFAULT_LIFETIME",
    "MAX_LIFETIME",
    "DEFAULT_MAX_SKEW",
    "REQUEST_COMPONENTS",
    "BODY_COMPONENT",
    "STREAMED_COMPONENT",
    "RANGE_COMPONENT",
    "RESPONSE_COMPONENTS",
    "VerifiedRequest",
    "NonceStore",
    "content_digest",
    "check_content_digest",
    "sign_request",
    "verify_request",
    "sign_response",
    "verify_response",
]

LABEL: Final = "fr"
TAG: Final = "fedrecord/v0"
ALGORITHM: Final = "ed25519"
STREAMED_HEADER: Final = "Fedrecord-Streamed"
DEFAULT_LIFETIME: Final = 60
MAX_LIFETIME: Final = 300
DEFAULT_MAX_SKEW: Final = 30

# Serialised component identifiers, in signing order ([HTTP-4], [HTTP-12]).
REQUEST_COMPONENTS: Final = ('"@method"', '"@target-uri"', '"@authority"')
BODY_COMPONENT: Final = '"content-digest"'
STREAMED_COMPONENT: Final = '"fedrecord-streamed"'
RANGE_COMPONENT: Final = '"range"'
RESPONSE_COMPONENTS: Final = (
    '"@status"',
    '"content-digest"',
    '"@method";req',
    '"@target-uri";req',
    f'"signature";req;key="{LABEL}"',
)

_REQUEST_PARAMETERS: Final = frozenset({"created", "expires", "nonce", "keyid", "alg", "tag"})
_RESPONSE_PARAMETERS: Final = frozenset({"created", "expires", "keyid", "alg", "tag"})
_INTEGER_PARAMETERS: Final = frozenset({"created", "expires"})
# [HTTP-6]: base64url text, at least 128 bits when it is 16 random bytes.
_NONCE: Final = re.compile(r"[A-Za-z0-9_-]{22,64}")
# [HTTP-15]: signature fields are a few hundred bytes; far larger ones are refused before parsing.
_MAX_FIELD: Final = 4096
_SHA256: Final = "sha-256"


@dataclass(frozen=True, kw_only=True)
class VerifiedRequest:
    """What a verified request signature says.

    Attributes:
        signer: the did:key of the node that signed the request.
        nonce: the signed nonce, to be remembered until ``expires`` ([HTTP-10]).
        created: the signed creation time.
        expires: the signed expiry time; the nonce store may forget the nonce after it.
        streamed: the request declared a streamed body (``Fedrecord-Streamed: 1``).
            Its body is NOT covered by the signature: the handler must
            authenticate it through the signed record and STREAM chunks it
            carries, and must refuse a streamed request where it expects none.
    """

    signer: str
    nonce: str
    created: int
    expires: int
    streamed: bool = False


class NonceStore(Protocol):
    """Durable memory of request nonces, per signer, for the replay window ([HTTP-10])."""

    async def remember(self, signer: str, nonce: str, expires: int) -> bool:
        """Record ``(signer, nonce)`` until ``expires``; False if it was already recorded.

        The record must be durable (committed) before True is returned, so that
        a restart does not reopen the window.
        """
        ...


# --------------------------------------------------------------------------------------------------
# Content-Digest (RFC 9530)


def content_digest(body: bytes) -> str:
    """The ``Content-Digest`` field value of ``body``: ``sha-256=:<base64>:`` (RFC 9530)."""
    return f"{_SHA256}=:{base64.b64encode(hashlib.sha256(body).digest()).decode('ascii')}:"


def check_content_digest(headers: Mapping[str, str], body: bytes) -> None:
    """Check that ``Content-Digest`` is exactly one SHA-256 digest, of ``body`` ([HTTP-5]).

    Raises:
        AuthenticationError: ``bad-signature`` when the field is absent,
            unparsable, holds another or a second algorithm, or does not match.
    """
    value = _fields(headers).get("content-digest")
    if value is None or len(value) > _MAX_FIELD:
        raise AuthenticationError()
    try:
        members = _parse_dictionary(value)
    except RemoteProtocolError:
        raise AuthenticationError() from None
    digest = members.get(_SHA256)
    if len(members) != 1 or digest is None or type(digest[0]) is not bytes or digest[1]:
        raise AuthenticationError()
    if not hmac.compare_digest(digest[0], hashlib.sha256(body).digest()):
        raise AuthenticationError()


# --------------------------------------------------------------------------------------------------
# Requests


def sign_request(
    *,
    identity: SigningIdentity,
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes | None,
    now: int,
    nonce: str,
    lifetime: int = DEFAULT_LIFETIME,
    streamed: bool = False,
) -> dict[str, str]:
    """Sign a request as [HTTP-3] and [HTTP-4] say.

    Args:
        identity: the signing node.
        method: the request method, upper case as sent.
        url: the absolute target URI as sent (``scheme://host[:port]/path?query``);
            its authority must equal the ``Host`` header the request carries.
        headers: the request's other header fields; none of them is covered
            but ``Range``, which is when present; ``Signature``,
            ``Signature-Input``, ``Content-Digest`` and ``Fedrecord-Streamed``
            among them are replaced by the result.
        body: the whole body, or None.  A non-empty body is covered by
            ``Content-Digest``; an empty one is the same as None.
        now: the signing time (``created``).
        nonce: fresh random text, base64url, 22 to 64 characters (16 random
            bytes give 22).
        lifetime: ``expires - created``, 1 to 300 seconds.
        streamed: declare a streamed body (``body`` must be None): the header
            ``Fedrecord-Streamed: 1`` is added and covered instead of a digest.

    Returns:
        The header fields to add, replacing case-insensitively any of the same
        name: ``Signature-Input``, ``Signature``, and ``Content-Digest`` or
        ``Fedrecord-Streamed``.

    Raises:
        LocalProtocolError: ``malformed`` for a bad nonce, lifetime, method or
            URL, or a streamed request with a body.
    """
    _check_nonce_local(nonce)
    if not 1 <= lifetime <= MAX_LIFETIME:
        raise LocalProtocolError(Code.MALFORMED, f"signature lifetime must be 1 to {MAX_LIFETIME} seconds")
    if streamed and body is not None:
        raise LocalProtocolError(Code.MALFORMED, "a streamed request is signed without its body")
    added: dict[str, str] = {}
    components = list(REQUEST_COMPONENTS)
    if body:
        added["Content-Digest"] = content_digest(body)
        components.append(BODY_COMPONENT)
    elif streamed:
        added[STREAMED_HEADER] = "1"
        components.append(STREAMED_COMPONENT)
    fields = _fields_without_signatures(headers, added)
    if "range" in fields:
        components.append(RANGE_COMPONENT)
    view = _Request(method=method, url=url, headers=fields)
    return added | _sign(identity, view, components, now=now, lifetime=lifetime, nonce=nonce)


def verify_request(
    *,
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes | None,
    now: int,
    max_skew: int = DEFAULT_MAX_SKEW,
) -> VerifiedRequest:
    """Verify a request's ``fr`` signature as [HTTP-7] says (replay excepted, see [HTTP-10]).

    Args:
        method: the request method as received.
        url: the target URI as the server reconstructs it: its own scheme, the
            ``Host`` header as received, and the request target as received.
        headers: the request's header fields (repeated fields combined or
            presented as repeated items, e.g. a ``CIMultiDict``).
        body: the whole body the handler read, or None if it reads none or
            streams it.  A non-empty body must be covered by a matching
            ``Content-Digest``.  A request declaring ``Fedrecord-Streamed``
            is refused when a body is given, since that body is not covered.
        now: the verifier's current time.
        max_skew: how far ``created`` may be ahead of ``now``, in seconds.

    Returns:
        The signer, nonce and window: the caller must then remember the nonce.

    Raises:
        RemoteProtocolError: ``malformed`` for unparsable ``Signature`` or
            ``Signature-Input`` fields or parameters of the wrong form;
            ``too-large`` for an oversized field; ``bad-key`` for a keyid
            that is not a usable Ed25519 did:key; ``not-yet-valid`` when
            ``created > now + max_skew``; ``expired`` when ``now >= expires``.
        AuthenticationError: ``bad-signature`` for anything else that does
            not authenticate: missing fields or label, other components or
            parameters, wrong tag or algorithm, a lifetime over 300 s, a
            signature or digest that does not verify.
    """
    fields = _fields(headers)
    streamed = _streamed(fields)
    if streamed and body is not None:
        raise AuthenticationError()
    expected = list(REQUEST_COMPONENTS)
    if streamed:
        expected.append(STREAMED_COMPONENT)
    elif body:
        expected.append(BODY_COMPONENT)
    if "range" in fields:
        expected.append(RANGE_COMPONENT)
    parsed = _parse_signature(fields, _REQUEST_PARAMETERS)
    if parsed.components != expected:
        raise AuthenticationError()
    public_key = public_key_from_did(parsed.keyid)
    _check_window(parsed, now=now, max_skew=max_skew)
    view = _Request(method=method, url=url, headers=fields)
    _verify_base(view, parsed, public_key)
    if body:
        check_content_digest(fields, body)
    return VerifiedRequest(
        signer=parsed.keyid,
        nonce=str(parsed.params["nonce"]),
        created=parsed.created,
        expires=parsed.expires,
        streamed=streamed,
    )


# --------------------------------------------------------------------------------------------------
# Responses bound to their request


def sign_response(
    *,
    identity: SigningIdentity,
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    request_method: str,
    request_url: str,
    request_signature: str,
    request_signature_input: str,
    now: int,
    lifetime: int = DEFAULT_LIFETIME,
) -> dict[str, str]:
    """Sign an answer bound to the request it answers ([HTTP-12]).

    Args:
        identity: the answering node.
        status: the HTTP status sent.
        headers: the answer's other header fields (none is covered).
        body: the whole answer body (always digested, even when empty).
        request_method, request_url: the request's method and target URI, as
            given to :func:`verify_request`.
        request_signature, request_signature_input: the request's
            ``Signature`` and ``Signature-Input`` field values; the answer
            covers the request's ``fr`` signature.
        now: the signing time.
        lifetime: ``expires - created``, 1 to 300 seconds.

    Returns:
        ``Content-Digest``, ``Signature-Input`` and ``Signature`` to add.

    Raises:
        LocalProtocolError: ``malformed`` when the request fields hold no
            ``fr`` signature or the request or status is not signable.
    """
    if not 1 <= lifetime <= MAX_LIFETIME:
        raise LocalProtocolError(Code.MALFORMED, f"signature lifetime must be 1 to {MAX_LIFETIME} seconds")
    if not 100 <= status <= 999:
        raise LocalProtocolError(Code.MALFORMED, "an HTTP status has three digits")
    added = {"Content-Digest": content_digest(body)}
    request = _Request(
        method=request_method,
        url=request_url,
        headers={"signature-input": request_signature_input, "signature": request_signature},
    )
    view = _Response(status_code=status, headers=_fields_without_signatures(headers, added), request=request)
    return added | _sign(identity, view, list(RESPONSE_COMPONENTS), now=now, lifetime=lifetime, nonce=None)


def verify_response(
    *,
    expected_signer: str,
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    request_method: str,
    request_url: str,
    request_headers: Mapping[str, str],
    now: int,
    max_skew: int = DEFAULT_MAX_SKEW,
) -> None:
    """Verify that ``expected_signer`` signed this answer to this request ([HTTP-13]).

    Args:
        expected_signer: the did:key of the node the request was sent to.
        status, headers, body: the answer as received (the whole body).
        request_method, request_url, request_headers: the request as sent,
            including the ``Signature`` fields :func:`sign_request` returned.
        now: the verifier's current time.
        max_skew: how far ``created`` may be ahead of ``now``, in seconds.

    Raises:
        RemoteProtocolError: ``malformed``, ``too-large``, ``bad-key``,
            ``not-yet-valid``, ``expired`` as for :func:`verify_request`.
        AuthenticationError: ``bad-signature`` when the answer is unsigned,
            signed by another node, bound to another request, or altered.
    """
    fields = _fields(headers)
    parsed = _parse_signature(fields, _RESPONSE_PARAMETERS)
    if parsed.components != list(RESPONSE_COMPONENTS):
        raise AuthenticationError()
    public_key = public_key_from_did(parsed.keyid)
    if not hmac.compare_digest(parsed.keyid.encode(), expected_signer.encode()):
        raise AuthenticationError()
    _check_window(parsed, now=now, max_skew=max_skew)
    request = _Request(method=request_method, url=request_url, headers=_fields(request_headers))
    view = _Response(status_code=status, headers=fields, request=request)
    _verify_base(view, parsed, public_key)
    check_content_digest(fields, body)


# --------------------------------------------------------------------------------------------------
# The signature base (RFC 9421 section 2.5), built here for the profile's components.


@dataclass
class _Request:
    method: str
    url: str
    headers: dict[str, str]


@dataclass
class _Response:
    status_code: int
    headers: dict[str, str]
    request: _Request


class _PyNaClEd25519:
    """The profile's one algorithm: its ``alg`` name; signing is ``SigningIdentity.sign``, checking ``verify_ed25519``."""

    algorithm_id = ALGORITHM


class _BaseError(ValueError):
    """A component cannot be resolved or the base cannot be serialised (callers map it to their codes)."""


# RFC 3986 as the base needs it: an ASCII, absolute, encoded URL with a host; spelling kept as given.
_UNRESERVED: Final = r"A-Za-z0-9._~\-"
_URL_CHARS: Final = _UNRESERVED + r"!$&'()*+,;="
_PCT: Final = r"%[0-9A-Fa-f]{2}"
_IPV6: Final = rf"[0-9A-Fa-f:.]+(?:%25(?:[{_UNRESERVED}]|{_PCT})+)?"
# Runs of plain characters are taken whole and never given back (possessive ``++``, ``*+``): no
# class holds ``%`` nor the character that ends its part, so nothing is matched differently, and a
# URL with a long path is matched in one step per run instead of one per character.
_URL: Final = re.compile(
    r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*)://"
    rf"(?:(?:[{_URL_CHARS}:]++|{_PCT})*+@)?"
    rf"(?P<host>\[(?:{_IPV6}|[vV][0-9A-Fa-f]+\.[{_URL_CHARS}:]+)\]|(?:[{_URL_CHARS}]++|{_PCT})++)"
    r"(?::(?P<port>[0-9]*))?"
    rf"(?P<path>/(?:[{_URL_CHARS}:@/]++|{_PCT})*+)?"
    rf"(?:\?(?P<query>(?:[{_URL_CHARS}:@/?]++|{_PCT})*+))?"
    rf"(?:\#(?:[{_URL_CHARS}:@/?]++|{_PCT})*+)?"
)
_DEFAULT_PORTS: Final = {"http": "80", "https": "443"}
_SF_STRING: Final = re.compile(r"[\x20-\x7e]*")
_SF_INTEGER_MAX: Final = 999_999_999_999_999
_PLAIN_COMPONENT: Final = re.compile(r"[a-z0-9@._-]*")
_CANONICAL_SIGNATURE: Final = re.compile(r"([a-z*][a-z0-9_.*-]*)=:([A-Za-z0-9+/]*={0,2}):")


@functools.lru_cache(maxsize=64)
def _component(identifier: str) -> tuple[str, str, tuple[tuple[str, Any], ...]]:
    """A covered component identifier: (its serialisation, name, parameters)."""
    text = identifier if identifier.startswith('"') else http_sf.ser(identifier)
    try:
        parsed: Any = http_sf.parse(text.encode("ascii"), tltype="item")
        name, params = parsed
    except (ValueError, UnicodeError, TypeError) as exc:
        raise _BaseError(f"bad component identifier {identifier!r}") from exc
    if type(name) is not str or name != name.lower():
        raise _BaseError("component names are lower-case structured-field strings")
    return http_sf.ser((name, params)), name, tuple(params.items())


def _sf_string(value: str) -> str:
    if not _SF_STRING.fullmatch(value):
        raise _BaseError("a signature parameter string is printable ASCII")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _signature_params(components: list[str], params: Mapping[str, object]) -> str:
    """``@signature-params`` (RFC 9421 section 2.3): the inner list of components with its parameters."""
    text = "(" + " ".join(_component(c)[0] for c in components) + ")"
    for name, value in params.items():
        if name in _INTEGER_PARAMETERS:
            if type(value) is not int or not -_SF_INTEGER_MAX <= value <= _SF_INTEGER_MAX:
                raise _BaseError(f"signature parameter {name} is a structured-field integer")
            text += f";{name}={value}"
        elif type(value) is str:
            text += f";{name}={_sf_string(value)}"
        else:
            raise _BaseError(f"signature parameter {name} is a structured-field string")
    return text


def _field_value(headers: Mapping[str, str], name: str) -> str:
    value = headers.get(name)
    if value is None:
        raise _BaseError(f"covered field {name!r} is not in the message")
    # RFC 9421 section 2.1: obsolete line folding unfolded, surrounding whitespace trimmed.
    if "\r\n" in value:
        value = re.sub(r"(?:(?<![ \t])[ \t]+)?\r\n[ \t]+", " ", value)
    return value.strip(" \t")


def _dictionary_member(value: str, key: str) -> str:
    """The serialisation of member ``key`` of a Dictionary field (RFC 9421 section 2.1.2)."""
    match = _CANONICAL_SIGNATURE.fullmatch(value)
    if match is not None and match[1] == key:
        # One byte-sequence member in canonical base64: its serialisation is itself.
        try:
            canonical = base64.b64encode(base64.b64decode(match[2], validate=True)).decode() == match[2]
        except ValueError:
            canonical = False
        if canonical:
            return f":{match[2]}:"
    try:
        members = http_sf.parse(value.encode("ascii"), tltype="dictionary")
    except (ValueError, UnicodeError) as exc:
        raise _BaseError("a covered field is not a structured-field dictionary") from exc
    if not isinstance(members, dict) or key not in members:
        raise _BaseError(f"a covered dictionary has no member {key!r}")
    return ser_item_or_inner_list(members[key])


@functools.lru_cache(maxsize=256)  # a request's URL is taken apart once for all its derived components
def _url_parts(url: str) -> re.Match[str]:
    match = _URL.fullmatch(url)
    if match is None:
        raise _BaseError("not an encoded absolute URL with a host")
    host = match["host"]
    if host.startswith("[") and host[1] not in "vV":
        try:
            ipaddress.IPv6Address(host[1:-1].partition("%25")[0])
        except ValueError as exc:
            raise _BaseError("invalid IPv6 address") from exc
    return match


def _derived(view: _Request, name: str) -> str:
    """A derived component of a request (RFC 9421 section 2.2)."""
    url = _url_parts(view.url)
    authority = url["host"] if url["port"] is None else f"{url['host']}:{url['port']}"
    path = url["path"] or ""
    query = "" if url["query"] is None else "?" + url["query"]
    if name == "@method":
        return view.method
    if name == "@target-uri":
        return f"{url['scheme']}://{authority}{path if view.method == 'OPTIONS' else path or '/'}{query}"
    if name == "@authority":
        port = url["port"]
        if port and port.lstrip("0") == _DEFAULT_PORTS.get(url["scheme"].lower()):
            port = None
        return f"{url['host'].lower()}:{port}" if port else url["host"].lower()
    if name == "@scheme":
        return url["scheme"].lower()
    if name == "@path":
        return path or "/"
    if name == "@query":
        return "?" + (url["query"] or "")
    if name == "@request-target":
        return authority if view.method == "CONNECT" else (path or "/") + query
    raise _BaseError(f"unsupported derived component {name}")


def _resolve(view: _Request | _Response, name: str, params: dict[str, Any]) -> str:
    if "req" in params:
        # RFC 9421 section 2.4: a component of the request the answer is bound to.
        if params.pop("req") is not True or not isinstance(view, _Response):
            raise _BaseError('"req" is a flag, and only in an answer')
        return _resolve(view.request, name, params)
    if name.startswith("@"):
        if params:
            raise _BaseError(f"unsupported parameters on {name}")
        if isinstance(view, _Response):
            if name != "@status":
                raise _BaseError(f'"{name}" needs "req" in an answer')
            return str(view.status_code)
        if name == "@status":
            raise _BaseError('"@status" is a component of answers')
        return _derived(view, name)
    value = _field_value(view.headers, name)
    if not params:
        return value
    key = params.pop("key", None)
    if params or type(key) is not str:
        raise _BaseError(f"unsupported parameters on covered field {name!r}")
    return _dictionary_member(value, key)


def _signature_base(view: _Request | _Response, components: list[str], params: Mapping[str, object]) -> bytes:
    """The signature base of ``view`` over ``components`` with ``params`` (RFC 9421 section 2.5).

    Raises:
        _BaseError: a component cannot be resolved, repeats, or has a value a base cannot hold.
    """
    request = view.request if isinstance(view, _Response) else view
    if not isinstance(request.method, str) or request.method != request.method.upper():
        raise _BaseError("an HTTP method is upper case")
    if isinstance(view, _Request):
        _url_parts(view.url)
    lines = []
    seen = set()
    for identifier in components:
        serialised, name, parameters = _component(identifier)
        identity = (name, frozenset(parameters))
        if identity in seen:
            raise _BaseError(f"component {serialised} is covered twice")
        seen.add(identity)
        value = _resolve(view, name, dict(parameters))
        if "\r" in value or "\n" in value:
            raise _BaseError(f"the value of {serialised} holds a line break")
        if name.startswith("@"):
            if value and (not value.isprintable() or value[0] == " " or value[-1] == " "):
                raise _BaseError(f"the value of {serialised} is not printable without surrounding spaces")
        elif value and not value.replace("\t", " ").isprintable():
            raise _BaseError(f"the value of {serialised} holds control characters")
        lines.append(f"{serialised}: {value}")
    lines.append(f'"@signature-params": {_signature_params(components, params)}')
    base = "\n".join(lines)
    if not base.isascii():
        raise _BaseError("a signature base is ASCII")
    return base.encode("ascii")


def _sign(
    identity: SigningIdentity,
    view: _Request | _Response,
    components: list[str],
    *,
    now: int,
    lifetime: int,
    nonce: str | None,
) -> dict[str, str]:
    """Build the base, sign it with PyNaCl, return Signature-Input and Signature."""
    params: dict[str, object] = {
        "created": now,
        "keyid": identity.did,
        "alg": _PyNaClEd25519.algorithm_id,
        "expires": now + lifetime,
    }
    if nonce is not None:
        params["nonce"] = nonce
    params["tag"] = TAG
    try:
        base = _signature_base(view, components, params)
        signature_input = _signature_params(components, params)
    except _BaseError as exc:
        raise LocalProtocolError(Code.MALFORMED, f"cannot sign this message: {exc}") from exc
    signature = base64.b64encode(identity.sign(base)).decode("ascii")
    return {"Signature-Input": f"{LABEL}={signature_input}", "Signature": f"{LABEL}=:{signature}:"}


def _verify_base(view: _Request | _Response, parsed: _Parsed, public_key: bytes) -> None:
    """Rebuild the signature base from what was received and check the signature with verify_ed25519.

    Only called after ``_parse_signature`` accepted the fields, so every
    failure here is an authentication failure, except ``bad-key`` from
    [ID-4] step 4 (raised by ``verify_ed25519`` as a RemoteProtocolError).
    """
    if not parsed.others_valid:
        raise AuthenticationError()
    try:
        base = _signature_base(view, parsed.components, parsed.params)
    except _BaseError:
        raise AuthenticationError() from None
    verify_ed25519(public_key, base, parsed.signature)


# --------------------------------------------------------------------------------------------------
# Parsing the Signature fields


@dataclass(frozen=True)
class _Parsed:
    components: list[str]
    params: dict[str, object] = field(repr=False)
    keyid: str
    created: int
    expires: int
    signature: bytes = field(repr=False)
    # Every label of both fields is well formed and both fields name the same labels (RFC 9421
    # section 3.2 step 1); checked where the signature is, after the profile's own codes.
    others_valid: bool


class _DuplicateKey(ValueError):
    pass


def _refuse_duplicate(key: str, context: str) -> None:
    raise _DuplicateKey(f"duplicate key {key!r} in a {context}")


# The shapes signature fields take in practice, read without the general parser: members that are a
# canonical base64 byte sequence, or an inner list of plain strings with integer or plain-string
# parameters, separated by ", ".  An item of the list may carry boolean or plain-string parameters
# (a signed answer's ``"@method";req`` and ``"signature";req;key="fr"``).  Anything else (or any
# duplicate key) goes to http_sf, which gives the same structure for these shapes and the refusals
# for the rest.
_FAST_KEY: Final = r"[a-z*][a-z0-9_.*-]*"
_FAST_BARE: Final = r'-?[0-9]{1,15}|"[\x20\x21\x23-\x5b\x5d-\x7e]*"'
_FAST_ITEM: Final = rf'"[a-z0-9@._-]*"(?:;{_FAST_KEY}(?:="[a-z0-9@._-]*")?)*'
_FAST_MEMBER: Final = re.compile(
    rf"({_FAST_KEY})=(?::([A-Za-z0-9+/]*={{0,2}}):"
    rf"|\(((?:{_FAST_ITEM}(?: {_FAST_ITEM})*)?)\)((?:;{_FAST_KEY}=(?:{_FAST_BARE}))*))"
    r"(?:, |$)"
)
_FAST_PARAM: Final = re.compile(rf";({_FAST_KEY})=({_FAST_BARE})")
_FAST_ITEM_PARAM: Final = re.compile(rf';({_FAST_KEY})(?:="([a-z0-9@._-]*)")?')


def _fast_dictionary(value: str) -> dict[str, tuple[Any, dict[str, Any]]] | None:
    members: dict[str, tuple[Any, dict[str, Any]]] = {}
    position = 0
    while position < len(value):
        match = _FAST_MEMBER.match(value, position)
        if match is None or match[1] in members or (match.end() == len(value) and value.endswith(" ")):
            return None
        position = match.end()
        if match[2] is not None:
            try:
                raw = base64.b64decode(match[2], validate=True)
            except ValueError:
                return None
            if base64.b64encode(raw).decode("ascii") != match[2]:
                return None
            members[match[1]] = (raw, {})
            continue
        items: list[tuple[str, dict[str, Any]]] = []
        for text in match[3].split(" ") if match[3] else ():
            name, _, rest = text[1:].partition('"')
            item_params: dict[str, Any] = {}
            for param in _FAST_ITEM_PARAM.finditer(rest):
                if param[1] in item_params:
                    return None
                item_params[param[1]] = True if param[2] is None else param[2]
            items.append((name, item_params))
        params: dict[str, Any] = {}
        for param in _FAST_PARAM.finditer(match[4]):
            if param[1] in params:
                return None
            bare = param[2]
            params[param[1]] = bare[1:-1] if bare.startswith('"') else int(bare)
        members[match[1]] = (items, params)
    return members if members else None


def _parse_dictionary(value: str) -> dict[str, tuple[Any, dict[str, Any]]]:
    """A Structured Field Dictionary (RFC 8941 section 3.2), duplicate keys refused.

    Raises:
        RemoteProtocolError: ``malformed``.
    """
    fast = _fast_dictionary(value)
    if fast is not None:
        return fast
    try:
        parsed = http_sf.parse(value.encode("ascii"), tltype="dictionary", on_duplicate_key=_refuse_duplicate)
    except (ValueError, UnicodeError) as exc:  # StructuredFieldError is a ValueError
        raise RemoteProtocolError(Code.MALFORMED, "not a structured-field dictionary") from exc
    if not isinstance(parsed, dict):
        raise RemoteProtocolError(Code.MALFORMED, "not a structured-field dictionary")
    members: dict[str, tuple[Any, dict[str, Any]]] = {}
    for key, member in parsed.items():
        if not (isinstance(member, tuple) and len(member) == 2 and isinstance(member[1], dict)):
            raise RemoteProtocolError(Code.MALFORMED, "unexpected structured-field member")
        members[key] = (member[0], member[1])
    return members


def _ser_component(item: tuple[str, Any]) -> str:
    if not item[1] and _PLAIN_COMPONENT.fullmatch(item[0]):
        return f'"{item[0]}"'
    return http_sf.ser(item)


def _parse_signature(fields: Mapping[str, str], parameter_names: frozenset[str]) -> _Parsed:
    """Read the ``fr`` member of Signature-Input and Signature and check the profile ([HTTP-7] steps 1 to 5).

    Raises:
        RemoteProtocolError: ``too-large``, ``malformed``.
        AuthenticationError: fields or label missing, parameter set, algorithm
            or tag other than the profile's, lifetime out of bounds.
    """
    signature_input = fields.get("signature-input")
    signature = fields.get("signature")
    if signature_input is None or signature is None:
        raise AuthenticationError()
    if len(signature_input) > _MAX_FIELD or len(signature) > _MAX_FIELD:
        raise RemoteProtocolError(Code.TOO_LARGE, "Signature or Signature-Input field too long")
    inputs = _parse_dictionary(signature_input)
    signatures = _parse_dictionary(signature)
    if LABEL not in inputs or LABEL not in signatures:
        raise AuthenticationError()
    items, params = inputs[LABEL]
    if not isinstance(items, list):
        raise RemoteProtocolError(Code.MALFORMED, "a Signature-Input member is an inner list")
    components = []
    for item in items:
        if not (isinstance(item, tuple) and len(item) == 2 and type(item[0]) is str):
            raise RemoteProtocolError(Code.MALFORMED, "a covered component is a structured-field string")
        components.append(_ser_component(item))
    signature_value, signature_params = signatures[LABEL]
    if type(signature_value) is not bytes or signature_params:
        raise RemoteProtocolError(Code.MALFORMED, "a Signature member is a byte sequence")
    # Form first (malformed), then the profile (bad-signature).
    for name, value in params.items():
        expected_type = int if name in _INTEGER_PARAMETERS else str
        if name in parameter_names and type(value) is not expected_type:
            raise RemoteProtocolError(Code.MALFORMED, f"signature parameter {name} has the wrong type")
        if name in _INTEGER_PARAMETERS and name in parameter_names and value < 0:
            raise RemoteProtocolError(Code.MALFORMED, "signature times are non-negative")
    if "nonce" in parameter_names and "nonce" in params and not _NONCE.fullmatch(params["nonce"]):
        raise RemoteProtocolError(Code.MALFORMED, "a nonce is 22 to 64 base64url characters")
    if set(params) != parameter_names:
        raise AuthenticationError()
    if params["alg"] != ALGORITHM or params["tag"] != TAG:
        raise AuthenticationError()
    created, expires = params["created"], params["expires"]
    if not 0 < expires - created <= MAX_LIFETIME:
        raise AuthenticationError()
    others_valid = inputs.keys() == signatures.keys() and all(
        isinstance(inputs[label][0], list)
        and type(signatures[label][0]) is bytes
        and _parameter_types_valid(inputs[label][1])
        for label in inputs
    )
    return _Parsed(components, dict(params), params["keyid"], created, expires, signature_value, others_valid)


def _parameter_types_valid(params: Mapping[str, object]) -> bool:
    return all(
        (type(value) is int) if name in _INTEGER_PARAMETERS else isinstance(value, str)
        for name, value in params.items()
        if name in _REQUEST_PARAMETERS
    )


def _check_window(parsed: _Parsed, *, now: int, max_skew: int) -> None:
    """[HTTP-8]: created <= now + max_skew and now < expires."""
    if max_skew < 0:
        raise LocalProtocolError(Code.MALFORMED, "max_skew is not negative")
    if parsed.created > now + max_skew:
        raise RemoteProtocolError(Code.NOT_YET_VALID, "signature created in the future")
    if now >= parsed.expires:
        raise RemoteProtocolError(Code.EXPIRED, "signature expired")


# --------------------------------------------------------------------------------------------------
# Header helpers


def _fields(headers: Mapping[str, str]) -> dict[str, str]:
    """Lower-cased field names; repeated fields combined with ", " in order (RFC 9110 section 5.3)."""
    combined: dict[str, str] = {}
    for name, value in headers.items():
        key = name.lower()
        combined[key] = f"{combined[key]}, {value}" if key in combined else value
    return combined


def _fields_without_signatures(headers: Mapping[str, str], added: Mapping[str, str]) -> dict[str, str]:
    replaced = {"signature", "signature-input", "content-digest", STREAMED_HEADER.lower()}
    fields = {name: value for name, value in _fields(headers).items() if name not in replaced}
    fields.update((name.lower(), value) for name, value in added.items())
    return fields


def _streamed(fields: Mapping[str, str]) -> bool:
    value = fields.get(STREAMED_HEADER.lower())
    if value is None:
        return False
    if value.strip() != "1":
        raise RemoteProtocolError(Code.MALFORMED, f"{STREAMED_HEADER} is 1 when present")
    return True


def _check_nonce_local(nonce: str) -> None:
    if not _NONCE.fullmatch(nonce):
        raise LocalProtocolError(Code.MALFORMED, "a nonce is 22 to 64 base64url characters")
