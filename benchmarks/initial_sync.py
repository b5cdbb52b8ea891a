"""Benchmark of a clinic's initial sync with a patient's node over HTTP, as a ratio against raw Ed25519.

    python benchmarks/initial_sync.py [--json PATH] [--quick | --count N] [--profile DIR] [--keep]

Real processes on loopback, as in ``benchmarks/node.py``: the patient's node
is ``python -m fedrecord serve`` (its own SQLite database, WAL,
``synchronous=FULL``; its own document files), and the GP's side of the sync
runs in a process of its own (this script in ``--sync-child`` mode), so each
side has its own interpreter and cold caches, as after a restart.  That
process sets the garbage collector as the ``fedrecord`` command does
(``fedrecord.cli.collect_less_often``).

Setup (not measured).  Homes for the patient, a lab and two GPs (argon2id at
its interactive cost).  The patient's node is served; the lab connects from an
invitation and deposits N documents of 1 KiB (category ``lab``) through its
real path -- ``ClinicNode.deposit`` (encrypted, signed, stored, queued), then
``ClinicNode.flush_outbox`` (signed, streamed ``PUT /v0/documents/{id}`` to the
served node, which verifies and stores them in its inbox) -- and the patient
accepts each one with ``PatientNode.accept`` (accepted entry and decision
signed and stored, a new state head signed), in this process against the
patient's home, each batch of deposits overlapping the acceptance of the
batch before.  Each GP connects, receives a grant (scope categories
``("lab",)``, past and future, 90 days, actions ``read``, purpose
``treatment``) and polls once, so it holds its grant and nothing else of the
record.

Measured.  The patient's node is restarted (cold), then the GP process runs
``ClinicNode.sync(patient, now=...)`` with bodies: reconciliation rounds
(``POST /v0/sync``), the records it lacks in batches (``POST /v0/records``,
every record verified before any is stored), the revocations, tombstones and
newest head applied, then every document body fetched in batches
(``POST /v0/fetch-batch``, spec 15.21: up to 256 documents under one signed
access receipt, committed to the patient's audit log as one entry, and one key
wrap), each stream checked against its id and decrypted, its signed header
verified, the copies kept -- however many batches at a time the sync driver
runs.  CPU
time is counted for the sync only: the GP process's own
``time.process_time()`` (all its threads) and the node's user + system time
from ``/proc/<pid>/stat`` (all its threads), both read just before and just
after the sync.

* ``initial_sync_ratio`` = (``records_stored`` + ``documents_fetched``) per
  CPU-second of both processes together / raw PyNaCl Ed25519 verifications
  per CPU-second (``nacl.bindings.crypto_sign_open`` of a 200-byte message
  with its 64-byte signature).  Target >= 0.35.
  ``records_stored`` counts every record the GP verified and stored: the
  accepted entry of each document, the state heads the patient signed (the
  view holds them all, [API-44]; one at the first state request, then one per
  revocation -- none per accept or deletion, [API-17], [API-18]) and its grants -- so
  about N for N documents (``accepted_entries_stored`` and
  ``state_heads_stored`` say how many of each).
  The baseline is measured in this run as the sync is: sustained runs of
  ``SUSTAINED_COUNT`` verifications (about a second of CPU, split evenly over
  the CPUs, each part pinned to its CPU, as the sync's two processes use them
  all), one before the first sync and one after each; a sync's ratio is
  against the two runs on either side of it.  On a machine whose speed drifts
  (a VM: the same loop has taken 53 us a verification in one minute and 75 in
  the next), a baseline measured minutes away, or the best of short rounds,
  would compare the sync with another machine.  The syncs are measured
  ``--repeat`` times (5 by default), each from the homes as set up: the
  figures are those of the median sync, and ``initial_sync_ratio_each`` gives
  every sync's ratio (``cpu_s_each``: its CPU-seconds).
  ``initial_sync_ratio_vs_best_round`` is the more conservative figure of
  earlier versions, kept for comparison: the median
  sync's rate against the best of several short rounds (2,000 verifications,
  ``time.process_time``) taken before and after the syncs
  (``verifications_per_cpu_s_best_round``).  Against that best round, pure
  verification measured as the sync is scores below 1:
  ``sustained_vs_best_round`` is the median sustained run's rate against it.
* ``initial_sync_ratio_records_only``: the same with ``bodies=False`` by a
  second GP (fresh home, node restarted again): the ratio when the document
  bodies are left for later.  No target; for information.
* Also: ``records_per_cpu_s``, ``verifications_per_cpu_s`` (the median sync's baseline)
  and ``verifications_per_cpu_s_sustained_runs`` (every run, in order), each process's
  CPU and the kernel's share of both (``cpu_s_kernel``: system time, fsyncs
  and the like), ``sync_wall_s``, ``rounds``, ``reconciliation_bytes`` (the
  messages' bytes both ways, from the report), ``cpu_ms_per_body`` -- the CPU
  of the body phase (full sync less the records-only sync) per document
  fetched -- and ``cpu_us_per_record_records_only``.

After each sync the GP's database is checked: every accepted entry held, and
with bodies every document held as a copy (``missing_bodies`` empty, one
shared copy per document); the script fails loudly otherwise.

Size.  The acceptance point is 20,000 documents, but its setup takes 4 to 5
minutes on a 2-core machine, against about 2 minutes for the default, 8,000
(``DEFAULT_COUNT``).  The figure is
per CPU-second, so sizes compare as far as the sync's own costs grow
linearly; the printed ``n_documents`` says which size was measured, and
``--count 20000`` measures the acceptance point itself.  ``--quick``: 500
documents.  ``--profile DIR`` runs the node and the GP's sync under cProfile,
timed by the CPU time of their event-loop threads (``benchmarks/cpu_profile.py``;
figures then inflated), and prints where each spends it.

Comparing two versions of the code.  On a machine whose speed drifts (a VM),
one run does not show a change of 20 %; alternate runs of both versions on the
same homes instead.  ``--save-homes DIR`` saves the homes it set up, before
any sync; ``--homes DIR`` then skips the setup and syncs fresh copies of them
(the patient's node serves again on the port it was set up with).  For
example, from two checkouts in turn: ``python benchmarks/initial_sync.py
--homes DIR``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Final

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent.parent / "src"))

from fedrecord.loopback import free_port  # noqa: E402
from node import (  # noqa: E402
    PASSPHRASE,
    _env,
    _json_process,
    _print_profile,
    _report,
    _stop,
    _wait_for,
    bench_home,
)

DOCUMENT_SIZE = 1024
FULL_COUNT = 20_000
DEFAULT_COUNT = 8_000
QUICK_COUNT = 500
DEFAULT_REPEAT = 5
SUSTAINED_COUNT = 20_000
"""Raw verifications in each sustained baseline run: about a second, the scale of a sync's CPU time."""
BATCH = 250
SIGNED_MESSAGE_SIZE = 200
TARGETS: dict[str, tuple[str, float]] = {"initial_sync_ratio": (">=", 0.35)}


