"""Crash safety (issue 3): SIGKILL a node in the middle of a deposit and of an accept, many times.

Real processes throughout: the patient's node is ``python -m fedrecord serve``
(its own SQLite database and document files), the lab deposits with the
``fedrecord deposit`` command (a process of its own), the patient accepts with
``fedrecord accept``.  Keys are in key files under argon2id at its interactive
cost (``FEDRECORD_KDF=interactive``).

*Kill during a deposit*: a multi-MiB document is deposited and, once its upload
is seen in flight (a ``.part`` file appears in a ``documents/tmp``), one of the
two processes is killed after a delay that varies from run to run, from 0 to a
few hundred milliseconds, so that the kill lands while the lab stores its own
copy, while the bytes travel, while the patient checks and commits, or after
the answer.  Alternately the victim is the patient's node (restarted on the
same port and home) and the lab's depositing process.  After each kill:

* ``PRAGMA integrity_check`` is ``ok`` on both databases;
* nothing acknowledged is missing: a deposit the command reported as
  delivered is in the patient's inbox; a deposit in the lab's outbox reaches
  the inbox once the lab flushes its outbox again (the outbox finishes it);
* no partial document: no ``documents`` row without its file (of the size the
  row says), and no file outside ``documents/tmp`` without its row -- except,
  between the kill and the outbox's retry, the file of a deposit the lab still
  holds in its outbox, which the retry completes; temporary files are swept.

*Kill during an accept*: ``fedrecord accept`` is killed at delays spread over
its life and clustered around the moment its transaction commits (measured
once first); each document is then either still in the inbox with no decision
recorded, or accepted with its signed DepositDecision and AcceptedEntry, never
half; the ones left in the inbox can still be accepted.

Each kill loop runs 20 times (``FEDRECORD_SOAK=1``: 100 times; ``FEDRECORD_CRASH_RUNS=N``: N times).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from nacl.pwhash import argon2id

from fedrecord.core import AcceptedEntry, Deposit, DepositDecision, cbor, open_record
from fedrecord.demo import serve_until_healthy
from fedrecord.loopback import free_port
from fedrecord.node.clinic import MAX_BACKOFF, ClinicNode
from fedrecord.node.home import NodeHome
from fedrecord.node.patient import PatientNode
from fedrecord.storage.sqlite import Database, integrity_check

# 20 kills of each kind by default (about 40 s); FEDRECORD_SOAK=1 for 100, or FEDRECORD_CRASH_RUNS=N.
RUNS = int(os.environ.get("FEDRECORD_CRASH_RUNS") or (100 if os.environ.get("FEDRECORD_SOAK") == "1" else 20))
PASSPHRASE = "crash test passphrase"
MIB = 1 << 20


def _spread(low: float, high: float, count: int) -> list[float]:
    """``count`` delays from ``low`` to ``high`` seconds, geometrically spaced, in a shuffled order."""
    if count == 1:
        return [low]
    ratio = (high / low) ** (1 / (count - 1))
    delays = [low * ratio**i for i in range(count)]
    # A fixed interleaving (not random): short and long delays alternate over the runs.
    return [delays[(i * 7) % count] for i in range(count)] if count % 7 else delays


def _sleep(seconds: float) -> None:
    """Sleep precisely (time.sleep alone may overshoot short delays by a millisecond or more)."""
    deadline = time.perf_counter() + seconds
    while (left := deadline - time.perf_counter()) > 0.002:
        time.sleep(left - 0.002)
    while time.perf_counter() < deadline:
        pass


def _has_part(directory: Path) -> bool:
    try:
        return any(name.endswith(".part") for name in os.listdir(directory))
    except FileNotFoundError:
        return False


@dataclass
class World:
    """A patient node serving in its own process, and a lab connected to it (its homes, no server needed)."""

    root: Path
    port: int
    patient_home: Path
    lab_home: Path
    patient_did: str = ""
    lab_did: str = ""
    server: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.root / "patient-serve.log"

    def env(self, home: Path) -> dict[str, str]:
        return {
            **os.environ,
            "FEDRECORD_HOME": str(home),
            "FEDRECORD_PASSPHRASE": PASSPHRASE,
            "FEDRECORD_KDF": "interactive",
        }

    def command(self, home: Path, *args: str) -> list[str]:
        return [sys.executable, "-m", "fedrecord", "--json", *args]

    def run(self, home: Path, *args: str) -> Any:
        done = subprocess.run(
            self.command(home, *args),
            env=self.env(home),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, f"fedrecord {' '.join(args)}: {done.stderr.strip()}"
        return json.loads(done.stdout)

    def spawn(self, home: Path, *args: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            self.command(home, *args), env=self.env(home), stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start_patient(self) -> None:
        self.server = serve_until_healthy(
            self.env(self.patient_home), self.url, self.log, name="the patient node", poll=0.02
        )

    def kill_patient(self) -> None:
        assert self.server is not None
        os.kill(self.server.pid, signal.SIGKILL)
        self.server.wait(timeout=30)
        self.server = None

    def restart_patient(self) -> None:
        self.start_patient()
        self.restarts += 1

    def stop(self) -> None:
        if self.server is not None and self.server.poll() is None:
            self.server.terminate()
            try:
                self.server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("crash")
    w = World(root=root, port=free_port(), patient_home=root / "patient", lab_home=root / "lab")
    w.patient_did = w.run(
        w.patient_home, "init", "--role", "patient", "--name", "Patient", "--port", str(w.port)
    )["did"]
    w.lab_did = w.run(w.lab_home, "init", "--role", "clinic", "--name", "Lab", "--port", str(free_port()))[
        "did"
    ]
    for home in (w.patient_home, w.lab_home):
        key_file = cbor.decode((home / "node.key").read_bytes())
        assert (key_file["ops"], key_file["mem"]) == (
            argon2id.OPSLIMIT_INTERACTIVE,
            argon2id.MEMLIMIT_INTERACTIVE,
        )
    w.start_patient()
    try:
        invitation = w.run(w.patient_home, "invite", "--label", "lab")
        assert w.run(w.lab_home, "connect", invitation["code"])["patient"] == w.patient_did
        yield w
    finally:
        w.stop()


# --- looking at a node's disk from outside (never through NodeHome: opening one sweeps its tmp) ----------


def _rows(home: Path, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(home / "node.db", timeout=30)
    try:
        return db.execute(query, params).fetchall()
    finally:
        db.close()


def _integrity(home: Path) -> str:
    async def check() -> str:
        db = Database(home / "node.db")
        try:
            return await integrity_check(db)
        finally:
            await db.close()

    return asyncio.run(check())


def _files(home: Path) -> dict[bytes, int]:
    """The ciphertext files at their final paths (``documents/<2 hex>/<64 hex>``) and their sizes."""
    found = {}
    root = home / "documents"
    for shard in root.iterdir() if root.is_dir() else ():
        if shard.name == "tmp" or not shard.is_dir():
            continue
        for entry in shard.iterdir():
            found[bytes.fromhex(entry.name)] = entry.stat().st_size
    return found


def _documents(home: Path) -> dict[bytes, tuple[str, int, bytes | None]]:
    return {
        row[0]: (row[1], row[2], row[3])
        for row in _rows(home, "SELECT id, state, size, deposit FROM documents")
    }


def _pending_deposits(lab: Path) -> set[bytes]:
    """Documents whose deposit the lab's outbox still has to send."""
    pending = _rows(lab, "SELECT payload FROM outbox WHERE kind = 'deposit' AND done = 0")
    return {_deposited_doc(payload) for (payload,) in pending}


