"""Long-running operation ("soak"): what an operator meets after weeks of running, compressed into minutes.

    python benchmarks/soak.py [--minutes N] [--sample S] [--restart-every S] [--json PATH] [--keep]
    python benchmarks/soak.py --report DIR     # the verdicts of a folder kept by --keep

Real processes on loopback, each ``python -m fedrecord serve`` with its own
SQLite database (through a thin wrapper that also reports, from inside the
process, what cannot be read from ``/proc``: asyncio tasks, aiohttp client
sessions, open event-stream subscriptions, web sessions and the in-memory
caches):

* a patient's node (its API and its web page, with a web password);
* a lab, never restarted, which deposits small documents;
* a GP, restarted every few minutes (``SIGTERM`` and ``SIGKILL`` in turn),
  which holds a grant to the lab results and fetches and syncs under it.

Clinics poll every 5 s and follow the patient's event stream.  One load
process (this script with ``--load``) runs a steady mixed workload for
``--minutes`` through the node classes, as the ``fedrecord`` commands do,
opening each home again every couple of minutes as a new command would:
deposits by the lab, accepts and a few rejections, GP fetches and syncs, the
GP's grant revoked and given again, per-document grants and revocations,
deletions (with the attestations the clinics send back), event-stream
subscribers that connect and go away (some without a word), GP fetches cut
half-way (a partial download left to resume), deposit uploads cut half-way (a
temporary file on the patient's node), web sign-ins whose sessions are then
abandoned, and now and then a real ``fedrecord`` command (``status``,
``sync``, ``audit --verify``).

Every ``--sample`` seconds (30) this script records, for each node: RSS,
open file descriptors and threads (``/proc``), the size of ``node.db`` and of
its ``-wal``, the row count of each table (read-only), the files under each
part of its home, its log (size, warnings, errors, tracebacks, "Unclosed"),
and what the wrapper reported.  At the end it prints, per resource, the
first sample after a warm-up, the last one, and a verdict:

* ``flat``: bounded and it stayed so (what should not grow did not);
* ``GROWS``: should be bounded but rose through the run (a leak to look at);
* ``by design``: grows with the work done (audit log, records, documents...),
  printed with its growth per operation of the kind that makes it grow.

The GP is restarted, so its process figures are read per life: the verdict
compares each life's figures at the same age.  In-memory caches bounded by a
constant of the code (key wraps, verified records, sync views) may fill up to
it: that is ``flat``.  Every 30 s the load also records what grows with the
record's history rather than with time: the size of the state answer the GP
is sent (every revocation the patient ever signed is in it, [API-16]; the
report says after how many more the 1 MiB body cap is reached), and how long
a poll and a fetch take.

Exit status 1 when any resource is ``GROWS`` or a log holds a traceback.  A
run of 20 minutes takes about one core of a two-core machine at a quarter of
its time.  Not part of ``make test``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import asdict
from pathlib import Path
from typing import Any, Final

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent.parent / "src"))

from fedrecord.loopback import free_port  # noqa: E402
from node import PASSPHRASE, _env, _stop, _wait_for, bench_home  # noqa: E402

NAMES = ("patient", "lab", "gp")
MAX_BODY = 1 << 20  # fedrecord.node.wire.MAX_BODY
WEB_PASSWORD = "soak web password, not a secret"
GP_RESTART_EVERY = 180.0
LARGE_SIZE = 3 * 1024 * 1024  # kept in a file on every node (over 1 MiB), so a cut fetch leaves a partial
REOPEN_EVERY = 120.0

# What should stay bounded, and what grows with the work by design (with the operation that makes it grow).
BY_DESIGN_ROWS = {
    "records": "every grant, revocation, deposit, acceptance, tombstone is a signed record kept",
    "audit": "one entry per read (spec: the audit log is append-only)",
    "audit_docs": "one row per document an audit entry covers",
    "documents": "documents kept (the lab keeps its own deposits as its legal record)",
    "told": "per deleted document, the nodes its tombstone goes to",
    "record_sets": "records a patient's node gave as part of its record",
    "invitations": "one per invitation",
    "peers": "one per node met",
    "outbox": "delivered rows are kept (done = 1) with their payload",
}
BOUNDED_ROWS = {"nonces", "doomed", "connections", "delegations", "meta", "view_epoch"}
INNER_BOUNDED = (
    "tasks",
    "client_sessions",
    "open_client_sessions",
    "subscriptions",
    "following",
    "web_sessions",
    "web_failure_clients",
    "wrap_cache",
    "verified_cache",
    "sync_views",
    "keyed_locks",
    "applying_locks",
)


# --- the instrumented node (``--serve HOME STATS``) ----------------------------------------------------------


def _inner_stats() -> dict[str, int]:
    """Counts read from inside a node process (called from a thread of its own; reads only lengths)."""
    import asyncio.tasks
    import gc

    import aiohttp

    from fedrecord.node import records_table
    from fedrecord.node.clinic import ClinicNode
    from fedrecord.node.patient import PatientNode
    from fedrecord.node.state_feed import StateFeed
    from fedrecord.node.subscriptions import StateSubscriptions
    from fedrecord.web.auth import Sessions

    stats = {name: 0 for name in INNER_BOUNDED}
    tasks = list(asyncio.tasks._all_tasks)  # type: ignore[attr-defined]
    stats["tasks"] = len(tasks)
    kinds: dict[str, int] = {}
    for task in tasks:
        coro = task.get_coro()
        name = getattr(coro, "__qualname__", type(coro).__name__)
        kinds[name] = kinds.get(name, 0) + 1
    # Which coroutines the tasks run, the most frequent first: where to look when their count grows.
    stats["task_kinds"] = dict(sorted(kinds.items(), key=lambda kv: -kv[1])[:6])  # type: ignore[assignment]
    stats["verified_cache"] = len(records_table._verified)
    for obj in gc.get_objects():
        kind = type(obj)
        if kind is aiohttp.ClientSession:
            stats["client_sessions"] += 1
            stats["open_client_sessions"] += not obj.closed
        elif kind is StateFeed:
            stats["subscriptions"] += len(obj._subscriptions)
        elif kind is StateSubscriptions:
            stats["following"] += len(obj._following)
        elif kind is Sessions:
            stats["web_sessions"] += len(obj._open)
            stats["web_failure_clients"] += len(obj._failures)
        elif kind is PatientNode:
            stats["wrap_cache"] += len(obj._wraps)
            stats["sync_views"] += len(obj.sync_views.views)
            stats["keyed_locks"] += len(obj._deposit_locks)
        elif kind is ClinicNode:
            stats["applying_locks"] += len(obj._applying)
    return stats


def serve_instrumented(home: Path, stats_file: Path, every: float) -> int:
    """``fedrecord serve`` for ``home``, writing :func:`_inner_stats` to ``stats_file`` every ``every`` s."""

    def report() -> None:
        while True:
            time.sleep(every)
            data: dict[str, Any]
            try:
                data = dict(_inner_stats())
            except Exception as exc:  # noqa: BLE001 -- a dict changed size under us: the next sample will do
                data = {"error": repr(exc)}
            fresh = stats_file.with_suffix(".new")
            fresh.write_text(json.dumps({"at": time.time(), **data}))
            fresh.replace(stats_file)

    threading.Thread(target=report, daemon=True, name="soak-stats").start()
    from fedrecord.cli import main as cli

    os.environ["FEDRECORD_HOME"] = str(home)
    cli(args=["serve"], prog_name="fedrecord")
    return 0


# --- the load (``--load``, options as JSON on stdin) ----------------------------------------------------


class _Cut(Exception):
    """Raised on purpose half-way through a transfer."""


class Load:
    """The workload, one operation kind per method; counts what it did and what was refused."""

    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options
        self.root = Path(options["root"])
        self.counts: dict[str, int] = {}
        self.refused: dict[str, int] = {}
        self.rng = random.Random(options.get("seed", 1))
        self.gp_grant: bytes | None = None
        self.doc_grants: list[bytes] = []
        self.large: bytes | None = None
        self.cuts = 0
        self.patient_did = options["patient_did"]
        self.series: list[dict[str, Any]] = []
        self.latencies: dict[str, list[float]] = {}

    async def measure(self, started: float) -> None:
        """What grows with the record's history: one state answer's size, a poll's and a fetch's time."""
        from fedrecord.node.wire import encode_body

        now = int(time.time())
        answer = await self.patient.state_for(self.homes["gp"].did, now=now)
        state = encode_body(**answer)
        parts = {f"state_{k}_bytes": sum(len(r) for r in answer[k]) for k in ("revocations", "tombstones", "grants")}
        revocations = await self.homes["patient"].db.fetchone(
            "SELECT count(*) FROM records WHERE typ = 'fedrecord/revocation'"
        )
        began = time.perf_counter()
        await self.gp.poll(self.patient_did, now=now)
        polled = time.perf_counter() - began
        fetches = self.latencies.pop("gp_fetch", [])
        self.series.append({
            "t": round(time.monotonic() - started),
            "state_answer_bytes": len(state),
            **parts,
            "revocations": int(revocations[0]) if revocations else 0,
            "gp_poll_ms": round(polled * 1000, 1),
            "gp_fetch_p50_ms": round(sorted(fetches)[len(fetches) // 2] * 1000, 1) if fetches else None,
        })

    def count(self, what: str, n: int = 1) -> None:
        self.counts[what] = self.counts.get(what, 0) + n

    async def open(self) -> None:
        from fedrecord.node.clinic import ClinicNode
        from fedrecord.node.home import NodeHome
        from fedrecord.node.patient import PatientNode

        self.homes = {n: await NodeHome.open(self.root / n, PASSPHRASE.encode()) for n in NAMES}
        self.patient = PatientNode(self.homes["patient"])
        self.lab = ClinicNode(self.homes["lab"])
        self.gp = ClinicNode(self.homes["gp"])

    async def close(self) -> None:
        for clinic in (self.lab, self.gp):
            await clinic.client.close()
        for home in self.homes.values():
            await home.close()

    async def guarded(self, what: str, step: Any) -> None:
        from fedrecord.core.errors import FedrecordError
        from fedrecord.node.client import PeerUnreachable

        began = time.perf_counter()
        try:
            await step
            self.count(what)
            self.latencies.setdefault(what, []).append(time.perf_counter() - began)
        except (FedrecordError, PeerUnreachable) as exc:
            # Expected now and then: a fetch of a document just deleted or revoked, the GP restarting.
            code = exc.code.value if isinstance(exc, FedrecordError) else type(exc).__name__
            key = f"{what}: {code}"
            self.refused[key] = self.refused.get(key, 0) + 1
        except Exception:  # noqa: BLE001 -- counted and shown, and the workload goes on
            # Not expected: kept in the load's log and counted, and the workload goes on.
            import traceback

            traceback.print_exc()
            key = f"{what}: FAILED"
            self.refused[key] = self.refused.get(key, 0) + 1

    # --- operations

    async def deposit(self, *, size: int | None = None) -> None:
        body = os.urandom(size) if size else f"Potassium {self.rng.random():.3f} mmol/L\n".encode() * self.rng.randint(1, 40)
        labels = ["PSY"] if self.rng.random() < 0.1 else []
        await self.lab.deposit(
            self.patient_did, body, title="Potassium", category="lab", doc_type="lab-result",
            labels=labels, now=int(time.time()),
        )
        if self.rng.random() < 0.5:
            await self.lab.flush_outbox()  # otherwise the lab's serve sends it within its poll interval

    async def decide_inbox(self) -> None:
        for item in await self.patient.inbox():
            if item.doc == self.large:
                continue  # accepted by cut_fetch itself
            if self.rng.random() < 0.08:
                await self.patient.reject(item.doc, now=int(time.time()))
                self.count("reject")
            else:
                await self.patient.accept(item.doc, now=int(time.time()))
                self.count("accept")

    async def regrant_gp(self) -> None:
        from fedrecord.core import Scope

        now = int(time.time())
        if self.gp_grant is not None:
            await self.patient.revoke(self.gp_grant, now=now)
            self.count("revoke")
        grant = await self.patient.grant(
            audience=self.homes["gp"].did, scope=Scope(categories=("lab",), past=True, future=True),
            actions=("read",), purpose="treatment", days=30, now=now, hide_labels=("PSY",),
        )
        self.gp_grant = grant.id
        self.count("grant")

    async def doc_grant_cycle(self) -> None:
        from fedrecord.core import Scope

        now = int(time.time())
        docs = await self.patient.documents()
        if docs:
            doc = self.rng.choice(docs)["doc"]
            grant = await self.patient.grant(
                audience=self.homes["gp"].did, scope=Scope(ids=(doc,)), actions=("read",),
                purpose="treatment", days=1, now=now,
            )
            self.doc_grants.append(grant.id)
            self.count("grant")
        while len(self.doc_grants) > 3:
            await self.patient.revoke(self.doc_grants.pop(0), now=now)
            self.count("revoke")

    async def gp_fetch(self) -> None:
        listing = await self.gp.listing(self.patient_did, now=int(time.time()))
        if listing:
            item = self.rng.choice(listing)
            await self.gp.fetch(self.patient_did, bytes.fromhex(item["doc"]) if isinstance(item["doc"], str) else item["doc"], now=int(time.time()))

    async def gp_sync(self) -> None:
        await self.gp.sync(self.patient_did, now=int(time.time()))

    async def delete_one(self) -> None:
        docs = [d for d in await self.patient.documents() if d["doc"] != self.large]
        if len(docs) > 20:
            doc = min(docs, key=lambda d: d["added"] or 0)["doc"]
            await self.patient.delete(doc, now=int(time.time()))

    async def subscriber(self) -> None:
        """The GP's identity opens the patient's event stream, takes an event or two, and goes away."""
        from fedrecord.node.subscriptions import MAX_EVENT

        stream = self.gp.client.events(
            f"{self.homes['patient'].config.endpoint}/v0/events", expected_signer=self.patient_did,
            max_event=MAX_EVENT,
        )
        async with contextlib.aclosing(stream):
            async for _event in stream:
                break

    async def rude_subscriber(self) -> None:
        """Opens the event stream over a raw socket, reads a few bytes and drops the connection."""
        from fedrecord.node.wire import encode_body

        url = f"{self.homes['patient'].config.endpoint}/v0/events"
        body = encode_body()
        headers = self.gp.client._headers(
            "POST", url, body, {"Content-Type": "application/cbor", "Accept": "text/event-stream"}
        )
        port = int(url.rsplit(":", 1)[1].split("/", maxsplit=1)[0])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        head = ["POST /v0/events HTTP/1.1", f"Host: 127.0.0.1:{port}", f"Content-Length: {len(body)}"]
        head += [f"{k}: {v}" for k, v in headers.items() if k.lower() not in ("host", "content-length")]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        await writer.drain()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(reader.read(200), 5)
        writer.transport.abort()  # no FIN, no goodbye

    async def cut_fetch(self) -> None:
        """A large document, granted to the GP, fetched and cut half-way; every other time, resumed."""
        from fedrecord.core.errors import FedrecordError, RemoteProtocolError

        now = int(time.time())
        self.cuts += 1
        if self.large is None:
            self.large = await self.lab.deposit(
                self.patient_did, os.urandom(LARGE_SIZE), title="Scan", category="lab",
                doc_type="lab-result", now=now,
            )
            await self.lab.flush_outbox()
            with contextlib.suppress(FedrecordError):
                await self.patient.accept(self.large, now=now)
            await self.gp.poll(self.patient_did, now=now)

        def cut(done: int, total: int | None) -> None:
            if done > LARGE_SIZE // 2:
                raise _Cut()

        resume = self.cuts % 2 == 0
        try:
            await self.gp.fetch(self.patient_did, self.large, now=now, progress=None if resume else cut)
            self.count("large_fetched")
        except _Cut:
            self.count("fetch_cut")
        except RemoteProtocolError:
            self.large = None  # not delivered yet, or not readable now: another one next time
            raise

    async def cut_deposit(self) -> None:
        """A deposit whose upload stops half-way (the connection dropped): the patient keeps nothing."""
        from fedrecord.node.client import b64

        now = int(time.time())
        doc = await self.lab.deposit(
            self.patient_did, os.urandom(2 * 1024 * 1024), title="Cut", category="lab",
            doc_type="lab-result", now=now,
        )
        payload = await self.homes["lab"].db.fetchone(
            "SELECT id, payload FROM outbox WHERE done = 0 AND kind = 'deposit' ORDER BY id DESC LIMIT 1"
        )
        chunks = await self.homes["lab"].files.open(doc)
        assert chunks is not None and payload is not None

        async def half() -> Any:
            sent = 0
            async for chunk in chunks:
                yield chunk
                sent += len(chunk)
                if sent > 1024 * 1024:
                    raise _Cut()

        with contextlib.suppress(_Cut, Exception):
            await self.lab.client.upload(
                f"{self.homes['patient'].config.endpoint}/v0/documents/{doc.hex()}", half(),
                {"Fedrecord-Deposit": b64(payload[1])}, expected_signer=self.patient_did,
            )
        # The lab's outbox still holds the deposit: its serve delivers it whole at its next run.
        self.count("deposit_cut")

    async def web_signin(self) -> None:
        """Sign in to the patient's web page and walk away (the browser closed, the cookie lost)."""
        import aiohttp

        url = self.options["web"]
        async with aiohttp.ClientSession() as session, session.post(
            f"{url}/signin", data={"password": WEB_PASSWORD}, allow_redirects=False,
            headers={"Origin": url},
        ) as answer:
            if answer.status != 303 and answer.status != 302:
                raise RuntimeError(f"sign-in answered {answer.status}")

    def cli(self, name: str, *args: str) -> None:
        env = _env(self.root / name)
        done = subprocess.run(
            [sys.executable, "-m", "fedrecord", "--json", *args], env=env, capture_output=True,
            timeout=120, check=False,
        )
        self.count(f"cli {args[0]}" + ("" if done.returncode == 0 else " failed"))