# --- the baseline -----------------------------------------------------------------------------------------


def _signed_sample() -> tuple[Any, bytes, bytes]:
    import nacl.bindings as sodium

    public_key, secret_key = sodium.crypto_sign_seed_keypair(bytes(range(32)))
    return sodium, sodium.crypto_sign(os.urandom(SIGNED_MESSAGE_SIZE), secret_key), public_key


def raw_verifications_per_cpu_s(rounds: int = 7, count: int = 2000) -> float:
    """Raw ``crypto_sign_open`` calls per CPU-second on one signed 200-byte message, best of ``rounds``."""
    sodium, signed, public_key = _signed_sample()
    best = float("inf")
    for _ in range(rounds):
        gc.collect()
        gc.disable()
        try:
            start = time.process_time()
            for _ in range(count):
                sodium.crypto_sign_open(signed, public_key)
            best = min(best, time.process_time() - start)
        finally:
            gc.enable()
    return count / best


def raw_verifications_sustained(count: int = SUSTAINED_COUNT) -> tuple[int, float]:
    """One sustained run of raw ``crypto_sign_open`` calls: (verifications, CPU-seconds).

    The run is split evenly over the CPUs this process may use, each part pinned
    to its CPU (where the system allows it): the sync runs on all of them, and on
    a VM one CPU can be slower than the other for minutes.
    """
    sodium, signed, public_key = _signed_sample()
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()
    pin = bool(allowed) and hasattr(os, "sched_setaffinity")
    cpus = sorted(allowed) if pin else [-1]
    part = max(1, count // len(cpus))
    total = 0.0
    try:
        for cpu in cpus:
            if pin:
                os.sched_setaffinity(0, {cpu})
            start = time.process_time()
            for _ in range(part):
                sodium.crypto_sign_open(signed, public_key)
            total += time.process_time() - start
    finally:
        if pin:
            os.sched_setaffinity(0, allowed)
    return part * len(cpus), total


# --- setup ----------------------------------------------------------------------------------------------------


def _init_homes(root: Path, port: int) -> dict[str, Path]:
    homes = {}
    for name, role, node_port in (
        ("patient", "patient", port),
        ("lab", "clinic", 0),
        ("gp", "clinic", 0),
        ("gp-records-only", "clinic", 0),
    ):
        homes[name] = bench_home(root / name, role, port=node_port)
    return homes


async def _populate(homes: dict[str, Path], count: int) -> str:
    """Deposits, acceptances, grants and polls against the served patient node; the patient's did."""
    from fedrecord.core import Scope
    from fedrecord.node.clinic import ClinicNode
    from fedrecord.node.home import NodeHome
    from fedrecord.node.patient import PatientNode

    passphrase = PASSPHRASE.encode()
    patient_home = await NodeHome.open(homes["patient"], passphrase)
    clinic_homes = [await NodeHome.open(homes[name], passphrase) for name in ("lab", "gp", "gp-records-only")]
    lab, *gps = clinics = [ClinicNode(home) for home in clinic_homes]
    patient = PatientNode(patient_home)
    did = patient_home.did
    try:
        for clinic in clinics:
            invitation = await patient.create_invitation(label=clinic.home.config.name, now=int(time.time()))
            await clinic.connect(invitation.code(), now=int(time.time()))

        async def deposit_and_send(first: int, size: int) -> list[bytes]:
            docs = [
                await lab.deposit(
                    did,
                    os.urandom(DOCUMENT_SIZE),
                    title=f"Result {first + i}",
                    category="lab",
                    doc_type="lab-result",
                    now=int(time.time()),
                )
                for i in range(size)
            ]
            if await lab.flush_outbox(now=int(time.time())) != (size, 0):
                raise SystemExit("setting up: the lab's deposits were not all delivered")
            return docs

        async def accept_all(docs: list[bytes]) -> None:
            for doc in docs:
                await patient.accept(doc, now=int(time.time()))

        started = time.perf_counter()
        pending: list[bytes] = []
        for first in range(0, count, BATCH):
            # The node verifies and stores this batch while this process accepts the one before.
            pending, _ = await asyncio.gather(
                deposit_and_send(first, min(BATCH, count - first)), accept_all(pending)
            )
            print(
                f"  deposited {first + len(pending):>6} / {count}, accepted {first:>6}"
                f" ({time.perf_counter() - started:.0f} s)",
                file=sys.stderr,
            )
        await accept_all(pending)
        now = int(time.time())
        for gp in gps:
            await patient.grant(
                audience=gp.home.did,
                scope=Scope(categories=("lab",), past=True, future=True),
                actions=("read",),
                purpose="treatment",
                days=90,
                now=now,
            )
            await gp.poll(did, now=now)
        accepted = len(await patient.documents())
        if accepted != count:
            raise SystemExit(f"setting up: {accepted} documents accepted, not {count}")
    finally:
        for clinic in clinics:
            await clinic.client.close()
        for home in (patient_home, *clinic_homes):
            await home.close()
    return did


# --- the measured sync (``--sync-child``), in a process of its own ----------------------------------------


def _node_cpu(pid: int) -> tuple[float, float]:
    """(user + system, system) CPU seconds of a process and all its threads, from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        raise SystemExit("the node's CPU time is read from /proc, which this system does not have") from None
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tick, int(fields[12]) / tick


async def _sync_child(options: dict[str, Any]) -> dict[str, Any]:
    """One sync of the GP with the patient's node; CPU of both processes around it, then the checks."""
    import cProfile

    from fedrecord.cli import collect_less_often
    from fedrecord.core import AcceptedEntry, StateHead
    from fedrecord.node.clinic import ClinicNode
    from fedrecord.node.home import NodeHome

    collect_less_often()  # as the fedrecord command does (fedrecord sync), and so the node serving

    home = await NodeHome.open(Path(options["home"]), PASSPHRASE.encode())
    clinic = ClinicNode(home)
    patient, node_pid, bodies = options["patient"], options["node_pid"], options["bodies"]
    profiler = cProfile.Profile(time.thread_time) if options.get("profile") else None
    try:
        now = int(time.time())
        node_before, node_kernel_before = _node_cpu(node_pid)
        own_before, own_kernel_before = time.process_time(), os.times().system
        wall_before = time.perf_counter()
        if profiler is not None:
            profiler.enable()
        report = await clinic.sync(patient, now=now, bodies=bodies)
        if profiler is not None:
            profiler.disable()
        wall = time.perf_counter() - wall_before
        own, own_kernel = time.process_time() - own_before, os.times().system - own_kernel_before
        node_after, node_kernel_after = _node_cpu(node_pid)
        if profiler is not None:
            profiler.dump_stats(options["profile"])

        # The checks, not measured.
        entries = {e.record.doc for e in await home.store.records(AcceptedEntry, signer=patient)}
        heads = len(await home.store.records(StateHead, signer=patient))
        missing = await clinic.missing_bodies(patient)
        held = sum(1 for d in await clinic.held() if d["patient"] == patient and d["state"] == "shared")
    finally:
        await clinic.client.close()
        await home.close()
    return {
        "records_stored": report.records_stored,
        "records_fetched": report.records_fetched,
        "documents_fetched": report.documents_fetched,
        "documents_failed": report.documents_failed,
        "rounds": report.rounds,
        "reconciliation_bytes": report.bytes_sent + report.bytes_received,
        "cpu_s_gp": own,
        "cpu_s_node": node_after - node_before,
        "cpu_s_kernel": own_kernel + node_kernel_after - node_kernel_before,
        "wall_s": wall,
        "entries_held": len(entries),
        "heads_held": heads,
        "missing_bodies": len(missing),
        "copies_held": held,
    }


# --- the run -------------------------------------------------------------------------------------------------


def _serve(home: Path, port: int, log: Path, profile: Path | None) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "fedrecord", "serve"]
    if profile is not None:
        command = [sys.executable, str(HERE.parent / "cpu_profile.py"), str(profile), "-m", "fedrecord", "serve"]
    with log.open("ab") as out:
        node = subprocess.Popen(command, env=_env(home), stdout=out, stderr=out)
    _wait_for(f"http://127.0.0.1:{port}/v0/health", node, log)
    return node


