"""The node's HTTP API on aiohttp (spec/fedrecord.md, section 15): routes, caps, signatures, error bodies.

Every node-to-node request is signed (RFC 9421) and its nonce remembered
durably for the replay window before anything else happens.  Every refusal
is a CBOR error body with its stable code and HTTP status; an unexpected
exception (a bug of ours) is logged and answered with status 500 and the
message "internal error", never with a traceback.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import web
from yarl import URL

from fedrecord.core.errors import Code, FedrecordError, RemoteProtocolError
from fedrecord.http.aiohttp_signing import signed_response, verified, was_verified

from .client import b64, unb64
from .clinic import ClinicNode
from .home import NodeHome
from .patient import PatientNode
from .wire import CBOR_TYPE, MAX_BODY, MAX_DOCUMENT, decode_body, encode_body, error_body

log = logging.getLogger("fedrecord.node")

BODY_TIMEOUT = 30.0  # seconds for a whole CBOR body [API-33]
STREAM_IDLE_TIMEOUT = 30.0  # seconds without a byte of a document stream [API-33]

HOME: web.AppKey[NodeHome] = web.AppKey("home", NodeHome)
PATIENT: web.AppKey[PatientNode] = web.AppKey("patient", PatientNode)
CLINIC: web.AppKey[ClinicNode] = web.AppKey("clinic", ClinicNode)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class DatabaseNonces:
    """Durable nonce memory for the replay window: a nonce is refused until its signature expires."""

    def __init__(self, home: NodeHome) -> None:
        self.store = home.store

    async def remember(self, signer: str, nonce: str, expires: int) -> bool:
        """Keep a nonce until its signature expires; false for one seen before (a replay)."""
        return await self.store.remember_nonce(signer, nonce, expires)


def authorities(home: NodeHome) -> list[str]:
    """The host[:port] names this node answers to: its public endpoint and its listening address."""
    names = [URL(home.config.endpoint).host_port_subcomponent or ""]
    if home.config.port:
        names.append(f"{home.config.host}:{home.config.port}")
    return [name for name in names if name]


def cbor_response(http_status: int = 200, **fields: Any) -> web.Response:
    return web.Response(status=http_status, body=encode_body(**fields), content_type=CBOR_TYPE)


def answer(request: web.Request, http_status: int = 200, **fields: Any) -> web.Response:
    """A CBOR answer, signed by this node and bound to the request when the request was verified."""
    return _maybe_signed(request, http_status, encode_body(**fields))


def _maybe_signed(request: web.Request, http_status: int, body: bytes) -> web.Response:
    if not was_verified(request):
        return web.Response(status=http_status, body=body, content_type=CBOR_TYPE)
    return signed_response(
        request, identity=request.app[HOME].identity, now=int(time.time()), status=http_status, body=body
    )


@web.middleware
async def errors_as_cbor(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except FedrecordError as error:
        # Refusals of authenticated requests (not-found, revoked, ...) are signed too, so a
        # network attacker cannot forge "this does not exist" or "you are revoked".
        return _maybe_signed(request, error.status, error_body(error))
    except web.HTTPException as exc:
        code = {413: Code.TOO_LARGE, 404: Code.NOT_FOUND}.get(exc.status, Code.MALFORMED)
        refusal = RemoteProtocolError(code, exc.reason)
        return web.Response(status=exc.status, body=error_body(refusal), content_type=CBOR_TYPE)
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:
        log.exception("unexpected error answering %s %s", request.method, request.path)
        body = error_body(RemoteProtocolError(Code.MALFORMED, "internal error"))
        return web.Response(status=500, body=body, content_type=CBOR_TYPE)


async def read_capped(request: web.Request, cap: int = MAX_BODY) -> bytes:
    """The whole body, refused as soon as it passes ``cap`` (also when it arrives chunked)."""
    if request.headers.get("Content-Encoding", "identity").lower() != "identity":
        raise RemoteProtocolError(Code.MALFORMED, "compressed request bodies are refused")
    if request.content_length is not None and request.content_length > cap:
        raise RemoteProtocolError(Code.TOO_LARGE, f"bodies are capped at {cap} bytes")
    body = bytearray()
    try:
        async with asyncio.timeout(BODY_TIMEOUT):
            async for chunk in request.content.iter_chunked(1 << 16):
                body += chunk
                if len(body) > cap:
                    raise RemoteProtocolError(Code.TOO_LARGE, f"bodies are capped at {cap} bytes")
    except TimeoutError:
        raise RemoteProtocolError(Code.TIMEOUT, f"the body did not arrive within {BODY_TIMEOUT} s") from None
    return bytes(body)


async def signed_body(request: web.Request, *required: str) -> tuple[str, dict[str, Any]]:
    """Verify the request's signature and nonce, then decode its CBOR body: (signer, body)."""
    data = await read_capped(request)
    home = request.app[HOME]
    check = await verified(
        request, data, now=int(time.time()), nonces=DatabaseNonces(home), authorities=authorities(home)
    )
    return check.signer, decode_body(data, *required)


# --- routes of both roles --------------------------------------------------------------------


async def profile(request: web.Request) -> web.Response:
    return web.Response(body=request.app[HOME].profile.encoded, content_type=CBOR_TYPE)


async def health(request: web.Request) -> web.Response:
    home = request.app[HOME]
    return cbor_response(node=home.did, role=home.config.role, versions=[0])


# --- patient routes -----------------------------------------------------------------------------


async def connect(request: web.Request) -> web.Response:
    signer, body = await signed_body(request, "token", "profile")
    patient = request.app[PATIENT]
    grant = await patient.connect(
        requester=signer, token=body["token"], profile=body["profile"], now=int(time.time())
    )
    return answer(request, 201, grant=grant.encoded, profile=request.app[HOME].profile.encoded)


