"""Slow requests [API-33]: a body that arrives too slowly is refused with `timeout`, nothing stored."""

from __future__ import annotations

import pytest

from fedrecord.core import cbor
from fedrecord.node import server

from .node_helpers import ServedNode, assert_unchanged, raw_head, raw_request, snapshot


@pytest.fixture
async def patient(tmp_path, monkeypatch):
    monkeypatch.setattr(server, "BODY_TIMEOUT", 0.5)
    async with ServedNode.running(tmp_path / "patient", role="patient", name="Camille") as node:
        yield node


async def test_a_body_that_never_finishes_is_refused_with_timeout(patient):
    before = await snapshot(patient)
    head = raw_head(
        "POST",
        "/v0/state",
        {"Host": f"127.0.0.1:{patient.port}", "Content-Type": "application/cbor", "Content-Length": "100"},
    )
    status, body = await raw_request(patient.port, head, b"\xa1\x61v\x00")  # 4 of the 100 bytes, then silence
    assert status == 408 and cbor.decode(body)["code"] == "timeout"
    await assert_unchanged(patient, before, nonce_spent=False)
