"""The command line's refusals and failures: one ``error: ...`` line, a non-zero status, nothing stored.

Commands that reach no other node run in this process (click's CliRunner) on the homes of the
demo's story, built between served nodes and then stopped.  Commands that talk to a running node
run as processes of their own while the nodes are served by this test's event loop; a terminal
is a real pseudo-terminal (``pty``), a pipe a real pipe.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import pty
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from click.testing import CliRunner, Result

from fedrecord.cli import TERMINAL_MAX, _date, main
from fedrecord.core import Scope, SigningIdentity
from fedrecord.node.home import NodeHome
from fedrecord.node.patient import PatientNode

from .node_helpers import PASSPHRASE, Story, build_story, now

ENVIRONMENT = {"FEDRECORD_PASSPHRASE": PASSPHRASE.decode(), "FEDRECORD_KDF": "interactive"}


# --- homes and runs ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Homes:
    """The story's homes once its nodes are stopped: what each command finds on disk."""

    patient: Path
    gp: Path
    lab: Path
    patient_did: str
    patient_port: int
    docs: dict[str, bytes]
    gp_grant: bytes


def stopped_story(root: Path) -> Homes:
    async def build() -> Homes:
        story = await build_story(root)
        homes = Homes(
            story.patient.path,
            story.gp.path,
            story.lab.path,
            story.patient.did,
            story.patient.port,
            story.docs,
            story.gp_grant.id,
        )
        await story.close()
        return homes

    return asyncio.run(build())


@pytest.fixture(scope="module")
def homes(tmp_path_factory: pytest.TempPathFactory) -> Homes:
    """Shared by the tests that change nothing in them (or only what no other test looks at)."""
    return stopped_story(tmp_path_factory.mktemp("story"))


@pytest_asyncio.fixture
async def story(tmp_path: Path) -> AsyncIterator[Story]:
    built = await build_story(tmp_path / "story")
    try:
        yield built
    finally:
        await built.close()


def cli(home: Path, *args: str, **environment: str) -> Result:
    return CliRunner().invoke(main, ["--home", str(home), *args], env={**ENVIRONMENT, **environment})


def error_line(result: Result, status: int = 1) -> str:
    """The one line of a refusal: ``error: ...`` on stderr, nothing on stdout, no traceback."""
    assert result.exit_code == status, result.output
    assert result.stdout == "", result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def tables(home: Path, *queries: str) -> list[int]:
    with sqlite3.connect(home / "node.db") as db:
        return [db.execute(query).fetchone()[0] for query in queries]


def shortest_unique_prefix(target: bytes, others: list[bytes]) -> str:
    text = target.hex()
    return next(text[:n] for n in range(1, 65) if not any(o.hex().startswith(text[:n]) for o in others))


@dataclasses.dataclass(frozen=True)
class Run:
    status: int
    out: bytes
    err: str


def command(home: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "fedrecord", "--home", str(home), *args]


