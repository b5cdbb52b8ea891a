"""The node's HTTP API on aiohttp (spec/fedrecord.md, section 15): routes, caps, signatures, error bodies.

Every node-to-node request is signed (RFC 9421) and its nonce remembered
durably for the replay window before anything else happens.  Every refusal
is a CBOR error body with its stable code and HTTP status; an unexpected
exception (a bug of ours) is logged and answered with status 500 and the
message "internal error", never with a traceback.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import HttpVersion11, hdrs, web
from yarl import URL

from fedrecord.core.errors import Code, FedrecordError, RemoteProtocolError
from fedrecord.http.aiohttp_signing import signed_response, verified, was_verified
from fedrecord.http.event_stream import EVENT_STREAM_TYPE, KEEP_ALIVE, encode_event
from fedrecord.http.message_signatures import VerifiedRequest
from fedrecord.storage.documents import CorruptDocumentError
from fedrecord.storage.sqlite import StorageError

from .client import b64, unb64
from .clinic import ClinicNode
from .clinic_control import manage as clinic_manage
from .home import NodeHome
from .patient import PatientNode
from .patient_control import manage
from .ranges import content_range, parse_range
from .state_feed import StateFeed, Subscription
from .sync import answer_round, receive_pushed, records_by_id
from .wire import CBOR_TYPE, MAX_BODY, MAX_DOCUMENT, decode_body, encode_body, error_body

log = logging.getLogger("fedrecord.node")

BODY_TIMEOUT = 30.0  # seconds for a whole CBOR body [API-33]
STREAM_IDLE_TIMEOUT = 30.0  # seconds without a byte of a document stream [API-33]
KEEP_ALIVE_INTERVAL = 15.0  # seconds of silence on an event stream before a keep-alive comment [API-34]
SEND_TIMEOUT = 10.0  # seconds an event stream's reader has to take one write before it is dropped [API-34]
LIVENESS_INTERVAL = 1.0  # how often a quiet event stream checks that its reader is still connected

HOME: web.AppKey[NodeHome] = web.AppKey("home", NodeHome)
PATIENT: web.AppKey[PatientNode] = web.AppKey("patient", PatientNode)
FEED: web.AppKey[StateFeed] = web.AppKey("feed", StateFeed)
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


def tls_authorities(home: NodeHome) -> list[str]:
    """The names clients reach over TLS although the node listens in plain HTTP: an ``https`` endpoint's.

    The node never terminates TLS itself, so an ``https`` endpoint means a TLS-terminating proxy
    in front of it, and what arrives under that name was signed as ``https`` ([HTTP-9]).
    """
    endpoint = URL(home.config.endpoint)
    return [endpoint.host_port_subcomponent or ""] if endpoint.scheme == "https" else []


async def verified_here(request: web.Request, body: bytes | None) -> VerifiedRequest:
    """:func:`verified` with this node's nonce store, authorities and the time now.

    Raises:
        AuthenticationError, RemoteProtocolError: as :func:`verified` (``bad-signature`` for a
            ``Host`` that is not this node's, ``replay`` for a nonce spent before, ...).
    """
    home = request.app[HOME]
    return await verified(
        request,
        body,
        now=int(time.time()),
        nonces=DatabaseNonces(home),
        authorities=authorities(home),
        tls_authorities=tls_authorities(home),
    )


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
        _chunked_only(request)
        return await handler(request)
    except FedrecordError as error:
        # Refusals of authenticated requests (not-found, revoked, ...) are signed too, so a
        # network attacker cannot forge "this does not exist" or "you are revoked".
        return _maybe_signed(request, error.status, error_body(error))
    except web.HTTPException as exc:
        code = {413: Code.TOO_LARGE, 404: Code.NOT_FOUND}.get(exc.status, Code.MALFORMED)
        refusal = RemoteProtocolError(code, exc.reason)
        return web.Response(status=exc.status, body=error_body(refusal), content_type=CBOR_TYPE)
    except asyncio.CancelledError:
        raise
    except ConnectionResetError:
        # The requester went away mid-request (a deposit cut short, a dropped link): nothing was
        # stored, and nobody waits for an answer.  One line, not aiohttp's traceback of a 500.
        log.info("connection lost during %s %s", request.method, request.path)
        refusal = RemoteProtocolError(Code.TRUNCATED, "the connection was lost before the request ended")
        return web.Response(status=refusal.status, body=error_body(refusal), content_type=CBOR_TYPE)
    except StorageError as exc:
        # A commit that did not complete: this request's, or its group's when another block of the same
        # group commit failed (a full disk, mid-statement).  Nothing was acknowledged; the sender retries.
        log.error("cannot answer %s %s: %s; senders will retry", request.method, request.path, exc)
        return _fault(503, "the node could not store this; try again later")
    except Exception as exc:
        if isinstance(exc, (OSError, sqlite3.OperationalError)) and _disk_full(exc):
            # The operator's to fix, not a bug: one line saying where, and the sender retries later.
            log.error(
                "cannot answer %s %s: the disk of %s is full (%s); free space there, senders will retry",
                request.method,
                request.path,
                request.app[HOME].path,
                exc,
            )
            return _fault(503, "out of storage space; try again later")
        log.exception("unexpected error answering %s %s", request.method, request.path)
        return _fault(500, "internal error")


def _fault(status: int, message: str) -> web.Response:
    """The answer of a fault of this node's (5xx): an error body a sender may retry on, no detail."""
    body = error_body(RemoteProtocolError(Code.MALFORMED, message))
    return web.Response(status=status, body=body, content_type=CBOR_TYPE)


def _disk_full(exc: OSError | sqlite3.OperationalError) -> bool:
    """Whether an error says the node's storage is full (a file or the database)."""
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
    return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "disk is full" in str(exc)


def _chunked_only(request: web.Request) -> None:
    """Refuse a body under a transfer coding other than ``chunked`` (``gzip, chunked``), as a compressed one is.

    aiohttp reads such a body as plain chunks and never decodes it ([API-4]).

    Raises:
        RemoteProtocolError: ``malformed``.
    """
    fields = request.headers.getall(hdrs.TRANSFER_ENCODING, [])
    if fields and [c.strip().lower() for c in ",".join(fields).split(",")] != ["chunked"]:
        raise RemoteProtocolError(Code.MALFORMED, "transfer codings other than chunked are refused")


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
    check = await verified_here(request, data)
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
    check = await verified_here(request, None)
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
                # asyncio.timeout, not wait_for: no task is made for each piece of the body.
                async with asyncio.timeout(STREAM_IDLE_TIMEOUT):
                    chunk = await request.content.readany()
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
    """The requester's state answer ([API-16]).

    Raises:
        RemoteProtocolError: the codes of a signed request; ``not-found`` for a
            requester this node does not know.
    """
    signer = await _state_requester(request)
    return answer(request, **await request.app[PATIENT].state_for(signer, now=int(time.time())))


async def _state_requester(request: web.Request) -> str:
    """The signer of a state or event stream request: a node the patient's node knows, whose ``head``,
    if it shows one, was taken ([API-16]: a node restored from an older copy goes on from it).

    Raises:
        RemoteProtocolError, AuthenticationError: the codes of a signed request; ``not-found`` for a
            node not known; those of :meth:`PatientNode.catch_up_head`.
    """
    signer, body = await signed_body(request)
    patient = request.app[PATIENT]
    await patient.require_known(signer)
    if "head" in body:
        await patient.catch_up_head(body["head"], requester=signer, now=int(time.time()))
    return signer


async def events(request: web.Request) -> web.StreamResponse:
    """The requester's state now and after each change, as an event stream, until it leaves [API-34].

    Raises:
        RemoteProtocolError: the codes of a signed request; ``not-found`` for a
            requester this node does not know; ``too-many`` beyond the limits of
            :class:`StateFeed`.  Nothing is raised once the stream has begun.
    """
    signer = await _state_requester(request)
    patient, feed = request.app[PATIENT], request.app[FEED]
    with feed.subscribe(signer) as subscription:
        response = web.StreamResponse(
            headers={"Content-Type": EVENT_STREAM_TYPE, "Cache-Control": "no-store"}
        )
        await response.prepare(request)
        try:
            await _stream_state(request, response, patient, feed, subscription)
        except Exception:
            # The answer has begun: no error body can follow.  End the stream; the requester reconnects.
            log.exception("event stream of %s", signer)
    return response


async def _stream_state(
    request: web.Request,
    response: web.StreamResponse,
    patient: PatientNode,
    feed: StateFeed,
    subscription: Subscription,
) -> None:
    """Send the state now, again after each change that alters it, a keep-alive after 15 s of silence."""
    loop = asyncio.get_running_loop()
    sent = b""
    quiet_since = loop.time()
    changed = True  # the first event is the state as it is now
    while not subscription.closed:
        if changed:
            # The mark before the state: a change committed in between shows as a newer mark, sent next.
            subscription.seen = await feed.mark()
            body = encode_body(**await patient.state_for(subscription.requester, now=int(time.time())))
            if body != sent:
                if not await _send(request, response, encode_event("state", b64(body)), subscription):
                    return
                sent, quiet_since = body, loop.time()
        elif loop.time() - quiet_since >= KEEP_ALIVE_INTERVAL:
            if not await _send(request, response, KEEP_ALIVE, subscription):
                return
            quiet_since = loop.time()
        if request.transport is None or request.transport.is_closing():
            return  # the requester left: its subscription ends with this handler
        changed = await subscription.changed(timeout=LIVENESS_INTERVAL)


async def _send(
    request: web.Request, response: web.StreamResponse, data: bytes, subscription: Subscription
) -> bool:
    """Write to an event stream; false when the requester left or did not take it within SEND_TIMEOUT."""
    try:
        async with asyncio.timeout(SEND_TIMEOUT):
            await response.write(data)
    except TimeoutError:
        # A reader that does not read is dropped, not queued for: it catches up by polling or reconnecting.
        log.info("event stream of %s dropped: it took nothing for %s s", subscription.requester, SEND_TIMEOUT)
        if request.transport is not None:
            request.transport.abort()
        return False
    except ConnectionResetError:
        return False
    return True


async def listing(request: web.Request) -> web.Response:
    signer, body = await signed_body(request, "chain")
    documents = await request.app[PATIENT].documents_for(signer, _chain(body), now=int(time.time()))
    return answer(request, documents=documents)


async def sync_round(request: web.Request) -> web.Response:
    signer, body = await signed_body(request, "message")
    message = body["message"]
    if type(message) is not bytes:
        raise RemoteProtocolError(Code.MALFORMED, "message is an encoded sync-message")
    reply = await answer_round(
        request.app[PATIENT], signer, _chain(body, optional=True), message, now=int(time.time())
    )
    return answer(request, message=reply)


async def records(request: web.Request) -> web.Response:
    signer, body = await signed_body(request, "ids")
    ids = body["ids"]
    if type(ids) is not list:
        raise RemoteProtocolError(Code.MALFORMED, "ids is an array of record ids")
    found, sealed = await records_by_id(
        request.app[PATIENT], signer, _chain(body, optional=True), ids, now=int(time.time())
    )
    if sealed:
        return answer(request, records=found, sealed=sealed)
    return answer(request, records=found)


async def push(request: web.Request) -> web.Response:
    signer, body = await signed_body(request, "chain", "records")
    pushed = body["records"]
    if type(pushed) is not list:
        raise RemoteProtocolError(Code.MALFORMED, "records is an array of encoded records")
    stored = await receive_pushed(request.app[PATIENT], signer, _chain(body), pushed, now=int(time.time()))
    return answer(request, stored=stored)


async def fetch(request: web.Request) -> web.StreamResponse:
    # The signature covers a Range field ([HTTP-4]); its form is checked once the request is known [API-41].
    signer, body = await signed_body(request, "chain", "receipt")
    start = parse_range(request.headers.getall(hdrs.RANGE, []))
    profile = body.get("profile")
    if profile is not None and type(profile) is not bytes:
        raise RemoteProtocolError(Code.MALFORMED, "profile is an encoded node profile")
    wrap, size, chunks = await request.app[PATIENT].fetch(
        signer, _chain(body), body["receipt"], now=int(time.time()), offered_profile=profile, start=start or 0
    )
    headers = {"Fedrecord-Key-Wrap": b64(wrap.encoded), "Content-Type": "application/octet-stream"}
    status, length = 200, size
    if start is not None:
        # The rest of the stream from `start` [API-40].
        status, length = 206, size - start
        headers[hdrs.CONTENT_RANGE] = content_range(start, size)
    try:
        first = await anext(chunks, b"")
        whole = len(first) == length and await anext(chunks, None) is None  # the second read ends the reader
    except CorruptDocumentError:
        # A file found bad in its first pieces (a small stream is checked before the receipt is
        # logged): nothing sent yet, so answered as a missing document, as a batch is; a later piece
        # found bad can only cut the stream, which the reader detects.
        log.error("a stored document no longer matches its id: not served")
        raise RemoteProtocolError(Code.NOT_FOUND, "no such document") from None
    if whole:
        # A one-piece document (most are) goes out with its head in one write.
        return web.Response(status=status, body=first, headers=headers)
    response = web.StreamResponse(status=status, headers=headers)
    response.content_length = length
    await response.prepare(request)
    await response.write(first)
    async for chunk in chunks:
        await response.write(chunk)
    await response.write_eof()
    return response


async def fetch_batch(request: web.Request) -> web.Response:
    """``POST /v0/fetch-batch``: several small documents under one receipt and one key wrap (15.21)."""
    signer, body = await signed_body(request, "chain", "receipt")
    profile = body.get("profile")
    if profile is not None and type(profile) is not bytes:
        raise RemoteProtocolError(Code.MALFORMED, "profile is an encoded node profile")
    wrap, streams = await request.app[PATIENT].fetch_batch(
        signer, _chain(body), body["receipt"], now=int(time.time()), offered_profile=profile
    )
    return answer(request, wrap=wrap.encoded, streams=streams)


async def attestation(request: web.Request) -> web.Response:
    signer, body = await signed_body(request, "attestation")
    await request.app[PATIENT].receive_attestation(signer, body["attestation"], now=int(time.time()))
    return answer(request, 201, status="stored")


async def patient_control(request: web.Request) -> web.Response:
    """``POST /v0/manage``: the patient, signing with the node's own key, runs one op on its node (15.19).

    Raises:
        RemoteProtocolError: the codes of a signed request; ``wrong-audience`` for any other
            signer ([API-50]); the op's codes ([API-51], [API-53]).
    """
    signer, body = await signed_body(request)
    return answer(request, **await manage(request.app[PATIENT], signer, body, now=int(time.time())))


def _chain(body: dict[str, Any], *, optional: bool = False) -> list[bytes]:
    if optional and "chain" not in body:
        return []
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


async def clinic_control(request: web.Request) -> web.Response:
    """``POST /v0/manage`` on a clinic: the clinic, signing with the node's own key, runs one op (15.20).

    Raises:
        RemoteProtocolError: the codes of a signed request; ``wrong-audience`` for any other
            signer ([API-60]); the op's codes ([API-61]), the other node's ([API-63]).
    """
    signer, body = await signed_body(request)
    return answer(request, **await clinic_manage(request.app[CLINIC], signer, body, now=int(time.time())))


def make_app(home: NodeHome, *, clinic: ClinicNode | None = None) -> web.Application:
    """The aiohttp application of one node (patient or clinic routes by its role)."""
    app = web.Application(middlewares=[errors_as_cbor], client_max_size=MAX_BODY)
    app[HOME] = home
    routes: list[tuple[str, str, Handler]] = [("GET", "/v0/profile", profile), ("GET", "/v0/health", health)]
    if home.config.role == "patient":
        feed = StateFeed(home.store)
        app[FEED] = feed
        app[PATIENT] = PatientNode(home, state_changed=feed.poke)
        app.on_shutdown.append(_close_feed)
        routes += [
            ("POST", "/v0/connect", connect),
            ("PUT", "/v0/documents/{doc}", deposit),
            ("POST", "/v0/state", state),
            ("POST", "/v0/events", events),
            ("POST", "/v0/list", listing),
            ("POST", "/v0/fetch", fetch),
            ("POST", "/v0/fetch-batch", fetch_batch),
            ("POST", "/v0/sync", sync_round),
            ("POST", "/v0/records", records),
            ("POST", "/v0/push", push),
            ("POST", "/v0/attestations", attestation),
            ("POST", "/v0/manage", patient_control),
        ]
    else:
        app[CLINIC] = clinic or ClinicNode(home)
        routes += [
            ("POST", "/v0/decisions", decision),
            ("POST", "/v0/grants", delegation),
            ("POST", "/v0/manage", clinic_control),
        ]
    # Served under the endpoint's own path (15.1: an endpoint's path is appended to the base URL as
    # written there): a node at https://host/fedrecord answers /fedrecord/v0/..., as a reverse proxy
    # that passes paths unchanged hands them on, and as they were signed ([HTTP-9]).
    base = base_path(home.config.endpoint)
    for method, path, handler in routes:
        resource = _served_at(base, path)
        app.router.register_resource(resource)
        resource.add_route(method, handler, expect_handler=expect_continue)
        if method == "GET":
            resource.add_route("HEAD", handler, expect_handler=expect_continue)
    return app


def base_path(endpoint: str) -> str:
    """The path of a node's own base URL, without its trailing ``/`` (empty at the host's root).

    Decoded as aiohttp's router decodes a request's path before matching it (``path_safe``): a
    route at the raw ``/cl%C3%ADnica`` would match no request, and the node answer 404 to all.
    """
    return URL(endpoint).path_safe.rstrip("/")


def _served_at(base: str, path: str) -> web.Resource:
    """The resource of an API ``path`` under ``base``, which is matched as written, character for character.

    The base is added as a prefix, not written into the route: aiohttp would read ``{...}`` in it as a
    variable (a node at ``/{x}`` then answering under any first segment, signed for any path there)
    and re-encode a non-ASCII character it then compares with the decoded path (a 404 to every peer).
    """
    resource = web.DynamicResource(path) if "{" in path else web.PlainResource(path)
    if base:
        resource.add_prefix(base)
    return resource


async def expect_continue(request: web.Request) -> web.Response | None:
    """Answer ``Expect: 100-continue`` as aiohttp does, and any other expectation with an error body ([API-5]).

    aiohttp's own handler answers an unknown expectation with a plain-text 417,
    before any middleware runs.

    Returns:
        ``None`` to go on to the route's handler, or the refusal (``malformed``) that takes its place.
    """
    if request.headers.get(hdrs.EXPECT, "").lower() != "100-continue":
        refusal = RemoteProtocolError(Code.MALFORMED, "the only expectation served is 100-continue")
        answer = web.Response(status=refusal.status, body=error_body(refusal), content_type=CBOR_TYPE)
        answer.force_close()  # its body, if any, is not read
        return answer
    if request.version == HttpVersion11:
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the answer's own head and body are still to come
    return None


async def _close_feed(app: web.Application) -> None:
    # Before the server waits for its handlers to finish: open event streams would never finish.
    await app[FEED].close()