def _measure_sync(
    name: str,
    homes: dict[str, Path],
    patient: str,
    *,
    port: int,
    root: Path,
    bodies: bool,
    count: int,
    profile: Path | None,
) -> dict[str, Any]:
    """Restart the patient's node, sync GP ``name`` with it in a process of its own; check what it holds."""
    node_profile = profile / f"patient-node-{name}.prof" if profile else None
    node = _serve(homes["patient"], port, root / f"patient-node-{name}.log", node_profile)
    try:
        result: dict[str, Any] = _json_process(
            f"sync of {name}",
            [str(HERE), "--sync-child"],
            {
                "home": str(homes[name]),
                "patient": patient,
                "node_pid": node.pid,
                "bodies": bodies,
                "profile": str(profile / f"{name}-sync.prof") if profile else None,
            },
            timeout=6 * 3600,
        )
    finally:
        _stop(node)
    failures = []
    if result["documents_failed"]:
        failures.append(f"{len(result['documents_failed'])} bodies refused: {result['documents_failed'][:3]}")
    if result["entries_held"] != count:
        failures.append(f"{result['entries_held']} accepted entries held, not {count}")
    if bodies and (result["missing_bodies"] or result["copies_held"] != count):
        failures.append(
            f"{result['copies_held']} copies held and {result['missing_bodies']} missing, of {count}"
        )
    if not bodies and result["documents_fetched"]:
        failures.append(f"{result['documents_fetched']} bodies fetched by a records-only sync")
    if result["records_stored"] != result["records_fetched"]:
        failures.append(f"{result['records_fetched']} records fetched but {result['records_stored']} stored")
    if failures:
        raise SystemExit(f"{name}: the sync is incomplete: " + "; ".join(failures))
    if profile:
        for path in (node_profile, profile / f"{name}-sync.prof"):
            print(f"\n=== {path}", file=sys.stderr)
            assert path is not None
            _print_profile(path)
    return result


