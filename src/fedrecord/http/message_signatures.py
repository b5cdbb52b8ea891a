"""Signed node-to-node HTTP messages: RFC 9421 signatures, fedrecord profile (spec/fedrecord.md, section 14).

Requirement ids ``[HTTP-n]`` are those of section 14 of spec/fedrecord.md,
"HTTP message signatures".

Theory of operation
-------------------
Every request from one node to another carries one signature, label ``fr``,
whose covered components and parameters are fixed by the protocol:

* components ``"@method" "@target-uri" "@authority"``, then ``"content-digest"``
  when the request has a (buffered, non-empty) body, or ``"fedrecord-streamed"``
  when the body is streamed ([HTTP-11]);
* parameters ``created``, ``keyid`` (the signer's did:key), ``alg="ed25519"``,
  ``expires`` (created + lifetime, at most 300 s), ``nonce`` and
  ``tag="fedrecord/v0"``.

A streamed body (a document upload or download of any size) is declared with
the covered header ``Fedrecord-Streamed: 1`` and is *not* digested: it is
authenticated by the signed record it travels with and by the STREAM chunks
of spec section 8, so neither side buffers it.  The header being covered
means a signature made for a bodiless request cannot be reused with a body.

An answer that matters (revocation, state head, not-found) is signed by the
answering node, bound to the request it answers (RFC 9421 section 2.4):
``"@status" "content-digest" "@method";req "@target-uri";req
"signature";req;key="fr"``.  A signed answer moved to another request does not
verify.

Work is split between this module and the ``http-message-signatures``
library:

* The library builds the signature base (RFC 9421 section 2.5): it resolves
  every component (``@target-uri`` and ``@authority`` normalisation, ``;req``
  components, dictionary members with ``key``) and serialises
  ``@signature-params`` (section 2.3).  It works on duck-typed message views
  (method, url, headers, status), so it is not tied to any HTTP client; the
  views here are plain data.
* Ed25519 goes through PyNaCl (``SigningIdentity.sign`` and
  ``verify_ed25519``), one verifier in the whole project: signing uses the
  library's ``prepare()``/``apply()`` with the signature computed by our
  identity, and verification passes the library a custom algorithm class
  whose ``verify`` is ``verify_ed25519``.
* Before the library sees a message we parse ``Signature-Input`` and
  ``Signature`` ourselves (with ``http_sf``, the parser the library uses, so
  both read the same structure) and enforce the profile: label, exact
  component list, parameter set, tag, algorithm, did:key, time window.  Two
  reasons: the library reports every failure as one ``InvalidSignature``,
  while the protocol answers with distinct stable codes (``malformed``,
  ``expired``, ``not-yet-valid``, ``bad-key``, ``bad-signature``); and the
  library's verifier reads the wall clock for ``created``/``expires``, while
  fedrecord takes ``now`` as an argument.  Its clock check is switched off
  (``_ClockFreeVerifier``) and ours runs instead.

Replay is not checked here, as this module holds no state: the caller hands
``VerifiedRequest.nonce``/``expires`` to its durable :class:`NonceStore`
after the signature verified (``aiohttp_signing.verified`` does).
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import http_sf
from http_message_signatures import (
    HTTPMessageSigner,
    HTTPMessageVerifier,
    HTTPSignatureAlgorithm,
    MappingKeyResolver,
)
from http_message_signatures.exceptions import HTTPMessageSignaturesException

from fedrecord.core.errors import (
    AuthenticationError,
    Code,
    FedrecordError,
    LocalProtocolError,
    RemoteProtocolError,
)
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
    return http_sf.ser({_SHA256: (hashlib.sha256(body).digest(), {})})


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
        headers: the request's other header fields; none of them is covered,
            but ``Signature``, ``Signature-Input``, ``Content-Digest`` and
            ``Fedrecord-Streamed`` among them are replaced by the result.
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
    view = _Request(method=method, url=url, headers=_fields_without_signatures(headers, added))
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
    parsed = _parse_signature(fields, _REQUEST_PARAMETERS)
    if parsed.components != expected:
        raise AuthenticationError()
    public_key = public_key_from_did(parsed.keyid)
    _check_window(parsed, now=now, max_skew=max_skew)
    view = _Request(method=method, url=url, headers=fields)
    _library_verify(view, keyid=parsed.keyid, public_key=public_key)
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
    _library_verify(view, keyid=parsed.keyid, public_key=public_key)
    check_content_digest(fields, body)


# --------------------------------------------------------------------------------------------------
# Message views handed to the library (its duck-typed message interface).


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


class _PyNaClEd25519(HTTPSignatureAlgorithm):
    """``ed25519`` for the library, verified by ``verify_ed25519`` (PyNaCl) and nothing else.

    Signing does not come through here: the library's ``prepare()`` gives the
    signature base and ``SigningIdentity.sign`` signs it.
    """

    algorithm_id = ALGORITHM

    def __init__(self, public_key: bytes | None = None, private_key: object = None) -> None:
        if public_key is None or private_key is not None:
            raise LocalProtocolError(Code.BAD_KEY, "this class only verifies, with a raw public key")
        self.public_key = public_key

    def sign(self, message: bytes) -> bytes:
        raise LocalProtocolError(Code.BAD_KEY, "sign with SigningIdentity.sign")

    def verify(self, signature: bytes, message: bytes) -> None:
        verify_ed25519(self.public_key, message, signature)


class _ClockFreeVerifier(HTTPMessageVerifier):
    """The library's verifier without its wall-clock window check: ``_check_window`` runs with ``now``."""

    def validate_created_and_expires(self, sig_input: Any, max_age: Any = None) -> None:
        return None


