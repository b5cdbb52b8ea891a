"""Server time of each page of the patient's web page, a large record against a small one in the same run.

    python benchmarks/web.py [--json PATH] [--quick] [--requests N]

Issue 6, scale: each page's server time with 5,000 documents and 50,000 audit
entries is at most 3 x its time with 10 documents and 10 audit entries.

Two patient homes are built, each with a GP and a lab connected by invitation
over the patient's real API (served in this process on loopback), a few lab
results deposited through the real path (the lab encrypts, signs and sends;
the patient accepts some, the others wait in the inbox), a grant to the GP
(lab results, mental health privately hidden) and one real read by the GP.
Then, to reach the sizes quickly, the rest is added through the store's own
methods in bulk transactions, but with the real records a real run leaves:

* documents: encrypted and signed by the lab (``DocumentWriter``), their key in
  a deposit signed by the lab and sealed to the patient, the ciphertext file in
  the patient's files (not fsynced: setup), the row in the inbox, then accepted
  with a deposit decision and an accepted entry signed by the patient
  (titles, types, labels and dates varied);
* audit entries: access receipts signed by the GP's key under its real grant,
  each countersigned by the patient into the hash chain (``_audit_hash``),
  exactly what ``PatientNode._append_audit`` writes.

The audit page verifies the chain incrementally (how far it verified is kept,
and each load checks what is new, within a time budget; a backlog goes on in
the background): on each home it is reloaded every 0.2 s until the whole chain
is verified (``audit_backlog_loads_*`` loads after the first,
``audit_backlog_server_ms_*`` their server time, ``audit_backlog_verified_after_s_*``
how long it took) before its steady state is measured.  At the end the large home's whole chain is verified once more with
``PatientNode.verify_audit`` (``full_audit_verify_ms_large``: what every load
would cost without increments), which fails the run unless every entry holds.

Each home gets its web app (``fedrecord.web.app.make_web_app``) over the same
``PatientNode`` as its API, as ``fedrecord serve`` builds it, served on
127.0.0.1; the benchmark signs in to each with its web password.

What is measured: the **server time** of each page, in-process: a middleware
added by this benchmark only (outermost) takes ``time.perf_counter()`` around
the handling of each request (session, CSRF, rendering, every store query), not
the network or the client.  The first load of each page is reported apart
(``first_ms_*``: templates and caches are cold; for the audit page, the first
verification budget of a chain never verified);
the figures compared are the median of N steady-state loads after it (default
40, 15 with ``--quick``), small and large interleaved.  ``*_cpu_ratio`` is the
same ratio of the CPU time of the event loop's thread during the handling
(``time.thread_time``): the part of the server time that other processes on a
loaded machine do not inflate (for information; the target is on wall time).  Pages not served yet are
skipped with a note.  ``--quick`` builds 1,000 documents and 10,000 entries.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent.parent / "src"))
sys.path.insert(0, str(HERE.parent))

from fedrecord.loopback import free_port  # noqa: E402
from node import PASSPHRASE, _report, bench_home  # noqa: E402

WEB_PASSWORD = "benchmark web password, not a secret"
DAY = 86_400
TARGET_RATIO = 3.0
SMALL = (10, 10)
LARGE = (5000, 50_000)
QUICK_LARGE = (1000, 10_000)
#: Documents deposited through the real path: (title, category, labels, accepted).
REAL_DEPOSITS = (
    ("Complete blood count", "lab", (), True),
    ("Lithium level", "lab", ("PSY",), True),
    ("Chest X-ray report", "imaging", (), True),
    ("Ferritin", "lab", (), False),
    ("Thyroid panel", "lab", ("GDIS",), False),
)
TITLES = (
    "Complete blood count",
    "Potassium",
    "Liver function tests",
    "Chest X-ray report",
    "Consultation note",
    "Prescription renewal",
    "Discharge summary",
    "Échographie abdominale",
    "HbA1c",
    "Lipid panel",
)
CATEGORIES = (
    ("lab", "lab-result"),
    ("imaging", "report"),
    ("note", "note"),
    ("prescription", "prescription"),
)
LABEL_SETS = ((), (), (), ("PSY",), (), ("SEX",), (), ("PSY", "SUD"), (), ())
#: The pages measured: name, path (``{doc}`` is a document of the record).  Filtered views of the record too.
PAGES = (
    ("record", "/record"),
    ("record_search", "/record?q=blood&category=lab"),
    ("record_label", "/record?label=PSY"),
    ("record_last_page", "/record?page={last_page}"),
    ("document", "/record/{doc}"),
    ("inbox", "/inbox"),
    ("sharing", "/sharing"),
    ("audit", "/audit"),
    ("connect", "/connect"),
    ("devices", "/devices"),
)
SERVER_SECONDS = "bench.server_seconds"


@dataclass
class Home:
    """One patient home, its clinics' homes, and what the pages will be asked for."""

    name: str
    documents: int
    entries: int
    patient_home: Any = None
    patient: Any = None
    clinics: list[Any] = field(default_factory=list)
    runners: list[Any] = field(default_factory=list)
    web_url: str = ""
    doc: bytes = b""
    times: list[float] = field(default_factory=list)
    cpu_times: list[float] = field(default_factory=list)
    routes: set[str] = field(default_factory=set)
    setup: dict[str, float] = field(default_factory=dict)

    async def close(self) -> None:
        for runner in self.runners:
            await runner.cleanup()
        for clinic in self.clinics:
            await clinic.client.close()
            await clinic.home.close()
        if self.patient_home is not None:
            await self.patient_home.close()


