"""Requests aiohttp's HTTP parser refuses are answered with the protocol's CBOR error body ([API-5], [HTTP-9]).

Found by the conformance case ``signatures.host-authority``: a request with two
``Host`` fields, or none, never reached the application and was answered
``400`` in plain text, where the spec wants ``bad-signature`` (401) in an error body.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from fedrecord.core import cbor

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
