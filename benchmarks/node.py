"""Benchmarks of running nodes over HTTP, as ratios against baselines measured in the same run.

    python benchmarks/node.py [--json PATH] [--quick] [--concurrency N] [--profile DIR]

Real processes on loopback: the patient's node is ``python -m fedrecord serve``
(its own SQLite database, WAL, ``synchronous=FULL``; its own document files),
the baseline is a trivial aiohttp server in a process of its own, and the load
comes from a third process (this script in ``--load`` mode), so each server
has its own interpreter and the load generator's CPU is not the server's.

* ``authorized_get_ratio``: authorized fetches of a 4 KiB document per second
  through the patient node's ``POST /v0/fetch`` -- RFC 9421 signature
  verified, its nonce committed, the grant chain decided, the reader's signed
  receipt committed to the hash-chained audit log before any byte of the body,
  a key wrap signed for the reader -- divided by plain ``GET``\\ s of as many
  bytes per second from a trivial aiohttp server.  The same client serves both:
  N keep-alive connections on asyncio streams writing prepared requests (the
  signed ones are signed, each with its own receipt and nonce, before the
  clock starts) and reading whole answers, so the server is what is measured.
  Target >= 0.3.
* ``deposit_throughput_ratio``: deposits of 1,000 documents of 100 KiB per
  second (100 with ``--quick``) -- encrypted and signed by a connected lab
  (``ClinicNode.deposit``, before the clock starts), then sent by N concurrent
  signed, streamed ``PUT /v0/documents/{id}`` (the lab's real send path) to the
  patient node, which verifies signature, nonce, deposit record, grant and
  ciphertext (its id, every chunk and the author's signed header), and commits
  the inbox row, the stream in it (a document up to 1 MiB is kept in its row),
  before answering -- divided by raw aiohttp ``PUT``\\ s of the
  same ciphertext files to a trivial aiohttp server that writes each to a file
  and fsyncs it, with the same client concurrency.  Target >= 0.5.

* ``authorized_get_ceiling`` and ``deposit_ceiling`` (no target; they say
  what the targets can be): the same plain server and client, but before each
  answer the server does the cryptography the spec requires of a node for
  that request, and nothing else (``_Floor``: for a fetch two Ed25519
  verifications and a countersignature; for a deposit three verifications, a
  sealed box, the stream's hash, every chunk opened and a signed answer), on
  prepared inputs.  Every other step of a node (nonce, decision, receipt,
  database, CBOR, RFC 9421 parsing) costs more on top, so a node's ratio stays
  below its ceiling: a target above the ceiling cannot be met by any
  implementation of the spec on aiohttp and PyNaCl.

Rounds alternate baseline, node and ceiling; each figure is the best round.  The
server's CPU time per request is read from ``/proc`` where there is one.
``--profile DIR`` runs the patient node under cProfile, timed by its event-loop
thread's CPU time (``benchmarks/cpu_profile.py``), and prints where that thread
spends it (the database thread is not in it; figures inflated by cProfile).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent.parent / "src"))

from fedrecord.loopback import free_port  # noqa: E402

PASSPHRASE = "benchmark passphrase, not a secret"
DOCUMENT_SIZE = 4096
DEPOSIT_SIZE = 100 * 1024
TARGETS = {"authorized_get_ratio": 0.3, "deposit_throughput_ratio": 0.5}


# --- processes --------------------------------------------------------------------------------------------


def _env(home: Path | None = None) -> dict[str, str]:
    env = {**os.environ, "FEDRECORD_PASSPHRASE": PASSPHRASE, "FEDRECORD_KDF": "interactive"}
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(HERE.parent.parent / "src"), env.get("PYTHONPATH")])
    )
    if home is not None:
        env["FEDRECORD_HOME"] = str(home)
    return env


def _wait_for(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            if process.poll() is not None:
                raise SystemExit(f"a server stopped at start; see {log}") from None
            time.sleep(0.05)
    raise SystemExit(f"a server did not start; see {log}")


def _stop(process: subprocess.Popen[bytes] | None) -> None:
    if process is not None and process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process and all its threads, from /proc (None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _json_process(what: str, arguments: list[str], options: dict[str, Any], *, timeout: float) -> Any:
    """Run ``python arguments...`` in a process of its own, ``options`` as JSON on its stdin; its JSON answer."""
    done = subprocess.run(
        [sys.executable, *arguments],
        input=json.dumps(options),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"{what} failed:\n{done.stderr}")
    return json.loads(done.stdout)


def _load(mode: str, **options: Any) -> dict[str, Any]:
    """Run this script in ``--load`` mode in a process of its own; its JSON answer."""
    result: dict[str, Any] = _json_process(
        f"load generator ({mode})", [str(HERE), "--load", mode], options, timeout=1800
    )
    return result


def _measured(server: subprocess.Popen[bytes], mode: str, **options: Any) -> dict[str, Any]:
    before = _cpu_seconds(server.pid)
    result = _load(mode, **options)
    after = _cpu_seconds(server.pid)
    if before is not None and after is not None and result["completed"]:
        result["server_cpu_us"] = (after - before) / result["completed"] * 1e6
    return result


# --- the trivial baseline server (``--serve-plain``) -----------------------------------------------------


def _write_and_fsync(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


class _Floor:
    """The cryptography the spec requires of a node for every fetch and every deposit, and nothing else.

    The ceilings (``--serve-plain``'s ``/doc-floor`` and ``/upload-floor``)
    do this work on prepared inputs, then answer as the plain routes do: no
    nonce, no decision, no database, no CBOR.  A node that follows the spec
    cannot do less for a request, so no such node on aiohttp and PyNaCl can
    reach a ratio above the ceiling's.

    * A fetch (15.9): the request's signature and the reader's access receipt
      verified; the audit entry countersigned.  (The chain and the key wrap
      are the same for every fetch of a document by a reader: kept, not
      redone.)
    * A deposit (15.5): the request's signature, the deposit record and the
      document's signed header verified; the deposit key's sealed box opened;
      the stream hashed to its id and every 64 KiB chunk opened; the answer
      signed.
    """

    def __init__(self, stream_size: int) -> None:
        from nacl import bindings

        self._b = bindings
        self._public, self._secret = bindings.crypto_sign_keypair()
        self._signed = [bindings.crypto_sign(os.urandom(n), self._secret) for n in (260, 330, 420)]
        self._box_public, self._box_secret = bindings.crypto_box_keypair()
        self._sealed_key = bindings.crypto_box_seal(os.urandom(32), self._box_public)
        self._key, self._nonce = os.urandom(32), os.urandom(24)
        chunk = 65536
        self._chunks = [
            bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(os.urandom(n), b"", self._nonce, self._key)
            for n in [chunk] * (stream_size // chunk) + [stream_size % chunk]
        ]

    def fetch(self) -> None:
        b = self._b
        b.crypto_sign_open(self._signed[0], self._public)
        b.crypto_sign_open(self._signed[1], self._public)
        b.crypto_sign(os.urandom(32), self._secret)

    def deposit(self, stream: bytes) -> None:
        b = self._b
        for signed in self._signed:
            b.crypto_sign_open(signed, self._public)
        b.crypto_box_seal_open(self._sealed_key, self._box_public, self._box_secret)
        hashlib.sha256(stream).digest()
        for sealed in self._chunks:
            b.crypto_aead_xchacha20poly1305_ietf_decrypt(sealed, b"", self._nonce, self._key)
        b.crypto_sign(os.urandom(32), self._secret)


async def _serve_plain(port: int, size: int, directory: Path) -> None:
    from aiohttp import web

    body = os.urandom(size)
    floor = _Floor(DEPOSIT_SIZE + 1024)

    async def get(_request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/octet-stream")

    async def get_floor(_request: web.Request) -> web.Response:
        floor.fetch()
        return web.Response(body=body, content_type="application/octet-stream")

    async def put(request: web.Request) -> web.Response:
        data = await request.read()
        await asyncio.to_thread(_write_and_fsync, directory / request.match_info["name"], data)
        return web.Response(status=201, body=b"stored")

    async def put_floor(request: web.Request) -> web.Response:
        data = await request.read()
        floor.deposit(data)
        await asyncio.to_thread(_write_and_fsync, directory / request.match_info["name"], data)
        return web.Response(status=201, body=b"stored")

    app = web.Application(client_max_size=64 << 20)
    app.router.add_get("/doc", get)
    app.router.add_get("/v0/health", get)
    app.router.add_put("/upload/{name}", put)
    app.router.add_get("/doc-floor", get_floor)
    app.router.add_put("/upload-floor/{name}", put_floor)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await runner.cleanup()


# --- load generators (``--load MODE``), each in its own process ------------------------------------------


async def _http_load(
    port: int, requests: Iterator[bytes], *, concurrency: int, duration: float, warmup: float
) -> dict[str, Any]:
    """Send prepared HTTP/1.1 requests over ``concurrency`` keep-alive connections; count whole answers.

    Answers completed during the first ``warmup`` seconds are not counted in the
    rate; the run ends after ``duration`` more seconds or when ``requests`` run out.
    """
    statuses: dict[int, int] = {}
    measured = 0
    start = time.perf_counter()
    counting_from = start + warmup
    deadline = counting_from + duration
    last = counting_from

    async def connection() -> None:
        nonlocal measured, last
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.perf_counter() < deadline:
                request = next(requests, None)
                if request is None:
                    return
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head[9:12])
                at = head.lower().find(b"\r\ncontent-length:")
                if at < 0:
                    raise RuntimeError("answers are expected with a Content-Length")
                length = int(head[at + 17 : head.index(b"\r\n", at + 2)])
                await reader.readexactly(length)
                statuses[status] = statuses.get(status, 0) + 1
                now = time.perf_counter()
                if now >= counting_from:
                    measured += 1
                    last = now
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    await asyncio.gather(*(connection() for _ in range(concurrency)))
    seconds = max(last, min(time.perf_counter(), deadline)) - counting_from
    return {
        "per_s": measured / seconds if seconds > 0 else 0.0,
        "completed": sum(statuses.values()),
        "ok": statuses.get(200, 0),
        "errors": sum(n for status, n in statuses.items() if status != 200),
        "statuses": statuses,
    }


async def _load_get(options: dict[str, Any]) -> dict[str, Any]:
    path = options.get("path", "/doc")
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{options['port']}\r\n\r\n".encode()
    return await _http_load(
        options["port"],
        iter(lambda: request, None),
        concurrency=options["concurrency"],
        duration=options["duration"],
        warmup=options["warmup"],
    )


async def _load_fetch(options: dict[str, Any]) -> dict[str, Any]:
    """Signed fetches as the GP's node makes them (``ClinicNode._fetch_under``), prepared up front."""
    from fedrecord.core import AccessReceipt, sign_record
    from fedrecord.http.aiohttp_signing import client_signing_headers
    from fedrecord.node.client import b64
    from fedrecord.node.clinic import ClinicNode
    from fedrecord.node.home import NodeHome
    from fedrecord.node.wire import CBOR_TYPE, encode_body

    home = await NodeHome.open(Path(options["home"]), PASSPHRASE.encode())
    try:
        clinic = ClinicNode(home)
        patient, doc = options["patient"], bytes.fromhex(options["doc"])
        (chain, *_others) = await clinic.chains_from(patient, now=int(time.time()))
        url = f"{options['endpoint']}/v0/fetch"
        prepared = []
        started = time.perf_counter()
        for _ in range(options["pool"]):
            now = int(time.time())
            receipt = sign_record(
                AccessReceipt(
                    patient=patient,
                    doc=doc,
                    grant=chain[-1].id,
                    action="read",
                    purpose=chain[-1].record.purpose,
                    iat=now,
                    nonce=os.urandom(16),
                ),
                home.identity,
            )
            body = encode_body(
                chain=[link.encoded for link in chain], receipt=receipt.encoded, profile=home.profile.encoded
            )
            headers = client_signing_headers(
                identity=home.identity,
                method="POST",
                url=url,
                body=body,
                now=now,
                nonce=b64(os.urandom(16)),
                headers={"Content-Type": CBOR_TYPE},
            )
            head = "POST /v0/fetch HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
            prepared.append(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
        signing = time.perf_counter() - started
        await clinic.client.close()
    finally:
        await home.close()
    result = await _http_load(
        options["port"],
        iter(prepared),
        concurrency=options["concurrency"],
        duration=options["duration"],
        warmup=options["warmup"],
    )
    result["exhausted"] = result["completed"] >= len(prepared)
    result["client_signing_us"] = signing / len(prepared) * 1e6
    return result


async def _load_prepare(options: dict[str, Any]) -> dict[str, Any]:
    """The lab encrypts, signs and stores ``count`` deposits (``ClinicNode.deposit``); not timed against."""
    from fedrecord.core import Deposit
    from fedrecord.node.clinic import ClinicNode
    from fedrecord.node.home import NodeHome

    home = await NodeHome.open(Path(options["home"]), PASSPHRASE.encode())
    clinic = ClinicNode(home)
    try:
        started = time.perf_counter()
        docs = [
            await clinic.deposit(
                options["patient"],
                os.urandom(options["size"]),
                title=f"Result {options['round']}.{i}",
                category="lab",
                doc_type="lab-result",
                now=int(time.time()),
            )
            for i in range(options["count"])
        ]
        seconds = time.perf_counter() - started
        payloads = []
        for doc in docs:
            async with home.db.execute(
                "SELECT encoded FROM records WHERE typ = ? AND subject = ?", (Deposit.TYPE.value, doc)
            ) as cursor:
                (payload,) = await cursor.fetchone() or (b"",)
            payloads.append(payload.hex())
        return {
            "docs": [doc.hex() for doc in docs],
            "payloads": payloads,
            "files": [str(home.files.path_of(doc)) for doc in docs],
            "per_s": len(docs) / seconds,
        }
    finally:
        await clinic.client.close()
        await home.close()


async def _concurrently(count: int, concurrency: int, send: Any) -> tuple[float, int]:
    """Call ``send(i)`` for every i < count with ``concurrency`` workers; (seconds, failures)."""
    next_index = iter(range(count))
    failures = 0

    async def worker() -> None:
        nonlocal failures
        for index in next_index:
            try:
                await send(index)
            except Exception as exc:  # noqa: BLE001 -- any failure is counted and shown
                failures += 1
                print(f"send {index}: {exc!r}", file=sys.stderr)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started, failures


async def _load_upload(options: dict[str, Any]) -> dict[str, Any]:
    """Raw aiohttp PUTs of the lab's ciphertext files (the same bytes the deposits carry)."""
    import aiohttp

    files = [Path(name) for name in options["files"]]
    url = f"http://127.0.0.1:{options['port']}{options.get('path', '/upload/')}"
    async with aiohttp.ClientSession() as session:

        async def send(index: int) -> None:
            data = await asyncio.to_thread(files[index].read_bytes)
            async with session.put(f"{url}{options['round']}-{index}", data=data) as response:
                await response.read()
                if response.status != 201:
                    raise RuntimeError(f"HTTP {response.status}")

        seconds, failures = await _concurrently(len(files), options["concurrency"], send)
    return {"per_s": len(files) / seconds, "completed": len(files), "errors": failures}


async def _load_deposit(options: dict[str, Any]) -> dict[str, Any]:
    """The lab sends prepared deposits as its outbox does (``ClinicNode._send``), N at a time."""
    from fedrecord.node.clinic import ClinicNode
    from fedrecord.node.home import NodeHome

    home = await NodeHome.open(Path(options["home"]), PASSPHRASE.encode())
    clinic = ClinicNode(home)
    payloads = [bytes.fromhex(p) for p in options["payloads"]]
    try:

        async def send(index: int) -> None:
            await clinic._send("deposit", options["patient"], payloads[index])

        cpu = time.process_time()
        seconds, failures = await _concurrently(len(payloads), options["concurrency"], send)
        cpu = time.process_time() - cpu
    finally:
        await clinic.client.close()
        await home.close()
    return {
        "per_s": len(payloads) / seconds,
        "completed": len(payloads),
        "errors": failures,
        "load_cpu_us": round(cpu / len(payloads) * 1e6),
    }


LOADS = {
    "get": _load_get,
    "fetch": _load_fetch,
    "prepare": _load_prepare,
    "upload": _load_upload,
    "deposit": _load_deposit,
}


# --- the run -------------------------------------------------------------------------------------------------


def bench_home(path: Path, role: str, *, port: int = 0, endpoint: str | None = None) -> Path:
    """A node home for a benchmark, named after its folder, argon2id at its interactive cost.

    This measures the nodes, not the KDF.  The endpoint is ``http://127.0.0.1:<port>`` (a free
    port when ``port`` is 0) unless given.
    """
    from nacl.pwhash import argon2id

    from fedrecord.node.home import init_home

    init_home(
        path,
        role=role,
        name=path.name,
        endpoint=endpoint or f"http://127.0.0.1:{port or free_port()}",
        passphrase=PASSPHRASE.encode(),
        port=port,
        kdf_limits=(argon2id.OPSLIMIT_INTERACTIVE, argon2id.MEMLIMIT_INTERACTIVE),
    )
    return path


def _set_up(root: Path, port: int) -> dict[str, Any]:
    """Patient, GP and lab homes."""
    for name, role, node_port in (("patient", "patient", port), ("gp", "clinic", 0), ("lab", "clinic", 0)):
        bench_home(root / name, role, port=node_port)
    return {"patient_home": root / "patient", "gp_home": root / "gp", "lab_home": root / "lab"}


async def _connect(world: dict[str, Any]) -> None:
    """Invitations, connections, a 4 KiB lab result deposited and accepted, a grant to the GP, one read."""
    from fedrecord.core import Scope
    from fedrecord.node.clinic import ClinicNode
    from fedrecord.node.home import NodeHome
    from fedrecord.node.patient import PatientNode

    now = int(time.time())
    patient_home = await NodeHome.open(world["patient_home"], PASSPHRASE.encode())
    gp_home = await NodeHome.open(world["gp_home"], PASSPHRASE.encode())
    lab_home = await NodeHome.open(world["lab_home"], PASSPHRASE.encode())
    gp, lab = ClinicNode(gp_home), ClinicNode(lab_home)
    try:
        patient = PatientNode(patient_home)
        for clinic in (gp, lab):
            invitation = await patient.create_invitation(label=clinic.home.config.name, now=now)
            await clinic.connect(invitation.code(), now=now)
        content = os.urandom(DOCUMENT_SIZE)
        doc = await lab.deposit(
            patient_home.did, content, title="Potassium", category="lab", doc_type="lab-result", now=now
        )
        if await lab.flush_outbox(now=now) != (1, 0):
            raise SystemExit("setting up: the lab's deposit was not delivered")
        await patient.accept(doc, now=now)
        await patient.grant(
            audience=gp_home.did,
            scope=Scope(categories=("lab",), past=True, future=True),
            actions=("read",),
            purpose="treatment",
            days=90,
            now=now,
        )
        await gp.poll(patient_home.did, now=now)
        # The GP's own, complete read path once: fetched, unwrapped, decrypted, checked.
        if await gp.fetch(patient_home.did, doc, now=now) != content:
            raise SystemExit("setting up: the GP did not read back the document")
        world.update(patient=patient_home.did, doc=doc.hex(), endpoint=patient_home.config.endpoint)
    finally:
        for clinic in (gp, lab):
            await clinic.client.close()
        for home in (patient_home, gp_home, lab_home):
            await home.close()


def _count(home: Path, query: str) -> int:
    db = sqlite3.connect(home / "node.db", timeout=30)
    try:
        return int(db.execute(query).fetchone()[0])
    finally:
        db.close()


def run(args: argparse.Namespace) -> dict[str, Any]:
    quick = args.quick
    concurrency = args.concurrency
    root = Path(tempfile.mkdtemp(prefix="fedrecord-bench-"))
    port, plain_port = free_port(), free_port()
    node: subprocess.Popen[bytes] | None = None
    plain: subprocess.Popen[bytes] | None = None
    results: dict[str, Any] = {}
    try:
        world = _set_up(root, port)
        profile = None
        command = [sys.executable, "-m", "fedrecord", "serve"]
        if args.profile is not None:
            args.profile.mkdir(parents=True, exist_ok=True)
            profile = args.profile / "patient-node.prof"
            command = [sys.executable, str(HERE.parent / "cpu_profile.py"), str(profile), "-m", "fedrecord", "serve"]
        node_log = root / "patient-node.log"
        with node_log.open("ab") as log:
            node = subprocess.Popen(command, env=_env(world["patient_home"]), stdout=log, stderr=log)
        _wait_for(f"http://127.0.0.1:{port}/v0/health", node, node_log)
        asyncio.run(_connect(world))
        fetch_size = _count(
            world["patient_home"], f"SELECT size FROM documents WHERE hex(id) = '{world['doc'].upper()}'"
        )

        uploads = root / "plain-uploads"
        uploads.mkdir()
        plain_log = root / "plain.log"
        with plain_log.open("ab") as log:
            plain = subprocess.Popen(
                [sys.executable, str(HERE), "--serve-plain", str(plain_port), str(fetch_size), str(uploads)],
                env=_env(),
                stdout=log,
                stderr=log,
            )
        _wait_for(f"http://127.0.0.1:{plain_port}/v0/health", plain, plain_log)

        if args.only in (None, "fetch"):
            # 1. Authorized 4 KiB fetches against plain GETs.
            rounds, duration, warmup = (2, 1.5, 0.3) if quick else (3, 4.0, 0.5)
            best_get: dict[str, Any] = {"per_s": 0.0}
            best_fetch: dict[str, Any] = {"per_s": 0.0}
            best_floor_get: dict[str, Any] = {"per_s": 0.0}
            pool = 3000
            fetched = 0
            for _ in range(rounds):
                got = _measured(
                    plain, "get", port=plain_port, concurrency=concurrency, duration=duration, warmup=warmup
                )
                fetch = _measured(
                    node,
                    "fetch",
                    port=port,
                    home=str(world["gp_home"]),
                    patient=world["patient"],
                    doc=world["doc"],
                    endpoint=world["endpoint"],
                    pool=pool,
                    concurrency=concurrency,
                    duration=duration,
                    warmup=warmup,
                )
                floor_get = _measured(
                    plain,
                    "get",
                    port=plain_port,
                    path="/doc-floor",
                    concurrency=concurrency,
                    duration=duration,
                    warmup=warmup,
                )
                if got["errors"] or fetch["errors"] or floor_get["errors"]:
                    raise SystemExit(f"refused requests: plain {got['statuses']}, node {fetch['statuses']}")
                best_floor_get = max(best_floor_get, floor_get, key=lambda r: r["per_s"])
                fetched += fetch["ok"]
                pool = max(pool, int(fetch["per_s"] * (duration + warmup) * 1.5))
                best_get = max(best_get, got, key=lambda r: r["per_s"])
                best_fetch = max(best_fetch, fetch, key=lambda r: r["per_s"])
            audit = _count(world["patient_home"], "SELECT count(*) FROM audit")
            if audit != fetched + 1:
                raise SystemExit(f"{fetched} fetches answered but {audit - 1} receipts in the audit log")
            _record(
                results,
                best_fetch,
                best_get,
                "authorized_get_ratio",
                "authorized_fetches_per_s",
                "plain_gets_per_s",
                "node_cpu_us_per_fetch",
                "plain_cpu_us_per_get",
            )
            _ceiling(results, "authorized_get", best_floor_get, best_get)
            results["fetch_body_bytes"] = fetch_size
            results["receipts_committed"] = audit - 1

        if args.only in (None, "deposit"):
            # 2. Deposits of 100 KiB documents against raw uploads of the same bytes with fsync.
            count = 100 if quick else 1000
            deposit_rounds = 1 if quick else 2
            best_upload: dict[str, Any] = {"per_s": 0.0}
            best_deposit: dict[str, Any] = {"per_s": 0.0}
            best_floor_upload: dict[str, Any] = {"per_s": 0.0}
            prepare_rates = []
            inbox_before = _count(
                world["patient_home"], "SELECT count(*) FROM documents WHERE state = 'inbox'"
            )
            for round_number in range(deposit_rounds):
                prepared = _load(
                    "prepare",
                    home=str(world["lab_home"]),
                    patient=world["patient"],
                    count=count,
                    size=DEPOSIT_SIZE,
                    round=round_number,
                )
                prepare_rates.append(prepared["per_s"])
                upload = _measured(
                    plain,
                    "upload",
                    port=plain_port,
                    files=prepared["files"],
                    round=round_number,
                    concurrency=concurrency,
                )
                deposit = _measured(
                    node,
                    "deposit",
                    home=str(world["lab_home"]),
                    patient=world["patient"],
                    payloads=prepared["payloads"],
                    concurrency=concurrency,
                )
                floor_upload = _measured(
                    plain,
                    "upload",
                    port=plain_port,
                    path="/upload-floor/",
                    files=prepared["files"],
                    round=round_number,
                    concurrency=concurrency,
                )
                best_floor_upload = max(best_floor_upload, floor_upload, key=lambda r: r["per_s"])
                if upload["errors"] or deposit["errors"] or floor_upload["errors"]:
                    raise SystemExit(f"failed uploads: plain {upload['errors']}, node {deposit['errors']}")
                best_upload = max(best_upload, upload, key=lambda r: r["per_s"])
                best_deposit = max(best_deposit, deposit, key=lambda r: r["per_s"])
            stored = (
                _count(world["patient_home"], "SELECT count(*) FROM documents WHERE state = 'inbox'")
                - inbox_before
            )
            if stored != count * deposit_rounds:
                raise SystemExit(f"{count * deposit_rounds} deposits sent but {stored} in the inbox")
            _record(
                results,
                best_deposit,
                best_upload,
                "deposit_throughput_ratio",
                "deposits_per_s",
                "raw_uploads_per_s",
                "node_cpu_us_per_deposit",
                "plain_cpu_us_per_upload",
            )
            _ceiling(results, "deposit", best_floor_upload, best_upload)
            results["lab_prepares_per_s"] = round(max(prepare_rates), 1)
            results["lab_cpu_us_per_deposit"] = best_deposit["load_cpu_us"]
            results["deposit_documents"] = count
            results["deposit_bytes"] = DEPOSIT_SIZE
        results["concurrency"] = concurrency
    finally:
        _stop(plain)
        _stop(node)
        if args.profile is not None and node is not None:
            _print_profile(args.profile / "patient-node.prof")
        if args.keep:
            print(f"kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    return results


def _record(results: dict[str, Any], node: dict[str, Any], plain: dict[str, Any], *names: str) -> None:
    """The ratio of the node's best round to the baseline's, both rates, and each server's CPU per request."""
    ratio, node_rate, plain_rate, node_cpu, plain_cpu = names
    results[ratio] = round(node["per_s"] / plain["per_s"], 3)
    results[node_rate] = round(node["per_s"], 1)
    results[plain_rate] = round(plain["per_s"], 1)
    if "server_cpu_us" in node and "server_cpu_us" in plain:
        results[node_cpu] = round(node["server_cpu_us"])
        results[plain_cpu] = round(plain["server_cpu_us"])


def _ceiling(results: dict[str, Any], name: str, floor: dict[str, Any], plain: dict[str, Any]) -> None:
    """The ratio of the crypto-only server (:class:`_Floor`) to the plain one: the most any node could reach."""
    results[f"{name}_ceiling"] = round(floor["per_s"] / plain["per_s"], 3)
    if "server_cpu_us" in floor:
        results[f"{name}_ceiling_cpu_us"] = round(floor["server_cpu_us"])


def _print_profile(path: Path) -> None:
    import pstats

    if not path.exists():
        print(f"no profile at {path}", file=sys.stderr)
        return
    stats = pstats.Stats(str(path), stream=sys.stderr)
    stats.sort_stats("tottime").print_stats(30)
    stats.sort_stats("cumulative").print_stats(40)


def _report(results: dict[str, Any], targets: dict[str, tuple[str, float]], path: Path | None) -> None:
    """Print each figure, with its target (``">="`` or ``"<="`` a bound) met or not; write them as JSON."""
    for name, value in results.items():
        line = f"{name:36} {value}"
        if name in targets:
            op, bound = targets[name]
            met = value >= bound if op == ">=" else value <= bound
            line += f"   (target {op} {bound}: {'met' if met else 'NOT MET'})"
        print(line)
    if path:
        path.write_text(json.dumps(results, indent=2) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument("--concurrency", type=int, default=16, help="client connections (both runs)")
    parser.add_argument("--profile", type=Path, help="run the patient node under cProfile, output here")
    parser.add_argument("--keep", action="store_true", help="keep the nodes' temporary folder")
    parser.add_argument(
        "--only", choices=("fetch", "deposit"), help="measure one figure (the other is left out)"
    )
    parser.add_argument("--serve-plain", nargs=3, metavar=("PORT", "SIZE", "DIR"), help=argparse.SUPPRESS)
    parser.add_argument("--load", choices=sorted(LOADS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_plain:
        port, size, directory = args.serve_plain
        asyncio.run(_serve_plain(int(port), int(size), Path(directory)))
        return 0
    if args.load:
        print(json.dumps(asyncio.run(LOADS[args.load](json.loads(sys.stdin.read())))))
        return 0
    _report(run(args), {name: (">=", bound) for name, bound in TARGETS.items()}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