# --- building a home -------------------------------------------------------------------------------------


async def _serve(app: Any, port: int) -> Any:
    from aiohttp import web

    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


async def build_home(root: Path, name: str, documents: int, entries: int) -> Home:
    """A patient with ``documents`` documents in the record and ``entries`` entries in the audit log."""
    from nacl.pwhash import argon2id

    from fedrecord.core import Grant, Scope, open_record
    from fedrecord.node.clinic import ClinicNode
    from fedrecord.node.home import NodeHome
    from fedrecord.node.server import PATIENT, make_app
    from fedrecord.web.app import make_web_app
    from fedrecord.web.auth import set_password

    home = Home(name, documents, entries)
    port = free_port()
    bench_home(root / name, "patient", port=port)
    for clinic_name in ("gp", "lab"):
        bench_home(root / f"{name}-{clinic_name}", "clinic")
    home.patient_home = await NodeHome.open(root / name, PASSPHRASE.encode())
    api = make_app(home.patient_home)
    home.runners.append(await _serve(api, port))
    home.patient = api[PATIENT]
    for clinic_name in ("gp", "lab"):
        clinic_home = await NodeHome.open(root / f"{name}-{clinic_name}", PASSPHRASE.encode())
        home.clinics.append(ClinicNode(clinic_home))
    gp, lab = home.clinics
    patient, did = home.patient, home.patient_home.did
    now = int(time.time())
    started = time.perf_counter()

    # The real path: invitations, deposits sent and accepted (or left in the inbox), a grant, a read.
    for clinic in (gp, lab):
        invitation = await patient.create_invitation(label=clinic.home.config.name, now=now)
        await clinic.connect(invitation.code(), now=now)
    real = []
    for title, category, labels, accept in REAL_DEPOSITS:
        doc = await lab.deposit(
            did,
            f"{title}: within the usual range.\n".encode(),
            title=title,
            category=category,
            doc_type="lab-result" if category == "lab" else "report",
            labels=labels,
            date=now - 30 * DAY,
            now=now,
        )
        real.append((doc, accept))
    if await lab.flush_outbox(now=now) != (len(REAL_DEPOSITS), 0):
        raise SystemExit("setting up: the lab's deposits were not delivered")
    for doc, accept in real:
        if accept:
            await patient.accept(doc, now=now)
    home.doc = real[0][0]
    grant = await patient.grant(
        audience=gp.home.did,
        scope=Scope(categories=("lab",), past=True, future=True),
        actions=("read",),
        purpose="treatment",
        days=90,
        now=now,
        hide_labels=("PSY",),
    )
    await gp.poll(did, now=now)
    await gp.fetch(did, home.doc, now=now)
    home.setup["real_path_s"] = time.perf_counter() - started

    # The bulk: documents, then audit entries, through the store's methods in big transactions.
    connection = await lab.store.connection(did)
    assert connection is not None and connection.deposit_grant is not None
    deposit_grant = open_record(connection.deposit_grant, Grant).id
    started = time.perf_counter()
    accepted = sum(accept for _doc, accept in real)
    lab_docs = await _bulk_documents(home, lab.home.identity, deposit_grant, documents - accepted, now=now)
    home.setup["bulk_documents_s"] = time.perf_counter() - started
    started = time.perf_counter()
    readable = [doc for doc, accept in real if accept][:1] + lab_docs[:200]
    await _bulk_audit(home, gp.home.identity, grant, readable, entries - 1, now=now)
    home.setup["bulk_audit_s"] = time.perf_counter() - started

    # The web page, as `fedrecord serve` builds it, with the timing middleware outermost.
    set_password(
        home.patient_home.path,
        WEB_PASSWORD,
        limits=(argon2id.OPSLIMIT_INTERACTIVE, argon2id.MEMLIMIT_INTERACTIVE),
    )
    web_app = make_web_app(home.patient_home, patient)
    web_app.middlewares.insert(0, _timing(home.times, home.cpu_times))
    web_port = free_port()
    home.runners.append(await _serve(web_app, web_port))
    home.web_url = f"http://127.0.0.1:{web_port}"
    home.routes = {resource.canonical for resource in web_app.router.resources()}
    return home