SAVED: Final = "saved-homes.json"
"""What ``--save-homes`` writes beside the homes: the patient's did and port, and the size."""


def _reuse(saved: Path, root: Path) -> tuple[dict[str, Path], str, int, int]:
    """Copy homes saved by ``--save-homes`` into ``root``: (homes, patient, port, count).

    The patient's node serves on the port its profile names, so that port must be free again.
    """
    try:
        meta = json.loads((saved / SAVED).read_text())
    except (OSError, ValueError):
        raise SystemExit(
            f"{saved} holds no homes saved by --save-homes ({SAVED} is missing or unreadable)"
        ) from None
    port = int(meta["port"])
    with socket.socket() as probe:
        # As the node binds: connections of an earlier run still in TIME_WAIT do not count.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            # Another process there would answer the health check and the syncs in the node's stead.
            raise SystemExit(f"port {port}, which the saved patient's node serves on, is in use") from None
    shutil.copytree(saved, root, dirs_exist_ok=True)
    homes = {name: root / name for name in ("patient", "lab", "gp", "gp-records-only")}
    return homes, str(meta["patient"]), port, int(meta["count"])


def _restore(pristine: Path, homes: dict[str, Path]) -> None:
    """Put back the homes a sync changes (the patient's and both GPs') as they were set up."""
    for name in ("patient", "gp", "gp-records-only"):
        shutil.rmtree(homes[name])
        shutil.copytree(pristine / name, homes[name])


