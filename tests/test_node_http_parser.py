"""Requests aiohttp's HTTP parser refuses are answered with the protocol's CBOR error body ([API-5], [HTTP-9]).

Found by the conformance case ``signatures.host-authority``: a request with two
``Host`` fields, or none, never reached the application and was answered
``400`` in plain text, where the spec wants ``bad-signature`` (401) in an error body.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

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
