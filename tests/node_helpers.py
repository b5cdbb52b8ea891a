"""Real nodes inside the test process: each with its own home, SQLite file and loopback socket.

A :class:`ServedNode` is a node home (key file, ``node.db``, ``documents/``)
opened with argon2id at its interactive cost and served by aiohttp on
127.0.0.1; the port is chosen by the system at first start, recorded as the
node's endpoint (so ``server.authorities()`` accepts it), and reused when the
node is restarted from the same directory.

:func:`build_story` plays the demo's story through the Python API: a patient,
a GP and a lab connect by invitation, the lab deposits results, the patient
accepts them and grants the GP lab results with PSY and SEX privately hidden.
The helpers below it craft requests by hand (signed as anyone, or not at all)
and look at a node's store and files, for the adversarial tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import os
import sys
import time
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from nacl.pwhash import argon2id

from fedrecord.core import (
    AccessReceipt,
    DocumentHeader,
    EncryptionKey,
    Grant,
    NodeProfile,
    Scope,
    Signed,
    SigningIdentity,
    cbor,
    open_record,
    sign_record,
)
from fedrecord.core.documents import DocumentWriter
from fedrecord.core.key_wraps import make_deposit
from fedrecord.core.stream import key_commitment
from fedrecord.http.aiohttp_signing import client_signing_headers
from fedrecord.node.client import PeerClient, b64
from fedrecord.node.clinic import ClinicNode
from fedrecord.node.home import NodeHome, init_home
from fedrecord.node.patient import PatientNode
from fedrecord.node.runner import NodeRunner
from fedrecord.node.schema import TABLES
from fedrecord.node.server import PATIENT, make_app
from fedrecord.storage.sqlite import integrity_check, table_digest

from .fault_proxy import FaultProxy

PASSPHRASE = b"adversarial tests, not a secret"
KDF_LIMITS = (argon2id.OPSLIMIT_INTERACTIVE, argon2id.MEMLIMIT_INTERACTIVE)
DAY = 86_400
DOCUMENT_ID_TAG = b"fedrecord/v0/document-id"


def now() -> int:
    return int(time.time())


def fresh_nonce() -> str:
    return b64(os.urandom(16))


# --- nodes ------------------------------------------------------------------------------------


@dataclass
class ServedNode:
    """One node: its home directory, opened home, aiohttp runner and (for clinics) its ClinicNode."""

    path: Path
    role: str
    port: int = 0
    home: NodeHome | None = None
    runner: web.AppRunner | None = None
    app: web.Application | None = None
    client: PeerClient | None = None
    clinic_node: ClinicNode | None = None
    base: str = ""
    """The path of its endpoint (``/fedrecord``): the API is served under it."""

    @classmethod
    @contextlib.asynccontextmanager
    async def running(cls, path: Path, *, role: str, name: str) -> AsyncIterator[ServedNode]:
        """A new node served for the block, stopped after it (a fixture's whole body)."""
        node = await cls.create(path, role=role, name=name)
        try:
            yield node
        finally:
            await node.stop()

    @classmethod
    async def create(cls, path: Path, *, role: str, name: str, base: str = "") -> ServedNode:
        init_home(
            path,
            role=role,
            name=name,
            endpoint=f"http://127.0.0.1:0{base}",
            passphrase=PASSPHRASE,
            kdf_limits=KDF_LIMITS,
        )
        node = cls(path, role, base=base)
        await node.start()
        return node

    async def start(self) -> None:
        """Open the home and serve it on 127.0.0.1 (on the port of the first start, once there is one)."""
        home = await NodeHome.open(self.path, PASSPHRASE)
        client = PeerClient(home.identity)
        clinic = ClinicNode(home, client) if self.role == "clinic" else None
        app = make_app(home, clinic=clinic)
        # As fedrecord.node.runner.run_node builds it.
        runner = NodeRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", self.port)
        await site.start()
        self.port = int(runner.addresses[0][1])
        home.with_endpoint(f"http://127.0.0.1:{self.port}{self.base}")
        self.home, self.client, self.clinic_node, self.app, self.runner = home, client, clinic, app, runner

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
        if self.client is not None:
            await self.client.close()
        if self.home is not None:
            await self.home.close()
        self.runner = self.client = self.home = self.app = self.clinic_node = None

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def h(self) -> NodeHome:
        assert self.home is not None, "node is stopped"
        return self.home

    @property
    def did(self) -> str:
        return self.h.did

    @property
    def identity(self) -> SigningIdentity:
        return self.h.identity

    @property
    def patient(self) -> PatientNode:
        assert self.app is not None
        return self.app[PATIENT]

    @property
    def clinic(self) -> ClinicNode:
        assert self.clinic_node is not None
        return self.clinic_node


# --- the story --------------------------------------------------------------------------------

RESULTS = {
    "cbc": ("Complete blood count", "lab", (), b"Hemoglobin 14.1 g/dL\nLeukocytes 6.2 G/L\n"),
    "lithium": ("Lithium level", "lab", ("PSY",), b"Lithium 0.7 mmol/L (therapeutic range)\n"),
    # Not a lab result: outside the GP's grant.
    "xray": ("Chest X-ray report", "imaging", (), b"No focal consolidation.\n"),
}


@dataclass
class Story:
    patient: ServedNode
    gp: ServedNode
    lab: ServedNode
    docs: dict[str, bytes]
    gp_grant: Signed[Grant]
    session: aiohttp.ClientSession
    deposit_grants: dict[str, bytes] = field(default_factory=dict)

    async def close(self) -> None:
        await self.session.close()
        for node in (self.gp, self.lab, self.patient):
            await node.stop()


async def build_story(root: Path) -> Story:
    """The demo's story, through PatientNode / ClinicNode over real HTTP between served nodes."""
    patient = await ServedNode.create(root / "patient", role="patient", name="Camille (patient)")
    gp = await ServedNode.create(root / "gp", role="clinic", name="Cabinet du Dr Martin")
    lab = await ServedNode.create(root / "lab", role="clinic", name="Laboratoire Pasteur")
    session = aiohttp.ClientSession(auto_decompress=False)
    try:
        for clinic in (lab, gp):
            invitation = await patient.patient.create_invitation(label=clinic.h.config.name, now=now())
            connection = await clinic.clinic.connect(invitation.url(), now=now())
            assert connection.patient == patient.did
        docs = {}
        for key, (title, category, labels, content) in RESULTS.items():
            docs[key] = await lab.clinic.deposit(
                patient.did,
                content,
                title=title,
                category=category,
                doc_type="lab-result" if category == "lab" else "report",
                labels=labels,
                now=now(),
            )
        sent, pending = await lab.clinic.flush_outbox()
        assert (sent, pending) == (len(RESULTS), 0), await lab.clinic.outbox()
        inbox = await patient.patient.inbox()
        assert {item.doc for item in inbox} == set(docs.values())
        for item in inbox:
            await patient.patient.accept(item.doc, now=now())
        gp_grant = await patient.patient.grant(
            audience=gp.did,
            scope=Scope(categories=("lab",), since=now() - 365 * DAY, past=True, future=True),
            actions=("delegate", "read"),
            purpose="treatment",
            days=90,
            now=now(),
            hide_labels=("PSY", "SEX"),
        )
        await gp.clinic.poll(patient.did, now=now())
        listing = await gp.clinic.listing(patient.did, now=now())
        assert [item["doc"] for item in listing] == [docs["cbc"]], "the GP sees only the blood count"
    except BaseException:
        await session.close()
        for node in (gp, lab, patient):
            await node.stop()
        raise
    deposit_grants = {}
    for clinic in (lab, gp):
        async with clinic.h.db.execute("SELECT deposit_grant FROM connections") as cursor:
            row = await cursor.fetchone()
        assert row is not None
        deposit_grants[clinic.did] = open_record(row[0], Grant).id
    return Story(patient, gp, lab, docs, gp_grant, session, deposit_grants)


# --- crafted requests ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Impostor:
    """Claims one did (the ``keyid``) but signs with another node's key."""

    did: str
    key_of: SigningIdentity

    def sign(self, message: bytes) -> bytes:
        return self.key_of.sign(message)


def signed_headers(
    identity: SigningIdentity | Impostor,
    method: str,
    url: str,
    body: bytes | None,
    *,
    at: int | None = None,
    nonce: str | None = None,
    lifetime: int = 60,
    streamed: bool = False,
    headers: Mapping[str, str] | None = None,
) -> CIMultiDict[str]:
    return client_signing_headers(
        identity=identity,  # type: ignore[arg-type]  # an Impostor quacks like an identity
        method=method,
        url=url,
        body=body,
        now=now() if at is None else at,
        nonce=fresh_nonce() if nonce is None else nonce,
        headers={"Content-Type": "application/cbor", **(headers or {})},
        streamed=streamed,
        lifetime=lifetime,
    )


@dataclass(frozen=True)
class Answer:
    status: int
    content_type: str
    body: bytes
    headers: Mapping[str, str]

    @property
    def code(self) -> str | None:
        try:
            decoded = cbor.decode(self.body)
        except Exception:  # noqa: BLE001 - an unreadable body simply has no code
            return None
        return decoded.get("code") if isinstance(decoded, dict) else None

    @property
    def decoded(self) -> Any:
        return cbor.decode(self.body)


async def send(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    body: bytes | AsyncIterable[bytes] | None = None,
    headers: Mapping[str, str] | None = None,
) -> Answer:
    async with session.request(method, url, data=body, headers=headers) as response:
        data = await response.read()
        return Answer(response.status, response.headers.get("Content-Type", ""), data, dict(response.headers))


async def send_signed(
    session: aiohttp.ClientSession,
    identity: SigningIdentity | Impostor,
    method: str,
    url: str,
    body: bytes | None,
    **options: Any,
) -> Answer:
    return await send(
        session, method, url, body=body, headers=signed_headers(identity, method, url, body, **options)
    )


def body(**fields: Any) -> bytes:
    return cbor.encode({"v": 0, **fields})

def answered(answer: Answer) -> dict[str, Any]:
    """The fields of a signed 200 CBOR answer, ``v`` left out."""
    assert answer.status == 200, (answer.status, answer.body)
    assert answer.content_type == "application/cbor"
    assert "Signature" in answer.headers, "the answer to a verified request is signed ([HTTP-12])"
    decoded = answer.decoded
    assert decoded["v"] == 0
    return {key: value for key, value in decoded.items() if key != "v"}


def refused(answer: Answer, status: int, code: str, *, signed: bool = False) -> None:
    """``answer`` is an error body with ``code`` and ``status`` (signed, when refused after verification)."""
    assert (answer.status, answer.code) == (status, code), (answer.status, answer.body)
    assert answer.content_type == "application/cbor"
    decoded = answer.decoded
    assert set(decoded) == {"code", "message"} and isinstance(decoded["message"], str)
    if signed:
        assert "Signature" in answer.headers, "a refusal of a verified request is signed ([API-5])"



async def cli_json(node: ServedNode, *args: str) -> Any:
    """Run ``fedrecord --home <node's home> --json ARGS`` in a process of its own; its JSON answer.

    The passphrase comes from the environment, as for a clinic unlocked unattended.
    """
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "fedrecord",
        "--home",
        str(node.path),
        "--json",
        *args,
        env={**os.environ, "FEDRECORD_PASSPHRASE": PASSPHRASE.decode()},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    return json.loads(out)


def random_doc() -> bytes:
    """A document id nothing holds."""
    return os.urandom(32)


def receipt_for(identity: SigningIdentity, *, patient: str, doc: bytes, grant: Signed[Grant]) -> bytes:
    return sign_record(
        AccessReceipt(
            patient=patient,
            doc=doc,
            grant=grant.id,
            action="read",
            purpose=grant.record.purpose,
            iat=now(),
            nonce=os.urandom(16),
        ),
        identity,
    ).encoded


def fetch_body(identity: SigningIdentity, story: Story, doc: bytes, chain: list[Signed[Grant]]) -> bytes:
    receipt = receipt_for(identity, patient=story.patient.did, doc=doc, grant=chain[-1])
    return body(chain=[g.encoded for g in chain], receipt=receipt)


async def chunked(data: bytes, piece: int = 1 << 16) -> Any:
    for start in range(0, len(data), piece):
        yield data[start : start + piece]
        await asyncio.sleep(0)


async def raw_request(
    port: int, head: str, payload: bytes = b"", *, timeout: float = 10
) -> tuple[int, bytes]:
    """Send bytes as they are (a lying Content-Length, no body...) and read one answer: (status, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head.encode("latin-1") + payload)
        await writer.drain()

        async def read() -> tuple[int, bytes]:
            status_line = await reader.readline()
            length = 0
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b""):
                    break
                name, _, value = line.decode("latin-1").partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            return int(status_line.split()[1]), await reader.readexactly(length)

        return await asyncio.wait_for(read(), timeout)
    finally:
        writer.close()


def raw_head(method: str, path: str, headers: Mapping[str, str]) -> str:
    lines = [f"{method} {path} HTTP/1.1", *(f"{k}: {v}" for k, v in headers.items()), "Connection: close"]
    return "\r\n".join(lines) + "\r\n\r\n"


# --- documents and deposits crafted with the core --------------------------------------------------


@dataclass(frozen=True)
class SealedDocument:
    doc: bytes
    ciphertext: bytes
    key: bytes


def seal_document(
    author: SigningIdentity,
    patient: str,
    content: bytes,
    *,
    category: str = "lab",
    labels: tuple[str, ...] = (),
) -> SealedDocument:
    """A document encrypted for ``patient`` as ClinicNode.deposit does, without touching any store."""
    key, prefix = os.urandom(32), os.urandom(16)
    header = DocumentHeader(
        patient=patient,
        title="Crafted",
        doc_type="lab-result",
        category=category,
        labels=labels,
        date=now(),
        media_type="text/plain",
        size=len(content),
        commitment=key_commitment(key, prefix),
    )
    writer = DocumentWriter(author, header, key=key, prefix=prefix)
    ciphertext = b"".join(writer.encrypt([content]))
    return SealedDocument(writer.document_id, ciphertext, key)


async def issue_grant(story: Story, audience: str, *, issued: int | None = None, days: int = 90) -> Signed[Grant]:
    """A 90-day read grant to ``audience`` over the lab results, past and future."""
    return await lab_read_grant(story.patient.patient, audience, issued=issued, days=days)


async def lab_read_grant(
    patient: PatientNode, audience: str, *, issued: int | None = None, days: int = 90
) -> Signed[Grant]:
    """As :func:`issue_grant`, from any patient's node."""
    return await patient.grant(
        audience=audience,
        scope=Scope(categories=("lab",), past=True, future=True),
        actions=("read",),
        purpose="treatment",
        days=days,
        now=now() if issued is None else issued,
    )


async def stored_stream(node: ServedNode, doc: bytes) -> bytes | None:
    """A stored document's ciphertext, wherever the node keeps it: in its row (small) or its file."""
    stream = await node.h.store.document_stream(doc)
    if stream is not None:
        return stream
    path = node.h.files.path_of(doc)
    return path.read_bytes() if path.exists() else None


def document_id_of(ciphertext: bytes) -> bytes:
    return hashlib.sha256(DOCUMENT_ID_TAG + ciphertext).digest()


def deposit_record(story: Story, depositor: ServedNode, doc: bytes, size: int, key: bytes) -> bytes:
    """A deposit signed by ``depositor`` under its deposit grant, sealed to the patient's key."""
    return make_deposit(
        depositor=depositor.identity,
        patient=story.patient.did,
        patient_key=story.patient.h.encryption.public_key,
        doc=doc,
        size=size,
        key=key,
        grant=story.deposit_grants[depositor.did],
        iat=now(),
        ephemeral_seed=os.urandom(32),
    ).encoded


def throwaway_profile(identity: SigningIdentity, enc_public: bytes) -> bytes:
    """A node profile for an identity that has no home (a clinic we never run)."""
    t = now()
    return sign_record(
        NodeProfile(
            name="Throwaway clinic",
            role="clinic",
            endpoints=("http://127.0.0.1:9",),
            enc_keys=(EncryptionKey(key=enc_public, nbf=t - DAY, exp=t + 365 * DAY),),
            versions=(0,),
            seq=t,
            iat=t,
        ),
        identity,
    ).encoded


# --- looking at a node's store ---------------------------------------------------------------------


async def node_tables(node: ServedNode) -> tuple[str, ...]:
    """Every table of the node's schema (TABLES, plus any a concurrent migration added)."""
    async with node.h.db.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
    ) as cursor:
        names = {row[0] for row in await cursor.fetchall()}
    assert set(TABLES) <= names
    return tuple(sorted(names))