async def run(home: Path, *args: str, terminal: bool = False) -> Run:
    """``fedrecord --home HOME ARGS`` as a process, its stdout a pipe or (``terminal``) a pseudo-terminal."""
    environment = {**os.environ, **ENVIRONMENT}
    if not terminal:
        process = await asyncio.create_subprocess_exec(
            *command(home, *args), env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        out, err = await process.communicate()
        assert process.returncode is not None
        return Run(process.returncode, out, err.decode())
    leader, follower = pty.openpty()
    process = await asyncio.create_subprocess_exec(
        *command(home, *args), env=environment, stdout=follower, stderr=subprocess.PIPE
    )
    os.close(follower)

    def drain() -> bytes:
        pieces = []
        while True:
            try:
                piece = os.read(leader, 1 << 16)
            except OSError:  # EIO: the command ended and closed the terminal
                break
            if not piece:
                break
            pieces.append(piece)
        return b"".join(pieces)

    try:
        shown, (_, err) = await asyncio.gather(asyncio.to_thread(drain), process.communicate())
    finally:
        os.close(leader)
    assert process.returncode is not None
    return Run(process.returncode, shown.replace(b"\r\n", b"\n"), err.decode())


def one_line(done: Run, status: int = 1) -> str:
    assert done.status == status, (done.status, done.err)
    lines = done.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.err
    return lines[0]


async def audit_size(story: Story) -> int:
    return len(await story.patient.patient.audit_log())


async def deposited(story: Story, content: bytes, *, title: str, accept: bool = True) -> bytes:
    """A lab result deposited by the lab (and accepted by the patient): reached by the GP's grant."""
    doc = await story.lab.clinic.deposit(
        story.patient.did,
        content,
        title=title,
        category="lab",
        doc_type="lab-result",
        labels=(),
        media_type="application/octet-stream",
        now=now(),
    )
    await story.lab.clinic.flush_outbox()
    if accept:
        await story.patient.patient.accept(doc, now=now())
    return doc


# --- 1. get without --out: bytes to a pipe, text only to a terminal, nothing for --json -------------

BINARY = bytes(range(256)) * 1200 + b"\xff\xfe\x00"  # 300 KiB, not UTF-8
LARGE_TEXT = b"Leukocytes 6.2 G/L\n" * ((TERMINAL_MAX // 19) + 4096)  # over 1 MiB, and text


async def test_get_writes_the_bytes_to_a_pipe_and_only_text_to_a_terminal(story: Story) -> None:
    binary = await deposited(story, BINARY, title="Scan")
    large = await deposited(story, LARGE_TEXT, title="Long report")
    home = story.patient.path

    piped = await run(home, "get", binary.hex()[:12])
    assert (piped.status, piped.err) == (0, "")
    assert piped.out == BINARY, "every byte as deposited, none replaced"

    shown = await run(home, "get", story.docs["cbc"].hex()[:12], terminal=True)
    assert (shown.status, shown.out) == (0, b"Hemoglobin 14.1 g/dL\nLeukocytes 6.2 G/L\n")
    refused = await run(home, "get", binary.hex()[:12], terminal=True)
    assert "not text" in one_line(refused) and "--out FILE" in refused.err
    assert refused.out == b""
    too_large = await run(home, "get", large.hex()[:12], terminal=True)
    assert "too large for the terminal" in one_line(too_large) and too_large.out == b""


async def test_a_clinic_is_refused_before_a_fetch_it_could_not_show(story: Story) -> None:
    """Every fetch is in the patient's audit log: one refused anyway is refused before it is made."""
    large = await deposited(story, LARGE_TEXT, title="Long report")
    gp, patient = story.gp.path, story.patient.did
    before = await audit_size(story)

    too_large = await run(gp, "get", large.hex()[:12], "--patient", patient, terminal=True)
    assert "too large for the terminal" in one_line(too_large)
    as_json = await run(gp, "--json", "get", story.docs["cbc"].hex(), "--patient", patient)
    assert one_line(as_json, 2) == "error: --json get needs --out FILE (JSON output cannot carry the document)"
    assert as_json.out == b""
    assert await audit_size(story) == before, "no read logged for a refused command"

    # Refusals the read would meet still come first: the hidden PSY result is not-found for the GP.
    hidden = await run(gp, "--json", "get", story.docs["lithium"].hex(), "--patient", patient)
    assert one_line(hidden).startswith("error: not-found: ")

    piped = await run(gp, "get", story.docs["cbc"].hex()[:12], "--patient", patient)
    assert (piped.status, piped.out) == (0, b"Hemoglobin 14.1 g/dL\nLeukocytes 6.2 G/L\n")
    assert await audit_size(story) == before + 1


# --- 2. id prefixes: never empty, never shorter than 4 hex digits ------------------------------------


@pytest.mark.parametrize("verb", [("accept",), ("hide",), ("delete", "--yes"), ("label", "--remove"), ("revoke",)])
def test_an_empty_short_or_non_hex_id_is_refused(homes: Homes, verb: tuple[str, ...]) -> None:
    docs = list(homes.docs.values())
    if verb[0] == "revoke":
        grants = json.loads(cli(homes.patient, "--json", "grants").stdout)
        target, others = homes.gp_grant, [bytes.fromhex(g["grant"]) for g in grants]
    else:
        target, others = homes.docs["cbc"], docs
    short = shortest_unique_prefix(target, [o for o in others if o != target])[:3]
    before = cli(homes.patient, "--json", "ls").stdout, cli(homes.patient, "--json", "grants").stdout
    extra = ("PSY",) if verb[0] == "label" else ()
    for text in ("", short, "zzzz", " "):
        line = error_line(cli(homes.patient, *verb, text, *extra), status=2)
        assert "4 to 64 hexadecimal digits" in line, line
    after = cli(homes.patient, "--json", "ls").stdout, cli(homes.patient, "--json", "grants").stdout
    assert after == before, "nothing accepted, hidden, deleted, relabelled or revoked"


# --- 3. bounded numbers and texts; dates no calendar shows -------------------------------------------


@pytest.mark.parametrize(
    "arguments",
    [
        ("invite", "--days", "0"),
        ("invite", "--days", "-1"),
        ("invite", "--days", "31"),
        ("invite", "--days", "999999999999999999999"),
        ("invite", "--label", ""),
        ("invite", "--label", "L" * 129),
        ("grant", "--to", "{gp}", "--days", "99999999999999"),
        ("grant", "--to", "{gp}", "--days", "0"),
        ("grant", "--to", "{gp}", "--since-days", "-3"),
        ("grant", "--to", "{gp}", "--since-days", "0"),
    ],
)
def test_out_of_range_options_are_refused_and_nothing_is_stored(homes: Homes, arguments: tuple[str, ...]) -> None:
    gp = SigningIdentity.from_seed(bytes(32)).did
    counts = ("SELECT count(*) FROM records", "SELECT count(*) FROM invitations")
    before = tables(homes.patient, *counts)
    result = cli(homes.patient, *(a.format(gp=gp) for a in arguments))
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert "Invalid value for '--" in result.stderr
    assert tables(homes.patient, *counts) == before


def test_delegate_days_are_bounded(homes: Homes) -> None:
    result = cli(homes.gp, "delegate", "--patient", homes.patient_did, "--to", "x", "--to-endpoint", "y", "--days", "0")
    assert result.exit_code == 2 and "Invalid value for '--days'" in result.stderr


def test_a_grant_stored_with_a_huge_expiry_is_listed(homes: Homes) -> None:
    """Stored before the bounds: `fedrecord grants` shows it, with "?" for a date no calendar has."""

    async def issue() -> None:
        home = await NodeHome.open(homes.patient, PASSPHRASE)
        try:
            await PatientNode(home).grant(
                audience=SigningIdentity.from_seed(os.urandom(32)).did,
                scope=Scope(categories=("imaging",), past=True, future=True),
                actions=("read",),
                purpose="treatment",
                days=99_999_999_999_999,
                now=now(),
            )
        finally:
            await home.close()

    asyncio.run(issue())
    result = cli(homes.patient, "grants")
    assert result.exit_code == 0, result.output
    assert "imaging until ? for treatment" in result.stdout
    assert _date(10**20) == "?" and _date(None) == "-" and _date(86_400) == "1970-01-02"


# --- 4. everyday failures: one line, never a traceback -----------------------------------------------


def test_a_home_that_is_a_file_or_damaged_is_one_line(homes: Homes, tmp_path: Path) -> None:
    a_file = tmp_path / "notes.txt"
    a_file.write_text("not a node")
    assert "is not a directory" in error_line(cli(a_file, "status"))
    assert "is not a directory" in error_line(cli(a_file, "init", "--role", "patient", "--name", "X"))

    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "node.json").write_text("{bad")
    assert "node.json is damaged" in error_line(cli(damaged, "status"))
    (damaged / "node.json").write_text('{"role": "patient"}')
    assert "node.json is damaged" in error_line(cli(damaged, "status"))
    (damaged / "node.json").write_text((homes.patient / "node.json").read_text())
    (damaged / "node.key").write_bytes((homes.patient / "node.key").read_bytes())
    (damaged / "node.key").chmod(0o600)
    (damaged / "node.db").write_bytes(b"this is not an SQLite database" * 100)
    assert "the node's database cannot be used" in error_line(cli(damaged, "ls"))


def test_a_password_file_that_is_not_text_is_one_line(homes: Homes, tmp_path: Path) -> None:
    password = tmp_path / "password"
    password.write_bytes(b"\xff\xfe bad password")
    line = error_line(cli(homes.patient, "web-password", "--password-file", str(password)))
    assert line == f"error: {password} is not UTF-8 text"


def test_serve_on_a_port_in_use_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        home = tmp_path / "clinic"
        made = cli(home, "init", "--role", "clinic", "--name", "Lab", "--port", str(port))
        assert made.exit_code == 0, made.output
        done = subprocess.run(
            command(home, "serve"),
            env={**os.environ, **ENVIRONMENT},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"error: 127.0.0.1:{port} is already in use (is this node already running?)"
    ]


def test_an_unexpected_error_is_one_line_unless_debugging(
    homes: Homes, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(self: PatientNode) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(PatientNode, "inbox", broken)  # a bug cannot be caused otherwise
    assert error_line(cli(homes.patient, "inbox")) == (
        "error: unexpected RuntimeError: a bug (run with FEDRECORD_DEBUG=1 for details)"
    )
    debugging = cli(homes.patient, "inbox", FEDRECORD_DEBUG="1")
    assert isinstance(debugging.exception, RuntimeError), "the traceback is there to see"


def test_ctrl_c_after_a_deposit_is_committed_says_it_is_queued(tmp_path: Path) -> None:
    """The patient's node takes the connection and never answers: Ctrl-C while the lab is sending."""
    homes = stopped_story(tmp_path / "story")
    report = tmp_path / "result.txt"
    report.write_text("Ferritin 80 ug/L\n")
    outbox = "SELECT count(*) FROM outbox WHERE done = 0"
    with socket.socket() as silent:
        silent.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        silent.bind(("127.0.0.1", homes.patient_port))
        silent.listen()
        depositing = subprocess.Popen(
            command(
                homes.lab, "deposit", str(report), "--patient", homes.patient_did, "--title", "Ferritin",
                "--category", "lab",
            ),
            env={**os.environ, **ENVIRONMENT},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            deadline = time.monotonic() + 30
            while tables(homes.lab, outbox) == [0]:
                assert time.monotonic() < deadline and depositing.poll() is None, "the deposit was not queued"
                time.sleep(0.05)
            silent.settimeout(30)
            sending, _ = silent.accept()  # committed, and now sending: it waits for the silent node's answer
            with sending:
                depositing.send_signal(signal.SIGINT)
                _, err = depositing.communicate(timeout=30)
        finally:
            if depositing.poll() is None:
                depositing.kill()
    assert depositing.returncode == 130 and "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("interrupted: deposit "), err
    assert "is stored and queued" in lines[0]
    assert tables(homes.lab, outbox) == [1], "still queued, for `fedrecord serve` to send"


# --- 5. get --out: never through a link or a device; a private file ----------------------------------


def test_get_out_refuses_what_is_not_a_regular_file(homes: Homes, tmp_path: Path) -> None:
    cbc = homes.docs["cbc"].hex()[:12]
    target = tmp_path / "target.txt"
    target.write_text("old")
    link = tmp_path / "link.txt"
    link.symlink_to(target)
    line = error_line(cli(homes.patient, "get", cbc, "--out", str(link)), status=2)
    assert "is a symbolic link" in line
    assert link.is_symlink() and target.read_text() == "old"
    assert "not a regular file" in error_line(cli(homes.patient, "get", cbc, "--out", os.devnull), status=2)
    assert stat.S_ISCHR(os.lstat(os.devnull).st_mode)
    assert error_line(cli(homes.patient, "get", cbc, "--out", ""), status=2) == "error: --out needs a file name"
    missing = tmp_path / "missing" / "x.txt"
    assert error_line(cli(homes.patient, "get", cbc, "--out", str(missing))) == (
        f"error: cannot write {missing}: there is no directory {missing.parent}"
    )
    assert sorted(tmp_path.iterdir()) == sorted([target, link]), "no partial file left"


def test_get_out_writes_a_file_only_its_owner_reads(homes: Homes, tmp_path: Path) -> None:
    out = tmp_path / "cbc.txt"
    out.write_text("an older copy")
    out.chmod(0o644)
    result = cli(homes.patient, "get", homes.docs["cbc"].hex()[:12], "--out", str(out))
    assert result.exit_code == 0, result.output
    assert out.read_bytes() == b"Hemoglobin 14.1 g/dL\nLeukocytes 6.2 G/L\n"
    assert stat.S_IMODE(out.stat().st_mode) == 0o600


# --- 6. two grants reaching one document -----------------------------------------------------------


async def test_a_document_two_grants_reach_is_listed_once_and_found_by_its_short_id(
    story: Story, tmp_path: Path
) -> None:
    study = await story.patient.patient.grant(
        audience=story.gp.did,
        scope=Scope(past=True, future=True),
        actions=("read",),
        purpose="research",
        days=7,
        now=now(),
    )
    gp, patient, cbc = story.gp.path, story.patient.did, story.docs["cbc"]
    listed = await run(gp, "--json", "ls", "--patient", patient)
    assert listed.status == 0, listed.err
    entries = [e for e in json.loads(listed.out) if e["doc"] == cbc.hex()]
    assert len(entries) == 1
    assert set(entries[0]["grants"]) == {story.gp_grant.id.hex(), study.id.hex()}
    out = tmp_path / "cbc.txt"
    fetched = await run(gp, "get", cbc.hex()[:16], "--patient", patient, "--out", str(out))
    assert fetched.status == 0, fetched.err
    assert out.read_bytes() == b"Hemoglobin 14.1 g/dL\nLeukocytes 6.2 G/L\n"


# --- 7. attestations by the short id delete printed ------------------------------------------------


def test_attestations_take_the_short_id_delete_printed(tmp_path: Path) -> None:
    homes = stopped_story(tmp_path / "story")
    deleted = cli(homes.patient, "delete", "--yes", homes.docs["xray"].hex()[:8])
    assert deleted.exit_code == 0, deleted.output
    short = deleted.stdout.split()[1].rstrip(";")
    assert homes.docs["xray"].hex().startswith(short) and len(short) == 16
    result = cli(homes.patient, "attestations", short)
    assert (result.exit_code, result.stdout) == (0, "no attestation yet\n"), result.output
    unknown = next(p for p in ("0000", "ffff") if not any(d.hex().startswith(p) for d in homes.docs.values()))
    assert "not-found" in error_line(cli(homes.patient, "attestations", unknown))


def test_json_delete_needs_yes(tmp_path: Path) -> None:
    """A script cannot answer "Continue?": --json delete without --yes deletes nothing."""
    homes = stopped_story(tmp_path / "story")
    refused = cli(homes.patient, "--json", "delete", homes.docs["xray"].hex()[:8])
    assert refused.exit_code == 2 and "--yes" in refused.output
    assert homes.docs["xray"].hex()[:8] in cli(homes.patient, "ls").stdout


# --- 8. messages --------------------------------------------------------------------------------------


def test_an_unreachable_patient_node_is_named_with_a_short_reason(homes: Homes) -> None:
    line = error_line(cli(homes.gp, "get", homes.docs["cbc"].hex(), "--patient", homes.patient_did))
    assert line == (
        f"error: the patient's node at http://127.0.0.1:{homes.patient_port} is unreachable (connection refused)"
    )
    polled = cli(homes.gp, "poll")
    assert polled.exit_code == 0, polled.output
    assert f"the patient's node at http://127.0.0.1:{homes.patient_port} is unreachable" in polled.stdout


@pytest.mark.parametrize("verb", ["sync", "poll"])
def test_sync_and_poll_refuse_a_patient_they_are_not_connected_to(homes: Homes, verb: str) -> None:
    typo = SigningIdentity.from_seed(bytes(32)).did
    assert error_line(cli(homes.gp, verb, "--patient", typo)) == "error: not-found: not connected to this patient"


def test_status_counts_what_the_outbox_still_has_to_send(homes: Homes) -> None:
    status = json.loads(cli(homes.lab, "--json", "status").stdout)
    pending, done = tables(
        homes.lab, "SELECT count(*) FROM outbox WHERE done = 0", "SELECT count(*) FROM outbox WHERE done != 0"
    )
    assert (status["outbox"], status["outbox_done"]) == (pending, done)
    assert done >= 3, "the story's three deposits were delivered"


def test_demo_help_counts_its_four_nodes() -> None:
    shown = CliRunner().invoke(main, ["demo", "--help"]).output
    assert "four nodes" in shown and "specialist" in shown and "three" not in shown


@pytest.fixture(autouse=True)
def _no_debugging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A FEDRECORD_DEBUG set in the environment of the test run would show tracebacks."""
    monkeypatch.delenv("FEDRECORD_DEBUG", raising=False)
    yield


async def test_a_deposit_refused_for_good_says_so(story: Story, tmp_path: Path) -> None:
    """A deposit the patient's node refuses for good (its deposit grant revoked) is not "queued": exit 1, why."""
    await story.patient.patient.revoke(story.deposit_grants[story.lab.did], now=now())
    report = tmp_path / "tsh.txt"
    report.write_text("TSH 2.1 mU/L\n")
    refused = await run(
        story.lab.path, "deposit", str(report), "--patient", story.patient.did, "--title", "TSH", "--category", "lab"
    )
    assert refused.status == 1 and "refused by the patient's node: revoked" in refused.err, refused.err


def test_mistakes_a_patient_makes_are_said_plainly(tmp_path: Path) -> None:
    """A grant to one's own node, attestations of a document never deleted, no passphrase and no terminal."""
    homes = stopped_story(tmp_path / "story")
    assert "your own node" in error_line(cli(homes.patient, "grant", "--to", homes.patient_did))
    kept = homes.docs["cbc"].hex()[:8]
    assert "is not deleted" in error_line(cli(homes.patient, "attestations", kept))
    unset = cli(homes.patient, "ls", FEDRECORD_PASSPHRASE="")
    assert "set FEDRECORD_PASSPHRASE" in error_line(unset)


def test_sync_exits_1_when_no_patient_node_answers(tmp_path: Path) -> None:
    """A timer or a script running sync sees that nothing could be synced: exit 1, the reason said.  A poll
    exits 0: an offline patient's node is normal (US-11), and its outbox was flushed."""
    homes = stopped_story(tmp_path / "story")
    for verb, status in (("sync", 1), ("poll", 0)):
        result = cli(homes.gp, verb)
        assert result.exit_code == status, result.output
        assert result.stdout.startswith(homes.patient_did[:32]) and "unreachable" in result.stdout
