"""The ``fedrecord`` command line: create, run and drive patient and clinic nodes.

Commands act on a node's home directory (``--home``, or ``FEDRECORD_HOME``):
they open its database and key file directly, and reach other nodes over
signed HTTP.  Output is readable by default and JSON with ``--json``; an
error is one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import io
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import click
from rich.console import Console

from fedrecord import __version__

T = TypeVar("T")
DAY = 86_400


class Context:
    def __init__(self, home: Path, as_json: bool, passphrase_file: Path | None) -> None:
        self.home = home
        self.as_json = as_json
        self.passphrase_file = passphrase_file

    def passphrase(self) -> bytes:
        from fedrecord.storage.keyfile import passphrase_from_environment

        found = passphrase_from_environment(self.passphrase_file)
        if found is not None:
            return found
        return click.prompt("Passphrase", hide_input=True).encode()

    def emit(self, data: Any, text: str | Callable[[], None]) -> None:
        if self.as_json:
            click.echo(json.dumps(data, indent=2, default=_jsonable))
        elif callable(text):
            text()
        else:
            click.echo(text)


@contextlib.contextmanager
def transfer_bar(ctx: Context, description: str) -> Iterator[Callable[[int, int | None], None] | None]:
    """A rich progress bar on stderr for a document transfer, when a person is watching."""
    if ctx.as_json or not sys.stderr.isatty():
        yield None
        return
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        transient=True,
        console=Console(stderr=True),
    ) as bar:
        task = bar.add_task(description, total=None)

        def advance(done: int, total: int | None) -> None:
            bar.update(task, completed=done, total=total)

        yield advance


@contextlib.contextmanager
def stage_bars(ctx: Context) -> Iterator[Callable[[str, int, int], None] | None]:
    """Rich progress bars on stderr, one per stage of a sync (records, documents), when a person watches."""
    if ctx.as_json or not sys.stderr.isatty():
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        transient=True,
        console=Console(stderr=True),
    ) as bar:
        tasks: dict[str, Any] = {}

        def advance(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done, total=total)

        yield advance


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    raise TypeError(f"cannot show {type(value).__name__}")


def fail_cleanly(function: Callable[..., Coroutine[Any, Any, T]]) -> Callable[..., None]:
    """Run an async command; any error the user can act on becomes one line and exit status 1."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        from fedrecord.core.errors import FedrecordError
        from fedrecord.node.client import PeerUnreachable
        from fedrecord.node.home import HomeError
        from fedrecord.storage.keyfile import KeyFileError
        from fedrecord.storage.sqlite import StorageError

        try:
            asyncio.run(function(*args, **kwargs))
        except FedrecordError as error:
            click.echo(f"error: {error.code.value}: {error.message}", err=True)
            sys.exit(1)
        except (PeerUnreachable, HomeError, KeyFileError, StorageError) as error:
            click.echo(f"error: {error}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            sys.exit(130)

    return wrapper


pass_context = click.make_pass_decorator(Context)


@click.group()
@click.version_option(__version__, prog_name="fedrecord")
@click.option(
    "--home",
    type=click.Path(path_type=Path),
    envvar="FEDRECORD_HOME",
    default=Path("fedrecord-node"),
    show_default=True,
    help="The node's data directory.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option(
    "--passphrase-file",
    type=click.Path(path_type=Path),
    envvar="FEDRECORD_PASSPHRASE_FILE",
    help="Read the key-file passphrase from this file (mode 0600) instead of prompting; "
    "FEDRECORD_PASSPHRASE works too.",
)
@click.pass_context
def main(ctx: click.Context, home: Path, as_json: bool, passphrase_file: Path | None) -> None:
    """fedrecord: patients keep control of their own health records."""
    ctx.obj = Context(home, as_json, passphrase_file)


@contextlib.asynccontextmanager
async def opened(ctx: Context, role: str | None = None) -> AsyncIterator[Any]:
    """The node at ``ctx.home``, unlocked, for the duration of one command."""
    home = await _open(ctx, role)
    try:
        yield home
    finally:
        await home.close()


@contextlib.asynccontextmanager
async def clinic_of(home: Any) -> AsyncIterator[Any]:
    """The clinic side of an opened node, its HTTP client closed at the end of the command."""
    from fedrecord.node.clinic import ClinicNode

    clinic = ClinicNode(home)
    try:
        yield clinic
    finally:
        await clinic.client.close()


async def _open(ctx: Context, role: str | None = None) -> Any:
    from fedrecord.node.home import HomeError, NodeHome

    home = await NodeHome.open(ctx.home, ctx.passphrase())
    if role is not None and home.config.role != role:
        await home.close()
        raise HomeError(f"this command is for a {role} node; {ctx.home} is a {home.config.role} node")
    return home


def _doc_id(text: str) -> bytes:
    try:
        doc = bytes.fromhex(text)
    except ValueError:
        raise click.BadParameter("a document id is hex") from None
    return doc


async def _resolve(home: Any, text: str) -> bytes:
    """A full id from an unambiguous hex prefix of a held document."""
    async with home.db.execute("SELECT id FROM documents") as cursor:
        ids = [row[0] for row in await cursor.fetchall()]
    matches = [doc for doc in ids if doc.hex().startswith(text.lower())]
    if len(matches) == 1:
        return bytes(matches[0])
    if len(text) == 64:
        return _doc_id(text)
    from fedrecord.core.errors import Code, RemoteProtocolError

    raise RemoteProtocolError(Code.NOT_FOUND, f"no single document starts with {text!r}")


def _date(seconds: int | None) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(seconds)) if seconds else "-"