Step = Callable[["Load"], Coroutine[Any, Any, Any]]

TOGETHER: Final[tuple[tuple[int, str, Step], ...]] = (
    (1, "deposit", Load.deposit),
    (1, "gp_fetch", Load.gp_fetch),
    (2, "decide", Load.decide_inbox),
    (5, "subscriber", Load.subscriber),
    (7, "delete", Load.delete_one),
    (9, "rude_subscriber", Load.rude_subscriber),
    (11, "gp_sync", Load.gp_sync),
    (13, "doc_grant", Load.doc_grant_cycle),
    (17, "web_signin", Load.web_signin),
)
"""The load's operations run at once each tick: (every how many ticks, name, operation)."""
ALONE: Final[tuple[tuple[int, str, Step], ...]] = (
    (40, "regrant", Load.regrant_gp),
    (60, "cut_fetch", Load.cut_fetch),
    (70, "cut_deposit", Load.cut_deposit),
)
"""Operations run after those, one at a time, in this order."""


async def run_load(options: dict[str, Any]) -> dict[str, Any]:
    load = Load(options)
    deadline = time.monotonic() + options["seconds"]
    await load.open()
    opened_at = started = measured = time.monotonic()
    tick = 0
    try:
        await load.guarded("grant", load.regrant_gp())
        while time.monotonic() < deadline:
            tick += 1
            if time.monotonic() - opened_at > REOPEN_EVERY:
                await load.close()
                await load.open()
                opened_at = time.monotonic()
                load.count("reopen")
            # A few operations in flight at once, as several commands and pages would be.
            await asyncio.gather(
                *(load.guarded(name, step(load)) for every, name, step in TOGETHER if tick % every == 0),
                return_exceptions=False,
            )
            for every, name, step in ALONE:
                if tick % every == 0:
                    await load.guarded(name, step(load))
            if time.monotonic() - measured >= 30:
                measured = time.monotonic()
                await load.guarded("measure", load.measure(started))
            if tick % 150 == 0:
                for name, args in (("lab", ("status",)), ("gp", ("sync",)), ("patient", ("audit", "--verify"))):
                    await asyncio.to_thread(load.cli, name, *args)
            await asyncio.sleep(options["pause"])
    finally:
        await load.close()
    return {"ticks": tick, "counts": load.counts, "refused": load.refused, "series": load.series}


