"""The ``fedrecord`` command line: create, run and drive patient and clinic nodes.

Commands act on a node's home directory (``--home``, or ``FEDRECORD_HOME``):
they open its database and key file directly, and reach other nodes over
signed HTTP.  Output is readable by default and JSON with ``--json``; an
error is one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import errno
import functools
import gc
import io
import json
import os
import re
import sqlite3
import stat
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar

import click
from rich.console import Console

from fedrecord import __version__

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

    from fedrecord.node.client import PeerUnreachable

T = TypeVar("T")
DAY = 86_400
INVITATION_MAX_DAYS = 30
"""An invitation lives 1 to 2,592,000 seconds (the ``invite`` op of spec 15.19): 30 days."""
INVITATION_LABEL_MAX = 128
"""An invitation's label is 1 to 128 characters (the spec's ``invite`` op)."""
GRANT_MAX_DAYS = 5 * 366
"""The longest grant offered, as on the web page's sharing form: about five years."""
SINCE_MAX_DAYS = 50 * 365
"""How far back ``grant --since-days`` reaches: ``since`` is a time, never before 1970 (for older
documents, leave the option out)."""
DELEGATION_MAX_DAYS = 365
"""The longest delegation, as the clinic's ``delegate`` op allows."""
MIN_PREFIX = 4
"""The fewest hex digits an id may be shortened to: "" or "a" must never pick the only document."""
TERMINAL_MAX = 1 << 20
"""The most of a document ``get`` prints on a terminal; a larger one is written to a file (``--out``)."""
DEBUG_VARIABLE = "FEDRECORD_DEBUG"
"""Set (to anything) to see the traceback of an unexpected error rather than its one line."""


COLLECTOR_THRESHOLD = 10_000
"""The cyclic garbage collector's first threshold in a ``fedrecord`` process, where Python's is 700."""


def collect_less_often() -> None:
    """Raise the cyclic garbage collector's first threshold to :data:`COLLECTOR_THRESHOLD` for this process.

    A sync, or a node answering one, holds tens of thousands of records; each full collection walks
    every one of them again, and with Python's threshold one comes every few thousand records (about
    4 % of a clinic's CPU in an initial sync, ``benchmarks/initial_sync.py``).  Allocations that make
    no cycles are freed by reference counting whatever the threshold: this only bounds how long cyclic
    garbage waits, now at most ten thousand allocations.
    """
    first, second, third = gc.get_threshold()
    gc.set_threshold(max(first, COLLECTOR_THRESHOLD), second, third)


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
        if not sys.stdin.isatty():
            # Nobody to ask (a service, a script): say what to set rather than read a line from a pipe.
            raise click.ClickException(
                "no passphrase: set FEDRECORD_PASSPHRASE or use --passphrase-file (mode 0600)"
            )
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


class Interrupted(Exception):
    """Ctrl-C stopped a command after a point worth telling the user about; the message says what holds."""


def fail_cleanly(function: Callable[..., Coroutine[Any, Any, T]]) -> Callable[..., None]:
    """Run an async command; any error becomes one line on stderr and a non-zero exit.

    An error the user can act on (a refusal, a node that does not answer, a home, database or
    file that cannot be used) says what is wrong, with exit status 1 (2 for a misused command).
    Any other exception is a bug, but a person is still not handed a traceback: one line names
    it, and ``FEDRECORD_DEBUG=1`` shows the traceback.  Ctrl-C says "interrupted" (status 130).
    """

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            asyncio.run(function(*args, **kwargs))
        except (click.exceptions.Exit, click.Abort):
            raise  # click's own ways to end a command (a declined confirmation says "Aborted!")
        except click.ClickException as error:
            # Raised by the commands themselves: one line like every other error, not click's "Error:".
            click.echo(f"error: {error.format_message()}", err=True)
            sys.exit(error.exit_code)
        except Interrupted as interrupted:
            click.echo(f"interrupted: {interrupted}", err=True)
            sys.exit(130)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except Exception as error:  # a bug: one line, or its traceback under FEDRECORD_DEBUG
            line = _failure(error)
            if line is None:
                if os.environ.get(DEBUG_VARIABLE):
                    raise
                line = (
                    f"unexpected {type(error).__name__}: {error} "
                    f"(run with {DEBUG_VARIABLE}=1 for details)"
                )
            click.echo(f"error: {line}", err=True)
            sys.exit(1)

    return wrapper