def _deposited_doc(deposit: bytes) -> bytes:
    return open_record(deposit, Deposit).record.doc


def _no_row_without_its_file(home: Path) -> None:
    files = _files(home)
    for doc, (state, size, _deposit) in _documents(home).items():
        assert doc in files, f"{home.name}: documents row {doc.hex()[:16]} ({state}) has no file"
        assert files[doc] == size, f"{home.name}: file {doc.hex()[:16]} is not the size its row says"


def _wait_no_temporary(home: Path, timeout: float = 10) -> None:
    """A dropped upload's temporary file is removed by the node itself as soon as it notices."""
    deadline = time.monotonic() + timeout
    while _has_part(home / "documents" / "tmp"):
        assert time.monotonic() < deadline, f"{home.name}: a temporary file stayed in documents/tmp"
        time.sleep(0.02)


async def _flush_lab_outbox(lab: Path) -> tuple[int, int]:
    """The lab sends its outbox again, as its node would once the backoff has passed."""
    home = await NodeHome.open(lab, PASSPHRASE.encode())
    clinic = ClinicNode(home)
    try:
        return await clinic.flush_outbox(now=int(time.time()) + MAX_BACKOFF + 1)
    finally:
        await clinic.client.close()
        await home.close()


# --- kill during a deposit -----------------------------------------------------------------------------------