# --- sampling --------------------------------------------------------------------------------------------


def _proc(pid: int) -> dict[str, int]:
    found: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key == "VmRSS":
                found["rss_kib"] = int(value.split()[0])
            elif key == "Threads":
                found["threads"] = int(value)
        found["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, ValueError):
        pass
    return found


def _rows(home: Path) -> dict[str, int]:
    uri = f"file:{home / 'node.db'}?mode=ro"
    db = sqlite3.connect(uri, uri=True, timeout=30)
    try:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        rows = {f"rows.{t}": int(db.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0]) for t in tables}
        # Nonces are kept until they expire and then a minute: the table holds the request rate times
        # that span, and the span, not the count, says whether expired ones are purged.
        rows["nonces.span_s"] = int(db.execute("SELECT coalesce(max(expires) - min(expires), 0) FROM nonces").fetchone()[0])
        return rows
    finally:
        db.close()


def _files(home: Path) -> dict[str, int]:
    counts = {"files.total": 0, "files.documents": 0, "files.tmp": 0, "files.partial": 0, "bytes.home": 0}
    for path in home.rglob("*"):
        if not path.is_file():
            continue
        counts["files.total"] += 1
        with contextlib.suppress(OSError):
            counts["bytes.home"] += path.stat().st_size
        parts = path.relative_to(home).parts
        if parts[0] == "documents":
            sub = parts[1] if len(parts) > 2 else ""
            key = {"tmp": "files.tmp", "partial": "files.partial"}.get(sub, "files.documents")
            counts[key] += 1
    return counts


