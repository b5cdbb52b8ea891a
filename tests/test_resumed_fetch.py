"""Resumed fetches between real nodes (spec section 15.15, [API-40] to [API-43]; [HTTP-4] for the range).

A patient node, a GP and a lab run in this process (tests/node_helpers.py); the
GP reaches the patient through a fault-injecting TCP proxy (tests/fault_proxy.py)
that counts the bytes the patient sent and cuts or stalls a connection in the
middle of an answer.  Documents of a few MiB are deposited by the lab from a
file (streamed), accepted by the patient and fetched by the GP under its grant.

* A fetch cut at half its stream fails as unreachable, keeps what arrived, and
  the next fetch asks for the rest (``Range: bytes=N-``, N the bytes held) and
  moves only the rest; each attempt is a receipt in the patient's audit log.
* A partial download tampered with at rest is found when the whole stream is
  hashed, discarded, and fetched again from byte 0.
* A GP process (``fedrecord get --out``) killed in the middle of a download
  leaves bytes the next fetch resumes from.
* Range forms other than one ``bytes=N-``, and a start at or past the end,
  are refused with ``bad-range`` (416) and change nothing but the nonces.
* A Range added, removed or changed on the path fails the request signature.
* Revocation and deletion destroy the bytes of an interrupted fetch.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio

from fedrecord.node.client import PeerUnreachable
from fedrecord.node.ranges import content_range

from .fault_proxy import FaultProxy
from .node_helpers import (
    PASSPHRASE,
    Answer,
    ServedNode,
    Story,
    assert_unchanged,
    build_story,
    fetch_body,
    now,
    route_gp_through_proxy,
    send,
    send_signed,
    signed_headers,
    snapshot,
    stored_stream,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

DOCUMENT_SIZE = 4 << 20
IN_FLIGHT = 1 << 20  # bytes a cut fetch may lose from the client's buffers (see cut_fetch)
# What an answer adds to its stream (status line, header fields with the key wrap), generously.
ANSWER_FIELDS = 8192


@dataclass
class Setting:
    story: Story
    proxy: FaultProxy
    files: Path


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def setting(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Setting]:
    story = await build_story(tmp_path_factory.mktemp("nodes"))
    proxy = await route_gp_through_proxy(story)
    try:
        yield Setting(story, proxy, tmp_path_factory.mktemp("files"))
    finally:
        await proxy.close()
        await story.close()


@dataclass(frozen=True)
class Large:
    doc: bytes
    content: bytes
    size: int  # of its stream


async def deposit_large(setting: Setting) -> Large:
    """A fresh lab result of a few MiB, deposited from a file (streamed), accepted by the patient."""
    story = setting.story
    content = os.urandom(DOCUMENT_SIZE)
    path = setting.files / f"{content[:8].hex()}.bin"
    path.write_bytes(content)
    doc = await story.lab.clinic.deposit(
        story.patient.did, path, title="Whole-genome report", category="lab", doc_type="report", now=now()
    )
    assert await story.lab.clinic.flush_outbox() == (1, 0)
    await story.patient.patient.accept(doc, now=now())
    size = await story.patient.h.files.size(doc)
    assert size is not None and size > DOCUMENT_SIZE
    return Large(doc, content, size)


def held(node: ServedNode, doc: bytes) -> int:
    """Bytes of ``doc`` the node keeps from interrupted fetches (0 when none)."""
    part = node.h.files.root / "partial" / f"{doc.hex()}.part"
    return part.stat().st_size if part.exists() else 0


def partial_files(node: ServedNode) -> list[str]:
    root = node.h.files.root / "partial"
    return sorted(path.name for path in root.iterdir()) if root.exists() else []


async def audit_size(story: Story) -> int:
    return len(await story.patient.patient.audit_log())


async def fetch_counted(setting: Setting, large: Large, node: ServedNode | None = None) -> tuple[int, bytes]:
    """One GP fetch on a fresh connection: (bytes the patient sent for it, content); raises as fetch does."""
    gp = node or setting.story.gp
    await gp.client.close()  # the next request opens a connection of its own, seen whole by the proxy
    before = setting.proxy.downstream
    try:
        content = await gp.clinic.fetch(setting.story.patient.did, large.doc, now=now())
    finally:
        sent = setting.proxy.downstream - before
    return sent, content


async def cut_fetch(setting: Setting, large: Large) -> tuple[int, int]:
    """A GP fetch cut when the patient has sent half the stream: (bytes sent, bytes the GP kept)."""
    setting.proxy.cut_after(large.size // 2)
    before = setting.proxy.downstream
    with pytest.raises(PeerUnreachable, match="cut"):
        await fetch_counted(setting, large)
    kept = held(setting.story.gp, large.doc)
    # What arrived is kept, up to what was still in the client's buffers when the link went: the
    # socket's receive buffer (which loopback grows to several hundred KiB under load) and the chunk
    # being assembled.
    assert large.size // 2 - IN_FLIGHT < kept <= large.size // 2
    return setting.proxy.downstream - before, kept


# --- resuming ------------------------------------------------------------------------------------------


async def test_cut_fetch_resumes_with_the_rest_only(setting: Setting) -> None:
    """[API-42]: the second fetch asks from the bytes held and moves only the rest; the total stays < 1.10x."""
    story, gp = setting.story, setting.story.gp
    large = await deposit_large(setting)
    receipts = await audit_size(story)
    first, kept = await cut_fetch(setting, large)
    assert await audit_size(story) == receipts + 1, "the cut attempt was decided and logged"
    assert partial_files(gp) == [f"{large.doc.hex()}.meta", f"{large.doc.hex()}.part"]

    second, content = await fetch_counted(setting, large)
    assert content == large.content
    assert second <= large.size - kept + ANSWER_FIELDS, "only the rest of the stream was sent again"
    assert (first + second) / large.size < 1.10
    request = setting.proxy.requests[-1].lower()
    assert f"range: bytes={kept}-".encode() in request
    assert b'"range");created=' in request, "the Range field is covered by the signature"
    assert await audit_size(story) == receipts + 2, "the resumed attempt has its own receipt"
    assert partial_files(gp) == []
    assert gp.h.files.path_of(large.doc).exists()
    assert await gp.clinic.read_held(large.doc, now=now()) == large.content


async def test_tampered_partial_is_found_and_fetched_again(setting: Setting) -> None:
    """[API-42]: bytes held are hashed again from the disk; a changed byte makes the fetch start over at 0."""
    story, gp = setting.story, setting.story.gp
    large = await deposit_large(setting)
    _first, kept = await cut_fetch(setting, large)
    part = gp.h.files.root / "partial" / f"{large.doc.hex()}.part"
    with part.open("r+b") as file:
        file.seek(kept // 2)
        byte = file.read(1)
        file.seek(kept // 2)
        file.write(bytes([byte[0] ^ 1]))
    receipts = await audit_size(story)
    sent, content = await fetch_counted(setting, large)
    assert content == large.content
    # The rest (found not to complete the document), then the whole stream again.
    assert large.size - kept + large.size <= sent <= large.size - kept + large.size + 2 * ANSWER_FIELDS
    assert await audit_size(story) == receipts + 2
    assert partial_files(gp) == []


async def test_killed_fetch_process_is_resumed(setting: Setting) -> None:
    """A `fedrecord get --out` killed in the middle of its download: the next fetch resumes its bytes."""
    story, gp = setting.story, setting.story.gp
    large = await deposit_large(setting)
    out = setting.files / "fetched.bin"
    setting.proxy.stall_after(large.size // 2)
    before = setting.proxy.downstream
    command = [sys.executable, "-m", "fedrecord", "--home", str(gp.path), "--json", "get", large.doc.hex()]
    process = await asyncio.create_subprocess_exec(
        *command,
        "--patient",
        story.patient.did,
        "--out",
        str(out),
        env={**os.environ, "FEDRECORD_PASSPHRASE": PASSPHRASE.decode()},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        await asyncio.wait_for(setting.proxy.stalled.wait(), 60)
        # The stream stalls at half: let the client write what it received, then kill it.
        size = -1
        while held(gp, large.doc) != size:
            size = held(gp, large.doc)
            await asyncio.sleep(0.2)
    finally:
        process.send_signal(signal.SIGKILL)
        await process.wait()
    first = setting.proxy.downstream - before
    kept = held(gp, large.doc)
    assert large.size // 2 - IN_FLIGHT < kept <= large.size // 2
    assert not out.exists(), "nothing of an unfinished document under its name"

    second, content = await fetch_counted(setting, large)
    assert content == large.content
    assert second <= large.size - kept + ANSWER_FIELDS
    assert (first + second) / large.size < 1.10
    assert partial_files(gp) == []


async def test_one_download_at_a_time_the_other_without_resuming(setting: Setting) -> None:
    """Two fetches of one document at once: one holds the partial download, the other streams to tmp."""
    story, gp = setting.story, setting.story.gp
    large = await deposit_large(setting)
    first, second = await asyncio.gather(
        gp.clinic.fetch(story.patient.did, large.doc, now=now()),
        gp.clinic.fetch(story.patient.did, large.doc, now=now()),
    )
    assert first == second == large.content
    assert partial_files(gp) == []


# --- ranges on the wire --------------------------------------------------------------------------------


async def _fetch_with(story: Story, doc: bytes, range_value: str | None, **options: object) -> Answer:
    gp = story.gp.identity
    headers = {"Range": range_value} if range_value is not None else None
    data = fetch_body(gp, story, doc, [story.gp_grant])
    return await send_signed(
        story.session, gp, "POST", story.patient.url + "/v0/fetch", data, headers=headers, **options
    )


async def test_ranged_fetch_is_answered_206_and_logged(setting: Setting) -> None:
    """[API-40]: 206 with Content-Range and the rest of the stored stream; a receipt as any fetch."""
    story = setting.story
    doc = story.docs["cbc"]
    stored = await stored_stream(story.patient, doc)
    assert stored is not None
    for start in (0, 10, len(stored) - 1):
        receipts = await audit_size(story)
        answer = await _fetch_with(story, doc, f"bytes={start}-")
        assert answer.status == 206, answer.body
        assert answer.headers["Content-Range"] == content_range(start, len(stored))
        assert int(answer.headers["Content-Length"]) == len(stored) - start
        assert answer.body == stored[start:]
        assert "Fedrecord-Key-Wrap" in answer.headers
        assert await audit_size(story) == receipts + 1
    assert (await _fetch_with(story, doc, None)).status == 200


@pytest.mark.parametrize(
    "value",
    [
        "bytes=0-10",  # a closed range
        "bytes=-100",  # a suffix range
        "bytes=0-,100-",  # several ranges
        "bytes=0-, bytes=5-",  # two fields, as combined on receipt
        "items=0-",  # another unit
        "bytes = 5-",
        "bytes=x-",
        "",
        "SIZE",  # the stream's length: nothing left to send
        "SIZE+1",
    ],
)
async def test_bad_range_is_refused_and_changes_nothing(setting: Setting, value: str) -> None:
    """[API-41]: `bad-range` (416), signed; no receipt, no file; only the request's nonce is spent."""
    story = setting.story
    doc = story.docs["cbc"]
    stored = await stored_stream(story.patient, doc)
    assert stored is not None
    size = len(stored)
    if value.startswith("SIZE"):
        value = f"bytes={size + (1 if value.endswith('+1') else 0)}-"
    before = await snapshot(story.patient)
    answer = await _fetch_with(story, doc, value)
    assert (answer.status, answer.code) == (416, "bad-range"), answer.body
    assert "Signature" in answer.headers, "a refusal after the signature verified is signed"
    await assert_unchanged(story.patient, before, nonce_spent=True)


