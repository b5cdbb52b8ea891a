"""aiohttp adapters for signed node-to-node messages (spec/fedrecord.md, section 14).

Thin on purpose: every rule lives in :mod:`fedrecord.http.message_signatures`;
this module only moves method, URL, header fields and body bytes between
aiohttp objects and those pure functions, and holds the one stateful step,
the nonce store call ([HTTP-10]).

The target URI both sides sign is ``scheme://<Host header><request target>``.
The client sets ``Host`` itself (to what aiohttp would send) and signs that
exact URI; the server rebuilds it from its own scheme (``request.url.scheme``,
which a TLS-terminating deployment sets with ``request.clone(scheme=...)``),
the ``Host`` header as received (never ``X-Forwarded-Host`` or ``Forwarded``)
and the raw request target.  The server also refuses a ``Host`` that is not
one of its own authorities, so a request signed for one node cannot be
replayed to another node whose nonce store has not seen it ([HTTP-9]).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterable, Collection, Mapping
from dataclasses import dataclass
from typing import Final

import aiohttp
from aiohttp import hdrs, web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from fedrecord.core.errors import AuthenticationError, Code, LocalProtocolError, RemoteProtocolError
from fedrecord.core.identity import SigningIdentity

from .message_signatures import (
    DEFAULT_LIFETIME,
    DEFAULT_MAX_SKEW,
    STREAMED_HEADER,
    NonceStore,
    VerifiedRequest,
    sign_request,
    sign_response,
    verify_request,
    verify_response,
)

__all__ = [
    "MAX_SIGNED_ANSWER",
    "SignedResponse",
    "SignedClient",
    "client_signing_headers",
    "signed_target_uri",
    "target_uri",
    "verified",
    "signed_response",
    "was_verified",
]

# Signed answers are small CBOR bodies read whole; documents travel as streams.
MAX_SIGNED_ANSWER: Final = 1 << 20
_TARGET_URI: Final = web.RequestKey("fedrecord.target_uri", str)
_DEFAULT_PORTS: Final = {"http": ":80", "https": ":443"}
_SIGNATURE_FIELDS: Final = ("Signature", "Signature-Input", "Content-Digest", STREAMED_HEADER)


# --------------------------------------------------------------------------------------------------
# Server side


def target_uri(
    request: web.Request, *, authorities: Collection[str], tls_authorities: Collection[str] = ()
) -> str:
    """The target URI a signed request was made for, rebuilt from what was received.

    Args:
        request: the incoming request.
        authorities: this node's own ``host[:port]`` names (default ports may
            be written or left out).
        tls_authorities: those of its names that clients reach over TLS through a
            TLS-terminating proxy in front of the node: a request arriving in plain HTTP
            with one of them in ``Host`` was sent as ``https`` ([HTTP-9]).

    Raises:
        AuthenticationError: ``bad-signature`` when there is not exactly one
            ``Host`` header, it names another node, or the request target is
            not in origin form.
    """
    hosts = request.headers.getall(hdrs.HOST, [])
    if len(hosts) != 1:
        raise AuthenticationError()
    host = hosts[0]
    scheme = request.scheme  # not request.url: it parses the Host header and raises on a bad port
    if scheme == "http" and _authority(host, "https") in {_authority(name, "https") for name in tls_authorities}:
        scheme = "https"
    if _authority(host, scheme) not in {_authority(name, scheme) for name in authorities}:
        raise AuthenticationError()
    target = request.raw_path
    if not target.startswith("/"):
        raise AuthenticationError()
    return f"{scheme}://{host}{target}"


async def verified(
    request: web.Request,
    body: bytes | None,
    *,
    now: int,
    nonces: NonceStore,
    authorities: Collection[str],
    tls_authorities: Collection[str] = (),
    max_skew: int = DEFAULT_MAX_SKEW,
) -> VerifiedRequest:
    """Verify an incoming request's signature, then spend its nonce ([HTTP-7], [HTTP-9], [HTTP-10]).

    Args:
        request: the incoming request.
        body: the whole body the handler read (``await request.read()``,
            after its own size cap), or None when it reads none or streams it
            (then check ``VerifiedRequest.streamed``).
        now: the current time.
        nonces: the node's durable nonce store; consulted only once the
            signature verified, so forged requests cannot fill it.
        authorities: this node's own ``host[:port]`` names.
        tls_authorities: as for :func:`target_uri`.
        max_skew: tolerated clock skew for ``created``.

    Returns:
        The verified request; :func:`signed_response` can then answer it.

    Raises:
        RemoteProtocolError: any code of ``verify_request``; ``replay`` when
            the signer used this nonce before.
    """
    url = target_uri(request, authorities=authorities, tls_authorities=tls_authorities)
    result = verify_request(
        method=request.method, url=url, headers=request.headers, body=body, now=now, max_skew=max_skew
    )
    if not await nonces.remember(result.signer, result.nonce, result.expires):
        raise RemoteProtocolError(Code.REPLAY, "request nonce seen before")
    request[_TARGET_URI] = url
    return result


def was_verified(request: web.Request) -> bool:
    """Whether ``request`` passed :func:`verified` (and so may get a signed answer)."""
    return request.get(_TARGET_URI) is not None


def signed_response(
    request: web.Request,
    *,
    identity: SigningIdentity,
    now: int,
    status: int = 200,
    body: bytes = b"",
    headers: Mapping[str, str] | None = None,
    content_type: str = "application/cbor",
    lifetime: int = DEFAULT_LIFETIME,
) -> web.Response:
    """An answer signed by ``identity`` and bound to ``request`` ([HTTP-12]).

    Raises:
        LocalProtocolError: ``bad-signature`` when ``request`` did not pass
            :func:`verified` (an answer is only bound to an authenticated request).
    """
    url = request.get(_TARGET_URI)
    if url is None:
        raise LocalProtocolError(Code.BAD_SIGNATURE, "only a verified request gets a signed answer")
    fields: CIMultiDict[str] = CIMultiDict(headers or {})
    fields[hdrs.CONTENT_TYPE] = content_type
    fields.update(
        sign_response(
            identity=identity,
            status=status,
            headers=fields,
            body=body,
            request_method=request.method,
            request_url=url,
            request_signature=", ".join(request.headers.getall("Signature", [])),
            request_signature_input=", ".join(request.headers.getall("Signature-Input", [])),
            now=now,
            lifetime=lifetime,
        )
    )
    return web.Response(status=status, body=body, headers=fields)


# --------------------------------------------------------------------------------------------------
# Client side


def signed_target_uri(url: str | URL) -> tuple[URL, str, str]:
    """The URL to send, its ``Host`` header and the target URI to sign, all as aiohttp sends them.

    Raises:
        LocalProtocolError: ``malformed`` for a URL that is not absolute http(s), or that does not
            parse (an unclosed IPv6 address, a port out of range).
    """
    try:
        parsed = URL(url)
        host = parsed.host_port_subcomponent
        port = parsed.port
    except ValueError:
        # yarl raises it for what arrives from peers too (an endpoint in a profile, an invitation).
        raise LocalProtocolError(Code.MALFORMED, "a node endpoint is an absolute http or https URL") from None
    if parsed.scheme not in _DEFAULT_PORTS or not host or not port:
        raise LocalProtocolError(Code.MALFORMED, "a node endpoint is an absolute http or https URL")
    return parsed, host, f"{parsed.scheme}://{host}{parsed.raw_path_qs}"


def endpoint_problem(endpoint: str, *, unbound: bool = False) -> str | None:
    """Why ``endpoint`` cannot be a node's base URL ([API-74]), or ``None`` when it can.

    A base URL is an absolute ``http`` or ``https`` URL with a host and a port
    in range, and neither query nor fragment (paths are appended to it).

    Args:
        unbound: accept port 0 too: a node's own endpoint before ``serve``
            learns the port the system gave it.
    """
    if unbound:
        with contextlib.suppress(ValueError):
            if URL(endpoint).explicit_port == 0:
                endpoint = str(URL(endpoint).with_port(None))
    try:
        parsed, _host, _target = signed_target_uri(endpoint)
    except LocalProtocolError as exc:
        return exc.message
    if parsed.raw_query_string or parsed.raw_fragment or "?" in endpoint or "#" in endpoint:
        return "a node endpoint has no query and no fragment"
    return None


def client_signing_headers(
    *,
    identity: SigningIdentity,
    method: str,
    url: str | URL,
    body: bytes | None,
    now: int,
    nonce: str,
    headers: Mapping[str, str] | None = None,
    streamed: bool = False,
    lifetime: int = DEFAULT_LIFETIME,
) -> CIMultiDict[str]:
    """The full header set of a signed request to ``url``: ``headers``, ``Host`` and the signature fields.

    Pass the result as ``headers=`` to an ``aiohttp.ClientSession`` request
    with the same method, URL and body (or a streamed body when ``streamed``).

    Raises:
        LocalProtocolError: ``malformed``, as ``sign_request``.
    """
    _, host, signed_url = signed_target_uri(url)
    fields: CIMultiDict[str] = CIMultiDict(headers or {})
    for name in _SIGNATURE_FIELDS:
        fields.popall(name, None)
    fields[hdrs.HOST] = host
    fields.update(
        sign_request(
            identity=identity,
            method=method.upper(),
            url=signed_url,
            headers=fields,
            body=body,
            now=now,
            nonce=nonce,
            lifetime=lifetime,
            streamed=streamed,
        )
    )
    return fields


@dataclass(frozen=True, kw_only=True)
class SignedResponse:
    """An answer read whole.  ``signer`` is set when its signature was verified."""

    status: int
    headers: CIMultiDictProxy[str]
    body: bytes
    signer: str | None


class SignedClient:
    """Sends signed requests over an ``aiohttp.ClientSession`` and verifies signed answers."""

    def __init__(self, session: aiohttp.ClientSession, *, max_answer: int = MAX_SIGNED_ANSWER) -> None:
        self._session = session
        self._max_answer = max_answer

    async def request(
        self,
        method: str,
        url: str | URL,
        *,
        identity: SigningIdentity,
        now: int,
        nonce: str,
        body: bytes | None = None,
        stream: AsyncIterable[bytes] | None = None,
        headers: Mapping[str, str] | None = None,
        expected_signer: str | None = None,
        answer_now: int | None = None,
    ) -> SignedResponse:
        """Sign and send a request; read the answer; verify it when ``expected_signer`` is given.

        Args:
            method, url: the request.
            identity: the signing node.
            now: the signing time.
            nonce: fresh random base64url text (22 to 64 characters).
            body: a small body, covered by ``Content-Digest``.
            stream: a streamed body instead (declared ``Fedrecord-Streamed``,
                authenticated by what it carries, not by the signature).
            headers: other header fields to send.
            expected_signer: the did of the node addressed; when given, the
                answer, whatever its status, must carry that node's signature
                bound to this request.
            answer_now: the time to check the answer's window against
                (default ``now``).

        Raises:
            LocalProtocolError: ``malformed`` for both ``body`` and ``stream``.
            RemoteProtocolError: ``too-large`` for an answer over the cap;
                any code of ``verify_response``.
            aiohttp.ClientError: transport failures.
        """
        if body is not None and stream is not None:
            raise LocalProtocolError(Code.MALFORMED, "a request has a body or a stream, not both")
        method = method.upper()
        target, _, signed_url = signed_target_uri(url)
        fields = client_signing_headers(
            identity=identity,
            method=method,
            url=target,
            body=body,
            now=now,
            nonce=nonce,
            headers=headers,
            streamed=stream is not None,
        )
        data = body if stream is None else stream
        async with self._session.request(method, target, data=data, headers=fields) as response:
            answer = await _read_capped(response, self._max_answer)
            status, answer_headers = response.status, response.headers
        if expected_signer is None:
            return SignedResponse(status=status, headers=answer_headers, body=answer, signer=None)
        verify_response(
            expected_signer=expected_signer,
            status=status,
            headers=answer_headers,
            body=answer,
            request_method=method,
            request_url=signed_url,
            request_headers=fields,
            now=now if answer_now is None else answer_now,
        )
        return SignedResponse(status=status, headers=answer_headers, body=answer, signer=expected_signer)


async def _read_capped(response: aiohttp.ClientResponse, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(1 << 16):
        size += len(chunk)
        if size > limit:
            raise RemoteProtocolError(Code.TOO_LARGE, "answer over the size cap")
        chunks.append(chunk)
    return b"".join(chunks)


def _authority(authority: str, scheme: str) -> str:
    """``host[:port]`` lower-cased, without the scheme's default port."""
    authority = authority.strip().lower()
    default = _DEFAULT_PORTS.get(scheme)
    if default and authority.endswith(default):
        authority = authority[: -len(default)]
    return authority
