"""Requests aiohttp's HTTP parser refuses are answered with the protocol's CBOR error body ([API-5], [HTTP-9]).

Found by the conformance case ``signatures.host-authority``: a request with two
``Host`` fields, or none, never reached the application and was answered
``400`` in plain text, where the spec wants ``bad-signature`` (401) in an error body.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from fedrecord.core import SigningIdentity, cbor
from fedrecord.http.aiohttp_signing import client_signing_headers
from fedrecord.node.server import HOME, errors_as_cbor
from fedrecord.node.wire import CBOR_TYPE

from .node_helpers import ServedNode, raw_request


@pytest_asyncio.fixture
async def node(tmp_path: Path) -> AsyncIterator[ServedNode]:
    async with ServedNode.running(tmp_path / "patient", role="patient", name="Parser patient") as served:
        yield served


def _error(data: bytes) -> dict[str, str]:
    decoded = cbor.decode(data)
    assert type(decoded) is dict
    return decoded


async def test_two_host_fields_are_bad_signature(node: ServedNode) -> None:
    host = f"127.0.0.1:{node.port}"
    head = f"POST /v0/state HTTP/1.1\r\nHost: {host}\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    status, data = await raw_request(node.port, head)
    assert status == 401
    assert _error(data) == {"code": "bad-signature", "message": "signature did not verify"}


async def test_no_host_field_is_bad_signature(node: ServedNode) -> None:
    head = "POST /v0/state HTTP/1.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    status, data = await raw_request(node.port, head)
    assert status == 401
    assert _error(data)["code"] == "bad-signature"


async def test_an_unparsable_request_is_malformed(node: ServedNode) -> None:
    status, data = await raw_request(node.port, "POST /v0/state HTTP/1.1\r\nBroken header line\r\n\r\n")
    assert status == 400
    assert _error(data)["code"] == "malformed"


async def test_served_requests_are_unchanged(node: ServedNode) -> None:
    head = f"GET /v0/health HTTP/1.1\r\nHost: 127.0.0.1:{node.port}\r\nConnection: close\r\n\r\n"
    status, data = await raw_request(node.port, head)
    assert status == 200
    assert _error(data)["role"] == "patient"


BAD_FRAMING = {
    "chunk size not hex": "Transfer-Encoding: chunked\r\n\r\nzz\r\n",
    "both lengths": "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "two lengths": "Content-Length: 2\r\nContent-Length: 2\r\n\r\n{}",
}


@pytest.mark.parametrize("framing", sorted(BAD_FRAMING))
async def test_a_malformed_request_logs_one_line(
    node: ServedNode, framing: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Anyone can send these: one line each in the node's log, never aiohttp's traceback ([SEC-2])."""
    caplog.set_level(logging.INFO)
    head = f"POST /v0/state HTTP/1.1\r\nHost: 127.0.0.1:{node.port}\r\n" + BAD_FRAMING[framing]
    status, data = await raw_request(node.port, head)
    assert (status, _error(data)["code"]) == (400, "malformed")
    assert "Traceback" not in caplog.text and "Error handling request" not in caplog.text
    assert "refused a malformed HTTP request" in caplog.text


async def test_a_field_over_the_parsers_limit_is_too_large(node: ServedNode) -> None:
    """Over 8190 bytes aiohttp refuses the line; over 4096 characters is too-large already ([HTTP-15])."""
    head = (
        f"POST /v0/state HTTP/1.1\r\nHost: 127.0.0.1:{node.port}\r\nSignature: fr=:{'A' * 9000}:\r\n"
        "Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
    status, data = await raw_request(node.port, head)
    assert (status, _error(data)["code"]) == (413, "too-large")


@pytest.mark.parametrize(
    "field",
    [
        "Expect: something-else\r\nContent-Length: 0",  # aiohttp alone answers 417 in plain text
        "Transfer-Encoding: gzip, chunked",  # read as plain chunks, the gzip never decoded ([API-4])
    ],
)
async def test_an_expectation_or_transfer_coding_not_served_is_malformed(node: ServedNode, field: str) -> None:
    body = "0\r\n\r\n" if "chunked" in field else ""
    head = f"POST /v0/state HTTP/1.1\r\nHost: 127.0.0.1:{node.port}\r\n{field}\r\nConnection: close\r\n\r\n{body}"
    status, data = await raw_request(node.port, head)
    assert (status, _error(data)["code"]) == (400, "malformed")


@pytest.mark.parametrize(("endpoint", "verifies"), [("https://patient.example", True), ("http://patient.example", False)])
async def test_behind_a_tls_terminating_proxy_requests_signed_for_https_verify(
    node: ServedNode, endpoint: str, verifies: bool
) -> None:
    """A node whose endpoint is https sits behind a proxy that ends TLS and passes on plain HTTP with the
    same ``Host``: the request was signed for https://, so that is the target URI checked ([HTTP-9]).
    A node whose endpoint is http takes no such request for https."""
    assert node.home is not None
    node.home.config = dataclasses.replace(node.home.config, endpoint=endpoint)
    body = cbor.encode({})
    fields = client_signing_headers(
        identity=SigningIdentity.from_seed(os.urandom(32)),
        method="POST",
        url="https://patient.example/v0/state",
        body=body,
        now=int(time.time()),
        nonce=os.urandom(16).hex(),
        headers={"Content-Type": CBOR_TYPE},
    )
    fields["Content-Length"] = str(len(body))
    fields["Connection"] = "close"
    head = "POST /v0/state HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items()) + "\r\n"
    status, data = await raw_request(node.port, head, body)
    assert (_error(data).get("code") != "bad-signature") is verifies, (status, data)


@pytest.mark.parametrize(
    "failure",
    [OSError(errno.ENOSPC, "No space left on device"), sqlite3.OperationalError("database or disk is full")],
    ids=["file", "database"],
)
async def test_a_full_disk_is_one_line_and_a_retry_later(
    failure: Exception, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A deposit meeting a full disk: the operator reads where, not a traceback; the sender gets a 503
    (no answer: it keeps the deposit and retries)."""
    app = web.Application()
    app[HOME] = SimpleNamespace(path=tmp_path)  # type: ignore[misc]

    async def handler(request: web.Request) -> web.StreamResponse:
        raise failure

    caplog.set_level(logging.INFO)
    answer = await errors_as_cbor(make_mocked_request("PUT", "/v0/documents/00", app=app), handler)
    assert answer.status == 503
    assert "Traceback" not in caplog.text and len(caplog.records) == 1
    assert f"the disk of {tmp_path} is full" in caplog.text


async def test_a_commit_undone_by_the_database_is_one_line_and_a_retry_later(caplog: pytest.LogCaptureFixture) -> None:
    """A block of a group commit rolled back because another block of the group met a full disk: the
    same answer as the block that met it (503, one line), not a 500 with a traceback."""
    from fedrecord.storage.sqlite import StorageError

    async def handler(request: web.Request) -> web.StreamResponse:
        raise StorageError("the transaction was rolled back by the database")

    caplog.set_level(logging.INFO)
    answer = await errors_as_cbor(make_mocked_request("PUT", "/v0/documents/00"), handler)
    assert answer.status == 503
    assert "Traceback" not in caplog.text and len(caplog.records) == 1