async def test_bad_range_on_a_document_out_of_reach_is_not_found(setting: Setting) -> None:
    """The length check comes after the decision: a range never tells whether a hidden document exists."""
    story = setting.story
    answer = await _fetch_with(story, story.docs["lithium"], "bytes=999999999-")
    assert (answer.status, answer.code) == (404, "not-found")


@pytest.mark.parametrize("change", ["changed", "added", "removed"])
async def test_range_changed_in_transit_fails_the_signature(setting: Setting, change: str) -> None:
    """[HTTP-4]: the Range field is covered; changed, added or removed on the path, nothing verifies."""
    story = setting.story
    gp = story.gp.identity
    url = story.patient.url + "/v0/fetch"
    data = fetch_body(gp, story, story.docs["cbc"], [story.gp_grant])
    signed_range = {"changed": "bytes=0-", "added": None, "removed": "bytes=0-"}[change]
    headers = signed_headers(gp, "POST", url, data, headers={"Range": signed_range} if signed_range else None)
    if change == "removed":
        del headers["Range"]
    else:
        headers["Range"] = "bytes=100-"
    before = await snapshot(story.patient)
    answer = await send(story.session, "POST", url, body=data, headers=headers)
    assert (answer.status, answer.code) == (401, "bad-signature")
    await assert_unchanged(story.patient, before, nonce_spent=False)