async def deposit(request: web.Request) -> web.Response:
    if request.headers.get("Content-Encoding", "identity").lower() != "identity":
        raise RemoteProtocolError(Code.MALFORMED, "compressed request bodies are refused")
    home = request.app[HOME]
    check = await verified(
        request, None, now=int(time.time()), nonces=DatabaseNonces(home), authorities=authorities(home)
    )
    if not check.streamed:
        raise RemoteProtocolError(Code.MALFORMED, "a document body is signed as a stream")
    try:
        record = unb64(request.headers["Fedrecord-Deposit"])
    except (KeyError, ValueError):
        raise RemoteProtocolError(Code.MALFORMED, "the deposit record header is missing") from None
    if request.content_length is not None and request.content_length > MAX_DOCUMENT:
        raise RemoteProtocolError(Code.TOO_LARGE, f"documents are capped at {MAX_DOCUMENT} bytes")

    async def chunks() -> AsyncIterator[bytes]:
        # A stream may be long; what may not last is silence [API-33].
        while True:
            try:
                chunk = await asyncio.wait_for(request.content.readany(), STREAM_IDLE_TIMEOUT)
            except TimeoutError:
                raise RemoteProtocolError(
                    Code.TIMEOUT, f"no byte of the document for {STREAM_IDLE_TIMEOUT} s"
                ) from None
            if not chunk:
                return
            yield chunk

    try:
        url_doc = bytes.fromhex(request.match_info["doc"])
    except ValueError:
        raise RemoteProtocolError(Code.MALFORMED, "the document id in the path is hex") from None
    outcome = await request.app[PATIENT].receive_deposit(
        expected_doc=url_doc,
        requester=check.signer,
        deposit=record,
        ciphertext=chunks(),
        now=int(time.time()),
    )
    return answer(request, 201 if outcome == "inbox" else 200, status=outcome)


async def state(request: web.Request) -> web.Response:
    signer, _body = await signed_body(request)
    return answer(request, **await request.app[PATIENT].state_for(signer, now=int(time.time())))


async def listing(request: web.Request) -> web.Response:
    signer, body = await signed_body(request, "chain")
    documents = await request.app[PATIENT].documents_for(signer, _chain(body), now=int(time.time()))
    return answer(request, documents=documents)


async def fetch(request: web.Request) -> web.StreamResponse:
    signer, body = await signed_body(request, "chain", "receipt")
    profile = body.get("profile")
    if profile is not None and type(profile) is not bytes:
        raise RemoteProtocolError(Code.MALFORMED, "profile is an encoded node profile")
    wrap, size, chunks = await request.app[PATIENT].fetch(
        signer, _chain(body), body["receipt"], now=int(time.time()), offered_profile=profile
    )
    headers = {"Fedrecord-Key-Wrap": b64(wrap.encoded), "Content-Type": "application/octet-stream"}
    first = await anext(chunks, b"")
    if len(first) == size and await anext(chunks, None) is None:  # the second read ends the reader
        # A one-piece document (most are) goes out with its head in one write.
        return web.Response(body=first, headers=headers)
    response = web.StreamResponse(headers=headers)
    response.content_length = size
    await response.prepare(request)
    await response.write(first)
    async for chunk in chunks:
        await response.write(chunk)
    await response.write_eof()
    return response


async def attestation(request: web.Request) -> web.Response:
    signer, body = await signed_body(request, "attestation")
    await request.app[PATIENT].receive_attestation(signer, body["attestation"], now=int(time.time()))
    return answer(request, 201, status="stored")


def _chain(body: dict[str, Any]) -> list[bytes]:
    chain = body["chain"]
    if type(chain) is not list or not all(type(link) is bytes for link in chain) or len(chain) > 8:
        raise RemoteProtocolError(Code.MALFORMED, "chain is an array of at most 8 encoded grants")
    return chain


# --- clinic routes ----------------------------------------------------------------------------------


async def decision(request: web.Request) -> web.Response:
    signer, body = await signed_body(request, "decision")
    await request.app[CLINIC].receive_decision(signer, body["decision"], now=int(time.time()))
    return answer(request, 201, status="stored")


async def delegation(request: web.Request) -> web.Response:
    signer, body = await signed_body(request, "patient", "endpoint", "profile", "chain")
    if (
        not all(type(body[key]) is str for key in ("patient", "endpoint"))
        or type(body["profile"]) is not bytes
    ):
        raise RemoteProtocolError(Code.MALFORMED, "patient, endpoint and profile have the wrong types")
    leaf = await request.app[CLINIC].receive_delegation(
        signer,
        patient=body["patient"],
        endpoint=body["endpoint"],
        profile=body["profile"],
        chain=_chain(body),
        now=int(time.time()),
    )
    return answer(request, 201, grant=leaf.id)


def make_app(home: NodeHome, *, clinic: ClinicNode | None = None) -> web.Application:
    """The aiohttp application of one node (patient or clinic routes by its role)."""
    app = web.Application(middlewares=[errors_as_cbor], client_max_size=MAX_BODY)
    app[HOME] = home
    app.router.add_get("/v0/profile", profile)
    app.router.add_get("/v0/health", health)
    if home.config.role == "patient":
        app[PATIENT] = PatientNode(home)
        app.router.add_post("/v0/connect", connect)
        app.router.add_put("/v0/documents/{doc}", deposit)
        app.router.add_post("/v0/state", state)
        app.router.add_post("/v0/list", listing)
        app.router.add_post("/v0/fetch", fetch)
        app.router.add_post("/v0/attestations", attestation)
    else:
        app[CLINIC] = clinic or ClinicNode(home)
        app.router.add_post("/v0/decisions", decision)
        app.router.add_post("/v0/grants", delegation)
    return app