async def _bulk_documents(home: Home, lab: Any, deposit_grant: bytes, count: int, *, now: int) -> list[bytes]:
    """``count`` documents from the lab, as a real deposit and acceptance leaves them; the lab results' ids."""
    from fedrecord.core import AcceptedEntry, DepositDecision, DocumentHeader, sign_record
    from fedrecord.core.documents import DocumentWriter, padded_size
    from fedrecord.core.key_wraps import make_deposit
    from fedrecord.core.sealed_box import seal
    from fedrecord.core.stream import key_commitment

    patient_home = home.patient_home
    store, did, identity = patient_home.store, patient_home.did, patient_home.identity
    patient_key = patient_home.encryption.public_key
    month = int(time.strftime("%Y%m", time.gmtime(now)))
    lab_results: list[bytes] = []
    batch = 1000
    for first in range(0, count, batch):
        async with store.transaction():
            for i in range(first, min(count, first + batch)):
                category, doc_type = CATEGORIES[i % len(CATEGORIES)]
                labels = LABEL_SETS[i % len(LABEL_SETS)]
                content = f"Document {i}: nothing unusual.\n".encode()
                key, prefix = os.urandom(32), os.urandom(16)
                header = DocumentHeader(
                    patient=did,
                    title=f"{TITLES[i % len(TITLES)]} {i}",
                    doc_type=doc_type,
                    category=category,
                    labels=labels,
                    date=now - 40 * DAY - i * 3 * 3600,
                    media_type="text/plain",
                    size=len(content),
                    commitment=key_commitment(key, prefix),
                )
                writer = DocumentWriter(lab, header, key=key, prefix=prefix)
                ciphertext = b"".join(writer.encrypt([content]))
                doc = writer.document_id
                path = patient_home.files.path_of(doc)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(ciphertext)
                deposit = make_deposit(
                    depositor=lab,
                    patient=did,
                    patient_key=patient_key,
                    doc=doc,
                    size=len(ciphertext),
                    key=key,
                    grant=deposit_grant,
                    iat=now,
                    ephemeral_seed=os.urandom(32),
                )
                await store.put_record(deposit, now=now, subject=doc)
                await store.insert_document(
                    doc=doc,
                    patient=did,
                    author=lab.did,
                    deposit=deposit.id,
                    title=header.title,
                    doc_type=doc_type,
                    category=category,
                    labels=json.dumps(list(labels)),
                    date=header.date,
                    size=len(ciphertext),
                    sealed_key=seal(key, patient_key, os.urandom(32)),
                )
                decision = sign_record(
                    DepositDecision(deposit=deposit.id, doc=doc, decision="accepted", iat=now), identity
                )
                entry = sign_record(
                    AcceptedEntry(doc=doc, padded_size=padded_size(len(ciphertext)), month=month), identity
                )
                await store.put_record(decision, now=now, subject=doc)
                await store.put_record(entry, now=now, subject=doc)
                await store.accept_document(doc, labels=json.dumps(sorted(labels)), added=now)
                if category == "lab" and not labels:
                    lab_results.append(doc)
    async with store.transaction():
        # One new state head for the whole bulk, as accept() signs one per document.
        await home.patient._sign_head(now)
    return lab_results