def run(args: argparse.Namespace) -> dict[str, Any]:
    count = QUICK_COUNT if args.quick else args.count
    root = Path(tempfile.mkdtemp(prefix="fedrecord-bench-sync-"))
    pristine = root.parent / f"{root.name}-pristine"
    port = free_port()
    if args.homes is not None:
        homes, patient, port, count = _reuse(args.homes, root)
    results: dict[str, Any] = {"n_documents": count, "document_bytes": DOCUMENT_SIZE}
    if count < FULL_COUNT:
        results["size_note"] = (
            f"{count} documents, not the acceptance point's {FULL_COUNT}, whose setup takes"
            f" 4 to 5 minutes (--count {FULL_COUNT}): see the docstring"
        )
    started = time.perf_counter()
    try:
        if args.homes is None:
            homes = _init_homes(root, port)
            node = _serve(homes["patient"], port, root / "patient-node-setup.log", None)
            try:
                patient = asyncio.run(_populate(homes, count))
            finally:
                _stop(node)
            results["setup_s"] = round(time.perf_counter() - started, 1)
            if args.save_homes is not None:
                # Before any sync: each later run syncs from the same starting point.
                shutil.copytree(root, args.save_homes)
                (args.save_homes / SAVED).write_text(
                    json.dumps({"patient": patient, "port": port, "count": count})
                )
        else:
            results["setup_s"] = f"none: homes copied from {args.homes}"
        if args.profile:
            args.profile.mkdir(parents=True, exist_ok=True)
        repeats = 1 if args.profile else args.repeat
        if repeats > 1:
            # Each repeat syncs from the same starting point: the homes as set up, before any sync.
            shutil.copytree(root, pristine, ignore=shutil.ignore_patterns("*.log"))
        # Each sync lies between two sustained baseline runs; its ratio is against those two.
        best_rate = raw_verifications_per_cpu_s()
        sustained = [raw_verifications_sustained()]
        measured = {"port": port, "root": root, "count": count, "profile": args.profile}
        fulls, records_onlys = [], []
        for repeat in range(repeats):
            if repeat:
                _restore(pristine, homes)
            fulls.append(_measure_sync("gp", homes, patient, bodies=True, **measured))
            sustained.append(raw_verifications_sustained())
            records_onlys.append(_measure_sync("gp-records-only", homes, patient, bodies=False, **measured))
            sustained.append(raw_verifications_sustained())
            best_rate = max(best_rate, raw_verifications_per_cpu_s())
    finally:
        shutil.rmtree(pristine, ignore_errors=True)
        if args.keep:
            print(f"kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)

    def rate(result: dict[str, Any]) -> float:
        return float(result["records_stored"] + result["documents_fetched"]) / float(
            result["cpu_s_gp"] + result["cpu_s_node"]
        )

    def around(index: int) -> float:
        """The raw verification rate of the two sustained runs on either side of sync ``index``."""
        (count_before, cpu_before), (count_after, cpu_after) = sustained[index], sustained[index + 1]
        return (count_before + count_after) / (cpu_before + cpu_after)

    # Sync i of each kind: full syncs lie between runs 2i and 2i+1, records-only ones between 2i+1 and 2i+2.
    full_ratios = [rate(result) / around(2 * i) for i, result in enumerate(fulls)]
    records_only_ratios = [rate(result) / around(2 * i + 1) for i, result in enumerate(records_onlys)]
    # The median sync of each kind, by its ratio (of an even number, the lower one): the figures below are its.
    median = sorted(range(repeats), key=full_ratios.__getitem__)[(repeats - 1) // 2]
    median_records_only = sorted(range(repeats), key=records_only_ratios.__getitem__)[(repeats - 1) // 2]
    full, records_only = fulls[median], records_onlys[median_records_only]
    results["initial_sync_ratio"] = round(full_ratios[median], 4)
    if repeats > 1:
        results["initial_sync_ratio_each"] = [round(ratio, 4) for ratio in full_ratios]
        results["cpu_s_each"] = [
            {part: round(result[f"cpu_s_{part}"], 2) for part in ("gp", "node", "kernel")} for result in fulls
        ]
        results["syncs_measured"] = repeats
    # The conservative figure of earlier versions: against the baseline's best short round of the whole run.
    median_rate = sorted(rate(result) for result in fulls)[(repeats - 1) // 2]
    results["initial_sync_ratio_vs_best_round"] = round(median_rate / best_rate, 4)
    results["records_stored"] = full["records_stored"]
    results["accepted_entries_stored"] = full["entries_held"]
    results["state_heads_stored"] = full["heads_held"]
    results["documents_fetched"] = full["documents_fetched"]
    results["cpu_s_total"] = round(full["cpu_s_gp"] + full["cpu_s_node"], 2)
    results["cpu_s_gp"] = round(full["cpu_s_gp"], 2)
    results["cpu_s_patient_node"] = round(full["cpu_s_node"], 2)
    results["cpu_s_kernel"] = round(full["cpu_s_kernel"], 2)
    results["records_per_cpu_s"] = round(rate(full), 1)
    results["verifications_per_cpu_s"] = round(around(2 * median), 1)
    results["verifications_per_cpu_s_sustained_runs"] = [round(n / cpu, 1) for n, cpu in sustained]
    results["verifications_per_cpu_s_best_round"] = round(best_rate, 1)
    rates = sorted(n / cpu for n, cpu in sustained)
    results["sustained_vs_best_round"] = round(rates[(len(rates) - 1) // 2] / best_rate, 4)
    results["sync_wall_s"] = round(full["wall_s"], 2)
    results["rounds"] = full["rounds"]
    results["reconciliation_bytes"] = full["reconciliation_bytes"]
    results["initial_sync_ratio_records_only"] = round(records_only_ratios[median_records_only], 4)
    results["records_stored_records_only"] = records_only["records_stored"]
    results["cpu_s_total_records_only"] = round(records_only["cpu_s_gp"] + records_only["cpu_s_node"], 2)
    results["cpu_s_gp_records_only"] = round(records_only["cpu_s_gp"], 2)
    results["cpu_s_patient_node_records_only"] = round(records_only["cpu_s_node"], 2)
    results["cpu_s_kernel_records_only"] = round(records_only["cpu_s_kernel"], 2)
    results["records_per_cpu_s_records_only"] = round(rate(records_only), 1)
    results["sync_wall_s_records_only"] = round(records_only["wall_s"], 2)
    body_cpu = results["cpu_s_total"] - results["cpu_s_total_records_only"]
    results["cpu_ms_per_body"] = round(body_cpu / max(1, full["documents_fetched"]) * 1e3, 2)
    results["cpu_us_per_record_records_only"] = round(
        results["cpu_s_total_records_only"] / max(1, records_only["records_stored"]) * 1e6, 1
    )
    results["wall_s"] = round(time.perf_counter() - started, 1)
    if args.profile:
        results["profiled"] = "yes: CPU figures are inflated by cProfile"
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help=f"{QUICK_COUNT} documents, for a smoke run")
    size.add_argument(
        "--count",
        type=int,
        default=DEFAULT_COUNT,
        help=f"documents to sync (default {DEFAULT_COUNT}; the acceptance point is {FULL_COUNT})",
    )
    parser.add_argument(
        "--profile", type=Path, help="run the node and the GP's sync under cProfile, output here"
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=DEFAULT_REPEAT,
        help=f"syncs of each kind measured, each from the homes as set up; the median is reported"
        f" (default {DEFAULT_REPEAT}; 1 with --profile)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the nodes' temporary folder")
    homes = parser.add_mutually_exclusive_group()
    homes.add_argument(
        "--save-homes", type=Path, help="also save the homes set up, before any sync, in this new folder"
    )
    homes.add_argument(
        "--homes",
        type=Path,
        help="skip the setup: sync copies of homes saved by --save-homes (their size, not --count)",
    )
    parser.add_argument("--sync-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.save_homes is not None and args.save_homes.exists():
        parser.error(f"--save-homes {args.save_homes}: the folder exists already")
    if args.sync_child:
        print(json.dumps(asyncio.run(_sync_child(json.loads(sys.stdin.read())))))
        return 0
    if args.count < 1:
        parser.error("--count must be at least 1")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    _report(run(args), TARGETS, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
