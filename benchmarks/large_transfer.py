"""A 1 GiB document between real node processes: deposited, accepted, fetched, interrupted at half, resumed.

    python benchmarks/large_transfer.py [--json PATH] [--size BYTES] [--interrupt kill|cut]

Processes on loopback: the patient's node is ``python -m fedrecord serve``; the
lab and the GP are each a process of this script (``--act deposit``, ``--act
fetch``) that opens its node home and does what ``fedrecord deposit FILE`` and
``fedrecord get --out FILE`` do (``ClinicNode.deposit`` from a file, the
outbox's streamed upload; ``ClinicNode.fetch_into`` a file).  Every request to
the patient's node goes through a TCP proxy run by this script (the fault
proxy of the tests, ``tests/fault_proxy.py``), which counts the bytes the
patient's node sends; the patient's public endpoint names the proxy.

The lab deposits ``--size`` random bytes (1 GiB by default) streamed from a
file; the patient accepts the document and grants the GP lab results; the GP
fetches it and is interrupted once half the stream is through -- its process
is killed (``--interrupt kill``, the default) or the proxy cuts the
connection (``cut``) -- and then fetches it again, which resumes.

* ``transfer_overhead_ratio``: bytes the patient's node sent to the GP for the
  document over both attempts (the answers' header fields included), divided
  by the length of the document's stream.  Target < 1.10.
* ``peak_extra_rss_mib``: for each process, its peak resident memory during
  the transfer minus its resident memory just before it (``VmHWM`` after
  resetting it through ``/proc/PID/clear_refs``, against ``VmRSS`` at that
  moment): the patient's node from before the deposit to the end of the
  second fetch, the lab over its deposit, the GP over each attempt (the
  killed one sampled every 20 ms).  Target < 100 MiB each.

The GP's output file is checked against the source's SHA-256, and the
patient's audit log must hold one receipt per attempt.
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
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
ROOT = HERE.parent.parent
sys.path[:0] = [str(HERE.parent), str(ROOT / "src"), str(ROOT)]

from tests.fault_proxy import FaultProxy  # noqa: E402

from fedrecord.loopback import free_port  # noqa: E402
from node import PASSPHRASE, _env, _stop, _wait_for, bench_home  # noqa: E402

TARGETS = {"transfer_overhead_ratio": 1.10, "peak_extra_rss_mib": 100}
_PIECE = 1 << 20


# --- memory figures from /proc -------------------------------------------------------------------------


def _status_kib(pid: int | str, field: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _reset_peak(pid: int | str = "self") -> tuple[int, bool]:
    """Reset a process's VmHWM to its VmRSS where the kernel lets us; (VmRSS in KiB, whether it was reset)."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as clear:
            clear.write("5")
        reset = True
    except OSError:
        reset = False  # then the peak may include what happened before, which only overstates it
    return _status_kib(pid, "VmRSS"), reset


# --- the lab and the GP (``--act``), each in a process of its own ----------------------------------------


async def _act(args: argparse.Namespace) -> None:
    """Deposit a file or fetch a document as the CLI would; print the baseline, then the outcome and peak."""
    from fedrecord.node.client import PeerUnreachable
    from fedrecord.node.clinic import ClinicNode
    from fedrecord.node.home import NodeHome

    home = await NodeHome.open(Path(args.home), PASSPHRASE.encode())
    clinic = ClinicNode(home)
    try:
        if args.act == "fetch":
            await clinic.poll(args.patient, now=int(time.time()))  # the head a read needs, before measuring
        baseline, reset = _reset_peak()
        print(json.dumps({"baseline_kib": baseline, "reset": reset}), flush=True)
        started = time.perf_counter()
        outcome: dict[str, Any]
        try:
            if args.act == "deposit":
                doc = await clinic.deposit(
                    args.patient,
                    Path(args.file),
                    title="Whole-genome sequence",
                    category="lab",
                    doc_type="genome",
                    media_type="application/octet-stream",
                    now=int(time.time()),
                )
                sent, _pending = await clinic.flush_outbox(now=int(time.time()))
                outcome = {"doc": doc.hex(), "delivered": sent == 1}
            else:
                with open(args.out, "wb") as out:
                    size = await clinic.fetch_into(
                        args.patient, bytes.fromhex(args.doc), out, now=int(time.time())
                    )
                outcome = {"size": size}
        except PeerUnreachable as exc:
            outcome = {"interrupted": str(exc)}
        outcome.update(peak_kib=_status_kib("self", "VmHWM"), seconds=time.perf_counter() - started)
        print(json.dumps(outcome), flush=True)
    finally:
        await clinic.client.close()
        await home.close()