def _failure(error: Exception) -> str | None:
    """The line for an error the user can act on; None for one that is a bug."""
    from fedrecord.core.errors import FedrecordError
    from fedrecord.node.client import PeerUnreachable
    from fedrecord.node.home import HomeError
    from fedrecord.storage.keyfile import KeyFileError
    from fedrecord.storage.sqlite import StorageError

    if isinstance(error, FedrecordError):
        return f"{error.code.value}: {error.message}"
    if isinstance(error, PeerUnreachable):
        return _unreachable(error, "the node")
    if isinstance(error, (HomeError, KeyFileError, StorageError)):
        return str(error)
    if isinstance(error, sqlite3.Error):
        return _database_failure(error)
    if isinstance(error, OSError):
        return _os_failure(error)
    return None


def _database_failure(error: sqlite3.Error) -> str:
    """A database error as the user meets it: damaged, held by another program, or read-only."""
    line = f"the node's database cannot be used: {error}"
    if isinstance(error, sqlite3.OperationalError) and "locked" in str(error):
        # Another process holds a write lock longer than we wait (a sqlite3 shell, a backup tool).
        line += " (another program is using it; try again when it is done)"
    return line


def _os_failure(error: OSError) -> str:
    """An OSError in one line: the file it concerns and why, without Python's "[Errno n]"."""
    reason = error.strerror or str(error)
    if error.filename is not None:
        return f"{error.filename}: {reason[:1].lower()}{reason[1:]}"
    return reason


def _unreachable(error: PeerUnreachable, whose: str) -> str:
    """``whose`` (e.g. "the patient's node") at its address did not answer, and the short reason why."""
    from yarl import URL

    where = error.url
    with contextlib.suppress(ValueError):
        url = URL(where)
        if url.absolute:
            where = str(url.origin())
    return f"{whose} at {where} is unreachable ({error.reason})"


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
    collect_less_often()
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
    """The clinic side of an opened node, its HTTP client closed at the end of the command.

    The nodes a clinic's commands reach are patients' nodes (a delegation's other end is named
    by ``delegate`` itself), so one that does not answer is named as the patient's.

    Raises:
        click.ClickException: the patient's node did not answer.
    """
    from fedrecord.node.client import PeerUnreachable
    from fedrecord.node.clinic import ClinicNode

    clinic = ClinicNode(home)
    try:
        yield clinic
    except PeerUnreachable as error:
        raise click.ClickException(_unreachable(error, "the patient's node")) from None
    finally:
        await clinic.client.close()


async def _open(ctx: Context, role: str | None = None) -> Any:
    """The node at ``ctx.home``, unlocked.

    Raises:
        HomeError: as ``NodeConfig.load``, or the node is not a ``role`` node.
        KeyFileError: wrong passphrase, damaged key file.
        sqlite3.Error, StorageError: the database cannot be opened.
    """
    from fedrecord.node.home import HomeError, NodeConfig, NodeHome

    NodeConfig.load(ctx.home)  # a home that is no node is said before the passphrase is asked for
    home = await NodeHome.open(ctx.home, ctx.passphrase())
    if home.db.upgraded:
        # Said once, by whichever command opened the home first after an upgrade of fedrecord.
        first, last = home.db.upgraded[0].version, home.db.upgraded[-1].version
        click.echo(
            f"upgraded the database of {ctx.home} to schema version {last} (migrations {first} to {last}: "
            + "; ".join(m.description for m in home.db.upgraded)
            + "); older fedrecord versions can no longer open it",
            err=True,
        )
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


def _prefix(text: str, what: str = "document") -> str:
    """``text`` as an id prefix to look up: lower-case hex, at least MIN_PREFIX digits, at most 64.

    Why a minimum: every id starts with "" (an unset shell variable), so with one document
    ``delete --yes ""`` would delete it.

    Raises:
        click.UsageError: too short, too long or not hex.
    """
    prefix = text.strip().lower()
    if not MIN_PREFIX <= len(prefix) <= 64 or any(c not in "0123456789abcdef" for c in prefix):
        raise click.UsageError(
            f"a {what} id is {MIN_PREFIX} to 64 hexadecimal digits (its start is enough); got {text!r}"
        )
    return prefix


