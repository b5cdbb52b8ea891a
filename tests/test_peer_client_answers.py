"""A requester takes only answers signed by the node it asked ([HTTP-13], [API-5]): deposits and fetches too.

A small aiohttp server stands in for a patient's node and answers a deposit
(``PUT``, streamed) and a fetch refusal either signed by the node asked and
bound to the request, unsigned, or signed by another key.  Before the fix, the
clinic's client took an unsigned 201 for an acknowledged deposit (the outbox
then marked it done: anyone on the path could make a deposit vanish) and an
unsigned refusal of a fetch for the patient's refusal.  Found by the
conformance cases ``clinic.deposit-no-answer`` and ``clinic.fetch-no-answer``.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web

from fedrecord.core import SigningIdentity, cbor
from fedrecord.core.errors import Code, RemoteProtocolError
from fedrecord.http.message_signatures import sign_response
from fedrecord.node.client import PeerClient, PeerUnreachable

NODE = SigningIdentity.from_seed(bytes(range(32)))
OTHER = SigningIdentity.from_seed(bytes(range(1, 33)))
CBOR = "application/cbor"

Serve = Callable[[int, bytes, SigningIdentity | None], Awaitable[str]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    runners: list[web.AppRunner] = []

    async def start(status: int, body: bytes, signer: SigningIdentity | None) -> str:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        host = f"127.0.0.1:{sock.getsockname()[1]}"

        async def answer(request: web.Request) -> web.Response:
            await request.read()
            headers = {"Content-Type": CBOR}
            if signer is not None:
                headers.update(
                    sign_response(
                        identity=signer,
                        status=status,
                        headers=headers,
                        body=body,
                        request_method=request.method,
                        request_url=f"http://{host}{request.raw_path}",
                        request_signature=request.headers["Signature"],
                        request_signature_input=request.headers["Signature-Input"],
                        now=int(time.time()),
                    )
                )
            return web.Response(status=status, body=body, headers=headers)

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", answer)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.SockSite(runner, sock).start()
        runners.append(runner)
        return f"http://{host}"

    yield start
    for runner in runners:
        await runner.cleanup()


async def _stream() -> AsyncIterator[bytes]:
    yield os.urandom(1000)


INBOX = cbor.encode({"v": 0, "status": "inbox"})
NOT_FOUND = cbor.encode({"code": "not-found", "message": "no such document"})


async def test_a_signed_deposit_answer_is_taken(serve: Serve) -> None:
    url = await serve(201, INBOX, NODE)
    client = PeerClient(OTHER)
    try:
        answer = await client.upload(
            f"{url}/v0/documents/00", _stream(), {"Fedrecord-Deposit": "AA"}, expected_signer=NODE.did
        )
    finally:
        await client.close()
    assert answer["status"] == "inbox"


@pytest.mark.parametrize("signer", [None, OTHER], ids=["unsigned", "another-key"])
async def test_a_deposit_answer_not_signed_by_the_node_is_no_answer(
    serve: Serve, signer: SigningIdentity | None
) -> None:
    url = await serve(201, INBOX, signer)
    client = PeerClient(OTHER)
    try:
        with pytest.raises(PeerUnreachable):
            await client.upload(
                f"{url}/v0/documents/00", _stream(), {"Fedrecord-Deposit": "AA"}, expected_signer=NODE.did
            )
    finally:
        await client.close()


async def test_a_signed_fetch_refusal_is_the_nodes_refusal(serve: Serve) -> None:
    url = await serve(404, NOT_FOUND, NODE)
    client = PeerClient(OTHER)
    try:
        with pytest.raises(RemoteProtocolError) as refused:
            await client.download(f"{url}/v0/fetch", expected_signer=NODE.did, chain=[])
    finally:
        await client.close()
    assert refused.value.code is Code.NOT_FOUND


@pytest.mark.parametrize("signer", [None, OTHER], ids=["unsigned", "another-key"])
async def test_a_fetch_refusal_not_signed_by_the_node_is_no_answer(
    serve: Serve, signer: SigningIdentity | None
) -> None:
    url = await serve(404, NOT_FOUND, signer)
    client = PeerClient(OTHER)
    try:
        with pytest.raises(PeerUnreachable):
            await client.download(f"{url}/v0/fetch", expected_signer=NODE.did, chain=[])
    finally:
        await client.close()


@pytest.mark.parametrize("code", ["expired", "not-yet-valid"])
async def test_an_unsigned_refusal_out_of_the_time_window_points_at_the_clock(serve: Serve, code: str) -> None:
    """A node refuses a request signed out of its window (this machine's clock is off) without signing
    its answer: still no answer, but the line says what it claims and what to check."""
    url = await serve(401, cbor.encode({"code": code, "message": "<b>anything</b>"}), None)
    client = PeerClient(OTHER)
    try:
        with pytest.raises(PeerUnreachable) as unreachable:
            await client.call("POST", f"{url}/v0/state", expected_signer=NODE.did)
    finally:
        await client.close()
    assert f"unsigned, it says {code}" in unreachable.value.reason
    assert "clock" in unreachable.value.reason and "anything" not in unreachable.value.reason


@pytest.mark.parametrize(
    ("body", "refusal"),
    [
        (NOT_FOUND, Code.NOT_FOUND),
        # A readable error body with a code this node does not know is still a refusal ([ERR-5]).
        (cbor.encode({"code": "no-such-code", "message": "later version"}), Code.MALFORMED),
        # Not an error body at all ([API-5]): no answer.
        (cbor.encode({"code": "not-found", "message": 7}), None),
        (cbor.encode({"code": "not-found"}), None),
        (cbor.encode({"code": 404, "message": "no such document"}), None),
        (cbor.encode(["not-found", "no such document"]), None),
        (b"\xff not cbor", None),
    ],
    ids=["refusal", "unknown-code", "message-not-text", "no-message", "code-not-text", "not-a-map", "not-cbor"],
)
async def test_a_signed_error_answer_is_read_once_for_its_code_and_message(
    serve: Serve, body: bytes, refusal: Code | None
) -> None:
    url = await serve(404, body, NODE)
    client = PeerClient(OTHER)
    try:
        with pytest.raises((RemoteProtocolError, PeerUnreachable)) as failed:
            await client.call("POST", f"{url}/v0/state", expected_signer=NODE.did)
    finally:
        await client.close()
    if refusal is None:
        assert isinstance(failed.value, PeerUnreachable) and "readable error body" in failed.value.reason
    else:
        assert isinstance(failed.value, RemoteProtocolError) and failed.value.code is refusal