def test_sigkill_during_deposits_loses_nothing_acknowledged(world: World) -> None:
    patient_tmp = world.patient_home / "documents" / "tmp"
    lab_tmp = world.lab_home / "documents" / "tmp"
    delays = _spread(0.001, 0.3, RUNS)
    outcomes: Counter[str] = Counter()
    phases: Counter[str] = Counter()
    delivered: set[bytes] = set()
    lab_orphans: set[bytes] = set()
    for run in range(RUNS):
        # Victims and triggers take turns: the patient's node (upload seen in flight at the patient), the
        # lab while it stores its own copy, the patient again, the lab while its upload is in flight.
        victim = "patient" if run % 2 == 0 else "lab"
        trigger = lab_tmp if run % 4 == 1 else patient_tmp
        document = world.root / f"result-{run}.bin"
        document.write_bytes(os.urandom((4 + run % 5) * MIB))
        depositing = world.spawn(
            world.lab_home,
            "deposit", str(document), "--patient", world.patient_did,
            "--title", f"Result {run}", "--category", "lab",
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while not _has_part(trigger) and depositing.poll() is None:
            assert time.monotonic() < deadline, "the deposit never started"
            time.sleep(0.0005)
        _sleep(delays[run])
        phases[
            "upload in flight"
            if _has_part(patient_tmp)
            else "lab storing its copy"
            if _has_part(lab_tmp)
            else "after the upload"
        ] += 1
        if victim == "patient":
            world.kill_patient()
        elif depositing.poll() is None:
            os.kill(depositing.pid, signal.SIGKILL)
        out, err = depositing.communicate(timeout=120)
        if victim == "patient":
            world.restart_patient()

        # What the lab's command told its user, if it lived to say it.
        if depositing.returncode == 0:
            answer = json.loads(out)
            outcomes["reported delivered" if answer["delivered"] else "reported queued"] += 1
            if answer["delivered"]:
                delivered.add(bytes.fromhex(answer["doc"]))
        else:
            assert depositing.returncode == -signal.SIGKILL, err.decode()
            outcomes["lab killed"] += 1

        for home in (world.patient_home, world.lab_home):
            assert _integrity(home) == "ok", f"run {run}: {home.name} database after SIGKILL"
        patient_docs = _documents(world.patient_home)
        missing = delivered - patient_docs.keys()
        assert not missing, (
            f"run {run}: acknowledged deposits missing from the inbox: {[d.hex() for d in missing]}"
        )
        for home in (world.patient_home, world.lab_home):
            _no_row_without_its_file(home)
        # A lab document and its deposit in the outbox are committed together (or neither).
        lab_docs = {doc for doc, (state, _s, _d) in _documents(world.lab_home).items() if state == "authored"}
        queued = {
            _deposited_doc(p)
            for (p,) in _rows(world.lab_home, "SELECT payload FROM outbox WHERE kind = 'deposit'")
        }
        assert lab_docs == queued, f"run {run}: lab documents and outbox disagree"
        # A file the patient stored but did not commit belongs to a deposit the lab will send again.
        pending = _pending_deposits(world.lab_home)
        stray = _files(world.patient_home).keys() - patient_docs.keys()
        assert stray <= pending, f"run {run}: patient files without a row and no deposit to complete them"
        _wait_no_temporary(world.patient_home)

        # The lab flushes its outbox again: every deposit it holds reaches the inbox, none fails for good.
        sent, still_pending = asyncio.run(_flush_lab_outbox(world.lab_home))
        assert still_pending == 0, (
            f"run {run}: the outbox did not finish: {_rows(world.lab_home, 'SELECT * FROM outbox WHERE done = 0')}"
        )
        outcomes["finished by the outbox"] += sent
        errors = _rows(world.lab_home, "SELECT id, last_error FROM outbox WHERE last_error IS NOT NULL")
        assert not errors, f"run {run}: outbox items given up: {errors}"
        patient_docs = _documents(world.patient_home)
        for doc, (_state, _size, deposit) in _documents(world.lab_home).items():
            assert doc in patient_docs, f"run {run}: lab document {doc.hex()[:16]} never reached the patient"
            assert patient_docs[doc][0] == "inbox" and patient_docs[doc][2] == deposit
        assert _files(world.patient_home).keys() == patient_docs.keys(), (
            f"run {run}: patient files without row"
        )
        # The lab's own copy is written (fsync, rename) before the transaction that records it and queues
        # the deposit; a kill in between leaves a file no row names: never acknowledged, and undecryptable
        # (its key lived only in the killed process).  Only a killed lab may leave one.
        lab_stray = _files(world.lab_home).keys() - _documents(world.lab_home).keys()
        if lab_stray - lab_orphans:
            assert victim == "lab" and depositing.returncode == -signal.SIGKILL, (
                f"run {run}: lab files without row"
            )
            lab_orphans |= lab_stray
        for home in (world.patient_home, world.lab_home):
            _wait_no_temporary(home)
            assert _integrity(home) == "ok"
        document.unlink()

    print(
        f"\ndeposit kills: {dict(outcomes)}; kill landed: {dict(phases)}; restarts {world.restarts}; "
        f"unacknowledged lab copies left by a kill: {len(lab_orphans)}"
    )
    # The kills really landed at different points, and some while the bytes were travelling.
    assert phases["upload in flight"] >= 2, phases
    # ... and the outbox had deposits to finish (an interrupted upload, a node down when it was sent).
    assert outcomes["finished by the outbox"] >= 1, outcomes


# --- kill during an accept ------------------------------------------------------------------------------------


async def _deposit_small(lab: Path, patient: str, count: int) -> list[bytes]:
    home = await NodeHome.open(lab, PASSPHRASE.encode())
    clinic = ClinicNode(home)
    try:
        docs = [
            await clinic.deposit(
                patient,
                f"Potassium {4 + i / 10:.1f} mmol/L\n".encode() * 64,
                title=f"Potassium {i}",
                category="lab",
                doc_type="lab-result",
                labels=("PSY",) if i % 3 == 0 else (),
                now=int(time.time()),
            )
            for i in range(count)
        ]
        sent, pending = await clinic.flush_outbox()
        assert (sent, pending) == (count, 0)
        return docs
    finally:
        await clinic.client.close()
        await home.close()


def _accept_state(home: Path, doc: bytes) -> str:
    """``inbox`` or ``accepted``; fails on anything in between."""
    ((state, added),) = _rows(home, "SELECT state, added FROM documents WHERE id = ?", (doc,))
    records = _rows(
        home, "SELECT typ, encoded FROM records WHERE subject = ? AND typ != 'fedrecord/deposit'", (doc,)
    )
    kinds = sorted(typ for typ, _ in records)
    if state == "inbox":
        assert kinds == [] and added is None, f"{doc.hex()[:16]} is in the inbox with {kinds}"
        return "inbox"
    assert state == "accepted", state
    assert added is not None
    assert kinds == ["fedrecord/accepted-entry", "fedrecord/deposit-decision"], kinds
    for typ, encoded in records:
        if typ == "fedrecord/deposit-decision":
            decision = open_record(encoded, DepositDecision)
            assert decision.record.decision == "accepted" and decision.record.doc == doc
        else:
            assert open_record(encoded, AcceptedEntry).record.doc == doc
    return "accepted"


def test_sigkill_during_accepts_leaves_each_whole(world: World) -> None:
    docs = asyncio.run(_deposit_small(world.lab_home, world.patient_did, RUNS + 1))
    # Calibrate: when, in the life of an `accept` process, does its transaction commit?
    started = time.perf_counter()
    accepting = world.spawn(world.patient_home, "accept", docs[0].hex())
    committed = None
    while accepting.poll() is None:
        if committed is None and _rows(
            world.patient_home, "SELECT state FROM documents WHERE id = ?", (docs[0],)
        ) == [("accepted",)]:
            committed = time.perf_counter() - started
        time.sleep(0.001)
    lifetime = time.perf_counter() - started
    assert accepting.returncode == 0 and _accept_state(world.patient_home, docs[0]) == "accepted"
    committed = committed or lifetime

    # Half the kills anywhere in the process's life; the other half search for the commit moment by
    # bisection (between the latest kill that left the document in the inbox and the earliest that found
    # it accepted), so that they land around the transaction, on either side of it by the jitter of runs.
    spread = _spread(0.005, lifetime, RUNS // 2)
    before, after = 0.0, lifetime
    outcomes: Counter[str] = Counter()
    trace: list[str] = []
    for run, doc in enumerate(docs[1:]):
        delay = spread[run // 2] if run % 2 == 0 and run // 2 < len(spread) else (before + after) / 2
        accepting = world.spawn(world.patient_home, "accept", doc.hex(), "--label", "SEX")
        _sleep(delay)
        if accepting.poll() is None:
            os.kill(accepting.pid, signal.SIGKILL)
        _out, err = accepting.communicate(timeout=60)
        assert accepting.returncode in (0, -signal.SIGKILL), err.decode()
        assert _integrity(world.patient_home) == "ok", f"run {run}: patient database after SIGKILL"
        state = _accept_state(world.patient_home, doc)
        killed = accepting.returncode != 0
        outcomes[f"{state} ({'killed' if killed else 'process finished'})"] += 1
        trace.append(f"{delay * 1000:.0f}ms:{state[0]}{'k' if killed else 'f'}")
        if not killed:
            assert state == "accepted"
        if state == "inbox":
            before = max(before, delay) if delay < after else before
        else:
            after = min(after, delay) if delay > before else after
    print(
        f"\naccept kills (commit at {committed * 1000:.0f} ms of {lifetime * 1000:.0f} ms): {dict(outcomes)}"
    )
    print("delay:outcome (i inbox, a accepted; k killed, f finished):", " ".join(trace))

    # What is still in the inbox can be accepted now; the node serving all along still answers.
    async def accept_left() -> None:
        home = await NodeHome.open(world.patient_home, PASSPHRASE.encode())
        try:
            patient = PatientNode(home)
            for item in await patient.inbox():
                await patient.accept(item.doc, now=int(time.time()))
        finally:
            await home.close()

    asyncio.run(accept_left())
    assert all(_accept_state(world.patient_home, doc) == "accepted" for doc in docs)
    assert _integrity(world.patient_home) == "ok"
    with urllib.request.urlopen(f"{world.url}/v0/health", timeout=5) as answer:
        assert answer.status == 200
    with contextlib.suppress(FileNotFoundError):
        assert not _has_part(world.patient_home / "documents" / "tmp")


# --- the sweep of temporary files never hits an upload in flight ------------------------------------------


def test_a_command_opening_the_home_never_sweeps_an_upload_in_flight(world: World) -> None:
    """Every command opens the home, and opening sweeps ``documents/tmp`` (what a crash left there).

    It must not remove the temporary file of a deposit the serving node is receiving at that moment:
    the upload is held half-way while ``fedrecord status`` runs against the patient's home, then
    completes, and the deposit is in the inbox.
    """
    patient_tmp = world.patient_home / "documents" / "tmp"

    async def deposit_with_a_pause() -> tuple[bytes, int, int]:
        home = await NodeHome.open(world.lab_home, PASSPHRASE.encode())
        clinic = ClinicNode(home)
        opened = home.files.open

        async def held_half_way(doc: bytes, **options: Any) -> Any:
            chunks = await opened(doc, **options)
            assert chunks is not None

            async def pieces() -> Any:
                sent = 0
                async for piece in chunks:
                    yield piece
                    sent += 1
                    if sent == 4:
                        deadline = time.monotonic() + 30
                        while not _has_part(patient_tmp):
                            assert time.monotonic() < deadline, "the upload never reached the patient"
                            await asyncio.sleep(0.005)
                        command = await asyncio.create_subprocess_exec(
                            *world.command(world.patient_home, "status"),
                            env=world.env(world.patient_home),
                            stdout=subprocess.DEVNULL,
                        )
                        assert await command.wait() == 0
                        assert _has_part(patient_tmp), "the command swept the upload in flight"

            return pieces()

        home.files.open = held_half_way  # type: ignore[method-assign]
        try:
            doc = await clinic.deposit(
                world.patient_did,
                os.urandom(2 * MIB),
                title="Held",
                category="lab",
                doc_type="lab-result",
                now=int(time.time()),
            )
            sent, pending = await clinic.flush_outbox()
            return doc, sent, pending
        finally:
            await clinic.client.close()
            await home.close()

    doc, sent, pending = asyncio.run(deposit_with_a_pause())
    assert (sent, pending) == (1, 0), _rows(world.lab_home, "SELECT last_error FROM outbox WHERE done = 0")
    assert _documents(world.patient_home)[doc][0] == "inbox"
    assert not _rows(world.lab_home, "SELECT id, last_error FROM outbox WHERE last_error IS NOT NULL")
    assert _integrity(world.patient_home) == "ok"
