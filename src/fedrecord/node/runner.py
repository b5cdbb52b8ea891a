"""``fedrecord serve``: the HTTP API plus the node's background duties, until interrupted.

Clinic nodes follow their patients' event streams (:mod:`.subscriptions`:
revocations and deletions arrive within a second), and flush their outbox and
poll their patients' state every ``poll_interval`` seconds, the fallback when
a stream is down; patient nodes deliver their own outbox (rejection notices).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sqlite3
import time
from collections.abc import Callable, Coroutine
from typing import Any, Final

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from fedrecord.core.errors import AuthenticationError, Code, FedrecordError, RemoteProtocolError

from .client import PeerClient, PeerUnreachable
from .clinic import ClinicNode
from .home import NodeHome
from .server import PATIENT, make_app
from .subscriptions import StateSubscriptions
from .wire import CBOR_TYPE, api_url, error_body

log = logging.getLogger("fedrecord.node")


async def deliver_patient_outbox(home: NodeHome, client: PeerClient, *, now: int) -> None:
    """Send the patient's queued notices (deposit decisions) to the nodes they concern."""
    store = home.store
    for item_id, payload, attempts, endpoint, did in await store.due_decisions(now):
        try:
            await client.call("POST", api_url(endpoint, "/v0/decisions"), expected_signer=did, decision=payload)
        except PeerUnreachable as exc:
            async with store.transaction():
                await store.outbox_retry(item_id, next_at=now + min(300, 2**attempts), error=str(exc))
            continue
        except FedrecordError as exc:
            async with store.transaction():
                await store.outbox_done(item_id, exc.message)
            continue
        async with store.transaction():
            await store.outbox_done(item_id, keep_error=True)


async def duties(home: NodeHome, clinic: ClinicNode | None, client: PeerClient, stop: asyncio.Event) -> None:
    failing: dict[str, str] = {}  # patients whose polls fail, and what was said
    while not stop.is_set():
        now = int(time.time())
        # What another process (a `fedrecord delete` killed after its commit) left undone.
        await finish_destruction(home, before=now - FINISH_AFTER)
        try:
            if clinic is not None:
                await clinic.flush_outbox(now=now)
                await poll_all(clinic, now=now, failing=failing)
            else:
                await deliver_patient_outbox(home, client, now=now)
        except Exception:
            log.exception("background duties")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=home.config.poll_interval)


POLLS_AT_ONCE: Final = 8
"""Patients' nodes a clinic polls at the same time."""
POLL_DEADLINE: Final = 15.0
"""Seconds one poll may take: a node that accepts and then stalls holds up no other."""


async def poll_all(clinic: ClinicNode, *, now: int, failing: dict[str, str] | None = None) -> None:
    """Poll every connected patient's node, a few at a time, each within ``POLL_DEADLINE`` (logged, never raised).

    A connection may come from a delegation by a node never met, whose patient's endpoint that
    node chose (spec 15.18): one slow endpoint must not delay the others, nor the next outbox run.

    Args:
        failing: the kind of the last failure said for each patient whose polls fail, kept from one round to
            the next by the caller: a patient's node offline for a day (normal, US-11) is one
            warning and one line when it answers again, not a warning every poll interval.
    """
    turns = asyncio.Semaphore(POLLS_AT_ONCE)
    said = {} if failing is None else failing

    def failed(patient: str, why: str, kind: str) -> None:
        # Compared by kind (a code, unreachable, timeout), not by text: a text that moves each time
        # ("state head 3 is older than 41", then 42) is the same failure going on.
        if said.get(patient) == kind:
            log.debug("polling %s: %s (still)", patient, why)
            return
        said[patient] = kind
        log.warning("polling %s: %s", patient, why)

    async def poll(patient: str) -> None:
        async with turns:
            try:
                async with asyncio.timeout(POLL_DEADLINE):
                    await clinic.poll(patient, now=now)
            except FedrecordError as exc:
                failed(patient, str(exc), exc.code.value)
                return
            except PeerUnreachable as exc:
                failed(patient, str(exc), "unreachable")
                return
            except TimeoutError:
                failed(patient, f"no state within {POLL_DEADLINE:.0f} s", "timeout")
                return
            except Exception:  # a busy database, a disk error: this poll only, the others go on
                log.exception("polling %s", patient)
                return
            if said.pop(patient, None) is not None:
                log.info("polling %s: answered again", patient)

    # Patients who invited this clinic first, then those known through delegations alone.
    delegated = set(await clinic.store.delegated_only())
    patients = sorted((c.patient for c in await clinic.connections()), key=lambda p: p in delegated)
    await asyncio.gather(*(poll(patient) for patient in patients))


FINISH_AFTER: Final = 60
"""Seconds after which serve finishes a destruction another process left listed (it was killed)."""


async def finish_destruction(home: NodeHome, *, before: int | None = None) -> None:
    """Destroy what a killed process left of documents it had forgotten (logged, never raised)."""
    await _housekeeping(
        home.finish_destruction(before=before),
        failed="finishing the destruction of forgotten documents",
        done="destroyed what was left of %d forgotten document(s) (an interrupted deletion)",
    )


async def sweep_orphans(home: NodeHome) -> None:
    """Destroy, once at start, the document files a crash left without their row (logged, never raised)."""
    await _housekeeping(
        home.sweep_orphans(),
        failed="sweeping document files that no row names",
        done="destroyed %d document file(s) that no row names (left by an interrupted write)",
    )


