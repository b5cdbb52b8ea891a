"""The clinic's control of its own node over HTTP: ``POST /v0/manage`` on a clinic (spec/fedrecord.md, 15.20).

The clinic's CLI drives its node by opening the home directory.  A tool that
holds the clinic's signing key elsewhere -- a conformance suite that plays a
patient's node and must make the clinic act as a requester -- does the same
through this endpoint: a request signed by the node's *own* key ([API-60])
names an ``op`` and its arguments, and the op runs the very
:class:`ClinicNode` method the CLI command runs (connect, deposit, flush the
outbox, poll, fetch, list what is held, sync, delegate).

Theory of operation: :data:`OPS` is the one table of ops.  Each entry checks
its arguments (``malformed``, [API-61]) before it calls the node; the node
method refuses an unknown patient or document with ``not-found`` before it
writes.  Most ops ask another node something, and what that node did wrong
comes back as the code of the manage answer ([API-63]): its refusal with its
code, the code of the clinic's own check of its answer, or ``unreachable``
(502) when it gave no answer ([API-5]) -- the one translation made here,
from :class:`PeerUnreachable`.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Mapping
from typing import Any, Final

from fedrecord.core import Code, RemoteProtocolError

from . import manage_args as args
from .client import PeerUnreachable
from .clinic import ClinicNode
from .wire import checked_endpoint

MAX_CONTENT: Final = 786_432
"""The largest content that travels in a manage body, deposited or fetched (768 KiB, under the 1 MiB cap)."""
DEFAULT_TYPE: Final = "report"
DEFAULT_MEDIA: Final = "text/plain"
DEFAULT_DAYS: Final = 30
MAX_DAYS: Final = 365
MAX_LABELS: Final = 32
"""Labels of a deposit, as a document header holds ([REC-7]); also the categories of a delegation."""
MAX_CODE: Final = 4096
"""The longest invitation code or URL ``connect`` takes."""
MAX_ENDPOINT: Final = 512

Op = args.Op[ClinicNode]


async def _connect(clinic: ClinicNode, body: Mapping[str, Any], now: int) -> dict[str, Any]:
    connection = await clinic.connect(args.text(body, "code", MAX_CODE), now=now)
    kept = await clinic.store.connection(connection.patient)
    assert kept is not None and kept.deposit_grant is not None  # connect stored both, in one transaction
    return {"patient": connection.patient, "grant": kept.deposit_grant}


async def _deposit(clinic: ClinicNode, body: Mapping[str, Any], now: int) -> dict[str, Any]:
    patient = args.did(body, "patient")
    content = body.get("content")
    if type(content) is not bytes or len(content) > MAX_CONTENT:
        raise args.malformed(f"content is a byte string of at most {MAX_CONTENT} bytes")
    title = args.text(body, "title", 256)
    category = args.token(body, "category")
    doc_type = args.token(body, "type", default=DEFAULT_TYPE)
    # A set, as the document header keeps it.
    labels = sorted(set(args.tokens(body, "labels", max_items=MAX_LABELS)))
    media_type = args.text(body, "media", 128, default=DEFAULT_MEDIA)
    doc = await clinic.deposit(
        patient,
        content,
        title=title,
        category=category,
        doc_type=doc_type,
        labels=labels,
        media_type=media_type,
        now=now,
    )
    return {"doc": doc}


async def _flush(clinic: ClinicNode, body: Mapping[str, Any], now: int) -> dict[str, Any]:
    # An unreachable patient is no failure here: its entry stays queued, counted as pending ([API-32]).
    sent, pending = await clinic.flush_outbox(now=now)
    return {"sent": sent, "pending": pending}


async def _poll(clinic: ClinicNode, body: Mapping[str, Any], now: int) -> dict[str, Any]:
    return dict(await clinic.poll(args.did(body, "patient"), now=now))


class _FirstBytes(io.BytesIO):
    """Keeps what is written while it stays within :data:`MAX_CONTENT`; a larger document is only counted."""

    def __init__(self) -> None:
        super().__init__()
        self.size = 0

    def write(self, data: Any) -> int:
        written = len(data)
        self.size += written
        if self.size <= MAX_CONTENT:
            super().write(data)
        return written


async def _fetch(clinic: ClinicNode, body: Mapping[str, Any], now: int) -> dict[str, Any]:
    patient, doc = args.did(body, "patient"), args.record_id(body, "doc")
    content = _FirstBytes()
    # Written as it is decrypted, as `fedrecord fetch` writes its file: flat memory for any size.
    size = await clinic.fetch_into(patient, doc, content, now=now)
    return {"content": content.getvalue()} if size <= MAX_CONTENT else {"size": size}


async def _held(clinic: ClinicNode, body: Mapping[str, Any], now: int) -> dict[str, Any]:
    patient = args.did(body, "patient") if "patient" in body else None
    if patient is not None and await clinic.store.connection(patient) is None:
        raise RemoteProtocolError(Code.NOT_FOUND, "not connected to this patient")
    held = await clinic.held()
    return {
        "docs": [
            {"doc": item["doc"], "patient": item["patient"]}
            for item in held
            if patient is None or item["patient"] == patient
        ]
    }


async def _sync(clinic: ClinicNode, body: Mapping[str, Any], now: int) -> dict[str, Any]:
    patient, records_only = args.did(body, "patient"), args.flag(body, "records_only")
    report = dataclasses.asdict(await clinic.sync(patient, now=now, bodies=not records_only))
    # Counts only: which documents failed is in the node's log, not on the wire.
    report["documents_failed"] = len(report["documents_failed"])
    return report


async def _delegate(clinic: ClinicNode, body: Mapping[str, Any], now: int) -> dict[str, Any]:
    patient, to = args.did(body, "patient"), args.did(body, "to")
    endpoint = checked_endpoint(args.text(body, "endpoint", MAX_ENDPOINT))
    categories = args.tokens(body, "categories", max_items=MAX_LABELS)
    days = body.get("days", DEFAULT_DAYS)
    if type(days) is not int or not 1 <= days <= MAX_DAYS:
        raise args.malformed(f"days is a number of days from 1 to {MAX_DAYS}")
    if await clinic.store.connection(patient) is None:
        # Before the grants are looked at: not-found, as every op names an unknown patient ([API-61]).
        raise RemoteProtocolError(Code.NOT_FOUND, "not connected to this patient")
    child = await clinic.delegate(
        patient, to=to, to_endpoint=endpoint, categories=categories, days=days, now=now
    )
    return {"grant": child.encoded}


OPS: Final[Mapping[str, Op]] = {
    "connect": _connect,
    "deposit": _deposit,
    "flush": _flush,
    "poll": _poll,
    "fetch": _fetch,
    "held": _held,
    "sync": _sync,
    "delegate": _delegate,
}
"""Every op of ``clinic-manage-request``, by name ([API-61]): any other is ``malformed``."""


async def manage(clinic: ClinicNode, requester: str, body: Mapping[str, Any], *, now: int) -> dict[str, Any]:
    """Run one op of a verified, decoded ``clinic-manage-request``; the fields of its answer.

    Args:
        requester: the did that signed the request (verified by the caller, [HTTP-7]).

    Raises:
        RemoteProtocolError: ``wrong-audience`` when ``requester`` is not the node itself
            ([API-60]), before the body is looked at; ``malformed`` for an unknown ``op`` or
            a missing or ill-typed argument, ``not-found`` for a patient the clinic is not
            connected to or a document it cannot reach ([API-61]): nothing is changed then.
            The other node's refusal, or the code of the clinic's own check of its answer,
            and ``unreachable`` when it gave no answer ([API-63]).
        FedrecordError: the node's own refusals (``too-large``...), with their codes.
    """
    if requester != clinic.home.did:
        raise RemoteProtocolError(Code.WRONG_AUDIENCE, "only the clinic's own key manages its node")
    run = args.op_of(body, OPS)
    try:
        return await run(clinic, body, now)
    except PeerUnreachable as exc:
        raise RemoteProtocolError(Code.UNREACHABLE, f"no answer: {exc}") from None