# --- node life ---------------------------------------------------------------------------------------


@main.command()
@click.option("--role", type=click.Choice(["patient", "clinic"]), required=True)
@click.option("--name", required=True, help="Display name shown to other nodes.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8470, show_default=True, type=int)
@click.option("--endpoint", help="Public URL of this node (default http://HOST:PORT).")
@click.option(
    "--web-port",
    type=int,
    help="Port of the patient's web page, on 127.0.0.1 (default: PORT + 1).",
)
@click.option(
    "--signing-seed-file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Make the signing identity from the 32-byte Ed25519 seed this file holds as 64 hex digits "
    "(a key you already hold, e.g. for a conformance suite acting as the patient); random otherwise.",
)
@pass_context
@fail_cleanly
async def init(
    ctx: Context,
    role: str,
    name: str,
    host: str,
    port: int,
    endpoint: str | None,
    web_port: int | None,
    signing_seed_file: Path | None,
) -> None:
    """Create a node: keys (in a passphrase-encrypted key file), database, profile (US-1)."""
    from fedrecord.node.home import NodeConfig, NodeHome, init_home, read_signing_seed

    # Read before the passphrase is asked for: a bad file fails at once, and its content is never shown.
    signing_seed = read_signing_seed(signing_seed_file) if signing_seed_file is not None else None
    passphrase = ctx.passphrase()
    identity = init_home(
        ctx.home,
        role=role,
        name=name,
        endpoint=endpoint or f"http://{host}:{port}",
        passphrase=passphrase,
        host=host,
        port=port,
        kdf_limits=_kdf_limits(),
        signing_seed=signing_seed,
    )
    if web_port is not None:
        dataclasses.replace(NodeConfig.load(ctx.home), web_port=web_port).save(ctx.home)
    home = await NodeHome.open(ctx.home, passphrase)
    await home.close()
    ctx.emit(
        {"did": identity.did, "role": role, "home": str(ctx.home)},
        f"created {role} node {name!r}\n  id   {identity.did}\n  home {ctx.home}",
    )


def _kdf_limits() -> tuple[int, int] | None:
    """Tests and the demo may ask for argon2id's interactive cost; real nodes keep the default."""
    if os.environ.get("FEDRECORD_KDF") == "interactive":
        from nacl.pwhash import argon2id

        return argon2id.OPSLIMIT_INTERACTIVE, argon2id.MEMLIMIT_INTERACTIVE
    return None


@main.command()
@pass_context
@fail_cleanly
async def serve(ctx: Context) -> None:
    """Run the node: its HTTP API, and for clinics the outbox and the polling of patients' state."""
    from fedrecord.node.runner import run_node

    home = await _open(ctx)
    await run_node(
        home,
        announce=lambda url: click.echo(f"serving {home.config.role} node {home.did} at {url}", err=True),
    )


@main.command()
@pass_context
@fail_cleanly
async def status(ctx: Context) -> None:
    """Who this node is, and what it holds."""
    async with opened(ctx) as home:
        counts = {}
        for table in ("documents", "records", "audit", "outbox", "connections", "peers"):
            async with home.db.execute(f"SELECT count(*) FROM {table}") as cursor:
                row = await cursor.fetchone()
            counts[table] = row[0] if row else 0
        data = {
            "did": home.did,
            "role": home.config.role,
            "name": home.config.name,
            "endpoint": home.config.endpoint,
            **counts,
        }
        ctx.emit(data, "\n".join(f"{key:12} {value}" for key, value in data.items()))


# --- patient commands -----------------------------------------------------------------------------


@main.command("web-password")
@click.option(
    "--password-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Read the new password from this file instead of asking (FEDRECORD_WEB_PASSWORD works too).",
)
@pass_context
@fail_cleanly
async def web_password(ctx: Context, password_file: Path | None) -> None:
    """Set the password of the patient's web page (its own credential, not the key file's passphrase)."""
    from fedrecord.node.home import NodeConfig
    from fedrecord.web.auth import set_password

    config = NodeConfig.load(ctx.home)
    if config.role != "patient":
        raise click.ClickException("only a patient's node has a web page")
    if password_file is not None:
        password = password_file.read_text().strip()
    elif os.environ.get("FEDRECORD_WEB_PASSWORD"):
        password = os.environ["FEDRECORD_WEB_PASSWORD"]
    else:
        password = click.prompt("New web password", hide_input=True, confirmation_prompt=True)
    try:
        set_password(ctx.home, password, limits=_kdf_limits())
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    port = config.web_port if config.web_port is not None else config.port + 1
    ctx.emit(
        {"web": f"http://{config.web_host}:{port}/"},
        f"web password set; the page is at http://{config.web_host}:{port}/ while `fedrecord serve` runs",
    )


@main.command()
@click.option("--label", default="clinic", help="Who the invitation is for (for your own list).")
@click.option("--days", default=7, show_default=True, type=int, help="Days before the invitation expires.")
@pass_context
@fail_cleanly
async def invite(ctx: Context, label: str, days: int) -> None:
    """Invite a clinic: a one-time code giving it a deposit-only grant (US-2)."""
    from fedrecord.node.patient import PatientNode

    async with opened(ctx, "patient") as home:
        invitation = await PatientNode(home).create_invitation(
            label=label, now=int(time.time()), ttl=days * DAY
        )
        ctx.emit(
            {"code": invitation.code(), "url": invitation.url(), "expires": invitation.expires},
            f"invitation for {label}, valid until {_date(invitation.expires)}:\n  {invitation.code()}\n"
            f"  {invitation.url()}",
        )


@main.command()
@pass_context
@fail_cleanly
async def inbox(ctx: Context) -> None:
    """Deposits waiting for your decision, with which grants would see each one."""
    from fedrecord.node.patient import PatientNode

    async with opened(ctx, "patient") as home:
        patient = PatientNode(home)
        items: list[dict[str, Any]] = []
        for item in await patient.inbox():
            seeing = await patient.grants_that_would_see(item.doc, now=int(time.time()))
            items.append(
                {
                    "doc": item.doc,
                    "title": item.title,
                    "from": item.author_name,
                    "author": item.author,
                    "category": item.category,
                    "labels": list(item.labels),
                    "date": item.date,
                    "size": item.size,
                    "would_be_seen_by": [await patient.peer_name(g.record.audience) for g in seeing],
                }
            )

        def show() -> None:
            if not items:
                click.echo("the inbox is empty")
            for entry in items:
                seen = ", ".join(entry["would_be_seen_by"]) or "no one yet"
                click.echo(
                    f"{entry['doc'].hex()[:16]}  {entry['title']!r} from {entry['from']}, "
                    f"{entry['category']}, labels {entry['labels']}; would be seen by: {seen}"
                )

        ctx.emit(items, show)


@main.command()
@click.argument("doc")
@click.option("--label", "labels", multiple=True, help="Add a sensitivity label first (e.g. PSY, HIV, SEX).")
@pass_context
@fail_cleanly
async def accept(ctx: Context, doc: str, labels: tuple[str, ...]) -> None:
    """Accept a deposit into your record."""
    from fedrecord.node.patient import PatientNode

    async with opened(ctx, "patient") as home:
        doc_id = await _resolve(home, doc)
        await PatientNode(home).accept(doc_id, labels=labels, now=int(time.time()))
        ctx.emit({"doc": doc_id, "accepted": True}, f"accepted {doc_id.hex()[:16]}")


@main.command()
@click.argument("doc")
@pass_context
@fail_cleanly
async def reject(ctx: Context, doc: str) -> None:
    """Reject a deposit: it is destroyed here and its sender is told."""
    from fedrecord.node.patient import PatientNode

    async with opened(ctx, "patient") as home:
        doc_id = await _resolve(home, doc)
        await PatientNode(home).reject(doc_id, now=int(time.time()))
        ctx.emit({"doc": doc_id, "rejected": True}, f"rejected {doc_id.hex()[:16]}; the sender will be told")


@main.command()
@click.option("--to", "audience", required=True, help="The did:key of the node you grant.")
@click.option("--category", "categories", multiple=True, help="Document categories (e.g. lab); all if none.")
@click.option("--label", "labels", multiple=True, help="Only documents carrying one of these labels.")
@click.option("--doc", "docs", multiple=True, help="Specific document ids.")
@click.option("--since-days", type=int, help="Only documents dated in the last N days.")
@click.option("--past/--no-past", default=True, show_default=True, help="Documents already in the record.")
@click.option("--future/--no-future", default=True, show_default=True, help="Documents accepted later.")
@click.option("--days", default=90, show_default=True, type=int, help="Days until the grant expires.")
@click.option("--purpose", default="treatment", show_default=True)
@click.option("--delegate", is_flag=True, help="Allow the grantee to pass on a narrower grant.")
@click.option(
    "--device",
    is_flag=True,
    help="Enroll one of your own devices: the whole record, read, delegate and manage (US-12).",
)
@click.option("--hide", "hide_labels", multiple=True, help="Privately keep labels (e.g. PSY, SEX) from it.")
@pass_context
@fail_cleanly
async def grant(
    ctx: Context,
    audience: str,
    categories: tuple[str, ...],
    labels: tuple[str, ...],
    docs: tuple[str, ...],
    since_days: int | None,
    past: bool,
    future: bool,
    days: int,
    purpose: str,
    delegate: bool,
    device: bool,
    hide_labels: tuple[str, ...],
) -> None:
    """Grant a node read access to part of your record (US-4), or enroll a device (US-12)."""
    from fedrecord.core import Scope
    from fedrecord.node.patient import PatientNode

    async with opened(ctx, "patient") as home:
        now = int(time.time())
        select = bool(categories or labels or since_days or not docs)
        scope = Scope(
            ids=tuple(_doc_id(d) for d in docs) or None,
            categories=categories or None,
            labels=labels or None,
            since=now - since_days * DAY if since_days else None,
            past=past and select,
            future=future and select,
        )
        actions: tuple[str, ...] = ("delegate", "read") if delegate else ("read",)
        if device:
            if categories or labels or docs or since_days or hide_labels:
                raise click.UsageError(
                    "a device grant covers the whole record: no --category, --label, --doc or --hide"
                )
            scope, actions, purpose = Scope(past=True, future=True), ("delegate", "manage", "read"), "device"
        issued = await PatientNode(home).grant(
            audience=audience,
            scope=scope,
            actions=actions,
            purpose=purpose,
            days=days,
            now=now,
            hide_labels=hide_labels,
        )
        ctx.emit(
            {"grant": issued.id, "expires": issued.record.exp},
            f"granted {issued.id.hex()[:16]} until {_date(issued.record.exp)}"
            + (f"; privately hidden: {', '.join(hide_labels)}" if hide_labels else ""),
        )


@main.command()
@pass_context
@fail_cleanly
async def grants(ctx: Context) -> None:
    """Who can see what: every grant you issued, its scope, expiry, state and private restrictions."""
    from fedrecord.core import PrivateRestriction, Revocation
    from fedrecord.node.patient import PatientNode

    async with opened(ctx, "patient") as home:
        patient = PatientNode(home)
        revoked = {r.record.grant for r in await home.store.records(Revocation)}
        restrictions = await home.store.records(PrivateRestriction, signer=home.did)
        now = int(time.time())
        rows: list[dict[str, Any]] = []
        for issued in await patient.all_grants():
            record = issued.record
            scope = record.scope
            hidden = sorted(
                {
                    label
                    for r in restrictions
                    if issued.id in (r.record.grants or ())
                    for label in (r.record.labels or ())
                }
            )
            state = "revoked" if issued.id in revoked else "expired" if now >= record.exp else "active"
            rows.append(
                {
                    "grant": issued.id,
                    "to": record.audience,
                    "name": await patient.peer_name(record.audience),
                    "actions": list(record.actions),
                    "categories": list(scope.categories or []),
                    "labels": list(scope.labels or []),
                    "documents": len(scope.ids or ()),
                    "past": scope.past,
                    "future": scope.future,
                    "since": scope.since,
                    "purpose": record.purpose,
                    "expires": record.exp,
                    "state": state,
                    "hidden": hidden,
                }
            )

        def show() -> None:
            for row in rows:
                what = ", ".join(row["categories"] or row["labels"]) or (
                    f"{row['documents']} documents" if row["documents"] else "all documents"
                )
                click.echo(
                    f"{row['grant'].hex()[:16]}  {row['state']:8} {row['name']}: {'/'.join(row['actions'])} "
                    f"{what} until {_date(row['expires'])} for {row['purpose']}"
                    + (f", except {', '.join(row['hidden'])}" if row["hidden"] else "")
                )
            if not rows:
                click.echo("no grants")

        ctx.emit(rows, show)


@main.command()
@click.argument("grant_id")
@pass_context
@fail_cleanly
async def revoke(ctx: Context, grant_id: str) -> None:
    """Revoke a grant (and every grant delegated from it) (US-5)."""
    from fedrecord.node.patient import PatientNode

    async with opened(ctx, "patient") as home:
        patient = PatientNode(home)
        matches = [g.id for g in await patient.all_grants() if g.id.hex().startswith(grant_id.lower())]
        if len(matches) != 1:
            from fedrecord.core.errors import Code, RemoteProtocolError

            raise RemoteProtocolError(Code.NOT_FOUND, f"no single grant starts with {grant_id!r}")
        revocation = await patient.revoke(matches[0], now=int(time.time()))
        ctx.emit({"revocation": revocation.id, "grant": matches[0]}, f"revoked {matches[0].hex()[:16]}")


@main.command()
@click.argument("doc")
@click.argument("labels", nargs=-1, required=True)
@click.option("--remove", is_flag=True, help="Remove these labels instead of adding them.")
@pass_context
@fail_cleanly
async def label(ctx: Context, doc: str, labels: tuple[str, ...], remove: bool) -> None:
    """Add (or remove) sensitivity labels on a document of your record (US-6)."""
    from fedrecord.node.patient import PatientNode

    async with opened(ctx, "patient") as home:
        doc_id = await _resolve(home, doc)
        result = await PatientNode(home).label(doc_id, labels, remove=remove)
        ctx.emit({"doc": doc_id, "labels": result}, f"{doc_id.hex()[:16]} labels: {', '.join(result) or '-'}")


@main.command()
@click.argument("doc")
@click.option("--unhide", is_flag=True)
@pass_context
@fail_cleanly
async def hide(ctx: Context, doc: str, unhide: bool) -> None:
    """Hide a document from every grant (it stays in your record)."""
    from fedrecord.node.patient import PatientNode

    async with opened(ctx, "patient") as home:
        doc_id = await _resolve(home, doc)
        await PatientNode(home).hide(doc_id, not unhide)
        ctx.emit(
            {"doc": doc_id, "hidden": not unhide}, f"{doc_id.hex()[:16]} {'visible' if unhide else 'hidden'}"
        )


@main.command()
@click.argument("doc")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_context
@fail_cleanly
async def delete(ctx: Context, doc: str, yes: bool) -> None:
    """Delete a document: every node holding it through you destroys it and attests (US-7)."""
    from fedrecord.node.patient import PatientNode

    async with opened(ctx, "patient") as home:
        doc_id = await _resolve(home, doc)
        if not yes and not ctx.as_json:
            click.confirm(
                "Deleting destroys the document here and on every node that holds it through you; "
                "its author keeps its own legal copy. Continue?",
                abort=True,
            )
        tombstone = await PatientNode(home).delete(doc_id, now=int(time.time()))
        ctx.emit(
            {"doc": doc_id, "tombstone": tombstone.id},
            f"deleted {doc_id.hex()[:16]}; nodes attest as they learn of it (`fedrecord attestations`)",
        )


@main.command()
@click.argument("doc")
@pass_context
@fail_cleanly
async def attestations(ctx: Context, doc: str) -> None:
    """The deletion attestations other nodes sent back for a deleted document."""
    from fedrecord.node.patient import PatientNode

    async with opened(ctx, "patient") as home:
        patient = PatientNode(home)
        doc_id = _doc_id(doc) if len(doc) == 64 else await _resolve(home, doc)
        found: list[dict[str, Any]] = [
            {
                "node": a.signer,
                "name": await patient.peer_name(a.signer),
                "outcome": a.record.outcome,
                "until": a.record.retain_until,
            }
            for a in await patient.attestations(doc_id)
        ]
        ctx.emit(
            found,
            "\n".join(
                f"{a['name']}: {a['outcome']}" + (f" until {_date(a['until'])}" if a["until"] else "")
                for a in found
            )
            or "no attestation yet",
        )


@main.command()
@click.option("--verify", is_flag=True, help="Verify the whole hash chain and every signature.")
@pass_context
@fail_cleanly
async def audit(ctx: Context, verify: bool) -> None:
    """Who read what, when, under which grant and purpose (US-8)."""
    from fedrecord.node.patient import PatientNode

    async with opened(ctx, "patient") as home:
        patient = PatientNode(home)
        entries: list[dict[str, Any]] = [
            {
                "seq": e.seq,
                "reader": e.reader,
                "name": await patient.peer_name(e.reader),
                "doc": e.doc,
                # Every document the entry covers: a batch read names several (spec 15.10, 15.21).
                "docs": list(e.docs),
                "grant": e.grant,
                "purpose": e.purpose,
                "at": e.at,
            }
            for e in await patient.audit_log()
        ]
        result: dict[str, Any] = {"entries": entries}
        if verify:
            ok, count, message = await patient.verify_audit()
            result["verified"] = {"ok": ok, "entries": count, "message": message}

        def show() -> None:
            for entry in entries:
                click.echo(
                    f"#{entry['seq']:<4} {time.strftime('%Y-%m-%d %H:%M', time.gmtime(entry['at']))}  "
                    f"{entry['name']} read {entry['doc'].hex()[:16]}"
                    + (f" and {len(entry['docs']) - 1} more" if len(entry["docs"]) > 1 else "")
                    + f" for {entry['purpose']}"
                )
            if verify:
                click.echo(
                    ("OK: " if result["verified"]["ok"] else "BROKEN: ")
                    + result["verified"]["message"]
                    + f" ({result['verified']['entries']} entries)"
                )

        ctx.emit(result, show)
        if verify and not result["verified"]["ok"]:
            sys.exit(1)


# --- clinic commands (and ls/get for both) ------------------------------------------------------------


@main.command()
@click.argument("invitation")
@pass_context
@fail_cleanly
async def connect(ctx: Context, invitation: str) -> None:
    """Connect to a patient's node from an invitation (its URL or text code)."""

    async with opened(ctx, "clinic") as home, clinic_of(home) as clinic:
        connection = await clinic.connect(invitation, now=int(time.time()))
        ctx.emit(
            {"patient": connection.patient, "endpoint": connection.endpoint},
            f"connected to {connection.name} ({connection.patient}); you may deposit documents",
        )


@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--patient", required=True, help="The patient's did:key.")
@click.option("--title", required=True)
@click.option("--category", required=True, help="e.g. lab, imaging, note, prescription")
@click.option("--type", "doc_type", default="document", show_default=True, help="e.g. a LOINC code")
@click.option("--label", "labels", multiple=True, help="Sensitivity labels proposed to the patient.")
@click.option("--media-type", default="text/plain", show_default=True)
@pass_context
@fail_cleanly
async def deposit(
    ctx: Context,
    file: Path,
    patient: str,
    title: str,
    category: str,
    doc_type: str,
    labels: tuple[str, ...],
    media_type: str,
) -> None:
    """Encrypt a document for a patient and deposit it into their inbox (US-3)."""

    async with opened(ctx, "clinic") as home, clinic_of(home) as clinic:
        now = int(time.time())
        doc = await clinic.deposit(
            patient,
            file,  # read and encrypted piece by piece: any size up to the cap, flat memory
            title=title,
            category=category,
            doc_type=doc_type,
            labels=labels,
            media_type=media_type,
            now=now,
        )
        with transfer_bar(ctx, "depositing") as progress:
            sent, pending = await clinic.flush_outbox(now=now, progress=progress)
        state = "delivered to the patient's inbox" if sent else "queued; it will be retried until delivered"
        ctx.emit(
            {"doc": doc, "delivered": bool(sent), "pending": pending}, f"deposit {doc.hex()[:16]} {state}"
        )


@main.command(name="ls")
@click.option("--patient", help="Clinic: the patient whose shared documents to list.")
@pass_context
@fail_cleanly
async def list_documents(ctx: Context, patient: str | None) -> None:
    """Patient: your record.  Clinic: what you may fetch from a patient (or what you hold)."""
    async with opened(ctx) as home:
        if home.config.role == "patient":
            from fedrecord.node.patient import PatientNode

            docs = await PatientNode(home).documents()
            ctx.emit(
                docs,
                "\n".join(
                    f"{d['doc'].hex()[:16]}  {_date(d['date'])}  {d['title']!r} ({d['category']}"
                    f"{', ' + ', '.join(d['labels']) if d['labels'] else ''})"
                    + ("  [hidden]" if d["hidden"] else "")
                    for d in docs
                )
                or "no documents",
            )
            return
        async with clinic_of(home) as clinic:
            if patient is None:
                held = await clinic.held()
                ctx.emit(
                    held,
                    "\n".join(f"{d['doc'].hex()[:16]}  {d['state']:8} {d['title']!r}" for d in held)
                    or "no documents held",
                )
                return
            await clinic.poll(patient, now=int(time.time()))
            docs = await clinic.listing(patient, now=int(time.time()))
            ctx.emit(
                docs,
                "\n".join(
                    f"{d['doc'].hex()[:16]}  {_date(d['date'])}  {d['category']}  {d['size']} bytes"
                    for d in docs
                )
                or "nothing you may fetch",
            )


@main.command()
@click.argument("doc")
@click.option("--patient", help="Clinic: the patient to fetch from.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write the document here.")
@pass_context
@fail_cleanly
async def get(ctx: Context, doc: str, patient: str | None, out: Path | None) -> None:
    """Read a document: from your record (patient) or from a patient under a grant (clinic).

    With ``--out`` the document is written there piece by piece, whatever its size; a fetch
    that is cut short is resumed by running the same command again.
    """
    async with opened(ctx) as home:
        if out is not None:
            with _written_whole(out) as file:
                size = await _read(ctx, home, doc, patient, file)
            ctx.emit({"size": size, "out": str(out)}, f"wrote {size} bytes to {out}")
            return
        memory = io.BytesIO()
        size = await _read(ctx, home, doc, patient, memory)
        content = memory.getvalue()
        ctx.emit({"size": size, "out": None}, lambda: click.echo(content.decode(errors="replace"), nl=False))


async def _read(ctx: Context, home: Any, doc: str, patient: str | None, into: BinaryIO) -> int:
    """Decrypt a document into ``into``: the patient's own, a copy held, or one fetched from a patient."""
    if home.config.role == "patient":
        from fedrecord.node.patient import PatientNode

        return int(await PatientNode(home).read_own_into(await _resolve(home, doc), into))
    async with clinic_of(home) as clinic:
        if patient is None:
            doc_id = await _resolve(home, doc)
            await _poll_holder(clinic, doc_id)
            return int(await clinic.read_held_into(doc_id, into, now=int(time.time())))
        now = int(time.time())
        await clinic.poll(patient, now=now)
        doc_id = _doc_id(doc) if len(doc) == 64 else await _listed(clinic, patient, doc, now)
        with transfer_bar(ctx, "fetching") as progress:
            return int(await clinic.fetch_into(patient, doc_id, into, now=now, progress=progress))


@contextlib.contextmanager
def _written_whole(out: Path) -> Iterator[BinaryIO]:
    """A file beside ``out`` that becomes ``out`` only when the block ends well: a document is
    authenticated only as a whole, so no part of one that fails is left under its name."""
    partial = out.with_name(f".{out.name}.part")
    try:
        with partial.open("wb") as file:
            yield file
        os.replace(partial, out)
    finally:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()


async def _poll_holder(clinic: Any, doc: bytes) -> None:
    """Refresh the state head of the patient a shared copy came from, when that node answers."""
    from fedrecord.node.client import PeerUnreachable

    held = await clinic.store.held_copy(doc)
    if held is not None and held[2] == "shared":
        with contextlib.suppress(PeerUnreachable):
            await clinic.poll(held[1], now=int(time.time()))


async def _listed(clinic: Any, patient: str, prefix: str, now: int) -> bytes:
    from fedrecord.core.errors import Code, RemoteProtocolError

    matches = [
        d["doc"] for d in await clinic.listing(patient, now=now) if d["doc"].hex().startswith(prefix.lower())
    ]
    if len(matches) != 1:
        raise RemoteProtocolError(Code.NOT_FOUND, f"no single document you may fetch starts with {prefix!r}")
    return bytes(matches[0])


@main.command()
@click.option("--patient", required=True, help="The patient whose grant you pass on.")
@click.option("--to", "audience", required=True, help="The did:key of the node you delegate to.")
@click.option("--to-endpoint", required=True, help="That node's URL.")
@click.option("--category", "categories", multiple=True, help="Narrow to these categories.")
@click.option("--days", default=30, show_default=True, type=int, help="Days (never beyond your own grant).")
@pass_context
@fail_cleanly
async def delegate(
    ctx: Context, patient: str, audience: str, to_endpoint: str, categories: tuple[str, ...], days: int
) -> None:
    """Clinic: pass a narrower read grant to another node, if the patient allowed delegation (US-9)."""

    async with opened(ctx, "clinic") as home, clinic_of(home) as clinic:
        await clinic.poll(patient, now=int(time.time()))
        child = await clinic.delegate(
            patient,
            to=audience,
            to_endpoint=to_endpoint,
            categories=categories,
            days=days,
            now=int(time.time()),
        )
        ctx.emit(
            {"grant": child.id, "expires": child.record.exp},
            f"delegated {child.id.hex()[:16]} to {audience[:32]}... until {_date(child.record.exp)}",
        )


@main.command()
@click.option("--patient", help="Only this patient.")
@pass_context
@fail_cleanly
async def poll(ctx: Context, patient: str | None) -> None:
    """Clinic: fetch patients' state now; apply revocations and deletions, send what the outbox holds."""
    from fedrecord.node.client import PeerUnreachable

    async with opened(ctx, "clinic") as home, clinic_of(home) as clinic:
        now = int(time.time())
        results = {}
        unreachable = {}
        for connection in await clinic.connections():
            if patient is None or connection.patient == patient:
                try:
                    results[connection.patient] = await clinic.poll(connection.patient, now=now)
                except PeerUnreachable as exc:
                    # An offline patient node is normal (US-11): report it, send what can be sent.
                    unreachable[connection.patient] = str(exc)
        sent, pending = await clinic.flush_outbox(now=now)
        ctx.emit(
            {"patients": results, "unreachable": unreachable, "sent": sent, "pending": pending},
            "\n".join(
                f"{p[:32]}...: head {r['seq']}, {r['destroyed']} copies destroyed, "
                f"{r['attested']} deletions attested"
                for p, r in results.items()
            )
            + "".join(f"\n{p[:32]}...: unreachable, will retry" for p in unreachable)
            + f"\noutbox: {sent} sent, {pending} pending",
        )


@main.command()
@click.option("--patient", help="Only this patient.")
@click.option("--records-only", is_flag=True, help="Fetch the missing records, not the document bodies.")
@pass_context
@fail_cleanly
async def sync(ctx: Context, patient: str | None, records_only: bool) -> None:
    """Clinic: reconcile with patients' nodes; fetch the records and documents this node lacks."""
    from fedrecord.node.client import PeerUnreachable

    async with opened(ctx, "clinic") as home, clinic_of(home) as clinic:
        now = int(time.time())
        reports: dict[str, Any] = {}
        unreachable = {}
        with stage_bars(ctx) as progress:
            for connection in await clinic.connections():
                if patient is None or connection.patient == patient:
                    try:
                        report = await clinic.sync(
                            connection.patient, now=now, bodies=not records_only, progress=progress
                        )
                    except PeerUnreachable as exc:
                        # What was stored stays; the next sync goes on from there.
                        unreachable[connection.patient] = str(exc)
                        continue
                    reports[connection.patient] = dataclasses.asdict(report)
        ctx.emit(
            {"patients": reports, "unreachable": unreachable},
            "\n".join(
                f"{p[:32]}...: {r['rounds']} rounds, {r['bytes_sent'] + r['bytes_received']} bytes; "
                f"{r['records_stored']} records and {r['documents_fetched']} documents fetched"
                + (f"; {len(r['documents_failed'])} refused" if r["documents_failed"] else "")
                for p, r in reports.items()
            )
            + "".join(f"\n{p[:32]}...: unreachable, sync again later" for p in unreachable),
        )


@main.command()
@click.option("--keep", is_flag=True, help="Leave the three nodes running after the story.")
@click.option("--offline", is_flag=True, help="Play the story on the protocol core alone, without nodes.")
def demo(keep: bool, offline: bool) -> None:
    """Start a patient node, a GP practice and a lab on loopback, and play the main story."""
    if offline:
        from fedrecord.offline_story import StoryFailed, play

        try:
            play(click.echo)
        except StoryFailed as failure:
            click.echo(f"error: the story went wrong: {failure}", err=True)
            sys.exit(1)
        return
    from fedrecord.demo import DemoFailed, run_demo

    try:
        run_demo(keep=keep, say=click.echo)
    except DemoFailed as failure:
        click.echo(f"error: the demo went wrong: {failure}", err=True)
        sys.exit(1)