_SIGNER: Final = HTTPMessageSigner(signature_algorithm=_PyNaClEd25519)


def _sign(
    identity: SigningIdentity,
    view: _Request | _Response,
    components: list[str],
    *,
    now: int,
    lifetime: int,
    nonce: str | None,
) -> dict[str, str]:
    """Build the base with the library, sign it with PyNaCl, return Signature-Input and Signature."""
    try:
        prepared = _SIGNER.prepare(
            view,
            key_id=identity.did,
            created=_utc(now),
            expires=_utc(now + lifetime),
            nonce=nonce,
            label=LABEL,
            tag=TAG,
            include_alg=True,
            covered_component_ids=components,
            # We computed the digest ourselves; the library only checks its form.
            use_existing_digest="content-digest" in view.headers,
        )
        _SIGNER.apply(view, prepared, identity.sign(prepared.signature_base))
    except HTTPMessageSignaturesException as exc:
        raise LocalProtocolError(Code.MALFORMED, f"cannot sign this message: {exc}") from exc
    return {"Signature-Input": view.headers["Signature-Input"], "Signature": view.headers["Signature"]}


def _library_verify(view: _Request | _Response, *, keyid: str, public_key: bytes) -> None:
    """Rebuild the signature base with the library and check the signature with verify_ed25519.

    Only called after ``_parse_signature`` accepted the fields, so every
    failure here is an authentication failure, except ``bad-key`` from
    [ID-4] step 4, which is passed through.
    """
    verifier = _ClockFreeVerifier(
        signature_algorithm=_PyNaClEd25519,
        key_resolver=MappingKeyResolver(public_keys={keyid: public_key}, private_keys={}),
    )
    try:
        verifier.verify(view, max_age=None, expect_tag=TAG, expect_label=LABEL)
    except (HTTPMessageSignaturesException, ValueError, TypeError, KeyError, UnicodeError) as exc:
        cause: BaseException | None = exc
        while cause is not None:
            if isinstance(cause, FedrecordError) and cause.code is Code.BAD_KEY:
                raise RemoteProtocolError(Code.BAD_KEY, cause.message) from None
            cause = cause.__cause__ or cause.__context__
        raise AuthenticationError() from None


def _utc(seconds: int) -> datetime.datetime:
    # Conversion only: the library takes datetimes; no clock is read.
    return datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC)


# --------------------------------------------------------------------------------------------------
# Parsing the Signature fields


@dataclass(frozen=True)
class _Parsed:
    components: list[str]
    params: dict[str, object] = field(repr=False)
    keyid: str
    created: int
    expires: int


class _DuplicateKey(ValueError):
    pass


def _refuse_duplicate(key: str, context: str) -> None:
    raise _DuplicateKey(f"duplicate key {key!r} in a {context}")


def _parse_dictionary(value: str) -> dict[str, tuple[Any, dict[str, Any]]]:
    """A Structured Field Dictionary (RFC 8941 section 3.2), duplicate keys refused.

    Raises:
        RemoteProtocolError: ``malformed``.
    """
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
        components.append(http_sf.ser(item))
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
    return _Parsed(components, dict(params), params["keyid"], created, expires)


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