async def _resolve(home: Any, text: str, *, deleted: bool = False) -> bytes:
    """A full id from an unambiguous hex prefix of a held document (or, with ``deleted``, of one
    this patient deleted: its tombstone remains).

    Raises:
        click.UsageError: as :func:`_prefix`.
        RemoteProtocolError: ``not-found`` when no document, or several, start with it.
    """
    prefix = _prefix(text)
    async with home.db.execute("SELECT id FROM documents") as cursor:
        ids = {bytes(row[0]) for row in await cursor.fetchall()}
    if deleted:
        from fedrecord.core import Tombstone

        # What was deleted is gone from the documents table; its short id, as `delete` printed it, still names it.
        ids |= {t.record.doc for t in await home.store.records(Tombstone, signer=home.did, verify=False)}
    matches = [doc for doc in ids if doc.hex().startswith(prefix)]
    if len(matches) == 1:
        return matches[0]
    if len(prefix) == 64:
        return _doc_id(prefix)
    from fedrecord.core.errors import Code, RemoteProtocolError

    raise RemoteProtocolError(Code.NOT_FOUND, f"no single document starts with {text!r}")


def _date(seconds: int | None, form: str = "%Y-%m-%d") -> str:
    """A time as a date for people; "?" for one no calendar shows (a grant stored with a huge expiry)."""
    if not seconds:
        return "-"
    try:
        return time.strftime(form, time.gmtime(seconds))
    except (OverflowError, OSError, ValueError):
        return "?"


# --- node life ---------------------------------------------------------------------------------------