def _log(log: Path) -> dict[str, int]:
    text = log.read_text(errors="replace") if log.exists() else ""
    return {
        "log.bytes": len(text.encode()),
        "log.warnings": text.count(" WARNING "),
        "log.errors": text.count(" ERROR "),
        "log.tracebacks": text.count("Traceback"),
        "log.unclosed": text.count("Unclosed"),
        "log.resourcewarnings": text.count("ResourceWarning"),
    }


def sample(root: Path, processes: dict[str, subprocess.Popen[bytes]], started: dict[str, float]) -> dict[str, Any]:
    now = time.time()
    out: dict[str, Any] = {"at": now}
    for name in NAMES:
        home = root / name
        data: dict[str, Any] = {"age": now - started[name], "pid": processes[name].pid}
        data.update(_proc(processes[name].pid))
        for suffix, key in (("", "db_bytes"), ("-wal", "wal_bytes")):
            path = home / f"node.db{suffix}"
            data[key] = path.stat().st_size if path.exists() else 0
        with contextlib.suppress(sqlite3.Error):
            data.update(_rows(home))
        data.update(_files(home))
        data.update(_log(root / f"{name}.log"))
        with contextlib.suppress(OSError, ValueError):
            inner = json.loads((root / f"{name}.stats.json").read_text())
            if inner.get("at", 0) >= started[name]:
                data.update({f"inner.{k}": v for k, v in inner.items() if k != "at"})
        out[name] = data
    return out