async def _bulk_audit(home: Home, gp: Any, grant: Any, docs: list[bytes], count: int, *, now: int) -> None:
    """``count`` more reads by the GP under ``grant``, countersigned into the chain as the node does it."""
    from fedrecord.core import AccessReceipt, sign_record
    from fedrecord.node.patient import GENESIS_HASH, _audit_hash

    store, did, identity = home.patient_home.store, home.patient_home.did, home.patient_home.identity
    tail = await store.audit_tail()
    seq, prev_hash = tail if tail is not None else (0, GENESIS_HASH)
    first_at = now - 300 * DAY
    batch = 5000
    for first in range(0, count, batch):
        async with store.transaction():
            for i in range(first, min(count, first + batch)):
                at = first_at + i * (290 * DAY // max(count, 1))
                receipt = sign_record(
                    AccessReceipt(
                        patient=did,
                        doc=docs[i % len(docs)],
                        grant=grant.id,
                        action="read",
                        purpose=grant.record.purpose,
                        iat=at,
                        nonce=os.urandom(16),
                    ),
                    gp,
                )
                seq += 1
                entry_hash = _audit_hash(seq, prev_hash, receipt.id, at)
                await store.append_audit(
                    receipt,
                    seq=seq,
                    at=at,
                    prev_hash=prev_hash,
                    entry_hash=entry_hash,
                    countersignature=identity.sign(entry_hash),
                )
                prev_hash = entry_hash


# --- measuring -----------------------------------------------------------------------------------------------


def _timing(times: list[float], cpu_times: list[float]) -> Any:
    """A middleware (outermost) appending the server time of each request, in seconds, to ``times``,
    and the CPU time of the event loop's thread meanwhile to ``cpu_times``."""
    from aiohttp import web

    @web.middleware
    async def timing(request: web.Request, handler: Callable[[web.Request], Awaitable[Any]]) -> Any:
        started, cpu = time.perf_counter(), time.thread_time()
        try:
            return await handler(request)
        finally:
            times.append(time.perf_counter() - started)
            cpu_times.append(time.thread_time() - cpu)

    return timing


async def _signed_in(home: Home) -> Any:
    import aiohttp

    session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
    async with session.post(
        f"{home.web_url}/signin", data={"password": WEB_PASSWORD}, allow_redirects=False
    ) as answer:
        if answer.status != 303:
            raise SystemExit(f"{home.name}: sign-in answered {answer.status}")
    return session


async def _load(home: Home, session: Any, path: str) -> float:
    """GET ``path``; its server time in milliseconds.  Any answer but 200 stops the benchmark."""
    before = len(home.times)
    async with session.get(f"{home.web_url}{path}", allow_redirects=False) as answer:
        body = await answer.read()
        if answer.status != 200:
            raise SystemExit(f"{home.name}: GET {path} answered {answer.status}: {body[:300]!r}")
    if len(home.times) != before + 1:
        raise SystemExit(f"{home.name}: GET {path}: {len(home.times) - before} requests timed")
    return home.times[-1] * 1000


async def _verify_backlog(home: Home, session: Any, path: str) -> tuple[int, float, float]:
    """Load the audit page until the whole chain is verified, as a patient reloading it every 0.2 s would.

    Returns (loads after the first, their server time, seconds until the chain was verified).  How far
    the chain verified is read with ``PatientNode.verify_audit_since_last(budget=0)``, which verifies
    nothing more (the page may verify in a background task meanwhile); without that method, nothing
    is loaded.
    """
    standing = getattr(home.patient, "verify_audit_since_last", None)
    if standing is None:
        return 0, 0.0, 0.0
    loads, seconds, started = 0, 0.0, time.perf_counter()
    while True:
        now = await standing(budget=0)
        if now.broken is not None:
            raise SystemExit(
                f"{home.name}: the audit page found the chain broken at {now.broken}: {now.problem}"
            )
        if now.complete:
            return loads, seconds, time.perf_counter() - started
        if time.perf_counter() - started > 900:
            raise SystemExit(f"{home.name}: the audit chain is still not verified after {loads} loads")
        await asyncio.sleep(0.2)
        seconds += await _load(home, session, path) / 1000
        loads += 1


def _served(home: Home, path: str) -> bool:
    route = path.split("?", maxsplit=1)[0]
    if route.startswith("/record/"):
        route = "/record/{doc}"
    return route in home.routes


async def measure(small: Home, large: Home, requests: int) -> dict[str, Any]:
    from fedrecord.web.pages.record import PAGE_SIZE as RECORD_PAGE_SIZE

    results: dict[str, Any] = {}
    skipped = []
    sessions = [await _signed_in(small), await _signed_in(large)]
    try:
        ratios = {}
        for name, template in PAGES:
            if not (_served(small, template) and _served(large, template)):
                skipped.append(template.split("?")[0])
                continue
            paths = [
                template.format(
                    doc=home.doc.hex(), last_page=max(0, (home.documents - 1) // RECORD_PAGE_SIZE)
                )
                for home in (small, large)
            ]
            first = [
                await _load(home, session, path)
                for home, session, path in zip((small, large), sessions, paths, strict=True)
            ]
            if name == "audit":
                # The page verifies the chain a little at a time: load it until the backlog is done.
                for home, session, path in zip((small, large), sessions, paths, strict=True):
                    loads, seconds, until = await _verify_backlog(home, session, path)
                    results[f"audit_backlog_loads_{home.name}"] = loads
                    results[f"audit_backlog_server_ms_{home.name}"] = round(seconds * 1000, 1)
                    results[f"audit_backlog_verified_after_s_{home.name}"] = round(until, 1)
            times: tuple[list[float], list[float]] = ([], [])
            cpu: tuple[list[float], list[float]] = ([], [])
            for _ in range(requests):
                for index, home in enumerate((small, large)):
                    times[index].append(await _load(home, sessions[index], paths[index]))
                    cpu[index].append(home.cpu_times[-1] * 1000)
            ms_small, ms_large = (statistics.median(t) for t in times)
            cpu_small, cpu_large = (statistics.median(t) for t in cpu)
            ratio = ms_large / ms_small
            ratios[name] = ratio
            results[f"{name}_ms_small"] = round(ms_small, 2)
            results[f"{name}_ms_large"] = round(ms_large, 2)
            results[f"{name}_ratio"] = round(ratio, 2)
            results[f"{name}_cpu_ratio"] = round(cpu_large / cpu_small, 2)
            results[f"{name}_first_ms_small"] = round(first[0], 1)
            results[f"{name}_first_ms_large"] = round(first[1], 1)
        results["all_within_3x"] = all(ratio <= TARGET_RATIO for ratio in ratios.values())
        results["pages_measured"] = len(ratios)
        results["pages_skipped"] = ", ".join(sorted(set(skipped))) or "none"
    finally:
        for session in sessions:
            await session.close()
    return results


async def run_async(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="fedrecord-bench-web-"))
    large_sizes = QUICK_LARGE if args.quick else LARGE
    homes: list[Home] = []
    try:
        small = await build_home(root, "small", *SMALL)
        homes.append(small)
        large = await build_home(root, "large", *large_sizes)
        homes.append(large)
        for home in homes:
            documents = len(await home.patient_home.store.accepted_documents())
            if documents != home.documents:
                raise SystemExit(
                    f"{home.name}: {documents} documents in the record, {home.documents} expected"
                )
        results: dict[str, Any] = {
            "documents_small": small.documents,
            "audit_entries_small": small.entries,
            "documents_large": large.documents,
            "audit_entries_large": large.entries,
            "setup_bulk_documents_s": round(large.setup["bulk_documents_s"], 1),
            "setup_bulk_audit_s": round(large.setup["bulk_audit_s"], 1),
            "requests_per_page": args.requests,
            "timing": "in-process server time (perf_counter middleware, outermost); median of steady loads",
        }
        results.update(await measure(small, large, args.requests))
        # Last (it also marks the chain verified for the page): the whole chain, as without increments.
        started = time.perf_counter()
        ok, checked, message = await large.patient.verify_audit()
        results["full_audit_verify_ms_large"] = round((time.perf_counter() - started) * 1000, 1)
        if not ok or checked != large.entries:
            raise SystemExit(
                f"the large home's audit chain: {message} ({checked} of {large.entries} entries)"
            )
        return results
    finally:
        for home in homes:
            await home.close()
        if args.keep:
            print(f"kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)


def _print_table(results: dict[str, Any]) -> None:
    print(
        f"{'page':18} {'ms_small':>9} {'ms_large':>9} {'ratio':>6} {'cpu_ratio':>9}"
        f"   {'first_small':>11} {'first_large':>11}"
    )
    for name, _path in PAGES:
        if f"{name}_ratio" in results:
            print(
                f"{name:18} {results[f'{name}_ms_small']:9.2f} {results[f'{name}_ms_large']:9.2f}"
                f" {results[f'{name}_ratio']:6.2f} {results[f'{name}_cpu_ratio']:9.2f}"
                f"   {results[f'{name}_first_ms_small']:11.1f} {results[f'{name}_first_ms_large']:11.1f}"
            )
    print()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    parser.add_argument(
        "--quick", action="store_true", help="1,000 documents and 10,000 entries, fewer requests"
    )
    parser.add_argument("--requests", type=int, help="steady-state loads of each page on each home")
    parser.add_argument("--keep", action="store_true", help="keep the homes' temporary folder")
    args = parser.parse_args()
    if args.requests is None:
        args.requests = 15 if args.quick else 40
    results = asyncio.run(run_async(args))
    _print_table(results)
    targets = {
        name: ("<=", TARGET_RATIO)
        for name in results
        if name.endswith("_ratio") and not name.endswith("_cpu_ratio")
    }
    _report(results, targets, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