# --- the bytes of an interrupted fetch die with the document or the grant ------------------------------


async def test_deletion_destroys_an_interrupted_fetch(setting: Setting) -> None:
    """[API-43]: the patient deletes the document; the GP's next poll destroys the bytes it held."""
    story, gp = setting.story, setting.story.gp
    large = await deposit_large(setting)
    await cut_fetch(setting, large)
    await story.patient.patient.delete(large.doc, now=now())
    polled = await gp.clinic.poll(story.patient.did, now=now())
    assert polled["destroyed"] >= 1
    assert partial_files(gp) == []


async def test_revocation_destroys_an_interrupted_fetch(tmp_path: Path) -> None:
    """[API-43]: the grant the bytes were fetched under is revoked; the GP's next poll destroys them."""
    story = await build_story(tmp_path / "nodes")
    proxy = await route_gp_through_proxy(story)
    try:
        setting = Setting(story, proxy, tmp_path)
        large = await deposit_large(setting)
        await cut_fetch(setting, large)
        assert (await story.gp.clinic.poll(story.patient.did, now=now()))["destroyed"] == 0
        assert partial_files(story.gp) != [], "a live grant keeps the bytes for the next fetch"
        await story.patient.patient.revoke(story.gp_grant.id, now=now())
        assert (await story.gp.clinic.poll(story.patient.did, now=now()))["destroyed"] == 1
        assert partial_files(story.gp) == []
    finally:
        await proxy.close()
        await story.close()