# --- verdicts --------------------------------------------------------------------------------------------


def _series(samples: list[dict[str, Any]], name: str, key: str) -> list[tuple[float, float, float]]:
    """(time since start, age of the process, value) of one figure."""
    t0 = samples[0]["at"]
    return [
        (s["at"] - t0, s[name]["age"], s[name][key])
        for s in samples
        if isinstance(s[name].get(key), int | float)
    ]


def _verdict_bounded(series: list[tuple[float, float, float]], *, restarted: bool, slack: float) -> tuple[float, float, str]:
    """flat or GROWS, comparing the first stretch after warm-up with the last (per life when restarted)."""
    if len(series) < 4:
        return (series[0][2] if series else 0, series[-1][2] if series else 0, "too short")
    warm = [v for _t, _a, v in series[len(series) // 4 :]]
    if restarted:
        # Same age, different lives: the process's figures when young against those when old.
        young = [v for _t, age, v in series if age < GP_RESTART_EVERY / 3]
        old = [v for _t, age, v in series if age >= GP_RESTART_EVERY * 2 / 3]
        if not young or not old:
            return (series[0][2], series[-1][2], "too short")
        first, last = max(young), max(old)
    else:
        half = len(warm) // 2
        first, last = max(warm[: max(1, half)]), max(warm[half:])
    tail = [v for _t, _a, v in series[-max(3, len(series) // 4) :]]
    rising = all(b >= a for a, b in itertools.pairwise(tail)) and tail[-1] > tail[0]
    grew = last > first * (1 + slack) and last - first >= 3
    return (series[0][2], series[-1][2], "GROWS" if grew and (rising or restarted) else "flat")


SLACK = {"rss_kib": 0.15, "wal_bytes": 0.5}
# A nonce is kept from its request until a minute after it expires: a signature's lifetime is at most
# 300 s (ours sign for 60 s), plus the clock skew allowed (30 s), plus that minute.
NONCE_SPAN_MAX = 420
# In-memory caches bounded by a constant of the code: filling up to it is not a leak.
CAPS = {
    "inner.wrap_cache": 1024,  # fedrecord.node.patient.WRAP_CACHE_SIZE
    "inner.verified_cache": 4096,  # fedrecord.node.records_table.CACHE_SIZE
    "inner.sync_views": 64,  # fedrecord.node.sync.ViewCache.limit
    "inner.subscriptions": 256,  # fedrecord.node.state_feed.MAX_SUBSCRIPTIONS
    # SQLite checkpoints the log at 1,000 pages (4 MiB) and the log is not shrunk after (only a
    # deletion's checkpoint truncates it): it stays near that size, plus the largest transaction.
    "wal_bytes": 8 * 1024 * 1024,
    # The main thread, the database's thread, this script's, asyncio's default executor, and one spare.
    "threads": min(32, (os.cpu_count() or 1) + 4) + 4,
}


def verdicts(samples: list[dict[str, Any]], ops: dict[str, int]) -> list[dict[str, Any]]:
    table = []
    for name in NAMES:
        restarted = name == "gp"
        keys = sorted({k for s in samples for k in s[name]} - {"age", "pid"})
        for key in keys:
            series = _series(samples, name, key)
            if not series:
                continue
            start, end = series[0][2], series[-1][2]
            row = {"node": name, "resource": key, "start": start, "end": end}
            table_name = key.removeprefix("rows.")
            if key.startswith("rows.") and table_name in BY_DESIGN_ROWS:
                row["verdict"] = "by design"
                row["note"] = BY_DESIGN_ROWS[table_name]
            elif key in ("db_bytes", "bytes.home", "files.total", "files.documents", "log.bytes"):
                row["verdict"] = "by design"
                row["note"] = "grows with what is kept"
            elif key.startswith("log.") and key != "log.warnings":
                row["verdict"] = "flat" if end == 0 else "LOGGED"
            elif key == "inner.web_sessions":
                # A session abandoned is still usable until IDLE_SECONDS after its last request: the page
                # may hold every sign-in of that span, and should hold no more.
                from fedrecord.web.auth import IDLE_SECONDS

                elapsed = max(1.0, samples[-1]["at"] - samples[0]["at"])
                bound = int(ops.get("web_signin", 0) * min(1.0, IDLE_SECONDS / elapsed)) + 2
                row["verdict"] = "flat" if end <= bound else "GROWS"
                row["note"] = f"at most the {bound} sign-ins of the last {IDLE_SECONDS // 60} min"
            elif key == "rows.nonces":
                row["verdict"] = "by rate"
                row["note"] = "request rate x the span below"
            elif key == "nonces.span_s":
                row["verdict"] = "flat" if max(v for *_x, v in series) <= NONCE_SPAN_MAX else "GROWS"
                row["note"] = "expired nonces purged" if row["verdict"] == "flat" else "expired nonces kept"
            elif key.startswith("rows.") and table_name not in BOUNDED_ROWS:
                row["verdict"] = "by design"
            else:
                per_life = restarted and (key in ("rss_kib", "fds", "threads") or key.startswith("inner."))
                *_ignored, row["verdict"] = _verdict_bounded(series, restarted=per_life, slack=SLACK.get(key, 0.25))
                cap = CAPS.get(key)
                if cap is not None:
                    row["note"] = f"capped at {cap} by design"
                    if row["verdict"] == "GROWS" and max(v for *_x, v in series) <= cap:
                        row["verdict"] = "flat (filling to its cap)"
            table.append(row)
    return table


# --- the run ---------------------------------------------------------------------------------------------


def _serve(root: Path, name: str, sample_every: float) -> subprocess.Popen[bytes]:
    env = _env(root / name)
    env["PYTHONWARNINGS"] = "default::ResourceWarning"
    with (root / f"{name}.log").open("ab") as out:
        return subprocess.Popen(
            [sys.executable, str(HERE), "--serve", str(root / name), str(root / f"{name}.stats.json"),
             str(max(5.0, sample_every / 2))],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )


def run(minutes: float, sample_every: float, keep: bool) -> dict[str, Any]:
    from fedrecord.node.home import NodeConfig
    from fedrecord.web.auth import set_password

    root = Path(tempfile.mkdtemp(prefix="fedrecord-soak-"))
    processes: dict[str, subprocess.Popen[bytes]] = {}
    started: dict[str, float] = {}
    samples: list[dict[str, Any]] = []
    restarts: list[dict[str, Any]] = []
    load: subprocess.Popen[str] | None = None
    try:
        ports = {name: free_port() for name in NAMES}
        for name in NAMES:
            bench_home(root / name, "patient" if name == "patient" else "clinic", port=ports[name])
        web_port = free_port()
        config = NodeConfig.load(root / "patient")
        NodeConfig(**{**asdict(config), "web_port": web_port}).save(root / "patient")
        from nacl.pwhash import argon2id

        set_password(root / "patient", WEB_PASSWORD, limits=(argon2id.OPSLIMIT_INTERACTIVE, argon2id.MEMLIMIT_INTERACTIVE))
        for name in NAMES:
            processes[name] = _serve(root, name, sample_every)
            started[name] = time.time()
            _wait_for(f"http://127.0.0.1:{ports[name]}/v0/health", processes[name], root / f"{name}.log")
        patient_did = asyncio.run(_connect(root))
        options = {
            "root": str(root), "patient_did": patient_did, "seconds": minutes * 60, "pause": 0.8,
            "web": f"http://127.0.0.1:{web_port}",
        }
        load = subprocess.Popen(
            [sys.executable, str(HERE), "--load"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=(root / "load.log").open("w"), env=_env(), text=True,
        )
        assert load.stdin is not None
        load.stdin.write(json.dumps(options))
        load.stdin.close()
        begun = time.monotonic()
        next_sample = begun
        next_restart = begun + GP_RESTART_EVERY
        kill = False
        while load.poll() is None:
            now = time.monotonic()
            if now >= next_sample:
                samples.append(sample(root, processes, started))
                (root / "samples.json").write_text(json.dumps(samples))
                _progress(samples[-1], now - begun)
                next_sample += sample_every
            if now >= next_restart:
                how = "SIGKILL" if kill else "SIGTERM"
                if kill:
                    processes["gp"].kill()
                    processes["gp"].wait()
                else:
                    _stop(processes["gp"])
                processes["gp"] = _serve(root, "gp", sample_every)
                started["gp"] = time.time()
                _wait_for(f"http://127.0.0.1:{ports['gp']}/v0/health", processes["gp"], root / "gp.log")
                restarts.append({"at": round(now - begun), "how": how})
                kill = not kill
                next_restart += GP_RESTART_EVERY
            time.sleep(0.5)
        assert load.stdout is not None
        done = load.stdout.read()
        if load.returncode != 0:
            raise SystemExit(f"the load process failed; see {root / 'load.log'}")
        time.sleep(2 * 5.0)  # the clinics' last poll
        samples.append(sample(root, processes, started))
        (root / "samples.json").write_text(json.dumps(samples))
        work = json.loads(done)
        (root / "work.json").write_text(done)
        return {
            "root": str(root), "minutes": minutes, "restarts": restarts, "work": work,
            "samples": samples, "verdicts": verdicts(samples, work["counts"]),
        }
    finally:
        if load is not None and load.poll() is None:
            load.kill()
        for process in processes.values():
            _stop(process)
        if keep:
            print(f"kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)


async def _connect(root: Path) -> str:
    """The lab and the GP connect to the patient by invitation; returns the patient's did."""
    from fedrecord.node.clinic import ClinicNode
    from fedrecord.node.home import NodeHome
    from fedrecord.node.patient import PatientNode

    now = int(time.time())
    homes = {n: await NodeHome.open(root / n, PASSPHRASE.encode()) for n in NAMES}
    patient = PatientNode(homes["patient"])
    try:
        for name in ("lab", "gp"):
            invitation = await patient.create_invitation(label=name, now=now)
            clinic = ClinicNode(homes[name])
            await clinic.connect(invitation.code(), now=now)
            await clinic.client.close()
        return homes["patient"].did
    finally:
        for home in homes.values():
            await home.close()


def _progress(s: dict[str, Any], elapsed: float) -> None:
    parts = [f"{elapsed / 60:5.1f} min"]
    for name in NAMES:
        d = s[name]
        parts.append(
            f"{name}: rss {d.get('rss_kib', 0) // 1024} MiB fds {d.get('fds', '-')} wal {d.get('wal_bytes', 0) // 1024} KiB"
            f" nonces {d.get('rows.nonces', '-')} tasks {d.get('inner.tasks', '-')}"
        )
    print(" | ".join(parts), file=sys.stderr, flush=True)


def report(results: dict[str, Any]) -> int:
    work = results["work"]
    print(f"soak of {results['minutes']} min; GP restarts: {results['restarts']}")
    print("work done:", json.dumps(work["counts"], sort_keys=True))
    if work["refused"]:
        print("refused (expected now and then):", json.dumps(work["refused"], sort_keys=True))
    print(f"{'node':8} {'resource':28} {'start':>12} {'end':>12}  verdict")
    bad = 0
    for row in results["verdicts"]:
        print(
            f"{row['node']:8} {row['resource']:28} {row['start']:>12} {row['end']:>12}  {row['verdict']}"
            + (f"  ({row['note']})" if row.get("note") else "")
        )
        bad += row["verdict"] in ("GROWS",) or (row["resource"] == "log.tracebacks" and row["end"] > 0)
    series = [point for point in work.get("series", []) if point.get("revocations")]
    if len(series) >= 2:
        first, last = series[0], series[-1]
        print(f"{'over the run':37} {'start':>12} {'end':>12}")
        for key in last:
            if key != "t":
                print(f"{key:37} {first.get(key)!s:>12} {last[key]!s:>12}")
        added = last["revocations"] - first["revocations"]
        grew = last.get("state_revocations_bytes", 0) - first.get("state_revocations_bytes", 0)
        if added > 0 and grew > 0:
            per = grew / added
            left = (MAX_BODY - last["state_answer_bytes"]) / per
            print(
                f"a state answer holds every revocation ([API-16]), {per:.0f} bytes each: with nothing else "
                f"added, the 1 MiB body cap is reached after about {left:,.0f} more (sooner with the "
                "tombstones and grants it also holds)"
            )
    print("verdict:", "nothing grew that should not" if not bad else f"{bad} resource(s) to look at")
    return 1 if bad else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=20.0, help="how long the workload runs")
    parser.add_argument("--sample", type=float, default=30.0, help="seconds between two samples")
    parser.add_argument("--json", type=Path, help="write every sample and the verdicts to this file")
    parser.add_argument("--keep", action="store_true", help="keep the nodes' folder (homes and logs)")
    parser.add_argument("--restart-every", type=float, default=180.0, help="seconds between GP restarts (180)")
    parser.add_argument("--report", type=Path, metavar="DIR", help="print the verdicts of a kept run's folder")
    parser.add_argument("--serve", nargs=3, metavar=("HOME", "STATS", "EVERY"), help=argparse.SUPPRESS)
    parser.add_argument("--load", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return serve_instrumented(Path(args.serve[0]), Path(args.serve[1]), float(args.serve[2]))
    if args.load:
        print(json.dumps(asyncio.run(run_load(json.loads(sys.stdin.read())))))
        return 0
    globals()["GP_RESTART_EVERY"] = args.restart_every
    if args.report:
        samples = json.loads((args.report / "samples.json").read_text())
        work = json.loads((args.report / "work.json").read_text())
        minutes = round((samples[-1]["at"] - samples[0]["at"]) / 60, 1)
        kept = {"minutes": minutes, "restarts": "see the run", "work": work, "samples": samples}
        return report({**kept, "verdicts": verdicts(samples, work["counts"])})
    results = run(args.minutes, args.sample, args.keep)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return report(results)


if __name__ == "__main__":
    sys.exit(main())
