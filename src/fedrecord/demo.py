"""``make demo`` / ``fedrecord demo``: four real nodes on loopback, and the main story narrated.

A patient's home node, a GP practice, a lab and a specialist run as separate processes,
each with its own database in a temporary folder; every step is a real
``fedrecord`` command, so the transcript is also a guide to the CLI.  The
demo exits non-zero as soon as a step does not behave as the protocol says.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedrecord.loopback import free_port

PASSPHRASE = "demo passphrase, not a secret"
RESULTS = {
    "cbc.txt": ("Complete blood count", "lab", [], "Hemoglobin 14.1 g/dL\nLeukocytes 6.2 G/L\n"),
    "lithium.txt": ("Lithium level", "lab", ["PSY"], "Lithium 0.7 mmol/L (therapeutic range)\n"),
}


class DemoFailed(Exception):
    """A step did not behave as expected."""


def serve_until_healthy(
    env: dict[str, str], url: str, log: Path, *, name: str, poll: float = 0.1
) -> subprocess.Popen[bytes]:
    """Start `fedrecord serve` for the node in ``env`` and wait until ``url`` answers its health check.

    Raises:
        DemoFailed: the process stopped, or did not answer within 30 s (its output is in ``log``).
    """
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "fedrecord", "serve"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/v0/health", timeout=1):
                return process
        except OSError:
            if process.poll() is not None:
                raise DemoFailed(f"{name} stopped; see {log}") from None
            time.sleep(poll)
    process.kill()
    raise DemoFailed(f"{name} did not start; see {log}")


class Node:
    def __init__(self, root: Path, name: str, role: str, display: str) -> None:
        self.home = root / name
        self.name = name
        self.role = role
        self.display = display
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.did = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "FEDRECORD_PASSPHRASE": PASSPHRASE,
            "FEDRECORD_KDF": "interactive",
            "FEDRECORD_HOME": str(self.home),
        }

    def run(self, *args: str, expect_error: str | None = None) -> Any:
        command = [sys.executable, "-m", "fedrecord", "--json", *args]
        done = subprocess.run(
            command, env=self.env(), capture_output=True, text=True, timeout=120, check=False
        )
        if expect_error is not None:
            if done.returncode == 0 or expect_error not in done.stderr:
                raise DemoFailed(
                    f"{self.name} {' '.join(args)}: expected {expect_error!r}, got "
                    f"{done.returncode} {done.stderr.strip()!r}"
                )
            return done.stderr.strip()
        if done.returncode != 0:
            raise DemoFailed(f"{self.name} {' '.join(args)}: {done.stderr.strip() or done.stdout.strip()}")
        return json.loads(done.stdout) if done.stdout.strip() else None

    def start(self, log: Path) -> None:
        """Create the node the first time, then run `fedrecord serve` until :meth:`stop`."""
        if not self.did:
            created = self.run("init", "--role", self.role, "--name", self.display, "--port", str(self.port))
            self.did = created["did"]
        self.process = serve_until_healthy(self.env(), self.url, log, name=self.name)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()


def run_demo(*, keep: bool = False, say: Callable[[str], None] = print) -> None:
    """Play the story; raise DemoFailed at the first step that goes wrong."""
    root = Path(tempfile.mkdtemp(prefix="fedrecord-demo-"))
    patient = Node(root, "patient", "patient", "Camille (patient)")
    gp = Node(root, "gp", "clinic", "Cabinet du Dr Martin")
    lab = Node(root, "lab", "clinic", "Laboratoire Pasteur")
    specialist = Node(root, "specialist", "clinic", "Dr Durand, hématologue")
    nodes = (patient, gp, lab, specialist)
    started = time.monotonic()
    try:
        say(f"Four nodes, each a separate process with its own database under {root}:")
        for node in nodes:
            node.start(root / f"{node.name}.log")
            say(f"  {node.display:24} {node.role:8} {node.url}  {node.did[:40]}...")
        _story(patient, gp, lab, specialist, root, say)
        say(f"Every step behaved as the protocol requires ({time.monotonic() - started:.1f} s).")
        if keep:
            say(
                f"The nodes keep running; stop them with: kill {' '.join(str(n.process.pid) for n in nodes if n.process)}"
            )
            say(
                f"Use them with e.g.: FEDRECORD_HOME={patient.home} FEDRECORD_PASSPHRASE='{PASSPHRASE}' "
                "fedrecord inbox"
            )
    finally:
        if not keep:
            for node in nodes:
                node.stop()
            shutil.rmtree(root, ignore_errors=True)


def _story(
    patient: Node, gp: Node, lab: Node, specialist: Node, root: Path, say: Callable[[str], None]
) -> None:
    def step(text: str) -> None:
        say("")
        say(text)

    def expect(condition: bool, what: str) -> None:
        if not condition:
            raise DemoFailed(what)

    step("1. The patient invites the lab and the GP; each connects with its code (US-2).")
    for clinic in (lab, gp):
        invitation = patient.run("invite", "--label", clinic.display)
        connection = clinic.run("connect", invitation["url"])
        expect(connection["patient"] == patient.did, "the clinic connected to the patient")
        say(f"   {clinic.display} connected: it may deposit, not read")
    reused = gp.run("connect", invitation["code"], expect_error="replay")
    say(f"   the same code used twice is refused: {reused}")

    step("2. The lab deposits two results, encrypted for the patient (US-3).")
    docs = {}
    for filename, (title, category, labels, content) in RESULTS.items():
        path = root / filename
        path.write_text(content)
        args = [
            "deposit",
            str(path),
            "--patient",
            patient.did,
            "--title",
            title,
            "--category",
            category,
            "--type",
            "lab-result",
        ]
        for extra in labels:
            args += ["--label", extra]
        result = lab.run(*args)
        expect(result["delivered"], "the deposit reached the patient's inbox")
        docs[title] = result["doc"]
        say(f"   {title!r} -> inbox ({result['doc'][:16]}...)")

    step("3. The patient sees the inbox and accepts both results.")
    inbox = patient.run("inbox")
    expect({item["title"] for item in inbox} == set(docs), "both deposits wait in the inbox")
    for item in inbox:
        say(f"   {item['title']!r} from {item['from']}, labels {item['labels']}")
        patient.run("accept", item["doc"])
    say("   both accepted into the record")

    step("4. The patient grants the GP lab results of the last 12 months and future ones, for 90 days,")
    say("   and privately keeps mental health (PSY) and sexual health (SEX) from this grant (US-4, US-6).")
    grant = patient.run(
        "grant",
        "--delegate",
        "--to",
        gp.did,
        "--category",
        "lab",
        "--since-days",
        "365",
        "--days",
        "90",
        "--purpose",
        "treatment",
        "--hide",
        "PSY",
        "--hide",
        "SEX",
    )
    listed = patient.run("grants")
    expect(
        any(
            g["grant"] == grant["grant"] and g["state"] == "active" and g["hidden"] == ["PSY", "SEX"]
            for g in listed
        ),
        "the grant is listed as active with its private restriction",
    )
    say(
        f"   grant {grant['grant'][:16]}...: lab results until {time.strftime('%Y-%m-%d', time.gmtime(grant['expires']))},"
        " except PSY and SEX (the GP is never told what is hidden)"
    )

    step("5. The GP lists what it may read, and reads it.")
    listing = gp.run("ls", "--patient", patient.did)
    visible = {item["doc"] for item in listing}
    expect(visible == {docs["Complete blood count"]}, f"the GP sees only the blood count, saw {len(visible)}")
    say(f"   the GP sees {len(listing)} document; the lithium level (PSY) does not appear at all")
    content = gp.run(
        "get", docs["Complete blood count"], "--patient", patient.did, "--out", str(root / "gp-copy.txt")
    )
    expect((root / "gp-copy.txt").read_text() == RESULTS["cbc.txt"][3], "the GP decrypted the result")
    say(f"   the GP decrypted {content['size']} bytes: {RESULTS['cbc.txt'][3].splitlines()[0]}")
    hidden = gp.run("get", docs["Lithium level"], "--patient", patient.did, expect_error="not-found")
    say(f"   asking for the lithium level by its id: {hidden}")

    step("6. The patient looks at who read what (US-8).")
    audit = patient.run("audit", "--verify")
    expect(len(audit["entries"]) == 1 and audit["verified"]["ok"], "one verified read in the audit log")
    entry = audit["entries"][0]
    say(
        f"   #{entry['seq']} {entry['name']} read {entry['doc'][:16]}... for {entry['purpose']}; "
        f"{audit['verified']['message']}"
    )

    step("7. The GP passes a narrower, shorter grant to a specialist; the chain is checked (US-9).")
    gp.run(
        "delegate",
        "--patient",
        patient.did,
        "--to",
        specialist.did,
        "--to-endpoint",
        specialist.url,
        "--category",
        "lab",
        "--days",
        "7",
    )
    seen = specialist.run(
        "get",
        docs["Complete blood count"],
        "--patient",
        patient.did,
        "--out",
        str(root / "specialist-copy.txt"),
    )
    expect(
        seen["size"] == len(RESULTS["cbc.txt"][3]), "the specialist read the result through the GP's grant"
    )
    say(f"   the specialist read {seen['size']} bytes under the delegated grant")

    step("8. The patient revokes the GP's grant: the GP and the specialist are refused (US-5, US-9).")
    patient.run("revoke", grant["grant"])
    refused = gp.run("get", docs["Complete blood count"], "--patient", patient.did, expect_error="revoked")
    specialist.run("poll")
    also = specialist.run(
        "get", docs["Complete blood count"], "--patient", patient.did, expect_error="revoked"
    )
    gp.run("poll")
    for clinic in (gp, specialist):
        held = clinic.run("ls")
        expect(not any(item["state"] == "shared" for item in held), f"{clinic.display} destroyed its copy")
    say(f"   GP: {refused}")
    say(f"   specialist: {also}")
    say("   both nodes destroyed the copies and keys they held")

    step("9. The patient deletes the blood count; each node attests (US-7).")
    patient.run("delete", docs["Complete blood count"], "--yes")
    for clinic in (gp, lab):
        clinic.run("poll")
    attestations = patient.run("attestations", docs["Complete blood count"])
    outcomes = {item["name"]: item["outcome"] for item in attestations}
    expect(
        outcomes.get(gp.display) == "destroyed" and outcomes.get(lab.display) == "retained",
        f"the GP destroyed it and the lab kept its own legal record, got {outcomes}",
    )
    for name, outcome in outcomes.items():
        say(f"   {name}: {outcome}")

    step("10. The audit log, verified once more.")
    final = patient.run("audit", "--verify")
    expect(
        final["verified"]["ok"] and final["verified"]["entries"] == 2, "two reads, the audit chain verifies"
    )
    say(f"   {final['verified']['message']} ({final['verified']['entries']} entries)")