@main.command()
@click.option("--role", type=click.Choice(["patient", "clinic"]), required=True)
@click.option("--name", required=True, help="Display name shown to other nodes.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8470, show_default=True, type=click.IntRange(1, 65535))
@click.option("--endpoint", help="Public URL of this node (default http://HOST:PORT).")
@click.option(
    "--web-port",
    type=click.IntRange(1, 65535),
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
    from fedrecord.node.home import HomeError, NodeConfig, NodeHome, init_home, read_signing_seed

    if ctx.home.exists() and not ctx.home.is_dir():
        raise HomeError(f"{ctx.home} is not a directory (--home names a node's data directory)")
    # Read before the passphrase is asked for: a bad file fails at once, and its content is never shown.
    signing_seed = read_signing_seed(signing_seed_file) if signing_seed_file is not None else None
    passphrase = ctx.passphrase()
    identity = init_home(
        ctx.home,
        role=role,
        name=name,
        endpoint=endpoint or f"http://{_url_host(host)}:{port}",
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


def _url_host(host: str) -> str:
    """``host`` as a URL writes it: an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


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
    try:
        await run_node(
            home,
            announce=lambda url: click.echo(f"serving {home.config.role} node {home.did} at {url}", err=True),
        )
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        # The API's port or the web page's: asyncio's message names the address it could not bind.
        bound = re.search(r"\('([^']*)', (\d+)", str(exc))
        where = f"{_url_host(bound[1])}:{bound[2]}" if bound else f"{_url_host(home.config.host)}:{home.config.port}"
        raise click.ClickException(f"{where} is already in use (is this node already running?)") from None


@main.command()
@click.option(
    "--new-passphrase-file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Read the new passphrase from this file (mode 0600) instead of asking "
    "(FEDRECORD_NEW_PASSPHRASE works too).",
)
@pass_context
@fail_cleanly
async def passphrase(ctx: Context, new_passphrase_file: Path | None) -> None:
    """Change the key file's passphrase (the current one as for every command, then the new one).

    The key file is rewritten at once, in place; the keys stay the same.  A running `serve`
    goes on; it needs the new passphrase when it next starts (update its passphrase file).
    Backups made before keep the old passphrase.
    """
    from fedrecord.node.home import NodeConfig
    from fedrecord.storage.keyfile import kdf_cost, passphrase_from_environment, read_key_file, write_key_file

    NodeConfig.load(ctx.home)
    secrets = await asyncio.to_thread(read_key_file, ctx.home / "node.key", ctx.passphrase())
    new = passphrase_from_environment(new_passphrase_file, "FEDRECORD_NEW_PASSPHRASE")
    if new is None:
        if not sys.stdin.isatty():
            raise click.ClickException(
                "no new passphrase: set FEDRECORD_NEW_PASSPHRASE or use --new-passphrase-file (mode 0600)"
            )
        new = click.prompt("New passphrase", hide_input=True, confirmation_prompt=True).encode()
    await asyncio.to_thread(write_key_file, ctx.home / "node.key", secrets, new, **kdf_cost(_kdf_limits()))
    ctx.emit(
        {"home": str(ctx.home), "changed": True},
        f"the passphrase of {ctx.home / 'node.key'} is changed; update the passphrase file or "
        "FEDRECORD_PASSPHRASE a service starts with",
    )


@main.command()
@click.argument("dest", type=click.Path(path_type=Path, file_okay=False))
@pass_context
@fail_cleanly
async def backup(ctx: Context, dest: Path) -> None:
    """Copy this node's home to DEST (a new directory), consistently, even while `serve` runs.

    DEST holds a home to restore as it is: stop `serve`, put DEST in the home's place (or use
    `--home DEST`), start again.  The key file is copied encrypted: keep its passphrase too.
    No passphrase is needed to back up.
    """
    from fedrecord.node.home import backup_home

    result = await asyncio.to_thread(backup_home, ctx.home, dest)
    if result.missing:
        raise click.ClickException(
            f"{result.missing} document file(s) the database names were not found (deleted while the backup"
            " ran, or already missing from the home); run it again into a new directory"
        )
    ctx.emit(
        {"dest": str(dest), **dataclasses.asdict(result)},
        f"backed up {ctx.home} to {dest}: {result.documents} document(s), "
        f"{result.files} document file(s), {result.size} bytes",
    )


@main.command()
@pass_context
@fail_cleanly
async def status(ctx: Context) -> None:
    """Who this node is, and what it holds."""
    async with opened(ctx) as home:
        counts = {}
        for name, query in (
            ("documents", "SELECT count(*) FROM documents"),
            ("records", "SELECT count(*) FROM records"),
            ("audit", "SELECT count(*) FROM audit"),
            # What is still to send; rows done (delivered, or refused for good) are kept apart.
            ("outbox", "SELECT count(*) FROM outbox WHERE done = 0"),
            ("outbox_done", "SELECT count(*) FROM outbox WHERE done != 0"),
            ("connections", "SELECT count(*) FROM connections"),
            ("peers", "SELECT count(*) FROM peers"),
        ):
            async with home.db.execute(query) as cursor:
                row = await cursor.fetchone()
            counts[name] = row[0] if row else 0
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
        try:
            password = password_file.read_text(encoding="utf-8").strip()
        except UnicodeDecodeError:
            raise click.ClickException(f"{password_file} is not UTF-8 text") from None
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


def _text_of_length(value: str, maximum: int) -> str:
    """``value`` when it is 1 to ``maximum`` characters long (an option's callback).

    Raises:
        click.BadParameter: when it is not.
    """
    if not 1 <= len(value) <= maximum:
        raise click.BadParameter(f"1 to {maximum} characters, not {len(value)}")
    return value


@main.command()
@click.option(
    "--label",
    default="clinic",
    callback=lambda _ctx, _param, value: _text_of_length(value, INVITATION_LABEL_MAX),
    help=f"Who the invitation is for (for your own list), 1 to {INVITATION_LABEL_MAX} characters.",
)
@click.option(
    "--days",
    default=7,
    show_default=True,
    type=click.IntRange(1, INVITATION_MAX_DAYS),
    help=f"Days before the invitation expires (1 to {INVITATION_MAX_DAYS}).",
)
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
@click.option("--doc", "docs", multiple=True, help="Specific documents (an id, or its first digits).")
@click.option(
    "--since-days",
    type=click.IntRange(1, SINCE_MAX_DAYS),
    help=f"Only documents dated in the last N days (1 to {SINCE_MAX_DAYS}).",
)
@click.option("--past/--no-past", default=True, show_default=True, help="Documents already in the record.")
@click.option("--future/--no-future", default=True, show_default=True, help="Documents accepted later.")
@click.option(
    "--days",
    default=90,
    show_default=True,
    type=click.IntRange(1, GRANT_MAX_DAYS),
    help=f"Days until the grant expires (1 to {GRANT_MAX_DAYS}).",
)
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
            ids=tuple([await _resolve(home, d) for d in docs]) or None,
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
    """Who can see what: every grant you or your devices issued, its scope, expiry, state and private restrictions."""
    from fedrecord.core import PrivateRestriction, Revocation, RevocationSet
    from fedrecord.node.patient import PatientNode, distinct_labels

    async with opened(ctx, "patient") as home:
        patient = PatientNode(home)
        revocations = RevocationSet.from_records(await home.store.records(Revocation))
        restrictions = await home.store.records(PrivateRestriction, signer=home.did)
        now = int(time.time())
        rows: list[dict[str, Any]] = []
        for given in await patient.given_grants():
            issued, record = given.grant, given.grant.record
            scope = record.scope
            links = {link.id for link in given.chain}
            hidden = distinct_labels(
                label
                for r in restrictions
                if links & set(r.record.grants or ())
                for label in (r.record.labels or ())
            )
            state = (
                "revoked" if given.revoked(revocations) else "expired" if now >= given.expires else "active"
            )
            # A grant one of your devices gave under its device grant ([API-48]): by that device.
            by = given.device.record.audience if given.device is not None else None
            rows.append(
                {
                    "grant": issued.id,
                    "by": by,
                    "by_name": await patient.peer_name(by) if by is not None else None,
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
                    "expires": given.expires,
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
                    + (f", given by {row['by_name']}" if row["by"] else "")
                )
            if not rows:
                click.echo("no grants")

        ctx.emit(rows, show)


@main.command()
@click.argument("grant_id")
@pass_context
@fail_cleanly
async def revoke(ctx: Context, grant_id: str) -> None:
    """Revoke a grant, yours or one your devices gave (and every grant delegated from it) (US-5)."""
    from fedrecord.node.patient import PatientNode

    prefix = _prefix(grant_id, "grant")
    async with opened(ctx, "patient") as home:
        patient = PatientNode(home)
        matches = [g.grant.id for g in await patient.given_grants() if g.grant.id.hex().startswith(prefix)]
        if len(matches) != 1:
            from fedrecord.core.errors import Code, RemoteProtocolError

            raise RemoteProtocolError(Code.NOT_FOUND, f"no single grant starts with {grant_id!r}")
        now = int(time.time())
        revocation = await patient.revoke(matches[0], now=now)
        said = f"revoked {matches[0].hex()[:16]}"
        if revocation.record.iat < now:
            said = f"{matches[0].hex()[:16]} was revoked already, on {_date(revocation.record.iat)}"
        ctx.emit({"revocation": revocation.id, "grant": matches[0]}, said)


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
@click.option("--yes", is_flag=True, help="Do not ask for confirmation (required with --json: deletion cannot be undone).")
@pass_context
@fail_cleanly
async def delete(ctx: Context, doc: str, yes: bool) -> None:
    """Delete a document: every node holding it through you destroys it and attests (US-7)."""
    from fedrecord.node.patient import PatientNode

    if ctx.as_json and not yes:
        # A script cannot answer the question: it says --yes, or nothing is deleted.
        raise click.UsageError("--json delete needs --yes: deletion cannot be undone")
    async with opened(ctx, "patient") as home:
        doc_id = await _resolve(home, doc)
        if not yes:
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
        doc_id = await _resolve(home, doc, deleted=True)
        if await patient.tombstone_of(doc_id) is None:
            raise click.ClickException(f"{doc_id.hex()[:16]} is not deleted: attestations answer a deletion")
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
        log = await patient.audit_log()
        names = {reader: await patient.peer_name(reader) for reader in {e.reader for e in log}}
        entries: list[dict[str, Any]] = [
            {
                "seq": e.seq,
                "reader": e.reader,
                "name": names[e.reader],
                "doc": e.doc,
                # Every document the entry covers: a batch read names several (spec 15.10, 15.21).
                "docs": list(e.docs),
                "grant": e.grant,
                "purpose": e.purpose,
                "at": e.at,
            }
            for e in log
        ]
        result: dict[str, Any] = {"entries": entries}
        if verify:
            ok, count, message = await patient.verify_audit()
            result["verified"] = {"ok": ok, "entries": count, "message": message}

        def show() -> None:
            for entry in entries:
                click.echo(
                    f"#{entry['seq']:<4} {_date(entry['at'], '%Y-%m-%d %H:%M')}  "
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
        try:
            with transfer_bar(ctx, "depositing") as progress:
                sent, pending = await clinic.flush_outbox(now=now, progress=progress)
        except asyncio.CancelledError:
            # Ctrl-C while sending (asyncio.run cancels the command): the deposit was committed with
            # its outbox entry before, so it is not lost, and the person must not deposit it again.
            raise Interrupted(
                f"deposit {doc.hex()[:16]} is stored and queued; `fedrecord serve` (or `fedrecord poll`) "
                "sends it"
            ) from None
        refusal = None if sent else await clinic.deposit_refusal(doc)
        if refusal is not None:
            # Refused for good (a revoked deposit grant, a document the patient rejected): not retried.
            raise click.ClickException(f"deposit {doc.hex()[:16]} refused by the patient's node: {refusal}")
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
            docs = _one_per_document(await clinic.listing(patient, now=int(time.time())))
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
    that is cut short is resumed by running the same command again.  Without it the document
    goes to standard output: as it is decrypted into a file or a pipe; on a terminal only when
    it is text of at most 1 MiB.
    """
    if out is not None:
        _check_out(out)  # before the read: a fetch is logged in the patient's audit log
    async with opened(ctx) as home:
        if out is not None:
            with _written_whole(out) as file:
                size = await _read(ctx, home, doc, patient, file)
            ctx.emit({"size": size, "out": str(out)}, f"wrote {size} bytes to {out}")
            return
        if ctx.as_json:
            # JSON cannot carry the document: refused before it is read (see _read).
            await _read(ctx, home, doc, patient, None)
            raise _needs_out()
        if not sys.stdout.isatty():
            await _read_to_stdout(ctx, home, doc, patient)
            return
        # A terminal shows text: a binary or huge document would garble it, or scroll for ever.
        shown = _Bounded(TERMINAL_MAX, _too_large_for_terminal)
        await _read(ctx, home, doc, patient, shown, at_most=TERMINAL_MAX)
        try:
            text = shown.getvalue().decode("utf-8")
        except UnicodeDecodeError:
            raise click.ClickException("the document is not text (it is binary): use --out FILE") from None
        click.echo(text, nl=False)


class _Bounded(io.BytesIO):
    """A buffer that refuses to grow past ``limit`` bytes: the read writing into it ends there."""

    def __init__(self, limit: int, refusal: Callable[[], Exception]) -> None:
        super().__init__()
        self.limit = limit
        self.refusal = refusal

    def write(self, piece: ReadableBuffer, /) -> int:
        if self.tell() + memoryview(piece).nbytes > self.limit:
            raise self.refusal()
        return super().write(piece)


def _too_large_for_terminal() -> click.ClickException:
    return click.ClickException(
        f"the document is too large for the terminal (over {TERMINAL_MAX >> 20} MiB): use --out FILE"
    )


def _needs_out() -> click.UsageError:
    return click.UsageError("--json get needs --out FILE (JSON output cannot carry the document)")


async def _read_to_stdout(ctx: Context, home: Any, doc: str, patient: str | None) -> None:
    """The document onto standard output (a file or a pipe) as it is decrypted: flat memory, bytes as
    they are.  A failure part-way is said on stderr with a non-zero status: what came out is not the
    document (it is authenticated only as a whole).

    Raises:
        as :func:`_read`; click.ClickException: the reader of the pipe went away.
    """
    stdout = sys.stdout.buffer
    try:
        await _read(ctx, home, doc, patient, stdout)
        stdout.flush()
    except BrokenPipeError:
        # `fedrecord get DOC | head`: stop quietly, and keep Python from failing again on the final flush.
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), stdout.fileno())
        raise click.ClickException("the output was closed before the end of the document") from None


async def _read(
    ctx: Context, home: Any, doc: str, patient: str | None, into: BinaryIO | None, *, at_most: int | None = None
) -> int:
    """Decrypt a document into ``into``: the patient's own, a copy held, or one fetched from a patient.

    With ``into`` None (``--json`` without ``--out``) nothing is read: the refusal comes where the
    read would begin, after those the read itself would meet (no such document, no grant reaching
    it) that can be known without it -- a fetch would be logged in the patient's audit log for
    nothing.  With ``at_most``, a document the patient's listing says is larger is refused before
    it is fetched.

    Raises:
        click.UsageError: a malformed id; with ``into`` None, ``--json`` needs ``--out``.
        click.ClickException: larger than ``at_most``.
        RemoteProtocolError: ``not-found``, ``revoked``..., as the read says.
        PeerUnreachable: the patient's node did not answer.
    """
    if home.config.role == "patient":
        from fedrecord.node.patient import PatientNode

        doc_id = await _resolve(home, doc)
        if into is None:
            raise _needs_out()
        return int(await PatientNode(home).read_own_into(doc_id, into))
    async with clinic_of(home) as clinic:
        if patient is None:
            doc_id = await _resolve(home, doc)
            if into is None:
                raise _needs_out()
            await _poll_holder(clinic, doc_id)
            return int(await clinic.read_held_into(doc_id, into, now=int(time.time())))
        prefix = _prefix(doc)
        now = int(time.time())
        await clinic.poll(patient, now=now)
        if into is None:
            if await clinic.chains_from(patient, now=now):
                await _listed(clinic, patient, prefix, now)  # not-found for a document no grant reaches
                raise _needs_out()
            # Without a live grant the fetch is refused before any request is sent, and says why
            # (revoked, expired, or never granted): let it, with nowhere to write.
            into = _Bounded(0, _needs_out)
        if len(prefix) == 64 and at_most is None:
            doc_id = _doc_id(prefix)  # the fetch says when no grant reaches it
        else:
            listed = await _listed(clinic, patient, prefix, now, required=len(prefix) < 64)
            doc_id = _doc_id(prefix) if listed is None else listed["doc"]
            # The listing gives the stream's size: the content, plus a header and 16 bytes a 64 KiB
            # chunk that stay far under 64 KiB for a document that would fit.
            if listed is not None and at_most is not None and listed["size"] > at_most + (64 << 10):
                raise _too_large_for_terminal()
        with transfer_bar(ctx, "fetching") as progress:
            return int(await clinic.fetch_into(patient, doc_id, into, now=now, progress=progress))


def _check_out(out: Path) -> None:
    """Refuse an ``--out`` that is no file name, or names something other than a regular file.

    The document is written beside it and renamed over it: a symlink, a device (``/dev/stdout``)
    or a fifo would be replaced by a file holding the health record, not written through.

    Raises:
        click.UsageError: no file name, or not a regular file.
        click.ClickException: its directory does not exist.
    """
    if not out.name or out.name in (".", ".."):
        raise click.UsageError("--out needs a file name")
    try:
        mode = out.lstat().st_mode
    except FileNotFoundError:
        mode = None
    if mode is not None and not stat.S_ISREG(mode):
        kind = "a symbolic link" if stat.S_ISLNK(mode) else "not a regular file"
        raise click.UsageError(f"--out {out} is {kind}; name a new or regular file")
    if not out.parent.is_dir():
        raise click.ClickException(f"cannot write {out}: there is no directory {out.parent}")


@contextlib.contextmanager
def _written_whole(out: Path) -> Iterator[BinaryIO]:
    """A file beside ``out`` that becomes ``out`` only when the block ends well: a document is
    authenticated only as a whole, so no part of one that fails is left under its name.

    The file is made readable by its owner only (0600, whatever the umask allows): it is a health
    record.  An existing file of that name is truncated, never followed if it is a link.
    """
    partial = out.with_name(f".{out.name}.part")
    try:
        try:
            descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            # Said of the file the user named, not of the partial one beside it.
            raise click.ClickException(f"cannot write {out}: {_os_failure(exc).partition(': ')[2]}") from None
        with os.fdopen(descriptor, "wb") as file:
            yield file
        os.replace(partial, out)
    finally:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()


async def _poll_holder(clinic: Any, doc: bytes) -> None:
    """Refresh the state head of the patient a shared copy came from, when that node answers."""
    from fedrecord.core.lifecycle import DocumentState
    from fedrecord.node.client import PeerUnreachable

    held = await clinic.store.held_copy(doc)
    if held is not None and held[2] == DocumentState.SHARED:
        with contextlib.suppress(PeerUnreachable):
            await clinic.poll(held[1], now=int(time.time()))


def _one_per_document(listing: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A patient's listing with each document once, under ``grants`` every grant that reaches it.

    The patient's node lists what each grant reaches; two grants reaching one document (lab results
    for treatment, everything for a study) name it twice.
    """
    merged: dict[bytes, dict[str, Any]] = {}
    for item in listing:
        merged.setdefault(item["doc"], {**item, "grants": []})["grants"].append(item["grant"])
    return list(merged.values())


async def _listed(
    clinic: Any, patient: str, prefix: str, now: int, *, required: bool = True
) -> dict[str, Any] | None:
    """The entry of the patient's listing for the one document ``prefix`` (checked hex) starts.

    Raises:
        RemoteProtocolError: ``not-found`` when no document you may fetch, or several, start with it
            (with ``required``; else None).
    """
    from fedrecord.core.errors import Code, RemoteProtocolError

    matches = [
        d for d in _one_per_document(await clinic.listing(patient, now=now)) if d["doc"].hex().startswith(prefix)
    ]
    if len(matches) == 1:
        return matches[0]
    if not required:
        return None
    raise RemoteProtocolError(Code.NOT_FOUND, f"no single document you may fetch starts with {prefix!r}")


@main.command()
@click.option("--patient", required=True, help="The patient whose grant you pass on.")
@click.option("--to", "audience", required=True, help="The did:key of the node you delegate to.")
@click.option("--to-endpoint", required=True, help="That node's URL.")
@click.option("--category", "categories", multiple=True, help="Narrow to these categories.")
@click.option(
    "--days",
    default=30,
    show_default=True,
    type=click.IntRange(1, DELEGATION_MAX_DAYS),
    help=f"Days, 1 to {DELEGATION_MAX_DAYS} (never beyond your own grant).",
)
@pass_context
@fail_cleanly
async def delegate(
    ctx: Context, patient: str, audience: str, to_endpoint: str, categories: tuple[str, ...], days: int
) -> None:
    """Clinic: pass a narrower read grant to another node, if the patient allowed delegation (US-9)."""
    from fedrecord.node.client import PeerUnreachable

    async with opened(ctx, "clinic") as home, clinic_of(home) as clinic:
        await clinic.poll(patient, now=int(time.time()))
        try:
            child = await clinic.delegate(
                patient,
                to=audience,
                to_endpoint=to_endpoint,
                categories=categories,
                days=days,
                now=int(time.time()),
            )
        except PeerUnreachable as exc:
            # The grant is sent to the delegate, not to the patient's node: name the right one.
            raise click.ClickException(_unreachable(exc, "the node you delegate to")) from None
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
        for connection in await _connections(clinic, patient):
            try:
                results[connection.patient] = await clinic.poll(connection.patient, now=now)
            except PeerUnreachable as exc:
                # An offline patient node is normal (US-11): report it, send what can be sent.
                unreachable[connection.patient] = _unreachable(exc, "the patient's node")
        sent, pending = await clinic.flush_outbox(now=now)
        lines = [
            f"{p[:32]}...: head {r['seq']}, {_count(r['destroyed'], 'copy')} destroyed, "
            f"{_count(r['attested'], 'deletion')} attested"
            for p, r in results.items()
        ]
        lines += [f"{p[:32]}...: {why}; will retry" for p, why in unreachable.items()]
        lines.append(f"outbox: {sent} sent, {pending} pending")
        # Exit 0 with every patient's node offline: that is normal (US-11), and the outbox was flushed.
        ctx.emit({"patients": results, "unreachable": unreachable, "sent": sent, "pending": pending}, "\n".join(lines))


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
            for connection in await _connections(clinic, patient):
                try:
                    report = await clinic.sync(
                        connection.patient, now=now, bodies=not records_only, progress=progress
                    )
                except PeerUnreachable as exc:
                    # What was stored stays; the next sync goes on from there.
                    unreachable[connection.patient] = _unreachable(exc, "the patient's node")
                    continue
                reports[connection.patient] = dataclasses.asdict(report)
        lines = [
            f"{p[:32]}...: {_count(r['rounds'], 'round')}, {r['bytes_sent'] + r['bytes_received']} bytes; "
            f"{_count(r['records_stored'], 'record')} and {_count(r['documents_fetched'], 'document')} fetched"
            + (f"; refused: {_refusals(r['documents_failed'])}" if r["documents_failed"] else "")
            for p, r in reports.items()
        ]
        lines += [f"{p[:32]}...: {why}; sync again later" for p, why in unreachable.items()]
        ctx.emit({"patients": reports, "unreachable": unreachable}, "\n".join(lines) or "no patient to sync with")
        if unreachable and not reports:
            # Nothing could be synced: a script or a timer must see it.
            raise SystemExit(1)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun[:-1] + 'ies' if noun.endswith('y') else noun + 's'}"


def _refusals(failed: list[str]) -> str:
    """``doc: code`` entries of a sync report, as counts by code: "2 revoked", "1 not-found"."""
    codes = collections.Counter(entry.rsplit(": ", 1)[-1] for entry in failed)
    return ", ".join(f"{n} {code}" for code, n in sorted(codes.items()))


async def _connections(clinic: Any, patient: str | None) -> list[Any]:
    """The clinic's connections to patients: all of them, or the one to ``patient``.

    Raises:
        RemoteProtocolError: ``not-found`` when this clinic is not connected to ``patient`` (a
            mistyped did must not pass for a patient with nothing new).
    """
    connections = [c for c in await clinic.connections() if patient is None or c.patient == patient]
    if patient is not None and not connections:
        from fedrecord.core.errors import Code, RemoteProtocolError

        raise RemoteProtocolError(Code.NOT_FOUND, "not connected to this patient")
    return connections


@main.command()
@click.option("--keep", is_flag=True, help="Leave the four nodes running after the story.")
@click.option("--offline", is_flag=True, help="Play the story on the protocol core alone, without nodes.")
def demo(keep: bool, offline: bool) -> None:
    """Start a patient node, a GP practice, a lab and a specialist on loopback, and play the main story."""
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