def stored_files(node: ServedNode) -> tuple[list[str], list[str]]:
    """(document files at their final paths, leftovers in documents/tmp)."""
    root = node.h.files.root
    final: list[str] = []
    temporary: list[str] = []
    for path in sorted(root.rglob("*")):
        if path.is_file():
            (temporary if path.parent.name == "tmp" else final).append(str(path.relative_to(root)))
    return final, temporary


@dataclass(frozen=True)
class Snapshot:
    digest: dict[str, tuple[int, str]]
    files: list[str]


async def snapshot(node: ServedNode) -> Snapshot:
    digest = await table_digest(node.h.db, await node_tables(node))
    files, temporary = stored_files(node)
    assert temporary == [], f"temporary files left behind: {temporary}"
    return Snapshot(digest, files)


async def assert_unchanged(node: ServedNode, before: Snapshot, *, nonce_spent: bool) -> None:
    """The store and files are as ``before``; the nonces table holds one more row iff ``nonce_spent``."""
    after = await snapshot(node)
    others_before = {t: v for t, v in before.digest.items() if t != "nonces"}
    others_after = {t: v for t, v in after.digest.items() if t != "nonces"}
    changed = sorted(t for t in others_before if others_before[t] != others_after.get(t))
    assert not changed, f"tables changed by a refused request: {changed}"
    expected_nonces = before.digest["nonces"][0] + (1 if nonce_spent else 0)
    assert after.digest["nonces"][0] == expected_nonces, (
        f"nonces: {before.digest['nonces'][0]} -> {after.digest['nonces'][0]}, expected {expected_nonces}"
    )
    if not nonce_spent:
        assert after.digest["nonces"] == before.digest["nonces"]
    assert after.files == before.files, "document files changed"
    assert await integrity_check(node.h.db) == "ok"


async def route_gp_through_proxy(story: Story) -> FaultProxy:
    """The GP reaches the patient through a proxy; the patient's endpoint names it, so its Host verifies.

    The address the patient listens on stays one of its authorities ([HTTP-9]), for the lab and
    the crafted requests that go to it directly.
    """
    proxy = await FaultProxy(story.patient.port).start()
    home = story.patient.h
    home.with_endpoint(proxy.url)
    home.config = dataclasses.replace(home.config, port=story.patient.port)
    async with story.gp.h.store.transaction():
        await story.gp.h.store.save_connection(
            story.patient.did, endpoint=proxy.url, profile=story.patient.h.profile.encoded
        )
    return proxy


async def enroll_device(patient: ServedNode, device: ServedNode) -> Signed[Grant]:
    """Connect ``device`` to ``patient`` with an invitation and give it a device grant (US-12, [API-46])."""
    invitation = await patient.patient.create_invitation(label=device.h.config.name, now=now())
    await device.clinic.connect(invitation.url(), now=now())
    return await patient.patient.grant(
        audience=device.did,
        scope=Scope(past=True, future=True),
        actions=("read", "delegate", "manage"),
        purpose="device",
        days=365,
        now=now(),
    )