async def _housekeeping(step: Coroutine[Any, Any, int], *, failed: str, done: str) -> None:
    """Run a step that destroys what a crash left, logging how many it destroyed; a disk failure is logged."""
    try:
        count = await step
    except (OSError, sqlite3.Error) as exc:
        log.warning("%s: %s", failed, exc)
        return
    if count:
        log.info(done, count)


LOG_LEVEL_VARIABLE: Final = "FEDRECORD_LOG_LEVEL"
"""DEBUG, INFO (the default), WARNING or ERROR: how much ``serve`` logs."""


def log_level() -> int:
    """The level ``serve`` logs at, from :data:`LOG_LEVEL_VARIABLE`; INFO when unset or not a level."""
    name = os.environ.get(LOG_LEVEL_VARIABLE, "").strip().upper()
    level = logging.getLevelName(name) if name else logging.INFO
    return level if isinstance(level, int) else logging.INFO


async def run_node(home: NodeHome, *, announce: Callable[[str], None] = print) -> None:
    logging.basicConfig(level=log_level(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # Before anything is served or sent: an attestation queued by a process killed before it
    # destroyed the copy goes out only once the copy is gone.
    await finish_destruction(home)
    client = PeerClient(home.identity)
    clinic = ClinicNode(home, client) if home.config.role == "clinic" else None
    app = make_app(home, clinic=clinic)
    runner = NodeRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, home.config.host, home.config.port)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    announce(home.config.endpoint)
    background: list[asyncio.Task[None]] = []
    web_runner: web.AppRunner | None = None
    try:
        # Inside the try: a web port already taken still closes the API and the database cleanly.
        web_runner = await _start_web_page(home, app)
        background.append(asyncio.create_task(sweep_orphans(home)))
        background.append(asyncio.create_task(duties(home, clinic, client, stop)))
        if clinic is not None:
            background.append(asyncio.create_task(StateSubscriptions(clinic).run(stop)))
        await stop.wait()
    finally:
        await asyncio.gather(*background)
        if web_runner is not None:
            await web_runner.cleanup()
        await runner.cleanup()
        await client.close()
        await home.close()


async def _start_web_page(home: NodeHome, api: web.Application) -> web.AppRunner | None:
    """The patient's web page, on its own listener (loopback by default), over the API's PatientNode."""
    if home.config.role != "patient":
        return None
    port = home.config.web_port if home.config.web_port is not None else home.config.port + 1
    if home.config.web_port is None and home.config.port == 0:
        return None
    from fedrecord.web.app import make_web_app

    runner = web.AppRunner(make_web_app(home, api[PATIENT]), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, home.config.web_host, port).start()
    except OSError as exc:
        await runner.cleanup()
        if home.config.web_port is not None:
            raise  # the port the patient chose: say so rather than run without the page
        log.warning("no web page: port %d (the API's port plus one) is taken: %s; set web_port", port, exc)
        return None
    log.info("the patient's web page is at http://%s:%d/", home.config.web_host, port)
    from fedrecord.web.auth import credential_stamp

    if not credential_stamp(home.path):
        log.info("its password is not set yet: run `fedrecord web-password`")
    return runner


class _CborRefusals(RequestHandler):
    """aiohttp's handler of one connection, answering what its HTTP parser refuses with a CBOR error body.

    A request aiohttp cannot parse never reaches the application: the parser
    answers it itself, with text.  The protocol wants every refusal as an
    error body ([API-5]), and a request without exactly one ``Host`` field
    refused with ``bad-signature`` ([HTTP-9]), so those answers are rewritten.
    """

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status < 500 and isinstance(exc, HttpProcessingError):
            # The peer's malformed request, not our fault: one line, not aiohttp's "Error handling
            # request" traceback, which anyone could make fill the log ([SEC-2]).
            log.info("refused a malformed HTTP request from %s: %s", request.remote, exc.message)
            if request.writer.output_size > 0:
                raise ConnectionError("an answer was already being sent: the connection is closed")
        else:
            answer = super().handle_error(request, status, exc, message)
            if status >= 500:
                return answer
        refusal: RemoteProtocolError
        if "'Host' header" in (message or ""):
            refusal = AuthenticationError()
        elif status == 413 or isinstance(exc, LineTooLong):
            # A field over aiohttp's 8190-byte line limit is over [HTTP-15]'s 4096 characters too.
            refusal = RemoteProtocolError(Code.TOO_LARGE, "request head too large")
        else:
            refusal = RemoteProtocolError(Code.MALFORMED, "not a well-formed HTTP/1.1 request")
        rewritten = web.Response(status=refusal.status, body=error_body(refusal), content_type=CBOR_TYPE)
        rewritten.force_close()
        return rewritten


class _NodeServer(web.Server):
    __slots__ = ()

    def __call__(self) -> RequestHandler:
        return _CborRefusals(self, loop=self._loop, **self._kwargs)


class NodeRunner(web.AppRunner):
    """The runner of a node's app: no access log, no request decompression, CBOR refusals from the parser.

    ``auto_decompress=False``: compressed request bodies reach the handlers, which refuse them with a
    CBOR error ([API-4]).
    """

    def __init__(self, app: web.Application) -> None:
        super().__init__(app, access_log=None, auto_decompress=False)

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _NodeServer
        return server