class Actor:
    """A ``--act`` process: started, its baseline read, its peak sampled, its outcome read."""

    def __init__(self, act: str, home: Path, **options: str) -> None:
        self.command = [sys.executable, str(HERE), "--act", act, "--home", str(home)]
        for name, value in options.items():
            self.command += [f"--{name}", value]
        self.sampled_kib = 0

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            *self.command, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        assert self.process.stdout is not None
        line = await self.process.stdout.readline()
        if not line:
            raise SystemExit(f"{self.command[3]} failed: {(await self.process.communicate())[1].decode()}")
        self.baseline_kib = int(json.loads(line)["baseline_kib"])

    def sample(self) -> None:
        """Keep the peak so far (VmHWM only grows), for a process that will not live to report it."""
        with contextlib.suppress(OSError, KeyError):  # the process may have ended meanwhile
            self.sampled_kib = max(self.sampled_kib, _status_kib(self.process.pid, "VmHWM"))

    async def finish(self) -> dict[str, Any]:
        stdout, stderr = await self.process.communicate()
        if self.process.returncode != 0:
            raise SystemExit(f"{self.command[3]} failed:\n{stderr.decode()}")
        outcome: dict[str, Any] = json.loads(stdout.splitlines()[-1])
        outcome["extra_mib"] = (outcome["peak_kib"] - self.baseline_kib) / 1024
        return outcome

    async def kill(self) -> dict[str, Any]:
        self.sample()
        self.process.send_signal(signal.SIGKILL)
        await self.process.communicate()
        return {"killed": True, "extra_mib": (self.sampled_kib - self.baseline_kib) / 1024}


# --- the run ------------------------------------------------------------------------------------------------


def _write_source(path: Path, size: int) -> str:
    """``size`` random bytes in ``path``; their SHA-256."""
    digest = hashlib.sha256()
    with path.open("wb") as file:
        for offset in range(0, size, _PIECE):
            piece = os.urandom(min(_PIECE, size - offset))
            digest.update(piece)
            file.write(piece)
    return digest.hexdigest()


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while piece := file.read(_PIECE):
            digest.update(piece)
    return digest.hexdigest()


async def _connect(root: Path, proxy_url: str) -> str:
    """Invitations for the lab and the GP, connected through the proxy; the patient's did."""
    from fedrecord.node.clinic import ClinicNode
    from fedrecord.node.home import NodeHome
    from fedrecord.node.patient import PatientNode

    patient_home = await NodeHome.open(root / "patient", PASSPHRASE.encode())
    try:
        for name in ("lab", "gp"):
            invitation = await PatientNode(patient_home).create_invitation(label=name, now=int(time.time()))
            clinic = ClinicNode(await NodeHome.open(root / name, PASSPHRASE.encode()))
            try:
                await clinic.connect(invitation.code(), now=int(time.time()))
            finally:
                await clinic.client.close()
                await clinic.home.close()
        return patient_home.did
    finally:
        await patient_home.close()


async def _accept_and_grant(root: Path, doc: bytes) -> int:
    """The patient accepts the lab's document and grants the GP lab results; the stream's length."""
    from fedrecord.core import Scope
    from fedrecord.node.home import NodeHome
    from fedrecord.node.patient import PatientNode

    home = await NodeHome.open(root / "patient", PASSPHRASE.encode())
    try:
        patient = PatientNode(home)
        await patient.accept(doc, now=int(time.time()))
        gp = await NodeHome.open(root / "gp", PASSPHRASE.encode())
        gp_did = gp.did
        await gp.close()
        await patient.grant(
            audience=gp_did,
            scope=Scope(categories=("lab",), past=True, future=True),
            actions=("read",),
            purpose="treatment",
            days=90,
            now=int(time.time()),
        )
        size = await home.files.size(doc)
        assert size is not None
        return size
    finally:
        await home.close()


def _audit_entries(root: Path) -> int:
    import sqlite3

    db = sqlite3.connect(root / "patient" / "node.db", timeout=30)
    try:
        return int(db.execute("SELECT count(*) FROM audit").fetchone()[0])
    finally:
        db.close()


async def _interrupted_fetch(
    gp: Actor, proxy: FaultProxy, partial: Path, stream_size: int, interrupt: str
) -> dict[str, Any]:
    """The GP's first attempt, interrupted once half the stream is through."""
    if interrupt == "cut":
        proxy.cut_after(stream_size // 2)
    await gp.start()
    if interrupt == "cut":
        outcome = await gp.finish()
        if "interrupted" not in outcome:
            raise SystemExit("the first fetch was not interrupted")
        return outcome
    while not (partial.exists() and partial.stat().st_size >= stream_size // 2):
        if gp.process.returncode is not None:
            raise SystemExit("the GP finished before it could be interrupted")
        gp.sample()
        await asyncio.sleep(0.02)
    return await gp.kill()


async def _measure(size: int, interrupt: str) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="fedrecord-large-"))
    port = free_port()
    proxy = await FaultProxy(port).start()
    node: subprocess.Popen[bytes] | None = None
    try:
        for name, role in (("patient", "patient"), ("lab", "clinic"), ("gp", "clinic")):
            # The patient's public endpoint is the proxy; it listens on its own port, also one of its authorities.
            if role == "patient":
                bench_home(root / name, role, port=port, endpoint=proxy.url)
            else:
                bench_home(root / name, role)
        log = root / "patient-node.log"
        with log.open("ab") as output:
            command = [sys.executable, "-m", "fedrecord", "serve"]
            node = subprocess.Popen(command, env=_env(root / "patient"), stdout=output, stderr=output)
        await asyncio.to_thread(_wait_for, f"http://127.0.0.1:{port}/v0/health", node, log)
        patient_did = await _connect(root, proxy.url)
        source = root / "source.bin"
        source_sha256 = await asyncio.to_thread(_write_source, source, size)

        patient_baseline, reset = _reset_peak(node.pid)
        lab = Actor("deposit", root / "lab", patient=patient_did, file=str(source))
        await lab.start()
        deposited = await lab.finish()
        if not deposited.get("delivered"):
            raise SystemExit(f"the deposit was not delivered: {deposited}")
        doc = bytes.fromhex(deposited["doc"])
        stream_size = await _accept_and_grant(root, doc)

        receipts = _audit_entries(root)
        out = root / "fetched.bin"
        fetch = {"patient": patient_did, "doc": doc.hex(), "out": str(out)}
        partial = root / "gp" / "documents" / "partial" / f"{doc.hex()}.part"
        before = proxy.downstream
        started = time.perf_counter()
        first = await _interrupted_fetch(
            Actor("fetch", root / "gp", **fetch), proxy, partial, stream_size, interrupt
        )
        first_bytes = proxy.downstream - before
        resumed_from = partial.stat().st_size if partial.exists() else 0
        gp = Actor("fetch", root / "gp", **fetch)
        await gp.start()
        second = await gp.finish()
        fetch_seconds = time.perf_counter() - started
        second_bytes = proxy.downstream - before - first_bytes
        patient_peak = _status_kib(node.pid, "VmHWM")

        if second.get("size") != size or await asyncio.to_thread(_sha256_of, out) != source_sha256:
            raise SystemExit(f"the GP did not read back the document: {second}")
        return {
            "size": size,
            "stream_bytes": stream_size,
            "interrupt": interrupt,
            "first_attempt_bytes": first_bytes,
            "interrupted_at": round(first_bytes / stream_size, 4),
            "resumed_from_bytes": resumed_from,
            "second_attempt_bytes": second_bytes,
            "transfer_overhead_ratio": round((first_bytes + second_bytes) / stream_size, 4),
            "receipts_logged": _audit_entries(root) - receipts,
            "peak_extra_rss_mib": {
                "patient_node": round((patient_peak - patient_baseline) / 1024, 1),
                "lab": round(deposited["extra_mib"], 1),
                "gp": round(max(first["extra_mib"], second["extra_mib"]), 1),
            },
            "peak_reset_by_clear_refs": reset,
            "deposit_seconds": round(deposited["seconds"], 2),
            "fetch_seconds": round(fetch_seconds, 2),
            "resumed_fetch_seconds": round(second["seconds"], 2),
        }
    finally:
        _stop(node)
        await proxy.close()
        shutil.rmtree(root, ignore_errors=True)


def measure(size: int = 1 << 30, interrupt: str = "kill") -> dict[str, Any]:
    """Run the whole transfer once; the figures of the module docstring.

    Raises:
        SystemExit: a process failed, the document did not come back whole, or
            the first fetch could not be interrupted.
    """
    return asyncio.run(_measure(size, interrupt))


def _report(results: dict[str, Any]) -> None:
    for name, value in results.items():
        line = f"{name:28} {value}"
        if name in TARGETS:
            bound = TARGETS[name]
            values = value.values() if isinstance(value, dict) else [value]
            met = all(v < bound for v in values)
            line += f"   (target < {bound}: {'met' if met else 'NOT MET'})"
        print(line)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    parser.add_argument("--size", type=int, default=1 << 30, help="document size in bytes (default 1 GiB)")
    parser.add_argument(
        "--interrupt", choices=("kill", "cut"), default="kill", help="how the first fetch ends"
    )
    parser.add_argument("--act", choices=("deposit", "fetch"), help=argparse.SUPPRESS)
    for option in ("home", "patient", "file", "doc", "out"):
        parser.add_argument(f"--{option}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.act is not None:
        asyncio.run(_act(args))
        return 0
    results = measure(args.size, args.interrupt)
    _report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
